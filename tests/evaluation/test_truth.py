"""The truth check: claims of generated captions, caption_holds on hand-made scenes, the truth matrix, annotate."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from scan_viz.errors import ScanVizError
from scan_viz.evaluation.truth import ATTRIBUTES, SceneFacts, caption_holds, holds, truth_matrix
from scan_viz.gallery.annotate import main
from scan_viz.scenes import generate_scene, write_world
from scan_viz.scenes.claims import claims_for

SEEDS = range(150)


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(seed) for seed in SEEDS]


def test_every_generated_caption_is_true_of_its_own_scene(scenes):
    n = 0
    for scene in scenes:
        facts = SceneFacts(scene.objects, (scene.width, scene.height))
        for caption in scene.captions:
            verdict = caption_holds(caption.claims, facts)
            assert verdict.holds, (scene.seed, caption.text, verdict.reasons)
            n += 1
    assert n == 5 * len(SEEDS)


def test_claims_read_back_from_json_word_links_equal_the_generators(scenes):
    kinds, by_text = set(), {}
    for scene in scenes:
        record = scene.to_json("x", "x.png")
        for caption, stored in zip(scene.captions, record["captions"]):
            assert stored["claims"] == caption.claims
            # what `annotate` sees: the JSON words, without the grammar's note of what a stuff phrase is said of
            assert claims_for(stored["words"], record["objects"]) == caption.claims, caption.text
            for w in caption.words:
                said_above = any(w.boxes[0] in r.boxes for r in caption.words if r.type == "relation") \
                    if w.type == "stuff" else False
                if w.type == "stuff" and not said_above:
                    assert w.subjects, f"the grammar left {w.word!r} in {caption.text!r} unattached"
            assert by_text.setdefault(caption.text, caption.claims) == caption.claims  # claims follow from words
            kinds.update(k for g in caption.claims["groups"] for k in g)
            kinds.update(r["relation"] for r in caption.claims["relations"])
    # the sample exercises every kind of claim the grammar makes
    assert kinds >= {"count", "colour", "size", "horizontal", "vertical", "stuff", "above",
                     "left", "right", "above", "below", "near"}


def test_claims_spell_out_the_caption():
    scene = generate_scene(3)
    texts = {c.text: c.claims for c in scene.captions}
    assert texts["two kites above the road"] == {"groups": [{"category": "kite", "count": 2, "above": "road"}],
                                                 "relations": []}
    assert texts["a strawberry to the left of one backpack on the street"] == {
        "groups": [{"category": "strawberry", "count": 1}, {"category": "backpack", "count": 1, "stuff": "road"}],
        "relations": [{"subject": [0], "relation": "left", "object": 1}]}


# A hand-made scene: sky over grass | sand; two small blue birds at the top left, above a big dog on the grass.
SKY, GRASS, SAND = 0, 1, 2
BASE = [
    {"category": "sky", "box": [0, 0, 320, 100], "kind": "stuff"},
    {"category": "grass", "box": [0, 100, 160, 256], "kind": "stuff"},
    {"category": "sand", "box": [160, 100, 320, 256], "kind": "stuff"},
    {"category": "bird", "box": [10, 10, 50, 40], "kind": "object", "colour": "blue", "size": "small", "group": 0,
     "stuff": SKY},
    {"category": "bird", "box": [55, 15, 95, 45], "kind": "object", "colour": "blue", "size": "small", "group": 0,
     "stuff": SKY},
    {"category": "dog", "box": [20, 140, 110, 230], "kind": "object", "size": "big", "group": 1, "stuff": GRASS},
]
BIRDS, DOG = (3, 4), 5
CLAIMS = {"groups": [{"category": "bird", "count": 2, "colour": "blue", "size": "small", "horizontal": "left",
                      "vertical": "top", "stuff": "sky", "above": "grass"},
                     {"category": "dog", "count": 1, "size": "big", "stuff": "grass"}],
          "relations": [{"subject": [0], "relation": "above", "object": 1}]}


def _scene(**changes):
    """BASE with ``changes``: {object index: {field: value}}, or ``add=[object]``."""
    objects = copy.deepcopy(BASE) + list(changes.pop("add", []))
    for index, fields in changes.get("edit", {}).items():
        objects[index].update(fields)
    return objects


BROKEN = {
    "count": _scene(add=[{"category": "bird", "box": [15, 50, 45, 75], "kind": "object", "colour": "blue",
                          "size": "small", "group": 0, "stuff": SKY}]),
    "category": _scene(edit={DOG: {"category": "cat"}}),
    "colour": _scene(edit={i: {"colour": "red"} for i in BIRDS}),
    "size": _scene(edit={DOG: {"size": "medium"}}),
    "position": _scene(edit={BIRDS[0]: {"box": [120, 10, 160, 40]}, BIRDS[1]: {"box": [165, 15, 200, 45]},
                             DOG: {"box": [110, 140, 200, 230]}}),
    "relation": _scene(edit={DOG: {"box": [220, 140, 310, 230], "stuff": GRASS}}),
    "stuff": _scene(edit={DOG: {"stuff": SAND}}),
}


def test_the_hand_made_scene_satisfies_every_claim():
    verdict = caption_holds(CLAIMS, BASE)
    assert verdict.holds and verdict.reasons == [] and holds(CLAIMS, BASE)


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_a_scene_broken_on_one_attribute_fails_on_exactly_that_attribute(attribute):
    verdict = caption_holds(CLAIMS, BROKEN[attribute])
    assert verdict.attributes == (attribute,), verdict.reasons
    assert not verdict.holds and not holds(CLAIMS, BROKEN[attribute])
    assert all(reason.startswith(f"{attribute}: ") for reason in verdict.reasons)


def test_reasons_say_what_the_caption_says_and_what_the_image_has():
    reasons = {a: caption_holds(CLAIMS, BROKEN[a]).reasons for a in ATTRIBUTES}
    assert reasons["count"] == ["count: caption says two birds, image has three"]
    assert reasons["category"] == ["category: caption says one dog, image has no dogs"]
    assert reasons["colour"] == ["colour: caption says blue birds, image has red birds"]
    assert reasons["size"] == ["size: caption says big dog, image has medium dog"]
    assert reasons["position"] == ["position: caption says the birds are on the left and at the top, image has them "
                                   "centred left to right and at the top"]
    assert reasons["relation"] == ["relation: caption says the birds are above the dog, image has them to the left "
                                   "of it"]
    assert reasons["stuff"] == ["stuff: caption says the dog is on the grass, image has it on the sand"]


def test_above_a_stuff_region_is_a_stuff_claim():
    claims = {"groups": [{"category": "bird", "count": 2, "above": "sand"}], "relations": []}
    verdict = caption_holds(claims, BASE)
    assert verdict.attributes == ("stuff",)
    assert verdict.reasons == ["stuff: caption says the birds are above the sand, image has them above the grass"]


def test_several_broken_claims_are_all_listed():
    objects = _scene(edit={DOG: {"size": "small", "stuff": SAND}, BIRDS[0]: {"colour": "red"},
                           BIRDS[1]: {"colour": "red"}})
    assert caption_holds(CLAIMS, objects).attributes == ("colour", "size", "stuff")


def test_malformed_claims_are_a_user_error():
    with pytest.raises(ScanVizError, match="claims are malformed"):
        caption_holds({"groups": [{"category": "bird"}]}, BASE)
    with pytest.raises(ScanVizError, match="claims are malformed"):
        caption_holds({"groups": [], "relations": [{"subject": [0], "relation": "left", "object": 1}]}, BASE)


def test_truth_matrix_equals_the_pair_by_pair_check(scenes):
    records = [s.to_json(f"i{k}", "x.png") for k, s in enumerate(scenes[:40])]
    claims = [c["claims"] for r in records for c in r["captions"]]
    truth = truth_matrix(claims, records)
    reference = np.array([[caption_holds(c, r).holds for r in records] for c in claims])
    np.testing.assert_array_equal(truth, reference)
    own = np.repeat(np.arange(len(records)), 5)
    assert truth[np.arange(len(claims)), own].all()
    assert truth.sum() > len(claims)  # some captions are true of other images too


def _world_annotations(tmp_path: Path) -> tuple[Path, dict]:
    write_world(tmp_path / "w", 0, 0, 6, seed=1, workers=1)
    path = tmp_path / "w" / "test_annotations.json"
    original = json.loads(path.read_text())
    stripped = copy.deepcopy(original)
    for record in stripped["images"]:
        for caption in record["captions"]:
            del caption["claims"]
    path.write_text(json.dumps(stripped, separators=(",", ":")))
    return path, original


def test_annotate_adds_the_generators_claims_in_place(tmp_path, capsys):
    path, original = _world_annotations(tmp_path)
    assert main(["annotate", "--annotations", str(path)]) == 0
    assert json.loads(path.read_text()) == original
    assert path.read_bytes() == json.dumps(original, separators=(",", ":")).encode()
    out = capsys.readouterr().out
    assert out.startswith("added claims to 30 captions of 6 images") and "true of" in out


def test_annotate_refuses_captions_that_are_not_the_generators(tmp_path, capsys):
    path, _ = _world_annotations(tmp_path)
    data = json.loads(path.read_text())
    caption = next(c for r in data["images"] for c in r["captions"] if any(w["type"] == "colour" for w in c["words"]))
    colour = next(w for w in caption["words"] if w["type"] == "colour")
    colour["word"] = "purple" if colour["word"] != "purple" else "pink"  # a link that is no longer true
    path.write_text(json.dumps(data))
    before = path.read_bytes()
    assert main(["annotate", "--annotations", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: caption ") and "is not true of its own image" in err and "colour: " in err
    assert path.read_bytes() == before  # nothing written
    caption.pop("words")
    path.write_text(json.dumps(data))
    assert main(["annotate", "--annotations", str(path)]) == 2
    assert "has no word links" in capsys.readouterr().err


def test_annotate_on_a_missing_or_foreign_file_exits_2(tmp_path, capsys):
    assert main(["annotate", "--gallery", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("[1, 2]")
    assert main(["annotate", "--annotations", str(tmp_path / "x.json")]) == 2
    assert "no image records" in capsys.readouterr().err


# ----------------------------------------------------------------------------- on a gallery: `scan-viz eval`


def test_eval_gallery_reports_truth_aware_recall_mistakes_and_stuff_words(tmp_path, capsys):
    from app_fixture import app_fixture
    from scan_viz.cli import main as cli_main
    from scan_viz.evaluation.metrics import evaluate_truth
    from scan_viz.gallery import load_gallery
    from scan_viz.model import load_model

    bundle = app_fixture()
    out = tmp_path / "eval.json"
    assert cli_main(["eval", "--gallery", str(bundle.gallery), "--model", str(bundle.model),
                     "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())

    gallery = load_gallery(bundle.gallery)
    sims = load_model(str(bundle.model)).similarity(gallery.regions.features, gallery.captions,
                                                    region_lengths=gallery.regions.n_boxes)
    truth = np.array([[caption_holds(c, r).holds for r in gallery.records] for c in gallery.caption_claims])
    assert truth[np.arange(len(truth)), gallery.caption_image].all()
    want = evaluate_truth(sims, truth).to_dict()
    assert result["truth"]["rsum"] == pytest.approx(want["rsum"])
    assert result["truth"]["t2i"] == pytest.approx(want["t2i"])
    assert result["rsum"] <= result["truth"]["rsum"]

    top = sims.argmax(axis=0)
    mistakes = [caption_holds(gallery.caption_claims[k], gallery.records[top[k]]) for k in range(len(truth))
                if not truth[k, top[k]]]
    assert result["truth"]["t2i_mistakes"]["n"] == len(mistakes) > 0
    for attribute in ATTRIBUTES:
        share = 100 * sum(attribute in v.attributes for v in mistakes) / len(mistakes)
        assert result["truth"]["t2i_mistakes"]["attributes"][attribute] == pytest.approx(share)

    stuff_words = {w["word"] for c in gallery.caption_words for w in c if w["type"] == "stuff"}
    assert set(result["stuff_words"]) == stuff_words
    assert sum(r["count"] for r in result["stuff_words"].values()) == result["counts"]["stuff"]
    assert f"rsum: {want['rsum']:.1f}" in printed and "t2i top-1 mistakes" in printed
    assert all(f"stuff {w:<7}" in printed for w in stuff_words)
