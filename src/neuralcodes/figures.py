"""Figures of a run: learning curves (training) and retrieval figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuralcodes.files import atomic_path


def plot_learning_curves(metrics_rows: Sequence[dict[str, Any]], path: str | Path,
                         reference: Sequence[dict[str, Any]] | None = None,
                         reference_label: str = "course (Keras)") -> None:
    """Loss and accuracy per epoch, train vs validation, from metrics.jsonl rows, as a PNG.

    ``reference``: rows with the same keys (e.g. ``course_reference()["epochs"]``), drawn as
    dashed lines of the same colours and labelled ``reference_label``.
    """
    plt = _pyplot()
    epochs = [r["epoch"] for r in metrics_rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    best = min(metrics_rows, key=lambda r: r["val_loss"]) if metrics_rows else None
    for ax, key, title in ((ax_loss, "loss", "cross-entropy"), (ax_acc, "acc", "top-1 accuracy")):
        train_line, = ax.plot(epochs, [r[f"train_{key}"] for r in metrics_rows], "o-",
                              label="train")
        val_line, = ax.plot(epochs, [r[f"val_{key}"] for r in metrics_rows], "s-",
                            label="validation")
        if reference:
            ref_epochs = [r["epoch"] for r in reference]
            ax.plot(ref_epochs, [r[f"train_{key}"] for r in reference], "--",
                    color=train_line.get_color(), alpha=0.7, label=f"train, {reference_label}")
            ax.plot(ref_epochs, [r[f"val_{key}"] for r in reference], "--",
                    color=val_line.get_color(), alpha=0.7,
                    label=f"validation, {reference_label}")
        if best is not None:
            ax.axvline(best["epoch"], color="grey", ls=":", lw=1,
                       label=f"best (epoch {best['epoch']})")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)


# --------------------------------------------------------------------------- retrieval figures

SAME_COLOUR = "#1a9641"  # green frame: same class as the query
OTHER_COLOUR = "#d7191c"  # red frame: another class
NEUTRAL_COLOUR = "#888888"  # unknown relation (own images without classes)
QUERY_COLOUR = "#2c7bb6"  # blue frame: the query


@dataclass
class Result:
    """One retrieved image as shown in a figure."""

    image: np.ndarray  # uint8 (H, W, 3)
    score: float
    label: str | None = None  # class name (or file name)
    same: bool | None = None  # same class as the query; None: unknown


@dataclass
class RetrievalRow:
    """A query and its results, most similar first."""

    image: np.ndarray
    label: str | None
    results: list[Result]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling (each pixel becomes a scale x scale block)."""
    return np.repeat(np.repeat(np.asarray(image), scale, axis=0), scale, axis=1)


def _short(name: str | None, width: int = 16) -> str:
    """The first synonym of a class name, cut to ``width`` characters."""
    if not name:
        return ""
    name = name.split(",")[0].strip()
    return name if len(name) <= width else name[:width - 1] + "…"


@dataclass
class _Cell:
    image: np.ndarray
    frame: str  # hex colour
    top: str
    bottom: str = ""
    bottom_colour: str = "black"
    badge: str = ""  # ✓ or ✗, drawn large on the image's corner (not colour alone)


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def _query_cell(row: RetrievalRow) -> _Cell:
    return _Cell(row.image, QUERY_COLOUR, f"query: {_short(row.label)}")


def _result_cell(r: Result, rank: int) -> _Cell:
    mark = {True: " ✓", False: " ✗", None: ""}[r.same]
    colour = {True: SAME_COLOUR, False: OTHER_COLOUR, None: NEUTRAL_COLOUR}[r.same]
    return _Cell(r.image, colour, f"{rank}. {_short(r.label)}", f"sim {r.score:.3f}{mark}",
                 colour if r.same is not None else "black", mark.strip())


def _render(grid: Sequence[Sequence[_Cell | None]], path: str | Path, *, scale: int,
            title: str = "", gaps: Sequence[int] = (), headers: Sequence[tuple[int, int, str]] = (),
            metadata: dict[str, str] | None = None) -> Path:
    """Paint all images with their frames into one pixel canvas (fast and exact: one axes, no
    resampling) and put the labels on top as text; ``gaps``: columns followed by a wide gap,
    ``headers``: (first column, last column, text) above the grid."""
    plt = _pyplot()
    frame, pad, gap, label_h, dpi = 4, 8, 40, 16, 100
    side = 64 * scale + 2 * frame
    n_cols = max(len(r) for r in grid)
    xs, x = [], pad
    for c in range(n_cols):
        xs.append(x)
        x += side + (gap if c in gaps else pad)
    width = x
    top = pad + (28 if title else 0) + (22 if headers else 0)
    row_h = side + 2 * label_h + pad
    height = top + len(grid) * row_h
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    texts: list[tuple[float, float, str, str, str, dict[str, Any]]] = []
    for i, row in enumerate(grid):
        y = top + i * row_h + label_h
        for c, cell in enumerate(row):
            if cell is None:
                continue
            x = xs[c]
            canvas[y:y + side, x:x + side] = _rgb(cell.frame)
            canvas[y + frame:y + side - frame, x + frame:x + side - frame] = _upscale(
                cell.image[..., :3], scale)[:side - 2 * frame, :side - 2 * frame]
            texts.append((x + side / 2, y - 2, cell.top, "black", "bottom", {}))
            if cell.badge:  # the mark itself, white on the frame's colour, top-left corner
                texts.append((x + frame + 1, y + frame + 1, cell.badge, "white", "top", {
                    "ha": "left", "fontsize": 11, "weight": "bold", "bbox": {
                        "boxstyle": "round,pad=0.15", "fc": cell.frame, "ec": "white",
                        "lw": 1}}))
            if cell.bottom:
                texts.append((x + side / 2, y + side + 2, cell.bottom, cell.bottom_colour, "top",
                              {}))
    for first, last, text in headers:
        texts.append(((xs[first] + xs[last] + side) / 2, top - 6, text, "black", "bottom",
                      {"fontsize": 12, "weight": "bold"}))
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.axis("off")
    for tx, ty, text, colour, va, kw in texts:
        ax.text(tx, ty, text, va=va, color=colour, **({"fontsize": 8, "ha": "center"} | kw))
    if title:
        ax.text(width / 2, pad, title, ha="center", va="top", fontsize=11)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", metadata=metadata)
    plt.close(fig)
    return Path(path)


def plot_retrieval(rows: Sequence[RetrievalRow], path: str | Path, *, title: str = "",
                   scale: int = 2, metadata: dict[str, str] | None = None) -> Path:
    """The paper's Fig. 2/3: each query (left, blue frame) next to its results, sorted from
    most to least similar, framed green ✓ (same class) or red ✗ (other class), as a PNG.
    Images are upscaled ``scale`` times (nearest neighbour); ``metadata``: PNG text chunks."""
    grid = [[_query_cell(row)] + [_result_cell(r, j + 1) for j, r in enumerate(row.results)]
            for row in rows]
    return _render(grid, path, scale=scale, title=title, gaps=(0,), metadata=metadata)


def plot_retrieval_layers(rows_by_layer: dict[str, Sequence[RetrievalRow]], path: str | Path, *,
                          scale: int = 2, title: str = "",
                          metadata: dict[str, str] | None = None) -> Path:
    """All layers side by side: per query, the query then the top-k of each layer."""
    layers = list(rows_by_layer)
    k = max(len(r.results) for rs in rows_by_layer.values() for r in rs)
    grid: list[list[_Cell | None]] = []
    for i, row in enumerate(rows_by_layer[layers[0]]):
        cells: list[_Cell | None] = [_query_cell(row)]
        for layer in layers:
            results = rows_by_layer[layer][i].results
            cells += [_result_cell(results[j], j + 1) if j < len(results) else None
                      for j in range(k)]
        grid.append(cells)
    gaps = [0] + [li * k for li in range(1, len(layers))]
    headers = [(1 + li * k, li * k + k, f"layer {layer}") for li, layer in enumerate(layers)]
    return _render(grid, path, scale=scale, title=title, gaps=gaps, headers=headers,
                   metadata=metadata)


def _save(fig: Any, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight", metadata=metadata)
    _pyplot().close(fig)
    return Path(path)


def plot_pca(table: Sequence[dict[str, Any]], path: str | Path, *, title: str = "",
             chance: float | None = None, metadata: dict[str, str] | None = None) -> Path:
    """mAP (%) against PCA dimensions per layer: solid = PCA, dashed = PCA-whitening, dotted
    horizontal line = the uncompressed code; error bars: the 95% interval of each point's
    difference to the uncompressed code (where recorded), drawn around the point; grey dashed:
    ``chance``, the mAP of a random ranking (the y-axis always includes it)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    layers = sorted({row["layer"] for row in table})
    for i, layer in enumerate(layers):
        colour = f"C{i}"
        full = [row["map"] for row in table if row["layer"] == layer and row["dims"] == "full"]
        for whiten, style in ((False, "o-"), (True, "s--")):
            rows = sorted((row for row in table if row["layer"] == layer
                           and row["dims"] != "full" and bool(row.get("whiten")) == whiten),
                          key=lambda row: row["dims"])
            if not rows:
                continue
            xs = [row["dims"] * (0.96 if whiten else 1.0) for row in rows]  # apart, not hidden
            ys = [100 * row["map"] for row in rows]
            err = None
            if full and all(row.get("ci95") for row in rows):
                err = [[max(0.0, y - 100 * (full[0] + row["ci95"][0])) for y, row in
                        zip(ys, rows, strict=True)],
                       [max(0.0, 100 * (full[0] + row["ci95"][1]) - y) for y, row in
                        zip(ys, rows, strict=True)]]
            ax.errorbar(xs, ys, yerr=err, fmt=style, color=colour, capsize=2, lw=1.2,
                        label=f"layer {layer}" + (" whitened" if whiten else " PCA"))
        if full:
            ax.axhline(100 * full[0], color=colour, ls=":", lw=1.2,
                       label=f"layer {layer} full")
    if chance is not None:
        ax.axhline(100 * chance, color="grey", ls="--", lw=1.2, label="chance (random ranking)")
        ax.set_ylim(bottom=min(ax.get_ylim()[0], 100 * chance - 1))
    ax.set_xscale("log", base=2)
    dims = sorted({row["dims"] for row in table if row["dims"] != "full"})
    if dims:
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.minorticks_off()
    ax.set_xlabel("PCA dimensions")
    ax.set_ylabel("mAP (ood), %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=len(layers))
    ax.set_title(title or "PCA-compressed neural codes")
    fig.tight_layout()
    return _save(fig, path, metadata)


FAMILY_COLOURS = {"paper": "#444444", "pooling": "C0", "whitening": "C2", "reranking": "C3"}


def plot_methods(rows: Sequence[dict[str, Any]], path: str | Path, *, chance: float,
                 reference: str, title: str = "", metadata: dict[str, str] | None = None
                 ) -> Path:
    """The methods study (issue 19): one line per method, its mAP (%) as a dot coloured by
    family, with the paired-bootstrap 95% interval of its difference to the ``reference`` drawn
    around it (reference mAP + interval: where the bar misses the reference's line, the
    difference is significant); dashed line: chance mAP, dotted line: the reference. The
    legend sits below the plot, clear of the rows."""
    plt = _pyplot()
    ref = 100 * next(r["map"] for r in rows if r["method"] == reference)
    fig, ax = plt.subplots(figsize=(7.5, 0.22 * len(rows) + 1.6))
    ys = np.arange(len(rows))[::-1]
    for y, r in zip(ys, rows, strict=True):
        colour = FAMILY_COLOURS.get(r["family"], "C7")
        if r.get("ci95") and r["method"] != reference:
            low, high = ref + 100 * r["ci95"][0], ref + 100 * r["ci95"][1]
            ax.plot([low, high], [y, y], color=colour, lw=2, alpha=0.45, solid_capstyle="butt")
        ax.plot([100 * r["map"]], [y], "o", color=colour, ms=4)
    ax.axvline(100 * chance, color="grey", ls="--", lw=1, label=f"chance ({100 * chance:.1f}%)")
    ax.axvline(ref, color="black", ls=":", lw=1, label=f"{reference} ({ref:.1f}%)")
    for family, colour in FAMILY_COLOURS.items():
        if any(r["family"] == family for r in rows):
            ax.plot([], [], "o", color=colour, label=family)
    ax.set_yticks(ys, [r["method"] for r in rows], fontsize=7)
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.set_xlabel("mAP (%, ood queries); bar: reference + 95% interval of the difference")
    ax.grid(axis="x", alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.6 / fig.get_figheight()),
              ncol=min(len(handles), 4), frameon=False)
    ax.set_title(title or "Methods beyond the paper, on the ood queries")
    fig.tight_layout()
    return _save(fig, path, metadata)


def plot_collection(result: dict[str, Any], path: str | Path, *,
                    metadata: dict[str, str] | None = None) -> Path:
    """A labelled collection's retrieval (``retrieval.json``): per measure a group of bars, one
    per layer, with the 95% interval of its distance to chance drawn around it (chance +
    interval), and the chance level as a black tick."""
    plt = _pyplot()
    layers = list(result["layers"])
    keys = list(result["names"])
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(keys), 3.4))
    width = 0.8 / max(len(layers), 1)
    for li, layer in enumerate(layers):
        row = result["layers"][layer]
        xs = np.arange(len(keys)) + (li - (len(layers) - 1) / 2) * width
        ax.bar(xs, [row[k] for k in keys], width, color=f"C{li}", label=f"layer {layer}")
        for x, k in zip(xs, keys, strict=True):
            lo, hi = row["above_chance"][k]["ci95"]
            ax.plot([x, x], [result["chance"][k] + lo, result["chance"][k] + hi], color="black",
                    lw=1)
    for x, k in enumerate(keys):
        ax.plot([x - 0.42, x + 0.42], [result["chance"][k]] * 2, color="black", lw=2,
                label="chance" if x == 0 else None)
    ax.set_xticks(np.arange(len(keys)), list(result["names"].values()), fontsize=8)
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(layers) + 1, loc="upper right")
    ax.set_title(f"{result['index']}: {result['n_images']:,} images, {result['n_classes']} "
                 "classes (each queries the others)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, metadata)


@dataclass
class WhyRow:
    """One hit of :func:`plot_why`: its image, the cells' shares of its score for the query's
    map and for its own (each sums to ``score``), and its caption (rank, class)."""

    image: np.ndarray
    query_share: np.ndarray
    hit_share: np.ndarray
    score: float
    caption: str


def plot_why(query: np.ndarray, rows: Sequence[WhyRow], path: str | Path, *, title: str,
             metadata: dict[str, str] | None = None) -> Path:
    """Why each hit is similar to the query: per row the query, its map's cells coloured by
    their share of the score (%), the hit's cells, and the hit. One colour scale for the whole
    sheet, stretched from the smallest share to the largest so that their differences show."""
    plt = _pyplot()
    pct = [(100 * r.query_share / max(r.score, 1e-12), 100 * r.hit_share / max(r.score, 1e-12))
           for r in rows]
    every = np.concatenate([g.ravel() for pair in pct for g in pair]) if pct else np.zeros(1)
    low, high = float(every.min()), float(every.max())
    fig, axes = plt.subplots(len(rows), 4, figsize=(7.4, 1.75 * len(rows) + 0.9),
                             squeeze=False, layout="constrained")
    for ax_row, r, (q_pct, h_pct) in zip(axes, rows, pct, strict=True):
        ax_row[0].imshow(query)
        shown = ax_row[1].imshow(q_pct, cmap="inferno", vmin=low, vmax=max(high, low + 1e-9))
        ax_row[2].imshow(h_pct, cmap="inferno", vmin=low, vmax=max(high, low + 1e-9))
        ax_row[3].imshow(r.image)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
        ax_row[0].set_ylabel(f"{r.caption}\nscore {r.score:.3f}", fontsize=8)
    for ax, name in zip(axes[0], ("query", "query's cells", "hit's cells", "hit"), strict=True):
        ax.set_title(name, fontsize=9)
    bar = fig.colorbar(shown, ax=axes, shrink=0.5, pad=0.02)
    bar.set_label("cell's share of the score (%)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, metadata)
