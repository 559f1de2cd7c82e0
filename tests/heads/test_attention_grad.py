"""The recomputing backward of SCAN's attention (scan_viz.heads.attention_grad) against autograd, in float64."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from scan_viz.heads.attention import AttentionParams, scan_attention
from scan_viz.heads.attention_grad import scan_scores_trainable
from scan_viz.heads.scan import AGG_FUNCS, RAW_FEATURE_NORMS


def _inputs(seed=0, n_img=3, n_reg=5, n_cap=4, max_words=6, dim=8):
    g = torch.Generator().manual_seed(seed)
    regions = F.normalize(torch.randn(n_img, n_reg, dim, generator=g, dtype=torch.float64), dim=-1)
    words = F.normalize(torch.randn(n_cap, max_words, dim, generator=g, dtype=torch.float64), dim=-1)
    lengths = torch.randint(2, max_words + 1, (n_cap,), generator=g)
    lengths[0] = max_words
    return regions.requires_grad_(), words.requires_grad_(), lengths


# a tiny block size: the backward then walks several blocks of images (t2i) or captions (i2t)
BLOCK = 500


@pytest.mark.parametrize("cross_attn,norm,agg", list(itertools.product(("t2i", "i2t"), RAW_FEATURE_NORMS, AGG_FUNCS)))
@pytest.mark.parametrize("region_padding", [False, True])
def test_gradcheck_float64(cross_attn, norm, agg, region_padding):
    regions, words, lengths = _inputs()
    region_lengths = torch.tensor([5, 3, 4]) if region_padding else None
    params = AttentionParams(cross_attn, norm, 9.0 if cross_attn == "t2i" else 4.0, agg, 6.0)
    assert torch.autograd.gradcheck(
        lambda r, w: scan_scores_trainable(r, w, lengths, params, region_lengths, block_bytes=BLOCK), (regions, words))


@pytest.mark.parametrize("cross_attn,norm,agg", list(itertools.product(("t2i", "i2t"), RAW_FEATURE_NORMS, AGG_FUNCS)))
def test_same_scores_and_gradients_as_autograd(cross_attn, norm, agg):
    """The forward IS scan_attention; the hand-written gradient equals autograd's through scan_attention."""
    regions, words, lengths = _inputs(seed=1, n_img=4, n_reg=7, n_cap=5, max_words=9, dim=16)
    region_lengths = torch.tensor([7, 2, 5, 7])
    params = AttentionParams(cross_attn, norm, 9.0 if cross_attn == "t2i" else 4.0, agg, 6.0)
    ref = scan_attention(regions, words, lengths, params, region_lengths).scores
    ours = scan_scores_trainable(regions, words, lengths, params, region_lengths, block_bytes=BLOCK)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    upstream = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = torch.autograd.grad(ref, (regions, words), upstream)
    got = torch.autograd.grad(ours, (regions, words), upstream)
    for e, o in zip(expected, got):
        torch.testing.assert_close(o, e, rtol=0, atol=1e-12)


def test_float32_block_sizes_agree():
    """Blocking is bookkeeping: one block and many blocks give the same gradients (float32, training sizes)."""
    regions, words, lengths = _inputs(seed=3, n_img=6, n_reg=36, n_cap=6, max_words=12, dim=32)
    regions, words = regions.detach().float().requires_grad_(), words.detach().float().requires_grad_()
    params = AttentionParams("t2i", "clipped_l2norm", 9.0, "LogSumExp", 6.0)
    grads = []
    for block in (10**9, 20_000):
        scores = scan_scores_trainable(regions, words, lengths, params, block_bytes=block)
        grads.append(torch.autograd.grad(scores.sum(), (regions, words)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_products_close_to_float32():
    regions, words, lengths = _inputs(seed=4, n_img=4, n_reg=36, n_cap=4, max_words=12, dim=64)
    regions, words = regions.detach().float().requires_grad_(), words.detach().float().requires_grad_()
    params = AttentionParams("t2i", "clipped_l2norm", 9.0, "LogSumExp", 6.0)
    out = {}
    for dtype in (None, torch.bfloat16):
        scores = scan_scores_trainable(regions, words, lengths, params, product_dtype=dtype)
        out[dtype] = (scores, *torch.autograd.grad(scores.sum(), (regions, words)))
    assert out[torch.bfloat16][0].dtype == torch.float32
    for a, b in zip(out[None], out[torch.bfloat16]):
        assert float((a - b).abs().max()) < 0.05 * float(a.abs().max())
        assert float((a - b).abs().max()) > 0  # the products did run in bfloat16
