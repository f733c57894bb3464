"""Beyond the paper (issue 19): pooling, whitening and re-ranking against hand-computed
oracles on toy sets, and the registry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval.methods import REGISTRY, FitData, get, pooling, reranking, whitening
from neuralcodes.retrieval.metrics import self_retrieval_metrics
from neuralcodes.retrieval.pca import PCA

# --------------------------------------------------------------------------- pooling


def test_mac_and_spoc_on_a_hand_computed_map():
    maps = np.array([[[[1, 2], [3, 4]], [[0, 0], [0, 3]]]], np.float32)  # 1 x 2 x 2 x 2
    np.testing.assert_allclose(pooling.mac(maps), [[0.8, 0.6]], atol=1e-6)  # (4, 3) / 5
    np.testing.assert_allclose(pooling.spoc(torch.from_numpy(maps)),
                               [[10 / math.sqrt(109), 3 / math.sqrt(109)]], atol=1e-6)


def test_spoc_centring_prior_weights_cells_by_their_distance_to_the_centre():
    maps = np.zeros((1, 2, 3, 3), np.float32)
    maps[0, 0] = 1  # everywhere
    maps[0, 1, 1, 1] = 1  # the centre only
    # sigma = (3 / 2) / 3 = 0.5: edge cells (d^2 = 1) weigh e^-2, corners (d^2 = 2) e^-4
    total = 1 + 4 * math.exp(-2) + 4 * math.exp(-4)
    expected = np.array([total, 1.0]) / math.hypot(total, 1.0)
    np.testing.assert_allclose(pooling.spoc(maps, centre=True)[0], expected, atol=1e-6)
    np.testing.assert_allclose(pooling.spoc(maps)[0], np.array([9, 1]) / math.sqrt(82),
                               atol=1e-6)


def test_gem_with_p_1_is_spoc_and_tends_to_mac_as_p_grows():
    maps = torch.rand(3, 5, 6, 6, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(pooling.gem(maps, 1.0), pooling.spoc(maps), atol=1e-6)
    gaps = [np.abs(pooling.gem(maps, p) - pooling.mac(maps)).max() for p in (2, 8, 32, 500)]
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False))  # closer and closer
    assert gaps[-1] < 0.01
    with pytest.raises(NeuralCodesError, match="p > 0"):
        pooling.gem(maps, 0)


def test_rmac_regions_on_a_16x16_map_follow_tolias():
    regions = pooling.rmac_regions(16, 16, levels=3)
    assert regions == [(0, 0, 16),  # scale 1: the whole map
                       (0, 0, 10), (0, 6, 10), (6, 0, 10), (6, 6, 10),  # 2 x 2 of side 10
                       *[(t, u, 8) for t in (0, 4, 8) for u in (0, 4, 8)]]  # 3 x 3 of side 8
    # a wide map gets extra regions along its long side
    assert len(pooling.rmac_regions(8, 16, levels=1)) > 1


def test_rmac_sums_the_normalised_regional_maxima():
    maps = np.zeros((1, 2, 16, 16), np.float32)
    maps[0, 0, 0, 0] = 1  # in the whole map, the top-left region of scale 2 and of scale 3
    maps[0, 1, 7, 7] = 1  # in the whole map, all 4 regions of scale 2 and 4 of scale 3
    # 3 regions hold both peaks ((1, 1) / sqrt 2 each), 6 only the second ((0, 1) each)
    expected = np.array([3 / math.sqrt(2), 3 / math.sqrt(2) + 6])
    np.testing.assert_allclose(pooling.rmac(maps)[0], expected / np.linalg.norm(expected),
                               atol=1e-6)


def test_fit_gem_p_picks_the_p_with_the_best_training_map():
    # class 0 and 1 differ in their maximum, not in their mean: MAC-like p separates them
    rng = np.random.default_rng(0)
    maps = rng.random((20, 2, 4, 4)).astype(np.float32) * 0.1
    labels = np.repeat([0, 1], 10)
    maps[labels == 0, 0, 0, 0] = 5.0
    maps[labels == 1, 1, 0, 0] = 5.0
    # a large random level per image and channel hides the peak in the mean (SPoC), not in
    # the maximum
    maps[:, :, 1:, :] += rng.random((20, 2, 1, 1)).astype(np.float32) * 3
    p, scores = pooling.fit_gem_p(pooling.gem_grid(maps, (1.0, 8.0)), labels)
    assert p == 8.0 and scores[8.0] > scores[1.0]


# --------------------------------------------------------------------------- whitening


def _toy_classes(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes apart along axis 0 (small spread), a large nuisance along axis 1."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    x = np.stack([np.where(labels == 0, -1.0, 1.0) + 0.1 * rng.normal(size=n),
                  10 * rng.normal(size=n), rng.normal(size=n)], axis=1)
    return x.astype(np.float32), labels


def test_fit_data_refuses_ood_images():
    x, labels = _toy_classes()
    with pytest.raises(NeuralCodesError, match="in-domain"):
        FitData(x, labels, "ood")
    with pytest.raises(NeuralCodesError, match="fit data"):
        FitData(x, labels[:5], "train")


def test_pca_whitening_gives_training_codes_identity_covariance():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))).astype(np.float32)
    w = whitening.PCAWhitening(6, shrinkage=0.0).fit(FitData(x, np.zeros(500), "train"))
    np.testing.assert_allclose(np.cov(w.project(x), rowvar=False), np.eye(6), atol=2e-3)
    # shrinkage 1 divides every axis by one number: after normalisation, plain PCA
    plain = whitening.PCAWhitening(3, shrinkage=1.0).fit(FitData(x, np.zeros(500), "train"))
    np.testing.assert_allclose(np.abs(plain.transform(x)),
                               np.abs(PCA.fit(x, 3).transform(x, 3)), atol=1e-4)


def test_pair_covariances_match_all_pairs_counted_one_by_one():
    rng = np.random.default_rng(2)
    x, labels = rng.normal(size=(9, 3)), np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    same, other = whitening.pair_covariances(x, labels)
    diffs = {True: [], False: []}
    for i in range(9):
        for j in range(9):
            if i != j:
                diffs[bool(labels[i] == labels[j])].append(np.outer(x[i] - x[j], x[i] - x[j]))
    np.testing.assert_allclose(same, np.mean(diffs[True], axis=0), atol=1e-10)
    np.testing.assert_allclose(other, np.mean(diffs[False], axis=0), atol=1e-10)


def test_learned_whitening_whitens_the_within_class_scatter():
    x, labels = _toy_classes()
    lw = whitening.LearnedWhitening(3, shrinkage=0.0).fit(FitData(x, labels, "train"))
    same, _ = whitening.pair_covariances(lw.project(x), labels)
    np.testing.assert_allclose(same, np.eye(3), atol=1e-4)


def test_supervised_whitening_separates_two_toy_classes_better_than_pca():
    x, labels = _toy_classes()
    test, test_labels = _toy_classes(seed=3)
    fit = FitData(x, labels, "train")
    lw = whitening.LearnedWhitening(1).fit(fit).transform(test)
    pca = whitening.PCAWhitening(1, shrinkage=1.0).fit(fit).transform(test)
    lw_map = self_retrieval_metrics(lw, test_labels, ks=()).map
    pca_map = self_retrieval_metrics(pca, test_labels, ks=()).map
    assert lw_map > 0.99  # the class axis
    assert pca_map < 0.6  # the nuisance axis: about chance (0.5)


def test_learned_whitening_reduces_long_codes_by_pca_first():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 40)).astype(np.float32)
    lw = whitening.LearnedWhitening(4, max_input=10).fit(FitData(x, np.arange(60) % 3, "val"))
    assert lw.matrix.shape == (4, 40) and lw.transform(x).shape == (60, 4)


# --------------------------------------------------------------------------- re-ranking

ANGLES = np.radians([0, 30, 90, 180])
FOUR = np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1).astype(np.float32)


def test_aqe_on_four_points():
    scores = reranking.self_rerank(reranking.aqe, FOUR, k=1)
    # query 2 (90 deg): its nearest other point is 1 (30 deg); (90 + 30) / 2 = 60 deg
    np.testing.assert_allclose(scores[2, [0, 1, 3]], [0.5, math.cos(math.radians(30)), -0.5],
                               atol=1e-6)
    # query 0 (0 deg) expands with 1 (30 deg) -> 15 deg, never with itself
    np.testing.assert_allclose(scores[0], np.cos(np.radians(15) - ANGLES), atol=1e-6)
    # an outside query: 80 deg, k = 2 expands with 90 and 30 deg
    q = np.array([[math.cos(math.radians(80)), math.sin(math.radians(80))]], np.float32)
    v = q[0] + FOUR[2] + FOUR[1]
    np.testing.assert_allclose(reranking.aqe(q, FOUR, k=2)[0], FOUR @ (v / np.linalg.norm(v)),
                               atol=1e-6)


def test_alpha_qe_weights_neighbours_by_their_similarity():
    q = np.array([[1.0, 0.0]], np.float32)
    s1 = math.cos(math.radians(30))  # neighbour 1 at 30 deg, then 2 at 90 deg (weight 0)
    v = q[0] + s1 ** 3 * FOUR[1]
    np.testing.assert_allclose(reranking.alpha_qe(q, FOUR[1:], k=2, alpha=3.0)[0],
                               FOUR[1:] @ (v / np.linalg.norm(v)), atol=1e-6)


def test_dba_augments_the_database_and_never_with_the_query_itself():
    scores = reranking.self_rerank(reranking.dba, FOUR, k=1)
    # query 0: item 1's nearest other item is 0, the query: it is augmented with its second
    # (item 2, 90 deg) -> 60 deg; item 2 with item 1 -> 60 deg; item 3 with item 2 -> 135 deg
    np.testing.assert_allclose(scores[0, 1:], [0.5, 0.5, -math.sqrt(0.5)], atol=1e-6)
    # an outside query sees every item augmented with its nearest other item
    q = np.array([[1.0, 0.0]], np.float32)
    np.testing.assert_allclose(reranking.dba(q, FOUR, k=1)[0],
                               np.cos(np.radians([15, 15, 60, 135])), atol=1e-6)


def _zhong_reference(x: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """Zhong et al.'s re_ranking (their released code), loop by loop, on unit codes."""
    original = np.maximum(2 - 2 * x @ x.T, 0)
    original = np.transpose(original / np.max(original, axis=0))
    n = len(x)
    v = np.zeros((n, n))
    ranks = np.argsort(original, kind="stable")
    for i in range(n):
        forward = ranks[i, :k1 + 1]
        backward = ranks[forward, :k1 + 1]
        recip = forward[np.where(backward == i)[0]]
        expansion = recip
        for cand in recip:
            cf = ranks[cand, :int(np.around(k1 / 2)) + 1]
            cb = ranks[cf, :int(np.around(k1 / 2)) + 1]
            crecip = cf[np.where(cb == cand)[0]]
            if len(np.intersect1d(crecip, recip)) > 2 / 3 * len(crecip):
                expansion = np.append(expansion, crecip)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        v[i, expansion] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[ranks[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((n, n))
    for i in range(n):
        mins = np.minimum(v[i][None, :], v).sum(axis=1)
        jaccard[i] = 1 - mins / (2 - mins)
    return jaccard * (1 - lam) + original * lam


def test_k_reciprocal_matches_the_reference_code_on_a_small_set():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 4)) + np.repeat(rng.normal(size=(4, 4)) * 2, 10, axis=0)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ours = -reranking.self_rerank(reranking.k_reciprocal, x, k1=6, k2=3, lam=0.3)
    reference = _zhong_reference(x.astype(np.float64), 6, 3, 0.3)
    off = ~np.eye(40, dtype=bool)
    np.testing.assert_allclose(ours[off], reference[off], atol=1e-5)
    # lambda 1: the original distance alone, so the original ranking
    plain = reranking.self_rerank(reranking.k_reciprocal, x, k1=6, k2=3, lam=1.0)
    np.testing.assert_array_equal(np.argsort(-plain[0, 1:]), np.argsort(-(x[0] @ x[1:].T)))


def test_k_reciprocal_on_a_tiny_hand_checked_set():
    # two pairs of near-identical points: each point's only reciprocal neighbour is its twin
    x = np.array([[1, 0], [0.995, 0.0998], [0, 1], [0.0998, 0.995]], np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dist = -reranking.self_rerank(reranking.k_reciprocal, x, k1=1, k2=1, lam=0.0)
    # R(0) = {0, 1} = R(1): V rows of the twins share their support -> Jaccard < 1;
    # the other pair shares nothing -> Jaccard distance exactly 1
    assert dist[0, 1] < 0.5 and dist[0, 2] == pytest.approx(1.0)
    assert dist[0, 3] == pytest.approx(1.0)


def test_k_reciprocal_with_outside_queries_uses_the_union():
    rng = np.random.default_rng(6)
    d = rng.normal(size=(30, 3)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    scores = reranking.k_reciprocal(d[:5], d[5:], k1=5, k2=2)
    assert scores.shape == (5, 25) and np.isfinite(scores).all()


def _horseshoe(n: int = 12) -> np.ndarray:
    """Points along a U: the chain's two ends are close in space, far along the chain."""
    t = np.linspace(0.25 * np.pi, 1.75 * np.pi, n)
    pts = np.stack([np.cos(t), np.sin(t), np.full(n, 3.0)], axis=1)  # unit codes of 3-D points
    return (pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32)


def test_diffusion_ranks_by_the_graph_on_a_toy_chain():
    x = _horseshoe()
    cosine = x[0] @ x.T
    in_space = list(np.argsort(-cosine[1:]) + 1)
    assert in_space.index(11) < in_space.index(5)  # in space the far end comes early
    scores = reranking.self_rerank(reranking.diffusion, x, k=2, query_k=1, alpha=0.9,
                                   gamma=1.0)
    order = np.argsort(-scores[0, 1:], kind="stable") + 1
    np.testing.assert_array_equal(order, np.arange(1, 12))  # along the chain: 1, 2, ..., 11


def test_diffusion_refuses_bad_parameters():
    with pytest.raises(NeuralCodesError, match="alpha"):
        reranking.self_rerank(reranking.diffusion, _horseshoe(), k=2, alpha=1.0)
    with pytest.raises(NeuralCodesError, match="k must be"):
        reranking.self_rerank(reranking.diffusion, _horseshoe(), k=20)


def test_tune_picks_the_best_parameters_on_validation_codes_only():
    x, labels = _toy_classes(60)
    x = x[:, [0, 2]] * [[3.0, 1.0]]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    best, trials = reranking.tune(reranking.aqe, {"k": (1, 5, 500)}, FitData(x, labels, "val"))
    assert [t["params"]["k"] for t in trials] == [1, 5]  # k = 500 does not fit 60 codes
    assert best["k"] == max(trials, key=lambda t: t["map"])["params"]["k"]
    assert trials[0]["map"] == pytest.approx(
        reranking.score_metrics(reranking.self_rerank(reranking.aqe, x, k=1), labels,
                                ks=()).map)


def test_score_metrics_equal_the_project_metrics_for_plain_cosine():
    x, labels = _toy_classes(50)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ours = reranking.score_metrics(x @ x.T, labels)
    theirs = self_retrieval_metrics(x, labels)
    np.testing.assert_allclose(ours.ap, theirs.ap)
    np.testing.assert_allclose(ours.precision[5], theirs.precision[5])


# --------------------------------------------------------------------------- registry


def test_registry_names_every_family_and_refuses_unknown_names():
    families = {spec.family for spec in REGISTRY.values()}
    assert families == {"pooling", "whitening", "reranking"}
    assert get("gem")(np.ones((1, 2, 2, 2))).shape == (1, 2)
    assert get("pca", "whitening")(8).shrinkage == 1.0
    for name in ("aqe", "alpha-qe", "dba", "k-reciprocal", "diffusion"):
        assert get(name, "reranking").grid
    with pytest.raises(NeuralCodesError, match="unknown method 'nope'"):
        get("nope")
    with pytest.raises(NeuralCodesError, match="unknown method 'mac'"):
        get("mac", "reranking")


# --------------------------------------------------------------------------- the study


def test_methods_study_on_a_tiny_model_gives_a_complete_table(tmp_path):
    from neuralcodes.config import ModelConfig
    from neuralcodes.model import ConvNet
    from neuralcodes.retrieval.methods.study import (
        SplitImages,
        methods_study,
        planned_rows,
        write_methods_figure,
    )

    torch.manual_seed(0)
    model = ConvNet(3, ModelConfig(conv_widths=(4, 4, 4, 4, 8), fc_width=16))
    rng = np.random.default_rng(0)

    def split(n: int, classes: int) -> SplitImages:
        labels = np.arange(n) % classes
        images = rng.integers(0, 60, (n, 64, 64, 3), dtype=np.uint8)
        images[..., labels % 3] += 150  # a colour per class: something to retrieve
        return SplitImages(images, labels)

    table = methods_study(model, {"train": split(40, 3), "val": split(24, 3),
                                  "ood": split(30, 3)},
                          maps=("conv5",), dims=(4, 8), rerankers=("aqe", "dba"),
                          gem_fit_images=20)  # p from 20 of the 40 training images
    rows = {r["method"]: r for r in table["rows"]}
    assert len(table["rows"]) == planned_rows(maps=("conv5",), dims=(4, 8),
                                              rerankers=("aqe", "dba"))  # the plan's count
    assert table["reference"] in ("layer5", "fc6", "fc7")
    assert rows[table["reference"]]["diff"] == 0
    for name in ("fc6", "fc7", "layer5", "conv5/mac", "conv5/spoc", "conv5/spoc-centre",
                 "conv5/gem-p3", "conv5/gem-fit", "conv5/rmac", "fc6+pca4", "fc6+pcaw8",
                 "fc7+lw8"):
        assert name in rows, name
    assert rows["conv5/gem-fit"]["params"]["p"] == table["fit"]["gem_p"]["conv5"]
    assert table["fit"]["train_images"] == 40 and table["fit"]["gem_fit_images"] == 20
    reranked = [r for r in table["rows"] if r["family"] == "reranking"]
    assert [r["method"] for r in reranked] == [f"{table['reranked']}+aqe",
                                                f"{table['reranked']}+dba"]
    best_val = max((r for r in table["rows"] if r["family"] != "reranking"),
                   key=lambda r: r["val_map"])
    assert table["reranked"] == best_val["method"]  # chosen on validation images
    for r in table["rows"]:
        assert 0 <= r["map"] <= 1 and r["ci95"][0] <= r["diff"] <= r["ci95"][1]
        assert r["significant"] == (r["ci95"][0] > 0 or r["ci95"][1] < 0)
        assert r["ms_per_query"] >= 0
    json.dumps(table)  # JSON-able
    assert write_methods_figure(table, tmp_path / "m.png").stat().st_size > 1000


def test_gem_grid_equals_gem_one_p_at_a_time():
    maps = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    grid = pooling.gem_grid(maps.to(memory_format=torch.channels_last), (1.0, 3.0, 8.0))
    for p, v in grid.items():
        np.testing.assert_allclose(v, pooling.gem(maps, p), atol=1e-6)


# --------------------------------------------------------------------------- wiring (issue 19)


def test_cell_contributions_sum_to_the_score_and_follow_each_pooling():
    from neuralcodes.retrieval.methods.pooled import cell_contributions

    q = torch.tensor([[[1.0, 0.0], [0.0, 3.0]], [[0.0, 2.0], [0.0, 0.0]]])  # (C=2, 2, 2)
    h = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[4.0, 0.0], [0.0, 0.0]]])
    # SPoC by hand: g_q = (4, 2), g_h = (2, 4); f = g / |g|; score = (8 + 8) / 20 = 0.8
    gq, gh, score = cell_contributions(q, h, "spoc")
    assert score == pytest.approx(0.8)
    # channel 0's term 8/20 goes to q's cells by x / 4, channel 1's 8/20 by x / 2
    np.testing.assert_allclose(gq, [[0.1, 0.4], [0.0, 0.3]], atol=1e-6)
    np.testing.assert_allclose(gh, [[0.4, 0.2], [0.2, 0.0]], atol=1e-6)
    # MAC: each channel's whole term goes to its maximal cell
    gq, gh, score = cell_contributions(q, h, "mac")
    f_q, f_h = np.array([3.0, 2.0]) / math.sqrt(13), np.array([1.0, 4.0]) / math.sqrt(17)
    assert score == pytest.approx(float(f_q @ f_h))
    assert gq[1, 1] == pytest.approx(f_q[0] * f_h[0]) and gq[0, 1] == pytest.approx(
        f_q[1] * f_h[1]) and gq[0, 0] == 0
    for name, p in (("spoc-centre", None), ("gem", 3.0), ("rmac", None)):
        gq, gh, score = cell_contributions(q, h, name, p)
        assert gq.sum() == pytest.approx(score, rel=1e-5)
        assert gh.sum() == pytest.approx(score, rel=1e-5)


def test_the_cli_lists_exactly_the_registrys_pooling_methods():
    from neuralcodes.cli.search import POOLING_METHODS
    from neuralcodes.retrieval.methods.pooled import method_names

    assert list(POOLING_METHODS) == method_names()


def _row(name: str, family: str, diff: float, lo: float, hi: float, vs=None) -> dict:
    return {"method": name, "family": family, "dims": 8, "params": {}, "map": 0.3 + diff,
            "p@5": 0.4, "p@10": 0.35, "diff": diff, "ci95": [lo, hi],
            "significant": lo > 0 or hi < 0, "vs": vs, "ms_per_query": 0.1}


def test_the_verdict_says_beats_only_where_the_interval_excludes_zero():
    from neuralcodes.retrieval.methods.stage import summary, verdict

    vs = {"method": "fc7+pca8", "diff": 0.02, "ci95": [0.01, 0.03], "significant": True}
    table = {"reference": "fc6", "n_queries": 100, "chance_map": 0.1, "rows": [
        _row("fc6", "paper", 0.0, 0.0, 0.0), _row("conv5/spoc", "pooling", 0.05, 0.01, 0.09),
        _row("conv5/mac", "pooling", 0.04, -0.01, 0.09),
        _row("fc7+pca8", "whitening", -0.03, -0.05, -0.01),
        _row("fc7+lw8", "whitening", -0.01, -0.02, 0.005, vs)]}
    text = " ".join(verdict(table))
    assert "1 of the 4 other methods beat it" in text
    assert "conv5/spoc (+5.00 pp [+1.00, +9.00])" in text
    assert "conv5/mac" not in text.split("beat it")[1].split(".")[0]  # its interval holds 0
    assert "1 are worse than it" in text and "fc7+pca8" in text
    assert "it beats PCA in 1 of 1 cases" in text
    rows = summary(table)["rows"]
    assert [r["reference"] for r in rows] == [True, False, False, False, False]


def test_retrieval_methods_setting_is_validated():
    from neuralcodes.config import Config

    d = Config().to_dict()
    for ok, families in ((True, ("pooling", "whitening", "reranking")), (False, ()),
                         (["reranking", "pooling"], ("pooling", "reranking"))):
        d["retrieval"]["methods"] = ok
        assert Config.from_dict(d).retrieval.method_families() == families
    for bad in ("yes", 1, ["pooling", "pooling"], ["diffusion"]):
        d["retrieval"]["methods"] = bad
        with pytest.raises(NeuralCodesError, match="retrieval.methods"):
            Config.from_dict(d)
