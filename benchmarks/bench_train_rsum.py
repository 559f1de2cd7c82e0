"""Dev rsum after a short training run on the bundled emoji data: how the training step's variants compare.

    python benchmarks/bench_train_rsum.py --out /tmp/rsum-run [--epochs 3] [--seed 0] [--train-products bfloat16]

The bundled gallery (``examples/gallery``: the emoji world's test split, 1,000 images of 36 regions x 211-d features
from the bundled detector, 5 captions each) is cut into a training part (the first 800 images, 4,000 captions) and a
dev part (the last 200 images, 1,000 captions), written in the official precomputed layout, and SCAN t2i is trained
on it with the bundled models' settings (scan_viz.train.bundle: bi-GRU, embed 256, word 128, lambda 9 / 6,
LogSumExp, hardest negatives after one epoch, batch 128, lr 5e-4, one torch thread) for a few epochs (``--seed``, default 0).
It prints each epoch's dev rsum and seconds. This is a comparison of training code on the same data and seed,
not a model to ship: the gallery is the bundled models' test split. Run it once with the code before a change
(e.g. ``PYTHONPATH=<old checkout>``) and once after.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def write_precomp(gallery: Path, out: Path, n_train: int) -> Path:
    meta = json.loads((gallery / "gallery.json").read_text(encoding="utf-8"))
    features = np.load(gallery / "regions" / "features.npy", mmap_mode="r")
    captions = [[c["text"] for c in image["captions"]][:5] for image in meta["images"]]
    if any(len(c) != 5 for c in captions):
        raise SystemExit("every gallery image needs 5 captions")
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", slice(0, n_train)), ("dev", slice(n_train, len(captions)))):
        np.save(out / f"{split}_ims.npy", np.asarray(features[rows], dtype=np.float32))
        lines = [text.replace("\n", " ") for caps in captions[rows] for text in caps]
        (out / f"{split}_caps.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="a new folder for the data and the run")
    ap.add_argument("--gallery", default=str(REPO / "examples" / "gallery"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-images", type=int, default=800)
    ap.add_argument("--train-products", choices=("float32", "bfloat16"), default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from scan_viz.model.config import ScanConfig
    from scan_viz.train.loop import train
    from scan_viz.train.options import TrainOptions

    out = Path(args.out)
    data = write_precomp(Path(args.gallery), out / "precomp", args.train_images)
    config = ScanConfig(img_dim=211, embed_size=256, word_dim=128, bi_gru=True,
                        head_params={"cross_attn": "t2i", "lambda_softmax": 9.0, "lambda_lse": 6.0,
                                     "agg_func": "LogSumExp"}, max_violation=True, max_violation_warmup=1,
                        learning_rate=5e-4, lr_update=max(args.epochs, 1) * 2, num_epochs=args.epochs, batch_size=128)
    extra = {"product_dtype": args.train_products} if args.train_products else {}
    options = TrainOptions(vocab_threshold=1, workers=0, seed=args.seed, max_dev_captions=0, progress=False,
                           log=lambda m: print(m, flush=True), **extra)
    started = time.perf_counter()
    result = train(config, data, out / "run", options)
    print(f"code: {sys.modules['scan_viz'].__file__}; seed {args.seed}; train products: {args.train_products or 'float32'}; "
          f"{args.epochs} epochs in {time.perf_counter() - started:.0f} s")
    print("| epoch | loss | dev rsum | seconds |")
    print("|---|---|---|---|")
    for record in result.history:
        print(f"| {record['epoch']} | {record['loss']:.3f} | {record['rsum']:.1f} | {record['seconds']:.0f} |")


if __name__ == "__main__":
    main()
