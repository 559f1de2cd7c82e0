"""Load a user's image safely: bad input raises ScanVizError, never crashes, in bounded time and memory.

Uploads are untrusted. Pillow opens files lazily (only the header is read), so the declared size is checked
before a single pixel is decoded: a few-kilobyte PNG that declares 30000 x 30000 pixels is rejected without
allocating its 2.7 GB. Only the common photo formats are tried, so an upload is never handed to exotic
plugins (EPS, for one, runs Ghostscript).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from scan_viz.errors import ScanVizError
from scan_viz.limits import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from scan_viz.safe_paths import regular_file

#: what a folder of images may hold (``scan-viz index``, ``scan-viz gallery build``): files with these suffixes
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

#: Pillow's names of the formats load_image accepts (its JPEG opener also reads camera MPO files).
FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
#: What a file's name promises: bytes of another format under one of these names are refused, so a page that
#: accepts "PNG, JPEG or WebP" never decodes a GIF, TIFF or BMP named ``.png``.
SUFFIX_FORMATS: dict[str, tuple[str, ...]] = {
    ".png": ("PNG",), ".jpg": ("JPEG",), ".jpeg": ("JPEG",), ".webp": ("WEBP",), ".gif": ("GIF",),
    ".bmp": ("BMP",), ".tif": ("TIFF",), ".tiff": ("TIFF",),
}
_READABLE = "is not a readable image (PNG, JPEG, WebP, GIF, BMP, TIFF)"

ImageSource = str | Path | bytes | BinaryIO


def _one_line(text: object, limit: int = 160) -> str:
    """An exception's text squeezed onto one short line, for the end of a user-facing message."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _open_stream(source: ImageSource) -> tuple[BinaryIO, str, bool]:
    """(seekable binary stream, name for messages, whether we opened it and must close it)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), "the image data", True
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir() or not os.path.lexists(path):
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise ScanVizError(f"{path} {what}: check the image path")
        regular_file(path, "image")  # a FIFO or a device is refused as such, never opened
        try:
            return open(path, "rb"), str(path), True
        except OSError as err:
            raise ScanVizError(f"{path} cannot be opened ({_one_line(err.strerror or err)}): check its permissions")
    if not hasattr(source, "read"):
        raise ScanVizError(f"cannot read an image from a {type(source).__name__}: pass a path, bytes or a binary file")
    name = str(getattr(source, "name", "") or "the uploaded file")
    try:
        source.seek(0)
        return source, name, False
    except (AttributeError, OSError, ValueError):
        # a pipe or socket: read it once so Pillow can seek
        return io.BytesIO(source.read()), name, True


def _stream_size(stream: BinaryIO) -> int:
    """Bytes in a seekable stream, leaving it at the start."""
    stream.seek(0, io.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    return size


def _declared_size_despite_bomb(stream: BinaryIO) -> tuple[int, int] | None:
    """(width, height) from the header of an image Pillow refused as a decompression bomb.

    Image.open raises before returning the image, so the size is read again with the format's own
    (header-only) opener, which skips Pillow's bomb check; nothing is decoded.
    """
    stream.seek(0)
    prefix = stream.read(16)
    Image.init()
    for fmt in FORMATS:
        factory, accept = Image.OPEN.get(fmt, (None, None))
        if factory is None or (accept is not None and not accept(prefix)):
            continue
        try:
            stream.seek(0)
            width, height = factory(stream, "").size
            return width, height
        except Exception:  # noqa: BLE001, S112 - a best effort for the message only
            continue
    return None


def _check_size(width: int, height: int, name: str, max_pixels: int, max_side: int) -> None:
    if width < 1 or height < 1:
        raise ScanVizError(f"{name} {_READABLE}: it declares a size of {width}x{height}")
    pixels = width * height
    if pixels > max_pixels:
        raise ScanVizError(f"{name}: image is {width}x{height} = {pixels / 1e6:.3g} megapixels; "
                           f"the limit is {max_pixels / 1e6:.3g} megapixels: resize it first")
    if max(width, height) > max_side:
        raise ScanVizError(f"{name}: image is {width}x{height}, a side over the limit of {max_side} pixels: "
                           "resize it first")


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16- or 32-bit single-channel image into 0..255 (rescaled, never clipped)."""
    values = array.astype(np.float64)
    if mode.startswith("I;16") or (mode == "I" and values.min() >= 0 and values.max() <= 65535):
        # 16-bit data (Pillow reads 16-bit grayscale PNG/TIFF as I;16, older versions as I)
        scaled = values / 257.0
    elif mode == "F" and values.min() >= 0 and values.max() <= 1:
        scaled = values * 255.0
    else:
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any Pillow mode; transparency is composited onto white."""
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = _to_uint8(np.asarray(image), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if (mode == "P" and "transparency" in image.info) or mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    # CMYK, YCbCr, LAB, L, 1, P and RGBA (now opaque) all have a conversion to RGB
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _check_format(found: str | None, name: str, formats: tuple[str, ...]) -> None:
    """ScanVizError when Pillow read ``found`` bytes but ``formats`` or the file's name promise another format."""
    family = "JPEG" if found == "MPO" else found  # Pillow's JPEG opener names camera MPO files MPO
    suffix = os.path.splitext(name)[1].lower()
    promised = SUFFIX_FORMATS.get(suffix)
    if promised is not None and family not in promised:
        raise ScanVizError(f"{name} is named {suffix} but holds a {family} image: save it in the format its name "
                           "says, or rename it")
    if family not in formats:
        raise ScanVizError(f"{name} is a {family} image; accepted here: {', '.join(sorted(formats))}")


def load_image(source: ImageSource, max_pixels: int = MAX_IMAGE_PIXELS, max_side: int = MAX_IMAGE_SIDE,
               formats: tuple[str, ...] = FORMATS) -> np.ndarray:
    """Decode an uploaded or local image into an upright (H, W, 3) uint8 RGB array.

    source: a path, the file's bytes, or a binary file object (such as Streamlit's upload). The declared
    size is checked against ``max_pixels`` and ``max_side`` before decoding. Grayscale, palette,
    transparent (composited onto white), CMYK and 16-bit images are converted; EXIF orientation is
    applied, so the array's size is the displayed (rotated) size; of an animation, the first frame.
    Truncated files raise (this relies on Pillow's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``).
    ``formats``: Pillow's names of the formats accepted (the app passes PNG, JPEG and WEBP); a file whose name
    says one format (``.png``) must hold that format (:data:`SUFFIX_FORMATS`).
    """
    stream, name, owned = _open_stream(source)
    try:
        if _stream_size(stream) == 0:
            raise ScanVizError(f"{name} {_READABLE}: the file is empty (0 bytes)")
        with warnings.catch_warnings():
            # Pillow's own limit is a second guard for callers who raise ours above it
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = Image.open(stream, formats=FORMATS)  # a narrower ``formats`` is checked below, by name
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
                size = _declared_size_despite_bomb(stream)
                if size is not None:
                    _check_size(*size, name, max_pixels, max_side)
                # the size was not readable without decoding (WebP): Pillow refused it for being over its own limit;
                # when that is above ours (the default), the image is over ours too, and the answer quotes ours
                if Image.MAX_IMAGE_PIXELS is not None and max_pixels <= Image.MAX_IMAGE_PIXELS:
                    raise ScanVizError(f"{name}: image is over the limit of {max_pixels / 1e6:.3g} megapixels: "
                                       "resize it first") from None
                raise ScanVizError(f"{name}: image is too large to decode safely ({_one_line(err)}): resize it "
                                   "first") from None
            except UnidentifiedImageError:
                raise ScanVizError(f"{name} {_READABLE}: its bytes match none of these formats") from None
            except Exception as err:  # noqa: BLE001 - untrusted bytes: any decoder failure is the file's fault
                raise ScanVizError(f"{name} {_READABLE}: {_one_line(err)}") from None
            with image:
                _check_format(image.format, name, formats)
                _check_size(image.width, image.height, name, max_pixels, max_side)
                try:
                    image.seek(0)  # the first frame of an animation
                    image.load()
                except MemoryError:
                    raise ScanVizError(f"{name}: not enough memory to decode this image: resize it first") from None
                except Exception as err:  # noqa: BLE001
                    raise ScanVizError(f"{name} {_READABLE}: {_one_line(err)}") from None
                try:
                    upright = ImageOps.exif_transpose(image)
                except Exception:  # noqa: BLE001 - a broken EXIF block should not lose a good picture
                    upright = image
                return _to_rgb(upright)
    finally:
        if owned:
            stream.close()


def fit_within(image: np.ndarray, max_w: int, max_h: int, upscale: bool = False) -> tuple[np.ndarray, float]:
    """Resize (H, W, C) or (H, W) ``image`` to fit in max_w x max_h, keeping its aspect ratio.

    Returns (resized image, scale), where new size = round(old size * scale); scale is 1.0 and the image
    is returned unchanged when it already fits (or is smaller and ``upscale`` is False).
    """
    if max_w < 1 or max_h < 1:
        raise ScanVizError(f"cannot fit an image into {max_w}x{max_h} pixels: give a positive width and height")
    height, width = image.shape[:2]
    scale = min(max_w / width, max_h / height)
    if scale == 1.0 or (scale > 1.0 and not upscale):
        return image, 1.0
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    # LANCZOS for shrinking (no aliasing), BICUBIC for the rare upscale
    resample = Image.Resampling.LANCZOS if scale < 1.0 else Image.Resampling.BICUBIC
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), resample))
    return resized, scale


def _encode(image: np.ndarray, fmt: str, **options: object) -> bytes:
    array = np.asarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ScanVizError(f"cannot write a {array.dtype} array of shape {array.shape} as {fmt}: "
                           "pass (H, W, 3) uint8 RGB")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def image_to_png_bytes(image: np.ndarray) -> bytes:
    """PNG file bytes of an (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grayscale uint8 array."""
    return _encode(image, "PNG")


def image_to_jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG file bytes of an (H, W, 3) RGB or (H, W) grayscale uint8 array: what a page shows of a photo.

    Streamlit encodes an array at quality 100 on every rerun; encoded once here at quality 90 without chroma
    subsampling (the word panels' yellow outlines and labels keep their sharp colour edges), a gallery panel is
    half the bytes (about 20 KB) and within about 1.2 grey levels of the array on average.
    """
    if np.ndim(image) == 3 and np.shape(image)[2] == 4:
        raise ScanVizError("cannot write an RGBA image as JPEG: pass (H, W, 3) uint8 RGB")
    return _encode(image, "JPEG", quality=quality, subsampling=0)


__all__ = ["FORMATS", "fit_within", "image_to_jpeg_bytes", "image_to_png_bytes", "load_image"]


def list_images(folder: Path) -> list[Path]:
    """The folder's image files (by suffix), sorted; their stems become image ids and must be unique."""
    if not folder.is_dir():
        raise ScanVizError(f"{folder} is not a folder: give --images a folder of image files")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise ScanVizError(f"{seen[path.stem].name} and {path.name} would both be image id {path.stem!r}: "
                               "rename one of them")
        seen[path.stem] = path
    if not files:
        raise ScanVizError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files
