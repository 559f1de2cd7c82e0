"""Write examples/official-small/: a small researcher's example in the official SCAN file formats.

    python tools/make_official_example.py [--out examples/official-small] [--n-images 20] [--seed 17]

What it holds, each in the format the official code (or the bottom-up-attention extractor) writes:

- ``model_best.pth.tar``: the bundled ``pretrained/scan-emoji-t2i`` written as the official train.py saves a
  checkpoint (legacy torch pickle, protocol 2; ``opt`` an ``argparse.Namespace``), so its scores mean something;
- ``vocab.json``: its vocabulary in the official ``{"word2idx", "idx2word", "idx"}`` layout;
- ``features.tsv``: bottom-up-attention TSV rows (``image_id, image_w, image_h, num_boxes, boxes, features``,
  base64 float32) of ``n_images`` images of the bundled gallery, picked with ``seed``: boxes kept;
- ``images/{id}.jpg``: those images, byte for byte;
- ``captions.txt``: their captions, 5 lines per image in the TSV's image order (the official ``{split}_caps.txt``
  layout).

The same inputs always give the same files (the pick is seeded; nothing else is random). The walkthrough
(docs/walkthrough.md, tests/test_walkthrough.py) builds a gallery from them with ``scan-viz gallery build``.
"""
from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scan_viz.gallery import load_gallery  # noqa: E402
from scan_viz.io import write_dir_atomic  # noqa: E402
from scan_viz.model.checkpoint import VOCAB_FILE, load_model_dir, write_official_checkpoint  # noqa: E402

MODEL = REPO / "pretrained" / "scan-emoji-t2i"
GALLERY = REPO / "examples" / "gallery"


def tsv_row(image_id: str, width: int, height: int, boxes: np.ndarray, features: np.ndarray) -> str:
    """One generate_tsv.py row: base64 of the raw float32 bytes."""
    encode = lambda a: base64.b64encode(np.ascontiguousarray(a, dtype=np.float32).tobytes()).decode("ascii")
    return "\t".join([image_id, str(width), str(height), str(len(boxes)), encode(boxes), encode(features)])


def make_example(out: Path, n_images: int = 20, seed: int = 17) -> None:
    gallery = load_gallery(GALLERY)
    rows = sorted(np.random.default_rng(seed).choice(len(gallery), size=n_images, replace=False).tolist())
    config, image_state, text_state = load_model_dir(MODEL)

    def write(tmp: Path) -> None:
        # the model's config names the bundled detector by folder: kept, as the official opt keeps any extra flag
        write_official_checkpoint(tmp / "model_best.pth.tar", config, image_state, text_state, legacy=True)
        shutil.copyfile(MODEL / VOCAB_FILE, tmp / VOCAB_FILE)
        (tmp / "images").mkdir()
        lines, captions = [], []
        for row in rows:
            image_id = gallery.ids[row]
            n = int(gallery.regions.n_boxes[row])
            width, height = (int(v) for v in gallery.regions.image_sizes[row])
            lines.append(tsv_row(image_id, width, height, gallery.regions.boxes[row, :n],
                                 gallery.regions.features[row, :n]))
            shutil.copyfile(gallery.image_path(image_id), tmp / "images" / f"{image_id}.jpg")
            captions.extend(gallery.captions_of(image_id))
        (tmp / "features.tsv").write_text("\n".join(lines) + "\n", encoding="ascii")
        (tmp / "captions.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
        (tmp / "MANIFEST.json").write_text(json.dumps(
            {"made_by": "tools/make_official_example.py", "seed": seed, "n_images": n_images,
             "model": "pretrained/scan-emoji-t2i", "gallery": "examples/gallery", "image_ids": [gallery.ids[r] for r in rows]},
            indent=1) + "\n", encoding="utf-8")

    write_dir_atomic(out, write)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "examples" / "official-small")
    parser.add_argument("--n-images", type=int, default=20)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    make_example(args.out, args.n_images, args.seed)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out}: {total / 2**20:.2f} MB")


if __name__ == "__main__":
    main()
