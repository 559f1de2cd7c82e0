"""scan_viz.pipeline against direct re-computations: `eval --gallery` = evaluate_gallery, padded regions take no
part in any score (similarity, retrieval, evaluation, pointing), ablation = scoring with the part removed."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from scan_viz.cli import main
from scan_viz.evaluation.metrics import evaluate
from scan_viz.evaluation.pointing import PointingItem, evaluate_pointing
from scan_viz.gallery import Gallery, load_gallery
from scan_viz.model import load_model
from scan_viz.pipeline import GalleryIndex, ablate, compare_heads, evaluate_gallery, explain, gallery_regions
from scan_viz.regions.store import RegionStore
from scan_viz.text import tokenize
from scan_viz.types import Regions

torch.set_num_threads(1)
#: Real regions per image of the padded gallery (the fixture's images have 36); the rest become padding.
REAL_REGIONS = (36, 20, 7, 36, 1, 30, 12, 36, 3, 25, 36, 18)


@pytest.fixture(scope="module")
def model(bundle):
    return load_model(bundle.model)


@pytest.fixture(scope="module")
def gallery(bundle):
    return load_gallery(bundle.gallery)


@pytest.fixture(scope="module")
def padded(gallery) -> Gallery:
    """The fixture gallery as a varying-count store: image i keeps REAL_REGIONS[i] regions, the rest is padding
    (zero boxes, as the loaders write, and features of garbage, which must not matter)."""
    store = gallery.regions
    assert len(store) == len(REAL_REGIONS) and store.n_regions == 36
    features, boxes = np.array(store.features, dtype=np.float32), np.array(store.boxes, dtype=np.float32)
    for i, n in enumerate(REAL_REGIONS):
        features[i, n:] = 5.0
        boxes[i, n:] = 0.0
    regions = RegionStore(ids=list(store.ids), features=features, boxes=boxes, image_sizes=store.image_sizes,
                          n_boxes=np.array(REAL_REGIONS))
    return Gallery(gallery.root, gallery.name, gallery.records, regions, gallery.region_labels)


def direct_scores(model, gallery: Gallery, captions: list[str]) -> np.ndarray:
    """(n_images, n_captions): each image scored alone on its real regions only."""
    return np.concatenate([model.similarity(gallery.regions.features[i:i + 1, :n], captions)
                           for i, n in enumerate(gallery.regions.n_boxes)])


def test_eval_gallery_json_equals_the_library(bundle, model, gallery, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--gallery", str(bundle.gallery), "--model", str(bundle.model), "--json", str(out)]) == 0
    from scan_viz.heads import own_head

    got = json.loads(out.read_text(encoding="utf-8"))
    # the CLI names the model's own head with its direction, as the app does
    expected = json.loads(json.dumps(evaluate_gallery(model, gallery, head=own_head(model.config))))
    assert got == expected
    assert {"i2t", "t2i", "rsum", "pointing_accuracy", "pointing", "baselines"} <= set(got)
    printed = capsys.readouterr().out
    assert f"rsum: {expected['rsum']:.1f}" in printed
    assert f"pointing accuracy: {expected['pointing_accuracy']:.1f}%" in printed


def test_padded_regions_take_no_part_in_similarity_or_retrieval(model, padded):
    captions = padded.captions
    direct = direct_scores(model, padded, captions)
    sims = model.similarity(padded.regions.features, captions, region_lengths=padded.regions.n_boxes)
    np.testing.assert_allclose(sims, direct, atol=1e-5)

    index = GalleryIndex.build(model, padded)
    for c in (0, 17, len(captions) - 1):
        found = dict(index.search_images(captions[c], k=len(padded)))
        np.testing.assert_allclose([found[image_id] for image_id in padded.ids], direct[:, c], atol=1e-5)
    for i in (1, 4, 8):
        found = dict(index.search_captions(padded.ids[i], k=len(captions)))
        np.testing.assert_allclose([found[c] for c in range(len(captions))], direct[i], atol=1e-5)


def test_padded_regions_take_no_part_in_evaluation_or_pointing(model, padded):
    result = evaluate_gallery(model, padded, details=True)
    direct = direct_scores(model, padded, padded.captions)
    np.testing.assert_allclose(result["sims"], direct, atol=1e-5)
    expected = evaluate(direct, padded.caption_image).to_dict()
    for direction in ("i2t", "t2i"):
        assert result[direction] == pytest.approx(expected[direction])
    assert result["rsum"] == pytest.approx(expected["rsum"])

    # pointing on each image's real regions only, one caption at a time
    items = []
    for i, record in enumerate(padded.records):
        regions = gallery_regions(padded, record["id"])
        assert len(regions) == REAL_REGIONS[i]
        for caption in record["captions"]:
            grounded = [(t, w) for t, w in enumerate(caption["words"]) if w["boxes"]]
            if not grounded:
                continue
            attention = explain(model, regions, caption["text"]).attention  # (n_words, n_real_regions)
            items.append(PointingItem(
                word_attention=attention[[t + 1 for t, _ in grounded]], region_boxes=regions.boxes,
                word_types=[w["type"] for _, w in grounded],
                gt_boxes=[np.array([record["objects"][b]["box"] for b in w["boxes"]], float) for _, w in grounded]))
    pointing = evaluate_pointing(items).to_dict()
    assert result["pointing_accuracy"] == pytest.approx(pointing["pointing_accuracy"])
    assert result["pointing"] == pytest.approx(pointing["pointing"])
    for baseline in ("random", "largest"):
        assert result["baselines"][baseline] == pytest.approx(pointing["baselines"][baseline])


def test_ablation_equals_scoring_without_the_word_or_region(bundle, model, gallery):
    image_id = bundle.image_ids[3]
    regions = gallery_regions(gallery, image_id)
    text = bundle.captions[image_id][1]
    words = [t.text for t in tokenize(text)]
    assert words == text.split()  # plain words: dropping one from the text drops exactly that token
    result = ablate(model, regions, text)
    full = explain(model, regions, text).score
    assert result["score"] == pytest.approx(full, abs=1e-6)

    assert [token for token, _ in result["words"]] == words
    for t, (_, delta) in enumerate(result["words"]):
        without = " ".join(words[:t] + words[t + 1:])
        assert delta == pytest.approx(explain(model, regions, without).score - full, abs=1e-5), words[t]

    keep = np.ones(len(regions), bool)
    assert [r for r, _ in result["regions"]] == list(range(len(regions)))
    for r, delta in result["regions"]:
        keep[:] = True
        keep[r] = False
        fewer = Regions(regions.features[keep], regions.boxes[keep])
        assert delta == pytest.approx(explain(model, fewer, text).score - full, abs=1e-5), r


def test_ablation_in_the_other_direction_too(bundle, model, gallery):
    image_id = bundle.image_ids[5]
    regions = gallery_regions(gallery, image_id)
    text = bundle.captions[image_id][0]
    words = text.split()
    head = model.head("scan_i2t")
    result = ablate(model, regions, text, head)
    full = explain(model, regions, text, head).score
    for t, (_, delta) in enumerate(result["words"]):
        without = " ".join(words[:t] + words[t + 1:])
        assert delta == pytest.approx(explain(model, regions, without, head).score - full, abs=1e-5)
    fewer = dataclasses.replace(regions, features=regions.features[1:], boxes=regions.boxes[1:])
    assert result["regions"][0][1] == pytest.approx(explain(model, fewer, text, head).score - full, abs=1e-5)


def test_compare_heads_scores_and_ranks_each_head_on_the_gallery(model, padded):
    """Each head's alignment is the one explain() gives, and its rank is the image's place in that head's own
    retrieval of the sentence over the whole (padded) gallery."""
    index = GalleryIndex.build(model, padded)
    image_id = padded.ids[2]  # 7 real regions of 36
    text = padded.captions[int(padded.caption_indices_of(image_id)[0])]
    results = compare_heads(index, image_id, text, ["scan_t2i", "chan", "caan"])
    assert [r.head.name for r in results] == ["scan_t2i", "chan", "caan"]
    scores_by_head = []
    for r in results:
        direct = direct_scores(model, padded, [text]) if r.head.name == "scan_t2i" else np.concatenate([
            model.similarity(padded.regions.features[i:i + 1, :n], [text], head=r.head)
            for i, n in enumerate(REAL_REGIONS)])[:, 0:1]
        column = direct[:, 0]
        assert r.alignment.score == pytest.approx(float(column[2]), abs=1e-5)
        assert r.alignment.attention.shape[1] == 7  # the image's real regions only
        assert r.rank == 1 + int(np.sum(column > column[2])) and r.n_images == len(padded)
        ranked = [image for image, _ in index.search_images(text, k=len(padded), head=r.head)]
        assert ranked.index(image_id) + 1 == r.rank
        scores_by_head.append(r.alignment.score)
    assert len(set(np.round(scores_by_head, 6))) == 3  # three different heads, three different scores
