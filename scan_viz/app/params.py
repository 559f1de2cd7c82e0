"""Deep links and matching-head settings as plain data: parsed from and written to URL query parameters.

Explore's URL carries ``?image=ID&q=SENTENCE`` plus ``word``, ``dir``, ``k`` and ``head`` when they are set,
so a link reopens the same pair with the same view. Nothing here imports Streamlit, so the parsing rules are
tested on their own.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from scan_viz.config import AGG_FUNCS, CROSS_ATTNS, RAW_FEATURE_NORMS

#: Longest sentence a link may carry; longer ones are cut (a sentence, not a document).
MAX_QUERY_CHARS = 500
MAX_ID_CHARS = 200
#: Range of K (retrieval depth, regions in the i2t view).
K_MIN, K_MAX = 1, 100
DEFAULT_K = 10
LAMBDA_RANGE = (0.5, 30.0)
#: The order of the keys in a written URL, so links read the same way every time.
QUERY_KEYS = ("image", "q", "word", "dir", "k", "head")

QueryValue = str | Sequence[str]


@dataclasses.dataclass(frozen=True)
class ExploreParams:
    """What an Explore deep link names; None = not given.

    image: gallery image id (its file stem); q: the sentence; word: a word of the sentence, as the
    tokenizer writes it (lowercase); dir: ``t2i`` or ``i2t``; k: retrieval depth / regions in the i2t view;
    head: a matching head's name.
    """

    image: str | None = None
    q: str | None = None
    word: str | None = None
    dir: str | None = None
    k: int | None = None
    head: str | None = None


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
    """The Explore keys of a query, one string each, blanks dropped, in :data:`QUERY_KEYS` order."""
    out = {}
    for key in QUERY_KEYS:
        value = _last(query.get(key))
        if value is not None and value.strip():
            out[key] = value
    return out


def parse_explore_query(query: Mapping[str, QueryValue]) -> tuple[ExploreParams, list[str]]:
    """Read an Explore deep link; values that cannot be used are dropped, each with a one-line note why."""
    values = normalise_query(query)
    notes: list[str] = []
    image = values.get("image")
    if image is not None:
        image = image.strip()
        if len(image) > MAX_ID_CHARS:
            notes.append(f"the link's image id is longer than {MAX_ID_CHARS} characters: ignored")
            image = None
    q = values.get("q")
    if q is not None:
        q = " ".join(q.split())
        if len(q) > MAX_QUERY_CHARS:
            notes.append(f"the link's sentence was cut to {MAX_QUERY_CHARS} characters")
            q = q[:MAX_QUERY_CHARS]
    word = values.get("word")
    if word is not None:
        word = word.strip().lower()[:MAX_ID_CHARS]
    direction = values.get("dir")
    if direction is not None:
        direction = direction.strip().lower()
        if direction not in CROSS_ATTNS:
            notes.append(f"the link's dir={values['dir']!r} is not one of {', '.join(CROSS_ATTNS)}: ignored")
            direction = None
    k = None
    if "k" in values:
        try:
            k = int(values["k"])
        except ValueError:
            notes.append(f"the link's k={values['k']!r} is not a whole number: ignored")
        else:
            if not K_MIN <= k <= K_MAX:
                notes.append(f"the link's k={k} is outside {K_MIN}..{K_MAX}: clipped")
                k = min(max(k, K_MIN), K_MAX)
    head = values.get("head")
    if head is not None:
        head = head.strip()[:MAX_ID_CHARS]
    return ExploreParams(image=image, q=q, word=word, dir=direction, k=k, head=head), notes


def explore_query(params: ExploreParams) -> dict[str, str]:
    """The query parameters of an Explore link, only the keys that are set, in :data:`QUERY_KEYS` order."""
    out = {}
    for key in QUERY_KEYS:
        value = getattr(params, key)
        if value is not None and str(value) != "":
            out[key] = str(value)
    return out


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
        from scan_viz.errors import ScanVizError

        if self.direction not in CROSS_ATTNS:
            raise ScanVizError(f"direction must be one of {', '.join(CROSS_ATTNS)}, got {self.direction!r}")
        if self.agg_func not in AGG_FUNCS:
            raise ScanVizError(f"aggregation must be one of {', '.join(AGG_FUNCS)}, got {self.agg_func!r}")
        if self.raw_feature_norm not in RAW_FEATURE_NORMS:
            raise ScanVizError(f"attention normalisation must be one of {', '.join(RAW_FEATURE_NORMS)}, "
                               f"got {self.raw_feature_norm!r}")

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
        """The head these settings describe, for ``model`` (a ScanModel)."""
        return model.head(self.head, **self.overrides())

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
