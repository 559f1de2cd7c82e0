"""Run-folder files written atomically, and ``last.pt``, the resumable state of a run.

``last.pt`` holds only tensors and plain containers (state dicts, the optimizer's state dict, counters, the
config as a dict, RNG states as uint8 tensors), so it loads with ``torch.load(..., weights_only=True)``:
resuming never unpickles arbitrary objects.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from scan_viz import io
from scan_viz.errors import ScanVizError

LAST_STATE = "last.pt"
STATE_FORMAT = "scan_viz.train.last/1"


RUN_HINT = "check the free space and permissions of the run folder"


def atomic_path(target: Path):
    return io.atomic_path(target, RUN_HINT)


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_dir_atomic(target: Path, write: Callable[[Path], None]) -> None:
    io.write_dir_atomic(target, write, RUN_HINT)


def rng_state(device: str) -> dict[str, Any]:
    """The global torch RNG states (CPU, and every CUDA device when training on CUDA) as uint8 tensors."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_last(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plain containers of tensors and primitives) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": STATE_FORMAT, **state}, tmp)


def load_last(path: Path) -> dict[str, Any]:
    """Read a ``last.pt`` written by :func:`save_last`, tensors on the CPU."""
    if not path.is_file():
        raise ScanVizError(f"nothing to resume: {path} does not exist; drop --resume to start a new run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file; weights_only refuses anything but plain data
        raise ScanVizError(f"cannot resume from {path} ({str(exc).splitlines()[0]}): it is not a scan-viz "
                           "training state; start a new run with another --out") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ScanVizError(f"{path} is not a scan-viz training state ({STATE_FORMAT}); start a new run with "
                           "another --out")
    return state


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl``; a line cut short by a crash is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_log(path: Path, epochs_done: int) -> None:
    """Keep only the log records of the first ``epochs_done`` epochs (later ones were redone after a crash)."""
    if path.is_file():
        kept = [record for record in read_log(path) if record.get("epoch", 0) <= epochs_done]
        write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in kept))
