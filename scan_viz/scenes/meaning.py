"""What caption words mean in a scene: the one set of predicates behind "two", "big", "left", "above", "near".

The caption grammar (:mod:`scan_viz.scenes.captions`) asks these predicates which words are true before it
writes them; the truth check (:mod:`scan_viz.evaluation.truth`) asks the same predicates whether a caption written for one
scene is true of another. Keeping them in one place is what makes "true of an image" mean exactly what the
generator meant.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from scan_viz.errors import ScanVizError
from scan_viz.scenes.sprites import SpriteCategory, load_manifest
from scan_viz.scenes.types import SceneObject

Coords = tuple[float, float, float, float]

NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "big": ("big", "large", "huge")}
# The relation words of each relation, in the order the grammar picks from them.
RELATION_WORDS = {"left": ("left",), "right": ("right",), "above": ("above", "over"),
                  "below": ("below", "under", "beneath"), "near": ("next", "near", "beside")}
HORIZONTAL, VERTICAL = ("left", "right"), ("top", "bottom")
# A group sits in the left/right third or top/bottom third when all its box centres do.
POSITION_THIRD = 1.0 / 3.0
RELATION_MARGIN = 0.12  # fraction of the image the centres must be apart for left of / above
NEAR_GAP = 0.06  # "near": every box is at most this far (fraction of the width) from a box of the other side


@dataclasses.dataclass(frozen=True)
class Group:
    """The objects of one group as captions see them; ``boxes`` are indices into the scene's objects."""

    category: SpriteCategory
    colour: str | None
    size: str | None
    boxes: tuple[int, ...]
    coords: tuple[Coords, ...]
    stuff: int

    @property
    def plural(self) -> bool:
        """Whether the group is more than one object."""
        return len(self.boxes) > 1


def scene_objects(objects: Sequence[SceneObject | Mapping[str, Any]]) -> list[SceneObject]:
    """Scene objects from ``SceneObject`` values or their JSON records (``{"category", "box", "kind", ...}``)."""
    out = []
    for obj in objects:
        if isinstance(obj, SceneObject):
            out.append(obj)
            continue
        try:
            out.append(SceneObject(str(obj["category"]), tuple(float(v) for v in obj["box"]),
                                   str(obj.get("kind", "object")), obj.get("colour"), obj.get("size"),
                                   obj.get("group"), obj.get("stuff")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ScanVizError(f"a scene object record is malformed ({exc!r}); objects need category, box "
                               "and kind as the scene generator writes them") from None
    return out


def scene_groups(objects: Sequence[SceneObject]) -> list[Group]:
    """The object groups of a scene, in group order."""
    manifest = load_manifest()
    members: dict[int, list[int]] = {}
    for i, obj in enumerate(objects):
        if obj.kind == "object" and obj.group is not None:
            members.setdefault(obj.group, []).append(i)
    groups = []
    for _, idx in sorted(members.items()):
        first = objects[idx[0]]
        if first.category not in manifest or first.stuff is None:
            raise ScanVizError(f"object {idx[0]} ({first.category!r}) is not a generated-world object (unknown "
                               "category or no stuff region); the truth check only knows the generated world")
        groups.append(Group(manifest[first.category], first.colour, first.size, tuple(idx),
                            tuple(objects[i].box for i in idx), first.stuff))
    return groups


def position_of(group: Group, width: float, height: float) -> tuple[str | None, str | None]:
    """(``left``/``right``/None, ``top``/``bottom``/None) from where all the group's box centres lie."""
    xs = [(b[0] + b[2]) / 2 for b in group.coords]
    ys = [(b[1] + b[3]) / 2 for b in group.coords]
    horizontal = ("left" if max(xs) < width * POSITION_THIRD
                  else "right" if min(xs) > width * (1 - POSITION_THIRD) else None)
    vertical = ("top" if max(ys) < height * POSITION_THIRD
                else "bottom" if min(ys) > height * (1 - POSITION_THIRD) else None)
    return horizontal, vertical


def _gap(a: Coords, b: Coords) -> float:
    """Euclidean distance between two boxes (0 when they touch or overlap)."""
    dx = max(b[0] - a[2], a[0] - b[2], 0.0)
    dy = max(b[1] - a[3], a[1] - b[3], 0.0)
    return float(np.hypot(dx, dy))


def relations(a: Sequence[Coords], b: Sequence[Coords], width: float, height: float) -> list[str]:
    """Which of ``left``, ``right``, ``above``, ``below``, ``near`` hold for boxes ``a`` relative to boxes ``b``.

    Left/right and above/below need every centre of ``a`` to be clearly past every centre of ``b``;
    above/below also need ``a``'s boxes to end (nearly) before ``b``'s begin and the two sides to share
    columns (every box of each side overlaps the other side's horizontal extent: a kite far off to the side
    is not "over" the dog). Near needs every box of either side
    to be close to some box of the other.
    """
    ax = [(x[0] + x[2]) / 2 for x in a]
    bx = [(x[0] + x[2]) / 2 for x in b]
    ay = [(x[1] + x[3]) / 2 for x in a]
    by = [(x[1] + x[3]) / 2 for x in b]
    dx, dy, slack = RELATION_MARGIN * width, RELATION_MARGIN * height, 0.03 * height
    a_cols = (min(x[0] for x in a), max(x[2] for x in a))
    b_cols = (min(x[0] for x in b), max(x[2] for x in b))
    shared_columns = (all(x[0] < b_cols[1] and x[2] > b_cols[0] for x in a)
                      and all(x[0] < a_cols[1] and x[2] > a_cols[0] for x in b))
    out = []
    if max(ax) < min(bx) - dx:
        out.append("left")
    if min(ax) > max(bx) + dx:
        out.append("right")
    if shared_columns and max(ay) < min(by) - dy and max(x[3] for x in a) <= min(x[1] for x in b) + slack:
        out.append("above")
    if shared_columns and min(ay) > max(by) + dy and min(x[1] for x in a) >= max(x[3] for x in b) - slack:
        out.append("below")
    near = NEAR_GAP * width
    if all(min(_gap(p, q) for q in b) <= near for p in a) and all(min(_gap(q, p) for p in a) <= near for q in b):
        out.append("near")
    return out


def stuff_below(group: Group, objects: Sequence[SceneObject]) -> list[int]:
    """Ground or water regions that a sky group is above (it overlaps them horizontally by half its width)."""
    if group.category.place != "sky":
        return []
    x1 = min(b[0] for b in group.coords)
    x2 = max(b[2] for b in group.coords)
    bottom = max(b[3] for b in group.coords)
    out = []
    for i, obj in enumerate(objects):
        if obj.kind == "stuff" and obj.category != "sky" and obj.box[1] >= bottom:
            if min(x2, obj.box[2]) - max(x1, obj.box[0]) >= 0.5 * (x2 - x1):
                out.append(i)
    return out


def stuff_of(group: Group, objects: Sequence[SceneObject]) -> str:
    """The stuff category the group stands on, floats on or flies in (``grass``, ``water``, ``sky``, ...)."""
    return objects[group.stuff].category


def size_class(word: str) -> str | None:
    """``big`` for "big"/"large"/"huge", ``small`` for "small"/"little"/"tiny", else None."""
    return next((size for size, words in SIZE_WORDS.items() if word in words), None)


def relation_of(word: str) -> str | None:
    """The relation a relation word names (``over`` -> ``above``, ``beside`` -> ``near``), or None."""
    return next((rel for rel, words in RELATION_WORDS.items() if word in words), None)
