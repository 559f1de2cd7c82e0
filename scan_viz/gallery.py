"""A gallery: images + captions + ground truth + precomputed regions, what the app and `eval --gallery` use.

Layout of a gallery folder (``examples/gallery``; the full reference is docs/gallery-format.md)::

    images/{id}.jpg        the image; its file stem is the image id used everywhere (deep links included)
    gallery.json           {"format", "format_version", "name", "images": [{"id", "file", "width", "height",
                            "objects": [{"category", "box", "kind", "colour", ...}],
                            "captions": [{"text", "words": [{"word", "type", "boxes"}], "claims": {...}}]}]}
    regions/               a scan_viz.data region store (features, boxes, labels via region_labels.json)

Version 1 (``"format": "scan-viz-gallery/1"``, no ``format_version``: the bundled gallery) needs every image's
``file``; version 2 (``"format": "scan-viz-gallery", "format_version": 2``, what :func:`write_gallery` writes)
lets a gallery have no images (no ``file``), as one built from the official precomputed features.

Captions are numbered image by image (caption k of the flattened list belongs to ``caption_image[k]``).
``claims`` (optional; :mod:`scan_viz.scenes.claims`) say what a generated caption claims, so the truth check
(:mod:`scan_viz.truth`) can tell which other images it is true of; ``python -m scan_viz.truth annotate`` adds them.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from scan_viz.data import RegionStore, load_saved_regions
from scan_viz.errors import ScanVizError
from scan_viz.safe_files import LoadBudget, OverBudget, budget_or_default, read_json
from scan_viz.safe_paths import MB

GALLERY_FORMAT = "scan-viz-gallery"
#: The version write_gallery writes, and every version load_gallery reads.
FORMAT_VERSION = 2
FORMAT_VERSIONS = (1, 2)
#: The ``format`` of version-1 files, which carry no ``format_version``.
FORMAT_V1 = "scan-viz-gallery/1"
GALLERY_FILE = "gallery.json"
REGIONS_DIR = "regions"
LABELS_FILE = "region_labels.json"
REBUILD_HINT = "rebuild it with `python -m scan_viz.train.bundle` (see pretrained/README.md)"
#: gallery.json of the bundled 1,000 images is 3.5 MB.
MAX_RECORDS_BYTES = 256 * MB


@dataclasses.dataclass
class Gallery:
    """An in-memory gallery; ``regions`` features are (n_images, n_regions, img_dim) float32."""

    root: Path
    name: str
    records: list[dict[str, Any]]
    regions: RegionStore
    region_labels: list[list[str]] | None
    #: ``{"model", "detector"}`` that made the region features (gallery.json's ``indexed_with``), if it says
    indexed_with: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.ids = [r["id"] for r in self.records]
        self._index = {image_id: i for i, image_id in enumerate(self.ids)}
        self.captions = [c["text"] for r in self.records for c in r["captions"]]
        self.caption_image = np.array([i for i, r in enumerate(self.records) for _ in r["captions"]], dtype=np.int64)
        self.caption_words = [c.get("words") for r in self.records for c in r["captions"]]
        self.caption_claims = [c.get("claims") for r in self.records for c in r["captions"]]

    def __len__(self) -> int:
        return len(self.records)

    def index_of(self, image_id: str) -> int:
        if image_id not in self._index:
            raise ScanVizError(f"no image {image_id!r} in the gallery {self.name}; pick one of its ids "
                               f"(e.g. {self.ids[0]})")
        return self._index[image_id]

    @property
    def has_images(self) -> bool:
        """Whether every image has its picture (a gallery built from precomputed features has none)."""
        return all(r.get("file") for r in self.records)

    def has_image(self, image_id: str) -> bool:
        return bool(self.records[self.index_of(image_id)].get("file"))

    def image_path(self, image_id: str) -> Path:
        file = self.records[self.index_of(image_id)].get("file")
        if not file:
            raise ScanVizError(f"the gallery {self.name} has no picture of this image (built from region features "
                               "alone): nothing can be drawn on it, but it can be scored and retrieved")
        return self.root / file

    def load_image(self, image_id: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        from scan_viz.images import load_image

        return load_image(self.image_path(image_id))

    def captions_of(self, image_id: str) -> list[str]:
        return [c["text"] for c in self.records[self.index_of(image_id)]["captions"]]

    def caption_indices_of(self, image_id: str) -> np.ndarray:
        return np.flatnonzero(self.caption_image == self.index_of(image_id))

    def regions_of(self, image_id: str) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
        """features (n_regions, img_dim), boxes (n_regions, 4), labels of one image."""
        i = self.index_of(image_id)
        labels = self.region_labels[i] if self.region_labels is not None else None
        boxes = self.regions.boxes[i] if self.regions.boxes is not None else None
        return np.asarray(self.regions.features[i]), boxes, labels

    def ground_truth_boxes(self, image_id: str) -> list[dict[str, Any]]:
        return self.records[self.index_of(image_id)].get("objects", [])

    def claims_of(self, text: str) -> dict[str, Any] | None:
        """The claims of the gallery caption ``text`` (case and spacing ignored), None if it is not one or has none.

        A caption's claims follow from its words, so every gallery caption with this text claims the same.
        """
        wanted = " ".join(text.lower().split())
        return next((claims for caption, claims in zip(self.captions, self.caption_claims)
                     if claims is not None and " ".join(caption.lower().split()) == wanted), None)

    @property
    def has_claims(self) -> bool:
        """Whether every caption carries claims (then the truth check applies to the whole gallery)."""
        return bool(self.caption_claims) and all(c is not None for c in self.caption_claims)

    @functools.cached_property
    def scenes(self):
        """Every image's :class:`scan_viz.truth.SceneFacts` (only for a gallery of the generated world)."""
        from scan_viz.truth import SceneFacts

        return [SceneFacts.from_record(r) for r in self.records]

    @functools.cached_property
    def truth(self) -> np.ndarray | None:
        """(n_captions, n_images) bool: caption k is true of image i; None without claims. Computed once."""
        if not self.has_claims:
            return None
        from scan_viz.truth import truth_matrix

        return truth_matrix(self.caption_claims, self.scenes)


def gallery_header(name: str) -> dict[str, Any]:
    """The first keys of a gallery.json written now."""
    return {"format": GALLERY_FORMAT, "format_version": FORMAT_VERSION, "name": name}


def format_version(meta: Any, where: Path) -> int:
    """The format version of a parsed gallery.json; a ScanVizError (one line) for anything this code cannot read."""
    if not isinstance(meta, dict) or meta.get("format") not in (GALLERY_FORMAT, FORMAT_V1):
        raise ScanVizError(f"{where} is not a scan-viz gallery file (its \"format\" is not {GALLERY_FORMAT!r}); "
                           f"{REBUILD_HINT}")
    version = meta.get("format_version", 1)  # version 1 files carry none
    if isinstance(version, bool) or not isinstance(version, int) or version not in FORMAT_VERSIONS:
        raise ScanVizError(f"{where} is in gallery format version {str(version)[:20]!r}; this scan-viz reads versions "
                           f"{', '.join(map(str, FORMAT_VERSIONS))}: update scan-viz or rebuild the gallery with "
                           "`scan-viz gallery build`")
    missing = [key for key in ("images",) if key not in meta]
    if missing or not isinstance(meta["images"], list):
        raise ScanVizError(f"{where} lacks its \"images\" list (gallery format version {version}); {REBUILD_HINT}")
    return version


def load_gallery(path: str | Path, budget: LoadBudget | None = None) -> Gallery:
    """Read and check a gallery folder; anything missing or inconsistent is a ScanVizError naming it.

    Region arrays read into memory are charged to ``budget`` (:class:`~scan_viz.safe_files.LoadBudget`)."""
    root = Path(path)
    budget = budget_or_default(budget)  # one budget for every file of the gallery
    if not (root / GALLERY_FILE).is_file():
        raise ScanVizError(f"{root} is not a gallery (no {GALLERY_FILE}); {REBUILD_HINT}")
    meta = _read_json(root / GALLERY_FILE, budget)
    version = format_version(meta, root / GALLERY_FILE)
    records = meta["images"]
    # version 1 needs every image's file; from version 2 a gallery may have no pictures at all
    required = ("id", "file", "captions") if version == 1 else ("id", "captions")
    for n, r in enumerate(records, start=1):
        if not isinstance(r, dict) or not set(required) <= set(r):
            raise ScanVizError(f"{root / GALLERY_FILE}: image record {n} lacks "
                               f"{'/'.join(k for k in required if not isinstance(r, dict) or k not in r)} (gallery "
                               f"format version {version} needs {', '.join(required)}); {REBUILD_HINT}")
        if not isinstance(r["captions"], list) or not all(isinstance(c, dict) and isinstance(c.get("text"), str)
                                                          for c in r["captions"]):
            raise ScanVizError(f"{root / GALLERY_FILE}: the captions of image record {n} are not a list of "
                               f"{{\"text\": ...}}; {REBUILD_HINT}")
        if r.get("file") is None and version > 1:
            continue
        # an image file must lie inside the gallery folder, whoever wrote gallery.json; records are not quoted
        file = PurePosixPath(str(r["file"]))
        if file.is_absolute() or ".." in file.parts or not (root / file).is_file():
            raise ScanVizError(f"{root / GALLERY_FILE}: the image of record {n} is missing or outside the gallery "
                               f"folder; {REBUILD_HINT}")
    regions = load_saved_regions(root / REGIONS_DIR, budget)
    if regions.ids != [r["id"] for r in records]:
        raise ScanVizError(f"{root}: the region store's image ids do not match {GALLERY_FILE}; {REBUILD_HINT}")
    labels = None
    if (root / REGIONS_DIR / LABELS_FILE).is_file():
        labels = _read_json(root / REGIONS_DIR / LABELS_FILE, budget)
        if not (isinstance(labels, list) and len(labels) == len(records)):
            raise ScanVizError(f"{root / REGIONS_DIR / LABELS_FILE} does not hold one list of region labels per "
                               f"image; {REBUILD_HINT}")
    indexed = meta.get("indexed_with")
    return Gallery(root, str(meta.get("name", root.name)), records, regions, labels,
                   indexed if isinstance(indexed, dict) else None)


def _read_json(path: Path, budget: LoadBudget | None) -> Any:
    try:
        return read_json(path, "gallery file", max_bytes=MAX_RECORDS_BYTES, budget=budget)
    except OverBudget:
        raise
    except ScanVizError as exc:  # a gallery is named by its folder, as the other messages here do
        raise ScanVizError(f"{exc} (in {path.parent}); {REBUILD_HINT}") from None


def write_gallery(out_dir: str | Path, name: str, records: list[dict[str, Any]],
                  images: list[np.ndarray | bytes | None],
                  regions: RegionStore, region_labels: list[list[str]] | None, jpeg_quality: int = 90,
                  feature_dtype: str = "float16") -> None:
    """Write a gallery atomically (format version 2): JPEG images, gallery.json, the region store (features in
    ``feature_dtype``).

    An image given as ``bytes`` is an encoded JPEG written as it is, so the regions extracted from exactly those
    pixels stay the regions of the shipped file; an array is encoded at ``jpeg_quality``; None: the image has no
    picture (its record gets no ``file``).
    """
    from PIL import Image

    from scan_viz.data import save_regions
    from scan_viz.io import write_dir_atomic

    def write(tmp: Path) -> None:
        if any(image is not None for image in images):
            (tmp / "images").mkdir()
        out_records = []
        for record, image in zip(records, images, strict=True):
            if image is None:
                out_records.append({k: v for k, v in record.items() if k != "file"})
                continue
            rel = f"images/{record['id']}.jpg"
            if isinstance(image, bytes):
                (tmp / rel).write_bytes(image)
            else:
                Image.fromarray(image).save(tmp / rel, quality=jpeg_quality, optimize=True)
            out_records.append({**record, "file": rel})
        (tmp / GALLERY_FILE).write_text(json.dumps({**gallery_header(name), "images": out_records},
                                                   separators=(",", ":")), encoding="utf-8")
        save_regions(regions, tmp / REGIONS_DIR, feature_dtype=feature_dtype)
        if region_labels is not None:
            (tmp / REGIONS_DIR / LABELS_FILE).write_text(json.dumps(region_labels, separators=(",", ":")),
                                                         encoding="utf-8")

    write_dir_atomic(Path(out_dir), write)
