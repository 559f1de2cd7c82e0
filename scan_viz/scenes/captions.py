"""Caption grammar: five captions per scene, every word linked to the boxes it refers to.

Captions are built from phrases (noun phrase, stuff phrase, position phrase, relation) by templates
registered by name. A noun phrase always refers to a whole group ("two red balloons" is every box of the
balloon group), so its count, size, colour and noun words all link to the group's boxes. Every caption
leaves at least one object group unmentioned, and with four or more groups one group is a distractor that
no caption mentions. Words are lowercase letters only, so whitespace splitting and NLTK's Treebank
tokenizer agree. Which words are true of a scene is decided by the predicates of
:mod:`scan_viz.scenes.meaning`, the ones the truth check uses; each caption carries its claims
(:func:`scan_viz.scenes.claims.claims_for`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence, TypeVar

import numpy as np

from scan_viz.scenes.claims import claims_for
from scan_viz.scenes.meaning import (NUMBER_WORDS, RELATION_WORDS, SIZE_WORDS, Group, position_of, relations,
                                     scene_groups, stuff_below)
from scan_viz.scenes.stuff import STUFF
from scan_viz.scenes.types import Caption, SceneObject, WordLink

T = TypeVar("T")
Words = list[WordLink]

CAPTIONS_PER_IMAGE = 5
VERBS: dict[tuple[str, str], tuple[str, ...]] = {
    ("animal", "ground"): ("standing", "sitting"),
    ("animal", "sky"): ("flying",),
    ("animal", "water"): ("swimming",),
    ("vehicle", "ground"): ("parked",),
    ("vehicle", "sky"): ("flying",),
    ("vehicle", "water"): ("floating", "sailing"),
    ("object", "sky"): ("flying", "floating"),
    ("plant", "ground"): ("growing",),
}


@dataclasses.dataclass
class Context:
    """What templates draw on: the mentionable groups, the scene's objects and the image size."""

    rng: np.random.Generator
    groups: list[Group]
    objects: list[SceneObject]
    width: int
    height: int

    def pick(self, items: Sequence[T]) -> T:
        """One element of ``items``."""
        return items[int(self.rng.integers(len(items)))]

    def chance(self, p: float) -> bool:
        """True with probability ``p``."""
        return bool(self.rng.random() < p)


Template = Callable[[Context], "Words | None"]
TEMPLATES: dict[str, tuple[float, Template]] = {}


def register_template(name: str, weight: float) -> Callable[[Template], Template]:
    """Decorator: register a caption template; it returns the caption's words, or None if it does not apply."""
    def wrap(fn: Template) -> Template:
        TEMPLATES[name] = (weight, fn)
        return fn
    return wrap


def function_words(*words: str) -> Words:
    """Words that refer to no box."""
    return [WordLink(w, "function") for w in words]


def article(next_word: str) -> str:
    """``an`` before a vowel, else ``a`` (good enough for this vocabulary)."""
    return "an" if next_word[0] in "aeiou" else "a"


def copula(group: Group) -> str:
    """``is`` or ``are``."""
    return "are" if group.plural else "is"


def noun_phrase(ctx: Context, group: Group) -> Words:
    """``a big red car``, ``two balloons``, ``a dog that is small``: count, size, colour and noun all link to the group."""
    boxes = group.boxes
    singular, plural = ctx.pick(group.category.words)
    noun = WordLink(plural if group.plural else singular, "object", boxes)
    attributes: Words = []
    if group.size in SIZE_WORDS and ctx.chance(0.5):
        attributes.append(WordLink(ctx.pick(SIZE_WORDS[group.size]), "size", boxes))
    if group.colour is not None and ctx.chance(0.75 if group.category.recolourable else 0.4):
        attributes.append(WordLink(group.colour, "colour", boxes))
    if attributes and ctx.chance(0.15):
        body = [noun] + function_words(ctx.pick(("that", "which")), copula(group)) + attributes[:1]
        if len(attributes) > 1:
            body += function_words("and") + attributes[1:]
    else:
        body = attributes + [noun]
    if group.plural or ctx.chance(0.1):
        return [WordLink(NUMBER_WORDS[len(boxes)], "count", boxes)] + body
    return function_words(article(body[0].word)) + body


def stuff_phrase(ctx: Context, groups: Sequence[Group]) -> Words:
    """``on the grass``, ``in the sky``, said of ``groups`` (which share their stuff region).

    The noun links to the stuff region's box; its ``subjects`` are the groups' boxes.
    """
    stuff = groups[0].stuff
    preposition, noun = ctx.pick(STUFF[ctx.objects[stuff].category].phrases)
    return said_of(function_words(preposition, "the") + [WordLink(noun, "stuff", (stuff,))], groups)


def said_of(words: Words, groups: Sequence[Group]) -> Words:
    """``words`` with their stuff word marked as said of ``groups`` (all of which stand in that stuff)."""
    assert all(g.stuff == w.boxes[0] for g in groups for w in words if w.type == "stuff")
    subjects = tuple(i for g in groups for i in g.boxes)
    return [dataclasses.replace(w, subjects=subjects) if w.type == "stuff" else w for w in words]


def verb(ctx: Context, group: Group) -> Words:
    """``standing``, ``flying``, ... for the group's kind and place, or nothing."""
    verbs = VERBS.get((group.category.group, group.category.place), ())
    return function_words(ctx.pick(verbs)) if verbs else []


def position_phrase(ctx: Context, group: Group) -> Words | None:
    """``on the left``, ``at the top of the image``, ``in the bottom right corner``; None if the group is central."""
    horizontal, vertical = position_of(group, ctx.width, ctx.height)
    if horizontal is None and vertical is None:
        return None
    if horizontal and vertical and ctx.chance(0.6):
        words = function_words("in", "the") + [WordLink(vertical, "position", group.boxes),
                                               WordLink(horizontal, "position", group.boxes)]
        return words + (function_words("corner") if ctx.chance(0.5) else [])
    if horizontal and (vertical is None or ctx.chance(0.5)):
        words = function_words("on", "the") + [WordLink(horizontal, "position", group.boxes)]
    else:
        words = function_words("at", "the") + [WordLink(str(vertical), "position", group.boxes)]
    if ctx.chance(0.3):
        words += function_words("of", "the", ctx.pick(("image", "picture", "photo")))
    return words


def relation_words(ctx: Context, relation: str, boxes: tuple[int, ...]) -> Words:
    """The words of one relation; the spatial word links to the boxes of both sides."""
    if relation in ("left", "right"):
        return function_words("to", "the") + [WordLink(relation, "relation", boxes)] + function_words("of")
    if relation in ("above", "below"):
        return [WordLink(ctx.pick(RELATION_WORDS[relation]), "relation", boxes)]
    choice = ctx.pick(RELATION_WORDS["near"])
    return [WordLink(choice, "relation", boxes)] + (function_words("to") if choice == "next" else [])


def related_pairs(ctx: Context) -> list[tuple[Group, Group, str]]:
    """Every (a, b, relation) that holds between two mentionable groups."""
    return [(a, b, rel) for a in ctx.groups for b in ctx.groups if a is not b
            for rel in relations(a.coords, b.coords, ctx.width, ctx.height)]


def there_be(group: Group) -> Words:
    """``there is`` / ``there are``."""
    return function_words("there", copula(group))


@register_template("describe", 3.0)
def describe(ctx: Context) -> Words | None:
    """``a big red car parked on the road``, ``two cats on the left``."""
    group = ctx.pick(ctx.groups)
    words = noun_phrase(ctx, group)
    where = position_phrase(ctx, group) if ctx.chance(0.3) else None
    if where is not None:
        return words + where
    return words + (verb(ctx, group) if ctx.chance(0.4) else []) + stuff_phrase(ctx, [group])


@register_template("relation", 3.0)
def relation(ctx: Context) -> Words | None:
    """``a red car to the left of a small dog on the grass``."""
    pairs = related_pairs(ctx)
    if not pairs:
        return None
    a, b, rel = ctx.pick(pairs)
    words = noun_phrase(ctx, a) + relation_words(ctx, rel, a.boxes + b.boxes) + noun_phrase(ctx, b)
    return words + (stuff_phrase(ctx, [b]) if ctx.chance(0.4) else [])


@register_template("relation_clause", 1.5)
def relation_clause(ctx: Context) -> Words | None:
    """``the dog is next to a tree``, ``on the sand two ducks are below a kite``."""
    pairs = related_pairs(ctx)
    if not pairs:
        return None
    a, b, rel = ctx.pick(pairs)
    lead = stuff_phrase(ctx, [a]) if ctx.chance(0.3) else []
    return (lead + noun_phrase(ctx, a) + function_words(copula(a))
            + relation_words(ctx, rel, a.boxes + b.boxes) + noun_phrase(ctx, b))


@register_template("there_is", 2.0)
def there_is(ctx: Context) -> Words | None:
    """``there is a cat and a big brown bear in the snow``."""
    if len(ctx.groups) < 2:
        return None
    a, b = (ctx.groups[i] for i in ctx.rng.choice(len(ctx.groups), size=2, replace=False))
    words = there_be(a) + noun_phrase(ctx, a) + function_words("and") + noun_phrase(ctx, b)
    if a.stuff == b.stuff and ctx.chance(0.7):
        words += stuff_phrase(ctx, [a, b])
    return words


@register_template("photo_of", 1.5)
def photo_of(ctx: Context) -> Words | None:
    """``a picture of a dog and two sheep on the grass``."""
    frame = ctx.pick(("photo", "picture", "image"))
    words = function_words(article(frame), frame, "of")
    a = ctx.pick(ctx.groups)
    others = [g for g in ctx.groups if g is not a]
    if others and ctx.chance(0.6):
        b = ctx.pick(others)
        words += noun_phrase(ctx, a) + function_words("and") + noun_phrase(ctx, b)
        return words + (stuff_phrase(ctx, [a, b]) if a.stuff == b.stuff and ctx.chance(0.6) else [])
    return words + noun_phrase(ctx, a) + (stuff_phrase(ctx, [a]) if ctx.chance(0.6) else [])


@register_template("stuff_first", 1.5)
def stuff_first(ctx: Context) -> Words | None:
    """``on the beach there are two dogs and a ball``, ``in the sky a kite is flying``."""
    a = ctx.pick(ctx.groups)
    lead = stuff_phrase(ctx, [a])
    action = verb(ctx, a)
    if action and ctx.chance(0.4):
        return lead + noun_phrase(ctx, a) + function_words(copula(a)) + action
    same = [g for g in ctx.groups if g is not a and g.stuff == a.stuff]
    words = there_be(a) + noun_phrase(ctx, a)
    if same and ctx.chance(0.5):
        b = ctx.pick(same)
        return said_of(lead, [a, b]) + words + function_words("and") + noun_phrase(ctx, b)
    return lead + words


@register_template("position", 1.5)
def position(ctx: Context) -> Words | None:
    """``on the left there is a brown horse``, ``two yellow balloons are at the top``."""
    placed = [(g, p) for g in ctx.groups if (p := position_phrase(ctx, g)) is not None]
    if not placed:
        return None
    group, where = ctx.pick(placed)
    if ctx.chance(0.5):
        return where + there_be(group) + noun_phrase(ctx, group)
    return noun_phrase(ctx, group) + function_words(copula(group)) + where


@register_template("above_stuff", 1.5)
def above_stuff(ctx: Context) -> Words | None:
    """``two yellow balloons above the water``, ``a plane flying over the beach``."""
    options = [(g, s) for g in ctx.groups for s in stuff_below(g, ctx.objects)]
    if not options:
        return None
    group, stuff = ctx.pick(options)
    noun = ctx.pick(STUFF[ctx.objects[stuff].category].nouns)
    words = noun_phrase(ctx, group) + (verb(ctx, group) if ctx.chance(0.4) else [])
    return (words + [WordLink(ctx.pick(RELATION_WORDS["above"]), "relation", group.boxes + (stuff,))]
            + function_words("the") + [WordLink(noun, "stuff", (stuff,))])


@register_template("pair_relation", 1.0)
def pair_relation(ctx: Context) -> Words | None:
    """``a dog and a cat to the left of a tree``: the relation holds for both groups together."""
    if len(ctx.groups) < 3:
        return None
    a, b, c = (ctx.groups[i] for i in ctx.rng.choice(len(ctx.groups), size=3, replace=False))
    found = relations(a.coords + b.coords, c.coords, ctx.width, ctx.height)
    found = [r for r in found if r != "near"]
    if not found:
        return None
    return (noun_phrase(ctx, a) + function_words("and") + noun_phrase(ctx, b)
            + relation_words(ctx, ctx.pick(found), a.boxes + b.boxes + c.boxes) + noun_phrase(ctx, c))


def make_captions(rng: np.random.Generator, objects: list[SceneObject], width: int, height: int,
                  n: int = CAPTIONS_PER_IMAGE) -> list[Caption]:
    """``n`` captions for a scene, each mentioning some but never all of its object groups.

    The scene needs at least two groups. Captions are distinct unless the grammar runs out of variants.
    """
    groups = scene_groups(objects)
    mentionable = list(groups)
    if len(groups) >= 4:  # a distractor: attention to it should stay low whatever the caption says
        mentionable.pop(int(rng.integers(len(groups))))
    ctx = Context(rng, mentionable, objects, width, height)
    names = list(TEMPLATES)
    weights = np.asarray([TEMPLATES[k][0] for k in names])
    captions: list[Caption] = []
    seen: set[str] = set()
    for attempt in range(200):
        if len(captions) == n:
            break
        words = TEMPLATES[names[int(rng.choice(len(names), p=weights / weights.sum()))]][1](ctx)
        if words is None:
            continue
        mentioned = {objects[i].group for w in words if w.type == "object" for i in w.boxes}
        if len(groups) > 1 and len(mentioned) >= len(groups):
            continue
        caption = Caption.from_words(words)
        if caption.text in seen and attempt < 150:
            continue
        seen.add(caption.text)
        captions.append(dataclasses.replace(caption, claims=claims_for(words, objects)))
    distinct = len(captions)
    while len(captions) < n:  # a scene with few, plain groups can run out of distinct captions
        captions.append(captions[len(captions) % distinct])
    return captions
