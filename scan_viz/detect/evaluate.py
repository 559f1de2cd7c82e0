"""Detection quality: VOC-style average precision at IoU 0.5, per class and its mean (mAP@0.5).

The metric functions are pure numpy over plain arrays; :func:`evaluate_detector` runs a detector over a
world split and feeds them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from scan_viz.boxes import box_iou
from scan_viz.detect.data import load_split, read_image, to_model_input
from scan_viz.detect.model import SceneDetector

IOU_THRESHOLD = 0.5


def match_detections(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray,
                     iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """True positives of one image's detections of one class: ``(n_det,)`` bool, in the given order.

    VOC rule: in decreasing score, a detection is a true positive when its highest-IoU ground truth has
    IoU >= ``iou_threshold`` and was not already taken; a second detection of a taken object is a false positive.
    """
    n_det = len(det_scores)
    is_tp = np.zeros(n_det, dtype=bool)
    if n_det == 0 or len(gt_boxes) == 0:
        return is_tp
    iou = box_iou(det_boxes, gt_boxes)
    best_gt = iou.argmax(axis=1)
    best_iou = iou[np.arange(n_det), best_gt]
    taken = np.zeros(len(gt_boxes), dtype=bool)
    # the one sequential part: whether a detection may take its object depends on the higher-scored ones
    for i in np.argsort(-np.asarray(det_scores), kind="stable"):
        if best_iou[i] >= iou_threshold and not taken[best_gt[i]]:
            taken[best_gt[i]] = is_tp[i] = True
    return is_tp


def average_precision(scores: np.ndarray, is_tp: np.ndarray, n_gt: int) -> float:
    """VOC all-point AP: area under the precision envelope (precision made non-increasing in recall).

    ``scores``/``is_tp``: ``(n_det,)`` over every image of one class; ``n_gt``: that class's objects.
    """
    if n_gt <= 0:
        raise ValueError("average precision needs at least one ground-truth object")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(is_tp, dtype=bool)[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    recall = np.concatenate([[0.0], tp / n_gt, [1.0]])
    precision = np.concatenate([[0.0], tp / np.maximum(tp + fp, 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def mean_average_precision(detections: Sequence[dict[str, np.ndarray]], ground_truth: Sequence[dict[str, np.ndarray]],
                           class_names: Sequence[str], iou_threshold: float = IOU_THRESHOLD) -> dict[str, Any]:
    """AP per class over a set of images and mAP = mean over the classes that have ground truth.

    ``detections[i]``: ``boxes (n, 4)``, ``scores (n,)``, ``labels (n,)``; ``ground_truth[i]``: ``boxes (m, 4)``,
    ``labels (m,)``; labels index ``class_names`` (index 0, background, is never scored). Returns
    ``{"map50", "per_class": {name: AP}, "n_gt": {name: count}, "n_images"}``.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection sets for {len(ground_truth)} images")
    scores: dict[int, list[np.ndarray]] = {}
    hits: dict[int, list[np.ndarray]] = {}
    n_gt: dict[int, int] = {}
    for det, gt in zip(detections, ground_truth):
        det_labels, gt_labels = np.asarray(det["labels"]), np.asarray(gt["labels"])
        det_boxes, gt_boxes = np.asarray(det["boxes"]).reshape(-1, 4), np.asarray(gt["boxes"]).reshape(-1, 4)
        det_scores = np.asarray(det["scores"])
        for label in np.unique(gt_labels):
            n_gt[int(label)] = n_gt.get(int(label), 0) + int((gt_labels == label).sum())
        for label in np.unique(det_labels):
            mine = det_labels == label
            scores.setdefault(int(label), []).append(det_scores[mine])
            hits.setdefault(int(label), []).append(
                match_detections(det_boxes[mine], det_scores[mine], gt_boxes[gt_labels == label], iou_threshold))
    per_class = {}
    for label in sorted(n_gt):
        if label in scores:
            per_class[class_names[label]] = average_precision(np.concatenate(scores[label]),
                                                              np.concatenate(hits[label]), n_gt[label])
        else:
            per_class[class_names[label]] = 0.0
    return {
        "map50": float(np.mean(list(per_class.values()))) if per_class else 0.0,
        "per_class": per_class,
        "n_gt": {class_names[label]: count for label, count in sorted(n_gt.items())},
        "n_images": len(ground_truth),
    }


@torch.no_grad()
def evaluate_detector(model: SceneDetector, world_dir: str | Path, split: str, max_images: int | None = None,
                      batch_size: int = 8, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """mAP@0.5 of ``model`` on a world split (the first ``max_images`` images when given).

    Detections are torchvision's postprocessing (per-class NMS at ``config.box_nms_thresh``, scores above
    ``config.box_score_thresh``, at most ``config.box_detections_per_img``). Returns
    :func:`mean_average_precision`'s dict plus ``map50_objects`` and ``map50_stuff`` (the mean over each kind).
    """
    from scan_viz.scenes.stuff import STUFF

    images = load_split(world_dir, split, model.config)
    if max_images is not None:
        images = images[:max_images]
    was_training = model.training
    model.eval()
    detections: list[dict[str, np.ndarray]] = []
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            outputs = model([to_model_input(read_image(item.path)) for item in batch])
            detections += [{k: v.numpy() for k, v in out.items()} for out in outputs]
            if log is not None and (start // batch_size) % 50 == 49:
                log(f"evaluated {start + len(batch)}/{len(images)} images")
    finally:
        model.train(was_training)
    ground_truth = [{"boxes": item.boxes, "labels": item.labels} for item in images]
    result = mean_average_precision(detections, ground_truth, model.config.classes)
    stuff = [ap for name, ap in result["per_class"].items() if name in STUFF]
    objects = [ap for name, ap in result["per_class"].items() if name not in STUFF]
    result["map50_objects"] = float(np.mean(objects)) if objects else 0.0
    result["map50_stuff"] = float(np.mean(stuff)) if stuff else 0.0
    result["split"] = split
    return result
