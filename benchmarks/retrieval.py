"""Benchmark retrieval: codes img/s, mAP time, single-query latency, approximate search at 1M.

Usage: ``python benchmarks/retrieval.py [--sections codes,map,query,ann] [--ann-n 1000000]``.
Prints one JSON object. Everything runs on generated data, so no trained run is needed:

- ``codes``: neural codes per second of the full-size ConvNet (190 classes) at batch 500, the
  project's extraction against plain PyTorch (and the course's Keras model where TensorFlow is
  installed) per precision, interleaved; medians, bests and ``*_ratio`` keys; the convolution
  kernels ``cpu_conv=auto`` chose for inference at that batch (``kernels``), and with
  ``--forced`` each forced kernel in fp32 too (``project_fp32_vs_fp32:onednn_ratio`` ...).
- ``map``: similarities + ranking + AP for 5,000 ood-like queries (10 classes x 500, each
  querying the other 4,999) for layers 5 (16,384 dims), 6 and 7 (2,048): total time, the
  similarity matrix alone, and the ranking-and-AP part alone (similarities precomputed).
- ``query``: one image -> model -> layer-6 code -> top-5 from a 5,000-image exact index
  (convolution kernels as ``cpu_conv=auto`` chooses them).
- ``ann``: a 1,000,000 x 256 database (the size of PCA-compressed codes; clustered unit
  vectors of low intrinsic dimension, see :func:`pca_like_codes`) in an IVF index: build time,
  single-query and batched latency and recall@5 against exact search, for several ``nprobe``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import keras_codes, plain_codes  # noqa: E402
from neuralcodes.config import Config, TrainConfig  # noqa: E402
from neuralcodes.kernels import cpu as cpu_kernels  # noqa: E402
from neuralcodes.kernels.choice import cpu_identity  # noqa: E402
from neuralcodes.model.build import build_model  # noqa: E402
from neuralcodes.retrieval import CodeIndex, extract_codes, l2_normalize  # noqa: E402
from neuralcodes.retrieval.metrics import (  # noqa: E402
    CHUNK_BYTES,
    ranking_metrics_from_scores,
    self_retrieval_metrics,
)


def _best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def clustered_codes(n: int, dim: int, n_classes: int, spread: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``n_classes`` random centres, ``n // n_classes`` per class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), -(-n // n_classes))[:n]
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x *= spread
    x += rng.standard_normal((n_classes, dim), dtype=np.float32)[labels]
    return l2_normalize(x), labels


def inference_model(precision: str, batch: int, cpu_conv: str = "auto") -> torch.nn.Module:
    """The model as ``neuralcodes codes`` builds it for ``batch`` images per pass in
    ``precision`` (channels-last, the ``cpu_conv`` kernels, the kernels.cpu settings)."""
    cfg = Config(train=TrainConfig(device="cpu", precision=precision, cpu_conv=cpu_conv))
    return build_model(cfg, 190, torch.device("cpu"), inference=True, batch_size=batch)


def bench_codes(batch: int, rounds: int, precisions: list[str],
                forced: bool = False) -> dict[str, Any]:
    """Codes img/s of the project (what ``neuralcodes codes`` runs: channels-last, the
    ``cpu_conv=auto`` kernels chosen for ``batch``, the kernels.cpu settings) against plain
    PyTorch up to fc7 (and the course's Keras model when TensorFlow is installed), one batch of
    ``batch`` images per turn, contenders interleaved for ``rounds`` rounds; ``forced``: also
    the fp32 model with each kernel forced."""
    images = np.random.default_rng(0).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)
    tensor = torch.from_numpy(images)
    contenders: dict[str, Callable[[], Any]] = {}
    kernels: dict[str, Any] = {}
    variants = [(p, "auto") for p in precisions] + (
        [("fp32", k) for k in ("onednn", "nnpack")] if forced and "fp32" in precisions else [])
    for precision, cpu_conv in variants:
        model = inference_model(precision, batch, cpu_conv)
        name = f"project_{precision}" + ("" if cpu_conv == "auto" else f":{cpu_conv}")
        kernels[name] = model.kernel_choice.to_dict()

        def project(m: torch.nn.Module = model, p: str = precision) -> Any:
            return extract_codes(m, images, precision=p, batch_size=batch, progress=False)

        contenders[name] = project
        if cpu_conv == "auto":
            plain = plain_codes(190, precision)
            contenders[f"plain_{precision}"] = lambda f=plain: f(tensor, None)
    keras = keras_codes(190, torch.get_num_threads()) if "fp32" in precisions else None
    if keras is not None:
        contenders["keras_fp32"] = lambda: keras(tensor, None)
    load_before = os.getloadavg()
    for fn in contenders.values():  # warm-up
        fn()
    speeds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            speeds[name].append(batch / (time.perf_counter() - start))
    out: dict[str, Any] = {
        "batch": batch, "rounds": rounds, "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_kernels.native_bf16(), "cpu": cpu_identity(),
        "kernels": kernels,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "keras": "measured" if keras is not None else "not measured (TensorFlow not installed)"}
    for name, v in speeds.items():
        out[f"{name}_img_per_s"] = round(statistics.median(v), 1)
        out[f"{name}_best_img_per_s"] = round(max(v), 1)
    for precision in precisions:
        a, b = speeds[f"project_{precision}"], speeds[f"plain_{precision}"]
        out[f"project_{precision}_vs_plain_ratio"] = round(
            statistics.median(x / y for x, y in zip(a, b, strict=True)), 3)
        if precision == "fp32" and keras is not None:
            out["project_fp32_vs_keras_ratio"] = round(statistics.median(
                x / y for x, y in zip(a, speeds["keras_fp32"], strict=True)), 3)
    for name in speeds:
        if name.startswith("project_fp32:"):
            out[f"project_fp32_vs_{name[8:]}_ratio"] = round(statistics.median(
                x / y for x, y in zip(speeds["project_fp32"], speeds[name], strict=True)), 3)
    return out


def bench_map(repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {"queries": 5000, "database": 4999, "layers": {}}
    total = 0.0
    for layer, dim in (("5", 16384), ("6", 2048), ("7", 2048)):
        codes, labels = clustered_codes(5000, dim, 10, 0.7 * dim**0.25, seed=int(layer))
        seconds = _best(lambda c=codes, lab=labels: self_retrieval_metrics(c, lab, top_k=5),
                        repeat)
        sims_seconds = _best(lambda c=codes: c @ c.T, repeat)
        sims = codes @ codes.T

        def rank_all(s: np.ndarray = sims, lab: np.ndarray = labels,
                     chunk: int = CHUNK_BYTES // (40 * 5000)) -> None:  # as in metrics.py
            for a in range(0, 5000, chunk):
                ranking_metrics_from_scores(s[a:a + chunk], lab[a:a + chunk], lab,
                                            exclude=np.arange(a, min(a + chunk, 5000)), top_k=5)

        ranking = _best(rank_all, repeat)
        m = self_retrieval_metrics(codes, labels)
        out["layers"][layer] = {"dims": dim, "seconds_total": round(seconds, 3),
                                "seconds_similarities": round(sims_seconds, 3),
                                "seconds_ranking_ap": round(ranking, 3), "map": round(m.map, 4)}
        total += seconds
    out["seconds_all_layers"] = round(total, 3)
    return out


def bench_query(repeat: int) -> dict[str, Any]:
    model = inference_model("fp32", 1)  # what `neuralcodes search` runs for one image
    db, _ = clustered_codes(5000, 2048, 10, 3.0, seed=0)
    index = CodeIndex(2048).add(db)
    image = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)

    def one() -> None:
        code = extract_codes(model, image, layers=("6",), progress=False)["6"]
        index.search(code, 5)

    one()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        one()
        times.append(time.perf_counter() - start)
    code = extract_codes(model, image, layers=("6",), progress=False)["6"]
    search_only = _best(lambda: index.search(code, 5), repeat)
    return {"kernels": model.kernel_choice.to_dict(),
            "database": 5000, "layer": "6", "median_ms": round(statistics.median(times) * 1e3, 2),
            "best_ms": round(min(times) * 1e3, 2), "search_only_ms": round(search_only * 1e3, 3)}


def _exact_truth(db: np.ndarray, queries: np.ndarray, out: dict[str, Any]) -> np.ndarray:
    """Exact top-5 (the ground truth) and the exact index's latency, recorded in ``out``."""
    exact = CodeIndex(db.shape[1]).add(db)
    start = time.perf_counter()
    _, truth = exact.search(queries, 5)
    out["exact_batch_ms_per_query"] = round((time.perf_counter() - start) / len(queries) * 1e3, 3)
    out["exact_single_ms"] = round(_best(lambda: exact.search(queries[:1], 5), 3) * 1e3, 2)
    return truth


def pca_like_codes(n: int, n_queries: int, dim: int = 256, latent: int = 32,
                   n_clusters: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(database, queries) shaped like PCA-compressed codes: clusters in a low-dimensional
    latent space embedded in ``dim`` dims with decaying variances, plus a little isotropic
    noise; queries come from the same clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, latent), dtype=np.float32)
    basis = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T.astype(np.float32)
    basis *= np.linspace(1.0, 0.3, latent, dtype=np.float32)[:, None]

    def draw(m: int) -> np.ndarray:
        z = centres[rng.integers(0, n_clusters, m)]
        z += 0.5 * rng.standard_normal((m, latent), dtype=np.float32)
        x = z @ basis
        x += 0.02 * rng.standard_normal((m, dim), dtype=np.float32)
        return l2_normalize(x)

    return draw(n), draw(n_queries)


def bench_ann(n: int, n_queries: int, nlist: int) -> dict[str, Any]:
    start = time.perf_counter()
    db, queries = pca_like_codes(n, n_queries)
    out: dict[str, Any] = {"database": n, "dims": 256, "queries": n_queries, "kind": "ivf",
                           "nlist": nlist, "data_seconds": round(time.perf_counter() - start, 1)}
    truth = _exact_truth(db, queries, out)
    start = time.perf_counter()
    ivf = CodeIndex(256, "ivf", nlist=nlist).add(db)
    out["build_seconds"] = round(time.perf_counter() - start, 1)
    out["nprobe"] = {}
    for nprobe in (4, 16, 64):
        ivf.tune(nprobe=nprobe)
        start = time.perf_counter()
        _, ids = ivf.search(queries, 5)
        batch = (time.perf_counter() - start) / n_queries
        single = statistics.median(
            _best(lambda i=i: ivf.search(queries[i:i + 1], 5), 1) for i in range(20))
        recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, truth, strict=True)])
        out["nprobe"][nprobe] = {"recall@5": round(float(recall), 4),
                                 "single_ms": round(single * 1e3, 3),
                                 "batch_ms_per_query": round(batch * 1e3, 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="codes,map,query,ann")
    parser.add_argument("--codes-batch", type=int, default=500,
                        help="images per forward pass in the codes section (default: 500)")
    parser.add_argument("--codes-rounds", type=int, default=4)
    parser.add_argument("--codes-precisions", default=None,
                        help="default: fp32, and bf16 where the CPU has native bf16")
    parser.add_argument("--forced", action="store_true",
                        help="codes: also fp32 with each convolution kernel forced (cpu_conv)")
    parser.add_argument("--ann-n", type=int, default=1_000_000)
    parser.add_argument("--ann-queries", type=int, default=200)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sections = args.sections.split(",")
    result: dict[str, Any] = {"machine": platform.processor() or platform.machine(),
                              "torch_threads": torch.get_num_threads()}
    if "codes" in sections:
        precisions = (args.codes_precisions.split(",") if args.codes_precisions
                      else ["fp32", "bf16"] if cpu_kernels.native_bf16() else ["fp32"])
        cpu_kernels.configure("cpu")
        result["codes"] = bench_codes(args.codes_batch, args.codes_rounds, precisions,
                                      args.forced)
    if "map" in sections:
        result["map"] = bench_map(args.repeat)
    if "query" in sections:
        result["single_query"] = bench_query(max(args.repeat, 10))
    if "ann" in sections:
        result["ann"] = bench_ann(args.ann_n, args.ann_queries, args.nlist)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
