"""Retrieval figures: the paper's Fig. 2/3 layout, the layer comparison and the PCA plot."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from neuralcodes.figures import (
    OTHER_COLOUR,
    SAME_COLOUR,
    Result,
    RetrievalRow,
    plot_pca,
    plot_retrieval,
    plot_retrieval_layers,
)


def _rows(n_queries: int, k: int, seed: int = 0) -> list[RetrievalRow]:
    rng = np.random.default_rng(seed)

    def img(c: int) -> np.ndarray:
        return np.full((64, 64, 3), (c * 40) % 256, np.uint8)

    return [RetrievalRow(img(q), f"class {q}, synonym",
                         [Result(img(j), 0.9 - 0.1 * j, f"class {j}", bool(rng.integers(2)))
                          for j in range(k)])
            for q in range(n_queries)]


def _colour_present(png: np.ndarray, hex_colour: str) -> bool:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(png[..., :3].astype(int) - rgb).sum(axis=-1) < 10).sum() > 100)


def test_retrieval_figure_marks_same_and_other_class(tmp_path):
    rows = _rows(3, 5)
    rows[0].results[0].same, rows[0].results[1].same = True, False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a missing glyph for the check marks
        path = plot_retrieval(rows, tmp_path / "fig.png", title="layer 6", scale=2)
    png = np.asarray(Image.open(path))
    assert png.shape[0] > 3 * 64 * 2 * 0.8 and png.shape[1] > 6 * 64 * 2 * 0.8  # upscaled
    assert _colour_present(png, SAME_COLOUR) and _colour_present(png, OTHER_COLOUR)
    only_same = _rows(1, 2)
    for r in only_same[0].results:
        r.same = True
    png = np.asarray(Image.open(plot_retrieval(only_same, tmp_path / "same.png")))
    assert _colour_present(png, SAME_COLOUR) and not _colour_present(png, OTHER_COLOUR)


def test_unknown_relation_gets_no_marks(tmp_path):
    rows = _rows(1, 3)
    for r in rows[0].results:
        r.same = None
    png = np.asarray(Image.open(plot_retrieval(rows, tmp_path / "own.png")))
    assert not _colour_present(png, SAME_COLOUR) and not _colour_present(png, OTHER_COLOUR)


def test_combined_layers_figure_is_wider_than_one_layer(tmp_path):
    one = np.asarray(Image.open(plot_retrieval(_rows(2, 5), tmp_path / "one.png")))
    both = plot_retrieval_layers({"5": _rows(2, 5, 1), "6": _rows(2, 5, 2), "7": _rows(2, 5, 3)},
                                 tmp_path / "layers.png")
    png = np.asarray(Image.open(both))
    assert png.shape[1] > 2.5 * one.shape[1]
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporaries


def test_pca_plot_draws_the_table(tmp_path, monkeypatch):
    from neuralcodes import figures

    dims = [16, 32, 64, 128]
    table = [{"layer": "5", "dims": d, "whiten": w, "map": 0.5 + 0.1 * i + (0.02 if w else 0)}
             for i, d in enumerate(dims) for w in (False, True)]
    table += [{"layer": "6", "dims": d, "whiten": w, "map": 0.1 + 0.01 * i}
              for i, d in enumerate(dims) for w in (False, True)]
    table += [{"layer": "5", "dims": "full", "whiten": False, "map": 0.95},
              {"layer": "6", "dims": "full", "whiten": False, "map": 0.15}]
    figs = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path, metadata=None: (
        figs.append(fig), save(fig, path, metadata))[1])
    png = np.asarray(Image.open(plot_pca(table, tmp_path / "pca.png")))
    assert png.shape[0] > 200 and png.shape[1] > 300
    # the plotted points are the table's: one curve per (layer, whiten), the full code flat
    ax = figs[0].axes[0]
    curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
              for line in ax.get_lines()}
    assert curves["layer 5 PCA"] == (dims, pytest.approx([0.5, 0.6, 0.7, 0.8]))
    assert curves["layer 5 whitened"][1] == pytest.approx([0.52, 0.62, 0.72, 0.82])
    assert curves["layer 6 PCA"] == (dims, pytest.approx([0.1, 0.11, 0.12, 0.13]))
    assert list(curves["layer 5 full"][1]) == [0.95, 0.95]
    assert curves["layer 6 full"][0] == [0, 1]  # axhline: across the whole axes
    # and they are in the image: layer 5 (C0, blue) above layer 6 (C1, orange), rising
    rows = {c: np.nonzero(np.abs(png[..., :3].astype(int) - rgb).sum(-1) < 40)
            for c, rgb in (("C0", (31, 119, 180)), ("C1", (255, 127, 14)))}
    assert len(rows["C0"][0]) > 200 and len(rows["C1"][0]) > 200
    assert np.median(rows["C0"][0]) < np.median(rows["C1"][0])
    y, x = rows["C0"]
    left, right = x < np.quantile(x, 0.2), x > np.quantile(x, 0.8)
    assert np.median(y[left]) > np.median(y[right])  # higher mAP to the right: rising curve
