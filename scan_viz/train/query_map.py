"""Distil the token screen's query map from exhaustive SCAN (:mod:`scan_viz.retrieval.query_map`).

    python -m scan_viz.train.query_map --model scan-emoji-t2i --data DIR --out pretrained/scan-emoji-t2i-query-map

``DIR`` is a precomputed layout with ``train_ims.npy`` + ``train_caps.txt`` whose features fit the model. The
encoders stay frozen: their outputs are computed once. Each step takes ``--batch-size`` training images and one of
each image's captions; the teacher is the model's own head (SCAN) scoring every caption with every image of the
batch, the student the screen's LSE-MaxSim with the mapped words (:func:`screen_scores`); the loss is the
cross-entropy between softmax(teacher / tau) and softmax(student / tau) over the batch's images, per caption.

After training, the map's mapped words are measured once over every training caption: their second moment
E[u u^T] is saved with the map (``word_moment``), and token indexes fit their residual codes to it. ``--moment-only``
measures just that for the map already in ``--out`` (same data), leaving its weights as they are:

    python -m scan_viz.train.query_map --model scan-emoji-t2i --data DIR --out pretrained/scan-emoji-t2i-query-map \
        --moment-only
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scan_viz.errors import ScanVizError, run_command
from scan_viz.heads.engine import score_matrix
from scan_viz.model import ScanModel, load_model
from scan_viz.parts import model_fingerprint
from scan_viz.regions.store import load_precomp
from scan_viz.retrieval.query_map import QueryMap, QueryMapModule, load_query_map, word_moment
from scan_viz.retrieval.tokens import pool_words, token_settings

ENCODE_BATCH = 1024


def screen_scores(words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor,
                  region_lengths: torch.Tensor | None, agg: str, lambda_lse: float) -> torch.Tensor:
    """The token screen's exact score (no codes) of every caption with every image: (n_captions, n_images).

    words (C, L, d) unit rows (padding anything), lengths (C,); regions (I, R, d) unit rows, region_lengths (I,) or
    None. Each word's best region cosine, pooled as the screen pools (:func:`scan_viz.retrieval.tokens.pool_words`)."""
    cos = torch.einsum("cld,ird->cilr", words, regions)
    if region_lengths is not None:
        real = torch.arange(regions.shape[1])[None, :] < region_lengths[:, None]  # (I, R)
        cos = cos.masked_fill(~real[None, :, None, :], float("-inf"))
    best = cos.amax(dim=3)  # (C, I, L)
    valid = (torch.arange(words.shape[1])[None, :] < lengths[:, None])[:, None, :]
    return pool_words(best, agg, lambda_lse, dim=2, valid=valid)


@torch.no_grad()
def _encode(model: ScanModel, features: np.ndarray, captions: list[str]) -> tuple[torch.Tensor, ...]:
    regions = torch.cat([model.encode_images(np.asarray(features[s:s + ENCODE_BATCH], dtype=np.float32))
                         for s in range(0, len(features), ENCODE_BATCH)])
    caps = model.encode_captions(captions)
    return regions, caps.emb, caps.lengths


def distill_query_map(model: ScanModel, model_name: str, data: Path, epochs: int = 4, batch_size: int = 128,
                      lr: float = 1e-3, tau: float = 0.05, max_images: int | None = None, seed: int = 0,
                      log=print) -> QueryMap:
    """Train a query map for ``model`` on the train split of ``data`` (see the module docstring)."""
    if epochs < 1 or batch_size < 2 or lr <= 0 or tau <= 0:
        raise ScanVizError("--epochs must be >= 1, --batch-size >= 2, --lr and --tau > 0")
    split = load_precomp(data, "train")
    features = split.regions.features
    n_images = len(features) if max_images is None else min(max_images, len(features))
    if n_images < batch_size:
        raise ScanVizError(f"{data} has {n_images} training images: fewer than one batch of {batch_size}")
    caption_image = np.asarray(split.caption_image)
    keep = np.flatnonzero(caption_image < n_images)
    t0 = time.perf_counter()
    regions, words, lengths = _encode(model, features[:n_images], [split.captions[i] for i in keep])
    n_boxes = split.regions.n_boxes
    region_lengths = None if n_boxes is None or (np.asarray(n_boxes[:n_images]) == features.shape[1]).all() \
        else torch.as_tensor(np.asarray(n_boxes[:n_images]), dtype=torch.int64)
    log(f"encoded {n_images:,} images and {len(keep):,} captions in {time.perf_counter() - t0:.0f} s")
    captions_of = [[] for _ in range(n_images)]
    for row, image in enumerate(caption_image[keep]):
        captions_of[int(image)].append(row)
    head = model.head()
    settings = token_settings(model)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    module = QueryMapModule(int(words.shape[-1]))
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    history = []
    for epoch in range(epochs):
        t0, losses = time.perf_counter(), []
        order = torch.randperm(n_images, generator=generator)
        for start in range(0, n_images - batch_size + 1, batch_size):
            images = order[start:start + batch_size]
            rows = torch.as_tensor([captions_of[int(i)][rng.integers(len(captions_of[int(i)]))] for i in images])
            w, n = words[rows], lengths[rows]
            w = w[:, :int(n.max())]
            r = regions[images]
            r_len = None if region_lengths is None else region_lengths[images]
            with torch.no_grad():
                teacher = torch.as_tensor(score_matrix(head, r, w, n, r_len)).T.float()  # (captions, images)
            student = screen_scores(module(w), n, r, r_len, settings["agg"], settings["lambda_lse"])
            target = torch.softmax(teacher / tau, dim=1)
            loss = -(target * torch.log_softmax(student / tau, dim=1)).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
        log(f"epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f} ({time.perf_counter() - t0:.0f} s)")
    training = {"data": str(data), "split": "train", "images": n_images, "captions": int(len(keep)),
                "epochs": epochs, "batch_size": batch_size, "lr": lr, "tau": tau, "seed": seed,
                "loss": "cross-entropy of softmax(screen / tau) against softmax(SCAN / tau) over the batch's images",
                "loss_per_epoch": history, "command": "python -m scan_viz.train.query_map"}
    query_map = QueryMap(module.eval(), model_name, model_fingerprint(model), training)
    return query_map.with_word_moment(word_moment(query_map, words, lengths), _moment_note(data, n_images, len(keep)))


def _moment_note(data: Path, n_images: int, n_captions: int) -> dict:
    return {"data": str(data), "split": "train", "images": n_images, "captions": n_captions,
            "what": "E[u u^T] of the mapped words of every caption of these images"}


def add_word_moment(model: ScanModel, query_map: QueryMap, data: Path, max_images: int | None = None,
                    log=print) -> QueryMap:
    """``query_map`` (weights unchanged) with the second moment of its mapped words over the training captions of
    the first ``max_images`` training images of ``data`` (all by default)."""
    split = load_precomp(data, "train")
    n_images = len(split.regions.features) if max_images is None else min(max_images, len(split.regions.features))
    keep = np.flatnonzero(np.asarray(split.caption_image) < n_images)
    caps = model.encode_captions([split.captions[i] for i in keep])
    log(f"measuring the mapped words of {len(keep):,} training captions")
    return query_map.with_word_moment(word_moment(query_map, caps.emb, caps.lengths),
                                      _moment_note(data, n_images, len(keep)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scan_viz.train.query_map", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="scan-emoji-t2i", help="model directory or a name under pretrained/")
    p.add_argument("--data", required=True, help="precomputed layout with train_ims.npy and train_caps.txt")
    p.add_argument("--out", required=True, help="output folder (query_map.json + query_map.safetensors)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tau", type=float, default=0.05, help="softmax temperature of both score lists")
    p.add_argument("--max-images", type=int, help="train on the first N training images only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--moment-only", action="store_true",
                   help="measure only the mapped words' second moment for the map already in --out")
    args = p.parse_args(argv)

    def run(a: argparse.Namespace) -> int:
        model = load_model(a.model)
        if a.moment_only:
            query_map = load_query_map(a.out)
            if query_map.base_fingerprint != model_fingerprint(model):
                raise ScanVizError(f"{a.out} was trained for other encoders than {a.model}'s")
            query_map = add_word_moment(model, query_map, Path(a.data), a.max_images)
            query_map.save(a.out)
            print(json.dumps({"out": a.out, "word_moment": query_map.training["word_moment"]}))
            return 0
        query_map = distill_query_map(model, Path(a.model).name, Path(a.data), a.epochs, a.batch_size, a.lr, a.tau,
                                      a.max_images, a.seed)
        query_map.save(a.out)
        print(json.dumps({"out": a.out, "loss_per_epoch": query_map.training["loss_per_epoch"]}))
        return 0

    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
