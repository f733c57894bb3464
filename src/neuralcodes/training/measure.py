"""Mean cross-entropy, top-1 and top-5 accuracy of a model on one split, in eval mode: the
validation after every epoch (:mod:`.loop`) and the ``evaluate`` stage
(:mod:`neuralcodes.evaluation`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neuralcodes.progress import bar as progress_bar
from neuralcodes.retrieval.metrics import topk_correct
from neuralcodes.runtime import autocast, eval_mode, to_input
from neuralcodes.training.batches import SplitData
from neuralcodes.training.distributed import Dist

#: Images per forward pass when evaluating.
EVAL_BATCH = 200


def evaluate_split(
    model: torch.nn.Module, data: SplitData, *, device: torch.device, precision: str = "fp32",
    channels_last: bool = True, batch_size: int = EVAL_BATCH, progress: bool = False,
    desc: str = "eval", dist: Dist | None = None,
) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 accuracy of ``model`` on ``data`` in eval mode.

    Under distributed training each rank evaluates a contiguous shard and the sums are combined.
    """
    dist = dist or Dist()
    lo, hi = dist.shard(len(data))
    sums = torch.zeros(4, dtype=torch.float64)
    with eval_mode(model), progress_bar(total=hi - lo, unit="img", desc=desc, disable=not progress,
                                leave=False, dynamic_ncols=True) as bar:
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            x = to_input(data.images[start:stop], device, channels_last)
            y = data.labels[start:stop]
            with autocast(device, precision):
                logits = model(x)
            logits = logits.float()
            hits = topk_correct(logits, y, (1, 5))
            loss = F.cross_entropy(logits, y, reduction="sum").item()
            sums += torch.tensor([loss, hits[1], hits[5], stop - start], dtype=torch.float64)
            bar.update(stop - start)
    loss, top1, top5, n = dist.sum(sums).tolist()
    n = max(n, 1)
    return {"loss": loss / n, "top1": top1 / n, "top5": top5 / n, "n": int(n)}
