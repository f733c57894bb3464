// neuralcodes web UI: plain JavaScript over the JSON API (no build step, no external files).
// Every view's state lives in the URL hash, so Back, reload and sharing a link all work:
//   #/gallery?page=2&class=3    #/query/12?k=10&layer=6    #/upload/<id>?k=5&layer=all&db=ood
//   #/upload    #/results    #/api
//   #/collection?folder=trip&q=beach&page=2    #/item/7?k=10&layer=6   (serve --index: your photos)
"use strict";

const state = {
  info: null,
  pageSize: 120, // divisible by every column count of the gallery grid (see style.css)
  seq: 0, // only the latest request may paint: see begin()
  controller: null,
  keepFocus: false, // set by in-view controls, so a re-render does not steal their focus
  lastGallery: "#/gallery",
  lastCollection: "#/collection",
  uploads: new Map(), // "<id> <k> <db>" -> result of an upload (no second search on navigation)
  results: {}, // last search result per view, for switching layers without a request
};

const $ = (id) => document.getElementById(id);
const K_CHOICES = [1, 3, 5, 10, 20, 30, 50];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

// ---------------------------------------------------------------- formatting

const pct = (x, digits = 1) =>
  x === null || x === undefined || Number.isNaN(x) ? "—" : `${(100 * x).toFixed(digits)}%`;
const num = (x, digits = 3) =>
  x === null || x === undefined || Number.isNaN(x) ? "—" : Number(x).toFixed(digits);

/** A cosine similarity as people read it: two decimals (the rank orders equal-looking ones). */
const similarity = (score) => score.toFixed(2);
// a difference of two shares in percentage points, with its sign
const pp = (x, digits = 2) => `${x >= 0 ? "+" : "−"}${Math.abs(100 * x).toFixed(digits)}`;

function formatBytes(n) {
  for (const [unit, size] of [["MiB", 2 ** 20], ["KiB", 2 ** 10]]) {
    if (n >= size) {
      const v = n / size;
      return `${v === Math.trunc(v) || v >= 10 ? v.toFixed(0) : v.toFixed(1)} ${unit}`;
    }
  }
  return `${n} bytes`;
}

const variant = (relu) => (relu ? "post-ReLU" : "pre-ReLU");

// ---------------------------------------------------------------- requests and states

/** Start a request for the current view: aborts the previous one; returns its token. */
function begin() {
  if (state.controller) state.controller.abort();
  state.controller = new AbortController();
  state.seq += 1;
  return { seq: state.seq, signal: state.controller.signal };
}

const current = (token) => token.seq === state.seq;

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    const error = new Error("the server did not answer");
    error.unreachable = true; // the server stopped, or the network is down
    throw error;
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    let detail = body && body.detail;
    if (Array.isArray(detail)) {
      detail = detail.map((d) => `${(d.loc || []).slice(-1)[0] || "input"}: ${d.msg}`).join("; ");
    }
    const error = new Error(detail || `${response.status} ${response.statusText}`);
    error.status = response.status;
    const after = Number(response.headers.get("retry-after"));
    if (Number.isFinite(after) && after > 0) error.retryAfter = Math.min(after, 120);
    throw error;
  }
  return body;
}

/** What went wrong and what to do, in plain words (`what`: what the app was doing). */
function explain(err, what) {
  if (err.unreachable) {
    return `The server did not answer while ${what}. Check that \`neuralcodes serve\` is still ` +
      "running (and the network), then try again: the app retries by itself too.";
  }
  if (err.status === 503) {
    return `The server is busy (${err.message}) while ${what}. ` +
      (err.retryAfter ? `It asks to wait ${err.retryAfter} s; the button below retries then.` : "Try again in a moment.");
  }
  if (err.status >= 500) {
    return `The server failed while ${what} (error ${err.status}: ${err.message}). Try again; ` +
      "if it fails again, the server's log says why.";
  }
  return `${err.message.charAt(0).toUpperCase()}${err.message.slice(1)}.`.replace(/\.\.$/, ".");
}

let retryTimer = null;

/** The error box: a message and, with `retry`, a "Try again" button (counting down the
 *  server's Retry-After first; `auto`: press it by itself when the count ends). */
function showError(message, retry = null, retryAfter = 0, auto = false) {
  const box = $("error");
  clearInterval(retryTimer);
  box.replaceChildren();
  box.hidden = !message;
  if (!message) return;
  box.append(el("span", { class: "error-text", text: message }));
  if (!retry) return;
  const button = el("button", { type: "button", class: "retry", "data-testid": "retry" });
  let left = Math.ceil(retryAfter);
  const tick = () => {
    // the server's Retry-After: wait it out; the app's own retries: the button works at once
    button.disabled = left > 0 && !auto;
    button.textContent = left <= 0 ? "Try again" : auto ? `Try again (automatically in ${left} s)` : `Try again (in ${left} s)`;
    if (left <= 0) {
      clearInterval(retryTimer);
      if (auto) retry();
    }
    left -= 1;
  };
  button.addEventListener("click", () => { showError(""); retry(); });
  box.append(" ", button);
  tick();
  if (left >= 0 && (retryAfter > 0 || auto)) retryTimer = setInterval(tick, 1000);
}

/** A failed request of the current view: say what happened and offer to load it again. */
function failed(err, what) {
  showError(explain(err, what), () => route(), err.retryAfter || 0);
}

function showNotice(message) {
  const box = $("notice");
  box.textContent = message || "";
  box.hidden = !message;
}

function setStatus(view, message, busy = false) {
  const box = $(`${view}-status`);
  box.textContent = message || "";
  box.hidden = !message;
  box.classList.toggle("busy", busy);
  const results = $(`${view}-results`) || $(["gallery", "collection"].includes(view) ? view : `${view}-body`);
  if (results) results.setAttribute("aria-busy", busy ? "true" : "false");
}

// One request for a view: its busy status while it runs, cleared if the request fails; null when
// a newer request has superseded it (the caller then draws nothing).
async function load(view, token, path, busyMessage) {
  setStatus(view, busyMessage, true);
  try {
    const body = await api(path, { signal: token.signal });
    return current(token) ? body : null;
  } catch (err) {
    if (current(token)) setStatus(view, "");
    throw err;
  }
}

function announce(message) {
  $("announce").textContent = message;
}

// ---------------------------------------------------------------- URL state

function parseHash() {
  const raw = location.hash || "#/gallery";
  const [path, search = ""] = raw.slice(1).split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(search) };
}

function hashFor(parts, params = {}) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") q.set(key, value);
  }
  const tail = q.toString();
  return `#/${parts.map(encodeURIComponent).join("/")}${tail ? `?${tail}` : ""}`;
}

function readK(params) {
  const k = Number(params.get("k"));
  return Number.isInteger(k) && k >= 1 && k <= state.info.max_k ? k : state.info.k;
}

function readLayer(params) {
  const layer = params.get("layer");
  return state.info.layers.includes(layer) ? layer : "all";
}

/** Values in the address that the view cannot use are replaced there (no new history entry)
 *  by the ones it shows, and said once; returns the notes. */
function normalise(parts, params, valid) {
  const notes = [];
  const clean = {};
  for (const [key, value] of params) {
    if (!(key in valid)) {
      notes.push(`“${key}” is not a setting of this page`);
      continue;
    }
    const [ok, shown, rule] = valid[key](value);
    if (ok) clean[key] = value;
    else notes.push(`${key}=${value} is not valid (${rule}): showing ${shown}`);
  }
  if (notes.length) {
    history.replaceState(null, "", hashFor(parts, clean));
    showNotice(`The address was corrected: ${notes.join("; ")}.`);
  }
  return notes;
}

function kRule(value) {
  const k = Number(value);
  return [String(k) === value && Number.isInteger(k) && k >= 1 && k <= state.info.max_k,
    `${state.info.k} per layer`, `1 to ${state.info.max_k} results per layer`];
}

function readMethod(params) {
  const method = params.get("method");
  return state.info.methods.includes(method) ? method : null;
}

function methodRule(value) {
  return [state.info.methods.includes(value), "the layers' codes only",
    `one of ${state.info.methods.join(", ")}`];
}

function layerRule(value) {
  return [state.info.layers.includes(value), "all layers",
    `layer ${state.info.layers.join(", ")} or all`];
}

function go(hash, keepFocus = false) {
  state.keepFocus = keepFocus;
  if (location.hash === hash) route();
  else location.hash = hash;
}

// ---------------------------------------------------------------- views

const TITLES = {
  gallery: "Gallery", query: "Similar images", upload: "Search with your image",
  results: "Results", api: "JSON API", notfound: "Page not found",
  collection: "Your photos", item: "Similar photos",
};
const NAV = {
  gallery: "gallery", query: "gallery", upload: "upload", results: "results", api: "api",
  collection: "collection", item: "collection",
};

function show(view, title) {
  const changed = $(`view-${view}`).hidden;
  for (const section of document.querySelectorAll(".view")) {
    section.hidden = section.id !== `view-${view}`;
  }
  for (const link of document.querySelectorAll("nav[aria-label=Main] a")) {
    if (link.dataset.view === NAV[view]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  setTitle(title || TITLES[view]);
  if (!state.keepFocus) {
    if (changed) window.scrollTo(0, 0);
    $(`${view}-title`).focus({ preventScroll: true });
  }
}

function setTitle(title) {
  document.title = `${title} — neuralcodes`;
}

async function route() {
  if (!state.info) return boot();
  showError("");
  showNotice("");
  // a new route supersedes (aborts) the previous request: its loading state must not linger
  for (const box of document.querySelectorAll(".status.busy")) {
    setStatus(box.id.replace(/-status$/, ""), "");
  }
  const { parts, params } = parseHash();
  const [view, arg, extra] = parts;
  try {
    if (parts.length === 0 || (view === "gallery" && !arg)) await renderGallery(params);
    else if (view === "query" && arg !== undefined && extra === undefined) await renderQuery(arg, params);
    else if (view === "upload" && extra === undefined) await renderUpload(arg, params);
    else if (view === "collection" && !arg && hasIndex()) await renderCollection(params);
    else if (view === "item" && arg !== undefined && extra === undefined && hasIndex()) await renderItem(arg, params);
    else if (view === "results" && !arg) await renderResults();
    else if (view === "api" && !arg) await renderApi();
    else notFound(`There is no page “${location.hash}” in this app.`);
  } catch (err) {
    if (err.name !== "AbortError") failed(err, "loading this page");
  } finally {
    state.keepFocus = false;
  }
}

function notFound(text) {
  begin();
  show("notfound");
  $("notfound-text").textContent = text;
}

// ---------------------------------------------------------------- gallery

async function renderGallery(params) {
  const info = state.info;
  const label = params.get("class");
  const cls = info.classes.find((c) => String(c.label) === label);
  normalise(["gallery"], params, {
    class: (v) => [Boolean(cls), "all classes", "a class of the list"],
    page: (v) => [/^[1-9][0-9]*$/.test(v), "page 1", "a page number from 1"],
  });
  let page = /^[1-9][0-9]*$/.test(params.get("page") || "") ? Number(params.get("page")) : 1;
  state.lastGallery = location.hash || "#/gallery";
  $("query-back").setAttribute("href", state.lastGallery);
  show("gallery", cls ? `Gallery: ${cls.class_name}${page > 1 ? `, page ${page}` : ""}`
    : `Gallery${page > 1 ? `, page ${page}` : ""}`);
  $("gallery-class").value = cls ? String(cls.label) : "";
  const token = begin();
  setStatus("gallery", "Loading images…", true);
  const grid = $("gallery");
  grid.classList.add("stale");
  const offset = (page - 1) * state.pageSize;
  let url = `api/gallery?offset=${offset}&limit=${state.pageSize}`;
  if (cls) url += `&label=${cls.label}`;
  let data;
  try {
    data = await api(url, { signal: token.signal });
  } catch (err) {
    if (current(token)) {
      grid.replaceChildren();
      setStatus("gallery", "");
    }
    throw err;
  }
  if (!current(token)) return;
  const pages = Math.max(1, Math.ceil(data.total / state.pageSize));
  if (page > pages) {
    // past the end: the last page instead, and the address says so
    history.replaceState(null, "", hashFor(["gallery"], { class: cls && cls.label, page: pages > 1 ? pages : null }));
    showNotice(`There is no page ${page}: ${cls ? "this class fills" : "the gallery has"} ${pages} page${pages === 1 ? "" : "s"}; showing the last.`);
    state.keepFocus = true;
    return renderGallery(parseHash().params);
  }
  grid.classList.remove("stale");
  grid.replaceChildren(...data.items.map((item) => {
    const img = el("img", { src: item.url, alt: "", width: 64, height: 64, loading: "lazy" });
    return el("li", {}, el("a", {
      class: "thumb", href: hashFor(["query", String(item.id)]), "data-id": item.id,
      title: `#${item.id} ${item.class_name}`,
    }, img, el("span", { class: "cap" }, el("span", { class: "id", text: `#${item.id}` }),
      el("span", { class: "name", text: item.class_name }))));
  }));
  setStatus("gallery", data.items.length ? "" : "No images here.");
  const first = data.items.length ? offset + 1 : 0;
  const last = offset + data.items.length;
  paintPagers("gallery", page, pages, `${first}–${last} of ${data.total}`,
    (p) => hashFor(["gallery"], { class: cls && cls.label, page: p > 1 ? p : null }));
  announce(`Gallery page ${page} of ${pages}: images ${first} to ${last} of ${data.total}.`);
}

/** The pagers of a gallery-like view: first, previous, where we are, next, last. */
function paintPagers(view, page, pages, range, href) {
  for (const pager of document.querySelectorAll(`#view-${view} .pager`)) {
    const link = (p, text, rel, label) => (p >= 1 && p <= pages && p !== page
      ? el("a", { class: "button", href: href(p), rel, text, "aria-label": label })
      : el("span", { class: "button disabled", "aria-disabled": "true", text, "aria-label": label }));
    pager.replaceChildren(link(1, "«", null, "First page"), link(page - 1, "← Previous", "prev"),
      el("span", { class: "range", text: `${range} · page ${page} of ${pages}` }),
      link(page + 1, "Next →", "next"), link(pages, "»", null, `Last page (${pages})`));
  }
}

// ---------------------------------------------------------------- search results

function buildControls(view) {
  const box = document.querySelector(`.controls[data-for=${view}]`);
  const fieldset = el("fieldset", { class: "segmented" }, el("legend", { text: "Layers" }));
  for (const value of ["all", ...state.info.layers]) {
    const id = `${view}-layer-${value}`;
    fieldset.append(el("input", { type: "radio", name: `${view}-layer`, id, value, class: "sr-only" }),
      el("label", { for: id, text: value === "all" ? "All, side by side" : `Layer ${value}` }));
  }
  fieldset.addEventListener("change", (e) => setParam("layer", e.target.value));
  const select = el("select", { id: `${view}-k` });
  const choices = new Set([...K_CHOICES.filter((k) => k < state.info.max_k), state.info.k, state.info.max_k]);
  for (const k of [...choices].sort((a, b) => a - b)) select.append(el("option", { value: k, text: String(k) }));
  select.addEventListener("change", () => setParam("k", select.value));
  box.replaceChildren(fieldset, el("label", { class: "field" }, "Results per layer", select));
  if (view === "query" && state.info.methods.length) {
    // a pooled conv5 descriptor (the methods study's) as one more column
    const method = el("select", { id: `${view}-method`, "data-testid": "method" },
      el("option", { value: "", text: "none (codes only)" }),
      ...state.info.methods.map((m) => el("option", { value: m, text: `conv5 ${m}` })));
    method.addEventListener("change", () => setParam("method", method.value));
    box.append(el("label", { class: "field" }, "Also rank by", method));
  }
}

function setParam(key, value) {
  const { parts, params } = parseHash();
  if (value === "") params.delete(key);
  else params.set(key, value);
  go(hashFor(parts, Object.fromEntries(params)), true);
}

function syncControls(view, k, layer, method = null) {
  $(`${view}-k`).value = String(k);
  if ($(`${view}-method`)) $(`${view}-method`).value = method || "";
  $(`${view}-layer-${layer}`).checked = true;
}

function hitCard(hit, k, layer, why = null) {
  const same = hit.same_class;
  const cls = same === true ? "hit same" : same === false ? "hit diff" : "hit";
  const mark = same === true ? "✓" : same === false ? "✗" : "";
  const words = same === true ? "same class" : same === false ? "another class" : "";
  const inner = [
    el("span", { class: "pic" },
      el("img", { src: hit.url, alt: "", width: 96, height: 96, loading: "lazy" }),
      el("span", { class: "rank", "data-testid": "rank" }, el("span", { class: "sr-only", text: "rank " }), String(hit.rank)),
      el("span", { class: "mark", "data-testid": "mark", "aria-hidden": "true", text: mark })),
    el("span", { class: "meta" },
      el("span", { class: "name", text: hit.class_name || "" }),
      el("span", { class: "score", title: `cosine similarity ${hit.score.toFixed(6)}`, text: `similarity ${similarity(hit.score)}` }),
      words ? el("span", { class: "sr-only", text: `, ${words}` }) : null),
  ];
  const mine = hit.source === "index";
  if (mine) {
    inner[1].prepend(el("span", { class: "folder", text: folderName(hit.folder) }));
    if (hit.same) inner[1].append(el("span", { class: "same-badge", "data-testid": "same", text: hit.same }));
  }
  const at = layer === "all" ? null : layer;
  const body = mine
    ? el("a", {
      href: hashFor(["item", String(hit.id)], { k, layer: at }),
      title: `${photoName(hit)}: search with this photo`,
    }, ...inner)
    : el("a", {
      href: hashFor(["query", String(hit.id)], { k, layer: at, method: why && why.method }),
      title: `#${hit.id} ${hit.class_name}: search with this image`,
    }, ...inner);
  const li = el("li", { class: cls, "data-testid": "hit", "data-id": hit.id }, body);
  if (mine) {
    li.classList.add("mine");
    li.append(el("span", { class: "hit-links" },
      el("a", { href: hit.original_url, target: "_blank", rel: "noopener noreferrer", "data-testid": "hit-original", text: "Original", "aria-label": `Original of ${photoName(hit)}` }),
      el("a", { href: hashFor(["collection"], { folder: folderParam(hit.folder) }), text: "Folder", "aria-label": `Folder ${folderName(hit.folder)}` })));
  }
  if (why) {
    li.classList.add("has-why");
    li.append(whyButton(hit, why));
  }
  return li;
}

/** "Why similar?": the query and this hit with each conv5 cell shaded by its share of the
 *  score under the pooled descriptor (api/why), shown below the card on demand. */
function whyButton(hit, why) {
  const url = `api/why/${why.query}/${hit.id}.png?method=${encodeURIComponent(why.method)}`;
  const alt = `Why #${hit.id} is similar to #${why.query} under conv5 ${why.method}: ` +
    "left the query, right the hit; red cells contribute most to the score";
  const button = el("button", { type: "button", class: "why", "data-testid": "why", "aria-expanded": "false", text: "Why similar?" });
  button.addEventListener("click", () => {
    const open = button.getAttribute("aria-expanded") === "true";
    button.setAttribute("aria-expanded", String(!open));
    const shown = button.nextElementSibling;
    if (open && shown) shown.remove();
    else button.after(el("img", { class: "why-map", "data-testid": "why-map", src: url, alt, title: alt, width: 262, height: 128 }));
  });
  return button;
}

function renderLayers(view, result, layer) {
  const container = $(`${view}-results`);
  const shown = result.layers.filter((l) => layer === "all" || l.layer === layer);
  container.classList.toggle("all", layer === "all");
  container.classList.toggle("with-method", shown.some((l) => l.method));
  container.replaceChildren(...shown.map((l) => {
    const hits = l.hits;
    const hid = `${view}-h-${l.layer.replace("/", "-")}`;
    const box = el("section", { class: "layer", "data-layer": l.layer, "aria-labelledby": hid },
      el("h3", { id: hid, text: l.method ? `conv5 ${l.method}` : `Layer ${l.layer}` }));
    const facts = el("p", { class: "facts" });
    if (l.ap !== null && l.ap !== undefined) {
      facts.append(el("span", { class: "ap", "data-testid": "ap", text: `AP ${pct(l.ap)}` }));
      if (result.chance_ap !== null && result.chance_ap !== undefined) {
        facts.append(el("span", { class: "chance", "data-testid": "chance", text: `chance ${pct(result.chance_ap)}` }));
      }
      const same = l.hits.filter((h) => h.same_class).length;
      facts.append(el("span", { class: "precision", text: `${same} of ${l.hits.length} same class` }));
    }
    if (facts.childNodes.length) box.append(facts);
    const why = l.method && result.query.source === "ood" ? { method: l.method, query: result.query.id } : null;
    box.append(el("ol", { class: "hits" }, ...hits.map((h) => hitCard(h, result.k, layer, why))));
    return box;
  }));
}

function aboutText(result) {
  const db = result.database === "ood"
    ? `the ${result.database_size} ${result.query.source === "ood" ? "other " : ""}out-of-domain images` : `your index (${result.database_size} images)`;
  let text = result.scores
    ? `Each column ranks ${db} by their ${variant(result.relu)} codes of one layer. Similarity: ${result.scores}. `
    : `Each column ranks ${db} by the cosine similarity of their ${variant(result.relu)} ` +
      "codes of one layer to this image's code (1 = same direction). ";
  if (result.query.source === "ood") {
    text += `✓ marks an image of the query's class (${result.relevant} others); ✗ another class. ` +
      "AP (average precision) sums up the whole ranking: 100% puts every image of the class first; " +
      `a random ranking gets ${pct(result.chance_ap)} on average (chance).`;
  } else {
    text += `Your ${result.query.source === "index" ? "photos have" : "image has"} no class, so there is no ✓/✗ or AP here.`;
  }
  const pooled = result.layers.find((l) => l.method);
  if (pooled) {
    text += ` The conv5 ${pooled.method} column ranks by a descriptor pooled from the conv5 feature map instead; ` +
      "“Why similar?” shades each cell of the two maps by its share of their similarity (red: most).";
  }
  return text;
}

// "top 5", or "all 3" when the database holds fewer images than k (result.note says so)
function topText(result) {
  return result.shown < result.k ? `all ${result.shown}` : `top ${result.k}`;
}

function paintResult(view, result, layer, announceText, focus) {
  state.results[view] = { result, layer };
  renderLayers(view, result, layer);
  setStatus(view, "");
  const title = $(`${view}-results-title`);
  title.hidden = false;
  title.textContent = `Most similar images (${topText(result)}${layer === "all" ? " per layer" : `, layer ${layer}`})`;
  announce(announceText);
  if (focus) title.focus({ preventScroll: false });
}

// ---------------------------------------------------------------- query by gallery id

async function renderQuery(arg, params) {
  const info = state.info;
  if (/^\d+$/.test(arg) && Number(arg) < info.gallery_size) {
    normalise(["query", arg], params, { k: kRule, layer: layerRule, method: methodRule });
  }
  const k = readK(params);
  const layer = readLayer(params);
  const method = readMethod(params);
  const image = $("query-image");
  const prev = state.results.query;
  const id = /^\d+$/.test(arg) ? Number(arg) : NaN;
  show("query", Number.isInteger(id) ? `Image #${id}: similar images` : "Image not found");
  syncControls("query", k, layer, method);
  const valid = Number.isInteger(id) && id < info.gallery_size;
  document.querySelector(".controls[data-for=query]").hidden = !valid;
  if (!valid) {
    begin();
    image.hidden = true;
    image.removeAttribute("src");
    $("query-caption").textContent = "";
    $("query-about").textContent = "";
    $("query-results").replaceChildren();
    $("query-results-title").hidden = true;
    setStatus("query", "");
    $("query-title").textContent = "Image not found";
    showError(Number.isInteger(id)
      ? `There is no image #${id}: the gallery has images #0 to #${info.gallery_size - 1}.`
      : `“${arg}” is not an image id: ids are whole numbers from 0 to ${info.gallery_size - 1}.`);
    return;
  }
  $("query-results-title").hidden = false;
  $("query-title").textContent = `Images similar to #${id}`;
  const keepFocus = state.keepFocus;
  // only a new layer: no request, no flicker
  if (prev && prev.result.query.id === id && prev.result.k === k && prev.method === method) {
    begin();
    paintResult("query", prev.result, layer, `Showing ${layer === "all" ? "all layers" : `layer ${layer}`}.`, false);
    return;
  }
  const token = begin();
  image.src = `api/image/${id}`;
  image.alt = `query image #${id}`;
  image.hidden = false;
  $("query-caption").textContent = `#${id}`;
  $("query-results").replaceChildren();
  const path = `api/search/${id}?k=${k}${method ? `&method=${encodeURIComponent(method)}` : ""}`;
  const result = await load("query", token, path, method
    ? `Searching with image #${id} (the first search with conv5 ${method} describes every ood image: a moment)…`
    : `Searching with image #${id}…`);
  if (!result) return;
  const q = result.query;
  $("query-caption").textContent = `#${q.id} ${q.class_name}`;
  image.alt = `query image #${q.id}, ${q.class_name}`;
  $("query-title").textContent = `Images similar to #${q.id} (${q.class_name})`;
  setTitle(`#${q.id} ${q.class_name}: similar images`);
  $("query-about").textContent = aboutText(result);
  paintResult("query", result, layer,
    `Results for image #${q.id}, ${q.class_name}: ${topText(result)} in ${layer === "all" ? "layers " + info.layers.join(", ") : "layer " + layer}${method ? ` and conv5 ${method}` : ""}.`,
    !keepFocus);
  state.results.query.method = method;
}

// ---------------------------------------------------------------- your photos (serve --index)

const hasIndex = () => state.info.databases.some((d) => d.name === "index");
const folderName = (folder) => (folder ? `${folder}/` : "(top folder)");
// the top folder is "" in the API and "." in the address (where an empty value is dropped)
const folderParam = (folder) => (folder === "" ? "." : folder);
const photoName = (item) => (item.folder ? `${item.folder}/${item.class_name}` : item.class_name);

async function renderCollection(params) {
  normalise(["collection"], params, {
    folder: (v) => [true, "", ""], q: (v) => [true, "", ""],
    page: (v) => [/^[1-9][0-9]*$/.test(v), "page 1", "a page number from 1"],
  });
  const folder = params.has("folder") ? (params.get("folder") === "." ? "" : params.get("folder")) : null;
  const q = (params.get("q") || "").trim();
  const page = /^[1-9][0-9]*$/.test(params.get("page") || "") ? Number(params.get("page")) : 1;
  state.lastCollection = location.hash || "#/collection";
  $("item-back").setAttribute("href", state.lastCollection);
  const what = [folder !== null ? folderName(folder) : null, q ? `“${q}”` : null].filter(Boolean).join(", ");
  show("collection", `Your photos${what ? `: ${what}` : ""}${page > 1 ? `, page ${page}` : ""}`);
  $("collection-q").value = q;
  const token = begin();
  setStatus("collection", "Loading photos…", true);
  const grid = $("collection");
  grid.classList.add("stale");
  const offset = (page - 1) * state.pageSize;
  const query = new URLSearchParams({ offset, limit: state.pageSize });
  if (folder !== null) query.set("folder", folder);
  if (q) query.set("q", q);
  let data;
  try {
    data = await api(`api/collection?${query}`, { signal: token.signal });
  } catch (err) {
    if (current(token)) { grid.replaceChildren(); setStatus("collection", ""); }
    throw err;
  }
  if (!current(token)) return;
  fillFolders(data.folders, folder);
  const pages = Math.max(1, Math.ceil(data.total / state.pageSize));
  const href = (p) => hashFor(["collection"], { folder: folder === null ? null : folderParam(folder), q: q || null, page: p > 1 ? p : null });
  if (page > pages) {
    history.replaceState(null, "", href(pages));
    showNotice(`There is no page ${page}: these photos fill ${pages} page${pages === 1 ? "" : "s"}; showing the last.`);
    state.keepFocus = true;
    return renderCollection(parseHash().params);
  }
  $("collection-caption").textContent = `The ${data.size} images of your index “${indexName()}”, ` +
    "by folder and file name. Choose one to find the most similar others among them.";
  grid.classList.remove("stale");
  grid.replaceChildren(...data.items.map((item) => el("li", {}, el("a", {
    class: "thumb", href: hashFor(["item", String(item.id)]), "data-id": item.id, title: photoName(item),
  }, el("img", { src: item.url, alt: "", width: 64, height: 64, loading: "lazy" }),
  el("span", { class: "cap" }, el("span", { class: "id", text: folderName(item.folder) }),
    el("span", { class: "name", text: item.class_name }))))));
  setStatus("collection", data.items.length ? "" : "No photos match: change the folder or the text.");
  const first = data.items.length ? offset + 1 : 0;
  const last = offset + data.items.length;
  paintPagers("collection", page, pages, `${first}–${last} of ${data.total}`, href);
  announce(`Your photos, page ${page} of ${pages}: ${first} to ${last} of ${data.total}.`);
}

const indexName = () => state.info.databases.find((d) => d.name === "index").description;

function fillFolders(folders, chosen) {
  const select = $("collection-folder");
  if (select.options.length === 1) {
    select.append(...folders.map((f) => el("option", { value: folderParam(f.folder), text: `${folderName(f.folder)} (${f.count})` })));
  }
  const want = chosen === null ? "*" : folderParam(chosen);
  select.value = want;
  if (select.value !== want) select.value = "*";
}

function filterCollection(keepFocus) {
  const folder = $("collection-folder").value;
  go(hashFor(["collection"], { folder: folder === "*" ? null : folder, q: $("collection-q").value.trim() || null }), keepFocus);
}

async function renderItem(arg, params) {
  const size = state.info.databases.find((d) => d.name === "index").size;
  const id = /^\d+$/.test(arg) ? Number(arg) : NaN;
  const valid = Number.isInteger(id) && id < size;
  if (valid) normalise(["item", arg], params, { k: kRule, layer: layerRule });
  const k = readK(params);
  const layer = readLayer(params);
  show("item", valid ? "Similar photos" : "Photo not found");
  syncControls("item", k, layer);
  document.querySelector(".controls[data-for=item]").hidden = !valid;
  const image = $("item-image");
  const prev = state.results.item;
  if (!valid) {
    begin();
    image.hidden = true;
    for (const id_ of ["item-caption", "item-about"]) $(id_).textContent = "";
    $("item-results").replaceChildren();
    $("item-results-title").hidden = true;
    for (const a of ["item-original", "item-folder"]) $(a).hidden = true;
    $("item-title").textContent = "Photo not found";
    showError(`There is no photo “${arg}”: your index has photos 0 to ${size - 1}.`);
    return;
  }
  $("item-results-title").hidden = false;
  const keepFocus = state.keepFocus;
  if (prev && prev.result.query.id === id && prev.result.k === k) {
    begin();
    paintResult("item", prev.result, layer, `Showing ${layer === "all" ? "all layers" : `layer ${layer}`}.`, false);
    return;
  }
  const token = begin();
  image.src = `api/index-image/${id}`;
  image.hidden = false;
  $("item-results").replaceChildren();
  const result = await load("item", token, `api/index-search/${id}?k=${k}`, "Searching your photos…");
  if (!result) return;
  const q = result.query;
  const name = photoName(q);
  image.alt = `query photo ${name}`;
  $("item-caption").textContent = name;
  $("item-title").textContent = `Photos similar to ${q.class_name}`;
  setTitle(`${q.class_name}: similar photos`);
  const original = $("item-original");
  original.hidden = false;
  original.href = q.original_url;
  const folderLink = $("item-folder");
  folderLink.hidden = false;
  folderLink.href = hashFor(["collection"], { folder: folderParam(q.folder) });
  folderLink.textContent = `Its folder: ${folderName(q.folder)}`;
  $("item-about").textContent = aboutText(result);
  paintResult("item", result, layer, `Results for ${name}: ${topText(result)} ${layer === "all" ? "per layer" : `in layer ${layer}`}.`, !keepFocus);
}

// ---------------------------------------------------------------- upload

function clearUpload() {
  $("upload-query").hidden = true;
  $("upload-preview").removeAttribute("src");
  $("upload-caption").textContent = "";
  $("upload-notes").replaceChildren();
  $("upload-about").textContent = "";
  $("upload-results").replaceChildren();
  $("upload-results-title").hidden = true;
  state.results.upload = null;
}

function paintUpload(result, layer, focus) {
  const q = result.query;
  $("upload-query").hidden = false;
  $("upload-preview").src = q.url;
  $("upload-caption").textContent = `${q.filename || "your image"} (${q.width}×${q.height} ${q.format}) → 64×64`;
  // the server says what was done to the image (query.notes) and why fewer than k results come (note)
  const notes = [...(q.notes || []), ...(result.note ? [`${result.note}.`] : [])];
  $("upload-notes").replaceChildren(...notes.map((n) => el("li", { text: n })));
  $("upload-about").textContent = aboutText(result);
  paintResult("upload", result, layer,
    `Results for ${q.filename || "your image"}: ${topText(result)} ${layer === "all" ? "per layer" : `in layer ${layer}`}.`, focus);
}

async function renderUpload(uid, params) {
  if (uid) {
    normalise(["upload", uid], params, {
      k: kRule, layer: layerRule,
      db: (v) => [state.info.databases.some((d) => d.name === v), "the out-of-domain images",
        state.info.databases.map((d) => d.name).join(" or ")],
    });
  }
  const k = readK(params);
  const layer = readLayer(params);
  const db = state.info.databases.some((d) => d.name === params.get("db")) ? params.get("db") : "ood";
  show("upload");
  syncControls("upload", k, layer);
  $("upload-database").value = db;
  const keepFocus = state.keepFocus;
  if (!uid) {
    begin();
    clearUpload();
    setStatus("upload", "");
    return;
  }
  if (!/^[0-9a-f]{16}$/.test(uid)) {
    begin();
    clearUpload();
    showError(`“${uid}” is not an upload id: choose an image to search with.`);
    return;
  }
  const key = `${uid} ${k} ${db}`;
  let result = state.uploads.get(key);
  if (!result) {
    const token = begin();
    const prev = state.results.upload;
    if (!prev || prev.result.query.upload_id !== uid) clearUpload();
    else $("upload-results").replaceChildren();
    setStatus("upload", "Searching…", true);
    try {
      result = await api(`api/upload/${uid}?k=${k}&database=${db}`, { signal: token.signal });
    } catch (err) {
      if (current(token)) {
        clearUpload();
        setStatus("upload", "");
      }
      throw err;
    }
    if (!current(token)) return;
    state.uploads.set(key, result);
  } else {
    begin();
  }
  setTitle(`${result.query.filename || "your image"}: similar images`);
  paintUpload(result, layer, !keepFocus);
}

async function uploadFile(file) {
  if (!file) return;
  showError("");
  const info = state.info;
  const { params } = parseHash();
  const token = begin();
  clearUpload();
  if (file.size > info.max_upload_bytes) {
    showError(`${file.name} is too large: ${formatBytes(file.size)} (the limit is ${info.max_upload_text}).`);
    return;
  }
  const k = readK(params);
  const layer = readLayer(params);
  const db = $("upload-database").value || "ood";
  const form = new FormData();
  form.append("file", file);
  form.append("k", k);
  form.append("database", db);
  $("upload-caption").textContent = file.name;
  setStatus("upload", `Uploading and searching with ${file.name}…`, true);
  $("upload-form").classList.add("busy");
  let result;
  try {
    result = await api("api/search", { method: "POST", body: form, signal: token.signal });
  } catch (err) {
    if (current(token)) {
      clearUpload();
      setStatus("upload", "");
      // the address must not keep the previous upload's id: a reload would show its results
      const { parts: now, params: kept } = parseHash();
      if (now[0] === "upload" && now[1]) {
        kept.delete("k");
        history.replaceState(null, "", hashFor(["upload"], Object.fromEntries(kept)));
      }
      if (err.name !== "AbortError") {
        // the same file again helps only when the server, not the file, was the problem
        const transient = err.unreachable || err.status >= 500;
        showError(uploadError(file, err), transient ? () => uploadFile(file) : null, err.retryAfter || 0);
      }
    }
    return;
  } finally {
    $("upload-form").classList.remove("busy");
    $("upload-file").value = "";
  }
  if (!current(token)) return;
  const uid = result.query.upload_id;
  state.uploads.set(`${uid} ${result.k} ${db}`, result);
  go(hashFor(["upload", uid], { k: result.k, layer: layer === "all" ? null : layer, db: db === "ood" ? null : db }));
}

/** Why an upload failed and what to do, in plain words. */
function uploadError(file, err) {
  if (err.unreachable || err.status === 503 || err.status >= 500) {
    return explain(err, `searching with ${file.name}`);
  }
  if (err.status === 413) return `${file.name} is too large for this server: ${err.message}. Choose a smaller image.`;
  if (err.status === 415) {
    return `${file.name} is not a JPEG, PNG or WebP image, the formats this app reads. Choose an image in one of them.`;
  }
  if (err.status === 400 || err.status === 422) {
    return `${file.name} could not be read as an image: the file may be damaged or cut short. ` +
      `Choose another image. (Details: ${err.message}.)`;
  }
  return `${file.name}: ${explain(err, `searching with ${file.name}`)}`;
}

function imageFrom(items) {
  for (const item of items || []) {
    const file = item instanceof File ? item : item.kind === "file" ? item.getAsFile() : null;
    if (file && file.type.startsWith("image/")) return file;
  }
  return null;
}

function setupUpload(info) {
  const select = $("upload-database");
  for (const db of info.databases) {
    select.append(el("option", { value: db.name, text: `${db.description} (${db.size} images)` }));
  }
  $("upload-database-field").hidden = info.databases.length < 2;
  select.addEventListener("change", () => {
    const { parts } = parseHash();
    if (parts[1]) setParam("db", select.value);
  });
  const mp = (info.max_pixels / 1e6).toFixed(0);
  $("upload-limits").textContent = `JPEG, PNG or WebP, up to ${info.max_upload_text} and ${mp} megapixels; ` +
    "any size is resized to 64×64, the size of the training images, without keeping its aspect ratio.";
  $("upload-form").addEventListener("submit", (e) => e.preventDefault());
  $("upload-file").addEventListener("change", () => uploadFile($("upload-file").files[0]));
  const drop = $("drop");
  // drop anywhere in the window; paste anywhere too
  window.addEventListener("dragover", (e) => {
    if ([...(e.dataTransfer.types || [])].includes("Files")) {
      e.preventDefault();
      drop.classList.add("over");
    }
  });
  window.addEventListener("dragleave", (e) => { if (!e.relatedTarget) drop.classList.remove("over"); });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = imageFrom(e.dataTransfer.files);
    if (file) startUpload(file);
  });
  document.addEventListener("paste", (e) => {
    const file = imageFrom(e.clipboardData && e.clipboardData.items);
    if (file) {
      e.preventDefault();
      startUpload(file);
    }
  });
}

function startUpload(file) {
  if ($("view-upload").hidden) {
    state.keepFocus = true;
    history.pushState(null, "", "#/upload");
    show("upload");
    state.keepFocus = false;
  }
  uploadFile(file);
}

// ---------------------------------------------------------------- results page

function table(testid, head, rows, foot = []) {
  return el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": `${testid.replace("-", " ")}` }, el("table", { "data-testid": testid },
    el("thead", {}, el("tr", {}, ...head.map((t) => el("th", { scope: "col", text: t })))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c, i) => el(i ? "td" : "th", { scope: i ? null : "row", text: c }))))),
    foot.length ? el("tfoot", {}, ...foot.map((r) => el("tr", {}, ...r.map((c, i) => el(i ? "td" : "th", { scope: i ? null : "row", text: c }))))) : null));
}

async function renderResults() {
  show("results", "Results");
  const token = begin();
  const r = await load("results", token, "api/results", "Loading the run's results…");
  if (!r) return;
  setStatus("results", "");
  $("results-title").textContent = `Results of run ${r.run}`;
  const ref = r.reference;
  const parts = [];
  parts.push(el("h2", { text: "Classification: does the network name the right class?" }));
  parts.push(el("p", { text: `The network was trained on ${r.n_classes} classes. Top-1: how often its first guess is right; ` +
    (r.chance.top5_trivial
      ? `top-5 is n/a: with ${r.n_classes} classes the five best guesses include every class, so it is trivially 100%. Guessing at random gives ${pct(r.chance.top1)}.`
      : `top-5: how often the right class is among its five best guesses. Guessing at random gives ${pct(r.chance.top1)} and ${pct(r.chance.top5)}.`) }));
  // top-5 of at most 5 classes is always 100%: n/a (the report's rule)
  const top5 = (v) => r.chance.top5_trivial ? "n/a" : pct(v);
  if (r.eval) {
    const rows = Object.entries(r.eval.splits).map(([name, m]) =>
      [name, String(m.n), pct(m.top1), top5(m.top5), num(m.loss)]);
    const foot = [["chance", "", pct(r.chance.top1), top5(r.chance.top5), ""]];
    if (ref && ref.top1 !== null) foot.push(["course (test)", "", pct(ref.top1), pct(ref.top5), ""]);
    parts.push(table("eval-table", ["split", "images", "top-1", "top-5", "loss"], rows, foot));
    parts.push(el("p", { class: "muted", text: `Weights: the ${r.eval.checkpoint} checkpoint (epoch ${r.eval.epoch}); loss is the mean cross-entropy.` }));
  } else {
    parts.push(el("p", { class: "empty", text: "No evaluation yet: run `neuralcodes evaluate` on this run." }));
  }
  parts.push(el("h2", { text: "Retrieval: how well do the codes find images of the same class?" }));
  parts.push(el("p", { text: "Each out-of-domain image in turn queries all the others, ranked by the cosine similarity of " +
    "one layer's codes (classes the network never saw). mAP is the mean average precision over all queries; " +
    `P@5 and P@10 the share of the same class among the top 5 and 10. This app searches ${variant(r.relu)} codes.` }));
  if (r.map && r.map.length) {
    const variants = new Set(r.map.map((m) => m.relu));
    const course = ref && Object.keys(ref.map).length;
    // chance is the same for every layer: one footer row, so the table fits a phone
    const head = ["layer", ...(variants.size > 1 ? ["codes"] : []), "mAP", "P@5", "P@10", ...(course ? ["course"] : [])];
    const rows = r.map.map((m) => [m.layer, ...(variants.size > 1 ? [variant(m.relu)] : []), pct(m.map),
      pct(m["p@5"]), pct(m["p@10"]),
      // the course measured pre-ReLU codes only: no number beside a post-ReLU row
      ...(course ? [m.relu ? "—" : pct(ref.map[m.layer])] : [])]);
    const c = r.map[0];
    const foot = [["chance", ...(variants.size > 1 ? [""] : []), pct(c.chance_map), pct(c.chance_p), pct(c.chance_p), ...(course ? [""] : [])]];
    parts.push(table("map-table", head, rows, foot));
    parts.push(el("p", { class: "muted", text: `${r.map[0].n_queries} queries; chance: the mean AP of a random ranking, and the share of the query's class among the other images. Source: ${r.map_source}.` +
      (course ? ` Course: the course's mAP (${ref.source}), pre-ReLU codes only, on its own ood set of 5,000 images in 10 classes.` : "") }));
  } else {
    parts.push(el("p", { class: "empty", text: "No retrieval results yet." }));
  }
  if (r.methods) parts.push(...methodsSection(r.methods));
  parts.push(el("h2", { text: "Report and figures" }));
  parts.push(r.report_url
    ? el("p", {}, el("a", { class: "button", href: r.report_url, text: "Read the full report" }))
    : el("p", { class: "empty", text: `No report yet: \`${r.report_command}\` writes it (RUN: this run's folder).` }));
  const curves = el("div", { id: "curves" });
  const figs = r.figures.map((f) => el("figure", { class: "figure", "data-name": f.name },
    el("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": f.title }, el("img", { src: f.url, alt: f.title })),
    el("figcaption", {}, f.title, " · ", el("a", { href: f.url, text: "open full size" }))));
  const curveFig = figs.find((f) => f.dataset.name === "curves");
  if (curveFig) curves.append(curveFig);
  else curves.append(el("p", { class: "empty", text: "No learning curves yet." }));
  parts.push(curves, ...figs.filter((f) => f !== curveFig));
  $("results-body").replaceChildren(...parts);
  announce(`Results of run ${r.run} loaded.`);
}

/** Long method names (conv5/spoc-centre+lw256+aqe) may break after "/" and "+", so that the
 *  numbers beside them show on a phone. */
function tableWrapping(box) {
  box.classList.add("wrap-names");
  for (const th of box.querySelectorAll("tbody th")) {
    th.replaceChildren(...th.textContent.split(/(?<=[/+])/).flatMap((part, i) => (i ? [el("wbr"), part] : [part])));
  }
  return box;
}

/** The methods study beyond the paper (methods.json): its table and verdict; its figure is
 *  among the figures below. */
function methodsSection(m) {
  const ci = (r) => r.reference ? "—"
    : `${pp(r.diff)} [${pp(r.ci95[0])}, ${pp(r.ci95[1])}]${r.significant ? " *" : ""}`;
  const rows = m.rows.map((r) => [r.method, pct(r.map), ci(r), pct(r.p5), pct(r.p10), String(r.dims), r.ms.toFixed(2), r.family, r.params]);
  return [
    el("h2", { text: "Beyond the paper: pooled conv descriptors, whitening, re-ranking" }),
    el("p", { text: `The paper's successors on the same ${m.n_queries} ood queries, everything fitted or tuned on in-domain images only. ` +
      `Difference: to ${m.reference} (the best of the paper's codes here), with its paired-bootstrap 95% interval in percentage points (* : it excludes 0).` }),
    tableWrapping(table("methods-table", ["method", "mAP", `− ${m.reference} [95% CI]`, "P@5", "P@10", "dims", "ms/query", "family", "parameters"], rows,
      [["chance", pct(m.chance_map), "", "", "", "", "", "", ""]])),
    el("p", { "data-testid": "methods-verdict", text: m.verdict.join(" ") }),
  ];
}

// ---------------------------------------------------------------- API page

async function renderApi() {
  show("api");
  const token = begin();
  const schema = await load("api", token, "openapi.json", "Loading the API description…");
  if (!schema) return;
  setStatus("api", "");
  const items = [];
  for (const [path, methods] of Object.entries(schema.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      items.push(el("li", { class: "api-row" }, el("code", { class: "method", text: method.toUpperCase() }),
        el("code", { class: "path", text: path }), el("span", { class: "summary", text: op.summary || "" })));
    }
  }
  $("api-list").replaceChildren(...items);
}

// ---------------------------------------------------------------- start

function start() {
  $("skip").addEventListener("click", (e) => {
    e.preventDefault();
    const view = document.querySelector(".view:not([hidden]) h1");
    (view || $("main")).focus();
  });
  // every navigation goes through route(), which boots the app first while it has no info:
  // links keep working after the server comes back
  window.addEventListener("hashchange", route);
  boot();
}

const BOOT_RETRY_S = 5;
let booting = null;

/** Load /api/info (a loading state shows meanwhile), set the app up, then show the view;
 *  while the server cannot be reached, say so and try again every few seconds. */
function boot() {
  if (!booting) {
    booting = (async () => {
      appLoading(true);
      try {
        state.info = await api("api/info");
      } catch (err) {
        booting = null;
        appLoading(false);
        showError(`The app could not start. ${explain(err, "starting")}`, () => boot(),
          err.retryAfter || BOOT_RETRY_S, true);
        return;
      }
      appLoading(false);
      showError("");
      setup(state.info);
      state.keepFocus = true; // a page load leaves focus alone, so Tab reaches the skip link first
      await route();
    })();
  }
  return booting;
}

function appLoading(on) {
  const box = $("app-status");
  box.hidden = !on;
  box.classList.toggle("busy", on);
}

function setup(info) {
  $("run-name").textContent = `run ${info.run}`;
  $("gallery-caption").textContent = `The ${info.gallery_size} out-of-domain images ` +
    `(${info.classes.length} classes the network never saw in training). Choose one to find the most similar others.`;
  const classSelect = $("gallery-class");
  for (const c of info.classes) classSelect.append(el("option", { value: c.label, text: c.class_name }));
  classSelect.addEventListener("change", () =>
    go(hashFor(["gallery"], { class: classSelect.value }), true));
  buildControls("query");
  buildControls("upload");
  buildControls("item");
  if (hasIndex()) { // "Your photos" after the gallery, only when there is an index to browse
    document.querySelector("nav[aria-label=Main] li").after(
      el("li", {}, el("a", { href: "#/collection", "data-view": "collection", text: "Your photos" })));
  }
  $("collection-filter").addEventListener("submit", (e) => { e.preventDefault(); filterCollection(true); });
  $("collection-folder").addEventListener("change", () => filterCollection(true));
  setupUpload(info);
}

start();
