"""Top-k search over unit codes: one exact path (:func:`exact_top_k`, NumPy, the ranking rule of
:mod:`neuralcodes.retrieval.metrics`) and approximate FAISS indexes for large databases, behind
one :class:`CodeIndex`."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval.metrics import CHUNK_BYTES, capped, finite_scores, rank_keys

KINDS: tuple[str, ...] = ("exact", "ivf", "hnsw")


def exact_top_k(queries: np.ndarray, database: np.ndarray, k: int,
                exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best database items per query by dot product: ``(scores, ids)``, each (Q, k).

    The ranking rule is that of the metrics (score desc, ties by id asc). ``exclude`` (one id
    per query, -1 for none) is left out of that query's results; missing results (a database
    smaller than ``k``) are padded with id -1 and score -inf. Queries are processed in chunks,
    so memory stays bounded by :data:`CHUNK_BYTES` for any database size.
    """
    queries = np.asarray(queries, dtype=np.float32)
    database = np.asarray(database, dtype=np.float32)
    if k < 1:
        raise NeuralCodesError(f"k must be positive, got {k}")
    q, n = len(queries), len(database)
    scores_out = np.full((q, k), -np.inf, np.float32)
    ids_out = np.full((q, k), -1, np.int64)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.shape != (q,) or (exclude >= n).any():
            raise NeuralCodesError("exclude needs one database id (or -1) per query")
    chunk = max(1, CHUNK_BYTES // (12 * max(n, 1)))
    for a in range(0, q if n else 0, chunk):
        b = min(a + chunk, q)
        scores = finite_scores(queries[a:b] @ database.T)
        ex = None if exclude is None else exclude[a:b]
        keys = rank_keys(scores, ex)  # unique keys: a partition gives the exact top k
        take = min(k, n)
        if take < n:
            keys = np.partition(keys, take - 1, axis=1)[:, :take]
        keys.sort(axis=1)
        ids = keys & 0xFFFFFFFF
        got = np.take_along_axis(scores, ids, 1)
        if ex is not None:  # the excluded id is ranked last: drop it if it made the cut
            dropped = ids == ex[:, None]
            got[dropped], ids[dropped] = -np.inf, -1
        scores_out[a:b, :take], ids_out[a:b, :take] = got, ids
    return scores_out, ids_out


class CodeIndex:
    """Inner-product search over unit codes.

    ``kind="exact"`` (default): :func:`exact_top_k` over the codes added (kept as one float32
    array). ``"ivf"``: FAISS ``IndexIVFFlat`` (k-means cells, ``nprobe`` visited; trained on the
    first batch added). ``"hnsw"``: FAISS ``IndexHNSWFlat`` (graph, ``ef_search``). Both are
    approximate and meant for large databases.
    """

    def __init__(self, dim: int, kind: str = "exact", *, nlist: int | None = None,
                 nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 128,
                 ef_construction: int = 64) -> None:
        if kind not in KINDS:
            raise NeuralCodesError(f"unknown index kind '{kind}' (choose from {', '.join(KINDS)})")
        self.dim, self.kind, self.nlist, self.nprobe = dim, kind, nlist, nprobe
        self._codes = np.zeros((0, dim), np.float32)  # exact: the database itself
        self._index: Any = None  # ivf: built on the first add, when the data size is known
        if kind == "hnsw":
            self._index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efConstruction = ef_construction
            self._index.hnsw.efSearch = ef_search

    def __len__(self) -> int:
        if self.kind == "exact":
            return len(self._codes)
        return 0 if self._index is None else int(self._index.ntotal)

    def tune(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the speed/recall trade-off of an approximate index (no effect when exact)."""
        if nprobe is not None:
            self.nprobe = nprobe
            if self.kind == "ivf" and self._index is not None:
                self._index.nprobe = min(nprobe, self._index.nlist)
        if ef_search is not None and self.kind == "hnsw":
            self._index.hnsw.efSearch = ef_search

    def _as_input(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise NeuralCodesError(f"codes of shape {x.shape} do not fit an index of "
                                   f"dim {self.dim}")
        return x

    def add(self, codes: np.ndarray) -> CodeIndex:
        """Append codes (N, dim); their ids continue from the current size. An exact index
        keeps a float32 array as it is (no copy) when it is the first one added."""
        codes = self._as_input(codes)
        if self.kind == "exact":
            self._codes = codes if not len(self._codes) else np.concatenate([self._codes, codes])
            return self
        if self._index is None:  # IVF: train the coarse quantizer on the first batch
            nlist = self.nlist or max(1, min(int(4 * np.sqrt(len(codes))), len(codes) // 39))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            train = codes
            if len(codes) > 64 * nlist:  # FAISS wants >= 39 points per cell; more is slow
                train = codes[np.random.default_rng(0).choice(len(codes), 64 * nlist,
                                                              replace=False)]
            index.train(train)
            index.nprobe = min(self.nprobe, nlist)
            self._quantizer, self._index = quantizer, index
        self._index.add(codes)
        return self

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best (scores, ids) per query, best first; id -1 pads missing results.

        ``exclude`` (one id per query, -1 for none) is left out of that query's results.
        """
        queries = self._as_input(queries)
        if k < 1:
            raise NeuralCodesError(f"k must be positive, got {k}")
        if self.kind == "exact":
            scores, ids = exact_top_k(queries, self._codes, k, exclude)
            return capped(scores), ids
        n = len(self)
        want = min(n, k + (0 if exclude is None else 1))
        if want == 0:
            return (np.full((len(queries), k), -np.inf, np.float32),
                    np.full((len(queries), k), -1, np.int64))
        scores, ids = self._index.search(queries, want)
        if exclude is not None:
            exclude = np.asarray(exclude, dtype=np.int64)[:, None]
            drop = (ids == exclude) & (exclude >= 0)
            drop[~drop.any(axis=1), -1] = True  # not found: drop the last candidate instead
            keep = ~drop
            scores = scores[keep].reshape(len(queries), want - 1)
            ids = ids[keep].reshape(len(queries), want - 1)
        scores, ids = scores[:, :k], ids[:, :k]
        if ids.shape[1] < k:
            pad = k - ids.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return capped(scores), ids
