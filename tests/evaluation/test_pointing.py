import numpy as np
import pytest

from scan_viz.evaluation.pointing import PointingItem, box_iou, evaluate_pointing


def test_box_iou_hand_cases():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    iou = box_iou(a, b)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0])
    np.testing.assert_allclose(iou[1], [0.0, 0.0, 0.0])  # a degenerate box never matches


def test_hits_baselines_and_types():
    regions = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 100, 100], [51, 50, 61, 60]], float)
    attention = np.array([[0.7, 0.1, 0.1, 0.1],   # "dog" -> region 0: hit (gt is region 0's box)
                          [0.1, 0.1, 0.8, 0.0],   # "red" -> region 2: miss (gt is region 1's box)
                          [0.0, 0.5, 0.0, 0.5]])  # "cat" -> tie, argmax takes region 1: hit
    gt = [np.array([[0, 0, 10, 10]]), np.array([[50, 50, 60, 60]]), np.array([[50, 50, 60, 60]])]
    res = evaluate_pointing([PointingItem(attention, regions, ["object", "colour", "object"], gt)])
    assert res.per_type == {"colour": 0.0, "object": 100.0}
    assert res.accuracy == pytest.approx(200 / 3)
    assert res.counts == {"colour": 1, "object": 2}
    # random: dog -> 1 of 4 regions hits; red and cat -> regions 1 and 3 hit (IoU 0.82) -> 2/4
    assert res.random["object"] == pytest.approx(100 * (0.25 + 0.5) / 2)
    assert res.random["overall"] == pytest.approx(100 * (0.25 + 0.5 + 0.5) / 3)
    # largest region (region 2) hits nothing
    assert res.largest["overall"] == 0.0


def test_words_without_boxes_are_skipped():
    regions = np.array([[0, 0, 10, 10]], float)
    res = evaluate_pointing([PointingItem(np.ones((2, 1)), regions, ["function", "object"],
                                          [np.zeros((0, 4)), np.array([[0, 0, 10, 10]])])])
    assert res.counts == {"object": 1} and res.accuracy == 100.0


def test_stuff_words_are_reported_one_by_one():
    regions = np.array([[0, 0, 100, 40], [0, 40, 100, 100], [10, 10, 30, 30]], float)
    sky, grass, bird = regions[0:1], regions[1:2], regions[2:3]
    item = PointingItem(np.array([[0.1, 0.1, 0.8],    # "sky" -> the bird: miss
                                  [0.1, 0.8, 0.1],    # "grass" -> grass: hit
                                  [0.8, 0.1, 0.1],    # "sky" -> sky: hit
                                  [0.1, 0.1, 0.8]]),  # "bird" -> bird: hit (an object, not in stuff_words)
                        regions, ["stuff", "stuff", "stuff", "object"], [sky, grass, sky, bird],
                        words=["sky", "grass", "sky", "bird"])
    res = evaluate_pointing([item])
    assert res.per_type["stuff"] == pytest.approx(200 / 3)
    # largest region: grass (6,000 px) -> hits "grass" only; random: 1 of 3 regions hits each word
    assert res.to_dict()["stuff_words"] == {
        "grass": {"accuracy": 100.0, "count": 1, "random": pytest.approx(100 / 3), "largest": 100.0},
        "sky": {"accuracy": 50.0, "count": 2, "random": pytest.approx(100 / 3), "largest": 0.0}}
    assert "stuff_words" not in evaluate_pointing([PointingItem(item.word_attention, regions, item.word_types,
                                                                item.gt_boxes)]).to_dict()


def test_items_without_words_or_boxes_are_skipped():
    regions = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float)
    empty = PointingItem(np.zeros((0, 2)), regions, [], [])
    no_box = PointingItem(np.array([[0.9, 0.1], [0.2, 0.8]]), regions, ["object", "colour"],
                          [np.zeros((0, 4)), np.array([[50, 50, 60, 60]])])
    res = evaluate_pointing([empty, no_box])
    assert res.counts == {"colour": 1} and res.per_type == {"colour": 100.0}


def test_to_dict_is_the_old_json():
    """The JSON keys, their order and values as evaluate_pointing's dict had them before the typed result."""
    regions = np.array([[0, 0, 100, 40], [0, 40, 100, 100], [10, 10, 30, 30]], float)
    item = PointingItem(np.array([[0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1]]), regions,
                        ["stuff", "object", "stuff"], [regions[0:1], regions[1:2], regions[0:1]],
                        words=["sky", "grass", "sky"])
    got = evaluate_pointing([item]).to_dict()
    # by hand: sky -> region 2 (miss), grass -> region 1 (hit), sky -> region 0 (hit); 1 of 3 regions hits each
    # word; the largest region (1) hits only grass
    want = {"pointing_accuracy": 100 * 2 / 3, "pointing": {"object": 100.0, "stuff": 50.0},
            "counts": {"object": 1, "stuff": 2},
            "baselines": {"random": {"object": 100 / 3, "stuff": 100 / 3, "overall": 100 / 3},
                          "largest": {"object": 100.0, "stuff": 0.0, "overall": 100 / 3}},
            "stuff_words": {"sky": {"accuracy": 50.0, "count": 2, "random": 100 / 3, "largest": 0.0}}}
    assert list(got) == list(want) and list(got["baselines"]["random"]) == list(want["baselines"]["random"])
    for key in ("pointing_accuracy", "pointing", "counts"):
        assert got[key] == pytest.approx(want[key]), key
    for baseline in ("random", "largest"):
        assert got["baselines"][baseline] == pytest.approx(want["baselines"][baseline])
    assert list(got["stuff_words"]) == ["sky"]
    assert got["stuff_words"]["sky"] == pytest.approx(want["stuff_words"]["sky"])
