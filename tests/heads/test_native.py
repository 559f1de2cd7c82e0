"""The per-pair C kernel (scan_viz/heads/native) against the tensor code it replaces, and gradcheck through it."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from scan_viz.heads import native
from scan_viz.heads.attention import AttentionParams, scan_attention
from scan_viz.heads.attention_grad import scan_scores_trainable

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"C kernel not built: {native.status()}")


def _block(dtype, n_img=5, n_cap=4, k=7, n=6, d=10, seed=0, padded_regions=False):
    g = torch.Generator().manual_seed(seed)
    regions = F.normalize(torch.randn(n_img, k, d, generator=g, dtype=dtype), dim=-1)
    words = F.normalize(torch.randn(n_cap, n, d, generator=g, dtype=dtype), dim=-1)
    lengths = torch.tensor([n, n - 2, 1, n - 1][:n_cap])
    region_lengths = torch.tensor([k, k - 3, 2, k, 1][:n_img]) if padded_regions else None
    return regions, words, lengths, region_lengths


CASES = [(cross, norm, agg) for cross in ("t2i", "i2t") for norm in sorted(native.NORMS)
         for agg in sorted(native.AGGREGATIONS)]


def _scores(regions, words, lengths, region_lengths, params):
    with torch.no_grad():
        return scan_attention(regions, words, lengths, params, region_lengths).scores


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("cross,norm,agg", CASES)
def test_kernel_scores_equal_tensor_code(cross, norm, agg, padded, monkeypatch):
    params = AttentionParams(cross, norm, 9.0 if cross == "t2i" else 4.0, agg, 6.0)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        block = _block(dtype, padded_regions=padded)
        kernel = _scores(*block, params)
        with monkeypatch.context() as m:
            m.setattr(native, "library", lambda: None)
            tensor = _scores(*block, params)
        assert kernel.shape == tensor.shape == (5, 4)
        assert torch.allclose(kernel, tensor, atol=tol, rtol=0), float((kernel - tensor).abs().max())


@pytest.mark.parametrize("cross,norm,agg", CASES)
def test_kernel_gradients_equal_tensor_code(cross, norm, agg, monkeypatch):
    params = AttentionParams(cross, norm, 9.0 if cross == "t2i" else 4.0, agg, 6.0)
    regions, words, lengths, region_lengths = _block(torch.float64, padded_regions=True)
    weights = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def grads():
        r, w = regions.clone().requires_grad_(), words.clone().requires_grad_()
        (scan_scores_trainable(r, w, lengths, params, region_lengths) * weights).sum().backward()
        return r.grad, w.grad

    kernel = grads()
    with monkeypatch.context() as m:
        m.setattr(native, "library", lambda: None)
        tensor = grads()
    for a, b in zip(kernel, tensor):
        assert torch.allclose(a, b, atol=1e-12, rtol=0), float((a - b).abs().max())
        assert float(a.abs().max()) > 0


@pytest.mark.parametrize("cross", ["t2i", "i2t"])
def test_kernel_gradcheck(cross):
    params = AttentionParams(cross, "clipped_l2norm", 9.0 if cross == "t2i" else 4.0, "LogSumExp", 6.0)
    regions, words, lengths, region_lengths = _block(torch.float64, 3, 3, 5, 4, 6, padded_regions=True)
    regions.requires_grad_()
    words.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda r, w: scan_scores_trainable(r, w, lengths, params, region_lengths), (regions, words))


@pytest.mark.parametrize("cross", ["t2i", "i2t"])
def test_zero_gradient_pairs_are_skipped_exactly(cross, monkeypatch):
    """Pairs whose gradient is 0 (most, under the hardest-negative loss) are skipped: no number changes."""
    params = AttentionParams(cross, "clipped_l2norm", 9.0, "LogSumExp", 6.0)
    regions, words, lengths, region_lengths = _block(torch.float64, padded_regions=True)
    weights = torch.zeros(5, 4, dtype=torch.float64)
    weights[1, 2], weights[4, 0] = 1.5, -0.5

    def grads():
        r, w = regions.clone().requires_grad_(), words.clone().requires_grad_()
        (scan_scores_trainable(r, w, lengths, params, region_lengths) * weights).sum().backward()
        return r.grad, w.grad

    listed = []
    monkeypatch.setattr(native, "listed_pairs_backward",
                        lambda *a, f=native.listed_pairs_backward, **k: listed.append(int(a[5].numel())) or f(*a, **k))
    kernel = grads()
    assert listed == [2]  # 2 of 20 pairs: only those were visited
    with monkeypatch.context() as m:
        m.setattr(native, "library", lambda: None)
        tensor = grads()
    for a, b in zip(kernel, tensor):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
    assert float(kernel[0][[0, 2, 3]].abs().max()) == 0.0 and float(kernel[0][1].abs().max()) > 0


def test_switched_off_reports_why(monkeypatch):
    monkeypatch.setenv("SCAN_VIZ_NATIVE", "0")
    monkeypatch.setattr(native, "_state", {})
    assert native.library() is None
    assert "SCAN_VIZ_NATIVE=0" in native.status()
    assert not native.usable("clipped_l2norm", torch.zeros(1, 2, 3), 2, 2)


def test_build_failure_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("SCAN_VIZ_NATIVE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native, "_state", {})
    assert native.library() is None
    assert "compiling scan_pairs.c failed" in native.status()
    # the tensor code still scores
    params = AttentionParams("t2i", "clipped_l2norm", 9.0, "LogSumExp", 6.0)
    assert _scores(*_block(torch.float64), params).shape == (5, 4)


@pytest.mark.parametrize("cross", ["t2i", "i2t"])
def test_large_lambda_stays_finite_in_float32(cross, monkeypatch):
    """exp(lambda_softmax) overflows float32 above 88; the kernel subtracts each softmax's maximum first."""
    params = AttentionParams(cross, "clipped_l2norm", 200.0, "LogSumExp", 6.0)
    block64 = _block(torch.float64, padded_regions=True)
    with monkeypatch.context() as m:
        m.setattr(native, "library", lambda: None)
        expected = _scores(*block64, params)  # float64 tensor code: exp(200) ** 2 still fits
    block32 = [None if t is None else (t.float() if t.is_floating_point() else t) for t in block64]
    got = _scores(*block32, params)
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), expected, atol=1e-5, rtol=0)


def test_loading_the_kernel_keeps_subnormal_floats():
    """The kernel is built without -ffast-math, whose startup code would flush subnormals to zero process-wide.

    Checked in a fresh interpreter: another library loaded earlier in a test session may have switched it already.
    """
    code = ("import torch\n"
            "tiny = torch.tensor([1e-40], dtype=torch.float32)\n"
            "before = float(tiny * 1.0) > 0\n"
            "from scan_viz.heads import native\n"
            "assert native.library() is not None, native.status()\n"
            "print(before, float(tiny * 1.0) > 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("cross", ["t2i", "i2t"])
def test_threads_split_the_pairs_without_changing_results(cross):
    """A call big enough for several threads (OpenMP) gives one thread's results: scores and cosine gradients to
    the bit (each pair is one thread's), the Gram gradients too (a context set is one thread's), the query norms'
    gradients up to the order of one sum over threads."""
    if native.threads() == 0:
        pytest.skip("kernel built without OpenMP")
    from scan_viz.heads.attention_pairs import pair_inputs

    g = torch.Generator().manual_seed(3)
    regions = F.normalize(torch.randn(37, 9, 12, generator=g, dtype=torch.float64), dim=-1)
    words = F.normalize(torch.randn(11, 7, 12, generator=g, dtype=torch.float64), dim=-1)
    lengths = torch.randint(1, 8, (11,), generator=g)
    region_lengths = torch.randint(1, 10, (37,), generator=g)
    inputs = pair_inputs(regions, words, lengths, region_lengths, cross)
    args = (inputs.sims, inputs.gram, inputs.qnorm, inputs.qvalid, inputs.cvalid)
    n_ctx, n_q = inputs.sims.shape[0], inputs.sims.shape[2]
    assert n_ctx * n_q >= 256  # scan_pairs.c's PARALLEL_PAIRS: the team is woken
    grad = torch.randn(n_ctx, n_q, generator=g, dtype=torch.float64)
    grad[grad < -0.5] = 0  # some pairs skipped
    pair_c, pair_q = torch.nonzero(grad, as_tuple=True)
    saved = torch.get_num_threads()
    results = {}
    try:
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            assert native.threads() == n_threads
            results[n_threads] = (
                native.pairs_forward(*args, "clipped_l2norm", "LogSumExp", 9.0, 6.0),
                native.pairs_backward(*args, grad, "clipped_l2norm", "LogSumExp", 9.0, 6.0),
                native.listed_pairs_backward(*args, pair_c, pair_q, grad[pair_c, pair_q], "clipped_l2norm",
                                             "LogSumExp", 9.0, 6.0))
    finally:
        torch.set_num_threads(saved)
    one = results[1]
    for n_threads in (2, 3):
        scores, (g_sims, g_gram, g_qnorm), (tiles, l_gram, l_qnorm) = results[n_threads]
        assert torch.equal(scores, one[0])
        assert torch.equal(g_sims, one[1][0]) and torch.equal(g_gram, one[1][1])
        assert torch.allclose(g_qnorm, one[1][2], atol=1e-13, rtol=0)
        assert torch.equal(tiles, one[2][0]) and torch.equal(l_gram, one[2][1])
        assert torch.allclose(l_qnorm, one[2][2], atol=1e-13, rtol=0)


@pytest.mark.parametrize("dim", [10, 32])  # 10: rows copied to whole vectors; 32: read in place
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("norm,agg", [(norm, agg) for norm in sorted(native.NORMS)
                                      for agg in sorted(native.AGGREGATIONS)])
def test_one_caption_direct_path_equals_tensor_code(norm, agg, padded, dim, monkeypatch):
    """One caption against a block of images (a search's stage 2) takes the kernel's direct path: cosines and
    attended vectors from the embeddings, no Gram matrices. It must give the tensor code's scores."""
    from scan_viz.heads.attention_pairs import direct_scores

    params = AttentionParams("t2i", norm, 9.0, agg, 6.0)
    calls = []
    monkeypatch.setattr(native, "pairs_forward", lambda *a, **k: calls.append(a))  # the cosine-block path: unused
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        g = torch.Generator().manual_seed(5)
        regions = F.normalize(torch.randn(11, 7, dim, generator=g, dtype=dtype), dim=-1)
        words = F.normalize(torch.randn(1, 6, dim, generator=g, dtype=dtype), dim=-1)
        words[0, 4:] = torch.randn(2, dim, generator=g, dtype=dtype)  # padding, not zero: must be ignored
        lengths = torch.tensor([4])
        region_lengths = torch.tensor([7, 3, 1, 7, 5, 7, 2, 7, 6, 7, 4]) if padded else None
        kernel = _scores(regions, words, lengths, region_lengths, params)
        direct = direct_scores(regions, words, lengths, region_lengths, norm, agg, 9.0, 6.0)
        with monkeypatch.context() as m:
            m.setattr(native, "library", lambda: None)
            tensor = _scores(regions, words, lengths, region_lengths, params)
        assert kernel.shape == tensor.shape == (11, 1)
        assert torch.equal(kernel, direct)
        assert torch.allclose(kernel, tensor, atol=tol, rtol=0), float((kernel - tensor).abs().max())
    assert calls == []


@pytest.mark.parametrize("dim", [10, 32, 36])  # 10, 36: not whole widening blocks of 8 (a scalar tail)
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("norm,agg", [(norm, agg) for norm in sorted(native.NORMS)
                                      for agg in sorted(native.AGGREGATIONS)])
def test_float16_rows_score_as_the_widened_rows(norm, agg, padded, dim):
    """The kernel's float16 entry point scores listed rows of a float16 table where they lie (in any order, one row
    twice): the same numbers as the float32 direct path on those rows widened, with padded regions holding
    non-zero values that must be ignored."""
    import numpy as np

    from scan_viz.heads.attention_pairs import direct_half_scores, direct_scores

    if native.library() is None or not hasattr(native.library(), "scan_pairs_forward_direct_half_f32"):
        pytest.skip("the compiler has no _Float16")
    g = torch.Generator().manual_seed(7)
    table = F.normalize(torch.randn(9, 7, dim, generator=g), dim=-1).half()
    rows = np.array([8, 0, 3, 3, 5, 1])
    words = F.normalize(torch.randn(1, 6, dim, generator=g), dim=-1)
    words[0, 5:] = 3.0  # padding, not zero: must be ignored
    lengths = torch.tensor([5])
    region_lengths = torch.tensor([7, 3, 1, 7, 5, 2]) if padded else None
    widened = table[torch.from_numpy(rows)].float()
    direct = direct_scores(widened, words, lengths, region_lengths, norm, agg, 9.0, 6.0)[:, 0].numpy()
    for source in (table, table.numpy()):  # a tensor in memory, or an array (a file's rows as read)
        half = direct_half_scores(source, rows, words, lengths, region_lengths, norm, agg, 9.0, 6.0)
        assert half.shape == (6,) and half.dtype == np.float32
        np.testing.assert_array_equal(half, direct)
    with pytest.raises(ValueError, match="outside the table"):
        native.pairs_forward_direct_half(table, np.array([9]), words[0, :5].contiguous(), torch.ones(5),
                                         torch.ones(5), torch.ones(1, 7), norm, agg, 9.0, 6.0)


@pytest.mark.parametrize("dim", [10, 32, 36])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("norm,agg", [(norm, agg) for norm in sorted(native.NORMS)
                                      for agg in sorted(native.AGGREGATIONS)])
def test_float16_rows_with_their_gram_matrices_score_as_the_widened_rows(norm, agg, padded, dim):
    """With each row's stored Gram matrix (``region_grams``) the kernel takes an
    attended vector's squared norm as a . G a instead of forming the vector: the same scores as the float32 direct
    path on the widened rows, to float32 rounding, in any order and with one row twice. A Gram table of another
    shape is refused."""
    import numpy as np

    from scan_viz.heads.attention_pairs import direct_half_scores, direct_scores
    from scan_viz.retrieval.tokens import region_grams

    if native.library() is None or not hasattr(native.library(), "scan_pairs_forward_direct_half_gram_f32"):
        pytest.skip("the compiler has no _Float16")
    g = torch.Generator().manual_seed(11)
    table = F.normalize(torch.randn(9, 7, dim, generator=g), dim=-1).half()
    n_boxes = np.array([7, 3, 1, 7, 5, 2, 7, 4, 6]) if padded else None
    grams = region_grams(table, n_boxes)
    assert grams.shape == (9, 7, 7) and grams.dtype == np.float32
    rows = np.array([8, 0, 3, 3, 5, 1])
    words = F.normalize(torch.randn(1, 6, dim, generator=g), dim=-1)
    words[0, 5:] = 3.0
    lengths = torch.tensor([5])
    region_lengths = None if n_boxes is None else torch.from_numpy(n_boxes[rows])
    widened = table[torch.from_numpy(rows)].float()
    direct = direct_scores(widened, words, lengths, region_lengths, norm, agg, 9.0, 6.0)[:, 0].numpy()
    for source, gram in ((table, torch.from_numpy(grams)), (table.numpy(), grams)):
        scores = direct_half_scores(source, rows, words, lengths, region_lengths, norm, agg, 9.0, 6.0, gram=gram)
        assert scores.shape == (6,) and scores.dtype == np.float32
        np.testing.assert_allclose(scores, direct, rtol=2e-6, atol=2e-6)
    with pytest.raises(ValueError, match="Gram matrices do not match"):
        native.pairs_forward_direct_half(table, rows, words[0, :5].contiguous(), torch.ones(5), torch.ones(5),
                                         torch.ones(6, 7), norm, agg, 9.0, 6.0, gram=grams[:8])


T2I_CASES = [(norm, agg) for norm in sorted(native.NORMS) for agg in sorted(native.AGGREGATIONS)]


@pytest.mark.parametrize("norm,agg", T2I_CASES)
def test_packed_words_scores_and_gradients_equal_autograd(norm, agg):
    """t2i with the captions' words packed (one block, no padded word; the gradient written over the cosines) gives
    the scores and gradients of autograd through the tensor code, for the full and the listed-pairs backward."""
    params = AttentionParams("t2i", norm, 9.0, agg, 6.0)
    regions, words, lengths, region_lengths = _block(torch.float64, padded_regions=True)
    words = torch.cat([words, torch.randn(4, 2, 10, dtype=torch.float64)], dim=1)  # padding past the longest
    dense = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sparse = torch.zeros(5, 4, dtype=torch.float64)
    sparse[1, 2], sparse[4, 0] = 1.5, -0.5
    for weights in (dense, sparse):
        results = []
        for packed in (True, False):
            r, w = regions.clone().requires_grad_(), words.clone().requires_grad_()
            if packed:
                scores = scan_scores_trainable(r, w, lengths, params, region_lengths, packed_words=True)
            else:
                scores = scan_attention(r, w, lengths, params, region_lengths).scores
            (scores * weights).sum().backward()
            results.append((scores.detach(), r.grad, w.grad))
        for a, b in zip(*results):
            assert torch.allclose(a, b, atol=1e-12, rtol=0), float((a - b).abs().max())
        assert float(results[0][2][:, 6:].abs().max()) == 0.0  # no gradient into padding


def test_packed_words_second_backward_and_gradcheck():
    """The first backward writes the gradient over the saved cosines; a second backward through the same graph
    recomputes them and gets the same gradients; gradcheck (many backwards) passes."""
    params = AttentionParams("t2i", "clipped_l2norm", 9.0, "LogSumExp", 6.0)
    regions, words, lengths, _ = _block(torch.float64, 3, 3, 5, 4, 6)
    r, w = regions.clone().requires_grad_(), words.clone().requires_grad_()
    loss = scan_scores_trainable(r, w, lengths, params, packed_words=True).sum()
    first = torch.autograd.grad(loss, (r, w), retain_graph=True)
    second = torch.autograd.grad(loss, (r, w))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert torch.autograd.gradcheck(
        lambda r, w: scan_scores_trainable(r, w, lengths, params, packed_words=True), (r, w))


def test_ragged_kernel_equals_uniform_layout():
    """The kernel's ragged layout (query sets packed, each its own length) against the uniform one on the same
    numbers: scores, the cosines' gradient at the real items (also when written over the cosines), Gram and norm
    gradients, listed-pairs tiles."""
    g = torch.Generator().manual_seed(3)
    n_img, k, n_cap, n, d = 4, 5, 6, 17, 8
    regions = F.normalize(torch.randn(n_img, k, d, generator=g, dtype=torch.float64), dim=-1)
    lengths = torch.tensor([17, 1, 9, 16, 3, 12])
    words = F.normalize(torch.randn(n_cap, n, d, generator=g, dtype=torch.float64), dim=-1)
    valid = torch.arange(n)[None] < lengths[:, None]
    words = words * valid[..., None]
    ragged = native.Ragged.of(lengths)
    packed = words[valid]
    gram = regions @ regions.transpose(1, 2)
    cvalid = torch.ones(n_img, k, dtype=torch.float64)
    uni_sims = (regions.reshape(-1, d) @ words.reshape(-1, d).T).view(n_img, k, n_cap, n).contiguous()
    rag_sims = (regions.reshape(-1, d) @ packed.T).view(n_img, k, -1).contiguous()
    qn = words.pow(2).sum(-1)
    uni_qnorm = torch.where(valid, qn, torch.ones_like(qn)).sqrt().contiguous()
    uni_qvalid = valid.double().contiguous()
    rag_qnorm = packed.pow(2).sum(-1).sqrt().contiguous()
    rag_qvalid = torch.ones(ragged.width, dtype=torch.float64)
    grad = torch.randn(n_img, n_cap, generator=g, dtype=torch.float64)
    grad[0, 1] = 0.0
    args = ("clipped_l2norm", "LogSumExp", 9.0, 6.0)
    uni = native.pairs_forward(uni_sims, gram, uni_qnorm, uni_qvalid, cvalid, *args)
    rag = native.pairs_forward(rag_sims, gram, rag_qnorm, rag_qvalid, cvalid, *args, ragged=ragged)
    assert torch.allclose(uni, rag, atol=1e-13, rtol=0)
    ug, ugram, uq = native.pairs_backward(uni_sims, gram, uni_qnorm, uni_qvalid, cvalid, grad, *args)
    rg, rgram, rq = native.pairs_backward(rag_sims, gram, rag_qnorm, rag_qvalid, cvalid, grad, *args, ragged=ragged)
    over = rag_sims.clone()
    og, _, _ = native.pairs_backward(over, gram, rag_qnorm, rag_qvalid, cvalid, grad, *args, ragged=ragged,
                                     out=over)
    real = ug[:, :, valid]  # (C, k, width) at the real items
    assert torch.allclose(rg, real, atol=1e-13, rtol=0)
    assert torch.equal(og, rg)
    assert torch.allclose(rgram, ugram, atol=1e-13, rtol=0) and torch.allclose(rq, uq[valid], atol=1e-13, rtol=0)
    pair_c, pair_q = torch.tensor([0, 1, 1, 3]), torch.tensor([2, 1, 5, 0])
    ut, _, _ = native.listed_pairs_backward(uni_sims, gram, uni_qnorm, uni_qvalid, cvalid, pair_c, pair_q,
                                            grad[pair_c, pair_q], *args)
    rt, _, _ = native.listed_pairs_backward(rag_sims, gram, rag_qnorm, rag_qvalid, cvalid, pair_c, pair_q,
                                            grad[pair_c, pair_q], *args, ragged=ragged)
    assert rt.shape == ut.shape == (4, k, n)
    assert torch.allclose(rt, ut * valid[pair_q][:, None], atol=1e-13, rtol=0)  # 0 past each caption's length


def test_ragged_layout_out_of_its_row_is_refused():
    sims = torch.zeros(2, 3, 10)
    ragged = native.Ragged(torch.tensor([0, 6]), torch.tensor([6, 5], dtype=torch.int32), 10, 6)
    with pytest.raises(ValueError):
        native.pairs_forward(sims, torch.zeros(2, 3, 3), torch.ones(10), torch.ones(10), torch.ones(2, 3),
                             "clipped_l2norm", "LogSumExp", 9.0, 6.0, ragged=ragged)


def test_packed_words_bfloat16_products_equal_the_uniform_layout():
    """With bf16 region-word products the packed layout computes the same products (the same bf16 roundings of the
    same numbers) as the uniform one, so its scores and gradients agree to float32 rounding; both differ from the
    float32 products."""
    params = AttentionParams("t2i", "clipped_l2norm", 9.0, "LogSumExp", 6.0)
    regions, words, lengths, _ = _block(torch.float32, 4, 4, 9, 6, 16)
    out = {}
    for packed, dtype in ((True, torch.bfloat16), (False, torch.bfloat16), (True, None)):
        r, w = regions.clone().requires_grad_(), words.clone().requires_grad_()
        scores = scan_scores_trainable(r, w, lengths, params, product_dtype=dtype, packed_words=packed)
        out[packed, dtype] = (scores, *torch.autograd.grad(scores.sum(), (r, w)))
    for a, b, c in zip(out[True, torch.bfloat16], out[False, torch.bfloat16], out[True, None]):
        assert torch.allclose(a, b, atol=2e-6, rtol=1e-5), float((a - b).abs().max())
        assert float((a - c).abs().max()) > 1e-4
