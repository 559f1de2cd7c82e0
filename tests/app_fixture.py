"""A tiny model + detector + gallery bundle for the app's tests and benchmark, built in seconds, nothing downloaded.

12 generated scenes (``scan_viz.scenes``), an untrained detector (``build_detector``; its regions are as good as
random, which is all the app's plumbing needs), those images' regions as a gallery (``write_gallery``), and a
small randomly initialised SCAN model whose vocabulary is the scenes' caption words. ``app_fixture()`` builds
it once per process into a temporary folder removed at exit; ``env()`` gives the variables that point the app
at it.
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

N_IMAGES = 12
#: What a visitor might put in a link or a file name to make the app render a link, fetch a remote image or run
#: a script (issue 7); the app and browser tests check each shows as plain text.
INJECTION_PAYLOADS = ("[Session expired - log in again](https://evil.example/login)",
                      "![t](https://evil.example/track.png)", "<script>alert(1)</script>",
                      "<img src=x onerror=alert(1)>", "[x](javascript:alert(1))")
DETECTOR_REPRESENTATION = 32  # region features: 32 + 12 colour probabilities = 44-d
#: The app's entry script, and the seconds an AppTest run of it may take (the first run loads the model and the
#: gallery index).
APP = str(Path(__file__).resolve().parents[1] / "app.py")
APP_TIMEOUT = 120


@dataclasses.dataclass(frozen=True)
class AppFixture:
    """Paths of the built bundle and what tests need to know about it."""

    root: Path
    model: Path
    detector: Path
    gallery: Path
    image_ids: tuple[str, ...]
    captions: dict[str, tuple[str, ...]]

    def env(self) -> dict[str, str]:
        """The environment that makes ``streamlit run app.py`` serve this bundle."""
        return {"SCAN_VIZ_MODEL": str(self.model), "SCAN_VIZ_GALLERY": str(self.gallery),
                "SCAN_VIZ_DETECTOR": str(self.detector)}


def build_fixture(root: Path, n_images: int = N_IMAGES, seed: int = 0) -> AppFixture:
    """Write world/, detector/, gallery/ and model/ under ``root``."""
    from scan_viz.detect import build_detector, default_config, extract_regions, save_detector
    from scan_viz.gallery import write_gallery
    from scan_viz.model import ScanModel
    from scan_viz.model.config import ScanConfig
    from scan_viz.regions.images import load_image
    from scan_viz.regions.store import RegionStore
    from scan_viz.scenes import write_world
    from scan_viz.text import Vocabulary

    torch.manual_seed(seed)
    world = root / "world"
    write_world(world, 0, 0, n_images, seed=seed, workers=1)
    records = json.loads((world / "test_annotations.json").read_text(encoding="utf-8"))["images"]
    images = [load_image(world / r["file_name"]) for r in records]

    detector = build_detector(default_config(representation_size=DETECTOR_REPRESENTATION)).eval()
    save_detector(detector, root / "detector")
    regions = extract_regions(detector, images)
    store = RegionStore(ids=[r["id"] for r in records], features=np.stack([r.features for r in regions]),
                        boxes=np.stack([r.boxes for r in regions]).astype(np.float32),
                        image_sizes=np.array([r.image_size for r in regions]))
    keep = ("id", "width", "height", "objects", "captions")
    write_gallery(root / "gallery", "app test gallery", [{k: r[k] for k in keep} for r in records], images, store,
                  [r.labels for r in regions])

    captions = [c["text"] for r in records for c in r["captions"]]
    vocab = Vocabulary.build(captions, threshold=1)
    config = ScanConfig(img_dim=int(store.img_dim), embed_size=32, word_dim=16, bi_gru=True,
                        data_name="app_test_scenes", extra={"detector": str(root / "detector")})
    ScanModel(config, vocab).save(root / "model")
    return AppFixture(root, root / "model", root / "detector", root / "gallery",
                      tuple(r["id"] for r in records),
                      {r["id"]: tuple(c["text"] for c in r["captions"]) for r in records})


@functools.lru_cache(maxsize=1)
def app_fixture() -> AppFixture:
    """The fixture bundle, built on first use in this process."""
    root = Path(tempfile.mkdtemp(prefix="scan-viz-app-fixture-"))
    atexit.register(shutil.rmtree, root, True)
    return build_fixture(root)


def png_bytes(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A PNG photo-like test image (smooth gradients and a few blocks), for uploads."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                      np.full_like(x, 120)], axis=2).astype(np.uint8)
    block_w, block_h = max(1, width // 8), max(1, height // 8)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - block_w + 1)), int(rng.integers(0, height - block_h + 1))
        image[y0:y0 + block_h, x0:x0 + block_w] = rng.integers(0, 255, 3)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
