"""The transform of an index's codes (:class:`~neuralcodes.retrieval.collection.Transform`),
fitted: per layer the mean code and, for layer 5, the principal axes of up to
:data:`~neuralcodes.retrieval.collection.FIT_IMAGES` training codes of the run (shared by its
indexes), or of the indexed images themselves when the run's training images are not here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from neuralcodes import features, lineage
from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval.codes import extract_codes
from neuralcodes.retrieval.collection import (
    CENTRE_OWN,
    FIT_IMAGES,
    OWN_TRANSFORM,
    PCA5_DIMS,
    Transform,
)
from neuralcodes.retrieval.images import read_images
from neuralcodes.runs import TrainedRun

log = logging.getLogger(__name__)

#: Indexed images a transform is fitted on when the run's training images are not here.
OWN_FIT_MIN = 100
#: Layers stored reduced by PCA (fitted on training codes), and to how many dimensions.
PCA_LAYERS: dict[str, int] = {features.paper_codes()[0]: PCA5_DIMS}


def index_layers(r: TrainedRun) -> tuple[str, ...]:
    """The codes an index of the run holds: the paper's and any other in retrieval.layers."""
    return features.code_layers(r.config.retrieval.layers)


def index_transform(r: TrainedRun, weights: dict[str, Any], relu: bool, batch_size: int,
                    progress: bool, dest: Path, files: list[Path]
                    ) -> tuple[Transform, dict[str, Any]]:
    """The run's transform for indexes (shared by them): kept when it records these weights
    and settings, else fitted on up to :data:`FIT_IMAGES` training images (evenly spread over
    the training split). Without the run's images (its cache deleted: an index needs the
    checkpoint alone), the index's own images are fitted on (none below :data:`OWN_FIT_MIN`
    of them: the plain cosine) and it keeps its transform (:data:`OWN_TRANSFORM`). Returns
    it and what an index records of it (with its digest)."""
    layers = index_layers(r)
    settings = {"part": "transform", "relu": relu, "train.precision": r.precision,
                "pca": PCA_LAYERS, "layers": list(layers)}
    try:
        train = np.asarray(r.splits.train, dtype=np.int64)
    except NeuralCodesError as e:
        fp = lineage.make("index", weights=weights, settings={**settings, "fit": CENTRE_OWN})
        path = dest / OWN_TRANSFORM
        if lineage.check(path, fp) is None:
            transform = Transform.load(path)
        else:
            pick = [files[i] for i in np.unique(np.linspace(
                0, len(files) - 1, min(FIT_IMAGES, len(files))).astype(np.int64))]
            log.info(f"index: the run's training images are not here ({e}); fitting the codes' "
                     f"centring and layer-5 PCA on {len(pick):,} of the indexed images")
            transform = _fit(r, read_images(pick)[0], layers, relu, batch_size, progress)
            if transform.fitted < OWN_FIT_MIN:  # too few to centre on: plain cosine
                transform = Transform({k: np.zeros_like(v) for k, v in transform.mean.items()},
                                      {}, transform.fitted)
            transform.save(path, fp)
        return transform, {**transform.describe(CENTRE_OWN), "digest": lineage.digest(fp)}
    n = min(FIT_IMAGES, len(train))
    fp = lineage.make("index", weights=weights, settings={**settings, "fit_images": n})
    path = r.dir.index_transform(relu, r.precision)
    if lineage.check(path, fp) is None:
        transform = Transform.load(path)
        return transform, {**transform.describe(), "digest": lineage.digest(fp)}
    if n < 2:
        raise NeuralCodesError(f"{r.dir.root}: too few training images to fit the index's "
                               "transform (2 at least)")
    pick = train[np.unique(np.linspace(0, len(train) - 1, n).astype(np.int64))]
    log.info(f"index: fitting the codes' centring and layer-5 PCA on {len(pick):,} training "
             "images (once per index)")
    transform = _fit(r, r.images(pick), layers, relu, batch_size, progress)
    transform.save(path, fp)
    return transform, {**transform.describe(), "digest": lineage.digest(fp)}


def _fit(r: TrainedRun, images: np.ndarray, layers: tuple[str, ...], relu: bool,
         batch_size: int, progress: bool) -> Transform:
    """Per layer the mean code of ``images``, and the PCA axes of :data:`PCA_LAYERS`."""
    codes = extract_codes(r.model, images, layers, relu, batch_size, None, r.precision,
                          progress)
    mean, axes = {}, {}
    for layer in list(codes):
        x = codes.pop(layer)
        mean[layer] = x.mean(axis=0)
        if layer in PCA_LAYERS:
            x -= mean[layer]  # in place: no second copy of the training codes
            axes[layer] = _principal_axes(x, PCA_LAYERS[layer])
        del x
    return Transform(mean, axes, len(images))


def _principal_axes(centred: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` principal axes (rows, unit length) of centred codes (N, D), exact, from
    the N x N Gram matrix: memory of the codes plus the axes, whatever D."""
    gram = (centred @ centred.T).astype(np.float64)
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1]
    keep = [i for i in order[:min(k, centred.shape[1], len(centred) - 1)] if values[i] > 1e-12]
    axes = (vectors[:, keep].T.astype(np.float32) @ centred)
    return axes / np.linalg.norm(axes, axis=1, keepdims=True)
