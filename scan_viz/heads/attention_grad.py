"""SCAN's attention for training: the forward of :func:`scan_viz.heads.attention.scan_attention`, a hand-written backward.

Autograd through :func:`~scan_viz.heads.attention.scan_attention` stores every (images x regions x captions x words)
intermediate and walks back through each of its element-wise steps, which made the head's backward about two
thirds of a training step. :class:`ScanAttentionFunction` instead

* runs the forward as scoring does (``scan_attention`` under ``no_grad``, with its in-place passes) and stores only
  the embeddings, and
* in the backward recomputes a block of images (t2i) or captions (i2t) at a time, with the same pure functions
  (:func:`~scan_viz.heads.similarity.region_word_similarity`, :func:`~scan_viz.heads.attention.normalize_raw`, the softmax
  numerator, :func:`~scan_viz.heads.attention.aggregate`), and writes the gradient out by hand: a few element-wise
  passes per block that stay in the CPU's cache, three matrix products.

Both directions are the same computation with the roles swapped ("query items attend over context items"): t2i
has words attending over regions, i2t regions over words. The backward lays the cosines out as
``(n_context_sets, n_context, n_query_sets, n_query)``, i.e. ``(images, regions, captions, words)`` for t2i and
``(captions, words, images, regions)`` for i2t, so one backward serves both.

Gradient of one pair (a query item q, context items c; ``s[c, q]`` cosines, ``l`` the normalised logits, ``a`` the
softmax over c, ``dot_q = sum_c a s``, ``sq_q = a^T G a`` with G the context's Gram matrix, ``R_q = dot_q /
(|u_q| sqrt(sq_q))``), from ``g_R`` (autograd through the small aggregation):

    g_dot = g_R / (|u| sqrt(sq))          g_sq = -g_R R / (2 sq)          g_|u| = -g_R R / |u|
    g_a = g_dot s + 2 g_sq G a            sum_c a g_a = g_dot dot + 2 g_sq sq   (no extra pass)
    g_l = a (g_a - sum_c a g_a)           g_s = g_dot a + (normalisation's backward of g_l)
    g_G = sum_q g_sq a a^T, so g_context += 2 g_G context;  s = context . query gives the two matrix products.

The normalisation's backward is written out for the default ``clipped_l2norm`` and ``l2norm`` (whose recomputation
is then written inline, ``lam * x / (|x| + eps)`` as in ``normalize_raw``, because the backward needs ``|x|``); the
other normalisations call ``normalize_raw`` and go through autograd for that step only. ``tests/test_attention_grad.py`` checks the whole
function with ``torch.autograd.gradcheck`` in float64, and against autograd through ``scan_attention``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from scan_viz.heads import native
from scan_viz.heads.attention import (LEAKY_SLOPE, AttentionParams, _masked_norm, _softmax_numerator, aggregate,
                                      normalize_raw, scan_attention, softmax_is_bounded)
from scan_viz.heads.attention_pairs import (kernel_scores, kernel_usable, pair_inputs, ragged_pair_inputs,
                                           ragged_sims)
from scan_viz.heads.similarity import EPS, product_matmul, region_word_similarity

__all__ = ["BLOCK_BYTES", "ScanAttentionFunction", "kernel_packs_words", "scan_scores_trainable"]

#: Bytes of one (context sets x context x query sets x query) block: a handful of tensors of this size are alive
#: at once in the backward, and they should stay in the CPU's cache.
BLOCK_BYTES = 4 * 1024**2


def _blocks(n: int, per_item: int, block_bytes: int) -> tuple[range, int]:
    step = max(1, block_bytes // max(per_item, 1))
    return range(0, n, step), step


class ScanAttentionFunction(torch.autograd.Function):
    """``scores = scan_attention(regions, words, ...).scores`` with a recomputing backward (see the module doc).

    Call it through :func:`scan_scores_trainable`. Gradients flow to ``regions`` and ``words``.
    """

    @staticmethod
    def forward(ctx, regions, words, word_lengths, region_lengths, params, product_dtype, block_bytes,
                packed_words=False):
        ctx.params, ctx.product_dtype, ctx.block_bytes = params, product_dtype, block_bytes
        ctx.kernel = None
        with torch.no_grad():
            if packed_words and kernel_packs_words(params, regions, words):
                ctx.kernel = ragged_pair_inputs(regions, words, word_lengths, region_lengths, product_dtype)
                scores = kernel_scores(ctx.kernel, params.cross_attn, params.raw_feature_norm, params.agg_func,
                                       params.lambda_softmax, params.lambda_lse)
            elif (params.agg_func in native.AGGREGATIONS
                    and kernel_usable(params.cross_attn, params.raw_feature_norm, regions, words)):
                # the per-pair C kernel: the cosines are kept for its backward (one matrix product saved)
                ctx.kernel = pair_inputs(regions, words, word_lengths, region_lengths, params.cross_attn,
                                         product_dtype)
                scores = kernel_scores(ctx.kernel, params.cross_attn, params.raw_feature_norm, params.agg_func,
                                       params.lambda_softmax, params.lambda_lse)
            else:
                per_image = regions.shape[1] * words.shape[0] * words.shape[1] * regions.element_size()
                starts, step = _blocks(regions.shape[0], per_image, block_bytes)
                scores = torch.cat([
                    scan_attention(regions[s:s + step], words, word_lengths, params,
                                   None if region_lengths is None else region_lengths[s:s + step],
                                   product_dtype=product_dtype).scores
                    for s in starts])
        ctx.save_for_backward(regions, words, word_lengths, region_lengths)
        return scores

    @staticmethod
    def backward(ctx, grad_scores):
        regions, words, word_lengths, region_lengths = ctx.saved_tensors
        params = ctx.params
        if params.cross_attn == "t2i":
            context, query, context_lengths, query_lengths = regions, words, region_lengths, word_lengths
            grad = grad_scores
        else:
            context, query, context_lengths, query_lengths = words, regions, word_lengths, region_lengths
            if query_lengths is None:
                query_lengths = torch.full((regions.shape[0],), regions.shape[1], dtype=torch.int64)
            grad = grad_scores.t()
        if ctx.kernel is not None:
            g_context, g_query = _kernel_backward(ctx.kernel, grad, params, ctx.product_dtype)
        else:
            g_context, g_query = _query_over_context_backward(context, query, context_lengths, query_lengths, grad,
                                                              params, ctx.product_dtype, ctx.block_bytes)
        g_regions, g_words = (g_context, g_query) if params.cross_attn == "t2i" else (g_query, g_context)
        return g_regions, g_words, None, None, None, None, None, None


def kernel_packs_words(params: AttentionParams, regions: torch.Tensor, words: torch.Tensor) -> bool:
    """Whether the C kernel scores this t2i block with the captions' words packed (:func:`ragged_pair_inputs`)."""
    return (params.cross_attn == "t2i" and params.agg_func in native.AGGREGATIONS
            and kernel_usable(params.cross_attn, params.raw_feature_norm, regions, words))


def scan_scores_trainable(regions: torch.Tensor, words: torch.Tensor, word_lengths: torch.Tensor,
                          params: AttentionParams, region_lengths: torch.Tensor | None = None,
                          product_dtype: torch.dtype | None = None, block_bytes: int = BLOCK_BYTES,
                          packed_words: bool = False) -> torch.Tensor:
    """(n_images, n_captions) SCAN scores of a block of pairs, differentiable through the recomputing backward.

    regions (n_images, n_regions, d), words (n_captions, max_words, d), word_lengths (n_captions,) int; the scores
    are those of :func:`scan_viz.heads.attention.scan_attention` (the same call). ``product_dtype`` (e.g. bfloat16): the
    dtype of the region-word products, in the forward and in the backward's recomputation and matrix products.
    ``packed_words``: where the C kernel computes the block in t2i (:func:`kernel_packs_words`), lay the captions'
    words out packed, without padding (:func:`~scan_viz.heads.attention_pairs.ragged_pair_inputs`), so captions of
    any lengths are one block with no padded word in its products.
    """
    return ScanAttentionFunction.apply(regions, words, word_lengths, region_lengths, params, product_dtype,
                                       block_bytes, packed_words)


def _query_over_context_backward(context, query, context_lengths, query_lengths, grad, params, product_dtype,
                                 block_bytes):
    """Gradients of ``sum(grad * scores)`` w.r.t. context (C, k, d) and query (Q, n, d); grad (C, Q).

    Query items attend over context items (t2i: words over regions; i2t: regions over words). The cosines of all
    pairs are one matrix product, their gradient too; the element-wise steps between them walk blocks of context
    sets small enough to stay in cache.
    """
    n_ctx_sets, n_ctx, _ = context.shape
    n_q_sets, n_q, _ = query.shape
    bounded = softmax_is_bounded(params)
    hand_norm = params.raw_feature_norm in ("clipped_l2norm", "l2norm")
    clipped = params.raw_feature_norm.startswith("clipped")
    lam = params.lambda_softmax
    sim = region_word_similarity(context, query, query_lengths, context_lengths, product_dtype)
    all_sims, ctx_m, q_m = sim.sims, sim.regions, sim.words      # (C, k, Q, n); context / query, padding zeroed
    q_valid = sim.word_valid                                      # (Q, n)
    agg_valid = q_valid[None]
    ctx_valid = sim.pair_region_valid                             # (C, k, 1, 1) or None
    query_norm = _masked_norm(q_m, q_valid)[None]                 # |u|, (1, Q, n)
    all_grams = ctx_m @ ctx_m.transpose(1, 2)                     # (C, k, k)
    g_all_sims = torch.empty_like(all_sims)
    g_grams = torch.empty_like(all_grams)
    g_query_norm = torch.zeros(n_q_sets, n_q, dtype=query.dtype, device=query.device)
    per_set = n_ctx * n_q_sets * n_q * context.element_size()
    starts, step = _blocks(n_ctx_sets, per_set, block_bytes)
    for s0 in starts:
        sims = all_sims[s0:s0 + step]
        cb = sims.shape[0]
        cv = None if ctx_valid is None else ctx_valid[s0:s0 + cb]
        # --- the forward, recomputed
        if hand_norm:
            x = F.leaky_relu(sims, LEAKY_SLOPE) if clipped else sims
            x_norm = torch.linalg.vector_norm(x, dim=3, keepdim=True)       # (Cb, k, Q, 1)
            scale = lam / (x_norm + EPS)
            logits = x * scale                   # normalize_raw's l2 branch, keeping |x| for the backward
        else:
            sims_leaf = sims.detach().requires_grad_()
            with torch.enable_grad():
                logits_graph = normalize_raw(sims_leaf, params.raw_feature_norm, dim=3, valid=sim.pair_word_valid,
                                             scale=lam)
            logits = logits_graph.detach()
        e, z = _softmax_numerator(logits, 1, cv, bounded, inplace=hand_norm)
        attn = e.div_(z[:, None])                                # a: (Cb, k, Q, n), sums to 1 over k
        dot = (attn * sims).sum(dim=1)                           # (Cb, Q, n)
        gram = all_grams[s0:s0 + cb]
        g_attn = (gram @ attn.view(cb, n_ctx, n_q_sets * n_q)).view_as(attn)   # G a
        attended_sq = (g_attn * attn).sum(dim=1).clamp(min=0)    # (Cb, Q, n)
        den = query_norm * attended_sq.sqrt()
        rel = dot / den.clamp(min=EPS)
        # --- the aggregation's gradient by autograd: a (Cb, Q, n) tensor, small
        rel_leaf = rel.requires_grad_()
        with torch.enable_grad():
            pooled = aggregate(rel_leaf, params.agg_func, params.lambda_lse, agg_valid.expand_as(rel))
            (g_rel,) = torch.autograd.grad(pooled, rel_leaf, grad[s0:s0 + cb])
        rel = rel.detach()
        # --- relevance R = dot / (|u| sqrt(sq)); the clamp at EPS stops the gradient of the denominator
        g_dot = g_rel / den.clamp(min=EPS)
        g_rel_r = torch.where(den > EPS, g_rel * rel, 0.0)
        g_sq = torch.where(attended_sq > 0, -0.5 * g_rel_r / attended_sq.clamp(min=EPS * EPS), 0.0)
        g_query_norm -= (g_rel_r / query_norm).sum(dim=0)
        # --- the Gram matrix: g_G = sum_q g_sq a a^T
        weighted = attn * g_sq[:, None]
        torch.bmm(weighted.view(cb, n_ctx, -1), attn.view(cb, n_ctx, -1).transpose(1, 2), out=g_grams[s0:s0 + cb])
        # --- g_a = g_dot s + 2 g_sq G a;  g_l = a (g_a - sum_c a g_a), sum_c a g_a = g_dot dot + 2 g_sq sq
        g_attn.mul_(2 * g_sq[:, None]).addcmul_(sims, g_dot[:, None])
        g_attn.sub_((g_dot * dot + 2 * g_sq * attended_sq)[:, None]).mul_(attn)     # now g_l
        g_logits = g_attn
        g_sims = g_all_sims[s0:s0 + cb]
        # --- the normalisation's backward (over the query axis, dim 3), then the cosines' gradient
        if hand_norm:
            # l = lam x / (|x| + eps): g_x = lam / (|x| + eps) g_l - x (sum_q g_l x) lam / ((|x| + eps)^2 |x|)
            inner = (g_logits * x).sum(dim=3, keepdim=True)
            coef = torch.where(x_norm > 0, inner * scale / ((x_norm + EPS) * x_norm.clamp(min=EPS)), 0.0)
            g_x = g_logits.mul_(scale).sub_(x.mul_(coef) if clipped else x * coef)
            if clipped:
                # LeakyReLU's own backward kernel: one pass, written straight into the gradient of all cosines
                torch.ops.aten.leaky_relu_backward.grad_input(g_x, sims, LEAKY_SLOPE, False, grad_input=g_sims)
            else:
                g_sims.copy_(g_x)
        else:
            (g_norm,) = torch.autograd.grad(logits_graph, sims_leaf, g_logits)
            g_sims.copy_(g_norm)
        g_sims.addcmul_(attn, g_dot[:, None])
    return _products_backward(g_all_sims, g_grams, g_query_norm, ctx_m, q_m, q_m_norm=query_norm[0], q_valid=q_valid,
                              ctx_valid=sim.region_valid, product_dtype=product_dtype)


def _products_backward(g_sims, g_grams, g_query_norm, ctx_m, q_m, q_m_norm, q_valid, ctx_valid, product_dtype):
    """From the gradients of the cosines (C, k, Q, n), the Gram matrices and the query norms to those of the
    context (C, k, d) and query (Q, n, d) embeddings: ``s = context . query`` gives two matrix products over all
    pairs, ``G = context context^T`` gives ``2 g_G context``, ``|u| = sqrt(sum u^2)`` gives ``g_|u| u / |u|``."""
    n_ctx_sets, n_ctx, dim = ctx_m.shape
    n_q_sets, n_q, _ = q_m.shape
    flat = g_sims.view(n_ctx_sets * n_ctx, n_q_sets * n_q)
    g_context = product_matmul(flat, q_m.reshape(n_q_sets * n_q, dim), product_dtype).view(n_ctx_sets, n_ctx, dim)
    g_context.baddbmm_(g_grams, ctx_m, alpha=2)
    g_query = product_matmul(flat.t(), ctx_m.reshape(n_ctx_sets * n_ctx, dim), product_dtype).view(n_q_sets, n_q, dim)
    # padding gets no gradient
    g_query += (g_query_norm / q_m_norm)[..., None] * q_m
    g_query *= q_valid[..., None]
    if ctx_valid is not None:
        g_context *= ctx_valid[..., None]
    return g_context, g_query


#: below this share of pairs with a non-zero gradient (the hardest-negative loss: about 3 per image), the backward
#: works on those pairs only: their gradient tiles and small matrix products instead of all-pairs ones
LISTED_PAIRS_SHARE = 0.25


def _kernel_backward(inputs, grad, params, product_dtype):
    """The backward through the per-pair C kernel (:mod:`scan_viz.heads.native`): it recomputes each pair's forward
    from the saved cosines and writes the cosines' gradient; the matrix products are :func:`_products_backward`'s.
    Pairs whose gradient is 0 add nothing; when they are most pairs, only the others are visited."""
    ragged = inputs.ragged
    if inputs.sims is None:  # a second backward through the same graph: the first wrote its gradient over them
        inputs.sims = ragged_sims(inputs.context, inputs.query, product_dtype)
    grad = grad.to(inputs.sims.dtype)
    norm, agg, lam, lse = params.raw_feature_norm, params.agg_func, params.lambda_softmax, params.lambda_lse
    ctx_valid = None if bool(inputs.cvalid.all()) else inputs.cvalid.bool()
    pair_c, pair_q = torch.nonzero(grad, as_tuple=True)
    if pair_c.numel() > LISTED_PAIRS_SHARE * grad.numel():
        # packed words: the gradient is written over the cosines (one fewer buffer of their size per step)
        g_sims, g_grams, g_qnorm = native.pairs_backward(inputs.sims, inputs.gram, inputs.qnorm, inputs.qvalid,
                                                         inputs.cvalid, grad, norm, agg, lam, lse, ragged=ragged,
                                                         out=None if ragged is None else inputs.sims)
        if ragged is None:
            return _products_backward(g_sims, g_grams, g_qnorm, inputs.context, inputs.query, inputs.qnorm,
                                      inputs.qvalid.bool(), ctx_valid, product_dtype)
        inputs.sims = None  # its memory holds the gradient now
        # packed words: the same products with all words as one query set of `width` items
        n_ctx, k, width = g_sims.shape
        g_context, g_packed = _products_backward(g_sims.view(n_ctx, k, 1, width), g_grams, g_qnorm.view(1, width),
                                                 inputs.context, inputs.query.view(1, width, -1),
                                                 inputs.qnorm.view(1, width), inputs.qvalid.view(1, width).bool(),
                                                 ctx_valid, product_dtype)
        return g_context, _unpacked(g_packed[0], inputs.query_valid)
    tiles, g_grams, g_qnorm = native.listed_pairs_backward(inputs.sims, inputs.gram, inputs.qnorm, inputs.qvalid,
                                                           inputs.cvalid, pair_c, pair_q, grad[pair_c, pair_q],
                                                           norm, agg, lam, lse, ragged=ragged)
    if ragged is not None:
        return _listed_products_ragged(tiles, g_grams, g_qnorm, inputs, pair_c, pair_q, ctx_valid, product_dtype)
    ctx_m, q_m = inputs.context, inputs.query
    # pair p's tile (k x n) times its query items (n x d) / its context items (k x d), added up per set
    g_context = torch.zeros_like(ctx_m).index_add_(0, pair_c, _bmm(tiles, q_m[pair_q], product_dtype))
    g_context.baddbmm_(g_grams, ctx_m, alpha=2)
    g_query = torch.zeros_like(q_m).index_add_(0, pair_q, _bmm(tiles.transpose(1, 2), ctx_m[pair_c], product_dtype))
    g_query += (g_qnorm / inputs.qnorm)[..., None] * q_m
    g_query *= inputs.qvalid[..., None]
    if ctx_valid is not None:
        g_context *= ctx_valid[..., None]
    return g_context, g_query


def _unpacked(packed: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(width, d) rows of packed words back into (Q, max_words, d) captions, zeros at padded words."""
    out = packed.new_zeros(*valid.shape, packed.shape[-1])
    out[valid] = packed
    return out


def _listed_products_ragged(tiles, g_grams, g_qnorm, inputs, pair_c, pair_q, ctx_valid, product_dtype):
    """:func:`_kernel_backward`'s listed-pairs products with the words packed: pair p's tile (k x longest) has its
    caption's words in its first columns and zeros after, so the captions are padded to the longest first."""
    ctx_m, valid = inputs.context, inputs.query_valid[:, :inputs.ragged.longest]
    q_pad = _unpacked(inputs.query, valid)                               # (Q, longest, d)
    g_context = torch.zeros_like(ctx_m).index_add_(0, pair_c, _bmm(tiles, q_pad[pair_q], product_dtype))
    g_context.baddbmm_(g_grams, ctx_m, alpha=2)
    g_q_pad = torch.zeros_like(q_pad).index_add_(0, pair_q, _bmm(tiles.transpose(1, 2), ctx_m[pair_c], product_dtype))
    g_packed = g_q_pad[valid] + (g_qnorm / inputs.qnorm)[:, None] * inputs.query
    if ctx_valid is not None:
        g_context *= ctx_valid[..., None]
    return g_context, _unpacked(g_packed, inputs.query_valid)


def _bmm(left: torch.Tensor, right: torch.Tensor, product_dtype: torch.dtype | None) -> torch.Tensor:
    if product_dtype is not None and product_dtype != left.dtype:
        return torch.bmm(left.to(product_dtype), right.to(product_dtype)).to(left.dtype)
    return torch.bmm(left, right)
