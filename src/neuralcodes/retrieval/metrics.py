"""Pure metric functions: classification (top-k accuracy), retrieval (average precision, mAP,
precision@k), the chance level of AP and a paired bootstrap interval for mAP differences."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from neuralcodes.errors import NeuralCodesError
from neuralcodes.progress import bar as progress_bar


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)
                 ) -> dict[int, int]:
    """How many rows of ``logits`` have their target among the ``k`` highest scores, per k.

    Ties are broken by ``torch.topk``'s order; k larger than the class count counts every row.
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(targets.view(-1, 1))
    return {k: int(hit[:, :min(k, kmax)].any(dim=1).sum()) for k in ks}


# --------------------------------------------------------------------------- retrieval
#
# Ranking rule (used everywhere in neuralcodes): database items are ordered by similarity,
# highest first; items with exactly equal similarity are ordered by their database index,
# lowest first. Excluded items (e.g. the query itself) are removed from the ranking by index.
#
# Average precision (non-interpolated) of one query: the mean, over its relevant items, of
# precision@k at the rank k of each relevant item, over the full ranking. Under the tie rule
# above this is exact and deterministic. ``sklearn.metrics.average_precision_score`` treats a
# block of tied scores as one threshold instead, so the two agree on tie-free scores and, on
# tied scores, sklearn agrees with us once the ties are broken by index (see the tests).
#
# AP@k (and mAP@k, its mean): the same sum cut at rank k, divided by min(R, k), the most
# relevant items the top k can hold: AP@k = (1/min(R, k)) sum_{i<=k} precision@i rel(i), so 1
# exactly when the top k is as good as it can be (the ``apk`` of Kaggle and ml_metrics; some
# papers divide by R, others by the relevant items found in the top k). recall@k: the share
# of the R relevant items in the top k. Both are NaN for a query with R = 0, as AP is.

#: Bytes of working memory one chunk of the ranking may use (about 10 int64 arrays per cell).
CHUNK_BYTES = 256 * 2**20
#: Largest all-pairs similarity matrix :func:`self_retrieval_metrics` keeps whole (n = 11,585).
GRAM_BYTES = 512 * 2**20


@dataclass
class RankingMetrics:
    """Per-query retrieval measures; queries without any relevant item have ``ap`` NaN."""

    ap: np.ndarray  # (Q,) float64 average precision
    precision: dict[int, np.ndarray]  # k -> (Q,) precision@k
    top: np.ndarray  # (Q, top_k) database indices of the best results, in rank order
    top_scores: np.ndarray  # (Q, top_k) their similarities
    ap_at: dict[int, np.ndarray] = field(default_factory=dict)  # k -> (Q,) AP@k (NaN: R = 0)
    recall: dict[int, np.ndarray] = field(default_factory=dict)  # k -> (Q,) recall@k (NaN: R = 0)

    @property
    def map(self) -> float:
        """Mean average precision over the queries that have at least one relevant item."""
        valid = ~np.isnan(self.ap)
        if not valid.any():
            raise NeuralCodesError("no query has a relevant item in the database: mAP undefined")
        return float(self.ap[valid].mean())

    def summary(self) -> dict[str, float | int]:
        """``{"map", "p@k"..., "n_queries"}`` as plain numbers."""
        out: dict[str, float | int] = {"map": self.map}
        out.update({f"p@{k}": float(v.mean()) for k, v in self.precision.items()})
        out["n_queries"] = len(self.ap)
        return out


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Column indices of each row of ``scores`` in rank order (score desc, ties: index asc)."""
    return _order(finite_scores(scores))


def finite_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float32)
    if not np.isfinite(scores).all():
        raise NeuralCodesError("similarity scores must be finite (NaN or inf found)")
    return scores


def capped(scores: np.ndarray) -> np.ndarray:
    """Cosine ``scores`` of unit codes capped at 1 (in place): codes kept at reduced precision
    (an index's float16 rows) have norms a little off 1, so a code's score with itself can
    read 1.000005. Order is kept: only ties at the top are created, after ranking."""
    return np.minimum(scores, np.float32(1.0), out=scores)


def rank_keys(scores: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """int64 sort keys of finite ``scores`` whose ascending order is the ranking rule.

    Each key holds an order-preserving integer of ``-score`` in its high 32 bits and the column
    index in its low 32 bits: keys are unique, one plain (SIMD) sort or partition of them gives
    the ranking with no tie ambiguity, and ``key & 0xFFFFFFFF`` recovers the index. ``exclude``
    (one column per row, -1 for none) gets the largest high half: ranked last.
    """
    if scores.shape[-1] >= 2**31:
        raise NeuralCodesError(f"database too large for one ranking ({scores.shape[-1]:,} items)")
    as_int = (scores + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into 0.0
    # Order-preserving float -> int (flip the magnitude bits of negatives), then complement
    # for descending order: both in one XOR with -1 (x >= 0) or INT32_MIN (x < 0).
    flip = (as_int >> 31) & np.int32(0x7FFFFFFF)
    flip ^= np.int32(-1)
    as_int ^= flip
    if exclude is not None:
        rows = np.flatnonzero(exclude >= 0)
        as_int[rows, exclude[rows]] = np.iinfo(np.int32).max
    index = np.arange(scores.shape[-1], dtype=np.int32)
    if sys.byteorder != "little":
        return (as_int.astype(np.int64) << 32) | index
    keys = np.empty(scores.shape, dtype=np.int64)
    halves = keys.view(np.int32).reshape(*scores.shape, 2)  # (low, high): write both halves
    halves[..., 0] = index
    halves[..., 1] = as_int
    return keys


def _order(scores: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    keys = rank_keys(scores, exclude)
    keys.sort(axis=-1)
    keys &= 0xFFFFFFFF
    return keys


def _compact_labels(*labels: np.ndarray) -> list[np.ndarray]:
    """The same labels as small consecutive integers (uint8/uint16/int32): cheap to gather."""
    joined = np.concatenate([np.asarray(x).ravel() for x in labels])
    _, inverse = np.unique(joined, return_inverse=True)
    n = int(inverse.max(initial=0)) + 1
    dtype = np.uint8 if n <= 256 else np.uint16 if n <= 65536 else np.int32
    inverse = inverse.astype(dtype)
    cuts = np.cumsum([np.size(x) for x in labels])[:-1]
    return np.split(inverse, cuts)


def ranking_metrics_from_scores(
    scores: np.ndarray, query_labels: np.ndarray, database_labels: np.ndarray,
    ks: Sequence[int] = (5, 10), exclude: np.ndarray | None = None, top_k: int = 0,
) -> RankingMetrics:
    """AP, precision@k and the top results for each row of a (Q, N) similarity block.

    Relevant = same label. ``exclude`` (Q,) optionally names, per query, one database index
    (or -1 for none) that is left out of that query's ranking entirely.
    """
    scores = finite_scores(scores)
    if scores.ndim != 2 or scores.shape != (len(query_labels), len(database_labels)):
        raise NeuralCodesError(f"scores {scores.shape} must be (queries {len(query_labels)}, "
                               f"database {len(database_labels)})")
    qlab, dlab = _compact_labels(query_labels, database_labels)
    q, n = scores.shape
    excluded = np.zeros(q, dtype=bool)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.shape != (q,) or (exclude >= n).any():
            raise NeuralCodesError("exclude needs one database index (or -1) per query")
        excluded = exclude >= 0
    # An excluded item is ranked last and then cut off: it is neither a result nor relevant.
    n_ranked = n - int(excluded.any())
    for k in ks:
        if not 1 <= k <= n_ranked:
            raise NeuralCodesError(f"precision@{k}: k must be between 1 and the database size "
                                   f"({n_ranked})")
    order = _order(scores, exclude if excluded.any() else None)
    relevant = dlab[order] == qlab[:, None]  # (Q, N) relevance in rank order
    relevant[excluded, -1] = False
    # AP = mean over relevant items of (i-th relevant item) / (its rank): only the relevant
    # positions are visited, no cumulative sum over the full ranking is needed.
    row, col = np.nonzero(relevant)
    n_rel = np.bincount(row, minlength=q)
    first = np.concatenate(([0], np.cumsum(n_rel)[:-1]))
    ith = np.arange(1, len(row) + 1) - first[row]
    terms = ith / (col + 1.0)  # precision@rank at each relevant item's rank
    found = {k: relevant[:, :k].sum(axis=1) for k in ks}
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n_rel > 0, np.bincount(row, weights=terms, minlength=q) / n_rel, np.nan)
        ap_at = {k: np.where(n_rel > 0, np.bincount(row, weights=terms * (col < k), minlength=q)
                             / np.minimum(n_rel, k), np.nan) for k in ks}
        recall = {k: np.where(n_rel > 0, found[k] / n_rel, np.nan) for k in ks}
    precision = {k: found[k] / k for k in ks}
    top = order[:, :min(top_k, n_ranked)]
    return RankingMetrics(ap, precision, top, np.take_along_axis(scores, top, axis=1), ap_at,
                          recall)


def ranking_metrics(
    queries: np.ndarray, database: np.ndarray, query_labels: np.ndarray,
    database_labels: np.ndarray, *, exclude: np.ndarray | None = None,
    ks: Sequence[int] = (5, 10), top_k: int = 0, chunk_size: int | None = None,
    progress: bool = False, desc: str = "mAP",
) -> RankingMetrics:
    """Rank ``database`` for every query by dot product (cosine for unit codes) and measure it.

    Relevant = same label. Computed in chunks of queries (float32 matmul, then the ranking), so
    memory stays bounded by :data:`CHUNK_BYTES` whatever the number of queries.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    database = np.ascontiguousarray(database, dtype=np.float32)
    query_labels = np.asarray(query_labels)
    database_labels = np.asarray(database_labels)
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise NeuralCodesError(f"queries {queries.shape} and database {database.shape} must be "
                               "2-D with the same code length")
    if len(query_labels) != len(queries) or len(database_labels) != len(database):
        raise NeuralCodesError("one label per query and per database item is needed")
    return _in_chunks(lambda a, b: queries[a:b] @ database.T, query_labels, database_labels,
                      exclude, ks, top_k, chunk_size, progress, desc)


def _in_chunks(
    scores_of: Callable[[int, int], np.ndarray], query_labels: np.ndarray,
    database_labels: np.ndarray, exclude: np.ndarray | None, ks: Sequence[int], top_k: int,
    chunk_size: int | None, progress: bool, desc: str,
) -> RankingMetrics:
    """Rank and measure the queries chunk by chunk; ``scores_of(a, b)``: rows a..b-1."""
    q, n = len(query_labels), len(database_labels)
    chunk = chunk_size or max(1, CHUNK_BYTES // (40 * max(n, 1)))
    parts: list[RankingMetrics] = []
    with progress_bar(total=q, unit="query", desc=desc, disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        for start in range(0, q, chunk):
            stop = min(start + chunk, q)
            ex = None if exclude is None else exclude[start:stop]
            parts.append(ranking_metrics_from_scores(
                scores_of(start, stop), query_labels[start:stop], database_labels, ks, ex, top_k))
            bar.update(stop - start)
    if not parts:
        raise NeuralCodesError("no queries to evaluate")
    return RankingMetrics(
        np.concatenate([p.ap for p in parts]),
        {k: np.concatenate([p.precision[k] for p in parts]) for k in ks},
        np.concatenate([p.top for p in parts]),
        np.concatenate([p.top_scores for p in parts]),
        {k: np.concatenate([p.ap_at[k] for p in parts]) for k in ks},
        {k: np.concatenate([p.recall[k] for p in parts]) for k in ks},
    )


def self_retrieval_metrics(
    codes: np.ndarray, labels: np.ndarray, *, ks: Sequence[int] = (5, 10), top_k: int = 0,
    chunk_size: int | None = None, progress: bool = False, desc: str = "mAP",
) -> RankingMetrics:
    """Each item queries all the others (itself excluded by index): the ood protocol.

    While the all-pairs similarity matrix fits in :data:`GRAM_BYTES` it is computed with one
    matrix product (BLAS is markedly faster on one large product than on row chunks of it);
    otherwise chunk by chunk like :func:`ranking_metrics`.
    """
    codes = np.ascontiguousarray(codes, dtype=np.float32)
    labels = np.asarray(labels)
    if codes.ndim != 2 or len(labels) != len(codes):
        raise NeuralCodesError(f"codes {codes.shape} must be 2-D with one label per row")
    n = len(codes)
    if 4 * n * n <= GRAM_BYTES:
        sims = codes @ codes.T

        def scores_of(a: int, b: int) -> np.ndarray:
            return sims[a:b]
    else:
        def scores_of(a: int, b: int) -> np.ndarray:
            return codes[a:b] @ codes.T
    return _in_chunks(scores_of, labels, labels, np.arange(n), ks, top_k, chunk_size, progress,
                      desc)


# --------------------------------------------------------------------------- honest statistics


def chance_average_precision(n_database: np.ndarray | int, n_relevant: np.ndarray | int,
                             k: int | None = None) -> np.ndarray:
    """Expected AP (AP@k with ``k``) of a uniformly random ranking of ``N`` items of which
    ``R >= 1`` are relevant.

    A relevant item sits at rank i with probability R/N; given that, the other i-1 places above
    it hold on average (i-1)(R-1)/(N-1) relevant items (drawn without replacement from the other
    N-1, R-1 of them relevant), so E[precision@i | relevant at i] = (1 + (i-1)(R-1)/(N-1)) / i
    and, summing the ranks i <= k (k = N: AP) and dividing by min(R, k) (R: AP),

        E[AP@k] = R / (N min(R, k)) sum_{i=1..k} (1 + (R-1)(i-1)/(N-1)) / i
                = R (H_k + (R-1)(k - H_k)/(N-1)) / (N min(R, k)),   H_k = sum_{i=1..k} 1/i.

    This is the chance level of mAP; it is not R/N (the share of relevant items), which is the
    chance level of precision@k. NaN where R = 0 (AP undefined).
    """
    n = np.asarray(n_database, dtype=np.int64)
    r = np.asarray(n_relevant, dtype=np.float64)
    if (n < 1).any() or (r > n).any() or (r < 0).any():
        raise NeuralCodesError("chance AP needs 1 <= N and 0 <= R <= N")
    cut = n if k is None else np.minimum(n, k)
    harmonic = np.concatenate(([0.0], np.cumsum(1.0 / np.arange(1, int(cut.max()) + 1))))[cut]
    with np.errstate(invalid="ignore", divide="ignore"):
        rest = np.where(n > 1, (r - 1) * (cut - harmonic) / np.maximum(n - 1, 1), 0.0)
        return np.where(r > 0, r * (harmonic + rest) / (n * np.minimum(r, cut)), np.nan)


def relevant_counts(query_labels: np.ndarray, database_labels: np.ndarray | None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(N, R) per query; ``database_labels`` None: self-retrieval (each item queries the others)."""
    query_labels = np.asarray(query_labels)
    db = query_labels if database_labels is None else np.asarray(database_labels)
    if len(db) == 0:
        raise NeuralCodesError("chance level needs a database of at least one item")
    classes, counts = np.unique(db, return_counts=True)
    pos = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
    r = np.where(classes[pos] == query_labels, counts[pos], 0)
    if database_labels is None:  # the query itself is not in its database
        return np.full(len(query_labels), len(db) - 1), r - 1
    return np.full(len(query_labels), len(db)), r


def chance_map(query_labels: np.ndarray, database_labels: np.ndarray | None = None,
               k: int | None = None) -> float:
    """Expected mAP (mAP@k with ``k``) of uniformly random rankings:
    :func:`chance_average_precision` averaged over the queries that have a relevant item (as
    :attr:`RankingMetrics.map` averages). ``database_labels`` None: the self-retrieval protocol
    (each item queries the others)."""
    n, r = relevant_counts(query_labels, database_labels)
    if len(n) == 0 or n.min() < 1:
        raise NeuralCodesError("chance mAP needs queries and a database of at least one item")
    ap = chance_average_precision(n, r, k)
    if np.isnan(ap).all():
        raise NeuralCodesError("no query has a relevant item in the database: mAP undefined")
    return float(np.nanmean(ap))


def chance_precision(query_labels: np.ndarray, k: int,
                     database_labels: np.ndarray | None = None) -> float:
    """Expected precision@k of uniformly random rankings (k <= N): the mean of R/N over all
    queries, as precision@k is averaged."""
    n, r = relevant_counts(query_labels, database_labels)
    if not 1 <= k <= n.min():
        raise NeuralCodesError(f"precision@{k}: k must be between 1 and the database size")
    return float(np.mean(r / n))


@dataclass(frozen=True)
class Difference:
    """A paired difference of means with its bootstrap interval."""

    diff: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict[str, object]:
        return {"diff": self.diff, "ci95": [self.low, self.high],
                "significant": self.significant}


BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@functools.lru_cache(maxsize=2)
def _resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """How often each of ``n`` items is drawn in each of ``resamples`` bootstrap resamples
    (float64, ``(resamples, n)``): the draws of :func:`paired_bootstrap`, made once per size and
    shared by all its calls (a study compares dozens of rows on the same queries)."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, n))
    rows = max(1, 2**22 // n)  # about 32 MiB of indices at a time
    for start in range(0, resamples, rows):
        idx = rng.integers(0, n, (min(rows, resamples - start), n))
        flat = (np.arange(len(idx))[:, None] * n + idx).ravel()
        counts[start:start + len(idx)] = np.bincount(flat, minlength=idx.size).reshape(idx.shape)
    counts.flags.writeable = False
    return counts


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, confidence: float = 0.95) -> Difference:
    """mean(a) - mean(b) of paired per-query values (e.g. AP of two layers for the same
    queries) with a percentile bootstrap interval: the queries are resampled with replacement
    ``resamples`` times (the same draws for every call with the same seed and size). Pairs with
    a NaN (queries without a relevant item) are left out, as in mAP."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise NeuralCodesError(f"paired values must be two 1-D arrays of one length, got "
                               f"{a.shape} and {b.shape}")
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    if len(d) == 0:
        raise NeuralCodesError("no paired values to compare")
    means = _resample_counts(len(d), resamples, seed) @ d / len(d)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Difference(float(d.mean()), float(low), float(high))
