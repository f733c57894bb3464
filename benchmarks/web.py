"""Benchmark the web app (``neuralcodes serve``): request latencies on a 5,000-image ood set.

Usage: ``python benchmarks/web.py [--run RUN] [--repeat N]``. Without ``--run`` it builds a
generated run first: the full-size ConvNet trained one epoch on 2 generated in-domain classes,
with 10 generated ood classes x 500 images (the assignment's ood set size), so the codes have
the real sizes (layer 5: 16,384 dims). Prints one JSON object: the time to build the app (load
the run, compute and save the 5,000 ood codes if missing) and the median / p90 latency of each
request through FastAPI's test client (in-process: routing, validation, search, JSON; no
network).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tinyrun  # noqa: E402


def build_run(root: Path) -> Path:
    """A generated run with a 5,000-image ood set and the full-size model (see module doc)."""
    return tinyrun.build_run(root, classes=12, per_class=500, ood_classes=10,
                             training={"max_epochs": 1})


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Median and 90th-percentile milliseconds of ``repeat`` calls (after one warm-up)."""
    fn()
    ms = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1000)
    ms.sort()
    return {"median_ms": round(statistics.median(ms), 2),
            "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 2), "n": repeat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: build a generated one)")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from neuralcodes.web import create_app

    out: dict[str, Any] = {"machine": platform.processor() or platform.machine(),
                           "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            t0 = time.perf_counter()
            run = build_run(Path(tmp))
            out["build_generated_run_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        out["run_kernels"] = tinyrun.run_kernels(run)
        client = TestClient(create_app(run, device="cpu"))
        out["create_app_s"] = round(time.perf_counter() - t0, 2)
        info = client.get("/api/info").json()
        n = info["gallery_size"]
        out["ood_images"] = n
        rng = np.random.default_rng(0)
        ids = iter(rng.integers(0, n, 10**6).tolist())

        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(
            buf, format="JPEG", quality=90)
        jpeg = buf.getvalue()

        def ok(r: Any) -> None:
            assert r.status_code == 200, r.text

        t0 = time.perf_counter()
        ok(client.get("/api/results"))
        out["results_first_call_s"] = round(time.perf_counter() - t0, 2)
        out["requests"] = {
            "GET /api/gallery (100 items)": timed(
                lambda: ok(client.get("/api/gallery?limit=100")), args.repeat),
            "GET /api/image/{id} (uncached PNG)": timed(
                lambda: ok(client.get(f"/api/image/{next(ids)}")), args.repeat),
            "GET /api/search/{id} (k=5, 3 layers, AP over the full ranking)": timed(
                lambda: ok(client.get(f"/api/search/{next(ids)}?k=5")), args.repeat),
            "POST /api/search (640x480 JPEG -> model -> 3 layers, k=5)": timed(
                lambda: ok(client.post("/api/search",
                                       files={"file": ("q.jpg", jpeg, "image/jpeg")})),
                args.repeat),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
