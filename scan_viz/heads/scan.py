"""SCAN (Lee et al., ECCV 2018): stacked cross attention, text-to-image or image-to-text, as a head.

The math is :func:`scan_viz.heads.attention.scan_attention`, the one implementation; this module declares SCAN's
settings (under the official names, so an official checkpoint's ``opt`` values fill them in) and turns its
direction-specific outputs into the word x region layout every view reads.
"""
from __future__ import annotations

import dataclasses

from scan_viz.heads.registry import HeadOutput, HeadParam, MatchingHead, register_head
from scan_viz.heads.stepspec import REGIONS, WORDS, StepSpec
from scan_viz.limits import LAMBDA_RANGE

#: why 0.5-50: see scan_viz.limits (the paper uses 4-20)
LAMBDA_LOW, LAMBDA_HIGH = LAMBDA_RANGE
#: the options of the official code's ``opt`` (attention.py implements each)
RAW_FEATURE_NORMS = ("softmax", "l2norm", "clipped_l2norm", "l1norm", "clipped_l1norm", "clipped", "no_norm")
AGG_FUNCS = ("LogSumExp", "Mean", "Max", "Sum")
#: pairs per scoring block through the C kernel on a CPU. Measured with scan_viz.heads.engine.score_matrix (36
#: regions, d = 1,024, 12-word captions, 2 threads, AVX2 machine): 6.5-7.0 us/pair at 4,096 pairs, 6.2-6.9 at 16,384,
#: 8.5-9.6 at 32,768
KERNEL_BLOCK_PAIRS = 16384
#: SCAN's directions: text-to-image (words attend over regions) and image-to-text
CROSS_ATTNS = ("t2i", "i2t")
#: the direction, under the official name; ``dir`` in links (``?dir=i2t``) and ``--cross-attn`` on the command line
DIRECTION = HeadParam("cross_attn", "t2i", "direction: t2i (each word attends over the regions) or i2t (each "
                      "region attends over the words)", label="direction", choices=CROSS_ATTNS, key="dir")


class ScanHead(MatchingHead):
    """SCAN in one direction (``cross_attn``): per-word maps over regions (t2i) or per-region maps over words
    (i2t), relevance R per word (t2i) or per region (i2t)."""

    titled = (DIRECTION,)
    params = (
        DIRECTION,
        HeadParam("raw_feature_norm", "clipped_l2norm", "first normalisation of the cosines, over the query items",
                  label="normalisation", choices=RAW_FEATURE_NORMS, key="norm"),
        HeadParam("lambda_softmax", 9.0, "inverse temperature of the attention softmax (paper: 9 t2i, 4 i2t)",
                  label="\u03bb_softmax", low=LAMBDA_LOW, high=LAMBDA_HIGH, key="lsm"),
        HeadParam("agg_func", "LogSumExp", "how the relevances R are pooled into the pair's score",
                  label="aggregation", choices=AGG_FUNCS, key="agg"),
        HeadParam("lambda_lse", 6.0, "LogSumExp's inverse temperature (paper: 6 t2i, 5 i2t)", label="\u03bb_lse",
                  low=LAMBDA_LOW, high=LAMBDA_HIGH, key="lse", needs=("agg_func", "LogSumExp")),
    )

    def __init__(self, name, settings, product_dtype=None) -> None:
        from scan_viz.heads.attention import AttentionParams

        super().__init__(name, settings, product_dtype)
        self.attention_params = AttentionParams(settings["cross_attn"], settings["raw_feature_norm"],
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

    def scores(self, regions, words, word_lengths, region_lengths=None, return_attention=False,
               trace=None) -> HeadOutput:
        """``trace``: a dict that receives the intermediates (:func:`scan_viz.heads.attention.scan_attention`)."""
        from scan_viz.heads.attention import scan_attention

        res = scan_attention(regions, words, word_lengths, self.attention_params, region_lengths, return_attention,
                             self.product_dtype, trace=trace)
        if not return_attention:
            return HeadOutput(res.scores)
        if self.cross_attn == "t2i":
            return HeadOutput(res.scores, res.attention, word_relevance=res.relevance)
        return HeadOutput(res.scores, res.attention, region_relevance=res.relevance)

    def half_row_scores(self, table, rows, words, word_lengths, region_lengths=None, gram=None):
        """t2i, one caption, scores only (no gradient): the C kernel's float16 entry point
        (:func:`scan_viz.heads.attention_pairs.direct_half_scores`), when it computes this case; with the rows' Gram
        matrices (``gram``) each attended vector's norm comes from them."""
        if self.cross_attn != "t2i" or words.shape[0] != 1 or self.product_dtype not in (None, words.dtype):
            return None
        from scan_viz.heads.attention_pairs import direct_half_scores

        p = self.attention_params
        return direct_half_scores(table, rows, words, word_lengths, region_lengths, p.raw_feature_norm, p.agg_func,
                                  p.lambda_softmax, p.lambda_lse, gram=gram)

    def training_scores(self, regions, words, word_lengths):
        """SCAN's attention with the hand-written backward that recomputes instead of storing
        (:mod:`scan_viz.heads.attention_grad`); on a CPU only, where it was measured."""
        if regions.is_cuda:
            return None
        from scan_viz.heads.attention_grad import scan_scores_trainable

        return scan_scores_trainable(regions, words, word_lengths, self.attention_params,
                                     product_dtype=self.product_dtype)

    def packed_training_scores(self, regions, words, word_lengths):
        """t2i through the C kernel with the captions' words packed (:func:`scan_viz.heads.attention_pairs.
        ragged_pair_inputs`): the whole batch in one call, no padded word in its matrix products."""
        if regions.is_cuda:
            return None
        from scan_viz.heads.attention_grad import kernel_packs_words, scan_scores_trainable

        if not kernel_packs_words(self.attention_params, regions, words):
            return None
        return scan_scores_trainable(regions, words, word_lengths, self.attention_params,
                                     product_dtype=self.product_dtype, packed_words=True)

    def block_pairs(self, device: str) -> int | None:
        """Larger blocks on a CPU where the scores go through the per-pair C kernel (:mod:`scan_viz.heads.native`):
        it reads each pair's cosines once, so a block need not fit in cache, and the per-image Gram matrices and
        per-caption norms of a block are shared by more pairs."""
        import torch

        from scan_viz.heads import native

        params = self.attention_params
        if (str(device) == "cpu" and self.product_dtype in (None, torch.float32)
                and params.raw_feature_norm in native.NORMS and params.agg_func in native.AGGREGATIONS
                and native.library() is not None):
            return KERNEL_BLOCK_PAIRS
        return None

    def bytes_per_pair(self, n_regions: int, n_words: int, itemsize: int) -> int:
        # sims, attention and two temporaries of the same (n_words x n_regions) shape are alive at once
        return 5 * n_regions * n_words * itemsize

    @property
    def title(self) -> str:
        return self.name if self.name.endswith(self.cross_attn) else f"{self.name} {self.cross_attn}"


    def step_specs(self) -> tuple[StepSpec, ...]:
        """SCAN's computation as steps, in the paper's notation (v_i regions, e_j words), for these settings."""
        return scan_step_specs(self.cross_attn, self.settings["raw_feature_norm"], self.settings["agg_func"])

    def step_values(self, trace: dict, n_words: int, n_regions: int) -> dict:
        """One pair's numbers from a traced :meth:`scores` of one image and one caption, as float64 arrays in
        the layouts ``step_specs`` names: word x region matrices (n_words, n_regions), per-word (n_words,) or
        per-region (n_regions,) vectors, the score a 0-d array."""
        def grid(key):  # (1, k, 1, L) -> (n_words, n_regions)
            return trace[key][0, :n_regions, 0, :n_words].T.double().cpu().numpy()

        def items(key):
            value = trace[key]
            value = value[0, 0] if self.cross_attn == "t2i" or key == "relevance" else value[0, :, 0]
            return value[:n_words if self.cross_attn == "t2i" else n_regions].double().cpu().numpy()

        return {"s": grid("sims"), "s_bar": grid("logits") / self.settings["lambda_softmax"],
                "alpha": grid("attention"), "a_norm": items("attended_norm"), "e_dot_a": items("dot"),
                "R": items("relevance"), "S": trace["scores"][0, 0].double().cpu().numpy()}


_NORM_LATEX = {  # the normalised cosine over the query axis, {q} the index it sums over
    "clipped_l2norm": r"\frac{{\operatorname{{LReLU}}(s_{{ij}})}}{{\sqrt{{\sum_{{{q}'}} \operatorname{{LReLU}}(s_{{{iq}}})^2}} + \epsilon}}",
    "l2norm": r"\frac{{s_{{ij}}}}{{\sqrt{{\sum_{{{q}'}} s_{{{iq}}}^2}} + \epsilon}}",
    "clipped_l1norm": r"\frac{{\operatorname{{LReLU}}(s_{{ij}})}}{{\sum_{{{q}'}} |\operatorname{{LReLU}}(s_{{{iq}}})| + \epsilon}}",
    "l1norm": r"\frac{{s_{{ij}}}}{{\sum_{{{q}'}} |s_{{{iq}}}| + \epsilon}}",
    "softmax": r"\frac{{\exp(s_{{ij}})}}{{\sum_{{{q}'}} \exp(s_{{{iq}}})}}",
    "clipped": r"\operatorname{{LReLU}}(s_{{ij}})",
    "no_norm": r"s_{{ij}}",
}
_AGG_LATEX = {
    "LogSumExp": r"S(I,T) = \frac{{1}}{{\lambda_2}} \log \sum_{{{x}}} \exp\big(\lambda_2 R_{{{x}}}\big)",
    "Mean": r"S(I,T) = \frac{{1}}{{{n}}} \sum_{{{x}}} R_{{{x}}}",
    "Max": r"S(I,T) = \max_{{{x}}} R_{{{x}}}",
    "Sum": r"S(I,T) = \sum_{{{x}}} R_{{{x}}}",
}


def scan_step_specs(cross_attn: str, norm: str, agg: str) -> tuple[StepSpec, ...]:
    """SCAN t2i or i2t as steps. Indices as in the paper: i over the k regions v_i, j over the n words e_j."""
    t2i = cross_attn == "t2i"
    query, context = (WORDS, REGIONS) if t2i else (REGIONS, WORDS)
    # t2i: each REGION's cosines are normalised over the words (the query axis), as the official code does
    iq = "ij'" if t2i else "i'j"
    q = "j" if t2i else "i"
    clipped = norm in ("clipped_l2norm", "clipped_l1norm", "clipped")
    norm_note = ("The paper clips with [s]_+ = max(s, 0); the official code uses LeakyReLU with slope 0.1 "
                 "(LReLU), so negative cosines keep a tenth of their value. " if clipped else "")
    if t2i:
        norm_note += ("Here the official code normalises each region's cosines over the WORDS j (the query axis) "
                      "before the softmax over the regions; the numbers are the code's.")
    eps_note = "ε = 1e-8 is added to the norm, as in the official code." if norm.endswith("norm") else ""
    x, n_items = ("j", "n") if t2i else ("i", "k")
    softmax = (r"\alpha_{ij} = \frac{\exp(\lambda_1 \bar s_{ij})}{\sum_{i'=1}^{k} \exp(\lambda_1 \bar s_{i'j})}"
               if t2i else
               r"\alpha_{ij} = \frac{\exp(\lambda_1 \bar s_{ij})}{\sum_{j'=1}^{n} \exp(\lambda_1 \bar s_{ij'})}")
    attended = (r"a_j = \sum_{i=1}^{k} \alpha_{ij} v_i" if t2i else r"a'_i = \sum_{j=1}^{n} \alpha_{ij} e_j")
    relevance = (r"R(e_j, a_j) = \frac{e_j^\top a_j}{\lVert e_j \rVert \, \lVert a_j \rVert}" if t2i else
                 r"R(v_i, a'_i) = \frac{v_i^\top a'_i}{\lVert v_i \rVert \, \lVert a'_i \rVert}")
    return (
        StepSpec("cosines", "Region-word cosines",
                 r"s_{ij} = \frac{v_i^\top e_j}{\lVert v_i \rVert \, \lVert e_j \rVert}",
                 "How alike each region v_i and each word e_j are, before any attention.",
                 (("s", (WORDS, REGIONS)),),
                 note="The encoders L2-normalise v_i and e_j, so the code takes the plain dot product.",
                 cell="cosine"),
        StepSpec("normalised", "Clipped and normalised" if clipped else "Normalised",
                 r"\bar s_{ij} = " + _NORM_LATEX[norm].format(q=q, iq=iq),
                 f"Each {'region' if t2i else 'word'}'s cosines are rescaled over the {query} "
                 "so that one strong match does not depend on the scale of the others.",
                 (("s_bar", (WORDS, REGIONS)),), note=" ".join(n for n in (norm_note, eps_note) if n),
                 cell="normalise", over=query),
        StepSpec("attention", "Attention weights", softmax,
                 f"Each {'word' if t2i else 'region'} spreads one unit of attention over the {context}; "
                 f"λ_1 (lambda_softmax) sets how sharply it picks its best {context[:-1]}.",
                 (("alpha", (WORDS, REGIONS)),), cell="softmax", over=context, source="s_bar",
                 scale="lambda_softmax"),
        StepSpec("attended", "Attended vector", attended,
                 f"The {context[:-1]} content each {query[:-1]} sees: a weighted mix of the "
                 f"{context} embeddings (shown by its norm and its dot product with the "
                 f"{query[:-1]}).",
                 (("a_norm", (query,)), ("e_dot_a", (query,))),
                 note="The code never builds the attended vector: it gets its dot product from the cosines and its "
                      "norm from the Gram matrix of the " + context + ", which are the same numbers."),
        StepSpec("relevance", "Relevance", relevance,
                 f"How well each {query[:-1]} is matched by what it attended to.",
                 (("R", (query,)),), note="The cosine's denominator is clamped at 1e-8, as in the official code."),
        StepSpec("score", "Pooled score", _AGG_LATEX[agg].format(x=x, n=n_items),
                 f"The image-sentence score: the relevances of all {query} pooled into one number.",
                 (("S", ()),),
                 note=("Written as the official code computes it, log(sum exp(λ_2 R)) / λ_2, with no 1/n inside; "
                       "the paper writes log(sum exp(λ_2 R))^(1/λ_2), the same number." if agg == "LogSumExp"
                       else "")),
    )


class ScanDirectionHead(ScanHead):
    """SCAN in a fixed direction (``scan_t2i``, ``scan_i2t``): the direction is the head's name, not a setting."""

    params = tuple(p for p in ScanHead.params if p is not DIRECTION)


register_head("scan", ScanHead, "SCAN in the direction the model was trained with (--cross-attn: another)")
register_head("scan_t2i", ScanDirectionHead, "SCAN text-to-image: each word attends over the regions",
              variant_of="scan", fixed={"cross_attn": "t2i"})
register_head("scan_i2t", ScanDirectionHead, "SCAN image-to-text: each region attends over the words",
              variant_of="scan", fixed={"cross_attn": "i2t"})
