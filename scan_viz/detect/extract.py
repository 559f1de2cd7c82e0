"""Region features for SCAN: a fixed number of boxes per image and one feature vector per box.

The contract SCAN relies on (what bottom-up attention's ``generate_tsv.py`` gives it): exactly ``n_regions``
regions per image (36 by default), boxes in the original image's pixels, features ``(n_regions, img_dim)``
float32 where ``img_dim = representation_size + len(colours)``: the box-head representation (ReLU'd, like
pool5 features) followed by the colour head's probabilities, and, when the detector's config sets
``box_geometry``, the box's normalised x1, y1, x2, y2, width, height and area (7 more dims).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torchvision.ops import boxes as box_ops

from scan_viz.detect.data import prepare_image, read_annotations, read_image, to_model_input
from scan_viz.detect.model import SceneDetector, box_geometry
from scan_viz.errors import ScanVizError
from scan_viz.io import atomic_path
from scan_viz.regions.store import RegionStore, load_saved_regions, save_regions
from scan_viz.types import Regions

N_REGIONS = 36
MIN_BOX_SIDE = 1.0  # px at the detector's scale; thinner boxes pool nothing useful


def _select_boxes(proposals: torch.Tensor, class_logits: torch.Tensor, box_regression: torch.Tensor,
                  model: SceneDetector, image_size: tuple[int, int], n_regions: int, score_thresh: float,
                  nms_thresh: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's ``n_regions`` boxes: detections first (by score), then unused RPN proposals.

    Each proposal becomes one candidate: the box regressed for its best non-background class, with that
    class's score. Per-class NMS over the candidates (as bottom-up attention does) keeps boxes of different
    classes that overlap (a bird in the sky). When fewer than ``n_regions`` survive, the next proposals in
    objectness order fill the list, then the whole image. Returns ``boxes (n_regions, 4)`` and ``labels
    (n_regions,)``; a filler's label is -1 (set later from its own features).
    """
    height, width = image_size
    n = len(proposals)
    scores, best = torch.softmax(class_logits, dim=1)[:, 1:].max(dim=1)
    labels = best + 1
    regression = box_regression.reshape(n, -1, 4)[torch.arange(n), labels]
    boxes = box_ops.clip_boxes_to_image(model.roi_heads.box_coder.decode_single(regression, proposals),
                                        (height, width))
    ok = (scores > score_thresh) & ((boxes[:, 2:] - boxes[:, :2]) >= MIN_BOX_SIDE).all(dim=1)
    candidates = ok.nonzero().squeeze(1)
    keep = candidates[box_ops.batched_nms(boxes[candidates], scores[candidates], labels[candidates], nms_thresh)]
    keep = keep[:n_regions]
    chosen_boxes, chosen_labels = [boxes[keep]], [labels[keep]]
    n_missing = n_regions - len(keep)
    if n_missing > 0:
        unused = torch.ones(n, dtype=torch.bool)
        unused[keep] = False
        fillers = proposals[unused][:n_missing]
        chosen_boxes.append(fillers)
        n_missing -= len(fillers)
        if n_missing > 0:
            whole = torch.tensor([[0.0, 0.0, float(width), float(height)]], dtype=proposals.dtype)
            chosen_boxes.append(whole.expand(n_missing, 4))
        chosen_labels.append(torch.full((n_regions - len(keep),), -1, dtype=torch.int64))
    return torch.cat(chosen_boxes), torch.cat(chosen_labels)


@torch.no_grad()
def extract_regions(model: SceneDetector, images: Sequence[np.ndarray], n_regions: int = N_REGIONS,
                    batch_size: int = 8, score_thresh: float = 1e-3, nms_thresh: float | None = None
                    ) -> list[Regions]:
    """Detect and describe exactly ``n_regions`` regions in each ``(H, W, 3)`` uint8 image.

    Images of any size are first resized to the detector's scale (:func:`~scan_viz.detect.data.prepare_image`);
    boxes come back in the original pixels. Per batch: backbone, RPN proposals, box head and per-proposal best
    class, selection (:func:`_select_boxes`), then a second RoIAlign pass over the final boxes gives each
    region's features ``(n_regions, representation_size + n_colours)`` float32 and, for fillers, its label.
    """
    if not isinstance(n_regions, int) or n_regions < 1:
        raise ScanVizError(f"n_regions must be a positive integer, got {n_regions!r}")
    config = model.config
    nms_thresh = config.box_nms_thresh if nms_thresh is None else nms_thresh
    was_training = model.training
    model.eval()
    results: list[Regions] = []
    try:
        for start in range(0, len(images), batch_size):
            originals = list(images[start:start + batch_size])
            prepared = [prepare_image(image, config.min_size, config.max_size) for image in originals]
            image_list, _ = model.transform([to_model_input(image) for image in prepared])
            features = model.features(image_list.tensors)
            proposals, _ = model.rpn(image_list, features)
            heads = model.roi_heads
            rep = heads.representation(features, proposals, image_list.image_sizes)
            class_logits, box_regression = heads.box_predictor(rep)
            per_image = [len(p) for p in proposals]
            selected = [
                _select_boxes(p, logits, regression, model, size, n_regions, score_thresh, nms_thresh)
                for p, logits, regression, size in zip(proposals, class_logits.split(per_image),
                                                        box_regression.split(per_image), image_list.image_sizes)
            ]
            final_boxes = [boxes for boxes, _ in selected]
            # second pass: the features of the boxes SCAN will see, not of the proposals they came from
            region_rep = heads.representation(features, final_boxes, image_list.image_sizes)
            colour_probs = torch.softmax(heads.colour_predictor(region_rep), dim=1)
            own_labels = heads.box_predictor.cls_score(region_rep)[:, 1:].argmax(dim=1) + 1
            region_features = torch.cat([region_rep, colour_probs], dim=1).reshape(len(prepared), n_regions, -1)
            own_labels = own_labels.reshape(len(prepared), n_regions)
            for i, (original, small) in enumerate(zip(originals, prepared)):
                boxes, labels = selected[i]
                labels = torch.where(labels < 0, own_labels[i], labels)
                height, width = original.shape[:2]
                scale = torch.tensor([width / small.shape[1], height / small.shape[0]] * 2)
                boxes = (boxes * scale).clamp(min=0)
                boxes = torch.minimum(boxes, torch.tensor([width, height, width, height], dtype=boxes.dtype))
                features = region_features[i]
                if config.box_geometry:
                    features = torch.cat([features, box_geometry(boxes, float(width), float(height))], dim=1)
                results.append(Regions(
                    features=features.numpy().astype(np.float32, copy=True),
                    boxes=boxes.numpy().astype(np.float32),
                    labels=[config.classes[j] for j in labels.tolist()],
                    image_size=(int(width), int(height)),
                ))
    finally:
        model.train(was_training)
    return results


def extract_world(model: SceneDetector, world_dir: str | Path, split: str, out_dir: str | Path,
                  n_regions: int = N_REGIONS, batch_size: int = 8,
                  log: Callable[[str], None] = print) -> RegionStore:
    """Extract every image of a world split and write it for SCAN, in two layouts, under ``out_dir``:

    - ``{split}_ims.npy`` float32 ``(n_images, n_regions, img_dim)`` and ``{split}_caps.txt`` (copied from the
      world): the official precomputed layout, so ``scan-viz train --data out_dir`` trains on it;
    - ``{split}_regions/``: a :func:`scan_viz.regions.store.save_regions` store with the same features plus ids, boxes
      and image sizes, which the app needs to draw regions.

    Both share one features file (a hard link where the file system allows). Returns the store, reloaded.
    """
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    records = read_annotations(world_dir, split)
    ids, paths = [str(r.get("id")) for r in records], [world_dir / str(r.get("file_name")) for r in records]
    captions = world_dir / f"{split}_caps.txt"
    if not captions.is_file():
        raise ScanVizError(f"{captions} not found; regenerate the world, whose splits each come with captions")
    n_images, img_dim = len(ids), model.config.img_dim
    out_dir.mkdir(parents=True, exist_ok=True)
    boxes = np.zeros((n_images, n_regions, 4), dtype=np.float32)
    sizes = np.zeros((n_images, 2), dtype=np.int64)
    scratch = out_dir / f".{split}_ims.{os.getpid()}.scratch.npy"
    # features go straight to disk: a 20,000-image split is 1.5 GB
    features = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(n_images, n_regions, img_dim))
    try:
        start_time = time.perf_counter()
        for start in range(0, n_images, batch_size):
            batch = [read_image(p) for p in paths[start:start + batch_size]]
            for j, regions in enumerate(extract_regions(model, batch, n_regions, batch_size=batch_size)):
                features[start + j] = regions.features
                boxes[start + j] = regions.boxes
                sizes[start + j] = regions.image_size
            done = start + len(batch)
            if done == n_images or (start // batch_size) % 100 == 99:
                rate = done / max(time.perf_counter() - start_time, 1e-9)
                log(f"extract {split}: {done}/{n_images} images ({rate:.1f} images/s)")
        features.flush()
        store = RegionStore(ids=ids, features=features, boxes=boxes, image_sizes=sizes)
        store_dir = out_dir / f"{split}_regions"
        save_regions(store, store_dir)
        del store, features
        with atomic_path(out_dir / f"{split}_ims.npy") as tmp:
            try:
                os.link(store_dir / "features.npy", tmp)
            except OSError:
                shutil.copyfile(store_dir / "features.npy", tmp)
        with atomic_path(out_dir / f"{split}_caps.txt") as tmp:
            shutil.copyfile(captions, tmp)
    finally:
        scratch.unlink(missing_ok=True)
    log(f"wrote {out_dir / f'{split}_ims.npy'} ({n_images}, {n_regions}, {img_dim}), {split}_caps.txt and "
        f"{split}_regions/")
    return load_saved_regions(out_dir / f"{split}_regions")
