"""The token screen's K by gallery size, measured on DEV queries (never test): ``scan_viz.retrieval.tokens.default_k``.

Dev galleries are built as ``bench_two_stage.py`` builds its test galleries: the dev split's region features
(``--data DIR/dev_ims.npy``, from ``python -m scan_viz.scenes --dev 1000 --seed 0`` and the bundled detector) and
perturbed copies of them up to each size. For ``--queries`` seeded dev captions the exhaustive SCAN top 10 is
computed over the whole gallery; the screen's top K keeps a fraction of those 10 images ("keep@K"). The rule's K for
a size is the smallest K of ``--ks`` whose keep@K reaches ``--target`` percent; sizes between the measured ones
are interpolated in log-log space (beyond the largest: the last segment's slope).

    python benchmarks/token_k_rule.py --data DIR --sizes 1000,10000,100000 --work DIR
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
from bench_two_stage import CHUNK, embeddings, perturbed_features  # noqa: E402

from scan_viz.heads.engine import score_matrix  # noqa: E402
from scan_viz.model import load_model  # noqa: E402
from scan_viz.pipeline import DEFAULT_MODEL  # noqa: E402
from scan_viz.regions.store import load_precomp  # noqa: E402
from scan_viz.regions.store import read_rows  # noqa: E402
from scan_viz.retrieval.stage1 import find_stage1  # noqa: E402
from scan_viz.retrieval.query_map import map_words, query_map_option  # noqa: E402
from scan_viz.retrieval.tokens import TokenIndex, load_token_index, token_settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="precomputed layout holding dev_ims.npy and dev_caps.txt")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ks", default="50,100,200,300,500,700,1000,1500,2000,3000,4000")
    ap.add_argument("--target", type=float, default=99.0)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--work", required=True)
    ap.add_argument("--json", help="write the measurements here")
    ap.add_argument("--query-map", default="auto", choices=("auto", "none"),
                    help="the screen's query words through the model's distilled map (auto, what search does) or not")
    args = ap.parse_args()
    torch.set_num_threads(1)
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
    out = {"target": args.target, "queries": args.queries, "sizes": {},
           "query_map": None if query_map is None else str(query_map.path)}
    for n in [int(s) for s in args.sizes.split(",")]:
        features = perturbed_features(base, n, args.noise, work)
        regions, _ = embeddings(model, stage1, features, work, f"dev_{n}_{args.noise:g}")
        folder = work / f"tokens_dev_{n}_{args.noise:g}_{settings['fingerprint']}"
        index = load_token_index(folder, settings["fingerprint"], n)
        if index is None:
            index = TokenIndex.build(regions, **settings)
            index.save(folder)
        t = time.perf_counter()
        scores = np.concatenate([score_matrix(head, torch.from_numpy(read_rows(regions, slice(s, s + CHUNK))).float(),
                                              caps.emb, caps.lengths) for s in range(0, n, CHUNK)])
        top10 = np.argsort(-scores, axis=0, kind="stable")[:10].T  # (queries, 10)
        exhaustive_s = time.perf_counter() - t
        kmax = min(n, max(ks))
        screened = [index.screen(map_words(query_map, caps.emb[q, :int(caps.lengths[q])]), kmax)[0]
                    for q in range(len(pick))]
        keep = {}
        for k in ks:
            if k > n:
                continue
            keep[k] = float(100 * np.mean([np.isin(top10[q], screened[q][:k]).mean() for q in range(len(pick))]))
        reached = [k for k in sorted(keep) if keep[k] >= args.target]
        out["sizes"][n] = {"keep": keep, "k": reached[0] if reached else None, "exhaustive_s": exhaustive_s}
        print(f"{n:,} dev images: keep@K " + ", ".join(f"{k}: {v:.1f}" for k, v in keep.items())
              + f" -> K {out['sizes'][n]['k']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
