"""An uploaded image, checked: only the photo formats the page names, bounded size, decoded upright or refused
with one line."""
from __future__ import annotations

import io
from pathlib import PurePath

import numpy as np

from scan_viz.errors import ScanVizError
from scan_viz.regions.images import load_image

#: The formats Explore accepts (Pillow's name: how the page names it, its file name extensions). One table for
#: what the page says, what the uploader offers and what the bytes must be: a GIF named .png is refused.
UPLOAD_FORMATS = {"PNG": ("PNG", ("png",)), "JPEG": ("JPEG", ("jpg", "jpeg")), "WEBP": ("WebP", ("webp",))}
UPLOAD_TYPES = tuple(ext for _, extensions in UPLOAD_FORMATS.values() for ext in extensions)
_SHOWN = [shown for shown, _ in UPLOAD_FORMATS.values()]
UPLOAD_FORMATS_TEXT = f"{', '.join(_SHOWN[:-1])} or {_SHOWN[-1]}"  # "PNG, JPEG or WebP"
MAX_UPLOAD_MB = 20


def read_upload(data: bytes, name: str = "the uploaded file") -> np.ndarray:
    """Uploaded bytes -> upright (H, W, 3) uint8 RGB; raises ScanVizError naming the file and what to do."""
    suffix = PurePath(name).suffix.lower().lstrip(".")
    if suffix and suffix not in UPLOAD_TYPES:
        raise ScanVizError(f"{name}: .{suffix} files are not accepted; upload a {UPLOAD_FORMATS_TEXT} image")
    if len(data) > MAX_UPLOAD_MB * 1024 * 1024:
        raise ScanVizError(f"{name} is {len(data) / 2**20:.1f} MB, over the {MAX_UPLOAD_MB} MB limit: "
                           "upload a smaller image")
    stream = io.BytesIO(data)
    stream.name = name  # load_image names the file in its messages
    # pixel limits (scan_viz.limits) checked from the header; the bytes must be one of the page's formats, and the
    # one the name says (a GIF named .png is refused)
    return load_image(stream, formats=tuple(UPLOAD_FORMATS))
