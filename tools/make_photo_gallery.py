"""Write examples/photos/images/: the sample photos that installed packages ship, as the photo gallery's pictures.

    python tools/make_photo_gallery.py [--out examples/photos/images]

Every picture comes from a file inside an installed package (scikit-image, scikit-learn): nothing is downloaded.
Each source file is checked against the sha256 it had when the boxes in ``examples/photos/annotations.json`` were
drawn, because those boxes are in the pixels of exactly these pictures; a package release that changed a photo
stops the script with a one-line message instead of silently shifting every box. A picture is stored as RGB JPEG
(quality 90) with its longest side at most 640 px (none of the chosen sources is larger today, so no resizing
happens and a box's pixels are the source's pixels).

The annotations (objects, captions, grounded words) are hand-written data kept in ``annotations.json``; this
script does not write them. Which photos are included, and which were left out and why, is in
``examples/photos/LICENSES.md``.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scan_viz.errors import ScanVizError  # noqa: E402
from scan_viz.io import write_dir_atomic  # noqa: E402

OUT = REPO / "examples" / "photos" / "images"
MAX_SIDE = 640
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Source:
    """One sample photo: the package that ships it, the file inside that package, and that file's sha256."""

    id: str
    package: str
    path: str
    sha256: str


SOURCES: tuple[Source, ...] = (
    Source("astronaut", "skimage", "data/astronaut.png",
           "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    Source("camera", "skimage", "data/camera.png",
           "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
    Source("chelsea", "skimage", "data/chelsea.png",
           "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    Source("coffee", "skimage", "data/coffee.png",
           "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    Source("rocket", "skimage", "data/rocket.jpg",
           "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    Source("china", "sklearn", "datasets/images/china.jpg",
           "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    Source("flower", "sklearn", "datasets/images/flower.jpg",
           "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
)

PIP_NAME = {"skimage": "scikit-image", "sklearn": "scikit-learn"}


def source_file(source: Source) -> Path:
    """The source's file inside its installed package (the package is located, not imported)."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise ScanVizError(f"{source.package} is not installed: pip install {PIP_NAME[source.package]}")
    path = Path(next(iter(spec.submodule_search_locations))) / source.path
    if not path.is_file():
        raise ScanVizError(f"{path} is missing: this {PIP_NAME[source.package]} release does not ship "
                           f"{source.path}; install the release named in requirements.txt")
    return path


def read_source(source: Source) -> bytes:
    """The source file's bytes, checked against the sha256 the annotations were drawn on."""
    path = source_file(source)
    data = path.read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != source.sha256:
        raise ScanVizError(f"{path} is not the picture the annotations were drawn on (sha256 {found[:12]}..., "
                           f"expected {source.sha256[:12]}...): its boxes would be wrong; install the "
                           f"{PIP_NAME[source.package]} release named in requirements.txt")
    return data


def picture(data: bytes) -> np.ndarray:
    """Decoded RGB pixels, shrunk (Lanczos) so the longest side is at most ``MAX_SIDE``: (height, width, 3) uint8."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        scale = MAX_SIDE / max(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
        return np.asarray(image, dtype=np.uint8).copy()


def make_images(out: Path = OUT) -> dict[str, tuple[int, int]]:
    """Write ``out/{id}.jpg`` for every source (atomically: the whole folder or nothing); returns id -> (w, h)."""
    from PIL import Image

    pixels = {source.id: picture(read_source(source)) for source in SOURCES}

    def write(tmp: Path) -> None:
        for image_id, array in pixels.items():
            Image.fromarray(array).save(tmp / f"{image_id}.jpg", quality=JPEG_QUALITY, optimize=True)

    write_dir_atomic(Path(out), write)
    return {image_id: (array.shape[1], array.shape[0]) for image_id, array in pixels.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="the images folder to (re)write")
    args = parser.parse_args(argv)
    try:
        sizes = make_images(args.out)
    except ScanVizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for image_id, (width, height) in sizes.items():
        print(f"{args.out / (image_id + '.jpg')}: {width} x {height}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
