"""Matching heads: the part of a model that scores (regions, words) pairs, chosen by name.

A head takes region embeddings and word embeddings (the encoders' output) and returns, for a block of
pairs, the score matrix and, on request, what the app draws (attention and relevance). Adding a head is
a class plus ``@register_head("name")``.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

import torch

from scan_viz.attention import AttentionParams, AttentionResult, scan_attention
from scan_viz.config import ScanConfig
from scan_viz.errors import ScanVizError


class MatchingHead(abc.ABC):
    """Scores blocks of (image, caption) pairs from embeddings."""

    name: str
    #: "t2i" when attention rows are words (a map over regions per word), "i2t" when they are regions
    direction: str

    @abc.abstractmethod
    def scores(self, regions: torch.Tensor, words: torch.Tensor, word_lengths: torch.Tensor,
               region_lengths: torch.Tensor | None = None, return_attention: bool = False) -> AttentionResult:
        """regions (n_images, n_regions, d), words (n_captions, max_words, d) -> AttentionResult."""

    @abc.abstractmethod
    def bytes_per_pair(self, n_regions: int, n_words: int, itemsize: int) -> int:
        """Peak intermediate memory one pair costs in :meth:`scores`, for sizing blocks."""

    def hyperparameters(self) -> dict[str, Any]:
        """The settings that determine the head's scores, by their config names (for exports)."""
        return {}


_HEADS: dict[str, Callable[[ScanConfig], MatchingHead]] = {}


def register_head(name: str) -> Callable:
    def wrap(factory: Callable[[ScanConfig], MatchingHead]) -> Callable[[ScanConfig], MatchingHead]:
        _HEADS[name] = factory
        return factory
    return wrap


def head_names() -> list[str]:
    return sorted(_HEADS)


def create_head(name: str | None, config: ScanConfig) -> MatchingHead:
    """The head called ``name`` (default: SCAN in the config's direction) with the config's hyperparameters."""
    name = name or "scan"
    if name not in _HEADS:
        raise ScanVizError(f"unknown head {name!r}: choose one of {', '.join(head_names())}")
    return _HEADS[name](config)


@dataclasses.dataclass
class ScanHead(MatchingHead):
    """SCAN, Lee et al. ECCV 2018: stacked cross attention, text-to-image or image-to-text."""

    params: AttentionParams
    name: str = "scan"

    @property
    def direction(self) -> str:  # type: ignore[override]
        return self.params.cross_attn

    def scores(self, regions, words, word_lengths, region_lengths=None, return_attention=False):
        return scan_attention(regions, words, word_lengths, self.params, region_lengths, return_attention)

    def hyperparameters(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)

    def bytes_per_pair(self, n_regions: int, n_words: int, itemsize: int) -> int:
        # sims, attention and two temporaries of the same (n_words x n_regions) shape are alive at once
        return 5 * n_regions * n_words * itemsize


def attention_params(config: ScanConfig, cross_attn: str | None = None) -> AttentionParams:
    return AttentionParams(cross_attn or config.cross_attn, config.raw_feature_norm, config.lambda_softmax,
                           config.agg_func, config.lambda_lse)


@register_head("scan")
def _scan(config: ScanConfig) -> MatchingHead:
    return ScanHead(attention_params(config), "scan")


@register_head("scan_t2i")
def _scan_t2i(config: ScanConfig) -> MatchingHead:
    return ScanHead(attention_params(config, "t2i"), "scan_t2i")


@register_head("scan_i2t")
def _scan_i2t(config: ScanConfig) -> MatchingHead:
    return ScanHead(attention_params(config, "i2t"), "scan_i2t")
