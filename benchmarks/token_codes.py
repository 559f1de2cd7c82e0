"""Which residual codes the token screen should keep per region: stage-1 recall@K of each kind of codes, in one run.

One set of centroids, codes and inverted lists (a token index of the gallery, built or loaded from ``--work``) and
several residual codes on top of it (``TokenIndex.with_residuals``): ``pca16`` (16 principal directions, float16:
the codes before this benchmark), ``pcaR``, ``pcaRi8`` (int8 steps: the default now), ``pqM`` (residual product quantisation, M one-byte sub-vectors),
``none`` (centroids only) and ``exact`` (the stored float16 region embeddings themselves, read from disk: the
ceiling of any per-region code). Each query's probe pass is computed once; every kind of codes then re-scores the
same shortlist. ``--pools`` are shortlist rules ``REFINE:SHORTLIST`` (the shortlist is max(REFINE x K, SHORTLIST)
images; the screen's default is 4:2000). Printed per kind and rule: recall@K (the true image, an original, among
the screen's top K), the shortlist's own recall (the most any code can reach with that rule), the re-scoring time
per query (p50, one thread, ratio against ``pca16`` in the same run) and the bytes per image in RAM.
``--full-queries N``: also the rank of the true image under the exact LSE-MaxSim over the WHOLE gallery (no screen)
for the first N queries: what a perfect screen of this score would reach.

Galleries: ``bench_two_stage.py``'s perturbed copies (``--split test``: its 1,000 seeded test captions) or
``token_k_rule.py``'s dev copies (``--split dev --data DEV_PRECOMP``: seeded dev captions). Choose on dev, report
test:

    python benchmarks/token_codes.py --split dev --data DEV_PRECOMP --work DEV_WORK --size 100000 --queries 500
    python benchmarks/token_codes.py --split test --work WORK --size 100000 --queries 1000
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from scan_viz.model import load_model
from scan_viz.pipeline import DEFAULT_GALLERY, DEFAULT_MODEL
from scan_viz.regions.store import read_rows
from scan_viz.retrieval.query_map import query_map_option
from scan_viz.retrieval.stage1 import find_stage1
from scan_viz.retrieval.tokens import TokenIndex, load_token_index, residual_codes, token_settings

MISS = 10**9


def lse_maxsim(regions: np.ndarray, words: np.ndarray, lam: float) -> np.ndarray:
    """(N, n_reg, d) regions, (L, d) words -> (N,) LogSumExp over words of each word's best region cosine."""
    best = (torch.from_numpy(regions) @ torch.from_numpy(words).T).amax(dim=1)  # (N, L)
    return (torch.logsumexp(lam * best.double(), dim=1) / lam).numpy()


def queries(split: str, n_queries: int, data: str | None, model):
    """(caption embeddings, caption lengths, true image row of each) for the split's seeded query sample."""
    if split == "test":  # bench_two_stage.py's sample
        from scan_viz.gallery import load_gallery

        gallery = load_gallery(DEFAULT_GALLERY)
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(len(gallery.captions), size=min(n_queries, len(gallery.captions)), replace=False))
        captions, truth = [gallery.captions[i] for i in pick], gallery.caption_image[pick]
    else:
        from scan_viz.regions.store import load_precomp

        dev = load_precomp(Path(data), "dev")
        rng = np.random.default_rng(1)  # token_k_rule.py's seed
        pick = np.sort(rng.choice(len(dev.captions), size=min(n_queries, len(dev.captions)), replace=False))
        captions, truth = [dev.captions[i] for i in pick], np.asarray(dev.caption_image)[pick]
    caps = model.encode_captions(captions)
    return caps.emb.numpy(), caps.lengths.numpy(), np.asarray(truth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("test", "dev"), required=True)
    ap.add_argument("--data", help="dev: precomputed layout holding dev_ims.npy and dev_caps.txt")
    ap.add_argument("--work", required=True, help="the region file (and token index) of the size, as "
                                                  "bench_two_stage.py / token_k_rule.py write them")
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--codes", default="none,pca16,pca32,pq16,pq32,pq64,exact")
    ap.add_argument("--ks", default="200,500,1000")
    ap.add_argument("--pools", default="4:2000,8:4000,16:8000")
    ap.add_argument("--exact-pool", type=int, default=4000, help="largest shortlist re-scored with the exact "
                                                                  "regions (read from disk per query)")
    ap.add_argument("--full-queries", type=int, default=0)
    ap.add_argument("--json", help="write the measurements here")
    ap.add_argument("--query-map", default="none", choices=("auto", "none"),
                    help="the query words through the model's distilled map (auto) or as they are (none, the "
                         "measurements that chose the codes)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import faiss

    faiss.omp_set_num_threads(1)
    work, n = Path(args.work), args.size
    model = load_model(DEFAULT_MODEL)
    settings = token_settings(model)
    base_fp = find_stage1(model).base_fingerprint
    tag = f"{n}_{args.noise:g}" if args.split == "test" else f"dev_{n}_{args.noise:g}"
    regions = np.load(work / f"regions_{tag}_{base_fp}.npy", mmap_mode="r")
    folder = work / f"tokens_{tag}_{settings['fingerprint']}"
    t0 = time.perf_counter()
    index = load_token_index(folder, settings["fingerprint"], n)
    if index is None:  # the centroids, codes and lists; the codes below are fitted on top of them
        index = TokenIndex.build(regions, n_residual=16, **settings)  # the codes before PQ
        index.save(folder)
    print(f"token index {folder.name}: {len(index.centroids)} centroids ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    emb, lengths, truth = queries(args.split, args.queries, args.data, model)
    query_map = query_map_option(model, args.query_map)
    if query_map is not None:  # the screen's words (the exact re-scoring below scores these too)
        emb = np.stack([np.pad(query_map(torch.from_numpy(emb[q, :int(lengths[q])])).numpy(),
                               ((0, emb.shape[1] - int(lengths[q])), (0, 0))) for q in range(len(emb))])
    ks = [int(k) for k in args.ks.split(",")]
    pools = [tuple(int(x) for x in p.split(":")) for p in args.pools.split(",")]
    pool_of = {(r, s, k): min(n, max(r * k, s)) for r, s in pools for k in ks}
    max_pool = max(pool_of.values())

    kinds = args.codes.split(",")
    coded = {}
    for kind in kinds:
        if kind in ("exact",):
            continue
        t0 = time.perf_counter()
        coded[kind] = index.with_residuals(regions, **residual_codes(kind))
        print(f"codes {kind}: {coded[kind].nbytes / n:,.0f} bytes per image, "
              f"fitted in {time.perf_counter() - t0:.0f} s", flush=True)

    lam = index.lambda_lse
    probe_pos = np.full(len(truth), MISS)
    rank = {(kind, p): np.full(len(truth), MISS) for kind in kinds for p in set(pool_of.values())}
    times = {kind: [] for kind in kinds}
    t_start = time.perf_counter()
    for q in range(len(truth)):
        words = emb[q, :int(lengths[q])]
        sims = index.word_centroid_sims(words)
        order = np.argsort(-index.probe_scores(sims), kind="stable")[:max_pool]
        where = np.flatnonzero(order == truth[q])
        if not len(where):
            continue
        probe_pos[q] = pos = int(where[0])
        for kind in kinds:
            pools_here = sorted(p for p in set(pool_of.values())
                                if p > pos and (kind != "exact" or p <= args.exact_pool))
            if not pools_here:
                continue
            rows = order[:pools_here[-1]]
            t = time.perf_counter()
            if kind == "exact":
                score = lse_maxsim(read_rows(regions, np.sort(rows)).astype(np.float32), words, lam)
                score = score[np.argsort(np.argsort(rows))]  # back to the probe order
            else:
                score = coded[kind].code_scores(sims, rows, words)
            times[kind].append(time.perf_counter() - t)
            for p in pools_here:
                rank[kind, p][q] = int((score[:p] > score[pos]).sum())
        if (q + 1) % 100 == 0:
            print(f"  {q + 1}/{len(truth)} queries, {time.perf_counter() - t_start:.0f} s", flush=True)

    out = {"split": args.split, "size": n, "queries": len(truth), "ks": ks, "pools": args.pools,
           "bytes_per_image": {kind: coded[kind].nbytes / n for kind in coded}, "recall": {}, "pool_recall": {},
           "rescore_p50_ms": {kind: 1000 * float(np.median(t)) if t else None for kind, t in times.items()}}
    print(f"\n{args.split}, {n:,} images, {len(truth)} queries: stage-1 recall@K (%) by residual codes and shortlist "
          f"rule REFINE:SHORTLIST")
    print("| codes | bytes/image | re-score p50 (vs pca16) | " + " | ".join(
        f"K {k}, {r}:{s}" for r, s in pools for k in ks) + " |")
    print("|---" * (3 + len(pools) * len(ks)) + "|")
    for kind in kinds:
        cells = []
        for r, s in pools:
            for k in ks:
                p = pool_of[r, s, k]
                if kind == "exact" and p > args.exact_pool:
                    cells.append("")
                    continue
                value = float(100 * (rank[kind, p] < k).mean())
                out["recall"][f"{kind} K{k} {r}:{s}"] = value
                cells.append(f"{value:.1f}")
        t = out["rescore_p50_ms"][kind]
        ratio = f" ({t / out['rescore_p50_ms']['pca16']:.2f}x)" if t and out["rescore_p50_ms"].get("pca16") else ""
        size = f"{out['bytes_per_image'][kind]:,.0f}" if kind in coded else "disk"
        print(f"| {kind} | {size} | {t:.1f} ms{ratio} | " + " | ".join(cells) + " |")
    cells = []
    for r, s in pools:
        for k in ks:
            value = float(100 * (probe_pos < pool_of[r, s, k]).mean())
            out["pool_recall"][f"K{k} {r}:{s}"] = value
            cells.append(f"{value:.1f}")
    print("| (shortlist recall) | | | " + " | ".join(cells) + " |")

    if args.full_queries:  # the exact LSE-MaxSim over the whole gallery: a perfect screen of this score
        m = min(args.full_queries, len(truth))
        scores = np.zeros((n, m))
        all_words = torch.from_numpy(np.concatenate([emb[q, :int(lengths[q])] for q in range(m)]))
        ends = np.cumsum(lengths[:m].astype(np.int64))
        for s in range(0, n, 512):  # every query's words at once; (512 x n_reg, sum L) products per block
            block = torch.from_numpy(read_rows(regions, slice(s, s + 512)).astype(np.float32))
            best = (block @ all_words.T).amax(dim=1).double()  # (N, sum L)
            for q in range(m):
                scores[s:s + len(block), q] = (torch.logsumexp(lam * best[:, ends[q] - lengths[q]:ends[q]], dim=1)
                                               / lam).numpy()
        full = (scores > scores[truth[:m], np.arange(m)][None]).sum(axis=0)
        out["full_maxsim_recall"] = {k: float(100 * (full < k).mean()) for k in ks}
        out["full_queries"] = m
        first = {k: pool_of[(*pools[0], k)] for k in ks}
        out["screened_on_full_queries"] = {f"{kind} K{k}": float(100 * (rank[kind, first[k]][:m] < k).mean())
                                           for kind in kinds for k in ks
                                           if kind != "exact" or first[k] <= args.exact_pool}
        print(f"exact LSE-MaxSim over all {n:,} images, first {m} queries: recall@K "
              + ", ".join(f"{k}: {v:.1f}" for k, v in out["full_maxsim_recall"].items())
              + "; the screens on the same queries (rule " + ":".join(map(str, pools[0])) + "): "
              + ", ".join(f"{key} {v:.1f}" for key, v in out["screened_on_full_queries"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
