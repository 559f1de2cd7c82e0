"""SCAN's two encoders, laid out so their state dicts use the official key names.

Image: ``fc`` (Linear img_dim -> embed_size, optionally weight-normed) then L2 norm per region.
Text: ``embed`` (Embedding V x word_dim) -> ``rnn`` (GRU, packed sequences); with a bi-GRU the two
directions are AVERAGED (the official code's choice), then L2 norm per word.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from scan_viz.model.config import ScanConfig
from scan_viz.model.gru import packed_gru

EPS = 1e-8


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = EPS) -> torch.Tensor:
    """``x / (||x|| + eps)``: the official normalisation (eps added to the norm, not clamped)."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


class ImageEncoder(nn.Module):
    """Region features ``(n_images, n_regions, img_dim)`` -> region embeddings ``(n_images, n_regions, embed_size)``."""

    def __init__(self, img_dim: int, embed_size: int, no_imgnorm: bool = False, weight_norm: bool = False) -> None:
        super().__init__()
        self.no_imgnorm = no_imgnorm
        fc = nn.Linear(img_dim, embed_size)
        # Xavier-uniform as in the official init_weights; bias 0.
        r = math.sqrt(6.0) / math.sqrt(img_dim + embed_size)
        nn.init.uniform_(fc.weight, -r, r)
        nn.init.zeros_(fc.bias)
        if weight_norm:
            # official: weight_norm(nn.Linear(...), dim=None) -> keys fc.weight_g (scalar), fc.weight_v, fc.bias
            # the old (deprecated) API on purpose: the parametrizations one renames the keys
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                fc = nn.utils.weight_norm(fc, dim=None)
        self.fc = fc

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        emb = self.fc(features)
        return emb if self.no_imgnorm else l2norm(emb, dim=-1)


class TextEncoder(nn.Module):
    """Word ids ``(n_captions, max_len)`` + lengths -> word embeddings ``(n_captions, max_len, embed_size)``.

    Positions past a caption's length come out as zeros (what ``pad_packed_sequence`` gives), which the
    attention code relies on: padded words have zero similarity with every region.
    """

    def __init__(self, vocab_size: int, word_dim: int, embed_size: int, num_layers: int = 1,
                 bi_gru: bool = False, no_txtnorm: bool = False) -> None:
        super().__init__()
        self.no_txtnorm = no_txtnorm
        self.bi_gru = bi_gru
        self.embed = nn.Embedding(vocab_size, word_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True, bidirectional=bi_gru)

    #: training on a CPU runs the GRU through :func:`scan_viz.model.gru.packed_gru` (the same outputs, a hand-written
    #: backward); False keeps autograd through ``nn.GRU`` (benchmarks/bench_training.py's baseline)
    hand_backward: bool = True

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.hand_backward and torch.is_grad_enabled() and ids.device.type == "cpu" and not self.rnn.dropout:
            emb = packed_gru(self.rnn, ids, lengths.detach().cpu().to(torch.int64), embedding=self.embed)
        else:
            x = self.embed(ids)
            packed = pack_padded_sequence(x, lengths.detach().cpu().to(torch.int64), batch_first=True,
                                          enforce_sorted=False)
            out, _ = self.rnn(packed)
            emb, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        if self.bi_gru:
            half = emb.shape[2] // 2
            emb = (emb[:, :, :half] + emb[:, :, half:]) / 2
        if not self.no_txtnorm:
            emb = l2norm(emb, dim=-1)
        return emb


class WordVectorEncoder(nn.Module):
    """Word ids ``(n_captions, max_len)`` + lengths -> each word's own vector ``(n_captions, max_len, word_dim)``.

    No recurrence: a word is embedded alone, as in ConSE / DeViSE (the zero-shot photo model's words are GloVe
    vectors, ``scan_viz.photo``). ``extra.text_encoder = "word_vectors"`` in a config selects it; its only
    weight is ``embed.weight``, and ``word_dim`` must equal ``embed_size``. Positions past a caption's length
    come out as zeros, as from :class:`TextEncoder`.
    """

    def __init__(self, vocab_size: int, word_dim: int, no_txtnorm: bool = False) -> None:
        super().__init__()
        self.no_txtnorm = no_txtnorm
        self.embed = nn.Embedding(vocab_size, word_dim)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        emb = self.embed(ids)
        positions = torch.arange(ids.shape[1], device=ids.device)
        emb = emb * (positions[None, :] < lengths.to(ids.device)[:, None]).unsqueeze(-1).to(emb.dtype)
        return emb if self.no_txtnorm else l2norm(emb, dim=-1)


#: ``extra.text_encoder`` values: the official bi-/uni-GRU (default) or one vector per word
TEXT_ENCODERS = ("gru", "word_vectors")


def text_encoder_kind(config: ScanConfig) -> str:
    """Which text encoder a config describes (``extra.text_encoder``, default ``gru``)."""
    from scan_viz.errors import ScanVizError

    kind = str(config.extra.get("text_encoder") or "gru")
    if kind not in TEXT_ENCODERS:
        raise ScanVizError(f"config: extra.text_encoder must be one of {', '.join(TEXT_ENCODERS)}")
    if kind == "word_vectors" and config.word_dim != config.embed_size:
        raise ScanVizError("config: a word_vectors text encoder needs word_dim equal to embed_size")
    return kind


def build_encoders(config: ScanConfig) -> tuple[ImageEncoder, TextEncoder | WordVectorEncoder]:
    """The pair of encoders a config describes (weights freshly initialised)."""
    if config.vocab_size < 1:
        raise ValueError("config.vocab_size must be set before building the text encoder")
    img = ImageEncoder(config.img_dim, config.embed_size, config.no_imgnorm,
                       weight_norm=config.precomp_enc_type == "weight_norm")
    if text_encoder_kind(config) == "word_vectors":
        return img, WordVectorEncoder(config.vocab_size, config.word_dim, config.no_txtnorm)
    txt = TextEncoder(config.vocab_size, config.word_dim, config.embed_size, config.num_layers,
                      config.bi_gru, config.no_txtnorm)
    return img, txt
