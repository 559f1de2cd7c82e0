"""Two-stage retrieval: stage 1 screens the gallery with one vector per item (FAISS), stage 2 re-ranks its top K
with any matching head.

    text --encoders--> words --stage-1 head--> vector --FAISS--> top K images --head--> top k, re-scored

Stage 2 scores exactly what exhaustive search would for the same pairs (the same head on the same
embeddings), so the two differ only where stage 1 missed an image: stage 1's recall@K caps the final recall,
and K comes from the curve measured when the stage-1 head was trained. ``stage1_k=0`` is exhaustive search.

Region features may be a float16 memory map (a large gallery stays on disk); stage 2 reads and encodes only
the K candidates' rows. Float16 region embeddings (a file, or an array held in memory) are scored as float16 rows by
heads that can (SCAN t2i through the C kernel, which widens each image's rows as it scores them), else widened first.
"""
from __future__ import annotations

import dataclasses
import json
import math
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from scan_viz.errors import ScanVizError
from scan_viz.evaluation.metrics import answer_ranks
from scan_viz.heads import MatchingHead, resolve_head
from scan_viz.heads.engine import score_matrix
from scan_viz.limits import check_sentence
from scan_viz.model import ScanModel
from scan_viz.regions.store import read_rows
from scan_viz.retrieval.stage1 import Stage1

#: Up to this many vectors stage 1 uses an exact inner-product index; above it an IVF index. An exact search
#: scans every vector, so its time grows linearly; benchmarks/bench_two_stage.py measures both kinds at each
#: gallery size (flat vs ivf p50) so this switch can be checked on the machine at hand.
EXACT_MAX = 200_000
#: IVF lists probed per query (of about 4 sqrt(n) lists); not tuned here: bench_two_stage.py reports the
#: stage-1 recall that results
IVF_NPROBE = 32
ENCODE_CHUNK = 2048  # images per chunk when encoding region features for exhaustive search
STAGE2_CHUNK = 256  # candidates per stage-2 block of one query (see TwoStageSearch._candidate_scores)
#: candidates' float16 rows read from a region file at a time for the heads that score float16 rows (36 MB at 36 x
#: 256 regions): one read for the rule's K = 1,500 at 100K-1M images, and a bounded buffer at any K
HALF_READ_CHUNK = 2048
#: text -> image stage 1: one pooled vector per image (scan_viz.retrieval.stage1) or region tokens (scan_viz.retrieval.tokens)
SCREENS = ("tokens", "pooled")


def build_index(vectors: np.ndarray, kind: str = "auto", seed: int = 0):
    """A FAISS inner-product index over (n, dim) L2-normalised float32 vectors.

    ``kind``: ``flat`` (exact), ``ivf`` (IndexIVFFlat, about 4 sqrt(n) lists, k-means on at most 64 vectors
    per list, ``IVF_NPROBE`` probed) or ``auto`` (flat up to ``EXACT_MAX`` vectors, else ivf).
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if kind == "auto":
        kind = "flat" if n <= EXACT_MAX else "ivf"
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = max(1, min(n // 39, int(4 * math.sqrt(n))))  # faiss wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))]
        index.train(sample)
        index.nprobe = min(nlist, IVF_NPROBE)
    else:
        raise ScanVizError(f"unknown stage-1 index kind {kind!r}: choose flat, ivf or auto")
    index.add(vectors)
    return index


_ONE_THREAD = threading.Lock()


def search_one(index, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` for one query vector (1, dim), on one OpenMP thread.

    FAISS parallelises even a single query; next to torch's own OpenMP pool the threads contend, and one 100K-vector
    exact search measured 10.6 ms p50 on 2 threads against 4.4-4.6 ms on one (benchmarks/bench_two_stage.py).
    The thread count is FAISS's (not torch's), set for this call only.
    """
    import faiss

    with _ONE_THREAD:
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return index.search(query, k)
        finally:
            faiss.omp_set_num_threads(before)


@dataclasses.dataclass
class SearchHit:
    """One result: ``id`` (image id, or caption number for image -> text), the stage-2 (or exhaustive) score,
    and ``stage1_rank``: its 1-based rank in stage 1, None when the search was exhaustive."""

    id: str | int
    score: float
    stage1_rank: int | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "stage1_rank": self.stage1_rank}


NON_FINITE_MESSAGE = ("the gallery's region features hold NaN or infinite values, so its scores are meaningless: "
                      "rebuild the gallery from its images (scan-viz index)")


def _rank(ids: Sequence, scores: np.ndarray, k: int, stage1_ranks: Sequence[int] | None,
          rows: np.ndarray | None = None) -> list[SearchHit]:
    """Best k by score; ties keep the earlier (stage-1) order. ``rows``: score i is of ``ids[rows[i]]`` (a stage-2
    candidate list), else of ``ids[i]``.

    A NaN or infinite score is refused rather than ranked or written (``"score": NaN`` is not JSON): it comes from
    NaN or infinite region features, which a memory-mapped gallery is not scanned for when it loads.
    """
    if not np.isfinite(scores).all():
        raise ScanVizError(NON_FINITE_MESSAGE)
    order = np.argsort(-scores, kind="stable")[:k]
    return [SearchHit(ids[i if rows is None else rows[i]], float(scores[i]),
                      None if stage1_ranks is None else int(stage1_ranks[i])) for i in order]


def _half_in_memory(regions) -> bool:
    """Whether region embeddings are float16 rows in memory (a C-ordered array that is no memory map, or a
    contiguous CPU tensor), which stage 2 scores where they lie."""
    if torch.is_tensor(regions):
        return regions.dtype == torch.float16 and regions.device.type == "cpu" and regions.is_contiguous()
    return (isinstance(regions, np.ndarray) and not isinstance(regions, np.memmap) and regions.dtype == np.float16
            and regions.flags.c_contiguous)


class TwoStageSearch:
    """Text -> images and image -> captions over one gallery, exhaustive or two-stage.

    features: (n_images, n_regions, img_dim) raw region features, any float dtype (a memory map is fine);
    regions: optional precomputed region embeddings (n_images, n_regions, d), a tensor or an array (a float16
    memory map keeps a large gallery on disk, read row by row with :func:`scan_viz.regions.store.read_rows`); without them the needed rows
    are encoded per query; n_boxes: (n_images,) real regions per image or None; image_vectors: optional
    precomputed stage-1 image vectors (n_images, dim); captions: the gallery's captions (image -> text); grams:
    optional Gram matrices (n_images, n_regions, n_regions) float32 of float16 ``regions`` held in memory
    (:func:`scan_viz.retrieval.tokens.region_grams`), which SCAN t2i's stage 2 then uses instead of forming each
    attended vector (measured at 100K with the codes before: K = 2,500 in 40.3-40.5 ms instead of 44.9-45.6; read from disk beside a region
    file they made a query slower, 104.9 against 90.0 ms at K = 3,000, so they are taken in memory only).
    """

    def __init__(self, model: ScanModel, ids: Sequence[str], features: np.ndarray, stage1: Stage1 | None,
                 n_boxes: np.ndarray | None = None, regions: torch.Tensor | np.ndarray | None = None,
                 image_vectors: np.ndarray | None = None, captions: Sequence[str] = (),
                 caption_emb: tuple[torch.Tensor, torch.Tensor] | None = None, index_kind: str = "auto",
                 screen: str = "pooled", token_index=None, query_map="auto", grams: np.ndarray | None = None) -> None:
        if features.ndim != 3 or features.shape[2] != model.config.img_dim:
            raise ScanVizError(f"the gallery's regions are {features.shape[-1]}-d but the model takes "
                               f"{model.config.img_dim}-d features: pick a gallery made with the model's detector")
        self.model, self.stage1, self.ids, self.features = model, stage1, list(ids), features
        n = len(self.ids)
        self.n_boxes = None if n_boxes is None or (np.asarray(n_boxes) == features.shape[1]).all() \
            else np.asarray(n_boxes, dtype=np.int64)
        self.regions = regions
        if grams is not None and (not _half_in_memory(regions) or isinstance(grams, np.memmap)
                                  or tuple(grams.shape) != (n, features.shape[1], features.shape[1])
                                  or grams.dtype not in (np.float32, torch.float32)):
            raise ScanVizError("Gram matrices are taken in memory, float32, beside float16 region embeddings in "
                               "memory, one (n_regions x n_regions) matrix per image")
        self.grams = grams
        self.captions = list(captions)
        self._caption_emb = caption_emb
        self._caption_index = None
        self.image_index = None
        if screen not in SCREENS:
            raise ScanVizError(f"unknown stage 1 {screen!r}: choose {' or '.join(SCREENS)}")
        #: text -> image stage 1: "pooled" (one vector per image) or "tokens" (scan_viz.retrieval.tokens; its index
        #: is ``token_index`` or built from the region embeddings on the first token search)
        self.screen, self.token_index = screen, token_index
        #: the token screen's query map (scan_viz.retrieval.query_map): "auto" finds the one distilled for this
        #: model (none: the words as they are), None for none, or a QueryMap
        if query_map == "auto":
            from scan_viz.retrieval.query_map import find_query_map

            query_map = find_query_map(model) if screen == "tokens" else None
        self.query_map = query_map
        if stage1 is not None and n:
            if image_vectors is None:
                image_vectors = self._image_vectors_in_chunks()
            if not np.isfinite(image_vectors).all():  # FAISS would silently never return those images
                raise ScanVizError(NON_FINITE_MESSAGE)
            self.image_index = build_index(image_vectors, index_kind)

    # ---------------------------------------------------------------------------------------- helpers
    def _region_lengths(self, rows: np.ndarray | slice) -> torch.Tensor | None:
        return None if self.n_boxes is None else torch.from_numpy(self.n_boxes[rows])

    def _regions_of(self, rows: np.ndarray | slice) -> torch.Tensor:
        """Region embeddings of some gallery rows (precomputed, or encoded from their features now)."""
        if torch.is_tensor(self.regions):
            return self.regions[rows if isinstance(rows, slice) else torch.as_tensor(rows)]
        if isinstance(self.regions, np.memmap):  # a float16 file on disk: read only these rows, unmapped
            # torch widens float16 several times faster than numpy's astype (measured: 1.7 vs 8-10 ms for 500 images)
            return torch.from_numpy(read_rows(self.regions, rows)).float()
        if self.regions is not None:
            return torch.from_numpy(np.asarray(self.regions[rows], dtype=np.float32))
        return self.model.encode_images(np.asarray(self.features[rows], dtype=np.float32))

    def _image_vectors_in_chunks(self) -> np.ndarray:
        out = []
        for start in range(0, len(self.ids), ENCODE_CHUNK):
            rows = slice(start, start + ENCODE_CHUNK)
            out.append(self.stage1.image_vectors(self._regions_of(rows), self._region_lengths(rows)))
        return np.concatenate(out)

    def _matcher(self, head: str | MatchingHead | None) -> MatchingHead:
        return resolve_head(head, self.model)

    def _check_k(self, k: int, stage1_k: int | None, tokens: bool = False) -> int:
        """The stage-1 K to use: 0 = exhaustive; None = the stage-1 head's default (exhaustive without one), or
        with the token screen (``tokens``) the K of :func:`scan_viz.retrieval.tokens.default_k` for this gallery."""
        if k < 1:
            raise ScanVizError(f"k must be at least 1, got {k}")
        if stage1_k is None and tokens:  # a K that keeps the whole gallery screens nothing out: exhaustive
            from scan_viz.retrieval.tokens import default_k

            rule_k = default_k(len(self.ids))
            return 0 if rule_k >= len(self.ids) else max(k, rule_k)
        if stage1_k is None:
            return 0 if self.stage1 is None else max(k, self.stage1.default_k)
        if stage1_k < 0:
            raise ScanVizError(f"--stage1-k must be 0 (exhaustive) or a positive number, got {stage1_k}")
        if stage1_k > 0 and self.stage1 is None and not tokens:
            raise ScanVizError("this model has no stage-1 head trained on its encoders, so only exhaustive "
                               "search works: pass --stage1-k 0, or train one with `python -m scan_viz.train.stage1`")
        return stage1_k if stage1_k == 0 else max(k, stage1_k)

    # ------------------------------------------------------------------------------------- text -> image
    def search_text(self, text: str, k: int = 10, stage1_k: int | None = None,
                    head: str | MatchingHead | None = None) -> list[SearchHit]:
        """The top-k gallery images for a sentence, best first."""
        check_sentence(text)
        tokens = self.screen == "tokens" and len(self.ids) > 0
        stage1_k = self._check_k(k, stage1_k, tokens)
        matcher = self._matcher(head)
        caps = self.model.encode_captions([text])
        if stage1_k == 0:
            return _rank(self.ids, self.exhaustive_scores(caps.emb, caps.lengths, matcher)[:, 0], k, None)
        if tokens:
            rows, _ = self.tokens().screen(self.screen_words(caps.emb[0, :int(caps.lengths[0])]), stage1_k)
            scores = self._candidate_scores(matcher, rows, caps.emb, caps.lengths)
            return _rank(self.ids, scores, k, range(1, len(rows) + 1), rows)
        query = self.stage1.caption_vectors(caps.emb, caps.lengths)
        _, found = search_one(self.image_index, query, stage1_k)
        rows = found[0][found[0] >= 0]
        scores = self._candidate_scores(matcher, rows, caps.emb, caps.lengths)
        return _rank(self.ids, scores, k, range(1, len(rows) + 1), rows)

    def screen_words(self, words: torch.Tensor) -> torch.Tensor:
        """One caption's real word embeddings (L, d) as the token screen looks them up: through the query map when
        there is one (stage 2 always scores the words as they are)."""
        from scan_viz.retrieval.query_map import map_words

        return map_words(self.query_map, words)

    def tokens(self):
        """The token-level stage-1 index (:class:`scan_viz.retrieval.tokens.TokenIndex`), built on first use."""
        if self.token_index is None:
            from scan_viz.retrieval.tokens import TokenIndex, token_settings

            self.token_index = TokenIndex.build(self._token_regions(), self.n_boxes, **token_settings(self.model))
        return self.token_index

    def _token_regions(self) -> torch.Tensor | np.ndarray:
        """Every image's region embeddings, for building the token index (encoded here when none were given)."""
        if self.regions is not None:
            return self.regions
        return torch.cat([self._regions_of(slice(s, s + ENCODE_CHUNK)).to(torch.float16)
                          for s in range(0, len(self.ids), ENCODE_CHUNK)])

    def _candidate_scores(self, matcher: MatchingHead, rows: np.ndarray, words: torch.Tensor,
                          lengths: torch.Tensor) -> np.ndarray:
        """Stage 2 for one caption: its scores with the gallery rows ``rows``.

        Float16 region embeddings (an array or tensor in memory, or a file on disk, read ``HALF_READ_CHUNK`` rows
        at a time) go to the head's float16 path where it has one (:meth:`MatchingHead.half_row_scores`: SCAN t2i
        through the C kernel, which widens each image's rows as it scores them). Otherwise the rows are widened and
        scored ``STAGE2_CHUNK`` at a time, so each chunk's float32 embeddings and attention stay in the CPU's cache
        (one 1,000-image block measured 2.3x slower per image than 500 images on a 32 MB L3 cache)."""
        if _half_in_memory(self.regions):  # scored where they lie
            return self._half_scores(matcher, self.regions, rows, rows, words, lengths, self.grams)
        if isinstance(self.regions, np.memmap) and self.regions.dtype == np.float16:
            parts = [self._half_scores(matcher, read_rows(self.regions, chunk), np.arange(len(chunk)), chunk, words,
                                       lengths)
                     for chunk in np.split(rows, range(HALF_READ_CHUNK, len(rows), HALF_READ_CHUNK))]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return self._chunk_scores(matcher, rows, words, lengths, lambda at: self._regions_of(rows[at]))

    def _half_scores(self, matcher: MatchingHead, table, at: np.ndarray, rows: np.ndarray, words: torch.Tensor,
                     lengths: torch.Tensor, grams=None) -> np.ndarray:
        """Scores of the gallery rows ``rows``, whose float16 embeddings are ``table[at]`` (and Gram matrices
        ``grams[at]``, if given): the head's float16 path, or those rows widened ``STAGE2_CHUNK`` at a time."""
        scores = matcher.half_row_scores(table, at, words, lengths, self._region_lengths(rows), gram=grams)
        if scores is not None:
            return scores
        return self._chunk_scores(matcher, rows, words, lengths, lambda part: torch.as_tensor(table[at[part]]).float())

    def _chunk_scores(self, matcher: MatchingHead, rows: np.ndarray, words: torch.Tensor, lengths: torch.Tensor,
                      regions_of) -> np.ndarray:
        """Scores of the gallery rows ``rows`` through ``matcher.scores``, ``STAGE2_CHUNK`` rows at a time;
        ``regions_of(positions)`` gives the float32 region embeddings of ``rows[positions]``."""
        parts = [score_matrix(matcher, regions_of(part), words, lengths, self._region_lengths(rows[part]))[:, 0]
                 for part in np.split(np.arange(len(rows)), range(STAGE2_CHUNK, len(rows), STAGE2_CHUNK))]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def exhaustive_scores(self, words: torch.Tensor, lengths: torch.Tensor, matcher: MatchingHead) -> np.ndarray:
        """Scores of every gallery image with some captions: (n_images, n_captions), in image chunks."""
        if torch.is_tensor(self.regions):
            return score_matrix(matcher, self.regions, words, lengths, self._region_lengths(slice(None)))
        parts = []
        for start in range(0, len(self.ids), ENCODE_CHUNK):
            rows = slice(start, start + ENCODE_CHUNK)
            parts.append(score_matrix(matcher, self._regions_of(rows), words, lengths, self._region_lengths(rows)))
        return np.concatenate(parts) if parts else np.zeros((0, words.shape[0]), dtype=np.float32)

    # ------------------------------------------------------------------------------------ image -> text
    def _captions(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.captions:
            raise ScanVizError("this gallery has no captions to rank: give the index command --captions")
        if self._caption_emb is None:
            caps = self.model.encode_captions(self.captions)
            self._caption_emb = (caps.emb, caps.lengths)
        return self._caption_emb

    def search_regions(self, regions: np.ndarray, k: int = 10, stage1_k: int | None = None,
                       head: str | MatchingHead | None = None) -> list[SearchHit]:
        """One image's raw region features (n_regions, img_dim) -> the top-k gallery captions (id = caption number)."""
        stage1_k = self._check_k(k, stage1_k)
        matcher = self._matcher(head)
        words, lengths = self._captions()
        emb = self.model.encode_images(np.asarray(regions, dtype=np.float32)[None])
        if stage1_k == 0:
            scores = score_matrix(matcher, emb, words, lengths)[0]
            return _rank(list(range(len(self.captions))), scores, k, None)
        if self._caption_index is None:
            self._caption_index = build_index(self.stage1.caption_vectors(words, lengths), "auto")
        _, found = search_one(self._caption_index, self.stage1.image_vectors(emb), stage1_k)
        cols = found[0][found[0] >= 0]
        scores = score_matrix(matcher, emb, words[torch.from_numpy(cols)], lengths[torch.from_numpy(cols)])[0]
        return _rank([int(c) for c in cols], scores, k, range(1, len(cols) + 1))

    def search_image(self, image_id: str, k: int = 10, stage1_k: int | None = None,
                     head: str | MatchingHead | None = None) -> list[SearchHit]:
        """A gallery image (by id) -> the top-k gallery captions."""
        if image_id not in self.ids:
            raise ScanVizError(f"no image {image_id!r} in the gallery; give one of its ids (e.g. {self.ids[0]}) "
                               "or an image file")
        row = self.ids.index(image_id)
        n = self.features.shape[1] if self.n_boxes is None else int(self.n_boxes[row])
        return self.search_regions(np.asarray(self.features[row, :n], dtype=np.float32), k, stage1_k, head)


# ------------------------------------------------------------------------ measuring a stage-2 re-ranking
def stage1_candidates(image_vectors: np.ndarray, caption_vectors: np.ndarray, k: int) -> np.ndarray:
    """Each caption's k best images by stage-1 inner product (the exact index): (n_captions, k) image rows."""
    _, found = build_index(image_vectors, "flat").search(np.ascontiguousarray(caption_vectors, dtype=np.float32), k)
    return found


def candidate_scores(head: MatchingHead, regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor,
                     candidates: np.ndarray, region_lengths: torch.Tensor | None = None) -> np.ndarray:
    """Stage 2 for many captions: each caption against its own candidates, as :meth:`TwoStageSearch.search_text`
    scores one query. regions (n_images, n_regions, d); words (n_captions, max_words, d); candidates
    (n_captions, K) image rows -> scores (n_captions, K)."""
    out = np.zeros(candidates.shape, dtype=np.float32)
    for c, rows in enumerate(candidates):
        rows_t = torch.from_numpy(rows)
        rl = None if region_lengths is None else region_lengths[rows_t]
        out[c] = score_matrix(head, regions[rows_t], words[c:c + 1], lengths[c:c + 1], rl)[:, 0]
    return out


def rerank_ranks(candidates: np.ndarray, scores: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """0-based rank of each caption's image after re-ranking its candidates by ``scores`` (ties: stage-1 order
    first), inf (a miss at every K) when stage 1 did not pass it on. candidates, scores (n_captions, K) -> float."""
    hit = candidates == np.asarray(caption_image)[:, None]
    ranks = answer_ranks(scores, hit.argmax(axis=1), ties="earlier")
    return np.where(hit.any(axis=1), ranks, np.inf)


# ------------------------------------------------------------------------------------ galleries on disk
STAGE1_DIR = "stage1"
VECTORS_FILE = "image_vectors.npy"
META_FILE = "stage1.json"


def save_image_vectors(gallery_dir: Path, stage1: Stage1, vectors: np.ndarray) -> None:
    """Store a gallery's stage-1 image vectors, tagged with the head that made them."""
    from scan_viz.io import write_dir_atomic

    def write(tmp: Path) -> None:
        np.save(tmp / VECTORS_FILE, np.ascontiguousarray(vectors, dtype=np.float32))
        (tmp / META_FILE).write_text(json.dumps({"stage1": stage1.fingerprint, "n": int(len(vectors))}),
                                     encoding="utf-8")

    write_dir_atomic(Path(gallery_dir) / STAGE1_DIR, write)


def load_image_vectors(gallery_dir: Path, stage1: Stage1, n_images: int) -> np.ndarray | None:
    """The stored stage-1 vectors when they were made by this head for this many images, else None."""
    from scan_viz.safe_files import load_npy, read_json

    folder = Path(gallery_dir) / STAGE1_DIR
    if not (folder / META_FILE).is_file():
        return None
    try:  # stale or damaged vectors are computed again, whatever is wrong with them
        meta = read_json(folder / META_FILE, "stage-1 header")
        if not isinstance(meta, dict) or meta.get("stage1") != stage1.fingerprint or meta.get("n") != n_images:
            return None
        vectors = load_npy(folder / VECTORS_FILE, "stage-1 vectors", kinds="f")
    except ScanVizError:
        return None
    return vectors if vectors.shape == (n_images, stage1.head.dim) else None


def gallery_search(model: ScanModel, gallery, regions: torch.Tensor | None = None,
                   caption_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
                   screen: str = "pooled") -> TwoStageSearch:
    """Two-stage search over a loaded gallery with the stage-1 head trained on this model (if any).

    Stage-1 vectors stored in the gallery (``scan-viz index``) are used when the same head made them;
    otherwise they are computed here. ``regions``/``caption_emb``: embeddings the caller already has.
    ``screen`` "tokens": text -> image stage 1 is the token screen (scan_viz.retrieval.tokens), from the gallery's
    stored token index when this model's encoders made it, else built on the first search; the region embeddings
    stored next to that index (float16, ``scan-viz index`` writes them) are then stage 2's, read per query, unless
    the caller gives ``regions``.
    """
    from scan_viz.retrieval.stage1 import find_stage1

    stage1 = find_stage1(model)
    vectors = None if stage1 is None else load_image_vectors(gallery.root, stage1, len(gallery))
    token_index = None
    if screen == "tokens" and gallery.root is not None:
        from scan_viz.retrieval.tokens import TOKENS_DIR, load_region_embeddings, load_token_index, token_settings

        folder = Path(gallery.root) / TOKENS_DIR
        token_index = load_token_index(folder, token_settings(model)["fingerprint"], len(gallery))
        if token_index is not None and regions is None:
            regions = load_region_embeddings(folder, token_index, model.config.embed_size)
    return TwoStageSearch(model, gallery.ids, gallery.regions.features, stage1, n_boxes=gallery.regions.n_boxes,
                          regions=regions, image_vectors=vectors, captions=gallery.captions, caption_emb=caption_emb,
                          screen=screen, token_index=token_index)
