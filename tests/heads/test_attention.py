"""The batched SCAN attention against the official per-caption algorithm (reference)."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference import func_attention, shard_xattn, xattn_score
from scan_viz.heads.attention import AttentionParams, aggregate, normalize_raw, scan_attention
from scan_viz.heads.scan import AGG_FUNCS, RAW_FEATURE_NORMS


def _embeddings(n_img=5, n_reg=7, n_cap=6, max_words=9, dim=16, dtype=torch.float64, seed=0, normalise=True):
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(n_img, n_reg, dim, generator=g, dtype=dtype)
    words = torch.randn(n_cap, max_words, dim, generator=g, dtype=dtype)
    lengths = torch.randint(2, max_words + 1, (n_cap,), generator=g)
    lengths[0] = max_words
    if normalise:
        regions, words = F.normalize(regions, dim=-1), F.normalize(words, dim=-1)
    # padding carries garbage: the engine must ignore it (the official code slices it away)
    return regions, words, lengths


@pytest.mark.parametrize("cross_attn,norm,agg", list(itertools.product(("t2i", "i2t"), RAW_FEATURE_NORMS, AGG_FUNCS)))
def test_scores_match_official_float64(cross_attn, norm, agg):
    regions, words, lengths = _embeddings()
    params = AttentionParams(cross_attn, norm, 9.0 if cross_attn == "t2i" else 4.0, agg, 6.0)
    ours = scan_attention(regions, words, lengths, params).scores
    ref = xattn_score(regions, words, lengths, cross_attn, norm, params.lambda_softmax, agg, 6.0)
    assert ours.shape == (5, 6)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cross_attn", ["t2i", "i2t"])
def test_unnormalised_embeddings_match(cross_attn):
    """no_imgnorm / no_txtnorm: the cosine must use the real norms, not assume 1."""
    regions, words, lengths = _embeddings(normalise=False, seed=3)
    params = AttentionParams(cross_attn, "clipped_l2norm", 9.0, "LogSumExp", 6.0)
    ours = scan_attention(regions, words, lengths, params).scores
    ref = xattn_score(regions, words, lengths, cross_attn, "clipped_l2norm", 9.0, "LogSumExp", 6.0)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cross_attn", ["t2i", "i2t"])
def test_float32_close_to_float64_reference(cross_attn):
    regions, words, lengths = _embeddings(n_reg=36, max_words=14, dim=64, seed=1)
    params = AttentionParams(cross_attn, "clipped_l2norm", 9.0, "LogSumExp", 6.0)
    ours = scan_attention(regions.float(), words.float(), lengths, params).scores.double()
    ref = shard_xattn(regions.numpy(), words.numpy(), lengths.numpy(), cross_attn=cross_attn,
                      raw_feature_norm="clipped_l2norm", lambda_softmax=9.0, agg_func="LogSumExp", lambda_lse=6.0)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cross_attn", ["t2i", "i2t"])
@pytest.mark.parametrize("norm", ["clipped_l2norm", "softmax"])
def test_float32_with_a_large_lambda_softmax_stays_finite(cross_attn, norm):
    """exp(50) summed over regions, then squared, passes float32's range: the max must be subtracted (the photo
    model's lambda_softmax is 50); the scores still equal the float64 reference."""
    regions, words, lengths = _embeddings(n_reg=12, max_words=8, dim=50, seed=4)
    params = AttentionParams(cross_attn, norm, 50.0, "LogSumExp", 6.0)
    ours = scan_attention(regions.float(), words.float(), lengths, params).scores.double()
    ref = xattn_score(regions, words, lengths, cross_attn, norm, 50.0, "LogSumExp", 6.0)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cross_attn", ["t2i", "i2t"])
def test_returned_attention_is_the_official_func_attention(cross_attn):
    regions, words, lengths = _embeddings(seed=2)
    params = AttentionParams(cross_attn, "clipped_l2norm", 9.0, "Mean", 6.0)
    res = scan_attention(regions, words, lengths, params, return_attention=True)
    for c in range(words.shape[0]):
        n = int(lengths[c])
        cap = words[c:c + 1, :n].repeat(regions.shape[0], 1, 1)
        if cross_attn == "t2i":
            weighted, attn_t = func_attention(cap, regions, "clipped_l2norm", 9.0)  # attn_t: (img, regions, words)
            expected = attn_t.transpose(1, 2)  # (img, words, regions)
            rel = F.cosine_similarity(cap, weighted, dim=2, eps=1e-8)
            torch.testing.assert_close(res.relevance[:, c, :n], rel, rtol=0, atol=1e-10)
        else:
            weighted, attn_t = func_attention(regions, cap, "clipped_l2norm", 9.0)  # attn_t: (img, words, regions)
            expected = attn_t
            rel = F.cosine_similarity(regions, weighted, dim=2, eps=1e-8)
            torch.testing.assert_close(res.relevance[:, c], rel, rtol=0, atol=1e-10)
        torch.testing.assert_close(res.attention[:, c, :n], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cross_attn,norm", list(itertools.product(("t2i", "i2t"), ("softmax", "clipped_l2norm"))))
@pytest.mark.parametrize("agg", ["LogSumExp", "Max", "Mean"])
def test_region_padding_equals_unpadded_images(cross_attn, norm, agg):
    """Images with fewer real regions, padded with garbage, score as if scored alone unpadded."""
    regions, words, lengths = _embeddings(n_img=3, n_reg=8, seed=4)
    n_real = torch.tensor([8, 5, 3])
    params = AttentionParams(cross_attn, norm, 6.0, agg, 6.0)
    padded = scan_attention(regions, words, lengths, params, region_lengths=n_real).scores
    for i in range(3):
        alone = scan_attention(regions[i:i + 1, : n_real[i]], words, lengths, params).scores
        torch.testing.assert_close(padded[i:i + 1], alone, rtol=0, atol=1e-10)


def test_gradients_flow_to_both_sides():
    regions, words, lengths = _embeddings(seed=5)
    regions.requires_grad_(True)
    words.requires_grad_(True)
    for cross_attn in ("t2i", "i2t"):
        scores = scan_attention(regions, words, lengths, AttentionParams(cross_attn, "clipped_l2norm", 9.0, "LogSumExp", 6.0)).scores
        regions.grad = words.grad = None
        scores.sum().backward()
        assert regions.grad.abs().sum() > 0 and words.grad.abs().sum() > 0
        assert torch.isfinite(regions.grad).all() and torch.isfinite(words.grad).all()
        # padded word positions get no gradient: they do not exist for the model
        for c, n in enumerate(lengths.tolist()):
            assert words.grad[c, n:].abs().sum() == 0


def test_gradients_match_reference():
    regions, words, lengths = _embeddings(n_img=3, n_cap=3, seed=6)
    for cross_attn in ("t2i", "i2t"):
        r1, w1 = regions.clone().requires_grad_(True), words.clone().requires_grad_(True)
        r2, w2 = regions.clone().requires_grad_(True), words.clone().requires_grad_(True)
        scan_attention(r1, w1, lengths, AttentionParams(cross_attn, "clipped_l2norm", 9.0, "LogSumExp", 6.0)).scores.sum().backward()
        xattn_score(r2, w2, lengths, cross_attn, "clipped_l2norm", 9.0, "LogSumExp", 6.0).sum().backward()
        torch.testing.assert_close(r1.grad, r2.grad, rtol=0, atol=1e-10)
        torch.testing.assert_close(w1.grad, w2.grad, rtol=0, atol=1e-10)


def test_helpers_reject_unknown_names():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        normalize_raw(x, "l3norm", dim=1)
    with pytest.raises(ValueError):
        aggregate(x, "Median", 1.0)
    with pytest.raises(ValueError):
        scan_attention(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.tensor([2]), AttentionParams("x2y", "clipped_l2norm", 9.0, "LogSumExp", 6.0))


@pytest.mark.parametrize("norm,agg", list(itertools.product(RAW_FEATURE_NORMS, AGG_FUNCS)))
def test_one_caption_against_many_images_matches_official(norm, agg):
    """A query (one caption, many images) forms the attended vectors instead of each image's Gram matrix."""
    from scan_viz.heads.attention import attended_vectors_cheaper

    regions, words, lengths = _embeddings(n_img=40, n_reg=12, n_cap=1, max_words=6, dim=32, seed=5)
    assert attended_vectors_cheaper(12, 6, 32) and not attended_vectors_cheaper(7, 6 * 9, 16)
    params = AttentionParams("t2i", norm, 9.0, agg, 6.0)
    ours = scan_attention(regions, words, lengths, params).scores
    ref = xattn_score(regions, words, lengths, "t2i", norm, 9.0, agg, 6.0)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    # and the same pairs scored inside a block of many captions (the Gram path) agree to float64 rounding
    more_regions, more_words, more_lengths = _embeddings(n_img=40, n_reg=12, n_cap=8, max_words=6, dim=32, seed=5)
    block = scan_attention(regions, torch.cat([words, more_words[1:]]), torch.cat([lengths, more_lengths[1:]]),
                           params).scores[:, :1]
    torch.testing.assert_close(ours, block, rtol=0, atol=1e-12)
