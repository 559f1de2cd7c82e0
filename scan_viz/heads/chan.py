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

from scan_viz.heads.registry import HeadOutput, HeadParam, MatchingHead, register_head
from scan_viz.heads.stepspec import REGIONS, WORDS, StepSpec

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

    def scores(self, regions, words, word_lengths, region_lengths=None, return_attention=False,
               trace=None) -> HeadOutput:
        """``trace``: a dict that receives ``sims``, ``best``, ``best_region`` and ``scores`` (what
        :mod:`scan_viz.heads.walk` shows)."""
        import torch

        from scan_viz.heads.similarity import region_word_similarity

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
        if trace is not None:
            trace.update(sims=sim.sims.clone(), best=best, best_region=region, scores=scores)
        if not return_attention:
            return HeadOutput(scores)
        one_hot = torch.nn.functional.one_hot(region, sims.shape[1]).to(best.dtype)  # (n_img, n_cap, L, k)
        return HeadOutput(scores, one_hot, word_relevance=best.masked_fill(~word_valid, 0.0))

    def bytes_per_pair(self, n_regions: int, n_words: int, itemsize: int) -> int:
        # the cosines and (with padded regions) their masked copy
        return 2 * n_regions * n_words * itemsize

    def step_specs(self) -> tuple[StepSpec, ...]:
        """CHAN's computation as steps (v_i regions, e_j words), for these settings."""
        pooled = (r"S(I,T) = \beta \log \sum_{j=1}^{n} \exp\big(c_j / \beta\big)"
                  if self.settings["chan_agg"] == "LogSumExp" else r"S(I,T) = \frac{1}{n} \sum_{j=1}^{n} c_j")
        return (
            StepSpec("cosines", "Region-word cosines",
                     r"s_{ij} = \frac{v_i^\top e_j}{\lVert v_i \rVert \, \lVert e_j \rVert}",
                     "How alike each region v_i and each word e_j are.", (("s", (WORDS, REGIONS)),),
                     note="The encoders L2-normalise v_i and e_j, so the code takes the plain dot product.",
                     cell="cosine"),
            StepSpec("best", "Each word's best region (hard alignment)", r"c_j = \max_{i} s_{ij}",
                     "Each word is coded by its single best region, not a soft mix: no clipping, no "
                     "normalisation and no softmax.", (("c", (WORDS,)), ("best_region", (WORDS,))), cell="argmax",
                     over=REGIONS),
            StepSpec("score", "Pooled score", pooled,
                     "The image-sentence score: the words' best cosines pooled into one number "
                     "(a small β approaches the best word, a large one the sum).", (("S", ()),)),
        )

    def step_values(self, trace: dict, n_words: int, n_regions: int) -> dict:
        """One pair's numbers (float64) in the layouts ``step_specs`` names."""
        return {"s": trace["sims"][0, :n_regions, 0, :n_words].T.double().cpu().numpy(),
                "c": trace["best"][0, 0, :n_words].double().cpu().numpy(),
                "best_region": trace["best_region"][0, 0, :n_words].cpu().numpy(),
                "S": trace["scores"][0, 0].double().cpu().numpy()}


register_head("chan", ChanHead, "CHAN: each word's best region (hard alignment), LogSumExp over the words",
              contrast="scan_t2i")
