"""An official-size gallery (1,000 images x 36 regions x 2048-d features) through the browser's upload (issue 17):
as float16 ``.npz`` files (``scan-viz gallery npz``) it fits the region upload cap that float32 exceeds, and the
app loads and encodes it within the per-load memory budget."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from test_gallery_build import write_tsv

from app_fixture import app_fixture
from peak_rss import peak_rss_growth
from scan_viz.app.bundle import VISITOR_LOAD_BYTES
from scan_viz.app.user_files import MAX_REGIONS_MB, Upload, stage_upload
from scan_viz.errors import ScanVizError
from scan_viz.gallery import load_gallery
from scan_viz.gallery.build import export_npz
from scan_viz.regions.store import load_regions
from scan_viz.safe_paths import MB

N_IMAGES, N_REGIONS, IMG_DIM = 1000, 36, 2048


def test_npz_export_keeps_boxes_and_features_to_float16(tmp_path):
    source = load_gallery(app_fixture().gallery)
    n_bytes = export_npz(write_tsv(source, tmp_path / "f.tsv"), tmp_path / "npz")
    store = load_regions(tmp_path / "npz")
    assert n_bytes == sum(p.stat().st_size for p in (tmp_path / "npz").iterdir())
    assert sorted(store.ids) == sorted(source.ids) and store.features.dtype == np.float32
    order = [source.index_of(i) for i in store.ids]
    np.testing.assert_array_equal(store.boxes, np.asarray(source.regions.boxes)[order])
    np.testing.assert_allclose(store.features, np.asarray(source.regions.features)[order], rtol=1e-3, atol=1e-3)
    with pytest.raises(ScanVizError, match="exists"):
        export_npz(tmp_path / "f.tsv", tmp_path / "npz")


def jpeg(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), seed % 256, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def official_size_upload(folder: Path) -> dict[str, str]:
    """Stage 1,000 float16 .npz files, their images and a 2048-d model through ``stage_upload``; its Sources."""
    from scan_viz.model import ScanModel
    from scan_viz.model.config import ScanConfig
    from scan_viz.text import Vocabulary

    rng = np.random.default_rng(0)
    regions = []
    for i in range(N_IMAGES):
        buffer = io.BytesIO()
        np.savez(buffer, x=rng.standard_normal((N_REGIONS, IMG_DIM), dtype=np.float32).astype(np.float16),
                 bbox=np.tile(np.array([0, 0, 32, 24], np.float32), (N_REGIONS, 1)), num_bbox=np.int64(N_REGIONS),
                 image_h=np.int64(48), image_w=np.int64(64))
        regions.append(Upload(f"im{i:04d}.npz", buffer.getvalue()))
    total = sum(len(u.data) for u in regions)
    assert total <= MAX_REGIONS_MB * MB < N_IMAGES * N_REGIONS * IMG_DIM * 4  # float32 would not fit
    model_dir = folder / "made-model"
    ScanModel(ScanConfig(img_dim=IMG_DIM, embed_size=32, word_dim=16), Vocabulary.build(["a dog"], 1)).save(model_dir)
    model = [Upload(p.name, p.read_bytes()) for p in sorted(model_dir.iterdir())]
    images = [Upload(f"im{i:04d}.jpg", jpeg(i)) for i in range(N_IMAGES)]
    sources = stage_upload(folder / "upload", model, None, regions, images)  # the app's caps checked here
    return {"model": sources.model, "regions": sources.regions, "images": sources.images, "mb": total / MB}


def test_an_official_size_float16_upload_fits_the_cap_and_loads_within_the_budget(tmp_path):
    (tmp_path / "upload").mkdir()
    staged = official_size_upload(tmp_path)
    setup = ("from scan_viz.app.bundle import Sources, load_bundle, visitor_inputs\n"
             f"sources = Sources(model={staged['model']!r}, gallery=None, regions={staged['regions']!r}, "
             f"images={staged['images']!r})\n"
             "assert visitor_inputs(sources)  # a visitor's load: the visitor budget applies")
    measured = peak_rss_growth(setup, "load_bundle(sources).gallery.regions.features.shape", timeout=600)
    assert measured.error is None and measured.returncode == 0, (measured.error, measured.stderr[-2000:])
    assert measured.value == repr((N_IMAGES, N_REGIONS, IMG_DIM))
    print(json.dumps({"upload_mb": round(staged["mb"], 1), "load_growth_mb": round(measured.growth_mb)}))
    # one float32 copy of the features is 295 MB; the load stays under a visitor's budget, which it is charged to
    assert measured.growth_mb < VISITOR_LOAD_BYTES / MB
