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
``head``   matching head by name, one of :func:`scan_viz.heads.selectable_heads`
``step``   the Learn page's step, 1-based (Learn)
``view``   ``present`` opens the Learn page in presentation mode (Learn)
``compare``  heads to show side by side in Explore's Compare view, comma-separated (``chan,caan``;
           a head that has variants, SCAN, is the model's own head, or ``dir``'s variant, as for ``head``)
``search`` Retrieve's direction: ``text`` (a sentence ranks the images, with ``q``) or ``image`` (a gallery
           image, ``image``, ranks the captions); ``k`` is then the number of results
...        each head's settings, under the link keys its declarations give (:mod:`scan_viz.heads`):
           ``lsm`` (lambda_softmax), ``lse`` (lambda_lse), ``agg`` (agg_func), ``norm`` (raw_feature_norm),
           ``beta``, ``chan_agg``, ``lambda_inter``, ...; a setting that picks a head's variant (``dir``: SCAN's
           direction) names that variant (:func:`scan_viz.heads.variant_for`)
``gallery``  a bundled gallery's name (``emoji``, ``photos``: :mod:`scan_viz.app.galleries`); the served model and
           gallery are paired by the detector that made the gallery's region features
=========  ==============================================================================================

``image`` and ``q`` are written whenever set, ``model`` whenever a bundled model is served, ``gallery`` whenever a
bundled gallery other than the operator's is served, the rest only when
they differ from the default (the model's own settings, K = 10, the first word). Values are checked by the
same rules as the app's controls and the command line (the heads' declarations); a value that cannot be used is
dropped with a one-line note. Nothing here imports Streamlit, so the rules are tested on their own.
"""
from __future__ import annotations

import dataclasses
import re
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any

from scan_viz.app.safe_text import BIDI_CONTROLS, without_bidi
from scan_viz.errors import ScanVizError
from scan_viz.limits import check_sentence

MAX_ID_CHARS = 200
#: Range of K (retrieval depth, regions in the i2t view).
K_MIN, K_MAX = 1, 100
DEFAULT_K = 10
#: The keys of the pair and the view, in the order a written URL has them; the head settings' keys follow.
PAIR_KEYS = ("image", "q", "word", "k", "search", "step", "view", "model", "head", "compare")
#: Keys added after the head settings' keys, in the order they came: the keys of a saved link keep their order.
LATER_KEYS = ("gallery",)
#: Retrieve's directions, as ``search=`` names them.
SEARCH_DIRECTIONS = ("text", "image")
#: Range of the Learn page's step (1-based; a step past a head's last shows its last).
STEP_MIN, STEP_MAX = 1, 99
#: The Learn page's views a link may name.
VIEWS = ("present",)
#: A bundled model's name: a folder name under pretrained/, no path separators.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: How a note quotes a link's value: clipped (a 4,000-digit ``k`` is quoted by its ends).
_ECHO = reprlib.Repr()
_ECHO.maxstring = _ECHO.maxother = 80


def echo(value: str) -> str:
    """A link's value as a note quotes it: in quotes, at most about 80 characters (``'1111...1111'``)."""
    return _ECHO.repr(value)


def query_keys() -> tuple[str, ...]:
    """Every link key in written order: the pair's, then each declared head setting's (generated), then the later
    ones (:data:`LATER_KEYS`)."""
    from scan_viz.heads import all_head_params

    return PAIR_KEYS + tuple(p.url_key for p in all_head_params()) + LATER_KEYS


QueryValue = str | Sequence[str]


@dataclasses.dataclass(frozen=True)
class ExploreParams:
    """What a link names (None = not given): the pair and view keys, and ``settings``, the head settings it
    gives as (declared name, value) pairs. ``compare``: head names, comma-separated."""

    image: str | None = None
    q: str | None = None
    word: str | None = None
    k: int | None = None
    search: str | None = None
    step: int | None = None
    view: str | None = None
    model: str | None = None
    gallery: str | None = None
    head: str | None = None
    compare: str | None = None
    settings: tuple[tuple[str, Any], ...] = ()

    def head_settings(self, own: HeadSettings, config: Any) -> HeadSettings:
        """The link's head (else ``own.head``, the model's) with the link's settings over the model's own."""
        return HeadSettings.for_head(self.head or own.head, config, dict(self.settings))

    def compared(self, own: str | None = None) -> list[str]:
        """The heads to compare; a head that has variants (``scan``, as ``head=scan`` reads it) is ``own``, the
        model's own head."""
        from scan_viz.heads import head_names, selectable_heads

        bases = set(head_names()) - set(selectable_heads())
        names = [own if h in bases and own is not None else h for h in (self.compare or "").split(",") if h]
        return list(dict.fromkeys(names))


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
    """The link keys of a query, one string each, blanks dropped, in :func:`query_keys` order (plus the old
    ``dir``)."""
    out = {}
    for key in query_keys():
        value = _last(query.get(key))
        if value is not None and value.strip():
            out[key] = value
    return out


def _setting_value(param: Any, text: str) -> Any:
    """A head setting from its link text (a choice read in any case); ScanVizError, the controls' and the CLI's
    message, when unusable."""
    if param.choices is not None:
        text = next((c for c in param.choices if c.lower() == text.strip().lower()), text)
    return param.parse(text)


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
        if any(c in BIDI_CONTROLS for c in q):  # they would reorder the sentence box; they are no words
            q = " ".join(without_bidi(q).split())
            notes.append("the link's sentence had Unicode direction controls: removed")
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
            notes.append(f"the link's k={echo(values['k'])} is not a whole number: ignored")
        else:
            if not K_MIN <= k <= K_MAX:
                notes.append(f"the link's k={echo(values['k'].strip())} is outside {K_MIN}..{K_MAX}: clipped")
            found["k"] = min(max(k, K_MIN), K_MAX)
    if "search" in values:
        search = values["search"].strip().lower()
        if search in SEARCH_DIRECTIONS:
            found["search"] = search
        else:
            notes.append(f"the link's search={echo(values['search'])} is not one of {', '.join(SEARCH_DIRECTIONS)}: "
                         "ignored")
    if "step" in values:
        try:
            step = int(values["step"])
        except ValueError:
            notes.append(f"the link's step={echo(values['step'])} is not a whole number: ignored")
        else:
            found["step"] = min(max(step, STEP_MIN), STEP_MAX)
    if "view" in values:
        if values["view"].strip().lower() in VIEWS:
            found["view"] = values["view"].strip().lower()
        else:
            notes.append(f"the link's view={echo(values['view'])} is not one of {', '.join(VIEWS)}: ignored")
    for key in ("model", "gallery"):  # a bundled one's name, never a path
        if key in values:
            name = values[key].strip()
            if _MODEL_NAME.fullmatch(name) and len(name) <= MAX_ID_CHARS:
                found[key] = name
            else:
                notes.append(f"the link's {key}={echo(values[key])} is not a bundled {key}'s name: ignored")
    from scan_viz.heads import all_head_params, head_names, selectable_heads, variant_for

    settings = []
    for param in all_head_params():
        if param.url_key in values:
            try:
                settings.append((param.name, _setting_value(param, values[param.url_key])))
            except ScanVizError as exc:
                notes.append(f"the link's {param.url_key}={echo(values[param.url_key])} is not used: {exc}")
    # A head with variants (SCAN) is named by the variant the link's settings pick (``dir=i2t``: SCAN i2t, as
    # links written before heads were named say it), else it is the model's own head. The settings a variant
    # fixes are consumed by that choice.
    heads = selectable_heads()
    bases = [n for n in head_names() if n not in heads]
    variant, settings = variant_for(None, dict(settings))
    if "head" in values:
        found["head"] = values["head"].strip()[:MAX_ID_CHARS]
    if found.get("head") in (None, *bases) and variant is not None:
        found["head"] = variant
    if found.get("head") in bases:  # the base alone: the model's own head, the default
        del found["head"]
    if found.get("head") is not None and found["head"] not in heads:
        notes.append(f"the link's head {echo(found.pop('head'))} is not one of {', '.join(heads)}: ignored")
    if "compare" in values:
        # the names head= takes: a base (``scan``: the model's own head, resolved by ExploreParams.compared) too
        names = [variant if n.strip() in bases and variant is not None else n.strip()
                 for n in values["compare"].split(",") if n.strip()]
        accepted = [*heads, *bases]
        unknown = [n for n in names if n not in accepted]
        if unknown:
            notes.append(f"the link's compare names {', '.join(echo(n) for n in unknown[:5])}"
                         f"{' and more' if len(unknown) > 5 else ''}, not one of {', '.join(heads)}: left out")
        known = list(dict.fromkeys(n for n in names if n in accepted))
        if known:
            found["compare"] = ",".join(known)
    found["settings"] = tuple(settings.items())
    return ExploreParams(**found), notes


def _link_text(value: Any) -> str:
    # 12 significant digits: a slider's 2.3000000000000003 reads 2.3, a typed value keeps its digits
    return format(value, ".12g") if isinstance(value, float) else str(value)


def explore_query(params: ExploreParams) -> dict[str, str]:
    """The query parameters of a link, only the keys that are set, in :func:`query_keys` order."""
    from scan_viz.heads import all_head_params

    values: dict[str, Any] = {key: getattr(params, key) for key in PAIR_KEYS + LATER_KEYS}
    given = dict(params.settings)
    values.update({p.url_key: given.get(p.name) for p in all_head_params()})
    return {key: _link_text(values[key]) for key in query_keys()
            if values.get(key) is not None and str(values[key]) != ""}


def settings_fields(settings: HeadSettings, own: HeadSettings, config: Any) -> dict[str, Any]:
    """The ExploreParams fields of head settings: the head when it is not the model's own (``own.head``), and
    each setting that differs from the model's own value for that head."""
    mine = HeadSettings.for_head(settings.head, config).overrides()
    changed = tuple((name, value) for name, value in settings.values if value != mine.get(name))
    return {"head": settings.head if settings.head != own.head else None, "settings": changed}


def link_changed(query: Mapping[str, QueryValue], last_written: Mapping[str, str] | None) -> bool:
    """Whether the URL names a pair the app did not write itself (a pasted link, a jump from another page).

    An empty query is never news: it is what a page switch from the navigation bar leaves, and the state the
    user had should survive it.
    """
    now = normalise_query(query)
    return bool(now) and now != dict(last_written or {})


@dataclasses.dataclass(frozen=True)
class HeadSettings:
    """A matching head by name and its settings, (declared name, value) pairs in declared order."""

    head: str
    values: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def for_head(cls, head: str, config: Any, given: Mapping[str, Any] | None = None) -> HeadSettings:
        """``head`` with the settings it declares: ``given`` ones (others ignored), else the model's own
        (``config``, a ScanConfig), else the declared defaults; ScanVizError for a bad value."""
        from scan_viz.heads import head_settings, head_spec

        declared = {p.name for p in head_spec(head).params}
        values = head_settings(head, config, {k: v for k, v in (given or {}).items() if k in declared})
        return cls(head, tuple(values.items()))

    @classmethod
    def from_config(cls, config: Any) -> HeadSettings:
        """A model's own head and settings (its ScanConfig)."""
        from scan_viz.heads import own_head

        return cls.for_head(own_head(config), config)

    def overrides(self) -> dict[str, Any]:
        """Keyword settings for ``ScanModel.head``."""
        return dict(self.values)

    def build(self, model: Any):
        """The head these settings describe, for ``model`` (a ScanModel)."""
        return model.head(self.head, **self.overrides())

    def key(self) -> tuple:
        """Hashable and stable, for result caches."""
        return (self.head, self.values)

    def describe(self) -> str:
        from scan_viz.heads import head_spec

        labels = {p.name: p.display for p in head_spec(self.head).params}
        return f"{self.head} (" + ", ".join(f"{labels[n]} {v:g}" if isinstance(v, float) else f"{labels[n]} {v}"
                                            for n, v in self.values) + ")"
