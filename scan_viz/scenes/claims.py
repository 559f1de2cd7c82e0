"""What a generated caption claims about a scene, as plain JSON, derived from its word links.

A caption's claims (stored per caption as ``"claims"`` in the world's annotations and in gallery.json)::

    {"groups": [{"category": "bird", "count": 2,            # always: the noun's category, its exact number
                 "colour": "blue", "size": "big",           # when the caption says them ("big" / "small")
                 "horizontal": "left", "vertical": "top",   # "on the left", "at the top", "in the top left corner"
                 "stuff": "grass",                          # "on the grass": the stuff it stands on, floats on, flies in
                 "above": "water"}],                        # "above the water": a stuff region it is above
     "relations": [{"subject": [0, 1], "relation": "left", "object": 2}]}   # indices into "groups"

A group is named by its category: a category appears in at most one group per scene, so a caption's "two dogs"
is the scene's dog group or nothing. ``relation`` is one of left, right, above, below, near (for the groups of
``subject`` together, as "a dog and a cat to the left of a tree" says).

Every claim except one is spelled out by the word links themselves: the noun links to every box of its group
(so its count), colour, size and position words link to that group, a relation word links to the boxes of its
subject groups and then of its object. The exception is which groups "on the grass" is said of; the grammar
marks it on the stuff word (``WordLink.subjects``), and for word links read back from JSON it follows from the
phrase order every template uses: with a relation between groups, the stuff phrase belongs to the noun phrase
next to it (the last one before it, or the first when it leads the caption); without one, to every group
named. Since claims depend on the words alone, the same caption text always has the same claims.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from scan_viz.errors import ScanVizError
from scan_viz.scenes.meaning import HORIZONTAL, NUMBER_WORDS, relation_of, scene_objects, size_class
from scan_viz.scenes.types import SceneObject, WordLink

GROUP_KEYS = ("category", "count", "colour", "size", "horizontal", "vertical", "stuff", "above")


def _link(word: WordLink | Mapping[str, Any]) -> WordLink:
    if isinstance(word, WordLink):
        return word
    try:
        return WordLink(str(word["word"]), str(word["type"]), tuple(int(b) for b in word.get("boxes", ())))
    except (KeyError, TypeError, ValueError) as exc:
        raise ScanVizError(f"a caption word record is malformed ({exc!r}); claims need the word links the scene "
                           "generator writes ({word, type, boxes})") from None


def _runs(boxes: Sequence[int], objects: Sequence[SceneObject]) -> list[tuple[int, ...]]:
    """``boxes`` cut where the group (or stuff region) changes: a relation word's sides, subject groups first."""
    def key(i: int) -> tuple[str, int | None]:
        return ("stuff", i) if objects[i].kind == "stuff" else ("group", objects[i].group)

    runs: list[list[int]] = []
    for i in boxes:
        if runs and key(runs[-1][-1]) == key(i):
            runs[-1].append(i)
        else:
            runs.append([i])
    return [tuple(r) for r in runs]


def claims_for(words: Sequence[WordLink | Mapping[str, Any]],
               objects: Sequence[SceneObject | Mapping[str, Any]]) -> dict[str, Any]:
    """The claims of a caption, from its word links (``WordLink``s or their JSON) and its scene's objects.

    Raises ScanVizError when the links are not the generator's (a box index out of range, a modifier of a
    group no noun names, an unknown size or relation word).
    """
    objs = scene_objects(objects)
    links = [_link(w) for w in words]
    if any(b < 0 or b >= len(objs) for w in links for b in w.boxes):
        raise ScanVizError("a caption word links to a box the scene does not have; claims need the scene's own "
                           "objects")
    groups: list[dict[str, Any]] = []
    index: dict[int, int] = {}  # scene group number -> position in groups
    nouns: list[tuple[int, int]] = []  # (word position, scene group) of every noun
    for t, w in enumerate(links):
        if w.type == "object" and w.boxes:
            group = objs[w.boxes[0]].group
            nouns.append((t, group))
            if group not in index:
                index[group] = len(groups)
                groups.append({"category": objs[w.boxes[0]].category, "count": len(w.boxes)})

    def group_of(box: int, word: str) -> int:
        """Position in ``groups`` of the group box ``box`` belongs to."""
        if objs[box].group not in index:
            raise ScanVizError(f"the word {word!r} links to a group that no noun of the caption names; claims "
                               "need the word links the scene generator writes")
        return index[objs[box].group]

    relations: list[dict[str, Any]] = []
    relation_objects: set[int] = set()  # stuff regions something is said to be above
    for w in links:
        if not w.boxes:
            continue
        if w.type == "colour":
            groups[group_of(w.boxes[0], w.word)]["colour"] = w.word
        elif w.type == "size":
            size = size_class(w.word)
            if size is None:
                raise ScanVizError(f"{w.word!r} is not a size word of the generated world")
            groups[group_of(w.boxes[0], w.word)]["size"] = size
        elif w.type == "count":
            if NUMBER_WORDS.get(len(w.boxes)) != w.word:
                raise ScanVizError(f"the count word {w.word!r} links to {len(w.boxes)} boxes")
        elif w.type == "position":
            groups[group_of(w.boxes[0], w.word)]["horizontal" if w.word in HORIZONTAL else "vertical"] = w.word
        elif w.type == "relation":
            *subjects, target = _runs(w.boxes, objs)
            if not subjects:
                raise ScanVizError(f"the relation word {w.word!r} links to one side only")
            if objs[target[0]].kind == "stuff":
                for run in subjects:
                    groups[group_of(run[0], w.word)]["above"] = objs[target[0]].category
                relation_objects.add(target[0])
                continue
            relation = relation_of(w.word)
            if relation is None:
                raise ScanVizError(f"{w.word!r} is not a relation word of the generated world")
            relations.append({"subject": [group_of(run[0], w.word) for run in subjects], "relation": relation,
                              "object": group_of(target[0], w.word)})
    for t, w in enumerate(links):
        if w.type != "stuff" or not w.boxes or w.boxes[0] in relation_objects:
            continue
        if w.subjects:  # the grammar said which groups
            holders = {group_of(i, w.word) for i in w.subjects}
        elif not relations:
            holders = set(range(len(groups)))
        else:
            before = [group for position, group in nouns if position < t]
            holders = {index[before[-1] if before else nouns[0][1]]} if nouns else set()
        for g in holders:
            groups[g]["stuff"] = objs[w.boxes[0]].category
    return {"groups": [{k: g[k] for k in GROUP_KEYS if k in g} for g in groups], "relations": relations}
