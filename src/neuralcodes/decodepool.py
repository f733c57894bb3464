"""Decode untrusted images in worker processes that can be killed: a decode's CPU work really
stops at its time limit, or when the caller gives up (e.g. the web client hung up).

:class:`DecodePool` keeps up to ``workers`` processes, started on first use from a fork server
that has already imported :mod:`neuralcodes.imageio` (so a replacement starts in milliseconds,
not the seconds a fresh interpreter takes) and reused for every job: a normal decode costs one
round trip through a pipe on top of the decoding itself. A worker that runs past ``timeout_s``,
or whose job is cancelled, is killed (SIGKILL) and replaced; a worker that dies by itself (a
crash in a native decoder, the OOM killer) costs only that job. Workers run at a lower CPU
priority (``nice``) than the process that serves requests.

The pool does not limit how many jobs run at once beyond ``workers``: callers hold a slot first
(e.g. :class:`neuralcodes.web.security.DecodeLimiter`); a job that finds no idle worker starts
one more.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from neuralcodes.errors import NeuralCodesError

log = logging.getLogger(__name__)

#: Modules the fork server imports once, so that forked workers start ready.
PRELOAD = ["neuralcodes.imageio"]
#: How often a waiting job checks its cancel flag.
POLL_S = 0.02
#: The longest a new worker may take to start (the fork server's first start imports NumPy
#: and Pillow).
START_TIMEOUT_S = 60.0


class DecodeTimeout(NeuralCodesError):
    """A job ran past the pool's time limit; its worker was killed."""


class DecodeCancelled(NeuralCodesError):
    """A job was cancelled by its caller; its worker was killed."""


class WorkerFailed(NeuralCodesError):
    """A worker died during a job (a crash or the OOM killer), or a job raised something that is
    not a :class:`NeuralCodesError`."""


def _serve(conn: Connection, nice: int) -> None:
    """A worker's loop: run ``(func, args, kwargs)`` jobs, answer ``("ok", result)``,
    ``("error", exception)`` for a :class:`NeuralCodesError`, or ``("failed", text)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the server, which kills us
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            func, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[str, Any] = ("ok", func(*args, **kwargs))
        except NeuralCodesError as e:
            reply = ("error", e)
        except Exception as e:  # noqa: BLE001  (reported to the caller as a failure)
            reply = ("failed", f"{type(e).__name__}: {e}")
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


class _Worker:
    def __init__(self, ctx: Any, nice: int) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, nice), daemon=True,
                                   name="neuralcodes-decode")
        self.process.start()
        child.close()
        # the job's time limit starts once the worker is ready, not while it starts
        if not self.conn.poll(START_TIMEOUT_S):
            self.kill()
            raise WorkerFailed(f"a decoder process did not start within {START_TIMEOUT_S} s")
        self.conn.recv()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class DecodePool:
    """Worker processes for decoding (see the module doc). ``run(func, *args, **kwargs)`` runs
    ``func`` (a module-level function) in a worker and returns its result; a
    :class:`NeuralCodesError` it raises is raised again here (pickled as is)."""

    def __init__(self, workers: int = 2, timeout_s: float = 10.0, nice: int = 5) -> None:
        if workers < 1 or timeout_s <= 0:
            raise ValueError("a decode pool needs at least one worker and a positive time limit")
        self.workers = workers
        self.timeout_s = timeout_s
        self.nice = nice
        self._ctx = multiprocessing.get_context("forkserver")
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.started = 0  #: workers started so far
        self.killed = 0  #: workers killed at the time limit or on cancel
        self.timeouts = 0  #: jobs stopped at the time limit

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("the decode pool is closed")
            while self._idle:
                worker = self._idle.pop()
                if worker.process.is_alive():
                    self._busy.add(worker)
                    return worker
                worker.kill()
            if not self.started:
                self._ctx.set_forkserver_preload(PRELOAD)
            self.started += 1
        worker = _Worker(self._ctx, self.nice)
        with self._lock:
            self._busy.add(worker)
        return worker

    def _give_back(self, worker: _Worker, keep: bool) -> None:
        with self._lock:
            self._busy.discard(worker)
            if keep and not self._closed and len(self._idle) < self.workers:
                self._idle.append(worker)
                return
        worker.kill()

    def run(self, func: Callable[..., Any], *args: Any, cancel: threading.Event | None = None,
            timeout_s: float | None = None, **kwargs: Any) -> Any:
        """``func(*args, **kwargs)`` in a worker, stopped (the worker killed) after
        ``timeout_s`` (default: the pool's) or as soon as ``cancel`` is set."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        worker = self._take()
        keep = False
        try:
            deadline = time.monotonic() + limit
            try:
                worker.conn.send((func, args, kwargs))
                while not worker.conn.poll(min(POLL_S, max(deadline - time.monotonic(), 0))):
                    if cancel is not None and cancel.is_set():
                        self.killed += 1
                        raise DecodeCancelled("the decode was cancelled")
                    if time.monotonic() >= deadline:
                        self.killed += 1
                        self.timeouts += 1
                        raise DecodeTimeout(f"decoding took longer than {limit:g} s")
                status, value = worker.conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                code = worker.process.exitcode
                raise WorkerFailed("the decoder process died" + (
                    f" (signal {-code})" if code is not None and code < 0 else "")) from None
            keep = True
        finally:
            self._give_back(worker, keep)
        if status == "ok":
            return value
        if status == "error":
            raise value
        raise WorkerFailed(f"the decoder failed ({value})")

    def warm(self) -> None:
        """Start the workers now (a server calls this at start-up, so that the first upload
        does not wait for the fork server)."""
        with self._lock:
            missing = self.workers - len(self._idle) - len(self._busy)
        for _ in range(max(missing, 0)):
            self._give_back(self._take(), keep=True)

    def close(self) -> None:
        """Kill every worker (running jobs end with :class:`WorkerFailed`)."""
        with self._lock:
            self._closed = True
            workers = self._idle + list(self._busy)
            self._idle = []
        for worker in workers:
            worker.kill()

    def pids(self) -> list[int]:
        """The process ids of the live workers (for memory measurements)."""
        with self._lock:
            return [w.process.pid for w in self._idle + list(self._busy)
                    if w.process.pid is not None and w.process.is_alive()]
