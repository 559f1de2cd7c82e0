"""Tests for scan_viz.detect: RoIAlign, mAP, the region contract, save/load, training, extraction, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import roi_align

from scan_viz.detect import (default_config, evaluate_detector, extract_regions, extract_world, load_detector,
                             save_detector)
from scan_viz.detect.__main__ import main as cli_main
from scan_viz.detect.data import load_split, prepare_image, read_image
from scan_viz.detect.evaluate import average_precision, box_iou, match_detections, mean_average_precision
from scan_viz.detect.model import BACKGROUND, SeparableRoIAlign, build_detector
from scan_viz.errors import ScanVizError
from scan_viz.regions.store import load_precomp, load_regions, load_saved_regions
from scan_viz.scenes import write_world
from scan_viz.train.detector import train_detector

# a small architecture keeps each test fast; the contract does not depend on the size
SMALL = {"backbone": "narrow-s16", "representation_size": 64, "rpn_post_nms_top_n_test": 60}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, n_train=8, n_dev=2, n_test=2, seed=0, workers=1)
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_detector(default_config(**SMALL)).eval()


@pytest.fixture(scope="module")
def trained(world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("detector")
    summary = train_detector(world, out, epochs=3, batch_size=4, lr=1e-3, seed=0, workers=0,
                             config=default_config(**SMALL), eval_images=2, log=lambda _: None)
    return out, summary


def world_image(world: Path, split: str = "test", index: int = 0) -> np.ndarray:
    return read_image(world / "images" / split / f"{split}_{index:06d}.png")


# ----------------------------------------------------------------------------------------------------------------
# RoIAlign


def test_separable_roi_align_matches_torchvision() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 8, 16, 20, generator=gen, requires_grad=True)
    corners = torch.rand(2, 30, 2, generator=gen) * 360 - 20
    sides = torch.rand(2, 30, 2, generator=gen) * 160 + 0.5
    boxes = [torch.cat([c, c + s], dim=1) for c, s in zip(corners, sides)]
    boxes[0][:3] = torch.tensor([[0.0, 0.0, 320.0, 256.0], [310.0, 250.0, 320.0, 256.0], [-40.0, -40.0, -20.0, -30.0]])
    expected = roi_align(features, boxes, 7, spatial_scale=1 / 16, sampling_ratio=2, aligned=False)
    got = SeparableRoIAlign("0", 7, 2, 1 / 16)({"0": features}, boxes, [(256, 320)] * 2)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    grad_expected, = torch.autograd.grad((expected * expected.detach()).sum(), features)
    grad_got, = torch.autograd.grad((got * expected.detach()).sum(), features)
    torch.testing.assert_close(grad_got, grad_expected, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# mAP


def test_box_iou_hand_values() -> None:
    iou = box_iou(np.array([[0, 0, 10, 10], [0, 0, 10, 10]]),
                  np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0], [1.0, 50 / 150, 0.0]])
    assert box_iou(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)


GT = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 40, 40]], dtype=np.float32), "labels": np.array([1, 1])},
      {"boxes": np.array([[5, 5, 25, 25]], dtype=np.float32), "labels": np.array([2])}]


def dets(boxes: list, scores: list, labels: list) -> dict[str, np.ndarray]:
    return {"boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4), "scores": np.array(scores, dtype=np.float32),
            "labels": np.array(labels)}


def test_map_perfect_detections_is_one() -> None:
    result = mean_average_precision([dets(GT[0]["boxes"], [0.9, 0.8], [1, 1]), dets(GT[1]["boxes"], [0.7], [2])],
                                    GT, ["bg", "a", "b"])
    assert result["map50"] == pytest.approx(1.0)
    assert result["per_class"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
    assert result["n_gt"] == {"a": 2, "b": 1} and result["n_images"] == 2


def test_false_positive_ranked_first() -> None:
    # FP, TP, TP: precision 0, 1/2, 2/3 at recall 0, 1/2, 1; envelope 2/3 everywhere
    detections = [dets([[50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.8, 0.7], [1, 1, 1]),
                  dets(GT[1]["boxes"], [0.5], [2])]
    result = mean_average_precision(detections, GT, ["bg", "a", "b"])
    assert result["per_class"]["a"] == pytest.approx(2 / 3)
    assert result["map50"] == pytest.approx((2 / 3 + 1) / 2)


def test_missed_object_and_missing_class() -> None:
    result = mean_average_precision([dets([[0, 0, 10, 10]], [0.9], [1]), dets([], [], [])], GT, ["bg", "a", "b"])
    assert result["per_class"] == {"a": pytest.approx(0.5), "b": 0.0}  # class b has ground truth, no detection
    assert result["map50"] == pytest.approx(0.25)


def test_duplicate_detection_is_false_positive() -> None:
    assert match_detections(np.array([[0, 0, 10, 10], [1, 0, 11, 10]]), np.array([0.9, 0.8]),
                            GT[0]["boxes"]).tolist() == [True, False]
    # TP, duplicate, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> 0.5 * 1 + 0.5 * 2/3
    detections = [dets([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 40, 40]], [0.9, 0.8, 0.7], [1, 1, 1]),
                  dets([], [], [])]
    assert mean_average_precision(detections, GT, ["bg", "a", "b"])["per_class"]["a"] == pytest.approx(5 / 6)


def test_detections_of_a_class_without_ground_truth_are_ignored_and_iou_below_half_misses() -> None:
    detections = [dets([[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 5, 5]], [0.9, 0.8, 0.99], [1, 1, 3]),
                  dets([[5, 5, 15, 15]], [0.9], [2])]  # IoU 100 / 400 with the ground truth
    result = mean_average_precision(detections, GT, ["bg", "a", "b", "c"])
    assert set(result["per_class"]) == {"a", "b"} and result["per_class"]["b"] == 0.0
    assert average_precision(np.array([0.5, 0.4]), np.array([False, True]), 1) == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------------------------
# region contract


def test_prepare_image_scale() -> None:
    for (w, h), expected in {(640, 480): (320, 240), (160, 128): (320, 256), (300, 300): (256, 256),
                             (1000, 500): (320, 160), (320, 256): (320, 256)}.items():
        out = prepare_image(np.zeros((h, w, 3), np.uint8))
        assert (out.shape[1], out.shape[0]) == expected and out.dtype == np.uint8
    with pytest.raises(ScanVizError, match="uint8"):
        prepare_image(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ScanVizError, match="uint8"):
        prepare_image(np.zeros((64, 64), np.uint8))


def test_extract_regions_contract(world: Path, model) -> None:
    image = world_image(world)
    big = np.asarray(Image.fromarray(image).resize((640, 480)))
    portrait = np.asarray(Image.fromarray(image).resize((200, 300)))
    regions = extract_regions(model, [image, big, portrait])
    img_dim = model.config.img_dim
    assert img_dim == model.img_dim == 64 + len(model.config.colours)
    for r, source in zip(regions, (image, big, portrait)):
        h, w = source.shape[:2]
        assert len(r) == 36 and r.features.shape == (36, img_dim) and r.features.dtype == np.float32
        assert r.boxes.shape == (36, 4) and r.boxes.dtype == np.float32 and r.image_size == (w, h)
        assert (r.boxes[:, :2] >= 0).all() and (r.boxes[:, 2] <= w).all() and (r.boxes[:, 3] <= h).all()
        assert (r.boxes[:, 2:] >= r.boxes[:, :2]).all()
        assert len(r.labels) == 36 and set(r.labels) <= set(model.config.classes) - {BACKGROUND}
        assert np.isfinite(r.features).all()
        # the colour probabilities close each feature
        np.testing.assert_allclose(r.features[:, 64:].sum(axis=1), 1.0, rtol=1e-5)


def test_extract_regions_boxes_are_in_original_pixels(world: Path, model) -> None:
    big = np.asarray(Image.fromarray(world_image(world, index=1)).resize((640, 480)))
    small = prepare_image(big)
    assert small.shape == (240, 320, 3)
    from_big, from_small = extract_regions(model, [big])[0], extract_regions(model, [small])[0]
    np.testing.assert_allclose(from_big.boxes, from_small.boxes * 2.0, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(from_big.features, from_small.features)
    assert from_big.labels == from_small.labels


def test_extract_regions_fills_to_exactly_n_regions(world: Path, model) -> None:
    # 60 proposals per image cannot give 80 regions: fillers, then the whole image, keep the count exact
    regions = extract_regions(model, [world_image(world)], n_regions=80)[0]
    assert len(regions) == 80 and regions.boxes.shape == (80, 4)
    assert (regions.boxes[-1] == [0, 0, 320, 256]).all()
    with pytest.raises(ScanVizError, match="n_regions"):
        extract_regions(model, [world_image(world)], n_regions=0)
    with pytest.raises(ScanVizError, match="uint8"):
        extract_regions(model, [np.zeros((256, 320), np.uint8)])


# ----------------------------------------------------------------------------------------------------------------
# save / load


def test_save_load_round_trip(world: Path, model, tmp_path: Path) -> None:
    save_detector(model, tmp_path / "det")
    meta = json.loads((tmp_path / "det" / "detector.json").read_text())
    assert meta["classes"] == model.config.classes and meta["img_dim"] == model.config.img_dim
    assert meta["min_size"] == 256 and meta["max_size"] == 320
    loaded = load_detector(tmp_path / "det")
    assert not loaded.training
    images = [world_image(world), world_image(world, index=1)]
    for a, b in zip(extract_regions(model, images), extract_regions(loaded, images)):
        np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-5, atol=1e-4)
        assert a.labels == b.labels


def test_load_detector_errors(model, tmp_path: Path) -> None:
    with pytest.raises(ScanVizError, match="not found"):
        load_detector(tmp_path / "nothing")
    save_detector(model, tmp_path / "det")
    (tmp_path / "det" / "detector.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ScanVizError, match="safetensors"):
        load_detector(tmp_path / "det")
    save_detector(build_detector(default_config(**{**SMALL, "representation_size": 32})), tmp_path / "other")
    (tmp_path / "other" / "detector.json").write_bytes((tmp_path / "det" / "detector.json").read_bytes())
    with pytest.raises(ScanVizError, match="shape"):
        load_detector(tmp_path / "other")


# ----------------------------------------------------------------------------------------------------------------
# training, evaluation, extraction


def test_training_lowers_the_loss_and_saves_a_loadable_detector(world: Path, trained: tuple[Path, dict]) -> None:
    out, summary = trained
    history = summary["history"]
    assert summary["epochs_done"] == 3 and summary["steps"] == 6 and len(history) == 3
    assert history[-1]["loss"] < history[0]["loss"]
    assert all("dev_map50" in h and "loss_colour" in h for h in history)
    loaded = load_detector(out)
    assert json.loads((out / "detector.json").read_text())["training"]["epochs_done"] == 3
    # resuming a finished run trains nothing more
    again = train_detector(world, out, epochs=3, batch_size=4, lr=1e-3, seed=0, workers=0, log=lambda _: None)
    assert again["steps"] == 6
    with pytest.raises(ScanVizError, match="batch_size=4"):
        train_detector(world, out, epochs=3, batch_size=2, lr=1e-3, seed=0, workers=0, log=lambda _: None)
    result = evaluate_detector(loaded, world, "test")
    assert 0.0 <= result["map50"] <= 1.0 and result["n_images"] == 2
    assert set(result["per_class"]) == {model_class for item in load_split(world, "test", loaded.config)
                                        for model_class in np.asarray(loaded.config.classes)[item.labels]}


def test_training_resumes_from_a_checkpoint_within_an_epoch(world: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from scan_viz.train import detector as train_module

    class Crash(Exception):
        pass

    def crash_at_checkpoint(message: str) -> None:
        if message.startswith("checkpoint at step 1 of epoch 2"):
            raise Crash

    monkeypatch.setattr(train_module, "CHECKPOINT_EVERY_S", 0.0)
    kwargs = {"epochs": 2, "batch_size": 4, "lr": 1e-3, "seed": 0, "workers": 0, "config": default_config(**SMALL),
              "eval_images": 0}
    with pytest.raises(Crash):
        train_detector(world, tmp_path, log=crash_at_checkpoint, **kwargs)
    assert json.loads((tmp_path / "detector.json").read_text())["training"]["epochs_done"] == 1
    messages: list[str] = []
    summary = train_detector(world, tmp_path, log=messages.append, **kwargs)
    assert "1 epoch(s) and 1 step(s) done" in messages[0]
    assert summary["steps"] == 4 and [h["steps"] for h in summary["history"]] == [2, 2]


def test_extract_world_writes_store_and_precomp(world: Path, trained: tuple[Path, dict], tmp_path: Path) -> None:
    model = load_detector(trained[0])
    store = extract_world(model, world, "test", tmp_path / "data", log=lambda _: None)
    assert store.ids == ["test_000000", "test_000001"] and store.has_boxes()
    assert store.features.shape == (2, 36, model.config.img_dim)
    again = load_saved_regions(tmp_path / "data" / "test_regions")
    assert (np.asarray(again.image_sizes) == [[320, 256], [320, 256]]).all()
    assert load_regions(tmp_path / "data" / "test_regions").boxes.shape == (2, 36, 4)
    precomp = load_precomp(tmp_path / "data", "test")
    assert precomp.regions.features.shape == (2, 36, model.config.img_dim) and len(precomp.captions) == 10
    np.testing.assert_array_equal(np.asarray(precomp.regions.features), np.asarray(store.features))
    direct = extract_regions(model, [world_image(world)])[0]
    np.testing.assert_allclose(np.asarray(store.features[0]), direct.features, rtol=1e-5, atol=1e-6)
    assert not list((tmp_path / "data").glob(".*"))  # no scratch files left


# ----------------------------------------------------------------------------------------------------------------
# command line


def test_cli_eval_and_user_errors(world: Path, trained: tuple[Path, dict], tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["eval", "--detector", str(trained[0]), "--world", str(world), "--split", "test",
                     "--json", str(tmp_path / "eval.json")]) == 0
    assert "mAP@0.5" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["n_images"] == 2
    assert cli_main(["eval", "--detector", str(tmp_path / "missing"), "--world", str(world)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert cli_main(["extract", "--detector", str(trained[0]), "--world", str(world), "--split", "nope",
                     "--out", str(tmp_path / "x")]) == 2
    assert "nope_annotations.json not found" in capsys.readouterr().err
    assert cli_main(["train", "--world", str(tmp_path / "no_world"), "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
