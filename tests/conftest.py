"""Fixtures every test module may ask for by name (pytest finds them here; no module imports them).

- ``bundle``: the tiny app bundle (model, detector, gallery of 12 generated scenes) of ``app_fixture.py``, built
  once per session;
- ``app``: an ``AppTest`` of ``app.py`` serving ``bundle`` (not yet run);
- ``build_head``: any registered matching head by name, for small random embeddings, including a head with
  trained weights of its own (random ones are made for a tiny model where that model looks for them);
- ``toy_head``: a head registered for the test only (one numeric setting, one choice), removed afterwards: what a
  contributor adding a head would write, for tests that check a new head shows up everywhere without other edits.

Helpers that are not fixtures (``app_fixture.py``, ``official_format.py``, ``peak_rss.py``) stay importable modules.
"""
from __future__ import annotations

import pytest
import torch
from app_fixture import APP, APP_TIMEOUT

#: Embedding size of the heads ``build_head`` makes.
EMBED = 16


@pytest.fixture(scope="session")
def bundle():
    """The app's fixture bundle (``app_fixture.AppFixture``), built on first use."""
    from app_fixture import app_fixture

    return app_fixture()


@pytest.fixture
def app(bundle, monkeypatch):
    """An AppTest of app.py serving the fixture bundle (not yet run)."""
    from streamlit.testing.v1 import AppTest

    for name, value in bundle.env().items():
        monkeypatch.setenv(name, value)
    return AppTest.from_file(APP, default_timeout=APP_TIMEOUT)


@pytest.fixture
def give_trained_heads(tmp_path, monkeypatch):
    """``give_trained_heads(model)``: random weights for every head that has trained weights of its own (the
    co-attention re-ranker), saved for ``model`` under a temporary ``pretrained/`` that the model looks in."""
    from scan_viz.heads.coattention_net import CoAttention, CoAttentionReranker
    from scan_viz.retrieval.stage1 import model_fingerprint

    def give(model):
        torch.manual_seed(0)
        net = CoAttention(model.config.embed_size, 8).double()
        with torch.no_grad():
            for param in net.parameters():
                param.normal_()  # a fresh one has q = 0 (uniform word weights), which hides mistakes
        pretrained = tmp_path / "pretrained"
        CoAttentionReranker(net.eval().requires_grad_(False), "tiny", model_fingerprint(model), "random").save(
            pretrained / "tiny-coattention")
        monkeypatch.setattr("scan_viz.model.PRETRAINED_DIR", pretrained)
        monkeypatch.setattr("scan_viz.parts.PRETRAINED_DIR", pretrained)
        return model

    return give


@pytest.fixture
def build_head(give_trained_heads):
    """``build_head(name, dtype=None, **settings)``: the registered head ``name`` for (..., EMBED) embeddings;
    a head with trained weights of its own gets random ones, made for a tiny random model."""
    from scan_viz.model.config import ScanConfig
    from scan_viz.heads import create_head, head_spec
    from scan_viz.model import ScanModel
    from scan_viz.text import Vocabulary

    config = ScanConfig(img_dim=8, embed_size=EMBED, word_dim=8)

    def build(name: str, dtype: str | None = None, **settings):
        if head_spec(name).from_model is None:
            return create_head(name, config, dtype=dtype, **settings)
        torch.manual_seed(0)
        model = give_trained_heads(ScanModel(config, Vocabulary.build(["a dog"], threshold=1)))
        return model.head(name, dtype=dtype, **settings)

    return build


@pytest.fixture
def toy_head():
    """The name of a head registered for this test: score = gain * the mean over words of the best region's
    cosine (``toy_gain``, a number), or of the mean region's (``toy_pool``, a choice); unregistered afterwards."""
    from scan_viz.heads import registry
    from scan_viz.heads import HeadOutput, HeadParam, MatchingHead, register_head
    from scan_viz.heads.similarity import region_word_similarity

    class ToyHead(MatchingHead):
        params = (HeadParam("toy_gain", 1.0, "factor on the score", low=0.1, high=10.0),
                  HeadParam("toy_pool", "max", "best region or mean region per word", choices=("max", "mean")))
        attention_label = "toy region weight"
        word_relevance_label = "toy word score"

        def scores(self, regions, words, word_lengths, region_lengths=None, return_attention=False):
            sims = region_word_similarity(regions, words, word_lengths, region_lengths).sims  # (i, r, c, w)
            per_word = sims.amax(dim=1) if self.settings["toy_pool"] == "max" else sims.mean(dim=1)  # (i, c, w)
            real = (torch.arange(words.shape[1]) < word_lengths[:, None]).to(per_word.dtype)  # (c, w)
            scores = self.settings["toy_gain"] * (per_word * real).sum(-1) / real.sum(-1)
            if not return_attention:
                return HeadOutput(scores)
            attention = torch.softmax(sims.permute(0, 2, 3, 1), dim=-1)  # (i, c, w, r)
            return HeadOutput(scores, attention, word_relevance=per_word * real)

        def bytes_per_pair(self, n_regions, n_words, itemsize):
            return n_regions * n_words * itemsize

    register_head("toy_test", ToyHead, "a toy head registered by a test")
    yield "toy_test"
    registry._HEADS.pop("toy_test", None)
