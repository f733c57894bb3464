"""Loss, top-1 and top-5 accuracy of the ConvNet on the splits (assignment Task 2), in eval mode;
``eval.json`` and ``eval.csv`` of a trained run."""

from __future__ import annotations

import csv
import io
from typing import Any

from neuralcodes import lineage
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import read_json, write_json, write_text
from neuralcodes.runs import TrainedRun
from neuralcodes.training.batches import SplitData
from neuralcodes.training.measure import EVAL_BATCH, evaluate_split

EVAL_SPLITS: tuple[str, ...] = ("train", "val", "test")


def evaluate(run: TrainedRun, *, batch_size: int = EVAL_BATCH,
             force: bool = False) -> dict[str, Any]:
    """Cross-entropy, top-1 and top-5 accuracy on train/val/test (eval mode: no dropout).

    Evaluates the run's checkpoint (``best``: the weights the run kept, ``train.restore_best``)
    on its device, in its precision (``train.precision``; a bf16 run evaluates under bf16
    autocast). Writes ``eval.json`` (which records the precision) and ``eval.csv`` into the run
    directory and returns the eval.json dict. Skipped (the saved dict returned) when eval.json
    records the same fingerprint (:mod:`neuralcodes.lineage`: the weights' sha256, the
    precision, the partition), unless ``force``.
    """
    if batch_size < 1:
        raise NeuralCodesError(f"--batch-size must be positive, got {batch_size}")
    rd, precision = run.dir, run.precision
    fp = lineage.eval_fingerprint(lineage.weights_identity(rd.checkpoint(run.checkpoint)),
                                  precision, run.saved["data"]["splits_hash"])
    if not lineage.needs_run("evaluate", rd.eval_json, fp, force=force):
        return read_json(rd.eval_json)
    model, dev = run.model, run.device
    result: dict[str, Any] = {"checkpoint": run.checkpoint, "epoch": run.epoch,
                              "precision": precision, "splits": {}}
    for name in EVAL_SPLITS:
        data = SplitData.load(run.dataset, run.splits, name, dev)
        result["splits"][name] = evaluate_split(model, data, device=dev, precision=precision,
                                                batch_size=batch_size, progress=run.progress,
                                                desc=name)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["split", "loss", "top1", "top5", "n"])
    for name, m in result["splits"].items():
        writer.writerow([name, f"{m['loss']:.6f}", f"{m['top1']:.6f}", f"{m['top5']:.6f}", m["n"]])
    write_text(rd.eval_csv, buf.getvalue())
    result = lineage.stamped(result, fp)
    write_json(rd.eval_json, result)  # last: eval.csv is current when eval.json is
    return result


def format_eval_table(result: dict[str, Any]) -> str:
    """The eval.json dict as a fixed-width text table."""
    where = f", {result['precision']}" if "precision" in result else ""
    lines = [f"checkpoint: {result['checkpoint']} (epoch {result['epoch']}{where})",
             f"{'split':<6} {'cross-entropy':>13} {'top-1':>8} {'top-5':>8} {'images':>8}"]
    for name, m in result["splits"].items():
        lines.append(f"{name:<6} {m['loss']:>13.4f} {m['top1']:>8.2%} {m['top5']:>8.2%} "
                     f"{m['n']:>8d}")
    return "\n".join(lines)
