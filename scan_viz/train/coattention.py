"""Train the co-attention re-ranker (stage 2, after Li et al., ICCV 2017) on a SCAN model's frozen encoders.

    python -m scan_viz.train.coattention --model scan-emoji-t2i --data DIR --out pretrained/scan-emoji-t2i-coattention

``DIR`` is a precomputed layout (``train_*`` and ``dev_*``) whose features fit the model. The encoders never
change, so region and word embeddings of the training subset are computed once. Each caption is paired with its
image (label 1) and with hard negatives (label 0): images that stage 1 ranks among the caption's best
``--neg-pool`` but that are not its image, ``--negatives`` of them drawn afresh each epoch. The loss is binary
cross-entropy on the matching logit. Stage 1 is the head trained on this model (:func:`scan_viz.retrieval.stage1.find_stage1`);
without one, the centred mean pooling that stage-1 training starts from stands in for it, both to mine the
negatives and to initialise the re-ranker. The epoch kept is the one with the best re-ranking R@1 + R@5 + R@10
on dev captions (each caption's stage-1 top ``--rerank-k`` re-ranked), reported next to SCAN re-ranking the same
candidates.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scan_viz.errors import ScanVizError, run_command
from scan_viz.evaluation.metrics import recall_metrics
from scan_viz.heads import MatchingHead
from scan_viz.heads.coattention_net import TRAIN_COMMAND, CoAttention, CoAttentionReranker
from scan_viz.model import ScanModel, load_model
from scan_viz.parts import model_fingerprint
from scan_viz.retrieval.search import candidate_scores, rerank_ranks, stage1_candidates
from scan_viz.retrieval.stage1 import Stage1Head, find_stage1, pool
from scan_viz.train.stage1 import init_as_centred_mean_pool, load_train_dev

ENCODE_BATCH = 1024
TEST_KS = (20, 50, 100, 200, 500)


@torch.no_grad()
def encode_split(model: ScanModel, features: np.ndarray, captions: list[str]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen encoders: regions (n_images, n_regions, d), words (n_captions, max_words, d), lengths (n_captions,)."""
    regions = torch.cat([model.encode_images(features[s:s + ENCODE_BATCH]) for s in range(0, len(features),
                                                                                            ENCODE_BATCH)])
    caps = model.encode_captions(captions)
    return regions, caps.emb, caps.lengths


def stage1_for(model: ScanModel, regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor
               ) -> tuple[Stage1Head, Stage1Head, str]:
    """Stage 1 for mining negatives and measuring, the linear head to initialise the re-ranker from, and a
    sentence saying which they are.

    The stage-1 head trained on this model when there is one, else centred mean pooling of ``regions`` /
    ``words`` (the linear head stage-1 training starts from); an MLP stage-1 head has no per-item part to copy,
    so the re-ranker then starts from centred mean pooling too.
    """
    centred = Stage1Head(model.config.embed_size, model.config.embed_size)
    init_as_centred_mean_pool(centred, pool(regions, None), pool(words, lengths))
    pooling = "centred mean pooling of the encoders' outputs (identity projections minus the training mean)"
    stage1 = find_stage1(model)
    if stage1 is None:
        return centred, centred, f"none trained on this model: negatives and initialisation from {pooling}"
    name = f"stage-1 head {stage1.path.name if stage1.path else ''} ({stage1.fingerprint})"
    if stage1.head.hidden:
        return stage1.head, centred, f"negatives from the MLP {name}; initialised from {pooling}"
    return stage1.head, stage1.head, f"negatives from and initialised from the linear {name}"


@torch.no_grad()
def stage1_vectors(head: Stage1Head, regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor
                   ) -> tuple[np.ndarray, np.ndarray]:
    return head.image_vectors(pool(regions, None)).numpy(), head.caption_vectors(pool(words, lengths)).numpy()


def hard_negative_pool(image_vectors: np.ndarray, caption_vectors: np.ndarray, caption_image: np.ndarray,
                       size: int) -> np.ndarray:
    """Each caption's ``size`` best images by stage 1 that are not its own: (n_captions, size) image rows."""
    found = stage1_candidates(image_vectors, caption_vectors, size + 1)
    keep = found != caption_image[:, None]
    # the own image is among the size + 1 found at most once: drop it, else drop the last
    keep[~(~keep).any(axis=1), -1] = False
    return found[keep].reshape(len(found), size)


def pair_logits(net: CoAttention, regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor,
                groups: torch.Tensor) -> torch.Tensor:
    """Each caption against its own group of images, with the re-ranker's block code vmapped over captions.

    regions (n_images, n_regions, d); words (b, max_words, d); lengths (b,); groups (b, g) image rows -> (b, g).
    """
    def one_caption(group_regions, caption_words, caption_length):
        return net(group_regions, caption_words[None], caption_length[None]).logits[:, 0]

    return torch.func.vmap(one_caption)(regions[groups], words, lengths)


@torch.no_grad()
def calibrate_output(net: CoAttention, logits: torch.Tensor, positive_rate: float) -> None:
    """Rescale the output layer so that ``logits`` (a sample of the untrained net's) get standard deviation 1 and
    the mean log-odds of ``positive_rate``.

    The stage-1 start gives tiny logits (products of centred embeddings): with them BCE's first steps only move
    the bias to the prior and drag the projections, which lost the ranking in a first run (dev R@1 26.7 -> 1.5
    after one epoch). Rescaling keeps the ranking and makes the loss see it from the first step.
    """
    scale = 1.0 / float(logits.std().clamp(min=1e-8))
    net.out.weight.mul_(scale)
    net.out.bias.copy_((net.out.bias - logits.mean()) * scale + math.log(positive_rate / (1 - positive_rate)))


def bce_step(net: CoAttention, optimizer: torch.optim.Optimizer, regions: torch.Tensor, words: torch.Tensor,
             lengths: torch.Tensor, groups: torch.Tensor) -> float:
    """One step of binary cross-entropy; column 0 of ``groups`` is each caption's image, the rest negatives."""
    logits = pair_logits(net, regions, words, lengths, groups)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def rerank_recall(ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10 (percent) from re-ranked 0-based ranks."""
    recalls = recall_metrics(ranks)
    return {"r1": recalls.r1, "r5": recalls.r5, "r10": recalls.r10}


def _recall_text(recall: dict[str, float]) -> str:
    return ", ".join(f"R@{k[1:]} {v:.1f}" for k, v in recall.items())


@torch.no_grad()
def measure_gallery(model: ScanModel, head: MatchingHead, stage1_head: Stage1Head, gallery_dir: Path,
                    ks: tuple[int, ...] = TEST_KS, log=print) -> dict:
    """Text -> image R@1/5/10 on a gallery: stage 1's top K re-ranked by SCAN and by ``head``, and exhaustive SCAN.

    SCAN's re-ranking reads the exhaustive matrix at the candidates (stage 2 scores what exhaustive search scores,
    tests/test_search.py); the head scores each caption's candidates as :class:`TwoStageSearch` does.
    """
    from scan_viz.evaluation.metrics import t2i_ranks
    from scan_viz.gallery import load_gallery
    from scan_viz.heads.engine import score_matrix

    gallery = load_gallery(gallery_dir)
    started = time.perf_counter()
    regions, words, lengths = encode_split(model, np.asarray(gallery.regions.features, dtype=np.float32),
                                           gallery.captions)
    region_lengths = None if gallery.regions.n_boxes is None else torch.from_numpy(gallery.regions.n_boxes)
    scan = score_matrix(model.head(), regions, words, lengths, region_lengths)  # (n_images, n_captions)
    image = gallery.caption_image
    result = {"gallery": str(gallery_dir), "images": len(gallery), "captions": len(gallery.captions),
              "exhaustive_scan": rerank_recall(t2i_ranks(scan, image))}
    log(f"exhaustive SCAN on {gallery_dir} in {time.perf_counter() - started:.0f} s: {result['exhaustive_scan']}")
    candidates = stage1_candidates(*stage1_vectors(stage1_head, regions, words, lengths), max(ks))
    started = time.perf_counter()
    reranked = candidate_scores(head, regions, words, lengths, candidates, region_lengths)
    log(f"{head.name} re-ranked the top {max(ks)} of {len(image)} captions in {time.perf_counter() - started:.0f} s")
    scan_at = scan.T[np.arange(len(image))[:, None], candidates]
    for k in ks:  # the stage-1 order is kept, so each top K is a prefix of the largest
        result[f"top{k}"] = {
            "stage1_recall_at_k": float(100.0 * (candidates[:, :k] == image[:, None]).any(axis=1).mean()),
            "scan_reranked": rerank_recall(rerank_ranks(candidates[:, :k], scan_at[:, :k], image)),
            "coattention_reranked": rerank_recall(rerank_ranks(candidates[:, :k], reranked[:, :k], image))}
        log(f"top {k}: {result[f'top{k}']}")
    return result


def train_coattention(model: ScanModel, base_name: str, data_dir: Path, lambda_spatial: float = 9.0,
                      epochs: int = 4, batch_size: int = 128, lr: float = 5e-3, lr_proj: float = 2e-4,
                      negatives: int = 4, neg_pool: int = 100, rerank_k: int = 100, max_images: int | None = 5000,
                      dev_captions: int = 1000, seed: int = 0, gallery: Path | None = None,
                      log=print) -> CoAttentionReranker:
    """BCE on positives and stage-1 hard negatives; keep the epoch with the best dev re-ranking recall.

    ``gallery``: a gallery folder (the test split) to measure the kept re-ranker on (:func:`measure_gallery`).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train, dev, n_images, keep = load_train_dev(model, data_dir, max_images)
    if neg_pool >= n_images or rerank_k > len(dev.regions):
        raise ScanVizError(f"--neg-pool must be below the {n_images} training images and --rerank-k at most the "
                           f"{len(dev.regions)} dev images")
    caption_image = train.caption_image[keep]
    started = time.perf_counter()
    regions, words, lengths = encode_split(model, train.regions.features[:n_images],
                                           [c for c, k in zip(train.captions, keep) if k])
    # dev: every 5th caption up to dev_captions (one per image first), against all dev images
    dev_rows = np.arange(0, len(dev.captions), max(1, len(dev.captions) // dev_captions))[:dev_captions]
    dev_regions, dev_words, dev_lengths = encode_split(model, dev.regions.features,
                                                       [dev.captions[i] for i in dev_rows])
    dev_image = dev.caption_image[dev_rows]
    log(f"encoded {n_images} train images, {len(caption_image)} captions and the dev split in "
        f"{time.perf_counter() - started:.0f} s")

    stage1_head, init_head, init = stage1_for(model, regions, words, lengths)
    log(f"stage 1: {init}")
    pool_rows = torch.from_numpy(hard_negative_pool(*stage1_vectors(stage1_head, regions, words, lengths),
                                                    caption_image, neg_pool))
    dev_candidates = stage1_candidates(*stage1_vectors(stage1_head, dev_regions, dev_words, dev_lengths), rerank_k)
    stage1_recall = float(100.0 * (dev_candidates == dev_image[:, None]).any(axis=1).mean())
    scan_dev = rerank_recall(rerank_ranks(dev_candidates, candidate_scores(
        model.head(), dev_regions, dev_words, dev_lengths, dev_candidates), dev_image))
    log(f"dev ({len(dev_rows)} captions): stage-1 R@{rerank_k} {stage1_recall:.1f}; SCAN re-ranking its top "
        f"{rerank_k}: " + _recall_text(scan_dev))

    net = CoAttention(model.config.embed_size, init_head.dim, lambda_spatial)
    net.init_from_stage1(init_head)
    from scan_viz.heads.coattention import CoAttentionHead

    head = CoAttentionHead("coattention", {}, CoAttentionReranker(net, base_name, model_fingerprint(model), init))

    def dev_recall() -> dict[str, float]:
        net.eval()
        scores = candidate_scores(head, dev_regions, dev_words, dev_lengths, dev_candidates)
        net.train()
        return rerank_recall(rerank_ranks(dev_candidates, scores, dev_image))

    n_caps = len(caption_image)
    own = torch.from_numpy(caption_image)

    def sample_groups(rows: torch.Tensor) -> torch.Tensor:
        """Each caption's image, then ``negatives`` drawn from its hard-negative pool."""
        picks = torch.from_numpy(rng.random((len(rows), neg_pool)).argsort(axis=1)[:, :negatives])
        return torch.cat([own[rows, None], pool_rows[rows].gather(1, picks)], dim=1)

    with torch.no_grad():
        rows = torch.from_numpy(rng.choice(n_caps, size=min(n_caps, 512), replace=False))
        calibrate_output(net, pair_logits(net, regions, words[rows], lengths[rows], sample_groups(rows)),
                         1 / (1 + negatives))
    best, best_epoch, best_state = dev_recall(), 0, copy.deepcopy(net.state_dict())
    log("epoch 0 (initialised from stage 1): dev re-ranking " + _recall_text(best))
    history = [{"epoch": 0, "dev": best}]
    # the projections start from stage 1 and move slowly; the latent query and the output layer start from nothing
    projections = [*net.region_proj.parameters(), *net.word_proj.parameters()]
    optimizer = torch.optim.Adam([{"params": projections, "lr": lr_proj},
                                  {"params": [net.query, *net.out.parameters()], "lr": lr}])
    net.train()
    for epoch in range(1, epochs + 1):
        order = torch.from_numpy(rng.permutation(n_caps))
        total, tick = 0.0, time.perf_counter()
        for start in range(0, n_caps, batch_size):
            rows = order[start:start + batch_size]
            max_len = int(lengths[rows].max())
            total += bce_step(net, optimizer, regions, words[rows, :max_len], lengths[rows],
                              sample_groups(rows)) * len(rows)
        recall = dev_recall()
        history.append({"epoch": epoch, "bce": total / n_caps, "dev": recall})
        log(f"epoch {epoch}/{epochs}: BCE {total / n_caps:.4f} ({time.perf_counter() - tick:.0f} s), dev re-ranking "
            + _recall_text(recall))
        if sum(recall.values()) > sum(best.values()):
            best, best_epoch, best_state = recall, epoch, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.eval()
    training = {"data": str(data_dir), "images": n_images, "captions": n_caps, "epochs": epochs,
                "kept_epoch": best_epoch, "lr": lr, "lr_proj": lr_proj, "batch_size": batch_size, "negatives": negatives,
                "neg_pool": neg_pool, "seed": seed, "history": history,
                "seconds": round(time.perf_counter() - started)}
    metrics = {"dev": {"captions": len(dev_rows), "images": len(dev.regions), "rerank_k": rerank_k,
                       "stage1_recall_at_k": stage1_recall, "scan_reranked": scan_dev, "coattention_reranked": best}}
    if gallery is not None:
        metrics["test"] = measure_gallery(model, head, stage1_head, gallery, log=log)
    return CoAttentionReranker(net, base_name, model_fingerprint(model), init, training, metrics)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=TRAIN_COMMAND, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="scan-emoji-t2i", help="model directory or a name under pretrained/")
    p.add_argument("--data", required=True, help="precomputed layout with train_* and dev_* files")
    p.add_argument("--out", required=True, help="output folder (coattention.json + coattention.safetensors)")
    p.add_argument("--lambda-spatial", type=float, default=9.0, help="inverse temperature of the spatial attention")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128, help="captions per step (each with 1 + negatives images)")
    p.add_argument("--lr", type=float, default=5e-3, help="Adam's rate for the latent query and the output layer")
    p.add_argument("--lr-proj", type=float, default=2e-4, help="Adam's rate for the two projections (from stage 1)")
    p.add_argument("--negatives", type=int, default=4, help="hard negatives per caption and step")
    p.add_argument("--neg-pool", type=int, default=100, help="negatives are drawn from stage 1's best N non-matches")
    p.add_argument("--rerank-k", type=int, default=100, help="dev metric: re-rank each caption's stage-1 top K")
    p.add_argument("--max-images", type=int, default=5000, help="train on the first N training images")
    p.add_argument("--dev-captions", type=int, default=1000, help="dev captions for the metric")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gallery", help="after training, measure on this gallery (e.g. examples/gallery, the test split)")
    args = p.parse_args(argv)

    def run(a: argparse.Namespace) -> int:
        model = load_model(a.model)
        reranker = train_coattention(model, Path(a.model).name, Path(a.data), a.lambda_spatial, a.epochs,
                                     a.batch_size, a.lr, a.lr_proj, a.negatives, a.neg_pool, a.rerank_k, a.max_images,
                                     a.dev_captions, a.seed, None if a.gallery is None else Path(a.gallery))
        reranker.training["command"] = " ".join([TRAIN_COMMAND] + [shlex.quote(x) for x in
                                                                    (argv if argv is not None else sys.argv[1:])])
        reranker.save(a.out)
        print(json.dumps({"out": a.out, "kept_epoch": reranker.training["kept_epoch"], "metrics": reranker.metrics}))
        return 0

    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
