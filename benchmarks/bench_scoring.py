"""Scoring throughput: the scan-viz engine vs the official SCAN algorithm, measured in the same run.

Baseline ("official"): kuanghuei/SCAN's evaluation loop as restated in reference: float64,
128 x 128 shards, one attention call per caption, attended vectors materialised.
Reported: pairs/s, the speed-up over the baseline, and the engine's arithmetic rate as a fraction of
this machine's measured fp32 matrix-multiply rate, counting 2 x n_regions x n_words x d FLOPs per pair.
Also the engine with its region-word products in bfloat16 (``--dtype bfloat16``), against the fp32 engine in
the same run (goal: >= 1.6x), and how far its scores move.

With ``--gallery-images N`` (0: skip) it also scores the first N images of the bundled gallery (and their
captions) with each head in fp32 and with bf16 products, and prints R@1/5/10 of both and the top-10 overlap
(goal: recalls within 0.3 points, overlap >= 0.98).

    python benchmarks/bench_scoring.py [--device cuda] [--images 512 --captions 2560] [--gallery-images 1000]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import shard_xattn  # noqa: E402  (the tests' plain re-statement of the official loop: the baseline)
from scan_viz.heads import create_head
from scan_viz.model import ScanModel
from scan_viz.model.config import ScanConfig
from scan_viz.heads.engine import score_matrix
from scan_viz.text import Vocabulary

N_REGIONS, IMG_DIM, EMBED = 36, 2048, 1024
WORDS = ["a", "man", "woman", "dog", "red", "blue", "car", "on", "the", "street", "with", "small", "big",
         "sitting", "next", "to", "white", "boat", "water", "green", "grass", "holding", "ball", "two"]


def matmul_rate(device: str, n: int = 4096, reps: int = 8) -> float:
    """Measured fp32 GEMM FLOP/s (n x n x n)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, reps: int = 1):
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def captions(n: int, rng: np.random.Generator) -> list[str]:
    """~12-word captions (10 +- 2 words, plus <start> and <end>)."""
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 13)))) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--captions", type=int, default=1280)
    ap.add_argument("--baseline-images", type=int, default=128)
    ap.add_argument("--baseline-captions", type=int, default=128)
    ap.add_argument("--gallery-images", type=int, default=1000, help="bundled gallery images for the bf16 check")
    ap.add_argument("--gallery-heads", default="scan_t2i,chan,caan", help="heads of the per-head and gallery rows")
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    dev = args.device

    vocab = Vocabulary.from_words(WORDS)
    model = ScanModel(ScanConfig(vocab_size=len(vocab)), vocab)
    feats = rng.standard_normal((args.images, N_REGIONS, IMG_DIM), dtype=np.float32)
    caps = captions(args.captions, rng)
    head = create_head("scan_t2i", model.config, lambda_softmax=9.0, lambda_lse=6.0, agg_func="LogSumExp",
                       raw_feature_norm="clipped_l2norm")

    rate = matmul_rate(dev)
    regions = model.encode_images(feats, device=dev)
    enc = model.encode_captions(caps, device=dev)
    mean_words = float(enc.lengths.float().mean())
    flops_per_pair = 2 * N_REGIONS * mean_words * EMBED

    # baseline: the official float64 sharded loop, on a subset (it is slow), per pair
    bi, bc = args.baseline_images, args.baseline_captions
    reg64 = regions[:bi].double().cpu().numpy()
    cap64 = enc.emb[:bc].double().cpu().numpy()
    lens = enc.lengths[:bc].cpu().numpy()
    params = dict(cross_attn="t2i", raw_feature_norm="clipped_l2norm", lambda_softmax=9.0, agg_func="LogSumExp",
                  lambda_lse=6.0)
    ref, t_ref = _timed(lambda: shard_xattn(reg64, cap64, lens, **params))
    ref_pps = bi * bc / t_ref

    def engine(matcher):
        out = score_matrix(matcher, regions, enc.emb, enc.lengths)
        _sync(dev)
        return out
    sims, t_eng = _timed(lambda: engine(head), reps=2)
    eng_pps = args.images * args.captions / t_eng
    err = float(np.abs(sims[:bi, :bc].astype(np.float64) - ref).max())

    bf16_head = head.with_product_dtype("bfloat16")
    sims_bf16, t_bf16 = _timed(lambda: engine(bf16_head), reps=2)
    bf16_pps = args.images * args.captions / t_bf16
    err_bf16 = float(np.abs(sims_bf16.astype(np.float64) - sims).max())

    # end to end: raw features + sentences -> scores; the baseline adds the same encoders' time
    def e2e():
        out = model.similarity(feats, caps, device=dev, head=head)
        _sync(dev)
        return out
    _, t_e2e = _timed(e2e, reps=1)
    e2e_pps = args.images * args.captions / t_e2e
    # the official pipeline runs the same encoders, then its loop over every pair at the rate measured above
    _, t_enc = _timed(lambda: (model.encode_images(feats, device=dev), model.encode_captions(caps, device=dev)))
    ref_e2e_pps = args.images * args.captions / (t_enc + args.images * args.captions / ref_pps)

    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
    print(f"machine: {name}; torch {torch.__version__}; device {dev}")
    print(f"fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s")
    print(f"pairs: engine {args.images}x{args.captions}, baseline {bi}x{bc}; 36 regions, d=1024, "
          f"{mean_words:.1f} words/caption incl. <start>/<end>")
    print(f"max |engine fp32 - official fp64| = {err:.2e}; max |engine bf16 products - engine fp32| = {err_bf16:.2e}")
    print("| what | pairs/s | vs official | fraction of matmul rate |")
    print("|---|---|---|---|")
    print(f"| official loop (fp64, 128x128 shards) | {ref_pps:,.0f} | 1.0x | {ref_pps * flops_per_pair / rate:.2f} |")
    print(f"| engine, scores from embeddings (fp32) | {eng_pps:,.0f} | {eng_pps / ref_pps:.1f}x | "
          f"{eng_pps * flops_per_pair / rate:.2f} |")
    print(f"| engine, region-word products in bf16 | {bf16_pps:,.0f} | {bf16_pps / ref_pps:.1f}x "
          f"({bf16_pps / eng_pps:.2f}x fp32 engine) | {bf16_pps * flops_per_pair / rate:.2f} |")
    print(f"| similarity() end to end (fp32) vs official end to end | {e2e_pps:,.0f} | "
          f"{e2e_pps / ref_e2e_pps:.1f}x | - |")
    per_head(model, regions, enc, dev, args.gallery_heads.split(","))
    if args.gallery_images:
        gallery_agreement(args.gallery_images, args.gallery_heads.split(","))


def per_head(model: ScanModel, regions: torch.Tensor, enc, dev: str, heads: list[str], reps: int = 2) -> None:
    """Engine pairs/s of each head, fp32 and bf16 products, timed round by round (best round kept)."""
    runs = {(h, dt): create_head(h, model.config, dtype=dt if dt == "bfloat16" else None)
            for h in heads for dt in ("float32", "bfloat16")}
    best = {key: float("inf") for key in runs}
    for _ in range(reps + 1):  # the first round warms up
        for key, head in runs.items():
            t = time.perf_counter()
            score_matrix(head, regions, enc.emb, enc.lengths)
            _sync(dev)
            best[key] = min(best[key], time.perf_counter() - t)
    pairs = regions.shape[0] * enc.emb.shape[0]
    base = pairs / best[(heads[0], "float32")]
    print(f"\nper head, d={regions.shape[2]}: | head | pairs/s fp32 (vs {heads[0]}) | pairs/s bf16 (vs fp32) |")
    print("|---|---|---|")
    for head in heads:
        fp32, bf16 = pairs / best[(head, "float32")], pairs / best[(head, "bfloat16")]
        print(f"| {head} | {fp32:,.0f} ({fp32 / base:.1f}x) | {bf16:,.0f} ({bf16 / fp32:.2f}x) |")


def top_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's top-k under ``a`` that is also in its top-k under ``b``."""
    top_a = np.argsort(-a, axis=1, kind="stable")[:, :k]
    top_b = np.argsort(-b, axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top_a, top_b)]))


def gallery_agreement(n_images: int, heads: list[str]) -> None:
    """fp32 vs bf16 products on the bundled gallery's first ``n_images``: recalls and top-10 overlap per head."""
    from scan_viz.evaluation.metrics import evaluate
    from scan_viz.gallery import load_gallery
    from scan_viz.model import load_model
    from scan_viz.pipeline import DEFAULT_GALLERY, DEFAULT_MODEL

    model, gallery = load_model(DEFAULT_MODEL), load_gallery(DEFAULT_GALLERY)
    n = min(n_images, len(gallery))
    keep = np.flatnonzero(gallery.caption_image < n)
    feats = np.asarray(gallery.regions.features[:n])
    caps = [gallery.captions[i] for i in keep]
    lengths = np.asarray(gallery.regions.n_boxes)[:n]
    print(f"\nbundled gallery, first {n} images / {len(caps)} captions, model {DEFAULT_MODEL}: fp32 vs bf16 products")
    print("| head | i2t R@1 R@5 R@10 fp32 -> bf16 | t2i R@1 R@5 R@10 fp32 -> bf16 | max recall change | "
          "top-10 overlap t2i / i2t |")
    print("|---|---|---|---|---|")
    for head in heads:
        full = model.similarity(feats, caps, head=head, region_lengths=lengths)
        bf16 = model.similarity(feats, caps, head=head, region_lengths=lengths, dtype="bfloat16")
        m32, m16 = (evaluate(s, gallery.caption_image[keep]).to_dict() for s in (full, bf16))
        cells = {d: " ".join(f"{m32[d][k]:.1f}" for k in ("r1", "r5", "r10")) + " -> " +
                 " ".join(f"{m16[d][k]:.1f}" for k in ("r1", "r5", "r10")) for d in ("i2t", "t2i")}
        change = max(abs(m32[d][k] - m16[d][k]) for d in ("i2t", "t2i") for k in ("r1", "r5", "r10"))
        print(f"| {head} | {cells['i2t']} | {cells['t2i']} | {change:.2f} | "
              f"{top_overlap(full.T, bf16.T):.3f} / {top_overlap(full, bf16):.3f} |")


if __name__ == "__main__":
    main()
