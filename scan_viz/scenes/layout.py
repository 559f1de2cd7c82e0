"""Object placement: which categories appear, in what colour, size and number, and where.

Objects come in groups: one to three instances of one category sharing colour, size class and the stuff
region they stand in, so a caption can say "two small red balloons in the sky" and mean every box of the
group. A category appears in at most one group per scene, so a noun never refers to two groups.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageOps

from scan_viz.scenes.sprites import PALETTE, SpriteCategory, coloured_sprite, load_manifest, sprite_at_size
from scan_viz.scenes.stuff import STUFF, Box

# Longest sprite side as a fraction of min(width, height), per size class. The gaps between classes
# keep "small" and "big" unambiguous.
SIZE_FRACTIONS = {"small": (0.10, 0.15), "medium": (0.18, 0.23), "big": (0.28, 0.35)}
SIZE_CLASSES = ("small", "medium", "big")
SIZE_PROBS = (0.3, 0.4, 0.3)
COUNT_PROBS = (0.6, 0.27, 0.13)  # one, two, three instances
MAX_OVERLAP = 0.3  # largest intersection / smaller box area between two objects
MAX_OBJECTS = 12
MIN_GROUPS, MAX_GROUPS = 3, 6


@dataclasses.dataclass(frozen=True)
class PlacedObject:
    """One sprite instance: where it goes and what it looks like."""

    category: str
    colour: str | None
    size: str
    group: int
    region: int  # index into the stuff regions
    box: Box  # (x1, y1, x2, y2), x2/y2 exclusive
    flip: bool


def _pick(rng: np.random.Generator, items: list | tuple) -> object:
    """One element of ``items``, chosen with ``rng`` (keeps Python types, unlike ``rng.choice``)."""
    return items[int(rng.integers(len(items)))]


def _overlap(a: Box, b: Box) -> float:
    """Intersection area over the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def _candidate_box(rng: np.random.Generator, region: Box, place: str, w: int, h: int,
                   width: int, height: int) -> Box | None:
    """A random box of size ``w`` x ``h`` for an object living in ``region``, or None if it cannot fit.

    Sky objects lie wholly inside the sky; ground and water objects have their bottom edge inside the
    region and may stick up into whatever lies behind (a tree against the sky).
    """
    x1r, y1r, x2r, y2r = region
    lo_x = max(0, x1r - w // 4)
    hi_x = min(width - w, x2r - w + w // 4)
    if hi_x < lo_x:
        return None
    x = int(rng.integers(lo_x, hi_x + 1))
    if place == "sky":
        if h > y2r - y1r - 4:
            return None
        y = int(rng.integers(y1r + 2, y2r - h + 1))
    else:
        lo_bottom = max(h, y1r + min(h // 3, (y2r - y1r) // 2))
        if lo_bottom > y2r:
            return None
        y = int(rng.integers(lo_bottom, y2r + 1)) - h
    return (x, y, x + w, y + h)


def place_objects(rng: np.random.Generator, regions: list[tuple[str, Box]], width: int,
                  height: int) -> list[PlacedObject]:
    """Choose groups of objects and place them in the stuff ``regions`` without heavy overlaps.

    Returns the objects in drawing order: sky objects first, then the rest by their bottom edge, far to near.
    """
    manifest = load_manifest()
    homes: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(regions):
        homes.setdefault(STUFF[name].holds, []).append(i)
    categories = [c for c in manifest.values() if c.place in homes]
    order = rng.permutation(len(categories))
    n_groups = int(rng.integers(MIN_GROUPS, MAX_GROUPS + 1))
    short = min(width, height)
    placed: list[PlacedObject] = []
    group = 0
    for index in order:
        if group == n_groups or len(placed) >= MAX_OBJECTS:
            break
        cat: SpriteCategory = categories[int(index)]
        region = int(_pick(rng, homes[cat.place]))
        count = 1 + int(rng.choice(3, p=COUNT_PROBS))
        size = str(SIZE_CLASSES[int(rng.choice(3, p=SIZE_PROBS))])
        colour = cat.natural_colour
        if cat.recolourable:
            avoid = STUFF[regions[region][0]].avoid_colours
            colour = str(_pick(rng, [c for c in PALETTE if c not in avoid]))
        aspect = coloured_sprite(cat.name, None).size
        room = regions[region][1][3] - regions[region][1][1] - 4
        while cat.place == "sky" and size != "small" and SIZE_FRACTIONS[size][1] * short > room:
            size = SIZE_CLASSES[SIZE_CLASSES.index(size) - 1]  # a big kite would not fit in a low sky
        members: list[PlacedObject] = []
        for _ in range(min(count, MAX_OBJECTS - len(placed))):
            lo, hi = SIZE_FRACTIONS[size]
            for _attempt in range(30):
                side = int(round(short * rng.uniform(lo, hi)))
                scale = side / max(aspect)
                w, h = max(1, round(aspect[0] * scale)), max(1, round(aspect[1] * scale))
                box = _candidate_box(rng, regions[region][1], cat.place, w, h, width, height)
                if box is not None and all(_overlap(box, o.box) <= MAX_OVERLAP for o in placed + members):
                    members.append(PlacedObject(cat.name, colour, size, group, region, box, bool(rng.random() < 0.5)))
                    break
        if members:
            placed += members
            group += 1
    return sorted(placed, key=lambda o: (STUFF[regions[o.region][0]].holds != "sky", o.box[3]))


def composite(background: np.ndarray, objects: list[PlacedObject]) -> np.ndarray:
    """Alpha-blend each object's (recoloured, resized, maybe mirrored) sprite onto ``background``, in order.

    ``background``: ``(height, width, 3)`` uint8; returns a new array of the same shape.
    """
    canvas = Image.fromarray(background, "RGB")
    for obj in objects:
        x1, y1, x2, y2 = obj.box
        sprite = sprite_at_size(obj.category, obj.colour, max(x2 - x1, y2 - y1))
        if sprite.size != (x2 - x1, y2 - y1):
            sprite = sprite.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS)
        if obj.flip:
            sprite = ImageOps.mirror(sprite)
        canvas.paste(sprite, (x1, y1), sprite)
    return np.asarray(canvas, dtype=np.uint8).copy()
