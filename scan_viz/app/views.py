"""What the app's screens show, prepared from :mod:`scan_viz.render` (the one home of every drawing concept).

The renderer draws (panels, labels, boxes, colours, bars, the flat-attention rule); this module only fixes the
app's screen sizes, builds its tables, and passes visitors' text through :func:`~scan_viz.app.safe_text.plain`
before it reaches a table or a chart. Pages call these and lay out what they return; they compute nothing.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from scan_viz.app.safe_text import literal, plain
from scan_viz.regions.images import fit_within
from scan_viz.render import (PANEL_SIDE, Bars, WordPanel, ablation_bars, attention_peak, content_words,
                             plotly_bars, region_label, strongest_regions, word_panel_images)
from scan_viz.types import Alignment

__all__ = ["PANEL_SIDE", "RELEVANCE", "SHOWN_SIDE", "THUMB_SIDE", "WordPanel", "ablation_figures", "ablation_note",
           "bar_figure", "recall_rows", "region_rows", "relevance_rows", "shrink", "word_panels"]

THUMB_SIDE = 224
#: Longest side of the explored image as the page shows it (a third of the page's width).
SHOWN_SIDE = 800


def word_panels(image: np.ndarray, alignment: Alignment, side: int = PANEL_SIDE) -> list[WordPanel]:
    """The on-screen word panels (:func:`scan_viz.render.word_panel_images`), each at most ``side`` pixels."""
    return word_panel_images(image, alignment, side)


def shrink(image: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """A thumbnail: ``image`` fitted within ``side`` x ``side`` pixels."""
    return fit_within(image, side, side)[0]


def bar_figure(bars: Bars):
    """A plotly bar chart of ``bars`` (:func:`scan_viz.render.plotly_bars`), its labels made plain text first
    (a visitor's words may carry bidirectional controls)."""
    return plotly_bars(dataclasses.replace(bars, labels=[plain(label) for label in bars.labels]))


def ablation_figures(alignment: Alignment, ablation: dict, top: int = 12) -> tuple:
    """The two charts of the Ablation tab: remove a word, remove a region (the ``top`` largest changes)."""
    words, regions = ablation_bars(alignment, ablation, top)
    return bar_figure(words), bar_figure(regions)


def ablation_note(ablation: dict) -> str | None:
    """One Markdown sentence on the word the match relies on most (None when the sentence has no word)."""
    if not ablation["words"]:
        return None
    token, delta = min(ablation["words"], key=lambda wd: wd[1])
    if delta < 0:
        return f"The match relies most on {literal(token)}: removing it lowers the score by {-delta:.4f}."
    return "Removing any single word raises the score: no word supports this match."


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
    for r in strongest_regions(alignment, top):
        best = words[int(np.argmax(matrix[words, r]))] if words else 0
        rows.append({"region": f"{r}: {plain(region_label(alignment, r))}",
                     RELEVANCE: round(float(relevance[r]), 4), "most attended word": plain(alignment.words[best]),
                     "weight": round(float(matrix[best, r]), 4)})
    return rows


RECALL_LABELS = {"r1": "R@1", "r5": "R@5", "r10": "R@10", "medr": "medr", "meanr": "meanr"}


def recall_rows(result: dict) -> list[dict]:
    """The recall table of an evaluation result (``scan_viz.evaluation.metrics.evaluate``'s): one row per direction."""
    return [{"direction": title, **{label: round(float(result[d][key]), 1)
                                    for key, label in RECALL_LABELS.items() if key in result.get(d, {})}}
            for d, title in (("i2t", "image \u2192 text"), ("t2i", "text \u2192 image"))]
