// neuralcodes web UI: plain JavaScript over the JSON API (no build step, no external files).
"use strict";

const state = { info: null, galleryOffset: 0, galleryLimit: 120 };

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json() : null;
  if (!response.ok) {
    let detail = body && body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
    throw new Error(detail || `${response.status} ${response.statusText}`);
  }
  return body;
}

function fmt(x, digits = 3) {
  return x === null || x === undefined || Number.isNaN(x) ? "—" : Number(x).toFixed(digits);
}

// ---------------------------------------------------------------- views

function show(view) {
  for (const section of document.querySelectorAll(".view")) {
    section.hidden = section.id !== `view-${view}`;
  }
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.view === view);
  }
}

async function route() {
  showError("");
  const hash = location.hash || "#/gallery";
  const query = hash.match(/^#\/query\/(\d+)$/);
  try {
    if (query) {
      show("query");
      await renderQuery(Number(query[1]));
    } else if (hash === "#/upload") {
      show("upload");
    } else if (hash === "#/results") {
      show("results");
      await renderResults();
    } else if (hash === "#/api") {
      show("api");
      await renderApi();
    } else {
      show("gallery");
      await renderGallery();
    }
  } catch (err) {
    showError(err.message);
  }
}

async function renderGallery() {
  const { galleryOffset: offset, galleryLimit: limit } = state;
  const page = await api(`api/gallery?offset=${offset}&limit=${limit}`);
  const grid = $("gallery");
  grid.replaceChildren();
  for (const item of page.items) {
    const label = `#${item.id} ${item.class_name}`;
    const img = el("img", { src: item.url, alt: label, width: 64, height: 64, loading: "lazy" });
    const button = el("button", { type: "button", title: label, "data-id": item.id }, img);
    button.addEventListener("click", () => { location.hash = `#/query/${item.id}`; });
    grid.append(button);
  }
  const last = Math.min(offset + page.items.length, page.total);
  $("gallery-range").textContent = `${offset + 1}–${last} of ${page.total}`;
  $("gallery-prev").disabled = offset === 0;
  $("gallery-next").disabled = last >= page.total;
}

function hitCard(hit) {
  const same = hit.same_class;
  const cls = same === true ? "hit same" : same === false ? "hit diff" : "hit";
  const mark = same === true ? "✓" : same === false ? "✗" : "";
  const title = same === true ? "same class as the query"
    : same === false ? "another class than the query" : "";
  return el("div", { class: cls, "data-testid": "hit", title },
    el("img", { src: hit.url, alt: hit.class_name || `#${hit.id}`, width: 64, height: 64 }),
    el("span", { class: "mark", "data-testid": "mark", text: mark }),
    el("div", { class: "meta" },
      el("div", { class: "score", text: fmt(hit.score) }),
      el("div", { text: `${hit.rank}. #${hit.id}` }),
      el("div", { text: hit.class_name || "" })));
}

function renderLayers(container, result) {
  container.replaceChildren();
  for (const layer of result.layers) {
    const heading = el("h3", { text: `Layer ${layer.layer}` });
    if (layer.ap !== null && layer.ap !== undefined) {
      heading.append(el("span", { class: "ap", "data-testid": "ap", text: `AP ${fmt(layer.ap)}` }));
    }
    const hits = el("div", { class: "hits" }, ...layer.hits.map(hitCard));
    container.append(el("div", { class: "layer", "data-layer": layer.layer }, heading, hits));
  }
}

async function renderQuery(id) {
  const k = $("query-k").value;
  $("query-results").replaceChildren();
  const result = await api(`api/search/${id}?k=${k}`);
  const q = result.query;
  $("query-image").src = q.url;
  $("query-caption").textContent = `#${q.id} ${q.class_name}`;
  renderLayers($("query-results"), result);
}

async function renderResults() {
  const r = await api("api/results");
  const evalBox = $("eval-table");
  if (r.eval) {
    const head = el("tr", {}, ...["split", "cross-entropy", "top-1", "top-5", "images"]
      .map((t) => el("th", { text: t })));
    const rows = Object.entries(r.eval.splits).map(([name, m]) => el("tr", {},
      el("td", { text: name }), el("td", { text: fmt(m.loss) }),
      el("td", { text: fmt(m.top1) }), el("td", { text: fmt(m.top5) }),
      el("td", { text: String(m.n) })));
    evalBox.replaceChildren(
      el("p", { class: "muted", text: `checkpoint: ${r.eval.checkpoint} (epoch ${r.eval.epoch})` }),
      el("table", { "data-testid": "eval-table" }, el("thead", {}, head), el("tbody", {}, ...rows)));
  } else {
    evalBox.replaceChildren(el("p", { class: "muted", text: "No eval.json yet: run `neuralcodes evaluate`." }));
  }
  const mapBox = $("map-table");
  if (r.map && r.map.length) {
    const head = el("tr", {}, ...["layer", "codes", "mAP", "P@5", "queries"]
      .map((t) => el("th", { text: t })));
    const rows = r.map.map((m) => el("tr", {}, el("td", { text: m.layer }),
      el("td", { text: m.relu ? "post-ReLU" : "pre-ReLU" }), el("td", { text: fmt(m.map) }),
      el("td", { text: fmt(m["p@5"]) }), el("td", { text: String(m.n_queries) })));
    mapBox.replaceChildren(el("p", { class: "muted", text: `source: ${r.map_source}` }),
      el("table", { "data-testid": "map-table" }, el("thead", {}, head), el("tbody", {}, ...rows)));
  } else {
    mapBox.replaceChildren(el("p", { class: "muted", text: "No retrieval results yet." }));
  }
  $("curves").replaceChildren(r.curves_url
    ? el("img", { src: r.curves_url, alt: "learning curves" })
    : el("p", { class: "muted", text: "No curves.png yet." }));
}

async function renderApi() {
  const schema = await api("openapi.json");
  const rows = [];
  for (const [path, methods] of Object.entries(schema.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      rows.push(el("tr", { class: "api-row" }, el("td", {}, el("code", { text: method.toUpperCase() })),
        el("td", {}, el("code", { text: path })), el("td", { text: op.summary || "" })));
    }
  }
  $("api-list").replaceChildren(el("table", {}, el("tbody", {}, ...rows)));
}

// ---------------------------------------------------------------- upload

async function submitUpload(event) {
  event.preventDefault();
  showError("");
  const file = $("upload-file").files[0];
  if (!file) {
    showError("Choose an image first.");
    return;
  }
  const form = new FormData();
  form.append("file", file);
  form.append("k", $("upload-k").value);
  form.append("database", $("upload-database").value);
  $("upload-results").replaceChildren();
  $("upload-submit").disabled = true;
  try {
    const result = await api("api/search", { method: "POST", body: form });
    const q = result.query;
    $("upload-query").hidden = false;
    $("upload-preview").src = q.url;
    $("upload-caption").textContent =
      `${q.filename || "your image"} (${q.width}×${q.height} ${q.format}) → 64×64`;
    renderLayers($("upload-results"), result);
  } catch (err) {
    showError(err.message);
  } finally {
    $("upload-submit").disabled = false;
  }
}

function setupUpload(info) {
  const select = $("upload-database");
  for (const db of info.databases) {
    select.append(el("option", { value: db.name, text: `${db.name}: ${db.description} (${db.size} images)` }));
  }
  const mb = (info.max_upload_bytes / 2 ** 20).toFixed(0);
  const mp = (info.max_pixels / 1e6).toFixed(0);
  $("upload-limits").textContent = `Limits: ${mb} MiB, ${mp} megapixels.`;
  $("upload-form").addEventListener("submit", submitUpload);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) $("upload-file").files = e.dataTransfer.files;
  });
}

// ---------------------------------------------------------------- start

async function start() {
  try {
    state.info = await api("api/info");
  } catch (err) {
    showError(err.message);
    return;
  }
  $("run-name").textContent = `— run ${state.info.run}`;
  $("gallery-caption").textContent = `${state.info.gallery_size} out-of-domain images ` +
    `(${state.info.classes.length} classes). Click one to search the others with it.`;
  for (const sel of [$("query-k"), $("upload-k")]) {
    for (const option of [...sel.options]) {
      if (Number(option.value) > state.info.max_k) option.remove();
    }
    if (![...sel.options].some((o) => Number(o.value) === state.info.k)) {
      sel.prepend(el("option", { text: String(state.info.k) }));
    }
    sel.value = String(state.info.k);
  }
  setupUpload(state.info);
  $("gallery-prev").addEventListener("click", () => {
    state.galleryOffset = Math.max(0, state.galleryOffset - state.galleryLimit);
    renderGallery().catch((e) => showError(e.message));
  });
  $("gallery-next").addEventListener("click", () => {
    state.galleryOffset += state.galleryLimit;
    renderGallery().catch((e) => showError(e.message));
  });
  $("query-k").addEventListener("change", route);
  window.addEventListener("hashchange", route);
  await route();
}

start();
