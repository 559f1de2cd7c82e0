"""Two-stage retrieval at gallery sizes 1K .. 1M, against exhaustive search measured in the same run.

Galleries beyond the bundled one (1,000 test images) are PERTURBED COPIES of its detector region features:
copy j > 0 of image i is ``max(0, x + noise * std_d * N(0, 1))`` per feature dimension d (std over the bundled
regions), stored float16 in a memory-mapped .npy under ``--work``; only the stage-1 vectors (and FAISS index)
live in RAM. The queries are the bundled test captions, whose true image is the original (copy 0).

Per size, in a fresh process each (so RSS is the size's own): the stage-1 recall@K curve; two-stage search at
each K of ``--stage1-k`` (stage-1 FAISS search + re-scoring the K candidates' region embeddings, float16 on disk
and read with ``pread``, as ``scan-viz index`` stores them): p50 text-query latency (query encoding included,
after ``--warmup`` other captions) and R@1/5/10; exhaustive search: p50 latency timed query by query
(``--exhaustive-queries``, region embeddings in RAM as float32, the app's way, up to ``--exhaustive-max`` images;
above that, ``--exhaustive-disk-queries`` queries stream them from disk) and R@1/5/10 of every query from the full
score matrix (batched, ``--batch-threads``); RSS after the two-stage queries and at the end; disk and stage-1
RAM per image. Indexing throughput (detector + encoders + stage-1 head, images/s) locally and with Ray on 2 local
workers: ``--index-images N``.

    python benchmarks/bench_two_stage.py --sizes 1000,10000,100000,1000000 --queries 1000 --work DIR --index-images 400
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scan_viz.gallery import load_gallery
from scan_viz.heads.engine import score_matrix
from scan_viz.io import atomic_path
from scan_viz.model import load_model
from scan_viz.pipeline import DEFAULT_GALLERY, DEFAULT_MODEL
from scan_viz.regions.store import read_rows
from scan_viz.retrieval.search import EXACT_MAX, TwoStageSearch, build_index
from scan_viz.retrieval.stage1 import CURVE_KS, find_stage1

CHUNK = 2048


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def perturbed_blocks(base: np.ndarray, n: int, noise: float, seed: int = 0):
    """(start, rows as float16) in order: the originals, then perturbed copies (see the module doc), one copy of
    ``base`` at a time, without holding the gallery anywhere."""
    std = base.reshape(-1, base.shape[-1]).std(axis=0)
    rng = np.random.default_rng(seed)
    n_base = len(base)
    for start in range(0, n, n_base):
        rows = min(n_base, n - start)
        block = base[:rows]
        if start:
            block = np.maximum(0, block + noise * std * rng.standard_normal(block.shape, dtype=np.float32))
        yield start, block.astype(np.float16)


def perturbed_features(base: np.ndarray, n: int, noise: float, work: Path, seed: int = 0) -> np.ndarray:
    """(n, n_regions, img_dim) float16 memmap of :func:`perturbed_blocks`."""
    path = work / f"features_{n}_{noise:g}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n,) + base.shape[1:])
        for start, block in perturbed_blocks(base, n, noise, seed):
            out[start:start + len(block)] = block
        out.flush()
        del out
    return np.load(path, mmap_mode="r")


def embeddings(model, stage1, features: np.ndarray, work: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """Region embeddings (n, n_regions, d) float16 memmap on disk, and stage-1 vectors (n, dim) in RAM.

    The stage-1 vectors are pooled from the stored float16 region embeddings (what a search re-reads), so a new
    stage-1 head reuses the region file of the same SCAN model.
    """
    regions_path = work / f"regions_{tag}_{stage1.base_fingerprint}.npy"
    vectors_path = work / f"vectors_{tag}_{stage1.fingerprint}.npy"
    if not regions_path.is_file():
        n, n_reg, _ = features.shape
        with atomic_path(regions_path) as tmp:
            regions = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                                shape=(n, n_reg, model.config.embed_size))
            for s in range(0, n, CHUNK):
                regions[s:s + CHUNK] = model.encode_images(np.asarray(features[s:s + CHUNK], np.float32)).numpy()
            regions.flush()
            del regions
    regions = np.load(regions_path, mmap_mode="r")
    if not vectors_path.is_file():
        vectors = np.zeros((len(regions), stage1.head.dim), dtype=np.float32)
        for s in range(0, len(regions), CHUNK):
            vectors[s:s + CHUNK] = stage1.image_vectors(torch.from_numpy(np.array(regions[s:s + CHUNK], np.float32)))
        np.save(vectors_path, vectors)
    return regions, np.load(vectors_path)


def p50(times: list[float]) -> float:
    return float(np.percentile(times, 50)) * 1000


def recalls(ranks: np.ndarray) -> dict[str, float]:
    return {f"r{k}": float(100 * (ranks < k).mean()) for k in (1, 5, 10)}


def recall_cell(m: dict[str, float]) -> str:
    return "/".join(f"{m[f'r{k}']:.1f}" for k in (1, 5, 10))


def exhaustive_ranks(head, regions_disk: np.ndarray, words: torch.Tensor, lengths: torch.Tensor,
                     caption_image: np.ndarray) -> np.ndarray:
    """0-based rank of each caption's true image among ALL gallery images (an image scoring exactly as high
    does not count against it), from every score, computed in image chunks batched over the captions: what
    exhaustive search returns, measured for quality (its latency is timed per query elsewhere)."""
    def scores_of(rows) -> np.ndarray:
        return score_matrix(head, torch.from_numpy(read_rows(regions_disk, rows)).float(), words, lengths)

    truth = scores_of(np.asarray(caption_image))[np.arange(len(caption_image)), np.arange(len(caption_image))]
    above = np.zeros(len(caption_image), dtype=np.int64)
    for s in range(0, len(regions_disk), CHUNK):
        above += (scores_of(slice(s, s + CHUNK)) > truth[None]).sum(axis=0)
    return above


def p95(times: list[float]) -> float:
    return float(np.percentile(times, 95)) * 1000


def token_index(model, regions_disk, n, args, work, result: dict):
    """The size's token index under ``work``: loaded, or built (or re-coded) and saved; times go into ``result``."""
    from scan_viz.retrieval.tokens import TokenIndex, codes_name, load_token_index, residual_codes, token_settings

    settings = token_settings(model)
    folder = work / f"tokens_{n}_{args.noise:g}_{settings['fingerprint']}"
    t0 = time.perf_counter()
    index = load_token_index(folder, settings["fingerprint"], n)
    if index is None:
        index = TokenIndex.build(regions_disk, **settings, **residual_codes(args.token_codes))
        result["tokens_build_s"] = time.perf_counter() - t0
        index.save(folder)
    elif codes_name(index) != args.token_codes or not index.fitted_to(settings["query_moment"]):
        # the saved centroids and lists, other residual codes (or codes fitted otherwise)
        index = index.with_residuals(regions_disk, **residual_codes(args.token_codes),
                                     query_moment=settings["query_moment"])
        result["tokens_recode_s"] = time.perf_counter() - t0
        index.save(folder)
    else:
        result["tokens_load_s"] = time.perf_counter() - t0
    return index


def region_grams_file(regions_disk: np.ndarray, path: Path) -> np.ndarray:
    """The Gram matrices of a region file's images (``scan_viz.retrieval.tokens.region_grams``), float32 memmap,
    made once under --work."""
    from scan_viz.retrieval.tokens import region_grams

    if not path.is_file():
        n, k = regions_disk.shape[:2]
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, k, k))
            region_grams(regions_disk, out=out)
            out.flush()
            del out
    return np.load(path, mmap_mode="r")


def bench_tokens(model, head, features, regions_disk, regions_stage2, captions, caption_image, warmup, n, args, work,
                 result: dict, grams=None) -> None:
    """The token-level stage 1 (scan_viz.retrieval.tokens): index build, size, recall@K, two-stage latency and R@
    (stage 2 reads ``regions_stage2``: the file, or the same float16 embeddings in RAM; and ``grams``, their Gram
    matrices, where given)."""
    from scan_viz.retrieval.tokens import codes_name, default_k

    index = token_index(model, regions_disk, n, args, work, result)
    result["tokens_codes"] = codes_name(index)
    result["tokens_ram_bytes_per_image"] = index.nbytes / n
    result["tokens_centroids"] = int(len(index.centroids))
    result["rss_tokens_index_gb"] = rss_gb()
    ks = [int(k) for k in args.token_k.split(",")] if args.token_k else [default_k(n)]
    result["token_ks"], result["token_default_k"] = ks, default_k(n)
    from scan_viz.retrieval.query_map import query_map_option

    query_map = query_map_option(model, args.query_map)
    result["tokens_query_map"] = None if query_map is None else str(query_map.path)
    search = TwoStageSearch(model, [str(i) for i in range(n)], features, None, regions=regions_stage2,
                            screen="tokens", token_index=index, query_map=query_map, grams=grams)
    caps = model.encode_captions(captions)
    top_k = max(CURVE_KS + tuple(ks))
    times, hit_rank = [], []
    for q in range(len(captions)):
        t = time.perf_counter()
        rows, _ = index.screen(search.screen_words(caps.emb[q, :int(caps.lengths[q])]), top_k)
        times.append(time.perf_counter() - t)
        where = np.flatnonzero(rows == caption_image[q])
        hit_rank.append(where[0] if len(where) else 10**9)
    hit_rank = np.array(hit_rank)
    result["tokens_screen_p50_ms"] = p50(times)
    # the curve: the top kk of the largest K's screen (its shortlist is the largest K's); at each K of --token-k,
    # the screen two-stage search runs at that K (its own, smaller shortlist: max(REFINE x K, SHORTLIST))
    result["tokens_recall"] = {kk: float(100 * (hit_rank < kk).mean())
                               for kk in sorted(set(CURVE_KS + tuple(ks))) if kk <= n or kk in ks}
    for k in ks:
        if k < top_k:
            result["tokens_recall"][k] = float(100 * np.mean([
                caption_image[q] in index.screen(search.screen_words(caps.emb[q, :int(caps.lengths[q])]), k)[0]
                for q in range(len(captions))]))
    for text in warmup:
        search.search_text(text, k=10, stage1_k=max(ks), head=head)
    result["tokens_two_stage"], result["tokens_two_stage_ranks"] = {}, {}
    for k in ks:
        times, ranks = [], []
        for text, truth in zip(captions, caption_image):
            t = time.perf_counter()
            hits = search.search_text(text, k=10, stage1_k=k, head=head)
            times.append(time.perf_counter() - t)
            ids = [int(h.id) for h in hits]
            ranks.append(ids.index(truth) if truth in ids else 10**9)
        result["tokens_two_stage"][k] = {"p50_ms": p50(times), "p95_ms": p95(times), **recalls(np.array(ranks))}
        result["tokens_two_stage_ranks"][k] = ranks
        print(f"  {n:,} images, token screen, K {k}: two-stage p50 {p50(times):.1f} ms, p95 {p95(times):.1f} ms, "
              f"R@1/5/10 {recall_cell(result['tokens_two_stage'][k])}, stage-1 recall@K "
              f"{result['tokens_recall'][k]:.1f}", flush=True)
    result["rss_tokens_two_stage_gb"] = rss_gb()
    del search, index


def recall_at(ranks: np.ndarray, ks) -> dict[int, float]:
    """Exhaustive search's own recall@K (the true image among its top K): what a screen that ranked exactly like
    the exhaustive score would reach at each K."""
    return {int(k): float(100 * (ranks < k).mean()) for k in sorted(set(ks))}


def _subset(result: dict, ranks: np.ndarray, full: bool = False) -> None:
    """Exhaustive R@ of the first len(ranks) queries (at 1M the only exhaustive ranks), next to the two-stage R@ of
    the same queries; ``full``: ranks among every image (not only within a top 10), so recall@K too."""
    m = len(ranks)
    result["exhaustive_timed"], result["exhaustive_timed_queries_ranked"] = recalls(ranks), m
    if full:
        result["exhaustive_timed_recall_at"] = recall_at(ranks, CURVE_KS + tuple(result.get("token_ks", ())))
    for key in ("two_stage_ranks", "tokens_two_stage_ranks"):
        if key in result:
            result[key.replace("_ranks", "_on_timed")] = {k: recalls(np.array(r[:m])) for k, r in result[key].items()}


def bench_exhaustive(model, head, features, regions_disk, captions, caption_image, n, args, result: dict) -> None:
    """Exhaustive search: p50 latency query by query, R@ of the timed queries, and (in RAM) of every query."""
    caps = model.encode_captions(captions)
    # exhaustive, per query: region embeddings in RAM (float32, the app's way) up to --exhaustive-max images;
    # above it they stay on disk and each query streams them (--exhaustive-disk-queries queries)
    in_ram = n <= args.exhaustive_max
    n_timed = args.exhaustive_queries if in_ram else args.exhaustive_disk_queries
    if n_timed:
        regions = torch.from_numpy(np.asarray(regions_disk, dtype=np.float32)) if in_ram else regions_disk
        timed = TwoStageSearch(model, [str(i) for i in range(n)], features, None, regions=regions)
        times, ranks = [], []
        for text, truth in zip(captions[:n_timed], caption_image[:n_timed]):
            t = time.perf_counter()
            hits = timed.search_text(text, k=10, stage1_k=0, head=head)
            times.append(time.perf_counter() - t)
            ids = [int(h.id) for h in hits]
            ranks.append(ids.index(truth) if truth in ids else 10**9)
            print(f"    exhaustive query {len(times)}/{n_timed}: {times[-1]:.1f} s", flush=True)
        # R@ of the timed queries themselves (at 1M the only exhaustive ranks), next to the two-stage R@ of the
        # same queries
        _subset(result, np.array(ranks))
        result["exhaustive_p50_ms"] = p50(times)
        result["exhaustive_timed_queries"] = len(times)
        result["exhaustive_regions"] = "RAM, float32" if in_ram else "disk, float16"
        del regions, timed
    n_ranked = min(args.exhaustive_disk_ranks, len(captions))
    if not in_ram and n_ranked:  # the first queries' exhaustive ranks in one batched pass over the region file
        t0 = time.perf_counter()
        _subset(result, exhaustive_ranks(head, regions_disk, caps.emb[:n_ranked], caps.lengths[:n_ranked],
                                         np.asarray(caption_image[:n_ranked])), full=True)
        result["exhaustive_ranks_s"] = time.perf_counter() - t0
    if in_ram:  # the exhaustive ranks of every query, batched (more threads: a quality number, not a latency)
        before = torch.get_num_threads()
        torch.set_num_threads(args.batch_threads)
        t0 = time.perf_counter()
        ranks = exhaustive_ranks(head, regions_disk, caps.emb, caps.lengths, np.asarray(caption_image))
        result["exhaustive"] = recalls(ranks)
        result["exhaustive_recall_at"] = recall_at(ranks, CURVE_KS + tuple(result.get("token_ks", ())))
        result["exhaustive_ranks_s"] = time.perf_counter() - t0
        torch.set_num_threads(before)


def bench_size(model, stage1, base, captions, caption_image, warmup, n, args, work) -> dict:
    features = perturbed_features(base, n, args.noise, work)
    t0 = time.perf_counter()
    regions_disk, vectors = embeddings(model, stage1, features, work, f"{n}_{args.noise:g}")
    encode_s = time.perf_counter() - t0
    head = model.head()
    # two-stage search's region embeddings: the float16 file, read per query (default), or the same float16 numbers
    # loaded into RAM once (--stage2-regions ram), as a server that holds its gallery in memory does
    regions_stage2 = regions_disk if args.stage2_regions == "disk" else np.load(regions_disk.filename)
    grams = None
    if args.stage2_grams == "yes" and args.stage2_regions == "ram":  # in RAM beside the regions (made once on disk)
        path = Path(str(regions_disk.filename).replace("regions_", "grams_", 1))
        grams = np.load(region_grams_file(regions_disk, path).filename)
    ks = [int(k) for k in args.stage1_k.split(",")] if args.stage1_k else \
        [stage1.default_k, 2 * stage1.default_k, 4 * stage1.default_k]
    result = {"images": n, "stage1_ks": ks, "queries": len(captions),
              "disk_bytes_per_image": int(features[0].nbytes + regions_disk[0].nbytes),
              "stage1_ram_bytes_per_image": int(vectors[0].nbytes), "stage2_regions": f"{args.stage2_regions}, float16",
              "stage2_grams": "yes" if grams is not None else "no"}
    screens = args.screens.split(",")
    if "tokens" in screens:  # first, so its RSS is not the pooled index's
        del vectors
        bench_tokens(model, head, features, regions_disk, regions_stage2, captions, caption_image, warmup, n, args,
                     work, result, grams)
        if "pooled" in screens:
            vectors = np.load(work / f"vectors_{n}_{args.noise:g}_{stage1.fingerprint}.npy")
    if "pooled" not in screens:
        del regions_stage2, grams
        bench_exhaustive(model, head, features, regions_disk, captions, caption_image, n, args, result)
        result["rss_peak_gb"] = rss_gb()
        result["stage1_encode_s"] = encode_s
        return result
    t0 = time.perf_counter()
    search = TwoStageSearch(model, [str(i) for i in range(n)], features, stage1, regions=regions_stage2,
                            image_vectors=vectors, grams=grams)
    result["index_build_s"] = time.perf_counter() - t0
    result["index"] = type(search.image_index).__name__
    del vectors  # as in `scan-viz search`: only the index keeps the stage-1 vectors
    caps = model.encode_captions(captions)
    queries = stage1.caption_vectors(caps.emb, caps.lengths)
    # stage-1 recall@K over the queries (the true image is row caption_image, an original)
    _, found = search.image_index.search(queries, max(CURVE_KS + tuple(ks)))
    hit_rank = np.array([np.flatnonzero(row == t)[0] if (row == t).any() else 10**9
                         for row, t in zip(found, caption_image)])
    result["stage1_recall"] = {kk: float(100 * (hit_rank < kk).mean())
                               for kk in sorted(set(CURVE_KS + tuple(ks))) if kk <= n or kk in ks}
    # two-stage at each K: per-query latency (query encoding included) and the final ranks
    two_ranks = {}
    result["two_stage"] = {}
    for text in warmup:  # a server that has been answering queries: other captions, at the largest K
        search.search_text(text, k=10, stage1_k=max(ks), head=head)
    for k in ks:
        times, ranks = [], []
        for text, truth in zip(captions, caption_image):
            t = time.perf_counter()
            hits = search.search_text(text, k=10, stage1_k=k, head=head)
            times.append(time.perf_counter() - t)
            ids = [int(h.id) for h in hits]
            ranks.append(ids.index(truth) if truth in ids else 10**9)
        two_ranks[k] = np.array(ranks)
        result.setdefault("two_stage_ranks", {})[k] = ranks
        result["two_stage"][k] = {"p50_ms": p50(times), "p95_ms": p95(times), **recalls(two_ranks[k])}
        print(f"  {n:,} images, K {k}: two-stage p50 {p50(times):.1f} ms, R@1/5/10 "
              f"{recall_cell(result['two_stage'][k])}", flush=True)
    result["rss_two_stage_gb"] = rss_gb()  # peak so far: encoders, stage-1 index, queries
    # exact vs IVF search latency on the same vectors (where the switch belongs)
    vectors = np.load(work / f"vectors_{n}_{args.noise:g}_{stage1.fingerprint}.npy")
    for kind in ("flat", "ivf"):
        index = search.image_index if kind == ("flat" if n <= EXACT_MAX else "ivf") else build_index(vectors, kind)
        times = []
        for q in queries[:50]:
            t = time.perf_counter()
            index.search(q[None], ks[0])
            times.append(time.perf_counter() - t)
        result[f"stage1_{kind}_p50_ms"] = p50(times)
        _, top = index.search(queries, ks[0])
        result[f"stage1_{kind}_recall_at_k"] = float(100 * np.mean([t in row for row, t in zip(top, caption_image)]))
        del index
    del vectors, search, regions_stage2, grams
    bench_exhaustive(model, head, features, regions_disk, captions, caption_image, n, args, result)
    result["rss_peak_gb"] = rss_gb()
    result["stage1_encode_s"] = encode_s
    return result


def bench_indexing(n_images: int, model_name: str) -> dict:
    """images/s of `scan-viz index` on copies of the bundled gallery's images, locally and on Ray (2 workers)."""
    from scan_viz.index import index_images

    gallery = load_gallery(DEFAULT_GALLERY)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for image_id in gallery.ids[:n_images]:
            shutil.copyfile(gallery.image_path(image_id), folder / f"{image_id}.jpg")
        for label, ray in (("local", None), ("ray_2_workers", "auto")):
            if ray:
                import ray as ray_module

                ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            t = time.perf_counter()
            index_images(folder, Path(tmp) / f"gallery_{label}", model_name, ray=ray, workers=2, chunk=8)
            out[f"{label}_images_per_s"] = n_images / (time.perf_counter() - t)
            if ray:
                ray_module.shutdown()
    return out


def _int_keys(r: dict) -> dict:
    """A size's result read back from JSON: the K-keyed tables with int keys again."""
    for key in ("two_stage", "stage1_recall", "tokens_two_stage", "tokens_recall", "two_stage_ranks",
                "tokens_two_stage_ranks", "two_stage_on_timed", "tokens_two_stage_on_timed", "exhaustive_recall_at",
                "exhaustive_timed_recall_at"):
        if key in r:
            r[key] = {int(k): v for k, v in r[key].items()}
    return r


def _without(argv: list[str], flag: str) -> list[str]:
    """argv without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--queries", type=int, default=200, help="test captions used as queries (seeded sample)")
    ap.add_argument("--warmup", type=int, default=200,
                    help="captions outside the query sample searched (at the largest K) before any timing")
    ap.add_argument("--exhaustive-queries", type=int, default=50, help="queries timed one by one, exhaustively")
    ap.add_argument("--exhaustive-max", type=int, default=100_000,
                    help="largest gallery whose region embeddings exhaustive search holds in RAM; above it, "
                         "--exhaustive-disk-queries queries stream them from disk and no exhaustive ranks are made")
    ap.add_argument("--exhaustive-disk-queries", type=int, default=3)
    ap.add_argument("--exhaustive-disk-ranks", type=int, default=0,
                    help="above --exhaustive-max: the exhaustive ranks of the first N queries, in one batched pass "
                         "over the region file (compared with the two-stage ranks of the same N queries)")
    ap.add_argument("--batch-threads", type=int, default=max(1, os.cpu_count() or 1),
                    help="torch threads for the batched exhaustive ranks (not timed per query)")
    ap.add_argument("--stage1-k", default="",
                    help="comma-separated stage-1 K values to measure (default: the head's K, 2x and 4x it)")
    ap.add_argument("--screens", default="tokens,pooled",
                    help="stage-1 kinds to measure: tokens (scan_viz.retrieval.tokens), pooled, or both")
    ap.add_argument("--token-k", default="",
                    help="comma-separated K values for the token screen (default: its rule's K for the size)")
    ap.add_argument("--token-codes", default="", help="the token screen's residual codes: none, pcaR or pqM "
                                                      "(default: the library's, N_RESIDUAL and RESIDUAL_INT8 "
                                                      "of scan_viz.retrieval.tokens)")
    ap.add_argument("--resume", action="store_true",
                    help="reuse a size's finished result (result_N.json under --work) instead of measuring it again")
    ap.add_argument("--noise", type=float, default=0.5, help="perturbation, in per-dimension stds")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "bench-two-stage"))
    ap.add_argument("--index-images", type=int, default=0, help="also measure indexing throughput on N images")
    ap.add_argument("--query-map", default="auto", choices=("auto", "none"),
                    help="token screen: the query words through the model's distilled map (auto: as search does, "
                         "when the model has one) or as they are (none)")
    ap.add_argument("--stage2-regions", default="disk", choices=("disk", "ram"),
                    help="where two-stage search reads the candidates' float16 region embeddings: the memory-mapped "
                         "file, with pread per query (disk), or loaded into RAM once (ram; the exhaustive run holds "
                         "them in RAM too, as float32)")
    ap.add_argument("--stage2-grams", default="yes", choices=("yes", "no"),
                    help="with --stage2-regions ram: whether stage 2 also holds the images' Gram matrices in RAM "
                         "(float32, scan_viz.retrieval.tokens.region_grams), from which SCAN t2i takes each attended "
                         "vector's norm (with the regions read from disk they are not used: read per query they made "
                         "search slower)")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--prepare", action="store_true",
                    help="only write the sizes' feature, region and vector files (and, with the token screen, its "
                         "index) into --work, then exit (a later run measures RSS without the generation's page "
                         "cache or the index build)")
    args = ap.parse_args()
    if not args.token_codes:
        from scan_viz.retrieval.tokens import N_RESIDUAL, RESIDUAL_INT8

        args.token_codes = f"pca{N_RESIDUAL}" + ("i8" if RESIDUAL_INT8 else "")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    stage1 = find_stage1(model)
    if stage1 is None:
        raise SystemExit(f"no stage-1 head for {args.model}: train one with python -m scan_viz.train.stage1")
    gallery = load_gallery(DEFAULT_GALLERY)
    base = np.asarray(gallery.regions.features, dtype=np.float32)
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(gallery.captions), size=min(args.queries, len(gallery.captions)), replace=False))
    captions = [gallery.captions[i] for i in pick]
    caption_image = gallery.caption_image[pick]
    rest = np.setdiff1d(np.arange(len(gallery.captions)), pick)
    warmup = [gallery.captions[i] for i in rng.choice(rest, size=min(args.warmup, len(rest)), replace=False)]
    print(f"machine: {platform.machine()} x{os.cpu_count()} threads; torch {torch.__version__} "
          f"x{torch.get_num_threads()} threads; model {args.model}; stage-1 head {stage1.path.name} "
          f"(default K {stage1.default_k}); {len(captions)} queries; noise {args.noise}")
    results = {"sizes": []}
    if args.prepare:
        for n in [int(s) for s in args.sizes.split(",")]:
            t0 = time.perf_counter()
            regions, _ = embeddings(model, stage1, perturbed_features(base, n, args.noise, work), work,
                                    f"{n}_{args.noise:g}")
            print(f"prepared {n:,} images in {time.perf_counter() - t0:.0f} s", flush=True)
            if "tokens" in args.screens.split(","):
                t0 = time.perf_counter()
                token_index(model, regions, n, args, work, {})  # built here, so the measured run only loads it
                print(f"token index of {n:,} images ready in {time.perf_counter() - t0:.0f} s, peak RSS "
                      f"{rss_gb():.2f} GB", flush=True)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        done = work / f"result_{n}_{args.noise:g}.json"
        if args.resume and done.is_file():
            r = _int_keys(json.loads(done.read_text(encoding="utf-8")))
            print(f"{n:,} images: reused {done}", flush=True)
        elif len(sizes) == 1:
            r = bench_size(model, stage1, base, captions, caption_image, warmup, n, args, work)
            done.write_text(json.dumps(r) + "\n", encoding="utf-8")
        else:  # each size in a fresh process, so its RSS is its own (ru_maxrss is a lifetime peak)
            with tempfile.TemporaryDirectory() as tmp:
                argv = [a for a in sys.argv[1:]]
                argv = _without(_without(_without(argv, "--sizes"), "--json"), "--index-images")
                subprocess.run([sys.executable, __file__, *argv, "--sizes", str(n), "--json", f"{tmp}/one.json"],
                               check=True)
                r = _int_keys(json.loads(Path(f"{tmp}/one.json").read_text(encoding="utf-8"))["sizes"][0])
        results["sizes"].append(r)
        print(json.dumps(r), flush=True)
    if args.index_images:
        results["indexing"] = bench_indexing(args.index_images, args.model)
        print(json.dumps(results["indexing"]), flush=True)
    print("| images | stage 1 | K | stage-1 recall@K | two-stage p50 / p95 | vs exhaustive p50 | two-stage R@1/5/10 "
          "| exhaustive R@1/5/10 | timed queries: two-stage / exhaustive R@1/5/10 | RSS after two-stage / peak |")
    print("|---" * 10 + "|")
    for r in results["sizes"]:
        ex = r.get("exhaustive_p50_ms")
        for screen, table, recall, rss in (("tokens", "tokens_two_stage", "tokens_recall", "rss_tokens_two_stage_gb"),
                                           ("pooled", "two_stage", "stage1_recall", "rss_two_stage_gb")):
            for k, two in r.get(table, {}).items():
                timed = r.get(f"{table}_on_timed", {}).get(k)
                cells = [f"{r['images']:,}", screen if screen == "tokens" else f"pooled ({r['index']})", f"{k:,}",
                         f"{r[recall][k]:.1f}", f"{two['p50_ms']:.1f} / {two['p95_ms']:.1f} ms",
                         f"{ex / two['p50_ms']:.1f}x faster ({ex:,.0f} ms)" if ex else "not run", recall_cell(two),
                         recall_cell(r["exhaustive"]) if "exhaustive" in r else "not run",
                         f"{recall_cell(timed)} / {recall_cell(r['exhaustive_timed'])} "
                         f"({r['exhaustive_timed_queries_ranked']} queries)" if timed else "",
                         f"{r[rss]:.2f} / {r['rss_peak_gb']:.2f} GB"]
                print("| " + " | ".join(cells) + " |")
    for r in results["sizes"]:
        for key, what in (("exhaustive_recall_at", "every query"), ("exhaustive_timed_recall_at", "ranked queries")):
            if key in r:
                print(f"{r['images']:,} images, exhaustive search's own recall@K ({what}): "
                      + ", ".join(f"{k}: {v:.1f}" for k, v in r[key].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
