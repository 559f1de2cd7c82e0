"""Tests for scan_viz.scenes: determinism, grounded word links, the sprite manifest, the world writer, the CLI."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scan_viz.errors import ScanVizError
from scan_viz.scenes import WORD_TYPES, Scene, generate_scene
from scan_viz.scenes import world as world_module
from scan_viz.scenes import write_world
from scan_viz.scenes.__main__ import main as cli_main
from scan_viz.scenes.captions import relations
from scan_viz.scenes.layout import SIZE_FRACTIONS
from scan_viz.scenes.sprites import COLOURS, SPRITE_DIR, coloured_sprite, load_manifest, object_vocabulary
from scan_viz.scenes.stuff import STUFF, stuff_vocabulary
from scan_viz.scenes.world import scene_seed

SEEDS = range(24)
NUMBERS = {"one": 1, "two": 2, "three": 3}
SIZE = (320, 256)


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    """A couple of dozen scenes, generated once for the module."""
    return [generate_scene(seed, SIZE) for seed in SEEDS]


def test_same_seed_same_scene_and_different_seed_differs() -> None:
    a, b, c = generate_scene(7, SIZE), generate_scene(7, SIZE), generate_scene(8, SIZE)
    assert a.image.dtype == np.uint8 and a.image.shape == (SIZE[1], SIZE[0], 3)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.objects == b.objects and a.captions == b.captions
    assert a.image.tobytes() != c.image.tobytes()
    assert [x.text for x in a.captions] != [x.text for x in c.captions]


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_bad_seed_is_a_user_error(seed: object) -> None:
    with pytest.raises(ScanVizError):
        generate_scene(seed)  # type: ignore[arg-type]


def test_bad_size_is_a_user_error() -> None:
    with pytest.raises(ScanVizError):
        generate_scene(0, (32, 32))


def test_boxes_lie_inside_the_image(scenes: list[Scene]) -> None:
    for scene in scenes:
        kinds = [o.kind for o in scene.objects]
        assert kinds == sorted(kinds, key=lambda k: k != "stuff"), "stuff first, then objects"
        assert kinds.count("object") >= 2
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= scene.width and 0 <= y1 < y2 <= scene.height
            if obj.kind == "object":
                assert scene.objects[obj.stuff].kind == "stuff"


def test_caption_text_is_its_word_list(scenes: list[Scene]) -> None:
    for scene in scenes:
        assert len(scene.captions) == 5
        for caption in scene.captions:
            words = [w.word for w in caption.words]
            assert caption.text.split() == words
            assert all(re.fullmatch(r"[a-z]+", w) for w in words), caption.text
            assert all(w.type in WORD_TYPES for w in caption.words)


def test_every_caption_leaves_an_object_group_out(scenes: list[Scene]) -> None:
    for scene in scenes:
        groups = {o.group for o in scene.objects if o.kind == "object"}
        for caption in scene.captions:
            mentioned = {scene.objects[i].group for w in caption.words if w.type == "object" for i in w.boxes}
            assert mentioned and mentioned < groups, caption.text


def test_word_links_agree_with_the_boxes(scenes: list[Scene]) -> None:
    objects_by_word = object_vocabulary()
    stuff_by_word = stuff_vocabulary()
    seen_types: set[str] = set()
    for scene in scenes:
        short = min(scene.width, scene.height)
        for caption in scene.captions:
            for w in caption.words:
                seen_types.add(w.type)
                linked = [scene.objects[i] for i in w.boxes]
                if w.type in ("object", "colour", "size", "count", "position", "stuff"):
                    assert linked, f"{w.word!r} in {caption.text!r} links to no box"
                if w.type == "function":
                    assert not linked
                elif w.type == "object":
                    assert all(o.kind == "object" and o.category == objects_by_word[w.word] for o in linked)
                elif w.type == "stuff":
                    assert all(o.kind == "stuff" and o.category == stuff_by_word[w.word] for o in linked)
                elif w.type == "count":
                    assert len(linked) == NUMBERS[w.word]
                elif w.type == "colour":
                    assert all(o.colour == w.word for o in linked)
                elif w.type == "size":
                    label = "small" if w.word in ("small", "little", "tiny") else "big"
                    assert all(o.size == label for o in linked)
                    sides = [max(o.box[2] - o.box[0], o.box[3] - o.box[1]) / short for o in linked]
                    lo, hi = SIZE_FRACTIONS[label]
                    assert all(lo - 0.01 <= s <= hi + 0.01 for s in sides)
                elif w.type == "position":
                    for o in linked:
                        cx, cy = o.centre
                        assert {"left": cx < scene.width / 3, "right": cx > scene.width * 2 / 3,
                                "top": cy < scene.height / 3, "bottom": cy > scene.height * 2 / 3}[w.word]
                elif w.type == "relation":
                    assert len(set(w.boxes)) >= 2
    assert seen_types == set(WORD_TYPES), "the sample should exercise every word type"


def test_object_words_and_their_modifiers_link_the_same_group(scenes: list[Scene]) -> None:
    for scene in scenes:
        for caption in scene.captions:
            for w in caption.words:
                if w.type in ("count", "colour", "size", "object"):
                    groups = {scene.objects[i].group for i in w.boxes}
                    assert len(groups) == 1
                    group = groups.pop()
                    assert sorted(w.boxes) == [i for i, o in enumerate(scene.objects) if o.group == group]


def test_relations_follow_the_geometry() -> None:
    left, right = [(10.0, 100.0, 40.0, 130.0)], [(200.0, 100.0, 240.0, 130.0)]
    assert "left" in relations(left, right, 320, 256) and "right" not in relations(left, right, 320, 256)
    assert "right" in relations(right, left, 320, 256)
    kite, dog = [(100.0, 10.0, 140.0, 50.0)], [(110.0, 150.0, 150.0, 190.0)]
    assert "above" in relations(kite, dog, 320, 256) and "below" in relations(dog, kite, 320, 256)
    off_to_the_side = [(250.0, 150.0, 290.0, 190.0)]
    assert "above" not in relations(kite, off_to_the_side, 320, 256)
    touching = [(141.0, 10.0, 170.0, 50.0)]
    assert "near" in relations(kite, touching, 320, 256) and "near" not in relations(kite, dog, 320, 256)


def test_manifest_sprites_and_licence() -> None:
    manifest = load_manifest()
    assert len(manifest) >= 40
    assert len(STUFF) >= 5
    words: list[str] = []
    for cat in manifest.values():
        with Image.open(SPRITE_DIR / cat.file) as im:
            assert im.mode == "RGBA" and max(im.size) == 96
        assert cat.place in ("ground", "sky", "water")
        assert cat.natural_colour is None or cat.natural_colour in COLOURS
        assert cat.recolourable == (cat.recolour is not None)
        words += [w for pair in cat.words for w in set(pair)]
    assert all(re.fullmatch(r"[a-z]+", w) for w in words)
    assert len(words) == len(set(words)), "a caption word must name one category"
    assert not set(words) & set(stuff_vocabulary())
    assert sum(c.recolourable for c in manifest.values()) >= 10
    assert "SIL OPEN FONT LICENSE" in (SPRITE_DIR / "LICENSE-OFL.txt").read_text(encoding="utf-8")


def test_recolouring_paints_the_named_colour() -> None:
    for colour in ("red", "green", "blue", "yellow"):
        rgba = np.asarray(coloured_sprite("balloon", colour), dtype=np.float32)
        body = rgba[rgba[..., 3] > 200][:, :3]
        target = np.asarray(COLOURS[colour], dtype=np.float32)
        distances = {name: np.linalg.norm(np.median(body, axis=0) - np.asarray(rgb)) for name, rgb in COLOURS.items()}
        assert min(distances, key=distances.get) == colour, (colour, np.median(body, axis=0), target)


def _check_world(out: Path, counts: dict[str, int]) -> None:
    """The writer's layout: images, annotations and five caption lines per image, all in the same order."""
    for split, n in counts.items():
        ann = json.loads((out / f"{split}_annotations.json").read_text(encoding="utf-8"))
        caps = (out / f"{split}_caps.txt").read_text(encoding="utf-8").splitlines()
        assert len(ann["images"]) == n and len(caps) == 5 * n
        for k, line in enumerate(caps):
            record = ann["images"][k // 5]
            assert record["captions"][k % 5]["text"] == line
        for i, record in enumerate(ann["images"]):
            assert record["id"] == f"{split}_{i:06d}"
            path = out / record["file_name"]
            assert path.parent == out / "images" / split and path.stem == record["id"]
            assert path.suffix == (".jpg" if split == "train" else ".png")
            with Image.open(path) as im:
                assert im.size == (record["width"], record["height"])
            assert {o["kind"] for o in record["objects"]} == {"object", "stuff"}
            assert all(set(w) == {"word", "type", "boxes"} for c in record["captions"] for w in c["words"])
    assert json.loads((out / "world.json").read_text(encoding="utf-8"))["images"] == counts


def test_write_world_layout_and_exact_test_pixels(tmp_path: Path) -> None:
    counts = {"train": 3, "dev": 1, "test": 2}
    summary = write_world(tmp_path, counts["train"], counts["dev"], counts["test"], seed=5, workers=1)
    assert summary["images"] == counts and summary["images_per_second"] > 0
    _check_world(tmp_path, counts)
    scene = generate_scene(scene_seed(5, "test", 1))
    with Image.open(tmp_path / "images" / "test" / "test_000001.png") as im:
        assert np.array_equal(np.asarray(im), scene.image)
    ann = json.loads((tmp_path / "test_annotations.json").read_text(encoding="utf-8"))
    assert [c["text"] for c in ann["images"][1]["captions"]] == [c.text for c in scene.captions]


def test_write_world_in_worker_processes_matches_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_world(tmp_path / "serial", 0, 2, 2, seed=9, workers=1)
    monkeypatch.setattr(world_module, "PARALLEL_MIN_IMAGES", 1)
    # spawned workers re-run the parent's __main__; after an AppTest in this process that is app.py (which
    # loads the whole bundled gallery), so give the pool a clean one, as a real command line would
    import types
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    write_world(tmp_path / "pool", 0, 2, 2, seed=9, workers=2)
    for name in ("dev_caps.txt", "test_caps.txt", "images/test/test_000001.png", "images/dev/dev_000000.png"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "pool" / name).read_bytes()


def test_cli_writes_a_world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--out", str(tmp_path), "--train", "1", "--test", "1", "--seed", "2"]) == 0
    assert "images/s" in capsys.readouterr().out
    _check_world(tmp_path, {"train": 1, "dev": 0, "test": 1})


@pytest.mark.parametrize("args", [["--train", "-1"], ["--seed", "-3"], ["--size", "16x16", "--test", "1"]])
def test_cli_bad_argument_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert cli_main(["--out", str(tmp_path)] + args) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_cli_unwritable_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cli_main(["--out", str(blocker / "world"), "--test", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_cli_malformed_argument_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["--out", "x", "--train", "many"])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
