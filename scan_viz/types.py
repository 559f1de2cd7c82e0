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
    """Everything about one (image, sentence) pair that the app draws, exports or evaluates, whatever the head.

    words: the model's words in order, ``<start>`` and ``<end>`` included (they take part in the heads' scores);
    spans: each word's (start, end) characters in ``text`` (None for the specials); unknown: True where the
    vocabulary lacked the word and ``<unk>`` was used.
    attention: (n_words, n_regions) for every head; what an entry means is ``attention_label`` (SCAN t2i: each
    word's distribution over regions; SCAN i2t: each region's distribution over words, so its columns sum to 1;
    CHAN: one-hot, each word's best region). word_relevance (n_words,) / region_relevance (n_regions,): what the
    head scores per item (SCAN's R, CHAN's best-region cosine, CAAN's weights), named by the labels; None where
    the head has none. score: the pair's score under the head ``head`` (settings in ``head_params``).
    """

    text: str
    words: list[str]
    spans: list[tuple[int, int] | None]
    unknown: list[bool]
    attention: np.ndarray
    score: float
    head: str
    word_relevance: np.ndarray | None = None
    region_relevance: np.ndarray | None = None
    attention_label: str = "attention weight"
    word_relevance_label: str = ""
    region_relevance_label: str = ""
    head_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    boxes: np.ndarray | None = None
    region_labels: list[str] | None = None
    image_size: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        """The alignment.json schema shared by ``scan-viz explain`` and the app's download."""
        def listed(array: np.ndarray | None) -> list | None:
            return None if array is None else np.asarray(array, dtype=float).tolist()

        return {
            "text": self.text,
            "tokens": [{"text": w, "start": s[0] if s else None, "end": s[1] if s else None, "unknown": u}
                       for w, s, u in zip(self.words, self.spans, self.unknown)],
            "boxes": None if self.boxes is None else np.asarray(self.boxes, dtype=float).round(2).tolist(),
            "region_labels": self.region_labels,
            "attention": listed(self.attention),
            "attention_label": self.attention_label,
            "word_relevance": listed(self.word_relevance),
            "word_relevance_label": self.word_relevance_label,
            "region_relevance": listed(self.region_relevance),
            "region_relevance_label": self.region_relevance_label,
            "score": float(self.score),
            "head": self.head,
            "head_params": dict(self.head_params),
            "image_size": list(self.image_size) if self.image_size else None,
        }
