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
    monkeypatch.setattr(figures, "_save",
                        lambda fig, path, *rest: (figs.append(fig), save(fig, path, *rest))[1])
    png = np.asarray(Image.open(plot_pca(table, tmp_path / "pca.png")))
    assert png.shape[0] > 200 and png.shape[1] > 300
    # the plotted points are the table's: one curve per (layer, whiten), the full code flat
    ax = figs[0].axes[0]
    curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
              for line in ax.get_lines() if not line.get_label().startswith("_")}
    curves |= {c.get_label(): (list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata()))
               for c in ax.containers}  # the points, drawn with their error bars
    assert curves["layer 5 PCA"] == (dims, pytest.approx([50, 60, 70, 80]))  # percent
    assert curves["layer 5 whitened"][1] == pytest.approx([52, 62, 72, 82])
    assert curves["layer 6 PCA"] == (dims, pytest.approx([10, 11, 12, 13]))
    assert list(curves["layer 5 full"][1]) == [95, 95]
    assert curves["layer 6 full"][0] == [0, 1]  # axhline: across the whole axes
    # and they are in the image: layer 5 (C0, blue) above layer 6 (C1, orange), rising
    rows = {c: np.nonzero(np.abs(png[..., :3].astype(int) - rgb).sum(-1) < 40)
            for c, rgb in (("C0", (31, 119, 180)), ("C1", (255, 127, 14)))}
    assert len(rows["C0"][0]) > 200 and len(rows["C1"][0]) > 200
    assert np.median(rows["C0"][0]) < np.median(rows["C1"][0])
    y, x = rows["C0"]
    left, right = x < np.quantile(x, 0.2), x > np.quantile(x, 0.8)
    assert np.median(y[left]) > np.median(y[right])  # higher mAP to the right: rising curve


def test_pca_plot_shows_chance_and_the_intervals(tmp_path, monkeypatch):
    """The issue's plot spanned 26-28.3% with chance (20.8%) off the chart and no intervals."""
    from neuralcodes import figures

    table = [{"layer": "6", "dims": "full", "whiten": False, "map": 0.274},
             {"layer": "6", "dims": 16, "whiten": False, "map": 0.280, "diff_vs_full": 0.006,
              "ci95": [0.001, 0.011]},
             {"layer": "6", "dims": 64, "whiten": False, "map": 0.270, "diff_vs_full": -0.004,
              "ci95": [-0.009, 0.002]}]
    figs = []
    save = figures._save
    monkeypatch.setattr(figures, "_save",
                        lambda fig, path, *rest: (figs.append(fig), save(fig, path, *rest))[1])
    plot_pca(table, tmp_path / "pca.png", chance=0.208)
    ax = figs[0].axes[0]
    chance = [line for line in ax.get_lines() if line.get_label() == "chance (random ranking)"]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == pytest.approx([20.8, 20.8])
    assert ax.get_ylim()[0] < 20.8 < ax.get_ylim()[1]
    (bars,) = ax.containers
    segments = bars.lines[2][0].get_segments()  # one vertical segment per point
    # each point's interval: the full code's mAP plus the interval of its difference
    assert [(seg[0][1], seg[1][1]) for seg in segments] == [
        pytest.approx((27.5, 28.5)), pytest.approx((26.5, 27.6))]


def test_methods_figure_in_percent_with_its_legend_clear_of_the_rows(tmp_path, monkeypatch):
    from neuralcodes import figures

    families = ["paper", "pooling", "whitening", "reranking"] * 3
    rows = [{"method": f"m{i}", "family": f, "map": 0.2 + 0.01 * i,
             "ci95": [-0.01, 0.02] if i else [0.0, 0.0]} for i, f in enumerate(families)]
    drawn = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, *a, **kw: (drawn.append(fig),
                                                                 save(fig, *a, **kw))[1])
    figures.plot_methods(rows, tmp_path / "m.png", chance=0.1, reference="m0")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = drawn[0]
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    assert ax.get_xlim()[0] < 10 < 31 < ax.get_xlim()[1]  # percent, chance (10%) included
    assert "%" in ax.get_xlabel()
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.y1 <= ax.get_window_extent(renderer).y0  # below the plot, on no row
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "chance (10.0%)" in texts and "m0 (20.0%)" in texts


def test_why_figure_names_query_hit_rank_score_and_its_colour_scale(tmp_path, monkeypatch):
    from neuralcodes import figures

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    share = np.full((16, 16), 0.001)
    share[3, 4] = 0.3  # one cell holds most of the score
    rows = [figures.WhyRow(image, share, share, float(share.sum()), f"#{i} n0144{i}")
            for i in (1, 2)]
    drawn = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, *a, **kw: (drawn.append(fig),
                                                                 save(fig, *a, **kw))[1])
    out = figures.plot_why(image, rows, tmp_path / "why.png", title="Why similar: spoc")
    assert Image.open(out).size[0] > 300
    fig = drawn[0]
    texts = [t.get_text() for ax in fig.axes for t in (ax.title, ax.yaxis.label)]
    assert {"query", "hit", "query's cells", "hit's cells"} <= set(texts)
    assert fig._suptitle.get_text() == "Why similar: spoc"
    assert f"#1 n01441\nscore {rows[0].score:.3f}" in texts
    assert "cell's share of the score (%)" in texts  # the colour bar's label
    heat = fig.axes[1].images[0]
    # in % of the score, stretched from the smallest share to the largest
    assert heat.norm.vmax == pytest.approx(100 * 0.3 / rows[0].score)
    assert heat.norm.vmin == pytest.approx(100 * 0.001 / rows[0].score)
