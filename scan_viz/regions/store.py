"""Region features from every common SCAN input format, loaded into one :class:`RegionStore`.

Formats:

- the official precomputed split (``{split}_ims.npy`` + ``{split}_caps.txt``): features only, no boxes;
- bottom-up-attention TSV files written by the Caffe extractor's ``generate_tsv.py``: boxes and features;
- a directory of per-image ``.npz`` files from the PyTorch extractor (MILVLG bottom-up-attention.pytorch);
- the project's own saved store (:func:`save_regions`), a directory of ``.npy`` files that loads memory-mapped.

Images with fewer regions than the largest one are padded with zero features and zero boxes; ``n_boxes`` says
how many regions of each image are real. numpy only, so data handling never needs torch.

Every file is checked to be a regular file before it is opened (a named pipe or a device is refused, never read),
and no error message quotes what a file holds, only where (file, line, row) and what was expected: these loaders
also read files that a visitor of the app named.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from scan_viz.errors import ScanVizError
from scan_viz.io import write_dir_atomic
from scan_viz.safe_files import (MAX_FEATURE_DIM, MAX_NPZ_BYTES, MAX_REGIONS_PER_IMAGE, MAX_TSV_LINE_BYTES, LoadBudget,
                                 OverBudget, budget_or_default, check_zip, load_npy, read_json, read_npz, shown)
from scan_viz.safe_paths import MB, read_bytes, regular_file

CAPTIONS_PER_IMAGE = 5
#: A captions or ids file: Flickr30K's 5,000 test captions are about 0.3 MB, COCO's 590,000 training ones 30 MB.
MAX_TEXT_BYTES = 256 * MB

TSV_COLUMNS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
NPZ_KEYS = ("x", "bbox", "num_bbox", "image_h", "image_w")
SAVED_FORMAT = "scan_viz.regions"
SAVED_VERSION = 1
# generate_tsv.py writes one file per GPU, named `{outfile}.{gpu_id}`, next to the optional merged `{outfile}`.
_TSV_NAME = re.compile(r".*\.tsv(\.\d+)?$")

PathLike = str | os.PathLike


def read_lines(path: PathLike, what: str, max_bytes: int = MAX_TEXT_BYTES) -> list[str]:
    """The lines of a UTF-8 text file, each stripped: the one reader of caption (and id) files.

    Split on ``\\n`` only, as the official loader's binary-mode iteration does: a stray ``\\r`` or Unicode line
    separator inside a caption must not shift every later caption onto the wrong image. A final empty line (the
    file's closing newline) is not a line; other empty lines are kept, for the caller to judge.
    """
    data = read_bytes(path, what, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScanVizError(f"{what} {path} is not UTF-8 text ({exc}); re-save it as UTF-8") from None
    lines = [line.strip() for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


@dataclass
class RegionStore:
    """Region features (and, where the format keeps them, boxes) of a set of images.

    Attributes:
        ids: image ids, one per image, unique.
        features: ``(n_images, n_regions, img_dim)`` float32; may be a read-only memory map.
        boxes: ``(n_images, n_regions, 4)`` float32 ``x1, y1, x2, y2`` in pixels, or ``None`` (precomp data).
        image_sizes: ``(n_images, 2)`` int ``(width, height)`` in pixels, or ``None``.
        n_boxes: ``(n_images,)`` int, the number of real regions of each image; the rest are zero padding.
    """

    ids: list[str]
    features: np.ndarray
    boxes: np.ndarray | None = None
    image_sizes: np.ndarray | None = None
    n_boxes: np.ndarray | None = None
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.ids]
        if self.features.ndim != 3 or self.features.dtype != np.float32:
            raise ScanVizError(
                f"region features have shape {self.features.shape} and dtype {self.features.dtype}; expected "
                "float32 (n_images, n_regions, img_dim)"
            )
        n_images, n_regions, _ = self.features.shape
        if len(self.ids) != n_images:
            raise ScanVizError(f"{len(self.ids)} image ids for {n_images} feature rows; give one id per image")
        if self.n_boxes is None:
            self.n_boxes = np.full(n_images, n_regions, dtype=np.int64)
        self.n_boxes = np.asarray(self.n_boxes, dtype=np.int64)
        if self.n_boxes.shape != (n_images,) or (self.n_boxes < 0).any() or (self.n_boxes > n_regions).any():
            raise ScanVizError(
                f"n_boxes must be ({n_images},) counts between 0 and {n_regions}; got shape {self.n_boxes.shape}"
            )
        if self.boxes is not None and (self.boxes.shape != (n_images, n_regions, 4) or self.boxes.dtype != np.float32):
            raise ScanVizError(
                f"boxes have shape {self.boxes.shape} and dtype {self.boxes.dtype}; expected float32 "
                f"({n_images}, {n_regions}, 4)"
            )
        if self.image_sizes is not None:
            self.image_sizes = np.asarray(self.image_sizes, dtype=np.int64)
            if self.image_sizes.shape != (n_images, 2):
                raise ScanVizError(
                    f"image_sizes have shape {self.image_sizes.shape}; expected ({n_images}, 2) as (width, height)"
                )
        self._index = {}
        for i, image_id in enumerate(self.ids):
            if self._index.setdefault(image_id, i) != i:
                raise ScanVizError(f"rows {self._index[image_id]} and {i} have the same image id; image ids must be "
                                   "unique")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"RegionStore(n_images={len(self)}, n_regions={self.n_regions}, img_dim={self.img_dim}, "
                f"has_boxes={self.has_boxes()})")

    @property
    def n_regions(self) -> int:
        """Padded number of regions per image (the second axis of ``features``)."""
        return int(self.features.shape[1])

    @property
    def img_dim(self) -> int:
        """Dimension of one region feature (2048 for the bottom-up-attention ResNet-101)."""
        return int(self.features.shape[2])

    def has_boxes(self) -> bool:
        """Whether the format kept region boxes (TSV, npz, saved stores from them), which drawing needs."""
        return self.boxes is not None

    def index_of(self, image_id: str | int) -> int:
        """Row of ``image_id`` in this store."""
        try:
            return self._index[str(image_id)]
        except KeyError:
            raise ScanVizError(
                f"image id {image_id!r} is not in this region store ({len(self)} images); check the id or load the "
                "features that contain it"
            ) from None

    def subset(self, indices: Sequence[int] | np.ndarray | slice) -> RegionStore:
        """The images at ``indices`` (rows, not ids), in that order. A slice keeps a memory map a view."""
        if not isinstance(indices, slice):
            indices = np.asarray(indices).reshape(-1)
            indices = np.flatnonzero(indices) if indices.dtype == bool else indices.astype(np.int64)
        ids = np.asarray(self.ids, dtype=object)[indices].tolist()
        return RegionStore(
            ids=ids,
            features=self.features[indices],
            boxes=None if self.boxes is None else self.boxes[indices],
            image_sizes=None if self.image_sizes is None else self.image_sizes[indices],
            n_boxes=self.n_boxes[indices],
        )


@dataclass
class PrecompSplit:
    """One split of the official precomputed data.

    Attributes:
        regions: ``n_images`` images, ids ``"0" .. str(n_images - 1)``, no boxes.
        captions: ``n_captions`` captions, stripped as the official loader does.
        caption_image: ``(n_captions,)`` int, the image index of each caption (``k // 5``).
        im_div: 5 when the ``.npy`` has one row per image, 1 when it has one row per caption (the official
            ``PrecompDataset.im_div``).
    """

    regions: RegionStore
    captions: list[str]
    caption_image: np.ndarray
    im_div: int


def load_precomp(data_dir: PathLike, split: str, max_captions: int | None = None) -> PrecompSplit:
    """Load ``{data_dir}/{split}_ims.npy`` (memory-mapped) and ``{split}_caps.txt``.

    ``data_dir`` is the folder holding the files (e.g. ``data/f30k_precomp``). A ``.npy`` with one feature row
    per caption keeps every 5th row, as the official evaluation does with ``img_embs[::5]``.

    ``max_captions`` keeps only the first captions (and their images). The official code truncates the ``dev``
    split to 5,000 captions only for validation during training; pass ``max_captions=5000`` to reproduce that.
    Nothing is truncated by default.
    """
    data_dir = Path(data_dir)
    ims_path = data_dir / f"{split}_ims.npy"
    caps_path = data_dir / f"{split}_caps.txt"
    for path in (ims_path, caps_path):
        if not path.is_file():
            raise ScanVizError(f"{path} not found; point data_dir at the folder holding {split}_ims.npy and "
                               f"{split}_caps.txt (e.g. data/f30k_precomp)")
    ims = load_npy(ims_path, "region features", mmap=True, kinds="f")
    if ims.ndim != 3 or ims.dtype != np.float32:
        raise ScanVizError(
            f"{ims_path} holds {ims.dtype} {ims.shape}; expected float32 (n_images, n_regions, img_dim), "
            "e.g. (1000, 36, 2048)"
        )
    captions = read_lines(caps_path, "captions")

    n_rows, n_captions = ims.shape[0], len(captions)
    if n_captions == 0 or n_captions % CAPTIONS_PER_IMAGE:
        raise ScanVizError(
            f"{caps_path} has {n_captions} captions; expected a non-zero multiple of {CAPTIONS_PER_IMAGE} "
            "(5 consecutive captions per image, no blank line at the end)"
        )
    if n_captions == CAPTIONS_PER_IMAGE * n_rows:
        im_div, images = CAPTIONS_PER_IMAGE, ims
    elif n_captions == n_rows:
        im_div, images = 1, ims[::CAPTIONS_PER_IMAGE]
    else:
        raise ScanVizError(
            f"{caps_path} has {n_captions} captions but {ims_path} has {n_rows} rows; expected "
            f"{CAPTIONS_PER_IMAGE * n_rows} captions (5 per image) or {n_rows} (one row per caption)"
        )
    if max_captions is not None:
        if max_captions <= 0 or max_captions % CAPTIONS_PER_IMAGE:
            raise ScanVizError(f"max_captions={max_captions}; use a positive multiple of {CAPTIONS_PER_IMAGE}")
        captions = captions[:max_captions]
        images = images[: len(captions) // CAPTIONS_PER_IMAGE]
    regions = RegionStore(ids=[str(i) for i in range(images.shape[0])], features=images)
    caption_image = np.arange(len(captions), dtype=np.int64) // CAPTIONS_PER_IMAGE
    return PrecompSplit(regions=regions, captions=captions, caption_image=caption_image, im_div=im_div)


@dataclass
class _ImageRegions:
    """One image's regions as read from a file, before padding: ``boxes (n, 4)``, ``features (n, d)``."""

    image_id: str
    width: int
    height: int
    boxes: np.ndarray
    features: np.ndarray
    where: str


def _stack_images(images: list[_ImageRegions], budget: LoadBudget | None = None) -> RegionStore:
    """Pad images to the largest region count and stack them into one store; empties ``images`` as it goes.

    The readers cap each image at :data:`~scan_viz.safe_files.MAX_REGIONS_PER_IMAGE` regions, so the padded
    size is at most images x that cap; what padding adds to the images already held is charged to ``budget``
    before the arrays are allocated.
    """
    if not images:
        raise ScanVizError("no images found in the region files; check that the extractor finished writing them")
    dims = {im.features.shape[1] for im in images if im.features.shape[0] > 0}
    if len(dims) > 1:
        odd = next(im for im in images if im.features.shape[0] > 0 and im.features.shape[1] != min(dims))
        raise ScanVizError(
            f"{odd.where}: feature dimension {odd.features.shape[1]} differs from other images ({sorted(dims)}); "
            "load features from one extractor at a time"
        )
    if not dims:
        raise ScanVizError(f"{images[0].where}: every image has zero boxes; re-run the feature extractor")
    img_dim = dims.pop()
    n_images = len(images)
    n_regions = max(im.features.shape[0] for im in images)
    held = sum(im.features.nbytes + im.boxes.nbytes for im in images)
    padded = n_images * n_regions * (img_dim + 4) * 4
    budget_or_default(budget).charge(max(0, padded - held),
                                     f"padding {n_images:,} images to {n_regions} regions of {img_dim} features")
    # np.zeros pages are committed only when written, and each image's arrays are dropped once copied, so peak
    # memory stays near one copy of the features.
    features = np.zeros((n_images, n_regions, img_dim), dtype=np.float32)
    boxes = np.zeros((n_images, n_regions, 4), dtype=np.float32)
    image_sizes = np.zeros((n_images, 2), dtype=np.int64)
    n_boxes = np.zeros(n_images, dtype=np.int64)
    ids: list[str] = []
    seen: dict[str, str] = {}
    images.reverse()
    for i in range(n_images):
        im = images.pop()
        if im.image_id in seen:
            raise ScanVizError(
                f"{im.where}: its image id was already read at {seen[im.image_id]}; remove the duplicate file or row"
            )
        seen[im.image_id] = im.where
        n = im.features.shape[0]
        features[i, :n] = im.features
        boxes[i, :n] = im.boxes
        image_sizes[i] = (im.width, im.height)
        n_boxes[i] = n
        ids.append(im.image_id)
    return RegionStore(ids=ids, features=features, boxes=boxes, image_sizes=image_sizes, n_boxes=n_boxes)


def _parse_int(text: bytes | str, what: str, where: str) -> int:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value != int(value) or value < 0:
        raise ScanVizError(f"{where}: {what} is not a non-negative integer; the file is not a valid bottom-up-attention "
                           "region file")
    return int(value)


def _decode_float32(text: bytes, what: str, where: str) -> np.ndarray:
    # Python 3 ports of generate_tsv.py often wrote str(bytes), leaving a b'...' wrapper around the base64 text.
    if text[:2] == b"b'" and text[-1:] == b"'":
        text = text[2:-1]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ScanVizError(f"{where}: the {what} column is not valid base64 ({exc}); the file is truncated or "
                           "corrupt, re-run the extractor") from None
    if len(raw) % 4:
        raise ScanVizError(f"{where}: the {what} column decodes to {len(raw)} bytes, not whole float32 values; "
                           "the file is truncated or corrupt, re-run the extractor")
    return np.frombuffer(raw, dtype=np.float32)


def _checked_counts(num_boxes: int, img_dim: int, where: str) -> None:
    """ScanVizError when one image declares more regions or feature dimensions than the caps allow."""
    if num_boxes > MAX_REGIONS_PER_IMAGE:
        raise ScanVizError(f"{where}: {num_boxes:,} boxes in one image; the limit is {MAX_REGIONS_PER_IMAGE} "
                           "(bottom-up-attention keeps 10-100): give features from a region detector")
    if img_dim > MAX_FEATURE_DIM:
        raise ScanVizError(f"{where}: features of {img_dim:,} dimensions; the limit is {MAX_FEATURE_DIM:,} "
                           "(bottom-up-attention's are 2048): give features from a region detector")


def _finite(features: np.ndarray, where: str) -> None:
    if not np.isfinite(features).all():
        raise ScanVizError(f"{where}: the features hold NaN or infinite values; re-run the feature extractor")


def _read_tsv(path: Path, budget: LoadBudget) -> Iterable[_ImageRegions]:
    # The rows are plain tab-separated text with no quoting (ids, integers, base64), so they are split directly
    # instead of through the csv module, whose field size limit is far below a features column and is global.
    # Each row is read with a length limit (one image at the caps), so a file without line breaks is never one
    # giant line, and num_boxes is checked before the base64 columns are decoded.
    regular_file(path, "region file")
    name = shown(path)
    with path.open("rb") as f:
        line_no = 0
        while line := f.readline(MAX_TSV_LINE_BYTES + 1):
            line_no += 1
            where = f"{name}:{line_no}"
            line = line.rstrip(b"\r\n")
            if len(line) > MAX_TSV_LINE_BYTES:
                raise ScanVizError(f"{where}: the row is over {MAX_TSV_LINE_BYTES >> 20} MB, more than one image of "
                                   f"{MAX_REGIONS_PER_IMAGE} boxes x {MAX_FEATURE_DIM} features needs; give "
                                   "features from a region detector")
            if not line.strip():
                continue
            cols = line.split(b"\t")
            if len(cols) != len(TSV_COLUMNS):
                raise ScanVizError(
                    f"{where}: {len(cols)} tab-separated columns; expected {len(TSV_COLUMNS)} "
                    f"({', '.join(TSV_COLUMNS)}) as written by bottom-up-attention's generate_tsv.py"
                )
            image_id = cols[0].strip().strip(b'"').decode("utf-8", errors="replace")
            width = _parse_int(cols[1], "image_w", where)
            height = _parse_int(cols[2], "image_h", where)
            num_boxes = _parse_int(cols[3], "num_boxes", where)
            _checked_counts(num_boxes, 0, where)
            boxes = _decode_float32(cols[4], "boxes", where)
            features = _decode_float32(cols[5], "features", where)
            budget.charge(boxes.nbytes + features.nbytes, f"{where}: the regions")
            if boxes.size != num_boxes * 4:
                raise ScanVizError(f"{where}: boxes hold {boxes.size} floats but num_boxes={num_boxes} needs "
                                   f"{num_boxes * 4}; the file is truncated or corrupt, re-run the extractor")
            if (features.size == 0) != (num_boxes == 0) or (num_boxes and features.size % num_boxes):
                raise ScanVizError(f"{where}: features hold {features.size} floats, not a whole row per box for "
                                   f"num_boxes={num_boxes}; the file is truncated or corrupt, re-run the extractor")
            img_dim = features.size // num_boxes if num_boxes else 0
            _checked_counts(num_boxes, img_dim, where)
            _finite(features, where)
            yield _ImageRegions(image_id, width, height, boxes.reshape(num_boxes, 4),
                                features.reshape(num_boxes, img_dim), where)


def load_bottomup_tsv(path_or_paths: PathLike | Sequence[PathLike], budget: LoadBudget | None = None) -> RegionStore:
    """Load one or several bottom-up-attention TSV files (``generate_tsv.py``, one file per GPU) into one store.

    Columns: ``image_id, image_w, image_h, num_boxes, boxes, features``, no header; ``boxes`` is base64 float32
    ``(num_boxes, 4)`` as x1, y1, x2, y2 pixels and ``features`` base64 float32 ``(num_boxes, img_dim)``, with
    ``img_dim`` inferred from the byte count. Images keep file order, files the order given. What the files
    expand to is charged to ``budget`` (default: a fresh :class:`~scan_viz.safe_files.LoadBudget`).
    """
    paths = [Path(path_or_paths)] if isinstance(path_or_paths, (str, os.PathLike)) else [Path(p) for p in path_or_paths]
    if not paths:
        raise ScanVizError("no TSV files given; pass the .tsv file(s) written by generate_tsv.py")
    budget = budget_or_default(budget)
    images: list[_ImageRegions] = []
    for path in paths:
        if not path.exists():
            raise ScanVizError(f"{path} not found; pass the .tsv file(s) written by generate_tsv.py")
        images.extend(_read_tsv(path, budget))
    return _stack_images(images, budget)


def _read_npz(path: Path, budget: LoadBudget) -> _ImageRegions:
    where = shown(path)
    # member count, declared sizes (at most one image at the caps) and each array's header are checked first
    arrays = read_npz(path, "region file", NPZ_KEYS, MAX_NPZ_BYTES, budget)
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise ScanVizError(f"{where}: missing key(s) {', '.join(missing)}; expected {', '.join(NPZ_KEYS)} as "
                           "written by bottom-up-attention.pytorch")
    x, bbox = arrays["x"], arrays["bbox"]
    try:
        num_boxes = _parse_int(str(arrays["num_bbox"].reshape(-1)[0]), "num_bbox", where)
        height = _parse_int(str(arrays["image_h"].reshape(-1)[0]), "image_h", where)
        width = _parse_int(str(arrays["image_w"].reshape(-1)[0]), "image_w", where)
    except IndexError:
        raise ScanVizError(f"{where}: num_bbox, image_h or image_w is empty; re-run the extractor for this "
                           "image") from None
    _checked_counts(num_boxes, 0, where)
    if x.ndim != 2 or num_boxes not in x.shape:
        raise ScanVizError(f"{where}: x has shape {x.shape}, which does not match num_bbox={num_boxes}; expected "
                           "(num_bbox, img_dim) features")
    if x.shape[0] != num_boxes:
        x = x.T  # some extractor versions save the features as (img_dim, num_bbox)
    if bbox.shape != (num_boxes, 4):
        raise ScanVizError(f"{where}: bbox has shape {bbox.shape}; expected ({num_boxes}, 4) for num_bbox={num_boxes}")
    _checked_counts(num_boxes, x.shape[1], where)
    features = np.asarray(x, dtype=np.float32)
    _finite(features, where)
    return _ImageRegions(path.stem, width, height, np.asarray(bbox, dtype=np.float32), features, where)


def load_npz_dir(directory: PathLike, budget: LoadBudget | None = None) -> RegionStore:
    """Load a directory of per-image ``.npz`` files (bottom-up-attention.pytorch); image id = file stem.

    Keys: ``x`` features ``(num_bbox, img_dim)`` (or transposed), ``bbox`` ``(num_bbox, 4)``, ``num_bbox``,
    ``image_h``, ``image_w``. Images are sorted by id so the row order does not depend on the file system.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ScanVizError(f"{directory} is not a directory; pass the folder of .npz files from the extractor")
    paths = sorted(directory.glob("*.npz"), key=lambda p: p.stem)
    if not paths:
        raise ScanVizError(f"{directory} holds no .npz files; pass the extractor's output folder")
    budget = budget_or_default(budget)
    # every file's declared size first, against what the budget has left: many small, well-compressed files are
    # refused before the first is decompressed, not after hundreds of MB were read (headers only; nothing charged)
    left = LoadBudget(budget.max_bytes - budget.used)
    for path in paths:
        regular_file(path, "region file")  # a pipe or device named .npz is refused, never opened
        check_zip(path, "region file", MAX_NPZ_BYTES, left)
    return _stack_images([_read_npz(path, budget) for path in paths], budget)


def _is_saved_store(path: Path) -> bool:
    return (path / "ids.json").is_file()


def load_regions(path: PathLike, budget: LoadBudget | None = None) -> RegionStore:
    """Load region features from any supported format, chosen from ``path``.

    A ``.tsv`` file (or ``.tsv.N`` per-GPU part), a directory of such files, a directory of ``.npz`` files, or a
    store written by :func:`save_regions`. What the files expand to in memory is charged to ``budget`` (default:
    a fresh :class:`~scan_viz.safe_files.LoadBudget` of :data:`~scan_viz.safe_files.MAX_LOAD_BYTES`).
    """
    path = Path(path)
    accepted = ("a bottom-up-attention .tsv file or a folder of them, a folder of bottom-up-attention.pytorch .npz "
                "files, or a folder written by save_regions")
    if path.is_file() and _TSV_NAME.match(path.name):
        return load_bottomup_tsv(path, budget)
    if path.is_dir():
        if _is_saved_store(path):
            return load_saved_regions(path, budget)
        tsvs = sorted(p for p in path.iterdir() if p.is_file() and _TSV_NAME.match(p.name))
        has_npz = any(path.glob("*.npz"))
        if tsvs and has_npz:
            raise ScanVizError(f"{path} holds both .tsv and .npz files; move one set to its own folder")
        if tsvs:
            return load_bottomup_tsv(tsvs, budget)
        if has_npz:
            return load_npz_dir(path, budget)
    if not path.exists():
        raise ScanVizError(f"{path} not found; pass {accepted}")
    raise ScanVizError(f"{path} is not a recognised region-feature format; pass {accepted}")


def save_regions(store: RegionStore, path: PathLike, feature_dtype: str = "float32") -> None:
    """Write ``store`` to the directory ``path`` so that :func:`load_saved_regions` memory-maps it back.

    Files: ``features.npy`` float32, ``boxes.npy`` and ``image_sizes.npy`` (when the store has boxes),
    ``n_boxes.npy`` and ``ids.json``. Everything is written to a temporary folder next to ``path`` and renamed
    into place, so a crash never leaves a half-written store under ``path``. An existing store at ``path`` is
    replaced; any other existing folder is left alone.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and (_is_saved_store(path) or not any(path.iterdir()))):
        raise ScanVizError(f"{path} exists and is not a saved region store; choose a new path or remove it")

    def write(tmp: Path) -> None:
        # float16 halves a bundled gallery; it is read back as float32 (SCAN computes in float32)
        np.save(tmp / "features.npy", np.asarray(store.features).astype(feature_dtype, copy=False))
        np.save(tmp / "n_boxes.npy", store.n_boxes)
        if store.boxes is not None:
            np.save(tmp / "boxes.npy", store.boxes)
        if store.image_sizes is not None:
            np.save(tmp / "image_sizes.npy", store.image_sizes)
        meta = {
            "format": SAVED_FORMAT,
            "version": SAVED_VERSION,
            "ids": store.ids,
            "has_boxes": store.boxes is not None,
            "has_image_sizes": store.image_sizes is not None,
        }
        (tmp / "ids.json").write_text(json.dumps(meta), encoding="utf-8")

    write_dir_atomic(path, write)


def load_saved_regions(path: PathLike, budget: LoadBudget | None = None) -> RegionStore:
    """Load a store written by :func:`save_regions`; ``features`` comes back as a read-only memory map (float16
    features are read into memory as float32). Arrays read into memory are charged to ``budget``."""
    path = Path(path)

    def corrupt(why: str) -> ScanVizError:
        return ScanVizError(f"{path} is incomplete or corrupt ({why}): rebuild it with save_regions() from the "
                            "original features")

    if not path.is_dir():
        raise ScanVizError(f"{path} not found; pass a folder written by save_regions()")
    budget = budget_or_default(budget)
    try:
        meta = read_json(path / "ids.json", "region-store header", budget=budget)
    except OverBudget:
        raise
    except ScanVizError as exc:  # the reader's own refusal (depth, size, syntax), inside the store's
        raise corrupt(str(exc)) from None
    if not isinstance(meta, dict) or meta.get("format") != SAVED_FORMAT or not isinstance(meta.get("ids"), list):
        raise corrupt("ids.json is not a scan_viz region-store header")
    if meta.get("version") != SAVED_VERSION:
        raise ScanVizError(f"{path} was saved in another region-store version; this scan_viz reads version "
                           f"{SAVED_VERSION}, so rebuild it with save_regions()")
    names = ["features", "n_boxes"] + ["boxes"] * bool(meta.get("has_boxes")) + \
        ["image_sizes"] * bool(meta.get("has_image_sizes"))
    arrays = {}
    for array in names:
        name = f"{array}.npy"
        if not (path / name).exists():
            raise corrupt(f"{name} is missing")
        try:
            arrays[array] = load_npy(path / name, "region-store array", mmap=array == "features", budget=budget)
        except OverBudget:
            raise
        except ScanVizError as exc:
            raise corrupt(str(exc)) from None
    if arrays["features"].ndim != 3 or len(meta["ids"]) != arrays["features"].shape[0]:
        raise corrupt(f"ids.json lists {len(meta['ids']):,} images for features of shape {arrays['features'].shape}")
    if arrays["features"].dtype == np.float16:
        budget.charge(arrays["features"].size * 4, f"{shown(path)}: features as float32")
        arrays["features"] = np.asarray(arrays["features"], dtype=np.float32)
    try:
        return RegionStore(ids=meta["ids"], features=arrays["features"], boxes=arrays.get("boxes"),
                           image_sizes=arrays.get("image_sizes"), n_boxes=arrays["n_boxes"])
    except ScanVizError as exc:
        raise corrupt(str(exc)) from None


def read_rows(array: np.memmap, rows: np.ndarray | slice) -> np.ndarray:
    """``array[rows]`` of a C-ordered memory map, read with ``os.pread`` from its file instead of through the map.

    A query re-reads a few hundred scattered rows of a file of gigabytes; faulting them in through the map makes
    the kernel read around each fault and keeps every page it read resident in this process (a 1M-image gallery
    reached 9 GB of RSS after 50 queries). Plain reads leave the file in the page cache only, shared and
    reclaimable, and the process holds just the rows it asked for.

    Many separate runs of rows (a search's candidates) are first announced to the kernel (``POSIX_FADV_WILLNEED``
    per run, where the OS has it): it then fetches the pages not yet cached all at once while the reads wait in order.
    """
    if not array.flags.c_contiguous or array.filename is None:
        return np.asarray(array[rows])
    index = np.arange(array.shape[0])[rows]
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
    out = np.empty((len(index),) + array.shape[1:], dtype=array.dtype)
    if not len(index):
        return out
    view = memoryview(out.reshape(-1).view(np.uint8))  # flat bytes: row i is view[i * row_bytes:(i + 1) * row_bytes]
    # one read per run of consecutive rows (an exhaustive chunk is one run; scattered candidates are runs of one),
    # in pieces of at most 1 GiB
    firsts = np.r_[0, np.flatnonzero(np.diff(index) != 1) + 1]
    sizes = np.diff(np.r_[firsts, len(index)]) * row_bytes
    runs = list(zip((firsts * row_bytes).tolist(), (array.offset + index[firsts] * row_bytes).tolist(),
                    sizes.tolist()))
    fd = os.open(array.filename, os.O_RDONLY)
    try:
        if len(runs) >= ANNOUNCE_RUNS and hasattr(os, "posix_fadvise"):
            try:
                for _, where, size in runs:
                    os.posix_fadvise(fd, where, size, os.POSIX_FADV_WILLNEED)
            except OSError:  # only a hint: a file system that refuses it is read as it is
                pass
        for done, where, left in runs:
            while left:
                got = os.preadv(fd, [view[done:done + min(left, 1 << 30)]], where)
                if got <= 0:
                    raise ScanVizError(f"{array.filename} is shorter than its header says: re-index the gallery")
                done, where, left = done + got, where + got, left - got
    finally:
        os.close(fd)
    return out


#: scattered reads of at least this many runs of rows are announced to the kernel before they are read, so that the
#: pages not in the page cache arrive many at a time. Measured on this project's 2-core VM (virtio disk), 1,500
#: scattered 18 KB rows of the 1M-image region file, cache dropped before each of 10 alternated reads (p50): 56.0 ms
#: announced then read by one thread, 71.6 ms read by 8 threads (the previous way), 72.6-79.7 ms in other runs;
#: rows already cached: 12.3 ms announced, 13.4 ms by 8 threads, 8.7 ms by one thread without the hints
#: (docs/search.md).
ANNOUNCE_RUNS = 64
