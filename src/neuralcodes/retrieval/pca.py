"""PCA of neural codes (the paper's compressed codes) and the PCA study: mAP of the ood
self-retrieval with PCA / PCA-whitened codes fitted on in-domain training codes."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval.codes import CodeSet, l2_normalize
from neuralcodes.retrieval.metrics import RankingMetrics, paired_bootstrap, self_retrieval_metrics

#: In-domain training images the PCA study fits on (`neuralcodes retrieval --pca-images`).
PCA_FIT_IMAGES = 5000


@dataclass
class PCA:
    """A PCA of unit codes: mean, principal axes (rows, by decreasing variance), variances."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (K, D)
    variances: np.ndarray  # (K,)

    @classmethod
    def fit(cls, x: np.ndarray, n_components: int, seed: int = 0) -> PCA:
        """Fit on ``x`` (N, D): exact SVD when small, randomized (``svd_lowrank``) otherwise."""
        x = np.asarray(x, dtype=np.float32)
        k = min(n_components, x.shape[1], len(x) - 1)
        if k < 1:
            raise NeuralCodesError("PCA needs at least two training codes")
        mean = x.mean(axis=0)
        centred = torch.from_numpy(x - mean)
        if min(x.shape) <= 2 * k + 10:
            _, s, vt = torch.linalg.svd(centred.double(), full_matrices=False)
            v = vt[:k].T
        else:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                _, s, v = torch.svd_lowrank(centred, q=k + max(10, k // 8), niter=4)
            v = v[:, :k]
        variances = (s[:k].double() ** 2 / (len(x) - 1)).numpy()
        return cls(mean, v.T.float().numpy().copy(), variances)

    def transform(self, x: np.ndarray, dims: int, whiten: bool = False) -> np.ndarray:
        """Project onto the first ``dims`` axes (optionally whitened) and re-normalise to unit
        length, as in the paper's compressed codes."""
        if dims > len(self.components):
            raise NeuralCodesError(f"PCA has only {len(self.components)} components, not {dims}")
        y = (np.asarray(x, dtype=np.float32) - self.mean) @ self.components[:dims].T
        if whiten:
            y /= np.sqrt(self.variances[:dims] + 1e-12).astype(np.float32)
        return l2_normalize(y)


def _p5(m: RankingMetrics) -> float | None:
    return float(m.precision[5].mean()) if 5 in m.precision else None


def pca_study(train: dict[str, np.ndarray], ood: CodeSet, dims: Sequence[int],
              progress: bool = False) -> list[dict[str, Any]]:
    """mAP of the ood self-retrieval with PCA / PCA-whitened codes fitted on ``train`` codes.

    One row per (layer, dims, whiten), plus ``dims="full"``: the uncompressed code. Sizes the
    fit cannot provide (more than the code length or the number of training codes) are skipped.
    Each compressed row carries ``diff_vs_full`` (its mAP minus the full code's, same queries),
    ``ci95`` (paired bootstrap over the queries) and ``significant`` (the interval excludes 0);
    these are None on the full row.
    """
    ks = (5,) if len(ood) > 5 else ()
    table = []
    for layer, x in train.items():
        pca = PCA.fit(x, max(dims))
        full = self_retrieval_metrics(ood.layers[layer], ood.labels, ks=ks)
        table.append({"layer": layer, "dims": "full", "whiten": False, "map": full.map,
                      "p@5": _p5(full), "diff_vs_full": None, "ci95": None,
                      "significant": None})
        for d, whiten in itertools.product(sorted(dims), (False, True)):
            if d > len(pca.components):
                continue
            m = self_retrieval_metrics(pca.transform(ood.layers[layer], d, whiten), ood.labels,
                                       ks=ks, progress=progress, desc=f"PCA {layer}/{d}")
            vs_full = paired_bootstrap(m.ap, full.ap).to_json()
            table.append({"layer": layer, "dims": d, "whiten": whiten, "map": m.map,
                          "p@5": _p5(m), "diff_vs_full": vs_full["diff"],
                          "ci95": vs_full["ci95"], "significant": vs_full["significant"]})
    return table
