"""Plain data types of the synthetic world: a scene's objects, its captions and each word's referents.

Everything the writer exports and everything a later attention check compares against comes from these.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

# What a caption word is, for checking attention against the truth: ``object``, ``colour``, ``size``,
# ``count``, ``position`` and ``stuff`` words name boxes; ``relation`` words link both sides of the relation;
# ``function`` words ("a", "the", "on", "there", "is") link to no box.
WORD_TYPES = ("object", "colour", "size", "count", "position", "stuff", "relation", "function")
GROUNDED_TYPES = ("object", "colour", "size", "count", "stuff")
OBJECT_KINDS = ("object", "stuff")


@dataclasses.dataclass(frozen=True)
class WordLink:
    """One caption word as the tokenizer sees it, its role, and the indices of the scene boxes it refers to.

    ``subjects``, for the stuff word of a phrase like "on the grass": the boxes of the groups the phrase is
    said of, as the grammar meant it. Not exported: a caption's claims carry it (and can re-derive it, see
    :func:`scan_viz.scenes.claims.claims_for`).
    """

    word: str
    type: str
    boxes: tuple[int, ...] = ()
    subjects: tuple[int, ...] = dataclasses.field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict ``{"word", "type", "boxes"}``."""
        return {"word": self.word, "type": self.type, "boxes": list(self.boxes)}


@dataclasses.dataclass(frozen=True)
class Caption:
    """A caption: ``text`` is exactly ``" ".join(w.word for w in words)``; ``claims`` what it says of a scene.

    ``claims`` is the JSON-ready dict of :func:`scan_viz.scenes.claims.claims_for` (None until attached).
    """

    text: str
    words: tuple[WordLink, ...]
    claims: dict[str, Any] | None = dataclasses.field(default=None, compare=False)

    @classmethod
    def from_words(cls, words: list[WordLink] | tuple[WordLink, ...]) -> Caption:
        """Build a caption whose text is the words joined by single spaces."""
        return cls(" ".join(w.word for w in words), tuple(words))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict ``{"text", "words": [...], "claims": {...}}`` (no ``claims`` when there are none)."""
        out: dict[str, Any] = {"text": self.text, "words": [w.to_json() for w in self.words]}
        if self.claims is not None:
            out["claims"] = self.claims
        return out


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One box of a scene: a sprite object or a stuff region (sky, grass, water, ...).

    ``box`` is ``(x1, y1, x2, y2)`` in pixels, x2/y2 exclusive, always inside the image. An object's box is
    its whole sprite even where a later object covers part of it. ``group`` numbers the objects placed
    together (same category, colour and size: "two red balloons"); ``stuff`` is the index of the stuff
    region the object stands on, floats on or flies in. Both are None for stuff.
    """

    category: str
    box: tuple[float, float, float, float]
    kind: str = "object"
    colour: str | None = None
    size: str | None = None
    group: int | None = None
    stuff: int | None = None

    @property
    def centre(self) -> tuple[float, float]:
        """Box centre ``(cx, cy)`` in pixels."""
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; ``box`` as ``[x1, y1, x2, y2]``."""
        out = dataclasses.asdict(self)
        out["box"] = list(self.box)
        return out


@dataclasses.dataclass
class Scene:
    """A generated image with every box and every caption word's referents known.

    ``image`` is ``(height, width, 3)`` uint8 RGB. ``objects`` lists the stuff regions first (in drawing
    order), then the sprite objects; caption word links index into it.
    """

    seed: int
    image: np.ndarray
    objects: list[SceneObject]
    captions: list[Caption]

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.image.shape[0])

    def to_json(self, image_id: str, file_name: str) -> dict[str, Any]:
        """The annotation record the world writer stores for this scene."""
        return {
            "id": image_id,
            "file_name": file_name,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "objects": [o.to_json() for o in self.objects],
            "captions": [c.to_json() for c in self.captions],
        }
