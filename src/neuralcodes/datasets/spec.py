"""What a dataset module declares (scikit-learn's datasets are the model: one module per dataset
with its remote-file metadata): :class:`DatasetSpec`, with the :class:`RemoteFile` it may be
downloaded from. The registry of specs is :mod:`neuralcodes.datasets`.

A spec says how to find its layout in a source (a zip read in place or a folder:
:class:`~neuralcodes.data.source.Source`, seen here only through the :class:`Reader` methods a
layout uses), how to list its classes and images, and how to decode one image file into the
uint8 RGB of the cache, at the model's input size (``neuralcodes.imageio.IMAGE_SIZE``). This
module imports nothing heavy: the configuration reads the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

class Reject(Exception):
    """An image file that cannot go into the cache; the message is the reason."""


@dataclass(frozen=True)
class Item:
    """One image to decode: its path relative to the dataset root, and its class."""

    rel: str
    label: int


@dataclass(frozen=True)
class RemoteFile:
    """A file a dataset can be downloaded as (its name, address, md5 and size in bytes)."""

    filename: str
    url: str
    md5: str
    size: int


@dataclass(frozen=True)
class Listing:
    """A dataset's classes (ids sorted, their readable names) and its images, class by class
    (class order), files in lexicographic name order within a class."""

    classes: list[str]
    names: list[str]
    items: list[Item]


class Reader(Protocol):
    """What a layout reads of a source (paths relative to its dataset root, ``/``-separated)."""

    path: Path  # the zip or folder the user named
    kind: str  # "zip" | "folder"
    root: str  # the dataset root inside the source: "" or "sub/"

    def read_text(self, rel: str) -> str | None: ...
    def is_file(self, rel: str) -> bool: ...
    def dirs_in(self, rel: str) -> list[str]: ...
    def files_in(self, rel: str) -> list[str]: ...


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its name (the registry key, ``data.dataset``, the cache folder's prefix),
    where it comes from and how it is read."""

    name: str
    title: str  #: how reports and messages name it, e.g. "Tiny ImageNet"
    layout: str  #: what a source must look like, for messages
    #: the dataset root inside an opened source ("" or "sub/"), None: not this layout
    find_root: Callable[[Reader], str | None]
    listing: Callable[[Reader], Listing]
    #: one file's bytes -> uint8 (64, 64, 3) RGB, or :class:`Reject`
    decode: Callable[[bytes], np.ndarray]
    max_file_bytes: int  #: a larger file is refused as absurd, unread
    #: small files beside the images that :attr:`listing` reads (part of the folder checksum)
    meta_files: tuple[str, ...] = ()
    remote: RemoteFile | None = None  #: where it is downloaded from when no source is given
    classes: int | None = None  #: the remote file's classes (for a plan before downloading)
    images_per_class: int | None = None  #: fixed by the dataset, else None
    #: the course's reference results are for this dataset (like for like when its protocol is)
    course: bool = False
    #: an image that does not decode ends the build with one line (True), or is left out and
    #: listed in the manifest (False: a known archive with a few broken files)
    strict: bool = False
    zip_ok: bool = True  #: may come as a zip (read in place)
