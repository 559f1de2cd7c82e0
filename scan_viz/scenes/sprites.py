"""Object sprites: the manifest written by ``tools/render_sprites.py``, colour words, and recolouring.

Generation reads only the PNGs and ``manifest.json`` under ``scan_viz/assets/sprites``, never the font.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
from PIL import Image

from scan_viz.errors import ScanVizError

SPRITE_DIR = Path(__file__).resolve().parent.parent / "assets" / "sprites"

# Target RGB of each colour word. The recolouring palette is the colours a sprite can be painted;
# brown and grey only occur as natural colours (a brown bear, a grey elephant).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (222, 38, 38),
    "orange": (246, 138, 24),
    "yellow": (250, 214, 30),
    "green": (52, 168, 60),
    "blue": (34, 92, 226),
    "purple": (138, 52, 196),
    "pink": (246, 118, 184),
    "white": (244, 244, 244),
    "black": (38, 38, 42),
    "brown": (140, 90, 50),
    "grey": (150, 150, 150),
}
PALETTE = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black")


@dataclasses.dataclass(frozen=True)
class SpriteCategory:
    """One manifest entry: an object category, its sprite and the words captions may use for it."""

    name: str
    file: str
    group: str
    place: str
    recolourable: bool
    recolour: dict[str, float] | None
    natural_colour: str | None
    words: tuple[tuple[str, str], ...]  # (singular, plural) pairs, the first is the canonical name


@functools.lru_cache(maxsize=4)
def load_manifest(sprite_dir: Path = SPRITE_DIR) -> dict[str, SpriteCategory]:
    """The sprite categories by name, in manifest order."""
    path = sprite_dir / "manifest.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ScanVizError(f"cannot read the sprite manifest {path} ({err}); run tools/render_sprites.py") from err
    return {
        c["name"]: SpriteCategory(
            name=c["name"], file=c["file"], group=c["group"], place=c["place"],
            recolourable=c["recolourable"], recolour=c["recolour"], natural_colour=c["natural_colour"],
            words=tuple((w["singular"], w["plural"]) for w in c["words"]),
        )
        for c in raw["categories"]
    }


def object_vocabulary(sprite_dir: Path = SPRITE_DIR) -> dict[str, str]:
    """Every caption word (singular and plural) that names an object category -> that category."""
    vocab: dict[str, str] = {}
    for cat in load_manifest(sprite_dir).values():
        for singular, plural in cat.words:
            vocab[singular] = vocab[plural] = cat.name
    return vocab


@functools.lru_cache(maxsize=None)
def _sprite_rgba(name: str, sprite_dir: Path = SPRITE_DIR) -> np.ndarray:
    """The stored sprite as ``(h, w, 4)`` uint8 RGBA."""
    path = sprite_dir / load_manifest(sprite_dir)[name].file
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGBA"), dtype=np.uint8).copy()
    except OSError as err:
        raise ScanVizError(f"cannot read sprite {path} ({err}); run tools/render_sprites.py") from err


def _rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), saturation and value of ``(..., 3)`` RGB floats in [0, 1]."""
    maxc = rgb.max(axis=-1)
    minc = rgb.min(axis=-1)
    delta = maxc - minc
    safe = np.where(delta > 0, delta, 1.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(maxc == r, (g - b) / safe % 6.0, np.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(delta > 0, hue * 60.0, 0.0)
    sat = np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1.0), 0.0)
    return hue, sat, maxc


def recolour(rgba: np.ndarray, params: dict[str, float], colour: str) -> np.ndarray:
    """Paint the sprite's body (its dominant-hue pixels) in ``colour``, keeping the shading.

    The body mask comes from the hue measured by the sprite tool; a soft edge on hue and saturation avoids
    fringes. Each body pixel becomes the target colour scaled by its brightness relative to the body's
    median, and brighter-than-median pixels (highlights) are pushed towards white so they stay visible.
    ``rgba``: ``(h, w, 4)`` uint8; returns the same shape.
    """
    rgb = rgba[..., :3].astype(np.float32) / 255.0
    hue, sat, val = _rgb_to_hsv(rgb)
    dist = np.abs((hue - params["hue"] + 180.0) % 360.0 - 180.0)
    weight = (np.clip((params["tolerance"] - dist) / 8.0, 0.0, 1.0)
              * np.clip((sat - params["min_saturation"]) / 0.1 + 0.5, 0.0, 1.0)
              * np.clip((val - params["min_value"]) / 0.1 + 0.5, 0.0, 1.0)
              * (rgba[..., 3] > 0))
    body = weight > 0.5
    if not body.any():
        return rgba.copy()
    shade = val / max(float(np.median(val[body])), 1e-3)
    target = np.asarray(COLOURS[colour], dtype=np.float32) / 255.0
    darker = target * np.minimum(shade, 1.0)[..., None]
    lighter = target + (1.0 - target) * np.clip(shade - 1.0, 0.0, 1.0)[..., None] * 0.8
    painted = np.where((shade > 1.0)[..., None], lighter, darker)
    out = rgb * (1.0 - weight[..., None]) + painted * weight[..., None]
    result = rgba.copy()
    result[..., :3] = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    return result


@functools.lru_cache(maxsize=512)
def coloured_sprite(name: str, colour: str | None, sprite_dir: Path = SPRITE_DIR) -> Image.Image:
    """The full-size RGBA sprite of ``name``, painted ``colour`` when the category is recolourable.

    A recolourable sprite is repainted even when ``colour`` is its natural colour, so that one colour word
    always looks the same (the emoji's own "blue" cap is a pale sky blue, the palette's blue is not).
    """
    cat = load_manifest(sprite_dir)[name]
    rgba = _sprite_rgba(name, sprite_dir)
    if cat.recolourable and colour is not None:
        rgba = recolour(rgba, cat.recolour, colour)
    return Image.fromarray(rgba, "RGBA")


def sprite_at_size(name: str, colour: str | None, longest_side: int, sprite_dir: Path = SPRITE_DIR) -> Image.Image:
    """The (recoloured) sprite resized so its longest side is ``longest_side`` px."""
    full = coloured_sprite(name, colour, sprite_dir)
    scale = longest_side / max(full.size)
    size = (max(1, round(full.width * scale)), max(1, round(full.height * scale)))
    return full.resize(size, Image.Resampling.LANCZOS)
