"""The text encoder's GRU for training on a CPU: ``nn.GRU`` over packed sequences, with a hand-written backward.

What it computes is exactly what :class:`~scan_viz.model.encoders.TextEncoder` gets from ``nn.GRU`` on a
``pack_padded_sequence`` and ``pad_packed_sequence`` (PyTorch's GRU equations, the same weights): each caption's
forward pass starts at its first word, its backward (reverse) pass at its own last word, and the outputs past a
caption's length are zeros. The recurrence runs over the padded batch with a mask instead of a packed one: at a
padded step the hidden state is carried unchanged and the output is zero, which is what packing does.

Why: autograd through ``nn.GRU`` on packed input spends most of its backward filling and adding full-size zero
tensors, one per time step (measured with the profiler in benchmarks/bench_training.py's setting: ~2/3 of the text
encoder's backward). :class:`GRUDirection` stores r, z, n and the hidden states of each step (T x B x H each) and
writes the backward by hand: per step a few element-wise products on (B x H) and one (B x 3H) x (3H x H) product;
the weight gradients are then one matrix product over all steps. ``tests/model/test_gru.py`` checks it against
``nn.GRU`` (outputs and every gradient) and with ``torch.autograd.gradcheck``.

PyTorch's GRU: ``r = s(W_ir x + b_ir + W_hr h + b_hr)``, ``z = s(W_iz x + b_iz + W_hz h + b_hz)``,
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["GRUDirection", "packed_gru"]


class GRUDirection(torch.autograd.Function):
    """One layer, one direction: x (T, B, D) time-major, mask (T, B, 1) 1/0 -> outputs (T, B, H), zero where
    the mask is 0. ``reverse`` runs from the last step to the first."""

    @staticmethod
    def forward(ctx, x, mask, w_ih, w_hh, b_ih, b_hh, reverse):
        n_steps, batch, _ = x.shape
        hidden = w_hh.shape[1]
        gi = torch.addmm(b_ih, x.reshape(n_steps * batch, -1), w_ih.t()).view(n_steps, batch, 3 * hidden)
        h = x.new_zeros(batch, hidden)
        saved = x.new_empty(5, n_steps, batch, hidden)  # h_prev, r, z, n, W_hn h + b_hn
        out = x.new_empty(n_steps, batch, hidden)
        w_hh_t = w_hh.t()
        for t in (range(n_steps - 1, -1, -1) if reverse else range(n_steps)):
            gh = torch.addmm(b_hh, h, w_hh_t)
            i_r, i_z, i_n = gi[t].split(hidden, dim=1)
            h_r, h_z, h_n = gh.split(hidden, dim=1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(torch.addcmul(i_n, r, h_n))
            new = torch.addcmul(n, z, h - n)
            saved[0, t], saved[1, t], saved[2, t], saved[3, t], saved[4, t] = h, r, z, n, h_n
            m = mask[t]
            torch.mul(new, m, out=out[t])
            h = torch.addcmul(h, m, new - h)
        ctx.save_for_backward(x, mask, w_ih, w_hh, saved)
        ctx.reverse = reverse
        return out

    @staticmethod
    def backward(ctx, g_out):
        x, mask, w_ih, w_hh, saved = ctx.saved_tensors
        n_steps, batch, dim = x.shape
        hidden = w_hh.shape[1]
        g_gi = x.new_empty(n_steps, batch, 3 * hidden)
        g_gh = x.new_empty(n_steps, batch, 3 * hidden)
        g_h = x.new_zeros(batch, hidden)
        # outputs past a caption's length are constant zeros (as from pad_packed_sequence): no gradient flows back
        # from them, even a NaN one (the L2 norm's gradient at a zero vector)
        g_out = torch.where(mask.bool(), g_out, 0.0)
        for t in (range(n_steps) if ctx.reverse else range(n_steps - 1, -1, -1)):
            h_prev, r, z, n, h_n = saved[0, t], saved[1, t], saved[2, t], saved[3, t], saved[4, t]
            m = mask[t]
            g_new = m * (g_out[t] + g_h)                 # h_t = h + m (new - h), out_t = m new
            g_pre_n = g_new * (1 - z) * (1 - n * n)      # new = (1 - z) n + z h; n = tanh(.)
            g_pre_z = g_new * (h_prev - n) * z * (1 - z)
            g_pre_r = g_pre_n * h_n * r * (1 - r)
            gi_t, gh_t = g_gi[t], g_gh[t]
            gi_t[:, :hidden], gi_t[:, hidden:2 * hidden], gi_t[:, 2 * hidden:] = g_pre_r, g_pre_z, g_pre_n
            gh_t[:, :2 * hidden] = gi_t[:, :2 * hidden]
            torch.mul(g_pre_n, r, out=gh_t[:, 2 * hidden:])
            g_h = torch.addcmul(g_new * z, 1 - m, g_h).addmm_(gh_t, w_hh)
        flat_gi, flat_gh = g_gi.view(-1, 3 * hidden), g_gh.view(-1, 3 * hidden)
        g_x = (flat_gi @ w_ih).view(n_steps, batch, dim)
        g_w_ih = flat_gi.t() @ x.reshape(-1, dim)
        g_w_hh = flat_gh.t() @ saved[0].reshape(-1, hidden)
        return g_x, None, g_w_ih, g_w_hh, flat_gi.sum(0), flat_gh.sum(0), None


def packed_gru(rnn: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``pad_packed_sequence(rnn(pack_padded_sequence(x, lengths)))[0]`` for a batch-first ``rnn``, x (B, T, D):
    (B, T, H * directions), through :class:`GRUDirection`. No dropout between layers (``rnn.dropout`` must be 0)."""
    if rnn.dropout or not rnn.batch_first or rnn.proj_size:
        raise ValueError("packed_gru: only batch-first GRUs without dropout or projections")
    n_steps = x.shape[1]
    mask = (torch.arange(n_steps, device=x.device)[:, None] < lengths.to(x.device)[None, :]).to(x.dtype)[..., None]
    layer_in = x.transpose(0, 1)
    for layer in range(rnn.num_layers):
        outs = []
        for suffix in ("", "_reverse") if rnn.bidirectional else ("",):
            params = [getattr(rnn, f"{name}_l{layer}{suffix}")
                      for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            outs.append(GRUDirection.apply(layer_in.contiguous(), mask, *params, suffix == "_reverse"))
        layer_in = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
    return layer_in.transpose(0, 1)
