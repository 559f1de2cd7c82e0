"""Model configuration: every hyperparameter under the same name as the official SCAN ``opt``.

Keeping the official names means a ``config.json`` written here can be checked field by field against
the ``opt`` Namespace stored in an official ``model_best.pth.tar``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from scan_viz.errors import ScanVizError
from scan_viz.safe_files import read_json
from scan_viz.safe_paths import MAX_CONFIG_BYTES

RAW_FEATURE_NORMS = ("softmax", "l2norm", "clipped_l2norm", "l1norm", "clipped_l1norm", "clipped", "no_norm")
AGG_FUNCS = ("LogSumExp", "Mean", "Max", "Sum")
CROSS_ATTNS = ("t2i", "i2t")
PRECOMP_ENC_TYPES = ("basic", "weight_norm")
#: ``--dtype`` / ``dtype=``: bfloat16 runs the heads' region-word products in bf16 and the rest in float32
SCORING_DTYPES = ("float32", "float64", "bfloat16")


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
    # cross attention
    cross_attn: str = "t2i"
    raw_feature_norm: str = "clipped_l2norm"
    lambda_softmax: float = 9.0
    agg_func: str = "LogSumExp"
    lambda_lse: float = 6.0
    # not official fields: the matching head the model was trained with (scan_viz.heads; "scan" = SCAN in
    # cross_attn's direction) and the settings of a non-SCAN head by their declared names (SCAN's are the fields above)
    head: str = "scan"
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
        from scan_viz.heads import head_spec  # the settings are declared once, by the SCAN head

        # A config may come from a visitor's file: messages name the field and what it accepts, never its value.
        for param in head_spec("scan").params:
            try:
                param.parse(getattr(self, param.name))
            except ScanVizError:
                expected = (f"one of {', '.join(param.choices)}" if param.choices is not None
                            else f"a number from {param.low:g} to {param.high:g}")
                raise ScanVizError(f"config: {param.name} must be {expected}") from None
        for name, allowed in (("cross_attn", CROSS_ATTNS), ("precomp_enc_type", PRECOMP_ENC_TYPES)):
            if getattr(self, name) not in allowed:
                raise ScanVizError(f"config: {name} must be one of {', '.join(allowed)}")
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

    @classmethod
    def load(cls, path: str | Path) -> "ScanConfig":
        values = read_json(path, "model config", max_bytes=MAX_CONFIG_BYTES)
        if not isinstance(values, dict):
            raise ScanVizError(f"model config {path} is not a JSON object")
        return cls.from_dict(values)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
