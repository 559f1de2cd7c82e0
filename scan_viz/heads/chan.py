"""CHAN (Pan, Wu, Zhang, CVPR 2023), the Cross-modal Hard Aligning Network's matching head.

For an image's regions v_r and a caption's words u_w (the encoders' L2-normalised embeddings, so dot products
are cosines)::

    c_w  = max_r cos(u_w, v_r)                              each word's best region ("hard" assignment)
    S    = beta * log sum_w exp(c_w / beta)                 (chan_agg = LogSumExp, beta = 0.1 for GRU models)
    S    = mean_w c_w                                       (chan_agg = Mean, the released BERT models' choice)

Padded regions never win the max; padded words take no part in the sum or mean. ``<start>``/``<end>`` are words
of the caption as in SCAN. There is no LeakyReLU, no normalisation over words and no softmax: a pair costs one
slice of the region-word product plus a max, and never builds an attended vector.

Its alignment is one region per word, the argmax, with c_w as its confidence: ``attention`` is one-hot per word
and ``word_relevance`` holds c_w.
"""
from __future__ import annotations

from scan_viz.heads import HeadOutput, HeadParam, MatchingHead, register_head

CHAN_AGGS = ("LogSumExp", "Mean")


class ChanHead(MatchingHead):
    """Hard alignment: each word's best region cosine, pooled over the words."""

    params = (
        HeadParam("beta", 0.1, "temperature of CHAN's LogSumExp over the words' best-region cosines "
                  "(paper: 0.1; smaller approaches the best word, larger the sum)", label="\u03b2", low=0.01, high=1.0,
                  step=0.01, needs=("chan_agg", "LogSumExp")),
        HeadParam("chan_agg", "LogSumExp", "how the words' best-region cosines are pooled (paper: LogSumExp for GRU "
                  "models, Mean for BERT ones)", label="CHAN pooling", choices=CHAN_AGGS),
    )
    attention_label = "hard alignment: each word's best region"
    word_relevance_label = "best-region cosine"

    def scores(self, regions, words, word_lengths, region_lengths=None, return_attention=False) -> HeadOutput:
        import torch

        from scan_viz.similarity import region_word_similarity

        sim = region_word_similarity(regions, words, word_lengths, region_lengths, self.product_dtype)
        sims = sim.sims
        if sim.region_valid is not None:
            sims = sims.masked_fill(~sim.pair_region_valid, float("-inf"))
        best, region = sims.max(dim=1)  # (n_img, n_cap, L): c_w and its region
        word_valid = sim.word_valid[None]  # (1, n_cap, L)
        if self.settings["chan_agg"] == "LogSumExp":
            beta = self.settings["beta"]
            scores = beta * torch.logsumexp(best.masked_fill(~word_valid, float("-inf")) / beta, dim=2)
        else:
            valid = word_valid.to(best.dtype)
            scores = (best.masked_fill(~word_valid, 0.0)).sum(dim=2) / valid.sum(dim=2).clamp(min=1)
        if not return_attention:
            return HeadOutput(scores)
        one_hot = torch.nn.functional.one_hot(region, sims.shape[1]).to(best.dtype)  # (n_img, n_cap, L, k)
        return HeadOutput(scores, one_hot, word_relevance=best.masked_fill(~word_valid, 0.0))

    def bytes_per_pair(self, n_regions: int, n_words: int, itemsize: int) -> int:
        # the cosines and (with padded regions) their masked copy
        return 2 * n_regions * n_words * itemsize


register_head("chan", ChanHead, "CHAN: each word's best region (hard alignment), LogSumExp over the words")
