"""What decoding an upload in a killable worker process costs (issue 21).

Usage: ``PYTHONPATH=src python benchmarks/decode_overhead.py [--rounds N]``. Decodes the same
ordinary uploads (a 640x480 photo-like JPEG, a 1024x768 PNG) N times in this process
(:func:`neuralcodes.imageio.decode_image`) and through :class:`neuralcodes.decodepool.DecodePool`
(a reused worker: the bytes go through a pipe, the 64x64 result comes back), in turns (A B C,
so drift cancels): once with the workers at the priority ``serve`` gives them (nice 5: they
yield the CPU to the server's own requests, and to anything else that runs) and once at nice 0
(the cost of the process boundary alone). Prints one JSON object: the medians per file, plus the
time to start the pool (its fork server imports NumPy and Pillow once) and to replace a killed
worker.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from neuralcodes import imageio
from neuralcodes.decodepool import DecodePool, DecodeTimeout


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def photo(width: int, height: int, fmt: str) -> bytes:
    """A smooth image with some noise (compresses like a photo)."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)],
                    -1)
    noise = np.random.default_rng(0).integers(-12, 12, base.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(buf, fmt)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    out: dict[str, object] = {"cpu": cpu_name(), "cpus": os.cpu_count(),
                              "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    pool = DecodePool(1, timeout_s=30)  # nice 5, as `serve` runs it
    plain = DecodePool(1, timeout_s=30, nice=0)
    try:
        t0 = time.perf_counter()
        pool.warm()
        out["pool_start_s"] = round(time.perf_counter() - t0, 3)
        plain.warm()
        for name, data in (("jpeg_640x480", photo(640, 480, "JPEG")),
                           ("png_1024x768", photo(1024, 768, "PNG"))):
            times: dict[str, list[float]] = {"direct": [], "nice5": [], "nice0": []}
            for _ in range(args.rounds):
                for key, run in (("direct", imageio.decode_image), ("nice5", pool.run),
                                 ("nice0", plain.run)):
                    t0 = time.perf_counter()
                    if key == "direct":
                        run(data)
                    else:
                        run(imageio.decode_image, data)
                    times[key].append(time.perf_counter() - t0)
            d, n5, n0 = (statistics.median(times[k]) * 1000 for k in ("direct", "nice5", "nice0"))
            out[name] = {"bytes": len(data), "in_process_ms": round(d, 2),
                         "worker_nice5_ms": round(n5, 2), "worker_nice0_ms": round(n0, 2),
                         "process_boundary_ms": round(n0 - d, 2)}
        with contextlib.suppress(DecodeTimeout):  # killed at 0.1 s
            pool.run(time.sleep, 5, timeout_s=0.1)
        t0 = time.perf_counter()
        pool.run(int, "1")  # starts the replacement, then runs a trivial job
        out["replace_killed_worker_s"] = round(time.perf_counter() - t0, 3)
    finally:
        pool.close()
        plain.close()
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
