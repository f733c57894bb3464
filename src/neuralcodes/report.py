"""The report: ``runs/<name>/report.md`` and a self-contained ``report.html``.

It answers the assignment's questions from the run's saved measurements. Nothing in the text is
canned: every sentence that states a result (which layer is best, by how much, whether the paper is
confirmed) is generated from the numbers that the tables next to it show, so the two cannot
disagree.

The report is built in two steps: :func:`collect` reads the run's artifacts into one plain dict
(the *facts*), and :func:`render` turns the facts into a list of blocks that are written out both as
Markdown and as HTML (images embedded as base64).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import read_json, write_text
from neuralcodes.runs import RunDir

#: The course's reference solution, given as context (assignment notebook results).
COURSE_REFERENCE = {
    "test_top1": 0.350,
    "test_top5": 0.613,
    "map": {"5": 0.287, "6": 0.318, "7": 0.345},
}

#: What Babenko et al. observed (Sec. 4 and Tables 1-2 of the paper), stated qualitatively.
PAPER_OBSERVATIONS = (
    "With the ImageNet-trained network, the layer-6 codes gave the best retrieval on the paper's "
    "benchmarks (Holidays, Oxford Buildings, UKB), layer 7 was slightly worse and layer 5 worse "
    "still; and the codes stayed accurate under strong PCA compression (down to 128-256 "
    "dimensions with little loss)."
)

LAYER_NAMES = {"5": "layer 5 (last pool)", "6": "layer 6 (fc6)", "7": "layer 7 (fc7)"}

TECHNIQUES = {
    "augment": (
        "Data augmentation (random crops and horizontal flips)",
        "Each epoch sees slightly shifted and mirrored versions of the training images, so the "
        "network cannot memorise pixels and must learn features that survive small changes. With "
        "only {per_class} training images per class and a {params}-parameter model, overfitting "
        "is what stops training early; augmentation delays it.",
    ),
    "batch_norm": (
        "Batch normalisation after every convolution",
        "Normalising each convolution's output per batch keeps activations well scaled, which "
        "lets Adam make faster progress at the same learning rate and adds a mild regularising "
        "noise; it usually reaches a lower validation loss before early stopping fires.",
    ),
}


# --------------------------------------------------------------------------------------------
# Blocks: the report's content, independent of its output format.


@dataclass
class Block:
    """One piece of the report: a heading, a paragraph, a table or an image."""

    kind: str  # "h1" | "h2" | "p" | "table" | "image" | "list"
    text: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    image: Path | None = None


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


# --------------------------------------------------------------------------------------------
# Facts: what the run measured.


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect(run: str | Path) -> dict[str, Any]:
    """Read a run's saved artifacts into one dict of facts (missing parts are ``None``)."""
    rd = RunDir.existing(run)
    saved = read_json(rd.config)
    facts: dict[str, Any] = {"run": rd.root.name, "root": str(rd.root), "saved": saved}
    facts["epochs"] = _read_jsonl(rd.metrics)
    facts["eval"] = read_json(rd.eval_json) if rd.eval_json.is_file() else None
    facts["curves"] = rd.curves if rd.curves.is_file() else None
    facts["state"] = _training_state(rd)
    facts["retrieval"] = _retrieval_facts(rd)
    facts["improved"] = _find_improved_runs(rd, saved)
    return facts


def _training_state(rd: RunDir) -> dict[str, Any] | None:
    for name in ("train_state.json", "state.json"):
        if (rd.root / name).is_file():
            return read_json(rd.root / name)
    return None


def _retrieval_facts(rd: RunDir) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("map", "pca", "evidence"):
        p = rd.retrieval / f"{key}.json"
        out[key] = read_json(p) if p.is_file() else None
    out["figures"] = sorted(rd.retrieval.glob("top*_layer*.png")) if rd.retrieval.is_dir() else []
    out["pca_plot"] = rd.retrieval / "pca.png" if (rd.retrieval / "pca.png").is_file() else None
    return out


def _find_improved_runs(rd: RunDir, saved: dict[str, Any]) -> list[dict[str, Any]]:
    """Sibling runs on the same data and splits that use one of the improving techniques."""
    found = []
    data = saved.get("data", {})
    for other in sorted(rd.root.parent.iterdir()):
        if other == rd.root or not (other / "config.json").is_file():
            continue
        if not (other / "eval.json").is_file():
            continue
        o = read_json(other / "config.json")
        od = o.get("data", {})
        if od.get("splits_hash") != data.get("splits_hash"):
            continue
        cfg = o.get("config", {})
        used = [t for t, on in (("augment", cfg.get("train", {}).get("augment")),
                                ("batch_norm", cfg.get("model", {}).get("batch_norm"))) if on]
        if used:
            found.append({"name": other.name, "techniques": used,
                          "eval": read_json(other / "eval.json")})
    return found


# --------------------------------------------------------------------------------------------
# Rendering facts into blocks.


def render(facts: dict[str, Any]) -> list[Block]:
    """All report blocks, in order."""
    blocks = [Block("h1", f"Neural codes for image retrieval — run `{facts['run']}`")]
    blocks += _data_section(facts)
    blocks += _architecture_section(facts)
    blocks += _training_section(facts)
    blocks += _results_section(facts)
    blocks += _techniques_section(facts)
    blocks += _retrieval_section(facts)
    blocks += _comparison_section(facts)
    return blocks


def _data_section(facts: dict[str, Any]) -> list[Block]:
    data = facts["saved"].get("data", {})
    cfg = facts["saved"].get("config", {}).get("data", {})
    sizes = data.get("sizes", {})
    out = [Block("h2", "Data")]
    out.append(Block("p", (
        f"Source: `{data.get('source') or cfg.get('source') or 'official Tiny ImageNet archive'}` "
        f"(checksum `{data.get('source_checksum', '—')}`; cache manifest "
        f"`{str(data.get('manifest_hash', '—'))[:16]}`). "
        f"{data.get('num_classes', '—')} in-domain classes train the ConvNet; "
        f"{len(data.get('ood_classes', []) or [])} out-of-domain classes serve retrieval only. "
        f"In-domain images were shuffled with seed {cfg.get('seed', '—')} and cut "
        f"{'/'.join(str(round(100 * f)) for f in cfg.get('fractions', []))}; pixels are scaled "
        "to [0, 1] per batch.")))
    out.append(Block("table", header=["split", "images"],
                     rows=[[k, f"{v:,}"] for k, v in sizes.items()]))
    ood = data.get("ood_classes") or []
    if ood:
        out.append(Block("p", "Out-of-domain classes: " + "; ".join(
            f"{c['name']} (`{c['wnid']}`)" if isinstance(c, dict) else str(c) for c in ood) + "."))
    return out


def _architecture_section(facts: dict[str, Any]) -> list[Block]:
    import torch

    from neuralcodes.config import Config
    from neuralcodes.model import ConvNet, count_parameters, layer_table

    cfg = Config.from_dict(facts["saved"]["config"])
    n = facts["saved"].get("data", {}).get("num_classes", 190)
    with torch.device("meta"):  # shapes and counts only: allocate nothing
        model = ConvNet(n, cfg.model)
    rows = [[r["layer"], "×".join(map(str, r["output"])), f"{r['parameters']:,}"]
            for r in layer_table(model)]
    total = count_parameters(model)
    return [
        Block("h2", "Architecture"),
        Block("p", (
            "Babenko et al.'s ConvNet as modified by the assignment: conv1 4×4 stride 1, 3×3/2 "
            "max-pooling, fc6/fc7 of "
            f"{cfg.model.fc_width:,} units, dropout {cfg.model.dropout} before fc6 and fc7, "
            "'same' padding, conv → pool → ReLU where a pool follows"
            + (", batch normalisation after each convolution" if cfg.model.batch_norm else "")
            + f". Total: **{total:,} parameters** for {n} classes.")),
        Block("table", header=["layer", "output", "parameters"],
              rows=rows + [["total", "", f"{total:,}"]]),
    ]


def _training_section(facts: dict[str, Any]) -> list[Block]:
    epochs = facts["epochs"]
    tcfg = facts["saved"].get("config", {}).get("train", {})
    out = [Block("h2", "Training")]
    if not epochs:
        return out + [Block("p", "No training epochs recorded yet.")]
    best = min(epochs, key=lambda r: r["val_loss"])
    last = epochs[-1]
    state = facts.get("state") or {}
    stopped_early = bool(state.get("stopped_early", last["epoch"] < tcfg.get("max_epochs", 100)))
    seconds = sum(r.get("seconds", 0.0) for r in epochs)
    text = (
        f"Adam (lr {tcfg.get('lr')}, amsgrad={tcfg.get('amsgrad')}), "
        f"batch {tcfg.get('batch_size')}, "
        f"cross-entropy, {tcfg.get('precision', 'fp32')} on {state.get('device', 'the CPU')}. "
        f"Training ran {len(epochs)} epoch{'s' * (len(epochs) != 1)} in {seconds / 60:.1f} min. ")
    if stopped_early:
        text += (f"Early stopping fired at epoch {last['epoch']}, the first epoch whose validation "
                 f"loss ({last['val_loss']:.4f}) rose above the best so far "
                 f"(patience {tcfg.get('patience', 0)}); ")
    else:
        text += f"It reached the epoch limit ({tcfg.get('max_epochs')}) without early stopping; "
    text += (f"the weights kept are those of epoch {best['epoch']} "
             f"(validation loss {best['val_loss']:.4f}).")
    out.append(Block("p", text))
    if facts.get("curves"):
        out.append(Block("image", "Learning curves: loss and accuracy, train vs validation.",
                         image=Path(facts["curves"])))
    return out


def _results_section(facts: dict[str, Any]) -> list[Block]:
    ev = facts.get("eval")
    out = [Block("h2", "Results: train, validation and test")]
    if not ev:
        return out + [Block("p", "Not evaluated yet (`neuralcodes evaluate`).")]
    rows = [[split, _fmt(m["loss"], 4), _fmt(m["top1"]), _fmt(m["top5"]), f"{m['n']:,}"]
            for split, m in ev["splits"].items()]
    test = ev["splits"].get("test", {})
    train = ev["splits"].get("train", {})
    gap = (train.get("top1", 0) - test.get("top1", 0)) if train and test else None
    out.append(Block("p", (
        f"Best checkpoint (epoch {ev.get('epoch', '—')}), evaluation mode (no dropout). "
        f"Test top-1 accuracy is {_fmt(test.get('top1'))} and top-5 {_fmt(test.get('top5'))}"
        + (f"; the train-test gap in top-1 of {_fmt(gap)} shows how much the model overfits."
           if gap is not None else ".")
        + f" (The course's reference solution reached test top-1 "
        f"{COURSE_REFERENCE['test_top1']:.3f} and top-5 {COURSE_REFERENCE['test_top5']:.3f}.)")))
    out.append(Block("table", header=["split", "cross-entropy", "top-1", "top-5", "images"],
                     rows=rows))
    return out


def _techniques_section(facts: dict[str, Any]) -> list[Block]:
    out = [Block("h2", "Two techniques that would likely improve test accuracy")]
    base = (facts.get("eval") or {}).get("splits", {}).get("test", {}).get("top1")
    measured: dict[str, list[str]] = {t: [] for t in TECHNIQUES}
    for run in facts.get("improved", []):
        top1 = run["eval"]["splits"]["test"]["top1"]
        diff = None if base is None else top1 - base
        note = (f"measured in run `{run['name']}` (with {' + '.join(run['techniques'])}): "
                f"test top-1 {_fmt(top1)}"
                + ("" if diff is None else f", {diff:+.3f} against this run's {_fmt(base)}")
                + (" — the joint effect of both techniques, not this one alone"
                   if len(run["techniques"]) > 1 else ""))
        for t in run["techniques"]:
            measured[t].append(note)
    sizes = facts["saved"].get("data", {}).get("sizes", {})
    n_classes = facts["saved"].get("data", {}).get("num_classes") or 1
    params = facts["saved"].get("model", {}).get("parameters")
    numbers = {"per_class": f"{sizes.get('train', 0) // n_classes:,}",
               "params": (f"{params / 1e6:.1f}-million" if params and params >= 1e6
                          else f"{params:,}" if params else "large")}
    items = []
    for key, (name, why) in TECHNIQUES.items():
        status = ("; ".join(measured[key]) if measured[key]
                  else "not measured (run `neuralcodes run --preset improved` next to this run)")
        items.append(f"**{name}.** {why.format(**numbers)} *Evidence:* {status}.")
    out.append(Block("list", items=items))
    return out


def _best_layer(maps: dict[str, float]) -> tuple[str, str, float]:
    """(best layer, runner-up, margin) by mAP; ties go to the lower layer."""
    order = sorted(maps, key=lambda k: (-maps[k], k))
    return order[0], order[1] if len(order) > 1 else order[0], maps[order[0]] - maps[order[-1]]


def _retrieval_section(facts: dict[str, Any]) -> list[Block]:
    r = facts["retrieval"]
    out = [Block("h2", "Image retrieval with neural codes")]
    relu = facts["saved"].get("config", {}).get("retrieval", {}).get("relu", False)
    out.append(Block("p", (
        "Each of the out-of-domain images queries the others; codes are L2-normalised and "
        "ranked by cosine similarity (dot product); the query itself is excluded by index. "
        f"Default codes are {'post' if relu else 'pre'}-ReLU activations (the course's reference "
        "solution used pre-ReLU); both are measured below.")))
    for fig in r["figures"]:
        out.append(Block("image", f"Top-5 retrievals for the first 10 ood queries: {fig.stem}. "
                         "Green frame ✓ = same class as the query, red ✗ = other class.",
                         image=fig))
    maps = r.get("map")
    if maps:
        rows = []
        for variant in ("pre", "post"):
            for layer, m in sorted((maps.get(variant) or {}).items()):
                rows.append([LAYER_NAMES.get(layer, layer), f"{variant}-ReLU", _fmt(m["map"]),
                             _fmt(m.get("p@5")), _fmt(m.get("p@10"))])
        out.append(Block("table", header=["codes", "activation", "mAP", "P@5", "P@10"],
                         rows=rows))
    ev = r.get("evidence")
    if ev:
        out += _layer_differences(ev)
    if r.get("pca"):
        out += _pca_blocks(r["pca"], r.get("pca_plot"))
    return out


def _layer_differences(ev: dict[str, Any]) -> list[Block]:
    out = [Block("p", "**What differs between the layers** (measured, see "
                      "`retrieval/evidence.json`):")]
    items = []
    per = ev.get("per_layer", {})
    if per:
        colour = {k: v.get("colour_similarity") for k, v in per.items()
                  if v.get("colour_similarity") is not None}
        if colour:
            top = max(colour, key=colour.get)
            items.append(
                f"Colour: the results of {LAYER_NAMES.get(top, top)} are the most similar in "
                f"colour to their queries (mean colour-histogram intersection "
                + ", ".join(f"layer {k}: {v:.3f}" for k, v in sorted(colour.items()))
                + "). " + ("Lower layers retrieving by colour and texture, higher layers by "
                           "object category, is what one expects from the feature hierarchy."
                           if top == min(colour) else
                           "Here the lowest layer is not the most colour-driven."))
        p5 = {k: v.get("p@5") for k, v in per.items() if v.get("p@5") is not None}
        if p5:
            top = max(p5, key=p5.get)
            items.append("Category: precision@5 is "
                         + ", ".join(f"layer {k}: {v:.3f}" for k, v in sorted(p5.items()))
                         + f"; {LAYER_NAMES.get(top, top)} most often returns the query's class.")
        spars = {k: v.get("sparsity") for k, v in per.items() if v.get("sparsity") is not None}
        if spars:
            items.append("Sparsity (share of zero activations after ReLU): "
                         + ", ".join(f"layer {k}: {v:.2f}" for k, v in sorted(spars.items()))
                         + "; dimensions: "
                         + ", ".join(f"layer {k}: {v.get('dims'):,}" for k, v in
                                     sorted(per.items()) if v.get("dims")) + ".")
    changed = ev.get("top5_changed")
    if changed:
        n = ev.get("first_queries", 10)
        items.append(f"Of the first {n} queries, this many have a different top-5 list in two "
                     "layers: " + ", ".join(f"layers {k.replace('-', ' and ')}: {v} of {n}"
                                            for k, v in changed.items()) + ".")
    out.append(Block("list", items=items))
    return out


def _pca_blocks(pca: dict[str, Any], plot: Path | None) -> list[Block]:
    out = [Block("p", "**PCA compression** (fitted on in-domain training codes, never on the "
                      "ood set):")]
    table = pca.get("table", [])
    if table:
        dims = sorted({row["dims"] for row in table}, key=lambda d: (d == "full", d if
                                                                      d != "full" else 0))
        layers = sorted({row["layer"] for row in table})
        header = ["codes"] + [str(d) for d in dims]
        rows = []
        for layer in layers:
            for whiten in (False, True):
                vals = {row["dims"]: row["map"] for row in table
                        if row["layer"] == layer and bool(row.get("whiten")) == whiten}
                if vals:
                    rows.append([f"layer {layer}{' (whitened)' if whiten else ''}"]
                                + [_fmt(vals.get(d)) for d in dims])
        out.append(Block("table", header=header, rows=rows))
        out.append(Block("p", _pca_sentence(table)))
    if plot:
        out.append(Block("image", "mAP against the number of PCA dimensions.", image=plot))
    return out


def _pca_sentence(table: list[dict[str, Any]]) -> str:
    parts = []
    for layer in sorted({row["layer"] for row in table}):
        rows = [r for r in table if r["layer"] == layer and not r.get("whiten")]
        full = next((r["map"] for r in rows if r["dims"] == "full"), None)
        small = [r for r in rows if r["dims"] != "full"]
        if full and small:
            r128 = min(small, key=lambda r: abs(int(r["dims"]) - 128))
            parts.append(f"layer {layer} keeps {r128['map'] / full:.0%} of its full-code mAP "
                         f"at {r128['dims']} dimensions")
    return ("Compressed codes: " + "; ".join(parts) + ".") if parts else ""


def _comparison_section(facts: dict[str, Any]) -> list[Block]:
    out = [Block("h2", "Comparison with the paper and the course's reference")]
    maps = (facts["retrieval"].get("map") or {})
    relu = facts["saved"].get("config", {}).get("retrieval", {}).get("relu", False)
    ours = {k: v["map"] for k, v in (maps.get("post" if relu else "pre") or {}).items()}
    out.append(Block("p", "**The paper.** " + PAPER_OBSERVATIONS))
    if not ours:
        return out + [Block("p", "No retrieval measurements yet.")]
    best, runner_up, spread = _best_layer(ours)
    ref_best, _, _ = _best_layer(COURSE_REFERENCE["map"])
    rows = [[LAYER_NAMES[k], _fmt(ours.get(k)), _fmt(COURSE_REFERENCE["map"].get(k))]
            for k in sorted(ours)]
    out.append(Block("table", header=["codes", "mAP (this run)", "mAP (course reference)"],
                     rows=rows))
    sizes = facts["saved"].get("data", {})
    n_ood, n_cls = sizes.get("sizes", {}).get("ood"), len(sizes.get("ood_classes") or [])
    if n_ood and n_cls:
        chance = (n_ood / n_cls - 1) / (n_ood - 1)
        out.append(Block("p", f"For scale: with {n_cls} equally large ood classes a random "
                              f"ranking scores an mAP of about {chance:.3f}."))
    order = " > ".join(f"layer {k}" for k in sorted(ours, key=lambda k: (-ours[k], k)))
    verdict = (
        f"**Do our mAP values confirm the paper?** Our ranking is {order} "
        f"(best {ours[best]:.3f}, {ours[best] - ours[runner_up]:.3f} ahead of layer {runner_up}; "
        f"spread {spread:.3f}). ")
    if best == "6":
        verdict += ("This confirms the paper's finding that layer 6 gives the best codes "
                    f"(the course's reference solution found layer {ref_best} best).")
    elif best == "7":
        verdict += (
            "This does not confirm the paper's ordering: here the deepest layer is best, as in the "
            "course's reference solution (best: layer " + ref_best + "). A likely reason: the "
            "paper's network was trained on 1,000 ImageNet classes and queried on quite different "
            "images, where the more generic layer 6 transfers best; our 10 ood Tiny ImageNet "
            "classes are close to the 190 training classes, so the most class-specific layer 7 "
            "pays off.")
    else:
        verdict += (
            "This does not confirm the paper: the convolutional layer 5 beats the fully "
            "connected layers here, which suggests the fc layers of this small network are "
            "undertrained or over-specialised to the training classes.")
    if ours[best] - ours[runner_up] < 0.01:
        verdict += (f" Layers {best} and {runner_up} are less than 0.01 mAP apart, so which of "
                    "the two is best is weak evidence either way.")
    out.append(Block("p", verdict))
    pca = facts["retrieval"].get("pca")
    if pca:
        out.append(Block("p", "**PCA robustness.** " + _pca_sentence(pca.get("table", []))
                         + " The paper found its codes robust to PCA compression; compare the "
                           "percentages above."))
    return out


# --------------------------------------------------------------------------------------------
# Output formats.


def to_markdown(blocks: list[Block], base: Path) -> str:
    """Markdown with images linked relative to the run directory."""
    lines: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            lines += [f"# {b.text}", ""]
        elif b.kind == "h2":
            lines += [f"## {b.text}", ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "list":
            lines += [f"- {item}" for item in b.items] + [""]
        elif b.kind == "table":
            lines.append("| " + " | ".join(b.header) + " |")
            lines.append("|" + "|".join("---" for _ in b.header) + "|")
            lines += ["| " + " | ".join(row) + " |" for row in b.rows]
            lines.append("")
        elif b.kind == "image" and b.image is not None:
            rel = b.image.relative_to(base) if b.image.is_relative_to(base) else b.image
            lines += [f"![{b.text}]({rel.as_posix()})", "", f"*{b.text}*", ""]
    return "\n".join(lines)


def _inline_md(text: str) -> str:
    """The little Markdown the report uses inline (bold, italics, code) as HTML."""
    import re

    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"\*(.+?)\*", r"<em>\1</em>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def to_html(blocks: list[Block], title: str) -> str:
    """A single self-contained HTML page (images embedded as base64 PNG)."""
    body: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            body.append(f"<{b.kind}>{_inline_md(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_inline_md(b.text)}</p>")
        elif b.kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline_md(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                           for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b.kind == "image" and b.image is not None and b.image.is_file():
            data = base64.b64encode(b.image.read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(b.text)}" '
                        f'src="data:image/png;base64,{data}"><figcaption>'
                        f"{_inline_md(b.text)}</figcaption></figure>")
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
             "padding:0 1rem;line-height:1.5;color:#222}table{border-collapse:collapse;"
             "margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             "figcaption{font-size:.9em;color:#555}code{background:#f4f4f4;padding:0 .2em}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{style}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def write_report(run: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for a run; returns their paths."""
    rd = RunDir.existing(run)
    facts = collect(rd.root)
    if facts["eval"] is None:
        raise NeuralCodesError(f"{rd.root}: no eval.json yet; run `neuralcodes evaluate` first")
    blocks = render(facts)
    write_text(rd.report_md, to_markdown(blocks, rd.root))
    write_text(rd.report_html, to_html(blocks, f"neuralcodes report — {facts['run']}"))
    return rd.report_md, rd.report_html
