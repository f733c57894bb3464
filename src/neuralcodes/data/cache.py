"""The decoded image cache: every train image decoded exactly once, in parallel, into
``<cache>/tiny-imagenet-<key>/`` (see :mod:`neuralcodes.data` for the files), and loaded back as a
memory-mapped :class:`Dataset`.

The cache is built in a ``.building-*`` folder and renamed into place at the end, so a half-built
cache is never taken for a finished one; builds left by dead processes are removed; decoding is
:mod:`.decode`. ``<cache>/sources.json`` remembers which cache a zip (by path, size and mtime)
produced, so a repeated ``prepare`` of an unchanged zip returns at once without re-reading it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuralcodes.config import URL_PATTERN, DataConfig
from neuralcodes.data import decode
from neuralcodes.data.download import (
    TINY_IMAGENET_MD5,
    TINY_IMAGENET_SIZE,
    TINY_IMAGENET_URL,
    download,
)
from neuralcodes.data.source import IMAGE_SHAPE, Item, Source, read_names, read_wnids
from neuralcodes.data.splits import split_arrays, split_settings
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import atomic_open, read_json, write_json
from neuralcodes.versions import versions

log = logging.getLogger(__name__)

#: Bump when the cache layout changes: it is part of the cache key, so old caches are not reused.
#: 2: images in lexicographic file-name order within a class (1: natural order).
FORMAT_VERSION = 2
VOLATILE_MANIFEST_KEYS = ("created", "build")
#: In the cache root: zip stamp (path, size, mtime) -> cache folder name.
_MEMO = "sources.json"


def default_cache_dir() -> Path:
    """``$NEURALCODES_CACHE``, else ``$XDG_CACHE_HOME/neuralcodes``, else
    ``~/.cache/neuralcodes``."""
    if os.environ.get("NEURALCODES_CACHE"):
        return Path(os.environ["NEURALCODES_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "neuralcodes"
    return Path.home() / ".cache" / "neuralcodes"


def cache_root(cache_dir: str | Path | None) -> Path:
    """The cache root of the ``data.cache_dir`` setting (None: :func:`default_cache_dir`)."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def download_url(url: str | None = None) -> str:
    """Where the official archive comes from: ``url`` (``data.url``/``--url``), else
    ``$NEURALCODES_URL``, else the cs231n address."""
    if url:
        return url
    env = os.environ.get("NEURALCODES_URL", "").strip()
    if env and not re.fullmatch(URL_PATTERN, env):
        raise NeuralCodesError(f"NEURALCODES_URL is not a download address (http://, https://, "
                               f"ftp:// or file://): {env!r}")
    return env or TINY_IMAGENET_URL


def fetch_official(cache_dir: str | Path | None = None, *, progress: bool = True,
                   url: str | None = None, md5: str | None = TINY_IMAGENET_MD5) -> Path:
    """The official archive in ``<cache>/downloads/``, downloaded (and md5-checked) if absent.

    ``url`` (None: :func:`download_url`) may be a mirror: the file is the same archive, kept under
    the official name, so a download begun from one address can be finished from another.
    """
    root = cache_root(cache_dir)
    url = download_url(url)
    dest = root / "downloads" / Path(TINY_IMAGENET_URL).name
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    need = TINY_IMAGENET_SIZE - (part.stat().st_size if part.exists() else 0)
    check_free_space(dest.parent, need, "download the archive")
    return download(url, dest, md5, progress=progress)


# --------------------------------------------------------------------------------------------
# Building


def prepare(source: str | Path | None = None, cache_dir: str | Path | None = None, *,
            workers: int | None = None, progress: bool = True, url: str | None = None) -> Path:
    """Build the image cache for ``source`` (None: the official archive, downloaded from ``url``
    if not there yet, see :func:`fetch_official`) and return its folder.

    Does no work when a finished cache for the same source content exists. Rejected files
    (undecodable, not 64x64) are logged as a warning and listed in the manifest.
    """
    return prepare_cache(source, cache_dir, workers=workers, progress=progress, url=url)[0]


def prepare_cache(source: str | Path | None, cache_dir: str | Path | None, *,
                  workers: int | None = None, progress: bool = True, url: str | None = None
                  ) -> tuple[Path, bool]:
    """:func:`prepare`, also saying whether the cache was built now (True) or found (False)."""
    root = cache_root(cache_dir)
    if source is None:
        source = fetch_official(root, progress=progress, url=url, md5=TINY_IMAGENET_MD5)
    stamp = _file_stamp(Path(source).expanduser())
    known = _read_memo(root).get(stamp) if stamp else None
    if known and (root / known / "manifest.json").is_file():
        return root / known, False
    with Source.open(source) as src:
        return _prepare_source(src, root, stamp, workers=workers, progress=progress)


def _prepare_source(src: Source, root: Path, stamp: str | None, *, workers: int | None,
                    progress: bool) -> tuple[Path, bool]:
    wnids = read_wnids(src)
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


def _build(src: Source, wnids: list[str], items: list[Item], checksum: str, out: Path, *,
           workers: int | None, progress: bool) -> dict[str, Any]:
    """Decode all ``items`` into ``out`` and write the cache files; returns the manifest."""
    t0 = time.perf_counter()
    n = len(items)
    check_free_space(out, n * decode.ROW_BYTES + (64 << 20), "build the cache")
    images_path = out / "images.npy"
    offset = decode.allocate_images(images_path, n)
    rejects = decode.decode_all(src, items, images_path, offset, workers=workers,
                                progress=progress)
    keep = np.ones(n, bool)
    keep[[r for r, _ in rejects]] = False
    if rejects:
        decode.compact_images(images_path, offset, keep)
    labels = np.array([it.label for it in items], np.int64)[keep]
    paths = [it.rel for it, k in zip(items, keep, strict=True) if k]
    with atomic_open(out / "labels.npy", "wb") as f:
        np.save(f, labels)
    write_json(out / "classes.json", {"wnids": wnids, "names": read_names(src, wnids)})
    write_json(out / "paths.json", paths)
    seconds = time.perf_counter() - t0
    try:  # the assignment's default splits (needs more classes than the 10 ood ones)
        default = split_arrays(labels, wnids, DataConfig())
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
            "hash": default.hash, "sizes": default.sizes(),
            "config": split_settings(DataConfig()), "file": f"splits/{default.hash[:16]}.npz"}},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build": {"seconds": round(seconds, 3), "images_per_s": round(n / max(seconds, 1e-9)),
                  "workers": decode.n_workers(workers, n), "versions": versions()},
    }
    if default is not None:
        default.save(out)
    write_json(out / "manifest.json", manifest)
    return manifest


def check_free_space(folder: Path, need: int, what: str) -> None:
    """:class:`NeuralCodesError` unless ``folder``'s file system has ``need`` bytes free."""
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
    lines = [f"{len(rejected)} train file(s) left out of the cache (listed in manifest.json):"]
    lines += [f"  {r['path']}: {r['reason']}" for r in rejected[:10]]
    if len(rejected) > 10:
        lines.append(f"  ... and {len(rejected) - 10} more")
    log.warning("\n".join(lines))


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
        if not isinstance(manifest, dict):
            raise NeuralCodesError(f"{mpath}: not a cache manifest (damaged); delete {root} and "
                                   "run `neuralcodes prepare` again")
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
        stable = {k: v for k, v in manifest.items() if k not in VOLATILE_MANIFEST_KEYS}
        digest = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()
        return cls(root, images, labels.astype(np.int64, copy=False), list(classes["wnids"]),
                   list(classes["names"]), list(paths), manifest, digest)
