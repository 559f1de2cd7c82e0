"""Detector inputs: world annotations as detection targets, a torch Dataset over them, and image resizing.

A world (``scan_viz.scenes.write_world``) stores per split ``{split}_annotations.json``: for each image its
``file_name`` (relative to the world folder) and ``objects`` (``category``, ``box`` x1, y1, x2, y2 pixels,
``colour`` or null, ``kind`` object | stuff). Every object and stuff region is one detection target.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from scan_viz.detect.model import NO_COLOUR, DetectorConfig
from scan_viz.errors import ScanVizError


@dataclasses.dataclass
class WorldImage:
    """One annotated image: ``boxes (n, 4)`` float32 pixels, ``labels (n,)`` and ``colours (n,)`` int64."""

    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    colours: np.ndarray


def read_annotations(world_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """The per-image records of ``{world_dir}/{split}_annotations.json``, in caption order."""
    path = Path(world_dir) / f"{split}_annotations.json"
    if not path.is_file():
        raise ScanVizError(f"{path} not found; pass a world folder written by python -m scan_viz.scenes and a "
                           "split it has (train, dev, test)")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))["images"]
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise TypeError("'images' is not a list of records")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ScanVizError(f"cannot read {path} ({exc}); regenerate the world") from None
    if not records:
        raise ScanVizError(f"{path} lists no images; generate a world with images in the {split} split")
    return records


def load_split(world_dir: str | Path, split: str, config: DetectorConfig) -> list[WorldImage]:
    """The images of ``split`` with their targets as indices into ``config.classes`` / ``config.colours``."""
    world_dir = Path(world_dir)
    class_index = {name: i for i, name in enumerate(config.classes)}
    colour_index = {name: i for i, name in enumerate(config.colours)}
    images = []
    try:
        for record in read_annotations(world_dir, split):
            objects = record["objects"]
            unknown = sorted({o["category"] for o in objects} - class_index.keys())
            if unknown:
                raise ScanVizError(f"{split} image {record['id']}: categories {unknown} are not among the detector's "
                                   "classes; the world and the detector come from different sprite sets, retrain "
                                   "the detector on this world")
            boxes = np.asarray([o["box"] for o in objects], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray([class_index[o["category"]] for o in objects], dtype=np.int64)
            colours = np.asarray([colour_index.get(o.get("colour") or NO_COLOUR, 0) for o in objects], dtype=np.int64)
            images.append(WorldImage(str(record["id"]), world_dir / record["file_name"], int(record["width"]),
                                     int(record["height"]), boxes, labels, colours))
    except (KeyError, TypeError, ValueError) as exc:
        raise ScanVizError(f"{world_dir / f'{split}_annotations.json'} has a malformed record ({exc!r}); "
                           "regenerate the world") from None
    return images


def read_image(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB pixels of an image file."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise ScanVizError(f"cannot read image {path} ({exc}); regenerate the world or restore the file") from None


class DetectionDataset(torch.utils.data.Dataset):
    """``(image (3, H, W) uint8, target)`` pairs for training; ``flip`` mirrors half the images at random.

    Mirroring is safe: no detector class or colour depends on left/right. Randomness comes from torch's
    per-worker generator, so a DataLoader with a seeded ``generator`` gives the same flips on every run.
    """

    def __init__(self, images: list[WorldImage], flip: bool = True) -> None:
        self.images = images
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        item = self.images[index]
        pixels = torch.from_numpy(read_image(item.path).copy()).permute(2, 0, 1)
        boxes = torch.from_numpy(item.boxes.copy())
        if self.flip and bool(torch.rand(()) < 0.5):
            width = pixels.shape[-1]
            pixels = pixels.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        target = {"boxes": boxes, "labels": torch.from_numpy(item.labels.copy()),
                  "colours": torch.from_numpy(item.colours.copy())}
        return pixels.contiguous(), target


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]
            ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Keep images and targets as lists: detection images need not share a size."""
    return [image for image, _ in batch], [target for _, target in batch]


def to_model_input(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(H, W, 3)`` uint8 array or ``(3, H, W)`` uint8 tensor -> ``(3, H, W)`` float32 in [0, 1]."""
    if isinstance(image, torch.Tensor):
        return image.float().div_(255.0)
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1).div_(255.0)


def prepared_size(width: int, height: int, min_size: int = 256, max_size: int = 320) -> tuple[int, int]:
    """``(width, height)`` at the detector's scale: short side ``min_size`` unless that makes the long side
    exceed ``max_size`` (then long side ``max_size``). torchvision's transform computes the same scale, so an
    image of this size passes through it unresized."""
    scale = min(min_size / min(width, height), max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_image(image: Any, what: str = "image") -> np.ndarray:
    """``image`` as a ``(H, W, 3)`` uint8 array, or a ScanVizError saying what was wrong."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ScanVizError(f"{what} is a {array.dtype} array of shape {array.shape}; pass RGB pixels as an "
                           "(H, W, 3) uint8 array (e.g. np.asarray(PIL.Image.open(f).convert('RGB')))")
    if min(array.shape[:2]) < 8:
        raise ScanVizError(f"{what} is {array.shape[1]}x{array.shape[0]} pixels; pass an image at least 8 px "
                           "on each side")
    return array


def prepare_image(image: np.ndarray, min_size: int = 256, max_size: int = 320) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 image to the detector's scale (see :func:`prepared_size`).

    A photo of any size (a 4000x3000 upload, a 160x128 thumbnail) becomes e.g. 320x240; PIL's resampling
    averages over the source pixels when shrinking, which torch's bilinear interpolation would not.
    Returns ``(h, w, 3)`` uint8; the image itself when it already has that size.
    """
    image = check_image(image)
    height, width = image.shape[:2]
    size = prepared_size(width, height, min_size, max_size)
    if size == (width, height):
        return image
    return np.asarray(Image.fromarray(image, "RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)
