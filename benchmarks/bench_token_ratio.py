"""Token-screen two-stage search vs exhaustive search, timed query by query INTERLEAVED (same load for both).

On a gallery of ``bench_two_stage.py``'s perturbed copies (its ``--work`` folder must hold the size's region file and
token index, e.g. after a ``bench_two_stage.py --sizes N`` run): for each of ``--queries`` of its seeded test captions,
a token two-stage search at each K of ``--token-k`` and one exhaustive search (region embeddings in RAM, float32),
one after the other; prints each one's median latency and the ratio. For a machine shared with other jobs, where
runs minutes apart are not comparable.

    python benchmarks/bench_token_ratio.py --size 100000 --work DIR --queries 10 --token-k 200,500
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from scan_viz.gallery import load_gallery
from scan_viz.model import load_model
from scan_viz.pipeline import DEFAULT_GALLERY, DEFAULT_MODEL
from scan_viz.retrieval.tokens import load_token_index, token_settings
from scan_viz.retrieval.search import TwoStageSearch
from scan_viz.parts import model_fingerprint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--work", required=True)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--token-k", default="200,500")
    ap.add_argument("--noise", type=float, default=0.5)
    args = ap.parse_args()
    work, n = Path(args.work), args.size
    model, gallery = load_model(DEFAULT_MODEL), load_gallery(DEFAULT_GALLERY)
    settings = token_settings(model)
    index = load_token_index(work / f"tokens_{n}_{args.noise:g}_{settings['fingerprint']}", settings["fingerprint"], n)
    if index is None:
        raise SystemExit(f"no token index for {n} images in {work}: run bench_two_stage.py --sizes {n} first")
    regions_disk = np.load(work / f"regions_{n}_{args.noise:g}_{model_fingerprint(model)}.npy", mmap_mode="r")
    features = np.load(work / f"features_{n}_{args.noise:g}.npy", mmap_mode="r")
    ids = [str(i) for i in range(n)]
    tokens = TwoStageSearch(model, ids, features, None, regions=regions_disk, screen="tokens", token_index=index)
    exhaustive = TwoStageSearch(model, ids, features, None,
                                regions=torch.from_numpy(np.asarray(regions_disk, dtype=np.float32)))
    rng = np.random.default_rng(0)  # bench_two_stage.py's query sample (its first --queries)
    pick = np.sort(rng.choice(len(gallery.captions), size=1000, replace=False))[:args.queries]
    ks = [int(k) for k in args.token_k.split(",")]
    head = model.head()
    times = {k: [] for k in ks} | {"exhaustive": []}
    tokens.search_text(gallery.captions[0], k=10, stage1_k=max(ks), head=head)  # warm-up
    for i in pick:
        text = gallery.captions[i]
        for k in ks:
            t = time.perf_counter()
            tokens.search_text(text, k=10, stage1_k=k, head=head)
            times[k].append(time.perf_counter() - t)
        t = time.perf_counter()
        exhaustive.search_text(text, k=10, stage1_k=0, head=head)
        times["exhaustive"].append(time.perf_counter() - t)
    ex = float(np.median(times["exhaustive"])) * 1000
    print(f"{n:,} images, {len(pick)} queries, torch x{torch.get_num_threads()} threads: exhaustive p50 {ex:.0f} ms")
    for k in ks:
        p = float(np.median(times[k])) * 1000
        print(f"  token two-stage K {k}: p50 {p:.1f} ms, {ex / p:.1f}x faster than exhaustive in the same run")


if __name__ == "__main__":
    main()
