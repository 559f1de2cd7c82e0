"""Training throughput of `scan-viz train`: one optimisation step as the loop takes it, before vs after.

    python benchmarks/bench_training.py [--threads 1] [--steps 6] [--rounds 3] [--cross-attn t2i] [--max-violation]

All variants run in this process on the same synthetic batch at the bundled model's sizes (batch 128, 36 regions
of 211-d features, embed 256, word_dim 128, bi-GRU, captions of 8-16 tokens), with the same encoders, head, loss
(sum over negatives, or the hardest negative with ``--max-violation``), Adam and gradient clipping:

- baseline: the whole batch scored as one block with autograd through ``head.scores`` and ``nn.GRU`` (what the
  loop did before issue 20);
- blocked autograd: ``batch_scores(..., fused=False)``: captions in length groups, images a few at a time, autograd;
- kernel backward, nn.GRU autograd: ``batch_scores``: SCAN's per-pair C kernel (:mod:`scan_viz.heads.native`)
  forward and backward; in t2i the whole batch as one block with the captions' words packed (no padding), in i2t
  captions in length groups; the text encoder as before;
- kernel + GRU backward (as trained): the same plus the text encoder's GRU on packed data with a hand-written
  backward, a step's element-wise part in C (:mod:`scan_viz.model.gru`): what ``scan-viz train`` runs on a CPU;
- the same with the region-word products (forward and the backward's matrix products) in bfloat16
  (``scan-viz train --train-products bfloat16``); left out on a CPU where bf16 products are emulated;
- tensor-code backward + GRU backward: ``scan-viz train`` with ``SCAN_VIZ_NATIVE=0`` (or no C compiler): the
  hand-written recomputing backward in PyTorch ops instead of the kernel, captions in length groups, and the GRU
  step's element-wise part in tensor operations instead of C. Which is faster depends on the CPU (docs/speed.md).

It prints wall time and CPU time (this process, all threads) per step: on a shared machine the CPU time is the
steadier measure, the wall time counts the waits for other processes. Of the CPU time it also prints the system
(kernel) part: the baseline's (images x regions x captions x words) intermediates are fresh allocations of tens of
MB each, which glibc maps from the kernel and returns to it every step, so that step spends much of its time in
page faults (docs/speed.md). It prints pairs/s (128 x 128 image-caption
pairs per step) and the ratios to the baseline, the share of a step each phase takes, and how far each variant's
loss and gradients are from the baseline's (same weights).

The variants take turns: the timed steps are split into ``--rounds`` rounds, and in each round every variant runs
its share of them in the order above. The ratio is that of the mean steps over all rounds; "per round" gives the
lowest and highest ratio of a round's steps, the spread the machine's changing speed leaves in it.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import time

import numpy as np
import torch

from scan_viz.heads import create_head, native
from scan_viz.heads.similarity import bfloat16_emulated_note
from scan_viz.model.config import ScanConfig
from scan_viz.model.encoders import build_encoders
from scan_viz.train.loop import batch_scores
from scan_viz.train.loss import contrastive_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the bundle trains one per core)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant (after 2 warm-up steps)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="the timed steps are split into this many rounds, in each of which every variant runs its "
                         "share of steps in turn")
    ap.add_argument("--cross-attn", default="t2i", choices=("t2i", "i2t"))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--max-violation", action="store_true",
                    help="the hardest-negative loss (SCAN's paper, VSE++) instead of the sum over negatives")
    args = ap.parse_args()
    if not 1 <= args.rounds <= args.steps:
        ap.error("--rounds must be between 1 and --steps")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ScanConfig(img_dim=211, embed_size=256, word_dim=128, bi_gru=True, vocab_size=240,
                        head_params={"cross_attn": args.cross_attn,
                                     "lambda_softmax": 9.0 if args.cross_attn == "t2i" else 4.0})
    image_encoder, text_encoder = build_encoders(config)
    head = create_head(None, config)
    params = list(text_encoder.parameters()) + list(image_encoder.parameters())
    b = args.batch
    features = torch.randn(b, 36, 211).relu()
    lengths = torch.randint(8, 17, (b,))
    ids = torch.randint(4, 240, (b, int(lengths.max())))

    bf16_head = head.with_product_dtype(torch.bfloat16)
    # (score function, hand-written GRU backward, C library on): the baseline is the loop as it was, autograd
    # through nn.GRU; the last variant runs its whole step as with SCAN_VIZ_NATIVE=0 (native.disabled())
    scored = lambda r, w: batch_scores(head, r, w, lengths)  # noqa: E731
    variants = {
        "baseline: one block": (lambda r, w: head.scores(r, w, lengths).scores, False, True),
        "blocked autograd": (lambda r, w: batch_scores(head, r, w, lengths, fused=False), False, True),
        "kernel backward, nn.GRU autograd": (scored, False, True),
        "kernel + GRU backward (as trained)": (scored, True, True),
        "same, bf16 products": (lambda r, w: batch_scores(bf16_head, r, w, lengths), True, True),
        "tensor-code backward + GRU backward (SCAN_VIZ_NATIVE=0)": (scored, True, False),
    }
    emulated = bfloat16_emulated_note()
    if emulated:  # minutes per step where bf16 products are emulated: measure the rest
        print(f"{emulated}: the bf16 variant is left out")
        del variants["same, bf16 products"]

    def step(variant, optimizer) -> tuple[np.ndarray, float, list[torch.Tensor]]:
        with contextlib.nullcontext() if variant[2] else native.disabled():
            return _step(variant, optimizer)

    def _step(variant, optimizer) -> tuple[np.ndarray, float, list[torch.Tensor]]:
        score_fn, text_encoder.hand_backward, _ = variant
        t = [time.perf_counter()]
        regions, words = image_encoder(features), text_encoder(ids, lengths)
        t.append(time.perf_counter())
        loss = contrastive_loss(score_fn(regions, words), config.margin, args.max_violation)
        t.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        grads = [p.grad.clone() for p in params]
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        t.append(time.perf_counter())
        return np.diff(t), float(loss), grads

    # same loss and gradients from the same weights (no optimizer step in between: lr 0)
    frozen = torch.optim.SGD(params, lr=0.0)
    checks = [step(fn, frozen) for fn in variants.values()]
    diffs = []
    for check in checks[1:]:
        loss_diff = abs(checks[0][1] - check[1])
        grad_diff = max(float((g0 - g1).abs().max()) for g0, g1 in zip(checks[0][2], check[2]))
        grad_scale = max(float(g0.abs().max()) for g0 in checks[0][2])
        diffs.append(f"{loss_diff:.2e} / {grad_diff:.2e}")

    print(f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"loss: {'hardest negative (max_violation)' if args.max_violation else 'sum over negatives'}; "
          f"batch {b} x {b} pairs, 36 regions x 211-d, embed 256, {args.cross_attn}, captions "
          f"{float(lengths.float().mean()):.1f} tokens (max {int(lengths.max())})")
    print(f"vs baseline, |loss diff| / max |grad diff| (largest |grad| {grad_scale:.2e}): "
          + "; ".join(f"{name}: {d}" for name, d in zip(list(variants)[1:], diffs)))
    optimizers = {name: torch.optim.Adam(params, lr=2e-4) for name in variants}
    for name, fn in variants.items():
        for _ in range(2):
            step(fn, optimizers[name])
    # the variants take turns, a few steps each per round, so a change in the machine's speed during the run
    # (this project's VMs: 10-30% within minutes) reaches all of them alike
    phases = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    system = dict.fromkeys(variants, 0.0)
    per_round = [args.steps // args.rounds + (r < args.steps % args.rounds) for r in range(args.rounds)]
    round_time = {name: [] for name in variants}
    for steps in per_round:
        for name, fn in variants.items():
            sys0, wall = resource.getrusage(resource.RUSAGE_SELF).ru_stime, 0.0
            for _ in range(steps):
                c0 = time.process_time()
                times, _, _ = step(fn, optimizers[name])
                t0 = time.perf_counter()
                optimizers[name].step()
                times[-1] += time.perf_counter() - t0
                cpu[name].append(time.process_time() - c0)
                phases[name].append(times)
                wall += float(times.sum())
            system[name] += resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0
            round_time[name].append(wall / steps)
    print(f"{args.steps} timed steps per variant in {args.rounds} rounds (the variants in turn, {per_round} steps "
          "each)")
    print("| variant | s/step | pairs/s | vs baseline | per round | CPU s/step | vs baseline (CPU) | of which system "
          "| encoders | head fwd | backward | clip+step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = next(iter(variants))
    for name in variants:
        mean = np.mean(phases[name], axis=0)
        total = float(mean.sum())
        base_total = float(np.mean(phases[base], axis=0).sum())
        rounds = [b_t / t for b_t, t in zip(round_time[base], round_time[name])]
        cpu_step = float(np.mean(cpu[name]))
        share = " | ".join(f"{100 * v / total:.0f}%" for v in mean)
        print(f"| {name} | {total:.3f} | {b * b / total:,.0f} | {base_total / total:.2f}x | "
              f"{min(rounds):.2f}-{max(rounds):.2f}x | {cpu_step:.3f} | {np.mean(cpu[base]) / cpu_step:.2f}x | "
              f"{system[name] / args.steps:.3f} | {share} |")


if __name__ == "__main__":
    main()
