"""A labelled image folder: your own classes, one subfolder per class::

    my_folder/cats/IMG_0001.jpg
    my_folder/cats/...
    my_folder/dogs/photo.png

Classes are the subfolders (sorted by name; hidden ones skipped), named by their folder names;
a class's images are the image files directly in its folder (by suffix, any case: see
:data:`IMAGE_SUFFIXES`; other files are ignored). Images of any size and common format are
decoded and resized to the model's 64x64 input by the same bounded decoder as your own images
in ``index``/``search`` (:func:`neuralcodes.imageio.decode_image`: EXIF orientation applied,
transparency on white, squeezed to a square). A file that cannot be read ends the build with one
line naming it: remove or replace it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from neuralcodes.datasets.spec import DatasetSpec, Item, Listing, Reader, Reject
from neuralcodes.errors import NeuralCodesError

if TYPE_CHECKING:
    import numpy as np

#: The file suffixes taken as images (in a labelled folder, and by ``neuralcodes index``).
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
#: A larger image file is refused unread (a 50-megapixel 16-bit PNG is about 300 MB).
MAX_FILE_BYTES = 512 << 20


def is_image_name(name: str) -> bool:
    """Whether a file name is taken as an image (by its suffix; hidden files are not)."""
    return not name.startswith(".") and "." in name and \
        "." + name.rsplit(".", 1)[1].lower() in IMAGE_SUFFIXES


def _class_dirs(src: Reader) -> list[str]:
    return [d for d in src.dirs_in("") if not d.startswith(".")]


def find_root(src: Reader) -> str | None:
    """The folder itself, when one of its subfolders holds an image file."""
    if any(is_image_name(f) for d in _class_dirs(src) for f in src.files_in(d)):
        return ""
    return None


def listing(src: Reader) -> Listing:
    """The subfolders as classes (sorted) and their image files (sorted by name)."""
    classes = _class_dirs(src)
    items: list[Item] = []
    for label, name in enumerate(classes):
        files = [f for f in src.files_in(name) if is_image_name(f)]
        if not files:
            raise NeuralCodesError(
                f"class folder {src.path / name} holds no images (files ending in "
                f"{', '.join(sorted(IMAGE_SUFFIXES))}): add images to it or remove it")
        items += [Item(f"{name}/{f}", label) for f in files]
    return Listing(classes, list(classes), items)


def read_image(source: bytes | str | Path | BinaryIO) -> np.ndarray:
    """An image (bytes, a path or a binary file) of any size and common format as uint8
    (64, 64, 3) RGB, decoded by :func:`neuralcodes.imageio.decode_image` (the one place user
    images are decoded) with the limits of the user's own files: the images of a labelled
    folder, of ``neuralcodes index`` and ``search`` queries.

    The resize does not keep the aspect ratio (a non-square image is squeezed): index images,
    search queries and web uploads are all treated so, and the result has the training images'
    size."""
    from neuralcodes import imageio

    return imageio.decode_image(source, size=imageio.IMAGE_SIZE, formats=None,
                                max_pixels=imageio.LOCAL_MAX_PIXELS,
                                max_decode_bytes=imageio.LOCAL_MAX_DECODE_BYTES)[0]


def decode(data: bytes) -> np.ndarray:
    """One image file's bytes -> :func:`read_image`, or :class:`Reject` with the reason."""
    try:
        return read_image(data)
    except NeuralCodesError as e:  # imageio.ImageRejected: its reason is one line
        raise Reject(getattr(e, "reason", str(e))) from None
    except Exception as e:  # noqa: BLE001  (anything else a broken file may raise)
        raise Reject(f"cannot decode: {e}") from None


SPEC = DatasetSpec(
    name="image-folder", title="labelled image folder",
    layout="a labelled image folder (one subfolder of images per class)",
    find_root=find_root, listing=listing, decode=decode, max_file_bytes=MAX_FILE_BYTES,
    strict=True, zip_ok=False)
