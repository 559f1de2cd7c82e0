"""Per-pair time of SCAN's C kernel (scan_viz/heads/native): the scores-only forward and the full backward.

    python benchmarks/bench_kernel.py [--contexts 128 --queries 32 --regions 36 --words 16 --threads 1 --repeats 15]

One block of cosines laid out as the training loop and the scoring engine hand it to the kernel
(:func:`scan_viz.heads.attention_pairs.pair_inputs`, t2i, clipped_l2norm, LogSumExp, lambda 9 / 6), random unit
embeddings; every pair gets a nonzero gradient (the sum-over-negatives loss). The matrix products around the kernel
are not timed. Prints the minimum and the median over ``--repeats`` calls, in microseconds per pair. To compare two
commits, run this file in both checkouts one after the other (``PYTHONPATH=CHECKOUT python
benchmarks/bench_kernel.py``; the kernel is built per source into its own file).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from scan_viz.heads import native
from scan_viz.heads.attention_pairs import pair_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, default=128, help="images of the block")
    ap.add_argument("--queries", type=int, default=32, help="captions of the block")
    ap.add_argument("--regions", type=int, default=36)
    ap.add_argument("--words", type=int, default=16, help="the block's longest caption (others 8 or more)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    if native.library() is None:
        raise SystemExit(f"the C kernel is not in use: {native.status()}")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    regions = F.normalize(torch.randn(args.contexts, args.regions, args.dim, generator=g), dim=-1)
    words = F.normalize(torch.randn(args.queries, args.words, args.dim, generator=g), dim=-1)
    lengths = torch.randint(min(8, args.words), args.words + 1, (args.queries,), generator=g)
    lengths[0] = args.words
    inputs = pair_inputs(regions, words, lengths, None, "t2i")
    block = (inputs.sims, inputs.gram, inputs.qnorm, inputs.qvalid, inputs.cvalid)
    grad = torch.rand(args.contexts, args.queries, generator=g) + 0.1
    setting = ("clipped_l2norm", "LogSumExp", 9.0, 6.0)
    forward, backward = [], []
    for _ in range(args.repeats + 1):
        t0 = time.perf_counter()
        native.pairs_forward(*block, *setting)
        t1 = time.perf_counter()
        native.pairs_backward(*block, grad, *setting)
        t2 = time.perf_counter()
        forward.append(t1 - t0)
        backward.append(t2 - t1)
    pairs = args.contexts * args.queries
    print(f"{args.contexts} x {args.queries} pairs, {args.regions} x {args.words} tiles, {args.threads} torch "
          f"thread(s), {native.status()}")
    for name, times in (("forward (scores)", forward[1:]), ("backward (recomputes the forward)", backward[1:])):
        times.sort()
        print(f"{name}: min {1e6 * times[0] / pairs:.2f} us/pair, median {1e6 * times[len(times) // 2] / pairs:.2f}")


if __name__ == "__main__":
    main()
