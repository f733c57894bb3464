"""Download the official Tiny ImageNet archive: progress bar, HTTP Range resume, md5 check.

The file is downloaded to ``<dest>.part``, every block written out as it arrives; a cut or stalled
connection is resumed from the bytes already on disk (``Range: bytes=N-``), also across runs.
Only when the whole file is there *and* its md5 matches is it renamed onto ``dest``, so a file at
``dest`` has always passed the check.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from neuralcodes.errors import NeuralCodesError
from neuralcodes.progress import Bar
from neuralcodes.progress import bar as progress_bar

#: The official archive (cs231n, Stanford).
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
#: md5 of the official archive. Source: the value that torchvision-style loaders check the same
#: URL against, e.g. ContinualAI/avalanche ``avalanche/benchmarks/datasets/tiny_imagenet``
#: (``filename = ("tiny-imagenet-200.zip", "http://cs231n.stanford.edu/tiny-imagenet-200.zip")``,
#: ``md5 = "90528d7ca1a48142e341f4ef8d21d0de"``).
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
#: Its size in bytes (used only for the disk-space check before downloading).
TINY_IMAGENET_SIZE = 248_100_043

CHUNK = 1 << 20
_NETWORK_ERRORS = (http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError,
                   urllib.error.URLError)


def md5sum(path: str | os.PathLike[str], chunk: int = CHUNK) -> str:
    """The hex md5 of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike[str], md5: str | None, *, progress: bool = True,
             retries: int = 5, timeout: float = 60.0, backoff: float = 1.0) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), check ``md5``, then move into place.

    ``retries`` is the number of consecutive failed attempts (no new bytes) tolerated before
    giving up; every attempt resumes where the last one stopped. On an md5 mismatch the partial
    file is deleted and :class:`NeuralCodesError` raised; ``dest`` is never created then.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    bar = progress_bar(desc=f"download {dest.name}", unit="B", unit_scale=True,
                       unit_divisor=1024, disable=not progress)
    try:
        while True:
            have = part.stat().st_size if part.exists() else 0
            try:
                if _fetch(url, part, have, timeout, bar):
                    break
            except _NETWORK_ERRORS as e:
                got = part.stat().st_size if part.exists() else 0
                failures = 0 if got > have else failures + 1
                if failures > retries:
                    raise NeuralCodesError(
                        f"download of {url} failed after {retries} retries ({_reason(e)}); "
                        f"run again to resume from {got:,} bytes") from None
                time.sleep(backoff * min(failures, 5))
    finally:
        bar.close()
    if md5 is not None:
        got_md5 = md5sum(part)
        if got_md5 != md5.lower():
            part.unlink(missing_ok=True)
            raise NeuralCodesError(f"md5 mismatch for {url}: expected {md5}, got {got_md5} "
                                   "(the download was deleted; run again to retry)")
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, have: int, timeout: float, bar: Bar) -> bool:
    """One attempt: append the rest of the file to ``part``. True when the file is complete."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left past what we have: the file is complete
            return True
        raise NeuralCodesError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    with response:
        if response.status == 206:
            total = _total_from_content_range(response.headers.get("Content-Range"))
            mode = "ab"
        else:  # the server ignored the Range header: start over
            have, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length else None
        bar.total, bar.n = total, have
        bar.refresh()
        # read1: whatever has arrived (at most CHUNK), so a stall or a cut connection loses
        # nothing already received; each block is flushed into the file at once, so the next
        # attempt (or run, even after a kill) resumes from the exact byte
        with open(part, mode) as f:
            try:
                while block := response.read1(CHUNK):
                    f.write(block)
                    f.flush()
                    bar.update(len(block))
            finally:
                os.fsync(f.fileno())
    size = part.stat().st_size
    if total is not None and size < total:
        raise ConnectionError(f"connection closed at {size:,} of {total:,} bytes")
    return True


def _total_from_content_range(value: str | None) -> int | None:
    # "bytes 100-199/200" -> 200
    if value and "/" in value and not value.endswith("/*"):
        return int(value.rsplit("/", 1)[1])
    return None


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return str(e.reason)
    return str(e) or type(e).__name__
