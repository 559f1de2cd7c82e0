"""A visitor's own model and data, uploaded through the browser: checked, bounded, written to a private folder.

The page hands over the uploaded files (name + bytes); :func:`stage_upload` checks their names, kinds and sizes
before writing anything, writes them into a folder that belongs to one browser session, and returns the
:class:`~scan_viz.app.bundle.Sources` that serve them. The usual loaders then read them: checkpoints only with
torch's ``weights_only`` unpickler (:mod:`scan_viz.model.checkpoint`). No Streamlit here.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path, PurePath

from scan_viz.app.bundle import IMAGE_SUFFIXES, Sources
from scan_viz.errors import ScanVizError
from scan_viz.model.checkpoint import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE
from scan_viz.safe_paths import MB

#: Upload caps in MB. An official SCAN checkpoint is about 55 MB. One region file may take the whole regions cap,
#: the largest of the app's caps: .streamlit/config.toml's server.maxUploadSize equals it.
MAX_CHECKPOINT_MB = 128
MAX_VOCAB_MB = 16
MAX_REGIONS_MB = 256  # all region files together: about 600 images of 36 x 2048 float32 features as TSV
MAX_IMAGE_MB = 20
MAX_IMAGES_MB = 256  # all images together
MAX_IMAGES = 1000
CHECKPOINT_TYPES = ("tar", "pth", "pt", "safetensors", "json")
REGION_TYPES = ("tsv", "npz")
IMAGE_TYPES = tuple(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
MODEL_DIR, REGIONS_DIR, IMAGES_DIR = "model", "uploaded-regions", "uploaded-images"
#: How an upload folder's name starts (a private temporary folder per session: state.UploadFolder).
UPLOAD_PREFIX = "scan-viz-upload-"
#: A path inside an upload folder, anywhere in a message: the folder, then at most a subfolder and a file name.
_UPLOADED_PATH = re.compile(rf"(?:/[^/\s'\"]+)*/{re.escape(UPLOAD_PREFIX)}[A-Za-z0-9_]+((?:/[A-Za-z0-9._-]+)*)")
#: What a message calls the upload folder and its parts (the folders and the renamed vocabulary file).
_UPLOADED_AS = {"": "your upload", MODEL_DIR: "your model files", REGIONS_DIR: "your region files",
                IMAGES_DIR: "your images", VOCAB_FILE: "your vocabulary file"}
#: Uploaded names become file names (and, for images and .npz files, image ids): a plain name, no path.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclasses.dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the browser gave and its bytes."""

    name: str
    data: bytes


def as_uploaded(message: str) -> str:
    """``message`` with every path inside an upload folder replaced by the name the visitor gave the file (or
    "your upload", "your images", ...): a message never shows the server's temporary folders."""

    def name(match: re.Match) -> str:
        parts = [p for p in match.group(1).split("/") if p]
        if len(parts) == 2 or (parts and parts[0] not in _UPLOADED_AS):
            return parts[-1]  # uploaded files keep their names (checked by _check_names)
        return _UPLOADED_AS[parts[0] if parts else ""]

    return _UPLOADED_PATH.sub(name, message)


def _check_names(files: Sequence[Upload], what: str, suffixes: Sequence[str]) -> None:
    names = set()
    for n, file in enumerate(files, start=1):
        # the name is the visitor's text: messages give its position, never the name
        if not _SAFE_NAME.fullmatch(file.name):
            raise ScanVizError(f"{what} file {n}: name it with letters, digits, '.', '-' and '_' only (it is also "
                               "the image id), then upload it again")
        if PurePath(file.name).suffix.lower().lstrip(".") not in suffixes:
            raise ScanVizError(f"{what} file {n} is not a {' or '.join('.' + s for s in suffixes)} file")
        if file.name in names:
            raise ScanVizError(f"{what} file {n} has the same name as another one: upload each file once")
        names.add(file.name)


def _check_size(files: Sequence[Upload], what: str, max_mb: int, max_each_mb: int | None = None) -> None:
    for n, file in enumerate(files, start=1):
        if max_each_mb is not None and len(file.data) > max_each_mb * MB:
            raise ScanVizError(f"{what} file {n} is {len(file.data) / MB:.1f} MB, over the {max_each_mb} MB limit")
    total = sum(len(file.data) for file in files)
    if total > max_mb * MB:
        raise ScanVizError(f"the {what} files are {total / MB:.1f} MB together, over the {max_mb} MB limit: "
                           "upload fewer")


def _write(folder: Path, files: Sequence[Upload]) -> None:
    folder.mkdir()
    for file in files:
        with open(folder / file.name, "xb") as f:  # "x": never over an existing file
            f.write(file.data)


def stage_upload(folder: Path, checkpoint: Sequence[Upload], vocab: Upload | None, regions: Sequence[Upload],
                 images: Sequence[Upload]) -> Sources:
    """Check an upload and write it into ``folder`` (empty, private to one session); the Sources serving it.

    checkpoint: an official ``model_best.pth.tar`` (one file), or a scan-viz model's ``config.json`` +
    ``model.safetensors`` (+ ``vocab.json``). vocab: the vocabulary JSON (needed unless the model files hold one).
    regions: bottom-up-attention ``.tsv`` files or ``.npz`` files (one per image, named by image id). images:
    the images the regions were extracted from, named by image id. Raises ScanVizError before writing anything.
    """
    if not checkpoint:
        raise ScanVizError("upload the checkpoint: model_best.pth.tar, or a scan-viz model's config.json and "
                           "model.safetensors")
    if not regions or not images:
        raise ScanVizError("upload the region features (.tsv or .npz) and the images they were extracted from: "
                           "all are needed to explore your data")
    _check_names(checkpoint, "checkpoint", CHECKPOINT_TYPES)
    _check_names(regions, "region", REGION_TYPES)
    _check_names(images, "image", IMAGE_TYPES)
    if len({PurePath(file.name).suffix.lower() for file in regions}) > 1:
        raise ScanVizError("upload either .tsv or .npz region files, not both")
    if len(images) > MAX_IMAGES:
        raise ScanVizError(f"{len(images)} images is over the limit of {MAX_IMAGES}: upload fewer")
    _check_size(checkpoint, "checkpoint", MAX_CHECKPOINT_MB)
    _check_size([vocab] if vocab else [], "vocabulary", MAX_VOCAB_MB)
    _check_size(regions, "region", MAX_REGIONS_MB)
    _check_size(images, "image", MAX_IMAGES_MB, MAX_IMAGE_MB)

    names = {file.name for file in checkpoint}
    if len(checkpoint) == 1 and PurePath(checkpoint[0].name).suffix.lower() in (".tar", ".pth", ".pt"):
        if vocab is None:
            raise ScanVizError("an official checkpoint needs its vocabulary: upload the *_vocab.json it was trained "
                               "with")
        model_files, model = [], folder / checkpoint[0].name
    elif {CONFIG_FILE, WEIGHTS_FILE} <= names <= {CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE}:
        if vocab is None and VOCAB_FILE not in names:
            raise ScanVizError("a scan-viz model needs its vocabulary: upload its vocab.json too")
        model_files, model = list(checkpoint), folder / MODEL_DIR
    else:
        raise ScanVizError("upload one official checkpoint (.pth.tar), or a scan-viz model's config.json and "
                           "model.safetensors (and vocab.json)")

    if model_files:
        _write(model, model_files)
    else:
        model.write_bytes(checkpoint[0].data)
    vocab_path = None
    if vocab is not None:
        vocab_path = folder / VOCAB_FILE
        vocab_path.write_bytes(vocab.data)
    _write(folder / REGIONS_DIR, regions)
    _write(folder / IMAGES_DIR, images)
    return Sources(model=str(model), vocab=None if vocab_path is None else str(vocab_path), gallery=None,
                   regions=str(folder / REGIONS_DIR), images=str(folder / IMAGES_DIR),
                   label=f"your upload ({checkpoint[0].name if not model_files else 'scan-viz model'})")
