"""SCAN (Lee et al., ECCV 2018): stacked cross attention, text-to-image or image-to-text, as a head.

The math is :func:`scan_viz.attention.scan_attention`, the one implementation; this module declares SCAN's
settings (under the official names, so an official checkpoint's ``opt`` values fill them in) and turns its
direction-specific outputs into the word x region layout every view reads.
"""
from __future__ import annotations

import dataclasses

from scan_viz.config import AGG_FUNCS, RAW_FEATURE_NORMS, ScanConfig
from scan_viz.heads import HeadOutput, HeadParam, MatchingHead, register_head
from scan_viz.limits import LAMBDA_RANGE

#: why 0.5-50: see scan_viz.limits (the paper uses 4-20)
LAMBDA_LOW, LAMBDA_HIGH = LAMBDA_RANGE


class ScanHead(MatchingHead):
    """SCAN in one direction (``cross_attn``): per-word maps over regions (t2i) or per-region maps over words
    (i2t), relevance R per word (t2i) or per region (i2t)."""

    params = (
        HeadParam("raw_feature_norm", "clipped_l2norm", "first normalisation of the cosines, over the query items",
                  label="normalisation", choices=RAW_FEATURE_NORMS, key="norm"),
        HeadParam("lambda_softmax", 9.0, "inverse temperature of the attention softmax (paper: 9 t2i, 4 i2t)",
                  label="\u03bb_softmax", low=LAMBDA_LOW, high=LAMBDA_HIGH, key="lsm"),
        HeadParam("agg_func", "LogSumExp", "how the relevances R are pooled into the pair's score",
                  label="aggregation", choices=AGG_FUNCS, key="agg"),
        HeadParam("lambda_lse", 6.0, "LogSumExp's inverse temperature (paper: 6 t2i, 5 i2t)", label="\u03bb_lse",
                  low=LAMBDA_LOW, high=LAMBDA_HIGH, key="lse", needs=("agg_func", "LogSumExp")),
    )

    def __init__(self, name, settings, product_dtype=None, cross_attn: str = "t2i") -> None:
        from scan_viz.attention import AttentionParams

        super().__init__(name, settings, product_dtype)
        self.attention_params = AttentionParams(cross_attn, settings["raw_feature_norm"],
                                                settings["lambda_softmax"], settings["agg_func"],
                                                settings["lambda_lse"])

    @property
    def cross_attn(self) -> str:
        return self.attention_params.cross_attn

    @property
    def attention_label(self) -> str:  # type: ignore[override]
        return "word\u2192region attention" if self.cross_attn == "t2i" else "region\u2192word attention"

    @property
    def word_relevance_label(self) -> str:  # type: ignore[override]
        return "R" if self.cross_attn == "t2i" else ""

    @property
    def region_relevance_label(self) -> str:  # type: ignore[override]
        return "R" if self.cross_attn == "i2t" else ""

    def hyperparameters(self) -> dict:
        return dataclasses.asdict(self.attention_params)

    def scores(self, regions, words, word_lengths, region_lengths=None, return_attention=False) -> HeadOutput:
        from scan_viz.attention import scan_attention

        res = scan_attention(regions, words, word_lengths, self.attention_params, region_lengths, return_attention,
                             self.product_dtype)
        if not return_attention:
            return HeadOutput(res.scores)
        if self.cross_attn == "t2i":
            return HeadOutput(res.scores, res.attention, word_relevance=res.relevance)
        return HeadOutput(res.scores, res.attention, region_relevance=res.relevance)

    def bytes_per_pair(self, n_regions: int, n_words: int, itemsize: int) -> int:
        # sims, attention and two temporaries of the same (n_words x n_regions) shape are alive at once
        return 5 * n_regions * n_words * itemsize

    @property
    def title(self) -> str:
        return self.name if self.name.endswith(self.cross_attn) else f"{self.name} {self.cross_attn}"


def _factory(cross_attn: str | None):
    def build(name: str, config: ScanConfig, settings: dict) -> ScanHead:
        return ScanHead(name, settings, cross_attn=cross_attn or config.cross_attn)
    return build


register_head("scan", ScanHead, "SCAN in the direction the model was trained with", _factory(None))
register_head("scan_t2i", ScanHead, "SCAN text-to-image: each word attends over the regions", _factory("t2i"))
register_head("scan_i2t", ScanHead, "SCAN image-to-text: each region attends over the words", _factory("i2t"))
