"""The token screen's query map (scan_viz.retrieval.query_map): the student score is the screen's, distillation moves
the screen's ranking towards SCAN's, saving and finding by fingerprint, and search using it for the screen only."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_stage1 import tiny_model, toy_data_and_model

from scan_viz.errors import ScanVizError
from scan_viz.parts import model_fingerprint
from scan_viz.retrieval.query_map import (QueryMap, QueryMapModule, find_query_map, load_query_map, map_words,
                                          query_map_option)
from scan_viz.train.query_map import screen_scores


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("agg", ["lse", "sum"])
def test_student_score_is_the_screens_maxsim_written_plainly(agg):
    """Each word's best real region cosine, pooled over the real words (LogSumExp with lambda, or a sum)."""
    g = torch.Generator().manual_seed(0)
    words, regions = unit(torch.randn(3, 5, 8, generator=g)), unit(torch.randn(4, 6, 8, generator=g))
    lengths, region_lengths = torch.tensor([5, 2, 3]), torch.tensor([6, 1, 4, 6])
    got = screen_scores(words, lengths, regions, region_lengths, agg, 6.0)
    for c in range(3):
        for i in range(4):
            best = [max(float(words[c, w] @ regions[i, r]) for r in range(int(region_lengths[i])))
                    for w in range(int(lengths[c]))]
            want = sum(best) if agg == "sum" else np.log(np.sum(np.exp(6.0 * np.array(best)))) / 6.0
            assert float(got[c, i]) == pytest.approx(want, abs=1e-5)


def test_distillation_brings_the_screen_closer_to_scan(tmp_path):
    """On the toy world, the trained map's screen scores agree with the model's own SCAN scores better than the
    words as they are do (cross-entropy of the two softmaxes over every training image), and the loss falls."""
    from scan_viz.heads.engine import score_matrix
    from scan_viz.regions.store import load_precomp
    from scan_viz.retrieval.tokens import token_settings
    from scan_viz.train.query_map import distill_query_map

    data, model = toy_data_and_model(tmp_path / "toy", n_train=64, n_dev=8)
    logs: list[str] = []
    query_map = distill_query_map(model, "toy", data, epochs=8, batch_size=16, lr=2e-2, tau=0.05, log=logs.append)
    assert sum(line.startswith("epoch") for line in logs) == 8
    losses = query_map.training["loss_per_epoch"]
    assert losses[-1] < losses[0]
    assert query_map.base_fingerprint == model_fingerprint(model) and query_map.training["images"] == 64

    train = load_precomp(data, "train")
    regions = model.encode_images(np.asarray(train.regions.features, dtype=np.float32))
    caps = model.encode_captions(train.captions)
    teacher = torch.as_tensor(score_matrix(model.head(), regions, caps.emb, caps.lengths)).T.float()
    settings = token_settings(model)

    def disagreement(mapping) -> float:
        words = torch.stack([mapping(caps.emb[c]) for c in range(len(caps.emb))])
        student = screen_scores(words, caps.lengths, regions, None, settings["agg"], settings["lambda_lse"])
        target = torch.softmax(teacher / 0.05, dim=1)
        return float(-(target * torch.log_softmax(student / 0.05, dim=1)).sum(dim=1).mean())

    assert disagreement(query_map) < disagreement(lambda w: w) - 0.05


def test_saved_map_round_trips_and_is_found_only_for_its_model(tmp_path):
    model = tiny_model()
    module = QueryMapModule(32)
    with torch.no_grad():
        module.weight.add_(0.1 * torch.randn(32, 32, generator=torch.Generator().manual_seed(1)))
    QueryMap(module, "tiny", model_fingerprint(model), {"epochs": 1}).save(tmp_path / "tiny-query-map")
    loaded = load_query_map(tmp_path / "tiny-query-map")
    words = unit(torch.randn(4, 32))
    torch.testing.assert_close(loaded(words), module(words).detach())
    torch.testing.assert_close(loaded(words).norm(dim=1), torch.ones(4))
    assert loaded.training == {"epochs": 1}
    assert find_query_map(model, [tmp_path / "tiny-query-map"]).base_fingerprint == model_fingerprint(model)
    assert find_query_map(tiny_model(seed=1), [tmp_path / "tiny-query-map"]) is None  # other weights: never used
    assert map_words(None, words) is words
    (tmp_path / "tiny-query-map" / "query_map.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ScanVizError, match="token-screen query map"):
        load_query_map(tmp_path / "tiny-query-map")
    with pytest.raises(ValueError, match="auto or none"):
        query_map_option(model, "yes")
    # a config declaring a huge map is refused before anything is allocated for it (10^7 x 10^7 floats)
    (tmp_path / "tiny-query-map" / "query_map.json").write_text(
        '{"format": "scan-viz-query-map/1", "dim": 10000000, "base_model": "t", "base_fingerprint": "f"}')
    with pytest.raises(ScanVizError, match="dim must be an integer from 0 to 4,096"):
        load_query_map(tmp_path / "tiny-query-map")


def test_word_moment_is_the_mapped_words_second_moment_and_is_saved(tmp_path):
    """E[u u^T] over the real words only (padding left out), each word mapped; saved with the map and loaded back; a
    map saved without one loads without one; the bundled map carries one, which token indexes fit their codes to."""
    from scan_viz.model import load_model
    from scan_viz.retrieval.query_map import word_moment
    from scan_viz.retrieval.tokens import token_settings

    model = tiny_model()
    module = QueryMapModule(32)
    with torch.no_grad():
        module.weight.add_(0.1 * torch.randn(32, 32, generator=torch.Generator().manual_seed(2)))
    plain = QueryMap(module, "tiny", model_fingerprint(model), {"epochs": 1})
    assert plain.word_moment is None
    words = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor([5, 2, 3])
    real = torch.cat([module(words[c, :int(lengths[c])]).detach().double() for c in range(3)])
    got = word_moment(plain, words, lengths, batch=2)
    torch.testing.assert_close(got.double(), real.T @ real / len(real), rtol=1e-6, atol=1e-7)
    with_moment = plain.with_word_moment(got, {"captions": 3})
    assert with_moment.training == {"epochs": 1, "word_moment": {"captions": 3}}
    with_moment.save(tmp_path / "m")
    back = load_query_map(tmp_path / "m")
    torch.testing.assert_close(back.word_moment, got)
    torch.testing.assert_close(back(words[0]), module(words[0]).detach())
    plain.save(tmp_path / "p")
    assert load_query_map(tmp_path / "p").word_moment is None
    with pytest.raises(ScanVizError, match="no caption words"):
        word_moment(plain, words, torch.zeros(3, dtype=torch.int64))
    bundled = token_settings(load_model("scan-emoji-t2i"))["query_moment"]
    assert bundled.shape == (256, 256) and abs(float(np.trace(bundled)) - 1.0) < 1e-4  # unit words


def test_moment_only_adds_the_moment_to_a_saved_map_and_keeps_its_weights(tmp_path, capsys):
    """``python -m scan_viz.train.query_map --moment-only``: the map in --out gets the second moment of its mapped
    words over every training caption, its weights unchanged; a map made for other encoders is refused with one
    error line and exit status 2."""
    from scan_viz.regions.store import load_precomp
    from scan_viz.retrieval.query_map import word_moment
    from scan_viz.train.query_map import main

    data, model = toy_data_and_model(tmp_path / "toy", n_train=16, n_dev=4)
    model.save(tmp_path / "model")
    module = QueryMapModule(32)
    with torch.no_grad():
        module.weight.add_(0.1 * torch.randn(32, 32, generator=torch.Generator().manual_seed(4)))
    QueryMap(module, "toy", model_fingerprint(model), {"epochs": 1}).save(tmp_path / "map")
    argv = ["--model", str(tmp_path / "model"), "--data", str(data), "--out", str(tmp_path / "map"), "--moment-only"]
    assert main(argv) == 0
    back = load_query_map(tmp_path / "map")
    torch.testing.assert_close(back.module.weight, module.weight.detach())
    caps = model.encode_captions(load_precomp(data, "train").captions)
    torch.testing.assert_close(back.word_moment, word_moment(back, caps.emb, caps.lengths))
    assert back.training["word_moment"]["captions"] == len(caps.lengths) and back.training["epochs"] == 1
    QueryMap(module, "other", "not-this-model", None).save(tmp_path / "other")
    capsys.readouterr()
    assert main(argv[:-2] + [str(tmp_path / "other"), "--moment-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "other encoders" in err and len(err.splitlines()) == 1


def test_search_screens_with_the_map_and_scores_with_the_words(tmp_path):
    """The map changes which images the screen passes on, never stage 2's scores: a map that turns every word
    around (-I) makes the screen pass the images least like the caption, each still scored exactly."""
    from scan_viz.heads.engine import score_matrix
    from scan_viz.retrieval.search import TwoStageSearch

    torch.manual_seed(0)
    model = tiny_model()
    features = np.random.default_rng(0).random((40, 5, 16)).astype(np.float32)
    ids = [f"im{i}" for i in range(40)]
    plain = TwoStageSearch(model, ids, features, None, screen="tokens", query_map=None)
    assert plain.query_map is None and TwoStageSearch(model, ids, features, None, screen="tokens").query_map is None
    flip = QueryMapModule(32)
    with torch.no_grad():
        flip.weight.mul_(-1)
    flipped = TwoStageSearch(model, ids, features, None, screen="tokens", token_index=plain.tokens(),
                             query_map=QueryMap(flip, "tiny", model_fingerprint(model)))
    text = "a red car"
    caps = model.encode_captions([text])
    exact = score_matrix(model.head(), model.encode_images(features), caps.emb, caps.lengths)[:, 0]
    for search in (plain, flipped):
        hits = search.search_text(text, k=5, stage1_k=5)
        np.testing.assert_allclose([h.score for h in hits], [exact[ids.index(h.id)] for h in hits], rtol=1e-5,
                                   atol=1e-6)
    near = {h.id for h in plain.search_text(text, k=5, stage1_k=5)}
    far = {h.id for h in flipped.search_text(text, k=5, stage1_k=5)}
    assert near != far
    best = {ids[i] for i in np.argsort(-exact)[:5]}
    assert len(near & best) > len(far & best)
