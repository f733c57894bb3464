"""The methods study (issue 19) on a trained run: its table, time and peak memory.

Usage: ``python benchmarks/methods.py RUN [--data full40] [--train-images N] [--out DIR]``.

``--data run`` (default) measures on the run's own splits (the quick preset: 500 ood, 1,200
training, 150 validation images). ``--data full40`` keeps the run's model but takes the splits
of the whole 40-class zip with the assignment's rule (the last 10 classes ood: 5,000 ood
images, 12,000 training, 1,500 validation), the issue's budget case; the quick run trained on
the first 15 classes only, so those 10 classes are out-of-domain for it too. Writes
``methods.json`` and ``methods.png`` into ``--out`` (default ``test-artifacts/methods/<data>``)
and prints one JSON object: the table in short, seconds per phase, CPU seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from neuralcodes.config import DataConfig
from neuralcodes.files import write_json
from neuralcodes.retrieval.methods.study import (
    SplitImages,
    methods_study,
    run_methods_study,
    run_split_images,
    write_methods_figure,
)
from neuralcodes.runs import TrainedRun

SHARED_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tiny-imagenet-40.zip"


def _full40(trained: TrainedRun, zip_path: Path, train_images: int) -> dict[str, SplitImages]:
    from neuralcodes.data import load_data

    dataset, splits = load_data(DataConfig(source=str(zip_path), ood_classes=10), progress=False)

    class _View:  # the run's model over another partition of the data
        pass

    view = _View()
    view.dataset, view.splits = dataset, splits  # type: ignore[attr-defined]
    view.images = lambda index: dataset.images[np.asarray(index)]  # type: ignore[attr-defined]
    return {"train": run_split_images(view, "train", train_images),
            "val": run_split_images(view, "val"), "ood": run_split_images(view, "ood")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", choices=("run", "full40"), default="run")
    parser.add_argument("--zip", type=Path, default=SHARED_ZIP)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path("test-artifacts") / "methods" / args.data
    trained = TrainedRun.load(args.run, device="cpu")
    wall, cpu = time.perf_counter(), time.process_time()
    if args.data == "run":
        table = run_methods_study(trained, train_images=args.train_images)
    else:
        if not args.zip.is_file():
            raise SystemExit(f"--data full40 needs the shared zip: {args.zip} is absent")
        data = _full40(trained, args.zip, args.train_images)
        table = methods_study(trained.model, data, relu=trained.config.retrieval.relu,
                              device=trained.device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    write_json(out / "methods.json", table)
    write_methods_figure(table, out / "methods.png")
    print(json.dumps({
        "data": args.data, "run": str(args.run), "n_queries": table["n_queries"],
        "train_images": table["fit"]["train_images"], "val_images": table["fit"]["val_images"],
        "seconds": {**table["seconds"], "study_wall": round(wall, 1),
                    "study_cpu": round(cpu, 1)},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "reference": table["reference"], "chance_map": round(table["chance_map"], 4),
        "reranked": table["reranked"], "gem_p": table["fit"]["gem_p"],
        "rows": [{"method": r["method"], "map": round(r["map"], 4),
                  "diff_ci95": [round(v, 4) for v in r["ci95"]],
                  "significant": r["significant"], "ms_per_query": r["ms_per_query"]}
                 for r in table["rows"]],
        "files": [str(out / "methods.json"), str(out / "methods.png")],
        "cpu": platform.processor() or platform.machine(), "threads": args.threads,
        "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
        "load_average": os.getloadavg(),
    }, indent=1))


if __name__ == "__main__":
    main()
