"""The layout of a run directory ``runs/<name>/``: one place that names every artifact.

    config.json            every setting, data manifest hash, versions
    checkpoints/last.pt    model, optimizer, epoch, RNG and early-stopping state
    checkpoints/best.pt    the weights of the best epoch (lowest val loss)
    metrics.jsonl          one line per epoch
    train.log              the training log
    curves.png             learning curves
    eval.json, eval.csv    cross-entropy, top-1, top-5 on train/val/test
    codes/<split>-<pre|post>relu.npz   unit-length neural codes per layer
    retrieval/             figures, mAP, PCA study, layer evidence
    report.md, report.html
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neuralcodes.errors import NeuralCodesError


@dataclass(frozen=True)
class RunDir:
    """Paths of one run's artifacts."""

    root: Path

    @classmethod
    def existing(cls, path: str | Path) -> RunDir:
        """A run directory that must already hold a ``config.json``."""
        run = cls(Path(path))
        if not run.config.is_file():
            raise NeuralCodesError(f"{path}: not a run directory (no config.json); "
                                   "train one with `neuralcodes train`")
        return run

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def eval_csv(self) -> Path:
        return self.root / "eval.csv"

    def codes(self, split: str = "ood", relu: bool = False) -> Path:
        return self.root / "codes" / f"{split}-{'post' if relu else 'pre'}relu.npz"

    @property
    def retrieval(self) -> Path:
        return self.root / "retrieval"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"
