"""An index of a folder of the user's own images, as stored on disk, and search in it.

``neuralcodes index FOLDER --run RUN`` (:mod:`neuralcodes.retrieval.indexing`) keeps a folder
``RUN/indexes/<name>/`` (:meth:`neuralcodes.runs.RunDir.index`) that holds::

    manifest.json        made_by (lineage: weights, ReLU variant, precision, code sizes,
                         transform), the folder's absolute root, the generation, the count and
                         the data files of that generation
    g<N>-entries.npz     the files: relative paths (bytes, NUL-separated: any POSIX name,
                         losslessly), sizes, modification times (ns)
    g<N>-code<L>.npy     float16 (count, dims) unit codes of layer L after the transform
    g<N>-ivfpq<L>.faiss  FAISS IVF-PQ index of those codes (only from APPROX_MIN images on)
    pending/<seq>.npz    batches computed but not merged yet (an interrupted index resumes)

The transform (per layer the mean training code, and for layer 5 the PCA axes, fitted on the
run's training codes; :class:`Transform`) is one file the run's indexes share
(:meth:`neuralcodes.runs.RunDir.index_transform`); an index records its digest. Codes are
stored *after* the transform: centred by the mean training code and scaled to unit
length (layer 5 also projected on its first :data:`PCA5_DIMS` principal axes), so the dot
product of two stored codes is the cosine of the centred codes, which spreads over [-1, 1]
(1: the same image; around 0: unrelated; below 0: opposite). A new manifest is written last
(atomically), so the files it names are always whole; older generations are deleted after.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuralcodes import lineage
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import atomic_open, atomic_path, read_json
from neuralcodes.kernels.cpu import return_freed_memory
from neuralcodes.retrieval.codes import l2_normalize
from neuralcodes.retrieval.index import exact_top_k
from neuralcodes.retrieval.metrics import capped

MANIFEST = "manifest.json"
PENDING = "pending"
OWN_TRANSFORM = "transform.npz"  #: an index's own transform (fitted on its images)
CENTRE_TRAIN = "mean training code"  #: how the codes are centred (the transform's fit)
CENTRE_OWN = "mean code of the indexed images"  #: without the run's training images
PCA5_DIMS = 256  #: layer 5 (16,384 values) is stored as its first 256 principal components
FIT_IMAGES = 1000  #: training images the transform (mean, PCA) is fitted on
APPROX_MIN = 20_000  #: from this many images on, search goes through a FAISS IVF-PQ index
#: codes the FAISS index is trained on (a sample): FAISS asks 39 points per centroid, so
#: 10,000 suits 8-bit PQ (256 centroids); 160 MB of float32 for a 4096-value layer, about
#: 2.9x that while training (the residuals and PQ's copies)
APPROX_TRAIN = 10_000
IDENTICAL = 0.999  #: a stored code this close to the query's is the query itself (float16)
STORE_DTYPE = np.float16
BLOCK_BYTES = 64 * 2**20  #: database rows read at once by the exact search
#: rows given to FAISS's add at once: it holds about ten times a block's float32 size while
#: it encodes (a 64 MB block peaked at +660 MB, 16 MB at +190 MB; benchmarks/index.py)
ADD_BYTES = 16 * 2**20


def data_file(gen: int, what: str, layer: str | None = None) -> str:
    """The name of one data file of generation ``gen`` (``entries``, ``code``, ``ivfpq``)."""
    if what == "entries":
        return f"g{gen}-entries.npz"
    return f"g{gen}-{what}{layer}.{'npy' if what == 'code' else 'faiss'}"


# --------------------------------------------------------------------------- transform


@dataclass
class Transform:
    """What turns a unit code into a stored one: centring by the mean training code, a PCA
    projection for some layers, and scaling to unit length again."""

    mean: dict[str, np.ndarray]  # layer -> (D,) float32
    axes: dict[str, np.ndarray]  # layer -> (K, D) float32, for the layers reduced by PCA
    fitted: int = 0  # images it was fitted on

    def dims(self, layer: str) -> int:
        return int(len(self.axes[layer]) if layer in self.axes else len(self.mean[layer]))

    def describe(self, centre: str = CENTRE_TRAIN) -> dict[str, Any]:
        """The settings the index's fingerprint records."""
        return {"centre": centre, "fit_images": self.fitted,
                "pca": {layer: int(len(a)) for layer, a in sorted(self.axes.items())}}

    def apply(self, layer: str, codes: np.ndarray) -> np.ndarray:
        """Stored codes (float32, unit length) of unit codes (N, D) of ``layer``."""
        y = np.asarray(codes, dtype=np.float32) - self.mean[layer]
        if layer in self.axes:
            y = y @ self.axes[layer].T
        return l2_normalize(y)

    def save(self, path: Path, made_by: dict[str, Any]) -> None:
        arrays = {f"mean{k}": v for k, v in self.mean.items()}
        arrays |= {f"axes{k}": v for k, v in self.axes.items()}
        arrays["fitted"] = np.int64(self.fitted)
        with atomic_open(path, "wb") as f:
            np.savez(f, **arrays, **{lineage.KEY: np.str_(json.dumps(made_by))})

    @classmethod
    def load(cls, path: Path) -> Transform:
        try:
            with np.load(path) as f:
                mean = {k[4:]: f[k] for k in f.files if k.startswith("mean")}
                axes = {k[4:]: f[k] for k in f.files if k.startswith("axes")}
                fitted = int(f["fitted"]) if "fitted" in f.files else 0
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise NeuralCodesError(f"{path}: not a readable index transform ({e})") from None
        return cls(mean, axes, fitted)


# --------------------------------------------------------------------------- entries


def pack_names(names: list[bytes]) -> np.ndarray:
    """Relative paths as one uint8 array, NUL-separated (no POSIX name holds a NUL)."""
    return np.frombuffer(b"\0".join(names), dtype=np.uint8) if names else np.zeros(0, np.uint8)


def unpack_names(blob: np.ndarray, n: int) -> list[bytes]:
    names = bytes(blob).split(b"\0") if n else []
    if len(names) != n:
        raise NeuralCodesError(f"the index lists {len(names)} files for {n} codes")
    return names


@dataclass
class Entries:
    """The indexed files: relative paths (bytes), sizes and modification times."""

    names: list[bytes]
    size: np.ndarray  # int64
    mtime: np.ndarray  # int64, ns

    def __len__(self) -> int:
        return len(self.names)

    def save(self, path: Path) -> None:
        with atomic_open(path, "wb") as f:
            np.savez(f, names=pack_names(self.names), size=self.size, mtime=self.mtime)

    @classmethod
    def load(cls, path: Path) -> Entries:
        with np.load(path) as f:
            size, mtime = f["size"].astype(np.int64), f["mtime"].astype(np.int64)
            return cls(unpack_names(f["names"], len(size)), size, mtime)


# --------------------------------------------------------------------------- writing rows


def _header(dims: int, n: int) -> dict[str, Any]:
    return {"descr": np.lib.format.dtype_to_descr(np.dtype(STORE_DTYPE)), "fortran_order": False,
            "shape": (n, dims)}


@contextlib.contextmanager
def row_writer(path: Path, n: int, dims: int) -> Iterator[Callable[[np.ndarray], None]]:
    """Write a float16 ``.npy`` of (n, dims) block by block with plain writes (no memory map:
    resident memory stays that of one block), atomically; the block must yield all n rows."""
    written = 0
    with atomic_open(path, "wb", size=n * dims * 2 + 128) as f:
        np.lib.format.write_array_header_1_0(f, _header(dims, n))

        def write(rows: np.ndarray) -> None:
            nonlocal written
            f.write(np.ascontiguousarray(rows, dtype=STORE_DTYPE).tobytes())
            written += len(rows)

        yield write
        if written != n:
            raise NeuralCodesError(f"{path}: {written} rows written for {n}")


class RowReader:
    """Rows of a stored codes file read with plain reads (no memory map)."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "rb")  # noqa: SIM115 (closed by close())
        version = np.lib.format.read_magic(self.f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        (self.n, self.dims), _, self.dtype = read(self.f)
        self.offset = self.f.tell()

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (ascending) as float16 (len(idx), dims)."""
        out = np.empty((len(idx), self.dims), dtype=self.dtype)
        row_bytes = self.dims * self.dtype.itemsize
        start = 0
        while start < len(idx):  # runs of nearby rows: one read each
            end = start + 1
            while end < len(idx) and idx[end] - idx[end - 1] <= 16 and end - start < 4096:
                end += 1
            a, b = int(idx[start]), int(idx[end - 1]) + 1
            self.f.seek(self.offset + a * row_bytes)
            span = np.fromfile(self.f, dtype=self.dtype, count=(b - a) * self.dims)
            out[start:end] = span.reshape(b - a, self.dims)[idx[start:end] - a]
            start = end
        return out

    def close(self) -> None:
        self.f.close()


# --------------------------------------------------------------------------- the stored index


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of an index folder (None: there is none)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get(lineage.KEY), dict):
        raise NeuralCodesError(f"{path}: not an index manifest")
    return manifest


def absolute(root: str, name: bytes) -> str:
    """The absolute path of an indexed file (a ``str`` that :func:`os.fsencode` turns back
    into the file's bytes)."""
    return os.fsdecode(os.path.join(os.fsencode(root), name))


class FolderIndex:
    """An index folder opened for search: entries in memory, codes memory-mapped."""

    def __init__(self, folder: Path) -> None:
        manifest = read_manifest(folder)
        if manifest is None:
            raise NeuralCodesError(f"{folder}: no index file; not an index folder")
        self.folder, self.manifest = folder, manifest
        self.made_by: dict[str, Any] = manifest[lineage.KEY]
        settings = self.made_by.get("settings") or {}
        self.relu = bool(settings.get("relu"))
        self.precision = settings.get("train.precision")
        self.root: str = manifest["root"]
        gen = int(manifest["generation"])
        try:
            self.entries = Entries.load(folder / data_file(gen, "entries"))
            self.layers = {layer: np.load(folder / data_file(gen, "code", layer), mmap_mode="r")
                           for layer in settings.get("layers", [])}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise NeuralCodesError(f"{folder.name}: damaged index ({e}); build it again with "
                                   "`neuralcodes index`") from None
        self._approx = {layer: folder / data_file(gen, "ivfpq", layer) for layer in self.layers
                        if (folder / data_file(gen, "ivfpq", layer)).is_file()}
        self._faiss: dict[str, Any] = {}
        self.transform: Transform | None = None  # set by whoever checked it (open_index)
        self.paths = [absolute(self.root, n) for n in self.entries.names]

    def __len__(self) -> int:
        return len(self.entries)

    def dims(self) -> dict[str, int]:
        return {layer: int(x.shape[1]) for layer, x in self.layers.items()}

    def consistent(self) -> bool:
        """Whether the stored arrays have the count and sizes the manifest records."""
        n = int(self.manifest.get("count", -1))
        return (len(self.entries) == n and all(len(x) == n for x in self.layers.values())
                and self.dims() == (self.made_by.get("settings") or {}).get("dims"))

    def search(self, layer: str, queries: np.ndarray, k: int,
               exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best (scores, ids) per query (stored-code space, float32 unit rows)."""
        if layer in self._approx:
            scores, ids = self._approx_top_k(layer, queries, k, exclude)
        else:
            scores, ids = blocked_top_k(queries, self.layers[layer], k, exclude)
        return capped(scores), ids

    def _approx_top_k(self, layer: str, queries: np.ndarray, k: int,
                      exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS IVF-PQ candidates, re-ranked exactly with the stored codes."""
        import faiss

        if layer not in self._faiss:
            self._faiss[layer] = faiss.read_index(str(self._approx[layer]))
            self._faiss[layer].nprobe = NPROBE
        db = self.layers[layer]
        want = min(len(self), max(CANDIDATES_PER_HIT * k, MIN_CANDIDATES))
        _, cand = self._faiss[layer].search(np.ascontiguousarray(queries, np.float32), want)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for q, row in enumerate(cand):
            c = np.unique(row[row >= 0])
            if exclude is not None:
                c = c[c != exclude[q]]
            s = np.asarray(db[c], dtype=np.float32) @ queries[q]
            order = np.lexsort((c, -s))[:k]
            scores[q, :len(order)], ids[q, :len(order)] = s[order], c[order]
        return scores, ids


NPROBE = 32  #: IVF cells visited per query
CANDIDATES_PER_HIT = 10  #: FAISS candidates re-ranked exactly, per result asked for
MIN_CANDIDATES = 200


def blocked_top_k(queries: np.ndarray, db: np.ndarray, k: int,
                  exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~neuralcodes.retrieval.index.exact_top_k` over a (memory-mapped, float16)
    database read block by block: the same ranking (score desc, ties by id asc)."""
    queries = np.asarray(queries, dtype=np.float32)
    rows = max(1, BLOCK_BYTES // (4 * max(db.shape[1], 1)))
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.full((len(queries), 0), -1, np.int64)
    for a in range(0, len(db), rows):
        block = np.asarray(db[a:a + rows], dtype=np.float32)
        ex = None
        if exclude is not None:
            inside = (exclude >= a) & (exclude < a + len(block))
            ex = np.where(inside, exclude - a, -1)
        s, i = exact_top_k(queries, block, k, ex)
        i = np.where(i >= 0, i + a, -1)
        s, i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
        order = np.lexsort((np.where(i >= 0, i, np.iinfo(np.int64).max), -s), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    if best_s.shape[1] < k:
        pad = k - best_s.shape[1]
        best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        best_i = np.pad(best_i, ((0, 0), (0, pad)), constant_values=-1)
    return best_s, best_i


def write_approx(path: Path, codes: Path) -> None:
    """A FAISS IVF-PQ index of a stored codes file (trained on a sample, filled block by
    block), written atomically."""
    import faiss

    return_freed_memory()  # the training below is the peak: what the arenas hold free goes first
    reader = RowReader(codes)
    try:
        n, d = reader.n, reader.dims
        n_train = min(n, APPROX_TRAIN)
        nlist = max(1, min(int(4 * np.sqrt(n)), n_train // 39))
        m = max(x for x in range(1, min(64, d) + 1) if d % x == 0)
        sample = np.sort(np.random.default_rng(0).choice(n, n_train, replace=False))
        train = reader.rows(sample).astype(np.float32)
        nbits = int(min(8, max(1, np.floor(np.log2(max(len(train) // 39, 2))))))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.train(train)
        del train
        step = max(1, ADD_BYTES // (4 * d))
        for a in range(0, n, step):
            index.add(reader.rows(np.arange(a, min(n, a + step))).astype(np.float32))
    finally:
        reader.close()
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    with atomic_open(folder / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)  # ensure_ascii: a non-UTF-8 root survives
