"""Reading a Tiny ImageNet source: a zip (read in place with :mod:`zipfile`) or a folder.

The dataset root is the folder holding ``wnids.txt`` and ``train/``: the source itself or one
level below it (``tiny-imagenet-200/``). Archive members that would escape a target folder
(absolute paths, ``..``), links, and absurd sizes are refused; a member whose bytes disagree with
its recorded size or CRC is rejected like an undecodable image.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from neuralcodes.errors import NeuralCodesError

IMAGE_SHAPE = (64, 64, 3)
#: A Tiny ImageNet JPEG is a few KB; anything above this is refused as absurd.
MAX_IMAGE_BYTES = 1 << 20
#: wnids.txt / words.txt above this are refused as absurd (the official words.txt is 2.6 MB).
MAX_TEXT_BYTES = 64 << 20


class Reject(Exception):
    """A train file that cannot go into the cache; the message is the reason."""


@dataclass(frozen=True)
class Item:
    """One train image to decode: its path relative to the dataset root, and its class."""

    rel: str
    label: int


class Source:
    """A Tiny ImageNet source: a zip (read in place) or a folder, rooted at ``wnids.txt``."""

    def __init__(self, path: Path, kind: str, root: str,
                 archive: Archive | None = None) -> None:
        self.path = path  # the zip file or the folder the user named
        self.kind = kind  # "zip" | "folder"
        self.root = root  # zip: member prefix ("tiny-imagenet-200/" or ""); folder: "" or subdir
        self.archive = archive  # zip sources: the open archive
        self._members: dict[str, zipfile.ZipInfo] = {}

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
        """Check ``path`` and find the dataset root in it; clear errors for every bad case."""
        path = Path(path).expanduser()
        if not path.exists():
            raise NeuralCodesError(f"source not found: {path}")
        if path.is_dir():
            return cls._open_folder(path)
        if not zipfile.is_zipfile(path):
            if _starts_like_zip(path):
                raise NeuralCodesError(f"zip archive {path} is damaged or truncated (no central "
                                       "directory at its end); download it again")
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
            z = Archive(path)
        except zipfile.BadZipFile as e:
            raise NeuralCodesError(f"zip archive {path} is damaged or truncated ({e}); download "
                                   "it again") from None
        except OSError as e:
            raise NeuralCodesError(f"cannot read zip archive {path}: {e}") from None
        src = cls(path.resolve(), "zip", "", z)
        try:
            infos = z.infolist()
            for info in infos:
                check_member(info)
            names = {i.filename for i in infos}
            roots = sorted(n[: -len("wnids.txt")] for n in names
                           if n.count("/") <= 1 and n.rsplit("/", 1)[-1] == "wnids.txt")
            root = next((r for r in roots if any(n.startswith(r + "train/") for n in names)), None)
        except BaseException:
            src.close()
            raise
        if root is not None:
            src.root = root
            src._members = {i.filename[len(root):]: i for i in infos
                            if i.filename.startswith(root) and not i.is_dir()}
            return src
        src.close()
        raise NeuralCodesError(f"wrong layout: no wnids.txt and train/ at the top of {path} or "
                               "one level below it (expected the Tiny ImageNet layout)")

    # -- reading ------------------------------------------------------------------------------

    def read_text(self, rel: str) -> str | None:
        """A small text file of the dataset root (None if absent)."""
        if self.kind == "zip":
            if rel not in self._members:
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

    def train_items(self, wnids: Sequence[str]) -> list[Item]:
        """Every file under ``train/<wnid>/images/``, class by class (wnid order), files in
        lexicographic name order (``sorted(os.listdir(...))``: ``n…_0, n…_1, n…_10, n…_100``)."""
        items: list[Item] = []
        if self.kind == "zip":
            per_class: dict[str, list[str]] = {w: [] for w in wnids}
            for rel in self._members:
                parts = rel.split("/")
                if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" \
                        and parts[1] in per_class and parts[3]:
                    per_class[parts[1]].append(rel)
            for label, wnid in enumerate(wnids):
                items += [Item(rel, label) for rel in sorted(per_class[wnid])]
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
            items += [Item(f"train/{wnid}/images/{name}", label) for name in sorted(names)]
        return items

    def checksum(self, items: Sequence[Item]) -> str:
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


def read_wnids(src: Source) -> list[str]:
    """The classes of ``wnids.txt``, sorted."""
    text = src.read_text("wnids.txt")
    wnids = sorted({line.strip() for line in (text or "").splitlines() if line.strip()})
    if not wnids:
        raise NeuralCodesError(f"wrong layout: wnids.txt in {src.path} lists no classes")
    return wnids


def read_names(src: Source, wnids: Sequence[str]) -> list[str]:
    """Class names from ``words.txt`` (``wnid<TAB>names``); a wnid missing there keeps its id."""
    wanted = set(wnids)
    names: dict[str, str] = {}
    for line in (src.read_text("words.txt") or "").splitlines():
        wnid, _, words = line.partition("\t")
        if wnid in wanted and words.strip():
            names[wnid] = words.strip()
    return [names.get(w, w) for w in wnids]


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


def decode(data: bytes) -> np.ndarray:
    """JPEG (or any Pillow format) bytes -> uint8 (64, 64, 3) RGB, or :class:`Reject`."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != IMAGE_SHAPE[1::-1]:
                raise Reject(f"not 64x64 (is {im.size[0]}x{im.size[1]})")
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.asarray(rgb)
    except Reject:
        raise
    except Exception as e:  # Pillow raises many types for broken files
        raise Reject(f"cannot decode: {e}") from None
