"""Benchmark ``neuralcodes prepare`` on the shared 40-class zip: images/s and peak memory.

Usage: ``python benchmarks/prepare.py [--zip PATH] [--workers N] [--repeat K]``. Builds a fresh
cache in a temporary folder each time and prints one JSON object: the best and median rate, the
time of a second (no-op) call, and the peak resident memory of this process and of its decoding
workers next to the size of the uint8 image array (the issue's bound: peak <= 2x the array).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from neuralcodes.data import Dataset, prepare

SHARED_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tiny-imagenet-40.zip"


def _peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", type=Path, default=SHARED_ZIP)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not args.zip.is_file():
        raise SystemExit(f"benchmark needs the shared zip: {args.zip} is absent")
    baseline = _peak_mib(resource.RUSAGE_SELF)
    rates, noop = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            root = prepare(args.zip, tmp, workers=args.workers, progress=False)
            seconds = time.perf_counter() - t0
            ds = Dataset.load(root)
            n, array_mib = len(ds), ds.images.nbytes / 2**20
            rates.append(n / seconds)
            t0 = time.perf_counter()
            prepare(args.zip, tmp, workers=args.workers, progress=False)
            noop.append(time.perf_counter() - t0)
    print(json.dumps({
        "source": str(args.zip),
        "images": n,
        "workers": args.workers or "default",
        "cpu_count": os.cpu_count(),
        "images_per_s_best": round(max(rates)),
        "images_per_s_median": round(statistics.median(rates)),
        "seconds_median": round(n / statistics.median(rates), 3),
        "noop_seconds_median": round(statistics.median(noop), 3),
        "array_mib": round(array_mib, 1),
        "peak_rss_mib_main": round(_peak_mib(resource.RUSAGE_SELF), 1),
        "peak_rss_mib_main_before": round(baseline, 1),
        "peak_rss_mib_largest_worker": round(_peak_mib(resource.RUSAGE_CHILDREN), 1),
    }, indent=2))


if __name__ == "__main__":
    main()
