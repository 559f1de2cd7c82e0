"""The token screen's probe pass, C walk vs the tensor code's scatter-max, on one synthetic index in one run.

    python benchmarks/bench_token_probe.py [--images 1000000] [--queries 50] [--words 12] [--probe 64]

The index has the token screen's shape at ``--images`` images (36 regions each, 4,096 centroids of 256-d, every
region at a uniformly random centroid, so each inverted list holds about images x 36 / 4,096 rows); the queries
are random unit words. Each query runs both paths back to back (same load); the script prints p50 / p95 per query
of each, their ratio, and checks that both give the same sums to the bit.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from scan_viz.heads import native
from scan_viz.retrieval.tokens import TokenIndex, _inverted_lists


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--words", type=int, default=12)
    ap.add_argument("--probe", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if native.library() is None:
        raise SystemExit(f"no C kernel: {native.status()}")
    rng = np.random.default_rng(0)
    n_centroids, d = 4096, 256
    centroids = rng.standard_normal((n_centroids, d), dtype=np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    codes = rng.integers(0, n_centroids, (args.images, 36), dtype=np.uint16)
    t = time.perf_counter()
    offsets, images = _inverted_lists(codes, n_centroids)
    print(f"{args.images:,} images, {len(images):,} list entries ({len(images) / n_centroids:,.0f} per list), "
          f"built in {time.perf_counter() - t:.1f} s; {args.words} words x {args.probe} probed lists per query, "
          f"{torch.get_num_threads()} thread(s)")
    index = TokenIndex(centroids, codes, offsets, images, "lse", 6.0)
    times = {"C walk": [], "scatter-max (tensor code)": []}
    for q in range(args.queries):
        words = rng.standard_normal((args.words, d), dtype=np.float32)
        sims = index.word_centroid_sims(words / np.linalg.norm(words, axis=1, keepdims=True))
        out = {}
        for name in times:
            with native.disabled() if name != "C walk" else contextlib.nullcontext():
                t = time.perf_counter()
                out[name] = index.probe_scores(sims, args.probe)
                times[name].append(time.perf_counter() - t)
        if not np.array_equal(*out.values()):
            raise SystemExit(f"query {q}: the two paths differ")
    p50 = {name: 1e3 * float(np.median(v)) for name, v in times.items()}
    for name, v in times.items():
        print(f"| {name} | p50 {p50[name]:.1f} ms | p95 {1e3 * float(np.percentile(v, 95)):.1f} ms |")
    print(f"C walk: {p50['scatter-max (tensor code)'] / p50['C walk']:.1f}x faster (p50); sums equal on all "
          f"{args.queries} queries")


if __name__ == "__main__":
    main()
