"""Search with a trained run's neural codes: the ood set or an index of the user's own images.

``neuralcodes index FOLDER --run RUN`` (:func:`~neuralcodes.retrieval.indexing.build_index`)
keeps the codes of every image under FOLDER in ``RUN/indexes/<name>/``; ``neuralcodes search
IMAGE... --run RUN`` (:func:`search_many`) ranks the ood set (default) or such an index, for
any number of query images with one model load. :class:`Searcher` is the API both (and the web
app) use; :func:`duplicate_groups` finds the near-duplicates of an index.

Scores: in an index, the cosine of codes centred by the mean training code (layer 5 also
reduced by PCA), which spreads over [-1, 1]: 1 is the same image, around 0 unrelated; on the
ood set, the plain cosine of the paper's codes (the measure of the study's mAP). A hit whose
file is the query's, or whose code is the query's (score >= :data:`IDENTICAL`), is marked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuralcodes import features, lineage
from neuralcodes.errors import NeuralCodesError
from neuralcodes.figures import Result, RetrievalRow, plot_retrieval
from neuralcodes.files import require_folder
from neuralcodes.retrieval.codes import VARIANT, CodeSet, extract_codes, ood_codes
from neuralcodes.retrieval.collection import (
    CENTRE_OWN,
    IDENTICAL,
    MANIFEST,
    OWN_TRANSFORM,
    FolderIndex,
    Transform,
)
from neuralcodes.retrieval.images import read_image
from neuralcodes.retrieval.index import CodeIndex
from neuralcodes.runs import TrainedRun
from neuralcodes.text import printable

#: How a hit is the query itself (:attr:`Hit.same`).
SAME_FILE, SAME_CODE = "same file", "identical code"


@dataclass
class Hit:
    """One search result."""

    rank: int
    score: float
    position: int  # row in the database
    path: str  # the image's path (absolute for an index; dataset-relative for the ood set)
    label: str | None  # class name (None when unknown: a folder index)
    same: str | None = None  # SAME_FILE or SAME_CODE when the hit is the query itself, else None


class Searcher:
    """A trained run's model plus a database of codes (the ood set, or a folder index)."""

    def __init__(self, run: TrainedRun, *, index: str | Path | None = None,
                 relu: bool | None = None, kind: str = "exact") -> None:
        """The query codes (and the ood codes, when they have to be computed) are computed
        on the run's device in its precision (``train.precision``). ``index``: an index's
        name (under the run) or folder."""
        self.run = run
        self.kind = kind
        self.folder: FolderIndex | None = None
        self.codes: CodeSet | None = None
        if index is None:
            self.relu = self.run.relu(relu)
            self.codes = ood_codes(self.run, self.relu)
            self.paths = [self.run.dataset.paths[int(i)] for i in self.codes.index]
            self.labels: list[str | None] = list(self.run.class_names(self.codes.labels))
            self.source = "ood"
        else:
            self.folder = open_index(index, self.run, relu)
            self.relu, self.paths = self.folder.relu, self.folder.paths
            self.labels = [None] * len(self.paths)
            self.source = str(index)
        self._indexes: dict[str, CodeIndex] = {}

    @property
    def layers(self) -> tuple[str, ...]:
        """The layers the database has codes of."""
        held = self.folder.layers if self.folder is not None else self.codes.layers
        return tuple(held)

    def __len__(self) -> int:
        return len(self.paths)

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise NeuralCodesError(f"unknown layer '{layer}' (choose from "
                                   f"{', '.join(self.layers)})")

    def index(self, layer: str) -> CodeIndex:
        """The search index of one layer of the ood codes (built on first use)."""
        self._check_layer(layer)
        if self.codes is None:
            raise NeuralCodesError("a folder index is searched with search_codes")
        if layer not in self._indexes:
            x = self.codes.layers[layer]
            self._indexes[layer] = CodeIndex(x.shape[1], self.kind).add(x)
        return self._indexes[layer]

    def query_codes(self, images: np.ndarray, layer: str) -> np.ndarray:
        """Unit codes of uint8 images (N, 64, 64, 3) for ``layer``."""
        return extract_codes(self.run.model, images, (layer,), self.relu, device=None,
                             precision=self.run.precision, progress=False)[layer]

    def search_codes(self, codes: np.ndarray, layer: str, k: int,
                     exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best (scores, ids) per query code (unit codes as :meth:`query_codes`
        gives; an index applies its transform first); id -1 pads missing results."""
        if k < 1:
            raise NeuralCodesError(f"k must be positive, got {k}")
        self._check_layer(layer)
        if self.folder is None:
            return self.index(layer).search(codes, k, exclude)
        assert self.folder.transform is not None  # open_index sets it
        stored = self.folder.transform.apply(layer, codes)
        return self.folder.search(layer, stored, k, exclude)

    def search_images(self, images: np.ndarray, layer: str = "6", k: int = 5,
                      query_paths: Sequence[str | Path | None] | None = None
                      ) -> list[list[Hit]]:
        """The top-``k`` database images for each query image; hits that are the query
        itself (its file, from ``query_paths``, or its code) are marked (:attr:`Hit.same`)."""
        scores, ids = self.search_codes(self.query_codes(images, layer), layer, k)
        out = []
        for q, (srow, irow) in enumerate(zip(scores, ids, strict=True)):
            mine = _real(query_paths[q]) if query_paths is not None else None
            out.append([Hit(r + 1, float(s), int(i), self.paths[i], self.labels[i],
                            _same(mine, self.paths[i], float(s)))
                        for r, (s, i) in enumerate(zip(srow, irow, strict=True)) if i >= 0])
        return out

    def image(self, position: int) -> np.ndarray:
        """The 64x64 image of a database entry."""
        if self.folder is None:
            return self.run.images(self.codes.index[[position]])[0]
        return read_image(self.paths[position])


def _real(path: str | Path | None) -> str | None:
    return None if path is None else os.path.realpath(path)


def _same(query: str | None, path: str, score: float) -> str | None:
    if query is not None and os.path.isabs(path) and os.path.realpath(path) == query:
        return SAME_FILE
    return SAME_CODE if score >= IDENTICAL else None


def index_names(run: TrainedRun) -> list[str]:
    """The names of the run's indexes."""
    folder = run.dir.indexes
    return sorted(p.name for p in folder.iterdir() if (p / MANIFEST).is_file()) \
        if folder.is_dir() else []


def resolve_index(index: str | Path, run: TrainedRun) -> Path:
    """The folder of an index given by name (under the run) or by path."""
    path = Path(index).expanduser()
    build = f"`neuralcodes index FOLDER --run {run.dir.root}`"
    if (path / MANIFEST).is_file():
        return path
    named = run.dir.index(str(index)) if os.sep not in str(index) else None
    if named is not None and (named / MANIFEST).is_file():
        return named
    if path.is_file():
        raise NeuralCodesError(f"{index}: not an index of this neuralcodes version (a single "
                               f"file, as older versions wrote); build it again with {build}")
    names = index_names(run)
    return_hint = f" (this run's indexes: {', '.join(map(printable, names))})" if names else ""
    raise NeuralCodesError(f"{index}: no index file; build one with {build}{return_hint}")


def open_index(index: str | Path, run: TrainedRun, relu: bool | None = None) -> FolderIndex:
    """A folder index, refused in one line unless it was made by this run's current weights,
    in the precision and ReLU variant asked for, and holds what it records."""
    path = resolve_index(index, run)
    again = f"run `neuralcodes index FOLDER --run {run.dir.root}` again"
    folder = FolderIndex(path)
    made = folder.made_by
    name = printable(path.name)
    if made.get("stage") != "index" or made.get("format") != lineage.FORMATS["index"]:
        raise NeuralCodesError(f"{name} records another format (made by another neuralcodes); "
                               f"{again}")
    was, settings = made.get("weights") or {}, made.get("settings") or {}
    if not folder.consistent():
        raise NeuralCodesError(f"{name} does not hold what it records (code sizes "
                               f"{settings.get('dims')} of {folder.manifest.get('count')} "
                               f"images; found {folder.dims()} of {len(folder)}): {again}")
    now = lineage.weights_identity(run.dir.best_checkpoint)
    if was.get("sha256") == now["sha256"]:
        folder.transform = _index_transform(folder, run, again)
    if was.get("sha256") != now["sha256"]:
        raise NeuralCodesError(
            f"{name} was made with weights {str(was.get('sha256'))[:12]} (epoch "
            f"{was.get('epoch')}, run {settings.get('run')}); this run's {now['file']} is "
            f"{now['sha256'][:12]} (epoch {now['epoch']}): {again}")
    if settings.get("train.precision") != run.precision:
        raise NeuralCodesError(
            f"{name} holds {settings.get('train.precision')} codes and this search computes "
            f"{run.precision} codes: {again} with --precision {run.precision}, or search with "
            f"--precision {settings.get('train.precision')}")
    if relu is not None and bool(relu) != folder.relu:
        raise NeuralCodesError(
            f"{name} holds {VARIANT[folder.relu]}-ReLU codes and {VARIANT[bool(relu)]}-ReLU "
            f"ones were asked for (retrieval.relu): {again} with --relu {VARIANT[bool(relu)]}")
    return folder


def _index_transform(folder: FolderIndex, run: TrainedRun, again: str) -> Transform:
    """The run's transform the index was made with (its digest recorded; the index's own when
    it was fitted on its images), or one line."""
    made_with = (folder.made_by.get("settings") or {}).get("transform") or {}
    path = (folder.folder / OWN_TRANSFORM if made_with.get("centre") == CENTRE_OWN
            else run.dir.index_transform(folder.relu, str(folder.precision)))
    want = made_with.get("digest")
    made = lineage.recorded(path) if path.is_file() else None
    if made is None or lineage.digest(made) != want:
        raise NeuralCodesError(f"{printable(folder.folder.name)} was made with a transform of "
                               f"the codes that {run.dir.root} no longer holds "
                               f"({path.name}): {again}")
    return Transform.load(path)


def read_queries(images: Sequence[str | Path | np.ndarray]) -> np.ndarray:
    """Query images (paths or uint8 arrays) as one (N, 64, 64, 3) batch."""
    return np.stack([im if isinstance(im, np.ndarray) else read_image(im) for im in images])


def search_many(images: Sequence[str | Path | np.ndarray], run: TrainedRun | None = None, *,
                index: str | Path | None = None, layer: str = "6", k: int = 5,
                figure: str | Path | None = None, relu: bool | None = None,
                searcher: Searcher | None = None) -> list[list[Hit]]:
    """Rank the database (ood set by default, or a folder index) for each query image, the
    model loaded once; the query's codes are computed on the run's device in its precision
    and ``relu`` (None: the run's ``retrieval.relu`` for the ood set, the index's own for an
    index). Stale ood codes are recomputed first (with a progress bar if the run was opened
    with ``progress``). ``searcher``: one already open (``run`` is then not needed)."""
    if k < 1:
        raise NeuralCodesError(f"k must be positive, got {k}")
    if layer not in features.code_names():
        raise NeuralCodesError(f"unknown layer '{layer}' (choose from "
                               f"{', '.join(features.code_names())})")
    if figure:
        figure = require_folder(figure, "figure")
    queries = read_queries(images)
    if searcher is None and run is None:
        raise NeuralCodesError("search needs a run or a searcher")
    s = searcher or Searcher(run, index=index, relu=relu)
    named = [None if isinstance(im, np.ndarray) else im for im in images]
    hits = s.search_images(queries, layer, k, named)
    if figure:
        rows = [RetrievalRow(q, printable(Path(p).name) if p is not None else "",
                             [Result(s.image(h.position), h.score,
                                     h.label or printable(Path(h.path).name)) for h in row])
                for q, p, row in zip(queries, named, hits, strict=True)]
        plot_retrieval(rows, figure, title=f"layer {layer}, {VARIANT[s.relu]}-ReLU codes, "
                       f"{printable(s.source)} database")
    return hits


def search(image: str | Path | np.ndarray, run: TrainedRun, **kwargs: object) -> list[Hit]:
    """:func:`search_many` for one query image: its hits."""
    return search_many([image], run, **kwargs)[0]  # type: ignore[arg-type]


def duplicate_groups(searcher: Searcher, layer: str = "6", threshold: float = 0.95,
                     neighbours: int = 10) -> list[list[tuple[int, float]]]:
    """Groups of near-duplicates in a folder index: images linked by a similarity of at least
    ``threshold`` (each image's ``neighbours`` nearest are looked at). Each group lists
    (position, highest similarity to another member), largest groups first."""
    folder = searcher.folder
    if folder is None:
        raise NeuralCodesError("duplicates are looked for in an index (--index NAME)")
    searcher._check_layer(layer)
    n = len(folder)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    best = np.full(n, -np.inf, np.float32)
    step = 1024
    for a in range(0, n, step):
        rows = np.arange(a, min(n, a + step))
        q = np.asarray(folder.layers[layer][a:a + step], dtype=np.float32)
        scores, ids = folder.search(layer, q, min(neighbours, max(n - 1, 1)), exclude=rows)
        for i, srow, irow in zip(rows, scores, ids, strict=True):
            for s, j in zip(srow, irow, strict=True):
                if j < 0 or s < threshold:
                    break
                best[i], best[j] = max(best[i], s), max(best[j], s)
                parent[find(int(i))] = find(int(j))
    groups: dict[int, list[int]] = {}
    for i in np.flatnonzero(best >= threshold):
        groups.setdefault(find(int(i)), []).append(int(i))
    out = [[(i, float(best[i])) for i in sorted(g)] for g in groups.values() if len(g) > 1]
    return sorted(out, key=lambda g: (-len(g), g[0][0]))
