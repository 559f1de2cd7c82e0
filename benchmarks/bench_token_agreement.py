"""Bundled gallery: does two-stage search with stage 1 keeping 10% of the images give exhaustive search's top 10?

For ``--queries`` seeded test captions of ``examples/gallery`` (1,000 images), SCAN t2i scores every image
(exhaustive); each screen (the pooled stage-1 head, the token screen of scan_viz.retrieval.tokens) passes its top
``--k`` images to stage 2 (the same SCAN scores), whose top 10 is compared with exhaustive's: the share of top-10
results in common, and the share of captions whose two top-10 sets are identical.

    python benchmarks/bench_token_agreement.py --queries 1000 --k 100
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from scan_viz.heads.engine import score_matrix
from scan_viz.gallery import load_gallery
from scan_viz.model import load_model
from scan_viz.pipeline import DEFAULT_GALLERY, DEFAULT_MODEL
from scan_viz.retrieval.query_map import find_query_map, map_words
from scan_viz.retrieval.tokens import TokenIndex, token_settings
from scan_viz.retrieval.stage1 import find_stage1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, gallery = load_model(DEFAULT_MODEL), load_gallery(DEFAULT_GALLERY)
    regions = model.encode_images(gallery.regions.features)
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(gallery.captions), min(args.queries, len(gallery.captions)), replace=False))
    caps = model.encode_captions([gallery.captions[i] for i in pick])
    scores = score_matrix(model.head(), regions, caps.emb, caps.lengths)  # (n_images, n_queries)
    exhaustive = np.argsort(-scores, axis=0, kind="stable")[:10].T

    def agreement(candidates) -> tuple[float, float]:
        shared, same = [], []
        for q, rows in enumerate(candidates):
            rows = np.asarray(rows)
            top = set(rows[np.argsort(-scores[rows, q], kind="stable")[:10]])
            shared.append(len(top & set(exhaustive[q])) / 10)
            same.append(top == set(exhaustive[q]))
        return 100 * float(np.mean(shared)), 100 * float(np.mean(same))

    stage1 = find_stage1(model)
    pooled = stage1.caption_vectors(caps.emb, caps.lengths) @ stage1.image_vectors(regions).T
    print(f"{len(pick)} captions, K = {args.k} of {len(gallery)} images")
    print("pooled stage 1: top-10 results shared %.1f%%, identical top-10 sets %.1f%%"
          % agreement(np.argsort(-pooled, axis=1, kind="stable")[:, :args.k]))
    index = TokenIndex.build(regions, None, **token_settings(model))
    query_map = find_query_map(model)
    for name, mapping in (("words as they are", None), ("the distilled query map", query_map)):
        if name != "words as they are" and mapping is None:
            continue
        t = time.perf_counter()
        candidates = [index.screen(map_words(mapping, caps.emb[q, :int(caps.lengths[q])]), args.k)[0]
                      for q in range(len(pick))]
        per_query = (time.perf_counter() - t) / len(pick) * 1000
        print(f"token stage 1, {name}: top-10 results shared %.1f%%, identical top-10 sets %.1f%% "
              "(screen %.1f ms a query)" % (agreement(candidates) + (per_query,)))


if __name__ == "__main__":
    main()
