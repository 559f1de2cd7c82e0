"""The hinge triplet loss (scan_viz.train.loss) against VSE++'s definition written out as plain loops."""
from __future__ import annotations

import pytest
import torch

from scan_viz.train.loss import contrastive_loss


def vse_loss_loops(scores: list[list[float]], margin: float, max_violation: bool) -> float:
    """VSE++ (Faghri et al. 2018, eq. 2-3), pair by pair: image i's positive is caption i.

    For each image i and each other caption j: [margin - s(i, i) + s(i, j)]+ (captions ranked for the image);
    for each caption j and each other image i: [margin - s(j, j) + s(i, j)]+ (images ranked for the caption).
    Summed over the negatives (SCAN's and VSE0's loss) or, with max_violation, only the hardest negative of each.
    """
    n = len(scores)
    total = 0.0
    for i in range(n):
        costs = [max(0.0, margin - scores[i][i] + scores[i][j]) for j in range(n) if j != i]
        total += (max(costs) if max_violation else sum(costs)) if costs else 0.0
    for j in range(n):
        costs = [max(0.0, margin - scores[j][j] + scores[i][j]) for i in range(n) if i != j]
        total += (max(costs) if max_violation else sum(costs)) if costs else 0.0
    return total


@pytest.mark.parametrize("max_violation", [False, True], ids=["sum", "max_violation"])
@pytest.mark.parametrize("n, margin, seed", [(1, 0.2, 0), (2, 0.2, 1), (7, 0.2, 2), (16, 0.5, 3), (9, 0.0, 4)])
def test_loss_matches_the_vse_definition(n, margin, seed, max_violation):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, n, generator=generator, dtype=torch.float64) * 2 - 1
    loss = contrastive_loss(scores, margin=margin, max_violation=max_violation)
    expected = vse_loss_loops(scores.tolist(), margin, max_violation)
    assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_hand_computed_two_by_two():
    scores = torch.tensor([[0.9, 0.8], [0.1, 0.2]], dtype=torch.float64)
    # image 0: caption 1 -> [0.2 - 0.9 + 0.8]+ = 0.1; image 1: caption 0 -> [0.2 - 0.2 + 0.1]+ = 0.1
    # caption 0: image 1 -> [0.2 - 0.9 + 0.1]+ = 0;   caption 1: image 0 -> [0.2 - 0.2 + 0.8]+ = 0.8
    assert contrastive_loss(scores, 0.2).item() == pytest.approx(1.0)
    assert contrastive_loss(scores, 0.2, max_violation=True).item() == pytest.approx(1.0)
    assert contrastive_loss(torch.eye(3, dtype=torch.float64), 0.2).item() == 0.0  # every positive wins by 1

