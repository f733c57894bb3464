"""A loaded :class:`~neuralcodes.data.dataset.Dataset` split as the course does:
:func:`make_splits`, :func:`check_usable` (one line when a dataset cannot be split so),
:func:`load_data` (prepare, load and split), the partition as ``splits.csv``, and the summary
``neuralcodes prepare`` prints."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from neuralcodes.config import DataConfig
from neuralcodes.data.cache import ClassCheck, prepare
from neuralcodes.data.dataset import Dataset
from neuralcodes.data.splits import (
    SPLIT_NAMES,
    SPLITS_CSV_HEADER,
    Splits,
    check_class_count,
    split_arrays,
)
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import atomic_open


def make_splits(dataset: Dataset, cfg: DataConfig) -> Splits:
    """The assignment's splits of ``dataset`` (the rules: :func:`.splits.split_arrays`)."""
    return split_arrays(dataset.labels, dataset.wnids, cfg)


def check_usable(dataset: Dataset, splits: Splits) -> None:
    """One line saying what to do when ``splits`` cannot be trained and studied: an empty
    training, validation or test split, an in-domain class without a training image, or an
    out-of-domain class with a single image (its queries would have no match)."""
    where = dataset.manifest.get("source", {}).get("path", dataset.root)
    inside = len(splits.train) + len(splits.val) + len(splits.test)
    for name in ("train", "val", "test"):
        if not len(getattr(splits, name)):
            raise NeuralCodesError(f"the {name} split of {where} is empty ({inside} in-domain "
                                   "images): add images (at least 10 per class)")
    trained = np.bincount(dataset.labels[splits.train], minlength=len(dataset.wnids))
    for c in splits.in_classes:
        if not trained[c]:
            n = int(np.sum(dataset.labels[np.concatenate([splits.val, splits.test])] == c))
            raise NeuralCodesError(
                f"class {dataset.wnids[c]} of {where} has too few images for the split ({n}, none "
                "of them drawn for training): give each class at least 10 images")
    ood = np.bincount(dataset.labels[splits.ood], minlength=len(dataset.wnids))
    for c in splits.ood_classes:
        if ood[c] < 2:
            raise NeuralCodesError(
                f"out-of-domain class {dataset.wnids[c]} of {where} has {ood[c]} image: retrieval "
                "needs at least 2 per class (a query and its match); add images to it")


def class_check(cfg: DataConfig) -> ClassCheck:
    """The check of a source's listed classes against ``cfg`` (:func:`check_class_count`), for
    :func:`neuralcodes.data.cache.prepare`'s ``check``: it runs before any image is decoded."""
    def check(classes: list[str]) -> None:
        check_class_count(len(classes), cfg, str(cfg.source or cfg.dataset))
    return check


def load_data(cfg: DataConfig, progress: bool = True) -> tuple[Dataset, Splits]:
    """Prepare (if needed) and load the cache for ``cfg.source`` (read as ``cfg.dataset``), and
    split it by ``cfg``; a dataset that cannot be split so ends in one line saying what to do
    (:func:`check_usable`).

    The splits are saved into the cache (``splits/<hash16>.npz``).
    """
    dataset = Dataset.load(prepare(cfg.source, cfg.cache_dir, dataset=cfg.dataset,
                                   progress=progress, url=cfg.url, check=class_check(cfg)))
    splits = make_splits(dataset, cfg)
    check_usable(dataset, splits)
    splits.save(dataset.root)
    return dataset, splits


def write_splits_csv(dataset: Dataset, splits: Splits, path: str | Path) -> Path:
    """Write the partition as CSV (atomically): ``split,position,file_name,wnid``, one row per
    image, splits in the order train, val, test, ood, each in its split order (positions from
    0); ``file_name`` is the image's base name, e.g. ``n01443537_10.JPEG``."""
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(SPLITS_CSV_HEADER)
        for name in SPLIT_NAMES:
            for position, i in enumerate(getattr(splits, name).tolist()):
                out.writerow((name, position, dataset.paths[i].rsplit("/", 1)[-1],
                              dataset.wnids[dataset.labels[i]]))
    return path


def summary(ds: Dataset, splits: Splits, *, built: bool, splits_path: Path | None = None) -> str:
    """The text ``neuralcodes prepare`` prints."""
    m = ds.manifest
    src = m["source"]
    lines = [
        f"cache:   {ds.root} ({'built now' if built else 'already prepared'}, "
        f"{ds.images.nbytes / 2**20:,.0f} MiB of uint8 images)",
        f"source:  {src['path']} ({ds.spec.title}, {src['kind']}, checksum "
        f"{src['checksum'][:12]})",
        f"images:  {len(ds):,} in {len(ds.wnids)} classes; {m['num_rejected']} file(s) rejected",
    ]
    lines += [f"  rejected {r['path']}: {r['reason']}" for r in m["rejected"][:10]]
    s = splits.sizes()
    ood_names = ", ".join(ds.wnids[c] for c in splits.ood_classes[:10])
    more = ", ..." if len(splits.ood_classes) > 10 else ""
    lines += [
        f"splits:  train {s['train']:,} / val {s['val']:,} / test {s['test']:,} "
        f"({s['in_classes']} in-domain classes); ood {s['ood']:,} ({s['ood_classes']} classes: "
        f"{ood_names}{more})",
        f"         hash {splits.hash[:16]}" + (f", saved in {splits_path}" if splits_path else ""),
    ]
    return "\n".join(lines)
