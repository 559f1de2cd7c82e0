"""The training GRU (scan_viz/model/gru.py) against nn.GRU on packed sequences: outputs, gradients, gradcheck; each
with a step's element-wise part in C (gru_cell.c) and in tensor operations (no C library)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from scan_viz.heads import native
from scan_viz.model.encoders import TextEncoder
from scan_viz.model.gru import packed_gru


@pytest.fixture(params=["C cell", "tensor ops"])
def step_code(request):
    """Runs the test with the GRU step's element-wise part in C, then without the C library."""
    if request.param == "C cell":
        if native.library() is None:
            pytest.skip(f"C kernel not built: {native.status()}")
        yield
    else:
        with native.disabled():
            yield


def _reference(rnn, x, lengths):
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


@pytest.mark.parametrize("bidirectional,layers", [(False, 1), (True, 1), (True, 2)])
def test_outputs_and_gradients_equal_packed_nn_gru(bidirectional, layers, step_code):
    torch.manual_seed(0)
    rnn = nn.GRU(5, 4, layers, batch_first=True, bidirectional=bidirectional).double()
    lengths = torch.tensor([6, 2, 5, 1])
    x = torch.randn(4, 6, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 6, 4 * (2 if bidirectional else 1), dtype=torch.float64)
    weights[1, 3] = float("nan")  # past caption 1's length: no gradient comes back from there, even a NaN one
    results = []
    for fn in (_reference, packed_gru):
        out = fn(rnn, x, lengths)
        params = [x, *rnn.parameters()]
        results.append((out, torch.autograd.grad((out * weights).sum(), params)))
    (ref, ref_grads), (got, got_grads) = results
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)
    assert float(got[1, 2:].abs().max()) == 0.0  # past the caption's length: zeros, as pad_packed_sequence gives
    for a, b in zip(got_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-12, rtol=0), float((a - b).abs().max())


def test_gradcheck(step_code):
    torch.manual_seed(1)
    rnn = nn.GRU(3, 2, 1, batch_first=True, bidirectional=True).double()
    lengths = torch.tensor([4, 2, 3])
    x = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    w_ih, w_hh = rnn.weight_ih_l0, rnn.weight_hh_l0_reverse
    assert torch.autograd.gradcheck(lambda x, a, b: packed_gru(rnn, x, lengths), (x, w_ih, w_hh))


def test_text_encoder_uses_it_only_under_autograd(monkeypatch):
    import scan_viz.model.encoders as encoders

    calls = []
    monkeypatch.setattr(encoders, "packed_gru", lambda *a, **k: calls.append(1) or packed_gru(*a, **k))
    torch.manual_seed(2)
    encoder = TextEncoder(20, 6, 5, bi_gru=True)
    ids, lengths = torch.randint(1, 20, (3, 5)), torch.tensor([5, 3, 1])
    with torch.no_grad():
        plain = encoder(ids, lengths)
    assert calls == []
    trained = encoder(ids, lengths)
    assert calls == [1]
    encoder.hand_backward = False
    autograd = encoder(ids, lengths)
    assert calls == [1]
    assert torch.allclose(trained, plain, atol=1e-6) and torch.allclose(autograd, plain, atol=1e-6)


@pytest.mark.parametrize("vocab", [7, 40], ids=["table (vocabulary < words)", "lookup (vocabulary >= words)"])
@pytest.mark.parametrize("layers", [1, 2])
def test_word_ids_with_embedding_equal_nn_gru_on_embedded_words(vocab, layers, step_code):
    """packed_gru(rnn, ids, lengths, embedding=...) against nn.GRU on embedding(ids): both ways of computing the
    first layer's input part (a per-vocabulary-word table, or the looked-up vectors times W_i) give the outputs and
    every gradient, the embedding's included; a word id that occurs only past a caption's end gets no gradient."""
    torch.manual_seed(3)
    rnn = nn.GRU(5, 4, layers, batch_first=True, bidirectional=True).double()
    embedding = nn.Embedding(vocab, 5).double()
    lengths = torch.tensor([6, 2, 5, 1, 4])  # 18 words
    ids = torch.randint(0, vocab - 1, (5, 6))
    ids[1, 4] = vocab - 1  # the last word only in padding
    weights = torch.randn(5, 6, 8, dtype=torch.float64)
    params = [*embedding.parameters(), *rnn.parameters()]
    ref = _reference(rnn, embedding(ids), lengths)
    ref_grads = torch.autograd.grad((ref * weights).sum(), params)
    got = packed_gru(rnn, ids, lengths, embedding=embedding)
    got_grads = torch.autograd.grad((got * weights).sum(), params)
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)
    for a, b in zip(got_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-12, rtol=0), float((a - b).abs().max())
    assert float(got_grads[0][vocab - 1].abs().max()) == 0.0


def test_word_ids_gradcheck_through_the_table(step_code):
    torch.manual_seed(4)
    rnn = nn.GRU(3, 2, 1, batch_first=True, bidirectional=True).double()
    embedding = nn.Embedding(4, 3).double()
    lengths, ids = torch.tensor([4, 2, 3]), torch.randint(0, 4, (3, 4))  # 9 words, 4 in the vocabulary: the table

    weight = embedding.weight.detach().clone().requires_grad_()
    del embedding.weight
    embedding.weight = weight  # a plain tensor: gradcheck's perturbations reach the lookup
    assert torch.autograd.gradcheck(lambda *_: packed_gru(rnn, ids, lengths, embedding=embedding),
                                    (weight, rnn.weight_ih_l0, rnn.weight_hh_l0_reverse))


def test_embedding_with_options_is_looked_up_first():
    """An embedding with a padding row keeps nn.Embedding's rule (no gradient into that row)."""
    torch.manual_seed(5)
    rnn = nn.GRU(3, 2, 1, batch_first=True).double()
    embedding = nn.Embedding(4, 3, padding_idx=0).double()
    lengths, ids = torch.tensor([4, 3]), torch.tensor([[0, 1, 2, 3], [0, 0, 1, 2]])
    out = packed_gru(rnn, ids, lengths, embedding=embedding)
    assert torch.allclose(out, _reference(rnn, embedding(ids), lengths), atol=1e-12, rtol=0)
    out.sum().backward()
    assert float(embedding.weight.grad[0].abs().max()) == 0.0 and float(embedding.weight.grad[1].abs().max()) > 0
