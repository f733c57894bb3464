"""``neuralcodes retrieval``: the ood retrieval study of a trained run (figures, mAP with
chance level and intervals, PCA study, layer evidence)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from neuralcodes.cli.common import (
    add_config_options,
    add_progress_option,
    console_logging,
    run_config,
    run_lock,
)
from neuralcodes.retrieval.codes import RELU_CHOICES, VARIANT
from neuralcodes.retrieval.pca import PCA_FIT_IMAGES

if TYPE_CHECKING:
    from neuralcodes.config import Config
    from neuralcodes.runs import RunDir


def register(p: argparse.ArgumentParser) -> None:
    """The ``retrieval`` command's description and arguments (its summary: ``cli.COMMANDS``)."""
    p.description = (
        "Run the retrieval study of a trained run into RUN/retrieval/. A step is "
        "skipped when its files record the weights (sha256) and settings it would use now, "
        "and reruns, saying why, when they changed. Retrieval settings can be changed with "
        "--set retrieval.KEY=VALUE (k, figure_queries, pca_dims, layers, relu, methods); the "
        "figures are named after their k (top<k>_layer<L>.png). The methods study beyond the "
        "paper (pooled conv descriptors, whitening, re-ranking: methods.json, methods.png) "
        "runs unless --set retrieval.methods=false (or a list of its families: "
        "'[\"pooling\",\"whitening\",\"reranking\"]').")
    p.add_argument("run", help="run directory (runs/<name>)")
    p.add_argument("--index", metavar="NAME", help=(
        "instead of the ood study, measure the index NAME (or an index folder) of a labelled "
        "folder, whose images sit in class subfolders: each image queries the others, "
        "relevant = same first-level subfolder; mAP, mAP@k, P@k and recall@k per layer with "
        "their exact chance levels and bootstrap intervals, into the index folder "
        "(retrieval.json, retrieval.png, report.md, report.html; mAP@k's definition is in "
        "the report); the codes are the index's own (its ReLU variant: --relu and "
        "--pca-images do not apply)"))
    p.add_argument("--relu", default="both", choices=tuple(RELU_CHOICES),
                   help="codes of the figures, evidence and PCA study (both: the run's "
                   "retrieval.relu); map.json always has both")
    p.add_argument("--pca-images", type=int, default=PCA_FIT_IMAGES, metavar="N",
                   help=f"training images the PCA is fitted on (default: {PCA_FIT_IMAGES})")
    p.add_argument("--force", action="store_true", help="redo every step")
    add_progress_option(p)
    add_config_options(p, "--device", "--precision")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from neuralcodes.errors import NeuralCodesError
    from neuralcodes.retrieval import run_study
    from neuralcodes.runs import RunDir, TrainedRun

    if args.pca_images < 2:
        raise NeuralCodesError(f"--pca-images must be at least 2, got {args.pca_images}")
    rd = RunDir.existing(args.run)
    cfg = run_config(args, rd.read_config())
    relu = RELU_CHOICES[args.relu]
    if args.index is not None:
        return _collection(args, rd, cfg)
    with console_logging(), run_lock(rd.root, "retrieval"):
        run = TrainedRun.open(rd.root, cfg, progress=not args.no_progress)
        result = run_study(run, relu=relu, pca_images=args.pca_images, force=args.force)
    maps = result["map"]
    for variant in VARIANT.values():
        for layer, m in sorted(maps.get(variant, {}).items()):
            p10 = "—" if m.get("p@10") is None else f"{m['p@10']:.4f}"
            p5 = "—" if m.get("p@5") is None else f"{m['p@5']:.4f}"
            print(f"{variant}-ReLU layer {layer}: mAP {m['map']:.4f}  P@5 {p5}  P@10 {p10}")
    print(f"chance level (random ranking): mAP {maps['chance_map']:.4f}")
    for variant, best in maps.get("best_layer", {}).items():
        print(f"{variant}-ReLU best layer: "
              + (best or "none significantly better than the others (95% bootstrap)"))
    methods = result.get("methods")
    if methods:
        best = max(methods["rows"], key=lambda r: r["map"])
        print(f"methods study: best {best['method']} mAP {best['map']:.4f} "
              f"({len(methods['rows'])} methods; reference {methods['reference']}); "
              f"verdict in {rd.methods_file('json').name}")
    print(f"written to {rd.retrieval}")
    return 0


def _collection(args: argparse.Namespace, rd: RunDir, cfg: Config) -> int:
    """``--index NAME``: the retrieval of a labelled collection, one line per layer."""
    from neuralcodes.report.collection import collection_report
    from neuralcodes.retrieval.labelled import REPORT_HTML, REPORT_MD
    from neuralcodes.runs import TrainedRun
    from neuralcodes.text import printable

    with console_logging(), run_lock(rd.root, "retrieval"):
        run = TrainedRun.open(rd.root, cfg, progress=not args.no_progress)
        folder, result = collection_report(run, args.index, force=args.force)
    names = result["names"]
    print(f"{printable(result['index'])}: {result['n_images']:,} images, "
          f"{result['n_classes']} classes (each image queries the others)")
    for layer, row in result["layers"].items():
        print(f"layer {layer}: " + "  ".join(f"{n} {row[k]:.4f}" for k, n in names.items()))
    print("chance:   " + "  ".join(f"{n} {result['chance'][k]:.4f}" for k, n in names.items()))
    print(f"report: {printable(folder / REPORT_MD)} and {printable(folder / REPORT_HTML)}")
    return 0
