"""The assignment's splits of a dataset's labels: in-domain train/val/test and the out-of-domain
(ood) set, as index arrays into the cache (of a loaded dataset: :mod:`.partition`)."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuralcodes.config import MIN_OOD_CLASSES, DataConfig
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import atomic_open

#: The DataConfig fields that decide the splits.
SPLIT_FIELDS = ("ood_classes", "ood_wnids", "ood_random", "seed", "fractions", "max_classes",
                "max_per_class")


@dataclass
class Splits:
    """Index arrays into a :class:`~neuralcodes.data.dataset.Dataset` (int64), and which classes
    are in-domain."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    ood: np.ndarray
    in_classes: list[int]  # dataset class indices; model label i == in_classes[i]
    ood_classes: list[int]
    hash: str

    def model_labels(self, labels: np.ndarray) -> np.ndarray:
        """Dataset class indices -> model labels (0..len(in_classes)-1), -1 for ood classes."""
        size = max([*self.in_classes, *self.ood_classes, int(np.max(labels, initial=0))]) + 1
        table = np.full(size, -1, np.int64)
        table[self.in_classes] = np.arange(len(self.in_classes))
        return table[np.asarray(labels, np.int64)]

    def sizes(self) -> dict[str, int]:
        """Images per split, plus the class counts."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test),
                "ood": len(self.ood), "in_classes": len(self.in_classes),
                "ood_classes": len(self.ood_classes)}

    def save(self, cache_dir: str | Path) -> Path:
        """Write ``<cache>/splits/<hash16>.npz`` (atomically; kept if already there)."""
        path = Path(cache_dir) / "splits" / f"{self.hash[:16]}.npz"
        if not path.exists():
            with atomic_open(path, "wb") as f:
                np.savez(f, train=self.train, val=self.val, test=self.test, ood=self.ood,
                         in_classes=np.array(self.in_classes, np.int64),
                         ood_classes=np.array(self.ood_classes, np.int64))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Splits:
        """Read a file written by :meth:`save` (its hash is recomputed)."""
        with np.load(path) as z:
            return _finish_splits(z["train"], z["val"], z["test"], z["ood"],
                                  z["in_classes"].tolist(), z["ood_classes"].tolist())


def split_settings(cfg: DataConfig) -> dict[str, Any]:
    """The settings of ``cfg`` that decide the splits (recorded in the cache manifest)."""
    d = dataclasses.asdict(cfg)
    return {k: d[k] for k in SPLIT_FIELDS}


def split_arrays(labels: np.ndarray, wnids: Sequence[str], cfg: DataConfig) -> Splits:
    """The assignment's splits of a dataset with these labels (in cache order) and wnids,
    exactly as the course's notebook makes them.

    1. Classes are the dataset's, sorted by wnid; files within a class in lexicographic name
       order (the cache's order: ``sorted(os.listdir(...))``). ``max_classes`` keeps the first N
       classes and ``max_per_class`` the first M files of each, before anything else.
    2. Out-of-domain classes: ``ood_wnids`` if given, else ``ood_classes`` drawn at random with
       ``seed`` if ``ood_random``, else the last ``ood_classes`` (default 10). The in-domain
       images are the other classes' images, concatenated class by class (N of them).
    3. ``rng = numpy.random.RandomState(seed)`` (the legacy generator: the same stream as
       ``np.random.seed(seed)``, without touching numpy's global state); ``perm =
       rng.permutation(N)``; with ``fractions = (train, val, test)``: val = the first
       ``int(round(val * N))`` permuted images, test = the next ``int(round(test * N))``, train =
       the rest (80/10/10 by default).
    4. The ood images (classes concatenated in order) are shuffled by the next draw from the
       same stream, ``rng.permutation(N_ood)``.

    Every index array is in that order (e.g. ``splits.ood[:10]`` are "the first 10 ood images").
    """
    n_classes = len(wnids)
    check_class_count(n_classes, cfg)
    if cfg.max_classes is not None:
        n_classes = min(n_classes, cfg.max_classes)
    ood = _ood_class_list(list(wnids[:n_classes]), cfg)
    in_classes = [c for c in range(n_classes) if c not in set(ood)]

    order = np.argsort(labels, kind="stable")  # cache (file-name) order within each class
    bounds = np.searchsorted(labels[order], np.arange(n_classes + 1))
    per_class = [order[bounds[c]: bounds[c + 1]][: cfg.max_per_class] for c in range(n_classes)]

    _, f_val, f_test = (float(f) for f in cfg.fractions)
    inside = np.concatenate([per_class[c] for c in in_classes])
    rng = np.random.RandomState(cfg.seed)
    inside = inside[rng.permutation(len(inside))]
    n_val, n_test = int(round(f_val * len(inside))), int(round(f_test * len(inside)))
    val, test, train = np.split(inside, [n_val, n_val + n_test])
    outside = np.concatenate([per_class[c] for c in ood])
    ood_idx = outside[rng.permutation(len(outside))]
    return _finish_splits(train, val, test, ood_idx, in_classes, ood)


#: Training needs this many in-domain classes; retrieval at least one out-of-domain class.
MIN_IN_CLASSES = 2


def check_class_count(n_found: int, cfg: DataConfig, where: str = "the data") -> None:
    """One line saying what to do when ``n_found`` classes (a source's listing, before
    ``max_classes``) cannot be split by ``cfg`` into at least :data:`MIN_IN_CLASSES` in-domain
    classes and :data:`MIN_OOD_CLASSES` out-of-domain ones. Cheap: run, plan, prepare and train
    call it right after the classes are listed, before any image is decoded."""
    n = min(n_found, cfg.max_classes) if cfg.max_classes is not None else n_found
    need = MIN_IN_CLASSES + MIN_OOD_CLASSES
    noun = "class" if n == 1 else "classes"
    used = f"{n} {noun}" if n == n_found else f"{n} {noun} used (data.max_classes={n})"
    if n < need:
        fix = ("raise data.max_classes" if n < n_found else "add class folders")
        raise NeuralCodesError(
            f"{where} has {used}: at least {need} are needed ({MIN_IN_CLASSES} in-domain to "
            f"train on, {MIN_OOD_CLASSES} out of domain for retrieval): {fix}")
    most = n - MIN_IN_CLASSES
    if cfg.ood_wnids:
        k = len(set(cfg.ood_wnids))
        if k > most:
            raise NeuralCodesError(
                f"{where} has {used}; the {k} data.ood_wnids leave {n - k} in-domain; training "
                f"needs at least {MIN_IN_CLASSES}: list at most {most} ood wnids")
    elif cfg.ood_classes > most:
        k = cfg.ood_classes
        raise NeuralCodesError(
            f"{where} has {used}; data.ood_classes={k} leaves {max(n - k, 0)} in-domain, and "
            f"training needs at least {MIN_IN_CLASSES}: use --set data.ood_classes="
            f"{max(MIN_OOD_CLASSES, n // 4)} (any N from {MIN_OOD_CLASSES} to {most})")


def _ood_class_list(wnids: list[str], cfg: DataConfig) -> list[int]:
    n = len(wnids)
    if cfg.ood_wnids:
        unknown = sorted(set(cfg.ood_wnids) - set(wnids))
        if unknown:
            raise NeuralCodesError(f"ood wnid(s) not among the {n} classes used: "
                                   f"{', '.join(unknown)}")
        ood = sorted({wnids.index(w) for w in cfg.ood_wnids})
    else:
        k = cfg.ood_classes
        if cfg.ood_random:
            ood = sorted(np.random.default_rng(cfg.seed).choice(n, min(k, n), replace=False)
                         .tolist())
        else:
            ood = list(range(n - min(k, n), n))
    return ood


def _finish_splits(train: np.ndarray, val: np.ndarray, test: np.ndarray, ood: np.ndarray,
                   in_classes: list[int], ood_classes: list[int]) -> Splits:
    arrays = [np.ascontiguousarray(a, dtype=np.int64) for a in (train, val, test, ood)]
    h = hashlib.sha256()
    for part in (*arrays, np.array(in_classes, np.int64), np.array(ood_classes, np.int64)):
        h.update(struct.pack("<q", len(part)))
        h.update(part.astype("<i8").tobytes())
    return Splits(*arrays, [int(c) for c in in_classes], [int(c) for c in ood_classes],
                  h.hexdigest())


#: The partition file's columns and its splits, in file order.
SPLITS_CSV_HEADER = ("split", "position", "file_name", "wnid")
SPLIT_NAMES = ("train", "val", "test", "ood")
