"""End to end faithfulness: official Python 2 checkpoints -> load_model(...).similarity() vs a float64
re-statement of the official algorithm (its own GRU, its own tokenisation call, the official shard loop)."""
import itertools
import json

import numpy as np
import pytest
import torch
from nltk.tokenize import NLTKWordTokenizer

from official_format import official_opt, random_states, write_py2_checkpoint
from reference import shard_xattn
from scan_viz import ScanVizError, load_model
from scan_viz.heads.scan import AGG_FUNCS, RAW_FEATURE_NORMS

VOCAB_WORDS = ["a", "dog", "cat", "red", "car", "on", "the", "grass", "big", "'s", "n't", "do"]
CAPTIONS = ["A dog on the grass.", "the red car", "A big cat's car", "dog", "Don't do the car, dog!",
            "a a a a a a a a a a a a a", "zebra unicorn"]


def _vocab_file(tmp_path):
    # non-special indices in an arbitrary order, as Python 2 dicts left them
    words = list(VOCAB_WORDS)
    rng = np.random.default_rng(1)
    rng.shuffle(words)
    word2idx = {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3}
    word2idx.update({w: i + 4 for i, w in enumerate(words)})
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"word2idx": word2idx, "idx2word": {str(i): w for w, i in word2idx.items()},
                                "idx": len(word2idx)}))
    return path, word2idx


# ---------------------------------------------------------------- the float64 re-statement
def _gru_direction(x, w_ih, w_hh, b_ih, b_hh):
    """One GRU direction over one unpadded sequence x (T, in), PyTorch's gate order r, z, n."""
    hidden = w_hh.shape[1]
    h = torch.zeros(hidden, dtype=torch.float64)
    out = []
    for t in range(x.shape[0]):
        gi, gh = w_ih @ x[t] + b_ih, w_hh @ h + b_hh
        r = torch.sigmoid(gi[:hidden] + gh[:hidden])
        z = torch.sigmoid(gi[hidden:2 * hidden] + gh[hidden:2 * hidden])
        n = torch.tanh(gi[2 * hidden:] + r * gh[2 * hidden:])
        h = (1 - z) * n + z * h
        out.append(h)
    return torch.stack(out)


def _reference_text(opt, text_state, caption, word2idx):
    st = {k: v.double() for k, v in text_state.items()}
    tokens = NLTKWordTokenizer().tokenize(caption.lower().rstrip())
    ids = [1] + [word2idx.get(t, 3) for t in tokens] + [2]
    x = st["embed.weight"][ids]
    for layer in range(opt["num_layers"]):
        outs = [_gru_direction(x, *(st[f"rnn.{n}_l{layer}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))]
        if opt["bi_gru"]:
            rev = _gru_direction(x.flip(0), *(st[f"rnn.{n}_l{layer}_reverse"]
                                              for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
            outs.append(rev.flip(0))
        x = torch.cat(outs, dim=1)
    if opt["bi_gru"]:
        half = x.shape[1] // 2
        x = (x[:, :half] + x[:, half:]) / 2
    if not opt["no_txtnorm"]:
        x = x / (x.norm(dim=1, keepdim=True) + 1e-8)
    return x


def _reference_images(opt, image_state, feats):
    st = {k: v.double() for k, v in image_state.items()}
    if opt["precomp_enc_type"] == "weight_norm":  # weight_norm(..., dim=None): g * v / ||v||_F
        weight = st["fc.weight_g"].reshape(()) * st["fc.weight_v"] / st["fc.weight_v"].norm()
    else:
        weight = st["fc.weight"]
    emb = torch.from_numpy(feats).double() @ weight.T + st["fc.bias"]
    if not opt["no_imgnorm"]:
        emb = emb / (emb.norm(dim=-1, keepdim=True) + 1e-8)
    return emb


def reference_scores(opt, image_state, text_state, feats, captions, word2idx):
    images = _reference_images(opt, image_state, feats).numpy()
    words = [_reference_text(opt, text_state, c, word2idx) for c in captions]
    lens = np.array([w.shape[0] for w in words])
    padded = np.zeros((len(words), lens.max(), words[0].shape[1]))
    for i, w in enumerate(words):
        padded[i, : lens[i]] = w.numpy()
    return shard_xattn(images, padded, lens, shard_size=4, cross_attn=opt["cross_attn"],
                       raw_feature_norm=opt["raw_feature_norm"], lambda_softmax=opt["lambda_softmax"],
                       agg_func=opt["agg_func"], lambda_lse=opt["lambda_lse"])


def _setup(tmp_path, seed=0, **overrides):
    vocab_path, word2idx = _vocab_file(tmp_path)
    opt = official_opt(vocab_size=len(word2idx), **overrides)
    image_state, text_state = random_states(opt, seed=seed, g_shape=(1,))
    ckpt = tmp_path / "model_best.pth.tar"
    write_py2_checkpoint(ckpt, opt, image_state, text_state)
    feats = np.random.default_rng(seed).standard_normal((6, 5, opt["img_dim"])).astype(np.float32)
    return opt, image_state, text_state, ckpt, vocab_path, word2idx, feats


ARCHS = list(itertools.product([True, False], [1, 2], ["t2i", "i2t"], ["basic", "weight_norm"]))


@pytest.mark.parametrize("bi_gru,num_layers,cross_attn,enc_type", ARCHS)
def test_official_checkpoint_scores_match_reference(tmp_path, bi_gru, num_layers, cross_attn, enc_type):
    opt, img_st, txt_st, ckpt, vocab, w2i, feats = _setup(
        tmp_path, bi_gru=bi_gru, num_layers=num_layers, cross_attn=cross_attn, precomp_enc_type=enc_type,
        lambda_softmax=9.0 if cross_attn == "t2i" else 4.0)
    model = load_model(ckpt, vocab)
    ref = reference_scores(opt, img_st, txt_st, feats, CAPTIONS, w2i)
    np.testing.assert_allclose(model.similarity(feats, CAPTIONS, dtype="float64"), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.similarity(feats, CAPTIONS, dtype="float32"), ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("cross_attn,norm,agg", list(itertools.product(("t2i", "i2t"), RAW_FEATURE_NORMS, AGG_FUNCS)))
def test_every_norm_and_aggregation_from_the_checkpoint(tmp_path, cross_attn, norm, agg):
    opt, img_st, txt_st, ckpt, vocab, w2i, feats = _setup(
        tmp_path, seed=3, cross_attn=cross_attn, raw_feature_norm=norm, agg_func=agg, bi_gru=False,
        lambda_softmax=9.0 if cross_attn == "t2i" else 4.0, lambda_lse=6.0 if cross_attn == "t2i" else 5.0)
    model = load_model(ckpt, vocab)
    ref = reference_scores(opt, img_st, txt_st, feats, CAPTIONS, w2i)
    np.testing.assert_allclose(model.similarity(feats, CAPTIONS, dtype="float64"), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.similarity(feats, CAPTIONS, dtype="float32"), ref, rtol=0, atol=1e-4)


def test_head_overrides_match_reference_with_that_setting(tmp_path):
    opt, img_st, txt_st, ckpt, vocab, w2i, feats = _setup(tmp_path, seed=4)
    model = load_model(ckpt, vocab)
    head = model.head("scan_i2t", agg_func="Mean", lambda_softmax=4.0)
    ref = reference_scores({**opt, "cross_attn": "i2t", "agg_func": "Mean", "lambda_softmax": 4.0},
                           img_st, txt_st, feats, CAPTIONS, w2i)
    np.testing.assert_allclose(model.similarity(feats, CAPTIONS, dtype="float64", head=head), ref, atol=1e-5, rtol=0)


def test_chunked_scoring_is_identical_to_one_block(tmp_path):
    """Caption chunks, length groups and tiny memory budgets change nothing in any pair's arithmetic."""
    opt, img_st, txt_st, ckpt, vocab, w2i, feats = _setup(tmp_path, seed=5)
    model = load_model(ckpt, vocab)
    caps = CAPTIONS * 5
    whole = model.similarity(feats, caps, dtype="float64")
    tiny = model.similarity(feats, caps, dtype="float64", memory_budget=1, caption_chunk=3)
    np.testing.assert_allclose(tiny, whole, rtol=0, atol=1e-12)
    # the same caption scores the same wherever it sits (up to GEMM blocking round-off)
    np.testing.assert_allclose(whole[:, :7], whole[:, 7:14], rtol=0, atol=1e-12)


def test_convert_then_load_scores_the_same(tmp_path):
    from scan_viz.model.checkpoint import convert_official

    _, _, _, ckpt, vocab, _, feats = _setup(tmp_path, seed=6)
    convert_official(ckpt, vocab, tmp_path / "converted")
    a = load_model(ckpt, vocab).similarity(feats, CAPTIONS)
    b = load_model(tmp_path / "converted").similarity(feats, CAPTIONS)
    np.testing.assert_array_equal(a, b)


def test_model_save_round_trip(tmp_path):
    _, _, _, ckpt, vocab, _, feats = _setup(tmp_path, seed=7)
    model = load_model(ckpt, vocab)
    model.save(tmp_path / "saved")
    np.testing.assert_array_equal(load_model(tmp_path / "saved").similarity(feats, CAPTIONS),
                                  model.similarity(feats, CAPTIONS))


def test_align_returns_the_pairs_attention(tmp_path):
    opt, img_st, txt_st, ckpt, vocab, w2i, feats = _setup(tmp_path, seed=8)
    model = load_model(ckpt, vocab)
    sims = model.similarity(feats, CAPTIONS, dtype="float64")
    for cross_attn in ("t2i", "i2t"):
        head = model.head("scan_" + cross_attn)
        sims = model.similarity(feats, CAPTIONS, dtype="float64", head=head)
        al = model.align(feats[2], CAPTIONS[2], head=head, dtype="float64")
        assert al.score == pytest.approx(sims[2, 2], abs=1e-9)
        assert al.words == ["<start>", "a", "big", "cat", "'s", "car", "<end>"]
        assert CAPTIONS[2][al.spans[3][0]:al.spans[3][1]] == "cat"
        n_words, n_regions = len(al.words), feats.shape[1]
        assert al.attention.shape == (n_words, n_regions)  # word x region whatever the direction
        if cross_attn == "t2i":  # each word's distribution over regions, R per word
            assert al.word_relevance.shape == (n_words,) and al.region_relevance is None
            np.testing.assert_allclose(al.attention.sum(axis=1), 1.0, atol=1e-9)
        else:  # each region's distribution over words, R per region
            assert al.region_relevance.shape == (n_regions,) and al.word_relevance is None
            np.testing.assert_allclose(al.attention.sum(axis=0), 1.0, atol=1e-9)
        assert json.loads(json.dumps(al.to_json()))["head_params"]["cross_attn"] == cross_attn


def test_unknown_words_are_flagged(tmp_path):
    _, _, _, ckpt, vocab, _, feats = _setup(tmp_path, seed=9)
    al = load_model(ckpt, vocab).align(feats[0], "zebra unicorn")
    assert al.unknown == [False, True, True, False]


def test_load_model_errors(tmp_path):
    _, _, _, ckpt, vocab, _, feats = _setup(tmp_path, seed=10)
    with pytest.raises(ScanVizError, match="vocab"):
        load_model(ckpt)
    with pytest.raises(ScanVizError, match="no model"):
        load_model(tmp_path / "missing")
    model = load_model(ckpt, vocab)
    with pytest.raises(ScanVizError, match="shape"):
        model.similarity(feats[:, :, :5], CAPTIONS)
    with pytest.raises(ScanVizError, match="empty"):
        model.similarity(feats, ["a dog", "   "])
    with pytest.raises(ScanVizError, match="unknown head"):
        model.head("nope")


def test_align_ignores_padding_regions(tmp_path):
    _, _, _, ckpt, vocab, _, feats = _setup(tmp_path, seed=11)
    model = load_model(ckpt, vocab)
    padded = feats[0].copy()
    padded[3:] = 123.0  # garbage rows past the 3 real regions
    boxes = np.arange(20, dtype=np.float32).reshape(5, 4)
    a = model.align(padded, "a red car", n_regions=3, boxes=boxes)
    b = model.align(feats[0][:3], "a red car", boxes=boxes[:3])
    assert a.attention.shape == b.attention.shape == (5, 3)
    np.testing.assert_allclose(a.attention, b.attention, atol=1e-7)
    assert a.score == pytest.approx(b.score, abs=1e-7) and a.boxes.shape == (3, 4)


def test_encoding_in_float64_never_changes_the_shared_model(tmp_path):
    """The app serves one cached model to every session: a float64 request must not cast it (it used to)."""
    _, _, _, ckpt, vocab_path, _, feats = _setup(tmp_path, precomp_enc_type="weight_norm")
    model = load_model(ckpt, vocab_path)
    before = {name: p.detach().clone() for enc in (model.image_encoder, model.text_encoder)
              for name, p in enc.state_dict().items()}
    in_float32 = model.similarity(feats, CAPTIONS[:3])
    in_float64 = model.similarity(feats, CAPTIONS[:3], dtype="float64")
    assert in_float64.dtype == np.float64
    after = {name: p for enc in (model.image_encoder, model.text_encoder) for name, p in enc.state_dict().items()}
    assert all(p.dtype == torch.float32 for p in after.values())
    assert all(torch.equal(before[name], after[name]) for name in before)
    np.testing.assert_allclose(in_float64, in_float32, atol=1e-5)
    np.testing.assert_array_equal(model.similarity(feats, CAPTIONS[:3]), in_float32)  # float32 path as before
    assert model.encoders("float64")[0] is model.encoders("float64")[0]  # the copy is made once
    with pytest.raises(ScanVizError, match="dtype must be float32 or float64"):
        model.encoders("float16")
    if not torch.cuda.is_available():
        with pytest.raises(ScanVizError, match="no CUDA GPU is available"):
            model.encoders("float32", "cuda")
