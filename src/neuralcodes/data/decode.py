"""Decoding the train images into ``images.npy``: in worker processes (or in-process for small
sources), each writing its decoded rows straight into the file, so memory stays far below the
array. The file is created with :func:`numpy.lib.format.open_memmap` and reserved on disk up
front; rejected rows are compacted away in place afterwards.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np

from neuralcodes import datasets as registry
from neuralcodes.data.dataset import IMAGE_SHAPE
from neuralcodes.data.source import Archive, Source, read_file, read_member
from neuralcodes.datasets.spec import DatasetSpec, Item, Reject
from neuralcodes.errors import NeuralCodesError
from neuralcodes.progress import bar as progress_bar

ROW_BYTES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
CHUNK_IMAGES = 512  # images per worker task
SERIAL_BELOW = 2000  # fewer images than this: decode in-process (a pool costs more than it saves)

_WORKER: dict[str, Any] = {}


def _worker_init(src_path: str, kind: str, root: str, dataset: str, out_path: str,
                 offset: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up
    if not _WORKER:  # not forked from the parent (which set it up): open the source here
        _WORKER.update(src=Path(src_path), root=root, spec=registry.get(dataset), out=out_path,
                       offset=offset, zip=Archive(src_path) if kind == "zip" else None)


def decode_chunk(task: tuple[int, list[Item]]) -> list[tuple[int, str]]:
    """Decode ``items`` into rows ``start...`` of the output file; return (row, reason) rejects."""
    start, items = task
    buf = np.zeros((len(items), *IMAGE_SHAPE), np.uint8)
    rejects = []
    z: Archive | None = _WORKER["zip"]
    spec: DatasetSpec = _WORKER["spec"]
    for k, item in enumerate(items):
        rel = _WORKER["root"] + item.rel  # the member's name, or the path below the folder
        try:
            raw = (read_member(z, rel, spec.max_file_bytes) if z is not None
                   else read_file(_WORKER["src"] / rel, spec.max_file_bytes))
            buf[k] = spec.decode(raw)
        except Reject as e:
            rejects.append((start + k, str(e)))
    fd = os.open(_WORKER["out"], os.O_WRONLY)
    try:
        os.pwrite(fd, memoryview(buf).cast("B"), _WORKER["offset"] + start * ROW_BYTES)
    finally:
        os.close(fd)
    return rejects


def decode_all(src: Source, spec: DatasetSpec, items: list[Item], out: Path, offset: int, *,
               workers: int | None, progress: bool) -> list[tuple[int, str]]:
    """Decode ``items`` of ``src`` with ``spec``'s decoder into the rows of ``out``; returns
    the (row, reason) of each file that could not be decoded."""
    tasks = [(s, items[s: s + CHUNK_IMAGES]) for s in range(0, len(items), CHUNK_IMAGES)]
    processes = n_workers(workers, len(items))
    args = (str(src.path), src.kind, src.root, spec.name, str(out), offset)
    rejects: list[tuple[int, str]] = []
    # forked workers inherit this (and the archive the parent already opened and parsed)
    _WORKER.update(src=src.path, root=src.root, spec=spec, out=str(out), offset=offset,
                   zip=src.archive)
    try:
        with progress_bar(total=len(items), desc="decode images", unit="img",
                  disable=not progress) as bar:
            if processes == 1:
                for task in tasks:
                    rejects += decode_chunk(task)
                    bar.update(len(task[1]))
            else:
                # Ctrl-C is held back while the workers are forked: there it could be swallowed
                # by fork handlers or orphan a worker; inside `with pool` it shuts the pool down
                held = _HeldInterrupts()
                try:
                    pool = multiprocessing.get_context().Pool(processes, _worker_init, args)
                except BaseException:
                    held.release(deliver=False)
                    raise
                with pool:
                    held.release()
                    for task, got in zip(tasks, pool.imap(decode_chunk, tasks), strict=True):
                        rejects += got
                        bar.update(len(task[1]))
    finally:
        _WORKER.clear()
    return sorted(rejects)


class _HeldInterrupts:
    """Ctrl-C noted instead of raised (main thread only) until :meth:`release`, which then
    hands a noted one to the previous handler (normally: KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.noted = False
        self.old: Any = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.noted = True

    def release(self, deliver: bool = True) -> None:
        if self.old is None:
            return
        old, self.old = self.old, None
        signal.signal(signal.SIGINT, old)
        if deliver and self.noted:
            if callable(old):
                old(signal.SIGINT, None)
            elif old == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)


def n_workers(workers: int | None, n: int) -> int:
    """How many decoding processes to use for ``n`` images (``workers``: the user's choice)."""
    if workers is not None:
        if workers < 1:
            raise NeuralCodesError(f"--workers must be at least 1 (got {workers})")
        return workers
    return 1 if n < SERIAL_BELOW else max(1, min(os.cpu_count() or 1, 8))


def allocate_images(path: Path, n: int) -> int:
    """Create ``images.npy`` for ``n`` rows, reserved on disk (ENOSPC up front); returns the
    byte offset of row 0."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *IMAGE_SHAPE))
    offset = int(mm.offset)
    del mm
    if hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, offset + n * ROW_BYTES)
        finally:
            os.close(fd)
    return offset


def _npy_header(n: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "|u1", "fortran_order": False, "shape": (n, *IMAGE_SHAPE)})
    return buf.getvalue()


def compact_images(path: Path, offset: int, keep: np.ndarray) -> None:
    """Drop the rows where ``keep`` is False, in place, and rewrite the header's row count
    (numpy pads the header so a smaller row count fits in the same bytes)."""
    header = _npy_header(int(keep.sum()))
    if len(header) != offset:
        raise RuntimeError(f"numpy header changed length ({len(header)} != {offset})")
    fd = os.open(path, os.O_RDWR)
    try:
        dst = int(np.argmin(keep))  # first dropped row
        src, n = dst, len(keep)
        while src < n:
            if not keep[src]:
                src += 1
                continue
            end = src
            while end < n and keep[end] and end - src < 4096:
                end += 1
            block = os.pread(fd, (end - src) * ROW_BYTES, offset + src * ROW_BYTES)
            os.pwrite(fd, block, offset + dst * ROW_BYTES)
            dst += end - src
            src = end
        os.pwrite(fd, header, 0)
        os.ftruncate(fd, offset + dst * ROW_BYTES)
    finally:
        os.close(fd)
