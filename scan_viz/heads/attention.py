"""SCAN's stacked cross attention as pure, batched tensor functions: the ONE implementation in scan-viz.

Training, the scoring engine, retrieval and the app all call :func:`scan_attention`.

Notation (paper / official code): ``regions`` V are region embeddings, ``words`` U word embeddings of
a caption. For every (image i, caption c) pair the region-word cosine matrix is ``S[w, r] = u_w . v_r``.

* t2i (query = words, context = regions): S is normalised over the WORDS of the caption for each region
  (``raw_feature_norm``), then ``softmax(lambda_softmax * .)`` over the regions gives ``a[w, r]``; the
  attended image vector of word w is ``a_w = sum_r a[w, r] v_r`` and its relevance is ``R_w = cos(u_w, a_w)``.
* i2t (query = regions, context = words): S is normalised over the REGIONS for each word, then softmax
  over the caption's words gives ``a[r, w]``; ``R_r = cos(v_r, sum_w a[r, w] u_w)``.
* The pair's score aggregates R (LogSumExp, Mean, Max or Sum) over words (t2i) or regions (i2t).

Where this differs from the official code in *how* (never *what*) it computes:

* The attended vectors are never materialised. ``u_w . a_w = sum_r a[w, r] S[w, r]`` reuses S, and
  ``|a_w|^2 = a_w^T G a_w`` with ``G = V V^T`` the image's (k x k) region Gram matrix (for i2t the
  caption's word Gram matrix). So a pair costs one slice of a single large matrix product plus O(k^2 n)
  work, instead of building (n_images x n_captions x n_words x d) tensors.
* All pairs of a block are computed at once, with padded words/regions masked out, instead of one call
  per caption. Every pair is independent, so the arithmetic per pair is the official one.
* Scores alone (no attention, no trace, no autograd) of the l2 normalisations are computed by a per-pair C kernel
  (:mod:`scan_viz.heads.native`) when it can be built: the same arithmetic, one pass over the cosines instead of
  about ten; the compiler may reorder sums, so float32 scores differ by rounding.
* ``l1norm`` / ``clipped_l1norm``: the official branches call an undefined function and crash; here they
  are L1 normalisation over the same axis as l2norm, ``x / (sum |x| + 1e-8)``, as their names say.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from scan_viz.heads import native
from scan_viz.heads.attention_pairs import direct_scores, kernel_scores, kernel_usable, pair_inputs
from scan_viz.heads.similarity import EPS, length_mask, region_word_similarity

__all__ = ["AttentionParams", "AttentionResult", "aggregate", "length_mask", "normalize_raw", "scan_attention"]

LEAKY_SLOPE = 0.1  # "clipped" in the official code is LeakyReLU(0.1), not max(x, 0)


@dataclasses.dataclass(frozen=True)
class AttentionParams:
    """The hyperparameters of one SCAN direction, under the paper's / official names (their defaults are declared
    once, by the SCAN head: :mod:`scan_viz.heads.scan`)."""

    cross_attn: str
    raw_feature_norm: str
    lambda_softmax: float
    agg_func: str
    lambda_lse: float


@dataclasses.dataclass
class AttentionResult:
    """What :func:`scan_attention` returns for a block of pairs.

    ``scores``: (n_images, n_captions). ``attention``: (n_images, n_captions, n_words, n_regions), the
    post-softmax weights a[w, r] for t2i (each word's row sums to 1 over regions) or a[r, w] stored
    transposed for i2t (each region's column sums to 1 over words). ``relevance``: (n_images,
    n_captions, n_words) for t2i, (n_images, n_captions, n_regions) for i2t. Both are None unless asked for.
    """

    scores: torch.Tensor
    attention: torch.Tensor | None = None
    relevance: torch.Tensor | None = None


def leaky_clip(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE)


def normalize_raw(attn: torch.Tensor, norm: str, dim: int, valid: torch.Tensor | None = None,
                  scale: float = 1.0, inplace: bool = False) -> torch.Tensor:
    """SCAN's first normalisation of the raw cosines along the query axis ``dim``, times ``scale``.

    ``valid`` (broadcastable to ``attn``, bool) marks real query items; invalid entries must already be 0
    (they then add nothing to l1/l2 sums) and are excluded from the softmax variant. ``scale`` folds the
    following ``* lambda_softmax`` into the same pass. ``inplace`` may overwrite ``attn`` (no autograd).
    """
    if norm == "softmax":
        if valid is not None:
            attn = attn.masked_fill(~valid, float("-inf"))
        out = torch.softmax(attn, dim=dim)
        if valid is not None:
            out = out.nan_to_num(0.0)
        return out * scale if scale != 1.0 else out
    if norm in ("clipped_l2norm", "clipped_l1norm", "clipped"):
        attn = F.leaky_relu_(attn, LEAKY_SLOPE) if inplace else leaky_clip(attn)
        inplace = True  # attn is now our own tensor
    if norm in ("l2norm", "clipped_l2norm"):
        # one pass, no temporary; its gradient at an all-zero (padded) row is 0, not NaN
        factor = scale / (torch.linalg.vector_norm(attn, dim=dim, keepdim=True) + EPS)
    elif norm in ("l1norm", "clipped_l1norm"):
        factor = scale / (attn.abs().sum(dim=dim, keepdim=True) + EPS)
    elif norm in ("clipped", "no_norm"):
        if scale == 1.0:
            return attn
        factor = scale
    else:
        raise ValueError(f"unknown raw_feature_norm {norm!r}")
    return attn.mul_(factor) if inplace and not torch.is_grad_enabled() else attn * factor


# After these normalisations |attn| <= 1, so exp(lambda_softmax * attn) cannot overflow for any
# sensible lambda; "clipped" and "no_norm" pass raw cosines on and get the max subtracted first.
_BOUNDED_NORMS = ("softmax", "l2norm", "clipped_l2norm", "l1norm", "clipped_l1norm")
#: the largest lambda_softmax for which a bounded norm skips the max subtraction: the attended vector's squared
#: norm is divided by z ** 2, z a sum of up to thousands of exp(lambda_softmax), which passes float32's 3.4e38 near
#: lambda_softmax 40 (NaN scores; the photo model's 50 hit it). Above it the max is subtracted: the same softmax.
MAX_UNSHIFTED_LAMBDA = 20.0


def softmax_is_bounded(params: AttentionParams) -> bool:
    """Whether the softmax numerator may skip the max subtraction (a bounded norm and a moderate lambda_softmax)."""
    return params.raw_feature_norm in _BOUNDED_NORMS and params.lambda_softmax <= MAX_UNSHIFTED_LAMBDA


def _softmax_numerator(logits: torch.Tensor, dim: int, valid: torch.Tensor | None, bounded: bool,
                       inplace: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(logits) with invalid entries 0, and its sum over ``dim``: a softmax without the division.

    The division is folded into the quantities computed from it (dot products and quadratic forms),
    which saves a full pass over the (pairs x words x regions) tensor. Same value as torch.softmax.
    """
    own = inplace
    if not bounded:
        masked = logits if valid is None else logits.masked_fill(~valid, float("-inf"))
        logits = logits - masked.amax(dim=dim, keepdim=True)
        own = True
    e = logits.exp_() if own else logits.exp()
    if valid is not None:  # not in place under autograd: exp's backward reads its output
        e = e.mul_(valid) if inplace else e * valid
    return e, e.sum(dim=dim)


def aggregate(rel: torch.Tensor, agg_func: str, lambda_lse: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pool relevances over the last dim. LogSumExp is ``log(sum exp(lambda_lse * R)) / lambda_lse`` (no 1/k)."""
    if agg_func == "LogSumExp":
        e = torch.exp(rel * lambda_lse)
        if valid is not None:
            e = e * valid
        return torch.log(e.sum(dim=-1)) / lambda_lse
    if agg_func == "Mean":
        if valid is None:
            return rel.mean(dim=-1)
        return (rel * valid).sum(dim=-1) / valid.sum(dim=-1).clamp(min=1)
    if agg_func == "Max":
        if valid is not None:
            rel = rel.masked_fill(~valid, float("-inf"))
        return rel.max(dim=-1).values
    if agg_func == "Sum":
        return (rel * valid).sum(dim=-1) if valid is not None else rel.sum(dim=-1)
    raise ValueError(f"unknown agg_func {agg_func!r}")


def _masked_norm(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """L2 norm over the last dim; 1 at padded positions, so no 0/0 reaches the gradient."""
    sq = x.pow(2).sum(dim=-1)
    return (sq if valid is None else torch.where(valid, sq, torch.ones_like(sq))).sqrt()


def attended_vectors_cheaper(n_regions: int, n_queries: int, dim: int) -> bool:
    """Whether forming ``n_queries`` attended vectors per image (``n_queries * k * d`` multiply-adds) costs less
    than the image's Gram matrix and its quadratic forms (``k * k * (d + n_queries)``)."""
    return n_queries * dim < n_regions * (dim + n_queries)


def _attended_sq(regions: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``|sum_r e_r v_r|^2`` for every (image, caption, word): regions (n_img, k, d), e (n_img, k, n_cap, L).

    Two exact ways, taking the cheaper: through each image's Gram matrix (k x k x d per image, shared by all its
    captions' words: a block of many captions) or by forming the attended vectors (n_cap x L x k x d per image:
    a query of one caption against many images, as stage-2 re-ranking and per-query search score).
    """
    n_img, n_reg, n_cap, n_words = e.shape
    weights = e.view(n_img, n_reg, n_cap * n_words)
    if attended_vectors_cheaper(n_reg, n_cap * n_words, regions.shape[-1]):
        attended = weights.transpose(1, 2) @ regions  # (n_img, n_cap * L, d), unnormalised
        # the norm reduces in one pass; square().sum() would write and re-read another tensor of attended's size
        return torch.linalg.vector_norm(attended, dim=-1).square().view(n_img, n_cap, n_words)
    gram = regions @ regions.transpose(1, 2)  # (n_img, k, k)
    return ((gram @ weights).view_as(e) * e).sum(dim=1)


def scan_attention(
    regions: torch.Tensor,
    words: torch.Tensor,
    word_lengths: torch.Tensor,
    params: AttentionParams,
    region_lengths: torch.Tensor | None = None,
    return_attention: bool = False,
    product_dtype: torch.dtype | None = None,
    trace: dict[str, torch.Tensor] | None = None,
) -> AttentionResult:
    """Score every (image, caption) pair of a block with SCAN t2i or i2t.

    regions: (n_images, n_regions, d) region embeddings; words: (n_captions, max_words, d) word
    embeddings (positions past ``word_lengths`` are ignored); word_lengths: (n_captions,) int;
    region_lengths: optional (n_images,) int for images with fewer than n_regions real regions.
    product_dtype: the dtype of the region-word product (:func:`~scan_viz.heads.similarity.region_word_similarity`).
    Differentiable (used by training too).
    trace: an optional dict that receives the intermediates (``sims`` (n_img, k, n_cap, L), ``logits``
    lambda_softmax times the normalised cosines in the same layout, ``attention`` the softmax weights in the same
    layout, ``dot`` the query item's dot product with its attended vector, ``attended_norm`` that vector's norm,
    ``relevance`` and ``scores`` as returned): what :mod:`scan_viz.heads.walk` shows. Without it nothing is copied and
    the arithmetic is unchanged.
    """
    if (not return_attention and trace is None and not torch.is_grad_enabled()
            and params.agg_func in native.AGGREGATIONS
            and kernel_usable(params.cross_attn, params.raw_feature_norm, regions, words)):
        # scores only: the per-pair C kernel computes the same arithmetic (scan_viz/heads/native)
        if params.cross_attn == "t2i" and words.shape[0] == 1 and product_dtype in (None, regions.dtype):
            # one caption (a search's stage 2, one pair): cosines and attended vectors from the embeddings
            return AttentionResult(direct_scores(regions, words, word_lengths, region_lengths,
                                                 params.raw_feature_norm, params.agg_func, params.lambda_softmax,
                                                 params.lambda_lse))
        inputs = pair_inputs(regions, words, word_lengths, region_lengths, params.cross_attn, product_dtype)
        return AttentionResult(kernel_scores(inputs, params.cross_attn, params.raw_feature_norm, params.agg_func,
                                             params.lambda_softmax, params.lambda_lse))
    similarity = region_word_similarity(regions, words, word_lengths, region_lengths, product_dtype)
    sims, regions, words = similarity.sims, similarity.regions, similarity.words
    word_valid, region_valid = similarity.word_valid, similarity.region_valid
    n_img, n_reg, n_cap, n_words = sims.shape
    wv, rv = similarity.pair_word_valid, similarity.pair_region_valid

    inplace = not torch.is_grad_enabled()
    if trace is not None:
        trace["sims"] = sims.clone()
    bounded = softmax_is_bounded(params)
    if params.cross_attn == "t2i":
        # normalise over words (query axis) for each region, then softmax over regions (context axis)
        logits = normalize_raw(sims, params.raw_feature_norm, dim=3, valid=wv, scale=params.lambda_softmax)
        if trace is not None:
            trace["logits"] = logits.clone()  # the softmax below may exponentiate in place
        e, z = _softmax_numerator(logits, 1, rv, bounded, inplace)  # e: (n_img, k, n_cap, L), z: (n_img, n_cap, L)
        dot = (e * sims).sum(dim=1) / z  # u_w . attended_w
        attended_sq = _attended_sq(regions, e) / z.square()
        query_norm = _masked_norm(words, word_valid)[None]  # |u_w|, (1, n_cap, L)
        rel = dot / (query_norm * attended_sq.clamp(min=0).sqrt()).clamp(min=EPS)
        valid = word_valid[None].expand(n_img, n_cap, n_words)
        attn = (e / z[:, None]).permute(0, 2, 3, 1) if return_attention else None
        if trace is not None:
            trace.update(attention=e / z[:, None], dot=dot, attended_norm=attended_sq.clamp(min=0).sqrt())
    elif params.cross_attn == "i2t":
        # normalise over regions (query axis) for each word, then softmax over words (context axis)
        logits = normalize_raw(sims, params.raw_feature_norm, dim=1, valid=rv, scale=params.lambda_softmax)
        if trace is not None:
            trace["logits"] = logits.clone()
        e, z = _softmax_numerator(logits, 3, wv, bounded, inplace)  # z: (n_img, k, n_cap)
        dot = (e * sims).sum(dim=3) / z  # v_r . attended_r
        gram = words @ words.transpose(1, 2)  # (n_cap, L, L)
        attended_sq = (torch.einsum("ircw,cwv->ircv", e, gram) * e).sum(dim=3) / z.square()
        query_norm = _masked_norm(regions, region_valid)[:, :, None]  # |v_r|, (n_img, k, 1)
        rel = (dot / (query_norm * attended_sq.clamp(min=0).sqrt()).clamp(min=EPS)).transpose(1, 2)
        valid = region_valid[:, None, :].expand(n_img, n_cap, n_reg) if region_valid is not None else None
        attn = (e / z[..., None]).permute(0, 2, 3, 1) if return_attention else None
        if trace is not None:
            trace.update(attention=e / z[..., None], dot=dot, attended_norm=attended_sq.clamp(min=0).sqrt())
    else:
        raise ValueError(f"unknown cross_attn {params.cross_attn!r}")

    scores = aggregate(rel, params.agg_func, params.lambda_lse, valid)
    if trace is not None:
        trace.update(relevance=rel, scores=scores)
    if not return_attention:
        return AttentionResult(scores)
    # attention in the public layout: (n_img, n_cap, n_words, n_regions)
    return AttentionResult(scores, attention=attn, relevance=rel)
