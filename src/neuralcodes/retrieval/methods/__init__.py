"""Beyond the paper (issue 19): pooled conv descriptors, whitening and re-ranking, one small
module per family, and a registry of every method by name.

- :mod:`.pooling` — MAC, SPoC (optional centring prior), GeM (p given or fitted on training
  images), R-MAC, from feature maps ``(N, C, H, W)``.
- :mod:`.whitening` — PCA, PCA-whitening with shrinkage, Radenovic et al.'s learned whitening:
  fit/transform objects fitted on in-domain codes only (:class:`FitData`).
- :mod:`.reranking` — average and alpha-weighted query expansion, database-side augmentation,
  k-reciprocal re-ranking, diffusion; :func:`tune` picks their parameters on validation codes.
- :mod:`.study` — the measured table of every method on a trained run's ood images.

:data:`REGISTRY` maps each method's name to a :class:`MethodSpec`: its family, the callable, its
fixed parameters and (re-ranking) the grid :func:`tune` searches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuralcodes.config import METHOD_FAMILIES
from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval.methods import pooling, reranking, whitening
from neuralcodes.retrieval.methods.whitening import FitData, LearnedWhitening, PCAWhitening

FAMILIES: tuple[str, ...] = METHOD_FAMILIES


@dataclass(frozen=True)
class MethodSpec:
    """One method: ``family``; ``fn`` (pooling: maps -> unit descriptors; whitening: a
    factory ``fn(dims) -> transform`` to fit; re-ranking: ``fn(queries, database, exclude,
    **params) -> scores``); ``params`` fixed; ``grid`` tuned on validation codes."""

    name: str
    family: str
    fn: Callable[..., Any]
    description: str
    params: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **{**self.params, **kwargs})


def _specs() -> dict[str, MethodSpec]:
    specs = [
        MethodSpec("mac", "pooling", pooling.mac, "max of each channel"),
        MethodSpec("spoc", "pooling", pooling.spoc, "sum of each channel"),
        MethodSpec("spoc-centre", "pooling", pooling.spoc, "sum weighted by the centring prior",
                   {"centre": True}),
        MethodSpec("gem", "pooling", pooling.gem, "generalised mean, p = 3", {"p": 3.0}),
        MethodSpec("gem-fit", "pooling", pooling.gem,
                   "generalised mean, p chosen on training images (pooling.fit_gem_p)",
                   grid={"p": pooling.GEM_P_GRID}),
        MethodSpec("rmac", "pooling", pooling.rmac, "regional MAC, 3 scales", {"levels": 3}),
        MethodSpec("pca", "whitening", lambda dims: PCAWhitening(dims, shrinkage=1.0),
                   "plain PCA (the paper's compressed codes)"),
        MethodSpec("pcaw", "whitening", lambda dims, shrinkage=0.0: PCAWhitening(dims, shrinkage),
                   "PCA-whitening with shrinkage s (chosen on validation codes)",
                   grid={"shrinkage": (0.0, 0.1, 0.3, 0.6)}),
        MethodSpec("lw", "whitening",
                   lambda dims, shrinkage=0.01: LearnedWhitening(dims, shrinkage),
                   "learned whitening from same-class pairs (Radenovic et al.), its intra-class "
                   "covariance shrunk by s (chosen on validation codes)",
                   grid={"shrinkage": (0.01, 0.1, 0.3)}),
        MethodSpec("aqe", "reranking", reranking.aqe, "average query expansion",
                   grid={"k": (1, 2, 3, 5, 10)}),
        MethodSpec("alpha-qe", "reranking", reranking.alpha_qe,
                   "alpha-weighted query expansion",
                   grid={"k": (2, 5, 10, 20), "alpha": (1.0, 3.0)}),
        MethodSpec("dba", "reranking", reranking.dba, "database-side augmentation",
                   grid={"k": (1, 2, 3, 5, 10), "alpha": (0.0, 3.0)}),
        MethodSpec("k-reciprocal", "reranking", reranking.k_reciprocal,
                   "k-reciprocal re-ranking (Zhong et al.)",
                   grid={"k1": (10, 20, 30), "k2": (3, 6), "lam": (0.3,)}),
        MethodSpec("diffusion", "reranking", reranking.diffusion,
                   "diffusion on the mutual kNN graph (Iscen et al.)",
                   grid={"k": (5, 10, 20, 50), "alpha": (0.99,), "gamma": (3.0,)}),
    ]
    return {s.name: s for s in specs}


REGISTRY: dict[str, MethodSpec] = _specs()


def get(name: str, family: str | None = None) -> MethodSpec:
    """The method called ``name`` (optionally required to be of ``family``)."""
    spec = REGISTRY.get(name)
    if spec is None or (family is not None and spec.family != family):
        names = sorted(n for n, s in REGISTRY.items() if family is None or s.family == family)
        raise NeuralCodesError(f"unknown method {name!r} (choose from {', '.join(names)})")
    return spec


__all__ = ["FAMILIES", "REGISTRY", "FitData", "MethodSpec", "get", "pooling", "reranking",
           "whitening"]
