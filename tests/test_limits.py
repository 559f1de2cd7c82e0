"""The one set of input limits (scan_viz/limits.py), and the command line answering bad input fast.

Each bad input (a 6,000-word sentence, NaN / negative / huge lambdas, a 50-megapixel image) is answered by
``scan-viz explain`` in a real process within 5 s: exit status 2 and one ``error:`` line.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scan_viz.errors import ScanVizError
from scan_viz.limits import (LAMBDA_RANGE, MAX_IMAGE_PIXELS, MAX_SENTENCE_CHARS, MAX_WORDS, check_device,
                             check_sentence)
from scan_viz.heads import head_spec
from scan_viz.model.config import ScanConfig

#: the lambdas as the SCAN head declares them (the one check of their range)
LAMBDA_SOFTMAX, LAMBDA_LSE = (next(p for p in head_spec("scan").params if p.name == n)
                              for n in ("lambda_softmax", "lambda_lse"))

REPO = Path(__file__).resolve().parent.parent
BOUND_S = 5.0


def test_sentence_limits():
    assert check_sentence("  a red car ") == "a red car"
    assert check_sentence(" ".join(["car"] * MAX_WORDS)).count("car") == MAX_WORDS
    with pytest.raises(ScanVizError, match="the sentence is empty"):
        check_sentence(" \t ")
    with pytest.raises(ScanVizError, match=f"has {MAX_WORDS + 1} words; the limit is {MAX_WORDS} words: shorten it"):
        check_sentence(" ".join(["car"] * (MAX_WORDS + 1)))
    # words are counted as the model reads them: "don't" is two tokens, "." one
    with pytest.raises(ScanVizError, match=f"has {MAX_WORDS + 2} words"):
        check_sentence(" ".join(["car"] * (MAX_WORDS - 1)) + " don't.")
    book = "word " * 6000
    start = time.perf_counter()
    with pytest.raises(ScanVizError, match=f"29,999 characters long; the limit is {MAX_SENTENCE_CHARS:,}"):
        check_sentence(book)
    assert time.perf_counter() - start < 0.01  # refused before tokenising


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0, 0.0, 0.49, 50.01, 1e9, "nine", None])
def test_lambdas_out_of_range_are_refused(value):
    with pytest.raises(ScanVizError, match=r"lambda_softmax must be a number from 0\.5 to 50"):
        LAMBDA_SOFTMAX.parse(value)


def test_lambda_range_ends_and_every_config_path():
    low, high = LAMBDA_RANGE
    assert LAMBDA_LSE.parse(low) == low and LAMBDA_LSE.parse(str(high)) == high
    config = ScanConfig()
    for bad in ({"lambda_softmax": math.nan}, {"lambda_lse": -2.0}, {"lambda_softmax": 1e4}):
        with pytest.raises(ScanVizError, match="config: lambda_"):
            config.replace(head_params=bad)
    assert config.replace(head_params={"lambda_softmax": 4.0, "lambda_lse": 20.0}).head_params["lambda_lse"] == 20.0


def test_device_is_checked():
    with pytest.raises(ScanVizError, match="must be cpu or cuda"):
        check_device("tpu")
    assert check_device("cpu") == "cpu"


# ----------------------------------------------------------------------------- the command line, in a process


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "scan_viz.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    return done, time.perf_counter() - start


def assert_refused_fast(done: subprocess.CompletedProcess, elapsed: float, message: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert elapsed < BOUND_S, f"took {elapsed:.2f} s"


@pytest.fixture(scope="module")
def big_image(tmp_path_factory) -> Path:
    """A 50-megapixel JPEG (one colour, so the file is small: only its declared size is large)."""
    path = tmp_path_factory.mktemp("big") / "big50.jpg"
    Image.new("RGB", (8660, 5774), (200, 30, 30)).save(path, quality=80)
    return path


@pytest.fixture(scope="module")
def small_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small") / "photo.png"
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("flag,value,message", [
    ("--lambda-softmax", "nan", "lambda_softmax must be a number from 0.5 to 50, got nan"),
    ("--lambda-lse", "-1", "lambda_lse must be a number from 0.5 to 50, got -1.0"),
    ("--lambda-softmax", "1e9", "lambda_softmax must be a number from 0.5 to 50, got 1000000000.0"),
])
def test_explain_refuses_bad_lambdas_fast(tmp_path, small_image, flag, value, message):
    done, elapsed = run_cli("explain", "--image", str(small_image), "--text", "a red car", "--out",
                            str(tmp_path / "out"), flag, value)
    assert_refused_fast(done, elapsed, message)
    assert not (tmp_path / "out").exists()  # nothing written (today's bug: NaN in alignment.json)


def test_score_refuses_nan_lambda_before_reading_anything(tmp_path):
    done, elapsed = run_cli("score", "--model", "no-such-model", "--images", "missing.npy", "--captions",
                            "missing.txt", "--out", str(tmp_path / "s.npy"), "--lambda-lse", "nan")
    assert_refused_fast(done, elapsed, "lambda_lse must be a number from 0.5 to 50")


def test_explain_refuses_a_6000_word_sentence_fast(tmp_path, small_image):
    done, elapsed = run_cli("explain", "--image", str(small_image), "--text", " ".join(["car"] * 6000), "--out",
                            str(tmp_path / "out"))
    assert_refused_fast(done, elapsed, "the sentence is 23,999 characters long; the limit is 1,000 characters")


def test_explain_refuses_a_50_megapixel_image_fast(tmp_path, big_image):
    done, elapsed = run_cli("explain", "--image", str(big_image), "--text", "a red car", "--out",
                            str(tmp_path / "out"))
    assert_refused_fast(done, elapsed, f"image is 8660x5774 = 50 megapixels; the limit is "
                                       f"{MAX_IMAGE_PIXELS / 1e6:.3g} megapixels")


def test_explain_refuses_cuda_without_a_gpu(tmp_path, small_image):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal cannot happen here")
    done, _ = run_cli("explain", "--image", str(small_image), "--text", "a red car", "--out", str(tmp_path / "o"),
                      "--device", "cuda")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and lines == ["error: --device cuda was asked for but no CUDA GPU is available: "
                                              "use --device cpu"]


def test_explain_json_carries_what_reproduces_it(tmp_path):
    from app_fixture import app_fixture

    fixture = app_fixture()
    image_id = fixture.image_ids[3]
    done, _ = run_cli("explain", "--model", str(fixture.model), "--gallery", str(fixture.gallery),
                      "--gallery-image", image_id, "--text", "a red car", "--out", str(tmp_path / "out"),
                      "--agg", "Mean", "--lambda-softmax", "4.5")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "out" / "alignment.json").read_text())
    import scan_viz

    assert record["scan_viz_version"] == scan_viz.__version__
    assert record["model"] == "model" and record["image"] == {"gallery": "app test gallery", "id": image_id}
    assert record["head_params"] == {"head": "scan_t2i", "cross_attn": "t2i", "raw_feature_norm": "clipped_l2norm",
                                     "lambda_softmax": 4.5, "agg_func": "Mean", "lambda_lse": 6.0}
    assert done.stdout.startswith(f"score {record['score']:.4f} (scan_t2i)")
