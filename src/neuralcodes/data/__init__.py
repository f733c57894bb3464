"""Tiny ImageNet: get it, decode it once into a compact cache, and split it as the assignment says.

Pipeline (``neuralcodes prepare``):

1. **Source** (:mod:`.download`, :mod:`.source`). The official archive (downloaded once into
   ``<cache>/downloads/``, resumable, md5-checked; from ``data.url``/``--url``, else
   ``$NEURALCODES_URL``, else cs231n), or ``--data``: a zip or an extracted folder.
   The dataset root is the folder holding ``wnids.txt`` and ``train/`` — the source itself or one
   level below it (``tiny-imagenet-200/``). JPEGs are read straight from the zip (no extraction).
   Archive members that would escape a target folder (absolute paths, ``..``), links, and absurd
   sizes are refused.
2. **Cache** (:mod:`.cache`). Every ``train/<wnid>/images/*`` file is decoded exactly once, in
   parallel, into ``<cache>/tiny-imagenet-<key>/``:

   - ``images.npy``: uint8 ``(N, 64, 64, 3)``, memory-mappable; greyscale is converted to RGB;
   - ``labels.npy``: int64 class index into ``wnids`` (sorted);
   - ``classes.json``: ``wnids`` and human-readable ``names`` (``words.txt``);
   - ``paths.json``: each image's path relative to the dataset root;
   - ``manifest.json``: format version, source checksum, counts per class, rejected files, the
     default splits' hash and sizes;
   - ``splits/<hash>.npz``: split indices saved by :meth:`Splits.save`.

   A file that does not decode or is not 64x64 is left out *and reported* (logged, and listed
   by name in the manifest). ``<key>`` hashes the source's content (zip: every member's name,
   CRC and size; folder: every file's path, size and mtime) and the cache format: the same
   source is never decoded twice, a different one gets its own cache.
3. **Splits** (:mod:`.splits`; of a loaded dataset :mod:`.partition`, :func:`make_splits`):
   the course notebook's partition, exactly: classes sorted by wnid, files lexicographic, the
   last ``ood_classes`` (default 10) out-of-domain; ``RandomState(seed)`` (default 42) permutes
   the in-domain images, val = the first 10%, test = the next 10%, train = the rest; the next
   permutation of the same stream orders the ood set. :func:`write_splits_csv` writes the
   partition as CSV.
"""

from neuralcodes.data.cache import (
    FORMAT_VERSION,
    Dataset,
    default_cache_dir,
    fetch_official,
    prepare,
    prepare_cache,
)
from neuralcodes.data.partition import load_data, make_splits, summary, write_splits_csv
from neuralcodes.data.splits import Splits

__all__ = ["FORMAT_VERSION", "Dataset", "Splits", "default_cache_dir", "fetch_official",
           "load_data", "make_splits", "prepare", "prepare_cache", "summary", "write_splits_csv"]
