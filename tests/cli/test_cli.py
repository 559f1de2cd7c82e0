"""`scan-viz score | eval | convert`: same numbers as the library, one `error:` line and status 2 on bad input."""
import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from official_format import official_opt, random_states, write_py2_checkpoint
from scan_viz.cli import main
from scan_viz.evaluation.metrics import evaluate, fold5_average, fold_slices
from scan_viz.model import load_model
from scan_viz.train.toy import make_precomp

REPO = Path(__file__).resolve().parents[2]
TOY_MODEL = REPO / "examples" / "toy" / "model"


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """An official Python 2 checkpoint + vocab + features + captions on disk."""
    root = tmp_path_factory.mktemp("official")
    words = ["a", "dog", "cat", "red", "car", "on", "grass"]
    word2idx = {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    (root / "vocab.json").write_text(json.dumps({"word2idx": word2idx, "idx": len(word2idx)}))
    opt = official_opt(vocab_size=len(word2idx))
    write_py2_checkpoint(root / "model_best.pth.tar", opt, *random_states(opt))
    np.save(root / "ims.npy", np.random.default_rng(0).standard_normal((4, 5, opt["img_dim"])).astype(np.float32))
    (root / "caps.txt").write_text("a dog on grass\nthe red car\na cat\n", encoding="utf-8")
    return root


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_score_official_checkpoint(official, tmp_path, capsys):
    out = tmp_path / "sims.npy"
    args = ["score", "--model", str(official / "model_best.pth.tar"), "--vocab", str(official / "vocab.json"),
            "--images", str(official / "ims.npy"), "--captions", str(official / "caps.txt"), "--out", str(out)]
    assert main(args + ["--dtype", "float64"]) == 0
    sims = np.load(out)
    model = load_model(official / "model_best.pth.tar", official / "vocab.json")
    expected = model.similarity(np.load(official / "ims.npy"), ["a dog on grass", "the red car", "a cat"],
                                dtype="float64")
    assert sims.shape == (4, 3) and sims.dtype == np.float64
    np.testing.assert_array_equal(sims, expected)
    assert "4 images x 3 captions" in capsys.readouterr().out


def test_score_overrides_change_the_head(official, tmp_path):
    out = tmp_path / "sims.npy"
    base = ["score", "--model", str(official / "model_best.pth.tar"), "--vocab", str(official / "vocab.json"),
            "--images", str(official / "ims.npy"), "--captions", str(official / "caps.txt"), "--out", str(out)]
    assert main(base + ["--cross-attn", "i2t", "--agg", "Mean", "--lambda-softmax", "4"]) == 0
    model = load_model(official / "model_best.pth.tar", official / "vocab.json")
    head = model.head(None, cross_attn="i2t", agg_func="Mean", lambda_softmax=4.0)
    expected = model.similarity(np.load(official / "ims.npy"), ["a dog on grass", "the red car", "a cat"], head=head)
    np.testing.assert_allclose(np.load(out), expected, rtol=0, atol=1e-6)
    default = model.similarity(np.load(official / "ims.npy"), ["a dog on grass", "the red car", "a cat"])
    assert np.abs(np.load(out) - default).max() > 1e-3  # the overrides really took effect


def test_convert_then_score_the_directory(official, tmp_path):
    conv = tmp_path / "converted"
    assert main(["convert", "--checkpoint", str(official / "model_best.pth.tar"),
                 "--vocab", str(official / "vocab.json"), "--out", str(conv)]) == 0
    assert {p.name for p in conv.iterdir()} >= {"config.json", "model.safetensors", "vocab.json"}
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    common = ["--images", str(official / "ims.npy"), "--captions", str(official / "caps.txt")]
    assert main(["score", "--model", str(conv), *common, "--out", str(a)]) == 0
    assert main(["score", "--model", str(official / "model_best.pth.tar"), "--vocab", str(official / "vocab.json"),
                 *common, "--out", str(b)]) == 0
    np.testing.assert_array_equal(np.load(a), np.load(b))


def test_eval_json_matches_library(tmp_path):
    data = make_precomp(tmp_path / "d", n_train=5, n_dev=5, n_test=10)
    out = tmp_path / "m.json"
    assert main(["eval", "--model", str(TOY_MODEL), "--data", str(data), "--split", "test", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    model = load_model(TOY_MODEL)
    caps = (data / "test_caps.txt").read_text().splitlines()
    expected = evaluate(model.similarity(np.load(data / "test_ims.npy"), caps)).to_dict()
    for direction in ("i2t", "t2i"):
        assert set(got[direction]) == {"r1", "r5", "r10", "medr", "meanr"}
        assert got[direction] == pytest.approx(expected[direction])
    assert got["rsum"] == pytest.approx(expected["rsum"])
    assert (got["n_images"], got["n_captions"]) == (10, 50)


def test_outputs_dash_is_stdout_with_messages_on_stderr(tmp_path, capsys, monkeypatch):
    """``--json -`` / ``--out -``: the data alone on stdout (JSON, .npy bytes), every message on stderr."""
    data = make_precomp(tmp_path / "d", n_train=5, n_dev=5, n_test=10)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--model", str(TOY_MODEL), "--data", str(data), "--split", "test", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n_images"] == 10 and "rsum" in err and not (tmp_path / "-").exists()
    buffer = tmp_path / "stdout.bin"
    with open(buffer, "w+b") as raw, open(raw.fileno(), "w", closefd=False) as text:
        monkeypatch.setattr(sys, "stdout", text)
        assert main(["score", "--model", str(TOY_MODEL), "--images", str(data / "test_ims.npy"), "--captions",
                     str(data / "test_caps.txt"), "--out", "-"]) == 0
    assert np.load(buffer).shape == (10, 50) and "10 images x 50 captions" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["/dev/stdout", "/dev/null", "folder"])
def test_outputs_that_are_not_regular_files_are_refused_before_any_work(tmp_path, capsys, target):
    target = str(tmp_path) if target == "folder" else target
    assert main(["eval", "--model", str(tmp_path / "no-such-model"), "--data", str(tmp_path), "--json",
                 target]) == 2
    assert _error_line(capsys).startswith("error: --json ")  # refused before the missing model is noticed
    assert not stat.S_ISREG(os.lstat("/dev/stdout").st_mode)  # the device link was not replaced by a file


def test_eval_fold5_averages_folds(tmp_path):
    data = make_precomp(tmp_path / "d", n_train=5, n_dev=5, n_test=10)
    out = tmp_path / "m.json"
    assert main(["eval", "--model", str(TOY_MODEL), "--data", str(data), "--split", "test", "--fold5",
                 "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    model = load_model(TOY_MODEL)
    feats = np.load(data / "test_ims.npy")
    caps = (data / "test_caps.txt").read_text().splitlines()
    folds = [evaluate(model.similarity(feats[i], caps[c])) for i, c in fold_slices(10)]
    assert got["rsum"] == pytest.approx(fold5_average(folds).rsum)
    assert got["rsum"] == pytest.approx(np.mean([f.rsum for f in folds]))


def _bad_inputs(official, tmp_path):
    ckpt, vocab = str(official / "model_best.pth.tar"), str(official / "vocab.json")
    ims, caps = str(official / "ims.npy"), str(official / "caps.txt")
    evil = tmp_path / "evil.pth.tar"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    evil.write_bytes(pickle.dumps({"model": Evil()}, protocol=2))
    (tmp_path / "empty_line.txt").write_text("a dog\n\na cat\n")
    np.save(tmp_path / "wrong_dim.npy", np.zeros((2, 5, 7), np.float32))
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    out = str(tmp_path / "o.npy")
    return marker, {
        "missing model": ["score", "--model", str(tmp_path / "nope"), "--images", ims, "--captions", caps,
                          "--out", out],
        "no vocab": ["score", "--model", ckpt, "--images", ims, "--captions", caps, "--out", out],
        "malicious": ["score", "--model", str(evil), "--vocab", vocab, "--images", ims, "--captions", caps,
                      "--out", out],
        "empty caption": ["score", "--model", ckpt, "--vocab", vocab, "--images", ims, "--captions",
                          str(tmp_path / "empty_line.txt"), "--out", out],
        "wrong dim": ["score", "--model", ckpt, "--vocab", vocab, "--images", str(tmp_path / "wrong_dim.npy"),
                      "--captions", caps, "--out", out],
        "corrupt npy": ["score", "--model", ckpt, "--vocab", vocab, "--images", str(tmp_path / "corrupt.npy"),
                        "--captions", caps, "--out", out],
        "bad head": ["score", "--model", ckpt, "--vocab", vocab, "--images", ims, "--captions", caps,
                     "--out", out, "--head", "nope"],
        "unwritable out": ["score", "--model", ckpt, "--vocab", vocab, "--images", ims, "--captions", caps,
                           "--out", str(tmp_path / "no" / "such" / "dir" / "o.npy")],
        "missing data": ["eval", "--model", str(TOY_MODEL), "--data", str(tmp_path / "nodata"), "--split", "test"],
        "bad vocab": ["convert", "--checkpoint", ckpt, "--vocab", caps, "--out", str(tmp_path / "c")],
    }


@pytest.mark.parametrize("case", ["missing model", "no vocab", "malicious", "empty caption", "wrong dim",
                                  "corrupt npy", "bad head", "unwritable out", "missing data", "bad vocab"])
def test_user_errors_exit_2_with_one_line(official, tmp_path, capsys, case):
    marker, cases = _bad_inputs(official, tmp_path)
    assert main(cases[case]) == 2
    line = _error_line(capsys)
    if case == "malicious":
        assert "refus" in line and not marker.exists()
    if case == "empty caption":
        assert "line 2" in line


def test_real_process_exit_status_and_no_traceback(official, tmp_path):
    _, cases = _bad_inputs(official, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "scan_viz.cli", *cases["malicious"]], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")


def test_help_is_plain_text(capsys):
    """No reStructuredText markup (``code``, :func:) in any command's --help."""
    import re

    for command in ([], ["score"], ["eval"], ["explain"], ["convert"], ["search"], ["index"], ["train"]):
        with pytest.raises(SystemExit):
            main(command + ["--help"])
        text = capsys.readouterr().out
        assert text.startswith("usage: scan-viz") and not re.search(r"``|:(func|class|data|mod|meth):", text), text


def test_no_model_error_lists_only_models(capsys):
    assert main(["explain", "--model", "no-such-model", "--gallery-image", "x", "--text", "a dog", "--out",
                 "unused"]) == 2
    line = _error_line(capsys)
    listed = line.split("bundled models: ", 1)[1].rstrip(")").split(", ")
    assert "scan-emoji-t2i" in listed and all((REPO / "pretrained" / name / "config.json").is_file()
                                               for name in listed)


def test_progress_reports_lines_when_stderr_is_not_a_terminal(tmp_path):
    """Off a terminal (a log, a pipe) progress is a line every 10%, so a long `eval --gallery` shows it runs."""
    import io

    from scan_viz.progress import Progress

    out = io.StringIO()
    report = Progress("scoring", out)
    for done in range(0, 1001, 50):
        report(done, 1000)
    lines = out.getvalue().splitlines()
    assert lines[0] == "scoring: 0% (0 of 1,000)" and lines[-1] == "scoring: 100% (1,000 of 1,000)"
    assert len(lines) == 11 and "\r" not in out.getvalue()
