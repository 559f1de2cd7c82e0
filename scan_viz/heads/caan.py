"""A CAAN-style head: context-aware attention (after Zhang, Lei, Zhang, Li, CVPR 2020), reconstructed.

No official code of CAAN exists, and its learned layers are not confirmed; this is a parameter-free
reconstruction of the paper's idea on top of SCAN's encoders, hence "CAAN-style". For one pair, with region
embeddings v_r (r over the image's real regions), word embeddings u_w (w over the caption's words, ``<start>``
and ``<end>`` included), and the inverse temperatures ``lambda_inter``, ``lambda_intra``, ``lambda_pool``:

1. Region-word cosines: ``H[r, w] = v_r . u_w``.
2. Inter-modal attention (each item over the other modality) and the alignment strength it gives each item::

       A_reg[r, w]  = softmax_w(lambda_inter * H[r, :])          which words region r aligns with
       A_word[r, w] = softmax_r(lambda_inter * H[:, w])          which regions word w aligns with
       m_r = sum_w A_reg[r, w] H[r, w]                           (a soft max over the words)
       m_w = sum_r A_word[r, w] H[r, w]

3. Intra-modal correlation from second-order attention: two regions are related when their alignment rows
   over the words are alike (not when their features are), likewise two words by their columns::

       N_reg[r, :] = H[r, :] / |H[r, :]|,   C_reg = N_reg N_reg^T             (k x k)
       N_word[:, w] = H[:, w] / |H[:, w]|,  C_word = N_word^T N_word          (n x n)
       c_r = sum_r' softmax_r'(lambda_intra * C_reg[r, :]) m_r'              context of region r
       c_w = sum_w' softmax_w'(lambda_intra * C_word[w, :]) m_w'

4. One weight per region and one per word, each from its own alignment plus its context::

       alpha_r = softmax_r(lambda_pool * (m_r + c_r)),   beta_w = softmax_w(lambda_pool * (m_w + c_w))

5. Pooled vectors and score: ``v* = sum_r alpha_r v_r``, ``u* = sum_w beta_w u_w``, ``S = cos(v*, u*)``.
   Computed without building v* or u*: ``v* . u* = alpha^T H beta``, ``|v*|^2 = alpha^T (V V^T) alpha``,
   ``|u*|^2 = beta^T (U U^T) beta``.

Every softmax leaves padded regions and words out, and the |.| norms see zeros there, so padding changes
nothing; every step is equivariant in the order of the regions (and of the words), so the score is not.
It is trained with SCAN's hinge triplet loss (hardest negatives), like CAAN.

Its alignment: ``attention`` = A_word laid out word x region (each word's distribution over regions),
``word_relevance`` = beta, ``region_relevance`` = alpha.
"""
from __future__ import annotations

from scan_viz.heads.registry import HeadOutput, HeadParam, MatchingHead, register_head
from scan_viz.heads.stepspec import REGIONS, WORDS, StepSpec


class CaanHead(MatchingHead):
    """Context-aware attention: one weight per region and per word, one pooled vector per side, cosine."""

    params = (
        HeadParam("lambda_inter", 10.0, "inverse temperature of the inter-modal attention (region over words, "
                  "word over regions)", label="\u03bb_inter", low=0.5, high=50.0),
        HeadParam("lambda_intra", 10.0, "inverse temperature of the intra-modal (second-order) correlation",
                  label="\u03bb_intra", low=0.5, high=50.0),
        HeadParam("lambda_pool", 10.0, "inverse temperature of the final region and word weights",
                  label="\u03bb_pool", low=0.5, high=50.0),
    )
    attention_label = "word\u2192region attention (inter-modal)"
    word_relevance_label = "word weight"
    region_relevance_label = "region weight"

    def scores(self, regions, words, word_lengths, region_lengths=None, return_attention=False,
               trace=None) -> HeadOutput:
        """``trace``: a dict that receives every intermediate below under its name (what :mod:`scan_viz.heads.walk`
        shows)."""
        import torch

        from scan_viz.heads.similarity import EPS, masked_softmax, region_word_similarity

        s = self.settings
        sim = region_word_similarity(regions, words, word_lengths, region_lengths, self.product_dtype)
        h = sim.sims  # (n_img, k, n_cap, L)
        n_img, n_reg, n_cap, n_words = h.shape
        wv, rv = sim.pair_word_valid, sim.pair_region_valid
        word_valid = sim.word_valid  # (n_cap, L)
        region_valid = sim.region_valid  # (n_img, k) or None

        # 2. inter-modal attention and alignment strengths
        a_reg = masked_softmax(s["lambda_inter"] * h, 3, wv)
        m_reg = (a_reg * h).sum(dim=3).transpose(1, 2)  # (n_img, n_cap, k)
        a_word = masked_softmax(s["lambda_inter"] * h, 1, rv)
        m_word = (a_word * h).sum(dim=1)  # (n_img, n_cap, L)

        # 3. intra-modal correlation of the alignment rows (regions) and columns (words)
        n_r = h / (torch.linalg.vector_norm(h, dim=3, keepdim=True) + EPS)
        c_reg = torch.einsum("ircl,ijcl->icrj", n_r, n_r)  # (n_img, n_cap, k, k)
        reg_j = None if region_valid is None else region_valid[:, None, None, :]
        ctx_reg = (masked_softmax(s["lambda_intra"] * c_reg, 3, reg_j) @ m_reg[..., None])[..., 0]
        n_w = h / (torch.linalg.vector_norm(h, dim=1, keepdim=True) + EPS)
        c_word = torch.einsum("ircl,ircm->iclm", n_w, n_w)  # (n_img, n_cap, L, L)
        ctx_word = (masked_softmax(s["lambda_intra"] * c_word, 3, word_valid[None, :, None, :])
                    @ m_word[..., None])[..., 0]

        # 4. one weight per region, one per word
        alpha = masked_softmax(s["lambda_pool"] * (m_reg + ctx_reg), 2,
                               None if region_valid is None else region_valid[:, None, :])  # (n_img, n_cap, k)
        beta = masked_softmax(s["lambda_pool"] * (m_word + ctx_word), 2, word_valid[None])  # (n_img, n_cap, L)

        # 5. cosine of the pooled vectors, from H and the Gram matrices
        dot = torch.einsum("icr,ircl,icl->ic", alpha, h, beta)
        gram_v = sim.regions @ sim.regions.transpose(1, 2)  # (n_img, k, k)
        v_sq = torch.einsum("icr,irj,icj->ic", alpha, gram_v, alpha)
        gram_u = sim.words @ sim.words.transpose(1, 2)  # (n_cap, L, L)
        u_sq = torch.einsum("icl,clm,icm->ic", beta, gram_u, beta)
        scores = dot / (v_sq.clamp(min=0) * u_sq.clamp(min=0)).sqrt().clamp(min=EPS)
        if trace is not None:
            trace.update(sims=h, a_reg=a_reg, m_reg=m_reg, a_word=a_word, m_word=m_word, c_reg=c_reg,
                         ctx_reg=ctx_reg, c_word=c_word, ctx_word=ctx_word, alpha=alpha, beta=beta, dot=dot,
                         v_norm=v_sq.clamp(min=0).sqrt(), u_norm=u_sq.clamp(min=0).sqrt(), scores=scores)
        if not return_attention:
            return HeadOutput(scores)
        return HeadOutput(scores, a_word.permute(0, 2, 3, 1), word_relevance=beta, region_relevance=alpha)

    def bytes_per_pair(self, n_regions: int, n_words: int, itemsize: int) -> int:
        # H, the two inter-modal attentions and two normalised copies, plus the k x k and n x n correlations
        return (6 * n_regions * n_words + 2 * n_regions * n_regions + 2 * n_words * n_words) * itemsize

    def step_specs(self) -> tuple[StepSpec, ...]:
        """The CAAN-style computation as steps (v_r regions, u_w words, as in this module's docstring)."""
        return (
            StepSpec("cosines", "Region-word cosines", r"H_{rw} = v_r^\top u_w",
                     "How alike each region and each word are.", (("H", (WORDS, REGIONS)),),
                     note="The encoders L2-normalise v_r and u_w, so H holds cosines.", cell="cosine"),
            StepSpec("inter_word", "Inter-modal attention: each word over the regions",
                     r"A^{word}_{rw} = \frac{\exp(\lambda_{inter} H_{rw})}{\sum_{r'} \exp(\lambda_{inter} H_{r'w})},"
                     r"\quad m_w = \sum_r A^{word}_{rw} H_{rw}",
                     "Which regions each word aligns with, and how strongly (m_w, a soft maximum).",
                     (("A_word", (WORDS, REGIONS)), ("m_w", (WORDS,))), cell="softmax", over=REGIONS,
                     source="H", scale="lambda_inter"),
            StepSpec("inter_region", "Inter-modal attention: each region over the words",
                     r"A^{reg}_{rw} = \frac{\exp(\lambda_{inter} H_{rw})}{\sum_{w'} \exp(\lambda_{inter} H_{rw'})},"
                     r"\quad m_r = \sum_w A^{reg}_{rw} H_{rw}",
                     "Which words each region aligns with, and how strongly (m_r).",
                     (("A_reg", (WORDS, REGIONS)), ("m_r", (REGIONS,))), cell="softmax", over=WORDS,
                     source="H", scale="lambda_inter"),
            StepSpec("intra_region", "Intra-modal context of the regions",
                     r"C^{reg} = N N^\top,\ N_{r\cdot} = \frac{H_{r\cdot}}{\lVert H_{r\cdot} \rVert + \epsilon},"
                     r"\quad c_r = \sum_{r'} \operatorname{softmax}_{r'}(\lambda_{intra} C^{reg}_{rr'})\, m_{r'}",
                     "Two regions are related when they align with the same words; each region's context is "
                     "its related regions' alignment strength.",
                     (("C_reg", (REGIONS, REGIONS)), ("c_r", (REGIONS,))),
                     note="CAAN has no official code; this second-order attention is this project's reconstruction."),
            StepSpec("intra_word", "Intra-modal context of the words",
                     r"C^{word} = N^\top N,\ N_{\cdot w} = \frac{H_{\cdot w}}{\lVert H_{\cdot w} \rVert + \epsilon},"
                     r"\quad c_w = \sum_{w'} \operatorname{softmax}_{w'}(\lambda_{intra} C^{word}_{ww'})\, m_{w'}",
                     "Two words are related when they align with the same regions; each word's context is its "
                     "related words' alignment strength.", (("C_word", (WORDS, WORDS)), ("c_w", (WORDS,)))),
            StepSpec("weights", "One weight per region and per word",
                     r"\alpha_r = \operatorname{softmax}_r\big(\lambda_{pool}(m_r + c_r)\big),\quad "
                     r"\beta_w = \operatorname{softmax}_w\big(\lambda_{pool}(m_w + c_w)\big)",
                     "How much each region and each word counts in the pair's pooled vectors.",
                     (("beta", (WORDS,)), ("alpha", (REGIONS,)))),
            StepSpec("score", "Cosine of the pooled vectors",
                     r"S(I,T) = \frac{v^{*\top} u^*}{\lVert v^* \rVert \, \lVert u^* \rVert},\quad "
                     r"v^* = \sum_r \alpha_r v_r,\ u^* = \sum_w \beta_w u_w",
                     "The image-sentence score: one image vector and one sentence vector, made for this pair, "
                     "compared by their cosine.", (("S", ()), ("v_dot_u", ()), ("v_norm", ()), ("u_norm", ())),
                     note="The code never builds v* or u*: v*.u* = alpha^T H beta and the norms come from the Gram "
                          "matrices, the same numbers."),
        )

    def step_values(self, trace: dict, n_words: int, n_regions: int) -> dict:
        """One pair's numbers (float64) in the layouts ``step_specs`` names."""
        def np_(value):
            return value.double().cpu().numpy()

        k, n = n_regions, n_words
        return {"H": np_(trace["sims"][0, :k, 0, :n].T), "A_word": np_(trace["a_word"][0, :k, 0, :n].T),
                "m_w": np_(trace["m_word"][0, 0, :n]), "A_reg": np_(trace["a_reg"][0, :k, 0, :n].T),
                "m_r": np_(trace["m_reg"][0, 0, :k]), "C_reg": np_(trace["c_reg"][0, 0, :k, :k]),
                "c_r": np_(trace["ctx_reg"][0, 0, :k]), "C_word": np_(trace["c_word"][0, 0, :n, :n]),
                "c_w": np_(trace["ctx_word"][0, 0, :n]), "beta": np_(trace["beta"][0, 0, :n]),
                "alpha": np_(trace["alpha"][0, 0, :k]), "S": np_(trace["scores"][0, 0]),
                "v_dot_u": np_(trace["dot"][0, 0]), "v_norm": np_(trace["v_norm"][0, 0]),
                "u_norm": np_(trace["u_norm"][0, 0])}


register_head("caan", CaanHead, "CAAN-style: context-aware region and word weights, cosine of the pooled vectors")
