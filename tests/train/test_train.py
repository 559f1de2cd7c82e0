"""Training: it learns, writes loadable outputs, resumes exactly, and reports user errors in one line.

The data set is tiny and learnable: each image has two "concept" regions (a fixed prototype vector plus noise,
at random region slots, among noise regions) and its five captions name those two concepts in different
templates. Dev images use concept pairs distinct from each other, so retrieval on dev can be learnt to well
above chance.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from scan_viz.cli import main
from scan_viz.errors import ScanVizError
from scan_viz.evaluation.metrics import evaluate
from scan_viz.model import ScanModel, load_model
from scan_viz.model.checkpoint import load_official_checkpoint
from scan_viz.model.config import ScanConfig
from scan_viz.text import Vocabulary
from scan_viz.train import TrainOptions, train
from scan_viz.train.dataset import EpochShuffle
from scan_viz.train.loop import learning_rate
from scan_viz.train.toy import IMG_DIM, make_precomp


def tiny_config(**changes) -> ScanConfig:
    # lr 1e-2 instead of 2e-4: a handful of epochs on 200 pairs has to show learning
    values = dict(img_dim=IMG_DIM, embed_size=32, word_dim=16, batch_size=40, learning_rate=1e-2, lr_update=100,
                  num_epochs=15)
    values.update(changes)
    return ScanConfig(**values)


def quiet(**changes) -> TrainOptions:
    values = dict(workers=0, progress=False, log=lambda line: None)
    values.update(changes)
    return TrainOptions(**values)


def dev_rsum(model: ScanModel, data: Path) -> float:
    features = np.load(data / "dev_ims.npy")
    captions = (data / "dev_caps.txt").read_text(encoding="utf-8").splitlines()
    return evaluate(model.similarity(features, captions, dtype="float64")).rsum


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the models are tiny: one thread is fastest and leaves the other core alone
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_precomp(tmp_path_factory.mktemp("precomp"))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train(tiny_config(), data, out, quiet()), out


def test_training_learns(run, data):
    result, out = run
    vocab = Vocabulary.load(out / "vocab.json")
    torch.manual_seed(0)  # train() seeds the same way before building the encoders
    initial = dev_rsum(ScanModel(tiny_config(), vocab), data)

    losses = [record["loss"] for record in result.history]
    assert len(losses) == 15 and [r["epoch"] for r in result.history] == list(range(1, 16))
    assert losses[-1] < 0.5 * losses[0]
    assert result.best_rsum > initial + 100, (initial, result.best_rsum)
    assert result.best_rsum == max(record["rsum"] for record in result.history)


def test_outputs_load_and_agree(run, data):
    result, out = run
    for name in ("model_best.pth.tar", "checkpoint.pth.tar", "vocab.json", "log.jsonl", "last.pt",
                 "best/config.json", "best/model.safetensors", "best/vocab.json"):
        assert (out / name).is_file(), name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    official = load_official_checkpoint(out / "model_best.pth.tar")
    assert official.epoch == result.best_epoch
    assert official.best_rsum == pytest.approx(result.best_rsum)
    assert official.config.vocab_size == len(Vocabulary.load(out / "vocab.json"))
    assert official.config.embed_size == 32 and official.config.img_dim == IMG_DIM
    assert load_official_checkpoint(out / "checkpoint.pth.tar").epoch == 15

    features = np.load(data / "dev_ims.npy")
    captions = (data / "dev_caps.txt").read_text(encoding="utf-8").splitlines()
    from_official = load_model(out / "model_best.pth.tar", out / "vocab.json")
    from_dir = load_model(out / "best")
    np.testing.assert_array_equal(from_official.similarity(features, captions),
                                  from_dir.similarity(features, captions))
    # the saved best model is the one validation picked
    assert dev_rsum(from_dir, data) == pytest.approx(result.best_rsum)

    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 15 and state["best_epoch"] == result.best_epoch
    assert state["eiters"] == 15 * 5  # 200 pairs / batch 40


def test_resume_gives_the_same_weights(data, tmp_path):
    config = tiny_config(num_epochs=4, lr_update=3)  # the lr drops after the interruption
    straight = train(config, data, tmp_path / "straight", quiet())

    def interrupt_after_epoch_2(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, data, tmp_path / "resumed", quiet(log=interrupt_after_epoch_2))
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["epoch"] == 2
    resumed = train(config, data, tmp_path / "resumed", quiet(resume=True))

    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for key in ("image_state", "text_state"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), name
    for index, param_state in a["optimizer"]["state"].items():
        for name, value in param_state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name])
    assert (a["epoch"], a["eiters"], a["best_rsum"]) == (b["epoch"], b["eiters"], b["best_rsum"])
    assert [r["loss"] for r in straight.history] == [r["loss"] for r in resumed.history]
    assert [r["lr"] for r in resumed.history] == pytest.approx([1e-2, 1e-2, 1e-2, 1e-3])

    with pytest.raises(ScanVizError, match="--resume"):
        train(config, data, tmp_path / "resumed", quiet())
    with pytest.raises(ScanVizError, match="embed_size"):
        train(config.replace(embed_size=16), data, tmp_path / "resumed", quiet(resume=True))
    # more epochs is the one change a resumed run accepts
    longer = train(config.replace(num_epochs=5), data, tmp_path / "resumed", quiet(resume=True))
    assert [r["epoch"] for r in longer.history] == [1, 2, 3, 4, 5]


def test_cli_trains_with_workers(data, tmp_path, capsys):
    out = tmp_path / "cli-run"
    code = main(["train", "--data", str(data), "--out", str(out), "--embed-size", "32", "--word-dim", "16",
                 "--num-epochs", "1", "--batch-size", "40", "--workers", "1", "--no-progress", "--bi-gru"])
    assert code == 0
    config = json.loads((out / "best" / "config.json").read_text())
    assert (config["img_dim"], config["embed_size"], config["bi_gru"]) == (IMG_DIM, 32, True)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("epoch 1/1") and "rsum" in line for line in lines)
    record = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert set(record["i2t"]) >= {"r1", "r5", "r10"} and math.isfinite(record["rsum"])


def test_cli_says_when_bfloat16_products_are_emulated(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "bf16"), "--embed-size", "16", "--word-dim", "8",
                 "--num-epochs", "1", "--batch-size", "40", "--workers", "0", "--no-progress",
                 "--train-products", "bfloat16"])
    out = capsys.readouterr().out
    assert code == 0 and "torch reports AVX2" in out and "epoch 1/1" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_cuda(data, tmp_path):
    result = train(tiny_config(num_epochs=2), data, tmp_path / "cuda", quiet(device="cuda"))
    assert result.epochs == 2 and math.isfinite(result.best_rsum)
    assert load_model(result.model_dir).similarity(np.load(data / "dev_ims.npy")[:2], ["a cat"]).shape == (2, 1)


@pytest.mark.parametrize("problem", ["missing data", "missing split", "out is a file", "img_dim", "vocab"])
def test_cli_user_errors(problem, data, tmp_path, capsys):
    args = ["train", "--data", str(data), "--out", str(tmp_path / "out"), "--num-epochs", "1", "--workers", "0"]
    if problem == "missing data":
        args[2] = str(tmp_path / "nowhere")
    elif problem == "missing split":
        args += ["--dev-split", "val"]
    elif problem == "out is a file":
        (tmp_path / "file").write_text("x")
        args[4] = str(tmp_path / "file")
    elif problem == "img_dim":
        args += ["--img-dim", "2048"]
    elif problem == "vocab":
        (tmp_path / "vocab.json").write_text('{"word2idx": {"<pad>": 0}}')
        args += ["--vocab", str(tmp_path / "vocab.json")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


def test_lr_schedule_and_shuffle():
    config = ScanConfig(learning_rate=2e-4, lr_update=15)
    assert [learning_rate(config, e) for e in (0, 14, 15, 29, 30)] == pytest.approx([2e-4, 2e-4, 2e-5, 2e-5, 2e-6])
    sampler = EpochShuffle(50, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and first == list(sampler)
    sampler.set_epoch(2)
    assert list(sampler) != first


@pytest.mark.parametrize("cross_attn", ["t2i", "i2t"])
def test_blocked_batch_scores_equal_one_block(cross_attn):
    """Training scores a batch a few images at a time: same scores and gradients as one block (float64)."""
    from scan_viz.heads import create_head
    from scan_viz.train.loop import batch_scores

    torch.manual_seed(0)
    head = create_head(None, ScanConfig(img_dim=8, head_params={"cross_attn": cross_attn}))
    regions = torch.nn.functional.normalize(torch.randn(10, 5, 16, dtype=torch.float64), dim=-1).requires_grad_()
    words = torch.nn.functional.normalize(torch.randn(7, 6, 16, dtype=torch.float64), dim=-1)
    lengths = torch.tensor([6, 3, 4, 6, 2, 5, 6])
    words = (words * (torch.arange(6)[None, :, None] < lengths[:, None, None])).requires_grad_()
    one = head.scores(regions, words, lengths).scores
    g_one = torch.autograd.grad(one.square().sum(), (regions, words))
    # 3 images per block (block_bytes from 3 images' intermediates), the last block holds one image
    blocked = batch_scores(head, regions, words, lengths, block_bytes=3 * 5 * 7 * 6 * 8)
    g_blocked = torch.autograd.grad(blocked.square().sum(), (regions, words))
    assert blocked.shape == (10, 7)
    torch.testing.assert_close(blocked, one, rtol=0, atol=1e-12)
    for a, b in zip(g_blocked, g_one):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_batch_scores_packs_t2i_words_for_the_kernel(monkeypatch):
    """SCAN t2i through the C kernel: the whole batch in one call with the captions' words packed (no length
    groups); the same scores and gradients as autograd through blocks (float64). i2t keeps the length groups."""
    from scan_viz.heads import attention_grad, create_head, native
    from scan_viz.train.loop import batch_scores

    if native.library() is None:
        pytest.skip(f"C kernel not built: {native.status()}")
    calls = []
    monkeypatch.setattr(attention_grad, "ragged_pair_inputs",
                        lambda *a, f=attention_grad.ragged_pair_inputs: calls.append(a[1].shape) or f(*a))
    torch.manual_seed(1)
    regions = torch.nn.functional.normalize(torch.randn(6, 5, 16, dtype=torch.float64), dim=-1)
    words = torch.nn.functional.normalize(torch.randn(9, 7, 16, dtype=torch.float64), dim=-1)
    lengths = torch.tensor([7, 1, 4, 6, 2, 5, 7, 3, 3])
    for cross_attn, packed in (("t2i", 1), ("i2t", 1)):  # calls so far: i2t adds none
        head = create_head(None, ScanConfig(img_dim=8, head_params={"cross_attn": cross_attn}))
        results = []
        for fused in (True, False):
            r, w = regions.clone().requires_grad_(), words.clone().requires_grad_()
            scores = batch_scores(head, r, w, lengths, fused=fused)
            results.append((scores, *torch.autograd.grad(scores.square().sum(), (r, w))))
        assert len(calls) == packed
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_max_violation_warmup(data, tmp_path):
    """--max-violation-warmup 1: epoch 1 sums over negatives, later epochs take the hardest negative only."""
    result = train(tiny_config(num_epochs=3, max_violation=True, max_violation_warmup=1), data, tmp_path, quiet())
    assert [r["max_violation"] for r in result.history] == [False, True, True]
    with pytest.raises(ScanVizError, match="max_violation_warmup"):
        tiny_config(max_violation_warmup=-1)


def test_init_from_starts_at_the_models_weights(run, data, tmp_path):
    """A CHAN run started from the trained SCAN run begins where SCAN ended (its first dev rsum is SCAN's level,
    far above a fresh start), uses SCAN's vocabulary, and refuses a model of other encoder sizes."""
    _, scan_out = run
    scan_model = load_model(scan_out / "best")
    scan_model.config.extra["domain"] = "toy scenes"  # what the app shows visitors; a fine-tuned model keeps it
    scan_model.save(tmp_path / "scan")
    fresh = train(tiny_config(head="chan", num_epochs=1, learning_rate=1e-9), data, tmp_path / "fresh", quiet())
    tuned = train(tiny_config(head="chan", num_epochs=1, learning_rate=1e-9), data, tmp_path / "tuned",
                  quiet(init_from=str(tmp_path / "scan")))
    tuned_model = load_model(tmp_path / "tuned" / "best")
    assert tuned_model.vocab.word2idx == scan_model.vocab.word2idx
    assert tuned_model.config.extra == {"domain": "toy scenes"}
    for name, value in scan_model.text_encoder.state_dict().items():
        torch.testing.assert_close(tuned_model.text_encoder.state_dict()[name], value, atol=1e-6, rtol=0)
    assert tuned.best_rsum > fresh.best_rsum + 100, (fresh.best_rsum, tuned.best_rsum)
    with pytest.raises(ScanVizError, match="other encoder sizes.*embed_size 32 vs 48"):
        train(tiny_config(embed_size=48), data, tmp_path / "bad", quiet(init_from=str(scan_out / "best")))
