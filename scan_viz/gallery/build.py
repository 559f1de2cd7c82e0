"""``scan-viz gallery build``: a researcher's region features, captions and (optional) images -> a gallery folder.

    {split}_ims.npy + {split}_caps.txt (official precomp, no boxes)  --\\
    bottom-up-attention .tsv (boxes) / folder of .npz (boxes)        ----> gallery/ (docs/gallery-format.md)
    captions, optional images folder, optional ids file              --/

The regions are read by :mod:`scan_viz.regions.store`'s loaders (the ones the rest of the library uses), the folder is
written by :func:`scan_viz.gallery.write_gallery` (atomically). The result opens in the app (``SCAN_VIZ_GALLERY``),
``scan-viz eval --gallery`` and ``scan-viz search``. Without boxes or images the gallery still serves retrieval,
recall and the failure list; only the drawing needs both.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np

from scan_viz.errors import ScanVizError
from scan_viz.gallery import GALLERY_FILE, write_gallery
from scan_viz.regions.store import CAPTIONS_PER_IMAGE, RegionStore, load_precomp, load_regions, read_lines
from scan_viz.safe_files import LoadBudget

PRECOMP_SUFFIX = "_ims.npy"
#: Image files kept as they are (their pixels are the ones the features were extracted from); others are re-encoded.
JPEG_SUFFIXES = (".jpg", ".jpeg")
FEATURE_DTYPES = ("float32", "float16")


@dataclasses.dataclass
class BuildReport:
    """What ``build_gallery`` wrote: counts and what the gallery can and cannot show."""

    gallery: Path
    n_images: int
    n_captions: int
    has_boxes: bool
    has_images: bool
    captions_layout: str | None  # "official" (5 per image in image order) or "by-id"; None without captions
    uncaptioned: int  # images with no caption (recall needs one per image)

    def summary(self) -> str:
        draws = "boxes and images: Explore draws the maps" if self.has_boxes and self.has_images else \
            "no " + " or ".join(w for w, has in (("images", self.has_images), ("boxes", self.has_boxes)) if not has) + \
            ": retrieval, recall and the failure list only, no maps"
        return (f"wrote {self.gallery}: {self.n_images:,} images, {self.n_captions:,} captions"
                + (f" ({self.captions_layout} layout)" if self.captions_layout else "") + f"; {draws}")


def read_regions(path: str | Path, budget: LoadBudget | None = None) -> tuple[RegionStore, list[str] | None]:
    """Region features in any format the library reads, and the captions an official precomp file comes with.

    ``{split}_ims.npy`` (official precomp) is read with ``{split}_caps.txt`` beside it, as the official loader
    does (:func:`scan_viz.regions.store.load_precomp`): its image ids are ``"0" .. "N-1"`` and its captions are returned.
    Anything else goes to :func:`scan_viz.regions.store.load_regions` (TSV, folder of TSV or ``.npz``, saved store), which
    charges what it reads into memory to ``budget`` (the ``.npy`` is memory-mapped, never charged).
    """
    path = Path(path)
    if path.suffix == ".npy":
        if not path.name.endswith(PRECOMP_SUFFIX):
            raise ScanVizError(f"{path}: an official precomputed feature file is named {{split}}{PRECOMP_SUFFIX} "
                               f"(e.g. test{PRECOMP_SUFFIX}) with {{split}}_caps.txt beside it; rename it so")
        split = load_precomp(path.parent, path.name[:-len(PRECOMP_SUFFIX)])
        return split.regions, split.captions
    return load_regions(path, budget), None


def read_ids(path: str | Path, n_images: int) -> list[str]:
    """One image id per line, in the order of the feature rows; blank lines and repeats are refused."""
    ids = read_lines(path, "ids file")
    if len(ids) != n_images:
        raise ScanVizError(f"ids file {path} has {len(ids):,} lines for {n_images:,} images: give one id per image, "
                           "in the order of the feature rows")
    for number, image_id in enumerate(ids, 1):
        if not image_id or "\t" in image_id:
            raise ScanVizError(f"ids file {path}: line {number} is empty or holds a tab; give one id per line")
    seen: set[str] = set()
    for number, image_id in enumerate(ids, 1):
        if image_id in seen:
            raise ScanVizError(f"ids file {path}: line {number} repeats an earlier id; image ids must be unique")
        seen.add(image_id)
    return ids


def assign_captions(lines: list[str], ids: list[str], where: str) -> tuple[list[list[str]], str]:
    """Each image's captions from a captions file's lines, and the layout found.

    ``by-id``: every non-blank line is ``image_id<TAB>caption`` with a known id (any number per image);
    ``official``: 5 lines per image in image order (caption k belongs to image k // 5), no tabs needed.
    """
    index = {image_id: i for i, image_id in enumerate(ids)}
    filled = [(n, line) for n, line in enumerate(lines, 1) if line]
    if filled and all("\t" in line for _, line in filled):
        per_image: list[list[str]] = [[] for _ in ids]
        for number, line in filled:
            image_id, _, text = line.partition("\t")
            if image_id.strip() not in index:
                raise ScanVizError(f"{where}: line {number} names an image id the region features lack; each line "
                                   "is 'image_id<TAB>caption' with an id of the features (or of --ids)")
            if not text.strip():
                raise ScanVizError(f"{where}: line {number} has no caption after the tab")
            per_image[index[image_id.strip()]].append(text.strip())
        return per_image, "by-id"
    if len(lines) != CAPTIONS_PER_IMAGE * len(ids):
        raise ScanVizError(f"{where} has {len(lines):,} lines for {len(ids):,} images: give {CAPTIONS_PER_IMAGE} "
                           f"captions per image in image order ({CAPTIONS_PER_IMAGE * len(ids):,} lines, the "
                           "official layout) or 'image_id<TAB>caption' lines")
    empty = next((n for n, line in enumerate(lines, 1) if not line), None)
    if empty is not None:
        raise ScanVizError(f"{where}: line {empty} is empty; in the official layout every line is a caption")
    return [lines[i * CAPTIONS_PER_IMAGE:(i + 1) * CAPTIONS_PER_IMAGE] for i in range(len(ids))], "official"


def read_images(folder: str | Path, store: RegionStore) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Each image of the store from ``folder`` (file stem = image id) as JPEG bytes (a JPEG file as it is, other
    formats re-encoded), and each image's (width, height)."""
    from scan_viz.regions.images import image_to_jpeg_bytes, list_images, load_image

    files = {p.stem: p for p in list_images(Path(folder))}
    missing = [row for row, image_id in enumerate(store.ids, 1) if image_id not in files]
    if missing:
        # ids come from the features (or the ids file): name the row, not the id
        raise ScanVizError(f"{len(missing):,} of the {len(store):,} images have no file in {folder} (the first is "
                           f"feature row {missing[0]}): name each image by its id, e.g. {{id}}.jpg")
    images: list[np.ndarray | bytes] = []
    sizes = []
    for row, image_id in enumerate(store.ids):
        path = files[image_id]
        pixels = load_image(path)  # checks the file decodes (and is not a decompression bomb)
        sizes.append((int(pixels.shape[1]), int(pixels.shape[0])))
        if store.image_sizes is not None and tuple(int(v) for v in store.image_sizes[row]) != sizes[-1]:
            w, h = (int(v) for v in store.image_sizes[row])
            raise ScanVizError(f"{path.name} is {sizes[-1][0]}x{sizes[-1][1]} pixels but the features of row "
                               f"{row + 1} were extracted from a {w}x{h} image: give the images the extractor read")
        # other formats are encoded at once: 1,000 decoded pictures would hold hundreds of MB until written
        images.append(path.read_bytes() if path.suffix.lower() in JPEG_SUFFIXES else image_to_jpeg_bytes(pixels))
    return images, sizes


def check_out(out: Path, force: bool) -> None:
    """Refuse an existing output unless ``force``, and even then anything but a gallery folder or an empty one."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise ScanVizError(f"{out} exists: pass --force to replace it, or choose a new folder")
    if out.is_symlink() or not out.is_dir() or not ((out / GALLERY_FILE).is_file() or not any(out.iterdir())):
        raise ScanVizError(f"{out} exists and is not a gallery folder, so --force will not replace it: choose a new "
                           "folder")


def build_gallery(regions: str | Path, out: str | Path, captions: str | Path | None = None,
                  images: str | Path | None = None, ids: str | Path | None = None, name: str | None = None,
                  force: bool = False, feature_dtype: str = "float32",
                  budget: LoadBudget | None = None) -> BuildReport:
    """Write a gallery folder from region features, captions and optional images (see the module docstring).

    regions: ``{split}_ims.npy`` (its ``{split}_caps.txt`` beside it is the default captions), a bottom-up-attention
    ``.tsv`` or a folder of them, a folder of ``.npz`` files, or a saved region store. captions: the official
    layout (5 lines per image in image order) or ``image_id<TAB>caption`` lines. images: a folder whose file stems
    are the image ids. ids: one id per feature row, replacing the features' ids (precomp's are row numbers).
    feature_dtype: how the features are stored; float32 keeps an official model's scores exact, float16 halves
    the folder. budget: what reading TSV or ``.npz`` files may take in memory (default: the library's 1 GiB per
    load; COCO's 5,000 images x 36 x 2048 need about 1.5 GB).
    """
    out = Path(out)
    if feature_dtype not in FEATURE_DTYPES:
        raise ScanVizError(f"feature dtype {feature_dtype!r}: use one of {', '.join(FEATURE_DTYPES)}")
    check_out(out, force)
    store, precomp_captions = read_regions(regions, budget)
    if ids is not None:
        store = dataclasses.replace(store, ids=read_ids(ids, len(store)))
    per_image: list[list[str]] = [[] for _ in store.ids]
    layout = None
    if captions is not None:
        per_image, layout = assign_captions(read_lines(captions, "captions file"), store.ids, str(captions))
    elif precomp_captions is not None:
        per_image = [precomp_captions[i * CAPTIONS_PER_IMAGE:(i + 1) * CAPTIONS_PER_IMAGE] for i in range(len(store))]
        layout = "official"
    pictures: list[bytes | None] = [None] * len(store)
    sizes: list[tuple[int, int] | None] = [None] * len(store)
    if images is not None:
        pictures, sizes = read_images(images, store)
    elif store.image_sizes is not None:
        sizes = [(int(w), int(h)) for w, h in store.image_sizes]
    records: list[dict[str, Any]] = []
    for image_id, texts, size in zip(store.ids, per_image, sizes):
        record: dict[str, Any] = {"id": image_id}
        if size is not None:
            record["width"], record["height"] = size
        record["captions"] = [{"text": text} for text in texts]
        records.append(record)
    write_gallery(out, name or out.name, records, pictures, store, None, feature_dtype=feature_dtype)
    return BuildReport(out, len(store), sum(map(len, per_image)), store.has_boxes(), images is not None, layout,
                       sum(1 for texts in per_image if not texts))


#: What a file name made from an image id may be (the app's upload takes plain names only).
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def export_npz(regions: str | Path, out: str | Path, feature_dtype: str = "float16",
               budget: LoadBudget | None = None) -> int:
    """Write region features with boxes as one bottom-up-attention.pytorch ``.npz`` per image (``{id}.npz``:
    ``x`` in ``feature_dtype``, ``bbox``, ``num_bbox``, ``image_h``, ``image_w``); returns the bytes written.

    What a visitor uploads to bring an official-size gallery through the browser: 1,000 images x 36 regions x
    2048 features are 295 MB as float32, over the app's region upload cap, and 147 MB as float16. The loader
    widens them to float32 (SCAN computes in float32), so only the upload is halved.
    """
    from scan_viz.io import write_dir_atomic

    out = Path(out)
    if feature_dtype not in FEATURE_DTYPES:
        raise ScanVizError(f"feature dtype {feature_dtype!r}: use one of {', '.join(FEATURE_DTYPES)}")
    if out.exists() or out.is_symlink():
        raise ScanVizError(f"{out} exists: choose a new folder for the .npz files")
    store, _ = read_regions(regions, budget)
    if not store.has_boxes():
        raise ScanVizError(f"{regions} holds no boxes, and the app's upload needs them: build a gallery with "
                           "`scan-viz gallery build` and serve it with SCAN_VIZ_GALLERY instead")
    bad = next((row for row, image_id in enumerate(store.ids, 1) if not _SAFE_ID.fullmatch(image_id)), None)
    if bad is not None:
        raise ScanVizError(f"the image id of feature row {bad} is not a plain file name (letters, digits, . _ -): "
                           "give --ids with plain names")

    def write(tmp: Path) -> None:
        for row, image_id in enumerate(store.ids):
            n = int(store.n_boxes[row])
            width, height = (int(v) for v in store.image_sizes[row]) if store.image_sizes is not None else (0, 0)
            np.savez(tmp / f"{image_id}.npz", x=np.asarray(store.features[row, :n]).astype(feature_dtype),
                     bbox=np.asarray(store.boxes[row, :n], dtype=np.float32), num_bbox=np.int64(n),
                     image_h=np.int64(height), image_w=np.int64(width))

    write_dir_atomic(out, write)
    return sum(p.stat().st_size for p in out.iterdir())
