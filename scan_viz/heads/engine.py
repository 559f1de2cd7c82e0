"""The scoring engine: the full (n_images x n_captions) score matrix, in blocks sized from a memory budget.

Captions are sorted by length and grouped, so a block pads its words only to its own longest caption;
each block is one call of the head (no Python loop per caption). Every pair is independent, so blocking
changes nothing in the arithmetic of a pair.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from scan_viz.heads import MatchingHead

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
# Pairs per block when memory allows more and the head names no size (MatchingHead.block_pairs): small blocks keep
# the element-wise passes in cache, which measured faster on CPU than one huge block (see
# benchmarks/bench_scoring.py).
CPU_BLOCK_PAIRS = 4096
CUDA_BLOCK_PAIRS = 1 << 18


def score_matrix(
    head: MatchingHead,
    regions: torch.Tensor,
    words: torch.Tensor,
    word_lengths: torch.Tensor,
    region_lengths: torch.Tensor | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    block_pairs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Score all pairs. regions (n_images, n_regions, d); words (n_captions, max_words, d) -> (n_images, n_captions).

    The result has the dtype of the embeddings (float32 or float64) and lives in host memory.
    ``progress(done_pairs, total_pairs)`` is called after each block.
    """
    n_img, n_reg, _ = regions.shape
    n_cap = words.shape[0]
    out = np.zeros((n_img, n_cap), dtype=np.float64 if words.dtype == torch.float64 else np.float32)
    if n_img == 0 or n_cap == 0:
        return out
    itemsize = words.element_size()
    if block_pairs is None:
        block_pairs = head.block_pairs(words.device.type) or (CUDA_BLOCK_PAIRS if words.is_cuda else CPU_BLOCK_PAIRS)
    lengths = word_lengths.to("cpu", torch.int64)
    order = torch.argsort(lengths, stable=True)
    total, done = n_img * n_cap, 0
    cap_start = 0
    while cap_start < n_cap:
        # captions of this group: up to a block's worth, padded to the longest of them
        max_len = int(lengths[order[min(cap_start + 255, n_cap - 1)]])
        per_pair = max(1, head.bytes_per_pair(n_reg, max_len, itemsize))
        pairs = max(1, min(block_pairs, memory_budget // per_pair))
        # square-ish blocks: per-call work on each side (masks, norms, Gram matrices) is amortised
        # over the other side's items
        n_caps_block = max(1, min(n_cap - cap_start, 256, int(pairs**0.5)))
        n_imgs_block = max(1, min(n_img, pairs // n_caps_block))
        idx = order[cap_start:cap_start + n_caps_block]
        max_len = int(lengths[idx].max())
        idx_dev = idx.to(words.device)
        block_words = words.index_select(0, idx_dev)[:, :max_len]
        block_lengths = lengths[idx].to(words.device)
        cols = idx.numpy()
        for img_start in range(0, n_img, n_imgs_block):
            img_end = min(n_img, img_start + n_imgs_block)
            rl = region_lengths[img_start:img_end] if region_lengths is not None else None
            with torch.no_grad():
                block = head.scores(regions[img_start:img_end], block_words, block_lengths, rl).scores
            out[img_start:img_end, cols] = block.cpu().numpy()
            done += (img_end - img_start) * len(cols)
            if progress is not None:
                progress(done, total)
        cap_start += n_caps_block
    return out
