"""Render the synthetic world's object sprites from Noto Color Emoji.

Writes ``scan_viz/assets/sprites/<category>.png`` (RGBA, cropped to the glyph's alpha bounding box, longest
side 96 px), ``manifest.json`` (what :mod:`scan_viz.scenes` reads: category, codepoints, group, where the object
lives, caption words, recolouring parameters) and ``LICENSE-OFL.txt`` (the font's licence, taken from the
Debian package's copyright file).

Only this tool needs the font (``apt-get install fonts-noto-color-emoji``); scene generation reads the PNGs.
Noto Color Emoji is a CBDT bitmap font, so Pillow can only load it at its native strike size, 109.

    python tools/render_sprites.py [--font PATH] [--out scan_viz/assets/sprites]
"""
from __future__ import annotations

import argparse
import colorsys
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DEFAULT_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
DEFAULT_COPYRIGHT = Path("/usr/share/doc/fonts-noto-color-emoji/copyright")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "scan_viz" / "assets" / "sprites"
FONT_SIZE = 109  # the only strike a CBDT Noto Color Emoji offers
SPRITE_SIDE = 96  # longest side of a stored sprite, px

# (category, codepoint, group, place, recolourable, natural colour, [(singular, plural), ...])
# ``place`` is where the object may stand in a scene: "ground" (on grass, sand, snow or road), "sky" or "water".
# ``natural colour`` is the one colour word a person would use for the unrecoloured emoji, or None when no
# single colour dominates (a black and white cow, a multicoloured kite). The first word pair is the canonical
# name; every word is a plain lowercase token (no hyphen, no apostrophe) and no word names two categories.
CATEGORIES: list[tuple[str, str, str, str, bool, str | None, list[tuple[str, str]]]] = [
    ("dog", "1F415", "animal", "ground", False, None, [("dog", "dogs"), ("puppy", "puppies")]),
    ("cat", "1F408", "animal", "ground", False, None, [("cat", "cats"), ("kitten", "kittens")]),
    ("horse", "1F40E", "animal", "ground", False, None, [("horse", "horses"), ("pony", "ponies")]),
    ("cow", "1F404", "animal", "ground", False, None, [("cow", "cows")]),
    ("pig", "1F416", "animal", "ground", False, "pink", [("pig", "pigs"), ("piglet", "piglets")]),
    ("sheep", "1F411", "animal", "ground", False, "white", [("sheep", "sheep"), ("lamb", "lambs")]),
    ("bird", "1F426", "animal", "sky", False, "blue", [("bird", "birds")]),
    ("duck", "1F986", "animal", "water", False, None, [("duck", "ducks")]),
    ("rabbit", "1F407", "animal", "ground", False, "white", [("rabbit", "rabbits"), ("bunny", "bunnies")]),
    ("bear", "1F43B", "animal", "ground", False, "brown", [("bear", "bears")]),
    ("elephant", "1F418", "animal", "ground", False, "grey", [("elephant", "elephants")]),
    ("giraffe", "1F992", "animal", "ground", False, None, [("giraffe", "giraffes")]),
    ("turtle", "1F422", "animal", "ground", False, "green", [("turtle", "turtles"), ("tortoise", "tortoises")]),
    ("fish", "1F41F", "animal", "water", False, "blue", [("fish", "fish")]),
    ("snail", "1F40C", "animal", "ground", False, None, [("snail", "snails")]),
    ("butterfly", "1F98B", "animal", "sky", False, "orange", [("butterfly", "butterflies")]),
    ("monkey", "1F412", "animal", "ground", False, "brown", [("monkey", "monkeys")]),
    ("chicken", "1F413", "animal", "ground", False, None, [("chicken", "chickens"), ("rooster", "roosters")]),
    ("car", "1F697", "vehicle", "ground", True, "red", [("car", "cars")]),
    ("bus", "1F68C", "vehicle", "ground", False, None, [("bus", "buses")]),
    ("bicycle", "1F6B2", "vehicle", "ground", False, None, [("bicycle", "bicycles"), ("bike", "bikes")]),
    ("truck", "1F69A", "vehicle", "ground", True, "orange", [("truck", "trucks"), ("lorry", "lorries")]),
    ("boat", "26F5", "vehicle", "water", False, None, [("boat", "boats"), ("sailboat", "sailboats")]),
    ("airplane", "2708", "vehicle", "sky", False, None, [("airplane", "airplanes"), ("plane", "planes")]),
    ("train", "1F682", "vehicle", "ground", False, None, [("train", "trains"), ("locomotive", "locomotives")]),
    ("tractor", "1F69C", "vehicle", "ground", True, "green", [("tractor", "tractors")]),
    ("motorcycle", "1F3CD", "vehicle", "ground", True, "red", [("motorcycle", "motorcycles"),
                                                               ("motorbike", "motorbikes")]),
    ("helicopter", "1F681", "vehicle", "sky", True, "yellow", [("helicopter", "helicopters")]),
    ("apple", "1F34E", "food", "ground", False, "red", [("apple", "apples")]),
    ("banana", "1F34C", "food", "ground", False, "yellow", [("banana", "bananas")]),
    ("pizza", "1F355", "food", "ground", False, None, [("pizza", "pizzas")]),
    ("cake", "1F382", "food", "ground", False, None, [("cake", "cakes")]),
    ("donut", "1F369", "food", "ground", False, None, [("donut", "donuts"), ("doughnut", "doughnuts")]),
    ("burger", "1F354", "food", "ground", False, None, [("burger", "burgers"), ("hamburger", "hamburgers")]),
    ("carrot", "1F955", "food", "ground", False, "orange", [("carrot", "carrots")]),
    ("strawberry", "1F353", "food", "ground", False, "red", [("strawberry", "strawberries")]),
    ("eggplant", "1F346", "food", "ground", False, "purple", [("eggplant", "eggplants"), ("aubergine", "aubergines")]),
    ("broccoli", "1F966", "food", "ground", False, "green", [("broccoli", "broccoli")]),
    ("flower", "1F337", "plant", "ground", True, "pink", [("flower", "flowers"), ("tulip", "tulips")]),
    ("sunflower", "1F33B", "plant", "ground", False, "yellow", [("sunflower", "sunflowers")]),
    ("tree", "1F333", "plant", "ground", False, "green", [("tree", "trees")]),
    ("cactus", "1F335", "plant", "ground", False, "green", [("cactus", "cacti")]),
    ("mushroom", "1F344", "plant", "ground", False, "red", [("mushroom", "mushrooms")]),
    ("umbrella", "2602", "object", "ground", True, "purple", [("umbrella", "umbrellas")]),
    ("balloon", "1F388", "object", "sky", True, "red", [("balloon", "balloons")]),
    ("hat", "1F9E2", "object", "ground", True, "blue", [("hat", "hats"), ("cap", "caps")]),
    ("ball", "26BD", "object", "ground", False, None, [("ball", "balls"), ("football", "footballs")]),
    ("cup", "2615", "object", "ground", False, "white", [("cup", "cups"), ("mug", "mugs")]),
    ("chair", "1FA91", "object", "ground", False, "brown", [("chair", "chairs")]),
    ("house", "1F3E0", "object", "ground", False, None, [("house", "houses"), ("cottage", "cottages")]),
    ("guitar", "1F3B8", "object", "ground", True, "red", [("guitar", "guitars")]),
    ("book", "1F4D5", "object", "ground", True, "red", [("book", "books")]),
    ("kite", "1FA81", "object", "sky", False, None, [("kite", "kites")]),
    ("clock", "23F0", "object", "ground", True, "red", [("clock", "clocks")]),
    ("shoe", "1F45F", "object", "ground", True, "blue", [("shoe", "shoes"), ("sneaker", "sneakers")]),
    ("backpack", "1F392", "object", "ground", True, "red", [("backpack", "backpacks"), ("bag", "bags")]),
    ("tent", "26FA", "object", "ground", True, "orange", [("tent", "tents")]),
    ("bucket", "1FAA3", "object", "ground", True, "blue", [("bucket", "buckets"), ("pail", "pails")]),
]

# Which pixels get recoloured: opaque, saturated ones whose hue is within HUE_TOLERANCE of the sprite's
# dominant hue. The dominant hue is measured here once and stored, so generation does not guess again.
MIN_SATURATION = 0.35
MIN_VALUE = 0.25
HUE_TOLERANCE = 28.0


def render_glyph(font: ImageFont.FreeTypeFont, text: str) -> Image.Image:
    """Draw one emoji on a transparent canvas and crop it to its alpha bounding box."""
    canvas = Image.new("RGBA", (FONT_SIZE * 2, FONT_SIZE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((FONT_SIZE // 4, FONT_SIZE // 4), text, font=font, embedded_color=True)
    bbox = canvas.getchannel("A").getbbox()
    if bbox is None:
        raise SystemExit(f"error: the font has no glyph for {text!r}; is it Noto Color Emoji?")
    return canvas.crop(bbox)


def resize_longest(sprite: Image.Image, side: int) -> Image.Image:
    """Resize so the longest side is ``side`` px, keeping the aspect ratio (Pillow premultiplies alpha)."""
    scale = side / max(sprite.size)
    size = (max(1, round(sprite.width * scale)), max(1, round(sprite.height * scale)))
    return sprite.resize(size, Image.Resampling.LANCZOS)


def dominant_hue(sprite: Image.Image) -> float:
    """The most common hue (degrees) among the sprite's opaque, saturated pixels: the part to recolour."""
    rgba = np.asarray(sprite, dtype=np.float32) / 255.0
    opaque = rgba[..., 3] > 0.5
    pixels = rgba[opaque][:, :3]
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in pixels])
    keep = (hsv[:, 1] > MIN_SATURATION) & (hsv[:, 2] > MIN_VALUE)
    hues = hsv[keep, 0] * 360.0
    counts, edges = np.histogram(hues, bins=36, range=(0.0, 360.0))
    best = int(np.argmax(counts))
    # refine to the circular mean of the hues inside the winning bin and its neighbours
    centre = (edges[best] + edges[best + 1]) / 2
    near = np.abs((hues - centre + 180.0) % 360.0 - 180.0) <= 15.0
    angles = np.deg2rad(hues[near])
    return float(np.rad2deg(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360.0)


def ofl_text(copyright_file: Path) -> str:
    """The SIL OFL 1.1 text from a Debian copyright file, unfolded, under a header naming the font."""
    lines = copyright_file.read_text(encoding="utf-8").splitlines()
    # the stanza holding the text is a "License: SIL-1.1" line followed by indented lines (the one inside
    # the "Files: fonts/*" stanza only names the licence)
    starts = [i for i, line in enumerate(lines[:-1])
              if line.split() == ["License:", "SIL-1.1"] and lines[i + 1].startswith(" ")]
    if not starts:
        raise SystemExit(f"error: no SIL-1.1 licence text in {copyright_file}")
    start = starts[0]
    body: list[str] = []
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        body.append("" if line.strip() == "." else line[1:])
    header = [
        "The sprites in this directory were rendered by tools/render_sprites.py from the Noto Color Emoji font",
        "(https://github.com/googlefonts/noto-emoji), Copyright 2013-2017 Google Inc., as packaged in Debian's",
        "fonts-noto-color-emoji. The font and the glyphs drawn from it are licensed under the SIL Open Font",
        "License, Version 1.1, reproduced below from that package's copyright file.",
        "",
    ]
    return "\n".join(header + body).rstrip() + "\n"


def build(font_path: Path, copyright_file: Path, out_dir: Path) -> dict:
    """Render every category, write sprites, manifest and licence to ``out_dir``; return the manifest."""
    font = ImageFont.truetype(str(font_path), FONT_SIZE)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, codepoint, group, place, recolourable, natural, words in CATEGORIES:
        sprite = resize_longest(render_glyph(font, chr(int(codepoint, 16))), SPRITE_SIDE)
        sprite.save(out_dir / f"{name}.png", optimize=True)
        entries.append({
            "name": name,
            "codepoints": [f"U+{codepoint}"],
            "file": f"{name}.png",
            "size": list(sprite.size),
            "group": group,
            "place": place,
            "recolourable": recolourable,
            "recolour": ({"hue": round(dominant_hue(sprite), 1), "tolerance": HUE_TOLERANCE,
                          "min_saturation": MIN_SATURATION, "min_value": MIN_VALUE} if recolourable else None),
            "natural_colour": natural,
            "words": [{"singular": s, "plural": p} for s, p in words],
        })
    manifest = {
        "font": "Noto Color Emoji",
        "font_file": font_path.name,
        "licence": "LICENSE-OFL.txt",
        "sprite_side": SPRITE_SIDE,
        "categories": entries,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    (out_dir / "LICENSE-OFL.txt").write_text(ofl_text(copyright_file), encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command line: render the sprites and print a one-line summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--font", type=Path, default=DEFAULT_FONT, help="NotoColorEmoji.ttf")
    parser.add_argument("--copyright", type=Path, default=DEFAULT_COPYRIGHT, help="Debian copyright file with the OFL")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    for path in (args.font, args.copyright):
        if not path.is_file():
            print(f"error: {path} not found; apt-get install fonts-noto-color-emoji", file=sys.stderr)
            return 2
    manifest = build(args.font, args.copyright, args.out)
    total = sum(p.stat().st_size for p in args.out.glob("*.png"))
    print(f"{len(manifest['categories'])} sprites, {total / 1024:.0f} KiB, in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
