"""The co-attention re-ranker (after Li et al., ICCV 2017) as a head, so stage 2, the engine, the CLI's ``--head``
and every view use it like any other.

Its math and weights live in :mod:`scan_viz.coattention` (which imports torch; this module must not, so the CLI
can build its flags without it). Unlike the other heads it has trained weights, and they belong to one SCAN
model's encoders: ``model.head("coattention")`` finds the re-ranker trained on that model (by the encoders'
fingerprint, under ``pretrained/``) and refuses with one line saying how to train one otherwise. It declares no
settings: its only hyperparameter, the spatial attention's lambda, was fixed when it was trained.
"""
from __future__ import annotations

from typing import Any

from scan_viz.errors import ScanVizError
from scan_viz.heads import HeadOutput, MatchingHead, register_head


class CoAttentionHead(MatchingHead):
    """Word-to-region spatial attention, latent attention over the words, a matching logit."""

    attention_label = "word\u2192region spatial attention"
    word_relevance_label = "word weight (latent attention)"

    def __init__(self, name: str, settings: dict, reranker, product_dtype=None) -> None:
        super().__init__(name, settings, product_dtype)
        self.reranker = reranker  # a scan_viz.coattention.CoAttentionReranker

    def scores(self, regions, words, word_lengths, region_lengths=None, return_attention=False) -> HeadOutput:
        out = self.reranker.net(regions, words, word_lengths, region_lengths, return_attention, self.product_dtype)
        return HeadOutput(out.logits, out.alpha, word_relevance=out.beta)

    def bytes_per_pair(self, n_regions: int, n_words: int, itemsize: int) -> int:
        return self.reranker.net.bytes_per_pair(n_regions, n_words, itemsize)

    def hyperparameters(self) -> dict[str, Any]:
        return {"lambda_spatial": self.reranker.net.lambda_spatial, "reranker": self.reranker.fingerprint}

    @property
    def title(self) -> str:
        return "co-attention re-ranker"


def _from_model(name: str, model, settings: dict) -> CoAttentionHead:
    from scan_viz.coattention import TRAIN_COMMAND, find_coattention
    from scan_viz.stage1 import model_fingerprint

    reranker = find_coattention(model)
    if reranker is None:
        raise ScanVizError(f"no co-attention re-ranker under pretrained/ was trained on this model's encoders "
                           f"(fingerprint {model_fingerprint(model)}): train one with `{TRAIN_COMMAND} --model M "
                           "--data DIR --out pretrained/NAME`, or pick another head")
    return CoAttentionHead(name, settings, reranker)


register_head("coattention", CoAttentionHead, "co-attention re-ranker after Li et al. 2017 (trained for the model; "
              "word-to-region attention, latent attention over words, a matching probability)",
              from_model=_from_model)
