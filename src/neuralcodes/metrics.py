"""Pure metric functions: classification (top-k accuracy) and retrieval (average precision)."""

from __future__ import annotations

import torch


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)
                 ) -> dict[int, int]:
    """How many rows of ``logits`` have their target among the ``k`` highest scores, per k.

    Ties are broken by ``torch.topk``'s order; k larger than the class count counts every row.
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(targets.view(-1, 1))
    return {k: int(hit[:, :min(k, kmax)].any(dim=1).sum()) for k in ks}
