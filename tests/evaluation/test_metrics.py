"""Retrieval metrics against a plain per-query transcription of the official evaluation loops."""
from __future__ import annotations

import json

import numpy as np
import pytest

from scan_viz.errors import ScanVizError
from scan_viz.evaluation.metrics import (evaluate, evaluate_fold5, evaluate_truth, fold5_average, fold_slices,
                                         i2t_ranks, i2t_truth_ranks, recall_metrics, t2i_ranks, t2i_truth_ranks)


def brute_i2t(sims: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """The official i2t loop: sort each image's row descending, keep the best position of its captions."""
    ranks = np.zeros(sims.shape[0], dtype=np.int64)
    for i in range(sims.shape[0]):
        order = np.argsort(sims[i])[::-1]
        ranks[i] = min(np.where(order == j)[0][0] for j in np.flatnonzero(caption_image == i))
    return ranks


def brute_t2i(sims: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """The official t2i loop: sort each caption's column descending, find its image."""
    ranks = np.zeros(sims.shape[1], dtype=np.int64)
    for k in range(sims.shape[1]):
        order = np.argsort(sims[:, k])[::-1]
        ranks[k] = np.where(order == caption_image[k])[0][0]
    return ranks


def brute_metrics(ranks: np.ndarray) -> dict:
    n = len(ranks)
    return {
        "r1": 100.0 * len(np.where(ranks < 1)[0]) / n,
        "r5": 100.0 * len(np.where(ranks < 5)[0]) / n,
        "r10": 100.0 * len(np.where(ranks < 10)[0]) / n,
        "medr": np.floor(np.median(ranks)) + 1,
        "meanr": ranks.mean() + 1,
    }


def brute_evaluate(sims: np.ndarray, caption_image: np.ndarray) -> dict:
    i2t, t2i = brute_metrics(brute_i2t(sims, caption_image)), brute_metrics(brute_t2i(sims, caption_image))
    return {"i2t": i2t, "t2i": t2i, "rsum": sum(i2t[k] + t2i[k] for k in ("r1", "r5", "r10"))}


def assert_same_metrics(got: dict, want: dict) -> None:
    for direction in ("i2t", "t2i"):
        for key, value in want[direction].items():
            assert got[direction][key] == pytest.approx(value), (direction, key)
    assert got["rsum"] == pytest.approx(want["rsum"])


def noisy_sims(rng: np.random.Generator, n_images: int, caption_image: np.ndarray) -> np.ndarray:
    """Tie-free scores where matching pairs score higher on average, so recalls are neither 0 nor 100."""
    sims = rng.standard_normal((n_images, len(caption_image)))
    sims[caption_image, np.arange(len(caption_image))] += 1.5
    return sims  # float64: float32 normals collide often enough to create ties


def test_ranks_match_official_loops_on_random_data():
    rng = np.random.default_rng(0)
    caption_image = np.arange(200) // 5
    sims = noisy_sims(rng, 40, caption_image)
    assert len(np.unique(sims)) == sims.size  # tie-free, so the argsort order is unambiguous
    np.testing.assert_array_equal(i2t_ranks(sims), brute_i2t(sims, caption_image))
    np.testing.assert_array_equal(t2i_ranks(sims), brute_t2i(sims, caption_image))
    result = evaluate(sims)
    assert_same_metrics(result.to_dict(), brute_evaluate(sims, caption_image))
    assert 0 < result.i2t.r1 < 100 and 0 < result.t2i.r1 < 100


def test_arbitrary_caption_to_image_map():
    rng = np.random.default_rng(1)
    caption_image = rng.permutation(np.repeat(np.arange(12), [1, 2, 3, 5, 7, 1, 2, 4, 3, 1, 6, 2]))
    sims = noisy_sims(rng, 12, caption_image)
    np.testing.assert_array_equal(i2t_ranks(sims, caption_image), brute_i2t(sims, caption_image))
    np.testing.assert_array_equal(t2i_ranks(sims, caption_image), brute_t2i(sims, caption_image))
    assert_same_metrics(evaluate(sims, caption_image).to_dict(), brute_evaluate(sims, caption_image))


def test_blocks_give_the_same_ranks_as_the_full_matrix():
    rng = np.random.default_rng(2)
    caption_image = np.arange(150) // 5
    sims = noisy_sims(rng, 30, caption_image)
    t2i = np.concatenate([t2i_ranks(sims[:, c:c + 40], caption_image[c:c + 40]) for c in range(0, 150, 40)])
    i2t = np.concatenate([i2t_ranks(sims[r:r + 7], caption_image, image_offset=r) for r in range(0, 30, 7)])
    np.testing.assert_array_equal(t2i, t2i_ranks(sims))
    np.testing.assert_array_equal(i2t, i2t_ranks(sims))


def test_identity_like_scores_are_perfect():
    sims = np.repeat(np.eye(4, dtype=np.float32), 5, axis=1)
    result = evaluate(sims).to_dict()
    for direction in ("i2t", "t2i"):
        assert result[direction] == {"r1": 100.0, "r5": 100.0, "r10": 100.0, "medr": 1.0, "meanr": 1.0}
    assert result["rsum"] == 600.0
    assert (result["n_images"], result["n_captions"]) == (4, 20)
    json.dumps(result)  # plain Python types only
    assert all(type(v) is float for d in ("i2t", "t2i") for v in result[d].values())


def test_known_small_example():
    # 2 images, 10 captions; caption 0's image is ranked second, everything else first.
    sims = np.repeat(np.eye(2, dtype=np.float32), 5, axis=1)
    sims[1, 0] = 2.0
    np.testing.assert_array_equal(t2i_ranks(sims), [1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    # image 1's row: caption 0 (2.0) beats its own captions (1.0), so its best rank is 1.
    np.testing.assert_array_equal(i2t_ranks(sims), [0, 1])


def test_ties_never_push_the_ground_truth_down():
    sims = np.zeros((2, 10), dtype=np.float32)
    np.testing.assert_array_equal(t2i_ranks(sims), np.zeros(10))
    np.testing.assert_array_equal(i2t_ranks(sims), np.zeros(2))


def test_recall_metrics_definitions():
    ranks = np.array([0, 0, 3, 4, 9, 12, 30, 1])
    metrics = recall_metrics(ranks)
    assert metrics.to_dict() == pytest.approx({"r1": 25.0, "r5": 62.5, "r10": 75.0, "medr": 4.0, "meanr": 8.375})


def test_fold_slices_cut_coco_5k_like_the_official_script():
    folds = fold_slices(5000)
    assert folds[0] == (slice(0, 1000), slice(0, 5000))
    assert folds[4] == (slice(4000, 5000), slice(20000, 25000))
    with pytest.raises(ScanVizError):
        fold_slices(4999)


def test_fold5_average_matches_per_fold_brute_force():
    rng = np.random.default_rng(3)
    n_images = 50
    caption_image = np.arange(5 * n_images) // 5
    sims = noisy_sims(rng, n_images, caption_image)
    want = []
    for f in range(5):
        block = sims[f * 10:(f + 1) * 10, f * 50:(f + 1) * 50]
        want.append(brute_evaluate(block, np.arange(50) // 5))
    averaged = evaluate_fold5(lambda images, captions: sims[images, captions], n_images).to_dict()
    for direction in ("i2t", "t2i"):
        for key in ("r1", "r5", "r10", "medr", "meanr"):
            assert averaged[direction][key] == pytest.approx(np.mean([w[direction][key] for w in want]))
    assert averaged["rsum"] == pytest.approx(np.mean([w["rsum"] for w in want]))
    assert (averaged["n_folds"], averaged["n_images"], averaged["n_captions"]) == (5, 10, 50)
    per_fold = [evaluate(sims[i, c]) for i, c in fold_slices(n_images)]
    assert fold5_average(per_fold).rsum == pytest.approx(averaged["rsum"])
    json.dumps(averaged)


@pytest.mark.parametrize(
    "call",
    [
        lambda: evaluate(np.zeros((3, 10))),  # 10 captions cannot be k // 5 of 3 images
        lambda: evaluate(np.zeros(5)),
        lambda: t2i_ranks(np.zeros((2, 3)), np.array([0, 1, 2])),  # image 2 is not a row
        lambda: i2t_ranks(np.zeros((3, 3)), np.array([0, 0, 1])),  # image 2 has no caption
        lambda: t2i_ranks(np.zeros((2, 3)), np.array([0.0, 1.0, 1.0])),
        lambda: recall_metrics(np.array([])),
        lambda: fold5_average([]),
        lambda: t2i_truth_ranks(np.zeros((2, 3)), np.ones((2, 3), bool)),  # truth not (n_captions, n_images)
        lambda: i2t_truth_ranks(np.zeros((2, 3)), np.ones((3, 2))),  # not bool
        lambda: t2i_truth_ranks(np.zeros((2, 3)), np.array([[1, 0], [0, 1], [0, 0]], bool)),  # caption 2: no image
    ],
)
def test_bad_inputs_raise_scan_viz_error(call):
    with pytest.raises(ScanVizError):
        call()


def brute_truth_ranks(sims: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: walk the ranking best first until a candidate the pair is true of (t2i, i2t)."""
    t2i = np.array([next(p for p, i in enumerate(np.argsort(sims[:, k])[::-1]) if truth[k, i])
                    for k in range(sims.shape[1])])
    i2t = np.array([next(p for p, k in enumerate(np.argsort(sims[i])[::-1]) if truth[k, i])
                    for i in range(sims.shape[0])])
    return t2i, i2t


def test_truth_aware_ranks_match_a_plain_loop():
    rng = np.random.default_rng(3)
    caption_image = np.repeat(np.arange(40), 5)
    sims = noisy_sims(rng, 40, caption_image)
    truth = rng.random((200, 40)) < 0.08
    truth[np.arange(200), caption_image] = True
    t2i, i2t = brute_truth_ranks(sims, truth)
    np.testing.assert_array_equal(t2i_truth_ranks(sims, truth), t2i)
    np.testing.assert_array_equal(i2t_truth_ranks(sims, truth), i2t)
    result = evaluate_truth(sims, truth).to_dict()
    assert_same_metrics(result, {"i2t": brute_metrics(i2t), "t2i": brute_metrics(t2i),
                                 "rsum": sum(brute_metrics(i2t)[k] + brute_metrics(t2i)[k] for k in ("r1", "r5", "r10"))})
    strict = evaluate(sims, caption_image)
    assert result["rsum"] > strict.rsum  # more pairs count as hits


def test_truth_of_the_ground_truth_pairs_only_is_strict_recall():
    rng = np.random.default_rng(4)
    caption_image = np.repeat(np.arange(30), 5)
    sims = noisy_sims(rng, 30, caption_image)
    truth = np.zeros((150, 30), bool)
    truth[np.arange(150), caption_image] = True
    np.testing.assert_array_equal(t2i_truth_ranks(sims, truth), t2i_ranks(sims, caption_image))
    np.testing.assert_array_equal(i2t_truth_ranks(sims, truth), i2t_ranks(sims, caption_image))
