"""The hinge triplet loss of SCAN (and VSE++ with ``max_violation``), over a batch score matrix."""
from __future__ import annotations

import torch


def contrastive_loss(scores: torch.Tensor, margin: float = 0.2, max_violation: bool = False) -> torch.Tensor:
    """scores: (batch, batch) image x caption, positives on the diagonal -> scalar loss.

    ``cost_s`` ranks captions for each image (rows), ``cost_im`` images for each caption (columns); the
    diagonal is zeroed; with ``max_violation`` only the hardest negative per row / column counts.
    """
    diagonal = scores.diag().view(-1, 1)
    cost_s = (margin + scores - diagonal).clamp(min=0)       # vs. the positive of the row's image
    cost_im = (margin + scores - diagonal.t()).clamp(min=0)  # vs. the positive of the column's caption
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    cost_s = cost_s.masked_fill(eye, 0)
    cost_im = cost_im.masked_fill(eye, 0)
    if max_violation:
        return cost_s.max(dim=1).values.sum() + cost_im.max(dim=0).values.sum()
    return cost_s.sum() + cost_im.sum()
