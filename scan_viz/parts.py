"""Trained parts kept beside a model (a stage-1 head, a co-attention re-ranker): saved as a folder of weights and
JSON, and found for a model by the fingerprint of its encoders' weights.

A part trained on other weights is never used, since its inputs would not match the encoders. Nothing here
imports the model: a part is found from any object with ``image_encoder`` and ``text_encoder`` modules.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from scan_viz.errors import ScanVizError

#: The bundled models and their parts: one folder each.
PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"


#: the largest width (embedding size, vector size, hidden layer) a saved part's config may declare: the module is
#: built from these numbers before its weights are read, so they bound what loading it allocates (a 4,096 x 4,096
#: float32 matrix is 64 MB)
MAX_PART_WIDTH = 4096


def part_width(config: dict, key: str, default: int | None = None) -> int:
    """``config[key]`` as a width in [0, MAX_PART_WIDTH]; a ValueError names it otherwise (load_module_dir turns
    that into the part's one-line error)."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PART_WIDTH:
        raise ValueError(f"{key} must be an integer from 0 to {MAX_PART_WIDTH:,}, not {str(value)[:40]!r}")
    return value


def model_fingerprint(model) -> str:
    """sha256 (16 hex digits) of a ScanModel's encoder weights: which SCAN model a stage-1 head was trained on."""
    digest = hashlib.sha256()
    for encoder in (model.image_encoder, model.text_encoder):
        update_digest(digest, encoder)
    return digest.hexdigest()[:16]


def update_digest(digest, module: nn.Module) -> None:
    """Feed a module's weights (names and float32 values, in name order) into a hashlib digest."""
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())


def save_module_dir(directory: str | Path, module: nn.Module, weights_name: str, config: dict,
                    config_name: str) -> None:
    """A trained module as a folder: its weights (safetensors) and its ``config`` (JSON), swapped in atomically."""
    from safetensors.torch import save_file

    from scan_viz.io import write_dir_atomic

    def write(tmp: Path) -> None:
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp / weights_name))
        (tmp / config_name).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    write_dir_atomic(Path(directory), write)


def load_module_dir(directory: str | Path, config_name: str, fmt: str, weights_name: str,
                    build: Callable[[dict], tuple[nn.Module, Any]], what: str, retrain: str) -> Any:
    """Read a :func:`save_module_dir` folder. ``build(config)`` makes (the module, the object to return that holds
    it); the module gets the weights and is put in eval mode. Anything unreadable (a missing file, another format,
    missing keys, wrong shapes) is a ScanVizError naming ``what`` and the ``retrain`` command."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from scan_viz.safe_files import read_json

    directory = Path(directory)
    try:
        config = read_json(directory / config_name, config_name)
        if not isinstance(config, dict) or config.get("format") != fmt:
            raise ValueError(f"{config_name} is not a {fmt} file")
        module, result = build(config)
        module.load_state_dict(load_file(str(directory / weights_name)))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError,
            ScanVizError) as exc:
        raise ScanVizError(f"{directory} is not a readable {what} ({exc}); retrain it with `{retrain}`") from None
    module.eval()
    return result


def find_trained_for(model, config_name: str, search_dirs: list[Path] | None = None) -> Path | None:
    """The first folder of ``search_dirs`` (default: every folder under ``pretrained/``) whose ``config_name``
    JSON names this model's encoder fingerprint as its ``base_fingerprint``, or None."""
    if search_dirs is None:
        search_dirs = sorted(p for p in PRETRAINED_DIR.iterdir() if p.is_dir()) if PRETRAINED_DIR.is_dir() else []
    candidates = [d for d in search_dirs if (d / config_name).is_file()]
    if not candidates:
        return None
    from scan_viz.safe_files import read_json

    fingerprint = model_fingerprint(model)
    for directory in candidates:
        try:
            config = read_json(directory / config_name, config_name)
        except (OSError, ValueError, ScanVizError):
            continue
        if not isinstance(config, dict):
            continue
        if config.get("base_fingerprint") == fingerprint:
            return directory
    return None
