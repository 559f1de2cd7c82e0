"""The co-attention re-ranker: its equations against a loop re-statement, masking and invariances, the start from
stage 1, a BCE step, re-ranking through TwoStageSearch, finding it by the model's fingerprint, the trainer."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from scan_viz.errors import ScanVizError
from scan_viz.heads.coattention_net import CoAttention, CoAttentionReranker, find_coattention, load_coattention
from scan_viz.parts import model_fingerprint
from scan_viz.retrieval.search import TwoStageSearch, rerank_ranks
from scan_viz.retrieval.stage1 import Stage1, Stage1Head
from tests.test_search import N_IMAGES, N_REGIONS, TEXT
from tests.test_stage1 import tiny_model

D, M = 16, 8


def random_net(seed: int = 0, embed_size: int = D) -> CoAttention:
    """A re-ranker with every parameter random (a fresh one has q = 0, uniform word weights, hiding mistakes)."""
    torch.manual_seed(seed)
    net = CoAttention(embed_size, M).double()
    with torch.no_grad():
        for param in net.parameters():
            param.normal_()
    return net.eval().requires_grad_(False)


def random_block(n_img=3, n_reg=5, n_cap=4, n_words=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    regions = torch.nn.functional.normalize(torch.randn(n_img, n_reg, D, generator=gen, dtype=torch.float64), dim=-1)
    words = torch.nn.functional.normalize(torch.randn(n_cap, n_words, D, generator=gen, dtype=torch.float64), dim=-1)
    return regions, words, torch.tensor([n_words, 3, 2, n_words - 1])[:n_cap]


def loop_logit(net: CoAttention, regions: np.ndarray, words: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The module docstring's equations for one pair of real regions (k, d) and words (n, d), one word at a time."""
    p = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    alphas, features = [], []
    for u in words:
        logits = net.lambda_spatial * regions @ u
        alpha = np.exp(logits - logits.max())
        alpha /= alpha.sum()
        attended = p["region_proj.weight"] @ (alpha @ regions) + p["region_proj.bias"]
        features.append((p["word_proj.weight"] @ u + p["word_proj.bias"]) * attended)
        alphas.append(alpha)
    e = np.array([p["query"] @ np.tanh(h) for h in features])
    beta = np.exp(e - e.max())
    beta /= beta.sum()
    z = sum(b * h for b, h in zip(beta, features))
    return float(p["out.weight"][0] @ z + p["out.bias"][0]), np.array(alphas), beta


def test_scores_and_alignment_follow_the_equations_with_padding_masked():
    net = random_net()
    regions, words, lengths = random_block()
    region_lengths = torch.tensor([5, 2, 4])
    out = net(regions, words, lengths, region_lengths, return_attention=True)
    assert out.logits.shape == (3, 4) and out.alpha.shape == (3, 4, 6, 5) and out.beta.shape == (3, 4, 6)
    for i in range(3):
        for c in range(4):
            k, n = int(region_lengths[i]), int(lengths[c])
            logit, alpha, beta = loop_logit(net, regions[i, :k].numpy(), words[c, :n].numpy())
            assert float(out.logits[i, c]) == pytest.approx(logit, abs=1e-9)
            np.testing.assert_allclose(out.alpha[i, c, :n, :k].numpy(), alpha, atol=1e-12)
            np.testing.assert_allclose(out.beta[i, c, :n].numpy(), beta, atol=1e-12)
            assert float(out.alpha[i, c, :n, k:].abs().sum()) == 0 and float(out.beta[i, c, n:].abs().sum()) == 0
            # one short caption alone takes the other order of step 2 (attend, then project): same score
            alone = net(regions[i:i + 1], words[c:c + 1, :n], lengths[c:c + 1], region_lengths[i:i + 1]).logits
            assert float(alone) == pytest.approx(logit, abs=1e-9)


def test_padding_content_and_region_order_do_not_change_the_score():
    net = random_net(seed=1)
    regions, words, lengths = random_block(seed=1)
    region_lengths = torch.tensor([5, 3, 4])
    base = net(regions, words, lengths, region_lengths).logits
    noisy_regions, noisy_words = regions.clone(), words.clone()
    gen = torch.Generator().manual_seed(7)
    for i, k in enumerate(region_lengths.tolist()):
        noisy_regions[i, k:] = torch.randn(5 - k, D, generator=gen, dtype=torch.float64)
    for c, n in enumerate(lengths.tolist()):
        noisy_words[c, n:] = torch.randn(6 - n, D, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(net(noisy_regions, noisy_words, lengths, region_lengths).logits, base)
    # real regions permuted within each image
    permuted = regions.clone()
    for i, k in enumerate(region_lengths.tolist()):
        permuted[i, :k] = regions[i, torch.randperm(k, generator=gen)]
    torch.testing.assert_close(net(permuted, words, lengths, region_lengths).logits, base)
    # and the regions do matter: swapping one image's regions for another's changes its scores
    assert (net(regions[[1, 1, 2]], words, lengths, region_lengths[[1, 1, 2]]).logits[0] - base[0]).abs().max() > 1e-3


def test_a_fresh_reranker_starts_from_the_stage1_similarity():
    # lambda 0: uniform spatial attention, so the initial logit is stage 1's mean-part inner product / sqrt(m)
    torch.manual_seed(0)
    stage1 = Stage1Head(D, M)
    with torch.no_grad():
        stage1.image_proj.weight[:, D:] = 0  # the max-pooled half has no per-item counterpart
        stage1.text_proj.weight[:, D:] = 0
    net = CoAttention(D, M, lambda_spatial=0.0)
    net.init_from_stage1(stage1)
    regions, words, lengths = (t.float() for t in random_block(seed=2))
    logits = net(regions, words, lengths).logits
    from scan_viz.retrieval.stage1 import pool

    image = stage1.image_proj(pool(regions, None))
    text = stage1.text_proj(pool(words, lengths))
    torch.testing.assert_close(logits, image @ text.T / math.sqrt(M), atol=1e-5, rtol=1e-5)
    with pytest.raises(ScanVizError, match="dim 4"):
        CoAttention(D, M).init_from_stage1(Stage1Head(D, 4))
    with pytest.raises(ScanVizError, match="only a linear stage-1 head"):
        CoAttention(D, M).init_from_stage1(Stage1Head(D, M, hidden=32))


def test_a_bce_step_lowers_the_loss_on_a_tiny_case():
    from scan_viz.train.coattention import bce_step, pair_logits

    torch.manual_seed(0)
    net = CoAttention(D, M)
    regions, words, lengths = (t.float() for t in random_block(n_img=6, seed=3))
    groups = torch.tensor([[0, 1, 2], [1, 3, 4], [2, 5, 0], [3, 0, 1]])  # column 0: each caption's image
    labels = torch.zeros(4, 3)
    labels[:, 0] = 1

    def loss() -> float:
        with torch.no_grad():
            logits = pair_logits(net, regions, words, lengths, groups)
        return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, labels))

    # the vmapped pair scores are the block scores of the same pairs
    block = net(regions, words, lengths).logits.detach()
    torch.testing.assert_close(pair_logits(net, regions, words, lengths, groups).detach(),
                               block.T.gather(1, groups), atol=1e-6, rtol=1e-6)
    before = loss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    assert bce_step(net, optimizer, regions, words, lengths, groups) == pytest.approx(before, abs=1e-6)
    after_one = loss()
    assert after_one < before
    for _ in range(40):
        bce_step(net, optimizer, regions, words, lengths, groups)
    assert loss() < 0.6 * before


def test_output_calibration_keeps_the_order_and_sets_scale_and_prior():
    from scan_viz.train.coattention import calibrate_output

    net = random_net(seed=5)
    regions, words, lengths = random_block(seed=5)
    before = net(regions, words, lengths).logits
    calibrate_output(net, before.flatten(), 0.2)
    after = net(regions, words, lengths).logits
    assert float(after.std()) == pytest.approx(1.0, abs=1e-9)
    assert float(after.mean()) == pytest.approx(math.log(0.25), abs=1e-9)
    torch.testing.assert_close(after, (before - before.mean()) / before.std() + math.log(0.25))


def test_rerank_ranks_by_hand():
    candidates = np.array([[4, 2, 7], [1, 0, 3], [5, 6, 8]])
    scores = np.array([[0.1, 0.5, 0.3], [0.2, 0.2, 0.9], [1.0, 0.0, 0.5]])
    # caption 0: order 2, 7, 4 -> its image 4 is third; caption 1: 3, 1, 0 (tie keeps stage-1 order) -> 0 third;
    # caption 2: image 9 was not passed on by stage 1
    np.testing.assert_array_equal(rerank_ranks(candidates, scores, np.array([4, 0, 9])), [2, 2, np.inf])


# ------------------------------------------------------------------------------------ through the model
def save_reranker_for(model, pretrained: Path, monkeypatch) -> CoAttentionReranker:
    """A random re-ranker for ``model``, saved in ``pretrained`` / "tiny-coattention", made the folder that
    ``model.head("coattention")`` looks in."""
    monkeypatch.setattr("scan_viz.model.PRETRAINED_DIR", pretrained)
    monkeypatch.setattr("scan_viz.parts.PRETRAINED_DIR", pretrained)
    net = random_net(seed=4, embed_size=model.config.embed_size).float()
    reranker = CoAttentionReranker(net, "tiny", model_fingerprint(model), "random")
    reranker.save(pretrained / "tiny-coattention")
    return reranker


@pytest.fixture()
def trained_here(tmp_path, monkeypatch):
    """tiny_model() with a (random) re-ranker saved for it where the model's pretrained/ folder is looked for."""
    torch.set_num_threads(1)
    model = tiny_model()
    return model, save_reranker_for(model, tmp_path / "pretrained", monkeypatch)


def test_saved_reranker_round_trips_and_is_found_only_for_its_model(trained_here, tmp_path):
    model, reranker = trained_here
    loaded = load_coattention(tmp_path / "pretrained" / "tiny-coattention")
    assert loaded.fingerprint == reranker.fingerprint and loaded.net.lambda_spatial == 9.0
    assert find_coattention(model).fingerprint == reranker.fingerprint
    head = model.head("coattention")
    assert head.hyperparameters() == {"lambda_spatial": 9.0, "reranker": reranker.fingerprint}
    other = tiny_model(seed=1)
    assert find_coattention(other) is None
    with pytest.raises(ScanVizError, match=r"^no co-attention re-ranker .*python -m scan_viz.train.coattention"):
        other.head("coattention")
    from scan_viz.heads import create_head

    with pytest.raises(ScanVizError, match=r"model.head\('coattention'\)"):
        create_head("coattention", model.config)
    (tmp_path / "pretrained" / "tiny-coattention" / "coattention.safetensors").write_bytes(b"broken")
    with pytest.raises(ScanVizError, match="not a readable co-attention re-ranker"):
        model.head("coattention")


def test_two_stage_reranking_equals_its_exhaustive_scores(trained_here):
    model, _ = trained_here
    rng = np.random.default_rng(0)
    features = rng.normal(size=(N_IMAGES, N_REGIONS, 16)).astype(np.float16)
    n_boxes = np.full(N_IMAGES, N_REGIONS)
    n_boxes[::3] = 4
    torch.manual_seed(1)
    stage1 = Stage1(Stage1Head(32, 8), "tiny", model_fingerprint(model), 0.04, {5: 50.0}, 5)
    ids = [f"img{i:02d}" for i in range(N_IMAGES)]
    exhaustive = model.similarity(features.astype(np.float32), [TEXT], head="coattention", region_lengths=n_boxes)
    assert np.abs(exhaustive - model.similarity(features.astype(np.float32), [TEXT], region_lengths=n_boxes)).max() \
        > 1e-3  # not SCAN's scores
    search = TwoStageSearch(model, ids, features, stage1, n_boxes=n_boxes)
    hits = search.search_text(TEXT, k=5, stage1_k=12, head="coattention")
    assert len(hits) == 5 and all(h.stage1_rank <= 12 for h in hits)
    for hit in hits:
        assert hit.score == pytest.approx(float(exhaustive[ids.index(hit.id), 0]), abs=1e-5)
    everything = search.search_text(TEXT, k=7, stage1_k=N_IMAGES, head="coattention")
    assert [h.id for h in everything] == [ids[i] for i in np.argsort(-exhaustive[:, 0], kind="stable")[:7]]


def test_search_command_with_coattention_needs_a_trained_reranker(tmp_path, capsys):
    from scan_viz.cli import main
    from tests.app_fixture import app_fixture

    fixture = app_fixture()
    args = ["search", "--gallery", str(fixture.gallery), "--model", str(fixture.model), "--text",
            fixture.captions[fixture.image_ids[0]][0], "--head", "coattention", "--json", str(tmp_path / "hits.json")]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no co-attention re-ranker") and err.count("\n") == 1
    assert not (tmp_path / "hits.json").exists()


def test_trainer_keeps_the_best_dev_epoch_and_its_metrics_are_the_kept_weights(tmp_path):
    from scan_viz.model import ScanModel
    from scan_viz.model.config import ScanConfig
    from scan_viz.regions.store import load_precomp
    from scan_viz.retrieval.search import candidate_scores, stage1_candidates
    from scan_viz.text import Vocabulary
    from scan_viz.train.coattention import (encode_split, hard_negative_pool, rerank_recall, stage1_for, stage1_vectors,
                                            train_coattention)
    from scan_viz.train.toy import make_precomp

    torch.set_num_threads(1)
    data = make_precomp(tmp_path / "toy", n_train=40, n_dev=14)
    captions = (data / "train_caps.txt").read_text(encoding="utf-8").splitlines()
    torch.manual_seed(0)
    model = ScanModel(ScanConfig(img_dim=16, embed_size=32, word_dim=16), Vocabulary.build(captions, threshold=1))
    logs: list[str] = []
    reranker = train_coattention(model, "toy", data, epochs=2, batch_size=16, lr=1e-2, negatives=3, neg_pool=8,
                                 rerank_k=6, max_images=None, dev_captions=14, log=logs.append)
    assert sum(line.startswith("epoch") for line in logs) == 3 and "centred mean pooling" in logs[1]
    assert reranker.base_fingerprint == model_fingerprint(model) and "centred mean pooling" in reranker.init
    # the reported dev re-ranking is what the kept weights give
    dev = load_precomp(data, "dev")
    rows = np.arange(0, 70, 5)
    regions, words, lengths = encode_split(model, dev.regions.features, [dev.captions[i] for i in rows])
    train = load_precomp(data, "train")
    t_regions, t_words, t_lengths = encode_split(model, train.regions.features, train.captions)
    stage1_head, init_head, _ = stage1_for(model, t_regions, t_words, t_lengths)
    assert init_head is stage1_head  # no stage-1 head for this model: centred mean pooling is both
    candidates = stage1_candidates(*stage1_vectors(stage1_head, regions, words, lengths), 6)
    from scan_viz.heads.coattention import CoAttentionHead

    scores = candidate_scores(CoAttentionHead("coattention", {}, reranker), regions, words, lengths, candidates)
    assert reranker.metrics["dev"]["coattention_reranked"] == pytest.approx(
        rerank_recall(rerank_ranks(candidates, scores, dev.caption_image[rows])))
    # hard negatives: stage 1's best non-matching images, never the caption's own
    pool_rows = hard_negative_pool(*stage1_vectors(stage1_head, t_regions, t_words, t_lengths),
                                   train.caption_image, 8)
    assert pool_rows.shape == (200, 8) and not (pool_rows == train.caption_image[:, None]).any()


def test_gallery_measurement_matches_exhaustive_scan_and_the_head(tmp_path, monkeypatch):
    from scan_viz.evaluation.metrics import t2i_ranks
    from scan_viz.gallery import load_gallery
    from scan_viz.model import load_model
    from scan_viz.train.coattention import measure_gallery, rerank_recall
    from tests.app_fixture import N_IMAGES as FIXTURE_IMAGES
    from tests.app_fixture import app_fixture

    torch.set_num_threads(1)
    fixture = app_fixture()
    model = load_model(fixture.model)
    save_reranker_for(model, tmp_path / "pretrained", monkeypatch)
    head = model.head("coattention")
    torch.manual_seed(0)
    stage1 = Stage1Head(model.config.embed_size, 8)
    result = measure_gallery(model, head, stage1, fixture.gallery, ks=(3, FIXTURE_IMAGES), log=lambda _: None)
    gallery = load_gallery(fixture.gallery)
    features = np.asarray(gallery.regions.features, dtype=np.float32)
    scan = model.similarity(features, gallery.captions, region_lengths=gallery.regions.n_boxes)
    assert result["exhaustive_scan"] == pytest.approx(rerank_recall(t2i_ranks(scan, gallery.caption_image)))
    everything = result[f"top{FIXTURE_IMAGES}"]  # stage 1 passes every image on: re-ranking is exhaustive
    assert everything["stage1_recall_at_k"] == 100.0
    assert everything["scan_reranked"] == pytest.approx(result["exhaustive_scan"])
    coattention = model.similarity(features, gallery.captions, head=head, region_lengths=gallery.regions.n_boxes)
    assert everything["coattention_reranked"] == pytest.approx(
        rerank_recall(t2i_ranks(coattention, gallery.caption_image)))
    assert result["top3"]["stage1_recall_at_k"] < 100.0


def test_float64_scores_run_a_float64_copy_and_leave_the_trained_weights_alone():
    net = random_net().float()
    reranker = CoAttentionReranker(net, "m", "fp", "random")
    regions, words, lengths = random_block()
    double = reranker.net_in(torch.float64)
    assert double is not net and net.query.dtype == torch.float32 and double.query.dtype == torch.float64
    assert reranker.net_in(torch.float32) is net
    with torch.no_grad():
        exact = double(regions, words, lengths).logits
        single = net(regions.float(), words.float(), lengths).logits
    assert exact.dtype == torch.float64
    torch.testing.assert_close(exact.float(), single, rtol=1e-4, atol=1e-4)
