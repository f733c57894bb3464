"""Tiny ImageNet (cs231n, Stanford): the course's dataset. 200 classes x 500 training images of
64x64, in the official archive's layout::

    [tiny-imagenet-200/]wnids.txt          the classes (WordNet ids)
                        words.txt          wnid<TAB>readable names (all of WordNet)
                        train/<wnid>/images/<wnid>_<i>.JPEG

The dataset root is the source itself or one folder below it (``tiny-imagenet-200/``). Only the
training images are used (the course splits them itself: :mod:`neuralcodes.data.splits`). An
image that is not 64x64 or does not decode is left out of the cache and listed in its manifest.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from neuralcodes.datasets.spec import (
    DatasetSpec,
    Item,
    Listing,
    Reader,
    Reject,
    RemoteFile,
)
from neuralcodes.errors import NeuralCodesError

if TYPE_CHECKING:
    import numpy as np

#: The official archive. The md5 is the value torchvision-style loaders check the same URL
#: against, e.g. ContinualAI/avalanche ``avalanche/benchmarks/datasets/tiny_imagenet``
#: (``md5 = "90528d7ca1a48142e341f4ef8d21d0de"``); the size is used only for the disk-space
#: check before downloading.
ARCHIVE = RemoteFile(filename="tiny-imagenet-200.zip",
                     url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                     md5="90528d7ca1a48142e341f4ef8d21d0de", size=248_100_043)
#: A Tiny ImageNet JPEG is a few KB; anything above this is refused as absurd.
MAX_IMAGE_BYTES = 1 << 20


def find_root(src: Reader) -> str | None:
    """The folder holding ``wnids.txt`` and ``train/``: the source itself or one level below."""
    for sub in ["", *(d + "/" for d in src.dirs_in(""))]:
        if src.is_file(sub + "wnids.txt") and "train" in src.dirs_in(sub):
            return sub
    return None


def listing(src: Reader) -> Listing:
    """The classes of ``wnids.txt`` (sorted), their ``words.txt`` names, and every file under
    ``train/<wnid>/images/``, class by class, files in lexicographic name order
    (``sorted(os.listdir(...))``: ``n…_0, n…_1, n…_10, n…_100``)."""
    text = src.read_text("wnids.txt")
    wnids = sorted({line.strip() for line in (text or "").splitlines() if line.strip()})
    if not wnids:
        raise NeuralCodesError(f"wrong layout: wnids.txt in {src.path} lists no classes")
    items = [Item(f"train/{wnid}/images/{name}", label) for label, wnid in enumerate(wnids)
             for name in src.files_in(f"train/{wnid}/images")]
    used = {it.label for it in items}
    empty = [w for label, w in enumerate(wnids) if label not in used]
    if empty:
        raise NeuralCodesError(f"wrong layout: no training images for {len(empty)} class(es) of "
                               f"wnids.txt, e.g. {empty[0]} (expected train/<wnid>/images/)")
    return Listing(wnids, read_names(src, wnids), items)


def read_names(src: Reader, wnids: list[str]) -> list[str]:
    """Class names from ``words.txt`` (``wnid<TAB>names``); a wnid missing there keeps its id."""
    wanted = set(wnids)
    names: dict[str, str] = {}
    for line in (src.read_text("words.txt") or "").splitlines():
        wnid, _, words = line.partition("\t")
        if wnid in wanted and words.strip():
            names[wnid] = words.strip()
    return [names.get(w, w) for w in wnids]


def decode(data: bytes) -> np.ndarray:
    """JPEG (or any Pillow format) bytes of a 64x64 image -> uint8 (64, 64, 3) RGB, or
    :class:`Reject` (another size, or not decodable)."""
    import numpy as np
    from PIL import Image

    from neuralcodes.imageio import IMAGE_SIZE

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise Reject(f"not {IMAGE_SIZE}x{IMAGE_SIZE} (is {im.size[0]}x{im.size[1]})")
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.asarray(rgb)
    except Reject:
        raise
    except Exception as e:  # Pillow raises many types for broken files
        raise Reject(f"cannot decode: {e}") from None


SPEC = DatasetSpec(
    name="tiny-imagenet", title="Tiny ImageNet",
    layout="the Tiny ImageNet layout (wnids.txt and train/<wnid>/images/, at the top or one "
           "folder below)",
    find_root=find_root, listing=listing, decode=decode, max_file_bytes=MAX_IMAGE_BYTES,
    meta_files=("wnids.txt", "words.txt"), remote=ARCHIVE, classes=200, images_per_class=500,
    course=True)
