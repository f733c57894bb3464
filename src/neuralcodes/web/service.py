"""What the web app serves, loaded once: a trained run's model and ood codes, and an index."""

from __future__ import annotations

import functools
import gc
import threading
from pathlib import Path
from typing import Any

import numpy as np

from neuralcodes import lineage
from neuralcodes.config import RetrievalConfig
from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval import Searcher, exact_top_k, extract_code_variants
from neuralcodes.retrieval.methods.pooled import (
    MAP,
    PooledSearch,
    method_names,
    methods_table,
    overlay,
)
from neuralcodes.retrieval.metrics import chance_average_precision, ranking_metrics
from neuralcodes.runs import TrainedRun
from neuralcodes.text import printable
from neuralcodes.web.collection import Collection, shown
from neuralcodes.web.uploads import UploadRejected, png_bytes

#: The largest k the API answers (capped further by the database size).
MAX_K = 50
#: The method selector's choices: the registry's pooling methods.
POOLING: list[str] = method_names()


def freeze_loaded_objects() -> None:
    """Move every object alive now (the model, the codes, the app, the imported libraries)
    out of the garbage collector's reach, for a server about to answer requests: they live
    as long as it does. Without it, each full collection walks them all, and no request is
    answered meanwhile (measured: 30-370 ms each on a loaded 2-core machine; the garbage of a
    burst of uploads sets them off). Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


class ServedRun:
    """What the app serves, loaded once: the run's model and ood codes, and an optional index.

    Built on :class:`neuralcodes.retrieval.Searcher` (one for the ood set, one for the index).
    Gallery ids are positions in the run's ood codes (the ood split's order); index ids are
    positions in the index file.
    """

    def __init__(self, trained: TrainedRun, index: str | Path | None = None) -> None:
        """``trained``: served as a reader (it writes only missing ood codes, under the run's
        lock); its config's retrieval settings (layers, k, pre/post-ReLU), device and
        precision rule every search."""
        trained.reader = True
        cfg = trained.config.retrieval
        run_dir = trained.dir.root
        #: the server's folders, never shown to a client (``install_file_names_only``)
        self.folders = [f for p in (run_dir, None if index is None else Path(index).parent)
                        if p is not None for f in (Path(p).absolute(), Path(p).resolve())]
        # the index first: a wrong one is known before the ood codes are computed (with a bar);
        # it is not served, and searches in it answer 409 with the reason (index_error)
        self.index: Searcher | None = None
        self.collection: Collection | None = None  # the index as a gallery
        self.index_error: str | None = None
        if index is not None:
            try:
                self.index = Searcher(trained, index=index)
                _check_layers("index", self.index, cfg)
            except NeuralCodesError as e:
                self.index, self.index_error = None, str(e)
        if self.index is not None:
            self.collection = Collection(self.index)
            self.folders += [Path(self.index.folder.folder).absolute(),  # type: ignore[union-attr]
                             Path(self.collection.root)]
        self.ood = Searcher(trained, relu=cfg.relu)
        self.ood.run.model  # noqa: B018 -- load the weights now: a damaged run fails before serving
        self.run = self.ood.run.dir
        self.weights = (self.ood.codes.made_by or {}).get("weights")
        self.figure_k = int(trained.saved["config"]["retrieval"]["k"])  # its figures' k
        self.layers = tuple(cfg.layers)
        self.k = int(cfg.k)
        self.dataset, splits = self.ood.run.dataset, self.ood.run.splits
        self.ood_classes = list(splits.ood_classes)
        codes = self.ood.codes
        if not np.array_equal(codes.index, splits.ood):
            raise NeuralCodesError(f"{self.run.codes('ood', codes.relu)} does not match the run's "
                                   "ood split; recompute it with `neuralcodes codes --force`")
        _check_layers("ood codes", self.ood, cfg)
        self.labels = np.asarray(codes.labels, dtype=np.int64)
        self.in_classes = list(splits.in_classes)
        self._model_lock = threading.Lock()
        self.computed_map: list[dict[str, Any]] | None = None  # see web.results
        self._pooled: PooledSearch | None = None  # the method selector's descriptors

    # -- descriptions ---------------------------------------------------------------------------

    def current(self, path: Path) -> bool:
        """Whether artifact ``path`` exists and was made from the weights being served."""
        made = lineage.recorded(path) if path.is_file() else None
        return made is not None and made.get("weights") == self.weights

    def __len__(self) -> int:
        return len(self.ood.codes)

    def item(self, i: int) -> dict[str, Any]:
        """Ood image ``i`` as the API describes it."""
        label = int(self.labels[i])
        return {"id": i, "label": label, "wnid": self.dataset.wnids[label],
                "class_name": self.dataset.names[label], "url": f"api/image/{i}"}

    def gallery(self, offset: int, limit: int, label: int | None = None) -> dict[str, Any]:
        """A page of the ood images, of one class if ``label`` is given (ids stay global)."""
        ids = np.arange(len(self)) if label is None else np.flatnonzero(self.labels == label)
        items = [self.item(int(i)) for i in ids[offset:offset + limit]]
        return {"total": len(ids), "offset": offset, "limit": limit, "label": label,
                "items": items}

    def relevant(self, i: int) -> int:
        """How many other ood images share image ``i``'s class."""
        return int(np.count_nonzero(self.labels == self.labels[i])) - 1

    def databases(self) -> list[dict[str, Any]]:
        """The databases an uploaded image can be searched in."""
        out = [{"name": "ood", "size": len(self), "description": "the out-of-domain images"}]
        if self.index is not None:
            out.append({"name": "index", "size": len(self.index),
                        "description": printable(Path(self.index.source).name)})
        return out

    @functools.lru_cache(maxsize=8192)  # noqa: B019  (one Retrieval per app, lives as long)
    def thumbnail(self, database: str, i: int) -> bytes:
        """The 64x64 PNG of entry ``i`` of ``database`` (index images are re-read and resized
        from the path stored in the index, never from a path in a request)."""
        searcher = self.ood if database == "ood" else self.index
        assert searcher is not None
        if database == "index":  # only files inside the indexed folder (Collection.real_path)
            assert self.collection is not None
            self.collection.real_path(i)
        try:
            return png_bytes(searcher.image(i))
        except NeuralCodesError as e:  # the file name only: no server path in an answer
            why = getattr(e, "reason", None) or "unreadable"
            name = printable(Path(searcher.paths[i]).name)
            raise UploadRejected(404, f"index image {i} ({name}) is no longer readable "
                                 f"({why})") from None

    # -- search ---------------------------------------------------------------------------------

    def search_ood_item(self, i: int, k: int, method: str | None = None) -> dict[str, Any]:
        """Ood image ``i`` against the other ood images: top ``k`` and AP per layer, and with
        ``method`` (a pooling method) one more column ranked by that conv5 descriptor."""
        query_label = int(self.labels[i])
        dbs = [(layer, self.ood.codes.layers[layer]) for layer in self.layers]
        if method is not None:
            dbs.append((f"{MAP}/{method}", self.pooled_database(method)))
        layers = []
        for layer, db in dbs:
            m = ranking_metrics(db[i:i + 1], db, self.labels[i:i + 1], self.labels,
                                exclude=np.array([i]), ks=(), top_k=k)
            ap = float(m.ap[0])
            hits = [self._hit(self.item(int(j)), rank, float(s), query_label)
                    for rank, (j, s) in enumerate(zip(m.top[0], m.top_scores[0], strict=True), 1)]
            layers.append({"layer": layer, "ap": None if np.isnan(ap) else ap, "hits": hits,
                           "method": method if "/" in layer else None})
        relevant = self.relevant(i)
        return {"query": {**self.item(i), "source": "ood"}, "database": "ood",
                "database_size": len(self) - 1, **shown(k, len(self) - 1, "ood set"),
                "relu": self.ood.relu, "layers": layers,
                "relevant": relevant, "chance_ap": _chance_ap(relevant, len(self) - 1)}

    def _pooled_search(self) -> PooledSearch:
        with self._model_lock:
            if self._pooled is None:
                self._pooled = PooledSearch(self.ood.run, methods_table(self.ood.run))
        return self._pooled

    def pooled_database(self, method: str) -> np.ndarray:
        """The ood set's unit descriptors of pooling ``method`` (computed once, on first use;
        an unknown or unusable method: 422 with the reason)."""
        searcher = self._pooled_search()
        try:
            with self._model_lock:  # the first call runs the model over the ood set
                return searcher.database(method)
        except NeuralCodesError as e:
            raise UploadRejected(422, str(e)) from None

    def why_png(self, i: int, j: int, method: str) -> bytes:
        """Ood images ``i`` (the query) and ``j`` (a hit) side by side, each cell of their
        conv5 maps shaded by its share of the score under ``method`` (one scale for both)."""
        searcher = self._pooled_search()
        query, hit = self.ood.image(i), self.ood.image(j)
        try:
            with self._model_lock:
                gq, gh, _ = searcher.explain(query, hit, method)
        except NeuralCodesError as e:
            raise UploadRejected(422, str(e)) from None
        top = max(float(gq.max()), float(gh.max()))
        gap = np.full((128, 6, 3), 255, np.uint8)
        return png_bytes(np.concatenate([overlay(query, gq, vmax=top), gap,
                                         overlay(hit, gh, vmax=top)], axis=1))

    def search_image(self, image: np.ndarray, k: int, database: str) -> dict[str, Any]:
        """A 64x64 uint8 image against ``database`` ("ood" or "index"): top ``k`` per layer."""
        if database not in ("ood", "index"):
            raise UploadRejected(400, f"unknown database '{database}' (choose ood or index)")
        searcher = self.ood if database == "ood" else self.index
        if searcher is None and self.index_error:
            raise UploadRejected(409, f"the index was refused: {self.index_error}")
        if searcher is None:
            raise UploadRejected(400, "no index is loaded (start `neuralcodes serve` with "
                                 "--index to search one)")
        with self._model_lock:  # one forward pass at a time
            query = extract_code_variants(self.ood.run.model, np.array(image)[None], self.layers,
                                          (searcher.relu,), device=None,
                                          precision=self.ood.run.precision,
                                          progress=False)[searcher.relu]
        layers = []
        for layer in self.layers:
            q = query[layer]
            if database == "ood":  # the NumPy reference ranking: no copy of the ood codes
                score_rows, id_rows = exact_top_k(q, searcher.codes.layers[layer], k)
                keep = id_rows[0] >= 0
                ids, scores = id_rows[0][keep], score_rows[0][keep].tolist()
                items = [self.item(int(j)) for j in ids]
                hits = [self._hit(item, rank, s, None)
                        for rank, (item, s) in enumerate(zip(items, scores, strict=True), 1)]
            else:  # the index's own search (its transform, then exact or FAISS)
                assert self.collection is not None
                score_rows, id_rows = searcher.search_codes(q, layer, k)
                hits = self.collection.hits(score_rows[0], id_rows[0])
            layers.append({"layer": layer, "ap": None, "hits": hits})
        size = len(searcher)
        scores_text = None if self.collection is None or database == "ood" \
            else self.collection.scores_text()
        return {"query": {"id": None, "source": "upload"}, "database": database,
                "database_size": size,
                **shown(k, size, "ood set" if database == "ood" else "index"),
                "relu": searcher.relu, "layers": layers, "scores": scores_text}

    def _hit(self, item: dict[str, Any], rank: int, score: float, query_label: int | None
             ) -> dict[str, Any]:
        same = None if query_label is None else item["label"] == query_label
        return {**item, "rank": rank, "score": score, "same_class": same}


def _check_layers(name: str, searcher: Searcher, cfg: RetrievalConfig) -> None:
    missing = [x for x in cfg.layers if x not in searcher.layers]
    if missing:
        raise NeuralCodesError(f"the {name} has no codes for layer(s) {', '.join(missing)}")


def _chance_ap(relevant: int, n: int) -> float | None:
    """The chance level of AP (a random ranking of ``n`` items, ``relevant`` of them relevant);
    None without relevant items."""
    return float(chance_average_precision(n, relevant)) if relevant > 0 and n > 0 else None
