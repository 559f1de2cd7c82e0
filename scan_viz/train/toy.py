"""A tiny learnable data set in the official precomputed layout, and a model trained on it.

Each image has two "concept" regions (a fixed prototype vector plus noise, at random region slots, among
noise regions); its five captions name those two concepts in different templates. It exists so that the
training code can be tested for real learning in seconds, and so that a fresh checkout has a small model
to run the command line on (``examples/toy``). It says nothing about real images.

    python -m scan_viz.train.toy --out examples/toy
"""
from __future__ import annotations

import argparse
import itertools
import shutil
from pathlib import Path

import numpy as np

CONCEPTS = ("cat", "dog", "car", "tree", "boat", "horse", "bird", "house")
TEMPLATES = ("a {a} and a {b}", "the {b} next to the {a}", "a photo of a {a} with a {b}",
             "there is a {b} near a {a}", "{a} and {b} together")
N_REGIONS, IMG_DIM = 6, 16


def make_precomp(root: Path, n_train: int = 40, n_dev: int = 14, seed: int = 0, n_test: int = 0) -> Path:
    """Write ``{split}_ims.npy`` (n, 6, 16) float32 and ``{split}_caps.txt`` (5 captions per image).

    Dev and test images use concept pairs distinct from each other, so retrieval can be learnt to well
    above chance.
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(len(CONCEPTS), IMG_DIM))
    pairs = list(itertools.combinations(range(len(CONCEPTS)), 2))
    order = rng.permutation(len(pairs))
    splits = {"train": [pairs[order[i % len(pairs)]] for i in range(n_train)],
              "dev": [pairs[i] for i in order[:n_dev]]}
    if n_test:
        splits["test"] = [pairs[i] for i in order[-n_test:]]
    root.mkdir(parents=True, exist_ok=True)
    for split, image_pairs in splits.items():
        features = 0.5 * rng.normal(size=(len(image_pairs), N_REGIONS, IMG_DIM))
        captions = []
        for i, (a, b) in enumerate(image_pairs):
            slot_a, slot_b = rng.permutation(N_REGIONS)[:2]
            features[i, slot_a] += prototypes[a]
            features[i, slot_b] += prototypes[b]
            if rng.random() < 0.5:
                a, b = b, a
            captions += [t.format(a=CONCEPTS[a], b=CONCEPTS[b]) for t in TEMPLATES]
        np.save(root / f"{split}_ims.npy", features.astype(np.float32))
        (root / f"{split}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    return root


def main() -> None:
    from scan_viz.model.config import ScanConfig
    from scan_viz.train import TrainOptions, train

    ap = argparse.ArgumentParser(description="build the toy example: data + a SCAN model trained on it")
    ap.add_argument("--out", default="examples/toy")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    data = make_precomp(out / "data", n_train=120, n_dev=14, n_test=14, seed=args.seed)
    # lr 1e-2 instead of 2e-4: a few epochs on 600 pairs have to learn
    config = ScanConfig(img_dim=IMG_DIM, embed_size=32, word_dim=16, batch_size=40, learning_rate=1e-2,
                        lr_update=100, num_epochs=20, max_violation=True, data_name="toy_precomp")
    result = train(config, data, out / "run", TrainOptions(workers=0, progress=False, seed=args.seed))
    best = out / "model"
    shutil.rmtree(best, ignore_errors=True)
    result.model_dir.rename(best)
    shutil.rmtree(out / "run")
    print(f"wrote {data} and {best} (best dev rsum {result.best_rsum:.1f})")


if __name__ == "__main__":
    main()
