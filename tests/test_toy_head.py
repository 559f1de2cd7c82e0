"""A new head is one file plus its registration (issue 16): nothing else in scan-viz is edited, yet the head shows up
in the command line (``score``, ``eval``, ``explain``, ``train``), the sidebar, the links and every renderer.

The test writes that one file (a head with one number and one choice setting, trainable since its score is
differentiable), imports it (its ``register_head`` call is the registration), and drives every surface with it.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest
from app_fixture import APP
from app_fixture import APP_TIMEOUT as TIMEOUT
from test_app import no_exception
from test_heads import through_every_view
from test_model import _setup

from scan_viz.cli import main
from scan_viz.heads import registry

TOY_HEAD = '''
"""Toy: each word's softmax over the regions at temperature t, its attended cosine, mean- or max-pooled."""
import torch

from scan_viz.heads.registry import HeadOutput, HeadParam, MatchingHead, register_head


class ToyHead(MatchingHead):
    params = (HeadParam("toy_temperature", 1.0, "softmax temperature over the regions", label="t", low=0.1,
                        high=10.0, key="toyt"),
              HeadParam("toy_pool", "mean", "how the words' scores are pooled", label="pool",
                        choices=("mean", "max"), key="toyp"))
    attention_label = "toy attention"
    word_relevance_label = "toy R"

    def scores(self, regions, words, word_lengths, region_lengths=None, return_attention=False):
        sims = torch.einsum("ird,cwd->icwr", regions, words)
        valid = torch.arange(words.shape[1])[None, :] < word_lengths[:, None]  # (n_captions, max_words)
        attention = torch.softmax(sims / self.settings["toy_temperature"], dim=-1)
        relevance = (attention * sims).sum(-1)
        if self.settings["toy_pool"] == "max":
            scores = relevance.masked_fill(~valid[None], -1e4).amax(-1)
        else:
            scores = (relevance * valid[None]).sum(-1) / word_lengths[None].to(relevance.dtype)
        if not return_attention:
            return HeadOutput(scores)
        return HeadOutput(scores, attention, word_relevance=relevance)

    def bytes_per_pair(self, n_regions, n_words, itemsize):
        return 3 * n_regions * n_words * itemsize


register_head("toy", ToyHead, "toy: softmax attention at temperature t, pooled")
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The one file, imported: the head is registered while the module's tests run."""
    path = tmp_path_factory.mktemp("toyhead") / "toy_head.py"
    path.write_text(textwrap.dedent(TOY_HEAD))
    spec = importlib.util.spec_from_file_location("toy_head", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    registry._HEADS.pop("toy", None)


def test_cli_score_eval_explain_and_train_take_the_toy_heads_flags(toy, bundle, tmp_path, capsys):
    from scan_viz.model import load_model
    from scan_viz.train.toy import make_precomp

    flags = ["--head", "toy", "--toy-temperature", "2", "--toyp", "max"]
    model = load_model(bundle.model)
    # score: the numbers are the toy head's own, with the flags' settings
    from scan_viz.gallery import load_gallery

    gallery = load_gallery(bundle.gallery)
    np.save(tmp_path / "ims.npy", gallery.regions.features[:3])
    captions = [c for c in gallery.captions[:4]]
    (tmp_path / "caps.txt").write_text("\n".join(captions) + "\n")
    assert main(["score", "--model", str(bundle.model), "--images", str(tmp_path / "ims.npy"), "--captions",
                 str(tmp_path / "caps.txt"), "--out", str(tmp_path / "s.npy"), *flags]) == 0
    head = toy.ToyHead("toy", {"toy_temperature": 2.0, "toy_pool": "max"})
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"),
                               model.similarity(gallery.regions.features[:3], captions, head=head), atol=1e-6)
    # eval on the gallery, with the head named in the output
    assert main(["eval", "--model", str(bundle.model), "--gallery", str(bundle.gallery), "--json",
                 str(tmp_path / "e.json"), *flags]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["head"] == "toy"
    # explain: the alignment carries the toy head's settings and its labels
    image_id = bundle.image_ids[0]
    assert main(["explain", "--model", str(bundle.model), "--gallery", str(bundle.gallery), "--gallery-image",
                 image_id, "--text", "a red car", "--out", str(tmp_path / "x"), *flags]) == 0
    record = json.loads((tmp_path / "x" / "alignment.json").read_text())
    assert record["head"] == "toy" and record["head_params"] == {"head": "toy", "toy_temperature": 2.0, "toy_pool": "max"}
    assert record["attention_label"] == "toy attention"
    # train: the head's settings are training flags, written into the trained model's config
    data = make_precomp(tmp_path / "precomp", n_train=20, n_dev=6)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--embed-size", "16", "--word-dim",
                 "8", "--num-epochs", "1", "--batch-size", "10", "--workers", "0", "--no-progress", *flags]) == 0
    config = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert config["head"] == "toy" and config["head_params"] == {"toy_temperature": 2.0, "toy_pool": "max"}
    trained = load_model(tmp_path / "run" / "best")
    assert trained.head().name == "toy" and trained.head().settings == {"toy_temperature": 2.0, "toy_pool": "max"}
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:  # argparse checks the declared choices
        main(["score", "--model", str(bundle.model), "--images", str(tmp_path / "ims.npy"), "--captions",
              str(tmp_path / "caps.txt"), "--out", str(tmp_path / "s.npy"), "--head", "toy", "--toyp", "sum"])
    assert refused.value.code == 2 and "invalid choice: 'sum'" in capsys.readouterr().err


def test_sidebar_and_link_carry_the_toy_heads_settings(toy, bundle, monkeypatch):
    for name, value in bundle.env().items():
        monkeypatch.setenv(name, value)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    image_id = bundle.image_ids[1]
    for key, value in {"image": image_id, "q": "a red car", "head": "toy", "toyt": "3", "toyp": "max"}.items():
        at.query_params[key] = value
    at.run()
    no_exception(at)
    # the sidebar offers the head and one control per declared setting, holding the link's values
    assert "toy" in next(w for w in at.sidebar.selectbox if w.label == "Head").options
    controls = {w.label: w.value for w in [*at.sidebar.slider, *at.sidebar.selectbox]}
    assert controls.get("t") == pytest.approx(3.0) and controls.get("pool") == "max", controls
    # the page's own link writes them back under their declared keys
    link = {k: at.query_params[k] for k in at.query_params}
    assert (link.get("head"), link.get("toyt"), link.get("toyp")) == ("toy", "3", "max"), link
    # a bad value in a link is dropped with a one-line note, never an exception
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in {"image": image_id, "q": "a red car", "head": "toy", "toyp": "sum"}.items():
        at.query_params[key] = value
    at.run()
    no_exception(at)
    assert any("toyp" in str(getattr(w, "value", "")) for w in [*at.warning, *at.caption, *at.info, *at.markdown])


def test_every_renderer_draws_the_toy_head(toy, tmp_path):
    from scan_viz.model import load_model

    _, _, _, ckpt, vocab, _, feats = _setup(tmp_path, seed=8)
    through_every_view(load_model(ckpt, vocab), feats, "toy")


def test_the_toy_heads_scores_are_differentiable(toy):
    head = toy.ToyHead("toy", {"toy_temperature": 1.5, "toy_pool": "mean"})
    regions = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    words = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 3, 2])
    assert torch.autograd.gradcheck(lambda r, w: head.scores(r, w, lengths).scores, (regions, words))


def teardown_module():
    registry._HEADS.pop("toy", None)
    sys.modules.pop("toy_head", None)
