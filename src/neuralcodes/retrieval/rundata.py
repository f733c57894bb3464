"""A trained run opened for retrieval: its directory and config at once, the dataset and the
model (a :class:`~neuralcodes.runs.TrainedRun`) each loaded on first use, at most once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from neuralcodes import lineage
from neuralcodes.config import Config
from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval.codes import CodeSet, codes_fingerprint, gather_images, run_codes
from neuralcodes.runs import RunDir, TrainedRun, load_run_data

if TYPE_CHECKING:
    import torch

    from neuralcodes.data import Dataset, Splits


@dataclass
class RunData:
    """A run directory with its (possibly overridden) config; data and model load lazily.

    ``config`` defaults to the run's saved one; only its ``retrieval`` section and the
    device/precision may differ from it (the CLI's ``run_config`` enforces that). ``reader``:
    opened by a command that holds no write lock (search, serve): codes it must recompute are
    written under the run's lock, or refused in one line where it may not write.
    """

    dir: RunDir
    config: Config
    device: str = "auto"
    precision: str = "fp32"
    progress: bool = True
    reader: bool = False
    _trained: TrainedRun | None = field(default=None, repr=False)
    _dataset: Dataset | None = field(default=None, repr=False)
    _splits: Splits | None = field(default=None, repr=False)

    @classmethod
    def open(cls, run: str | Path, config: Config | None = None, *, device: str | None = None,
             precision: str | None = None, progress: bool = True,
             reader: bool = False) -> RunData:
        """Open ``run``; ``device``/``precision`` None: those of ``config`` (its ``train``)."""
        rd = RunDir.existing(run)
        cfg = config if config is not None else rd.read_config()
        return cls(rd, cfg, device or cfg.train.device, precision or cfg.train.precision,
                   progress, reader)

    @property
    def trained(self) -> TrainedRun:
        """The model with its dataset and splits (loaded on first use)."""
        if self._trained is None:
            self._trained = TrainedRun.load(self.dir.root, device=self.device)
            self._dataset, self._splits = self._trained.dataset, self._trained.splits
        return self._trained

    def _load_data(self) -> None:
        if self._dataset is None:
            self._dataset, self._splits = load_run_data(self.dir)

    @property
    def dataset(self) -> Dataset:
        """The dataset, without loading the model."""
        self._load_data()
        assert self._dataset is not None
        return self._dataset

    @property
    def splits(self) -> Splits:
        self._load_data()
        assert self._splits is not None
        return self._splits

    @property
    def model(self) -> torch.nn.Module:
        return self.trained.model

    def relu(self, relu: bool | None = None) -> bool:
        """``relu``, or the run's default codes (``retrieval.relu``) when None."""
        return self.config.retrieval.relu if relu is None else bool(relu)

    def ood_codes(self, relu: bool) -> CodeSet:
        """The ood codes of one variant, computed from the run's current weights: recomputed
        (both variants, one line saying why) when they record another fingerprint."""
        path = self.dir.codes("ood", relu)
        why = lineage.check(path, codes_fingerprint(self.dir, "ood", relu, self.precision))
        if why is not None:
            if not self.reader:
                self._compute_ood_codes()
            elif not os.access(path.parent if path.parent.is_dir() else self.dir.root,
                               os.W_OK):
                raise NeuralCodesError(
                    f"{path}: {why}, and this process may not write to {self.dir.root}; run "
                    f"`neuralcodes codes {self.dir.root}` where it may, then try again")
            else:
                with self.dir.lock("codes (for search)"):
                    self._compute_ood_codes()
        return CodeSet.load(path)

    def _compute_ood_codes(self) -> None:
        run_codes(self.dir.root, "ood", None, device=self.device, precision=self.precision,
                  progress=self.progress, trained=self.trained)

    def images(self, index: np.ndarray) -> np.ndarray:
        """The dataset images at ``index`` (in that order)."""
        return gather_images(self.dataset.images, index)

    def class_names(self, labels: np.ndarray) -> list[str]:
        """Class names of dataset labels ("" for -1)."""
        names = self.dataset.names
        return [names[int(i)] if i >= 0 else "" for i in labels]
