"""Indexes of the user's folders (issue 20): memory, disk, incremental work, search speed,
FAISS recall and the mAP cost of the compact codes. Prints one JSON object.

    python benchmarks/index.py --run runs/quick --images 2000            # memory, disk, re-index
    python benchmarks/index.py --run runs/quick --sections map           # mAP cost on the ood set
    python benchmarks/index.py --tiny --images 50000 --sections memory,recall
    python benchmarks/index.py --run runs/quick --sections recall --index photos  # an index
    python benchmarks/index.py --run runs/quick --sections search        # 1 vs 10 queries

``--tiny`` trains a tiny generated run first (narrow layers: the full model would take hours
on 50,000 images on a CPU). Images are generated (the tests' coloured, striped classes, with
noise), 64x64 to 160x120 PNGs. Memory is the peak RSS of the ``neuralcodes index`` process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def cpu() -> dict[str, Any]:
    info: dict[str, str] = {}
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU family", "Model"):
            info[key.strip()] = value.strip()
    return {"cpu": info, "load": os.getloadavg(), "python": platform.python_version()}


def make_images(folder: Path, n: int, first: int = 0) -> None:
    from PIL import Image

    from helpers import class_image

    rng = np.random.default_rng(first)
    for i in range(first, first + n):
        sub = folder / f"d{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        image = class_image(i % 37, 37, rng)
        w, h = (64, 64) if i % 4 else (160, 120)
        Image.fromarray(image).resize((w, h)).save(sub / f"img{i:06d}.png")


RSS_CHILD = ("import resource, sys; from neuralcodes.cli import main; code = main(sys.argv[1:]); "
             "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
             "file=sys.stderr); sys.exit(code)")


def index_process(run: Path, folder: Path, *extra: str) -> dict[str, Any]:
    """``neuralcodes index`` in a child process: its own peak RSS, time and summary line."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RSS_CHILD, "index", str(folder), "--run",
                           str(run), "--no-progress", *extra], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    rss_kb = int(done.stderr.strip().splitlines()[-1].split()[1])
    return {"seconds": round(time.perf_counter() - t, 1), "peak_rss_mb": round(rss_kb / 1024, 1),
            "summary": done.stdout.strip().splitlines()[-1]}


def memory(run: Path, n: int, work: Path) -> dict[str, Any]:
    """Index n generated images, then again after adding 10."""
    folder = work / "photos"
    make_images(folder, n)
    first = index_process(run, folder, "--name", "bench")
    where = run / "indexes" / "bench"
    disk = sum(p.stat().st_size for p in where.rglob("*") if p.is_file())
    shared = sum(p.stat().st_size for p in (run / "indexes").glob("transform-*.npz"))
    make_images(folder, 10, first=n)
    again = index_process(run, folder, "--name", "bench")
    return {"images": n, "first": first, "disk_bytes": disk,
            "disk_kb_per_image": round(disk / n / 1024, 2), "shared_transform_bytes": shared,
            "after_adding_10": again}


def recall(run: Path, index: str = "bench", queries: int = 200, k: int = 10) -> dict[str, Any]:
    """recall@k of the FAISS search against the exact one, per layer (stored codes as
    queries, each excluding itself), in the run's index ``index``."""
    from neuralcodes.retrieval import Searcher
    from neuralcodes.retrieval.collection import blocked_top_k
    from neuralcodes.runs import TrainedRun

    s = Searcher(TrainedRun.open(run, device="cpu", progress=False), index=index)
    assert s.folder is not None
    out: dict[str, Any] = {"approximate": sorted(s.folder._approx), "images": len(s)}
    rows = np.sort(np.random.default_rng(0).choice(len(s), queries, replace=False))
    for layer in s.layers:
        q = np.asarray(s.folder.layers[layer][rows], dtype=np.float32)
        t = time.perf_counter()
        _, got = s.folder.search(layer, q, k, exclude=rows)
        approx_s = time.perf_counter() - t
        t = time.perf_counter()
        _, want = blocked_top_k(q, s.folder.layers[layer], k, exclude=rows)
        exact_s = time.perf_counter() - t
        hit = [len(set(a) & set(b)) / k for a, b in zip(got, want, strict=True)]
        out[layer] = {"recall@10": round(float(np.mean(hit)), 4),
                      "ms_per_query_faiss": round(1000 * approx_s / queries, 2),
                      "ms_per_query_exact": round(1000 * exact_s / queries, 2)}
    return out


def map_cost(run: Path) -> dict[str, Any]:
    """ood mAP of the study's codes (float32) against the index's (centred, layer 5 by PCA,
    float16), same queries, with the paired bootstrap interval of the difference."""
    from neuralcodes import lineage
    from neuralcodes.retrieval import ood_codes, paired_bootstrap, self_retrieval_metrics
    from neuralcodes.retrieval.fitting import index_transform
    from neuralcodes.runs import TrainedRun

    r = TrainedRun.open(run, progress=False)
    relu = r.relu(None)
    codes = ood_codes(r, relu)
    weights = lineage.weights_identity(r.dir.best_checkpoint)
    transform, described = index_transform(r, weights, relu, 32, False, r.dir.indexes, [])
    out: dict[str, Any] = {"relu": relu, "queries": len(codes), "transform": described}
    for layer, x in codes.layers.items():
        full = self_retrieval_metrics(x, codes.labels, ks=(5,))
        stored = transform.apply(layer, x).astype(np.float16).astype(np.float32)
        small = self_retrieval_metrics(stored, codes.labels, ks=(5,))
        diff = paired_bootstrap(small.ap, full.ap).to_json()
        out[layer] = {"dims": [int(x.shape[1]), int(stored.shape[1])], "map_study": full.map,
                      "map_index": small.map, "diff": diff["diff"], "ci95": diff["ci95"]}
    return out


def search_speed(run: Path, work: Path, rounds: int = 3) -> dict[str, Any]:
    """``neuralcodes search`` of 1 image vs 10 in one call (whole processes, as a user runs
    them), median of ``rounds``, alternating."""
    folder = work / "queries"
    make_images(folder, 10, first=10**6)
    images = sorted(str(p) for p in folder.rglob("*.png"))
    base = [sys.executable, "-m", "neuralcodes", "search", "--run", str(run), "-k", "5"]
    times: dict[int, list[float]] = {1: [], 10: []}
    for _ in range(rounds):
        for n in (1, 10):
            t = time.perf_counter()
            subprocess.run([*base[:4], *images[:n], *base[4:]], check=True,
                           capture_output=True)
            times[n].append(time.perf_counter() - t)
    one, ten = float(np.median(times[1])), float(np.median(times[10]))
    return {"one_s": round(one, 2), "ten_s": round(ten, 2), "ratio": round(ten / one, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a trained run (default with --tiny: a new one)")
    p.add_argument("--tiny", action="store_true", help="train a tiny generated run first")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--sections", default="memory,search", help="memory,recall,map,search")
    p.add_argument("--index", default="bench",
                   help="the run's index that recall measures (default: the one memory builds)")
    args = p.parse_args()
    sections = args.sections.split(",")
    result: dict[str, Any] = {"before": cpu()}
    with tempfile.TemporaryDirectory(prefix="nc-index-") as tmp:
        work = Path(tmp)
        run = args.run
        if args.tiny:
            from tinyrun import build_run

            run = build_run(work / "tiny", classes=6, per_class=20, ood_classes=2,
                            model={"conv_widths": [8, 8, 8, 8, 8], "fc_width": 32},
                            training={"max_epochs": 1, "batch_size": 16})
        if run is None:
            raise SystemExit("--run RUN or --tiny")
        result["run"] = str(run)
        if "memory" in sections:
            result["memory"] = memory(run, args.images, work)
        if "recall" in sections:
            result["recall"] = recall(run, args.index)
        if "map" in sections:
            result["map"] = map_cost(run)
        if "search" in sections:
            result["search"] = search_speed(run, work)
        if "memory" in sections and not args.tiny:
            import shutil

            shutil.rmtree(run / "indexes" / "bench", ignore_errors=True)
    result["after"] = {"load": os.getloadavg()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
