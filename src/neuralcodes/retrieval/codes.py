"""Neural codes (assignment Task 3): activations of layers 5, 6 and 7, L2-normalised.

Codes are computed in eval mode (no dropout) under ``torch.inference_mode``, in batches, in fp32
or, optionally, bf16/fp16 autocast; each code is then scaled to unit length, so that the dot
product of two codes is their cosine similarity. Pre-ReLU activations are the default (what the
course's reference solution used, ``RetrievalConfig.relu = False``); post-ReLU ones are the
elementwise ReLU of those, so one forward pass yields both.

A codes file ``runs/<name>/codes/<split>-<pre|post>relu.npz`` (:class:`CodeSet`) holds
``code5``, ``code6``, ``code7`` (float32 (N, D), unit L2 norm), ``index`` (int64 dataset
indices), ``labels`` (int64 dataset class indices), ``relu`` (bool), ``precision`` (what the
codes were computed in: fp32, bf16 or fp16; absent in files written before it was recorded),
``made_by`` (the fingerprint of what made them, JSON text: :mod:`neuralcodes.lineage`) and,
for an index of the user's own images, ``paths``. :func:`run_codes` (``neuralcodes codes
RUN``) writes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuralcodes import features, lineage
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import atomic_open
from neuralcodes.progress import bar as progress_bar
from neuralcodes.runs import TrainedRun
from neuralcodes.runtime import (
    INFER_BATCH,
    autocast,
    available_memory,
    eval_mode,
    resolve_device,
    to_input,
)

#: The splits a run's codes can be computed for (the names ``neuralcodes codes --split`` takes).
SPLITS: tuple[str, ...] = ("ood", "train", "val", "test")
DEFAULT_BATCH = INFER_BATCH
VARIANT: dict[bool, str] = {False: "pre", True: "post"}  # file and JSON names of the variants
#: What a command's ``--relu`` takes: a variant's name, or ``both`` (None).
RELU_CHOICES: dict[str, bool | None] = {**{v: k for k, v in VARIANT.items()}, "both": None}


@dataclass
class CodeSet:
    """Unit-length codes per layer of N images, with their dataset indices and class labels."""

    layers: dict[str, np.ndarray]  # feature name -> (N, D) float32, e.g. layer 5: (N, 16384)
    index: np.ndarray  # (N,) int64 dataset indices (or positions in a folder index)
    labels: np.ndarray  # (N,) int64 dataset class indices (-1: unknown)
    relu: bool  # post-ReLU (True) or pre-ReLU (False) activations
    paths: list[str] | None = None  # image files, for an index of a folder (key ``paths``)
    precision: str | None = None  # computed in fp32/bf16/fp16 (None: not recorded)
    made_by: dict[str, Any] | None = None  # the fingerprint of what made them (lineage)

    def __len__(self) -> int:
        return len(self.index)

    def save(self, path: str | Path) -> Path:
        """Write the codes file atomically (uncompressed .npz)."""
        arrays = {f"code{k}": v for k, v in self.layers.items()}
        if self.paths is not None:
            arrays["paths"] = np.array(self.paths, dtype=str)
        if self.precision is not None:
            arrays["precision"] = np.str_(self.precision)
        if self.made_by is not None:
            arrays[lineage.KEY] = np.str_(json.dumps(self.made_by))
        size = sum(a.nbytes for a in arrays.values()) + 16 * len(self.index)
        with atomic_open(path, "wb", size=size) as f:  # a file object: np.savez adds no ".npz"
            np.savez(f, index=self.index.astype(np.int64), labels=self.labels.astype(np.int64),
                     relu=np.bool_(self.relu), **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> CodeSet:
        """Read a codes file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise NeuralCodesError(f"{path}: no codes file; create it with "
                                   "`neuralcodes codes RUN`")
        try:
            with np.load(path) as f:
                layers = {k[4:]: f[k] for k in sorted(f.files) if k.startswith("code")}
                paths = f["paths"].tolist() if "paths" in f.files else None
                precision = str(f["precision"]) if "precision" in f.files else None
                made_by = (json.loads(str(f[lineage.KEY])) if lineage.KEY in f.files
                           else None)
                code_set = cls(layers, f["index"], f["labels"], bool(f["relu"]), paths,
                               precision, made_by if isinstance(made_by, dict) else None)
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise NeuralCodesError(f"{path}: not a readable codes file ({e})") from None
        n = len(code_set.index)
        if (not layers or any(v.ndim != 2 or len(v) != n for v in layers.values())
                or len(code_set.labels) != n or (paths is not None and len(paths) != n)):
            raise NeuralCodesError(f"{path}: codes file is inconsistent (no layers, or its "
                                   "codes, labels and paths differ in length)")
        return code_set


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, in place when possible); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norms, np.float32(1e-12))
    return x


def extract_code_variants(
    model: torch.nn.Module, images_uint8: np.ndarray, layers: Sequence[str] | None = None,
    variants: Sequence[bool] = (False, True), batch_size: int = DEFAULT_BATCH,
    device: str | torch.device | None = None, precision: str = "fp32", progress: bool = True,
) -> dict[bool, dict[str, np.ndarray]]:
    """Unit-length codes of ``images_uint8`` (N, 64, 64, 3) for each ReLU variant, one pass.

    Returns ``{relu: {layer: (N, D) float32}}``; post-ReLU codes are ReLU(pre-ReLU) activations.
    ``layers``: code features by name (None: the paper's). ``device`` None uses the model's
    device; otherwise the model is moved there.
    """
    layers = features.paper_codes() if layers is None else tuple(layers)
    if batch_size < 1:
        raise NeuralCodesError(f"batch size must be positive, got {batch_size}")
    images = images_uint8
    if images.ndim != 4 or images.shape[-1] != 3:
        raise NeuralCodesError(f"images must be (N, H, W, 3) uint8, got {images.shape}")
    if len(images) == 0:
        raise NeuralCodesError("no images to compute codes for")
    dev = next(model.parameters()).device if device is None else (
        device if isinstance(device, torch.device) else resolve_device(device))
    model.to(dev)
    n = len(images)
    out: dict[bool, dict[str, np.ndarray]] = {bool(v): {} for v in variants}
    with eval_mode(model), progress_bar(total=n, unit="img", desc="codes", disable=not progress,
                                leave=False, dynamic_ncols=True) as bar:
        for start in range(0, n, batch_size):
            x = to_input(np.array(images[start:start + batch_size]), dev)  # writable copy
            with autocast(dev, precision):
                raw = model.forward_intermediates(x, layers)
            for layer, t in raw.items():
                t = t.float()
                for relu, arrays in out.items():
                    v = (torch.relu(t) if relu else t).cpu().numpy()
                    if layer not in arrays:
                        arrays[layer] = np.empty((n, v.shape[1]), dtype=np.float32)
                    arrays[layer][start:start + len(v)] = l2_normalize(v)
            bar.update(len(x))
    return out


def extract_codes(
    model: torch.nn.Module, images_uint8: np.ndarray, layers: Sequence[str] | None = None,
    relu: bool = False, batch_size: int = DEFAULT_BATCH, device: str | torch.device | None = None,
    precision: str = "fp32", progress: bool = True,
) -> dict[str, np.ndarray]:
    """Unit-length codes ``{layer: (N, D) float32}`` of ``images_uint8`` (N, 64, 64, 3)."""
    return extract_code_variants(model, images_uint8, layers, (relu,), batch_size, device,
                                 precision, progress)[relu]


# --------------------------------------------------------------------------- codes of a run


def check_split(split: str) -> None:
    """Raise a clear error for an unknown split name."""
    if split not in SPLITS:
        raise NeuralCodesError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")


def split_indices(splits: Any, split: str) -> np.ndarray:
    """Dataset indices of a split, in the split's own order."""
    check_split(split)
    return np.asarray(getattr(splits, split), dtype=np.int64)


def run_codes(
    run: TrainedRun, split: str = "ood", relu: bool | None = None, *,
    batch_size: int = DEFAULT_BATCH, force: bool = False,
) -> dict[bool, Path]:
    """Compute and save the codes of one split of a trained run; ``relu`` None: both variants.

    The codes of :func:`~neuralcodes.features.code_layers` of ``retrieval.layers`` (the
    paper's 5, 6, 7 and any other code feature asked for), on the run's device, in its
    precision (``train.precision``), from its checkpoint. A file is kept when it records the
    same fingerprint (:func:`codes_fingerprint`), unless ``force``; otherwise it is recomputed
    and one line says why. Returns ``{relu: path}``.
    """
    check_split(split)
    if batch_size < 1:
        raise NeuralCodesError(f"batch size must be positive, got {batch_size}")
    rd = run.dir
    variants = (False, True) if relu is None else (bool(relu),)
    paths = {v: rd.codes(split, v) for v in variants}
    fps = {v: codes_fingerprint(run, split, v) for v in variants}
    todo = [v for v in variants
            if lineage.needs_run(f"codes ({split}, {VARIANT[v]}-ReLU)", paths[v], fps[v],
                                 force=force)]
    if todo:
        index = split_indices(run.splits, split)
        layers = features.code_layers(run.config.retrieval.layers)
        _check_memory(run.model, len(index), split, len(todo), layers)
        result = extract_code_variants(run.model, run.images(index), layers, todo, batch_size,
                                       run.device, run.precision, run.progress)
        labels = np.asarray(run.dataset.labels[index], dtype=np.int64)
        for v in todo:
            CodeSet(result[v], index, labels, v, precision=run.precision,
                    made_by=fps[v]).save(paths[v])
    return paths


def codes_fingerprint(run: TrainedRun, split: str, relu: bool) -> lineage.Fingerprint:
    """What the codes of ``split`` in one variant must record to be current: the run's
    checkpoint, precision, partition and the code layers it computes."""
    rd = run.dir
    return lineage.codes_fingerprint(
        lineage.weights_identity(rd.checkpoint(run.checkpoint)), split, relu, run.precision,
        rd.saved()["data"]["splits_hash"],
        features.code_layers(run.config.retrieval.layers), features.paper_codes())


def ood_codes(run: TrainedRun, relu: bool) -> CodeSet:
    """The ood codes of one variant, computed from the run's current weights: recomputed
    (both variants, one line saying why) when they record another fingerprint."""
    path = run.dir.codes("ood", relu)
    why = lineage.check(path, codes_fingerprint(run, "ood", relu))
    if why is not None:
        if not run.reader:
            run_codes(run, "ood", None)
        elif not os.access(path.parent if path.parent.is_dir() else run.dir.root, os.W_OK):
            raise NeuralCodesError(
                f"{path}: {why}, and this process may not write to {run.dir.root}; run "
                f"`neuralcodes codes {run.dir.root}` where it may, then try again")
        else:
            with run.dir.lock("codes (for search)"):
                run_codes(run, "ood", None)
    return CodeSet.load(path)


def _check_memory(model: Any, n: int, split: str, variants: int, layers: Sequence[str]
                  ) -> None:
    """Refuse, with advice, codes that cannot fit in the memory available (instead of an OOM
    kill): the assignment's train split, both variants, needs ~12 GiB."""
    dims = sum(int(np.prod(model.feature_shape(layer))) for layer in layers)
    need = n * (dims * 4 * variants + model.image_size ** 2 * 3)
    free = available_memory()
    if free is not None and need > 0.9 * free:
        advice = ("compute one variant at a time (--relu pre, then --relu post)" if variants > 1
                  else "use a machine with more memory")
        raise NeuralCodesError(f"the codes of {n:,} {split} images need about "
                               f"{need / 2**30:.1f} GiB of memory and {free / 2**30:.1f} GiB is "
                               f"available; {advice}")
