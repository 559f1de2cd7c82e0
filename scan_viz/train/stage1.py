"""Train a stage-1 head (global vectors, CMCE loss) on a SCAN model's frozen encoders.

    python -m scan_viz.train.stage1 --model scan-emoji-t2i --data DIR --out pretrained/scan-emoji-t2i-stage1

``DIR`` is a precomputed layout (``train_ims.npy`` + ``train_caps.txt``, ``dev_*`` for the recall curve) whose
features fit the model (same detector, same ``img_dim``). The encoders never change, so their pooled outputs are
computed once and training touches only two linear layers: minutes on a CPU. Each training image and its
captions form one identity (Li et al., ICCV 2017).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scan_viz.errors import ScanVizError, run_command
from scan_viz.model import ScanModel, load_model
from scan_viz.model.encoders import l2norm
from scan_viz.parts import model_fingerprint
from scan_viz.regions.store import PrecompSplit, load_precomp
from scan_viz.retrieval.stage1 import Stage1, Stage1Head, choose_k, pool, recall_curve

ENCODE_BATCH = 1024


def cmce_loss(image_vecs: torch.Tensor, caption_vecs: torch.Tensor, image_ids: torch.Tensor,
              caption_ids: torch.Tensor, image_buffer: torch.Tensor, caption_buffer: torch.Tensor,
              sigma: float) -> torch.Tensor:
    """Cross-Modal Cross-Entropy: -log p(true identity) of each image vs the caption buffers, and vice versa.

    image_vecs (b_i, D), caption_vecs (b_c, D), their identities (b_i,), (b_c,); buffers (n_identities, D)
    carry no gradient. ``p(k | image v) = exp(S_k . v / sigma) / sum_j exp(S_j . v / sigma)`` with S the
    caption buffer (and symmetrically for captions with the image buffer V). Returns the sum of both mean
    cross-entropies.
    """
    image_logits = image_vecs @ caption_buffer.detach().T / sigma
    caption_logits = caption_vecs @ image_buffer.detach().T / sigma
    return F.cross_entropy(image_logits, image_ids) + F.cross_entropy(caption_logits, caption_ids)


@torch.no_grad()
def update_buffer(buffer: torch.Tensor, ids: torch.Tensor, vecs: torch.Tensor, momentum: float) -> None:
    """In place: ``buffer[k] <- l2norm(momentum * buffer[k] + (1 - momentum) * mean of the batch's vectors of k)``."""
    sums = torch.zeros_like(buffer).index_add_(0, ids, vecs.detach().to(buffer.dtype))
    counts = torch.zeros(buffer.shape[0], dtype=buffer.dtype, device=buffer.device).index_add_(
        0, ids, torch.ones_like(ids, dtype=buffer.dtype))
    seen = counts > 0
    mean = sums[seen] / counts[seen, None]
    buffer[seen] = l2norm(momentum * buffer[seen] + (1 - momentum) * mean)


@torch.no_grad()
def pooled_inputs(model: ScanModel, features: np.ndarray, captions: list[str],
                  log=print) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen encoders -> pooled (n_images, 2d) and (n_captions, 2d) inputs of the stage-1 head."""
    images = []
    for start in range(0, len(features), ENCODE_BATCH):
        images.append(pool(model.encode_images(features[start:start + ENCODE_BATCH]), None))
    texts = []
    for start in range(0, len(captions), ENCODE_BATCH):
        caps = model.encode_captions(captions[start:start + ENCODE_BATCH])
        texts.append(pool(caps.emb, caps.lengths))
        if (start // ENCODE_BATCH) % 20 == 19:
            log(f"encoded {start + ENCODE_BATCH}/{len(captions)} captions")
    return torch.cat(images), torch.cat(texts)


def load_train_dev(model: ScanModel, data_dir: Path, max_images: int | None
                   ) -> tuple[PrecompSplit, PrecompSplit, int, np.ndarray]:
    """The train and dev splits, checked against the model's feature size; the number of training images used
    (the first ``max_images``, default all) and which training captions belong to them (n_captions,) bool."""
    train = load_precomp(data_dir, "train")
    dev = load_precomp(data_dir, "dev")
    if train.regions.img_dim != model.config.img_dim:
        raise ScanVizError(f"{data_dir} holds {train.regions.img_dim}-d features but the model takes "
                           f"{model.config.img_dim}-d: use features from the model's detector")
    n_images = len(train.regions) if max_images is None else min(max_images, len(train.regions))
    return train, dev, n_images, train.caption_image < n_images


@torch.no_grad()
def init_as_centred_mean_pool(head: Stage1Head, img_in: torch.Tensor, cap_in: torch.Tensor) -> None:
    """Start from the plain pooling baseline: mean-pooled embeddings minus their training mean.

    Pooled vectors of every image (and every caption) share a large common component; removing it is what
    makes their cosines discriminative, and CMCE training then refines that starting point.
    """
    d = img_in.shape[1] // 2
    for proj, inputs in ((head.image_proj, img_in), (head.text_proj, cap_in)):
        n = min(proj.out_features, d)
        proj.weight.zero_()
        proj.weight[:n, :n] = torch.eye(n)
        proj.bias.copy_(-(proj.weight @ inputs.mean(dim=0)))


def train_stage1(model: ScanModel, base_name: str, data_dir: Path, dim: int = 256, hidden: int = 1024,
                 sigma: float = 0.04,
                 momentum: float = 0.5, epochs: int = 20, batch_size: int = 256, lr: float = 1e-3,
                 max_images: int | None = None, target_recall: float = 99.0, seed: int = 0,
                 cache: Path | None = None, log=print) -> Stage1:
    """Train the head with CMCE on ``data_dir``'s train split; keep the epoch with the best dev recall curve.

    ``cache``: a file for the pooled encoder outputs, so another run with other hyperparameters skips the encoders.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train, dev, n_images, keep = load_train_dev(model, data_dir, max_images)
    captions = [c for c, k in zip(train.captions, keep) if k]
    caption_image = torch.from_numpy(train.caption_image[keep])
    started = time.perf_counter()
    if cache is not None and Path(cache).is_file():
        img_in, cap_in, dev_img, dev_cap = torch.load(cache, weights_only=True)
    else:
        img_in, cap_in = pooled_inputs(model, train.regions.features[:n_images], captions, log)
        dev_img, dev_cap = pooled_inputs(model, dev.regions.features, dev.captions, log)
        if cache is not None:
            torch.save((img_in, cap_in, dev_img, dev_cap), cache)
    log(f"pooled {n_images} images and {len(captions)} captions in {time.perf_counter() - started:.0f} s")

    head = Stage1Head(model.config.embed_size, dim, hidden)
    if not hidden:  # the linear head starts from the pooling baseline; an MLP from its random initialisation
        init_as_centred_mean_pool(head, img_in, cap_in)

    def dev_curve() -> dict[int, float]:
        with torch.no_grad():
            return recall_curve(head.image_vectors(dev_img).numpy(), head.caption_vectors(dev_cap).numpy(),
                                dev.caption_image)

    # model selection on dev: the epoch (0 = the pooling it starts from) with the best mean recall of the curve
    best_curve, best_epoch = dev_curve(), 0
    best_state = copy.deepcopy(head.state_dict())
    start = "random MLP" if hidden else "centred mean pooling"
    log(f"epoch 0 ({start}): dev stage-1 R@100 {best_curve.get(100, float('nan')):.1f}")
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    with torch.no_grad():
        image_buffer = head.image_vectors(img_in)
        caption_buffer = torch.zeros_like(image_buffer)
        update_buffer(caption_buffer, caption_image, head.caption_vectors(cap_in), momentum=0.0)
    # one caption of each image per step, so an identity is seen once per batch in each modality
    by_image = [np.flatnonzero(caption_image.numpy() == i) for i in range(n_images)]
    for epoch in range(epochs):
        order = rng.permutation(n_images)
        total = 0.0
        for start in range(0, n_images, batch_size):
            ids = torch.from_numpy(order[start:start + batch_size])
            cap_rows = torch.from_numpy(np.array([rng.choice(by_image[i]) for i in ids.tolist()]))
            image_vecs = head.image_vectors(img_in[ids])
            caption_vecs = head.caption_vectors(cap_in[cap_rows])
            loss = cmce_loss(image_vecs, caption_vecs, ids, ids, image_buffer, caption_buffer, sigma)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            update_buffer(image_buffer, ids, image_vecs, momentum)
            update_buffer(caption_buffer, ids, caption_vecs, momentum)
            total += float(loss.detach()) * len(ids)
        curve = dev_curve()
        log(f"epoch {epoch + 1}/{epochs}: CMCE loss {total / n_images:.4f}, dev stage-1 R@100 "
            f"{curve.get(100, float('nan')):.1f}")
        if np.mean(list(curve.values())) > np.mean(list(best_curve.values())):
            best_curve, best_epoch, best_state = curve, epoch + 1, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    head.eval()
    log(f"kept epoch {best_epoch}; stage-1 recall@K on dev (text -> image, {len(dev.regions)} images): "
        + ", ".join(f"R@{k} {r:.1f}" for k, r in best_curve.items()))
    curve = best_curve
    training = {"data": str(data_dir), "images": n_images, "hidden": hidden, "epochs": epochs,
                "kept_epoch": best_epoch,
                "lr": lr, "sigma": sigma, "momentum": momentum, "batch_size": batch_size,
                "target_recall": target_recall,
                "note": "epoch 0 is the head CMCE training starts from (linear: centred mean pooling; MLP: random)"}
    return Stage1(head, base_name, model_fingerprint(model), sigma, curve, choose_k(curve, target_recall),
                  training=training)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scan_viz.train.stage1", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="scan-emoji-t2i", help="model directory or a name under pretrained/")
    p.add_argument("--data", required=True, help="precomputed layout with train_* and dev_* files")
    p.add_argument("--out", required=True, help="output folder (stage1.json + stage1.safetensors)")
    p.add_argument("--dim", type=int, default=256, help="size of the global vectors")
    p.add_argument("--hidden", type=int, default=1024, help="width of the MLP's hidden layer (0: a linear head)")
    p.add_argument("--sigma", type=float, default=0.04, help="CMCE softmax temperature")
    p.add_argument("--momentum", type=float, default=0.5, help="buffer running-average momentum")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-images", type=int, help="train on the first N training images only")
    p.add_argument("--cache", help="file for the pooled encoder outputs (reused when it exists)")
    p.add_argument("--target-recall", type=float, default=99.0,
                   help="default K = smallest K whose dev stage-1 recall reaches this percent")
    args = p.parse_args(argv)

    def run(a: argparse.Namespace) -> int:
        model = load_model(a.model)
        stage1 = train_stage1(model, Path(a.model).name, Path(a.data), a.dim, a.hidden, a.sigma, a.momentum,
                              a.epochs, a.batch_size, a.lr, a.max_images, a.target_recall,
                              cache=None if a.cache is None else Path(a.cache))
        stage1.save(a.out)
        print(json.dumps({"out": a.out, "default_k": stage1.default_k, "recall_curve": stage1.recall_curve}))
        return 0

    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
