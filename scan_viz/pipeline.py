"""The steps the app and the command line share: image -> regions -> alignment, retrieval, ablation, evaluation.

Everything here takes plain data (arrays, a ScanModel, a Gallery) and returns plain data (Alignment,
lists of (id, score), dicts), so `scan-viz explain`, `scan-viz eval --gallery` and the Streamlit pages are
thin layers over the same calls.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from scan_viz.errors import ScanVizError
from scan_viz.evaluation.metrics import evaluate
from scan_viz.evaluation.pointing import PointingItem, PointingResult, evaluate_pointing
from scan_viz.gallery import Gallery
from scan_viz.heads import MatchingHead, resolve_head
from scan_viz.limits import check_sentence
from scan_viz.model import PRETRAINED_DIR, ScanModel
from scan_viz.types import Alignment, Regions

DEFAULT_MODEL = "scan-emoji-t2i"
DEFAULT_GALLERY = Path(__file__).resolve().parent.parent / "examples" / "gallery"


def detector_for(model: ScanModel, detector_dir: str | Path | None = None):
    """The detector whose region features this model was trained on (named in its config), loaded."""
    from scan_viz.detect import load_detector

    if detector_dir is None:
        name = model.config.extra.get("detector")
        if not name:
            raise ScanVizError("this model names no detector (it was trained on precomputed features): "
                               "give a detector folder whose region features fit the model")
        detector_dir = PRETRAINED_DIR / str(name)
    from scan_viz.photo.detector import is_photo_detector, load_photo_detector

    # which kind of detector is the folder's own business: the photo model's (scan_viz.photo) or a trained one
    detector = load_photo_detector(detector_dir) if is_photo_detector(detector_dir) else load_detector(detector_dir)
    img_dim = int(getattr(detector, "img_dim", model.config.img_dim))
    if img_dim != model.config.img_dim:
        raise ScanVizError(f"the detector gives {img_dim}-d region features but the model takes "
                           f"{model.config.img_dim}-d: use the detector the model was trained with")
    return detector


def detect(detector, image: np.ndarray) -> Regions:
    """One image (H, W, 3) uint8 -> its regions (features, boxes in the image's pixels, labels)."""
    from scan_viz.detect import extract_regions

    if hasattr(detector, "regions"):  # scan_viz.photo.detector.PhotoDetector
        return detector.regions(image)
    with torch.no_grad():
        return extract_regions(detector, [image])[0]


def explain(model: ScanModel, regions: Regions, text: str, head: str | MatchingHead | None = None,
            dtype: str = "float32", device: str = "cpu") -> Alignment:
    """The alignment of a sentence with an image's regions (a detector's output, or a gallery image's stored
    regions). A sentence over :mod:`scan_viz.limits`' caps is refused before any work."""
    check_sentence(text)
    return model.align(regions.features, text, head=head, boxes=regions.boxes, region_labels=regions.labels,
                       image_size=regions.image_size, dtype=dtype, device=device)


def alignment_json(alignment: Alignment, head: MatchingHead, model: str, image: dict[str, str]) -> dict[str, Any]:
    """The alignment.json of ``scan-viz explain`` and of the app's download: what reproduces the result, then
    the alignment itself (:meth:`Alignment.to_json`).

    model: a bundled model's name or the checkpoint's file name; image: ``{"gallery": name, "id": id}`` for a
    gallery image (its stored regions), ``{"file": name}`` for an image run through the detector.
    """
    from scan_viz import __version__

    record = alignment.to_json()
    record.pop("head_params")  # restated first, with the head's name
    return {"scan_viz_version": __version__, "model": model, "image": dict(image),
            "head_params": {"head": head.name, **head.hyperparameters()}, **record}


def gallery_regions(gallery: Gallery, image_id: str) -> Regions:
    """One gallery image's real regions (padding rows of a varying-count store dropped)."""
    features, boxes, labels = gallery.regions_of(image_id)
    n = int(gallery.regions.n_boxes[gallery.index_of(image_id)])
    features, boxes = features[:n], None if boxes is None else boxes[:n]
    labels = None if labels is None else labels[:n]
    record = gallery.records[gallery.index_of(image_id)]
    size = (int(record["width"]), int(record["height"])) if "width" in record else None
    return Regions(features, boxes, labels, size)


@dataclasses.dataclass
class GalleryIndex:
    """A gallery encoded once by one model: region embeddings and caption embeddings, for fast retrieval."""

    model: ScanModel
    gallery: Gallery
    regions: torch.Tensor  # (n_images, n_regions, d)
    region_lengths: torch.Tensor | None  # (n_images,) real regions per image, None when all are real
    caption_emb: torch.Tensor  # (n_captions, max_words, d)
    caption_lengths: torch.Tensor  # (n_captions,)

    @classmethod
    def build(cls, model: ScanModel, gallery: Gallery) -> "GalleryIndex":
        if gallery.regions.img_dim != model.config.img_dim:
            raise ScanVizError(f"the gallery's regions are {gallery.regions.img_dim}-d but the model takes "
                               f"{model.config.img_dim}-d features: pick a gallery made with the model's detector")
        regions = model.encode_images(gallery.regions.features)
        caps = model.encode_captions(gallery.captions)
        return cls(model, gallery, regions, _region_lengths(gallery), caps.emb, caps.lengths)

    def image_scores(self, text: str, head: str | MatchingHead | None = None) -> np.ndarray:
        """(n_images,) every gallery image's score for the sentence ``text`` under ``head``."""
        from scan_viz.heads.engine import score_matrix

        check_sentence(text)
        matcher = resolve_head(head, self.model)
        caps = self.model.encode_captions([text])
        return score_matrix(matcher, self.regions, caps.emb, caps.lengths, self.region_lengths)[:, 0]

    def search_images(self, text: str, k: int = 10, head: str | MatchingHead | None = None) -> list[tuple[str, float]]:
        """Text -> the top-k gallery images by score, best first."""
        scores = self.image_scores(text, head)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(self.gallery.ids[i], float(scores[i])) for i in top]

    @functools.cached_property
    def domain_check(self):
        """The out-of-domain check (:class:`scan_viz.regions.domain.DomainCheck`) fitted on this gallery, once."""
        return domain_check(self.regions, self.region_lengths)

    def looks_in_domain(self, regions: Regions) -> bool:
        """Whether a picture's regions are as like the gallery's as the gallery's own images are."""
        from scan_viz.regions.domain import embed_regions

        return self.domain_check.in_domain(embed_regions(self.model, regions))

    @functools.cached_property
    def two_stage(self):
        """Two-stage search (scan_viz.retrieval.search) over these embeddings; stage 1 when a head fits the model."""
        from scan_viz.retrieval.search import gallery_search

        return gallery_search(self.model, self.gallery, self.regions, (self.caption_emb, self.caption_lengths))

    def search_captions(self, image_id: str, k: int = 10, head: str | MatchingHead | None = None
                        ) -> list[tuple[int, float]]:
        """Gallery image -> the top-k gallery captions (index into gallery.captions, score), best first."""
        from scan_viz.heads.engine import score_matrix

        matcher = resolve_head(head, self.model)
        i = self.gallery.index_of(image_id)
        rl = None if self.region_lengths is None else self.region_lengths[i:i + 1]
        scores = score_matrix(matcher, self.regions[i:i + 1], self.caption_emb, self.caption_lengths, rl)[0]
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(c), float(scores[c])) for c in top]


@dataclasses.dataclass
class HeadComparison:
    """One head's verdict on one gallery image and sentence: its alignment (score included) and the 1-based rank
    of that image among all gallery images for the sentence under the same head (1 = ranked first)."""

    head: MatchingHead
    alignment: Alignment
    rank: int
    n_images: int


def compare_heads(index: GalleryIndex, image_id: str, text: str,
                  heads: Sequence[str | MatchingHead]) -> list[HeadComparison]:
    """The same gallery image and sentence under each head, in the order given (the app's Compare view).

    Ties count in the image's favour: rank = 1 + the number of images scoring strictly higher.
    """
    if not heads:
        raise ScanVizError("choose at least one head to compare")
    regions = gallery_regions(index.gallery, image_id)
    row = index.gallery.index_of(image_id)
    out = []
    for head in heads:
        matcher = resolve_head(head, index.model)
        alignment = explain(index.model, regions, text, matcher)
        scores = index.image_scores(text, matcher)
        out.append(HeadComparison(matcher, alignment, gallery_rank(scores, scores[row]), len(scores)))
    return out


def domain_check(region_embeddings: torch.Tensor, region_lengths: torch.Tensor | None):
    """:class:`scan_viz.regions.domain.DomainCheck` fitted on a gallery's region embeddings (n_images, n_regions, d)."""
    from scan_viz.regions.domain import DomainCheck

    lengths = None if region_lengths is None else region_lengths.numpy()
    return DomainCheck.fit(region_embeddings.float().numpy(), lengths)


def gallery_domain_check(model: ScanModel, gallery: Gallery):
    """The domain check of ``gallery`` for ``model`` (its region features encoded first), or None when the
    gallery's features are not the model's (another detector's gallery says nothing about the model's pictures)."""
    if gallery.regions.img_dim != model.config.img_dim:
        return None
    return domain_check(model.encode_images(gallery.regions.features), _region_lengths(gallery))


def gallery_rank(scores: np.ndarray, score: float) -> int:
    """The rank a pair scoring ``score`` takes among the gallery's ``scores`` (n_images,) for the same sentence:
    1 + the number of images scoring strictly higher (ties count in the pair's favour)."""
    return 1 + int(np.count_nonzero(np.asarray(scores) > score))


def _region_lengths(gallery: Gallery) -> torch.Tensor | None:
    n_boxes = np.asarray(gallery.regions.n_boxes)
    return None if (n_boxes == gallery.regions.n_regions).all() else torch.from_numpy(n_boxes)


def ablate(model: ScanModel, regions: Regions, text: str, head: str | MatchingHead | None = None) -> dict[str, Any]:
    """Score change when each word, or each region, is removed (error analysis).

    Words are removed from the token sequence (``<start>``/``<end>`` stay); regions from the region set.
    Returns ``{"score", "words": [(token, delta)], "regions": [(index, delta)]}`` with delta = new - full.
    """
    from scan_viz.text import EncodedCaption

    check_sentence(text)
    matcher = resolve_head(head, model)
    full = model.vocab.encode(text)
    n_tok = len(full.tokens)
    variants = [full] + [EncodedCaption(full.ids[:t + 1] + full.ids[t + 2:], full.tokens[:t] + full.tokens[t + 1:],
                                        full.unknown[:t] + full.unknown[t + 1:]) for t in range(n_tok)]
    caps = model.encode_captions(variants)
    emb = model.encode_images(np.asarray(regions.features)[None])
    with torch.no_grad():
        word_scores = matcher.scores(emb, caps.emb, caps.lengths).scores[0].double().numpy()
        n_reg = emb.shape[1]
        keep = ~np.eye(n_reg, dtype=bool)
        dropped = torch.stack([emb[0][torch.from_numpy(keep[r])] for r in range(n_reg)])  # (n_reg, n_reg-1, d)
        region_scores = matcher.scores(dropped, caps.emb[:1], caps.lengths[:1]).scores[:, 0].double().numpy()
    base = float(word_scores[0])
    return {"score": base,
            "words": [(full.tokens[t].text, float(word_scores[t + 1] - base)) for t in range(n_tok)],
            "regions": [(r, float(region_scores[r] - base)) for r in range(n_reg)]}


def evaluate_gallery(model: ScanModel, gallery: Gallery, head: str | MatchingHead | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     details: bool = False, dtype: str = "float32") -> dict[str, Any]:
    """Retrieval metrics (the `eval` JSON) plus pointing accuracy per word type and its two baselines.

    The one evaluation path: ``scan-viz eval --gallery``, the app's Evaluate page and the bundle build call it.
    Padded regions (``region_lengths`` of a varying-count store) take no part in any score.

    When every caption carries claims (a gallery of the generated world), ``truth`` holds truth-aware retrieval
    (a hit is any image the caption is true of, any caption true of the image; see :func:`truth_metrics`);
    otherwise ``truth_note`` says why it is missing.

    ``dtype``: float32, float64 or bfloat16 (the head's region-word products in bf16, see ``ScanModel.similarity``).
    ``details`` adds what a failure list needs, as arrays (not JSON): ``t2i_ranks`` (n_captions,) 0-based rank
    of each caption's image, ``t2i_top`` (n_captions,) each caption's top image, ``i2t_ranks`` (n_images,) rank
    of each image's best own caption, ``i2t_best_own`` (n_images,) that caption, ``i2t_top`` (n_images,) each
    image's top caption, and ``sims`` (n_images, n_captions); with claims also ``t2i_truth_ranks``,
    ``i2t_truth_ranks`` (the truth-aware ranks), ``t2i_top_verdict`` (n_captions,) and ``i2t_top_verdict``
    (n_images,) (:class:`scan_viz.evaluation.truth.Verdict` of each top pair) and ``truth_matrix`` (n_captions, n_images).
    """
    from scan_viz.evaluation.metrics import i2t_ranks, t2i_ranks

    if not gallery.captions:
        raise ScanVizError(f"the gallery {gallery.name} has no captions, so retrieval cannot be evaluated: "
                           "serve a gallery with captions (the bundled one)")
    if len(set(gallery.caption_image.tolist())) != len(gallery):
        raise ScanVizError(f"some images of the gallery {gallery.name} have no caption, so image-to-text ranks are "
                           "undefined: give every image at least one caption")
    matcher = resolve_head(head, model)
    if dtype == "bfloat16":
        matcher = matcher.with_product_dtype(dtype)
    sims = model.similarity(gallery.regions.features, gallery.captions, head=matcher, progress=progress,
                            region_lengths=gallery.regions.n_boxes, dtype=dtype)
    result = evaluate(sims, gallery.caption_image).to_dict()
    if gallery.regions.boxes is not None and any(gallery.caption_words):
        result.update(pointing_on_gallery(model, gallery, matcher).to_dict())
    result["head"] = matcher.name
    truth = truth_metrics(gallery, sims)
    if truth is None:
        result["truth_note"] = NO_CLAIMS_NOTE
    else:
        result["truth"] = truth.pop("summary")
    if details:
        result["sims"] = sims
        result["t2i_ranks"] = t2i_ranks(sims, gallery.caption_image)
        result["t2i_top"] = sims.argmax(axis=0)
        result["i2t_ranks"] = i2t_ranks(sims, gallery.caption_image)
        result["i2t_top"] = sims.argmax(axis=1)
        result["i2t_best_own"] = np.array([int(own[np.argmax(sims[n, own])]) for n, own in
                                           enumerate(gallery.caption_indices_of(i) for i in gallery.ids)],
                                          dtype=np.int64)
        result.update(truth or {})
    return result


NO_CLAIMS_NOTE = ("truth-aware recall needs each caption's claims, which this gallery lacks; a gallery of the "
                  "generated world gets them with `python -m scan_viz.gallery.annotate annotate --gallery DIR`")


def truth_metrics(gallery: Gallery, sims: np.ndarray) -> dict[str, Any] | None:
    """Truth-aware retrieval on a gallery with claims, and what the top-ranked wrong images get wrong.

    ``sims`` is (n_images, n_captions). Returns None without claims, else ``{"summary": {"i2t", "t2i", "rsum",
    "images_per_caption", "t2i_mistakes": {"n", "strict_failures", "genuine", "attributes": {attribute: %}}},
    "truth_matrix", "t2i_truth_ranks", "i2t_truth_ranks", "t2i_top_verdict", "i2t_top_verdict"}``.
    A t2i mistake is a caption whose top image it is not true of; ``attributes`` gives, per attribute, the
    share of mistakes whose top image fails it (one image can fail several), ``genuine`` the share of strict
    R@1 failures that are mistakes (the rest rank another image the caption is just as true of first).
    """
    from scan_viz.evaluation.metrics import evaluate_truth, i2t_truth_ranks, t2i_ranks, t2i_truth_ranks
    from scan_viz.evaluation.truth import ATTRIBUTES, caption_holds

    if gallery.truth is None:
        return None
    truth = gallery.truth.copy()
    truth[np.arange(len(gallery.captions)), gallery.caption_image] = True  # a caption's own image always counts
    summary = evaluate_truth(sims, truth).to_dict()
    summary["images_per_caption"] = float(truth.sum(axis=1).mean())
    t2i_top, i2t_top = sims.argmax(axis=0), sims.argmax(axis=1)
    t2i_verdicts = [caption_holds(claims, gallery.scenes[int(top)])
                    for claims, top in zip(gallery.caption_claims, t2i_top)]
    i2t_verdicts = [caption_holds(gallery.caption_claims[int(top)], scene) for scene, top in zip(gallery.scenes,
                                                                                                  i2t_top)]
    t2i_truth = t2i_truth_ranks(sims, truth)
    mistakes = [t2i_verdicts[k] for k in np.flatnonzero(t2i_truth >= 1)]
    strict_failures = int(np.count_nonzero(t2i_ranks(sims, gallery.caption_image) >= 1))
    summary["t2i_mistakes"] = {
        "n": len(mistakes), "strict_failures": strict_failures,
        "genuine": 100.0 * len(mistakes) / strict_failures if strict_failures else 0.0,
        "attributes": {a: 100.0 * sum(a in v.attributes for v in mistakes) / len(mistakes) if mistakes else 0.0
                       for a in ATTRIBUTES}}
    return {"summary": summary, "truth_matrix": truth, "t2i_truth_ranks": t2i_truth,
            "i2t_truth_ranks": i2t_truth_ranks(sims, truth), "t2i_top_verdict": t2i_verdicts,
            "i2t_top_verdict": i2t_verdicts}


def pointing_on_gallery(model: ScanModel, gallery: Gallery, head: MatchingHead) -> PointingResult:
    """Pointing accuracy of every grounded word of every caption with its own image."""
    items = []
    regions_emb = model.encode_images(gallery.regions.features)
    for i, record in enumerate(gallery.records):
        objects = record.get("objects", [])
        caps = [c for c in record["captions"] if c.get("words")]
        if not caps or gallery.regions.boxes is None:
            continue
        enc = model.encode_captions([c["text"] for c in caps])
        n_real = int(gallery.regions.n_boxes[i])
        # padding rows are left out here, not only masked: the baselines count every region they are given
        with torch.no_grad():
            res = head.scores(regions_emb[i:i + 1, :n_real], enc.emb, enc.lengths, return_attention=True)
        attention = res.attention[0].double().numpy()  # (n_caps, max_words, n_real)
        for c, caption in enumerate(caps):
            tokens = [t.text for t in enc.encoded[c].tokens]
            words = caption["words"]
            if tokens != [w["word"] for w in words]:
                raise ScanVizError(f"gallery caption {caption['text']!r} does not tokenise into its annotated words")
            rows = [t + 1 for t, w in enumerate(words) if w.get("boxes")]  # +1: <start>
            if not rows:
                continue
            items.append(PointingItem(
                word_attention=attention[c, rows],
                region_boxes=gallery.regions.boxes[i, :n_real],
                word_types=[words[r - 1]["type"] for r in rows],
                words=[words[r - 1]["word"] for r in rows],
                gt_boxes=[np.array([objects[b]["box"] for b in words[r - 1]["boxes"]], dtype=np.float64)
                          for r in rows]))
    return evaluate_pointing(items)
