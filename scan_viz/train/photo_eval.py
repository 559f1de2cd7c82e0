"""The photo gallery's region store, and what is measured on it: pointing per word type, flat function words.

Pointing is :func:`scan_viz.pipeline.pointing_on_gallery` (the Evaluate page's code path) on the photos of one
split (``"split": "dev"|"test"`` in each record); a function word is "drawn flat" when the renderer's rule
(:func:`scan_viz.render.attention_peak`) draws no outline for it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scan_viz.regions.store import RegionStore, save_regions
from scan_viz.errors import ScanVizError
from scan_viz.gallery import GALLERY_FILE, LABELS_FILE, REGIONS_DIR, Gallery, gallery_header
from scan_viz.heads import MatchingHead, resolve_head
from scan_viz.model import ScanModel
from scan_viz.safe_files import read_json

ANNOTATIONS_FILE = "annotations.json"
#: word types of the annotations whose pointing the issue asks for (others are reported too)
REPORTED_TYPES = ("object", "person", "colour", "stuff")


def photo_regions(detector, root: Path, records: list[dict[str, Any]]) -> tuple[RegionStore, list[list[str]]]:
    """Run the photo detector over each record's image file: a padded region store and the region labels."""
    from scan_viz.regions.images import load_image

    found = [detector.regions(load_image(root / r["file"])) for r in records]
    n_max = max(len(r) for r in found)
    dim = found[0].features.shape[1]
    features = np.zeros((len(found), n_max, dim), dtype=np.float32)
    boxes = np.zeros((len(found), n_max, 4), dtype=np.float32)
    for i, regions in enumerate(found):
        features[i, :len(regions)] = regions.features
        boxes[i, :len(regions)] = regions.boxes
    store = RegionStore([r["id"] for r in records], features, boxes,
                        np.array([r.image_size for r in found], dtype=np.int64),
                        np.array([len(r) for r in found], dtype=np.int64))
    return store, [list(r.labels) for r in found]


def build_photo_gallery(detector, root: Path, model_name: str, detector_name: str) -> Path:
    """``root/gallery.json`` + ``root/regions/`` from ``root/annotations.json`` and ``root/images``.

    gallery.json is the annotations' records as they are (captions, words, objects, split), with
    ``indexed_with`` naming the model and detector; the region store is the detector's regions of exactly the
    shipped JPEG files. The annotations and images are left alone."""
    meta = read_json(root / ANNOTATIONS_FILE, "photo annotations")
    if not isinstance(meta, dict) or not isinstance(meta.get("images"), list):
        raise ScanVizError(f"{root / ANNOTATIONS_FILE} is not a gallery.json-style annotation file")
    records = [{**r, "file": r.get("file") or f"images/{r['id']}.jpg"} for r in meta["images"]]
    store, labels = photo_regions(detector, root, records)
    save_regions(store, root / REGIONS_DIR, feature_dtype="float32")
    (root / REGIONS_DIR / LABELS_FILE).write_text(json.dumps(labels, separators=(",", ":")), encoding="utf-8")
    out = {**gallery_header(str(meta.get("name", root.name))), "images": records,
           "indexed_with": {"model": model_name, "detector": detector_name}}
    (root / GALLERY_FILE).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return root / GALLERY_FILE


def split_gallery(gallery: Gallery, split: str) -> Gallery:
    """The gallery's images whose record says ``"split": split`` (same region rows), as a Gallery."""
    rows = [i for i, r in enumerate(gallery.records) if r.get("split") == split]
    if not rows:
        raise ScanVizError(f"the gallery {gallery.name} has no {split} images")
    s = gallery.regions
    store = RegionStore([s.ids[i] for i in rows], np.asarray(s.features)[rows],
                        None if s.boxes is None else np.asarray(s.boxes)[rows],
                        None if s.image_sizes is None else np.asarray(s.image_sizes)[rows],
                        np.asarray(s.n_boxes)[rows])
    labels = None if gallery.region_labels is None else [gallery.region_labels[i] for i in rows]
    return Gallery(gallery.root, f"{gallery.name} ({split})", [gallery.records[i] for i in rows], store, labels)


def word_peaks(model: ScanModel, gallery: Gallery, head: MatchingHead, word_type: str) -> list[dict[str, Any]]:
    """Every annotated word of ``word_type`` in every caption, with whether the renderer draws it flat.

    Each: ``{"image", "caption", "word", "flat", "share", "uniform"}`` (share: the word's largest weight)."""
    from scan_viz.render import attention_peak

    out = []
    emb = model.encode_images(gallery.regions.features)
    for i, record in enumerate(gallery.records):
        caps = [c for c in record["captions"] if c.get("words")]
        if not caps:
            continue
        enc = model.encode_captions([c["text"] for c in caps])
        n_real = int(gallery.regions.n_boxes[i])
        with torch.no_grad():
            attention = head.scores(emb[i:i + 1, :n_real], enc.emb, enc.lengths,
                                    return_attention=True).attention[0].double().numpy()
        for c, caption in enumerate(caps):
            for t, word in enumerate(caption["words"]):
                if word.get("type") != word_type:
                    continue
                peak = attention_peak(attention[c, t + 1])  # +1: <start>
                out.append({"image": record["id"], "caption": caption["text"], "word": word["word"],
                            "flat": bool(peak.flat), "share": peak.share, "uniform": peak.uniform})
    return out


def evaluate_photos(model: ScanModel, gallery: Gallery, split: str, head: MatchingHead | None = None
                    ) -> dict[str, Any]:
    """Pointing per word type with its baselines (the Evaluate path) and the flat share of function words, on
    one split of the photo gallery."""
    from scan_viz.pipeline import pointing_on_gallery

    matcher = resolve_head(head, model)
    part = split_gallery(gallery, split)
    result = pointing_on_gallery(model, part, matcher).to_dict()
    function = word_peaks(model, part, matcher, "function")
    result["function_words"] = {"n": len(function), "flat": sum(w["flat"] for w in function),
                                "flat_percent": 100.0 * sum(w["flat"] for w in function) / max(len(function), 1)}
    result["split"] = split
    result["images"] = len(part)
    result["captions"] = len(part.captions)
    result["head_params"] = {"head": matcher.name, **matcher.hyperparameters()}
    return result
