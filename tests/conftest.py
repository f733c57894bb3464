"""Shared fixtures: a small prepared image cache that every test file may use (``tests/`` is on
the import path through ``pythonpath`` in pyproject.toml, so ``from helpers import ...`` works).

Fixtures:

- ``tiny_source`` (session): a generated dataset folder (``helpers.make_tiny_imagenet``:
  6 learnable classes x 20 images, no extras). Read-only: do not modify it.
- ``tiny_cache`` (session): the cache folder :func:`neuralcodes.data.prepare` built from
  ``tiny_source`` (``Dataset.load(tiny_cache)`` works). Read-only as well.
- ``tiny_data_config`` (per test): a fresh ``DataConfig`` pointing at ``tiny_source`` and the
  prepared cache, with ``ood_classes=2``: ``load_data(cfg)`` then gives 4 in-domain classes
  (80 images -> 64 / 8 / 8) and 2 ood classes (40 images) without decoding anything again.
  Change it freely (it is yours), e.g. ``dataclasses.replace(cfg, seed=1)``.

Tests never time the CPU kernels: ``NEURALCODES_KERNEL_TIMINGS`` names the fake timing table
``kernel_timings.json`` (conv2 in NNPACK, conv3-conv5 in oneDNN wherever NNPACK applies), for
this process and the commands it starts; ``tests/test_kernel_choice.py`` removes it to test the
measurement and its cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import make_tiny_imagenet, trained_web_run
from neuralcodes.config import DataConfig
from neuralcodes.data import prepare
from neuralcodes.kernels.choice import TIMINGS_ENV

os.environ[TIMINGS_ENV] = str(Path(__file__).with_name("kernel_timings.json"))


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated 6-class x 20-image dataset folder in the official layout."""
    return make_tiny_imagenet(tmp_path_factory.mktemp("tiny-source"), 6, 20)


@pytest.fixture(scope="session")
def tiny_cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache root (``--cache-dir``) holding the prepared ``tiny_source``."""
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture(scope="session")
def tiny_cache(tiny_source: Path, tiny_cache_root: Path) -> Path:
    """The prepared cache folder of ``tiny_source``."""
    return prepare(tiny_source, tiny_cache_root, progress=False)


@pytest.fixture
def tiny_data_config(tiny_source: Path, tiny_cache_root: Path, tiny_cache: Path) -> DataConfig:
    """A DataConfig for the prepared tiny dataset: 4 in-domain + 2 ood classes."""
    return DataConfig(source=str(tiny_source), cache_dir=str(tiny_cache_root), ood_classes=2)


@pytest.fixture(scope="session")
def web_run(tmp_path_factory: pytest.TempPathFactory, tiny_source: Path, tiny_cache_root: Path,
            tiny_cache: Path) -> Path:
    """A tiny trained and evaluated run for the web tests (:func:`helpers.trained_web_run`)."""
    return trained_web_run(tmp_path_factory, tiny_source, tiny_cache_root)
