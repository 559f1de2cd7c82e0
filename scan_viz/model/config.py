"""Model configuration: the encoders' and the training recipe's hyperparameters under the official SCAN ``opt``
names, and the matching head with its settings (``head``, ``head_params``: the heads declare those).

Keeping the official names means a ``config.json`` written here can be checked field by field against
the ``opt`` Namespace stored in an official ``model_best.pth.tar``; the checkpoint reader
(:func:`scan_viz.model.checkpoint.config_from_values`) is the one place that files the official attention settings
(the direction, the lambdas, ...) under the head they belong to.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from scan_viz.errors import ScanVizError
from scan_viz.heads import DEFAULT_HEAD, all_head_params

PRECOMP_ENC_TYPES = ("basic", "weight_norm")


@dataclasses.dataclass
class ScanConfig:
    """Architecture, attention and training hyperparameters (defaults: the official train.py's)."""

    # encoders
    img_dim: int = 2048
    embed_size: int = 1024
    word_dim: int = 300
    num_layers: int = 1
    bi_gru: bool = False
    no_imgnorm: bool = False
    no_txtnorm: bool = False
    precomp_enc_type: str = "basic"
    vocab_size: int = 0
    # not official fields: the matching head the model was trained with (scan_viz.heads) and the settings of the
    # heads by their declared names (what is not here takes the declared default)
    head: str = DEFAULT_HEAD
    head_params: dict = dataclasses.field(default_factory=dict)
    # loss and optimisation
    margin: float = 0.2
    max_violation: bool = False
    # not an official field: with max_violation, the first N epochs use the sum over negatives (VSE-infinity's
    # and CHAN's released recipes warm up this way; hardest negatives from a random start can collapse)
    max_violation_warmup: int = 0
    learning_rate: float = 2e-4
    lr_update: int = 15
    num_epochs: int = 30
    batch_size: int = 128
    grad_clip: float = 2.0
    data_name: str = "precomp"
    # official fields this project does not use, kept so a round trip loses nothing
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ScanVizError when a field has a value the model cannot use."""
        # A config may come from a visitor's file: messages name the field and what it accepts, never its value.
        if not isinstance(self.head_params, dict):
            raise ScanVizError("config: head_params must be a JSON object")
        for param in all_head_params():  # the settings are declared once, by the heads
            if param.name not in self.head_params:
                continue
            try:
                param.parse(self.head_params[param.name])
            except ScanVizError:
                expected = (f"one of {', '.join(param.choices)}" if param.choices is not None
                            else f"a number from {param.low:g} to {param.high:g}")
                raise ScanVizError(f"config: {param.name} must be {expected}") from None
        if self.precomp_enc_type not in PRECOMP_ENC_TYPES:
            raise ScanVizError(f"config: precomp_enc_type must be one of {', '.join(PRECOMP_ENC_TYPES)}")
        if int(self.max_violation_warmup) < 0:
            raise ScanVizError("config: max_violation_warmup must be 0 or more")
        for name in ("img_dim", "embed_size", "word_dim", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ScanVizError(f"config: {name} must be a positive integer")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ScanConfig":
        """Build from an official ``vars(opt)`` or a config.json; unknown keys go to ``extra``."""
        known = set(cls.field_names())
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = dict(values.get("extra", {}) or {})
        defaults = cls.__dataclass_fields__
        for key, value in values.items():
            if isinstance(key, bytes):  # Python 2 pickles may carry byte keys
                key = key.decode("latin1")
            if isinstance(value, bytes):
                value = value.decode("latin1")
            if key == "extra":
                continue
            if key in known:
                default = defaults[key].default
                try:
                    if isinstance(default, bool):
                        value = bool(value)
                    elif isinstance(default, int):
                        value = int(value)
                    elif isinstance(default, float):
                        value = float(value)
                    elif isinstance(default, str):
                        value = str(value)
                except (TypeError, ValueError):
                    kind = {bool: "true or false", int: "an integer", float: "a number", str: "text"}[type(default)]
                    raise ScanVizError(f"config: field {key} must be {kind}") from None
                kwargs[key] = value
            elif _jsonable(value):
                extra[key] = value
        return cls(extra=extra, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.field_names()}
        out["head_params"] = dict(self.head_params)
        out["extra"] = dict(self.extra)
        return out

    def replace(self, **changes: Any) -> "ScanConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
