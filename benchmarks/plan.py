"""How close the plan's estimates come to the measured stage times of a real ``run``.

Usage: ``python benchmarks/plan.py [--zip PATH] [--runs N]``. Runs ``neuralcodes run --preset
quick`` on the shared 40-class zip N times into fresh folders and prints one JSON object: per run,
each stage's estimate / measured ratio (``timings.json``) and the median training epoch (the warm-up
epoch left out) against the plan's per-epoch estimate, with the CPU it ran on and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from neuralcodes import cli
from neuralcodes.kernels.choice import cpu_identity

SHARED_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tiny-imagenet-40.zip"


def _one_run(zip_path: Path, root: Path) -> dict[str, Any]:
    out = root / "run"
    argv = ["run", "--preset", "quick", "--data", str(zip_path), "--cache-dir",
            str(root / "cache"), "--out", str(out), "--no-progress"]
    if cli.main(argv) != 0:
        raise SystemExit("the quick run failed")
    timings = json.loads((out / "timings.json").read_text())
    lines = (out / "metrics.jsonl").read_text().splitlines()  # one JSON object per line
    epochs = [json.loads(line)["seconds"] for line in lines if line.strip()]
    ratios: dict[str, Any] = {stage: round(timings["estimate"][stage] / seconds, 3)
                              for stage, seconds in timings["actual"].items() if seconds > 0}
    warm = epochs[1:] or epochs
    ratios["train_epoch"] = round(timings["estimate"]["train_epoch"] / statistics.median(warm), 3)
    kernels = json.loads((out / "config.json").read_text()).get("kernels") or {}
    ratios["kernels"] = kernels.get("layers")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", type=Path, default=SHARED_ZIP)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not args.zip.is_file():
        raise SystemExit(f"benchmark needs the shared zip: {args.zip} is absent")
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(_one_run(args.zip, Path(tmp)))
    print(json.dumps({
        "what": "estimate / measured seconds per stage (1.0 = exact)",
        "runs": runs,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_kind": cpu_identity(),
        "load_average": os.getloadavg(),
    }, indent=2))


if __name__ == "__main__":
    main()
