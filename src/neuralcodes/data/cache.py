"""The decoded image cache: every image of a dataset decoded exactly once, in parallel, into
``<cache>/<dataset>-<key>/`` (see :mod:`neuralcodes.data` for the files), and loaded back as a
memory-mapped :class:`~neuralcodes.data.dataset.Dataset` (split by :mod:`.partition`).

``<key>`` is the digest of the cache's lineage fingerprint
(:func:`neuralcodes.lineage.cache_fingerprint`: the dataset, the source's content checksum, the
cache format), which the manifest records as ``made_by``: the same source is never decoded
twice, and a changed one (a file added, removed or rewritten) gets a cache of its own.
The cache is built in a ``.building-*`` folder and renamed into place at the end, so a half-built
cache is never taken for a finished one; builds left by dead processes are removed; decoding is
:mod:`.decode`. ``<cache>/sources.json`` remembers which cache a zip (by path, size and mtime)
produced, so a repeated ``prepare`` of an unchanged zip returns at once without re-reading it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from neuralcodes import datasets as registry
from neuralcodes import lineage
from neuralcodes.config import URL_PATTERN, Config, DataConfig
from neuralcodes.data import decode
from neuralcodes.data.dataset import FORMAT_VERSION, IMAGE_SHAPE
from neuralcodes.data.download import download
from neuralcodes.data.source import Source, open_dataset
from neuralcodes.data.splits import split_arrays, split_settings
from neuralcodes.datasets.spec import DatasetSpec, Listing, RemoteFile
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import atomic_open, read_json, write_json
from neuralcodes.versions import versions

log = logging.getLogger(__name__)

#: In the cache root: "<dataset>|<zip stamp (path, size, mtime)>" -> cache folder name.
_MEMO = "sources.json"
#: Called with a source's class names as soon as they are listed (see :func:`prepare`).
ClassCheck = Callable[[list[str]], None]


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


def _remote(spec: DatasetSpec) -> RemoteFile:
    if spec.remote is None:
        raise NeuralCodesError(f"the {spec.title} dataset cannot be downloaded: name its folder "
                               "with --data")
    return spec.remote


def download_url(url: str | None = None, dataset: str = registry.DEFAULT) -> str:
    """Where ``dataset``'s archive comes from: ``url`` (``data.url``/``--url``), else
    ``$NEURALCODES_URL``, else the address its spec declares."""
    if url:
        return url
    env = os.environ.get("NEURALCODES_URL", "").strip()
    if env and not re.fullmatch(URL_PATTERN, env):
        raise NeuralCodesError(f"NEURALCODES_URL is not a download address (http://, https://, "
                               f"ftp:// or file://): {env!r}")
    return env or _remote(registry.get(dataset)).url


def fetch(dataset: str, cache_dir: str | Path | None = None, *, progress: bool = True,
          url: str | None = None, md5: str | None = None) -> Path:
    """``dataset``'s archive in ``<cache>/downloads/``, downloaded (and checked against ``md5``,
    None: its spec's) if absent.

    ``url`` (None: :func:`download_url`) may be a mirror: the file is the same archive, kept under
    its official name, so a download begun from one address can be finished from another.
    """
    remote = _remote(registry.get(dataset))
    root = cache_root(cache_dir)
    url = download_url(url, dataset)
    dest = root / "downloads" / remote.filename
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    need = remote.size - (part.stat().st_size if part.exists() else 0)
    check_free_space(dest.parent, need, "download the archive")
    return download(url, dest, md5 or remote.md5, progress=progress)


def fetch_official(cache_dir: str | Path | None = None, *, progress: bool = True,
                   url: str | None = None, md5: str | None = None) -> Path:
    """The default dataset's (Tiny ImageNet's) official archive: :func:`fetch`."""
    return fetch(registry.DEFAULT, cache_dir, progress=progress, url=url, md5=md5)


# --------------------------------------------------------------------------------------------
# Building


def prepare(source: str | Path | None = None, cache_dir: str | Path | None = None, *,
            dataset: str = "auto", workers: int | None = None, progress: bool = True,
            url: str | None = None, check: ClassCheck | None = None) -> Path:
    """Build the image cache for ``source`` read as ``dataset`` (``auto``: found from its
    layout; see :mod:`neuralcodes.datasets`) and return its folder. Without a source the
    dataset's archive is downloaded from ``url`` if not there yet (:func:`fetch`).

    Does no work when a finished cache for the same source content exists. Files that do not
    decode are listed in the manifest and logged (a labelled folder: one error line instead).
    ``check`` is called with the source's classes as soon as they are listed (before decoding).
    """
    return prepare_cache(source, cache_dir, dataset=dataset, workers=workers,
                         progress=progress, url=url, check=check)[0]


def prepare_cache(source: str | Path | None, cache_dir: str | Path | None, *,
                  dataset: str = "auto", workers: int | None = None, progress: bool = True,
                  url: str | None = None, check: ClassCheck | None = None
                  ) -> tuple[Path, bool]:
    """:func:`prepare`, also saying whether the cache was built now (True) or found (False)."""
    root = cache_root(cache_dir)
    if source is None:
        source = fetch(registry.get(dataset).name, root, progress=progress, url=url)
    stamp = _file_stamp(Path(source).expanduser())
    stamp = f"{dataset}|{stamp}" if stamp else None
    known = _read_memo(root).get(stamp) if stamp else None
    if known and (root / known / "manifest.json").is_file():
        return root / known, False
    src, spec = open_dataset(source, dataset)
    with src:
        return _prepare_source(src, spec, root, stamp, workers=workers, progress=progress,
                               check=check)


def _prepare_source(src: Source, spec: DatasetSpec, root: Path, stamp: str | None, *,
                    workers: int | None, progress: bool,
                    check: ClassCheck | None = None) -> tuple[Path, bool]:
    listing = spec.listing(src)
    if check is not None:
        check(listing.classes)
    fp = lineage.cache_fingerprint(spec.name, src.checksum(listing.items, spec.meta_files),
                                   FORMAT_VERSION, IMAGE_SHAPE)
    key = lineage.digest(fp)
    final = root / f"{spec.name}-{key}"
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
        manifest = _build(src, spec, listing, fp, tmp, workers=workers, progress=progress)
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


def _build(src: Source, spec: DatasetSpec, listing: Listing, fp: lineage.Fingerprint,
           out: Path, *, workers: int | None, progress: bool) -> dict[str, Any]:
    """Decode every item of ``listing`` into ``out`` and write the cache files; returns the
    manifest."""
    t0 = time.perf_counter()
    items, wnids = listing.items, listing.classes
    n = len(items)
    check_free_space(out, n * decode.ROW_BYTES + (64 << 20), "build the cache")
    images_path = out / "images.npy"
    offset = decode.allocate_images(images_path, n)
    rejects = decode.decode_all(src, spec, items, images_path, offset, workers=workers,
                                progress=progress)
    if rejects and spec.strict:
        row, reason = rejects[0]
        raise NeuralCodesError(
            f"{len(rejects)} file(s) in {src.path} cannot be read as images, e.g. "
            f"{items[row].rel} ({reason}): remove or replace them, then run again")
    keep = np.ones(n, bool)
    keep[[r for r, _ in rejects]] = False
    if rejects:
        decode.compact_images(images_path, offset, keep)
    labels = np.array([it.label for it in items], np.int64)[keep]
    paths = [it.rel for it, k in zip(items, keep, strict=True) if k]
    with atomic_open(out / "labels.npy", "wb") as f:
        np.save(f, labels)
    write_json(out / "classes.json", {"wnids": wnids, "names": listing.names})
    write_json(out / "paths.json", paths)
    seconds = time.perf_counter() - t0
    try:  # the assignment's default splits (needs more classes than the 10 ood ones)
        default = split_arrays(labels, wnids, DataConfig())
    except NeuralCodesError:
        default = None
    manifest = {
        "format": FORMAT_VERSION,
        "dataset": spec.name,
        lineage.KEY: fp,
        "source": {**src.describe(), "checksum": fp["inputs"]["files"],
                   "checksum_method": src.checksum_method()},
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


def prepare_command(saved: dict[str, Any], cache: Path) -> str:
    """The ``neuralcodes prepare`` command that rebuilds a run's cache where it recorded it (the
    cache folder's name is a hash of the source's content, so the same source gives it back),
    with the run's data settings spelled out (none is taken from a file unseen)."""
    import json
    import shlex

    source = saved["data"].get("source") or saved["config"]["data"].get("source")
    parts = ["neuralcodes", "prepare"]
    if source:
        parts += ["--data", str(source)]
    parts += ["--cache-dir", str(cache.parent)]
    ours, default = Config.from_dict(saved["config"]).to_dict()["data"], \
        Config(data=DataConfig()).to_dict()["data"]
    for key, value in ours.items():
        if key not in ("source", "cache_dir", "url") and value != default[key]:
            parts += ["--set", f"data.{key}={json.dumps(value, separators=(',', ':'))}"]
    return " ".join(shlex.quote(p) for p in parts)
