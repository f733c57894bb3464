"""``neuralcodes index FOLDER``: build or bring up to date the index of a folder of images.

Streamed: files are decoded and coded :data:`FORWARD_BATCH` at a time and each batch is written
at once to ``pending/`` (atomically), so resident memory does not grow with the folder and an
interrupted run resumes where it stopped. Incremental: a file is known by its path relative to
the folder, its size and its modification time; on a second run new files are coded, deleted
ones dropped, changed ones (size or time differ) coded again, and the rest kept as they are.
The format is in :mod:`neuralcodes.retrieval.collection`.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuralcodes import lineage
from neuralcodes.errors import NeuralCodesError
from neuralcodes.kernels.cpu import return_freed_memory
from neuralcodes.progress import bar as progress_bar
from neuralcodes.retrieval.codes import extract_codes
from neuralcodes.retrieval.collection import (
    APPROX_MIN,
    OWN_TRANSFORM,
    PENDING,
    Entries,
    RowReader,
    Transform,
    data_file,
    pack_names,
    read_manifest,
    row_writer,
    unpack_names,
    write_approx,
    write_manifest,
)
from neuralcodes.retrieval.fitting import index_transform
from neuralcodes.retrieval.images import IMAGE_SUFFIXES, image_files, read_image, read_images
from neuralcodes.runs import TrainedRun
from neuralcodes.text import printable

log = logging.getLogger(__name__)

#: Images per forward pass (and per saved batch): the full model's activations take about
#: 4 MB per image, so 16 keeps the process within ~600 MB (250 would need ~1.4 GB).
FORWARD_BATCH = 16


@dataclass
class IndexUpdate:
    """What one ``neuralcodes index`` did."""

    path: Path  # the index folder
    root: str  # the indexed folder, absolute
    new: int = 0
    gone: int = 0
    changed: int = 0
    kept: int = 0
    computed: int = 0  # codes computed by this call
    resumed: int = 0  # codes taken from an interrupted run
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Images in the index now."""
        return self.new + self.changed + self.kept

    def summary(self) -> str:
        """``+12 new, -3 gone, 0 changed, 5,985 kept`` (and what was resumed or unreadable)."""
        text = f"+{self.new:,} new, -{self.gone:,} gone, {self.changed:,} changed, " \
               f"{self.kept:,} kept"
        if self.resumed:
            text += f" ({self.resumed:,} from an interrupted run)"
        return text + (f", {len(self.failed):,} unreadable" if self.failed else "")

    def _repr_html_(self) -> str:
        from html import escape

        return (f"<p>index <code>{escape(printable(self.path))}</code> of "
                f"<code>{escape(printable(self.root))}</code>: {escape(self.summary())}</p>")


def check_name(name: str) -> str:
    """An index name: one path component, not hidden."""
    if not name or name.startswith(".") or "/" in name or "\0" in name:
        raise NeuralCodesError(f"invalid index name '{printable(name)}' (one folder name, not "
                               "starting with '.')")
    return name


def build_index(folder: str | Path, run: TrainedRun, *, name: str | None = None,
                out: str | Path | None = None, relu: bool | None = None,
                batch_size: int = FORWARD_BATCH, approx_min: int = APPROX_MIN) -> IndexUpdate:
    """Build or update the index of every image under ``folder`` (``RUN/indexes/<name>``,
    ``name`` defaulting to the folder's name; ``out``: an index folder elsewhere), on the
    run's device in its precision (a progress bar if it was opened with ``progress``). The
    caller holds the run's write lock."""
    if batch_size < 1:
        raise NeuralCodesError(f"batch size must be positive, got {batch_size}")
    root = Path(folder).expanduser()
    files = image_files(root)
    if not files:  # before any progress bar or loading: the error line stands alone
        raise NeuralCodesError(f"{folder}: no readable images found (no image files: "
                               f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    root = root.resolve()
    if not any(_readable(p) for p in files):  # before any loading or progress bar, too
        raise NeuralCodesError(f"{folder}: no readable images found ({len(files)} unreadable)")
    r, progress = run, run.progress
    dest = Path(out).expanduser() if out else r.dir.index(check_name(name or root.name))
    if dest.exists() and not (dest.is_dir() and (
            not any(dest.iterdir()) or (dest / PENDING).exists() or (dest / OWN_TRANSFORM).exists()
            or read_manifest(dest))):
        raise NeuralCodesError(f"{dest} exists and is not an index (choose a new folder)")
    dest.mkdir(parents=True, exist_ok=True)  # an unwritable place fails before any work
    use_relu = r.relu(relu)
    weights = lineage.weights_identity(r.dir.best_checkpoint)
    transform, described = index_transform(r, weights, use_relu, batch_size, progress, dest,
                                            files)
    dims = {layer: transform.dims(layer) for layer in transform.mean}
    fp = lineage.index_fingerprint(weights, r.dir.root.resolve().name, use_relu, r.precision,
                                   list(transform.mean), dims, described)
    old = _current(dest, fp, str(root))
    update = IndexUpdate(dest, str(root))
    names = [os.fsencode(p.relative_to(root)) for p in files]
    stats = [p.stat() for p in files]
    old_rows = {n: i for i, n in enumerate(old.names)} if old else {}
    todo, sources = [], {}
    for i, (n, st) in enumerate(zip(names, stats, strict=True)):
        j = old_rows.pop(n, None)
        if j is not None and (old.size[j], old.mtime[j]) == (st.st_size, st.st_mtime_ns):
            sources[n] = ("old", j)
            update.kept += 1
        else:
            todo.append(i)
    update.gone = len(old_rows)
    pending = _pending(dest, lineage.digest(fp))
    for i in todo:
        found = pending.get(names[i])
        if found and found[1:] == (stats[i].st_size, stats[i].st_mtime_ns):
            sources[names[i]] = ("seg", found[0])
            update.resumed += 1
    todo = [i for i in todo if names[i] not in sources]
    _compute(r, dest, fp, transform, use_relu, batch_size, progress,
             [(files[i], names[i], stats[i]) for i in todo], update, sources)
    was = set(old.names) if old else set()
    for n, (kind, _) in sources.items():
        if kind == "seg":
            update.changed += n in was
            update.new += n not in was
    if not sources:
        raise NeuralCodesError(f"{folder}: no readable images found"
                               + (f" ({len(update.failed)} unreadable)" if update.failed else ""))
    if old is not None and not (update.new or update.changed or update.gone):
        return update  # nothing changed: nothing written
    if len(sources) >= approx_min:  # FAISS training is the peak: the network's memory goes first
        r.release_model()
        return_freed_memory()
    _write(dest, fp, str(root), old, sources, approx_min)
    return update


def _readable(path: Path) -> bool:
    try:
        read_image(path)
        return True
    except NeuralCodesError:
        return False


def _current(dest: Path, fp: dict[str, Any], root: str) -> Entries | None:
    """The entries of the index at ``dest`` when it holds codes ``fp`` describes (None: there
    is none yet, or it is of other weights or settings and is rebuilt, with one line)."""
    manifest = read_manifest(dest)
    if manifest is None:
        return None
    if manifest.get("root") != root:
        raise NeuralCodesError(
            f"index {printable(dest.name)} holds the images of {printable(manifest.get('root'))}, "
            f"not {printable(root)}; choose another name (--name)")
    why = lineage.explain(manifest[lineage.KEY], fp)
    if why is None:
        try:
            return Entries.load(dest / data_file(int(manifest["generation"]), "entries"))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
                NeuralCodesError) as e:
            why = f"its file list is damaged ({e})"
    log.info(f"index {printable(dest.name)}: {why}: recomputing every image")
    return None


def _pending(dest: Path, digest: str) -> dict[bytes, tuple[Path, int, int]]:
    """Files coded by an interrupted run: name -> (segment, size, mtime); segments of other
    weights or settings are deleted."""
    found: dict[bytes, tuple[Path, int, int]] = {}
    for seg in sorted((dest / PENDING).glob("*.npz")):
        try:
            with np.load(seg) as f:
                ok = str(f[lineage.KEY]) == digest
                size, mtime = f["size"], f["mtime"]
                names = unpack_names(f["names"], len(size)) if ok else []
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, NeuralCodesError):
            ok = False
        if not ok:
            seg.unlink(missing_ok=True)
            continue
        for n, s, t in zip(names, size.tolist(), mtime.tolist(), strict=True):
            found[n] = (seg, s, t)
    return found


def _compute(r: TrainedRun, dest: Path, fp: dict[str, Any], transform: Transform, relu: bool,
             batch_size: int, progress: bool, todo: list[tuple[Path, bytes, os.stat_result]],
             update: IndexUpdate, sources: dict[bytes, tuple[str, Any]]) -> None:
    """Code ``todo`` batch by batch, each batch saved at once to ``pending/``."""
    if not todo:
        return
    folder = dest / PENDING
    folder.mkdir(parents=True, exist_ok=True)
    seq = 1 + max((int(p.stem) for p in folder.glob("*.npz") if p.stem.isdigit()), default=0)
    digest = lineage.digest(fp)
    with progress_bar(total=len(todo), unit="img", desc="index", disable=not progress,
                      leave=False) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            images, ok, failed = read_images([p for p, _, _ in batch])
            update.failed += failed
            if ok:
                done = {p for p in ok}
                kept = [(n, st) for p, n, st in batch if p in done]
                codes = extract_codes(r.model, images, tuple(transform.mean), relu,
                                      batch_size, None, r.precision, False)
                seg = folder / f"{seq:08d}.npz"
                _save_segment(seg, digest, kept, {k: transform.apply(k, v)
                                                  for k, v in codes.items()})
                seq += 1
                update.computed += len(kept)
                for n, _ in kept:
                    sources[n] = ("seg", seg)
            bar.update(len(batch))


def _save_segment(path: Path, digest: str, kept: list[tuple[bytes, os.stat_result]],
                  codes: dict[str, np.ndarray]) -> None:
    from neuralcodes.files import atomic_open

    with atomic_open(path, "wb") as f:
        np.savez(f, names=pack_names([n for n, _ in kept]),
                 size=np.array([st.st_size for _, st in kept], np.int64),
                 mtime=np.array([st.st_mtime_ns for _, st in kept], np.int64),
                 **{f"code{k}": v.astype(np.float16) for k, v in codes.items()},
                 **{lineage.KEY: np.str_(digest)})


@dataclass
class _Segment:
    """The files of one pending batch: row of each name, sizes, times."""

    rows: dict[bytes, int]
    size: np.ndarray
    mtime: np.ndarray

    @classmethod
    def read(cls, path: Path) -> _Segment:
        with np.load(path) as f:
            size, mtime = f["size"], f["mtime"]
            names = unpack_names(f["names"], len(size))
        return cls({n: j for j, n in enumerate(names)}, size, mtime)


def _write(dest: Path, fp: dict[str, Any], root: str, old: Entries | None,
           sources: dict[bytes, tuple[str, Any]], approx_min: int) -> None:
    """A new generation of the index (rows sorted by path), its manifest last; then the old
    generation and the pending batches are deleted."""
    manifest = read_manifest(dest)
    gen = 1 + (int(manifest["generation"]) if manifest else 0)
    order = sorted(sources)
    size = np.empty(len(order), np.int64)
    mtime = np.empty(len(order), np.int64)
    segments: dict[Path, _Segment] = {}
    for i, n in enumerate(order):
        kind, where = sources[n]
        if kind == "old":
            size[i], mtime[i] = old.size[where], old.mtime[where]
            continue
        if where not in segments:
            segments[where] = _Segment.read(where)
        seg = segments[where]
        j = seg.rows[n]
        size[i], mtime[i] = seg.size[j], seg.mtime[j]
    Entries(order, size, mtime).save(dest / data_file(gen, "entries"))
    dims = fp["settings"]["dims"]
    for layer in fp["settings"]["layers"]:
        path = dest / data_file(gen, "code", layer)
        _write_layer(path, layer, dims[layer], order, sources, segments,
                     dest / data_file(gen - 1, "code", layer) if old is not None else None)
        if len(order) >= approx_min:
            write_approx(dest / data_file(gen, "ivfpq", layer), path)
    write_manifest(dest, {lineage.KEY: fp, "root": root, "generation": gen,
                          "count": len(order)})
    for p in dest.glob("g*-*"):
        if not p.name.startswith(f"g{gen}-"):
            p.unlink(missing_ok=True)
    shutil.rmtree(dest / PENDING, ignore_errors=True)


def _write_layer(path: Path, layer: str, dims: int, order: list[bytes],
                 sources: dict[bytes, tuple[str, Any]], segments: dict[Path, _Segment],
                 old_path: Path | None) -> None:
    """One layer's codes of the new generation, block by block from the old generation and
    the pending batches (at most a few batches in memory at once)."""
    reader = RowReader(old_path) if old_path is not None else None
    loaded: dict[Path, np.ndarray] = {}
    step = 4096
    try:
        with row_writer(path, len(order), dims) as write:
            for a in range(0, len(order), step):
                block = np.empty((min(step, len(order) - a), dims), np.float16)
                olds = [(i, sources[n][1]) for i, n in enumerate(order[a:a + step])
                        if sources[n][0] == "old"]
                if olds:
                    block[[i for i, _ in olds]] = reader.rows(np.array([j for _, j in olds]))
                for i, n in enumerate(order[a:a + step]):
                    kind, seg = sources[n]
                    if kind == "seg":
                        if seg not in loaded:
                            if len(loaded) >= 4:  # batches come in path order: few are live
                                loaded.pop(next(iter(loaded)))
                            with np.load(seg) as f:
                                loaded[seg] = f[f"code{layer}"]
                        block[i] = loaded[seg][segments[seg].rows[n]]
                write(block)
    finally:
        if reader is not None:
            reader.close()
