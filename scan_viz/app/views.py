"""Pure drawing for the app's screens: arrays and an Alignment in, arrays or plotly figures out.

The downloads and the command line use :func:`scan_viz.render.word_panels` (one matplotlib figure). On screen
each word's panel is its own small image, built from the same pieces (:func:`scan_viz.render.panel_image`,
the yellow outline of the strongest region), because a grid of arrays encodes in tens of milliseconds where
a matplotlib grid of a 640x480 photo takes over a second, and separate images reflow with the window.
"""
from __future__ import annotations

import dataclasses
import html

import numpy as np

from scan_viz.app.safe_text import plain
from scan_viz.regions.images import fit_within
from scan_viz.render import HIGHLIGHT, attention_peak, draw_boxes, panel_image
from scan_viz.text import END, START, UNK
from scan_viz.types import Alignment

#: Longest side of a word panel on screen, in pixels (the gallery's scenes are 320x256: shown 1:1).
PANEL_SIDE = 400
THUMB_SIDE = 224
#: Longest side of the explored image as the page shows it (a third of the page's width).
SHOWN_SIDE = 800
_HIGHLIGHT_RGB = tuple(int(HIGHLIGHT[i:i + 2], 16) for i in (1, 3, 5))


@dataclasses.dataclass
class WordPanel:
    """One word's panel: the image lit where the word attends, its strongest region outlined unless the
    attention is flat (then ``flat`` is True and the caption says so)."""

    word_index: int
    word: str
    caption: str
    image: np.ndarray  # (h, w, 3) uint8
    top_region: int
    top_weight: float
    flat: bool


def is_special(word: str) -> bool:
    return word in (START, END)


def content_words(alignment: Alignment) -> list[int]:
    """Indices of the sentence's own words (``<start>``/``<end>`` left out)."""
    return [i for i, w in enumerate(alignment.words) if not is_special(w)]


def word_label(alignment: Alignment, index: int, numbered: bool = False) -> str:
    """The word as shown: ``<unk>`` marked where the vocabulary lacks it; ``numbered``: a repeated word gets its
    position (``a (1)``, ``a (7)``), so every word of the sentence has its own label."""
    word = alignment.words[index]
    label = f"{word} ({UNK})" if alignment.unknown[index] else word
    if numbered and alignment.words.count(word) > 1:
        label += f" ({index})"
    return label


def region_label(alignment: Alignment, region: int) -> str:
    labels = alignment.region_labels
    return labels[region] if labels and region < len(labels) and labels[region] else f"region {region}"


def scaled_boxes(alignment: Alignment, shown: np.ndarray, original: np.ndarray) -> np.ndarray:
    """(n_regions, 4) alignment boxes in the pixels of ``shown``, a resized copy of ``original``."""
    boxes = np.asarray(alignment.boxes, dtype=np.float64).reshape(-1, 4)
    width, height = alignment.image_size or (original.shape[1], original.shape[0])
    return boxes * np.array([shown.shape[1] / width, shown.shape[0] / height] * 2)


def word_panels(image: np.ndarray, alignment: Alignment, side: int = PANEL_SIDE) -> list[WordPanel]:
    """One panel per word of the sentence (the SCAN paper's figure), each at most ``side`` pixels a side.

    image: (H, W, 3) uint8, the image the alignment's boxes refer to. The caption gives the word's relevance
    under the head's label where the head has one (SCAN t2i's R, CHAN's best-region cosine, CAAN's weight). A word whose attention is flat (:func:`scan_viz.render.attention_peak`) gets no
    outline, and its caption says so in place of the strongest region.
    """
    shown, _ = fit_within(image, side, side)
    boxes = scaled_boxes(alignment, shown, image)
    matrix = np.nan_to_num(np.asarray(alignment.attention, dtype=np.float64))
    panels = []
    for i in content_words(alignment):
        weights = matrix[i]
        peak = attention_peak(weights)
        top = peak.region
        lit = panel_image(shown, weights, boxes)
        where = f"{region_label(alignment, top)} {weights[top]:.2f}"
        if peak.flat:
            where = peak.describe()
        else:
            lit = draw_boxes(lit, boxes[top:top + 1], [where], colours=[_HIGHLIGHT_RGB], thickness=2)
        caption = f"{word_label(alignment, i)} \u00b7 {where}"
        if alignment.word_relevance is not None:
            value = float(alignment.word_relevance[i])
            caption = f"{word_label(alignment, i)} \u00b7 {alignment.word_relevance_label} = {value:.2f} \u00b7 {where}"
        panels.append(WordPanel(i, alignment.words[i], caption, lit, top, float(weights[top]), peak.flat))
    return panels


def shrink(image: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """A thumbnail: ``image`` fitted within ``side`` x ``side`` pixels."""
    return fit_within(image, side, side)[0]


#: column of the word and region tables holding the head's relevance (its label is in the chart's title)
RELEVANCE = "relevance"


def relevance_rows(alignment: Alignment) -> list[dict]:
    """A table of the words: the head's per-word relevance (if any, under ``RELEVANCE``), strongest region (or
    "flat") and its weight, unknown flag."""
    matrix = np.asarray(alignment.attention, dtype=np.float64)
    rows = []
    for i in content_words(alignment):
        peak = attention_peak(matrix[i])
        row = {"#": i, "word": plain(alignment.words[i]), "in vocabulary": not alignment.unknown[i]}
        if alignment.word_relevance is not None:
            row[RELEVANCE] = round(float(alignment.word_relevance[i]), 4)
        row["strongest region"] = (peak.describe() if peak.flat
                                   else f"{peak.region}: {plain(region_label(alignment, peak.region))}")
        row["weight"] = round(float(matrix[i, peak.region]), 4)
        rows.append(row)
    return rows


def region_rows(alignment: Alignment, top: int) -> list[dict]:
    """For a head with per-region relevance (SCAN i2t's R, CAAN's weights): the ``top`` regions by it, with the
    word each attends to most."""
    relevance = np.asarray(alignment.region_relevance, dtype=np.float64).reshape(-1)
    matrix = np.asarray(alignment.attention, dtype=np.float64)  # (n_words, n_regions)
    words = content_words(alignment)
    rows = []
    for r in np.argsort(-relevance, kind="stable")[:top]:
        best = words[int(np.argmax(matrix[words, r]))] if words else 0
        rows.append({"region": f"{int(r)}: {plain(region_label(alignment, int(r)))}",
                     RELEVANCE: round(float(relevance[r]), 4), "most attended word": plain(alignment.words[best]),
                     "weight": round(float(matrix[best, r]), 4)})
    return rows


RECALL_LABELS = {"r1": "R@1", "r5": "R@5", "r10": "R@10", "medr": "medr", "meanr": "meanr"}


def recall_rows(result: dict) -> list[dict]:
    """The recall table of an evaluation result (``scan_viz.evaluation.metrics.evaluate``'s): one row per direction."""
    return [{"direction": title, **{label: round(float(result[d][key]), 1)
                                    for key, label in RECALL_LABELS.items() if key in result.get(d, {})}}
            for d, title in (("i2t", "image \u2192 text"), ("t2i", "text \u2192 image"))]


def bar_figure(labels: list[str], values: list[float], title: str, x_title: str, signed: bool = False):
    """A horizontal plotly bar chart in reading order (first label on top); ``signed``: drops red, gains green."""
    import plotly.graph_objects as go

    colours = [("#d62728" if v < 0 else "#2ca02c") if signed else "#1f77b4" for v in values]
    # labels may hold a visitor's words, and Plotly renders a subset of HTML (<a href>, <b>) in them
    figure = go.Figure(go.Bar(x=values, y=[html.escape(plain(label), quote=False) for label in labels], orientation="h",
                              marker_color=colours,
                              hovertemplate="%{y}: %{x:.4f}<extra></extra>"))
    figure.update_layout(title={"text": title, "x": 0.0, "font": {"size": 14}},
                         xaxis={"title": x_title, "tickformat": ".3~g"},
                         yaxis={"autorange": "reversed", "type": "category"},
                         height=max(220, 26 * len(labels) + 90), margin={"l": 10, "r": 10, "t": 40, "b": 40})
    return figure
