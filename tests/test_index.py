"""`scan-viz index`: bad images skipped and reported, old images kept, SIGKILL-safe and resumable, Ray == local."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scan_viz.errors import ScanVizError
from scan_viz.gallery import load_gallery
from scan_viz.regions.images import load_image
from scan_viz.index import REPORT_FILE, index_images
from scan_viz.regions.images import list_images
from app_fixture import app_fixture

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fixture():
    return app_fixture()


def image_folder(fixture, folder: Path, ids) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        shutil.copyfile(fixture.gallery / "images" / f"{image_id}.jpg", folder / f"{image_id}.jpg")
    return folder


def gallery_arrays(path: Path) -> tuple[list[str], np.ndarray, list[dict]]:
    gallery = load_gallery(path)
    return gallery.ids, np.asarray(gallery.regions.features), gallery.records


def test_bad_images_are_reported_and_skipped_and_old_images_kept(fixture, tmp_path):
    from scan_viz.model import load_model
    from scan_viz.pipeline import detect, detector_for

    ids = fixture.image_ids
    folder = image_folder(fixture, tmp_path / "images", ids[:3])
    (folder / "broken.jpg").write_bytes(b"this is not a picture")
    (folder / "empty.png").write_bytes(b"")
    (tmp_path / "caps.txt").write_text(f"{ids[0]}\ta red car\n\n{ids[0]}\ttwo dogs\n", encoding="utf-8")
    out = tmp_path / "gallery"
    result = index_images(folder, out, str(fixture.model), captions=tmp_path / "caps.txt", chunk=2)
    assert sorted(f["file"] for f in result.failed) == ["broken.jpg", "empty.png"]
    assert all(f["error"] for f in result.failed)
    report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    assert sorted(f["file"] for f in report["failed"]) == ["broken.jpg", "empty.png"]
    gallery = load_gallery(out)
    assert gallery.ids == list(ids[:3]) and gallery.captions_of(ids[0]) == ["a red car", "two dogs"]
    # the stored regions are the detector's regions of the file (float16 on disk)
    model = load_model(fixture.model)
    direct = detect(detector_for(model), load_image(folder / f"{ids[1]}.jpg"))
    features, boxes, labels = gallery.regions_of(ids[1])
    np.testing.assert_allclose(features, direct.features, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(boxes, direct.boxes, atol=1e-3)
    assert labels == direct.labels
    assert not any(p.name.endswith(".index-work") for p in tmp_path.iterdir())

    # adding images: the old rows are copied, not recomputed (their stored values survive bit for bit even
    # after we overwrite them in the store with a marker the detector could never produce)
    before = np.load(out / "regions" / "features.npy")
    marker = before.copy()
    marker[0, 0, 0] = 1234.0
    np.save(out / "regions" / "features.npy", marker)
    image_folder(fixture, folder, ids[3:5])
    result = index_images(folder, out, str(fixture.model), chunk=2)
    assert (result.added, result.kept) == (2, 3)
    after_ids, after, _ = gallery_arrays(out)
    assert after_ids == list(ids[:5])
    assert after[0, 0, 0] == 1234.0 and np.array_equal(after[1:3], before[1:3].astype(np.float32))
    # what the app does with a gallery (SCAN_VIZ_GALLERY): encode it, search it; most images have no caption
    from scan_viz.pipeline import GalleryIndex

    index = GalleryIndex.build(model, load_gallery(out))
    assert sorted(i for i, _ in index.search_images("a red car", 5)) == sorted(ids[:5])
    expected = [i for i, _ in index.search_images("a red car", 5)]
    assert [h.id for h in index.two_stage.search_text("a red car", 5)] == expected


def test_region_embeddings_are_stored_with_the_token_index_and_read_by_search(fixture, tmp_path):
    """`scan-viz index` keeps the gallery's region embeddings (float16, the token index's encoders) next to the token
    index; search reads its candidates' rows from that file instead of encoding their features per query, and
    answers as the encoding path does. A file that does not match is ignored."""
    import torch

    from scan_viz.model import load_model
    from scan_viz.retrieval.search import gallery_search
    from scan_viz.retrieval.tokens import REGIONS_FILE, TOKENS_DIR

    ids = fixture.image_ids
    out = tmp_path / "gallery"
    index_images(image_folder(fixture, tmp_path / "images", ids[:6]), out, str(fixture.model), chunk=3)
    model = load_model(fixture.model)
    gallery = load_gallery(out)
    stored = np.load(out / TOKENS_DIR / REGIONS_FILE)
    with torch.no_grad():
        encoded = model.encode_images(np.asarray(gallery.regions.features, dtype=np.float32))
    assert stored.dtype == np.float16 and stored.shape == tuple(encoded.shape)
    np.testing.assert_array_equal(stored, encoded.half().numpy())
    search = gallery_search(model, gallery, screen="tokens")
    assert isinstance(search.regions, np.memmap) and search.regions.dtype == np.float16
    hits = search.search_text("a red car", k=4, stage1_k=5)
    (out / TOKENS_DIR / REGIONS_FILE).unlink()  # without the file: each query encodes its candidates' features
    plain = gallery_search(model, load_gallery(out), screen="tokens")
    assert plain.regions is None
    again = plain.search_text("a red car", k=4, stage1_k=5)
    assert [(h.id, h.stage1_rank) for h in hits] == [(h.id, h.stage1_rank) for h in again]
    assert [h.score for h in hits] == pytest.approx([h.score for h in again], abs=2e-3)  # float16 rows
    np.save(out / TOKENS_DIR / REGIONS_FILE, stored[:, :2])  # another shape: not these regions, ignored
    assert gallery_search(model, load_gallery(out), screen="tokens").regions is None


def test_empty_or_colliding_folders_are_user_errors(tmp_path):
    with pytest.raises(ScanVizError, match="no image files"):
        list_images(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(ScanVizError, match="both be image id 'a'"):
        list_images(tmp_path)
    (tmp_path / "a.png").unlink()
    work = tmp_path / ".out.index-work"
    work.mkdir()
    (work / "spec.json").write_text('{"model": "other-model", "detector": null}', encoding="utf-8")
    with pytest.raises(ScanVizError, match="interrupted run made with .*other-model"):
        index_images(tmp_path, tmp_path / "out", "scan-emoji-t2i")  # its chunks came from another model


def test_sigkill_leaves_the_old_gallery_and_resume_equals_an_uninterrupted_run(fixture, tmp_path):
    ids = fixture.image_ids
    first = image_folder(fixture, tmp_path / "first", ids[:2])
    old = tmp_path / "gallery"
    index_images(first, old, str(fixture.model), chunk=1)
    old_ids, old_features, old_records = gallery_arrays(old)
    shutil.copytree(old, tmp_path / "reference")
    folder = image_folder(fixture, tmp_path / "all", ids)

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "scan_viz.cli", "index", "--images", str(folder), "--out",
                             str(old), "--model", str(fixture.model), "--chunk", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tmp_path / ".gallery.index-work"
    deadline = time.monotonic() + 300
    while len(list(work.glob("chunk_*.npz"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert alive, "the indexing run ended before it could be killed mid-way"
    done = len(list(work.glob("chunk_*.npz")))
    assert 2 <= done < len(ids) - 2  # killed mid-way: some chunks saved, not all
    killed_ids, killed_features, killed_records = gallery_arrays(old)
    assert killed_ids == old_ids and np.array_equal(killed_features, old_features) and killed_records == old_records

    resumed = index_images(folder, old, str(fixture.model), chunk=1)
    assert resumed.added == len(ids) - 2 and resumed.kept == 2
    uninterrupted = index_images(folder, tmp_path / "reference", str(fixture.model), chunk=1)
    assert uninterrupted.added == len(ids) - 2
    got_ids, got, got_records = gallery_arrays(old)
    want_ids, want, want_records = gallery_arrays(tmp_path / "reference")
    assert got_ids == want_ids == list(ids)
    assert np.array_equal(got, want)
    assert [{k: r[k] for k in ("id", "width", "height", "captions")} for r in got_records] == \
        [{k: r[k] for k in ("id", "width", "height", "captions")} for r in want_records]


def test_ray_path_gives_the_local_gallery(fixture, tmp_path):
    ray = pytest.importorskip("ray")
    folder = image_folder(fixture, tmp_path / "images", fixture.image_ids[:6])
    index_images(folder, tmp_path / "local", str(fixture.model), chunk=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        index_images(folder, tmp_path / "ray", str(fixture.model), chunk=2, ray="auto", workers=2)
    finally:
        ray.shutdown()
    local_ids, local, _ = gallery_arrays(tmp_path / "local")
    ray_ids, on_ray, _ = gallery_arrays(tmp_path / "ray")
    assert ray_ids == local_ids == list(fixture.image_ids[:6])
    np.testing.assert_allclose(on_ray, local, atol=1e-3)
