"""Read and write SCAN weights: official ``model_best.pth.tar`` files and the project's model directory.

An official checkpoint is what the official train.py saved (usually under Python 2.7 / PyTorch 0.3-0.4 on a GPU)::

    {"epoch": int, "model": [image_state_dict, text_state_dict], "best_rsum": float,
     "opt": argparse.Namespace, "Eiters": int}

It is a pickle, and a pickle can run code, so it is only ever read with torch's restricted ``weights_only``
unpickler, with ``argparse.Namespace`` as the one extra allowed class.

A model directory is this project's format: ``config.json`` (``ScanConfig``) and ``model.safetensors`` (keys
prefixed ``img_enc.`` / ``txt_enc.``), plus a ``vocab.json`` written by the vocabulary code.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from scan_viz.errors import ScanVizError
from scan_viz.io import atomic_path
from scan_viz.model.config import ScanConfig
from scan_viz.safe_files import (MAX_CHECKPOINT_BYTES, LoadBudget, budget_or_default, check_safetensors, check_zip,
                                 read_json, shown)
from scan_viz.safe_paths import MAX_CONFIG_BYTES, regular_file

__all__ = [
    "CONFIG_FILE", "IMAGE_PREFIX", "TEXT_PREFIX", "VOCAB_FILE", "WEIGHTS_FILE", "OfficialCheckpoint",
    "convert_official", "image_state_shapes", "load_model_dir", "load_official_checkpoint", "save_model_dir",
    "text_state_shapes", "write_official_checkpoint",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
IMAGE_PREFIX = "img_enc."
TEXT_PREFIX = "txt_enc."

StateDict = dict[str, torch.Tensor]

# Messages of torch's weights_only unpickler that mean "this pickle wants to build or call something that is not
# a tensor": the group is the offending name.
_UNSAFE_PICKLE_PATTERNS = (
    re.compile(r"GLOBAL (\S+) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+) whose module"),
    re.compile(r"reduce for unrecognized function (\S+)"),
    re.compile(r"Can only (?:create new object|build)\b.*?but got (\S+)"),
)


@dataclasses.dataclass
class OfficialCheckpoint:
    """The contents of an official ``model_best.pth.tar``: config from ``opt`` and float32 CPU weights."""

    config: ScanConfig
    image_state: StateDict
    text_state: StateDict
    epoch: int = 0
    best_rsum: float = 0.0
    eiters: int = 0


# ---------------------------------------------------------------------------------------------------------------
# expected keys and shapes


def image_state_shapes(config: ScanConfig) -> dict[str, tuple[int, ...]]:
    """Official image-encoder keys and shapes; ``fc.weight_g`` is a scalar (weight norm with ``dim=None``)."""
    embed, img_dim = config.embed_size, config.img_dim
    if config.precomp_enc_type == "weight_norm":
        return {"fc.weight_g": (), "fc.weight_v": (embed, img_dim), "fc.bias": (embed,)}
    return {"fc.weight": (embed, img_dim), "fc.bias": (embed,)}


def text_state_shapes(config: ScanConfig) -> dict[str, tuple[int, ...]]:
    """Official text-encoder keys and shapes: ``embed.weight`` (vocab_size, word_dim), then the GRU's weights.

    Layer ``n > 0`` of a bi-GRU reads both directions of layer ``n - 1``, so its input is ``2 * embed_size``.
    With ``vocab_size == 0`` (unknown) the number of embedding rows is not checked.
    """
    from scan_viz.model.encoders import text_encoder_kind

    embed = config.embed_size
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (config.vocab_size, config.word_dim)}
    if text_encoder_kind(config) == "word_vectors":  # one vector per word, no GRU (scan_viz.photo)
        return shapes
    directions = ("", "_reverse") if config.bi_gru else ("",)
    for layer in range(config.num_layers):
        in_size = config.word_dim if layer == 0 else embed * len(directions)
        for suffix in directions:
            shapes[f"rnn.weight_ih_l{layer}{suffix}"] = (3 * embed, in_size)
            shapes[f"rnn.weight_hh_l{layer}{suffix}"] = (3 * embed, embed)
            shapes[f"rnn.bias_ih_l{layer}{suffix}"] = (3 * embed,)
            shapes[f"rnn.bias_hh_l{layer}{suffix}"] = (3 * embed,)
    return shapes


def _checked_state(state: Any, expected: Mapping[str, tuple[int, ...]], what: str, fields: str,
                   source: str) -> StateDict:
    """Fresh float32 contiguous CPU copies of ``state`` in ``expected``'s order, or ScanVizError.

    Copies (never views) because official GRU weights share one cuDNN buffer, which safetensors refuses.
    """
    if not isinstance(state, Mapping):
        raise ScanVizError(f"{source}: the {what} weights are a {type(state).__name__}, not a state dict")
    state = {_text(key): value for key, value in state.items()}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        problems = [f"{label} {', '.join(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected))
                    if keys]
        raise ScanVizError(f"{source}: the {what} weights do not match the config ({'; '.join(problems)}); "
                           f"check {fields}")
    out: StateDict = {}
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise ScanVizError(f"{source}: {what} weight {key} is a {type(value).__name__}, not a tensor")
        if not (value.is_floating_point() and value.layout == torch.strided):
            raise ScanVizError(f"{source}: {what} weight {key} has type {value.dtype}/{value.layout}; "
                               "expected dense floating-point weights")
        got = tuple(value.shape)
        if shape == ():  # weight_g: 0-dim since PyTorch 0.4, shape (1,) from 0.3's Variable.norm()
            ok = value.numel() == 1
        elif key == "embed.weight" and shape[0] == 0:  # vocab size unknown
            ok = len(got) == 2 and got[1] == shape[1]
        else:
            ok = got == shape
        if not ok:
            raise ScanVizError(f"{source}: {what} weight {key} has shape {got} but the config ({fields}) needs "
                               f"{shape}; the weights and the config do not belong to the same model")
        copy = torch.empty(shape if shape == () else got, dtype=torch.float32)
        copy.copy_(value.detach().reshape(copy.shape))
        if not torch.isfinite(copy).all():
            raise ScanVizError(f"{source}: {what} weight {key} contains NaN or infinite values; the training run "
                               "diverged, use an earlier checkpoint")
        out[key] = copy
    return out


def _checked_states(config: ScanConfig, image_state: Any, text_state: Any, source: str) -> tuple[StateDict, StateDict]:
    image = _checked_state(image_state, image_state_shapes(config), "image encoder",
                           f"precomp_enc_type={config.precomp_enc_type}, embed_size={config.embed_size}, "
                           f"img_dim={config.img_dim}", source)
    text = _checked_state(text_state, text_state_shapes(config), "text encoder",
                          f"vocab_size={config.vocab_size}, word_dim={config.word_dim}, "
                          f"embed_size={config.embed_size}, num_layers={config.num_layers}, "
                          f"bi_gru={config.bi_gru}", source)
    return image, text


def _with_vocab_size(config: ScanConfig, text_state: StateDict) -> ScanConfig:
    """``config`` with ``vocab_size`` taken from the embedding when the config does not know it (0)."""
    if config.vocab_size == 0:
        return config.replace(vocab_size=int(text_state["embed.weight"].shape[0]))
    return config


def _text(value: Any) -> Any:
    """Python 2 byte strings as text (latin1 is what torch.load's ``encoding`` turns them into as well)."""
    return value.decode("latin1") if isinstance(value, bytes) else value


# ---------------------------------------------------------------------------------------------------------------
# official checkpoints


def load_official_checkpoint(path: str | os.PathLike, budget: LoadBudget | None = None) -> OfficialCheckpoint:
    """Read an official SCAN ``model_best.pth.tar`` (Python 2 legacy or Python 3 zip format) on the CPU.

    Raises ScanVizError for anything that is not such a checkpoint, including pickles that would call or build
    anything other than tensors and ``argparse.Namespace``; nothing in the file is ever executed. What the file
    expands to is checked (a zip's declared sizes) and charged to ``budget`` before torch reads it.
    """
    path = Path(path)
    raw = _restricted_torch_load(path, budget)
    source = f"checkpoint {shown(path)}"
    if not isinstance(raw, Mapping):
        raise ScanVizError(f"{source} holds a {type(raw).__name__}, not the dict the official train.py saves; "
                           "pass a model_best.pth.tar or checkpoint.pth.tar from SCAN")
    raw = {_text(key): value for key, value in raw.items()}
    missing = [key for key in ("model", "opt") if key not in raw]
    if missing:
        # the keys it does have are not quoted: no message repeats what a file holds
        raise ScanVizError(f"{source} has no {' or '.join(repr(m) for m in missing)} entry ({len(raw)} other "
                           "entries); it is not a checkpoint saved by SCAN's train.py")
    model = raw["model"]
    if not (isinstance(model, (list, tuple)) and len(model) == 2 and all(isinstance(s, Mapping) for s in model)):
        raise ScanVizError(f"{source}: 'model' should be a list of two state dicts [image encoder, text encoder], "
                           f"got {_describe(model)}")
    image_raw = {_text(key): value for key, value in model[0].items()}
    text_raw = {_text(key): value for key, value in model[1].items()}
    opt = raw["opt"]
    if isinstance(opt, argparse.Namespace):
        opt = vars(opt)
    if not isinstance(opt, Mapping):
        raise ScanVizError(f"{source}: 'opt' should be the training arguments (argparse.Namespace), "
                           f"got {_describe(opt)}")
    opt = _fill_from_weights({_text(key): value for key, value in opt.items()}, image_raw, text_raw)
    try:
        config = config_from_values(opt)
    except ScanVizError as exc:
        raise ScanVizError(f"{source} has unusable training options: {exc}") from None
    image_state, text_state = _checked_states(config, image_raw, text_raw, source)
    return OfficialCheckpoint(
        config=config, image_state=image_state, text_state=text_state,
        epoch=int(_number(raw.get("epoch", 0), "epoch", source)),
        best_rsum=float(_number(raw.get("best_rsum", 0.0), "best_rsum", source)),
        eiters=int(_number(raw.get("Eiters", 0), "Eiters", source)),
    )


#: torch's two layouts: a zip archive (PyTorch >= 1.6) or a pickle stream (the legacy layout, protocol 2 opcode
#: first); the pre-0.1.10 tar layout is refused by torch's weights-only loader itself.
_ZIP_MAGIC, _PICKLE_PROTO, _TAR_MAGIC = b"PK\x03\x04", 0x80, b"ustar"


def _restricted_torch_load(path: Path, budget: LoadBudget | None = None) -> Any:
    """``torch.load`` with the weights-only unpickler; every failure becomes a ScanVizError.

    Before torch reads anything: the file is a regular file, its first bytes are one of torch's layouts, and a
    zip's members are few and declare at most :data:`~scan_viz.safe_files.MAX_CHECKPOINT_BYTES` in all (torch
    allocates each record's declared size). A legacy file's tensors are stored raw, so it expands to its size.
    """
    name = shown(path)
    if path.is_dir():
        raise ScanVizError(f"checkpoint {name} is a directory: pass the model_best.pth.tar file written by SCAN's "
                           "train.py")
    if not os.path.lexists(path):
        raise ScanVizError(f"checkpoint {name} does not exist: pass the model_best.pth.tar file written by SCAN's "
                           "train.py")
    size = regular_file(path, "checkpoint")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise ScanVizError(f"cannot read checkpoint {name}: {exc.strerror or exc}") from None
    budget = budget_or_default(budget)
    if head.startswith(_ZIP_MAGIC):
        check_zip(path, "checkpoint", MAX_CHECKPOINT_BYTES, budget)
    elif head[:1] == bytes([_PICKLE_PROTO]):
        budget.charge(size, f"checkpoint {name}")
    elif head[257:262] != _TAR_MAGIC:
        what = "it is empty" if not head else ("it is all zero bytes" if not head.strip(b"\0") else
                                               "it starts with neither a zip archive nor a pickle")
        # torch would answer with a paragraph about its legacy format: one line instead
        raise ScanVizError(f"cannot load {name}: it is not a PyTorch checkpoint or it is damaged ({what}); pass "
                           "the model_best.pth.tar written by SCAN's train.py")
    try:
        with warnings.catch_warnings():
            # torch warns that pickle arguments are ignored with weights_only, but its restricted unpickler
            # does honour `encoding`
            warnings.filterwarnings("ignore", message="pickle_load_args only works")
            # a newer pickle protocol is either read or reported as a damaged file below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with torch.serialization.safe_globals([argparse.Namespace]):
                # latin1: Python 2 `str` values are bytes; a non-ASCII byte (a path) breaks the utf-8 default
                return torch.load(path, map_location="cpu", weights_only=True, encoding="latin1")
    except Exception as exc:  # a damaged or foreign file fails anywhere in the parser (even as OSError EINVAL)
        message = str(exc)
        for pattern in _UNSAFE_PICKLE_PATTERNS:
            match = pattern.search(message)
            if match:
                kind = match.group(1).strip("<>'\".,")
                if "." not in kind:  # torch strips "builtins." from the names it reports
                    kind = f"builtins.{kind}"
                raise ScanVizError(f"refusing to load {name}: it contains a pickled object of type {kind} that "
                                   "could run code; only SCAN checkpoints (tensors + argparse.Namespace) are "
                                   "accepted") from None
        if "Unsupported operand 84" in message:  # BINSTRING: the weights-only unpickler lacks it
            raise ScanVizError(f"cannot load {name}: it holds a Python 2 string of 256 bytes or more (a long "
                               "path in opt?), which torch's safe loader cannot read; re-save the checkpoint "
                               "with shorter option values") from None
        raise ScanVizError(f"cannot load {name}: it is not a PyTorch checkpoint or it is damaged "
                           f"({_reason(exc)}); pass the model_best.pth.tar written by SCAN's train.py") from None


def _reason(exc: BaseException) -> str:
    """The informative line of a torch/pickle error (torch wraps unpickler errors in paragraphs of advice)."""
    message = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.+)", message) or re.search(r"(Unsupported operand \d+)", message)
    if match:
        line = match.group(1).strip()
    else:
        line = next((part.strip() for part in message.splitlines() if part.strip()), "")
    if not re.search(r"[A-Za-z]{3}", line):  # e.g. KeyError('101') from a text file read as a pickle
        line = f"{type(exc).__name__} {line}".strip()
    return line if len(line) <= 160 else line[:157] + "..."


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _number(value: Any, name: str, source: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScanVizError(f"{source}: {name} should be a number, got {_describe(value)}")
    return value


def _fill_from_weights(opt: dict[str, Any], image_state: Mapping[str, Any], text_state: Mapping[str, Any]
                       ) -> dict[str, Any]:
    """Fill architecture options that ``opt`` lacks (vocab_size, and in forks the rest) from the weights."""
    opt = dict(opt)

    def shape(state: Mapping[str, Any], key: str) -> tuple[int, ...]:
        value = state.get(key)
        return tuple(value.shape) if isinstance(value, torch.Tensor) else ()

    embed = shape(text_state, "embed.weight")
    if len(embed) == 2:
        if not opt.get("vocab_size"):
            opt["vocab_size"] = embed[0]
        opt.setdefault("word_dim", embed[1])
    fc = shape(image_state, "fc.weight") or shape(image_state, "fc.weight_v")
    if len(fc) == 2:
        opt.setdefault("embed_size", fc[0])
        opt.setdefault("img_dim", fc[1])
    if "precomp_enc_type" not in opt and "fc.weight_v" in image_state:
        opt["precomp_enc_type"] = "weight_norm"
    if "bi_gru" not in opt:
        opt["bi_gru"] = any(str(key).endswith("_reverse") for key in text_state)
    if "num_layers" not in opt:
        layers = [int(m.group(1)) for key in text_state if (m := re.fullmatch(r"rnn\.weight_ih_l(\d+)", str(key)))]
        if layers:
            opt["num_layers"] = max(layers) + 1
    return opt


def write_official_checkpoint(path: str | os.PathLike, config: ScanConfig, image_state: Mapping[str, torch.Tensor],
                              text_state: Mapping[str, torch.Tensor], *, epoch: int = 0, best_rsum: float = 0.0,
                              eiters: int = 0, legacy: bool = True) -> None:
    """Save weights as the official train.py does, so the official code (and this package) can load them.

    ``legacy=True`` writes torch's pre-1.6 layout (pickle protocol 2) that old PyTorch versions read; ``opt`` is an
    ``argparse.Namespace`` of every config field under its official name plus the ``extra`` options. The file is
    written to a temporary name and renamed, so an interrupted save never leaves a half-written checkpoint.
    """
    path = Path(path)
    image, text = _checked_states(config, image_state, text_state, f"cannot write {path}")
    config = _with_vocab_size(config, text)
    opt = argparse.Namespace(**{str(key): value for key, value in config.extra.items()})
    for name in config.field_names():
        setattr(opt, name, getattr(config, name))
    from scan_viz.heads import head_settings, head_spec

    settings = {**head_settings(config.head, config), **dict(head_spec(config.head).fixed)}
    for name, value in settings.items():  # the official code reads them from opt
        setattr(opt, name, value)
    checkpoint = {
        "epoch": int(epoch),
        "model": [OrderedDict(image), OrderedDict(text)],
        "best_rsum": float(best_rsum),
        "opt": opt,
        "Eiters": int(eiters),
    }
    _write_atomically(path, lambda tmp: torch.save(checkpoint, tmp, pickle_protocol=2,
                                                   _use_new_zipfile_serialization=not legacy))


# ---------------------------------------------------------------------------------------------------------------
# the project's model directory


def save_model_dir(directory: str | os.PathLike, config: ScanConfig, image_state: Mapping[str, torch.Tensor],
                   text_state: Mapping[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed); returns it.

    Each file is written under a temporary name and renamed, so readers never see a half-written file. Other
    files there (``vocab.json``) are left alone. A config with ``vocab_size == 0`` gets it from the embedding.
    """
    directory = Path(directory)
    image, text = _checked_states(config, image_state, text_state, f"cannot save model to {directory}")
    config = _with_vocab_size(config, text)
    tensors = {IMAGE_PREFIX + key: value for key, value in image.items()}
    tensors.update({TEXT_PREFIX + key: value for key, value in text.items()})
    _write_atomically(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    _write_atomically(directory / CONFIG_FILE, config.save)
    return directory


def load_model_dir(directory: str | os.PathLike, budget: LoadBudget | None = None
                   ) -> tuple[ScanConfig, StateDict, StateDict]:
    """Read a model directory written by ``save_model_dir``: (config, image_state, text_state), float32 on CPU.

    The safetensors header (length, tensor count, declared sizes) is checked and charged to ``budget`` first."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ScanVizError(f"model directory {directory} does not exist; create one with save_model_dir or by "
                           "converting an official checkpoint")
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise ScanVizError(f"model directory {directory} has no {needed.name}; it is not a complete scan-viz "
                               "model (re-create it with save_model_dir or by converting an official checkpoint)")
    config = load_config(config_path)
    check_safetensors(weights_path, "model weights", budget=budget)
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ScanVizError(f"cannot read {weights_path}: it is not a valid safetensors file ({_reason(exc)}); "
                           "re-create the model directory") from None
    image_state: StateDict = {}
    text_state: StateDict = {}
    for key, value in tensors.items():
        if key.startswith(IMAGE_PREFIX):
            image_state[key[len(IMAGE_PREFIX):]] = value
        elif key.startswith(TEXT_PREFIX):
            text_state[key[len(TEXT_PREFIX):]] = value
        else:
            raise ScanVizError(f"{weights_path}: tensor {key} belongs to neither encoder (keys start with "
                               f"{IMAGE_PREFIX} or {TEXT_PREFIX}); re-create the model directory")
    if config.vocab_size == 0 and isinstance(text_state.get("embed.weight"), torch.Tensor):
        config = _with_vocab_size(config, text_state)
    image, text = _checked_states(config, image_state, text_state, f"model {directory}")
    return config, image, text


def convert_official(checkpoint_path: str | os.PathLike, vocab_path: str | os.PathLike,
                     out_dir: str | os.PathLike) -> OfficialCheckpoint:
    """Turn an official checkpoint and the vocabulary it was trained with into a model directory.

    Checks that the vocabulary has one word per embedding row before writing anything; copies it to
    ``out_dir/vocab.json``. Returns the loaded checkpoint (for its epoch and best_rsum).
    """
    checkpoint = load_official_checkpoint(checkpoint_path)
    vocab_path, out_dir = Path(vocab_path), Path(out_dir)
    n_words = _vocab_size(vocab_path)
    n_rows = checkpoint.text_state["embed.weight"].shape[0]
    if n_words != n_rows:
        raise ScanVizError(f"vocab has {n_words} words but the checkpoint's embedding has {n_rows} rows: pass the "
                           "vocab file the model was trained with")
    save_model_dir(out_dir, checkpoint.config, checkpoint.image_state, checkpoint.text_state)
    target = out_dir / VOCAB_FILE
    if not (target.exists() and os.path.samefile(vocab_path, target)):
        _write_atomically(target, lambda tmp: shutil.copyfile(vocab_path, tmp))
    return checkpoint


def _vocab_size(path: Path) -> int:
    """Words in an official vocabulary JSON: ``len(word2idx)``, as the official ``len(vocab)``, else ``idx``."""
    if not path.exists():
        raise ScanVizError(f"cannot read vocabulary {path}: it does not exist")
    vocab = read_json(path, "vocabulary")
    if isinstance(vocab, dict) and isinstance(vocab.get("word2idx"), dict):
        return len(vocab["word2idx"])
    if isinstance(vocab, dict) and isinstance(vocab.get("idx"), int) and not isinstance(vocab["idx"], bool):
        return vocab["idx"]
    raise ScanVizError(f"vocabulary {path} has no 'word2idx' or 'idx'; pass an official SCAN vocabulary JSON")


def _write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Run ``write(tmp)`` on a temporary name next to ``path``, then rename it to ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)


def config_from_values(values: Mapping[str, Any]) -> ScanConfig:
    """A ScanConfig from an official ``vars(opt)`` or a ``config.json``: the one place that maps the official names.

    The official ``opt`` keeps the attention settings (``cross_attn``, ``lambda_softmax``, ``agg_func``, ...) at
    its top level; here each top-level key that a head declares as a setting is filed under ``head_params``
    (a ``head_params`` entry of the same name wins). A file that names no head is an official SCAN checkpoint.
    """
    from scan_viz.heads import all_head_params

    values = dict(values)
    head_params = values.get("head_params") or {}
    if not isinstance(head_params, Mapping):
        raise ScanVizError("config: head_params must be a JSON object")
    head_params = dict(head_params)
    for param in all_head_params():
        if param.name in values:
            head_params.setdefault(param.name, values.pop(param.name))
    values["head_params"] = head_params
    values.setdefault("head", "scan")
    return ScanConfig.from_dict(values)


def load_config(path: str | Path) -> ScanConfig:
    """A model folder's ``config.json`` (bounded read; official names mapped by :func:`config_from_values`)."""
    values = read_json(path, "model config", max_bytes=MAX_CONFIG_BYTES)
    if not isinstance(values, dict):
        raise ScanVizError(f"model config {path} is not a JSON object")
    return config_from_values(values)
