"""Every region-feature format loads into the same RegionStore; every broken input raises ScanVizError."""
from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from scan_viz.errors import ScanVizError
from scan_viz.regions.store import (TSV_COLUMNS, RegionStore, load_bottomup_tsv, load_npz_dir, load_precomp,
                                    load_regions, load_saved_regions, save_regions)

DIM = 8


def make_image(rng: np.random.Generator, image_id: str, n: int) -> dict:
    """One image's regions: ``boxes (n, 4)``, ``features (n, DIM)`` float32."""
    return {
        "image_id": image_id,
        "image_w": 640,
        "image_h": 480 + n,
        "boxes": rng.uniform(0, 400, (n, 4)).astype(np.float32),
        "features": rng.standard_normal((n, DIM)).astype(np.float32),
    }


def write_tsv(path: Path, images: list[dict], py3_bytes_repr: bool = False) -> None:
    """Write rows the way generate_tsv.py does: a tab-delimited DictWriter with base64 float32 columns."""
    def encode(array: np.ndarray) -> str:
        text = base64.b64encode(array.tobytes())
        return str(text) if py3_bytes_repr else text.decode("ascii")

    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, delimiter="\t", fieldnames=list(TSV_COLUMNS))
        for im in images:
            writer.writerow({
                "image_id": im["image_id"], "image_w": im["image_w"], "image_h": im["image_h"],
                "num_boxes": len(im["boxes"]), "boxes": encode(im["boxes"]), "features": encode(im["features"]),
            })


def assert_store_holds(store: RegionStore, images: list[dict]) -> None:
    n_regions = max(len(im["boxes"]) for im in images)
    assert store.ids == [im["image_id"] for im in images]
    assert store.features.shape == (len(images), n_regions, DIM) and store.features.dtype == np.float32
    assert store.boxes.shape == (len(images), n_regions, 4) and store.boxes.dtype == np.float32
    assert store.has_boxes()
    for i, im in enumerate(images):
        n = len(im["boxes"])
        assert store.n_boxes[i] == n
        np.testing.assert_array_equal(store.features[i, :n], im["features"])
        np.testing.assert_array_equal(store.boxes[i, :n], im["boxes"])
        assert not store.features[i, n:].any() and not store.boxes[i, n:].any()
        assert tuple(store.image_sizes[i]) == (im["image_w"], im["image_h"])


@pytest.fixture
def images() -> list[dict]:
    rng = np.random.default_rng(0)
    return [make_image(rng, str(image_id), n) for image_id, n in [(391895, 3), (522418, 5), (184613, 1), (318219, 4)]]


# --- precomputed splits ------------------------------------------------------------------------------------------

def write_precomp(directory: Path, ims: np.ndarray, captions: list[str], split: str = "test") -> None:
    np.save(directory / f"{split}_ims.npy", ims)
    (directory / f"{split}_caps.txt").write_text("".join(c + "\n" for c in captions), encoding="utf-8")


def test_precomp_five_captions_per_image(tmp_path):
    ims = np.random.default_rng(1).standard_normal((3, 4, DIM)).astype(np.float32)
    captions = [f" a dog number {k} \u00e9 " for k in range(15)]
    captions[7] = ""
    captions[9] = "a stray\rcarriage return"  # the official loader splits on "\n" only
    write_precomp(tmp_path, ims, captions)
    split = load_precomp(tmp_path, "test")
    assert split.im_div == 5
    assert split.captions == [c.strip() for c in captions]
    np.testing.assert_array_equal(split.caption_image, np.arange(15) // 5)
    assert split.regions.ids == ["0", "1", "2"] and not split.regions.has_boxes()
    assert isinstance(split.regions.features, np.memmap)
    np.testing.assert_array_equal(split.regions.features, ims)
    np.testing.assert_array_equal(split.regions.n_boxes, [4, 4, 4])


def test_precomp_one_row_per_caption_keeps_every_fifth_row(tmp_path):
    ims = np.random.default_rng(2).standard_normal((10, 4, DIM)).astype(np.float32)
    write_precomp(tmp_path, ims, [f"caption {k}" for k in range(10)])
    split = load_precomp(tmp_path, "test")
    assert split.im_div == 1 and len(split.regions) == 2
    np.testing.assert_array_equal(split.regions.features, ims[::5])
    np.testing.assert_array_equal(split.caption_image, np.arange(10) // 5)


def test_precomp_max_captions_truncates_like_official_validation(tmp_path):
    ims = np.zeros((4, 2, DIM), dtype=np.float32)
    write_precomp(tmp_path, ims, [str(k) for k in range(20)], split="dev")
    split = load_precomp(tmp_path, "dev", max_captions=10)
    assert len(split.captions) == 10 and len(split.regions) == 2
    with pytest.raises(ScanVizError):
        load_precomp(tmp_path, "dev", max_captions=7)


@pytest.mark.parametrize(
    "ims, n_captions",
    [
        (np.zeros((3, 4, DIM), np.float32), 14),  # not a multiple of 5
        (np.zeros((3, 4, DIM), np.float32), 10),  # neither 5 per row nor one per row
        (np.zeros((3, DIM), np.float32), 15),  # wrong ndim
        (np.zeros((3, 4, DIM), np.float64), 15),  # wrong dtype
    ],
)
def test_precomp_bad_files(tmp_path, ims, n_captions):
    write_precomp(tmp_path, ims, [str(k) for k in range(n_captions)])
    with pytest.raises(ScanVizError):
        load_precomp(tmp_path, "test")


def test_precomp_missing_file(tmp_path):
    write_precomp(tmp_path, np.zeros((1, 2, DIM), np.float32), ["a"] * 5)
    (tmp_path / "test_caps.txt").unlink()
    with pytest.raises(ScanVizError, match="test_caps.txt"):
        load_precomp(tmp_path, "test")


# --- bottom-up-attention TSV -------------------------------------------------------------------------------------

def test_tsv_several_files_with_varying_box_counts(tmp_path, images):
    write_tsv(tmp_path / "feats.tsv.0", images[:2])
    write_tsv(tmp_path / "feats.tsv.1", images[2:])
    store = load_bottomup_tsv([tmp_path / "feats.tsv.0", tmp_path / "feats.tsv.1"])
    assert_store_holds(store, images)
    assert store.index_of(184613) == 2 and store.index_of("318219") == 3
    assert_store_holds(load_regions(tmp_path), images)  # a folder of per-GPU parts


def test_tsv_single_file_and_python3_bytes_repr(tmp_path, images):
    write_tsv(tmp_path / "a.tsv", images)
    assert_store_holds(load_regions(tmp_path / "a.tsv"), images)
    write_tsv(tmp_path / "b.tsv", images, py3_bytes_repr=True)
    assert_store_holds(load_bottomup_tsv(tmp_path / "b.tsv"), images)


def corrupt_line(path: Path, line_index: int, edit) -> None:
    lines = path.read_bytes().decode("ascii").split("\r\n")
    cols = lines[line_index].split("\t")
    lines[line_index] = "\t".join(edit(cols))
    path.write_bytes("\r\n".join(lines).encode("ascii"))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda cols: cols[:5], "5 tab-separated columns"),
        (lambda cols: cols + ["extra"], "7 tab-separated columns"),
        (lambda cols: cols[:5] + [cols[5][:-3]], "base64"),  # truncated: broken padding
        (lambda cols: cols[:5] + [cols[5][:-8]], "features hold"),  # truncated on a 4-character boundary
        (lambda cols: cols[:4] + [cols[4][:-8], cols[5]], "boxes"),
        (lambda cols: cols[:4] + ["!!!" + cols[4][3:], cols[5]], "base64"),
        (lambda cols: cols[:3] + ["seven"] + cols[4:], "num_boxes"),
        (lambda cols: cols[:3] + ["2"] + cols[4:], "boxes hold"),
    ],
)
def test_tsv_errors_name_file_and_line(tmp_path, images, edit, message):
    path = tmp_path / "bad.tsv"
    write_tsv(path, images)
    corrupt_line(path, 1, edit)
    with pytest.raises(ScanVizError, match=message) as info:
        load_bottomup_tsv(path)
    assert f"{path.name}:2" in str(info.value)  # the name the user gave, never the folder


def test_tsv_duplicate_ids_across_files(tmp_path, images):
    write_tsv(tmp_path / "x.tsv.0", images[:2])
    write_tsv(tmp_path / "x.tsv.1", images[1:])
    with pytest.raises(ScanVizError, match="already read") as info:
        load_bottomup_tsv([tmp_path / "x.tsv.0", tmp_path / "x.tsv.1"])
    assert "x.tsv.1:1" in str(info.value) and "x.tsv.0:2" in str(info.value)
    assert "522418" not in str(info.value)  # the position, never the file's content


def test_tsv_missing_file(tmp_path):
    with pytest.raises(ScanVizError, match="not found"):
        load_bottomup_tsv(tmp_path / "nope.tsv")


# --- bottom-up-attention.pytorch npz -----------------------------------------------------------------------------

def write_npz(directory: Path, im: dict, transpose: bool = False, drop: str | None = None) -> None:
    arrays = {
        "x": im["features"].T if transpose else im["features"],
        "bbox": im["boxes"],
        "num_bbox": np.int64(len(im["boxes"])),
        "image_h": np.int64(im["image_h"]),
        "image_w": np.int64(im["image_w"]),
    }
    arrays.pop(drop, None)
    np.savez_compressed(directory / f"{im['image_id']}.npz", **arrays)


def test_npz_dir_sorted_with_transposed_features(tmp_path, images):
    for i, im in enumerate(images):
        write_npz(tmp_path, im, transpose=i % 2 == 1)
    want = sorted(images, key=lambda im: im["image_id"])
    assert_store_holds(load_npz_dir(tmp_path), want)
    assert_store_holds(load_regions(tmp_path), want)


@pytest.mark.parametrize("drop", ["x", "bbox", "num_bbox"])
def test_npz_missing_key_names_the_file(tmp_path, images, drop):
    write_npz(tmp_path, images[0])
    write_npz(tmp_path, images[1], drop=drop)
    with pytest.raises(ScanVizError, match="522418.npz"):
        load_npz_dir(tmp_path)


def test_npz_shape_mismatch_and_corrupt_file(tmp_path, images):
    bad = dict(images[1], boxes=images[1]["boxes"][:2])
    write_npz(tmp_path, bad)
    with pytest.raises(ScanVizError, match="522418.npz"):
        load_npz_dir(tmp_path)
    (tmp_path / "522418.npz").write_bytes(b"not a zip")
    with pytest.raises(ScanVizError, match="522418.npz"):
        load_npz_dir(tmp_path)


def test_load_regions_rejects_unknown_formats(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ScanVizError, match="tsv"):
        load_regions(tmp_path)
    with pytest.raises(ScanVizError, match="tsv"):
        load_regions(tmp_path / "notes.txt")
    with pytest.raises(ScanVizError, match="not found"):
        load_regions(tmp_path / "missing")


# --- RegionStore and the saved format ----------------------------------------------------------------------------

def test_store_index_and_subset(tmp_path, images):
    write_tsv(tmp_path / "a.tsv", images)
    store = load_regions(tmp_path / "a.tsv")
    assert len(store) == 4
    sub = store.subset([3, 0])
    assert sub.ids == ["318219", "391895"]
    np.testing.assert_array_equal(sub.features, store.features[[3, 0]])
    np.testing.assert_array_equal(sub.n_boxes, [4, 3])
    assert sub.index_of("391895") == 1
    assert store.subset(slice(1, 3)).ids == ["522418", "184613"]
    assert store.subset(np.array([False, True, False, True])).ids == ["522418", "318219"]
    with pytest.raises(ScanVizError, match="123"):
        store.index_of("123")
    with pytest.raises(ScanVizError):
        RegionStore(ids=["a", "a"], features=np.zeros((2, 1, DIM), np.float32))


def test_saved_store_round_trip_and_replace(tmp_path, images):
    write_tsv(tmp_path / "a.tsv", images)
    store = load_regions(tmp_path / "a.tsv")
    target = tmp_path / "store"
    save_regions(store, target)
    loaded = load_regions(target)
    assert isinstance(loaded.features, np.memmap)
    assert_store_holds(loaded, images)
    save_regions(store.subset([1]), target)  # replaces the previous store
    assert load_saved_regions(target).ids == ["522418"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left

    precomp_like = RegionStore(ids=["0"], features=np.ones((1, 2, DIM), np.float32))
    save_regions(precomp_like, tmp_path / "nobox")
    assert not load_saved_regions(tmp_path / "nobox").has_boxes()

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("user data")
    with pytest.raises(ScanVizError):
        save_regions(store, tmp_path / "other")


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "boxes.npy").unlink(),
        lambda d: (d / "features.npy").write_bytes((d / "features.npy").read_bytes()[:200]),
        lambda d: np.save(d / "n_boxes.npy", np.zeros(3, np.int64)),  # shape disagrees with features
        lambda d: (d / "ids.json").write_text("{not json"),
        lambda d: (d / "ids.json").write_text(json.dumps({"format": "scan_viz.regions", "version": 1, "ids": ["1"],
                                                          "has_boxes": True, "has_image_sizes": True})),
    ],
)
def test_incomplete_saved_store(tmp_path, images, damage):
    write_tsv(tmp_path / "a.tsv", images)
    target = tmp_path / "store"
    save_regions(load_regions(tmp_path / "a.tsv"), target)
    damage(target)
    with pytest.raises(ScanVizError, match="incomplete or corrupt"):
        load_saved_regions(target)


def test_saved_store_in_float16_reads_back_as_float32(tmp_path):
    from scan_viz.regions.store import RegionStore, load_saved_regions, save_regions

    feats = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    save_regions(RegionStore(ids=["a", "b", "c"], features=feats), tmp_path / "s", feature_dtype="float16")
    assert np.load(tmp_path / "s" / "features.npy").dtype == np.float16
    back = load_saved_regions(tmp_path / "s")
    assert back.features.dtype == np.float32
    np.testing.assert_allclose(back.features, feats, atol=2e-3)
