"""The region-word cosines every matching head starts from, with their padding masks: computed in ONE place.

For a block of pairs, ``S[i, r, c, w] = v_{i,r} . u_{c,w}`` is one ``(n_images * n_regions, d) x (d, n_captions *
max_words)`` matrix product. The encoders L2-normalise both sides (unless ``no_imgnorm`` / ``no_txtnorm``), so the
products are the cosines of SCAN's and CHAN's papers. Padded words and regions are zeroed first, so their products
are 0 and add nothing to any sum; heads that take a max or a softmax mask them with ``word_valid`` /
``region_valid``.

``product_dtype=torch.bfloat16`` runs the product, the only (pairs x regions x words x d) work, in bfloat16 and
hands back float32 cosines: everything after it stays in float32.
"""
from __future__ import annotations

import dataclasses
import platform

import torch

EPS = 1e-8


def bfloat16_emulated_note(device: str = "cpu") -> str | None:
    """One line for a user who asked for bfloat16 products on a CPU that runs them emulated, else None.

    torch's CPU matrix products are fast in bfloat16 with AVX-512 (AVX512-BF16 or AMX); on an x86 CPU that torch
    reports as AVX2 or older they go through an emulated path. Measured on this project's AVX2 machine (an AMD EPYC,
    torch 2.14.1, 2 threads, 2,048 x 2,048 products): 0.30 GFLOP/s in bfloat16 against 141 in float32.
    """
    if str(device).startswith("cuda") or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return None
    return (f"note: this CPU has no AVX-512 (torch reports {capability}), so bfloat16 products run emulated, "
            "hundreds of times slower than float32 here")


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(n,) lengths -> (n, max_len) bool, True at real positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


@dataclasses.dataclass
class RegionWordSimilarity:
    """The cosines of a block of pairs and what is real in them.

    sims: (n_images, n_regions, n_captions, max_words); regions: (n_images, n_regions, d) and words:
    (n_captions, max_words, d), with padding zeroed; word_valid: (n_captions, max_words) bool; region_valid:
    (n_images, n_regions) bool, or None when every region is real.
    """

    sims: torch.Tensor
    regions: torch.Tensor
    words: torch.Tensor
    word_valid: torch.Tensor
    region_valid: torch.Tensor | None

    @property
    def pair_word_valid(self) -> torch.Tensor:
        """(1, 1, n_captions, max_words): broadcasts against ``sims``."""
        return self.word_valid[None, None]

    @property
    def pair_region_valid(self) -> torch.Tensor | None:
        """(n_images, n_regions, 1, 1): broadcasts against ``sims``; None when every region is real."""
        return None if self.region_valid is None else self.region_valid[:, :, None, None]


def product_matmul(left: torch.Tensor, right: torch.Tensor, product_dtype: torch.dtype | None) -> torch.Tensor:
    """``left @ right`` computed in ``product_dtype`` (e.g. bfloat16) when given, back in ``left``'s dtype: the one
    rule for the region-word products of scoring and training."""
    if product_dtype is not None and product_dtype != left.dtype:
        return (left.to(product_dtype) @ right.to(product_dtype)).to(left.dtype)
    return left @ right


def region_word_similarity(regions: torch.Tensor, words: torch.Tensor, word_lengths: torch.Tensor,
                           region_lengths: torch.Tensor | None = None,
                           product_dtype: torch.dtype | None = None) -> RegionWordSimilarity:
    """Every region-word cosine of every (image, caption) pair of a block.

    regions: (n_images, n_regions, d); words: (n_captions, max_words, d); word_lengths: (n_captions,) int;
    region_lengths: optional (n_images,) int. ``product_dtype`` (e.g. torch.bfloat16): the dtype of the matrix
    product; the cosines come back in the embeddings' dtype. Differentiable.
    """
    n_img, n_reg, dim = regions.shape
    n_cap, n_words, _ = words.shape
    word_valid = length_mask(word_lengths.to(words.device), n_words)
    words = words * word_valid[:, :, None].to(words.dtype)
    region_valid = None
    if region_lengths is not None:
        region_valid = length_mask(region_lengths.to(regions.device), n_reg)
        regions = regions * region_valid[:, :, None].to(regions.dtype)
    left, right = regions.reshape(n_img * n_reg, dim), words.reshape(n_cap * n_words, dim)
    sims = product_matmul(left, right.T, product_dtype)
    # this layout keeps every later step a contiguous reduction or a plain bmm (no copies)
    return RegionWordSimilarity(sims.view(n_img, n_reg, n_cap, n_words), regions, words, word_valid, region_valid)


def masked_softmax(logits: torch.Tensor, dim: int, valid: torch.Tensor | None) -> torch.Tensor:
    """Softmax over ``dim`` with invalid entries (``valid`` False, broadcastable) at weight 0.

    Every slice along ``dim`` must hold at least one valid entry (captions have ``<start>``/``<end>``, images
    one region at least).
    """
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    return torch.softmax(logits, dim=dim)
