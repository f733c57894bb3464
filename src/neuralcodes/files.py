"""Atomic file writes: a file either holds finished work or does not exist.

Everything that neuralcodes writes goes to a temporary file in the same directory first and is
renamed into place only when complete, so an interrupt or crash never leaves a half-written file
that looks finished, and the previous version stays whole until the rename. A failed write (disk
full, I/O error, torch's serialisation error) becomes one :class:`NeuralCodesError` line naming
the path and, for space, how much is needed. Temporary names start with ``.`` and contain
``.tmp``: :func:`remove_stale_temps` clears those a killed process left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from neuralcodes.errors import NeuralCodesError

TEMP_MARK = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Mode of every file written here: what ``open()`` would give (0o666 less the umask), rather than
#: mkstemp's private 0o600, so all of a run's files share one mode.
FILE_MODE = 0o666 & ~_umask()


def require_folder(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` for an output the user named (``what``, e.g. ``--figure``); its folder must
    exist, so a typo is refused before any work instead of creating folders silently."""
    path = Path(path).expanduser()
    folder = path.parent
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist"
        raise NeuralCodesError(f"{what} {path}: the folder {folder} {why} (create it first)")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "", size: int | None = None
                ) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    ``suffix`` keeps an extension on the temporary name for writers that look at it
    (``np.save`` appends ``.npy``, matplotlib picks the format from it). ``size``: about how
    many bytes the file will hold, if the caller knows, for the disk-full message.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_MARK + suffix,
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as e:
        raise write_error(path, tmp_path, e, size) from e
    finally:
        tmp_path.unlink(missing_ok=True)


def write_error(path: Path, tmp: Path, e: BaseException, size: int | None = None
                ) -> NeuralCodesError:
    """One line for a failed write of ``path``; ``tmp`` is the partial file (removed right
    after, so its bytes count as free) and ``size`` the file's expected size, if known (else
    the message says how far the write got). torch reports a full disk as a RuntimeError, so
    free space decides."""
    written = tmp.stat().st_size if tmp.exists() else 0
    free_now = shutil.disk_usage(path.parent).free if path.parent.exists() else None
    no_space = getattr(e, "errno", None) == errno.ENOSPC or (
        isinstance(e, RuntimeError) and free_now is not None
        and free_now < max(1 << 20, (size or 0) - written))
    if no_space:
        free = (free_now or 0) + written  # once the partial file is gone
        if size:
            amount = f"about {_amount(size)}"
        elif written:
            amount = f"more than {_amount(written)}, where the disk filled"
        else:
            amount = "more space"
        return NeuralCodesError(f"could not write {path}: no space left on device (it needs "
                                f"{amount}; {_mb(free)} MB free); the previous version, "
                                "if any, is unchanged")
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
    return NeuralCodesError(f"could not write {path}: {reason}")


def _amount(n: int) -> str:
    return f"{_mb(n)} MB" if n >= 2**20 else f"{max(n >> 10, 1)} KB"


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f}" if n >= 2**20 else f"{n / 2**20:.1f}"


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files of interrupted writes under ``folder`` (call only while no
    other process writes there, e.g. holding the run's lock); returns what was removed."""
    removed = []
    for p in Path(folder).rglob(f".*{TEMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", size: int | None = None,
                **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` only if the block succeeds
    (``size``: as :func:`atomic_path`)."""
    with atomic_path(path, size=size) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a corrupt one is a one-line error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NeuralCodesError(f"{path}: not valid JSON ({e})") from None


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
