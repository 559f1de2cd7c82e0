"""Retrieval metrics under the official SCAN evaluation protocol (numpy only).

A similarity matrix ``sims`` has shape ``(n_images, n_captions)``; ``caption_image`` ``(n_captions,)`` gives the
index of each caption's ground-truth image (the official layout: caption ``k`` belongs to image ``k // 5``).

Ranks are 0-based and count how many candidates score *strictly higher* than the ground truth. On tie-free data
this is exactly the position the official loop finds with ``numpy.argsort(d)[::-1]``. On ties the official order
is whatever numpy's unstable sort produced; here a tie never pushes the ground truth down (the optimistic rank),
so the result does not depend on sort internals.

Every rank in the package comes from :func:`ranks_above` (this strict count) or :func:`answer_ranks` (the same
from each query's answer column, with the re-ranker's stage-1 tie order as an option): retrieval here, the
stage-1 recall curve (``stage1.recall_curve``) and re-ranking (``search.rerank_ranks``).

Results are typed: :class:`Recalls` for one direction, :class:`RetrievalResult` for both; ``to_dict()`` gives the
JSON that ``scan-viz eval --json``, the app and the benchmarks write.

Both rank functions work on blocks, so a scorer can stream the matrix instead of holding it whole:
``t2i_ranks`` needs only the columns of the captions it ranks (all images), ``i2t_ranks`` only the rows of the
images it ranks (all captions, with ``image_offset`` saying where the rows start).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, Sequence

import numpy as np

from scan_viz.errors import ScanVizError
from scan_viz.regions.store import CAPTIONS_PER_IMAGE

#: The K of the R@K the official evaluation reports (and rsum sums, both directions).
RECALL_KS = (1, 5, 10)
METRIC_KEYS = ("r1", "r5", "r10", "medr", "meanr")


def ranks_above(scores: np.ndarray, answer_scores: np.ndarray) -> np.ndarray:
    """The official protocol's 0-based rank: how many candidates score strictly above the query's answer.

    ``scores`` is ``(n_queries, n_candidates)`` (a transposed view is fine), ``answer_scores`` ``(n_queries,)``
    the score of each query's answer (its best one, when several count). Returns ``(n_queries,)`` int64.
    """
    return np.count_nonzero(scores > np.asarray(answer_scores)[:, None], axis=1).astype(np.int64)


def answer_ranks(scores: np.ndarray, answer: np.ndarray,
                 ties: Literal["optimistic", "earlier"] = "optimistic") -> np.ndarray:
    """0-based rank of each query's answer column among its candidates.

    ``scores`` ``(n_queries, n_candidates)``, ``answer`` ``(n_queries,)`` column indices. ``ties``:
    ``"optimistic"`` (the official protocol, :func:`ranks_above`: a tie never pushes the answer down) or
    ``"earlier"`` (the position after a stable descending sort: an equal score in an earlier column ranks first,
    and NaN sorts after every number, as ``np.argsort(-scores, kind="stable")`` orders a re-ranked candidate
    list). Returns ``(n_queries,)`` int64.
    """
    answer = np.asarray(answer)
    rows = np.arange(len(answer))
    answer_scores = scores[rows, answer]
    if ties == "optimistic":
        return ranks_above(scores, answer_scores)
    if ties != "earlier":
        raise ValueError(f"ties must be 'optimistic' or 'earlier', not {ties!r}")
    before = np.arange(scores.shape[1])[None, :] < answer[:, None]
    nan_answer = np.isnan(answer_scores)
    finite_rank = ranks_above(scores, answer_scores) + np.count_nonzero(
        before & (scores == answer_scores[:, None]), axis=1)
    nan_rank = np.count_nonzero(~np.isnan(scores), axis=1) + np.count_nonzero(before & np.isnan(scores), axis=1)
    return np.where(nan_answer, nan_rank, finite_rank).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Recalls:
    """Retrieval quality in one direction: R@1, R@5, R@10 in percent, median and mean 1-based rank."""

    r1: float
    r5: float
    r10: float
    medr: float
    meanr: float

    def to_dict(self) -> dict[str, float]:
        return {"r1": self.r1, "r5": self.r5, "r10": self.r10, "medr": self.medr, "meanr": self.meanr}

    def recall(self, k: int) -> float:
        """R@k for k in :data:`RECALL_KS`."""
        return float(getattr(self, f"r{k}"))


@dataclasses.dataclass(frozen=True)
class RetrievalResult:
    """Both retrieval directions of one evaluation (or the average of the COCO 1K folds).

    ``rsum`` is stored, not derived: for a fold-5 average it is the mean of the folds' rsums, as the official
    ``evalrank`` computes it. ``n_images`` / ``n_captions`` are per fold when ``folds`` is not empty.
    """

    i2t: Recalls
    t2i: Recalls
    rsum: float
    n_images: int
    n_captions: int
    folds: tuple["RetrievalResult", ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``scan-viz eval --json``): ``{"i2t", "t2i", "rsum", "n_images", "n_captions"}``, plus
        ``"n_folds"`` and ``"folds"`` for a fold-5 average."""
        out: dict[str, Any] = {"i2t": self.i2t.to_dict(), "t2i": self.t2i.to_dict(), "rsum": self.rsum,
                               "n_images": self.n_images, "n_captions": self.n_captions}
        if self.folds:
            out["n_folds"] = len(self.folds)
            out["folds"] = [fold.to_dict() for fold in self.folds]
        return out


def default_caption_image(n_captions: int, captions_per_image: int = CAPTIONS_PER_IMAGE) -> np.ndarray:
    """The official caption -> image map, ``k // 5``; shape ``(n_captions,)``."""
    return np.arange(n_captions, dtype=np.int64) // captions_per_image


def _check_sims(sims: np.ndarray) -> np.ndarray:
    sims = np.asarray(sims)
    if sims.ndim != 2 or sims.shape[0] == 0 or sims.shape[1] == 0:
        raise ScanVizError(
            f"similarity matrix has shape {sims.shape}; expected a non-empty (n_images, n_captions) matrix"
        )
    return sims


def _check_caption_image(caption_image: np.ndarray | None, sims: np.ndarray, image_offset: int) -> np.ndarray:
    n_rows, n_captions = sims.shape
    if caption_image is None:
        if n_captions != CAPTIONS_PER_IMAGE * n_rows or image_offset != 0:
            raise ScanVizError(
                f"cannot assume caption k belongs to image k // {CAPTIONS_PER_IMAGE} for a {sims.shape} "
                "similarity matrix; pass caption_image explicitly"
            )
        return default_caption_image(n_captions)
    caption_image = np.asarray(caption_image)
    if caption_image.shape != (n_captions,) or not np.issubdtype(caption_image.dtype, np.integer):
        raise ScanVizError(
            f"caption_image has shape {caption_image.shape} and dtype {caption_image.dtype}; expected integer "
            f"image indices of shape ({n_captions},), one per column of the similarity matrix"
        )
    return caption_image.astype(np.int64, copy=False)


def t2i_ranks(sims: np.ndarray, caption_image: np.ndarray | None = None) -> np.ndarray:
    """Rank of each caption's ground-truth image among all images (text-to-image retrieval).

    ``sims`` is ``(n_images, n_captions)``, or any column block ``(n_images, n_block)`` of it together with the
    block's ``caption_image`` ``(n_block,)``: a caption's rank needs only its own column. Returns ``(n_captions,)``
    int64 ranks, 0 = the ground-truth image scores highest.
    """
    sims = _check_sims(sims)
    caption_image = _check_caption_image(caption_image, sims, 0)
    n_images, n_captions = sims.shape
    if caption_image.min() < 0 or caption_image.max() >= n_images:
        raise ScanVizError(
            f"caption_image refers to image {int(caption_image.max())} but the similarity matrix has only "
            f"{n_images} image rows; pass all image rows for these captions"
        )
    return answer_ranks(sims.T, caption_image)


def i2t_ranks(sims: np.ndarray, caption_image: np.ndarray | None = None, image_offset: int = 0) -> np.ndarray:
    """Best rank among each image's ground-truth captions (image-to-text retrieval).

    ``sims`` is ``(n_images, n_captions)``, or a row block ``(n_block, n_captions)`` holding images
    ``image_offset .. image_offset + n_block - 1`` against all captions. Returns ``(n_block,)`` int64 ranks.

    The official loop takes the minimum over the image's captions of each caption's position. With strict
    counting that minimum is the count of captions scoring above the image's best ground-truth score, which is
    what is computed here in one pass.
    """
    sims = _check_sims(sims)
    caption_image = _check_caption_image(caption_image, sims, image_offset)
    n_rows = sims.shape[0]
    local_image = caption_image - image_offset
    in_block = (local_image >= 0) & (local_image < n_rows)
    has_caption = np.zeros(n_rows, dtype=bool)
    has_caption[local_image[in_block]] = True
    if not has_caption.all():
        missing = int(np.flatnonzero(~has_caption)[0]) + image_offset
        raise ScanVizError(
            f"image {missing} has no ground-truth caption in caption_image, so its image-to-text rank is "
            "undefined; drop images without captions before evaluating"
        )
    best_gt = np.full(n_rows, -np.inf, dtype=np.result_type(sims.dtype, np.float32))
    cols = np.flatnonzero(in_block)
    np.maximum.at(best_gt, local_image[cols], sims[local_image[cols], cols])
    return ranks_above(sims, best_gt)


def recall_metrics(ranks: np.ndarray) -> Recalls:
    """R@1, R@5, R@10 (percent of ranks below K), ``medr = floor(median) + 1`` and ``meanr = mean + 1``.

    ``ranks`` is ``(n_queries,)``, 0-based as returned by :func:`i2t_ranks` / :func:`t2i_ranks`.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ScanVizError(f"ranks has shape {ranks.shape}; expected a non-empty 1-D array of 0-based ranks")
    r1, r5, r10 = (float(100.0 * np.count_nonzero(ranks < k) / ranks.size) for k in RECALL_KS)
    return Recalls(r1, r5, r10, medr=float(np.floor(np.median(ranks)) + 1), meanr=float(ranks.mean() + 1))


def rsum(i2t: Recalls, t2i: Recalls) -> float:
    """Sum of the six recalls, R@1 + R@5 + R@10 in both directions."""
    return float(sum(recalls.recall(k) for recalls in (i2t, t2i) for k in RECALL_KS))


def _result(i2t: Recalls, t2i: Recalls, sims: np.ndarray) -> RetrievalResult:
    n_images, n_captions = (int(n) for n in np.shape(sims))
    return RetrievalResult(i2t, t2i, rsum(i2t, t2i), n_images, n_captions)


def evaluate(sims: np.ndarray, caption_image: np.ndarray | None = None) -> RetrievalResult:
    """Both retrieval directions of a full ``(n_images, n_captions)`` similarity matrix.

    ``caption_image`` defaults to the official ``k // 5``. ``.to_dict()`` of the result is the JSON form.
    """
    sims = _check_sims(sims)
    return _result(recall_metrics(i2t_ranks(sims, caption_image)), recall_metrics(t2i_ranks(sims, caption_image)),
                   sims)


def _check_truth(sims: np.ndarray, truth: np.ndarray) -> np.ndarray:
    truth = np.asarray(truth)
    if truth.dtype != bool or truth.shape != sims.shape[::-1]:
        raise ScanVizError(f"truth has shape {truth.shape} and dtype {truth.dtype}; expected a bool "
                           f"(n_captions, n_images) = {sims.shape[::-1]} matrix, the transpose of the similarities")
    if not truth.any(axis=1).all() or not truth.any(axis=0).all():
        raise ScanVizError("some caption is true of no image (or some image of no caption), so its truth-aware "
                           "rank is undefined; count each caption's own image as true")
    return truth


def t2i_truth_ranks(sims: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Rank of the best-scoring image each caption is true of (text-to-image, any true image is a hit).

    ``sims`` ``(n_images, n_captions)``; ``truth`` ``(n_captions, n_images)`` bool, caption ``k`` true of image
    ``i``. Returns ``(n_captions,)`` int64 0-based ranks, ties counted as in :func:`t2i_ranks`. With ``truth``
    holding only the ground-truth pairs this is :func:`t2i_ranks`.
    """
    sims = _check_sims(sims)
    truth = _check_truth(sims, truth)
    best = np.where(truth.T, sims, -np.inf).max(axis=0)
    return ranks_above(sims.T, best)


def i2t_truth_ranks(sims: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Rank of the best-scoring caption true of each image (image-to-text, any true caption is a hit).

    Shapes as in :func:`t2i_truth_ranks`; returns ``(n_images,)`` int64 0-based ranks.
    """
    sims = _check_sims(sims)
    truth = _check_truth(sims, truth)
    best = np.where(truth.T, sims, -np.inf).max(axis=1)
    return ranks_above(sims, best)


def evaluate_truth(sims: np.ndarray, truth: np.ndarray) -> RetrievalResult:
    """Truth-aware retrieval: like :func:`evaluate`, but a hit is any image (caption) the caption (image) is true of.

    ``truth`` is ``(n_captions, n_images)`` bool.
    """
    return _result(recall_metrics(i2t_truth_ranks(sims, truth)), recall_metrics(t2i_truth_ranks(sims, truth)),
                   sims)


def fold_slices(
    n_images: int, n_folds: int = 5, captions_per_image: int = CAPTIONS_PER_IMAGE
) -> list[tuple[slice, slice]]:
    """``(image slice, caption slice)`` of each fold, the MS-COCO "1K" split of the 5K ``testall`` set.

    Fold ``i`` holds images ``i * n / n_folds`` up to the next fold and their ``captions_per_image`` consecutive
    captions each, as the official ``evalrank(..., fold5=True)`` cuts them.
    """
    if n_folds <= 0 or n_images <= 0 or n_images % n_folds != 0:
        raise ScanVizError(
            f"cannot split {n_images} images into {n_folds} equal folds; the COCO 1K protocol needs the 5,000-image "
            "testall split"
        )
    fold = n_images // n_folds
    return [
        (slice(i * fold, (i + 1) * fold), slice(i * fold * captions_per_image, (i + 1) * fold * captions_per_image))
        for i in range(n_folds)
    ]


def fold5_average(results: Sequence[RetrievalResult]) -> RetrievalResult:
    """Average of per-fold :func:`evaluate` results: the MS-COCO 1K numbers.

    Every metric (recalls, medr, meanr, rsum) is the mean over folds. Labels are the correct ones: the official
    ``evalrank`` summary prints ``rsum`` as 6x the mean i2t recall, "Average i2t Recall" as the t2i average and
    "Average t2i Recall" as the rsum, because it indexes its result rows off by one field. ``n_images`` and
    ``n_captions`` are per fold; ``folds`` keeps the per-fold results.
    """
    if not results:
        raise ScanVizError("no fold results to average; evaluate each fold from fold_slices() first")

    def mean(direction: str) -> Recalls:
        return Recalls(**{key: float(np.mean([getattr(getattr(r, direction), key) for r in results]))
                          for key in METRIC_KEYS})

    return RetrievalResult(mean("i2t"), mean("t2i"), float(np.mean([r.rsum for r in results])),
                           int(results[0].n_images), int(results[0].n_captions), tuple(results))


def evaluate_fold5(
    score_fn: Callable[[slice, slice], np.ndarray], n_images: int, n_folds: int = 5,
    caption_image: np.ndarray | None = None,
) -> RetrievalResult:
    """COCO 1K evaluation: score each fold with ``score_fn(image_slice, caption_slice)`` and average.

    ``score_fn`` returns the ``(fold_images, fold_captions)`` similarity matrix of that fold, so only the
    diagonal blocks of the 5K matrix are ever computed. ``caption_image`` (n_captions,): each caption's image in
    the whole split (default: the official ``k // 5`` within each fold).
    """
    def fold(images: slice, captions: slice) -> RetrievalResult:
        sims = score_fn(images, captions)
        if caption_image is None:
            return evaluate(sims)
        return evaluate(sims, np.asarray(caption_image[captions]) - images.start)

    return fold5_average([fold(images, captions) for images, captions in fold_slices(n_images, n_folds)])
