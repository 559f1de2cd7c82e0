"""Matching heads: the part of a model that scores (regions, words) pairs, chosen by name.

A head takes region embeddings (n_images, n_regions, d) and word embeddings (n_captions, max_words, d), the
encoders' output, and returns a :class:`HeadOutput` for a block of pairs: the score matrix and, on request, a
word x region matrix plus per-word and/or per-region relevance, which is what every view draws.

A head declares its hyperparameters once, next to its math, as :class:`HeadParam` s (name, default, range or
choices, help). The command line's flags, the app's controls and its link keys are generated from these
declarations, and :func:`create_head` fills the values in from (highest first) the caller's overrides, the
model's config, then the declared defaults. Adding a head is one module with a :class:`MatchingHead` subclass
and a :func:`register_head` call, imported at the bottom of this file. A head with trained weights of its own
(the co-attention re-ranker) is built from the model (``from_model``), since its weights belong to the model's
encoders.

Importing this package (and the heads' modules) does not import torch: the command line builds its flags from
the declarations and checks a user's values before the slow import.
"""
from scan_viz.heads.registry import (DEFAULT_HEAD, SCORING_DTYPES, HeadOutput, HeadParam, HeadSpec, MatchingHead,
                                     all_head_params, choose_head, create_head, head_names, head_settings, head_spec,
                                     heads_declaring, own_head, register_head, resolve_head, selectable_heads,
                                     variant_for)

# registration: importing a head's module registers it
from scan_viz.heads import scan as _scan  # noqa: E402,F401,I001  (first: its settings lead the generated lists)
from scan_viz.heads import chan as _chan  # noqa: E402,F401
from scan_viz.heads import caan as _caan  # noqa: E402,F401
from scan_viz.heads import coattention as _coattention  # noqa: E402,F401
from scan_viz.heads.scan import ScanHead  # noqa: E402

__all__ = ["DEFAULT_HEAD", "SCORING_DTYPES", "HeadOutput", "HeadParam", "HeadSpec", "MatchingHead", "ScanHead",
           "all_head_params", "choose_head", "create_head", "head_names", "head_settings", "heads_declaring",
           "head_spec", "own_head", "register_head", "resolve_head", "selectable_heads", "variant_for"]
