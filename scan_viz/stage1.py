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
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scan_viz.encoders import l2norm
from scan_viz.errors import ScanVizError
from scan_viz.metrics import answer_ranks

STAGE1_CONFIG = "stage1.json"
STAGE1_WEIGHTS = "stage1.safetensors"
STAGE1_FORMAT = "scan-viz-stage1/1"


def model_fingerprint(model) -> str:
    """sha256 (16 hex digits) of a ScanModel's encoder weights: which SCAN model a stage-1 head was trained on."""
    digest = hashlib.sha256()
    for encoder in (model.image_encoder, model.text_encoder):
        update_digest(digest, encoder)
    return digest.hexdigest()[:16]


def update_digest(digest, module: nn.Module) -> None:
    """Feed a module's weights (names and float32 values, in name order) into a hashlib digest."""
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())


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


# ------------------------------------------------------------------------------------------------ CMCE loss
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
        head = Stage1Head(int(c["embed_size"]), int(c["dim"]), int(c.get("hidden", 0)))
        return head, Stage1(head, str(c["base_model"]), str(c["base_fingerprint"]), float(c["sigma"]),
                            {int(k): float(v) for k, v in c["recall_curve"].items()}, int(c["default_k"]),
                            Path(directory), c.get("training"))

    return load_module_dir(directory, STAGE1_CONFIG, STAGE1_FORMAT, STAGE1_WEIGHTS, build, "stage-1 head",
                           "python -m scan_viz.train.stage1")


def save_module_dir(directory: str | Path, module: nn.Module, weights_name: str, config: dict,
                    config_name: str) -> None:
    """A trained module as a folder: its weights (safetensors) and its ``config`` (JSON), swapped in atomically."""
    from safetensors.torch import save_file

    from scan_viz.io import write_dir_atomic

    def write(tmp: Path) -> None:
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp / weights_name))
        (tmp / config_name).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    write_dir_atomic(Path(directory), write)


def load_module_dir(directory: str | Path, config_name: str, fmt: str, weights_name: str,
                    build: Callable[[dict], tuple[nn.Module, Any]], what: str, retrain: str) -> Any:
    """Read a :func:`save_module_dir` folder. ``build(config)`` makes (the module, the object to return that holds
    it); the module gets the weights and is put in eval mode. Anything unreadable (a missing file, another format,
    missing keys, wrong shapes) is a ScanVizError naming ``what`` and the ``retrain`` command."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        config = json.loads((directory / config_name).read_text(encoding="utf-8"))
        if not isinstance(config, dict) or config.get("format") != fmt:
            raise ValueError(f"{config_name} is not a {fmt} file")
        module, result = build(config)
        module.load_state_dict(load_file(str(directory / weights_name)))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise ScanVizError(f"{directory} is not a readable {what} ({exc}); retrain it with `{retrain}`") from None
    module.eval()
    return result


def find_stage1(model, search_dirs: list[Path] | None = None) -> Stage1 | None:
    """The stage-1 head trained on exactly this model's encoders (by fingerprint), or None.

    Looked for in ``search_dirs`` (default: every folder under ``pretrained/``); a head trained on other
    weights is never used, since its vectors would not match the encoders.
    """
    directory = find_trained_for(model, STAGE1_CONFIG, search_dirs)
    return None if directory is None else load_stage1(directory)


def find_trained_for(model, config_name: str, search_dirs: list[Path] | None = None) -> Path | None:
    """The first folder of ``search_dirs`` (default: every folder under ``pretrained/``) whose ``config_name``
    JSON names this model's encoder fingerprint as its ``base_fingerprint``, or None."""
    from scan_viz.model import PRETRAINED_DIR

    if search_dirs is None:
        search_dirs = sorted(p for p in PRETRAINED_DIR.iterdir() if p.is_dir()) if PRETRAINED_DIR.is_dir() else []
    candidates = [d for d in search_dirs if (d / config_name).is_file()]
    if not candidates:
        return None
    fingerprint = model_fingerprint(model)
    for directory in candidates:
        try:
            config = json.loads((directory / config_name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if config.get("base_fingerprint") == fingerprint:
            return directory
    return None


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
