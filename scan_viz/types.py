"""Plain data passed between the steps: detector -> Regions -> model -> Alignment -> renderer."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class Regions:
    """One image's regions, what a detector returns and SCAN consumes.

    features: (n_regions, img_dim) float32; boxes: (n_regions, 4) x1, y1, x2, y2 pixels or None (the
    official precomputed features carry none); labels: optional class name per region;
    image_size: (width, height) or None.
    """

    features: np.ndarray
    boxes: np.ndarray | None = None
    labels: list[str] | None = None
    image_size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclasses.dataclass
class Alignment:
    """Everything about one (image, sentence) pair that the app draws, exports or evaluates.

    words: the model's words in order, ``<start>`` and ``<end>`` included (they take part in SCAN's
    attention); spans: each word's (start, end) characters in ``text`` (None for the specials);
    unknown: True where the vocabulary lacked the word and ``<unk>`` was used.
    attention: for t2i (n_words, n_regions), each word's distribution over regions; for i2t
    (n_regions, n_words), each region's distribution over words. relevance: per word (t2i) or per
    region (i2t), R = cos(query item, its attended vector). score: the aggregated pair score.
    """

    text: str
    words: list[str]
    spans: list[tuple[int, int] | None]
    unknown: list[bool]
    attention: np.ndarray
    relevance: np.ndarray
    score: float
    head: str
    direction: str
    boxes: np.ndarray | None = None
    region_labels: list[str] | None = None
    image_size: tuple[int, int] | None = None

    def word_attention(self) -> np.ndarray:
        """(n_words, n_regions) whatever the direction (i2t's matrix transposed)."""
        return self.attention if self.direction == "t2i" else self.attention.T

    def to_json(self) -> dict[str, Any]:
        """The alignment.json schema shared by ``scan-viz explain`` and the app's download."""
        return {
            "text": self.text,
            "tokens": [{"text": w, "start": s[0] if s else None, "end": s[1] if s else None, "unknown": u}
                       for w, s, u in zip(self.words, self.spans, self.unknown)],
            "boxes": None if self.boxes is None else np.asarray(self.boxes, dtype=float).round(2).tolist(),
            "region_labels": self.region_labels,
            "attention": np.asarray(self.attention, dtype=float).tolist(),
            "relevance": np.asarray(self.relevance, dtype=float).tolist(),
            "score": float(self.score),
            "head": self.head,
            "direction": self.direction,
            "image_size": list(self.image_size) if self.image_size else None,
        }
