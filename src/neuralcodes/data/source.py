"""Reading a dataset source: a zip (read in place with :mod:`zipfile`) or a folder.

:func:`open_dataset` opens a source and finds a registered dataset's layout in it
(:mod:`neuralcodes.datasets`); the :class:`Source` then reads files relative to that
dataset's root. Archive members that would escape a target folder (absolute paths, ``..``),
links, and absurd sizes are refused; a member whose bytes disagree with its recorded size or CRC
is rejected like an undecodable image.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neuralcodes import datasets as registry
from neuralcodes.datasets.spec import DatasetSpec, Item, Reject
from neuralcodes.errors import NeuralCodesError

#: wnids.txt / words.txt above this are refused as absurd (the official words.txt is 2.6 MB).
MAX_TEXT_BYTES = 64 << 20


class Source:
    """A dataset source: a zip (read in place) or a folder; paths are relative to ``root``."""

    def __init__(self, path: Path, kind: str, archive: Archive | None = None) -> None:
        self.path = path  # the zip file or the folder the user named
        self.kind = kind  # "zip" | "folder"
        self.root = ""  # the dataset root inside the source: "" or "sub/" (set by the layout)
        self.archive = archive  # zip sources: the open archive
        self._members: dict[str, zipfile.ZipInfo] = {}  # zip: every file member by full name
        self._dirs: set[str] = set()  # zip: every folder that holds a member ("a/b/")

    def close(self) -> None:
        """Close the archive (zip sources)."""
        if self.archive is not None:
            self.archive.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def root_path(self) -> Path:
        """The dataset root folder (folder sources only)."""
        return self.path / self.root if self.root else self.path

    @classmethod
    def open(cls, path: str | Path) -> Source:
        """Check ``path`` is a folder or a sound zip; clear errors for every bad case."""
        path = Path(path).expanduser()
        if not path.exists():
            raise NeuralCodesError(f"source not found: {path}")
        if path.is_dir():
            return cls(path.resolve(), "folder")
        if not zipfile.is_zipfile(path):
            if _starts_like_zip(path):
                raise NeuralCodesError(f"zip archive {path} is damaged or truncated (no central "
                                       "directory at its end); download it again")
            raise NeuralCodesError(f"source is neither a zip archive nor a folder: {path}")
        return cls._open_zip(path)

    @classmethod
    def _open_zip(cls, path: Path) -> Source:
        try:
            z = Archive(path)
        except zipfile.BadZipFile as e:
            raise NeuralCodesError(f"zip archive {path} is damaged or truncated ({e}); download "
                                   "it again") from None
        except OSError as e:
            raise NeuralCodesError(f"cannot read zip archive {path}: {e}") from None
        src = cls(path.resolve(), "zip", z)
        try:
            for info in z.infolist():
                check_member(info)
                if not info.is_dir():
                    src._members[info.filename] = info
                parts = info.filename.split("/")[:-1]
                src._dirs.update("/".join(parts[:k]) + "/" for k in range(1, len(parts) + 1))
        except BaseException:
            src.close()
            raise
        return src

    # -- reading, relative to the dataset root --------------------------------------------------

    def is_file(self, rel: str) -> bool:
        """Whether ``rel`` is a file of the source."""
        if self.kind == "zip":
            return self.root + rel in self._members
        return (self.root_path / rel).is_file()

    def dirs_in(self, rel: str) -> list[str]:
        """The sub-folders of folder ``rel`` ("" the root), sorted; [] when it does not exist."""
        if self.kind == "zip":
            base = self.root + (rel.rstrip("/") + "/" if rel else "")
            return sorted({d[len(base):].split("/")[0] for d in self._dirs
                           if d.startswith(base) and d != base})
        folder = self.root_path / rel
        if not folder.is_dir():
            return []
        return sorted(e.name for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))

    def files_in(self, rel: str) -> list[str]:
        """The files directly in folder ``rel``, sorted by name (``sorted(os.listdir())``);
        [] when it does not exist. A link in a folder source is refused."""
        if self.kind == "zip":
            base = self.root + rel.rstrip("/") + "/"
            return sorted(n[len(base):] for n in self._members
                          if n.startswith(base) and "/" not in n[len(base):])
        folder = self.root_path / rel
        if not folder.is_dir():
            return []
        names = []
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_symlink():
                    raise NeuralCodesError(f"refusing link in source: {entry.path}")
                if entry.is_file():
                    names.append(entry.name)
        return sorted(names)

    def read_text(self, rel: str) -> str | None:
        """A small text file of the dataset root (None if absent)."""
        if self.kind == "zip":
            if self.root + rel not in self._members:
                return None
            assert self.archive is not None
            try:
                raw = read_member(self.archive, self.root + rel, MAX_TEXT_BYTES)
            except Reject as e:
                raise NeuralCodesError(f"cannot read {rel} in {self.path}: {e}") from None
            return raw.decode("utf-8", errors="replace")
        p = self.root_path / rel
        if not p.is_file():
            return None
        if p.stat().st_size > MAX_TEXT_BYTES:
            raise NeuralCodesError(f"refusing {p}: absurd size ({p.stat().st_size:,} bytes)")
        return p.read_text(encoding="utf-8", errors="replace")

    def checksum(self, items: Sequence[Item], meta_files: Sequence[str] = ()) -> str:
        """A content fingerprint: zip: all members' names, CRCs and sizes below the root;
        folder: the ``meta_files`` and used files' paths, sizes and modification times."""
        h = hashlib.sha256(f"{self.kind}\0".encode())  # not the root's name: same content, same key
        if self.kind == "zip":
            for name in sorted(n for n in self._members if n.startswith(self.root)):
                i = self._members[name]
                h.update(f"{name[len(self.root):]}\0{i.CRC}\0{i.file_size}\n".encode())
            return h.hexdigest()
        for rel in [*meta_files, *(it.rel for it in items)]:
            p = self.root_path / rel
            if p.exists():
                st = p.stat()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def checksum_method(self) -> str:
        """How :meth:`checksum` is computed, in words (recorded in the manifest)."""
        return ("sha256 of member names, CRC32s and sizes" if self.kind == "zip"
                else "sha256 of file paths, sizes and mtimes")

    def describe(self) -> dict[str, Any]:
        """How the manifest records this source."""
        return {"path": str(self.path), "kind": self.kind, "root": self.root}


def open_dataset(path: str | Path, dataset: str = "auto") -> tuple[Source, DatasetSpec]:
    """Open ``path`` and find the layout of ``dataset`` in it (``auto``: the first registered
    dataset whose layout it has); the source's root is set to the dataset's root."""
    src = Source.open(path)
    try:
        specs = registry.specs() if dataset == "auto" else [registry.get(dataset)]
        for spec in specs:
            if src.kind == "zip" and not spec.zip_ok:
                continue
            root = spec.find_root(src)
            if root is not None:
                src.root = root
                return src, spec
    except BaseException:
        src.close()
        raise
    src.close()
    where = "at the top of" if src.kind == "zip" else "in"
    raise NeuralCodesError(f"wrong layout {where} {src.path}: expected "
                           + " or ".join(s.layout for s in specs if src.kind == "folder"
                                         or s.zip_ok))


class _PositionalFile(io.RawIOBase):
    """A read-only file whose position lives in this object and whose reads are ``os.pread``:
    a copy in a forked process shares the descriptor but never the position, so decoding
    workers can read an archive the parent opened (and parsed) once."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self._size - self._pos)
        data = os.pread(self._fd, n, self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class Archive(zipfile.ZipFile):
    """A zip archive opened for reading, safe to keep using in forked worker processes."""

    def __init__(self, path: str | Path) -> None:
        self._positional = _PositionalFile(Path(path))
        try:
            super().__init__(self._positional)
        except BaseException:
            self._positional.close()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._positional.close()


def _starts_like_zip(path: Path) -> bool:
    """Whether ``path`` begins with a zip record signature (a local file header, or the
    end-of-directory record of an empty archive): a zip whose end is missing still does."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


def check_member(info: zipfile.ZipInfo) -> None:
    """Refuse members that could escape an extraction folder, links, and absurd sizes."""
    name = info.orig_filename  # before zipfile's own clean-up of "/" and drive letters
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise NeuralCodesError(f"refusing unsafe archive member (escapes the target): {name!r}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise NeuralCodesError(f"refusing link in archive: {name!r}")
    if info.file_size > 4 * MAX_TEXT_BYTES:
        raise NeuralCodesError(f"refusing archive member of absurd size: {name!r} "
                               f"({info.file_size:,} bytes)")


# --------------------------------------------------------------------------------------------
# One image's bytes and pixels (called in the decoding workers)


def read_member(z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """One archive member's bytes, at most ``limit`` of them; its size and CRC are checked (a
    member whose data disagrees with its directory entry is :class:`Reject`-ed)."""
    try:
        info = z.getinfo(name)
    except KeyError:
        raise Reject("missing from the archive") from None
    if info.file_size > limit or info.compress_size > limit:
        raise Reject(f"absurd size ({info.file_size:,} bytes)")
    try:
        with z.open(info) as f:
            data = f.read(limit + 1)  # zipfile stops at the recorded size and checks the CRC
    except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError, ValueError) as e:
        raise Reject(f"corrupt zip entry: {e}") from None
    if len(data) != info.file_size:
        raise Reject("corrupt zip entry (size mismatch)")
    return data


def read_file(path: Path, limit: int) -> bytes:
    """A file's bytes, or :class:`Reject` when it is unreadable or above ``limit`` bytes."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise Reject(f"absurd size ({size:,} bytes)")
        return path.read_bytes()
    except OSError as e:
        raise Reject(f"unreadable: {e.strerror or e}") from None
