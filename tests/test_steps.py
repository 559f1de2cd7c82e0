"""scan_viz.steps (scan_viz.heads.walk): every head's steps on 20 pairs of the bundled gallery. The last step is the model's score
(float64, 1e-9) and every intermediate equals a plain-loop re-statement of its formula written here, one word and
one region at a time (not the heads' code)."""
import math

import numpy as np
import pytest

from scan_viz import ScanVizError, load_model
from scan_viz.gallery import load_gallery
from scan_viz.heads import head_names
from scan_viz.heads.scan import AGG_FUNCS, RAW_FEATURE_NORMS
from scan_viz.heads.walk import steps, vector_summary
from scan_viz.pipeline import DEFAULT_GALLERY, gallery_regions

EPS = 1e-8
TOL = 1e-9
#: the bundled models each head is checked on (SCAN's heads on both trained directions)
MODELS_FOR = {"chan": ("chan-emoji", "scan-emoji-t2i"), "caan": ("caan-emoji",), "coattention": ("scan-emoji-t2i",)}
SCAN_MODELS = ("scan-emoji-t2i", "scan-emoji-i2t")
#: heads that do not describe their steps yet (a head registered later fails here until it does)
WITHOUT_STEPS: set[str] = set()
N_PAIRS = 20


@pytest.fixture(scope="module")
def gallery():
    return load_gallery(DEFAULT_GALLERY)


_MODELS: dict = {}


def model_named(name):
    if name not in _MODELS:
        _MODELS[name] = load_model(name)
    return _MODELS[name]


def pairs(gallery, n=N_PAIRS):
    """n (image id, caption) pairs spread over the gallery: half the image's own caption, half another's."""
    out = []
    for p in range(n):
        i = (p * 47) % len(gallery)
        caption = gallery.captions_of(gallery.ids[i])[p % 5] if p % 2 == 0 else gallery.captions[(p * 389) % 5000]
        out.append((gallery.ids[i], caption))
    return out


# ------------------------------------------------------------------- plain-loop re-statements of the formulas
def lrelu(x):
    return x if x >= 0 else 0.1 * x


def normalise(values, norm):
    """SCAN's first normalisation of one list of cosines (one region's over the words for t2i)."""
    if norm == "softmax":
        exps = [math.exp(v) for v in values]
        return [e / sum(exps) for e in exps]
    if norm.startswith("clipped"):
        values = [lrelu(v) for v in values]
    if norm in ("l2norm", "clipped_l2norm"):
        denominator = math.sqrt(sum(v * v for v in values)) + EPS
    elif norm in ("l1norm", "clipped_l1norm"):
        denominator = sum(abs(v) for v in values) + EPS
    else:  # clipped, no_norm
        denominator = 1.0
    return [v / denominator for v in values]


def softmax(values, lam=1.0):
    top = max(values)
    exps = [math.exp(lam * (v - top)) for v in values]
    return [e / sum(exps) for e in exps]


def pool(relevances, agg, lambda_lse):
    if agg == "LogSumExp":
        return math.log(sum(math.exp(lambda_lse * r) for r in relevances)) / lambda_lse
    if agg == "Mean":
        return sum(relevances) / len(relevances)
    if agg == "Max":
        return max(relevances)
    return sum(relevances)


def norm(vector):
    return math.sqrt(float(np.dot(vector, vector)))


def dot(a, b):
    return float(np.dot(a, b))


def cosines(V, E):
    """(n_words, n_regions) s[j][i] = v_i . e_j"""
    return np.array([[dot(V[i], E[j]) for i in range(len(V))] for j in range(len(E))])


def scan_reference(V, E, settings, cross_attn):
    k, n = len(V), len(E)
    s = cosines(V, E)
    s_bar = np.zeros((n, k))
    alpha = np.zeros((n, k))
    lam = settings["lambda_softmax"]
    if cross_attn == "t2i":
        for i in range(k):  # each region's cosines over the words (the official code's axis)
            s_bar[:, i] = normalise(list(s[:, i]), settings["raw_feature_norm"])
        for j in range(n):  # each word's softmax over the regions
            alpha[j, :] = softmax(list(s_bar[j, :]), lam)
        queries, contexts, weights = E, V, alpha
    else:
        for j in range(n):  # each word's cosines over the regions
            s_bar[j, :] = normalise(list(s[j, :]), settings["raw_feature_norm"])
        for i in range(k):  # each region's softmax over the words
            alpha[:, i] = softmax(list(s_bar[:, i]), lam)
        queries, contexts, weights = V, E, alpha.T
    a_norm, e_dot_a, R = [], [], []
    for q, query in enumerate(queries):
        attended = sum(weights[q][c] * np.asarray(contexts[c]) for c in range(len(contexts)))
        a_norm.append(norm(attended))
        e_dot_a.append(dot(query, attended))
        R.append(e_dot_a[-1] / max(norm(query) * a_norm[-1], EPS))
    S = pool(R, settings["agg_func"], settings["lambda_lse"])
    return {"s": s, "s_bar": s_bar, "alpha": alpha, "a_norm": np.array(a_norm), "e_dot_a": np.array(e_dot_a),
            "R": np.array(R), "S": np.array(S)}


def chan_reference(V, E, settings):
    s = cosines(V, E)
    c = [max(row) for row in s]
    best = [int(max(range(len(row)), key=lambda i: row[i])) for row in s]
    beta = settings["beta"]
    S = (beta * math.log(sum(math.exp(x / beta) for x in c)) if settings["chan_agg"] == "LogSumExp"
         else sum(c) / len(c))
    return {"s": s, "c": np.array(c), "best_region": np.array(best), "S": np.array(S)}


def caan_reference(V, E, settings):
    k, n = len(V), len(E)
    H = cosines(V, E).T  # (k, n): H[r][w]
    li, lc, lp = settings["lambda_inter"], settings["lambda_intra"], settings["lambda_pool"]
    A_word = np.array([softmax(list(H[:, w]), li) for w in range(n)])  # (n, k)
    m_w = [sum(A_word[w][r] * H[r][w] for r in range(k)) for w in range(n)]
    A_reg = np.array([softmax(list(H[r, :]), li) for r in range(k)])  # (k, n)
    m_r = [sum(A_reg[r][w] * H[r][w] for w in range(n)) for r in range(k)]
    N_r = [[H[r][w] / (norm(H[r]) + EPS) for w in range(n)] for r in range(k)]
    C_reg = np.array([[dot(N_r[r], N_r[q]) for q in range(k)] for r in range(k)])
    c_r = [dot(softmax(list(C_reg[r]), lc), m_r) for r in range(k)]
    col_norm = [norm([H[r][w] for r in range(k)]) for w in range(n)]
    N_w = [[H[r][w] / (col_norm[w] + EPS) for w in range(n)] for r in range(k)]
    C_word = np.array([[sum(N_w[r][w] * N_w[r][x] for r in range(k)) for x in range(n)] for w in range(n)])
    c_w = [dot(softmax(list(C_word[w]), lc), m_w) for w in range(n)]
    alpha = softmax([m_r[r] + c_r[r] for r in range(k)], lp)
    beta = softmax([m_w[w] + c_w[w] for w in range(n)], lp)
    v_star = sum(alpha[r] * np.asarray(V[r]) for r in range(k))
    u_star = sum(beta[w] * np.asarray(E[w]) for w in range(n))
    S = dot(v_star, u_star) / max(norm(v_star) * norm(u_star), EPS)
    return {"H": H.T, "A_word": A_word, "m_w": np.array(m_w), "A_reg": A_reg.T, "m_r": np.array(m_r),
            "C_reg": C_reg, "c_r": np.array(c_r), "C_word": C_word, "c_w": np.array(c_w), "alpha": np.array(alpha),
            "beta": np.array(beta), "S": np.array(S), "v_dot_u": np.array(dot(v_star, u_star)),
            "v_norm": np.array(norm(v_star)), "u_norm": np.array(norm(u_star))}


def coattention_reference(V, E, weights, lam):
    """The co-attention re-ranker (scan_viz.heads.coattention_net's docstring), one word and one region at a time.
    weights: its trained parameters as float64 arrays; lam: its spatial attention's lambda."""
    k, n = len(V), len(E)
    W_v, b_v = weights["region_proj.weight"], weights["region_proj.bias"]
    W_u, b_u = weights["word_proj.weight"], weights["word_proj.bias"]
    q, o, c = weights["query"], weights["out.weight"][0], float(weights["out.bias"][0])
    s = cosines(V, E)
    alpha = np.array([softmax(list(s[w]), lam) for w in range(n)])
    a, h = [], []
    for w in range(n):
        mixed = sum(alpha[w][r] * np.asarray(V[r]) for r in range(k))
        a.append([dot(W_v[i], mixed) + b_v[i] for i in range(len(b_v))])
        word = [dot(W_u[i], E[w]) + b_u[i] for i in range(len(b_u))]
        h.append([word[i] * a[-1][i] for i in range(len(b_v))])
    e = [sum(q[i] * math.tanh(h[w][i]) for i in range(len(q))) for w in range(n)]
    beta = softmax(e)
    z = [sum(beta[w] * h[w][i] for w in range(n)) for i in range(len(q))]
    contribution = [beta[w] * dot(o, h[w]) for w in range(n)]
    S = dot(o, z) + c
    return {"s": s, "alpha": alpha, "a_norm": np.array([norm(x) for x in a]),
            "h_norm": np.array([norm(x) for x in h]), "e": np.array(e), "beta": np.array(beta),
            "contribution": np.array(contribution), "z_norm": np.array(norm(z)), "S": np.array(S),
            "p": np.array(1.0 / (1.0 + math.exp(-S)))}


def reference(walk, head, model=None):
    V, E = walk.regions.tolist(), walk.words_emb.tolist()
    if head.startswith("scan"):
        direction = head[-3:] if head != "scan" else walk.head_title[-3:]
        return scan_reference(V, E, walk.settings, direction)
    if head == "coattention":
        net = model.head("coattention").reranker.net
        weights = {name: value.detach().double().numpy() for name, value in net.state_dict().items()}
        return coattention_reference(V, E, weights, net.lambda_spatial)
    return {"chan": chan_reference, "caan": caan_reference}[head](V, E, walk.settings)


def check_walk(model, walk, head, regions, caption):
    # the embeddings the steps start from are the model's float64 encodings of the pair
    np.testing.assert_allclose(walk.regions, model.encode_images(regions.features[None], "float64")[0].numpy(),
                               rtol=0, atol=TOL)
    # the last step is the model's score for the pair, through the ordinary scoring path
    score = model.similarity(regions.features[None], [caption], dtype="float64", head=model.head(head))[0, 0]
    assert abs(float(walk.steps[-1].value) - score) <= TOL
    assert walk.steps[-1].key == "score" and walk.score == pytest.approx(score, abs=TOL)
    expected = reference(walk, head, model)
    for step in walk.steps:
        for name, value in step.tensors.items():
            assert value.shape == np.shape(expected[name]), (step.key, name)
            np.testing.assert_allclose(value, expected[name], rtol=0, atol=TOL, err_msg=f"{head} {step.key} {name}")


def cases():
    out = []
    for head in head_names():
        models = MODELS_FOR.get(head, SCAN_MODELS)
        out += [(head, m) for m in models]
    return out


@pytest.mark.parametrize("head,model_name", cases())
def test_every_step_equals_its_formula_and_the_last_is_the_score(gallery, head, model_name):
    model = model_named(model_name)
    if head in WITHOUT_STEPS:
        with pytest.raises(ScanVizError, match="steps"):
            steps(model, gallery_regions(gallery, gallery.ids[0]), gallery.captions[0], head=head)
        return
    for image_id, caption in pairs(gallery):
        regions = gallery_regions(gallery, image_id)
        walk = steps(model, regions, caption, head=head)
        assert len(walk.words) == walk.words_emb.shape[0] and len(walk.region_labels) == len(regions)
        check_walk(model, walk, head, regions, caption)


@pytest.mark.parametrize("cross_attn", ["t2i", "i2t"])
@pytest.mark.parametrize("raw_norm", RAW_FEATURE_NORMS)
def test_scan_steps_under_every_normalisation_and_pooling(gallery, cross_attn, raw_norm):
    model = model_named("scan-emoji-t2i")
    for p, (image_id, caption) in enumerate(pairs(gallery, 4)):
        settings = {"raw_feature_norm": raw_norm, "agg_func": AGG_FUNCS[p % len(AGG_FUNCS)],
                    "lambda_softmax": (0.5, 50.0, 4.0, 20.0)[p], "lambda_lse": (50.0, 0.5, 5.0, 6.0)[p]}
        head = model.head(f"scan_{cross_attn}", **settings)
        regions = gallery_regions(gallery, image_id)
        walk = steps(model, regions, caption, head=head)
        expected = scan_reference(walk.regions.tolist(), walk.words_emb.tolist(), head.settings, cross_attn)
        for step in walk.steps:
            for name, value in step.tensors.items():
                assert np.all(np.isfinite(value)), (raw_norm, step.key, name)
                np.testing.assert_allclose(value, expected[name], rtol=0, atol=TOL, err_msg=f"{step.key} {name}")
        score = model.similarity(regions.features[None], [caption], dtype="float64", head=head)[0, 0]
        assert abs(walk.score - score) <= TOL


def test_steps_describe_themselves(gallery):
    model = model_named("scan-emoji-t2i")
    walk = steps(model, gallery_regions(gallery, gallery.ids[0]), gallery.captions[0], head="scan_t2i")
    keys = [s.key for s in walk.steps]
    assert keys == ["cosines", "normalised", "attention", "attended", "relevance", "score"]
    notes = " ".join(s.spec.note for s in walk.steps)
    assert "LeakyReLU" in notes and "over the WORDS" in notes and "log(sum exp" in notes
    assert all(s.spec.latex and s.spec.meaning for s in walk.steps)
    assert walk.step("attention").axes == ("words", "regions")
    np.testing.assert_allclose(walk.step("attention").value.sum(axis=1), 1.0, atol=1e-12)  # over regions per word
    html = walk._repr_html_()
    assert html.count("<h4>") == len(walk.steps) and "<script" not in html
    summary = vector_summary(walk.regions[0])
    assert summary.startswith("|x| = 1.0000") and summary.endswith("...")  # norm + top dimensions, never whole
    assert summary.count(", d") == 4


def test_a_visitor_sentence_in_the_html_is_escaped(gallery):
    model = model_named("scan-emoji-t2i")
    walk = steps(model, gallery_regions(gallery, gallery.ids[0]), "a <b>dog</b> & cat", head="chan")
    html = walk._repr_html_()
    assert "< b >" not in html and "&lt; b &gt;" in html  # the tokenizer's words, escaped


@pytest.mark.parametrize("head_name", ["scan_t2i", "scan_i2t", "chan", "caan", "coattention"])
def test_the_trace_leaves_the_scores_bit_identical(gallery, head_name):
    import torch

    model = model_named("scan-emoji-t2i")
    ids = gallery.ids[:4]
    features = np.stack([gallery_regions(gallery, i).features for i in ids])
    for norm in (RAW_FEATURE_NORMS if head_name.startswith("scan") else (None,)):
        head = model.head(head_name, **({"raw_feature_norm": norm} if norm else {}))
        regions = model.encode_images(features)
        caps = model.encode_captions(gallery.captions[:6])
        with torch.no_grad():
            plain = head.scores(regions, caps.emb, caps.lengths, return_attention=True)
            traced = head.scores(regions, caps.emb, caps.lengths, return_attention=True, trace={})
        assert torch.equal(plain.scores, traced.scores) and torch.equal(plain.attention, traced.attention)


def test_the_coattention_steps_explain_their_cells_and_share_the_score(gallery):
    from scan_viz.render.learn import cell_formula, word_shares

    model = model_named("scan-emoji-t2i")
    walk = steps(model, gallery_regions(gallery, gallery.ids[3]), gallery.captions[15], head="coattention")
    assert [s.key for s in walk.steps] == ["cosines", "spatial", "features", "latent", "pooled", "score"]
    assert walk.constants == {"lambda_spatial": model.head("coattention").reranker.net.lambda_spatial}
    np.testing.assert_allclose(walk.step("spatial").value.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(walk.step("latent").value.sum(), 1.0, atol=1e-12)
    assert f"exp({walk.constants['lambda_spatial']:g}" in cell_formula(walk, walk.step("spatial"), 1, 0)
    axis, shares = word_shares(walk)
    assert axis == "words" and shares.shape == (len(walk.words),)
    assert abs(shares.sum() - walk.score) <= TOL
    assert 0.0 < float(walk.step("score").tensors["p"]) < 1.0
