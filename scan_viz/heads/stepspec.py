"""How a matching head describes its computation as steps: plain data next to its math (no torch here).

A head lists :class:`StepSpec` s in order (``MatchingHead.step_specs()``, built from its settings so the formulas
say which normalisation and pooling it runs with); :func:`scan_viz.heads.walk.steps` fills in each step's numbers
from one traced run of the head's own ``scores`` (the same code path as the model's score).
"""
from __future__ import annotations

import dataclasses

#: The axes a step's tensors are laid out along, by name.
WORDS, REGIONS, DIMS = "words", "regions", "dimensions"
#: What hovering one cell of a step's main tensor shows (:func:`scan_viz.render.learn.cell_formula`).
CELL_KINDS = ("cosine", "normalise", "softmax", "argmax", "value")


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """One step of a head's computation.

    key: the step's id (``cosines``); title: its name for a reader; latex: its formula in the paper's notation;
    meaning: one sentence; tensors: (name, axes) of what it produces, the main one first (axes ``()`` for a
    scalar); note: where the official code differs from the paper ("" if nowhere); cell: how a cell of the main
    tensor is explained (:data:`CELL_KINDS`); over: for a ``softmax`` / ``normalise`` / ``argmax`` cell, the axis it
    runs over; source / scale: for a ``softmax`` cell, the tensor (of an earlier step, same layout) it takes and the
    setting that multiplies it (its inverse temperature; or a fixed number the head names in ``step_constants``).
    """

    key: str
    title: str
    latex: str
    meaning: str
    tensors: tuple[tuple[str, tuple[str, ...]], ...]
    note: str = ""
    cell: str = "value"
    over: str = ""
    source: str = ""
    scale: str = ""
