"""A prepared image cache, loaded: :class:`Dataset` (the files are described in
:mod:`neuralcodes.data`; :mod:`neuralcodes.data.cache` builds them)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuralcodes import datasets as registry
from neuralcodes import imageio
from neuralcodes.datasets.spec import DatasetSpec
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import read_json

#: Bump when the cache layout changes: it is part of the cache key, so old caches are not reused.
#: 2: images in lexicographic file-name order within a class (1: natural order).
FORMAT_VERSION = 2
VOLATILE_MANIFEST_KEYS = ("created", "build")
#: One cached image: RGB at the model's input size (the side of the user images' decoder).
IMAGE_SHAPE = (imageio.IMAGE_SIZE, imageio.IMAGE_SIZE, 3)


@dataclass
class Dataset:
    """A prepared cache, loaded; ``images`` is memory-mapped (nothing is read until used)."""

    root: Path
    images: np.ndarray  # (N, 64, 64, 3) uint8
    labels: np.ndarray  # (N,) int64 index into wnids
    #: class ids, sorted (Tiny ImageNet: WordNet ids; a labelled folder: its subfolder names)
    wnids: list[str]
    names: list[str]  # readable class names, same order as wnids
    paths: list[str]  # relative to the dataset root of the source
    manifest: dict[str, Any]
    manifest_hash: str  # identifies the cache content (manifest without timings)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def spec(self) -> DatasetSpec:
        """The dataset the cache was made from (caches from before datasets were named:
        Tiny ImageNet, the only one then)."""
        return registry.get(str(self.manifest.get("dataset", registry.DEFAULT)))

    @classmethod
    def load(cls, cache_dir: str | Path) -> Dataset:
        """Open a cache folder returned by :func:`~neuralcodes.data.cache.prepare`."""
        root = Path(cache_dir).expanduser()
        mpath = root / "manifest.json"
        if not mpath.is_file():
            raise NeuralCodesError(f"no prepared image cache in {root} (run `neuralcodes "
                                   "prepare`)")
        manifest = read_json(mpath)
        if not isinstance(manifest, dict):
            raise NeuralCodesError(f"{mpath}: not a cache manifest (damaged); delete {root} and "
                                   "run `neuralcodes prepare` again")
        if manifest.get("format") != FORMAT_VERSION:
            raise NeuralCodesError(f"image cache {root} has format {manifest.get('format')}, "
                                   f"this version reads {FORMAT_VERSION}: run `neuralcodes "
                                   "prepare` again")
        try:
            images = np.load(root / "images.npy", mmap_mode="r")
            labels = np.load(root / "labels.npy")
            classes = read_json(root / "classes.json")
            paths = read_json(root / "paths.json")
        except (OSError, ValueError) as e:
            raise NeuralCodesError(f"image cache {root} is damaged ({e}); delete it and run "
                                   "`neuralcodes prepare` again") from None
        n = manifest["num_images"]
        if images.shape != (n, *IMAGE_SHAPE) or labels.shape != (n,) or len(paths) != n:
            raise NeuralCodesError(f"image cache {root} is damaged (sizes disagree with its "
                                   "manifest); delete it and run `neuralcodes prepare` again")
        stable = {k: v for k, v in manifest.items() if k not in VOLATILE_MANIFEST_KEYS}
        digest = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()
        return cls(root, images, labels.astype(np.int64, copy=False), list(classes["wnids"]),
                   list(classes["names"]), list(paths), manifest, digest)
