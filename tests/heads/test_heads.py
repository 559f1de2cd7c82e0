"""The matching heads behind one interface: CHAN and CAAN-style math against plain re-statements, masking and
invariances, bfloat16 products, the settings declarations, and every registered head through every view."""
import math

import numpy as np
import pytest
import torch

from scan_viz import ScanVizError, load_model
from scan_viz.heads import (HeadParam, MatchingHead, all_head_params, create_head, head_names, head_settings, head_spec,
                            register_head)
from scan_viz.heads.similarity import bfloat16_emulated_note, region_word_similarity
from scan_viz.model.config import ScanConfig
from test_model import CAPTIONS, _reference_images, _reference_text, _setup

CONFIG = ScanConfig(img_dim=8, embed_size=16)


def random_block(n_img=3, n_reg=5, n_cap=4, n_words=6, d=16, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    regions = torch.nn.functional.normalize(torch.randn(n_img, n_reg, d, generator=gen, dtype=dtype), dim=-1)
    words = torch.nn.functional.normalize(torch.randn(n_cap, n_words, d, generator=gen, dtype=dtype), dim=-1)
    lengths = torch.tensor([n_words, 3, 2, n_words - 1])[:n_cap]
    return regions, words, lengths


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ----------------------------------------------------------------------------- CHAN


def chan_loop(images: np.ndarray, captions: list[np.ndarray], beta: float, agg: str) -> np.ndarray:
    """CHAN's formula one pair, one word, one region at a time: beta * log sum_w exp(max_r cos(u_w, v_r) / beta)."""
    out = np.zeros((len(images), len(captions)))
    for i, regions in enumerate(images):
        for c, words in enumerate(captions):
            best = [max(cos(u, v) for v in regions) for u in words]
            if agg == "LogSumExp":
                out[i, c] = beta * math.log(sum(math.exp(b / beta) for b in best))
            else:
                out[i, c] = sum(best) / len(best)
    return out


@pytest.mark.parametrize("agg,beta", [("LogSumExp", 0.1), ("LogSumExp", 0.5), ("Mean", 0.1)])
def test_chan_on_an_official_checkpoint_equals_its_formula(tmp_path, agg, beta):
    opt, img_st, txt_st, ckpt, vocab, w2i, feats = _setup(tmp_path, seed=5, bi_gru=True)
    model = load_model(ckpt, vocab)
    images = _reference_images(opt, img_st, feats).numpy()  # the official encoders re-stated in float64
    captions = [_reference_text(opt, txt_st, c, w2i).numpy() for c in CAPTIONS]
    expected = chan_loop(images, captions, beta, agg)
    got = model.similarity(feats, CAPTIONS, dtype="float64", head=model.head("chan", beta=beta, chan_agg=agg))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # and it is not SCAN's score under another name
    assert np.abs(model.similarity(feats, CAPTIONS, dtype="float64") - expected).max() > 1e-2


def test_chan_padding_regions_never_win_and_alignment_is_the_argmax():
    regions, words, lengths = random_block()
    head = create_head("chan", CONFIG)
    full = head.scores(regions[:, :3], words, lengths, return_attention=True)
    # two extra regions that would beat every real one, marked as padding
    padded = torch.cat([regions[:, :3], words[:1, :2].expand(regions.shape[0], 2, -1)], dim=1)
    res = head.scores(padded, words, lengths, torch.tensor([3, 3, 3]), return_attention=True)
    torch.testing.assert_close(res.scores, full.scores, rtol=0, atol=1e-12)
    sims = torch.einsum("ird,cwd->icwr", regions[:, :3], words)
    valid = (torch.arange(words.shape[1]) < lengths[:, None])[None].expand(regions.shape[0], -1, -1)
    assert torch.equal(res.attention[..., :3].argmax(-1)[valid], sims.argmax(-1)[valid])
    assert res.attention[..., 3:].sum() == 0 and torch.all(res.attention.sum(-1) == 1)
    torch.testing.assert_close(res.word_relevance[0, 1, :3], sims[0, 1, :3].max(-1).values)
    assert torch.all(res.word_relevance[0, 1, 3:] == 0)  # padded words carry nothing


# ----------------------------------------------------------------------------- CAAN-style


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def caan_pair(v: np.ndarray, u: np.ndarray, li: float, lc: float, lp: float) -> float:
    """The CAAN-style docstring's equations for one pair, item by item."""
    h = v @ u.T
    k, n = h.shape
    m_r = np.array([softmax(li * h[r]) @ h[r] for r in range(k)])
    m_w = np.array([softmax(li * h[:, w]) @ h[:, w] for w in range(n)])
    n_r = h / (np.linalg.norm(h, axis=1, keepdims=True) + 1e-8)
    n_w = h / (np.linalg.norm(h, axis=0, keepdims=True) + 1e-8)
    c_r = np.array([softmax(lc * (n_r @ n_r[r])) @ m_r for r in range(k)])
    c_w = np.array([softmax(lc * (n_w.T @ n_w[:, w])) @ m_w for w in range(n)])
    alpha, beta = softmax(lp * (m_r + c_r)), softmax(lp * (m_w + c_w))
    return cos(alpha @ v, beta @ u)


def test_caan_equals_its_docstring_equations():
    regions, words, lengths = random_block(seed=1)
    settings = dict(lambda_inter=7.0, lambda_intra=4.0, lambda_pool=12.0)
    got = create_head("caan", CONFIG, **settings).scores(regions, words, lengths, torch.tensor([5, 2, 4])).scores
    for i, n_reg in enumerate((5, 2, 4)):
        for c, n in enumerate(lengths.tolist()):
            expected = caan_pair(regions[i, :n_reg].numpy(), words[c, :n].numpy(), *settings.values())
            assert float(got[i, c]) == pytest.approx(expected, abs=1e-10)


def test_caan_shapes_and_weights():
    regions, words, lengths = random_block(seed=2)
    res = create_head("caan", CONFIG).scores(regions, words, lengths, torch.tensor([5, 4, 2]), return_attention=True)
    assert res.scores.shape == (3, 4) and res.attention.shape == (3, 4, 6, 5)
    assert res.word_relevance.shape == (3, 4, 6) and res.region_relevance.shape == (3, 4, 5)
    torch.testing.assert_close(res.word_relevance.sum(-1), torch.ones(3, 4, dtype=torch.float64))
    torch.testing.assert_close(res.region_relevance.sum(-1), torch.ones(3, 4, dtype=torch.float64))
    assert torch.all(res.region_relevance[2, :, 2:] == 0) and torch.all(res.word_relevance[:, 2, 2:] == 0)
    assert torch.all(res.scores.abs() <= 1 + 1e-12)


def test_caan_is_invariant_to_region_order_and_padding():
    regions, words, lengths = random_block(seed=3)
    head = create_head("caan", CONFIG)
    base = head.scores(regions, words, lengths).scores
    perm = torch.randperm(regions.shape[1], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(head.scores(regions[:, perm], words, lengths).scores, base, rtol=0, atol=1e-12)
    junk = torch.nn.functional.normalize(torch.randn(3, 4, regions.shape[2], dtype=torch.float64), dim=-1)
    padded = torch.cat([regions, junk], dim=1)
    torch.testing.assert_close(head.scores(padded, words, lengths, torch.tensor([5, 5, 5])).scores, base,
                               rtol=0, atol=1e-12)
    # padding words: extra columns past each length (random, not zeros) change nothing either
    longer = torch.cat([words, torch.randn(4, 3, words.shape[2], dtype=torch.float64)], dim=1)
    torch.testing.assert_close(head.scores(regions, longer, lengths).scores, base, rtol=0, atol=1e-12)
    # and a real extra region does change it: the check can fail
    assert not torch.allclose(head.scores(padded, words, lengths).scores, base, atol=1e-6)


@pytest.mark.parametrize("name", head_names())
def test_every_head_trains(name, build_head):
    """Scores are differentiable with padded words (no NaN gradients), as the training loop needs."""
    regions, words, lengths = random_block(seed=4)
    regions.requires_grad_(True)
    words.requires_grad_(True)
    build_head(name).scores(regions, words, lengths, torch.tensor([5, 3, 4])).scores.sum().backward()
    assert torch.isfinite(regions.grad).all() and torch.isfinite(words.grad).all()
    assert regions.grad.abs().sum() > 0 and words.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- bfloat16 products


@pytest.mark.parametrize("name", head_names())
def test_bfloat16_products_stay_close_to_float32(name, build_head):
    regions, words, lengths = random_block(n_img=6, n_reg=12, n_cap=4, d=16, seed=6, dtype=torch.float32)
    full = build_head(name).scores(regions, words, lengths).scores
    bf16 = build_head(name, dtype="bfloat16").scores(regions, words, lengths).scores
    assert bf16.dtype == torch.float32  # only the products ran in bf16
    assert not torch.equal(bf16, full)  # they did run in bf16
    torch.testing.assert_close(bf16, full, rtol=0, atol=0.02)


@pytest.mark.parametrize("machine, capability, device, said", [
    ("x86_64", "AVX2", "cpu", True), ("x86_64", "NO AVX", "cpu", True), ("x86_64", "AVX512", "cpu", False),
    ("x86_64", "AVX2", "cuda", False), ("aarch64", "DEFAULT", "cpu", False)])
def test_bfloat16_note_only_where_bf16_is_emulated(monkeypatch, machine, capability, device, said):
    monkeypatch.setattr("platform.machine", lambda: machine)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    note = bfloat16_emulated_note(device)
    assert (note is not None) == said
    if said:
        assert capability in note and "\n" not in note


def test_bfloat16_product_is_the_rounded_product():
    regions, words, lengths = random_block(dtype=torch.float32)
    got = region_word_similarity(regions, words, lengths, product_dtype=torch.bfloat16).sims
    expected = torch.einsum("ird,cwd->ircw", regions.bfloat16().float(), words.bfloat16().float())
    expected = expected * (torch.arange(6) < lengths[:, None])[None, None]
    torch.testing.assert_close(got, expected, rtol=8e-3, atol=8e-3)


def test_model_similarity_in_bfloat16(tmp_path):
    _, _, _, ckpt, vocab, _, feats = _setup(tmp_path, seed=7)
    model = load_model(ckpt, vocab)
    for name in ("scan", "chan"):
        full = model.similarity(feats, CAPTIONS, head=name)
        bf16 = model.similarity(feats, CAPTIONS, head=name, dtype="bfloat16")
        assert bf16.dtype == np.float32 and np.abs(bf16 - full).max() < 0.03 and not np.array_equal(bf16, full)
    with pytest.raises(ScanVizError, match="dtype must be one of float32, float64, bfloat16"):
        model.similarity(feats, CAPTIONS, dtype="float16")


# ----------------------------------------------------------------------------- settings declarations


def test_settings_come_from_overrides_then_config_then_declaration():
    config = ScanConfig(img_dim=8, head_params={"lambda_softmax": 4.0, "beta": 0.3})
    assert head_settings("scan_t2i", config)["lambda_softmax"] == 4.0  # an official checkpoint's own value
    assert head_settings("scan_t2i", config, {"lambda_softmax": 6.0})["lambda_softmax"] == 6.0
    assert head_settings("chan", config) == {"beta": 0.3, "chan_agg": "LogSumExp"}
    assert head_settings("caan", config)["lambda_pool"] == 10.0  # the declared default
    assert create_head(None, config.replace(head="chan")).name == "chan"  # the model's own head by default


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ScanVizError, match=r"beta must be a number from 0.01 to 1, got 'x'"):
        create_head("chan", CONFIG, beta="x")
    with pytest.raises(ScanVizError, match=r"chan_agg must be one of LogSumExp, Mean, got 'Max'"):
        create_head("chan", CONFIG, chan_agg="Max")
    with pytest.raises(ScanVizError, match=r"the chan head has no setting lambda_softmax"):
        create_head("chan", CONFIG, lambda_softmax=9.0)
    with pytest.raises(ScanVizError, match=r"unknown head 'vse'"):
        create_head("vse", CONFIG)


@pytest.mark.parametrize("name", head_names())
def test_each_heads_settings_are_what_the_cli_reads(name):
    """Every setting a head declares is one ``scan-viz score`` option, with its declared default, that parses a
    value in range into the head's settings and refuses one out of range."""
    from scan_viz.cli import build_parser

    score = build_parser()._subparsers._group_actions[0].choices["score"]
    for param in head_spec(name).params:
        [action] = [a for a in score._actions if param.flag in a.option_strings]  # one option, not one per head
        assert param.help and param.flag == "--" + param.name.replace("_", "-")
        assert param.parse(param.default) == param.default
        if param.is_number:
            assert param.low <= param.default <= param.high and param.parse(str(param.high)) == param.high
            with pytest.raises(ScanVizError, match=f"{param.name} must be a number from"):
                param.parse(param.high * 2 + 1)
        else:
            assert param.default in param.choices
            with pytest.raises(ScanVizError, match=f"{param.name} must be one of"):
                param.parse("no-such-choice")
        parsed = score.parse_args(["--model", "m", "--images", "i", "--captions", "c", "--out", "o",
                                   param.flag, str(param.default)])
        assert getattr(parsed, action.dest) in (param.default, str(param.default))


def test_the_settings_the_cli_and_links_know_are_the_papers():
    assert {"lambda_softmax", "lambda_lse", "agg_func", "raw_feature_norm", "beta", "chan_agg",
            "lambda_inter", "lambda_intra", "lambda_pool"} <= {p.name for p in all_head_params()}


def test_a_new_head_is_one_class_and_one_registration():
    class DotMax(MatchingHead):
        params = (HeadParam("dotmax_scale", 1.0, "a factor", low=0.1, high=10.0),)
        word_relevance_label = "best dot"

        def scores(self, regions, words, word_lengths, region_lengths=None, return_attention=False):
            from scan_viz.heads import HeadOutput

            sims = region_word_similarity(regions, words, word_lengths, region_lengths).sims
            return HeadOutput(self.settings["dotmax_scale"] * sims.amax(dim=(1, 3)))

        def bytes_per_pair(self, n_regions, n_words, itemsize):
            return n_regions * n_words * itemsize

    register_head("dotmax_test", DotMax, "test head")
    try:
        regions, words, lengths = random_block()
        assert create_head("dotmax_test", CONFIG, dotmax_scale=2.0).scores(regions, words, lengths).scores.shape \
            == (3, 4)
        assert "dotmax_scale" in [p.name for p in all_head_params()]
        with pytest.raises(ValueError, match="declared differently"):
            register_head("clash_test", type("Clash", (DotMax,), {"params": (HeadParam("beta", 1.0, "x", low=0,
                                                                                       high=2),)}), "x")
    finally:
        from scan_viz.heads import registry

        registry._HEADS.pop("dotmax_test", None)
    assert head_spec("chan").help


# ----------------------------------------------------------------------------- every head through every view


@pytest.mark.parametrize("name", head_names())
def test_every_head_through_the_registry_to_every_view(tmp_path, give_trained_heads, name):
    """name -> head -> scores -> Alignment -> every renderer: a new head is covered by registering it."""
    _, _, _, ckpt, vocab, _, feats = _setup(tmp_path, seed=8)
    through_every_view(give_trained_heads(load_model(ckpt, vocab)), feats, name)


def test_a_head_registered_by_a_contributor_reaches_every_view(tmp_path, toy_head):
    _, _, _, ckpt, vocab, _, feats = _setup(tmp_path, seed=8)
    al = through_every_view(load_model(ckpt, vocab), feats, toy_head, toy_gain=2.0)
    assert al.head_params == {"toy_gain": 2.0, "toy_pool": "max"} and al.word_relevance_label == "toy word score"


def through_every_view(model, feats, name: str, **settings):
    """Align a pair under head ``name`` and draw it with every renderer; what each shows is the head's."""
    from scan_viz import render
    from scan_viz.app import views

    head = model.head(name, **settings)
    sims = model.similarity(feats, CAPTIONS, head=head)
    n_regions = feats.shape[1]
    boxes = np.array([[4 * r, 2 * r, 4 * r + 20, 2 * r + 16] for r in range(n_regions)], dtype=np.float32)
    al = model.align(feats[1], CAPTIONS[0], head=head, boxes=boxes, image_size=(48, 40))
    assert al.head == name and al.score == pytest.approx(float(sims[1, 0]), abs=1e-5)
    n_words = len(al.words)
    assert al.attention.shape == (n_words, n_regions)
    assert al.word_relevance is not None or al.region_relevance is not None
    if al.word_relevance is not None:
        assert al.word_relevance.shape == (n_words,) and al.word_relevance_label
    if al.region_relevance is not None:
        assert al.region_relevance.shape == (n_regions,) and al.region_relevance_label
    assert al.head_params == head.hyperparameters() and al.to_json()["attention_label"] == head.attention_label

    image = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    content = [i for i, w in enumerate(al.words) if not w.startswith("<")]
    titles = [a.get_title() for a in render.word_panels(image, al).axes]
    assert len(titles) == len(content)
    label = al.word_relevance_label or al.attention_label
    assert all(label in t for t in titles)
    words = render.word_relevance_bars(al)
    if al.word_relevance is not None:  # one bar per word the user wrote, the head's number, the head's label
        assert words.values == pytest.approx(al.word_relevance[content].tolist(), abs=1e-12)
        assert words.labels == [f"{i}: {al.words[i]}" for i in content] and words.axis == al.word_relevance_label
    else:
        assert words is None
    regions = render.region_relevance_bars(al, 3)
    if al.region_relevance is not None:
        assert regions.values == pytest.approx(np.sort(al.region_relevance)[::-1][:3].tolist(), abs=1e-12)
    else:
        assert regions is None
    assert len(render.region_word_figure(image, al, top=3).axes) >= 3
    figure = render.plotly_alignment(image, al)
    assert len(figure.data) == n_regions + 2 and label in figure.layout.title.text
    assert render.overview_image(image, al).shape == image.shape
    panels = views.word_panels(image, al)
    assert [p.word_index for p in panels] == content
    if al.word_relevance is not None:
        assert all(f"{al.word_relevance_label} = " in p.caption for p in panels)
    rows = views.relevance_rows(al)
    assert [r["#"] for r in rows] == content
    if al.word_relevance is not None:
        assert [r[views.RELEVANCE] for r in rows] == pytest.approx(al.word_relevance[content], abs=1e-4)
    if al.region_relevance is not None:
        top = views.region_rows(al, 2)
        assert [r[views.RELEVANCE] for r in top] == pytest.approx(np.sort(al.region_relevance)[::-1][:2], abs=1e-4)
    return al


# ----------------------------------------------------------------------------- the command line


def test_cli_flags_are_generated_from_the_declarations(tmp_path, capsys, monkeypatch):
    from scan_viz.cli import build_parser, main

    score = build_parser()._subparsers._group_actions[0].choices["score"]
    flags = {flag for action in score._actions for flag in action.option_strings}
    for param in all_head_params():
        assert set(param.flags) <= flags
    _, _, _, ckpt, vocab, _, feats = _setup(tmp_path, seed=9)
    np.save(tmp_path / "ims.npy", feats)
    (tmp_path / "caps.txt").write_text("\n".join(CAPTIONS[:4]) + "\n")
    base = ["score", "--model", str(ckpt), "--vocab", str(vocab), "--images", str(tmp_path / "ims.npy"),
            "--captions", str(tmp_path / "caps.txt"), "--out", str(tmp_path / "s.npy")]
    assert main(base + ["--head", "chan", "--beta", "0.2", "--dtype", "float64"]) == 0
    model = load_model(ckpt, vocab)
    expected = model.similarity(feats, CAPTIONS[:4], dtype="float64", head=model.head("chan", beta=0.2))
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), expected, rtol=0, atol=1e-12)
    capsys.readouterr()
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert main(base + ["--head", "caan", "--dtype", "bfloat16"]) == 0
    assert "bfloat16 products run emulated" in capsys.readouterr().err  # said, and the scores still come
    bf16 = np.load(tmp_path / "s.npy")
    assert np.abs(bf16 - model.similarity(feats, CAPTIONS[:4], head="caan")).max() < 0.03
    assert main(base + ["--head", "caan"]) == 0
    assert "emulated" not in capsys.readouterr().err  # float32: nothing to say
    assert main(base + ["--head", "scan_t2i", "--beta", "0.2"]) == 2
    assert "the scan_t2i head has no setting beta" in capsys.readouterr().err
    assert main(base + ["--head", "chan", "--beta", "2"]) == 2
    assert "beta must be a number from 0.01 to 1" in capsys.readouterr().err


def test_overview_tags_one_box_per_word_for_chan_and_lights_caan_by_region_weight():
    from scan_viz import render
    from scan_viz.types import Alignment

    boxes = np.array([[0, 0, 10, 10], [40, 0, 60, 10], [0, 44, 20, 60]], dtype=np.float32)
    words = ["<start>", "dog", "ball", "cat", "<end>"]
    hard = np.eye(3)[[0, 1, 1, 2, 0]]  # CHAN-like: dog -> 1, ball -> 1, cat -> 2
    image = np.full((64, 64, 3), 200, np.uint8)
    chan = Alignment(text="dog ball cat", words=words, spans=[None] * 5, unknown=[False] * 5, attention=hard,
                     score=0.5, head="chan", word_relevance=np.full(5, 0.6), word_relevance_label="best-region cosine",
                     boxes=boxes, image_size=(64, 64))
    shown = render.overview_image(image, chan)
    assert shown.shape == image.shape
    untouched = render.panel_image(image, hard[1:4].sum(axis=0), boxes)
    # region 0 gets no tag (only <start>/<end> pick it), regions 1 and 2 are outlined
    assert np.array_equal(shown[0:11, 0:11], untouched[0:11, 0:11])
    assert not np.array_equal(shown[0:11, 40:61], untouched[0:11, 40:61])
    assert not np.array_equal(shown[44:61, 0:21], untouched[44:61, 0:21])
    # a CAAN-like alignment is lit by its region weights, not its attention
    caan = Alignment(text="dog ball cat", words=words, spans=[None] * 5, unknown=[False] * 5,
                     attention=np.full((5, 3), 1 / 3), score=0.5, head="caan", region_relevance=np.array([1, 0, 0.]),
                     region_relevance_label="region weight", boxes=boxes, image_size=(64, 64))
    lit = render.overview_image(image, caan)
    assert lit[5, 5].mean() > 190 and lit[50, 10].mean() < 40  # region 0 bright, region 2 dimmed to the floor
