"""The Python API, for scripts and notebooks::

    import neuralcodes
    run = neuralcodes.open_run("runs/base")
    run.index("~/Pictures", name="photos")          # build or update an index: IndexUpdate
    result = run.search("photo.jpg", k=5, index="photos")   # SearchResult (a list for several)
    result.hits[0].path, result.hits[0].score       # Hit: rank, score, path, label, same
    codes = run.codes(["a.jpg", "b.png"], layer="6")  # (2, 2048) unit codes

The model is loaded once per :class:`Run`, and each database (the ood set, an index) once.
Results are plain objects; in Jupyter they show as an image grid (``_repr_html_``).
"""

from __future__ import annotations

import base64
import glob
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Union

import numpy as np

from neuralcodes import features
from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval.codes import extract_codes
from neuralcodes.retrieval.images import expand_images
from neuralcodes.retrieval.indexing import IndexUpdate, build_index
from neuralcodes.retrieval.search import Hit, Searcher, read_queries, search_many
from neuralcodes.runs import TrainedRun
from neuralcodes.text import printable

Image = Union[str, Path, np.ndarray]  # noqa: UP007 (a runtime alias)


def _user(path: str | Path) -> str | Path:
    """A path given to the API, ``~`` expanded (as a shell would)."""
    return type(path)(os.path.expanduser(path))


def _image(image: Image) -> Image:
    """An image given to the API: an array as it is, a path with ``~`` expanded."""
    return image if isinstance(image, np.ndarray) else _user(image)


def _png_uri(image: np.ndarray) -> str:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class SearchResult:
    """One query's hits, best first."""

    query: str  # the query's path ("" for an image given as an array)
    layer: str
    database: str  # "ood" or the index's name
    hits: list[Hit]
    query_image: np.ndarray = field(repr=False)
    hit_images: list[np.ndarray] = field(repr=False)

    def _repr_html_(self) -> str:
        """The query and its hits as a grid (rank, score, name, and whether it is the query)."""
        def card(image: np.ndarray, caption: str) -> str:
            return (f'<figure style="display:inline-block;margin:4px;text-align:center">'
                    f'<img src="{_png_uri(image)}" width="96" height="96" alt="">'
                    f'<figcaption style="font-size:small">{caption}</figcaption></figure>')

        cards = [card(self.query_image, "query<br>" + escape(printable(Path(self.query).name)))]
        for h, image in zip(self.hits, self.hit_images, strict=True):
            name = escape(h.label or printable(Path(h.path).name))
            mark = f"<br>({escape(h.same)})" if h.same else ""
            cards.append(card(image, f"#{h.rank} &middot; {h.score:.2f}<br>{name}{mark}"))
        return f"<div>layer {escape(self.layer)}, {escape(printable(self.database))}: " \
               f"<br>{''.join(cards)}</div>"


class Run:
    """A trained run opened for search (:func:`open_run`)."""

    def __init__(self, path: str | Path, *, device: str | None = None,
                 precision: str | None = None) -> None:
        self.data = TrainedRun.open(_user(path), device=device, precision=precision,
                                    progress=False, reader=True)
        self._searchers: dict[str | None, Searcher] = {}

    def __repr__(self) -> str:
        return f"Run({str(self.data.dir.root)!r})"

    def searcher(self, index: str | Path | None = None) -> Searcher:
        """The database searched: the ood set (None) or an index (name or folder)."""
        index = None if index is None else _user(index)
        key = None if index is None else str(index)
        if key not in self._searchers:
            self._searchers[key] = Searcher(self.data, index=index)
        return self._searchers[key]

    def search(self, images: Image | Sequence[Image], k: int = 5, index: str | Path | None = None,
               layer: str = "6") -> SearchResult | list[SearchResult]:
        """The ``k`` most similar images of the ood set or of ``index`` for an image (a path,
        a glob, or a uint8 (64, 64, 3) array): a :class:`SearchResult`, or a list of them
        for a list of images or a glob."""
        images = _image(images) if isinstance(images, (str, Path, np.ndarray)) else \
            [_image(item) for item in images]
        index = None if index is None else _user(index)
        if isinstance(images, np.ndarray) and images.ndim == 3:
            queries: list[Image] = [images]
        elif isinstance(images, (str, Path)):
            queries = list(expand_images([images]))
        else:
            queries = [q for item in images for q in (
                [item] if isinstance(item, np.ndarray) else expand_images([item]))]
        one = isinstance(images, np.ndarray) and images.ndim == 3 or (
            isinstance(images, (str, Path)) and not glob.has_magic(str(images)))
        s = self.searcher(index)
        hits = search_many(queries, layer=layer, k=k, searcher=s)
        pictures = read_queries(queries)
        results = [SearchResult("" if isinstance(q, np.ndarray) else str(q), layer,
                                "ood" if index is None else str(index), row, picture,
                                [s.image(h.position) for h in row])
                   for q, row, picture in zip(queries, hits, pictures, strict=True)]
        return results[0] if one else results

    def codes(self, images: Sequence[Image], layer: str = "6", relu: bool | None = None
              ) -> np.ndarray:
        """Unit-length codes (N, D) of ``layer`` for images (paths or uint8 arrays), in the
        run's ReLU variant unless ``relu`` is given."""
        if layer not in features.code_names():
            raise NeuralCodesError(f"unknown layer '{layer}' (choose from "
                                   f"{', '.join(features.code_names())})")
        pictures = read_queries([_image(im) for im in images])
        return extract_codes(self.data.model, pictures, (layer,),
                             self.data.relu(relu), device=None, precision=self.data.precision,
                             progress=False)[layer]

    def index(self, folder: str | Path, name: str | None = None, *, progress: bool = True,
              relu: bool | None = None) -> IndexUpdate:
        """Build or update the index of ``folder`` (``RUN/indexes/<name>``, the folder's name
        by default), holding the run's write lock."""
        self.data.progress = progress
        with self.data.dir.lock("index (Python API)"):
            update = build_index(_user(folder), self.data, name=name, relu=relu)
        self._searchers = {k: v for k, v in self._searchers.items() if k is None}
        return update


def open_run(path: str | Path, *, device: str | None = None, precision: str | None = None) -> Run:
    """A trained run (its directory) opened for search; the model loads on first use."""
    return Run(path, device=device, precision=precision)
