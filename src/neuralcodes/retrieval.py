"""Image retrieval with neural codes (assignment Task 3), PCA study and search over any images.

Protocol: every ood image queries the other ood images (its own entry is excluded by index,
not by assuming it ranks first: Tiny ImageNet has duplicates). Similarity is the dot product of
unit-length codes (cosine); ties are broken by database index (lowest first). Average precision
is computed over the full ranking (see :mod:`neuralcodes.metrics`).

Outputs of :func:`evaluate_run` in ``runs/<name>/retrieval/`` (each step is skipped when its
output exists; ``force=True`` redoes it):

    map.json             {"pre"|"post": {layer: {"map", "p@5", "p@10", "n_queries", "seconds"}}}
    top5.json            the first 10 queries and their top-5 per layer (ids, classes, scores)
    top5_layer5.png      query + top-5 for the first 10 ood queries, one figure per layer
    top5_layer6.png, top5_layer7.png
    top5_layers.png      the three layers side by side
    evidence.json        what differs between layers: p@5, colour-histogram similarity of
                         query vs results, sparsity, dims, top-5 changes among the first 10
    pca.json, pca.png    mAP of PCA / PCA-whitened codes (fitted on in-domain train codes)
                         for 16..256 dims and the full code, per layer

Figures, top5.json, evidence and PCA use the run's default codes (``retrieval.relu`` in its
config, pre-ReLU by default) unless ``relu`` is given; map.json has both variants.

Own images: ``neuralcodes index FOLDER --run RUN`` saves the codes of every image under FOLDER
(``RUN/retrieval/index-<folder>.npz`` unless ``--out``); ``neuralcodes search IMAGE --run RUN``
ranks the ood set (default) or such an index. :func:`build_index`, :func:`search` and
:class:`Searcher` are the Python API.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from neuralcodes import codes as codes_mod
from neuralcodes.codes import Codes, l2_normalize, load_codes
from neuralcodes.data import Dataset, Splits, load_data
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import read_json, write_json
from neuralcodes.metrics import RankingMetrics, rank_order, self_retrieval_metrics
from neuralcodes.model import CODE_LAYERS
from neuralcodes.runs import RunDir, TrainedRun

KINDS: tuple[str, ...] = ("exact", "ivf", "hnsw")
VARIANT = {False: "pre", True: "post"}
PCA_FIT_IMAGES = 5000  # in-domain training images the PCA is fitted on
COLOUR_BINS = 4  # per channel: a 64-bin joint RGB histogram


# --------------------------------------------------------------------------- the index


class CodeIndex:
    """Inner-product search over unit codes with FAISS.

    ``kind="exact"`` (default): ``IndexFlatIP``, results equal the NumPy ranking (score desc,
    ties by id asc). ``"ivf"``: ``IndexIVFFlat`` (k-means cells, ``nprobe`` visited; trained on
    the first batch added). ``"hnsw"``: ``IndexHNSWFlat`` (graph, ``ef_search``). Both are
    approximate and meant for large databases.
    """

    def __init__(self, dim: int, kind: str = "exact", *, nlist: int | None = None,
                 nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 128,
                 ef_construction: int = 64) -> None:
        if kind not in KINDS:
            raise NeuralCodesError(f"unknown index kind '{kind}' (choose from {', '.join(KINDS)})")
        self.dim, self.kind, self.nlist, self.nprobe = dim, kind, nlist, nprobe
        self._index: Any
        if kind == "exact":
            self._index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            self._index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efConstruction = ef_construction
            self._index.hnsw.efSearch = ef_search
        else:
            self._index = None  # built on the first add, when the data size is known

    def __len__(self) -> int:
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
        """Append codes (N, dim); their ids continue from the current size."""
        codes = self._as_input(codes)
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
        n = len(self)
        extra = 0 if exclude is None else 1
        want = min(n, k + extra)
        if want == 0:
            return (np.full((len(queries), k), -np.inf, np.float32),
                    np.full((len(queries), k), -1, np.int64))
        if self.kind == "exact":
            scores, ids = self._exact_candidates(queries, want)
        else:
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
        return scores, ids

    def _exact_candidates(self, queries: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``want`` by FAISS, re-sorted by (score desc, id asc); widened until no tie with
        an item outside the candidates can change the result."""
        n, extra = len(self), 8
        while True:
            got = min(n, want + extra)
            scores, ids = self._index.search(queries, got)
            order = np.lexsort((ids, -scores), axis=1)
            scores = np.take_along_axis(scores, order, 1)
            ids = np.take_along_axis(ids, order, 1)
            if got == n or (scores[:, want - 1] > scores[:, -1]).all():
                return scores[:, :want], ids[:, :want]
            extra *= 4


def exact_top_k(queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    """The NumPy reference ranking: ids of the ``k`` best database items per query."""
    return rank_order(np.asarray(queries, np.float32) @ np.asarray(database, np.float32).T)[:, :k]


# --------------------------------------------------------------------------- PCA


@dataclass
class PCA:
    """A PCA of unit codes: mean, principal axes (rows, by decreasing variance), variances."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (K, D)
    variances: np.ndarray  # (K,)

    @classmethod
    def fit(cls, x: np.ndarray, n_components: int, seed: int = 0) -> PCA:
        """Fit on ``x`` (N, D): exact SVD when small, randomized (``svd_lowrank``) otherwise."""
        x = np.asarray(x, dtype=np.float32)
        k = min(n_components, x.shape[1], len(x) - 1)
        if k < 1:
            raise NeuralCodesError("PCA needs at least two training codes")
        mean = x.mean(axis=0)
        centred = torch.from_numpy(x - mean)
        if min(x.shape) <= 2 * k + 10:
            _, s, vt = torch.linalg.svd(centred.double(), full_matrices=False)
            v = vt[:k].T
        else:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                _, s, v = torch.svd_lowrank(centred, q=k + max(10, k // 8), niter=4)
            v = v[:, :k]
        variances = (s[:k].double() ** 2 / (len(x) - 1)).numpy()
        return cls(mean, v.T.float().numpy().copy(), variances)

    def transform(self, x: np.ndarray, dims: int, whiten: bool = False) -> np.ndarray:
        """Project onto the first ``dims`` axes (optionally whitened) and re-normalise to unit
        length, as in the paper's compressed codes."""
        if dims > len(self.components):
            raise NeuralCodesError(f"PCA has only {len(self.components)} components, not {dims}")
        y = (np.asarray(x, dtype=np.float32) - self.mean) @ self.components[:dims].T
        if whiten:
            y /= np.sqrt(self.variances[:dims] + 1e-12).astype(np.float32)
        return l2_normalize(y)


def pca_study(train: dict[str, np.ndarray], ood: Codes, dims: Sequence[int],
              progress: bool = False) -> list[dict[str, Any]]:
    """mAP of the ood self-retrieval with PCA / PCA-whitened codes fitted on ``train`` codes.

    One row per (layer, dims, whiten), plus ``dims="full"``: the uncompressed code. Sizes the
    fit cannot provide (more than the code length or the number of training codes) are skipped.
    """
    table = []
    for layer, x in train.items():
        pca = PCA.fit(x, max(dims))
        full = self_retrieval_metrics(ood.layers[layer], ood.labels, ks=(5,))
        table.append({"layer": layer, "dims": "full", "whiten": False, "map": full.map,
                      "p@5": float(full.precision[5].mean())})
        for d, whiten in itertools.product(sorted(dims), (False, True)):
            if d > len(pca.components):
                continue
            m = self_retrieval_metrics(pca.transform(ood.layers[layer], d, whiten), ood.labels,
                                       ks=(5,), progress=progress, desc=f"PCA {layer}/{d}")
            table.append({"layer": layer, "dims": d, "whiten": whiten, "map": m.map,
                          "p@5": float(m.precision[5].mean())})
    return table


# --------------------------------------------------------------------------- evaluation


def evaluate_codes(codes: Codes, ks: Sequence[int] = (5, 10), top_k: int = 5,
                   progress: bool = False) -> dict[str, RankingMetrics]:
    """Self-retrieval metrics (each image queries the others) per layer."""
    return {layer: self_retrieval_metrics(x, codes.labels, ks=ks, top_k=top_k, progress=progress,
                                          desc=f"mAP layer {layer}")
            for layer, x in codes.layers.items()}


def colour_histograms(images: np.ndarray, bins: int = COLOUR_BINS) -> np.ndarray:
    """Joint RGB histograms (N, bins**3), each summing to 1."""
    q = (np.asarray(images, dtype=np.uint16) * bins) >> 8
    cell = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    flat = cell.reshape(len(images), -1).astype(np.int64)
    flat += np.arange(len(images))[:, None] * bins**3
    hist = np.bincount(flat.ravel(), minlength=len(images) * bins**3)
    return hist.reshape(len(images), bins**3) / flat.shape[1]


def _intersection(h: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(h[a], h[b]).sum(axis=-1).mean())


def layer_evidence(codes: Codes, metrics: dict[str, RankingMetrics], images: np.ndarray,
                   n_queries: int = 10, seed: int = 0) -> dict[str, Any]:
    """Measured differences between the layers' retrievals (for the report).

    Colour similarity is the mean histogram intersection (1 = identical colour distribution)
    between every query and its top-k results; baselines: random pairs and same-class pairs.
    Sparsity is the share of activations that are zero after ReLU (<= 0 before it).
    """
    hist = colour_histograms(images)
    n = len(codes)
    per_layer = {}
    for layer, m in metrics.items():
        x = codes.layers[layer]
        per_layer[layer] = {
            "dims": int(x.shape[1]), "map": m.map, "p@5": float(m.precision[5].mean()),
            "colour_similarity": _intersection(hist, np.arange(n)[:, None], m.top),
            "sparsity": float((x <= 0).mean()),
        }
    rng = np.random.default_rng(seed)
    others = (np.arange(n)[:, None] + rng.integers(1, n, (n, 5))) % n
    same = np.array([rng.choice(np.flatnonzero((codes.labels == codes.labels[i])
                                               & (np.arange(n) != i)) if
                                (codes.labels == codes.labels[i]).sum() > 1 else [i], 5)
                     for i in range(n)])
    first = {layer: m.top[:n_queries] for layer, m in metrics.items()}
    changed, overlap = {}, {}
    for a, b in itertools.combinations(first, 2):
        sets = [(set(x), set(y)) for x, y in zip(first[a], first[b], strict=True)]
        changed[f"{a}-{b}"] = sum(x != y for x, y in sets)
        overlap[f"{a}-{b}"] = float(np.mean([len(x & y) for x, y in sets]))
    return {
        "relu": codes.relu, "n_queries": n, "first_queries": n_queries,
        "per_layer": per_layer,
        "colour_similarity_baseline": {"random_pairs": _intersection(hist, np.arange(n)[:, None],
                                                                     others),
                                       "same_class_pairs": _intersection(
                                           hist, np.arange(n)[:, None], same)},
        "top5_changed": changed,
        "top5_overlap": overlap,
    }


# --------------------------------------------------------------------------- a trained run


class _Run:
    """A run directory with its config, data and model loaded lazily (each at most once)."""

    def __init__(self, run: str | Path, device: str = "auto", precision: str = "fp32",
                 progress: bool = True) -> None:
        self.rd = RunDir.existing(run)
        self.cfg = self.rd.read_config()
        self.device, self.precision, self.progress = device, precision, progress

    @functools.cached_property
    def trained(self) -> TrainedRun:
        return TrainedRun.load(self.rd.root, device=self.device)

    @functools.cached_property
    def data(self) -> tuple[Dataset, Splits]:
        """The dataset and splits, without loading the model unless it is loaded already."""
        if "trained" in self.__dict__:
            return self.trained.dataset, self.trained.splits
        return load_data(self.cfg.data, progress=False)

    @property
    def model(self) -> torch.nn.Module:
        return self.trained.model

    def ood_codes(self, relu: bool) -> Codes:
        path = self.rd.codes("ood", relu)
        if not path.is_file():
            codes_mod.run_codes(self.rd.root, "ood", None, device=self.device,
                                precision=self.precision, progress=self.progress,
                                trained=self.trained)
        return load_codes(path)

    def images(self, index: np.ndarray) -> np.ndarray:
        dataset = self.data[0]
        order = np.argsort(index)
        out = np.empty((len(index), *dataset.images.shape[1:]), dtype=np.uint8)
        out[order] = dataset.images[np.asarray(index)[order]]
        return out

    def class_names(self, labels: np.ndarray) -> list[str]:
        names = self.data[0].names
        return [names[int(i)] if i >= 0 else "" for i in labels]


def _default_relu(run: _Run, relu: bool | None) -> bool:
    return run.cfg.retrieval.relu if relu is None else bool(relu)


def evaluate_run(run_dir: str | Path, *, relu: bool | None = None, progress: bool = True,
                 device: str = "auto", precision: str = "fp32",
                 pca_images: int = PCA_FIT_IMAGES, force: bool = False) -> dict[str, Any]:
    """The whole retrieval study of a trained run (see the module docstring for the files).

    ``relu`` None: mAP for both pre- and post-ReLU codes, everything else for the run's
    default; True/False: only that variant. Returns the contents of the JSON files written.
    """
    run = _Run(run_dir, device, precision, progress)
    out = run.rd.retrieval
    variants = (False, True) if relu is None else (bool(relu),)
    main = _default_relu(run, relu)
    cfg = run.cfg.retrieval
    result: dict[str, Any] = {}

    metrics: dict[bool, dict[str, RankingMetrics]] = {}
    seconds: dict[bool, float] = {}

    def metrics_of(v: bool) -> dict[str, RankingMetrics]:
        if v not in metrics:
            codes = run.ood_codes(v)
            start = time.perf_counter()
            metrics[v] = evaluate_codes(codes, (5, 10), cfg.k, progress)
            seconds[v] = (time.perf_counter() - start) / len(metrics[v])
        return metrics[v]

    map_path = out / "map.json"
    maps = read_json(map_path) if map_path.is_file() and not force else {}
    if any(VARIANT[v] not in maps for v in variants):
        for v in variants:
            if VARIANT[v] not in maps:
                maps[VARIANT[v]] = {layer: {**m.summary(), "seconds": round(seconds[v], 3)}
                                    for layer, m in metrics_of(v).items()}
        write_json(map_path, maps)
    result["map"] = maps

    codes = run.ood_codes(main)
    first = np.arange(min(cfg.figure_queries, len(codes)))
    figure_paths = [out / f"top5_layer{layer}.png" for layer in codes.layers]
    figure_paths.append(out / "top5_layers.png")
    top_path = out / "top5.json"
    if force or not all(p.is_file() for p in figure_paths) or not _done(top_path, main):
        result["top5"] = _write_figures(run, codes, metrics_of(main), first, out)
    else:
        result["top5"] = read_json(top_path)
    result["figures"] = [str(p) for p in figure_paths]

    evidence_path = out / "evidence.json"
    if force or not _done(evidence_path, main):
        evidence = layer_evidence(codes, metrics_of(main), run.images(codes.index), len(first))
        write_json(evidence_path, evidence)
    result["evidence"] = read_json(evidence_path)

    pca_path, pca_plot = out / "pca.json", out / "pca.png"
    redo_pca = force or not _done(pca_path, main)
    if redo_pca:
        train = _train_codes(run, main, pca_images)
        table = pca_study(train, codes, cfg.pca_dims, progress)
        write_json(pca_path, {"relu": main, "fit": {"split": "train",
                                                    "images": len(next(iter(train.values())))},
                              "table": table})
    result["pca"] = read_json(pca_path)
    if redo_pca or not pca_plot.is_file():
        from neuralcodes.figures import plot_pca

        plot_pca(result["pca"]["table"], pca_plot,
                 title=f"PCA-compressed {VARIANT[main]}-ReLU codes (fitted on train)")
    return result


def _done(path: Path, relu: bool) -> bool:
    """``path`` exists and was computed from codes of the same ReLU variant."""
    return path.is_file() and read_json(path).get("relu") == relu


def _train_codes(run: _Run, relu: bool, n_images: int) -> dict[str, np.ndarray]:
    """Codes of up to ``n_images`` in-domain training images (a fixed random sample)."""
    model, dataset, splits = run.trained.model, run.trained.dataset, run.trained.splits
    train = np.asarray(splits.train)
    pick = np.sort(np.random.default_rng(0).choice(len(train), min(n_images, len(train)),
                                                   replace=False))
    index = np.sort(train[pick])
    return codes_mod.extract_codes(model, dataset.images[index], CODE_LAYERS, relu,
                                   device=run.device, precision=run.precision,
                                   progress=run.progress)


def _rows(run: _Run, codes: Codes, m: RankingMetrics, first: np.ndarray) -> list[Any]:
    from neuralcodes.figures import Result, RetrievalRow

    ids = np.concatenate([first, m.top[first].ravel()])
    images = dict(zip(ids.tolist(), run.images(codes.index[ids]), strict=True))
    names = run.class_names(codes.labels)
    rows = []
    for q in first:
        results = [Result(images[int(j)], float(s), names[j], bool(codes.labels[j]
                                                                    == codes.labels[q]))
                   for j, s in zip(m.top[q], m.top_scores[q], strict=True)]
        rows.append(RetrievalRow(images[int(q)], names[q], results))
    return rows


def _write_figures(run: _Run, codes: Codes, metrics: dict[str, RankingMetrics],
                   first: np.ndarray, out: Path) -> dict[str, Any]:
    from neuralcodes.figures import plot_retrieval, plot_retrieval_layers

    variant = f"{VARIANT[codes.relu]}-ReLU"
    rows = {layer: _rows(run, codes, m, first) for layer, m in metrics.items()}
    for layer, r in rows.items():
        plot_retrieval(r, out / f"top5_layer{layer}.png",
                       title=f"Layer {layer} ({variant} codes): top-5 for the first "
                             f"{len(first)} ood queries")
    plot_retrieval_layers(rows, out / "top5_layers.png")
    names = run.class_names(codes.labels)
    data = {"relu": codes.relu, "queries": [
        {"position": int(q), "dataset_index": int(codes.index[q]), "class": names[q],
         "layers": {layer: [{"position": int(j), "dataset_index": int(codes.index[j]),
                             "class": names[j], "score": float(s),
                             "same_class": bool(codes.labels[j] == codes.labels[q])}
                            for j, s in zip(m.top[q], m.top_scores[q], strict=True)]
                    for layer, m in metrics.items()}}
        for q in first]}
    write_json(out / "top5.json", data)
    return data


# --------------------------------------------------------------------------- own images


@dataclass
class Hit:
    """One search result."""

    rank: int
    score: float
    position: int  # row in the database
    path: str  # the image's path (dataset-relative for the ood set)
    label: str  # class name ("" when unknown)


class Searcher:
    """A trained run's model plus a database of codes (the ood set, or a folder index)."""

    def __init__(self, run: str | Path, *, index: str | Path | None = None,
                 relu: bool | None = None, device: str = "auto", kind: str = "exact",
                 progress: bool = False) -> None:
        self.run = _Run(run, device, "fp32", progress)
        self.kind = kind
        if index is None:
            self.relu = _default_relu(self.run, relu)
            self.codes = self.run.ood_codes(self.relu)
            self.paths = [self.run.data[0].paths[int(i)] for i in self.codes.index]
            self.labels = self.run.class_names(self.codes.labels)
            self.source = "ood"
        else:
            if not Path(index).is_file():
                raise NeuralCodesError(f"{index}: no index file; build one with "
                                       "`neuralcodes index FOLDER --run RUN`")
            self.codes = load_codes(index)
            if self.codes.paths is None:
                raise NeuralCodesError(f"{index}: not a folder index (no paths); build one with "
                                       "`neuralcodes index FOLDER --run RUN`")
            if relu is not None and bool(relu) != self.codes.relu:
                raise NeuralCodesError(f"{index} holds {VARIANT[self.codes.relu]}-ReLU codes")
            self.relu, self.paths = self.codes.relu, list(self.codes.paths)
            self.labels = [""] * len(self.paths)
            self.source = str(index)
        self._indexes: dict[str, CodeIndex] = {}

    def index(self, layer: str) -> CodeIndex:
        """The search index of one layer (built on first use)."""
        if layer not in self.codes.layers:
            raise NeuralCodesError(f"unknown layer '{layer}' (choose from "
                                   f"{', '.join(self.codes.layers)})")
        if layer not in self._indexes:
            x = self.codes.layers[layer]
            self._indexes[layer] = CodeIndex(x.shape[1], self.kind).add(x)
        return self._indexes[layer]

    def query_codes(self, images: np.ndarray, layer: str) -> np.ndarray:
        """Unit codes of uint8 images (N, 64, 64, 3) for ``layer``."""
        return codes_mod.extract_codes(self.run.model, images, (layer,), self.relu,
                                       device=None, progress=False)[layer]

    def search_images(self, images: np.ndarray, layer: str = "6", k: int = 5
                      ) -> list[list[Hit]]:
        """The top-``k`` database images for each query image."""
        index = self.index(layer)
        scores, ids = index.search(self.query_codes(images, layer), k)
        return [[Hit(r + 1, float(s), int(i), self.paths[i], self.labels[i])
                 for r, (s, i) in enumerate(zip(srow, irow, strict=True)) if i >= 0]
                for srow, irow in zip(scores, ids, strict=True)]

    def image(self, position: int) -> np.ndarray:
        """The 64x64 image of a database entry."""
        if self.source == "ood":
            return self.run.images(self.codes.index[[position]])[0]
        return codes_mod.read_image(self.paths[position])


def build_index(folder: str | Path, run: str | Path, *, out: str | Path | None = None,
                relu: bool | None = None, device: str = "auto",
                batch_size: int = codes_mod.DEFAULT_BATCH, progress: bool = True
                ) -> tuple[Path, int, list[tuple[Path, str]]]:
    """Codes of every image under ``folder``: (index file, images indexed, [(path, why)] of
    the files that could not be read)."""
    r = _Run(run, device, "fp32", progress)
    folder = Path(folder)
    files = codes_mod.image_files(folder)
    images, ok, failed = codes_mod.read_images(files, progress)
    if not ok:
        raise NeuralCodesError(f"{folder}: no readable images found"
                               + (f" ({len(failed)} unreadable)" if failed else ""))
    use_relu = _default_relu(r, relu)
    layers = codes_mod.extract_codes(r.model, images, CODE_LAYERS, use_relu, batch_size,
                                     None, "fp32", progress)
    path = Path(out) if out else r.rd.retrieval / f"index-{folder.resolve().name}.npz"
    Codes(layers, np.arange(len(ok)), np.full(len(ok), -1), use_relu,
          [str(p) for p in ok]).save(path)
    return path, len(ok), failed


def search(image: str | Path | np.ndarray, run: str | Path, *, index: str | Path | None = None,
           layer: str = "6", k: int = 5, figure: str | Path | None = None,
           device: str = "auto") -> list[Hit]:
    """Rank the database (ood set by default, or a folder index) for one query image."""
    s = Searcher(run, index=index, device=device)
    query = image if isinstance(image, np.ndarray) else codes_mod.read_image(image)
    hits = s.search_images(query[None], layer, k)[0]
    if figure:
        from neuralcodes.figures import Result, RetrievalRow, plot_retrieval

        row = RetrievalRow(query, Path(image).name if not isinstance(image, np.ndarray) else "",
                           [Result(s.image(h.position), h.score, h.label or Path(h.path).name)
                            for h in hits])
        plot_retrieval([row], figure, title=f"layer {layer}, {s.source} database")
    return hits


# --------------------------------------------------------------------------- command line


def _relu_arg(value: str | None) -> bool | None:
    return None if value is None else value == "post"


def _cmd_retrieval(args: argparse.Namespace) -> int:
    relu = {"pre": False, "post": True, "both": None}[args.relu]
    result = evaluate_run(args.run, relu=relu, progress=not args.no_progress, device=args.device,
                          precision=args.precision, pca_images=args.pca_images, force=args.force)
    for variant, layers in result["map"].items():
        for layer, m in sorted(layers.items()):
            print(f"{variant}-ReLU layer {layer}: mAP {m['map']:.4f}  P@5 {m['p@5']:.4f}  "
                  f"P@10 {m['p@10']:.4f}")
    print(f"written to {RunDir(Path(args.run)).retrieval}")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    path, n, failed = build_index(args.folder, args.run, out=args.out, relu=_relu_arg(args.relu),
                                  device=args.device, batch_size=args.batch_size,
                                  progress=not args.no_progress)
    for _, why in failed:
        print(f"skipped: {why}")
    print(f"{path}: {n:,} images indexed" + (f", {len(failed)} unreadable" if failed else ""))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    hits = search(args.image, args.run, index=args.index, layer=args.layer, k=args.k,
                  figure=args.figure, device=args.device)
    for h in hits:
        print(f"{h.rank:>3}  {h.score:.4f}  {h.path}" + (f"  ({h.label})" if h.label else ""))
    if args.figure:
        print(f"figure: {args.figure}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``retrieval``, ``index`` and ``search`` subcommands."""
    p = subparsers.add_parser(
        "retrieval", help="ood retrieval study: figures, mAP, PCA study, layer evidence",
        description="Run the retrieval study of a trained run into RUN/retrieval/ (steps whose "
        "output exists are skipped).")
    p.add_argument("run", help="run directory (runs/<name>)")
    p.add_argument("--relu", default="both", choices=("pre", "post", "both"),
                   help="codes to study (both: mAP for both, the rest for the run's default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--pca-images", type=int, default=PCA_FIT_IMAGES,
                   help="training images the PCA is fitted on")
    p.add_argument("--force", action="store_true", help="redo every step")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_retrieval)

    p = subparsers.add_parser(
        "index", help="index a folder of your own images for `neuralcodes search`",
        description="Compute the neural codes of every image under FOLDER (any size and common "
        "format, resized to 64x64; unreadable files are reported and skipped).")
    p.add_argument("folder")
    p.add_argument("--run", required=True, help="trained run directory")
    p.add_argument("--out", help="index file (default: RUN/retrieval/index-<folder>.npz)")
    p.add_argument("--relu", choices=("pre", "post"), help="default: the run's setting")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=codes_mod.DEFAULT_BATCH)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_index)

    p = subparsers.add_parser(
        "search", help="find the images most similar to IMAGE",
        description="Rank the ood set (or an index from `neuralcodes index`) by cosine "
        "similarity of neural codes to IMAGE and print paths and scores.")
    p.add_argument("image")
    p.add_argument("--run", required=True, help="trained run directory")
    p.add_argument("--index", help="folder index file (default: the run's ood set)")
    p.add_argument("--layer", default="6", choices=CODE_LAYERS)
    p.add_argument("-k", type=int, default=5, help="results to show (default 5)")
    p.add_argument("--figure", help="also save the query and its results as a PNG")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_search)
