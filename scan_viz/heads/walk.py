"""A head's computation on one (image, sentence) pair, step by step, with the model's own numbers.

:func:`steps` runs the head's ``scores`` ONCE on the pair with a trace (the same code path, and the same
arithmetic, as every score the app and the command line show) and lays the recorded intermediates out as the
steps the head declares (:class:`scan_viz.heads.stepspec.StepSpec`). The last step's value is the pair's score.

    >>> walk = steps(model, gallery_regions(gallery, "img0001"), "a dog on grass", head="chan")
    >>> walk.steps[-1].value == walk.score
"""
from __future__ import annotations

import dataclasses
import html
from typing import Any

import numpy as np

from scan_viz.errors import ScanVizError
from scan_viz.heads import MatchingHead, resolve_head
from scan_viz.heads.stepspec import REGIONS, WORDS, StepSpec
from scan_viz.types import Regions

#: How many dimensions of a vector a display lists (never the whole vector).
TOP_DIMS = 5


@dataclasses.dataclass
class Step:
    """One step with its numbers.

    spec: what the step is (name, formula, meaning, note); tensors: each produced tensor by name, float64, laid
    out along ``spec.tensors``' axes: (n_words, n_regions) for a word x region matrix, (n_words,) or
    (n_regions,) per item, (n_regions, n_regions) / (n_words, n_words) for a correlation, () for a scalar.
    """

    spec: StepSpec
    tensors: dict[str, np.ndarray]

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def title(self) -> str:
        return self.spec.title

    @property
    def name(self) -> str:
        """The main tensor's name (``alpha``)."""
        return self.spec.tensors[0][0]

    @property
    def axes(self) -> tuple[str, ...]:
        return self.spec.tensors[0][1]

    @property
    def value(self) -> np.ndarray:
        """The main tensor."""
        return self.tensors[self.name]

    def _repr_html_(self) -> str:
        return step_html(self)


@dataclasses.dataclass
class Walk:
    """A head's steps on one pair: the words (``<start>``/``<end>`` included), the region labels, the boxes
    (n_regions, 4) or None, the head and its settings, the steps in order, and the pair's score (the last
    step's value). ``regions``: (n_regions, d) and ``words_emb``: (n_words, d), the embeddings the head read.
    ``constants``: fixed numbers a formula uses that are not settings (the co-attention re-ranker's trained λ)."""

    words: list[str]
    region_labels: list[str]
    boxes: np.ndarray | None
    head: str
    head_title: str
    settings: dict[str, Any]
    steps: list[Step]
    score: float
    regions: np.ndarray
    words_emb: np.ndarray
    constants: dict[str, Any] = dataclasses.field(default_factory=dict)

    def step(self, key: str) -> Step:
        for step in self.steps:
            if step.key == key:
                return step
        raise KeyError(key)

    def _repr_html_(self) -> str:
        head = html.escape(f"{self.head_title}: {' '.join(self.words)}")
        return (f"<div><h3>{head}</h3><p>score {self.score:.6f}</p>"
                + "".join(f"<h4>{i + 1}. {html.escape(s.title)}</h4>{step_html(s)}" for i, s in enumerate(self.steps))
                + "</div>")


def has_steps(head: MatchingHead) -> bool:
    """Whether the head describes its computation as steps."""
    return hasattr(head, "step_specs") and hasattr(head, "step_values")


def stepped_heads() -> list[str]:
    """The heads offered by name that describe their computation as steps."""
    from scan_viz.heads import head_spec, selectable_heads

    return [n for n in selectable_heads() if has_steps(head_spec(n).head_class)]


def steps(model, regions: Regions | np.ndarray, sentence: str, head: str | MatchingHead | None = None,
          dtype: str = "float64", **settings: Any) -> Walk:
    """The steps of ``head`` (a name or a built head; default: the model's own) on one image and one sentence.

    regions: a :class:`~scan_viz.types.Regions` (a gallery image's stored regions or a detector's output) or its
    features (n_regions, img_dim); ``settings``: the head's settings by their declared names (with a name).
    dtype: where the encoders and the head run (float64 by default, as the official test-time scores).
    """
    import torch

    from scan_viz.limits import check_sentence

    check_sentence(sentence)
    matcher = resolve_head(head, model, **settings)
    if not has_steps(matcher):
        raise ScanVizError(f"the {matcher.name} head does not describe its computation as steps yet: "
                           f"pick {', '.join(stepped_heads())}")
    if not isinstance(regions, Regions):
        regions = Regions(np.asarray(regions))
    region_emb = model.encode_images(np.asarray(regions.features)[None], dtype)
    caps = model.encode_captions([sentence], dtype)
    trace: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        out = matcher.scores(region_emb, caps.emb, caps.lengths, trace=trace)
    n_words, n_regions = int(caps.lengths[0]), region_emb.shape[1]
    values = matcher.step_values(trace, n_words, n_regions)
    walk_steps = [Step(spec, {name: values[name] for name, _axes in spec.tensors}) for spec in matcher.step_specs()]
    enc = caps.encoded[0]
    labels = [f"r{i}" + (f" {regions.labels[i]}" if regions.labels else "") for i in range(n_regions)]
    return Walk(words=["<start>"] + [t.text for t in enc.tokens] + ["<end>"], region_labels=labels,
                boxes=None if regions.boxes is None else np.asarray(regions.boxes), head=matcher.name,
                head_title=matcher.title, settings=dict(matcher.settings), steps=walk_steps,
                score=float(out.scores[0, 0]), regions=region_emb[0].double().numpy(),
                words_emb=caps.emb[0, :n_words].double().numpy(),
                constants=dict(matcher.step_constants()) if hasattr(matcher, "step_constants") else {})


def top_dims(vector: np.ndarray, k: int = TOP_DIMS) -> list[tuple[int, float]]:
    """The ``k`` dimensions of largest magnitude, (index, value), largest first: how a vector is shown."""
    order = np.argsort(-np.abs(vector), kind="stable")[:k]
    return [(int(i), float(vector[i])) for i in order]


def vector_summary(vector: np.ndarray) -> str:
    """``|x| = 1.000; top: d12 0.31, d7 -0.29, ...``: a vector by its norm and top dimensions."""
    tops = ", ".join(f"d{i} {v:+.3f}" for i, v in top_dims(vector))
    return f"|x| = {np.linalg.norm(vector):.4f}; largest: {tops}, ..."


def step_html(step: Step, words: list[str] | None = None, regions: list[str] | None = None) -> str:
    """A step as offline HTML: title, formula (LaTeX source), meaning, note and its numbers as tables."""
    parts = [f"<p><b>{html.escape(step.title)}</b>: {html.escape(step.spec.meaning)}</p>",
             f"<pre>{html.escape(step.spec.latex)}</pre>"]
    if step.spec.note:
        parts.append(f"<p><i>{html.escape(step.spec.note)}</i></p>")
    for name, axes in step.spec.tensors:
        parts.append(f"<p>{html.escape(name)} ({html.escape(' x '.join(axes) or 'scalar')})</p>")
        parts.append(array_html(step.tensors[name], axes, words, regions))
    return "".join(parts)


def array_html(array: np.ndarray, axes: tuple[str, ...], words: list[str] | None = None,
               regions: list[str] | None = None) -> str:
    """A small table of numbers (4 decimals) with the axes' labels where given."""
    array = np.asarray(array)

    def labels(axis: str, count: int) -> list[str]:
        given = words if axis == WORDS else regions if axis == REGIONS else None
        return list(given) if given is not None and len(given) == count else [str(i) for i in range(count)]

    def cell(v) -> str:
        return f"{v:.4f}" if np.issubdtype(array.dtype, np.floating) else str(v)

    if array.ndim == 0:
        return f"<p>{cell(array.item())}</p>"
    if array.ndim == 1:
        names = labels(axes[0], len(array))
        return ("<table><tr>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr><tr>"
                + "".join(f"<td>{cell(v)}</td>" for v in array) + "</tr></table>")
    rows, cols = labels(axes[0], array.shape[0]), labels(axes[1], array.shape[1])
    return ("<table><tr><th></th>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
            + "".join(f"<tr><th>{html.escape(r)}</th>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                      for r, row in zip(rows, array)) + "</table>")
