"""Box geometry shared by pointing accuracy and detector mAP: boxes are ``(n, 4)`` x1, y1, x2, y2 pixels."""
from __future__ import annotations

import numpy as np
import torch


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` ``(n, 4)`` with every box in ``b`` ``(m, 4)``: ``(n, m)`` float64.

    ``torchvision.ops.box_iou`` in float64, with 0 where it has no number: a pair with no area at all (0 / 0) and
    pairs with an inverted box (x2 < x1 or y2 < y1), which never overlap anything. Such boxes never match.
    """
    # imported here: torchvision adds about 2 s to the start of every command that only reads galleries
    from torchvision.ops import box_iou as torchvision_box_iou

    a_t = torch.from_numpy(np.asarray(a, dtype=np.float64).reshape(-1, 4))
    b_t = torch.from_numpy(np.asarray(b, dtype=np.float64).reshape(-1, 4))
    return torch.nan_to_num(torchvision_box_iou(a_t, b_t), nan=0.0).clamp_(min=0.0).numpy()
