"""Deep links and matching-head settings as plain data: parsed from and written to URL query parameters.

A link carries the whole view, so it reopens the same result after a reload or on another machine:

=========  ==============================================================================================
key        value
=========  ==============================================================================================
``image``  gallery image id (Explore)
``q``      the sentence (Explore); at most :data:`scan_viz.limits.MAX_WORDS` words
``word``   the word the Interactive view shows, as the tokenizer writes it (Explore)
``k``      retrieval depth / regions in the image-to-text view, :data:`K_MIN`..:data:`K_MAX` (Explore)
``model``  a bundled model's name (never a path: a link cannot name a file on the server)
``head``   matching head by name
``dir``    ``t2i`` or ``i2t`` (the paper's ``cross_attn``)
``agg``    ``LogSumExp``, ``Mean``, ``Max`` or ``Sum`` (``agg_func``)
``lsm``    ``lambda_softmax``, the attention's inverse temperature (the paper's lambda_1)
``lse``    ``lambda_lse``, LogSumExp's sharpness (the paper's lambda_2)
``norm``   ``raw_feature_norm``
=========  ==============================================================================================

``image`` and ``q`` are written whenever set, ``model`` whenever a bundled model is served, the rest only when
they differ from the default (the model's own settings, K = 10, the first word). Values are checked by the
same rules as the app's controls and the command line (:mod:`scan_viz.limits`); a value that cannot be used is
dropped with a one-line note. Nothing here imports Streamlit, so the rules are tested on their own.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from scan_viz.config import AGG_FUNCS, check_head_param
from scan_viz.errors import ScanVizError
from scan_viz.limits import check_sentence

MAX_ID_CHARS = 200
#: Range of K (retrieval depth, regions in the i2t view).
K_MIN, K_MAX = 1, 100
DEFAULT_K = 10
#: The order of the keys in a written URL, so links read the same way every time.
QUERY_KEYS = ("image", "q", "word", "k", "model", "head", "dir", "agg", "lsm", "lse", "norm")
#: Link key -> the HeadSettings field it sets.
HEAD_KEYS = {"head": "head", "dir": "direction", "agg": "agg_func", "lsm": "lambda_softmax",
             "lse": "lambda_lse", "norm": "raw_feature_norm"}
#: A bundled model's name: a folder name under pretrained/, no path separators.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

QueryValue = str | Sequence[str]


@dataclasses.dataclass(frozen=True)
class ExploreParams:
    """What a link names (None = not given); the fields are the URL keys of the module's table."""

    image: str | None = None
    q: str | None = None
    word: str | None = None
    k: int | None = None
    model: str | None = None
    head: str | None = None
    dir: str | None = None
    agg: str | None = None
    lsm: float | None = None
    lse: float | None = None
    norm: str | None = None

    def settings(self, defaults: HeadSettings) -> HeadSettings:
        """The link's head settings: what it names over ``defaults`` (the served model's own settings)."""
        given = {field: getattr(self, key) for key, field in HEAD_KEYS.items() if getattr(self, key) is not None}
        return dataclasses.replace(defaults, **given)


def _last(value: QueryValue | None) -> str | None:
    """A query value as one string: the last of repeated keys (as ``st.query_params`` reads them)."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = list(value)
        if not value:
            return None
        value = value[-1]
    return str(value)


def normalise_query(query: Mapping[str, QueryValue]) -> dict[str, str]:
    """The link keys of a query, one string each, blanks dropped, in :data:`QUERY_KEYS` order."""
    out = {}
    for key in QUERY_KEYS:
        value = _last(query.get(key))
        if value is not None and value.strip():
            out[key] = value
    return out


def _head_value(key: str, text: str) -> Any:
    """A head setting from its link text; ScanVizError (the controls' and the CLI's message) when unusable."""
    field = HEAD_KEYS[key]
    if field == "agg_func":  # written as the paper spells it; read in any case
        text = next((agg for agg in AGG_FUNCS if agg.lower() == text.strip().lower()), text)
    elif field in ("direction", "raw_feature_norm"):
        text = text.strip().lower()
    config_name = "cross_attn" if field == "direction" else field
    return check_head_param(config_name, text)


def parse_explore_query(query: Mapping[str, QueryValue]) -> tuple[ExploreParams, list[str]]:
    """Read a link; values that cannot be used are dropped, each with a one-line note why.

    Notes quote the link's values as they were typed: show them as literal text, never as Markdown.
    """
    values = normalise_query(query)
    notes: list[str] = []
    found: dict[str, Any] = {}
    image = values.get("image")
    if image is not None:
        image = image.strip()
        if len(image) > MAX_ID_CHARS:
            notes.append(f"the link's image id is longer than {MAX_ID_CHARS} characters: ignored")
        else:
            found["image"] = image
    if "q" in values:
        q = " ".join(values["q"].split())
        try:
            found["q"] = check_sentence(q)
        except ScanVizError as exc:
            notes.append(f"the link's sentence is not used: {exc}")
    if "word" in values:
        found["word"] = values["word"].strip().lower()[:MAX_ID_CHARS]
    if "k" in values:
        try:
            k = int(values["k"])
        except ValueError:
            notes.append(f"the link's k={values['k']!r} is not a whole number: ignored")
        else:
            if not K_MIN <= k <= K_MAX:
                notes.append(f"the link's k={k} is outside {K_MIN}..{K_MAX}: clipped")
            found["k"] = min(max(k, K_MIN), K_MAX)
    if "model" in values:
        model = values["model"].strip()
        if _MODEL_NAME.fullmatch(model) and len(model) <= MAX_ID_CHARS:
            found["model"] = model
        else:
            notes.append(f"the link's model={values['model']!r} is not a bundled model's name: ignored")
    if "head" in values:
        found["head"] = values["head"].strip()[:MAX_ID_CHARS]
    for key in ("dir", "agg", "lsm", "lse", "norm"):
        if key in values:
            try:
                found[key] = _head_value(key, values[key])
            except ScanVizError as exc:
                notes.append(f"the link's {key}={values[key]!r} is not used: {exc}")
    return ExploreParams(**found), notes


def _link_text(value: Any) -> str:
    # 12 significant digits: a slider's 2.3000000000000003 reads 2.3, a typed value keeps its digits
    return format(value, ".12g") if isinstance(value, float) else str(value)


def explore_query(params: ExploreParams) -> dict[str, str]:
    """The query parameters of a link, only the keys that are set, in :data:`QUERY_KEYS` order."""
    out = {}
    for key in QUERY_KEYS:
        value = getattr(params, key)
        if value is not None and str(value) != "":
            out[key] = _link_text(value)
    return out


def settings_fields(settings: HeadSettings, defaults: HeadSettings) -> dict[str, Any]:
    """The link keys (ExploreParams fields) of the head settings that differ from ``defaults``."""
    return {key: getattr(settings, field) for key, field in HEAD_KEYS.items()
            if getattr(settings, field) != getattr(defaults, field)}


def link_changed(query: Mapping[str, QueryValue], last_written: Mapping[str, str] | None) -> bool:
    """Whether the URL names a pair the app did not write itself (a pasted link, a jump from another page).

    An empty query is never news: it is what a page switch from the navigation bar leaves, and the state the
    user had should survive it.
    """
    now = normalise_query(query)
    return bool(now) and now != dict(last_written or {})


@dataclasses.dataclass(frozen=True)
class HeadSettings:
    """The matching head and SCAN's attention hyperparameters, under the paper's names."""

    head: str = "scan"
    direction: str = "t2i"
    agg_func: str = "LogSumExp"
    lambda_softmax: float = 9.0
    lambda_lse: float = 6.0
    raw_feature_norm: str = "clipped_l2norm"

    def __post_init__(self) -> None:
        for name, value in self.overrides().items():
            check_head_param(name, value)

    @classmethod
    def from_config(cls, config: Any, head: str = "scan") -> HeadSettings:
        """A model's own settings (its ScanConfig)."""
        return cls(head=head, direction=config.cross_attn, agg_func=config.agg_func,
                   lambda_softmax=float(config.lambda_softmax), lambda_lse=float(config.lambda_lse),
                   raw_feature_norm=config.raw_feature_norm)

    def overrides(self) -> dict[str, Any]:
        """Keyword overrides for ``ScanModel.head``."""
        return {"cross_attn": self.direction, "agg_func": self.agg_func, "lambda_softmax": self.lambda_softmax,
                "lambda_lse": self.lambda_lse, "raw_feature_norm": self.raw_feature_norm}

    def build(self, model: Any):
        """The head these settings describe, for ``model`` (a ScanModel); settings it does not take are left out."""
        from scan_viz.heads import head_spec

        declared = {p.name for p in head_spec(self.head or model.config.head).params} | {"cross_attn"}
        return model.head(self.head, **{k: v for k, v in self.overrides().items() if k in declared})

    def key(self) -> tuple:
        """Hashable and stable, for result caches."""
        return dataclasses.astuple(self)

    def describe(self) -> str:
        agg = self.agg_func + (f" (\u03bb_lse {self.lambda_lse:g})" if self.agg_func == "LogSumExp" else "")
        return (f"{self.head} {self.direction}, {agg}, \u03bb_softmax {self.lambda_softmax:g}, "
                f"{self.raw_feature_norm}")


def selectable_heads(names: Sequence[str]) -> list[str]:
    """Heads offered in the app: ``scan_t2i``/``scan_i2t`` are ``scan`` with a fixed direction, so the
    direction control covers them."""
    return [n for n in names if n not in ("scan_t2i", "scan_i2t")]
