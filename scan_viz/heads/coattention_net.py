"""Co-attention re-ranker after Li et al. 2017: stage 2 of two-stage retrieval, on a SCAN model's frozen encoders.

Li, Xiao, Li, Yang, Wang (ICCV 2017) re-rank stage 1's survivors with a latent co-attention network: spatial
attention relates each word to the image's regions, latent semantic attention then weighs the word-level
features, and the result is a matching probability trained with binary cross-entropy, initialised from stage 1.
This is a small reconstruction of that idea on top of SCAN's encoders (not the paper's LSTM decoder), hence
"after". For one pair, with region embeddings v_r (r over the image's real regions) and word embeddings u_w (w over
the caption's words, ``<start>`` and ``<end>`` included), both L2-normalised by the encoders, and ``lambda`` the
spatial attention's inverse temperature (a fixed setting, saved with the weights):

1. Word-to-region spatial attention (the cosines are :func:`scan_viz.heads.similarity.region_word_similarity`'s)::

       alpha[w, r] = softmax_r(lambda * v_r . u_w)

2. Word-level features: the attended visual vector and the word, each through its own linear layer, multiplied
   element-wise (m = ``dim`` features)::

       a_w = W_v (sum_r alpha[w, r] v_r) + b_v  =  sum_r alpha[w, r] (W_v v_r) + b_v        (whichever is cheaper)
       h_w = (W_u u_w + b_u) * a_w

3. Latent semantic attention over the words: one learned query ``q``::

       beta_w = softmax_w(q . tanh(h_w)),   z = sum_w beta_w h_w

4. Matching probability ``p = sigmoid(o . z + c)``; the score is the logit ``o . z + c`` (monotone in p, so it
   ranks the same and does not saturate).

Every softmax leaves padded regions and words out, so padding changes nothing; every step is equivariant in the
order of the regions, so the score is not changed by permuting them.

Initialisation from stage 1 (``init_from_stage1``): ``W_v, b_v`` and ``W_u, b_u`` are a linear stage-1 head's image
and text projections restricted to the columns that read the mean-pooled embedding (the max-pooled half has no
per-item counterpart) with their biases; ``q = 0`` (uniform word weights) and ``o = 1 / sqrt(m)``, ``c = 0``. With
uniform spatial attention the initial logit is then the inner product of the two stage-1 projections of the
mean-pooled embeddings, scaled by ``1 / sqrt(m)``: training starts from the stage-1 similarity, as in the paper.
An MLP stage-1 head has no per-item part; the trainer then starts from the linear head that stage-1 training
starts from (centred mean pooling) and still mines its negatives with the MLP (see scan_viz/train/coattention.py).

Its alignment: ``attention`` = alpha (word x region), ``word_relevance`` = beta.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from pathlib import Path

import torch
from torch import nn

from scan_viz.errors import ScanVizError
from scan_viz.heads.similarity import masked_softmax, region_word_similarity
from scan_viz.parts import find_trained_for, load_module_dir, part_width, save_module_dir, update_digest

COATTENTION_CONFIG = "coattention.json"
COATTENTION_WEIGHTS = "coattention.safetensors"
COATTENTION_FORMAT = "scan-viz-coattention/1"
TRAIN_COMMAND = "python -m scan_viz.train.coattention"


@dataclasses.dataclass
class CoAttentionOutput:
    """logits (n_images, n_captions); with attention: alpha (n_images, n_captions, max_words, n_regions) and
    beta (n_images, n_captions, max_words)."""

    logits: torch.Tensor
    alpha: torch.Tensor | None = None
    beta: torch.Tensor | None = None


class CoAttention(nn.Module):
    """The re-ranker's learned part: two projections, the latent query and the output layer (equations above)."""

    def __init__(self, embed_size: int, dim: int, lambda_spatial: float = 9.0) -> None:
        super().__init__()
        self.lambda_spatial = float(lambda_spatial)
        self.region_proj = nn.Linear(embed_size, dim)
        self.word_proj = nn.Linear(embed_size, dim)
        self.query = nn.Parameter(torch.zeros(dim))
        self.out = nn.Linear(dim, 1)
        with torch.no_grad():
            self.out.weight.fill_(1.0 / math.sqrt(dim))
            self.out.bias.zero_()

    @property
    def dim(self) -> int:
        return int(self.region_proj.out_features)

    @property
    def embed_size(self) -> int:
        return int(self.region_proj.in_features)

    def forward(self, regions: torch.Tensor, words: torch.Tensor, word_lengths: torch.Tensor,
                region_lengths: torch.Tensor | None = None, return_attention: bool = False,
                product_dtype: torch.dtype | None = None, trace: dict | None = None) -> CoAttentionOutput:
        """Every pair of a block: regions (n_images, n_regions, d), words (n_captions, max_words, d),
        word_lengths (n_captions,), region_lengths (n_images,) or None -> logits (n_images, n_captions).

        ``trace``: a dict that receives every intermediate under its name (what :mod:`scan_viz.heads.walk` shows):
        sims, alpha, attended (a), features (h), latent (q . tanh h), beta, pooled (z), logits, and, for display
        only, the norms of a, h and z. It records the tensors this computation makes; the scores are the same
        bit for bit with or without it."""
        sim = region_word_similarity(regions, words, word_lengths, region_lengths, product_dtype)
        # 1. softmax over regions, laid out (n_img, n_cap, L, k) so step 2 is one batched matrix product
        alpha = masked_softmax(self.lambda_spatial * sim.sims, 1, sim.pair_region_valid).permute(0, 2, 3, 1)
        # 2. W_v (sum_r alpha v_r) = sum_r alpha (W_v v_r): projecting the k regions once costs k d m per image,
        # projecting the attended vectors n_cap L d m; take the cheaper order (re-ranking scores one caption)
        n_img, n_reg, n_cap, n_words = sim.sims.shape
        if n_reg <= n_cap * n_words:
            attended = alpha @ (sim.regions @ self.region_proj.weight.T)[:, None] + self.region_proj.bias
        else:
            attended = self.region_proj(alpha @ sim.regions[:, None])  # (n_img, n_cap, L, m)
        features = self.word_proj(sim.words)[None] * attended  # h: (n_img, n_cap, L, m)
        # 3. latent semantic attention over the real words
        latent = torch.tanh(features) @ self.query  # (n_img, n_cap, L)
        beta = masked_softmax(latent, 2, sim.word_valid[None])  # (n_img, n_cap, L)
        pooled = (beta[..., None] * features).sum(dim=2)  # z: (n_img, n_cap, m)
        logits = self.out(pooled)[..., 0]
        if trace is not None:
            # each word's part of the logit: beta_w (o . h_w), summing with c to it (display only)
            contribution = beta * (features @ self.out.weight[0])
            trace.update(sims=sim.sims, alpha=alpha, attended=attended, features=features, latent=latent,
                         beta=beta, pooled=pooled, logits=logits, contribution=contribution,
                         attended_norm=torch.linalg.vector_norm(attended, dim=-1),
                         features_norm=torch.linalg.vector_norm(features, dim=-1),
                         pooled_norm=torch.linalg.vector_norm(pooled, dim=-1))
        if not return_attention:
            return CoAttentionOutput(logits)
        return CoAttentionOutput(logits, alpha, beta)

    def bytes_per_pair(self, n_regions: int, n_words: int, itemsize: int) -> int:
        """Peak intermediate memory of one pair in :meth:`forward`, for sizing blocks."""
        # cosines, their softmax and its transposed copy (L x k); attended (before and after projecting), h,
        # tanh(h), beta * h (L x max(d, m))
        return (3 * n_regions * n_words + 5 * n_words * max(self.dim, self.embed_size)) * itemsize

    @torch.no_grad()
    def init_from_stage1(self, stage1_head) -> None:
        """Copy a linear stage-1 head's projections of the mean-pooled embedding (see the module docstring).

        An MLP stage-1 head (``hidden`` > 0) maps only pooled vectors, through a non-linear layer: it has no
        per-region or per-word part to copy, so it is refused here.
        """
        if stage1_head.hidden:
            raise ScanVizError("only a linear stage-1 head (hidden 0) can initialise the co-attention re-ranker")
        d = self.embed_size
        for own, theirs in ((self.region_proj, stage1_head.image_proj), (self.word_proj, stage1_head.text_proj)):
            if theirs.in_features != 2 * d or theirs.out_features != self.dim:
                raise ScanVizError(f"the stage-1 head maps {theirs.in_features} -> {theirs.out_features}, but this "
                                   f"re-ranker needs {2 * d} -> {self.dim}: make it with dim {theirs.out_features}")
            own.weight.copy_(theirs.weight[:, :d])
            own.bias.copy_(theirs.bias)


@dataclasses.dataclass
class CoAttentionReranker:
    """A trained re-ranker and what identifies it: the SCAN model whose encoders it reads (``base_fingerprint``),
    what it was initialised from, how it was trained, and its measured metrics (for the model card)."""

    net: CoAttention
    base_model: str
    base_fingerprint: str
    init: str
    training: dict | None = None
    metrics: dict | None = None
    path: Path | None = None

    def net_in(self, dtype: torch.dtype) -> CoAttention:
        """The network with its weights in ``dtype``, the embeddings' (float64 for the official test-time scores
        and the Learn steps): the trained one itself when they already are, else a copy (never cast in place)."""
        if self.net.query.dtype == dtype:
            return self.net
        return copy.deepcopy(self.net).to(dtype)

    @property
    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the weights and the base model: which scores it gives."""
        digest = hashlib.sha256(f"{self.base_fingerprint}:{self.net.lambda_spatial!r}".encode())
        update_digest(digest, self.net)
        return digest.hexdigest()[:16]

    def save(self, directory: str | Path) -> None:
        config = {"format": COATTENTION_FORMAT, "embed_size": self.net.embed_size, "dim": self.net.dim,
                  "lambda_spatial": self.net.lambda_spatial, "base_model": self.base_model,
                  "base_fingerprint": self.base_fingerprint, "init": self.init, "training": self.training,
                  "metrics": self.metrics}
        save_module_dir(directory, self.net, COATTENTION_WEIGHTS, config, COATTENTION_CONFIG)


def load_coattention(directory: str | Path) -> CoAttentionReranker:
    def build(c: dict) -> tuple[CoAttention, CoAttentionReranker]:
        net = CoAttention(part_width(c, "embed_size"), part_width(c, "dim"), float(c["lambda_spatial"]))
        return net, CoAttentionReranker(net, str(c["base_model"]), str(c["base_fingerprint"]), str(c.get("init", "")),
                                        c.get("training"), c.get("metrics"), Path(directory))

    return load_module_dir(directory, COATTENTION_CONFIG, COATTENTION_FORMAT, COATTENTION_WEIGHTS, build,
                           "co-attention re-ranker", TRAIN_COMMAND)


def find_coattention(model, search_dirs: list[Path] | None = None) -> CoAttentionReranker | None:
    """The re-ranker trained on exactly this model's encoders (by fingerprint), or None.

    Looked for in ``search_dirs`` (default: every folder under ``pretrained/``), as a stage-1 head is: one trained
    on other weights would read embeddings it never saw.
    """
    directory = find_trained_for(model, COATTENTION_CONFIG, search_dirs)
    return None if directory is None else load_coattention(directory)
