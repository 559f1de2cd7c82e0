"""SCAN's attention through the per-pair C kernel (:mod:`scan_viz.heads.native`): the inputs it takes, its scores.

Both directions are "query items attend over context items": t2i has words attending over the regions of an image
(context = regions, query = words), i2t regions over the words of a caption (context = words, query = regions).
:func:`pair_inputs` lays a block out that way: the cosines as (context sets, context items, query sets, query
items), the context sets' Gram matrices, the query items' norms and both validity masks, all as the tensor code
(:func:`scan_viz.heads.attention.scan_attention`) computes them, so the kernel starts from the same numbers.
"""
from __future__ import annotations

import dataclasses

import torch

from scan_viz.heads import native
from scan_viz.heads.similarity import length_mask, product_matmul, region_word_similarity

__all__ = ["PairInputs", "direct_half_scores", "direct_scores", "kernel_usable", "kernel_scores", "pair_inputs",
           "ragged_pair_inputs", "ragged_sims"]


@dataclasses.dataclass
class PairInputs:
    """A block as query items over context items (see the module doc); ``context`` / ``query`` with padding
    zeroed, as the cosines were computed from them."""

    sims: torch.Tensor     # (C, k, Q, n)
    gram: torch.Tensor     # (C, k, k)
    qnorm: torch.Tensor    # (Q, n), 1 at padded query items
    qvalid: torch.Tensor   # (Q, n), 1.0 / 0.0
    cvalid: torch.Tensor   # (C, k), 1.0 / 0.0
    context: torch.Tensor  # (C, k, d)
    query: torch.Tensor    # (Q, n, d)
    #: t2i with the captions' words packed one after the other (:func:`ragged_pair_inputs`): sims (C, k, width),
    #: qnorm / qvalid (width,), query (width, d); query_valid (Q, max_words) marks where they sit in the captions
    ragged: native.Ragged | None = None
    query_valid: torch.Tensor | None = None


def kernel_usable(cross_attn: str, norm: str, regions: torch.Tensor, words: torch.Tensor) -> bool:
    """Whether the C kernel computes this block (CPU, float32/64, a normalisation it implements, built)."""
    n_context, n_query = ((regions.shape[1], words.shape[1]) if cross_attn == "t2i"
                          else (words.shape[1], regions.shape[1]))
    return native.usable(norm, regions, n_context, n_query) and words.dtype == regions.dtype


def pair_inputs(regions: torch.Tensor, words: torch.Tensor, word_lengths: torch.Tensor,
                region_lengths: torch.Tensor | None, cross_attn: str,
                product_dtype: torch.dtype | None = None) -> PairInputs:
    """The block's cosines and masks in the query-over-context layout of ``cross_attn``."""
    if cross_attn == "t2i":
        context, query, context_lengths, query_lengths = regions, words, region_lengths, word_lengths
    else:
        context, query, context_lengths, query_lengths = words, regions, word_lengths, region_lengths
        if query_lengths is None:
            query_lengths = torch.full((regions.shape[0],), regions.shape[1], dtype=torch.int64)
    sim = region_word_similarity(context, query, query_lengths, context_lengths, product_dtype)
    ctx_m, q_m = sim.regions, sim.words  # context / query with padding zeroed
    dtype = sim.sims.dtype
    q_valid = sim.word_valid
    sq = q_m.pow(2).sum(dim=-1)
    qnorm = torch.where(q_valid, sq, torch.ones_like(sq)).sqrt()
    cvalid = (torch.ones(ctx_m.shape[:2], dtype=dtype) if sim.region_valid is None
              else sim.region_valid.to(dtype))
    return PairInputs(sim.sims.contiguous(), (ctx_m @ ctx_m.transpose(1, 2)).contiguous(), qnorm.contiguous(),
                      q_valid.to(dtype).contiguous(), cvalid.contiguous(), ctx_m, q_m)


def ragged_pair_inputs(regions: torch.Tensor, words: torch.Tensor, word_lengths: torch.Tensor,
                       region_lengths: torch.Tensor | None, product_dtype: torch.dtype | None = None) -> PairInputs:
    """t2i inputs with the captions' real words packed one after the other (:class:`scan_viz.heads.native.Ragged`):
    the cosines (n_images, n_regions, total words) are one matrix product with no padded word in it, and the kernel
    sizes each pair's tile to its own caption. The numbers are :func:`pair_inputs`' at the real words."""
    n_img, n_reg, dim = regions.shape
    query_valid = length_mask(word_lengths.to(words.device), words.shape[1])
    query = words[query_valid]                                       # (width, d), caption by caption
    context, cvalid = regions, torch.ones(n_img, n_reg, dtype=regions.dtype)
    if region_lengths is not None:
        region_valid = length_mask(region_lengths.to(regions.device), n_reg)
        context = regions * region_valid[:, :, None].to(regions.dtype)
        cvalid = region_valid.to(regions.dtype)
    return PairInputs(ragged_sims(context, query, product_dtype), (context @ context.transpose(1, 2)).contiguous(),
                      query.pow(2).sum(dim=-1).sqrt(), torch.ones(query.shape[0], dtype=regions.dtype),
                      cvalid.contiguous(), context, query, native.Ragged.of(word_lengths), query_valid)


def ragged_sims(context: torch.Tensor, query: torch.Tensor, product_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The cosines (n_images, n_regions, width) of context (n_images, n_regions, d) and packed words (width, d)."""
    n_img, n_reg, dim = context.shape
    return product_matmul(context.reshape(n_img * n_reg, dim), query.T, product_dtype).view(n_img, n_reg, -1)


def kernel_scores(inputs: PairInputs, cross_attn: str, norm: str, agg: str, lam: float,
                  lse: float) -> torch.Tensor:
    """(n_images, n_captions) scores of the block from its pair inputs."""
    scores = native.pairs_forward(inputs.sims, inputs.gram, inputs.qnorm, inputs.qvalid, inputs.cvalid, norm, agg,
                                  lam, lse, ragged=inputs.ragged)
    return scores if cross_attn == "t2i" else scores.t()


def direct_scores(regions: torch.Tensor, words: torch.Tensor, word_lengths: torch.Tensor,
                  region_lengths: torch.Tensor | None, norm: str, agg: str, lam: float, lse: float) -> torch.Tensor:
    """(n_images, 1) t2i scores of ONE caption against a block of images through the kernel's direct path
    (:func:`scan_viz.heads.native.pairs_forward_direct`): no cosine block and no Gram matrices in PyTorch first.
    For one caption the images' Gram matrices (k^2 d each) cost more than the caption's cosines and attended
    vectors together (2 k n d per image); stage 2 of a search scores one caption against K images."""
    n_img, n_reg, _ = regions.shape
    query, qnorm, qvalid = _one_caption(words, word_lengths)
    context = regions
    cvalid = torch.ones(n_img, n_reg, dtype=regions.dtype)
    if region_lengths is not None:
        valid = length_mask(region_lengths.to(regions.device), n_reg)
        context = regions * valid[:, :, None].to(regions.dtype)
        cvalid = valid.to(regions.dtype)
    scores = native.pairs_forward_direct(context.contiguous(), query, qnorm, qvalid, cvalid.contiguous(), norm, agg,
                                         lam, lse)
    return scores[:, None]


def _one_caption(words: torch.Tensor, word_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first caption's real words (n, d), no padded word to mask, with their norms and validity (all 1), as the
    kernel's direct path takes them."""
    query = words[0, :int(word_lengths[0])].detach().contiguous()
    return query, query.pow(2).sum(dim=-1).sqrt().contiguous(), torch.ones(len(query), dtype=words.dtype)


def direct_half_scores(table, rows, words: torch.Tensor, word_lengths: torch.Tensor,
                       region_lengths: torch.Tensor | None, norm: str, agg: str, lam: float, lse: float, gram=None):
    """:func:`direct_scores` for images whose regions are float16 rows of ``table`` (N, k, d), the rows ``rows``
    (:func:`scan_viz.heads.native.pairs_forward_direct_half`): (len(rows),) float32 numpy scores, the same numbers as
    :func:`direct_scores` on the rows widened to float32 (to float rounding where ``gram``, the rows' Gram matrices
    (N, k, k) float32, is given: :func:`scan_viz.retrieval.tokens.region_grams`); None where the kernel does not
    compute this case."""
    n_reg = int(table.shape[1])
    n = int(word_lengths[0])
    if (words.dtype != torch.float32 or words.device.type != "cpu" or norm not in native.NORMS
            or agg not in native.AGGREGATIONS or not 0 < n <= native.MAX_ITEMS or not 0 < n_reg <= native.MAX_ITEMS):
        return None
    query, qnorm, qvalid = _one_caption(words, word_lengths)
    cvalid = (torch.ones(len(rows), n_reg) if region_lengths is None
              else length_mask(region_lengths, n_reg).to(torch.float32))
    scores = native.pairs_forward_direct_half(table, rows, query, qnorm, qvalid, cvalid.contiguous(), norm, agg, lam,
                                              lse, gram=gram)
    return None if scores is None else scores.numpy()
