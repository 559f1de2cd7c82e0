"""The token screen's K by gallery size, measured on DEV queries (never test): ``scan_viz.retrieval.tokens.default_k``.

Dev galleries are built as ``bench_two_stage.py`` builds its test galleries: the dev split's region features
(``--data DIR/dev_ims.npy``, from ``python -m scan_viz.scenes --dev 1000 --seed 0`` and the bundled detector) and
perturbed copies of them up to each size (the originals first, so dev caption j's true image is row j // 5). For
``--queries`` seeded dev captions every image is scored exhaustively (SCAN, the bundled model; the scores are kept in
``--work`` and read again by a later run with the same gallery, model and captions), and for each K of
``--ks`` the screen is run as search runs it (``TokenIndex.screen(words, K)``, the query map applied). Per K:

- stage-1 recall@K: the caption's true image among the screen's K;
- two-stage R@1/5/10: the true image's rank among the K candidates by their exhaustive scores (stage 2 scores
  exactly, so its ranking of the candidates is exhaustive's), next to exhaustive's own R@1/5/10;
- keep@K: the share of exhaustive SCAN's top 10 images among the K.

The rule's K for a size (``--rule goals``, the default) is the smallest K of ``--ks`` that meets issue 20's three
quality criteria on these dev queries: recall@K >= ``--recall-target`` (95), two-stage R@10 no more than
``--r10-margin`` (0.5) points under exhaustive's, and keep@K >= ``--keep-floor`` (90, the share of exhaustive's top
10 that the issue asks two-stage search to keep on the bundled gallery). ``--rule keep``: the smallest K whose
keep@K reaches ``--target`` percent (the rule before). Sizes between the measured ones are interpolated in log-log
space (beyond the largest: the last segment's slope).

    python benchmarks/token_k_rule.py --data DIR --sizes 1000,10000,100000 --work DIR [--queries 1000]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_two_stage import CHUNK, perturbed_blocks, recall_cell, recalls  # noqa: E402

from scan_viz.heads.engine import score_matrix  # noqa: E402
from scan_viz.io import atomic_path  # noqa: E402
from scan_viz.model import load_model  # noqa: E402
from scan_viz.pipeline import DEFAULT_MODEL  # noqa: E402
from scan_viz.regions.store import load_precomp  # noqa: E402
from scan_viz.regions.store import read_rows  # noqa: E402
from scan_viz.retrieval.stage1 import find_stage1  # noqa: E402
from scan_viz.retrieval.query_map import map_words, query_map_option  # noqa: E402
from scan_viz.retrieval.tokens import (TokenIndex, codes_name, load_token_index, residual_codes,  # noqa: E402
                                      token_settings)


def dev_regions(model, base: np.ndarray, n: int, noise: float, path: Path) -> np.ndarray:
    """The dev gallery's region embeddings (n, n_regions, d), float16 memmap: ``bench_two_stage.embeddings`` of
    ``perturbed_features`` (the features rounded to float16, as a gallery stores them), made here one copy of the
    dev split at a time, so a 1M-image gallery needs no 15 GB feature file on disk."""
    if not path.is_file():
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                            shape=(n, base.shape[1], model.config.embed_size))
            for start, block in perturbed_blocks(base, n, noise):
                for s in range(0, len(block), CHUNK):
                    rows = block[s:s + CHUNK]
                    out[start + s:start + s + len(rows)] = model.encode_images(rows.astype(np.float32)).numpy()
            out.flush()
            del out
    return np.load(path, mmap_mode="r")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="precomputed layout holding dev_ims.npy and dev_caps.txt")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ks", default="50,100,200,300,500,700,1000,1500,2000,3000,4000")
    ap.add_argument("--rule", default="goals", choices=("goals", "keep"))
    ap.add_argument("--target", type=float, default=99.0, help="--rule keep: keep@K to reach (percent)")
    ap.add_argument("--recall-target", type=float, default=95.0, help="--rule goals: stage-1 recall@K (percent)")
    ap.add_argument("--r10-margin", type=float, default=0.5,
                    help="--rule goals: two-stage R@10 at most this many points under exhaustive's")
    ap.add_argument("--keep-floor", type=float, default=90.0, help="--rule goals: keep@K at least (percent)")
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--work", required=True)
    ap.add_argument("--json", help="write the measurements here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the exhaustive scores")
    ap.add_argument("--query-map", default="auto", choices=("auto", "none"),
                    help="the screen's query words through the model's distilled map (auto, what search does) or not")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = load_model(DEFAULT_MODEL)
    stage1 = find_stage1(model)
    dev = load_precomp(Path(args.data), "dev")
    base = np.asarray(dev.regions.features, dtype=np.float32)
    rng = np.random.default_rng(1)
    pick = np.sort(rng.choice(len(dev.captions), size=args.queries, replace=False))
    caps = model.encode_captions([dev.captions[i] for i in pick])
    head = model.head()
    ks = [int(k) for k in args.ks.split(",")]
    settings = token_settings(model)
    query_map = query_map_option(model, args.query_map)
    truth = dev.caption_image[pick]  # the originals are the gallery's first rows
    out = {"rule": args.rule, "target": args.target, "recall_target": args.recall_target,
           "r10_margin": args.r10_margin, "keep_floor": args.keep_floor, "queries": args.queries, "sizes": {},
           "query_map": None if query_map is None else str(query_map.path)}
    for n in [int(s) for s in args.sizes.split(",")]:
        tag = f"dev_{n}_{args.noise:g}"
        regions = dev_regions(model, base, n, args.noise, work / f"regions_{tag}_{stage1.base_fingerprint}.npy")
        folder = work / f"tokens_{tag}_{settings['fingerprint']}"
        index = load_token_index(folder, settings["fingerprint"], n)
        if index is None:
            index = TokenIndex.build(regions, **settings)
            index.save(folder)
        elif not index.fitted_to(settings["query_moment"]):  # saved before the query fit: its residuals re-fitted
            index = index.with_residuals(regions, **residual_codes(codes_name(index)),
                                         query_moment=settings["query_moment"])
            index.save(folder)
        t = time.perf_counter()
        # the exhaustive scores depend on the gallery, the model and the captions only: kept in --work for reruns
        cached = work / f"exhaustive_{tag}_{args.queries}_{settings['fingerprint']}.npy"
        if cached.is_file():
            scores = np.load(cached)
        else:
            scores = np.concatenate([score_matrix(head, torch.from_numpy(read_rows(regions, slice(s, s + CHUNK))).float(),
                                                  caps.emb, caps.lengths) for s in range(0, n, CHUNK)])
            with atomic_path(cached) as tmp, open(tmp, "wb") as f:
                np.save(f, scores)
        exhaustive_s = time.perf_counter() - t
        top10 = np.argsort(-scores, axis=0, kind="stable")[:10].T  # (queries, 10)
        truth_score = scores[truth, np.arange(len(pick))]
        exhaustive = recalls((scores > truth_score[None]).sum(axis=0))
        words = [map_words(query_map, caps.emb[q, :int(caps.lengths[q])]) for q in range(len(pick))]
        sizes = {"exhaustive": exhaustive, "exhaustive_s": exhaustive_s, "per_k": {}}
        t = time.perf_counter()
        for k in ks:
            if k > n:
                continue
            keep, hit, ranks = [], [], []
            for q in range(len(pick)):
                rows = index.screen(words[q], k)[0]
                keep.append(np.isin(top10[q], rows).mean())
                inside = bool(np.isin(truth[q], rows))
                hit.append(inside)
                # stage 2 ranks the candidates by their exhaustive scores; a tie does not count against the truth
                ranks.append(int((scores[rows, q] > truth_score[q]).sum()) if inside else 10**9)
            two_stage = recalls(np.array(ranks))
            row = {"keep": float(100 * np.mean(keep)), "recall": float(100 * np.mean(hit)), "two_stage": two_stage}
            row["meets_goals"] = bool(row["recall"] >= args.recall_target and row["keep"] >= args.keep_floor
                                      and two_stage["r10"] >= exhaustive["r10"] - args.r10_margin)
            sizes["per_k"][k] = row
            print(f"{n:,} dev images, K {k:,}: recall@K {row['recall']:.1f}, keep@K {row['keep']:.1f}, two-stage "
                  f"R@1/5/10 {recall_cell(two_stage)} (exhaustive {recall_cell(exhaustive)})"
                  + (" - meets the goals" if row["meets_goals"] else ""), flush=True)
        sizes["screen_s"] = time.perf_counter() - t
        if args.rule == "goals":
            reached = [k for k, row in sizes["per_k"].items() if row["meets_goals"]]
        else:
            reached = [k for k, row in sizes["per_k"].items() if row["keep"] >= args.target]
        sizes["k"] = min(reached) if reached else None
        out["sizes"][n] = sizes
        print(f"{n:,} dev images: rule {args.rule} -> K {sizes['k']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
