"""The co-attention re-ranker (after Li et al., ICCV 2017) as a head, so stage 2, the engine, the CLI's ``--head``
and every view use it like any other.

Its math and weights live in :mod:`scan_viz.heads.coattention_net` (which imports torch; this module must not, so the CLI
can build its flags without it). Unlike the other heads it has trained weights, and they belong to one SCAN
model's encoders: ``model.head("coattention")`` finds the re-ranker trained on that model (by the encoders'
fingerprint, under ``pretrained/``) and refuses with one line saying how to train one otherwise. It declares no
settings: its only hyperparameter, the spatial attention's lambda, was fixed when it was trained (the Learn page
reads it from ``step_constants``).

Its steps (``step_specs``) follow Li et al.'s stage 2 by name (spatial attention, word-level features, latent
semantic attention, matching probability), written with this reconstruction's symbols (:mod:`scan_viz.heads.coattention_net`);
each note says where the code differs from the paper.
"""
from __future__ import annotations

from typing import Any

from scan_viz.errors import ScanVizError
from scan_viz.heads.registry import HeadOutput, MatchingHead, register_head
from scan_viz.heads.stepspec import REGIONS, WORDS, StepSpec


class CoAttentionHead(MatchingHead):
    """Word-to-region spatial attention, latent attention over the words, a matching logit."""

    attention_label = "word\u2192region spatial attention"
    word_relevance_label = "word weight (latent attention)"

    def __init__(self, name: str, settings: dict, reranker, product_dtype=None) -> None:
        super().__init__(name, settings, product_dtype)
        self.reranker = reranker  # a scan_viz.heads.coattention_net.CoAttentionReranker

    def scores(self, regions, words, word_lengths, region_lengths=None, return_attention=False,
               trace=None) -> HeadOutput:
        """``trace``: a dict that receives the intermediates (:meth:`scan_viz.heads.coattention_net.CoAttention.forward`).
        The re-ranker runs in the embeddings' dtype (a float64 copy of its weights for float64 scores)."""
        net = self.reranker.net_in(regions.dtype)
        out = net(regions, words, word_lengths, region_lengths, return_attention, self.product_dtype, trace=trace)
        return HeadOutput(out.logits, out.alpha, word_relevance=out.beta)

    def bytes_per_pair(self, n_regions: int, n_words: int, itemsize: int) -> int:
        return self.reranker.net.bytes_per_pair(n_regions, n_words, itemsize)

    def hyperparameters(self) -> dict[str, Any]:
        return {"lambda_spatial": self.reranker.net.lambda_spatial, "reranker": self.reranker.fingerprint}

    @property
    def title(self) -> str:
        return "co-attention re-ranker"

    def step_constants(self) -> dict[str, float]:
        """Fixed numbers the steps' formulas use that are not settings: the spatial attention's lambda."""
        return {"lambda_spatial": float(self.reranker.net.lambda_spatial)}

    def step_specs(self) -> tuple[StepSpec, ...]:
        """The re-ranker's computation as steps: v_r regions, u_w words (the encoders' embeddings), W_v, b_v,
        W_u, b_u, q, o, c its trained weights (:mod:`scan_viz.heads.coattention_net`)."""
        return (
            StepSpec("cosines", "Region-word cosines", r"s_{wr} = v_r^\top u_w",
                     "How alike each word u_w and each region v_r are, before any attention.",
                     (("s", (WORDS, REGIONS)),),
                     note="The encoders L2-normalise v_r and u_w, so the plain dot product is their cosine.",
                     cell="cosine"),
            StepSpec("spatial", "Spatial attention: each word over the regions",
                     r"\alpha_{wr} = \frac{\exp(\lambda s_{wr})}{\sum_{r'} \exp(\lambda s_{wr'})}",
                     "Each word spreads one unit of attention over the image's regions; λ (fixed when the "
                     "re-ranker was trained) sets how sharply it picks one.",
                     (("alpha", (WORDS, REGIONS)),), cell="softmax", over=REGIONS, source="s",
                     scale="lambda_spatial",
                     note="The paper scores each word-region pair with a learned layer over the LSTM's state and "
                          "the CNN's feature map; this reconstruction uses the SCAN encoders' cosine times a fixed "
                          "λ."),
            StepSpec("features", "Word-level features",
                     r"a_w = W_v \sum_r \alpha_{wr} v_r + b_v,\quad h_w = (W_u u_w + b_u) \odot a_w",
                     "What each word sees in the image (a_w), multiplied feature by feature with the word "
                     "itself: one word-level feature h_w per word (shown by its norm).",
                     (("h_norm", (WORDS,)), ("a_norm", (WORDS,))),
                     note="The code projects the regions before mixing them, sum_r alpha (W_v v_r) + b_v, when that "
                          "is cheaper: the same vector. Here u_w comes from SCAN's GRU, not the paper's LSTM."),
            StepSpec("latent", "Latent semantic attention over the words",
                     r"e_w = q^\top \tanh(h_w),\quad \beta_w = \frac{\exp(e_w)}{\sum_{w'} \exp(e_{w'})}",
                     "How much each word's feature counts in the pair's match, whatever its place in the "
                     "sentence.", (("beta", (WORDS,)), ("e", (WORDS,))),
                     note="The paper's decoder LSTM attends over the word-level features at each of its steps; "
                          "this reconstruction uses one learned query q, once."),
            StepSpec("pooled", "Pooled feature: each word's part",
                     r"z = \sum_w \beta_w h_w,\quad o^\top z = \sum_w \beta_w \, o^\top h_w",
                     "The pair's feature z is the words' features weighted by β; each word's part of the "
                     "score is β_w o^T h_w.", (("contribution", (WORDS,)), ("z_norm", ()))),
            StepSpec("score", "Matching score",
                     r"S(I,T) = o^\top z + c,\quad p = \sigma(S(I,T))",
                     "The image-sentence score: a logit whose sigmoid p is the matching probability the "
                     "re-ranker was trained for with binary cross-entropy.", (("S", ()), ("p", ())),
                     note="The score is the logit, not p: it ranks the same and does not saturate."),
        )

    def step_values(self, trace: dict, n_words: int, n_regions: int) -> dict:
        """One pair's numbers (float64) in the layouts ``step_specs`` names."""
        import torch

        def np_(value):
            return value.double().cpu().numpy()

        k, n = n_regions, n_words
        logit = trace["logits"][0, 0]
        return {"s": np_(trace["sims"][0, :k, 0, :n].T), "alpha": np_(trace["alpha"][0, 0, :n, :k]),
                "h_norm": np_(trace["features_norm"][0, 0, :n]), "a_norm": np_(trace["attended_norm"][0, 0, :n]),
                "beta": np_(trace["beta"][0, 0, :n]), "e": np_(trace["latent"][0, 0, :n]),
                "contribution": np_(trace["contribution"][0, 0, :n]), "z_norm": np_(trace["pooled_norm"][0, 0]),
                "S": np_(logit), "p": np_(torch.sigmoid(logit))}


def _from_model(name: str, model, settings: dict) -> CoAttentionHead:
    from scan_viz.heads.coattention_net import TRAIN_COMMAND, find_coattention
    from scan_viz.parts import model_fingerprint

    reranker = find_coattention(model)
    if reranker is None:
        raise ScanVizError(f"no co-attention re-ranker under pretrained/ was trained on this model's encoders "
                           f"(fingerprint {model_fingerprint(model)}): train one with `{TRAIN_COMMAND} --model M "
                           "--data DIR --out pretrained/NAME`, or pick another head")
    return CoAttentionHead(name, settings, reranker)


register_head("coattention", CoAttentionHead, "co-attention re-ranker after Li et al. 2017 (trained for the model; "
              "word-to-region attention, latent attention over words, a matching probability)",
              from_model=_from_model)
