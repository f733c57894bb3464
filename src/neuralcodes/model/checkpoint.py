"""Checkpoint files: written atomically, read back with one clear error for a bad file; the RNG
states a checkpoint holds."""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import atomic_path

#: Bumped when the checkpoint layout changes incompatibly.
CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` to ``path`` atomically: the previous file stays whole until the rename."""
    with atomic_path(path, size=tensor_bytes(obj)) as tmp:
        torch.save(obj, tmp)


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts, lists, tuples), each storage once:
    about the size of ``torch.save(obj)``."""
    seen: dict[int, int] = {}

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list | tuple):
            for v in x:
                walk(v)

    walk(obj)
    return sum(seen.values())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; a missing, truncated or foreign file is a one-line error."""
    if not path.is_file():
        raise NeuralCodesError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # objects beyond tensors and plain data: never loaded
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" (it asks to load {found.group(1)})" if found else ""
        raise NeuralCodesError(f"{path}: not a neuralcodes checkpoint{what}; it holds Python "
                               "objects other than tensors and plain data, and such a file is "
                               "never loaded") from None
    except Exception as e:  # a truncated or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NeuralCodesError(f"{path}: not a readable neuralcodes checkpoint ({first})"
                               ) from e


def network_meta(ckpt: dict[str, Any], cfg: Any, path: Path) -> dict[str, Any]:
    """What rebuilds a checkpoint's network: its ``meta`` (model name, arguments, classes:
    :func:`neuralcodes.model.checkpoint_meta`), or, for a checkpoint written before it held
    one (weights only), the network the run's config describes with as many classes as fc8's
    weights have (``classes`` None); one line for a file that holds neither."""
    from neuralcodes.model import model_spec

    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if isinstance(meta, dict) and {"name", "args", "num_classes"} <= set(meta):
        return meta
    fc8 = ckpt.get("model", {}).get("fc8.weight") if isinstance(ckpt, dict) else None
    if fc8 is None or getattr(fc8, "ndim", 0) != 2:
        raise NeuralCodesError(f"{path}: not a neuralcodes checkpoint (no network description "
                               "and no fc8 weights to count the classes from)")
    name, args = model_spec(cfg.model)
    return {"name": name, "args": args, "num_classes": int(fc8.shape[0]), "image_size": 64,
            "classes": None}


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG state this process draws from (torch, CUDA, numpy, Python), checkpointable."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    random.setstate(state["python"])
