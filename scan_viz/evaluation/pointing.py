"""Pointing accuracy: does a word's most-attended region lie on the thing the word names?

A word is a hit when the region with the largest attention weight for it has IoU >= 0.5 with one of the
word's ground-truth boxes. Two baselines come from the same regions: "random" (the expected hit rate of a
uniformly random region, i.e. the fraction of regions that would hit) and "largest" (always the region with
the largest box). Stuff words are also reported one by one ("sky" and "grass" are different problems).
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Iterable, Mapping

import numpy as np

from scan_viz.boxes import box_iou

IOU_THRESHOLD = 0.5
PER_WORD_TYPES = ("stuff",)  # word types also reported per word


@dataclasses.dataclass
class PointingItem:
    """The grounded words of one (image, caption) pair.

    word_attention: (n_words, n_regions), row w = word w's weights over regions (only the words listed here);
    region_boxes: (n_regions, 4); word_types: one type name per word; gt_boxes: per word an (g, 4) array;
    words: the words themselves (optional; needed for the per-word report of ``PER_WORD_TYPES``).
    """

    word_attention: np.ndarray
    region_boxes: np.ndarray
    word_types: list[str]
    gt_boxes: list[np.ndarray]
    words: list[str] | None = None


@dataclasses.dataclass(frozen=True)
class WordPointing:
    """Pointing on one word (of a type in ``PER_WORD_TYPES``): accuracy and baselines in percent, its count."""

    accuracy: float
    count: int
    random: float
    largest: float

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "count": self.count, "random": self.random, "largest": self.largest}


@dataclasses.dataclass(frozen=True)
class PointingResult:
    """Pointing accuracy in percent: ``accuracy`` over every grounded word (NaN with none), ``per_type`` per word
    type, ``counts`` the words of each type; the baselines ``random`` and ``largest`` per type plus ``"overall"``;
    ``per_word`` {type: {word: WordPointing}} for the types of ``PER_WORD_TYPES`` when items carry their words."""

    accuracy: float
    per_type: Mapping[str, float]
    counts: Mapping[str, int]
    random: Mapping[str, float]
    largest: Mapping[str, float]
    per_word: Mapping[str, Mapping[str, WordPointing]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the pointing part of ``scan-viz eval --json``): ``{"pointing_accuracy", "pointing",
        "counts", "baselines": {"random", "largest"}}`` and ``"{type}_words"`` per reported word type."""
        out: dict[str, Any] = {"pointing_accuracy": self.accuracy, "pointing": dict(self.per_type),
                               "counts": dict(self.counts),
                               "baselines": {"random": dict(self.random), "largest": dict(self.largest)}}
        for word_type, words in self.per_word.items():
            out[f"{word_type}_words"] = {word: row.to_dict() for word, row in words.items()}
        return out


def evaluate_pointing(items: Iterable[PointingItem], threshold: float = IOU_THRESHOLD) -> PointingResult:
    """Pointing accuracy overall and per word type, with the random- and largest-region baselines."""
    hits: dict[str, list[float]] = defaultdict(list)
    rand: dict[str, list[float]] = defaultdict(list)
    large: dict[str, list[float]] = defaultdict(list)
    per_word: dict[str, dict[str, list[tuple[float, float, float]]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        regions = np.asarray(item.region_boxes, dtype=np.float64)
        areas = np.clip(regions[:, 2:] - regions[:, :2], 0, None).prod(axis=1)
        largest = int(np.argmax(areas))
        top = np.asarray(item.word_attention).argmax(axis=1)
        gts = [np.asarray(gt, dtype=np.float64).reshape(-1, 4) for gt in item.gt_boxes]
        if not gts:
            continue
        # one IoU call per item, split per word afterwards: torchvision's box_iou costs about 0.3 ms a call
        ious = np.split(box_iou(regions, np.concatenate(gts)), np.cumsum([len(gt) for gt in gts])[:-1], axis=1)
        for w, (word_type, gt, iou) in enumerate(zip(item.word_types, gts, ious)):
            if len(gt) == 0:
                continue
            region_hits = (iou >= threshold).any(axis=1)  # (n_regions,)
            hits[word_type].append(float(region_hits[top[w]]))
            rand[word_type].append(float(region_hits.mean()))
            large[word_type].append(float(region_hits[largest]))
            if word_type in PER_WORD_TYPES and item.words is not None:
                per_word[word_type][item.words[w]].append((hits[word_type][-1], rand[word_type][-1],
                                                           large[word_type][-1]))

    def summary(values: dict[str, list[float]]) -> dict[str, float]:
        every = [v for vs in values.values() for v in vs]
        out = {t: 100.0 * float(np.mean(v)) for t, v in sorted(values.items())}
        out["overall"] = 100.0 * float(np.mean(every)) if every else float("nan")
        return out

    ours = summary(hits)
    per_word_rows = {
        word_type: {word: WordPointing(100.0 * float(np.mean([v[0] for v in values])), len(values),
                                       100.0 * float(np.mean([v[1] for v in values])),
                                       100.0 * float(np.mean([v[2] for v in values])))
                    for word, values in sorted(words.items())}
        for word_type, words in sorted(per_word.items())}
    return PointingResult(ours.pop("overall"), ours, {t: len(v) for t, v in sorted(hits.items())}, summary(rand),
                          summary(large), per_word_rows)
