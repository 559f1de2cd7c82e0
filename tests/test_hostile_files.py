"""Files built to expand, nest or lie (issue 15, items 2, 4 and 10): each is refused with one line, before it costs
memory. Every bomb is generated here, small on disk, and loaded in a fresh process whose peak RSS may grow by at
most :data:`peak_rss.MAX_GROWTH_MB` (the issue measured gigabytes for the same files)."""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

from official_format import official_opt, random_states
from peak_rss import MAX_GROWTH_MB, REPO, peak_rss_growth
from scan_viz.cli import main
from scan_viz.errors import ScanVizError
from scan_viz.model.checkpoint import load_official_checkpoint
from scan_viz.regions.images import load_image
from scan_viz.safe_files import MAX_CHECKPOINT_BYTES, MAX_JSON_DEPTH, LoadBudget, check_json_text, load_npy, parse_json

GALLERY = REPO / "examples" / "gallery"
MODEL = REPO / "pretrained" / "scan-emoji-t2i"
CHUNK = bytes(1 << 24)


def one_line(message: str | None) -> str:
    assert message and "\n" not in message, message
    assert "Traceback" not in message
    return message


def refused_cheaply(setup: str, action: str, match: str) -> float:
    """The growth in MB of a refused load; asserts the ScanVizError's one line contains ``match``."""
    measured = peak_rss_growth(setup, action)
    assert measured.error is not None, f"accepted ({measured.value}); stderr: {measured.stderr[-1500:]}"
    assert match in one_line(measured.error), measured.error
    assert measured.growth_mb < MAX_GROWTH_MB, f"peak RSS grew {measured.growth_mb:.0f} MB"
    print(f"peak RSS growth {measured.growth_mb:.1f} MB: {measured.error}")
    return measured.growth_mb


def deflated_zeros(archive: zipfile.ZipFile, name: str, n_bytes: int, header: bytes = b"") -> None:
    """A member of ``header`` + ``n_bytes`` zeros, deflated as it is written (a few MB on disk per GB)."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    info._compresslevel = 1  # noqa: SLF001 - the fastest level: the test stays quick, the ratio stays ~200:1
    with archive.open(info, "w", force_zip64=True) as f:
        f.write(header)
        while n_bytes > 0:
            f.write(CHUNK[:min(n_bytes, len(CHUNK))])
            n_bytes -= len(CHUNK)


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def copy_gallery(tmp_path: Path) -> Path:
    target = tmp_path / "gallery"
    shutil.copytree(GALLERY, target)
    return target


# ------------------------------------------------------------------------------------------ item 2: expansion
def test_checkpoint_with_a_deflated_storage_of_640_mb(tmp_path):
    """A zip checkpoint whose first tensor storage is a deflated 640 MB record (torch decompressed it whole)."""
    opt = official_opt(vocab_size=11)
    good, bomb = tmp_path / "good.pth.tar", tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 1, "model": list(random_states(opt)), "best_rsum": 0.0, "opt": argparse.Namespace(**opt),
                "Eiters": 1}, good)
    declared = MAX_CHECKPOINT_BYTES + (128 << 20)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w") as out:
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                deflated_zeros(out, info.filename, declared, src.read(info))
            else:
                out.writestr(info, src.read(info))
    assert bomb.stat().st_size < 8 << 20
    refused_cheaply("from scan_viz.model.checkpoint import load_official_checkpoint",
                    f"load_official_checkpoint({str(bomb)!r})", "decompresses to 640 MB, over the 512 MB limit")


def test_two_npz_files_of_600000_by_211_zeros(tmp_path):
    folder = tmp_path / "regions"
    folder.mkdir()
    for stem in ("1", "2"):
        with zipfile.ZipFile(folder / f"{stem}.npz", "w") as out:
            deflated_zeros(out, "x.npy", 600_000 * 211 * 4, npy_header((600_000, 211)))
            deflated_zeros(out, "bbox.npy", 600_000 * 4 * 4, npy_header((600_000, 4)))
            for key, value in (("num_bbox", 600_000), ("image_h", 480), ("image_w", 640)):
                out.writestr(f"{key}.npy", npy_bytes(np.array(value)))
        assert (folder / f"{stem}.npz").stat().st_size < 4 << 20
    refused_cheaply("from scan_viz.regions.store import load_regions", f"load_regions({str(folder)!r})",
                    "1.npz decompresses to 492 MB, over the 17 MB limit")


def test_many_small_npz_files_are_one_load_refused_before_reading(tmp_path):
    """80 .npz files, each within the per-image caps (512 x 4,096 zeros, 8 MB expanded, a few KB deflated), are
    640 MB together: over a visitor's load budget, refused from the headers before the first array is read."""
    from scan_viz.app.bundle import VISITOR_LOAD_BYTES

    folder = tmp_path / "regions"
    folder.mkdir()
    for stem in range(80):
        with zipfile.ZipFile(folder / f"{stem:03d}.npz", "w") as out:
            deflated_zeros(out, "x.npy", 512 * 4096 * 4, npy_header((512, 4096)))
            deflated_zeros(out, "bbox.npy", 512 * 4 * 4, npy_header((512, 4)))
            for key, value in (("num_bbox", 512), ("image_h", 480), ("image_w", 640)):
                out.writestr(f"{key}.npy", npy_bytes(np.array(value)))
    assert sum(p.stat().st_size for p in folder.iterdir()) < 4 << 20
    refused_cheaply("from scan_viz.regions.store import load_regions\nfrom scan_viz.safe_files import LoadBudget",
                    f"load_regions({str(folder)!r}, LoadBudget({VISITOR_LOAD_BYTES}))", "this load may take 512 MB")


def test_tsv_with_one_row_of_20000_boxes(tmp_path):
    def row(image_id: int, n_boxes: int, img_dim: int = 211) -> bytes:
        boxes = base64.b64encode(np.zeros((n_boxes, 4), np.float32).tobytes())
        feats = base64.b64encode(np.zeros((n_boxes, img_dim), np.float32).tobytes())
        return b"\t".join([str(image_id).encode(), b"640", b"480", str(n_boxes).encode(), boxes, feats]) + b"\n"

    path = tmp_path / "features.tsv"
    with path.open("wb") as f:
        for i in range(100):
            f.write(row(i, 20_000 if i == 50 else 1))
    assert path.stat().st_size > 20 << 20
    refused_cheaply("from scan_viz.regions.store import load_regions", f"load_regions({str(path)!r})",
                    "features.tsv:51: the row is over 10 MB")


def test_tsv_row_declaring_too_many_boxes_is_refused_before_decoding(tmp_path):
    path = tmp_path / "features.tsv"
    n = 2_000  # small features, so the row is short and num_boxes is what is refused
    path.write_bytes(b"\t".join([b"7", b"640", b"480", str(n).encode(),
                                 base64.b64encode(bytes(n * 16)), base64.b64encode(bytes(n * 8))]) + b"\n")
    from scan_viz.regions.store import load_regions

    with pytest.raises(ScanVizError, match=r"features.tsv:1: 2,000 boxes in one image; the limit is 512"):
        load_regions(path)


def test_ragged_regions_are_padded_within_the_budget(tmp_path):
    """100 images of 1 box and one of 500: padding all to 500 is charged before it is allocated."""
    from scan_viz.regions.store import load_regions
    from scan_viz.safe_files import OverBudget

    path = tmp_path / "features.tsv"
    with path.open("wb") as f:
        for i in range(101):
            n = 500 if i == 0 else 1
            f.write(b"\t".join([str(i).encode(), b"640", b"480", str(n).encode(),
                                base64.b64encode(bytes(n * 16)), base64.b64encode(bytes(n * 2048 * 4))]) + b"\n")
    with pytest.raises(OverBudget, match="padding 101 images to 500 regions of 2048 features"):
        load_regions(path, budget=LoadBudget(200 << 20))  # padded: 101 x 500 x 2052 x 4 = 414 MB
    assert load_regions(path, budget=LoadBudget(500 << 20)).n_regions == 500


def test_safetensors_with_a_header_of_300000_empty_tensors(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    header = json.dumps({f"img_enc.t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
                         for i in range(300_000)}).encode()
    (model / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    refused_cheaply("from scan_viz.model.checkpoint import load_model_dir", f"load_model_dir({str(model)!r})",
                    "model.safetensors has a 21 MB header; the limit is 1 MB")


# ---------------------------------------------------------------------------- item 4: escapes of error handling
def test_json_nested_200000_deep(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text('{"word2idx": ' + "[" * 200_000 + "]" * 200_000 + "}")
    refused_cheaply("from scan_viz.text import Vocabulary", f"Vocabulary.load({str(path)!r})",
                    f"vocab.json nests 200,001 levels deep; the limit is {MAX_JSON_DEPTH}")


def test_json_with_a_5000_digit_integer(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text('{"word2idx": {"<pad>": 0}, "idx": ' + "9" * 5_000 + "}")
    refused_cheaply("from scan_viz.text import Vocabulary", f"Vocabulary.load({str(path)!r})",
                    "vocab.json holds a number of 5,000 digits; the limit is 100")


def test_npz_header_declaring_10_to_the_12_elements(tmp_path):
    folder = tmp_path / "regions"
    folder.mkdir()
    with zipfile.ZipFile(folder / "1.npz", "w") as out:
        out.writestr("x.npy", npy_header((1_000_000, 1_000_000)))  # 4 TB declared, no data
        out.writestr("bbox.npy", npy_bytes(np.zeros((1, 4), np.float32)))
        for key, value in (("num_bbox", 1), ("image_h", 480), ("image_w", 640)):
            out.writestr(f"{key}.npy", npy_bytes(np.array(value)))
    refused_cheaply("from scan_viz.regions.store import load_regions", f"load_regions({str(folder)!r})",
                    "1.npz (x) declares 3,814,697 MB of data but holds 0 bytes")


def test_npy_header_declaring_10_to_the_12_elements(tmp_path):
    gallery = copy_gallery(tmp_path)
    (gallery / "regions" / "n_boxes.npy").write_bytes(npy_header((10**12,), "<i8"))
    refused_cheaply("from scan_viz.regions.store import load_saved_regions",
                    f"load_saved_regions({str(gallery / 'regions')!r})", "n_boxes.npy declares")


def test_search_on_a_gallery_whose_ids_json_nests_deep(tmp_path):
    gallery = copy_gallery(tmp_path)
    (gallery / "regions" / "ids.json").write_text("[" * 200_000 + "]" * 200_000)
    out = tmp_path / "hits.json"
    measured = peak_rss_growth("from scan_viz.cli import main",
                               f"main(['search', '--gallery', {str(gallery)!r}, '--text', 'a red circle', "
                               f"'--json', {str(out)!r}])")
    assert measured.value == "2", measured.stderr[-1500:]
    assert "Traceback" not in measured.stderr
    error = measured.stderr.strip()
    assert error.startswith("error: ") and "ids.json nests 200,000 levels deep" in one_line(error)
    assert measured.growth_mb < MAX_GROWTH_MB
    assert not out.exists()
    print(f"peak RSS growth {measured.growth_mb:.1f} MB: {error}")


def test_json_scan_ignores_brackets_and_digits_inside_strings():
    text = json.dumps({"caption": "[" * 500 + "9" * 500, "ok": [[1.25e-7, 12345678901234567890]]}).encode()
    check_json_text(text, "file", "f.json")
    assert parse_json(text, "file", "f.json")["ok"][0][1] == 12345678901234567890
    with pytest.raises(ScanVizError, match="not valid JSON"):
        parse_json(b'{"a": "unterminated \\"', "file", "f.json")


def test_npy_declaring_more_than_it_holds(tmp_path):
    path = tmp_path / "features.npy"
    path.write_bytes(npy_header((1000, 36, 2048)) + bytes(100))
    with pytest.raises(ScanVizError, match="features.npy declares 281 MB of data but holds 100 bytes"):
        load_npy(path, "region features", mmap=True)


# ------------------------------------------------------------------------------------- item 10: smaller ones
@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_over_pillows_limit_quotes_ours():
    """A 16x16 WebP whose VP8 frame header declares 16383 x 16383 (268 MP, past Pillow's 179 MP hard limit)."""
    data = io.BytesIO()
    Image.new("RGB", (16, 16)).save(data, "WEBP", quality=50)
    raw = bytearray(data.getvalue())
    start = raw.find(b"\x9d\x01\x2a")  # the VP8 start code; width and height follow, 2 bytes each
    raw[start + 3:start + 7] = (16383).to_bytes(2, "little") * 2
    with pytest.raises(ScanVizError) as info:
        load_image(bytes(raw))
    assert "limit of 25 megapixels" in one_line(str(info.value)) and "179" not in str(info.value)


def test_zero_filled_checkpoint_gets_one_line(tmp_path):
    path = tmp_path / "model_best.pth.tar"
    path.write_bytes(bytes(1 << 20))
    with pytest.raises(ScanVizError) as info:
        load_official_checkpoint(path)
    message = one_line(str(info.value))
    assert "model_best.pth.tar" in message and "all zero bytes" in message
    assert "legacy" not in message and "weights_only" not in message and str(tmp_path) not in message


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_image_that_is_a_fifo_or_a_device(tmp_path, capsys, kind):
    if kind == "fifo":
        target = tmp_path / "photo.png"
        os.mkfifo(target)
    else:
        target = Path("/dev/zero")
    assert main(["explain", "--image", str(target), "--text", "a red circle", "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "is not a regular file" in one_line(error)
    assert "does not exist" not in error


def test_search_refuses_nan_region_features(tmp_path, capsys):
    gallery = copy_gallery(tmp_path)
    feats = np.load(gallery / "regions" / "features.npy")
    feats[::2] = np.nan  # half the images: stage 1 would silently drop them, exhaustive search score them NaN
    np.save(gallery / "regions" / "features.npy", feats)
    out = tmp_path / "hits.json"
    for stage1_k in ("0", "50"):
        assert main(["search", "--gallery", str(gallery), "--text", "a red circle", "--stage1-k", stage1_k,
                     "--json", str(out)]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: ") and "NaN or infinite" in one_line(error)
        assert not out.exists()  # never a file with "score": NaN in it


def test_tsv_with_nan_features_is_refused(tmp_path):
    from scan_viz.regions.store import load_regions

    path = tmp_path / "features.tsv"
    feats = np.full((2, 8), np.nan, np.float32)
    path.write_bytes(b"\t".join([b"7", b"640", b"480", b"2", base64.b64encode(bytes(32)),
                                 base64.b64encode(feats.tobytes())]) + b"\n")
    with pytest.raises(ScanVizError, match="features.tsv:1: the features hold NaN or infinite values"):
        load_regions(path)


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "BMP"])
@pytest.mark.parametrize("name", ["photo.png", "photo.jpg", "photo.webp"])
def test_other_formats_named_as_png_jpeg_or_webp_are_refused(tmp_path, fmt, name):
    data = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(data, fmt)
    path = tmp_path / name
    path.write_bytes(data.getvalue())
    with pytest.raises(ScanVizError, match=f"is named {Path(name).suffix} but holds a {fmt} image"):
        load_image(path)
    stream = io.BytesIO(data.getvalue())
    stream.name = name  # an upload: the name the visitor's browser gave
    with pytest.raises(ScanVizError, match="but holds a"):
        load_image(stream)
    assert load_image(data.getvalue()).shape == (8, 8, 3)  # unnamed bytes of an accepted format still load
    with pytest.raises(ScanVizError, match=f"is a {fmt} image; accepted here: JPEG, PNG, WEBP"):
        load_image(data.getvalue(), formats=("PNG", "JPEG", "WEBP"))


def test_json_breadth_is_charged_before_parsing(tmp_path):
    """3 MB of empty objects would be 75 MB of dicts: the estimate is charged before json.loads runs."""
    from scan_viz.safe_files import OverBudget, read_json

    path = tmp_path / "gallery.json"
    path.write_bytes(b"[" + b",".join([b"{}"] * 1_000_000) + b"]")
    with pytest.raises(OverBudget, match="gallery.json would take 186 MB in memory"):
        read_json(path, "gallery file", budget=LoadBudget(100 << 20))
    assert len(read_json(path, "gallery file")) == 1_000_000  # the default budget admits it


# ------------------------------------------------------------------------------------ real data still loads
def test_caps_admit_an_official_size_checkpoint(tmp_path):
    """An official COCO checkpoint's shapes (11,755 words x 300, bi-GRU of 1024, fc 2048 -> 1024): about 55 MB."""
    opt = official_opt(vocab_size=11_755, word_dim=300, embed_size=1024, img_dim=2048)
    image, text = random_states(opt)
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 1, "model": [image, text], "best_rsum": 0.0, "opt": argparse.Namespace(**opt),
                "Eiters": 1}, path)
    assert 40 << 20 < path.stat().st_size < 80 << 20
    budget = LoadBudget()
    checkpoint = load_official_checkpoint(path, budget)
    assert checkpoint.text_state["embed.weight"].shape == (11_755, 300)
    assert path.stat().st_size * 0.99 < budget.used < path.stat().st_size


def test_caps_admit_bottom_up_attention_features_of_1000_images():
    """36 x 2048 float32 regions of 1,000 images, and adaptive 10-100 boxes padded to 100, fit the caps."""
    from scan_viz.safe_files import MAX_FEATURE_DIM, MAX_LOAD_BYTES, MAX_NPZ_BYTES, MAX_REGIONS_PER_IMAGE

    assert 100 <= MAX_REGIONS_PER_IMAGE and 2048 <= MAX_FEATURE_DIM
    assert 1_000 * 100 * (2048 + 4) * 4 < MAX_LOAD_BYTES
    assert 100 * (2048 + 4) * 8 < MAX_NPZ_BYTES  # one image's .npz, even in float64


@pytest.mark.parametrize("command", ["score", "index"])
def test_captions_that_are_a_device_are_refused(tmp_path, capsys, command):
    if command == "score":
        np.save(tmp_path / "ims.npy", np.zeros((1, 2, 12), np.float32))
        argv = ["score", "--model", str(MODEL), "--images", str(tmp_path / "ims.npy"), "--captions", "/dev/zero",
                "--out", str(tmp_path / "s.npy")]
    else:
        (tmp_path / "images").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
        argv = ["index", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "g"), "--captions", "/dev/zero"]
    assert main(argv) == 2
    assert "captions /dev/zero is not a regular file" in one_line(capsys.readouterr().err.strip())
