"""The user's own images in the web app: the served index (``serve --index NAME``) as a gallery.

Its images are addressed by their position in the index, never by a path from a request; each
is shown with its file name and folder (relative to the folder that was indexed, escaped:
:func:`neuralcodes.text.printable`), and its original file is served only while it still lies
inside that folder (its real path: a symbolic link out of the folder, or an entry naming
``..``, is refused). Searching with one of them ranks the index by its stored code (no model
pass, no file read): the image itself comes back first, marked "same file".
"""

from __future__ import annotations

import mimetypes
import os
import posixpath
from collections import Counter
from typing import Any

import numpy as np

from neuralcodes.retrieval.collection import CENTRE_TRAIN, IDENTICAL
from neuralcodes.retrieval.search import SAME_CODE, SAME_FILE, Searcher
from neuralcodes.text import printable
from neuralcodes.web.uploads import UploadRejected

#: Original files served with their own media type (anything else is sent as a download).
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff")


class Collection:
    """A folder index served as a gallery: its entries by folder and name, searches with one of
    them, and its original files (from inside the indexed folder only)."""

    def __init__(self, searcher: Searcher) -> None:
        assert searcher.folder is not None
        self.searcher = searcher
        self.folder = searcher.folder
        self.root = os.path.realpath(self.folder.root)
        rel = [os.fsdecode(n) for n in self.folder.entries.names]
        self.names = [printable(posixpath.basename(r)) for r in rel]
        self.dirs = [printable(posixpath.dirname(r)) for r in rel]
        self._keys = [f"{d}/{n}".casefold() for d, n in zip(self.dirs, self.names, strict=True)]
        self.folders = sorted(Counter(self.dirs).items())

    def __len__(self) -> int:
        return len(self.names)

    def item(self, i: int) -> dict[str, Any]:
        """Entry ``i`` as the API describes it: its file name, folder, thumbnail and original."""
        return {"id": i, "label": None, "wnid": None, "class_name": self.names[i],
                "folder": self.dirs[i], "source": "index", "url": f"api/index-image/{i}",
                "original_url": f"api/original/{i}"}

    def page(self, offset: int, limit: int, folder: str | None = None,
             text: str | None = None) -> dict[str, Any]:
        """A page of the entries, of one folder (not its subfolders) and/or whose folder or
        name holds ``text`` (any case), if given; ids stay positions in the index."""
        needle = (text or "").strip().casefold()
        ids = [i for i in range(len(self)) if (folder is None or self.dirs[i] == folder)
               and needle in self._keys[i]]
        return {"total": len(ids), "offset": offset, "limit": limit, "folder": folder,
                "q": needle or None, "size": len(self),
                "folders": [{"folder": f, "count": c} for f, c in self.folders],
                "items": [self.item(i) for i in ids[offset:offset + limit]]}

    def scores_text(self) -> str:
        """How an index's similarities are measured, as people read it."""
        made = (self.folder.made_by.get("settings") or {}).get("transform") or {}
        centre = made.get("centre") or CENTRE_TRAIN
        pca = made.get("pca") or {}
        reduced = "".join(f"; layer {layer} also reduced to {n} dimensions by PCA"
                          for layer, n in sorted(pca.items()))
        return (f"cosine similarity of the codes centred by the {centre}{reduced}: it spreads "
                "over -1 to 1, 1 is the same image, about 0 unrelated, below 0 unlike. A hit "
                f"marked “{SAME_FILE}” is the query's own file; “{SAME_CODE}” has the query's "
                f"code (similarity {IDENTICAL} or more): the same picture in another file")

    def search_item(self, i: int, k: int, layers: tuple[str, ...]) -> dict[str, Any]:
        """Entry ``i`` against the whole index: the top ``k`` per layer by its stored code."""
        out = []
        for layer in layers:
            query = np.asarray(self.folder.layers[layer][i:i + 1], dtype=np.float32)
            scores, ids = self.folder.search(layer, query, k)
            own = np.flatnonzero(ids[0] == i)
            if len(own) and scores[0][own[0]] >= IDENTICAL:  # itself first among its copies
                order = np.r_[own[0], np.delete(np.arange(len(ids[0])), own[0])]
                scores, ids = scores[:, order], ids[:, order]
            out.append({"layer": layer, "ap": None, "hits": self.hits(scores[0], ids[0], i)})
        return {"query": {**self.item(i), "source": "index"}, "database": "index",
                "database_size": len(self), **shown(k, len(self)),
                "relu": self.folder.relu, "layers": out, "scores": self.scores_text()}

    def hits(self, scores: np.ndarray, ids: np.ndarray, query: int | None = None
             ) -> list[dict[str, Any]]:
        """Hits of one ranking (id -1: none), each marked when it is the query itself."""
        out = []
        for rank, (s, j) in enumerate(zip(scores.tolist(), ids.tolist(), strict=True), 1):
            if j < 0:
                continue
            same = SAME_FILE if j == query else SAME_CODE if s >= IDENTICAL else None
            out.append({**self.item(int(j)), "rank": rank, "score": float(s),
                        "same_class": None, "same": same})
        return out

    def real_path(self, i: int) -> str:
        """The real path of entry ``i``'s file; 404 unless it is a regular file inside the
        indexed folder (a symbolic link out of it, or a name with ``..``, is refused)."""
        real = os.path.realpath(self.folder.paths[i])
        if os.path.commonpath([real, self.root]) != self.root or real == self.root:
            raise UploadRejected(404, f"index image {i} ({self.names[i]}) lies outside the "
                                 "indexed folder: not served")
        if not os.path.isfile(real):
            raise UploadRejected(404, f"index image {i} ({self.names[i]}) is no longer there")
        return real

    def original(self, i: int) -> tuple[str, str, str]:
        """The real path, media type and escaped file name of entry ``i``'s original file
        (:meth:`real_path`); a file that is not an image is sent as a download."""
        real = self.real_path(i)
        kind = mimetypes.guess_type(real)[0]
        return real, kind if kind in IMAGE_TYPES else "application/octet-stream", self.names[i]


def shown(k: int, size: int, what: str = "index") -> dict[str, Any]:
    """``k`` asked for, the results given per layer, and a note when the database is smaller
    (``neuralcodes search`` says the same on stderr)."""
    n = min(k, size)
    note = (None if n == k else f"{k} results per layer asked for, but the {what} holds "
            f"only {size} images; showing all {size}")
    return {"k": k, "shown": n, "note": note}
