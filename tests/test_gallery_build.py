"""``scan-viz gallery build`` (scan_viz/gallery/build.py) and the versioned gallery.json schema of load_gallery.

The app fixture's 12 images are written out in each region format the library reads (official precomp ``.npy``,
bottom-up-attention TSV, per-image ``.npz``), built into galleries and read back.
"""
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app_fixture import app_fixture
from scan_viz.cli import main
from scan_viz.errors import ScanVizError
from scan_viz.gallery import FORMAT_VERSION, GALLERY_FILE, load_gallery
from scan_viz.gallery.build import build_gallery
from scan_viz.regions.store import TSV_COLUMNS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source():
    """The fixture gallery: its ids, captions (5 per image), features, boxes, sizes and image files."""
    fixture = app_fixture()
    gallery = load_gallery(fixture.gallery)
    assert all(len(gallery.captions_of(i)) == 5 for i in gallery.ids)
    return gallery


def write_precomp(source, folder: Path, split: str = "test") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{split}_ims.npy", np.asarray(source.regions.features, dtype=np.float32))
    (folder / f"{split}_caps.txt").write_text("".join(c + "\n" for c in source.captions), encoding="utf-8")
    return folder / f"{split}_ims.npy"


def write_tsv(source, path: Path) -> Path:
    rows = []
    for i, image_id in enumerate(source.ids):
        n = int(source.regions.n_boxes[i])
        w, h = (int(v) for v in source.regions.image_sizes[i])
        cols = [image_id, str(w), str(h), str(n),
                base64.b64encode(np.asarray(source.regions.boxes[i, :n], np.float32).tobytes()).decode(),
                base64.b64encode(np.asarray(source.regions.features[i, :n], np.float32).tobytes()).decode()]
        assert len(cols) == len(TSV_COLUMNS)
        rows.append("\t".join(cols))
    path.write_text("\n".join(rows) + "\n")
    return path


def write_npz(source, folder: Path) -> Path:
    folder.mkdir()
    for i, image_id in enumerate(source.ids):
        n = int(source.regions.n_boxes[i])
        w, h = (int(v) for v in source.regions.image_sizes[i])
        np.savez(folder / f"{image_id}.npz", x=np.asarray(source.regions.features[i, :n], np.float32),
                 bbox=np.asarray(source.regions.boxes[i, :n], np.float32), num_bbox=n, image_h=h, image_w=w)
    return folder


def by_id_captions(source, path: Path) -> Path:
    path.write_text("".join(f"{source.ids[int(source.caption_image[k])]}\t{c}\n"
                            for k, c in enumerate(source.captions)), encoding="utf-8")
    return path


def test_precomp_without_boxes_or_images_builds_a_gallery_for_retrieval(source, tmp_path):
    npy = write_precomp(source, tmp_path / "f30k_precomp")
    report = build_gallery(npy, tmp_path / "g")
    gallery = load_gallery(tmp_path / "g")
    assert (report.n_images, report.n_captions, report.has_boxes, report.has_images) == (12, 60, False, False)
    assert gallery.ids == [str(i) for i in range(12)] and gallery.captions == source.captions
    assert gallery.regions.boxes is None and not gallery.has_images and not (tmp_path / "g" / "images").exists()
    np.testing.assert_array_equal(gallery.regions.features, source.regions.features)  # float32 by default: exact
    assert json.loads((tmp_path / "g" / GALLERY_FILE).read_text())["format_version"] == FORMAT_VERSION
    with pytest.raises(ScanVizError, match="no picture"):
        gallery.load_image("3")


def test_precomp_with_ids_file_and_its_images(source, tmp_path):
    npy = write_precomp(source, tmp_path / "data")
    (tmp_path / "ids.txt").write_text("\n".join(source.ids) + "\n")
    build_gallery(npy, tmp_path / "g", images=source.root / "images", ids=tmp_path / "ids.txt", name="mine")
    gallery = load_gallery(tmp_path / "g")
    assert gallery.ids == source.ids and gallery.name == "mine" and gallery.has_images
    assert gallery.load_image(source.ids[3]).shape == source.load_image(source.ids[3]).shape
    # JPEG files are copied byte for byte: the features were extracted from exactly those pixels
    assert gallery.image_path(source.ids[3]).read_bytes() == source.image_path(source.ids[3]).read_bytes()
    assert gallery.records[3]["width"] == source.records[3]["width"]


@pytest.mark.parametrize("fmt", ["tsv", "npz"])
def test_boxed_formats_with_by_id_captions_keep_boxes_and_sizes(source, tmp_path, fmt):
    regions = write_tsv(source, tmp_path / "f.tsv") if fmt == "tsv" else write_npz(source, tmp_path / "npz")
    report = build_gallery(regions, tmp_path / "g", captions=by_id_captions(source, tmp_path / "caps.tsv"),
                           images=source.root / "images", feature_dtype="float16")
    gallery = load_gallery(tmp_path / "g")
    assert report.captions_layout == "by-id" and report.has_boxes and report.has_images
    order = [source.index_of(i) for i in gallery.ids]  # npz files are read sorted by id
    assert sorted(gallery.ids) == sorted(source.ids)
    np.testing.assert_array_equal(gallery.regions.boxes, np.asarray(source.regions.boxes)[order])
    np.testing.assert_allclose(gallery.regions.features, np.asarray(source.regions.features)[order], atol=2e-3)
    assert all(gallery.captions_of(i) == source.captions_of(i) for i in gallery.ids)
    assert [(r["width"], r["height"]) for r in gallery.records] == \
        [(source.records[j]["width"], source.records[j]["height"]) for j in order]


def test_official_layout_captions_for_a_tsv(source, tmp_path):
    (tmp_path / "caps.txt").write_text("\n".join(source.captions) + "\n")
    report = build_gallery(write_tsv(source, tmp_path / "f.tsv"), tmp_path / "g", captions=tmp_path / "caps.txt")
    gallery = load_gallery(tmp_path / "g")
    assert report.captions_layout == "official" and gallery.captions == source.captions
    assert gallery.regions.boxes is not None and not gallery.has_images


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["gallery", "build", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_builds_and_refuses_an_existing_folder_unless_forced(source, tmp_path, capsys):
    npy = str(write_precomp(source, tmp_path / "d"))
    out = str(tmp_path / "g")
    code, stdout, _ = run_cli(capsys, "--regions", npy, "--out", out)
    assert code == 0 and stdout.startswith(f"wrote {out}: 12 images, 60 captions")
    code, _, err = run_cli(capsys, "--regions", npy, "--out", out)
    assert code == 2 and err.count("\n") == 1 and "--force" in err
    (tmp_path / "ids.txt").write_text("\n".join(f"im{i}" for i in range(12)))
    code, _, err = run_cli(capsys, "--regions", npy, "--out", out, "--force", "--ids", str(tmp_path / "ids.txt"))
    assert code == 0 and load_gallery(out).ids[0] == "im0"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "--regions", npy, "--out", str(tmp_path / "mine"), "--force")
    assert code == 2 and "not a gallery folder" in err and (tmp_path / "mine" / "notes.txt").is_file()


def user_errors(source, tmp: Path):
    npy = write_precomp(source, tmp / "d")
    tsv = write_tsv(source, tmp / "f.tsv")
    (tmp / "short.txt").write_text("a caption\n" * 7)
    (tmp / "unknown.tsv").write_text(f"{source.ids[0]}\tfine\nnobody\ta caption\n")
    (tmp / "ids.txt").write_text("a\nb\n")
    (tmp / "dup_ids.txt").write_text("a\n" * 12)
    (tmp / "few_images").mkdir()
    shutil.copy(source.image_path(source.ids[0]), tmp / "few_images")
    (tmp / "renamed.npy").write_bytes(npy.read_bytes())
    return [
        (["--regions", str(npy), "--captions", str(tmp / "short.txt")], "7 lines for 12 images"),
        (["--regions", str(tsv), "--captions", str(tmp / "unknown.tsv")], "line 2 names an image id"),
        (["--regions", str(npy), "--ids", str(tmp / "ids.txt")], "2 lines for 12 images"),
        (["--regions", str(npy), "--ids", str(tmp / "dup_ids.txt")], "line 2 repeats"),
        (["--regions", str(tsv), "--images", str(tmp / "few_images")], "11 of the 12 images have no file"),
        (["--regions", str(tmp / "renamed.npy")], "named {split}_ims.npy"),
        (["--regions", str(tmp / "nothing")], "not found"),
        (["--regions", str(tsv), "--memory-gb", "0.000001"], "this load may take"),
        (["--regions", str(tsv), "--memory-gb", "0"], "--memory-gb must be above 0"),
    ]


def test_every_user_error_is_one_line_and_exit_2(source, tmp_path, capsys):
    for args, message in user_errors(source, tmp_path):
        code, _, err = run_cli(capsys, *args, "--out", str(tmp_path / "out"))
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, (args, err)
        assert not (tmp_path / "out").exists()


# --- the gallery.json schema ------------------------------------------------------------------------------------

def test_bundled_version_1_gallery_loads_unchanged():
    meta = json.loads((REPO / "examples" / "gallery" / GALLERY_FILE).read_text())
    assert meta["format"] == "scan-viz-gallery/1" and "format_version" not in meta
    gallery = load_gallery(REPO / "examples" / "gallery")
    assert len(gallery) == 1000 and gallery.has_images


def edited_gallery(source, tmp_path: Path, edit) -> Path:
    shutil.copytree(source.root, tmp_path / "g")
    path = tmp_path / "g" / GALLERY_FILE
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return tmp_path / "g"


def drop_version(meta):
    meta.pop("format_version")


def version_1_without_file(meta):
    meta.pop("format_version")
    meta["format"] = "scan-viz-gallery/1"
    meta["images"][0].pop("file")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format_version=99), "format version '99'; this scan-viz reads versions 1, 2"),
    (lambda m: m.update(format_version="2"), "format version '2'"),
    (lambda m: m.update(format="something-else"), "is not a scan-viz gallery file"),
    (lambda m: m.pop("images"), "lacks its \"images\" list"),
    (lambda m: m["images"][2].pop("captions"), "image record 3 lacks captions"),
    (lambda m: m["images"][0].update(captions=[{"txt": "x"}]), "captions of image record 1"),
    (version_1_without_file, "image record 1 lacks file"),
])
def test_schema_errors_are_one_line(source, tmp_path, edit, message):
    with pytest.raises(ScanVizError) as error:
        load_gallery(edited_gallery(source, tmp_path, edit))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_missing_version_reads_as_version_1_and_version_2_may_lack_files(source, tmp_path):
    assert load_gallery(edited_gallery(source, tmp_path, drop_version)).has_images
    shutil.rmtree(tmp_path / "g")
    gallery = load_gallery(edited_gallery(source, tmp_path, lambda m: m["images"][0].pop("file")))
    assert not gallery.has_images and not gallery.has_image(gallery.ids[0]) and gallery.has_image(gallery.ids[1])


def test_png_images_are_stored_as_jpeg_of_the_same_picture(source, tmp_path):
    from PIL import Image

    (tmp_path / "png").mkdir()
    for image_id in source.ids:
        Image.fromarray(source.load_image(image_id)).save(tmp_path / "png" / f"{image_id}.png")
    build_gallery(write_tsv(source, tmp_path / "f.tsv"), tmp_path / "g", images=tmp_path / "png")
    gallery = load_gallery(tmp_path / "g")
    assert gallery.image_path(source.ids[0]).suffix == ".jpg"
    built, original = gallery.load_image(source.ids[0]), source.load_image(source.ids[0])
    assert built.shape == original.shape and np.abs(built.astype(int) - original).mean() < 8
