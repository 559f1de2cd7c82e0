"""A small Faster R-CNN for the synthetic world, trained from scratch on a 2-core CPU.

Architecture is data: a :class:`DetectorConfig` (saved as ``detector.json`` next to the weights) names the
backbone variant from :data:`BACKBONES`, the anchors, the RoI sizes and the class and colour lists, and
:func:`build_detector` turns any config into the same :class:`SceneDetector`.

The detector sees images at the world's scale: 320x256 pixels, objects 17-90 px, stuff bands up to the full
width. ``min_size=256, max_size=320`` keep torchvision's transform from upscaling them to 800 px; other images
are resized by :func:`scan_viz.detect.data.prepare_image` to the same scale (short side 256, long side at most
320) before they reach the model.

On top of torchvision's box head, :class:`SceneRoIHeads` adds a colour-attribute classifier (in the spirit of
bottom-up attention's attribute head) trained on positive proposals with the colour of their matched ground
truth, so that region features carry the colour words SCAN has to ground ("a red car").
"""
from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from scan_viz.errors import ScanVizError
from scan_viz.io import atomic_path
from scan_viz.safe_files import check_safetensors, read_json
from scan_viz.safe_paths import MAX_CONFIG_BYTES

FORMAT = "scan_viz.detector"
VERSION = 1
BACKGROUND = "__background__"
NO_COLOUR = "none"

# Backbone variants by name: (out_channels, stride) of each conv3x3-BN-ReLU block, in order. The product of the
# strides is the feature stride. "tiny-s16" is the default: stride 16 keeps the RPN and the backbone's last
# blocks cheap, and the smallest objects (17-26 px) still cover 2x2 cells, enough for a 7x7 RoIAlign; the
# receptive field (79 px) spans the biggest objects. Measured training speed on 2 idle cores, batch 8:
# tiny-s16 ~17 images/s, narrow-s16 ~18, wide-s16 ~11 (its stride-4 and stride-8 convs cost most).
BACKBONES: dict[str, tuple[tuple[int, int], ...]] = {
    "tiny-s16": ((16, 2), (32, 2), (64, 2), (64, 1), (128, 2), (128, 1)),
    "narrow-s16": ((16, 2), (32, 2), (64, 2), (64, 1), (96, 2), (96, 1)),
    "wide-s16": ((24, 2), (48, 2), (48, 1), (96, 2), (96, 1), (128, 2), (128, 1)),
}


#: What ``box_geometry`` appends to a region's feature, each a fraction of the image (so any image size works).
GEOMETRY_FEATURES = ("x1", "y1", "x2", "y2", "width", "height", "area")


def box_geometry(boxes: Tensor, width: float, height: float) -> Tensor:
    """(n, 4) x1, y1, x2, y2 boxes in pixels of a ``width`` x ``height`` image -> (n, 7) :data:`GEOMETRY_FEATURES`."""
    scaled = boxes / boxes.new_tensor([width, height, width, height])
    w, h = scaled[:, 2] - scaled[:, 0], scaled[:, 3] - scaled[:, 1]
    return torch.cat([scaled, w[:, None], h[:, None], (w * h)[:, None]], dim=1)


@dataclasses.dataclass
class DetectorConfig:
    """Everything needed to rebuild a detector; ``detector.json`` holds these fields (plus derived ones).

    classes: ``[BACKGROUND, *objects, *stuff]``, the class index is the list index. colours: ``[NO_COLOUR,
    *world colours]``. The region feature a detector emits is ``(representation_size + len(colours),)``, plus
    the box's geometry (:data:`GEOMETRY_FEATURES`) when ``box_geometry`` is set.
    """

    classes: list[str]
    colours: list[str]
    backbone: str = "tiny-s16"
    representation_size: int = 512
    anchor_sizes: tuple[int, ...] = (20, 40, 80, 160, 320)
    # torchvision aspect ratio = height / width; 0.25 fits the sky and ground bands (320 x 60-120 px)
    aspect_ratios: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    roi_output_size: int = 7
    sampling_ratio: int = 2
    min_size: int = 256
    max_size: int = 320
    rpn_pre_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_train: int = 300
    rpn_pre_nms_top_n_test: int = 600
    rpn_post_nms_top_n_test: int = 150
    rpn_batch_size_per_image: int = 256
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 96
    box_positive_fraction: float = 0.33
    box_score_thresh: float = 0.01
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    colour_loss_weight: float = 1.0
    # Our detector's choice, not bottom-up attention's (its features carry no geometry): append each region's
    # normalised box to its feature so SCAN can tell sizes, places and counts apart. Off in old detector.json.
    box_geometry: bool = False

    def __post_init__(self) -> None:
        self.anchor_sizes = tuple(int(s) for s in self.anchor_sizes)
        self.aspect_ratios = tuple(float(r) for r in self.aspect_ratios)
        if self.backbone not in BACKBONES:
            raise ScanVizError(f"unknown detector backbone {self.backbone!r}; use one of {', '.join(BACKBONES)}")
        if len(self.classes) < 2 or self.classes[0] != BACKGROUND or len(set(self.classes)) != len(self.classes):
            raise ScanVizError(f"detector classes must be unique and start with {BACKGROUND!r}; rebuild the config "
                               "with default_config()")
        if not self.colours or self.colours[0] != NO_COLOUR:
            raise ScanVizError(f"detector colours must start with {NO_COLOUR!r}; rebuild the config with "
                               "default_config()")

    @property
    def img_dim(self) -> int:
        """Dimension of one region feature: box-head representation + colour probabilities (+ box geometry)."""
        return self.representation_size + len(self.colours) + (len(GEOMETRY_FEATURES) if self.box_geometry else 0)

    @property
    def stride(self) -> int:
        """Feature-map stride of the backbone in input pixels."""
        stride = 1
        for _, s in BACKBONES[self.backbone]:
            stride *= s
        return stride

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict with the derived fields a reader may want (img_dim, stride, input scale)."""
        out = dataclasses.asdict(self)
        out["anchor_sizes"] = list(self.anchor_sizes)
        out["aspect_ratios"] = list(self.aspect_ratios)
        return {"format": FORMAT, "version": VERSION, "img_dim": self.img_dim, "stride": self.stride,
                "input_scale": f"short side {self.min_size} px, long side at most {self.max_size} px", **out}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> DetectorConfig:
        """Inverse of :meth:`to_json`; ``where`` names the file in error messages."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ScanVizError(f"{where} is not a scan_viz detector config; point at a folder written by "
                               "train_detector")
        if data.get("version") != VERSION:
            raise ScanVizError(f"{where} has detector format version {data.get('version')}; this scan_viz reads "
                               f"version {VERSION}, so retrain the detector")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise ScanVizError(f"{where} is missing detector fields ({exc}); retrain the detector") from None


def world_classes() -> tuple[list[str], list[str]]:
    """``(classes, colours)`` of the synthetic world: background + 58 objects + 6 stuff, and none + 11 colours."""
    from scan_viz.scenes.sprites import COLOURS, load_manifest
    from scan_viz.scenes.stuff import STUFF

    return [BACKGROUND, *load_manifest(), *STUFF], [NO_COLOUR, *COLOURS]


def default_config(**overrides: Any) -> DetectorConfig:
    """The world's classes and colours with the default architecture, any field overridden by keyword."""
    classes, colours = world_classes()
    return DetectorConfig(classes=classes, colours=colours, **overrides)


class ConvBackbone(nn.Sequential):
    """Plain conv3x3-BN-ReLU stack: ``(b, 3, H, W)`` -> ``(b, out_channels, H / stride, W / stride)``."""

    def __init__(self, blocks: tuple[tuple[int, int], ...]) -> None:
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels, stride in blocks:
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
                       nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            in_channels = out_channels
        super().__init__(*layers)
        self.out_channels = in_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _axis_weights(start: Tensor, end: Tensor, bins: int, sampling_ratio: int, size: int) -> Tensor:
    """RoIAlign's bilinear sampling weights along one axis: ``(n_rois, bins, size)``.

    ``start``/``end``: ``(n_rois,)`` box edges in feature-map cells. Follows torchvision's ``roi_align`` with
    ``aligned=False`` exactly: the box is at least one cell long, each bin takes ``sampling_ratio`` evenly
    spaced samples, a sample beyond one cell outside the map contributes zero, others are clamped to the map.
    """
    length = (end - start).clamp(min=1.0)
    offsets = (torch.arange(bins, dtype=start.dtype, device=start.device)[:, None]
               + (torch.arange(sampling_ratio, dtype=start.dtype, device=start.device) + 0.5) / sampling_ratio)
    pos = start[:, None, None] + offsets[None] * (length / bins)[:, None, None]  # (n, bins, sampling_ratio)
    inside = ((pos >= -1.0) & (pos <= size)).to(start.dtype)
    pos = pos.clamp(min=0.0)
    low = pos.floor().long()
    at_edge = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(pos), pos - low.to(pos.dtype))
    weights = torch.zeros(*pos.shape, size, dtype=start.dtype, device=start.device)
    weights.scatter_add_(-1, low[..., None], ((1.0 - frac) * inside)[..., None])
    weights.scatter_add_(-1, high[..., None], (frac * inside)[..., None])
    return weights.sum(2) / sampling_ratio


class SeparableRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign([name], output_size, sampling_ratio)`` on one feature map, computed as matrix products.

    RoIAlign's bilinear weights factor into a y part and an x part, so each box's ``(C, k, k)`` output is
    ``Wy (k, H) @ F (C, H, W) @ Wx^T (W, k)``: two batched matmuls per image, multi-threaded forward and
    backward. torchvision's CPU kernel is single-threaded and its backward alone took a third of a training
    step; the numbers are the same (see tests). ``spatial_scale`` = 1 / the backbone stride.
    """

    def __init__(self, featmap_name: str, output_size: int, sampling_ratio: int, spatial_scale: float) -> None:
        super().__init__([featmap_name], output_size, sampling_ratio)
        self.spatial_scale = spatial_scale

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """``x[name]``: ``(b, C, H, W)``; ``boxes``: per image ``(n_i, 4)`` input pixels -> ``(sum n_i, C, k, k)``."""
        features = x[self.featmap_names[0]]
        _, channels, height, width = features.shape
        k = self.output_size[0]
        outputs = []
        for feature, image_boxes in zip(features, boxes):
            n = image_boxes.shape[0]
            scaled = image_boxes.to(feature.dtype) * self.spatial_scale
            wy = _axis_weights(scaled[:, 1], scaled[:, 3], k, self.sampling_ratio, height)  # (n, k, H)
            wx = _axis_weights(scaled[:, 0], scaled[:, 2], k, self.sampling_ratio, width)  # (n, k, W)
            # (n*k, H) @ (H, C*W) -> (n, k*C, W) @ (n, W, k) -> (n, k, C, k)
            rows = (wy.reshape(n * k, height) @ feature.transpose(0, 1).reshape(height, channels * width))
            pooled = rows.reshape(n, k * channels, width) @ wx.transpose(1, 2)
            outputs.append(pooled.reshape(n, k, channels, k).permute(0, 2, 1, 3))
        return torch.cat(outputs).contiguous()


class SceneRoIHeads(RoIHeads):
    """torchvision's box RoI heads plus a colour classifier on the box-head representation.

    Training adds ``loss_colour``: cross-entropy of ``colour_predictor(representation)`` against the colour of
    the ground truth each positive proposal is matched to (targets carry ``colours``, ``(n_gt,)`` int64).
    Inference is torchvision's (per-class boxes, score threshold, per-class NMS).
    """

    def __init__(self, *args: Any, n_colours: int, colour_loss_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        representation_size = self.box_predictor.cls_score.in_features
        self.colour_predictor = nn.Linear(representation_size, n_colours)
        self.colour_loss_weight = colour_loss_weight

    def representation(self, features: dict[str, Tensor], boxes: list[Tensor],
                       image_shapes: list[tuple[int, int]]) -> Tensor:
        """Box-head representation of ``boxes`` (per image ``(n_i, 4)``, input pixels): ``(sum n_i, rep)``."""
        return self.box_head(self.box_roi_pool(features, boxes, image_shapes))

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not self.training:
            rep = self.representation(features, proposals, image_shapes)
            class_logits, box_regression = self.box_predictor(rep)
            boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals,
                                                                image_shapes)
            return [{"boxes": b, "labels": c, "scores": s} for b, c, s in zip(boxes, labels, scores)], {}
        if targets is None:
            raise ValueError("SceneRoIHeads needs targets in training mode")
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        rep = self.representation(features, proposals, image_shapes)
        class_logits, box_regression = self.box_predictor(rep)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        # colour of the matched ground truth, on positives only (a background proposal has no colour)
        colour_targets = torch.cat([t["colours"][m] if t["colours"].numel() else torch.zeros_like(m)
                                    for t, m in zip(targets, matched_idxs)])
        positive = torch.cat(labels) > 0
        if positive.any():
            loss_colour = F.cross_entropy(self.colour_predictor(rep[positive]), colour_targets[positive])
        else:
            loss_colour = rep.sum() * 0.0
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg,
                    "loss_colour": self.colour_loss_weight * loss_colour}


class SceneTransform(GeneralizedRCNNTransform):
    """torchvision's transform, except that an image already at the detector's scale is not interpolated.

    torchvision always calls ``interpolate`` (a full bilinear pass even at scale 1.0); images from the world and
    from :func:`scan_viz.detect.data.prepare_image` are already at the right size, so they skip it.
    """

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None
               ) -> tuple[Tensor, dict[str, Tensor] | None]:
        height, width = image.shape[-2:]
        short, long = min(height, width), max(height, width)
        target_size = float(self.min_size[-1])
        if min(target_size / short, self.max_size / long) == 1.0:
            return image, target
        return super().resize(image, target)


class SceneDetector(FasterRCNN):
    """torchvision ``FasterRCNN`` with a :class:`ConvBackbone`, one feature map and :class:`SceneRoIHeads`.

    Input: a list of ``(3, H, W)`` float tensors in [0, 1] at the world's scale (short side 256, long side
    <= 320; see :func:`scan_viz.detect.data.prepare_image`). Training targets per image: ``boxes (n, 4)``
    x1, y1, x2, y2 pixels float32, ``labels (n,)`` int64 indices into ``config.classes`` and ``colours (n,)``
    int64 indices into ``config.colours``. ``self.config`` is the :class:`DetectorConfig` it was built from.
    """

    def __init__(self, config: DetectorConfig) -> None:
        backbone = ConvBackbone(BACKBONES[config.backbone])
        anchors = AnchorGenerator(sizes=(config.anchor_sizes,), aspect_ratios=(config.aspect_ratios,))
        roi_pool = SeparableRoIAlign("0", config.roi_output_size, config.sampling_ratio, 1.0 / config.stride)
        box_head = TwoMLPHead(backbone.out_channels * config.roi_output_size ** 2, config.representation_size)
        box_predictor = FastRCNNPredictor(config.representation_size, len(config.classes))
        super().__init__(
            backbone, num_classes=None, min_size=config.min_size, max_size=config.max_size,
            rpn_anchor_generator=anchors, box_roi_pool=roi_pool, box_head=box_head, box_predictor=box_predictor,
            rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
            rpn_batch_size_per_image=config.rpn_batch_size_per_image,
            box_batch_size_per_image=config.box_batch_size_per_image,
            box_positive_fraction=config.box_positive_fraction,
            box_score_thresh=config.box_score_thresh, box_nms_thresh=config.box_nms_thresh,
            box_detections_per_img=config.box_detections_per_img,
        )
        self.transform = SceneTransform(config.min_size, config.max_size, self.transform.image_mean,
                                        self.transform.image_std)
        heads = self.roi_heads
        self.roi_heads = SceneRoIHeads(
            heads.box_roi_pool, heads.box_head, heads.box_predictor,
            config.box_fg_iou_thresh, config.box_bg_iou_thresh,
            config.box_batch_size_per_image, config.box_positive_fraction, None,
            config.box_score_thresh, config.box_nms_thresh, config.box_detections_per_img,
            n_colours=len(config.colours), colour_loss_weight=config.colour_loss_weight,
        )
        self.config = config

    @property
    def img_dim(self) -> int:
        """Dimension of the region features :func:`scan_viz.detect.extract_regions` returns."""
        return self.config.img_dim

    def features(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """Backbone feature map of a padded, normalised batch ``(b, 3, H, W)``: ``{"0": (b, C, H/s, W/s)}``."""
        return OrderedDict([("0", self.backbone(images))])


def build_detector(config: DetectorConfig) -> SceneDetector:
    """A freshly initialised detector for ``config`` (train mode, CPU)."""
    return SceneDetector(config)


CONFIG_FILE = "detector.json"
WEIGHTS_FILE = "detector.safetensors"


def save_detector(model: SceneDetector, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``detector.safetensors`` and ``detector.json`` into ``directory``, each atomically; returns it.

    ``extra`` (e.g. training summary) is stored under ``"training"`` in the JSON; it is not read back.
    """
    directory = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    meta = model.config.to_json()
    if extra:
        meta["training"] = extra
    with atomic_path(directory / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return directory


def read_config(directory: str | Path) -> DetectorConfig:
    """The :class:`DetectorConfig` stored in ``directory/detector.json``."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ScanVizError(f"{path} not found; pass a detector folder written by train_detector "
                           "(python -m scan_viz.detect train)")
    try:
        data = read_json(path, "detector config", max_bytes=MAX_CONFIG_BYTES)
    except ScanVizError as exc:
        raise ScanVizError(f"{exc}; retrain the detector or restore the file") from None
    return DetectorConfig.from_json(data, str(path))


def load_detector(directory: str | Path) -> SceneDetector:
    """The detector saved in ``directory`` (``detector.json`` + ``detector.safetensors``), in eval mode."""
    config = read_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise ScanVizError(f"{weights} not found; the detector folder is incomplete, retrain or restore it")
    check_safetensors(weights, "detector weights")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ScanVizError(f"cannot read {weights} ({str(exc).splitlines()[0] if str(exc) else exc}); it is not a "
                           "valid safetensors file, retrain or restore the detector") from None
    model = build_detector(config)
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ScanVizError(f"{weights} does not match {CONFIG_FILE} (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}); the two files come from different detectors, retrain")
    for key, value in expected.items():
        if value.shape != state[key].shape:
            raise ScanVizError(f"{weights}: {key} has shape {tuple(state[key].shape)}, the config needs "
                               f"{tuple(value.shape)}; the files come from different detectors, retrain")
    model.load_state_dict(state)
    return model.eval()
