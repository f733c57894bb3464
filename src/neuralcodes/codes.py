"""Neural codes (assignment Task 3): activations of layers 5, 6 and 7, L2-normalised.

Codes are computed in eval mode (no dropout) under ``torch.inference_mode``, in batches, in fp32
or, optionally, bf16/fp16 autocast; each code is then scaled to unit length, so that the dot
product of two codes is their cosine similarity. Pre-ReLU activations are the default (what the
course's reference solution used, ``RetrievalConfig.relu = False``); post-ReLU ones are the
elementwise ReLU of those, so one forward pass yields both.

A codes file ``runs/<name>/codes/<split>-<pre|post>relu.npz`` holds ``code5``, ``code6``,
``code7`` (float32 (N, D), unit L2 norm), ``index`` (int64 dataset indices), ``labels`` (int64
dataset class indices) and ``relu`` (bool). ``neuralcodes codes RUN`` writes them.

Images from anywhere (``read_images``) are decoded with Pillow, converted to RGB and resized to
64x64 (the whole image, bicubic with antialiasing), the format of the training images.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from tqdm.auto import tqdm

from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import atomic_open
from neuralcodes.model import CODE_LAYERS
from neuralcodes.runs import RunDir, TrainedRun
from neuralcodes.runtime import (
    autocast,
    available_memory,
    eval_mode,
    resolve_device,
    to_input,
)

SPLITS: tuple[str, ...] = ("ood", "train", "val", "test")
DEFAULT_BATCH = 250
IMAGE_SIZE = 64
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


@dataclass
class Codes:
    """Unit-length codes per layer of N images, with their dataset indices and class labels."""

    layers: dict[str, np.ndarray]  # "5" -> (N, 16384) float32, "6"/"7" -> (N, 2048)
    index: np.ndarray  # (N,) int64 dataset indices (or positions in a folder index)
    labels: np.ndarray  # (N,) int64 dataset class indices (-1: unknown)
    relu: bool  # post-ReLU (True) or pre-ReLU (False) activations
    paths: list[str] | None = None  # image files, for an index of a folder (key ``paths``)

    def __len__(self) -> int:
        return len(self.index)

    def save(self, path: str | Path) -> Path:
        """Write the codes file atomically (uncompressed .npz)."""
        arrays = {f"code{k}": v for k, v in self.layers.items()}
        if self.paths is not None:
            arrays["paths"] = np.array(self.paths, dtype=str)
        with atomic_open(path, "wb") as f:  # a file object: np.savez adds no ".npz"
            np.savez(f, index=self.index.astype(np.int64), labels=self.labels.astype(np.int64),
                     relu=np.bool_(self.relu), **arrays)
        return Path(path)


def load_codes(path: str | Path) -> Codes:
    """Read a codes file written by :meth:`Codes.save`."""
    path = Path(path)
    if not path.is_file():
        raise NeuralCodesError(f"{path}: no codes file; create it with `neuralcodes codes RUN`")
    try:
        with np.load(path) as f:
            layers = {k[4:]: f[k] for k in sorted(f.files) if k.startswith("code")}
            paths = f["paths"].tolist() if "paths" in f.files else None
            codes = Codes(layers, f["index"], f["labels"], bool(f["relu"]), paths)
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise NeuralCodesError(f"{path}: not a readable codes file ({e})") from None
    if not layers or any(len(v) != len(codes.index) for v in layers.values()):
        raise NeuralCodesError(f"{path}: codes file is inconsistent (no layers or wrong lengths)")
    return codes


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, in place when possible); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norms, np.float32(1e-12))
    return x


def extract_code_variants(
    model: torch.nn.Module, images_uint8: np.ndarray, layers: Sequence[str] = CODE_LAYERS,
    variants: Sequence[bool] = (False, True), batch_size: int = DEFAULT_BATCH,
    device: str | torch.device | None = None, precision: str = "fp32", progress: bool = True,
) -> dict[bool, dict[str, np.ndarray]]:
    """Unit-length codes of ``images_uint8`` (N, 64, 64, 3) for each ReLU variant, one pass.

    Returns ``{relu: {layer: (N, D) float32}}``; post-ReLU codes are ReLU(pre-ReLU) activations.
    ``device`` None uses the model's device; otherwise the model is moved there.
    """
    if batch_size < 1:
        raise NeuralCodesError(f"batch size must be positive, got {batch_size}")
    images = images_uint8
    if images.ndim != 4 or images.shape[-1] != 3:
        raise NeuralCodesError(f"images must be (N, H, W, 3) uint8, got {images.shape}")
    dev = next(model.parameters()).device if device is None else (
        device if isinstance(device, torch.device) else resolve_device(device))
    model.to(dev)
    n = len(images)
    out: dict[bool, dict[str, np.ndarray]] = {bool(v): {} for v in variants}
    with eval_mode(model), tqdm(total=n, unit="img", desc="codes", disable=not progress,
                                leave=False, dynamic_ncols=True) as bar:
        for start in range(0, n, batch_size):
            x = to_input(np.array(images[start:start + batch_size]), dev)  # writable copy
            with autocast(dev, precision):
                raw = model.codes(x, layers=tuple(layers), relu=False)
            for layer, t in raw.items():
                t = t.float()
                for relu, arrays in out.items():
                    v = (torch.relu(t) if relu else t).cpu().numpy()
                    if layer not in arrays:
                        arrays[layer] = np.empty((n, v.shape[1]), dtype=np.float32)
                    arrays[layer][start:start + len(v)] = l2_normalize(v)
            bar.update(len(x))
    if n == 0:
        raise NeuralCodesError("no images to compute codes for")
    return out


def extract_codes(
    model: torch.nn.Module, images_uint8: np.ndarray, layers: Sequence[str] = CODE_LAYERS,
    relu: bool = False, batch_size: int = DEFAULT_BATCH, device: str | torch.device | None = None,
    precision: str = "fp32", progress: bool = True,
) -> dict[str, np.ndarray]:
    """Unit-length codes ``{layer: (N, D) float32}`` of ``images_uint8`` (N, 64, 64, 3)."""
    return extract_code_variants(model, images_uint8, layers, (relu,), batch_size, device,
                                 precision, progress)[relu]


# --------------------------------------------------------------------------- images from disk


def read_image(path: str | Path | BinaryIO) -> np.ndarray:
    """An image (path or binary file) of any size and common format as uint8 (64, 64, 3) RGB."""
    from neuralcodes import imageio  # imgsec hook: the one place where user images are decoded

    return imageio.decode_image(path, size=IMAGE_SIZE, formats=None,  # imgsec hook
                                max_pixels=imageio.LOCAL_MAX_PIXELS,  # imgsec hook
                                max_decode_bytes=imageio.LOCAL_MAX_DECODE_BYTES)[0]  # imgsec hook


def image_files(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, by suffix), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NeuralCodesError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file())


def read_images(paths: Iterable[str | Path], progress: bool = False
                ) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """Decode many files: (images (N, 64, 64, 3), the paths read, [(path, why)] of failures)."""
    images, ok, failed = [], [], []
    for p in tqdm(list(paths), unit="img", desc="reading", disable=not progress, leave=False):
        try:
            images.append(read_image(p))
            ok.append(Path(p))
        except NeuralCodesError as e:
            failed.append((Path(p), str(e)))
    arr = np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return arr, ok, failed


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
    run: str | Path, split: str = "ood", relu: bool | None = None, *, checkpoint: str = "best",
    device: str = "auto", precision: str = "fp32", batch_size: int = DEFAULT_BATCH,
    progress: bool = True, force: bool = False, trained: TrainedRun | None = None,
) -> dict[bool, Path]:
    """Compute and save the codes of one split of a trained run; ``relu`` None: both variants.

    Files that already exist are kept unless ``force``. ``trained`` may pass the run already
    loaded, to avoid loading it again. Returns ``{relu: path}``.
    """
    rd = RunDir.existing(run)
    variants = (False, True) if relu is None else (bool(relu),)
    paths = {v: rd.codes(split, v) for v in variants}
    todo = [v for v in variants if force or not paths[v].is_file()]
    check_split(split)
    if todo:
        if trained is None:
            trained = TrainedRun.load(rd.root, checkpoint=checkpoint, device=device)
        model, dataset, splits = trained.model, trained.dataset, trained.splits
        index = split_indices(splits, split)
        _check_memory(model, len(index), split, len(todo))
        order = np.argsort(index)
        images = np.empty((len(index), *dataset.images.shape[1:]), dtype=np.uint8)
        images[order] = dataset.images[index[order]]  # sorted reads from the memory map
        result = extract_code_variants(model, images, CODE_LAYERS, todo, batch_size, device,
                                       precision, progress)
        labels = np.asarray(dataset.labels[index], dtype=np.int64)
        for v in todo:
            Codes(result[v], index, labels, v).save(paths[v])
    return paths


def _check_memory(model: Any, n: int, split: str, variants: int) -> None:
    """Refuse, with advice, codes that cannot fit in the memory available (instead of an OOM
    kill): the assignment's train split, both variants, needs ~12 GiB."""
    dims = int(np.prod(model.code5_shape)) + model.fc6.out_features + model.fc7.out_features
    need = n * (dims * 4 * variants + model.image_size ** 2 * 3)
    free = available_memory()
    if free is not None and need > 0.9 * free:
        advice = ("compute one variant at a time (--relu pre, then --relu post)" if variants > 1
                  else "use a machine with more memory")
        raise NeuralCodesError(f"the codes of {n:,} {split} images need about "
                               f"{need / 2**30:.1f} GiB of memory and {free / 2**30:.1f} GiB is "
                               f"available; {advice}")


# --------------------------------------------------------------------------- command line


def _cmd_codes(args: argparse.Namespace) -> int:
    relu = {"pre": False, "post": True, "both": None}[args.relu]
    paths = run_codes(args.run, args.split, relu, checkpoint=args.checkpoint, device=args.device,
                      precision=args.precision, batch_size=args.batch_size,
                      progress=not args.no_progress, force=args.force)
    for path in paths.values():
        codes = load_codes(path)
        dims = ", ".join(f"layer {k}: {v.shape[1]:,}" for k, v in codes.layers.items())
        print(f"{path}: {len(codes):,} images ({dims})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``codes`` subcommand."""
    p = subparsers.add_parser(
        "codes", help="compute the unit-length neural codes of a trained run",
        description="Compute layer 5/6/7 neural codes (eval mode, L2-normalised) of one split "
        "of a trained run and save them to RUN/codes/<split>-<pre|post>relu.npz.")
    p.add_argument("run", help="run directory (runs/<name>)")
    p.add_argument("--split", default="ood", choices=SPLITS, help="which images (default: ood)")
    p.add_argument("--relu", default="both", choices=("pre", "post", "both"),
                   help="pre-ReLU, post-ReLU or both (default: both; pre-ReLU is the study's "
                   "default code)")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--force", action="store_true", help="recompute existing codes files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_codes)
