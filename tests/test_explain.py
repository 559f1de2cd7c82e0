"""`scan-viz explain`: image + sentence -> alignment.json + heatmaps.png, and bad input -> one line, status 2."""
import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from scan_viz.cli import main


def _explain(bundle, image, text, out):
    return main(["explain", "--model", str(bundle.model), "--detector", str(bundle.detector), "--image", str(image),
                 "--text", text, "--out", str(out)])


def test_explain_end_to_end(bundle, tmp_path, capsys):
    image = bundle.gallery / "images" / f"{bundle.image_ids[0]}.jpg"
    text = bundle.captions[bundle.image_ids[0]][0]
    assert _explain(bundle, image, text, tmp_path / "out") == 0
    al = json.loads((tmp_path / "out" / "alignment.json").read_text())
    assert set(al) >= {"text", "tokens", "boxes", "attention", "word_relevance", "region_relevance", "score", "head",
                       "head_params"}
    assert al["text"] == text and al["head_params"]["cross_attn"] == "t2i" and al["region_relevance"] is None
    assert al["word_relevance_label"] == "R" and len(al["word_relevance"]) == len(al["tokens"])
    words = [t["text"] for t in al["tokens"]]
    assert words[0] == "<start>" and words[-1] == "<end>" and words[1:-1] == text.lower().split()
    for t in al["tokens"][1:-1]:
        assert text[t["start"]:t["end"]].lower() == t["text"]
    attention = np.array(al["attention"])
    assert attention.shape == (len(words), 36) and len(al["boxes"]) == 36
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-5)
    w, h = Image.open(image).size
    boxes = np.array(al["boxes"])
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all()
    assert (tmp_path / "out" / "heatmaps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "score" in capsys.readouterr().out


def test_only_unknown_words_work_and_say_so(bundle, tmp_path, capsys):
    image = bundle.gallery / "images" / f"{bundle.image_ids[1]}.jpg"
    assert _explain(bundle, image, "zyzzyva quokka", tmp_path / "o") == 0
    out = capsys.readouterr().out
    assert "<unk>" in out and "zyzzyva" in out


def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", 30000, 30000)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


def _jpeg_bytes(**kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, format="JPEG", **kw)
    return buf.getvalue()


BAD_IMAGES = {
    "corrupt": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    "truncated": _jpeg_bytes()[:200],
    "empty": b"",
    "text": b"this is not an image\n",
    "bomb": _bomb_png(),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_images_exit_2_quickly(bundle, tmp_path, capsys, name):
    path = tmp_path / f"bad_{name}.png"
    path.write_bytes(BAD_IMAGES[name])
    t = time.perf_counter()
    assert _explain(bundle, path, "a dog", tmp_path / "o") == 2
    assert time.perf_counter() - t < 20
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "o" / "alignment.json").exists()


@pytest.mark.parametrize("text", ["", "   \t "])
def test_empty_sentence_exit_2(bundle, tmp_path, capsys, text):
    image = bundle.gallery / "images" / f"{bundle.image_ids[0]}.jpg"
    assert _explain(bundle, image, text, tmp_path / "o") == 2
    assert capsys.readouterr().err.startswith("error: the sentence is empty")


def _odd_images(tmp_path):
    rgb = Image.new("RGB", (40, 30), (20, 120, 220))
    cases = {
        "gray.png": rgb.convert("L"),
        "rgba.png": rgb.convert("RGBA"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "tall1.png": Image.new("RGB", (50, 1), (255, 0, 0)),
    }
    paths = {}
    for name, img in cases.items():
        paths[name] = tmp_path / name
        img.save(paths[name])
    paths["16bit.png"] = tmp_path / "16bit.png"
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(paths["16bit.png"])
    exif = Image.Exif()
    exif[0x0112] = 6
    paths["rotated.jpg"] = tmp_path / "rotated.jpg"
    rgb.save(paths["rotated.jpg"], exif=exif.tobytes())
    paths["anim.gif"] = tmp_path / "anim.gif"
    rgb.save(paths["anim.gif"], save_all=True, append_images=[Image.new("RGB", (40, 30), (0, 0, 0))], duration=50)
    return paths


def test_odd_but_valid_images_work_or_say_why(bundle, tmp_path, capsys):
    for name, path in _odd_images(tmp_path).items():
        if name == "tall1.png":  # too thin to detect anything in: a clear one-line error
            assert _explain(bundle, path, "a dog", tmp_path / "tall") == 2
            assert "at least" in capsys.readouterr().err
            continue
        assert _explain(bundle, path, "a dog", tmp_path / name.replace(".", "_")) == 0, name
        al = json.loads((tmp_path / name.replace(".", "_") / "alignment.json").read_text())
        if name == "rotated.jpg":  # EXIF orientation 6: the upright image is 30 wide, 40 tall
            assert al["image_size"] == [30, 40]
