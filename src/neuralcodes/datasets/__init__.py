"""The datasets neuralcodes reads, by name (``data.dataset``; the cache folder's prefix): each
is one module declaring a :class:`~neuralcodes.datasets.spec.DatasetSpec`. The configuration, the
cache and the download read them from here.

To add a dataset: write a module like :mod:`neuralcodes.datasets.imagefolder` (its layout, listing
and decoder) and add its ``SPEC`` to :data:`DATASETS`; ``tests/test_datasets.py`` runs the same
contract over every entry. With ``data.dataset=auto`` a source is read as the first dataset in
this order whose layout it has.
"""

from __future__ import annotations

from neuralcodes.datasets import imagefolder, tinyimagenet
from neuralcodes.datasets.spec import DatasetSpec
from neuralcodes.errors import NeuralCodesError

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (tinyimagenet.SPEC, imagefolder.SPEC)}
#: The dataset downloaded when no source is given (and the course's).
DEFAULT = tinyimagenet.SPEC.name
#: ``data.dataset``'s choices.
CHOICES: tuple[str, ...] = ("auto", *DATASETS)


def get(name: str) -> DatasetSpec:
    """The spec registered as ``name`` (``auto``: the default dataset's)."""
    name = DEFAULT if name == "auto" else name
    if name not in DATASETS:
        raise NeuralCodesError(f"unknown dataset {name!r} (choose from {', '.join(CHOICES)})")
    return DATASETS[name]


def specs() -> list[DatasetSpec]:
    """Every registered spec, in detection order."""
    return list(DATASETS.values())


def for_config(dataset: str, source: str | None) -> DatasetSpec | None:
    """The spec a ``data`` section names before its source is read: the named one, the default
    when nothing is named and no source is given (it is downloaded), else None (found from the
    source's layout)."""
    if dataset != "auto":
        return get(dataset)
    return get(DEFAULT) if source is None else None
