"""Re-ranking: query expansion, database-side augmentation, k-reciprocal re-ranking and
diffusion, on unit-length codes; their parameters chosen on in-domain validation images.

Every method has the signature ``method(queries, database, exclude=None, **params)`` and
returns new similarity scores ``(Q, N)`` float32, higher first: rank them with the project's
ranking rule (:mod:`neuralcodes.retrieval.metrics`). ``exclude[q]`` is the database index of
query q itself (-1: none): the ood protocol, where every image queries the other images, passes
the same codes as queries and database and ``exclude = arange(N)``. An excluded item is never a
neighbour of its query:

- :func:`aqe` (average query expansion, Chum et al. 2007): the query plus its k nearest
  database items, averaged, queries again. :func:`alpha_qe` (Radenovic et al. 2018): the k
  neighbours weighted by ``max(similarity, 0)^alpha`` (the query's own weight is 1).
- :func:`dba` (database-side augmentation, Arandjelovic & Zisserman 2012; alpha-weighted as in
  Radenovic et al.): every database item is replaced by itself plus its k nearest other
  database items. Where an item's k neighbours include the query's own entry (which the ood
  protocol leaves out of the database for that query), that query sees the item augmented
  with its (k+1)-th neighbour instead: exact, so the query never finds itself in the database.
- :func:`k_reciprocal` (Zhong et al., CVPR 2017; their reference code's steps): k-reciprocal
  sets with their expansion, Gaussian-kernel weights, local query expansion over k2
  neighbours, Jaccard distance, mixed with the original distance by lambda. Like the original
  it works transductively on queries and database together; here the min-sum of the Jaccard
  distance runs over the sparse columns of V, so 5,000 codes take seconds, not minutes.
- :func:`diffusion` (Iscen et al., CVPR 2017): a mutual k-nearest-neighbour graph of the
  database with weights ``max(s, 0)^gamma``, symmetrically normalised (W); each query starts
  from its own k nearest database items (y_i = s^gamma) and is ranked by
  ``f = (I - alpha W)^(-1) y``, computed exactly (one Cholesky inverse of the database's graph,
  shared by all queries: about n^3 flops, so databases up to :data:`DIFFUSION_MAX` items).

:func:`tune` picks a method's parameters from a grid by the mAP of the self-retrieval of
in-domain validation codes (:class:`~neuralcodes.retrieval.methods.whitening.FitData`), never
on ood images.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval.methods.whitening import FitData
from neuralcodes.retrieval.metrics import RankingMetrics, ranking_metrics_from_scores

#: Largest database :func:`diffusion` inverts (its dense float32 inverse: 4 n^2 bytes).
DIFFUSION_MAX = 12_000
#: Row block of the score matrices measured at a time by :func:`score_metrics`.
SCORE_ROWS = 2_000
#: Pair contributions of the Jaccard min-sum held at once by :func:`k_reciprocal`.
PAIR_CHUNK = 4_000_000

Method = Callable[..., np.ndarray]


# --------------------------------------------------------------------------- helpers


def _inputs(queries: np.ndarray, database: np.ndarray, exclude: np.ndarray | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = np.ascontiguousarray(queries, dtype=np.float32)
    d = np.ascontiguousarray(database, dtype=np.float32)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise NeuralCodesError(f"queries {q.shape} and database {d.shape} must be 2-D with the "
                               "same code length")
    ex = np.full(len(q), -1, np.int64) if exclude is None else np.asarray(exclude, np.int64)
    if ex.shape != (len(q),) or (ex >= len(d)).any():
        raise NeuralCodesError("exclude needs one database index (or -1) per query")
    return q, d, ex


def _masked(scores: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """``scores`` with each query's excluded entry at -inf (never a neighbour)."""
    rows = np.flatnonzero(exclude >= 0)
    scores[rows, exclude[rows]] = -np.inf
    return scores


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` highest entries of each row, best first (ties: lower
    index first)."""
    if not 1 <= k <= scores.shape[1]:
        raise NeuralCodesError(f"k must be between 1 and {scores.shape[1]}, got {k}")
    idx = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    idx.sort(axis=1)
    vals = np.take_along_axis(scores, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _check_k(k: int, n: int, what: str = "k") -> None:
    if not 1 <= k <= n:
        raise NeuralCodesError(f"{what} must be between 1 and {n}, got {k}")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------- query expansion


def alpha_qe(queries: np.ndarray, database: np.ndarray, exclude: np.ndarray | None = None, *,
             k: int = 5, alpha: float = 3.0) -> np.ndarray:
    """alpha-weighted query expansion: ``q' = q + sum_i max(s_i, 0)^alpha d_i`` over the
    query's ``k`` nearest database items, normalised; then ``q' . d``."""
    q, d, ex = _inputs(queries, database, exclude)
    _check_k(k, len(d) - int((ex >= 0).any()))
    nn, s = top_k(_masked(q @ d.T, ex), k)
    w = np.maximum(s, 0) ** alpha if alpha else np.ones_like(s)
    expanded = _unit_rows(q + np.einsum("qk,qkd->qd", w, d[nn]))
    return (expanded @ d.T).astype(np.float32)


def aqe(queries: np.ndarray, database: np.ndarray, exclude: np.ndarray | None = None, *,
        k: int = 5) -> np.ndarray:
    """Average query expansion: the query and its ``k`` nearest database items, averaged."""
    return alpha_qe(queries, database, exclude, k=k, alpha=0.0)


# --------------------------------------------------------------------------- database side


def dba(queries: np.ndarray, database: np.ndarray, exclude: np.ndarray | None = None, *,
        k: int = 5, alpha: float = 0.0) -> np.ndarray:
    """Database-side augmentation: ``d_j' = d_j + sum_i w_i d_i`` over the ``k`` nearest other
    database items of ``d_j`` (``w = max(s, 0)^alpha``; alpha 0: a plain average), normalised;
    the scores are ``q . d_j'``. A query never meets its own excluded entry inside another
    item's augmentation (see the module docstring)."""
    q, d, ex = _inputs(queries, database, exclude)
    n = len(d)
    kk = min(k + 1, n - 1)
    _check_k(k, n - 1 - int((ex >= 0).any()))
    sims = d @ d.T
    np.fill_diagonal(sims, -np.inf)
    nn, s = top_k(sims, kk)
    del sims
    w = np.maximum(s, 0) ** alpha if alpha else np.ones_like(s)
    augmented = d + np.einsum("nk,nkd->nd", w[:, :k], d[nn[:, :k]])
    scores = q @ _unit_rows(augmented).T
    # Items j whose k neighbours hold a query's excluded entry e: for that query, j's
    # augmentation without e (its (k+1)-th neighbour instead).
    query_of = np.full(n, -1, np.int64)
    query_of[ex[ex >= 0]] = np.flatnonzero(ex >= 0)
    j, p = np.nonzero(query_of[nn[:, :k]] >= 0)
    for start in range(0, len(j), 4096):
        jj, pp = j[start:start + 4096], p[start:start + 4096]
        fixed = augmented[jj] - w[jj, pp, None] * d[nn[jj, pp]]
        if kk > k:
            fixed += w[jj, k, None] * d[nn[jj, k]]
        qq = query_of[nn[jj, pp]]
        scores[qq, jj] = np.einsum("rd,rd->r", q[qq], _unit_rows(fixed))
    return scores.astype(np.float32)


# --------------------------------------------------------------------------- k-reciprocal


def _neighbour_matrix(nn: np.ndarray, m: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(nn)), nn.shape[1])
    return sp.csr_matrix((np.ones(nn.size, np.float32), (rows, nn.ravel())), shape=(m, m))


def _reciprocal(nn: np.ndarray, m: int) -> sp.csr_matrix:
    """R[i, j] = 1 where j is among i's neighbours ``nn`` and i among j's."""
    a = _neighbour_matrix(nn, m)
    return a.multiply(a.T).tocsr()


def k_reciprocal(queries: np.ndarray, database: np.ndarray, exclude: np.ndarray | None = None,
                 *, k1: int = 20, k2: int = 6, lam: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranking; returns ``-(final distance)`` as scores."""
    q, d, ex = _inputs(queries, database, exclude)
    self_retrieval = (len(q) == len(d) and np.array_equal(ex, np.arange(len(d)))
                      and np.array_equal(q, d))
    if self_retrieval:  # queries are database items: one set of nodes
        feats, q_rows, d_rows = d, np.arange(len(d)), np.arange(len(d))
    else:  # the original's setting: the union of queries and database
        feats = np.concatenate([q, d])
        q_rows, d_rows = np.arange(len(q)), len(q) + np.arange(len(d))
    m = len(feats)
    _check_k(k1, m - 1, "k1")
    _check_k(k2, k1 + 1, "k2")
    if not 0 <= lam <= 1:
        raise NeuralCodesError(f"lambda must be in [0, 1], got {lam}")
    sims = feats @ feats.T
    dist = np.maximum(2 - 2 * sims, 0)
    dist /= np.maximum(dist.max(axis=1, keepdims=True), 1e-12)  # per row, as the original
    np.fill_diagonal(sims, np.inf)  # each node its own first neighbour
    nn, _ = top_k(sims, k1 + 1)
    del sims
    half = int(np.around(k1 / 2))
    r = _reciprocal(nn, m)
    rh = _reciprocal(nn[:, :half + 1], m)
    # expansion: candidate j in R(i) adds R_half(j) when |R_half(j) & R(i)| > 2/3 |R_half(j)|
    overlap = (r @ rh.T).multiply(r).tocsr()  # [i, j] = |R(i) & R_half(j)|, j in R(i)
    size_h = np.asarray(rh.sum(axis=1)).ravel()
    overlap.data = (overlap.data > 2 / 3 * size_h[overlap.indices]).astype(np.float32)
    overlap.eliminate_zeros()
    expanded = ((r + overlap @ rh) > 0).tocsr().astype(np.float32)
    rows = np.repeat(np.arange(m), np.diff(expanded.indptr))
    weights = np.exp(-dist[rows, expanded.indices])
    v = sp.csr_matrix((weights, expanded.indices, expanded.indptr), shape=(m, m))
    v = sp.diags(1 / np.asarray(v.sum(axis=1)).ravel()) @ v
    if k2 > 1:  # local query expansion: the mean of the k2 nearest rows of V
        v = (_neighbour_matrix(nn[:, :k2], m) @ v) / k2
    shared = _min_sums(v.tocsc().astype(np.float32), q_rows, d_rows, m, self_retrieval)
    jaccard = 1 - shared / (2 - shared)  # sum max = 2 - sum min: rows of V sum to 1
    final = (1 - lam) * jaccard + lam * dist[np.ix_(q_rows, d_rows)]
    return (-final).astype(np.float32)


def _min_sums(v: sp.csc_matrix, q_rows: np.ndarray, d_rows: np.ndarray, m: int,
              symmetric: bool) -> np.ndarray:
    """``M[a, b] = sum_k min(V[q_rows[a], k], V[d_rows[b], k])`` over the shared nonzero
    columns k, visiting each column's pairs of nonzero rows once (``symmetric``: queries and
    database are the same rows, so only pairs a < b are visited and mirrored)."""
    q_pos = np.full(m, -1, np.int64)
    q_pos[q_rows] = np.arange(len(q_rows))
    d_pos = np.full(m, -1, np.int64)
    d_pos[d_rows] = np.arange(len(d_rows))
    out = np.zeros(len(q_rows) * len(d_rows), np.float32)
    counts = np.diff(v.indptr).astype(np.int64)
    # partners of each nonzero: the later ones in its column (symmetric) or all of them
    entry_col = np.repeat(np.arange(len(counts)), counts)
    pos = _ranges(counts)
    partners = counts[entry_col] - pos - 1 if symmetric else counts[entry_col]
    first = v.indptr[entry_col] + (pos + 1 if symmetric else 0)
    cum = np.cumsum(partners)
    entry = 0
    while entry < len(partners):
        base = cum[entry - 1] if entry else 0
        stop = max(entry + 1, int(np.searchsorted(cum, base + PAIR_CHUNK, side="right")))
        c = partners[entry:stop]
        left = np.repeat(np.arange(entry, stop), c)
        right = np.repeat(first[entry:stop], c) + _ranges(c)
        a, b = q_pos[v.indices[left]], d_pos[v.indices[right]]
        keep = (a >= 0) & (b >= 0)
        np.add.at(out, a[keep] * len(d_rows) + b[keep],
                  np.minimum(v.data[left[keep]], v.data[right[keep]]))
        entry = stop
    out = out.reshape(len(q_rows), len(d_rows))
    if symmetric:
        out += out.T
        out[np.diag_indices(len(out))] = np.asarray(v.sum(axis=1)).ravel()[q_rows]
    return out


def _ranges(counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(c) for c in counts])`` without a Python loop."""
    total = int(counts.sum())
    ends = np.cumsum(counts)
    return np.arange(total) - np.repeat(ends - counts, counts)


# --------------------------------------------------------------------------- diffusion


def diffusion(queries: np.ndarray, database: np.ndarray, exclude: np.ndarray | None = None, *,
              k: int = 10, alpha: float = 0.99, gamma: float = 3.0,
              query_k: int | None = None) -> np.ndarray:
    """Diffusion on the database's mutual k-NN graph (see the module docstring); ``query_k``
    (default ``k``) database neighbours start each query."""
    q, d, ex = _inputs(queries, database, exclude)
    n = len(d)
    if n > DIFFUSION_MAX:
        raise NeuralCodesError(f"diffusion inverts the database's graph: at most "
                               f"{DIFFUSION_MAX:,} items, got {n:,}")
    if not 0 < alpha < 1:
        raise NeuralCodesError(f"diffusion needs 0 < alpha < 1, got {alpha}")
    _check_k(k, n - 1)
    query_k = query_k or k
    _check_k(query_k, n - int((ex >= 0).any()), "query_k")
    sims = d @ d.T
    np.fill_diagonal(sims, -np.inf)
    nn, s = top_k(sims, k)
    del sims
    rows = np.repeat(np.arange(n), k)
    a = sp.csr_matrix((np.maximum(s.ravel(), 0) ** gamma, (rows, nn.ravel())), shape=(n, n))
    w = a.minimum(a.T)  # mutual neighbours only (min of the two directions: both or none)
    deg = np.asarray(w.sum(axis=1)).ravel()
    inv_sqrt = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-30)), 0.0)
    w = sp.diags(inv_sqrt) @ w @ sp.diags(inv_sqrt)
    system = np.eye(n, dtype=np.float32) - np.float32(alpha) * w.toarray().astype(np.float32)
    inverse = _spd_inverse(system)
    qn, qs = top_k(_masked(q @ d.T, ex), query_k)
    y = sp.csr_matrix((np.maximum(qs.ravel(), 0) ** gamma,
                       (np.repeat(np.arange(len(q)), query_k), qn.ravel())), shape=(len(q), n))
    return np.asarray(y @ inverse, dtype=np.float32)


def _spd_inverse(a: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric positive definite matrix (LAPACK potrf + potri)."""
    c, info = scipy.linalg.lapack.spotrf(a, lower=True, overwrite_a=True)
    if info != 0:
        raise NeuralCodesError("diffusion: the graph system is not positive definite")
    inv, info = scipy.linalg.lapack.spotri(c, lower=True, overwrite_c=True)
    if info != 0:
        raise NeuralCodesError("diffusion: could not invert the graph system")
    lower = np.tril(inv)
    return lower + np.tril(inv, -1).T


# --------------------------------------------------------------------------- measuring, tuning


def score_metrics(scores: np.ndarray, labels: np.ndarray, *, ks: Sequence[int] = (5, 10),
                  top_k_results: int = 0) -> RankingMetrics:
    """The project's retrieval measures (:func:`ranking_metrics_from_scores`) of a
    self-retrieval score matrix (N, N): each item queries the others, itself excluded by
    index; measured in row blocks so memory stays bounded."""
    labels = np.asarray(labels)
    n = len(labels)
    parts = [ranking_metrics_from_scores(scores[a:a + SCORE_ROWS], labels[a:a + SCORE_ROWS],
                                         labels, ks, np.arange(a, min(a + SCORE_ROWS, n)),
                                         top_k_results)
             for a in range(0, n, SCORE_ROWS)]
    return RankingMetrics(np.concatenate([p.ap for p in parts]),
                          {k: np.concatenate([p.precision[k] for p in parts]) for k in ks},
                          np.concatenate([p.top for p in parts]),
                          np.concatenate([p.top_scores for p in parts]))


def self_rerank(method: Method, codes: np.ndarray, **params: Any) -> np.ndarray:
    """``method``'s scores for the self-retrieval of ``codes`` (each queries the others)."""
    return method(codes, codes, np.arange(len(codes)), **params)


def tune(method: Method, grid: Mapping[str, Sequence[Any]], data: FitData
         ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The parameters of ``grid`` (name -> values; every combination) whose self-retrieval
    mAP on the in-domain ``data`` (the validation split) is highest; the first combination
    wins ties. Combinations the data cannot support (k too large) are skipped. Returns
    ``(best params, [{"params", "map"}...])``."""
    names = list(grid)
    trials: list[dict[str, Any]] = []
    for values in itertools.product(*(grid[name] for name in names)):
        params = dict(zip(names, values, strict=True))
        try:
            scores = self_rerank(method, data.codes, **params)
        except NeuralCodesError:
            continue
        trials.append({"params": params, "map": score_metrics(scores, data.labels, ks=()).map})
    if not trials:
        raise NeuralCodesError(f"no parameters of {dict(grid)} fit {len(data.codes)} "
                               f"{data.split} codes")
    best = max(trials, key=lambda t: t["map"])
    return dict(best["params"]), trials
