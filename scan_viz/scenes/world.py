"""``write_world``: train/dev/test splits of generated scenes, in the official SCAN precomp layout.

    out_dir/
      images/{split}/{split}_000123.{jpg|png}
      {split}_annotations.json   per image: id, file, size, objects (boxes, categories, colours), captions + word links
      {split}_caps.txt           five lines per image, in image order: caption k belongs to image k // 5
      world.json                 seed, image size, counts, formats, generation time

Train images are JPEG (quality 90) to keep large worlds small on disk; dev and test images are PNG so the
pixels an attention check looks at are exactly the generated ones. Each image's seed comes from the world
seed, the split and the image index, so a split's images do not change when another split's size does.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from PIL import Image

from scan_viz.errors import ScanVizError
from scan_viz.scenes.captions import CAPTIONS_PER_IMAGE
from scan_viz.scenes.generate import DEFAULT_SIZE, check_size, generate_scene
from scan_viz.scenes.sprites import load_manifest
from scan_viz.scenes.stuff import STUFF

SPLITS = ("train", "dev", "test")
DEFAULT_FORMATS = {"train": "jpg", "dev": "png", "test": "png"}
JPEG_QUALITY = 90
PARALLEL_MIN_IMAGES = 64  # below this, starting worker processes costs more than it saves

Job = tuple[str, int, int, tuple[int, int], str, str]  # split, index, seed, size, out_dir, format


def scene_seed(world_seed: int, split: str, index: int) -> int:
    """The seed of image ``index`` of ``split`` in the world ``world_seed`` (a 64-bit integer)."""
    hi, lo = np.random.SeedSequence([world_seed, SPLITS.index(split), index]).generate_state(2, np.uint32)
    return int(hi) << 32 | int(lo)


def image_id(split: str, index: int) -> str:
    """``test_000123``."""
    return f"{split}_{index:06d}"


def _render(job: Job) -> dict[str, Any]:
    """Generate one scene, save its image and return its annotation record (runs in worker processes)."""
    split, index, seed, size, out_dir, fmt = job
    scene = generate_scene(seed, size)
    name = image_id(split, index)
    rel = f"images/{split}/{name}.{fmt}"
    image = Image.fromarray(scene.image, "RGB")
    if fmt == "jpg":
        image.save(Path(out_dir) / rel, quality=JPEG_QUALITY)
    else:
        image.save(Path(out_dir) / rel, compress_level=3)  # 2x faster than 6, 3% bigger
    return scene.to_json(name, rel)


def _check_count(name: str, value: object) -> int:
    """A split size or seed: a non-negative int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ScanVizError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def write_world(out_dir: str | Path, n_train: int, n_dev: int, n_test: int, seed: int,
                size: tuple[int, int] = DEFAULT_SIZE, workers: int = 2,
                formats: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Generate and write the three splits; returns the summary also stored as ``world.json``.

    ``size`` is ``(width, height)``; ``workers`` processes render images when a world is large enough to
    gain from them; ``formats`` maps a split to ``"jpg"`` or ``"png"`` (default: JPEG train, PNG dev/test).
    """
    counts = {"train": _check_count("n_train", n_train), "dev": _check_count("n_dev", n_dev),
              "test": _check_count("n_test", n_test)}
    seed = _check_count("seed", seed)
    size = check_size(size)
    formats = {**DEFAULT_FORMATS, **(formats or {})}
    if any(fmt not in ("jpg", "png") for fmt in formats.values()):
        raise ScanVizError(f"image formats must be 'jpg' or 'png', got {dict(formats)}")
    load_manifest()  # fail here, not in a worker, if the sprites are missing
    out = Path(out_dir)
    try:
        for split in SPLITS:
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ScanVizError(f"cannot create the world directory {out} ({err}); choose a writable --out") from err

    start = time.perf_counter()
    total = sum(counts.values())
    parallel = workers > 1 and total >= PARALLEL_MIN_IMAGES
    # spawn, not fork: the caller (the app, a trainer) may hold threads that a forked child would inherit locked
    with (multiprocessing.get_context("spawn").Pool(workers) if parallel else contextlib.nullcontext()) as pool:
        try:
            for split in SPLITS:
                jobs = [(split, i, scene_seed(seed, split, i), size, str(out), formats[split])
                        for i in range(counts[split])]
                results: Iterable[dict[str, Any]] = (pool.imap(_render, jobs, chunksize=8) if pool is not None
                                                     else map(_render, jobs))
                _write_split(out, split, list(results), seed, size, formats[split])
        except OSError as err:
            raise ScanVizError(f"cannot write the world to {out} ({err}); choose a writable --out") from err
    seconds = time.perf_counter() - start
    summary = {
        "seed": seed,
        "width": size[0],
        "height": size[1],
        "images": counts,
        "formats": {s: formats[s] for s in SPLITS},
        "captions_per_image": CAPTIONS_PER_IMAGE,
        "seconds": round(seconds, 3),
        "images_per_second": round(total / seconds, 2) if seconds > 0 else None,
    }
    (out / "world.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def _write_split(out: Path, split: str, records: list[dict[str, Any]], seed: int, size: tuple[int, int],
                 fmt: str) -> None:
    """Write ``{split}_annotations.json`` and ``{split}_caps.txt`` for the split's records, in image order."""
    annotations = {
        "split": split,
        "seed": seed,
        "width": size[0],
        "height": size[1],
        "image_format": fmt,
        "captions_per_image": CAPTIONS_PER_IMAGE,
        "categories": list(load_manifest()),
        "stuff_categories": list(STUFF),
        "images": records,
    }
    (out / f"{split}_annotations.json").write_text(json.dumps(annotations, separators=(",", ":")), encoding="utf-8")
    lines = [caption["text"] for record in records for caption in record["captions"]]
    (out / f"{split}_caps.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
