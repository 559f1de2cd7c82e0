"""A small interpreter, in torch, for a TensorFlow graph stored as data: the node list of a TensorFlow.js graph model.

The photo model's object detector (NanoDet, :mod:`.objects`) was published as a TensorFlow.js graph model: the op
graph as JSON and the weights as raw bytes. ``tools/vendor_nanodet.py`` keeps its graph as JSON and its weights as
safetensors; this module runs that graph with torch, so no TensorFlow runtime is needed. Only the ops such a
converted convolutional network uses are known (:data:`OPS`); any other op, or an attribute this code does not
implement (a "SAME" padding, an NCHW convolution), is refused when the graph is loaded, not guessed at.

Semantics follow TensorFlow's: tensors are NHWC where TF's op says so (Conv2D, MaxPool, ResizeBilinear), ``Pad``
pads with zeros and ``PadV2`` with its constant, ``ResizeBilinear`` with ``half_pixel_centers`` is torch's
``align_corners=False`` bilinear. Nodes whose inputs are all constants are evaluated once, at load time.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from scan_viz.errors import ScanVizError

Value = Any  # a torch.Tensor, or a list of them for an op with several outputs (SplitV)


def _nhwc(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply an NCHW torch op to an NHWC tensor."""
    return op(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _ints(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _pad(attrs: dict[str, Any], x: torch.Tensor, paddings: torch.Tensor, value: torch.Tensor | None = None
         ) -> torch.Tensor:
    pairs = paddings.reshape(-1, 2).tolist()
    flat = [int(p) for pair in reversed(pairs) for p in pair]  # F.pad wants the last dimension first
    return F.pad(x, flat, value=0.0 if value is None else float(value))


def _conv2d(attrs: dict[str, Any], x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    s = attrs["strides"]
    # filter (h, w, in, out) -> torch's (out, in, h, w)
    return _nhwc(lambda t: F.conv2d(t, w.permute(3, 2, 0, 1), stride=(s[1], s[2])), x)


def _max_pool(attrs: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    k, s = attrs["ksize"], attrs["strides"]
    return _nhwc(lambda t: F.max_pool2d(t, (k[1], k[2]), (s[1], s[2])), x)


def _resize_bilinear(attrs: dict[str, Any], x: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    return _nhwc(lambda t: F.interpolate(t, size=_ints(size), mode="bilinear", align_corners=False), x)


def _sparse_to_dense(attrs: dict[str, Any], indices: torch.Tensor, shape: torch.Tensor, values: torch.Tensor,
                     default: torch.Tensor) -> torch.Tensor:
    out = torch.full(_ints(shape), int(default), dtype=torch.int64)
    rows = indices.reshape(-1, max(out.ndim, 1)).long()
    values = values.reshape(-1).long().expand(len(rows)) if values.numel() <= 1 else values.reshape(-1).long()
    for row, value in zip(rows.tolist(), values.tolist()):
        out[tuple(row)] = value
    return out


#: op name -> function(attrs, *inputs); attrs are the simplified attributes kept by ``tools/vendor_nanodet.py``
OPS: dict[str, Callable[..., Value]] = {
    "Identity": lambda a, x: x,
    "Transpose": lambda a, x, perm: x.permute(*_ints(perm)),
    "Reshape": lambda a, x, shape: x.reshape(_ints(shape)),
    "Pad": _pad,
    "PadV2": _pad,
    "Conv2D": _conv2d,
    "MaxPool": _max_pool,
    "Add": lambda a, x, y: x + y,
    "AddV2": lambda a, x, y: x + y,
    "LeakyRelu": lambda a, x: F.leaky_relu(x, a["alpha"]),
    "Sigmoid": lambda a, x: torch.sigmoid(x),
    "ConcatV2": lambda a, *xs: torch.cat(xs[:-1], dim=int(xs[-1])),
    "SplitV": lambda a, x, sizes, dim: list(torch.split(x, _ints(sizes), dim=int(dim))),
    "ResizeBilinear": _resize_bilinear,
    "SparseToDense": _sparse_to_dense,
}
#: attributes whose values change what an op computes; anything else in a graph (dtypes, the cuDNN flag) does not
KNOWN_ATTRS = {"strides", "ksize", "alpha", "padding", "data_format", "dilations", "half_pixel_centers",
               "align_corners"}


def check_node(node: Mapping[str, Any]) -> None:
    """ScanVizError unless this interpreter computes ``node`` exactly as TensorFlow would."""
    op, attrs = node.get("op"), node.get("attr", {})
    if op not in OPS and op not in ("Const", "Placeholder"):
        raise ScanVizError(f"the detector graph uses the op {op!r}, which scan_viz's interpreter does not know")
    unknown = set(attrs) - KNOWN_ATTRS
    if unknown:
        raise ScanVizError(f"the detector graph's {op} node has attributes {sorted(unknown)} this interpreter "
                           "does not implement")
    if attrs.get("padding", "VALID") != "VALID" or attrs.get("data_format", "NHWC") != "NHWC":
        raise ScanVizError(f"the detector graph's {op} node needs {attrs.get('padding')} padding or "
                           f"{attrs.get('data_format')} layout; only VALID and NHWC are implemented")
    if any(d != 1 for d in attrs.get("dilations", [1])):
        raise ScanVizError(f"the detector graph's {op} node is dilated; not implemented")
    if op == "ResizeBilinear" and (attrs.get("align_corners") or not attrs.get("half_pixel_centers")):
        raise ScanVizError("the detector graph resizes with align_corners or without half-pixel centres; "
                           "not implemented")


class GraphModel:
    """A TF graph (its nodes: ``{"name", "op", "input": [...], "attr": {...}}``) and its constants, run in torch.

    ``run({"input_1": x}, ["Identity", ...])`` returns the named outputs. Thread-safe: nothing is kept between
    calls except the folded constants."""

    def __init__(self, nodes: Sequence[Mapping[str, Any]], constants: Mapping[str, torch.Tensor]) -> None:
        for node in nodes:
            check_node(node)
        by_name = {str(n["name"]): n for n in nodes}
        self.inputs = [name for name, n in by_name.items() if n["op"] == "Placeholder"]
        missing = [name for name, n in by_name.items() if n["op"] == "Const" and name not in constants]
        if missing:
            raise ScanVizError(f"the detector weights lack {len(missing)} of the graph's constants "
                               f"(first: {missing[0]}): vendor them again")
        self.values: dict[str, Value] = {name: constants[name] for name, n in by_name.items() if n["op"] == "Const"}
        # a fixed order (Kahn's), computed once; nodes fed only by constants are folded now
        order, placed = [], set(self.values) | set(self.inputs)
        pending = [n for n in nodes if n["op"] not in ("Const", "Placeholder")]
        while pending:
            ready = [n for n in pending if all(self._base(i) in placed for i in n.get("input", []))]
            if not ready:
                raise ScanVizError("the detector graph has a cycle or an input that no node produces")
            for node in ready:
                placed.add(node["name"])
            order += ready
            pending = [n for n in pending if n["name"] not in placed]
        self.order: list[Mapping[str, Any]] = []
        for node in order:
            if all(self._base(i) in self.values for i in node.get("input", [])):
                self.values[node["name"]] = self._apply(node, self.values)
            else:
                self.order.append(node)

    @staticmethod
    def _base(name: str) -> str:
        return name.rsplit(":", 1)[0] if ":" in name else name

    @staticmethod
    def _get(values: Mapping[str, Value], name: str) -> torch.Tensor:
        base, _, index = name.partition(":")
        value = values[base]
        return value[int(index or 0)] if isinstance(value, list) else value

    def _apply(self, node: Mapping[str, Any], values: Mapping[str, Value]) -> Value:
        return OPS[node["op"]](node.get("attr", {}), *[self._get(values, i) for i in node.get("input", [])])

    def run(self, feeds: Mapping[str, torch.Tensor], outputs: Sequence[str]) -> list[torch.Tensor]:
        values: dict[str, Value] = {**self.values, **feeds}
        for node in self.order:
            values[node["name"]] = self._apply(node, values)
        return [self._get(values, name) for name in outputs]
