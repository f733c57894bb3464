"""Search with a trained run's neural codes: the ood set or an index of the user's own images.

``neuralcodes index FOLDER --run RUN`` (:func:`build_index`) saves the codes of every image
under FOLDER (``RUN/retrieval/index-<folder>.npz`` unless ``--out``); ``neuralcodes search IMAGE
--run RUN`` (:func:`search`) ranks the ood set (default) or such an index. :class:`Searcher` is
the API both (and the web app) use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuralcodes import features, lineage
from neuralcodes.errors import NeuralCodesError
from neuralcodes.figures import Result, RetrievalRow, plot_retrieval
from neuralcodes.files import require_folder
from neuralcodes.retrieval.codes import DEFAULT_BATCH, VARIANT, CodeSet, extract_codes, ood_codes
from neuralcodes.retrieval.images import IMAGE_SUFFIXES, image_files, read_image, read_images
from neuralcodes.retrieval.index import CodeIndex
from neuralcodes.runs import TrainedRun
from neuralcodes.text import printable


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

    def __init__(self, run: TrainedRun, *, index: str | Path | None = None,
                 relu: bool | None = None, kind: str = "exact") -> None:
        """The query codes (and the ood codes, when they have to be computed) are computed
        on the run's device in its precision (``train.precision``)."""
        self.run = run
        self.kind = kind
        if index is None:
            self.relu = self.run.relu(relu)
            self.codes = ood_codes(self.run, self.relu)
            self.paths = [self.run.dataset.paths[int(i)] for i in self.codes.index]
            self.labels = self.run.class_names(self.codes.labels)
            self.source = "ood"
        else:
            self.codes = open_index(index, self.run, relu)
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
        return extract_codes(self.run.model, images, (layer,), self.relu, device=None,
                             precision=self.run.precision, progress=False)[layer]

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
        return read_image(self.paths[position])


def open_index(index: str | Path, run: TrainedRun, relu: bool | None = None) -> CodeSet:
    """A folder index, refused in one line unless it was made by this run's current weights,
    in the precision and ReLU variant asked for, and holds one path per code."""
    path = Path(index)
    again = f"run `neuralcodes index FOLDER --run {run.dir.root}` again"
    if not path.is_file():
        raise NeuralCodesError(f"{index}: no index file; build one with "
                               f"`neuralcodes index FOLDER --run {run.dir.root}`")
    codes = CodeSet.load(path)  # one line for a malformed file, or paths != codes
    made = codes.made_by or {}
    if codes.paths is None or made.get("stage") not in (None, "index"):
        raise NeuralCodesError(f"{path.name}: not a folder index (no paths); build one with "
                               f"`neuralcodes index FOLDER --run {run.dir.root}`")
    if made.get("format") != lineage.FORMATS["index"]:
        raise NeuralCodesError(f"{path.name} records no identity (made by an older neuralcodes) "
                               f"or another format; {again}")
    now = lineage.weights_identity(run.dir.best_checkpoint)
    was, settings = made.get("weights") or {}, made.get("settings") or {}
    if was.get("sha256") != now["sha256"]:
        raise NeuralCodesError(
            f"{path.name} was made with weights {str(was.get('sha256'))[:12]} (epoch "
            f"{was.get('epoch')}, run {settings.get('run')}); this run's {now['file']} is "
            f"{now['sha256'][:12]} (epoch {now['epoch']}): {again}")
    if settings.get("train.precision") != run.precision:
        raise NeuralCodesError(
            f"{path.name} holds {settings.get('train.precision')} codes and this search computes "
            f"{run.precision} codes: {again} with --precision {run.precision}, or search with "
            f"--precision {settings.get('train.precision')}")
    if relu is not None and bool(relu) != codes.relu:
        raise NeuralCodesError(
            f"{path.name} holds {VARIANT[codes.relu]}-ReLU codes and {VARIANT[bool(relu)]}-ReLU "
            f"ones were asked for (retrieval.relu): {again} with --relu {VARIANT[bool(relu)]}")
    dims = {layer: int(x.shape[1]) for layer, x in codes.layers.items()}
    if (settings.get("dims") != dims or settings.get("images") != len(codes)
            or settings.get("relu") != codes.relu):
        raise NeuralCodesError(f"{path.name} does not hold what it records (code sizes "
                               f"{settings.get('dims')} of {settings.get('images')} images; "
                               f"found {dims} of {len(codes)}): {again}")
    return codes


def build_index(folder: str | Path, run: TrainedRun, *,
                out: str | Path | None = None, relu: bool | None = None,
                batch_size: int = DEFAULT_BATCH) -> tuple[Path, int, list[tuple[Path, str]]]:
    """Codes of every image under ``folder`` (the run's code layers, on its device, in its
    precision): (index file, images indexed, [(path, why)] of the files that could not be
    read). Needs the run's checkpoint and config only, not its dataset."""
    if batch_size < 1:
        raise NeuralCodesError(f"batch size must be positive, got {batch_size}")
    if out:
        out = require_folder(out, "index file")
    folder = Path(folder)
    files = image_files(folder)
    if not files:  # before any progress bar or loading: the error line stands alone
        raise NeuralCodesError(f"{folder}: no readable images found (no image files: "
                               f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    r = run
    progress = r.progress
    images, ok, failed = read_images(files, progress)
    if not ok:
        raise NeuralCodesError(f"{folder}: no readable images found"
                               + (f" ({len(failed)} unreadable)" if failed else ""))
    use_relu = r.relu(relu)
    names = features.code_layers(r.config.retrieval.layers)
    layers = extract_codes(r.model, images, names, use_relu, batch_size, None,
                           r.precision, progress)
    path = Path(out) if out else r.dir.index(folder.resolve().name)
    made_by = lineage.index_fingerprint(
        lineage.weights_identity(r.dir.best_checkpoint), r.dir.root.resolve().name, use_relu,
        r.precision, names, {layer: int(x.shape[1]) for layer, x in layers.items()},
        len(ok))
    CodeSet(layers, np.arange(len(ok)), np.full(len(ok), -1), use_relu,
            [str(p) for p in ok], r.precision, made_by).save(path)
    return path, len(ok), failed


def search(image: str | Path | np.ndarray, run: TrainedRun, *,
           index: str | Path | None = None, layer: str = "6", k: int = 5,
           figure: str | Path | None = None, relu: bool | None = None) -> list[Hit]:
    """Rank the database (ood set by default, or a folder index) for one query image; the
    query's codes are computed on the run's device in its precision and ``relu`` (None: the
    run's ``retrieval.relu`` for the ood set, the index's own for an index). Stale ood codes
    are recomputed first (with a progress bar if the run was opened with ``progress``)."""
    if k < 1:
        raise NeuralCodesError(f"k must be positive, got {k}")
    if layer not in features.code_names():
        raise NeuralCodesError(f"unknown layer '{layer}' (choose from "
                               f"{', '.join(features.code_names())})")
    if figure:
        figure = require_folder(figure, "figure")
    query = image if isinstance(image, np.ndarray) else read_image(image)
    s = Searcher(run, index=index, relu=relu)
    hits = s.search_images(query[None], layer, k)[0]
    if figure:
        row = RetrievalRow(query, printable(Path(image).name)
                           if not isinstance(image, np.ndarray) else "",
                           [Result(s.image(h.position), h.score,
                                   h.label or printable(Path(h.path).name))
                            for h in hits])
        plot_retrieval([row], figure, title=f"layer {layer}, {VARIANT[s.relu]}-ReLU codes, "
                       f"{printable(s.source)} database")
    return hits
