"""Post-processing of codes fitted on in-domain data only: PCA, PCA-whitening with shrinkage
and the supervised ("learned") whitening of Radenovic et al. (TPAMI 2018, Sec. 3.3).

Every transform is an object with ``fit(data)`` and ``transform(codes)``; ``fit`` takes a
:class:`FitData`, which names the split its codes come from and refuses the ood split: a
transform is never fitted on the images it is evaluated on. ``transform`` returns unit-length
float32 codes (``project`` the same before the normalisation).

- :class:`PCAWhitening` ``(dims, shrinkage)``: centre, project on the first ``dims`` principal
  axes, divide axis i by ``sqrt((1 - s) lambda_i + s * mean(lambda))``. s = 0 is full
  PCA-whitening (the training codes come out with identity covariance); s = 1 divides every
  axis by the same number: plain PCA (the paper's compressed codes). The axes are the
  project's :class:`~neuralcodes.retrieval.pca.PCA`.
- :class:`LearnedWhitening` ``(dims)``: from labelled training codes, the covariance of the
  differences of same-class pairs C_S and of different-class pairs C_D (all pairs, in closed
  form: no sampling); whiten by C_S^(-1/2), then rotate onto the eigenvectors of the whitened
  C_D, largest first, and keep ``dims`` of them. Directions that vary inside a class are
  shrunk, those that separate classes kept: it needs the labels PCA ignores. C_S is
  regularised by ``shrinkage`` towards its mean eigenvalue (needed when there are fewer
  training codes than dimensions); codes longer than ``max_input`` dimensions are first
  reduced by PCA to that size (layer 5's 16,384 would need a 16,384^2 covariance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval.codes import l2_normalize
from neuralcodes.retrieval.pca import PCA

#: Splits a transform or a re-ranking parameter may be fitted on (in-domain images only).
FIT_SPLITS: tuple[str, ...] = ("train", "val")


@dataclass(frozen=True)
class FitData:
    """Codes of in-domain images to fit on, with their class labels and split name."""

    codes: np.ndarray  # (N, D)
    labels: np.ndarray  # (N,)
    split: str  # "train" or "val": never "ood"
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.split not in FIT_SPLITS:
            raise NeuralCodesError(f"methods are fitted on in-domain images only "
                                   f"({', '.join(FIT_SPLITS)}), not on the {self.split!r} split")
        codes = np.asarray(self.codes, dtype=np.float32)
        if codes.ndim != 2 or len(codes) != len(self.labels) or len(codes) < 2:
            raise NeuralCodesError(f"fit data must be (N >= 2, D) codes with one label each, got "
                                   f"{codes.shape} and {len(self.labels)} labels")
        object.__setattr__(self, "codes", codes)
        object.__setattr__(self, "labels", np.asarray(self.labels))

    def pca(self, k: int) -> PCA:
        """A PCA of these codes with at least ``k`` axes, fitted once and shared by every
        transform fitted on this data (fitting is the slow part: one fit at 512 axes serves
        PCA at 64, 128 and 256 and the learned whitening's reduction)."""
        cached = self._cache.get("pca")
        if cached is None or len(cached.components) < k:
            cached = self._cache["pca"] = PCA.fit(self.codes, k)
        return cached

    @property
    def mean_variance(self) -> float:
        """The mean variance of the coordinates (trace of the covariance / D)."""
        if "mean_variance" not in self._cache:
            centred = self.codes - self.codes.mean(axis=0)
            self._cache["mean_variance"] = float((centred ** 2).sum()) / (
                len(centred) - 1) / centred.shape[1]
        return float(self._cache["mean_variance"])


@dataclass
class PCAWhitening:
    """PCA to ``dims`` axes, each divided by its shrunk standard deviation (s = 1: plain PCA)."""

    dims: int
    shrinkage: float = 0.0
    pca: PCA | None = field(default=None, repr=False)
    scale: np.ndarray | None = field(default=None, repr=False)

    def fit(self, data: FitData) -> PCAWhitening:
        if not 0 <= self.shrinkage <= 1:
            raise NeuralCodesError(f"shrinkage must be in [0, 1], got {self.shrinkage}")
        x = data.codes
        if self.dims > min(x.shape[1], len(x) - 1):
            raise NeuralCodesError(f"PCA to {self.dims} dimensions needs codes of at least that "
                                   f"length and more training codes ({x.shape})")
        self.pca = data.pca(self.dims)
        s = self.shrinkage
        self.scale = np.sqrt((1 - s) * self.pca.variances[:self.dims] + s * data.mean_variance
                             + 1e-12).astype(np.float32)
        return self

    def project(self, codes: np.ndarray) -> np.ndarray:
        """The projected, scaled codes before the normalisation."""
        if self.pca is None or self.scale is None:
            raise NeuralCodesError("fit the transform before using it")
        y = (np.asarray(codes, np.float32) - self.pca.mean) @ self.pca.components[:self.dims].T
        return y / self.scale

    def transform(self, codes: np.ndarray) -> np.ndarray:
        return l2_normalize(self.project(codes))


@dataclass
class LearnedWhitening:
    """Radenovic et al.'s supervised whitening from same-class pairs, to ``dims`` dimensions."""

    dims: int
    shrinkage: float = 0.01
    max_input: int = 512
    mean: np.ndarray | None = field(default=None, repr=False)
    matrix: np.ndarray | None = field(default=None, repr=False)  # (dims, D)

    def fit(self, data: FitData) -> LearnedWhitening:
        rotate, whiten, mean, pre = self._decomposition(data)
        if self.dims > len(rotate):
            raise NeuralCodesError(f"learned whitening to {self.dims} dimensions needs codes of "
                                   f"at least that length, got {len(rotate)}")
        matrix = rotate[:self.dims] @ whiten
        if pre is not None:  # fold the PCA in: one matrix from the raw codes
            matrix = matrix @ pre
        self.mean, self.matrix = mean.astype(np.float32), matrix.astype(np.float32)
        return self

    def _decomposition(self, data: FitData
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """The rotation (all axes, largest first), the whitening, the mean and the PCA
        reduction (None: none), computed once per (data, shrinkage, max_input) and shared by
        every size: the sizes differ only in how many rotated axes they keep."""
        key = f"lw-{self.shrinkage!r}-{self.max_input}"
        if key in data._cache:
            return data._cache[key]  # type: ignore[no-any-return]
        x = data.codes.astype(np.float64)
        pre, mean = None, None
        if x.shape[1] > self.max_input:
            reduced = data.pca(min(self.max_input, len(x) - 1))
            pre = reduced.components[:min(self.max_input, len(x) - 1)].astype(np.float64)
            x = (x - reduced.mean) @ pre.T
            mean = reduced.mean.astype(np.float64)
        d = x.shape[1]
        pairs_key = f"lw-pairs-{self.max_input}"
        if pairs_key not in data._cache:  # independent of the shrinkage
            data._cache[pairs_key] = pair_covariances(x, data.labels)
        same, other = data._cache[pairs_key]
        c_s = (1 - self.shrinkage) * same + self.shrinkage * np.trace(same) / d * np.eye(d)
        values, vectors = np.linalg.eigh(c_s)
        whiten = (vectors / np.sqrt(np.maximum(values, 1e-12 * values.max()))) @ vectors.T
        values, vectors = np.linalg.eigh(whiten @ other @ whiten.T)
        rotate = vectors[:, np.argsort(values)[::-1]].T
        out = (rotate, whiten, x.mean(axis=0) if mean is None else mean, pre)
        data._cache[key] = out
        return out

    def project(self, codes: np.ndarray) -> np.ndarray:
        if self.mean is None or self.matrix is None:
            raise NeuralCodesError("fit the transform before using it")
        return (np.asarray(codes, np.float32) - self.mean) @ self.matrix.T

    def transform(self, codes: np.ndarray) -> np.ndarray:
        return l2_normalize(self.project(codes))


def pair_covariances(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``(x_i - x_j)(x_i - x_j)^T`` over all same-class and all different-class ordered
    pairs i != j, in closed form: over a set of n codes, sum_{i,j} (x_i - x_j)(x_i - x_j)^T =
    2 n sum_i x_i x_i^T - 2 (sum_i x_i)(sum_i x_i)^T."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0)  # pair differences do not change; the sums stay small

    def pair_sum(rows: np.ndarray) -> np.ndarray:
        s = rows.sum(axis=0)
        return 2 * len(rows) * (rows.T @ rows) - 2 * np.outer(s, s)

    total = pair_sum(x)
    same = np.zeros_like(total)
    n_same = 0
    for c in np.unique(labels):
        rows = x[labels == c]
        same += pair_sum(rows)
        n_same += len(rows) * (len(rows) - 1)
    n_other = len(x) * (len(x) - 1) - n_same
    if n_same == 0 or n_other == 0:
        raise NeuralCodesError("learned whitening needs classes with at least two codes and at "
                               "least two classes")
    return same / n_same, (total - same) / n_other
