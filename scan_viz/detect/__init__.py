"""A small Faster R-CNN for the synthetic world and the region features SCAN trains on.

    image --prepare_image--> detector --extract_regions--> Regions(boxes, features, labels)

``scan_viz.train.detector.train_detector`` trains it from scratch on a world's train split, ``evaluate_detector`` scores mAP@0.5,
``extract_world`` writes a split's regions in the precomputed layout ``scan-viz train --data`` reads. The
command line is ``python -m scan_viz.detect train|eval|extract``.
"""
from __future__ import annotations

import importlib
from typing import Any

# torch loads on first use, so that ``python -m scan_viz.detect`` can set OpenMP's wait policy before it does
_EXPORTS = {
    "prepare_image": "data",
    "average_precision": "evaluate", "box_iou": "evaluate", "evaluate_detector": "evaluate",
    "mean_average_precision": "evaluate",
    "N_REGIONS": "extract", "extract_regions": "extract", "extract_world": "extract",
    "BACKBONES": "model", "DetectorConfig": "model", "SceneDetector": "model", "build_detector": "model",
    "default_config": "model", "load_detector": "model", "save_detector": "model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"scan_viz.detect.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'scan_viz.detect' has no attribute {name!r}")
