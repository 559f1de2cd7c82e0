"""The one rank function and the typed results of scan_viz.evaluation.metrics, against plain restatements of the code they
replaced (the dict-building evaluate, the stage-1 curve's own rank, the re-ranker's stable sort)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from scan_viz.evaluation.metrics import (
    RECALL_KS,
    Recalls,
    RetrievalResult,
    answer_ranks,
    evaluate,
    evaluate_fold5,
    evaluate_truth,
    ranks_above,
)
from scan_viz.retrieval.search import rerank_ranks
from scan_viz.retrieval.stage1 import CURVE_KS, recall_curve


def old_recalls(ranks: np.ndarray) -> dict:
    """The dict recall_metrics returned before the typed result, restated."""
    out = {f"r{k}": float(100.0 * np.count_nonzero(ranks < k) / ranks.size) for k in (1, 5, 10)}
    out["medr"] = float(np.floor(np.median(ranks)) + 1)
    out["meanr"] = float(ranks.mean() + 1)
    return out


def old_evaluate(sims: np.ndarray, caption_image: np.ndarray) -> dict:
    """The dict evaluate returned before the typed result, restated with the official per-query loops."""
    t2i = np.array([np.count_nonzero(sims[:, k] > sims[caption_image[k], k]) for k in range(sims.shape[1])])
    i2t = np.array([np.count_nonzero(sims[i] > sims[i, caption_image == i].max()) for i in range(sims.shape[0])])
    result = {"i2t": old_recalls(i2t), "t2i": old_recalls(t2i)}
    result["rsum"] = float(sum(result[d][f"r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))
    result["n_images"], result["n_captions"] = sims.shape
    return result


def small_case(seed: int = 0, n_images: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    caption_image = np.arange(5 * n_images) // 5
    sims = rng.standard_normal((n_images, 5 * n_images))
    sims[caption_image, np.arange(5 * n_images)] += 1.0
    return sims, caption_image


def test_to_dict_is_the_old_json_key_for_key_and_value_for_value():
    sims, caption_image = small_case()
    got = evaluate(sims, caption_image).to_dict()
    want = old_evaluate(sims, caption_image)
    assert json.dumps(got) == json.dumps(want)  # same keys, same order, same float bits
    assert 0 < got["t2i"]["r1"] < 100 and 0 < got["i2t"]["r1"] < 100  # not a degenerate case


def test_fold5_to_dict_is_the_old_average_with_its_folds():
    sims, caption_image = small_case(1, n_images=20)
    got = evaluate_fold5(lambda images, captions: sims[images, captions], 20).to_dict()
    folds = [old_evaluate(sims[f * 4:(f + 1) * 4, f * 20:(f + 1) * 20], np.arange(20) // 5) for f in range(5)]
    want = {d: {key: float(np.mean([f[d][key] for f in folds])) for key in ("r1", "r5", "r10", "medr", "meanr")}
            for d in ("i2t", "t2i")}
    want.update(rsum=float(np.mean([f["rsum"] for f in folds])), n_images=4, n_captions=20, n_folds=5, folds=folds)
    assert json.dumps(got) == json.dumps(want)


def test_fold5_with_a_caption_map_of_the_whole_split():
    sims, caption_image = small_case(2, n_images=20)
    plain = evaluate_fold5(lambda i, c: sims[i, c], 20)
    mapped = evaluate_fold5(lambda i, c: sims[i, c], 20, caption_image=caption_image)
    assert mapped == plain


def test_results_are_frozen_and_typed():
    result = evaluate(*small_case())
    assert isinstance(result, RetrievalResult) and isinstance(result.t2i, Recalls)
    with pytest.raises(AttributeError):
        result.rsum = 0.0  # type: ignore[misc]
    assert result.rsum == pytest.approx(sum(r.recall(k) for r in (result.i2t, result.t2i) for k in RECALL_KS))


def test_truth_result_with_only_the_ground_truth_is_the_strict_result():
    sims, caption_image = small_case(3)
    truth = np.zeros((len(caption_image), sims.shape[0]), bool)
    truth[np.arange(len(caption_image)), caption_image] = True
    assert evaluate_truth(sims, truth) == evaluate(sims, caption_image)


def test_ranks_above_counts_strictly_higher_scores():
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [3.0, 2.0, 1.0, 0.0]])
    np.testing.assert_array_equal(ranks_above(scores, np.array([0.5, 0.0])), [1, 3])


@pytest.mark.parametrize("seed", range(5))
def test_earlier_ties_are_the_stable_sort_position(seed):
    """ties="earlier" is where np.argsort(-scores, kind="stable") puts the answer, ties and NaN included."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(200, 12)).astype(np.float64)  # many ties
    scores[rng.random(scores.shape) < 0.1] = np.nan
    answer = rng.integers(0, 12, size=200)
    order = np.argsort(-scores, axis=1, kind="stable")
    want = np.array([int(np.flatnonzero(order[q] == answer[q])[0]) for q in range(200)])
    np.testing.assert_array_equal(answer_ranks(scores, answer, ties="earlier"), want)
    # the official (optimistic) rank never exceeds it, and they differ on this tie-heavy data
    optimistic = answer_ranks(scores, answer)
    finite = ~np.isnan(scores[np.arange(200), answer])
    assert (optimistic[finite] <= want[finite]).all() and (optimistic != want).any()


def test_answer_ranks_refuses_an_unknown_tie_rule():
    with pytest.raises(ValueError):
        answer_ranks(np.zeros((1, 2)), np.array([0]), ties="pessimistic")  # type: ignore[arg-type]


def old_rerank_ranks(candidates: np.ndarray, scores: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """search.rerank_ranks before it called the shared rank function, restated."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hit = np.take_along_axis(candidates, order, axis=1) == caption_image[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), np.inf)


def test_rerank_ranks_are_unchanged_with_ties_and_misses():
    rng = np.random.default_rng(7)
    candidates = np.stack([rng.permutation(50)[:8] for _ in range(300)])
    scores = rng.integers(0, 3, size=(300, 8)).astype(np.float32)
    caption_image = rng.integers(0, 50, size=300)  # about 84% are not among the 8 candidates
    got = rerank_ranks(candidates, scores, caption_image)
    np.testing.assert_array_equal(got, old_rerank_ranks(candidates, scores, caption_image))
    assert np.isinf(got).any() and np.isfinite(got).any()


def test_recall_curve_is_unchanged():
    rng = np.random.default_rng(8)
    images, captions = rng.standard_normal((40, 6)), rng.standard_normal((200, 6))
    caption_image = np.arange(200) // 5
    sims = captions @ images.T
    ranks = (sims > sims[np.arange(200), caption_image][:, None]).sum(axis=1)
    want = {k: float(100.0 * (ranks < k).mean()) for k in CURVE_KS if k <= 40}
    assert recall_curve(images, captions, caption_image) == want
    assert list(want) == [1, 5, 10, 20] and 0 < want[5] < 100
