"""Measure the drawing-vs-photograph check (scan_viz.regions.domain.row_flatness) and choose its threshold.

Drawings: the bundled emoji gallery's 1,000 scenes (examples/gallery/images, JPEG quality 90 as shipped), each
also re-saved as JPEG at quality 75 and 85, and fresh PNG renders of the scene generator (never compressed).
Photographs: the sample photos installed with scikit-image (scikit-image's data module, all its photographs and
microscope/telescope images; not its drawings: horse, logo, chessboard, color, phantom), scikit-learn (china,
flower) and matplotlib (grace_hopper); examples/photos holds copies of some of them, so it is not read again.
Each photo as installed and re-saved as JPEG at quality 50, 75 and 90, and halved then saved at quality 75.

Split: gallery scenes test_000000-000499 and the photos at even positions of the sorted list choose the
threshold (the midpoint of the gap between the highest photo and the lowest drawing, when there is one); gallery
scenes test_000500-000999, the fresh renders and the photos at odd positions measure it. Nothing is downloaded.

    python tools/measure_drawing_check.py [--fresh 200]
"""
from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from scan_viz.regions.domain import DRAWN_THRESHOLD, row_flatness

REPO = Path(__file__).resolve().parents[1]
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
                  "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
                  "microaneurysms.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png",
                  "retina.jpg", "rocket.jpg", "text.png")


def rgb(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return rgb(Image.open(buffer))


def halved(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((w // 2, h // 2), Image.Resampling.BILINEAR))


PHOTO_VARIANTS = {"as installed": lambda a: a, "JPEG q50": lambda a: jpeg(a, 50), "JPEG q75": lambda a: jpeg(a, 75),
                  "JPEG q90": lambda a: jpeg(a, 90), "halved, JPEG q75": lambda a: jpeg(halved(a), 75)}
DRAWING_VARIANTS = {"as shipped (JPEG q90)": lambda a: a, "JPEG q75": lambda a: jpeg(a, 75),
                    "JPEG q85": lambda a: jpeg(a, 85)}


def photo_files() -> list[tuple[str, Path]]:
    import matplotlib
    import skimage
    import sklearn.datasets

    found = [(f"skimage {n}", Path(skimage.__file__).parent / "data" / n) for n in SKIMAGE_PHOTOS]
    found += [(f"sklearn {n}", Path(sklearn.datasets.__file__).parent / "images" / n)
              for n in ("china.jpg", "flower.jpg")]
    found.append(("matplotlib grace_hopper.jpg", Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    return sorted(found)


def fresh_renders(n: int) -> list[np.ndarray]:
    from scan_viz.scenes import write_world

    with tempfile.TemporaryDirectory() as tmp:
        write_world(tmp, 0, 0, n, seed=7, workers=1)
        return [rgb(Image.open(p)) for p in sorted(Path(tmp).rglob("*.png"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fresh", type=int, default=200, help="fresh PNG renders of the scene generator")
    args = parser.parse_args()

    photos = {"fit": {}, "eval": {}}  # variant -> scores
    for position, (name, path) in enumerate(photo_files()):
        part = photos["fit" if position % 2 == 0 else "eval"]
        image = rgb(Image.open(path))
        for variant, make in PHOTO_VARIANTS.items():
            part.setdefault(variant, []).append((row_flatness(make(image)), name))
    drawings = {"fit": {}, "eval": {}}
    for path in sorted((REPO / "examples" / "gallery" / "images").glob("test_*.jpg")):
        part = drawings["fit" if int(path.stem.split("_")[1]) < 500 else "eval"]
        image = rgb(Image.open(path))
        for variant, make in DRAWING_VARIANTS.items():
            part.setdefault(variant, []).append((row_flatness(make(image)), path.name))
    if args.fresh:
        renders = fresh_renders(args.fresh)
        drawings["eval"]["fresh renders (PNG)"] = [(row_flatness(a), f"render {i}") for i, a in enumerate(renders)]
        drawings["eval"]["fresh renders, JPEG q75"] = [(row_flatness(jpeg(a, 75)), f"render {i}")
                                                      for i, a in enumerate(renders)]

    highest_photo = max(s for scores in photos["fit"].values() for s, _ in scores)
    lowest_drawing = min(s for scores in drawings["fit"].values() for s, _ in scores)
    chosen = (highest_photo + lowest_drawing) / 2
    print(f"fit part: photos' row_flatness <= {highest_photo:.4f}, drawings' >= {lowest_drawing:.4f}; "
          f"threshold (midpoint) {chosen:.4f}; in use: DRAWN_THRESHOLD = {DRAWN_THRESHOLD}")
    for part in ("fit", "eval"):
        print(f"\n{part} part, with DRAWN_THRESHOLD = {DRAWN_THRESHOLD}")
        for variant, scores in photos[part].items():
            wrong = [f"{n} ({s:.3f})" for s, n in scores if s >= DRAWN_THRESHOLD]
            values = [s for s, _ in scores]
            print(f"  photos {variant:22s} n={len(scores):4d}  range {min(values):+.3f}..{max(values):+.3f}  "
                  f"called drawings: {len(wrong)}/{len(scores)} {', '.join(wrong)}")
        for variant, scores in drawings[part].items():
            wrong = [f"{n} ({s:.3f})" for s, n in scores if s < DRAWN_THRESHOLD]
            values = [s for s, _ in scores]
            print(f"  drawings {variant:22s} n={len(scores):4d}  range {min(values):+.3f}..{max(values):+.3f}  "
                  f"missed: {len(wrong)}/{len(scores)} {', '.join(wrong[:5])}")


if __name__ == "__main__":
    main()
