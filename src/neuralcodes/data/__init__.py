"""Datasets: get one, decode it once into a compact cache, and split it as the assignment says.

A dataset is one module of :mod:`neuralcodes.datasets` declaring a
:class:`~neuralcodes.datasets.spec.DatasetSpec` (its layout, listing, decoder and, for an
archive, the remote file), registered there by name (the configuration reads the registry
without importing this package, which reads the configuration):

- ``tiny-imagenet`` (:mod:`neuralcodes.datasets.tinyimagenet`): the course's dataset, the
  official archive (or any zip/folder in its layout);
- ``image-folder`` (:mod:`neuralcodes.datasets.imagefolder`): a labelled image folder, one
  subfolder per class, any image sizes and formats (decoded by the bounded decoder of user
  images).

Pipeline (``neuralcodes prepare``):

1. **Source** (:mod:`.download`, :mod:`.source`). Without ``--data``, the default dataset's
   archive (downloaded once into ``<cache>/downloads/``, resumable, md5-checked; from
   ``data.url``/``--url``, else ``$NEURALCODES_URL``, else cs231n); with ``--data``, a zip or a
   folder, read as ``data.dataset`` (``auto``: the first registered dataset whose layout it
   has). Files are read straight from a zip (no extraction). Archive members that would escape
   a target folder (absolute paths, ``..``), links, and absurd sizes are refused.
2. **Cache** (:mod:`.cache`, :mod:`.decode`, :mod:`.dataset`). Every image is decoded exactly
   once, in parallel, into ``<cache>/<dataset>-<key>/``:

   - ``images.npy``: uint8 ``(N, 64, 64, 3)``, memory-mappable; greyscale is converted to RGB;
   - ``labels.npy``: int64 class index into the sorted class ids;
   - ``classes.json``: ``wnids`` (the class ids: WordNet ids, or folder names) and readable
     ``names`` (``words.txt``, or the folder names);
   - ``paths.json``: each image's path relative to the dataset root;
   - ``manifest.json``: format version, dataset, ``made_by`` (its lineage fingerprint), source
     checksum, counts per class, rejected files, the default splits' hash and sizes;
   - ``splits/<hash>.npz``: split indices saved by :meth:`Splits.save`.

   Tiny ImageNet: a file that does not decode or is not 64x64 is left out *and reported*
   (logged, and listed by name in the manifest); a labelled folder: such a file ends the build
   with one line naming it. ``<key>`` digests the cache's fingerprint (the dataset, the
   source's content: zip: every member's name, CRC and size; folder: every file's path, size
   and mtime; the cache format): the same source is never decoded twice, a changed one gets
   its own cache.
3. **Splits** (:mod:`.splits`; of a loaded dataset :mod:`.partition`, :func:`make_splits`): the
   course notebook's partition, exactly, for any dataset: classes sorted by id, files
   lexicographic, the last ``ood_classes`` (default 10) out-of-domain; ``RandomState(seed)``
   (default 42) permutes the in-domain images, val = the first 10%, test = the next 10%, train =
   the rest; the next permutation of the same stream orders the ood set. Classes may hold
   different numbers of images; :func:`load_data` refuses, in one line, a dataset whose splits
   cannot be trained and studied (:func:`check_usable`). :func:`write_splits_csv` writes the
   partition as CSV.
"""

from neuralcodes.data.cache import default_cache_dir, fetch_official, prepare, prepare_cache
from neuralcodes.data.dataset import FORMAT_VERSION, Dataset
from neuralcodes.data.partition import (
    check_usable,
    class_check,
    load_data,
    make_splits,
    summary,
    write_splits_csv,
)
from neuralcodes.data.splits import Splits

__all__ = ["FORMAT_VERSION", "Dataset", "Splits", "check_usable", "class_check",
           "default_cache_dir",
           "fetch_official", "load_data", "make_splits", "prepare", "prepare_cache", "summary",
           "write_splits_csv"]
