"""A plain re-statement of the official SCAN scoring loop, for tests and as the benchmark baseline.

It follows kuanghuei/SCAN's ``func_attention`` / ``xattn_score_t2i`` / ``xattn_score_i2t`` /
``shard_xattn_*`` step by step: one attention call per caption against every image of a 128 x 128 shard,
attended vectors materialised, cosine computed on them. It is slow on purpose; nothing in the library
uses it. (l1norm variants: L1 normalisation, since the official branches crash; see attention.py.)
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-8


def _l2norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + EPS)


def _l1norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x / (x.abs().sum(dim=dim, keepdim=True) + EPS)


def func_attention(query: torch.Tensor, context: torch.Tensor, raw_feature_norm: str,
                   smooth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """query (b, queryL, d), context (b, sourceL, d) -> weighted context (b, queryL, d), attn (b, sourceL, queryL)."""
    batch, source_len = context.shape[0], context.shape[1]
    query_len = query.shape[1]
    attn = torch.bmm(context, query.transpose(1, 2))  # (b, sourceL, queryL)
    if raw_feature_norm == "softmax":
        attn = torch.softmax(attn.reshape(batch * source_len, query_len), dim=1).view(batch, source_len, query_len)
    elif raw_feature_norm == "l2norm":
        attn = _l2norm(attn, 2)
    elif raw_feature_norm == "clipped_l2norm":
        attn = _l2norm(F.leaky_relu(attn, 0.1), 2)
    elif raw_feature_norm == "l1norm":
        attn = _l1norm(attn, 2)
    elif raw_feature_norm == "clipped_l1norm":
        attn = _l1norm(F.leaky_relu(attn, 0.1), 2)
    elif raw_feature_norm == "clipped":
        attn = F.leaky_relu(attn, 0.1)
    elif raw_feature_norm != "no_norm":
        raise ValueError(raw_feature_norm)
    attn = attn.transpose(1, 2).contiguous().view(batch * query_len, source_len)
    attn = torch.softmax(attn * smooth, dim=1).view(batch, query_len, source_len)
    attn_t = attn.transpose(1, 2).contiguous()  # (b, sourceL, queryL)
    weighted = torch.bmm(context.transpose(1, 2), attn_t).transpose(1, 2)  # (b, queryL, d)
    return weighted, attn_t


def cosine_similarity(x1: torch.Tensor, x2: torch.Tensor, dim: int) -> torch.Tensor:
    w12 = (x1 * x2).sum(dim)
    return w12 / (x1.norm(2, dim) * x2.norm(2, dim)).clamp(min=EPS)


def _aggregate(row_sim: torch.Tensor, agg_func: str, lambda_lse: float) -> torch.Tensor:
    if agg_func == "LogSumExp":
        return torch.log(torch.exp(row_sim * lambda_lse).sum(dim=1)) / lambda_lse
    if agg_func == "Max":
        return row_sim.max(dim=1).values
    if agg_func == "Sum":
        return row_sim.sum(dim=1)
    if agg_func == "Mean":
        return row_sim.mean(dim=1)
    raise ValueError(agg_func)


def xattn_score(images: torch.Tensor, captions: torch.Tensor, cap_lens, cross_attn: str,
                raw_feature_norm: str, lambda_softmax: float, agg_func: str, lambda_lse: float) -> torch.Tensor:
    """images (n_image, n_regions, d), captions (n_caption, max_words, d) -> (n_image, n_caption)."""
    n_image = images.shape[0]
    columns = []
    for i in range(captions.shape[0]):
        cap = captions[i, : int(cap_lens[i]), :].unsqueeze(0).repeat(n_image, 1, 1)
        if cross_attn == "t2i":
            weighted, _ = func_attention(cap, images, raw_feature_norm, lambda_softmax)
            row_sim = cosine_similarity(cap, weighted, dim=2)
        else:
            weighted, _ = func_attention(images, cap, raw_feature_norm, lambda_softmax)
            row_sim = cosine_similarity(images, weighted, dim=2)
        columns.append(_aggregate(row_sim, agg_func, lambda_lse))
    return torch.stack(columns, dim=1)


def shard_xattn(images: np.ndarray, captions: np.ndarray, cap_lens, shard_size: int = 128, **params) -> np.ndarray:
    """The official evaluation's sharded loop over float64 numpy embeddings -> (n_images, n_captions)."""
    out = np.zeros((len(images), len(captions)))
    for i0 in range(0, len(images), shard_size):
        im = torch.from_numpy(np.ascontiguousarray(images[i0:i0 + shard_size]))
        for j0 in range(0, len(captions), shard_size):
            cap = torch.from_numpy(np.ascontiguousarray(captions[j0:j0 + shard_size]))
            with torch.no_grad():
                sim = xattn_score(im, cap, cap_lens[j0:j0 + shard_size], **params)
            out[i0:i0 + shard_size, j0:j0 + shard_size] = sim.numpy()
    return out
