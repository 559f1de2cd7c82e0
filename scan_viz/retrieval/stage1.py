"""Stage 1 of two-stage retrieval: one global vector per image and per caption, trained with CMCE.

The identity-aware two-stage matcher (Li, Xiao, Li, Yang, Wang, ICCV 2017) screens the gallery with a cheap
joint embedding before an expensive pairwise model re-ranks the survivors. Here the embedding sits on the
SCAN model's own encoders: an image's region embeddings and a caption's word embeddings are pooled (masked
mean and max, concatenated) and a small head per modality (linear, or a one-hidden-layer MLP) maps them to one
L2-normalised vector. The encoders stay frozen, so a stage-1 head belongs to exactly one SCAN model
(``base_fingerprint``).

Its loss is the paper's Cross-Modal Cross-Entropy (CMCE): every identity (a training image and its captions)
has a feature buffer per modality; an image vector is classified against the caption buffers and a caption
vector against the image buffers, with a softmax over identities at temperature ``sigma``; the buffers are
running averages of the identity's vectors, re-normalised after each update.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scan_viz.evaluation.metrics import answer_ranks
from scan_viz.model.encoders import l2norm
from scan_viz.parts import find_trained_for, load_module_dir, part_width, save_module_dir, update_digest

STAGE1_CONFIG = "stage1.json"
STAGE1_WEIGHTS = "stage1.safetensors"
STAGE1_FORMAT = "scan-viz-stage1/1"


def pool(emb: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Masked mean and max over the middle axis: (n, n_items, d) + (n,) real items -> (n, 2d)."""
    n, n_items, _ = emb.shape
    if lengths is None:
        return torch.cat([emb.mean(dim=1), emb.amax(dim=1)], dim=1)
    valid = (torch.arange(n_items, device=emb.device)[None, :] < lengths.to(emb.device)[:, None])[..., None]
    mean = (emb * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    top = emb.masked_fill(~valid, float("-inf")).amax(dim=1)
    return torch.cat([mean, torch.where(torch.isfinite(top), top, torch.zeros_like(top))], dim=1)


class Stage1Head(nn.Module):
    """Pooled region / word embeddings (n, 2 * embed_size) -> global vectors (n, dim), L2-normalised.

    ``hidden`` 0: one linear layer per modality; ``hidden`` > 0: LayerNorm, a ``hidden``-wide GELU layer, then the
    linear layer (an MLP per modality; on the bundled world it screens far better than the linear head, see
    pretrained/scan-emoji-t2i-stage1/stage1.json).
    """

    def __init__(self, embed_size: int, dim: int, hidden: int = 0) -> None:
        super().__init__()
        self.embed_size, self.hidden = embed_size, hidden
        width = hidden or 2 * embed_size
        self.image_pre, self.text_pre = self._pre(embed_size, hidden), self._pre(embed_size, hidden)
        self.image_proj = nn.Linear(width, dim)
        self.text_proj = nn.Linear(width, dim)

    @staticmethod
    def _pre(embed_size: int, hidden: int) -> nn.Module:
        if not hidden:
            return nn.Identity()
        return nn.Sequential(nn.LayerNorm(2 * embed_size), nn.Linear(2 * embed_size, hidden), nn.GELU())

    @property
    def dim(self) -> int:
        return int(self.image_proj.out_features)

    def image_vectors(self, pooled: torch.Tensor) -> torch.Tensor:
        return l2norm(self.image_proj(self.image_pre(pooled)))

    def caption_vectors(self, pooled: torch.Tensor) -> torch.Tensor:
        return l2norm(self.text_proj(self.text_pre(pooled)))


# ------------------------------------------------------------------------------------------- saved heads
@dataclasses.dataclass
class Stage1:
    """A trained stage-1 head plus what it needs at search time.

    ``recall_curve``: {K: stage-1 recall@K (percent) of text -> image on the held-out split it was measured on};
    ``default_k``: the smallest K of that curve reaching ``target_recall`` (what search uses by default).
    """

    head: Stage1Head
    base_model: str
    base_fingerprint: str
    sigma: float
    recall_curve: dict[int, float]
    default_k: int
    path: Path | None = None
    #: how it was trained (data, epochs, the epoch kept by dev recall, ...), for the model card
    training: dict | None = None

    @property
    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the head's weights and its base model: which vectors it makes."""
        digest = hashlib.sha256(self.base_fingerprint.encode())
        update_digest(digest, self.head)
        return digest.hexdigest()[:16]

    @torch.no_grad()
    def image_vectors(self, regions: torch.Tensor, region_lengths: torch.Tensor | None = None) -> np.ndarray:
        """Region embeddings (n_images, n_regions, d) -> (n_images, dim) float32."""
        return self.head.image_vectors(pool(regions.float(), region_lengths)).numpy()

    @torch.no_grad()
    def caption_vectors(self, words: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
        """Word embeddings (n_captions, max_words, d) + lengths -> (n_captions, dim) float32."""
        return self.head.caption_vectors(pool(words.float(), lengths)).numpy()

    def save(self, directory: str | Path) -> None:
        config = {"format": STAGE1_FORMAT, "embed_size": self.head.embed_size, "hidden": self.head.hidden,
                  "dim": self.head.dim, "base_model": self.base_model, "base_fingerprint": self.base_fingerprint,
                  "sigma": self.sigma, "recall_curve": {str(k): v for k, v in self.recall_curve.items()},
                  "default_k": self.default_k, "training": self.training}
        save_module_dir(directory, self.head, STAGE1_WEIGHTS, config, STAGE1_CONFIG)


def load_stage1(directory: str | Path) -> Stage1:
    def build(c: dict) -> tuple[Stage1Head, Stage1]:
        head = Stage1Head(part_width(c, "embed_size"), part_width(c, "dim"), part_width(c, "hidden", 0))
        return head, Stage1(head, str(c["base_model"]), str(c["base_fingerprint"]), float(c["sigma"]),
                            {int(k): float(v) for k, v in c["recall_curve"].items()}, int(c["default_k"]),
                            Path(directory), c.get("training"))

    return load_module_dir(directory, STAGE1_CONFIG, STAGE1_FORMAT, STAGE1_WEIGHTS, build, "stage-1 head",
                           "python -m scan_viz.train.stage1")


def find_stage1(model, search_dirs: list[Path] | None = None) -> Stage1 | None:
    """The stage-1 head trained on exactly this model's encoders (by fingerprint), or None.

    Looked for in ``search_dirs`` (default: every folder under ``pretrained/``); a head trained on other
    weights is never used, since its vectors would not match the encoders.
    """
    directory = find_trained_for(model, STAGE1_CONFIG, search_dirs)
    return None if directory is None else load_stage1(directory)


#: The K at which a stage-1 head's recall curve is measured (the screening depths search may choose from).
CURVE_KS = (1, 5, 10, 20, 50, 100, 200, 500)


def recall_curve(image_vectors: np.ndarray, caption_vectors: np.ndarray, caption_image: np.ndarray,
                 ks: tuple[int, ...] = CURVE_KS) -> dict[int, float]:
    """Stage-1 text -> image recall@K (percent): how often a caption's image is among its K nearest images.

    image_vectors (n_images, D), caption_vectors (n_captions, D), caption_image (n_captions,) image row of each.
    """
    ranks = answer_ranks(caption_vectors @ image_vectors.T, caption_image)  # 0-based rank of the caption's image
    return {k: float(100.0 * (ranks < k).mean()) for k in ks if k <= image_vectors.shape[0]}


def choose_k(curve: dict[int, float], target: float) -> int:
    """The smallest K of the curve whose recall reaches ``target`` percent (the largest K when none does)."""
    reached = [k for k, r in sorted(curve.items()) if r >= target]
    return reached[0] if reached else max(curve)
