"""Stage 1: the CMCE loss on a case worked by hand, buffer updates, pooling, the recall curve, saving."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scan_viz.model import ScanModel
from scan_viz.model.config import ScanConfig
from scan_viz.parts import model_fingerprint
from scan_viz.retrieval.stage1 import Stage1, Stage1Head, choose_k, find_stage1, load_stage1, pool, recall_curve
from scan_viz.text import Vocabulary
from scan_viz.train.stage1 import cmce_loss, update_buffer

EYE = torch.eye(2)


def test_cmce_loss_matches_the_hand_computed_value():
    # image [1, 0] of identity 0 against caption buffers e0, e1: logits (1, 0) -> -log(e / (e + 1)) = log(1 + 1/e)
    # caption [0, 1] of identity 0 against image buffers e0, e1: logits (0, 1) -> -log(1 / (1 + e)) = log(1 + e)
    image = torch.tensor([[1.0, 0.0]], requires_grad=True)
    caption = torch.tensor([[0.0, 1.0]], requires_grad=True)
    ids = torch.tensor([0])
    loss = cmce_loss(image, caption, ids, ids, EYE, EYE, sigma=1.0)
    assert float(loss.detach()) == pytest.approx(math.log(1 + math.exp(-1)) + math.log(1 + math.e), abs=1e-6)
    loss.backward()
    # d/d image = (softmax - onehot) @ caption_buffer / sigma = (e/(e+1) - 1, 1/(e+1)) = (-0.2689, 0.2689)
    p = 1 / (1 + math.e)
    np.testing.assert_allclose(image.grad.numpy(), [[-p, p]], atol=1e-6)


def test_cmce_temperature_sharpens_and_buffers_get_no_gradient():
    image = torch.tensor([[1.0, 0.0]])
    ids = torch.tensor([0])
    buffer = EYE.clone().requires_grad_(True)
    loss = cmce_loss(image, image, ids, ids, buffer, buffer, sigma=0.5)
    # both directions: logits (2, 0) for the true identity -> log(1 + e^-2) each
    assert float(loss) == pytest.approx(2 * math.log(1 + math.exp(-2)), abs=1e-6)
    assert not loss.requires_grad  # only the (constant) inputs and the detached buffers: nothing to train


def test_update_buffer_running_average_renormalised():
    buffer = EYE.clone()
    update_buffer(buffer, torch.tensor([0, 0]), torch.tensor([[0.0, 1.0], [0.0, 1.0]]), momentum=0.5)
    # 0.5 * (1, 0) + 0.5 * mean((0, 1), (0, 1)) = (0.5, 0.5) -> unit length; identity 1 untouched
    np.testing.assert_allclose(buffer.numpy(), [[2 ** -0.5, 2 ** -0.5], [0.0, 1.0]], atol=1e-6)


def test_pool_ignores_padding():
    emb = torch.tensor([[[1.0, -1.0], [3.0, 5.0], [100.0, 100.0]]])
    out = pool(emb, torch.tensor([2]))
    assert out.tolist() == [[2.0, 2.0, 3.0, 5.0]]  # mean of the two real items, then their max


def test_recall_curve_and_choose_k():
    images = np.eye(3, dtype=np.float32)
    # caption 0 is nearest its own image; caption 1 ranks its image (1) second behind image 0; caption 2 third
    captions = np.array([[1, 0, 0], [0.9, 0.5, 0], [0.9, 0.5, 0.1]], dtype=np.float32)
    curve = recall_curve(images, captions, np.array([0, 1, 2]), ks=(1, 2, 3, 5))
    assert curve == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 100.0})
    assert choose_k(curve, 60.0) == 2 and choose_k(curve, 101.0) == 3


def toy_data_and_model(folder, n_train: int, n_dev: int):
    """The toy world's precomputed layout under ``folder`` and an untrained model whose vocabulary covers its
    training captions (the set-up of the trainers' tests)."""
    from scan_viz.train.toy import make_precomp

    torch.set_num_threads(1)
    data = make_precomp(folder, n_train=n_train, n_dev=n_dev)
    captions = (data / "train_caps.txt").read_text(encoding="utf-8").splitlines()
    torch.manual_seed(0)
    return data, ScanModel(ScanConfig(img_dim=16, embed_size=32, word_dim=16), Vocabulary.build(captions, threshold=1))


def tiny_model(seed: int = 0) -> ScanModel:
    torch.manual_seed(seed)
    vocab = Vocabulary.build(["a red car", "a dog on the grass"], threshold=1)
    return ScanModel(ScanConfig(img_dim=16, embed_size=32, word_dim=16, bi_gru=True), vocab)


@pytest.mark.parametrize("hidden", [0, 24])
def test_saved_head_round_trips_and_is_found_only_for_its_model(tmp_path, hidden):
    model = tiny_model()
    torch.manual_seed(hidden)
    stage1 = Stage1(Stage1Head(32, 8, hidden), "tiny", model_fingerprint(model), 0.04, {1: 10.0, 5: 50.0}, 5)
    stage1.save(tmp_path / "tiny-stage1")
    loaded = load_stage1(tmp_path / "tiny-stage1")
    assert loaded.fingerprint == stage1.fingerprint and loaded.default_k == 5
    assert loaded.recall_curve == {1: 10.0, 5: 50.0} and loaded.head.hidden == hidden
    pooled = torch.randn(3, 64)
    torch.testing.assert_close(loaded.head.image_vectors(pooled), stage1.head.image_vectors(pooled))
    torch.testing.assert_close(loaded.head.caption_vectors(pooled), stage1.head.caption_vectors(pooled))
    assert find_stage1(model, [tmp_path / "tiny-stage1"]).fingerprint == stage1.fingerprint
    assert find_stage1(tiny_model(seed=1), [tmp_path / "tiny-stage1"]) is None  # other weights: never used


def test_trainer_keeps_the_best_dev_epoch_and_reports_its_curve(tmp_path):
    from scan_viz.errors import ScanVizError
    from scan_viz.regions.store import load_precomp
    from scan_viz.train.stage1 import pooled_inputs, train_stage1

    data, model = toy_data_and_model(tmp_path / "toy", n_train=40, n_dev=14)
    captions = (data / "train_caps.txt").read_text(encoding="utf-8").splitlines()
    logs: list[str] = []
    stage1 = train_stage1(model, "toy", data, dim=32, epochs=3, batch_size=16, lr=1e-2, sigma=0.1,
                          target_recall=50.0, log=logs.append)
    dev = load_precomp(data, "dev")
    img, cap = pooled_inputs(model, dev.regions.features, dev.captions, log=lambda _: None)
    with torch.no_grad():
        curve = recall_curve(stage1.head.image_vectors(img).numpy(), stage1.head.caption_vectors(cap).numpy(),
                             dev.caption_image)
    assert stage1.recall_curve == pytest.approx(curve)  # the shipped curve is the kept head's own
    assert stage1.default_k == choose_k(curve, 50.0)
    kept = stage1.training["kept_epoch"]
    assert 0 <= kept <= 3 and sum(line.startswith("epoch") for line in logs) == 4  # epoch 0 = the start
    assert stage1.base_fingerprint == model_fingerprint(model)
    with pytest.raises(ScanVizError, match="16-d"):
        wrong = ScanModel(ScanConfig(img_dim=8, embed_size=32, word_dim=16), Vocabulary.build(captions, threshold=1))
        train_stage1(wrong, "toy", data, epochs=1, log=lambda _: None)


def test_saved_head_declaring_huge_layers_is_refused_before_building(tmp_path):
    """A stage-1 config's widths size the layers built before the weights are read: one past the bound is a one-line
    error, not a many-GB allocation."""
    import json

    from scan_viz.errors import ScanVizError

    model = tiny_model()
    Stage1(Stage1Head(32, 8, 0), "tiny", model_fingerprint(model), 0.04, {1: 10.0}, 1).save(tmp_path / "s")
    config = json.loads((tmp_path / "s" / "stage1.json").read_text(encoding="utf-8"))
    for key, value in (("hidden", 10**6), ("dim", -1), ("embed_size", "32"), ("dim", True)):
        bad = {**config, key: value}
        (tmp_path / "s" / "stage1.json").write_text(json.dumps(bad), encoding="utf-8")
        with pytest.raises(ScanVizError, match=f"{key} must be an integer from 0 to 4,096"):
            load_stage1(tmp_path / "s")
