"""Tests for scan_viz.regions.images: every odd, broken or hostile file is built here with Pillow."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from scan_viz.errors import ScanVizError
from scan_viz.regions.images import fit_within, image_to_jpeg_bytes, image_to_png_bytes, load_image

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def with_declared_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR width/height rewritten (and the chunk's CRC fixed): a tiny file claiming any size."""
    assert png[12:16] == b"IHDR"
    ihdr = bytearray(png[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return png[:16] + bytes(ihdr) + crc + png[33:]


def assert_user_error(source, match: str = "", **kwargs) -> str:
    with pytest.raises(ScanVizError) as info:
        load_image(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    assert match in message
    return message


def corner_image(size: tuple[int, int]) -> Image.Image:
    """A blue image with a red 4x4 top-left corner, to tell the orientation from the pixels."""
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, 4, 4))
    return image


# ----------------------------------------------------------------- valid images, every kind of source


def test_rgb_png_from_path_str_bytes_and_stream(tmp_path):
    path = save(corner_image((30, 20)), tmp_path / "a.png")
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        array = load_image(source)
        assert array.shape == (20, 30, 3) and array.dtype == np.uint8
        assert tuple(array[0, 0]) == RED and tuple(array[-1, -1]) == BLUE


def test_grayscale_and_la(tmp_path):
    gray = load_image(save(Image.new("L", (8, 6), 77), tmp_path / "g.png"))
    assert gray.shape == (6, 8, 3) and (gray == 77).all()
    la = load_image(save(Image.new("LA", (8, 6), (0, 0)), tmp_path / "la.png"))
    assert (la == 255).all()  # fully transparent black over white


def test_rgba_is_composited_onto_white(tmp_path):
    image = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 255))
    image.putpixel((2, 0), (255, 0, 0, 128))
    array = load_image(save(image, tmp_path / "rgba.png"))
    assert tuple(array[0, 0]) == (255, 255, 255)
    assert tuple(array[0, 1]) == RED
    assert array[0, 2, 0] == 255 and 120 <= array[0, 2, 1] <= 135


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((0, 0), 1)
    array = load_image(save(image, tmp_path / "p.png", transparency=0))
    assert tuple(array[0, 0]) == GREEN and tuple(array[3, 3]) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    array = load_image(path)
    assert array.shape == (16, 16, 3)
    assert array[8, 8, 0] > 230 and array[8, 8, 1] < 25 and array[8, 8, 2] < 25


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    array = load_image(path)
    assert array.shape == (1, 4, 3) and array.dtype == np.uint8
    assert array[0, :, 0].tolist() == [0, 4, 128, 255]


def test_exif_rotated_jpeg_is_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned, display rotated 90 degrees clockwise
    path = save(corner_image((40, 20)), tmp_path / "rotated.jpg", exif=exif, quality=95)
    array = load_image(path)
    assert array.shape == (40, 20, 3)  # the displayed size: stored 40 wide x 20 tall, shown 20 wide x 40 tall
    top_right, top_left = array[1, -2], array[1, 1]
    assert top_right[0] > 200 and top_right[2] < 60  # the stored top-left red corner, rotated clockwise
    assert top_left[2] > 200 and top_left[0] < 60


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), RED), Image.new("RGB", (10, 10), GREEN)]
    path = save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(path).n_frames == 2
    assert tuple(load_image(path)[5, 5]) == RED


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_animated_webp_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), RED), Image.new("RGB", (10, 10), GREEN)]
    path = save(frames[0], tmp_path / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    array = load_image(path)
    assert array.shape == (10, 10, 3) and tuple(array[5, 5]) == RED


@pytest.mark.parametrize("size", [(1, 1), (50, 1), (1, 50), (3, 2)])
def test_tiny_and_one_pixel_thin_images(tmp_path, size):
    array = load_image(save(Image.new("RGB", size, GREEN), tmp_path / "thin.png"))
    assert array.shape == (size[1], size[0], 3) and (array == GREEN).all()


def test_bmp_and_tiff(tmp_path):
    for name in ("x.bmp", "x.tif"):
        assert tuple(load_image(save(corner_image((9, 7)), tmp_path / name))[0, 0]) == RED


# ----------------------------------------------------------------- broken and hostile input


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert_user_error(tmp_path / "empty.png", "empty")
    assert_user_error(b"", "not a readable image")


def test_not_images(tmp_path):
    (tmp_path / "notes.png").write_text("a dog on a red sofa\n" * 20)
    assert_user_error(tmp_path / "notes.png", "not a readable image (PNG, JPEG")
    assert_user_error(np.random.default_rng(0).bytes(5000), "not a readable image")
    assert_user_error(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a readable image")


def test_formats_outside_the_list_are_refused(tmp_path):
    path = save(Image.new("RGB", (4, 4)), tmp_path / "x.ppm")
    assert_user_error(path, "not a readable image")


@pytest.mark.parametrize("fmt,suffix", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_files_raise_instead_of_loading_gray(tmp_path, fmt, suffix):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = save(noise, tmp_path / f"full.{suffix}", format=fmt).read_bytes()
    (tmp_path / f"cut.{suffix}").write_bytes(data[: len(data) // 2])
    assert_user_error(tmp_path / f"cut.{suffix}", "not a readable image")


def test_missing_path_and_folder(tmp_path):
    assert_user_error(tmp_path / "nope.jpg", "does not exist")
    assert_user_error(tmp_path, "folder")


def test_decompression_bomb_is_rejected_fast_without_allocating(tmp_path):
    bomb = with_declared_size(png_bytes(Image.new("RGB", (8, 8))), 30000, 30000)
    (tmp_path / "bomb.png").write_bytes(bomb)
    assert len(bomb) < 200
    tracemalloc.start()
    start = time.perf_counter()
    message = assert_user_error(tmp_path / "bomb.png", "30000x30000 = 900 megapixels")
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "the limit is 25 megapixels" in message and "resize" in message
    assert elapsed < 1.0 and peak < 20_000_000


def test_size_limits_below_pillows_own(tmp_path):
    small = png_bytes(Image.new("RGB", (8, 8)))
    assert_user_error(with_declared_size(small, 8000, 8000), "8000x8000 = 64 megapixels")
    assert_user_error(with_declared_size(small, 13000, 1), "over the limit of 12000")
    assert_user_error(with_declared_size(small, 100, 100), "megapixels", max_pixels=5000)


def test_pillows_bomb_warning_is_an_error_when_our_limit_is_raised():
    # 10000 x 10000 passes a raised max_pixels but is past Pillow's MAX_IMAGE_PIXELS warning threshold
    bomb = with_declared_size(png_bytes(Image.new("RGB", (8, 8))), 10000, 10000)
    assert_user_error(bomb, "too large to decode safely", max_pixels=10**9, max_side=10**6)


# ----------------------------------------------------------------- helpers


def test_fit_within_keeps_aspect_and_never_upscales_unless_asked():
    image = np.zeros((100, 200, 3), np.uint8)
    resized, scale = fit_within(image, 50, 50)
    assert resized.shape == (25, 50, 3) and scale == pytest.approx(0.25)
    same, scale = fit_within(image, 1000, 1000)
    assert same is image and scale == 1.0
    bigger, scale = fit_within(image, 400, 400, upscale=True)
    assert bigger.shape == (200, 400, 3) and scale == pytest.approx(2.0)
    thin, _ = fit_within(np.zeros((1, 500, 3), np.uint8), 50, 50)
    assert thin.shape == (1, 50, 3)
    with pytest.raises(ScanVizError):
        fit_within(image, 0, 10)


def test_image_to_png_bytes_round_trip():
    image = np.asarray(corner_image((6, 5)))
    data = image_to_png_bytes(image)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert np.array_equal(load_image(data), image)
    with pytest.raises(ScanVizError):
        image_to_png_bytes(image.astype(np.float32))


def test_image_to_jpeg_bytes_keeps_a_panel_close_at_half_the_bytes_of_quality_100():
    from scan_viz.render import draw_boxes

    y, x = np.mgrid[0:256, 0:320]
    scene = np.stack([x * 255 // 319, y, (x + y) % 256], axis=-1).astype(np.uint8)  # 320 x 256, a gallery scene's size
    panel = draw_boxes(scene, np.array([[40, 30, 200, 180]]), ["cat 0.61"], colours=[(255, 221, 0)])
    data = image_to_jpeg_bytes(panel)
    assert data.startswith(b"\xff\xd8\xff")
    decoded = load_image(data)
    assert decoded.shape == panel.shape
    assert np.abs(decoded.astype(int) - panel.astype(int)).mean() < 1.5
    assert len(data) < 0.5 * len(image_to_jpeg_bytes(panel, quality=100))  # st.image's quality for an array
    with pytest.raises(ScanVizError):
        image_to_jpeg_bytes(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ScanVizError):
        image_to_jpeg_bytes(panel.astype(np.float32))
