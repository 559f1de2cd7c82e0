"""scan_viz.boxes.box_iou (torchvision's) against the two numpy IoUs it replaced, restated here."""
from __future__ import annotations

import numpy as np

from scan_viz.boxes import box_iou


def numpy_box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """pointing.box_iou and detect.evaluate.box_iou as they were (the same formula twice)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    corners = rng.integers(0, 40, size=(n, 4)).astype(np.float32)
    boxes = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])], 1)
    boxes[: n // 10, 2] = boxes[: n // 10, 0]  # zero width
    boxes[n // 10: n // 5, [0, 2]] = boxes[n // 10: n // 5, [2, 0]]  # inverted in x
    boxes[n // 5: n // 4] = boxes[n // 5: n // 4, [2, 3, 0, 1]]  # inverted in both
    return boxes


def test_identical_to_the_numpy_iou_bit_for_bit_with_degenerate_and_inverted_boxes():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 120), random_boxes(rng, 90)
    got, want = box_iou(a, b), numpy_box_iou(a, b)
    assert got.dtype == np.float64 and got.shape == (120, 90)
    np.testing.assert_array_equal(got, want)
    assert 0 < np.count_nonzero(want) < want.size and np.isfinite(got).all()


def test_hand_values():
    iou = box_iou(np.array([[0, 0, 10, 10], [0, 0, 0, 0]]),
                  np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]]))
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert box_iou(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)
