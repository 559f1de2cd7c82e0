"""Stuff: procedurally textured background regions (sky, grass, water, sand, snow, road).

Each stuff category is registered by name with its painter and the words captions use for it, so adding
one is a function and a decorator. A scene's background is a sky band over one or two ground regions,
stacked (water far, sand near) or side by side (grass | road); every region is a rectangle with its own box.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from PIL import Image

Painter = Callable[[np.random.Generator, int, int], np.ndarray]
Box = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class StuffCategory:
    """A background region type.

    ``phrases`` are (preposition, noun) pairs a caption may use ("on", "grass"), ("in", "field");
    ``holds`` is which sprite ``place`` can stand in it ("ground", "water" or "sky"); ``avoid_colours`` are
    palette colours that would vanish against it (no white balloon in front of clouds).
    """

    name: str
    phrases: tuple[tuple[str, str], ...]
    holds: str
    avoid_colours: tuple[str, ...]
    paint: Painter

    @property
    def nouns(self) -> tuple[str, ...]:
        """Every noun captions use for this stuff."""
        return tuple(dict.fromkeys(noun for _, noun in self.phrases))


STUFF: dict[str, StuffCategory] = {}


def register_stuff(name: str, phrases: tuple[tuple[str, str], ...], holds: str,
                   avoid_colours: tuple[str, ...] = ()) -> Callable[[Painter], Painter]:
    """Decorator: register ``paint(rng, height, width) -> (height, width, 3) float RGB in [0, 255]``."""
    def wrap(paint: Painter) -> Painter:
        STUFF[name] = StuffCategory(name, phrases, holds, avoid_colours, paint)
        return paint
    return wrap


def stuff_vocabulary() -> dict[str, str]:
    """Every caption noun that names a stuff category -> that category."""
    return {noun: cat.name for cat in STUFF.values() for noun in cat.nouns}


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1], ``(height, width)``: a random grid every ``cell`` px, bilinearly upsampled."""
    grid = rng.uniform(-1.0, 1.0, size=(height // cell + 2, width // cell + 2)).astype(np.float32)
    big = Image.fromarray(grid, "F").resize((grid.shape[1] * cell, grid.shape[0] * cell), Image.Resampling.BILINEAR)
    return np.asarray(big, dtype=np.float32)[:height, :width]


def _flat(colour: tuple[int, int, int], height: int, width: int) -> np.ndarray:
    """A ``(height, width, 3)`` float image of one colour."""
    return np.broadcast_to(np.asarray(colour, np.float32), (height, width, 3)).copy()


@register_stuff("sky", (("in", "sky"),), holds="sky", avoid_colours=("blue", "white"))
def paint_sky(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blue gradient, paler towards the horizon, with zero to two soft clouds."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    img = np.asarray((86, 146, 226), np.float32) * (1 - t) + np.asarray((186, 220, 248), np.float32) * t
    img = np.broadcast_to(img, (height, width, 3)).copy()
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cover = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.uniform(0, width), rng.uniform(0.15, 0.6) * height
        for _ in range(4):
            bx, by = cx + rng.normal(0, width * 0.04), cy + rng.normal(0, height * 0.05)
            sx, sy = rng.uniform(0.04, 0.08) * width, rng.uniform(0.08, 0.14) * height
            cover += np.exp(-(((xx - bx) / sx) ** 2 + ((yy - by) / sy) ** 2))
    alpha = np.clip(cover, 0.0, 0.8)[..., None]
    return img * (1 - alpha) + np.asarray((250, 251, 253), np.float32) * alpha


@register_stuff("grass", (("on", "grass"), ("on", "lawn"), ("in", "field"), ("in", "meadow")),
                holds="ground", avoid_colours=("green",))
def paint_grass(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Green with patchy shading and short vertical blade streaks."""
    img = _flat((84, 160, 62), height, width)
    img += smooth_noise(rng, height, width, 24)[..., None] * np.asarray((14, 20, 8), np.float32)
    blades = rng.normal(0.0, 1.0, size=(height // 3 + 1, width)).astype(np.float32)
    blades = np.repeat(blades, 3, axis=0)[:height]
    img += blades[..., None] * np.asarray((8, 14, 6), np.float32)
    return img


@register_stuff("water", (("on", "water"), ("in", "water"), ("in", "lake"), ("in", "sea")),
                holds="water", avoid_colours=("blue",))
def paint_water(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Deep blue with light horizontal wave crests."""
    img = _flat((38, 108, 188), height, width)
    img += smooth_noise(rng, height, width, 32)[..., None] * np.asarray((8, 12, 14), np.float32)
    yy = np.arange(height, dtype=np.float32)[:, None]
    phase = smooth_noise(rng, height, width, 40) * 3.0
    crest = np.sin(2 * np.pi * yy / rng.uniform(7.0, 11.0) + phase)
    img += np.clip((crest - 0.7) / 0.3, 0.0, 1.0)[..., None] * np.asarray((70, 70, 60), np.float32)
    return img


@register_stuff("sand", (("on", "sand"), ("on", "beach")), holds="ground", avoid_colours=("yellow", "orange"))
def paint_sand(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Beige with fine grain and faint ripples."""
    img = _flat((226, 200, 142), height, width)
    img += smooth_noise(rng, height, width, 28)[..., None] * 10.0
    img += rng.normal(0.0, 6.0, size=(height, width, 1)).astype(np.float32)
    yy = np.arange(height, dtype=np.float32)[:, None]
    ripples = np.sin(2 * np.pi * (yy + 6.0 * smooth_noise(rng, height, width, 36)) / 9.0)
    return img + ripples[..., None] * 5.0


@register_stuff("snow", (("in", "snow"), ("on", "snow")), holds="ground", avoid_colours=("white",))
def paint_snow(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Near white with cool blue-grey drifts and sparse sparkle."""
    img = _flat((242, 246, 252), height, width)
    drift = (smooth_noise(rng, height, width, 30)[..., None] + 1.0) * 0.5
    img = img * (1 - 0.45 * drift) + np.asarray((200, 214, 236), np.float32) * 0.45 * drift
    img += rng.normal(0.0, 2.0, size=(height, width, 1)).astype(np.float32)
    return img


@register_stuff("road", (("on", "road"), ("on", "street")), holds="ground", avoid_colours=("black",))
def paint_road(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Grey asphalt with dashed centre line and solid edge lines along its long axis."""
    img = _flat((92, 92, 98), height, width)
    img += smooth_noise(rng, height, width, 20)[..., None] * 6.0
    img += rng.normal(0.0, 7.0, size=(height, width, 1)).astype(np.float32)
    along_x = width >= height
    length, across = (width, height) if along_x else (height, width)
    marks = np.zeros((across, length), dtype=bool)
    mid, dash, gap = across // 2, 18, 14
    offset = int(rng.integers(0, dash + gap))
    on = ((np.arange(length) + offset) % (dash + gap)) < dash
    marks[max(0, mid - 1):mid + 2, :] = on
    marks[3:5, :] = True
    marks[across - 5:across - 3, :] = True
    if not along_x:
        marks = marks.T
    img[marks] = (236, 236, 226)
    return img


def layout_stuff(rng: np.random.Generator, width: int, height: int) -> list[tuple[str, Box]]:
    """Choose the background regions: a sky band on top, then one or two ground regions.

    Returns ``[(category, (x1, y1, x2, y2)), ...]`` with the sky first; the regions tile the image. Water
    only ever comes with a land region, so ground objects always have somewhere to stand.
    """
    horizon = int(round(height * rng.uniform(0.30, 0.45)))
    regions: list[tuple[str, Box]] = [("sky", (0, 0, width, horizon))]
    lands = [name for name, cat in STUFF.items() if cat.holds == "ground"]
    grounds = [name for name, cat in STUFF.items() if cat.holds in ("ground", "water")]
    layout = rng.random()
    if layout < 0.35:
        regions.append((lands[int(rng.integers(len(lands)))], (0, horizon, width, height)))
        return regions
    while True:
        first, second = (grounds[i] for i in rng.choice(len(grounds), size=2, replace=False))
        # sand next to snow looks like a mistake, and two water regions would leave nowhere to stand
        if {first, second} != {"sand", "snow"} and (first in lands or second in lands):
            break
    if layout < 0.7:  # stacked: a far band and a near band
        split = horizon + int(round((height - horizon) * rng.uniform(0.38, 0.6)))
        regions += [(first, (0, horizon, width, split)), (second, (0, split, width, height))]
    else:  # side by side
        split = int(round(width * rng.uniform(0.38, 0.62)))
        regions += [(first, (0, horizon, split, height)), (second, (split, horizon, width, height))]
    return regions


def paint_stuff(rng: np.random.Generator, regions: list[tuple[str, Box]], width: int, height: int) -> np.ndarray:
    """Paint every region with its texture; returns the ``(height, width, 3)`` uint8 background."""
    canvas = np.zeros((height, width, 3), np.float32)
    for name, (x1, y1, x2, y2) in regions:
        canvas[y1:y2, x1:x2] = STUFF[name].paint(rng, y2 - y1, x2 - x1)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
