"""The truth check: is a generated caption true of an image of the generated world, and if not, why not?

A caption's claims (:mod:`scan_viz.scenes.claims`: groups with category, exact count, colour, size, position,
stuff; relations between groups) are checked against an image's ``objects`` (as in gallery.json) with the
predicates the scene generator used to write the caption (:mod:`scan_viz.scenes.meaning`), so "left",
"above", "two", "big", "near" and "on the grass" mean here exactly what they meant when the caption was
written. A caption is true of its own image and often of others: the captions of this world are short.

Command line: ``python -m scan_viz.gallery.annotate annotate --gallery DIR`` (or ``--annotations FILE``) adds the claims
to an existing gallery.json (or a world's ``{split}_annotations.json``) in place, derived from the word links.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from scan_viz.errors import ScanVizError
from scan_viz.scenes.claims import claims_for
from scan_viz.scenes.meaning import (NUMBER_WORDS, Group, position_of, relations, scene_groups, scene_objects,
                                     stuff_below, stuff_of)
from scan_viz.scenes.sprites import load_manifest
from scan_viz.scenes.stuff import STUFF
from scan_viz.scenes.types import SceneObject

#: What a failed claim is about, in the order reasons are listed and mistakes reported.
ATTRIBUTES = ("count", "category", "colour", "size", "position", "relation", "stuff")
RELATION_PHRASES = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below",
                    "near": "near"}
Claims = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Failure:
    """One claim that does not hold: its attribute (one of ``ATTRIBUTES``) and a readable reason."""

    attribute: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a caption is true of an image; ``failures`` lists every claim that is not."""

    failures: tuple[Failure, ...] = ()

    @property
    def holds(self) -> bool:
        return not self.failures

    @property
    def attributes(self) -> tuple[str, ...]:
        """The attributes that fail, each once, in ``ATTRIBUTES`` order."""
        failed = {f.attribute for f in self.failures}
        return tuple(a for a in ATTRIBUTES if a in failed)

    @property
    def reasons(self) -> list[str]:
        """``["count: caption says two birds, image has three", ...]``."""
        return [f.reason for f in self.failures]


class SceneFacts:
    """An image's groups by category, with its size, as the truth check reads them.

    ``objects``: the image record's objects (``SceneObject``s or their JSON). ``size`` is ``(width, height)``;
    without it, the extent of the stuff regions (which tile a generated image).
    """

    def __init__(self, objects: Sequence[SceneObject | Mapping[str, Any]],
                 size: tuple[float, float] | None = None) -> None:
        self.objects = scene_objects(objects)
        self.groups: dict[str, Group] = {g.category.name: g for g in scene_groups(self.objects)}
        if size is None:
            boxes = [o.box for o in self.objects if o.kind == "stuff"] or [o.box for o in self.objects]
            if not boxes:
                raise ScanVizError("the image has no objects, so no caption claim can be checked against it")
            size = (max(b[2] for b in boxes), max(b[3] for b in boxes))
        self.width, self.height = float(size[0]), float(size[1])
        self._positions: dict[str, tuple[str | None, str | None]] = {}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SceneFacts:
        """From a gallery or annotation image record (``objects``, and ``width``/``height`` when present)."""
        size = (record["width"], record["height"]) if "width" in record and "height" in record else None
        return cls(record.get("objects") or [], size)

    def position(self, category: str) -> tuple[str | None, str | None]:
        """(``left``/``right``/None, ``top``/``bottom``/None) of the category's group."""
        if category not in self._positions:
            self._positions[category] = position_of(self.groups[category], self.width, self.height)
        return self._positions[category]


def as_scene(scene: SceneFacts | Mapping[str, Any] | Sequence[SceneObject | Mapping[str, Any]]) -> SceneFacts:
    """A ``SceneFacts`` from itself, an image record (``{"objects", "width", "height"}``) or an objects list."""
    if isinstance(scene, SceneFacts):
        return scene
    if isinstance(scene, Mapping):
        return SceneFacts.from_record(scene)
    return SceneFacts(scene)


def _words(category: str) -> tuple[str, str]:
    manifest = load_manifest()
    return manifest[category].words[0] if category in manifest else (category, category)


def _noun(category: str, count: int) -> str:
    singular, plural = _words(category)
    return singular if count == 1 else plural


def _number(count: int) -> str:
    return NUMBER_WORDS.get(count, str(count))


def _where(horizontal: str | None, vertical: str | None, claim: Mapping[str, Any]) -> str:
    """Where a group is, on the axes ``claim`` speaks about."""
    parts = []
    if "horizontal" in claim:
        parts.append(f"on the {horizontal}" if horizontal else "centred left to right")
    if "vertical" in claim:
        parts.append(f"at the {vertical}" if vertical else "centred top to bottom")
    return " and ".join(parts)


def _on(stuff: str) -> str:
    """``on the grass``, ``in the sky``: the stuff's first caption phrase."""
    preposition = STUFF[stuff].phrases[0][0] if stuff in STUFF else "on"
    return f"{preposition} the {stuff}"


def _group_failures(claim: Mapping[str, Any], group: Group, scene: SceneFacts) -> Iterator[Failure]:
    category, count = claim["category"], int(claim["count"])
    noun = _noun(category, count)
    verb = "is" if count == 1 else "are"
    if len(group.boxes) != count:
        yield Failure("count", f"count: caption says {_number(count)} {noun}, image has {_number(len(group.boxes))}")
    if "colour" in claim and group.colour != claim["colour"]:
        yield Failure("colour", f"colour: caption says {claim['colour']} {noun}, image has "
                                f"{group.colour or 'uncoloured'} {_noun(category, len(group.boxes))}")
    if "size" in claim and group.size != claim["size"]:
        yield Failure("size", f"size: caption says {claim['size']} {noun}, image has "
                              f"{group.size} {_noun(category, len(group.boxes))}")
    if "horizontal" in claim or "vertical" in claim:
        horizontal, vertical = scene.position(category)
        if claim.get("horizontal", horizontal) != horizontal or claim.get("vertical", vertical) != vertical:
            yield Failure("position", f"position: caption says the {noun} {verb} "
                                      f"{_where(claim.get('horizontal'), claim.get('vertical'), claim)}, image has "
                                      f"{'it' if count == 1 else 'them'} {_where(horizontal, vertical, claim)}")
    if "stuff" in claim:
        actual = stuff_of(group, scene.objects)
        if actual != claim["stuff"]:
            yield Failure("stuff", f"stuff: caption says the {noun} {verb} {_on(claim['stuff'])}, image has "
                                   f"{'it' if count == 1 else 'them'} {_on(actual)}")
    if "above" in claim:
        below = [scene.objects[i].category for i in stuff_below(group, scene.objects)]
        if claim["above"] not in below:
            yield Failure("stuff", f"stuff: caption says the {noun} {verb} above the {claim['above']}, image has "
                                   f"{'it' if count == 1 else 'them'} above "
                                   f"{' and '.join(f'the {c}' for c in below) or 'no ground or water'}")


def _failures(claims: Claims, scene: SceneFacts) -> Iterator[Failure]:
    """Every failed claim of ``claims`` in ``scene``, lazily (so a yes/no check stops at the first)."""
    groups = claims["groups"]
    found = [scene.groups.get(g["category"]) for g in groups]
    for claim, group in zip(groups, found):
        if group is None:
            count = int(claim["count"])
            yield Failure("category", f"category: caption says {_number(count)} {_noun(claim['category'], count)}, "
                                      f"image has no {_words(claim['category'])[1]}")
        else:
            yield from _group_failures(claim, group, scene)
    for rel in claims.get("relations", ()):
        sides = [*rel["subject"], rel["object"]]
        if any(found[i] is None for i in sides):
            continue  # a missing group already failed on its category
        subject = [c for i in rel["subject"] for c in found[i].coords]
        actual = relations(subject, found[rel["object"]].coords, scene.width, scene.height)
        if rel["relation"] not in actual:
            names = " and ".join(f"the {_noun(groups[i]['category'], int(groups[i]['count']))}"
                                 for i in rel["subject"])
            plural = len(rel["subject"]) > 1 or int(groups[rel["subject"][0]]["count"]) > 1
            target = groups[rel["object"]]
            yield Failure("relation", f"relation: caption says {names} {'are' if plural else 'is'} "
                                      f"{RELATION_PHRASES[rel['relation']]} the "
                                      f"{_noun(target['category'], int(target['count']))}, image has "
                                      f"{'them' if plural else 'it'} "
                                      f"{', '.join(RELATION_PHRASES[r] for r in actual) or 'none of left of, right of, above, below, near'}"
                                      f"{' it' if actual else ''}")


def _checked(claims: Claims) -> Claims:
    """``claims`` if it has the shape :func:`scan_viz.scenes.claims.claims_for` writes, else a ScanVizError."""
    try:
        groups = claims["groups"]
        ok = all(isinstance(g["category"], str) and int(g["count"]) >= 0 for g in groups)
        n = len(groups)
        ok = ok and all(rel["relation"] in RELATION_PHRASES and 0 <= int(rel["object"]) < n
                        and all(0 <= int(i) < n for i in rel["subject"]) and rel["subject"]
                        for rel in claims.get("relations", ()))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ScanVizError("a caption's claims are malformed; re-add them with "
                           "`python -m scan_viz.gallery.annotate annotate --gallery DIR`")
    return claims


def caption_holds(claims: Claims, scene: SceneFacts | Mapping[str, Any] | Sequence[Any]) -> Verdict:
    """Whether every claim of a caption holds in ``scene`` (a ``SceneFacts``, an image record or its objects).

    Returns a :class:`Verdict` listing every failed claim with a readable reason.
    """
    return Verdict(tuple(_failures(_checked(claims), as_scene(scene))))


def holds(claims: Claims, scene: SceneFacts | Mapping[str, Any] | Sequence[Any]) -> bool:
    """``caption_holds(claims, scene).holds``, stopping at the first failed claim."""
    return next(_failures(_checked(claims), as_scene(scene)), None) is None


def truth_matrix(claims: Sequence[Claims], scenes: Sequence[SceneFacts | Mapping[str, Any]]) -> np.ndarray:
    """``(n_captions, n_images)`` bool: whether caption ``k``'s claims hold for image ``i``.

    Only images holding every category a caption names are checked (a caption names one or two of about 60
    categories), which keeps 5,000 x 1,000 pairs to a few seconds.
    """
    facts = [as_scene(s) for s in scenes]
    with_category: dict[str, set[int]] = {}
    for i, scene in enumerate(facts):
        for category in scene.groups:
            with_category.setdefault(category, set()).add(i)
    out = np.zeros((len(claims), len(facts)), dtype=bool)
    for k, claim in enumerate(claims):
        _checked(claim)
        categories = {g["category"] for g in claim["groups"]}
        candidates = (set.intersection(*(with_category.get(c, set()) for c in categories)) if categories
                      else range(len(facts)))
        for i in candidates:
            out[k, i] = next(_failures(claim, facts[i]), None) is None
    return out


def annotate_records(records: Sequence[dict[str, Any]]) -> int:
    """Add ``"claims"`` to every caption of every image record, derived from its word links; returns how many.

    Each caption must be true of its own image: anything else means the word links are not the generator's,
    and nothing is changed (ScanVizError naming the caption).
    """
    derived = []
    for record in records:
        scene = SceneFacts.from_record(record)
        for caption in record.get("captions", []):
            if not caption.get("words"):
                raise ScanVizError(f"caption {caption.get('text', '')!r} of {record.get('id')} has no word links; "
                                   "claims can only be derived for captions of the generated world")
            claims = claims_for(caption["words"], scene.objects)
            verdict = caption_holds(claims, scene)
            if not verdict.holds:
                raise ScanVizError(f"caption {caption['text']!r} is not true of its own image {record.get('id')} "
                                   f"({'; '.join(verdict.reasons)}): its word links are not the generator's")
            derived.append((caption, claims))
    for caption, claims in derived:
        caption["claims"] = claims
    return len(derived)
