"""Tiny ImageNet: get it, decode it once into a compact cache, and split it as the assignment says.

Pipeline (``neuralcodes prepare``):

1. **Source.** The official archive (downloaded once into ``<cache>/downloads/``, md5-checked, see
   :mod:`neuralcodes.download`), or ``--source``: a zip or an extracted folder. The dataset root is
   the folder holding ``wnids.txt`` and ``train/`` — the source itself or one level below it
   (``tiny-imagenet-200/``). JPEGs are read straight from the zip (no extraction). Archive members
   that would escape a target folder (absolute paths, ``..``), links, and absurd sizes are refused.
2. **Cache.** Every ``train/<wnid>/images/*`` file is decoded exactly once, in parallel, into
   ``<cache>/tiny-imagenet-<key>/``:

   - ``images.npy``: uint8 ``(N, 64, 64, 3)``, memory-mappable; greyscale is converted to RGB;
   - ``labels.npy``: int64 class index into ``wnids`` (sorted);
   - ``classes.json``: ``wnids`` and human-readable ``names`` (``words.txt``);
   - ``paths.json``: each image's path relative to the dataset root;
   - ``manifest.json``: format version, source checksum, counts per class, rejected files, the
     default splits' hash and sizes;
   - ``splits/<hash>.npz``: split indices saved by :meth:`Splits.save`.

   ``<cache>/sources.json`` remembers which cache a zip (by path, size and mtime) produced, so a
   repeated ``prepare`` of an unchanged zip returns at once without re-reading it.

   A file that does not decode or is not 64x64 is left out *and reported* (printed, and listed by
   name in the manifest). The cache is built in a ``.building-*`` folder and renamed into place at
   the end, so a half-built cache is never taken for a finished one. ``<key>`` hashes the source's
   content (zip: every member's name, CRC and size; folder: every file's path, size and mtime)
   and the cache format: the same source is never decoded twice, a different one gets its own
   cache. Workers write decoded rows straight into the file, so memory stays far below the array.
3. **Splits** (:func:`make_splits`): classes sorted by wnid, the last ``ood_classes`` (default 10)
   are out-of-domain; in-domain images are shuffled with ``seed`` (default 42) and cut 80/10/10.
   The ood set is ordered round-robin over its classes (see :func:`make_splits`).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import stat
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from neuralcodes import __version__
from neuralcodes.config import DataConfig
from neuralcodes.download import TINY_IMAGENET_MD5, TINY_IMAGENET_SIZE, TINY_IMAGENET_URL, download
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import atomic_open, read_json, write_json

#: Bump when the cache layout changes: it is part of the cache key, so old caches are not reused.
FORMAT_VERSION = 1
IMAGE_SHAPE = (64, 64, 3)
ROW_BYTES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
#: A Tiny ImageNet JPEG is a few KB; anything above this is refused as absurd.
MAX_IMAGE_BYTES = 1 << 20
#: wnids.txt / words.txt above this are refused as absurd (the official words.txt is 2.6 MB).
MAX_TEXT_BYTES = 64 << 20
#: Fixed length of the .npy header we write, so the row count can be rewritten in place.
NPY_HEADER_BYTES = 128
CHUNK_IMAGES = 512  # images per worker task
SERIAL_BELOW = 2000  # fewer images than this: decode in-process (a pool costs more than it saves)
_VOLATILE_MANIFEST_KEYS = ("created", "build")


# --------------------------------------------------------------------------------------------
# Cache location


def default_cache_dir() -> Path:
    """``$NEURALCODES_CACHE``, else ``$XDG_CACHE_HOME/neuralcodes``, else
    ``~/.cache/neuralcodes``."""
    if os.environ.get("NEURALCODES_CACHE"):
        return Path(os.environ["NEURALCODES_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "neuralcodes"
    return Path.home() / ".cache" / "neuralcodes"


def fetch_official(cache_dir: str | Path | None = None, *, progress: bool = True,
                   url: str = TINY_IMAGENET_URL, md5: str | None = TINY_IMAGENET_MD5) -> Path:
    """The official archive in ``<cache>/downloads/``, downloaded (and md5-checked) if absent."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    dest = root / "downloads" / Path(url).name
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    need = TINY_IMAGENET_SIZE - (part.stat().st_size if part.exists() else 0)
    _check_free_space(dest.parent, need, "download the archive")
    return download(url, dest, md5, progress=progress)


# --------------------------------------------------------------------------------------------
# Reading a source: zip or folder


@dataclass(frozen=True)
class _Item:
    """One train image to decode: where it is in the source."""

    rel: str  # path relative to the dataset root
    label: int
    # zip members: (local header offset, compressed size, size, compression, crc); folders: None
    loc: tuple[int, int, int, int, int] | None


class Source:
    """A Tiny ImageNet source: a zip (read in place) or a folder, rooted at ``wnids.txt``."""

    def __init__(self, path: Path, kind: str, root: str) -> None:
        self.path = path  # the zip file or the folder the user named
        self.kind = kind  # "zip" | "folder"
        self.root = root  # zip: member prefix ("tiny-imagenet-200/" or ""); folder: "" or subdir
        self._members: dict[str, zipfile.ZipInfo] = {}

    @property
    def root_path(self) -> Path:
        """The dataset root folder (folder sources only)."""
        return self.path / self.root if self.root else self.path

    @classmethod
    def open(cls, path: str | Path) -> Source:
        """Check ``path`` and find the dataset root in it; clear errors for every bad case."""
        path = Path(path).expanduser()
        if not path.exists():
            raise NeuralCodesError(f"source not found: {path}")
        if path.is_dir():
            return cls._open_folder(path)
        if not zipfile.is_zipfile(path):
            raise NeuralCodesError(f"source is neither a zip archive nor a folder: {path}")
        return cls._open_zip(path)

    @classmethod
    def _open_folder(cls, path: Path) -> Source:
        for sub in ["", *sorted(p.name for p in path.iterdir() if p.is_dir())]:
            base = path / sub if sub else path
            if (base / "wnids.txt").is_file() and (base / "train").is_dir():
                return cls(path.resolve(), "folder", sub)
        raise NeuralCodesError(f"wrong layout: no wnids.txt and train/ in {path} or one level "
                               "below it (expected the Tiny ImageNet layout)")

    @classmethod
    def _open_zip(cls, path: Path) -> Source:
        try:
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
        except (zipfile.BadZipFile, OSError) as e:
            raise NeuralCodesError(f"cannot read zip archive {path}: {e}") from None
        for info in infos:
            _check_member(info)
        names = {i.filename for i in infos}
        roots = sorted(n[: -len("wnids.txt")] for n in names
                       if n.endswith("wnids.txt") and n.count("/") <= 1
                       and n.rsplit("/", 1)[-1] == "wnids.txt")
        for root in roots:
            if any(n.startswith(root + "train/") for n in names):
                src = cls(path.resolve(), "zip", root)
                src._members = {i.filename[len(root):]: i for i in infos
                                if i.filename.startswith(root) and not i.is_dir()}
                return src
        raise NeuralCodesError(f"wrong layout: no wnids.txt and train/ at the top of {path} or "
                               "one level below it (expected the Tiny ImageNet layout)")

    # -- reading ------------------------------------------------------------------------------

    def read_text(self, rel: str) -> str | None:
        """A small text file of the dataset root (None if absent)."""
        if self.kind == "zip":
            info = self._members.get(rel)
            if info is None:
                return None
            try:
                with open(self.path, "rb") as f:
                    raw = _read_zip_member(f, _zip_loc(info), MAX_TEXT_BYTES)
            except _Reject as e:
                raise NeuralCodesError(f"cannot read {rel} in {self.path}: {e}") from None
            return raw.decode("utf-8", errors="replace")
        p = self.root_path / rel
        if not p.is_file():
            return None
        if p.stat().st_size > MAX_TEXT_BYTES:
            raise NeuralCodesError(f"refusing {p}: absurd size ({p.stat().st_size:,} bytes)")
        return p.read_text(encoding="utf-8", errors="replace")

    def train_items(self, wnids: Sequence[str]) -> list[_Item]:
        """Every file under ``train/<wnid>/images/``, class by class, in natural name order."""
        items: list[_Item] = []
        if self.kind == "zip":
            per_class: dict[str, list[str]] = {w: [] for w in wnids}
            for rel in self._members:
                parts = rel.split("/")
                if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" \
                        and parts[1] in per_class and parts[3]:
                    per_class[parts[1]].append(rel)
            for label, wnid in enumerate(wnids):
                for rel in sorted(per_class[wnid], key=_natural_key):
                    items.append(_Item(rel, label, _zip_loc(self._members[rel])))
            return items
        for label, wnid in enumerate(wnids):
            folder = self.root_path / "train" / wnid / "images"
            if not folder.is_dir():
                raise NeuralCodesError(f"wrong layout: {folder} is missing (class {wnid} is in "
                                       "wnids.txt)")
            names = []
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.is_symlink():
                        raise NeuralCodesError(f"refusing link in source: {entry.path}")
                    if entry.is_file():
                        names.append(entry.name)
            for name in sorted(names, key=_natural_key):
                items.append(_Item(f"train/{wnid}/images/{name}", label, None))
        return items

    def checksum(self, items: Sequence[_Item]) -> str:
        """A content fingerprint: zip: all members' names, CRCs and sizes; folder: used files'
        paths, sizes and modification times."""
        h = hashlib.sha256(f"{self.kind}\0".encode())  # not the root's name: same content, same key
        if self.kind == "zip":
            for rel in sorted(self._members):
                i = self._members[rel]
                h.update(f"{rel}\0{i.CRC}\0{i.file_size}\n".encode())
            return h.hexdigest()
        for rel in ["wnids.txt", "words.txt", *(it.rel for it in items)]:
            p = self.root_path / rel
            if p.exists():
                st = p.stat()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """How the manifest records this source."""
        return {"path": str(self.path), "kind": self.kind, "root": self.root}


def _check_member(info: zipfile.ZipInfo) -> None:
    """Refuse members that could escape an extraction folder, links, and absurd sizes."""
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise NeuralCodesError(f"refusing unsafe archive member (escapes the target): {name!r}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise NeuralCodesError(f"refusing link in archive: {name!r}")
    if info.file_size > 4 * MAX_TEXT_BYTES:
        raise NeuralCodesError(f"refusing archive member of absurd size: {name!r} "
                               f"({info.file_size:,} bytes)")


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _read_wnids(src: Source) -> list[str]:
    text = src.read_text("wnids.txt")
    wnids = sorted({line.strip() for line in (text or "").splitlines() if line.strip()})
    if not wnids:
        raise NeuralCodesError(f"wrong layout: wnids.txt in {src.path} lists no classes")
    return wnids


def _read_names(src: Source, wnids: Sequence[str]) -> list[str]:
    """Class names from ``words.txt`` (``wnid<TAB>names``); a wnid missing there keeps its id."""
    wanted = set(wnids)
    names: dict[str, str] = {}
    for line in (src.read_text("words.txt") or "").splitlines():
        wnid, _, words = line.partition("\t")
        if wnid in wanted and words.strip():
            names[wnid] = words.strip()
    return [names.get(w, w) for w in wnids]


# --------------------------------------------------------------------------------------------
# Decoding (runs in worker processes)


class _Reject(Exception):
    """A train file that cannot go into the cache; the message is the reason."""


_WORKER: dict[str, Any] = {}


def _worker_init(src_path: str, kind: str, root: str, out_path: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up
    _WORKER.update(src=Path(src_path), kind=kind, root=root, out=out_path)


def _decode_chunk(task: tuple[int, list[_Item]]) -> list[tuple[int, str]]:
    """Decode ``items`` into rows ``start...`` of the output file; return (row, reason) rejects."""
    start, items = task
    buf = np.zeros((len(items), *IMAGE_SHAPE), np.uint8)
    rejects = []
    fd = os.open(_WORKER["out"], os.O_WRONLY)
    src_file = open(_WORKER["src"], "rb") if _WORKER["kind"] == "zip" else None  # noqa: SIM115
    try:
        for k, item in enumerate(items):
            try:
                buf[k] = _decode(_read_item(item, src_file))
            except _Reject as e:
                rejects.append((start + k, str(e)))
        os.pwrite(fd, memoryview(buf).cast("B"), NPY_HEADER_BYTES + start * ROW_BYTES)
    finally:
        os.close(fd)
        if src_file is not None:
            src_file.close()
    return rejects


def _read_item(item: _Item, src_file: Any) -> bytes:
    if item.loc is None:
        path = Path(_WORKER["src"]) / _WORKER["root"] / item.rel
        try:
            size = path.stat().st_size
            if size > MAX_IMAGE_BYTES:
                raise _Reject(f"absurd size ({size:,} bytes)")
            return path.read_bytes()
        except OSError as e:
            raise _Reject(f"unreadable: {e.strerror or e}") from None
    return _read_zip_member(src_file, item.loc, MAX_IMAGE_BYTES)


def _zip_loc(info: zipfile.ZipInfo) -> tuple[int, int, int, int, int]:
    return info.header_offset, info.compress_size, info.file_size, info.compress_type, info.CRC


def _read_zip_member(src_file: Any, loc: tuple[int, int, int, int, int], limit: int) -> bytes:
    """Read one member straight from the archive file (no ZipFile needed); CRC-checked."""
    offset, csize, size, method, crc = loc
    if size > limit or csize > limit:
        raise _Reject(f"absurd size ({size:,} bytes)")
    src_file.seek(offset)
    header = src_file.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise _Reject("corrupt zip entry")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    src_file.seek(offset + 30 + name_len + extra_len)
    data = src_file.read(csize)
    if method == zipfile.ZIP_DEFLATED:
        try:
            data = zlib.decompressobj(-15).decompress(data, size + 1)
        except zlib.error as e:
            raise _Reject(f"corrupt zip entry: {e}") from None
    elif method != zipfile.ZIP_STORED:
        raise _Reject(f"unsupported zip compression method {method}")
    if len(data) != size or zlib.crc32(data) != crc:
        raise _Reject("corrupt zip entry (size or CRC mismatch)")
    return data


def _decode(data: bytes) -> np.ndarray:
    """JPEG (or any Pillow format) bytes -> uint8 (64, 64, 3) RGB, or :class:`_Reject`."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != IMAGE_SHAPE[1::-1]:
                raise _Reject(f"not 64x64 (is {im.size[0]}x{im.size[1]})")
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.asarray(rgb)
    except _Reject:
        raise
    except Exception as e:  # Pillow raises many types for broken files
        raise _Reject(f"cannot decode: {e}") from None


# --------------------------------------------------------------------------------------------
# Building the cache


def prepare(source: str | Path | None = None, cache_dir: str | Path | None = None, *,
            workers: int | None = None, progress: bool = True) -> Path:
    """Build the image cache for ``source`` (None: the official archive) and return its folder.

    Does no work when a finished cache for the same source content exists. Rejected files
    (undecodable, not 64x64) are printed to stderr and listed in the manifest.
    """
    return _prepare(source, cache_dir, workers=workers, progress=progress)[0]


def _prepare(source: str | Path | None, cache_dir: str | Path | None, *, workers: int | None,
             progress: bool) -> tuple[Path, bool]:
    """:func:`prepare`, also saying whether the cache was built now (True) or found (False)."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if source is None:
        source = fetch_official(root, progress=progress)
    stamp = _file_stamp(Path(source).expanduser())
    known = _read_memo(root).get(stamp) if stamp else None
    if known and (root / known / "manifest.json").is_file():
        return root / known, False
    src = Source.open(source)
    wnids = _read_wnids(src)
    items = src.train_items(wnids)
    counts = np.bincount([it.label for it in items], minlength=len(wnids))
    empty = [w for w, c in zip(wnids, counts, strict=True) if c == 0]
    if empty:
        raise NeuralCodesError(f"wrong layout: no training images for {len(empty)} class(es) of "
                               f"wnids.txt, e.g. {empty[0]} (expected train/<wnid>/images/)")
    checksum = src.checksum(items)
    key = hashlib.sha256(f"{FORMAT_VERSION}:{checksum}".encode()).hexdigest()[:16]
    final = root / f"tiny-imagenet-{key}"
    if (final / "manifest.json").is_file():
        _remember(root, stamp, final.name)
        return final, False
    if final.exists() and not (final / "manifest.json").exists():
        shutil.rmtree(final)  # damaged by hand (a build only ever appears whole): rebuild it
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".building-{key}-{os.getpid()}-", dir=root))
    os.chmod(tmp, 0o755)
    try:
        manifest = _build(src, wnids, items, checksum, tmp, workers=workers, progress=progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "manifest.json").is_file():  # another process finished first: fine
                raise
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NeuralCodesError(f"no space left on device while building the cache in {root}")\
                from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _report_rejects(manifest)
    _remember(root, stamp, final.name)
    return final, True


# A zip whose path, size and modification time are unchanged is not re-read: ``sources.json`` in
# the cache root maps that stamp to its cache folder (the key itself hashes the zip's content).
_MEMO = "sources.json"


def _file_stamp(path: Path) -> str | None:
    if not path.is_file():
        return None
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _read_memo(root: Path) -> dict[str, str]:
    try:
        memo = read_json(root / _MEMO)
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _remember(root: Path, stamp: str | None, name: str) -> None:
    if stamp:
        memo = _read_memo(root)
        if memo.get(stamp) != name:
            write_json(root / _MEMO, {**memo, stamp: name})


def _build(src: Source, wnids: list[str], items: list[_Item], checksum: str, out: Path, *,
           workers: int | None, progress: bool) -> dict[str, Any]:
    """Decode all ``items`` into ``out`` and write the cache files; returns the manifest."""
    t0 = time.perf_counter()
    n = len(items)
    _check_free_space(out, n * ROW_BYTES + NPY_HEADER_BYTES + (64 << 20), "build the cache")
    images_path = out / "images.npy"
    _allocate_npy(images_path, n)
    rejects = _decode_all(src, items, images_path, workers=workers, progress=progress)
    keep = np.ones(n, bool)
    keep[[r for r, _ in rejects]] = False
    if rejects:
        _compact_npy(images_path, keep)
    labels = np.array([it.label for it in items], np.int64)[keep]
    paths = [it.rel for it, k in zip(items, keep, strict=True) if k]
    with atomic_open(out / "labels.npy", "wb") as f:
        np.save(f, labels)
    names = _read_names(src, wnids)
    write_json(out / "classes.json", {"wnids": wnids, "names": names})
    write_json(out / "paths.json", paths)
    seconds = time.perf_counter() - t0
    try:  # the assignment's default splits (needs more classes than the 10 ood ones)
        default: Splits | None = _split_arrays(labels, wnids, DataConfig())
    except NeuralCodesError:
        default = None
    method = ("sha256 of member names, CRC32s and sizes" if src.kind == "zip"
              else "sha256 of file paths, sizes and mtimes")
    manifest = {
        "format": FORMAT_VERSION,
        "source": {**src.describe(), "checksum": checksum, "checksum_method": method},
        "num_images": int(keep.sum()),
        "num_classes": len(wnids),
        "image_shape": list(IMAGE_SHAPE),
        "counts": {w: int(c) for w, c in zip(wnids, np.bincount(labels, minlength=len(wnids)),
                                               strict=True)},
        "num_rejected": len(rejects),
        "rejected": [{"path": items[r].rel, "reason": reason} for r, reason in rejects],
        "files": {"images": "images.npy", "labels": "labels.npy", "classes": "classes.json",
                  "paths": "paths.json", "splits": "splits/<hash>.npz"},
        "splits": {} if default is None else {"default": {
            "hash": default.hash, "sizes": default.sizes(), "config": _split_config(DataConfig()),
            "file": f"splits/{default.hash[:16]}.npz"}},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build": {"seconds": round(seconds, 3), "images_per_s": round(n / max(seconds, 1e-9)),
                  "workers": _n_workers(workers, n), "versions": _versions()},
    }
    if default is not None:
        default.save(out)
    write_json(out / "manifest.json", manifest)
    return manifest


def _decode_all(src: Source, items: list[_Item], out: Path, *, workers: int | None,
                progress: bool) -> list[tuple[int, str]]:
    tasks = [(s, items[s: s + CHUNK_IMAGES]) for s in range(0, len(items), CHUNK_IMAGES)]
    n_workers = _n_workers(workers, len(items))
    init_args = (str(src.path), src.kind, src.root, str(out))
    rejects: list[tuple[int, str]] = []
    with tqdm(total=len(items), desc="decode train images", unit="img",
              disable=not progress) as bar:
        if n_workers == 1:
            saved = dict(_WORKER)
            _WORKER.update(src=src.path, kind=src.kind, root=src.root, out=str(out))
            try:
                for task in tasks:
                    rejects += _decode_chunk(task)
                    bar.update(len(task[1]))
            finally:
                _WORKER.clear()
                _WORKER.update(saved)
        else:
            with multiprocessing.get_context().Pool(n_workers, _worker_init, init_args) as pool:
                for task, got in zip(tasks, pool.imap(_decode_chunk, tasks), strict=True):
                    rejects += got
                    bar.update(len(task[1]))
    return sorted(rejects)


def _n_workers(workers: int | None, n: int) -> int:
    if workers is not None:
        if workers < 1:
            raise NeuralCodesError(f"--workers must be at least 1 (got {workers})")
        return workers
    return 1 if n < SERIAL_BELOW else max(1, min(os.cpu_count() or 1, 8))


def _npy_header(n: int) -> bytes:
    """A version-1.0 .npy header for uint8 (n, 64, 64, 3), padded to NPY_HEADER_BYTES."""
    d = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({n}, {IMAGE_SHAPE[0]}, " \
        f"{IMAGE_SHAPE[1]}, {IMAGE_SHAPE[2]}), }}"
    body = d.ljust(NPY_HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


def _allocate_npy(path: Path, n: int) -> None:
    """Create the .npy with its header and all ``n`` rows reserved on disk (ENOSPC up front)."""
    with open(path, "wb") as f:
        f.write(_npy_header(n))
        f.flush()
        size = NPY_HEADER_BYTES + n * ROW_BYTES
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(f.fileno(), 0, size)
        else:
            f.truncate(size)


def _compact_npy(path: Path, keep: np.ndarray) -> None:
    """Drop the rows where ``keep`` is False, in place, and rewrite the header's row count."""
    fd = os.open(path, os.O_RDWR)
    try:
        dst = int(np.argmin(keep))  # first dropped row
        src = dst
        n = len(keep)
        while src < n:
            if not keep[src]:
                src += 1
                continue
            end = src
            while end < n and keep[end] and end - src < 4096:
                end += 1
            block = os.pread(fd, (end - src) * ROW_BYTES, NPY_HEADER_BYTES + src * ROW_BYTES)
            os.pwrite(fd, block, NPY_HEADER_BYTES + dst * ROW_BYTES)
            dst += end - src
            src = end
        os.pwrite(fd, _npy_header(dst), 0)
        os.ftruncate(fd, NPY_HEADER_BYTES + dst * ROW_BYTES)
    finally:
        os.close(fd)


def _check_free_space(folder: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < need:
        raise NeuralCodesError(f"not enough disk space to {what} in {folder}: need "
                               f"{need / 2**20:,.0f} MiB, {free / 2**20:,.0f} MiB free")


def _remove_stale_builds(root: Path) -> None:
    """Delete ``.building-*`` folders left by processes that no longer exist (e.g. killed)."""
    for d in root.glob(".building-*"):
        m = re.match(r"\.building-[0-9a-f]+-(\d+)-", d.name)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _report_rejects(manifest: dict[str, Any]) -> None:
    rejected = manifest["rejected"]
    if not rejected:
        return
    print(f"neuralcodes: {len(rejected)} train file(s) left out of the cache (listed in "
          "manifest.json):", file=sys.stderr)
    for r in rejected[:10]:
        print(f"  {r['path']}: {r['reason']}", file=sys.stderr)
    if len(rejected) > 10:
        print(f"  ... and {len(rejected) - 10} more", file=sys.stderr)


def _versions() -> dict[str, str]:
    import PIL

    return {"neuralcodes": __version__, "numpy": np.__version__, "pillow": PIL.__version__}


# --------------------------------------------------------------------------------------------
# The loaded cache


@dataclass
class Dataset:
    """A prepared cache, loaded; ``images`` is memory-mapped (nothing is read until used)."""

    root: Path
    images: np.ndarray  # (N, 64, 64, 3) uint8
    labels: np.ndarray  # (N,) int64 index into wnids
    wnids: list[str]  # sorted
    names: list[str]  # words.txt names, same order as wnids
    paths: list[str]  # relative to the dataset root of the source
    manifest: dict[str, Any]
    manifest_hash: str  # identifies the cache content (manifest without timings)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def load(cls, cache_dir: str | Path) -> Dataset:
        """Open a cache folder returned by :func:`prepare`."""
        root = Path(cache_dir).expanduser()
        mpath = root / "manifest.json"
        if not mpath.is_file():
            raise NeuralCodesError(f"no prepared image cache in {root} (run `neuralcodes "
                                   "prepare`)")
        manifest = read_json(mpath)
        if manifest.get("format") != FORMAT_VERSION:
            raise NeuralCodesError(f"image cache {root} has format {manifest.get('format')}, "
                                   f"this version reads {FORMAT_VERSION}: run `neuralcodes "
                                   "prepare` again")
        try:
            images = np.load(root / "images.npy", mmap_mode="r")
            labels = np.load(root / "labels.npy")
            classes = read_json(root / "classes.json")
            paths = read_json(root / "paths.json")
        except (OSError, ValueError) as e:
            raise NeuralCodesError(f"image cache {root} is damaged ({e}); delete it and run "
                                   "`neuralcodes prepare` again") from None
        n = manifest["num_images"]
        if images.shape != (n, *IMAGE_SHAPE) or labels.shape != (n,) or len(paths) != n:
            raise NeuralCodesError(f"image cache {root} is damaged (sizes disagree with its "
                                   "manifest); delete it and run `neuralcodes prepare` again")
        volatile = set(_VOLATILE_MANIFEST_KEYS)
        stable = {k: v for k, v in manifest.items() if k not in volatile}
        digest = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()
        return cls(root, images, labels.astype(np.int64, copy=False), list(classes["wnids"]),
                   list(classes["names"]), list(paths), manifest, digest)


# --------------------------------------------------------------------------------------------
# Splits


@dataclass
class Splits:
    """Index arrays into a :class:`Dataset` (int64), and which classes are in-domain."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    ood: np.ndarray
    in_classes: list[int]  # dataset class indices; model label i == in_classes[i]
    ood_classes: list[int]
    hash: str

    def model_labels(self, labels: np.ndarray) -> np.ndarray:
        """Dataset class indices -> model labels (0..len(in_classes)-1), -1 for ood classes."""
        size = max([*self.in_classes, *self.ood_classes, int(np.max(labels, initial=0))]) + 1
        table = np.full(size, -1, np.int64)
        table[self.in_classes] = np.arange(len(self.in_classes))
        return table[np.asarray(labels, np.int64)]

    def sizes(self) -> dict[str, int]:
        """Images per split, plus the class counts."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test),
                "ood": len(self.ood), "in_classes": len(self.in_classes),
                "ood_classes": len(self.ood_classes)}

    def save(self, cache_dir: str | Path) -> Path:
        """Write ``<cache>/splits/<hash16>.npz`` (atomically; kept if already there)."""
        path = Path(cache_dir) / "splits" / f"{self.hash[:16]}.npz"
        if not path.exists():
            with atomic_open(path, "wb") as f:
                np.savez(f, train=self.train, val=self.val, test=self.test, ood=self.ood,
                         in_classes=np.array(self.in_classes, np.int64),
                         ood_classes=np.array(self.ood_classes, np.int64))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Splits:
        """Read a file written by :meth:`save` (its hash is recomputed)."""
        with np.load(path) as z:
            return _finish_splits(z["train"], z["val"], z["test"], z["ood"],
                                  z["in_classes"].tolist(), z["ood_classes"].tolist())


def make_splits(dataset: Dataset, cfg: DataConfig) -> Splits:
    """The assignment's splits of ``dataset``.

    - Classes are the dataset's (sorted by wnid). ``max_classes`` keeps the first N of them and
      ``max_per_class`` the first M images of each (in natural file-name order), before anything
      else.
    - Out-of-domain classes: ``ood_wnids`` if given, else ``ood_classes`` drawn at random with
      ``seed`` if ``ood_random``, else the last ``ood_classes`` (default 10) in sorted order.
    - In-domain images (in dataset order) are permuted with ``numpy.random.default_rng(seed)``
      and cut by ``fractions`` (80/10/10; sizes rounded, test takes the rest).
    - The ood set is round-robin over the ood classes in wnid order: image 0 of each ood class,
      then image 1 of each, ... so its first 10 images show 10 different classes (with >=10 ood
      classes) and are the same on every run.
    """
    return _split_arrays(dataset.labels, dataset.wnids, cfg)


def _split_config(cfg: DataConfig) -> dict[str, Any]:
    fields = ("ood_classes", "ood_wnids", "ood_random", "seed", "fractions", "max_classes",
              "max_per_class")
    d = dataclasses.asdict(cfg)
    return {k: d[k] for k in fields}


def _split_arrays(labels: np.ndarray, wnids: Sequence[str], cfg: DataConfig) -> Splits:
    n_classes = len(wnids)
    if cfg.max_classes is not None:
        if cfg.max_classes < 1:
            raise NeuralCodesError(f"max_classes must be at least 1 (got {cfg.max_classes})")
        n_classes = min(n_classes, cfg.max_classes)
    if cfg.max_per_class is not None and cfg.max_per_class < 1:
        raise NeuralCodesError(f"max_per_class must be at least 1 (got {cfg.max_per_class})")
    ood = _ood_class_list(list(wnids[:n_classes]), cfg)
    in_classes = [c for c in range(n_classes) if c not in set(ood)]

    order = np.argsort(labels, kind="stable")  # dataset order within each class
    bounds = np.searchsorted(labels[order], np.arange(n_classes + 1))
    per_class = [order[bounds[c]: bounds[c + 1]][: cfg.max_per_class] for c in range(n_classes)]

    fr = tuple(float(f) for f in cfg.fractions)
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6:
        raise NeuralCodesError(f"fractions must be three non-negative numbers summing to 1 "
                               f"(got {cfg.fractions})")
    inside = np.sort(np.concatenate([per_class[c] for c in in_classes]))
    inside = inside[np.random.default_rng(cfg.seed).permutation(len(inside))]
    n_train = round(fr[0] * len(inside))
    n_val = round(fr[1] * len(inside))
    train, val, test = np.split(inside, [n_train, n_train + n_val])

    if ood:
        chunks = [per_class[c] for c in ood]
        position = np.concatenate([np.arange(len(x)) for x in chunks])
        rank = np.concatenate([np.full(len(x), r) for r, x in enumerate(chunks)])
        ood_idx = np.concatenate(chunks)[np.lexsort((rank, position))]
    else:
        ood_idx = np.zeros(0, np.int64)
    return _finish_splits(train, val, test, ood_idx, in_classes, ood)


def _ood_class_list(wnids: list[str], cfg: DataConfig) -> list[int]:
    n = len(wnids)
    if cfg.ood_wnids:
        unknown = sorted(set(cfg.ood_wnids) - set(wnids))
        if unknown:
            raise NeuralCodesError(f"ood wnid(s) not among the {n} classes used: "
                                   f"{', '.join(unknown)}")
        ood = sorted({wnids.index(w) for w in cfg.ood_wnids})
    else:
        k = cfg.ood_classes
        if k < 0:
            raise NeuralCodesError(f"ood_classes must be >= 0 (got {k})")
        if cfg.ood_random:
            ood = sorted(np.random.default_rng(cfg.seed).choice(n, min(k, n), replace=False)
                         .tolist())
        else:
            ood = list(range(n - min(k, n), n))
    if len(ood) >= n:
        raise NeuralCodesError(f"{len(ood)} out-of-domain classes leave no in-domain class "
                               f"(only {n} classes used)")
    return ood


def _finish_splits(train: np.ndarray, val: np.ndarray, test: np.ndarray, ood: np.ndarray,
                   in_classes: list[int], ood_classes: list[int]) -> Splits:
    arrays = [np.ascontiguousarray(a, dtype=np.int64) for a in (train, val, test, ood)]
    h = hashlib.sha256()
    for part in (*arrays, np.array(in_classes, np.int64), np.array(ood_classes, np.int64)):
        h.update(struct.pack("<q", len(part)))
        h.update(part.astype("<i8").tobytes())
    return Splits(*arrays, [int(c) for c in in_classes], [int(c) for c in ood_classes],
                  h.hexdigest())


def load_data(cfg: DataConfig, progress: bool = True) -> tuple[Dataset, Splits]:
    """Prepare (if needed) and load the cache for ``cfg.source``, and split it by ``cfg``.

    The splits are saved into the cache (``splits/<hash16>.npz``).
    """
    dataset = Dataset.load(prepare(cfg.source, cfg.cache_dir, progress=progress))
    splits = make_splits(dataset, cfg)
    splits.save(dataset.root)
    return dataset, splits


# --------------------------------------------------------------------------------------------
# Command line


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``neuralcodes prepare``."""
    p = subparsers.add_parser(
        "prepare", help="download Tiny ImageNet (or read --source) and build the image cache",
        description="Decode every train image of Tiny ImageNet once into a compact uint8 cache "
        "(images.npy + labels + class names + manifest) and print the assignment's splits. "
        "Without --source the official archive is downloaded (resumable, md5-checked). "
        "Re-running with the same source does no work.")
    p.add_argument("--source", metavar="PATH", help="a Tiny ImageNet zip or extracted folder "
                   "(holding wnids.txt and train/, or one level above); default: download "
                   f"{TINY_IMAGENET_URL}")
    p.add_argument("--cache-dir", metavar="DIR", help="where caches live (default: "
                   "$NEURALCODES_CACHE, else $XDG_CACHE_HOME/neuralcodes, else "
                   "~/.cache/neuralcodes)")
    p.add_argument("--workers", type=int, metavar="N", help="decoding processes (default: one "
                   "per CPU core, at most 8; one for fewer than 2,000 images)")
    p.add_argument("--ood-classes", type=int, default=10, metavar="N", help="the last N classes "
                   "in sorted wnid order are out-of-domain (default: 10)")
    p.add_argument("--ood-wnids", nargs="+", metavar="WNID", help="explicit out-of-domain "
                   "classes (overrides --ood-classes)")
    p.add_argument("--ood-random", action="store_true", help="draw the --ood-classes classes at "
                   "random with --seed instead of taking the last ones")
    p.add_argument("--seed", type=int, default=42, help="seed of the in-domain shuffle and "
                   "of --ood-random (default: 42)")
    p.add_argument("--max-classes", type=int, metavar="N", help="use only the first N classes")
    p.add_argument("--max-per-class", type=int, metavar="M", help="use only the first M images "
                   "of each class")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    cfg = DataConfig(source=args.source, cache_dir=args.cache_dir, ood_classes=args.ood_classes,
                     ood_wnids=args.ood_wnids, ood_random=args.ood_random, seed=args.seed,
                     max_classes=args.max_classes, max_per_class=args.max_per_class)
    root, built = _prepare(cfg.source, cfg.cache_dir, workers=args.workers,
                           progress=not args.no_progress)
    ds = Dataset.load(root)
    splits = make_splits(ds, cfg)
    splits_path = splits.save(root)
    print(summary(ds, splits, built=built, splits_path=splits_path))
    return 0


def summary(ds: Dataset, splits: Splits, *, built: bool, splits_path: Path | None = None) -> str:
    """The text ``neuralcodes prepare`` prints."""
    m = ds.manifest
    src = m["source"]
    lines = [
        f"cache:   {ds.root} ({'built now' if built else 'already prepared'}, "
        f"{ds.images.nbytes / 2**20:,.0f} MiB of uint8 images)",
        f"source:  {src['path']} ({src['kind']}, checksum {src['checksum'][:12]})",
        f"images:  {len(ds):,} in {len(ds.wnids)} classes; {m['num_rejected']} file(s) rejected",
    ]
    lines += [f"  rejected {r['path']}: {r['reason']}" for r in m["rejected"][:10]]
    s = splits.sizes()
    ood_names = ", ".join(ds.wnids[c] for c in splits.ood_classes[:10])
    more = ", ..." if len(splits.ood_classes) > 10 else ""
    lines += [
        f"splits:  train {s['train']:,} / val {s['val']:,} / test {s['test']:,} "
        f"({s['in_classes']} in-domain classes); ood {s['ood']:,} ({s['ood_classes']} classes: "
        f"{ood_names}{more})",
        f"         hash {splits.hash[:16]}" + (f", saved in {splits_path}" if splits_path else ""),
    ]
    return "\n".join(lines)
