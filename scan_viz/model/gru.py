"""The text encoder's GRU for training on a CPU: ``nn.GRU`` over packed sequences, with a hand-written backward.

What it computes is exactly what :class:`~scan_viz.model.encoders.TextEncoder` gets from ``nn.GRU`` on a
``pack_padded_sequence`` and ``pad_packed_sequence`` (PyTorch's GRU equations, the same weights): each caption's
forward pass starts at its first word, its backward (reverse) pass at its own last word, and the outputs past a
caption's length are zeros. Like ``nn.GRU`` it runs on the packed data (``pack_padded_sequence``'s layout: time
step by time step, captions sorted longest first), so step t computes only the ``batch_sizes[t]`` captions still
running and no padded word costs anything (captions of 8-16 words: a quarter fewer rows than the padded batch).

Why: autograd through ``nn.GRU`` on packed input spends most of its backward filling and adding full-size zero
tensors, one per time step (measured with the profiler in benchmarks/bench_training.py's setting: ~2/3 of the text
encoder's backward). :class:`GRUDirection` stores the gates, n and the hidden state each step started from (one
row per packed word) and writes the backward by hand: per step the element-wise part and one (b x 3H) x (3H x H)
product; the weight gradients are then one matrix product over all steps. A step's element-wise part (about a
dozen tensor operations, each a pass over (b x H) numbers) is one call into the C kernel library
(``scan_viz/heads/native/gru_cell.c``) where it is built, tensor operations otherwise. The input part ``W_i x +
b_i`` of all steps is one product under autograd; fed word ids and the embedding, the first layer reads it from a
per-vocabulary-word table when the vocabulary is smaller than the batch (:func:`_input_part`; the bundled models'
step: 25-31 ms less, about 5%, measured alternately with the looked-up product in one process).
``tests/model/test_gru.py`` checks both against ``nn.GRU`` (outputs and every gradient) and with
``torch.autograd.gradcheck``.

PyTorch's GRU: ``r = s(W_ir x + b_ir + W_hr h + b_hr)``, ``z = s(W_iz x + b_iz + W_hz h + b_hz)``,
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from scan_viz.heads import native

__all__ = ["GRUDirection", "packed_gru"]


class GRUDirection(torch.autograd.Function):
    """One layer, one direction over packed data: the input part ``gi = W_i x + b_i`` (N, 3H) of every packed word
    in ``PackedSequence`` layout (time-major, the batch sorted by length, longest first; ``batch_sizes[t]``
    captions at step t) -> outputs (N, H) in the same layout. ``reverse`` runs each caption from its last word to
    its first. The input part is computed outside (:func:`_input_part`), so autograd takes its gradient on from
    ``g_gi``."""

    @staticmethod
    def forward(ctx, gi, batch_sizes, w_hh, b_hh, reverse):
        hidden = w_hh.shape[1]
        sizes = batch_sizes.tolist()
        starts = [0]
        for size in sizes[:-1]:
            starts.append(starts[-1] + size)
        # saved per packed row: the gate pre-activation's hidden part with r and z written over it in place
        # ([r | z | W_hn h + b_hn]), n, and the hidden state the step started from
        gates = gi.new_empty(gi.shape[0], 3 * hidden)
        news = gi.new_empty(gi.shape[0], hidden)
        h_prev = gi.new_empty(gi.shape[0], hidden)
        out = gi.new_empty(gi.shape[0], hidden)
        w_hh_t = w_hh.t()
        cell = _cell_usable(gi)
        steps = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
        before = None                                        # the previous step's (start, size)
        for t in steps:
            s, b = starts[t], sizes[t]
            hp = h_prev[s:s + b]
            if before is None:
                hp.zero_()
            else:                                            # the captions of the step before carry on; in
                s0, b0 = before                              # reverse, the ones starting here start from 0
                kept = min(b, b0)
                hp[:kept] = out[s0:s0 + kept]
                hp[kept:].zero_()
            g = torch.addmm(b_hh, hp, w_hh_t, out=gates[s:s + b])
            if cell:
                native.gru_cell_forward(gi[s:s + b], g, hp, news[s:s + b], out[s:s + b])
            else:
                rz = g[:, :2 * hidden]
                torch.add(rz, gi[s:s + b, :2 * hidden], out=rz).sigmoid_()
                r, z, h_n = g[:, :hidden], g[:, hidden:2 * hidden], g[:, 2 * hidden:]
                n = torch.addcmul(gi[s:s + b, 2 * hidden:], r, h_n, out=news[s:s + b]).tanh_()
                torch.addcmul(n, z, hp - n, out=out[s:s + b])   # h' = (1 - z) n + z h
            before = (s, b)
        ctx.save_for_backward(w_hh, gates, news, h_prev)
        ctx.sizes, ctx.starts, ctx.reverse = sizes, starts, reverse
        return out

    @staticmethod
    def backward(ctx, g_out):
        w_hh, gates, news, h_prev = ctx.saved_tensors
        hidden = w_hh.shape[1]
        sizes, starts = ctx.sizes, ctx.starts
        g_gi = gates.new_empty(gates.shape[0], 3 * hidden)   # the gradient of the input part
        g_gh = gates.new_empty(gates.shape[0], 3 * hidden)   # the gradient of W_h h + b_h
        g_h = gates.new_zeros(max(sizes), hidden)            # into the hidden state each step started from
        steps = range(len(sizes)) if ctx.reverse else range(len(sizes) - 1, -1, -1)
        # captions that end here (forward direction) or started one step later (reverse) get no gradient from
        # later steps: their rows of g_h are still 0 (forward) or are dropped (reverse)
        if _cell_usable(gates):
            g_out = g_out.contiguous()  # the slice of a concatenation's gradient (both directions)
            for t in steps:
                s, b = starts[t], sizes[t]
                native.gru_cell_backward(g_out[s:s + b], g_h[:b], gates[s:s + b], news[s:s + b], h_prev[s:s + b],
                                         g_gi[s:s + b], g_gh[s:s + b])
                g_h[:b].addmm_(g_gh[s:s + b], w_hh)
        else:
            _backward_steps(steps, sizes, starts, hidden, g_out, gates, news, h_prev, w_hh, g_h, g_gi, g_gh)
        return g_gi, None, g_gh.t() @ h_prev, g_gh.sum(0), None


def _cell_usable(x: torch.Tensor) -> bool:
    """Whether a step's element-wise part runs in the C kernel library (:mod:`scan_viz.heads.native`'s
    gru_cell.c); otherwise tensor operations compute the same numbers."""
    return x.dtype in (torch.float32, torch.float64) and x.device.type == "cpu" and native.library() is not None


def _backward_steps(steps, sizes, starts, hidden, g_out, gates, news, h_prev, w_hh, g_h, g_gi, g_gh):
    """The backward's time steps in tensor operations (gru_cell.c's ``gru_cell_backward`` and its caller's product,
    where the C library is not built)."""
    for t in steps:
        s, b = starts[t], sizes[t]
        g = gates[s:s + b]
        r, z, h_n, n, hp = g[:, :hidden], g[:, hidden:2 * hidden], g[:, 2 * hidden:], news[s:s + b], h_prev[s:s + b]
        g_new = g_out[s:s + b] + g_h[:b]
        gi_t, gh_t = g_gi[s:s + b], g_gh[s:s + b]
        g_pre_n = torch.mul(g_new, 1 - z, out=gi_t[:, 2 * hidden:]).mul_(1 - n * n)   # n = tanh(.)
        torch.mul(g_new, hp - n, out=gi_t[:, hidden:2 * hidden]).mul_(z * (1 - z))
        torch.mul(g_pre_n, r, out=gh_t[:, 2 * hidden:])
        torch.mul(g_pre_n, h_n, out=gi_t[:, :hidden]).mul_(r * (1 - r))
        gh_t[:, :2 * hidden] = gi_t[:, :2 * hidden]
        # h' = (1 - z) n + z h: the direct part, plus the three gates through W_hh
        g_h[:b] = torch.mul(g_new, z).addmm_(gh_t, w_hh)


def packed_gru(rnn: nn.GRU, x: torch.Tensor, lengths: torch.Tensor, embedding: nn.Embedding | None = None
               ) -> torch.Tensor:
    """``pad_packed_sequence(rnn(pack_padded_sequence(x, lengths)))[0]`` for a batch-first ``rnn``, x (B, T, D):
    (B, T, H * directions), through :class:`GRUDirection`. No dropout between layers (``rnn.dropout`` must be 0).

    With ``embedding``, x holds word ids (B, T) and the first layer reads ``embedding(x)``: the same outputs and
    gradients as ``packed_gru(rnn, embedding(x), lengths)``, computed as :func:`_input_part` says."""
    if rnn.dropout or not rnn.batch_first or rnn.proj_size:
        raise ValueError("packed_gru: only batch-first GRUs without dropout or projections")
    if embedding is not None and not _plain(embedding):
        x, embedding = embedding(x), None
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    data = packed.data
    if embedding is not None and embedding.num_embeddings >= data.numel():
        data, embedding = F.embedding(data, embedding.weight), None  # no table: the words' vectors, looked up once
    for layer in range(rnn.num_layers):
        outs = []
        for suffix in ("", "_reverse") if rnn.bidirectional else ("",):
            w_ih, w_hh, b_ih, b_hh = (getattr(rnn, f"{name}_l{layer}{suffix}")
                                      for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            gi = _input_part(data, w_ih, b_ih, embedding if layer == 0 else None)
            outs.append(GRUDirection.apply(gi, packed.batch_sizes, w_hh, b_hh, suffix == "_reverse"))
        data = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
    out = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


def _input_part(data: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor,
                embedding: nn.Embedding | None) -> torch.Tensor:
    """Every packed word's ``W_i x + b_i`` (N, 3H), under autograd. data: the packed inputs (N, D), or with
    ``embedding`` the packed word ids (N,).

    A word's input part depends on the word alone, so where the vocabulary has fewer words than the batch (the
    bundled models: 238 against ~1,550 words a batch; :func:`packed_gru` passes ``embedding`` only then) it is one
    row of a table ``E W_i^T + b_i`` (V, 3H) computed once: forward and backward then multiply V rows instead of N
    (the backward adds the N rows' gradients into their words' rows first, as ``F.embedding``'s backward does).
    With a larger vocabulary the words' vectors are looked up first and multiplied. Both are the same sums in
    another order."""
    if embedding is None:
        return torch.addmm(b_ih, data, w_ih.t())
    return F.embedding(data, torch.addmm(b_ih, embedding.weight, w_ih.t()))


def _plain(embedding: nn.Embedding) -> bool:
    """An embedding with none of ``nn.Embedding``'s options (padding row, max norm, sparse or scaled gradients),
    whose lookup :func:`_input_part` may fold into the first layer's input product."""
    return (embedding.padding_idx is None and embedding.max_norm is None and not embedding.sparse
            and not embedding.scale_grad_by_freq)
