"""Retrieval metrics: ranking rule, average precision (against sklearn and by hand), chunking."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval.metrics import (
    capped,
    chance_average_precision,
    chance_map,
    chance_precision,
    paired_bootstrap,
    rank_order,
    ranking_metrics,
    ranking_metrics_from_scores,
    self_retrieval_metrics,
    topk_correct,
)


def reference_ap(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Plain-Python AP under our rule: sort by (score desc, index asc), mean precision@rank."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    hits, total = 0, 0.0
    for rank, i in enumerate(order, start=1):
        if relevant[i]:
            hits += 1
            total += hits / rank
    return total / hits if hits else float("nan")


def test_topk_correct_counts_rows_with_target_in_top_k():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    assert topk_correct(logits, torch.tensor([1, 2, 0]), (1, 2)) == {1: 1, 2: 2}


def test_rank_order_is_score_descending_then_index_ascending():
    rng = np.random.default_rng(0)
    scores = rng.integers(-3, 4, size=(6, 50)).astype(np.float32) / 2  # many ties, negatives
    order = rank_order(scores)
    for row, got in zip(scores, order, strict=True):
        expected = np.lexsort((np.arange(len(row)), -row))
        np.testing.assert_array_equal(got, expected)


def test_scores_of_float16_unit_codes_are_capped_at_one_without_reordering():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(50, 64)).astype(np.float32)
    codes /= np.linalg.norm(codes, axis=1, keepdims=True)
    stored = codes.astype(np.float16).astype(np.float32)  # an index's rows
    raw = stored @ stored.T
    assert raw.max() > 1  # rounding: some code scores over 1 with itself
    scores = capped(raw.copy())
    assert scores.max() == 1 and np.array_equal(scores[raw < 1], raw[raw < 1])


def test_negative_zero_ties_with_zero():
    assert rank_order(np.array([[-0.0, 0.0, -0.0]], dtype=np.float32)).tolist() == [[0, 1, 2]]


def test_hand_worked_example_with_ties():
    # index:   0    1    2    3    4      ranking: 0, 1, 2, 4, 3 (0.5-tie broken by index)
    scores = np.array([[0.9, 0.5, 0.5, 0.1, 0.5]], dtype=np.float32)
    db_labels = np.array([1, 0, 1, 1, 0])
    m = ranking_metrics_from_scores(scores, np.array([1]), db_labels, ks=(1, 3), top_k=5)
    assert m.top.tolist() == [[0, 1, 2, 4, 3]]
    # relevant at ranks 1, 3, 5: AP = (1/1 + 2/3 + 3/5) / 3 = 34/45
    assert m.ap[0] == pytest.approx(34 / 45)
    assert m.precision[1][0] == 1.0 and m.precision[3][0] == pytest.approx(2 / 3)
    # excluding item 0 by index: ranking 1, 2, 4, 3 -> relevant at 2 and 4: (1/2 + 2/4) / 2
    m = ranking_metrics_from_scores(scores, np.array([1]), db_labels, ks=(1,),
                                    exclude=np.array([0]), top_k=5)
    assert m.ap[0] == pytest.approx(0.5)
    assert m.top.tolist() == [[1, 2, 4, 3]]


def test_ap_matches_sklearn_on_tie_free_scores():
    rng = np.random.default_rng(1)
    q_labels, db_labels = rng.integers(0, 4, 30), rng.integers(0, 4, 300)
    scores = rng.standard_normal((30, 300)).astype(np.float32)
    assert all(len(np.unique(r)) == len(r) for r in scores)
    m = ranking_metrics_from_scores(scores, q_labels, db_labels)
    expected = [average_precision_score(db_labels == q, s) for q, s in zip(q_labels, scores,
                                                                           strict=True)]
    np.testing.assert_allclose(m.ap, expected, rtol=1e-12)
    np.testing.assert_allclose(m.precision[5], [
        np.mean(db_labels[np.argsort(-s)[:5]] == q) for q, s in zip(q_labels, scores, strict=True)])


def test_ap_matches_sklearn_with_ties_once_ties_are_broken_by_index():
    """sklearn scores a block of tied items as one threshold; we break ties by index.

    Breaking the ties by index explicitly (subtracting index * eps, smaller than any score gap)
    makes sklearn compute exactly our AP. The raw tied scores give sklearn other values,
    which shows that the data really exercises the tie rule.
    """
    rng = np.random.default_rng(2)
    q_labels, db_labels = rng.integers(0, 3, 40), rng.integers(0, 3, 120)
    scores = rng.integers(0, 5, size=(40, 120)).astype(np.float32)  # heavy ties
    m = ranking_metrics_from_scores(scores, q_labels, db_labels)
    broken = scores.astype(np.float64) - np.arange(120) * 1e-6
    expected = [average_precision_score(db_labels == q, s) for q, s in zip(q_labels, broken,
                                                                           strict=True)]
    np.testing.assert_allclose(m.ap, expected, rtol=1e-12)
    sklearn_blocks = [average_precision_score(db_labels == q, s) for q, s in zip(q_labels, scores,
                                                                                 strict=True)]
    assert not np.allclose(m.ap, sklearn_blocks)
    np.testing.assert_allclose(m.ap, [reference_ap(s, db_labels == q)
                                      for q, s in zip(q_labels, scores, strict=True)])


def test_self_retrieval_excludes_query_by_index_even_with_duplicates():
    rng = np.random.default_rng(3)
    codes = rng.standard_normal((12, 8)).astype(np.float32)
    codes[5] = codes[4]  # a duplicate image: ties with the query itself
    codes /= np.linalg.norm(codes, axis=1, keepdims=True)
    labels = np.array([0, 0, 0, 0, 1, 2, 1, 1, 2, 2, 1, 2])
    m = self_retrieval_metrics(codes, labels, ks=(1, 5), top_k=11)
    assert m.top[4, 0] == 5 and m.top[5, 0] == 4  # the duplicate is found, the query is not
    assert all(i not in m.top[i] for i in range(12))
    for i in range(12):
        keep = np.arange(12) != i
        s = codes[keep] @ codes[i]
        assert m.ap[i] == pytest.approx(reference_ap(s, labels[keep] == labels[i]))


def test_chunked_equals_unchunked_and_matches_brute_force():
    rng = np.random.default_rng(4)
    codes = rng.standard_normal((50, 16)).astype(np.float32)
    codes[10] = codes[11] = codes[12]
    labels = rng.integers(0, 5, 50)
    whole = self_retrieval_metrics(codes, labels, top_k=5)
    chunked = self_retrieval_metrics(codes, labels, top_k=5, chunk_size=7)
    np.testing.assert_array_equal(whole.ap, chunked.ap)
    np.testing.assert_array_equal(whole.top, chunked.top)
    np.testing.assert_array_equal(whole.precision[10], chunked.precision[10])
    scores = codes @ codes.T
    for i in (0, 10, 11, 49):
        keep = np.arange(50) != i
        expected = reference_ap(scores[i, keep], labels[keep] == labels[i])
        assert whole.ap[i] == pytest.approx(expected)
    np.testing.assert_allclose(whole.top_scores, np.take_along_axis(scores, whole.top, 1))
    summary = whole.summary()
    assert summary["map"] == pytest.approx(np.nanmean(whole.ap))
    assert summary["n_queries"] == 50 and set(summary) == {"map", "p@5", "p@10", "n_queries"}


def test_queries_without_relevant_items_are_left_out_of_the_mean():
    scores = np.array([[0.3, 0.2, 0.1], [0.1, 0.2, 0.3]], dtype=np.float32)
    m = ranking_metrics_from_scores(scores, np.array([0, 9]), np.array([1, 0, 0]), ks=(1,))
    assert np.isnan(m.ap[1]) and m.map == pytest.approx(m.ap[0]) and m.precision[1][1] == 0
    none = ranking_metrics_from_scores(scores, np.array([8, 9]), np.array([1, 0, 0]), ks=(1,))
    with pytest.raises(NeuralCodesError, match="mAP undefined"):
        _ = none.map


def test_bad_inputs_are_clear_errors():
    good = np.zeros((1, 3), dtype=np.float32)
    with pytest.raises(NeuralCodesError, match="finite"):
        ranking_metrics_from_scores(np.array([[np.nan, 0, 0]]), [0], [0, 0, 0], ks=(1,))
    with pytest.raises(NeuralCodesError, match="precision@5"):
        ranking_metrics_from_scores(good, [0], [0, 0, 0], ks=(5,))
    with pytest.raises(NeuralCodesError, match="code length"):
        ranking_metrics(np.zeros((2, 3)), np.zeros((4, 5)), [0, 0], [0] * 4)
    with pytest.raises(NeuralCodesError, match="exclude"):
        ranking_metrics_from_scores(good, [0], [0, 0, 0], ks=(1,), exclude=np.array([3]))


def test_both_self_retrieval_paths_agree(monkeypatch):
    from neuralcodes.retrieval import metrics

    rng = np.random.default_rng(6)
    codes = rng.standard_normal((70, 12)).astype(np.float32)
    labels = rng.integers(0, 4, 70)
    whole = self_retrieval_metrics(codes, labels, top_k=5)
    monkeypatch.setattr(metrics, "GRAM_BYTES", 0)  # too big to keep: chunked products
    chunked = self_retrieval_metrics(codes, labels, top_k=5, chunk_size=9)
    np.testing.assert_allclose(whole.ap, chunked.ap, rtol=1e-12)
    np.testing.assert_array_equal(whole.top, chunked.top)


# --------------------------------------------------------------------------- honest statistics


def simulated_random_ap(n_database: int, n_relevant: int, n_queries: int, seed: int
                        ) -> np.ndarray:
    """AP of uniformly random rankings, simulated (plain NumPy, independent of the library):
    the relevant items take ``n_relevant`` random distinct ranks."""
    rng = np.random.default_rng(seed)
    ranks = np.sort(rng.random((n_queries, n_database)).argsort(axis=1)[:, :n_relevant],
                    axis=1) + 1
    return (np.arange(1, n_relevant + 1) / ranks).mean(axis=1)


@pytest.mark.parametrize("n, classes, expected", [(5000, 10, 0.101), (500, 5, 0.208)])
def test_chance_map_matches_a_monte_carlo_simulation(n, classes, expected):
    labels = np.repeat(np.arange(classes), n // classes)  # each query against the other n - 1
    exact = chance_map(labels)
    sim = simulated_random_ap(n - 1, n // classes - 1, 4000 if n < 1000 else 1000, seed=0)
    se = sim.std(ddof=1) / np.sqrt(len(sim))
    assert abs(exact - sim.mean()) < 4 * se  # se is about 0.0006 and 0.0004 here
    assert exact == pytest.approx(expected, abs=0.001)
    assert exact > (n // classes - 1) / (n - 1)  # not the share of relevant items


def test_chance_ap_equals_the_mean_over_every_placement():
    for n, r in [(1, 1), (4, 1), (6, 2), (7, 3), (5, 5)]:
        aps = [np.mean([(i + 1) / (p + 1) for i, p in enumerate(sorted(pos))])
               for pos in itertools.combinations(range(n), r)]
        assert chance_average_precision(n, r) == pytest.approx(np.mean(aps), rel=1e-12)
    assert np.isnan(chance_average_precision(4, 0))


def test_chance_levels_average_over_queries_with_unequal_classes():
    labels = np.array([0] * 6 + [1] * 3 + [2])  # class 2 alone: no relevant item, no AP
    per_query = [chance_average_precision(9, 5)] * 6 + [chance_average_precision(9, 2)] * 3
    assert chance_map(labels) == pytest.approx(np.mean(per_query))
    assert chance_precision(labels, 5) == pytest.approx((6 * 5 / 9 + 3 * 2 / 9 + 0) / 10)
    # a separate database: N and R counted in it, queries of absent classes left out of mAP
    db = np.array([0, 0, 1, 1, 1, 2])
    assert chance_map(np.array([0, 1, 7]), db) == pytest.approx(np.mean(
        [chance_average_precision(6, 2), chance_average_precision(6, 3)]))
    with pytest.raises(NeuralCodesError, match="mAP undefined"):
        chance_map(np.array([0, 1, 2]))


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(0)
    a = rng.random(2000)
    same = paired_bootstrap(a, a)
    assert (same.diff, same.low, same.high, same.significant) == (0, 0, 0, False)
    b = a - rng.normal(0.02, 0.1, 2000)  # a is better by 0.02 +- 0.1 per query
    d = paired_bootstrap(a, b)
    assert d.diff == pytest.approx(np.mean(a - b)) and d.low < d.diff < d.high
    half = 1.96 * np.std(a - b, ddof=1) / np.sqrt(2000)  # the normal approximation
    assert (d.high - d.low) / 2 == pytest.approx(half, rel=0.1)
    assert d.significant and d.low > 0
    assert paired_bootstrap(a, b) == d  # fixed seed: reproducible
    assert not paired_bootstrap(a, a + rng.normal(0, 0.1, 2000)).significant
    a_nan = a.copy()
    a_nan[:10] = np.nan  # queries without relevant items are left out, as in mAP
    assert paired_bootstrap(a_nan, b).diff == pytest.approx(np.mean((a - b)[10:]))
    assert paired_bootstrap(a, b).to_json() == {"diff": d.diff, "ci95": [d.low, d.high],
                                                "significant": True}
    with pytest.raises(NeuralCodesError, match="paired"):
        paired_bootstrap(a, b[:5])
