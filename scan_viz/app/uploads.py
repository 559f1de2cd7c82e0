"""An uploaded image, checked: only photo formats, bounded size, decoded upright or refused with one line."""
from __future__ import annotations

import io
from pathlib import PurePath

import numpy as np

from scan_viz.errors import ScanVizError
from scan_viz.images import load_image

#: What the uploader offers (PNG, JPEG, WebP); the decoder itself sniffs the bytes, never trusts the name.
UPLOAD_TYPES = ("png", "jpg", "jpeg", "webp")
MAX_UPLOAD_MB = 20


def read_upload(data: bytes, name: str = "the uploaded file") -> np.ndarray:
    """Uploaded bytes -> upright (H, W, 3) uint8 RGB; raises ScanVizError naming the file and what to do."""
    suffix = PurePath(name).suffix.lower().lstrip(".")
    if suffix and suffix not in UPLOAD_TYPES:
        raise ScanVizError(f"{name}: .{suffix} files are not accepted; upload a PNG, JPEG or WebP image")
    if len(data) > MAX_UPLOAD_MB * 1024 * 1024:
        raise ScanVizError(f"{name} is {len(data) / 2**20:.1f} MB, over the {MAX_UPLOAD_MB} MB limit: "
                           "upload a smaller image")
    stream = io.BytesIO(data)
    stream.name = name  # load_image names the file in its messages
    return load_image(stream)  # pixel limits: scan_viz.limits, checked from the header
