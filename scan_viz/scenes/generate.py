"""``generate_scene``: one deterministic synthetic image with its boxes and grounded captions."""
from __future__ import annotations

import numpy as np

from scan_viz.errors import ScanVizError
from scan_viz.scenes.captions import make_captions
from scan_viz.scenes.layout import composite, place_objects
from scan_viz.scenes.stuff import layout_stuff, paint_stuff
from scan_viz.scenes.types import Scene, SceneObject

DEFAULT_SIZE = (320, 256)  # (width, height)
MIN_SIDE, MAX_SIDE = 128, 1024


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` as ints, or a ScanVizError saying which sides are allowed."""
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError) as err:
        raise ScanVizError(f"scene size must be (width, height), got {size!r}") from err
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise ScanVizError(f"scene size {width}x{height} is out of range; use sides between {MIN_SIDE} and {MAX_SIDE}")
    return width, height


def generate_scene(seed: int, size: tuple[int, int] = DEFAULT_SIZE) -> Scene:
    """Generate the scene for ``seed``: the same seed and size give the same image bytes and captions.

    ``size`` is ``(width, height)`` in pixels. The layout, the textures and the captions each draw from
    their own random stream spawned from ``seed``, so changing the caption grammar leaves images unchanged.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ScanVizError(f"scene seed must be a non-negative integer, got {seed!r}")
    width, height = check_size(size)
    layout_rng, paint_rng, caption_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
    while True:
        regions = layout_stuff(layout_rng, width, height)
        placed = place_objects(layout_rng, regions, width, height)
        if len({o.group for o in placed}) >= 2:  # captions must be able to leave a group out
            break
    image = composite(paint_stuff(paint_rng, regions, width, height), placed)
    objects = [SceneObject(name, tuple(float(v) for v in box), kind="stuff") for name, box in regions]
    objects += [SceneObject(o.category, tuple(float(v) for v in o.box), "object", o.colour, o.size, o.group, o.region)
                for o in placed]
    return Scene(int(seed), image, objects, make_captions(caption_rng, objects, width, height))
