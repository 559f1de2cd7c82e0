"""Test helper: write checkpoints the way the official SCAN train.py did (Python 2.7, PyTorch 0.3/0.4, CUDA).

Python 3 cannot produce such a file with ``torch.save``: its pickler writes ``str`` as BINUNICODE, ``bytes`` as a
``_codecs.encode`` REDUCE, OrderedDicts as SETITEMS, and tensors with ``_rebuild_tensor_v2`` on CPU storages.
So this module emits the opcodes of Python 2's ``cPickle`` (protocol 2) by hand:

- ``bytes`` values are Python 2 ``str``: SHORT_BINSTRING (< 256 bytes) or BINSTRING; ``str`` values are Python 2
  ``unicode``: BINUNICODE. State-dict keys and Namespace attribute names are Python 2 ``str``.
- ``OrderedDict`` reduces to ``OrderedDict([[key, value], ...])`` (Python 2's ``__reduce__``), plus a BUILD of
  ``_metadata`` for PyTorch 0.4 state dicts.
- ``argparse.Namespace`` is GLOBAL + EMPTY_TUPLE + NEWOBJ + BUILD(attribute dict).
- A tensor is ``torch._utils._rebuild_tensor(storage, offset, size, stride)`` (0.3) or ``_rebuild_tensor_v2(...,
  requires_grad, OrderedDict())`` (0.4); its storage is a persistent id
  ``('storage', torch.cuda.FloatStorage, key, 'cuda:0', numel, None)``.
- The file is torch's legacy layout: pickles of the magic number, the protocol version, sys_info, the object, the
  sorted storage keys, then per storage an int64 element count and the raw little-endian float32 data.

cuDNN flattened a GRU's weights into one buffer, so with ``flatten_rnn`` all ``rnn.*`` tensors are views at
different offsets of one shared storage, as in real official checkpoints.
"""
from __future__ import annotations

import dataclasses
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# pickle opcodes (the subset Python 2's cPickle writes at protocol 2)
PROTO, STOP, MARK = b"\x80", b".", b"("
NONE, NEWTRUE, NEWFALSE = b"N", b"\x88", b"\x89"
BININT, BININT1, BININT2, LONG1, BINFLOAT = b"J", b"K", b"M", b"\x8a", b"G"
SHORT_BINSTRING, BINSTRING, BINUNICODE = b"U", b"T", b"X"
EMPTY_TUPLE, TUPLE, TUPLE1, TUPLE2, TUPLE3 = b")", b"t", b"\x85", b"\x86", b"\x87"
EMPTY_LIST, APPEND, APPENDS = b"]", b"a", b"e"
EMPTY_DICT, SETITEM, SETITEMS = b"}", b"s", b"u"
GLOBAL, REDUCE, NEWOBJ, BUILD, BINPERSID = b"c", b"R", b"\x81", b"b", b"Q"
BINPUT, LONG_BINPUT, BINGET, LONG_BINGET = b"q", b"r", b"h", b"j"
_BATCHSIZE = 1000


@dataclasses.dataclass(frozen=True)
class Global:
    """A module-level name, pickled as GLOBAL (a function or class reference)."""

    module: str
    name: str


@dataclasses.dataclass(eq=False)
class Reduce:
    """``func(*args)`` at load time: how Python 2 pickled OrderedDicts and tensors, and how exploits run code."""

    func: Global
    args: tuple


@dataclasses.dataclass(eq=False)
class NewObject:
    """``cls.__new__(cls)`` then ``__dict__.update(state)``: a new-style Python 2 instance (argparse.Namespace)."""

    cls: Global
    state: dict


@dataclasses.dataclass(eq=False)
class _Storage:
    key: bytes
    data: bytes  # little-endian float32
    numel: int


class Py2Pickler:
    """Emits one protocol-2 pickle with Python 2 cPickle's opcodes, memo (BINPUT/BINGET) and batching."""

    def __init__(self, persistent_id: Callable[[Any], Any] | None = None) -> None:
        self.out = bytearray()
        self.memo: dict[Any, int] = {}
        self._alive: list[Any] = []  # keeps memoised objects alive so their id() is not reused
        self.persistent_id = persistent_id

    def dumps(self, obj: Any) -> bytes:
        self.out += PROTO + b"\x02"
        self.save(obj)
        self.out += STOP
        return bytes(self.out)

    def _memoize(self, key: Any, obj: Any) -> None:
        index = len(self.memo)
        self.memo[key] = index
        self._alive.append(obj)
        self.out += BINPUT + bytes([index]) if index < 256 else LONG_BINPUT + struct.pack("<I", index)

    def _from_memo(self, key: Any) -> bool:
        index = self.memo.get(key)
        if index is None:
            return False
        self.out += BINGET + bytes([index]) if index < 256 else LONG_BINGET + struct.pack("<I", index)
        return True

    def save(self, obj: Any) -> None:
        pid = self.persistent_id(obj) if self.persistent_id is not None else None
        if pid is not None:
            self.save(pid)
            self.out += BINPERSID
            return
        if obj is None:
            self.out += NONE
        elif obj is True or obj is False:
            self.out += NEWTRUE if obj else NEWFALSE
        elif isinstance(obj, int):
            self._save_int(obj)
        elif isinstance(obj, float):
            self.out += BINFLOAT + struct.pack(">d", obj)
        elif isinstance(obj, Global):
            key = ("global", obj.module, obj.name)
            if not self._from_memo(key):
                self.out += GLOBAL + obj.module.encode() + b"\n" + obj.name.encode() + b"\n"
                self._memoize(key, obj)
        elif self._from_memo(id(obj)):
            pass
        elif isinstance(obj, bytes):
            n = len(obj)
            self.out += (SHORT_BINSTRING + bytes([n]) if n < 256 else BINSTRING + struct.pack("<i", n)) + obj
            self._memoize(id(obj), obj)
        elif isinstance(obj, str):
            data = obj.encode("utf-8")
            self.out += BINUNICODE + struct.pack("<I", len(data)) + data
            self._memoize(id(obj), obj)
        elif isinstance(obj, tuple):
            self._save_tuple(obj)
        elif isinstance(obj, list):
            self.out += EMPTY_LIST
            self._memoize(id(obj), obj)
            self._batch(obj, APPEND, APPENDS)
        elif isinstance(obj, OrderedDict):
            # Python 2.7's OrderedDict.__reduce__: (OrderedDict, ([[k, v], ...],), instance __dict__ or absent)
            self.save(Global("collections", "OrderedDict"))
            self.save(([[key, value] for key, value in obj.items()],))
            self.out += REDUCE
            self._memoize(id(obj), obj)
            metadata = getattr(obj, "_metadata", None)
            if metadata is not None:
                self.save({b"_metadata": metadata})
                self.out += BUILD
        elif isinstance(obj, dict):
            self.out += EMPTY_DICT
            self._memoize(id(obj), obj)
            self._batch([item for pair in obj.items() for item in pair], SETITEM, SETITEMS, step=2)
        elif isinstance(obj, Reduce):
            self.save(obj.func)
            self.save(obj.args)
            self.out += REDUCE
            self._memoize(id(obj), obj)
        elif isinstance(obj, NewObject):
            self.save(obj.cls)
            self.out += EMPTY_TUPLE + NEWOBJ
            self._memoize(id(obj), obj)
            self.save(obj.state)
            self.out += BUILD
        else:
            raise TypeError(f"Py2Pickler cannot pickle {type(obj)}")

    def _save_int(self, value: int) -> None:
        if 0 <= value <= 0xFF:
            self.out += BININT1 + bytes([value])
        elif 0 <= value <= 0xFFFF:
            self.out += BININT2 + struct.pack("<H", value)
        elif -(2**31) <= value < 2**31:
            self.out += BININT + struct.pack("<i", value)
        else:  # a Python 2 long
            data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.out += LONG1 + bytes([len(data)]) + data

    def _save_tuple(self, obj: tuple) -> None:
        if not obj:
            self.out += EMPTY_TUPLE
            return
        if len(obj) <= 3:
            for item in obj:
                self.save(item)
            self.out += (TUPLE1, TUPLE2, TUPLE3)[len(obj) - 1]
        else:
            self.out += MARK
            for item in obj:
                self.save(item)
            self.out += TUPLE
        self._memoize(id(obj), obj)

    def _batch(self, items: list, one: bytes, many: bytes, step: int = 1) -> None:
        for start in range(0, len(items), _BATCHSIZE * step):
            chunk = items[start:start + _BATCHSIZE * step]
            if len(chunk) > step:
                self.out += MARK
                for item in chunk:
                    self.save(item)
                self.out += many
            else:
                for item in chunk:
                    self.save(item)
                self.out += one


def cudnn_flatten(state: Mapping[str, torch.Tensor], prefix: str = "rnn.") -> "OrderedDict[str, torch.Tensor]":
    """Make every ``prefix*`` tensor a view into one shared buffer (with gaps), as cuDNN's flatten_parameters did."""
    names = [name for name in state if name.startswith(prefix)]
    gap = 3
    total = sum(state[name].numel() + gap for name in names) + gap
    buffer = torch.full((total,), -7.0)
    out = OrderedDict()
    offset = gap
    for name, tensor in state.items():
        if name in names:
            view = buffer[offset:offset + tensor.numel()].view(tensor.shape)
            view.copy_(tensor)
            out[name] = view
            offset += tensor.numel() + gap
        else:
            out[name] = tensor
    return out


def py2_str(value: Any) -> Any:
    """A Python 3 value as Python 2's argparse left it: text becomes a byte string (Python 2 ``str``)."""
    return value.encode("ascii") if isinstance(value, str) else value


def py2_state_dict(state: Mapping[str, torch.Tensor], torch_version: str) -> "OrderedDict[bytes, torch.Tensor]":
    out = OrderedDict((name.encode("ascii"), tensor) for name, tensor in state.items())
    if torch_version == "0.4":  # 0.4 added per-module version metadata as an attribute of the OrderedDict
        modules = sorted({name.rsplit(".", 1)[0] for name in state})
        out._metadata = OrderedDict([(b"", {b"version": 1})] + [(m.encode(), {b"version": 1}) for m in modules])
    return out


class _LegacyWriter:
    """Collects storages while pickling, then lays out torch's legacy (non-zip) file."""

    def __init__(self, torch_version: str, location: bytes) -> None:
        self.torch_version = torch_version
        self.location = location
        self.storages: dict[int, _Storage] = {}

    def _storage_of(self, tensor: torch.Tensor) -> _Storage:
        untyped = tensor.untyped_storage()
        ptr = untyped.data_ptr()
        if ptr not in self.storages:
            flat = torch.empty(0, dtype=torch.float32).set_(untyped)
            # Python 2 used str(storage._cdata), a large decimal address
            key = str(94_000_000_000_000 + 4096 * len(self.storages)).encode()
            self.storages[ptr] = _Storage(key, flat.numpy().astype("<f4").tobytes(), flat.numel())
        return self.storages[ptr]

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            storage_type = Global("torch.cuda" if self.location.startswith(b"cuda") else "torch", "FloatStorage")
            return (b"storage", storage_type, obj.key, self.location, obj.numel, None)
        return None

    def tensor(self, tensor: torch.Tensor) -> Reduce:
        if tensor.dtype != torch.float32:
            raise TypeError("only float32 tensors are written")
        storage = self._storage_of(tensor)
        args: tuple = (storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
        if self.torch_version == "0.3":
            return Reduce(Global("torch._utils", "_rebuild_tensor"), args)
        return Reduce(Global("torch._utils", "_rebuild_tensor_v2"), args + (False, OrderedDict()))

    def file_bytes(self, obj: Any) -> bytes:
        sys_info = {b"protocol_version": PROTOCOL_VERSION, b"little_endian": True,
                    b"type_sizes": {b"short": 2, b"int": 4, b"long": 8}}
        parts = [Py2Pickler().dumps(MAGIC_NUMBER), Py2Pickler().dumps(PROTOCOL_VERSION),
                 Py2Pickler().dumps(sys_info), Py2Pickler(self.persistent_id).dumps(obj)]
        ordered = sorted(self.storages.values(), key=lambda s: s.key)
        parts.append(Py2Pickler().dumps([s.key for s in ordered]))
        for storage in ordered:
            parts.append(struct.pack("<q", storage.numel) + storage.data)
        return b"".join(parts)


def _replace_tensors(obj: Any, convert: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(obj, torch.Tensor):
        return convert(obj)
    if isinstance(obj, OrderedDict):
        out = OrderedDict((k, _replace_tensors(v, convert)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if isinstance(obj, dict):
        return {k: _replace_tensors(v, convert) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace_tensors(v, convert) for v in obj]
    return obj


def write_py2_legacy_file(path: str | Path, obj: Any, *, torch_version: str = "0.3",
                          location: bytes = b"cuda:0") -> None:
    """Write ``obj`` (built from bytes/str/int/float/OrderedDict/NewObject/Reduce/tensors) as a legacy torch file."""
    writer = _LegacyWriter(torch_version, location)
    Path(path).write_bytes(writer.file_bytes(_replace_tensors(obj, writer.tensor)))


def write_py2_checkpoint(path: str | Path, opt: Mapping[str, Any], image_state: Mapping[str, torch.Tensor],
                         text_state: Mapping[str, torch.Tensor], *, epoch: int = 7, best_rsum: float = 412.5,
                         eiters: int = 31000, torch_version: str = "0.3", flatten_rnn: bool = True,
                         opt_as_dict: bool = False) -> None:
    """A ``model_best.pth.tar`` as the official train.py wrote it under Python 2.7 on a GPU."""
    if flatten_rnn:
        text_state = cudnn_flatten(text_state)
    attributes = {name.encode("ascii"): py2_str(value) for name, value in opt.items()}
    namespace: Any = attributes if opt_as_dict else NewObject(Global("argparse", "Namespace"), attributes)
    checkpoint = {
        b"epoch": epoch,
        b"model": [py2_state_dict(image_state, torch_version), py2_state_dict(text_state, torch_version)],
        b"best_rsum": best_rsum,
        b"opt": namespace,
        b"Eiters": eiters,
    }
    write_py2_legacy_file(path, checkpoint, torch_version=torch_version)


def official_opt(**overrides: Any) -> dict[str, Any]:
    """Every argument of the official train.py (plus ``vocab_size``), with small dimensions for fast tests."""
    opt: dict[str, Any] = dict(
        data_path=b"/home/caf\xe9/data", data_name="f30k_precomp", vocab_path="./vocab/", margin=0.2,
        num_epochs=30, batch_size=128, word_dim=6, embed_size=8, grad_clip=2.0, num_layers=1,
        learning_rate=0.0002, lr_update=15, workers=10, log_step=10, val_step=500,
        logger_name="./runs/f30k_scan/log", model_name="./runs/f30k_scan/checkpoint", resume="",
        max_violation=True, img_dim=12, no_imgnorm=False, no_txtnorm=False, raw_feature_norm="clipped_l2norm",
        agg_func="LogSumExp", cross_attn="t2i", precomp_enc_type="basic", bi_gru=True, lambda_lse=6.0,
        lambda_softmax=9.0, vocab_size=10,
    )
    opt.update(overrides)
    return opt


def random_states(opt: Mapping[str, Any], seed: int = 0, g_shape: tuple[int, ...] = ()
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Image and text state dicts with the official key names and shapes for ``opt``.

    ``g_shape`` is the shape of ``fc.weight_g``: () in PyTorch >= 0.4, (1,) in 0.3 (``Variable.norm()``).
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    embed, img_dim, word_dim = opt["embed_size"], opt["img_dim"], opt["word_dim"]
    if opt["precomp_enc_type"] == "weight_norm":
        image = {"fc.weight_g": rand(1).reshape(g_shape), "fc.weight_v": rand(embed, img_dim), "fc.bias": rand(embed)}
    else:
        image = {"fc.weight": rand(embed, img_dim), "fc.bias": rand(embed)}
    text = {"embed.weight": rand(opt["vocab_size"], word_dim)}
    directions = ("", "_reverse") if opt["bi_gru"] else ("",)
    for layer in range(opt["num_layers"]):
        in_size = word_dim if layer == 0 else embed * len(directions)
        for suffix in directions:
            text[f"rnn.weight_ih_l{layer}{suffix}"] = rand(3 * embed, in_size)
            text[f"rnn.weight_hh_l{layer}{suffix}"] = rand(3 * embed, embed)
            text[f"rnn.bias_ih_l{layer}{suffix}"] = rand(3 * embed)
            text[f"rnn.bias_hh_l{layer}{suffix}"] = rand(3 * embed)
    return image, text
