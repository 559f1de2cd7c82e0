"""Every matching head on one gallery, measured in one run: the head table of docs/heads.md.

For each head: R@1/5/10 both ways and rsum (strict: only a caption's own image counts; truth-aware where the
gallery carries claims), pointing accuracy per word type (the head's word x region matrix, argmax per word),
scoring throughput over the (images x captions) matrix of the first ``--speed-images`` images and their captions,
from the encoded gallery (pairs/s, fp32, and with the region-word products in bf16; the heads' timings
interleaved round by round in one process, best round kept, so a busy machine slows them alike), and the peak
memory that evaluating the whole split adds (a fresh process per head: resident set size above what the loaded
model and gallery already hold; encoding, the full score matrix, pointing). Baseline: SCAN t2i, same run.

Each head runs on the model named for it (``--model HEAD=MODEL``); by default SCAN's heads on the bundled SCAN
models, CHAN and CAAN on pretrained/chan-emoji and pretrained/caan-emoji when present, else on SCAN t2i's model
(the head swapped onto encoders trained for SCAN, said so in the table).

    python benchmarks/bench_heads.py [--gallery examples/gallery] [--heads scan_t2i,scan_i2t,chan,caan]
                                     [--model chan=pretrained/chan-emoji] [--images N] [--json out.json]

``--images N`` measures on the gallery's first N images and their captions (a quick look; docs/heads.md's table is
the whole test split).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = {"scan_t2i": "scan-emoji-t2i", "scan_i2t": "scan-emoji-i2t", "chan": "chan-emoji",
                  "caan": "caan-emoji"}


def model_for(head: str, chosen: dict[str, str]) -> str:
    from scan_viz.model import PRETRAINED_DIR

    if head in chosen:
        return chosen[head]
    name = DEFAULT_MODELS.get(head, "scan-emoji-t2i")
    return name if (PRETRAINED_DIR / name).is_dir() else "scan-emoji-t2i"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def first_images(gallery, n: int):
    """The gallery's first ``n`` images with their captions (the whole gallery for 0 or n >= its size)."""
    from scan_viz.gallery import Gallery
    from scan_viz.regions.store import RegionStore

    if not n or n >= len(gallery):
        return gallery
    store = gallery.regions

    def head_of(array):
        return None if array is None else np.asarray(array)[:n]
    regions = RegionStore(ids=store.ids[:n], features=np.asarray(store.features[:n]), boxes=head_of(store.boxes),
                          image_sizes=head_of(store.image_sizes), n_boxes=head_of(store.n_boxes))
    labels = None if gallery.region_labels is None else gallery.region_labels[:n]
    return Gallery(gallery.root, gallery.name, gallery.records[:n], regions, labels)


def evaluate_in_child(head: str, model_name: str, gallery_dir: str, n_images: int) -> tuple[dict, float]:
    """``evaluate_gallery`` of the head in a fresh process, and the peak MB it added above the loaded model and
    gallery (encoding, the full score matrix, pointing)."""
    import torch

    from scan_viz.gallery import load_gallery
    from scan_viz.model import load_model
    from scan_viz.pipeline import evaluate_gallery

    torch.set_num_threads(1)
    model = load_model(model_name)
    gallery = first_images(load_gallery(gallery_dir), n_images)
    before = _rss_bytes()
    result = evaluate_gallery(model, gallery, head)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return result, max(peak - before, 0) / 2**20


def _in_child(args: tuple) -> tuple[dict, float]:
    return evaluate_in_child(*args)


def interleaved_throughput(runs: dict[tuple[str, str], tuple], reps: int) -> dict[tuple[str, str], float]:
    """pairs/s of each (head, dtype): ``runs`` maps it to (head object, GalleryIndex); rounds alternate heads."""
    from scan_viz.heads.engine import score_matrix

    best = {key: float("inf") for key in runs}
    for _ in range(reps):
        for key, (matcher, index) in runs.items():
            t = time.perf_counter()
            score_matrix(matcher, index.regions, index.caption_emb, index.caption_lengths, index.region_lengths)
            best[key] = min(best[key], time.perf_counter() - t)
    return {key: index.regions.shape[0] * index.caption_emb.shape[0] / best[key]
            for key, (_, index) in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gallery", default=str(REPO / "examples" / "gallery"))
    ap.add_argument("--heads", default="scan_t2i,scan_i2t,chan,caan")
    ap.add_argument("--model", action="append", default=[], metavar="HEAD=MODEL")
    ap.add_argument("--images", type=int, default=0, help="only the gallery's first N images (0: all)")
    ap.add_argument("--reps", type=int, default=2, help="timed rounds over every head (best is kept)")
    ap.add_argument("--speed-images", type=int, default=200,
                    help="throughput is timed on the first N images x their captions (0: the whole split)")
    ap.add_argument("--json", help="write every number here too")
    args = ap.parse_args()

    import torch

    from scan_viz.gallery import load_gallery
    from scan_viz.model import load_model
    from scan_viz.pipeline import GalleryIndex

    torch.set_num_threads(1)
    chosen = dict(item.split("=", 1) for item in args.model)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    gallery = first_images(load_gallery(args.gallery), args.images)
    speed_gallery = first_images(gallery, args.speed_images)
    context = multiprocessing.get_context("spawn")
    rows, runs, indexes = [], {}, {}
    for head in heads:
        model_name = model_for(head, chosen)
        model = load_model(model_name)
        started = time.perf_counter()
        with context.Pool(1) as pool:
            result, peak_mb = pool.apply(_in_child, ((head, model_name, args.gallery, args.images),))
        eval_s = time.perf_counter() - started
        if model_name not in indexes:
            indexes[model_name] = GalleryIndex.build(model, speed_gallery)
        runs[(head, "float32")] = (model.head(head), indexes[model_name])
        runs[(head, "bfloat16")] = (model.head(head, dtype="bfloat16"), indexes[model_name])
        from scan_viz.heads import own_head

        trained = own_head(model.config)
        rows.append({"head": head, "model": Path(model_name).name, "trained_head": trained,
                     "i2t": result["i2t"], "t2i": result["t2i"], "rsum": result["rsum"],
                     "truth_rsum": result.get("truth", {}).get("rsum"), "pointing": result.get("pointing", {}),
                     "pointing_accuracy": result.get("pointing_accuracy"), "peak_mb": peak_mb, "eval_s": eval_s})
        print(f"[{head}] evaluated: rsum {result['rsum']:.1f}, peak {peak_mb:.0f} MB", flush=True)
    speed = interleaved_throughput(runs, args.reps)
    for r in rows:
        r["pairs_per_s"], r["pairs_per_s_bf16"] = speed[(r["head"], "float32")], speed[(r["head"], "bfloat16")]

    base = next((r for r in rows if r["head"] == "scan_t2i"), rows[0])
    print(f"\nmachine: {platform.processor() or platform.machine()}, 1 thread; torch {torch.__version__}; gallery "
          f"{gallery.name}: {len(gallery)} images, {len(gallery.captions)} captions; throughput on the first "
          f"{len(speed_gallery)} images x {len(speed_gallery.captions)} captions")
    word_types = sorted({t for r in rows for t in r["pointing"]})
    print("| head | model (trained as) | i2t R@1 R@5 R@10 | t2i R@1 R@5 R@10 | rsum | truth-aware rsum | pointing "
          + " ".join(word_types) + " | pairs/s fp32 (vs SCAN t2i) | pairs/s bf16 | peak MB |")
    print("|---" * 9 + "|")
    for r in rows:
        recall = {d: " ".join(f"{r[d][k]:.1f}" for k in ("r1", "r5", "r10")) for d in ("i2t", "t2i")}
        pointing = " ".join(f"{r['pointing'].get(t, float('nan')):.1f}" for t in word_types) or "-"
        truth = "-" if r["truth_rsum"] is None else f"{r['truth_rsum']:.1f}"
        print(f"| {r['head']} | {r['model']} ({r['trained_head']}) | {recall['i2t']} | {recall['t2i']} | {r['rsum']:.1f} | "
              f"{truth} | {pointing} | {r['pairs_per_s']:,.0f} ({r['pairs_per_s'] / base['pairs_per_s']:.1f}x) | "
              f"{r['pairs_per_s_bf16']:,.0f} ({r['pairs_per_s_bf16'] / r['pairs_per_s']:.2f}x) | "
              f"{r['peak_mb']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
