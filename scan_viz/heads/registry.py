"""The registry of matching heads: what a head is (:class:`MatchingHead`), how it declares its settings
(:class:`HeadParam`), and how heads are found and built by name. See :mod:`scan_viz.heads`."""
from __future__ import annotations

import abc
import copy
import dataclasses
import math
import reprlib
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from scan_viz.errors import ScanVizError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from scan_viz.model.config import ScanConfig

#: ``--dtype`` / ``dtype=``: bfloat16 runs the heads' region-word products in bf16 and the rest in float32
SCORING_DTYPES = ("float32", "float64", "bfloat16")
#: The head a model trained without naming one has (an official SCAN checkpoint): SCAN.
DEFAULT_HEAD = "scan"


@dataclasses.dataclass(frozen=True)
class HeadParam:
    """One hyperparameter of a head: everything a CLI flag, an app control or a link key needs.

    name: the keyword (and config / URL name), the paper's where it has one; default: the paper's value;
    choices: the allowed strings of a categorical setting; low / high: the inclusive range of a number;
    label: the short name a control shows (Greek letters welcome); help: one sentence for a user; key: the
    short link (URL) key and extra CLI flag, when the name is long (``lsm`` for ``lambda_softmax``); step: a
    slider's step; needs: (setting, value) under which this one matters (λ_lse only with LogSumExp), so a
    control can be greyed out otherwise.
    """

    name: str
    default: float | str
    help: str
    label: str = ""
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    key: str = ""
    step: float = 0.5
    needs: tuple[str, str] | None = None

    @property
    def url_key(self) -> str:
        return self.key or self.name

    @property
    def flags(self) -> list[str]:
        """``--lambda-softmax`` (and ``--lsm`` where a short key is declared)."""
        return [self.flag] + ([f"--{self.key}"] if self.key and self.key != self.name else [])

    @property
    def is_number(self) -> bool:
        return self.choices is None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def display(self) -> str:
        return self.label or self.name

    def parse(self, value: Any) -> float | str:
        """``value`` as this setting's type, checked; ScanVizError naming the setting and what it accepts."""
        if self.choices is not None:
            if value not in self.choices:
                raise ScanVizError(f"{self.name} must be one of {', '.join(self.choices)}, got {reprlib.repr(value)}")
            return str(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or not self.low <= number <= self.high:
            raise ScanVizError(f"{self.name} must be a number from {self.low:g} to {self.high:g}, "
                               f"got {reprlib.repr(value)}")
        return number


@dataclasses.dataclass
class HeadOutput:
    """What a head returns for a block of pairs.

    scores: (n_images, n_captions). With ``return_attention``: attention (n_images, n_captions, max_words,
    n_regions), a word x region matrix whatever the head (its meaning: the head's ``attention_label``);
    word_relevance (n_images, n_captions, max_words) and region_relevance (n_images, n_captions, n_regions),
    each None when the head has no such quantity.
    """

    scores: torch.Tensor
    attention: torch.Tensor | None = None
    word_relevance: torch.Tensor | None = None
    region_relevance: torch.Tensor | None = None


class MatchingHead(abc.ABC):
    """Scores blocks of (image, caption) pairs from embeddings.

    Subclasses set ``params`` (their declarations) and the labels that say what their outputs mean;
    ``settings`` holds the values, one per declared name; ``product_dtype`` is the dtype of the region-word
    products (None: the embeddings').
    """

    name: str
    params: ClassVar[tuple[HeadParam, ...]] = ()
    #: what attention[w, r] is, shown in titles and colour bars
    attention_label: ClassVar[str] = "attention weight"
    #: what word_relevance / region_relevance are ("" when the head fills none in)
    word_relevance_label: ClassVar[str] = ""
    region_relevance_label: ClassVar[str] = ""

    def __init__(self, name: str, settings: Mapping[str, Any], product_dtype: torch.dtype | None = None) -> None:
        self.name = name
        self.settings = dict(settings)
        self.product_dtype = product_dtype

    @abc.abstractmethod
    def scores(self, regions: torch.Tensor, words: torch.Tensor, word_lengths: torch.Tensor,
               region_lengths: torch.Tensor | None = None, return_attention: bool = False) -> HeadOutput:
        """regions (n_images, n_regions, d), words (n_captions, max_words, d) -> HeadOutput. Differentiable."""

    def training_scores(self, regions: torch.Tensor, words: torch.Tensor, word_lengths: torch.Tensor
                        ) -> torch.Tensor | None:
        """(n_images, n_captions) scores for a training step through a head's own memory-saving backward, or None
        when the head has none (the training loop then runs autograd through :meth:`scores`)."""
        return None

    def packed_training_scores(self, regions: torch.Tensor, words: torch.Tensor, word_lengths: torch.Tensor
                               ) -> torch.Tensor | None:
        """:meth:`training_scores` of a whole batch of captions of any lengths, for a head whose own backward lays
        the words out packed (no padded word computed), so the training loop needs no length groups; or None."""
        return None

    def half_row_scores(self, table, rows, words: torch.Tensor, word_lengths: torch.Tensor,
                        region_lengths: torch.Tensor | None = None, gram=None) -> np.ndarray | None:
        """ONE caption's scores (len(rows),) with images whose region embeddings are float16 rows of ``table``
        ((N, n_regions, d), an array or tensor: a search's candidates as read from a gallery's file, or a gallery
        held in memory), scored where they lie; or None when the head has no such path, and the caller widens the
        rows to float32 and calls :meth:`scores`. The scores must equal :meth:`scores`' on the widened rows.
        ``gram``: optional (N, n_regions, n_regions) float32, each row's Gram matrix
        (:func:`scan_viz.retrieval.tokens.region_grams`), for a head that can use it; others ignore it."""
        return None

    @abc.abstractmethod
    def bytes_per_pair(self, n_regions: int, n_words: int, itemsize: int) -> int:
        """Peak intermediate memory one pair costs in :meth:`scores`, for sizing blocks."""

    def block_pairs(self, device: str) -> int | None:
        """How many pairs a block of :func:`scan_viz.heads.engine.score_matrix` should hold on ``device`` (the
        memory budget still caps it), or None for the engine's default."""
        return None

    def hyperparameters(self) -> dict[str, Any]:
        """The settings that determine the head's scores, by their declared names (for exports)."""
        return dict(self.settings)

    def with_product_dtype(self, dtype: str | torch.dtype | None) -> "MatchingHead":
        """A copy of this head whose region-word products run in ``dtype`` (``"bfloat16"``, ...)."""
        if isinstance(dtype, str):
            import torch

            if dtype not in SCORING_DTYPES:
                raise ScanVizError(f"dtype must be one of {', '.join(SCORING_DTYPES)}, got {dtype!r}")
            dtype = getattr(torch, dtype)
        head = copy.copy(self)
        head.product_dtype = dtype
        return head

    @property
    def title(self) -> str:
        """The head as a reader should see it named (its registered name by default)."""
        return self.name

    #: settings the title already says (left out of :meth:`describe`)
    titled: ClassVar[tuple[HeadParam, ...]] = ()

    def describe(self) -> str:
        """``chan (β 0.1, aggregation LogSumExp)``: the title and every setting, for captions and logs."""
        values = ", ".join(f"{p.display} {self.settings[p.name]:g}" if p.is_number else
                           f"{p.display} {self.settings[p.name]}" for p in self.params if p not in self.titled)
        return f"{self.title} ({values})" if values else self.title


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """A registered head: how to build it and which settings it reads.

    ``from_model(name, model, settings)``: set for a head with trained weights of its own, found for a ScanModel
    (then ``factory`` is not used); such a head can only be made from a model. ``variant_of`` / ``fixed``: a
    variant is another head with some of its settings fixed (``scan_i2t`` is ``scan`` with ``cross_attn`` i2t);
    it declares the other settings, and the app and command line name a model's own head by its variant.
    """

    name: str
    factory: Callable[[str, ScanConfig, dict[str, Any]], MatchingHead]
    params: tuple[HeadParam, ...]
    help: str
    from_model: Callable[[str, Any, dict[str, Any]], MatchingHead] | None = None
    variant_of: str | None = None
    fixed: tuple[tuple[str, Any], ...] = ()
    head_class: type[MatchingHead] | None = None
    #: the head whose result, set beside this one's, shows best what this one does differently (teaching)
    contrast: str | None = None


_HEADS: dict[str, HeadSpec] = {}


def register_head(name: str, head_class: type[MatchingHead], help: str,
                  factory: Callable[[str, ScanConfig, dict[str, Any]], MatchingHead] | None = None,
                  from_model: Callable[[str, Any, dict[str, Any]], MatchingHead] | None = None,
                  variant_of: str | None = None, fixed: Mapping[str, Any] | None = None,
                  contrast: str | None = None) -> None:
    """Make ``head_class`` available as ``name``. ``factory(name, config, settings)`` defaults to
    ``head_class(name, settings)``; ``from_model(name, model, settings)`` replaces it for a head whose trained
    weights are found for the model. ``variant_of`` + ``fixed``: ``name`` is that registered head with these
    settings fixed (it declares the rest, and ``head_class(name, settings)`` gets the fixed values too). A setting
    name shared with another head must have the same declaration, because it becomes one CLI flag and one link
    key. ``contrast``: the head to set beside this one when teaching (CHAN's hard choice beside SCAN's soft
    attention)."""
    known = {p.name: p for spec in _HEADS.values() for p in spec.params}
    fixed = tuple((fixed or {}).items())
    if variant_of is not None:
        base = head_spec(variant_of)
        declared = {p.name: p for p in base.params}
        for key, value in fixed:
            declared[key].parse(value)  # a variant fixes a declared setting to an allowed value
        params = tuple(p for p in head_class.params if p.name not in dict(fixed))
    else:
        params = head_class.params
    for param in params:
        if param.name in known and known[param.name] != param:
            raise ValueError(f"head {name}: setting {param.name} is declared differently by another head")
    _HEADS[name] = HeadSpec(name, factory or (lambda n, _config, settings: head_class(n, settings)),
                            params, help, from_model, variant_of, fixed, head_class,
                            contrast)


def head_names() -> list[str]:
    return sorted(_HEADS)


def selectable_heads() -> list[str]:
    """The heads the app and links offer by name: every registered one but a head that has variants (``scan`` is
    offered as ``scan_t2i`` and ``scan_i2t``)."""
    bases = {spec.variant_of for spec in _HEADS.values()}
    return [n for n in head_names() if n not in bases]


def head_spec(name: str) -> HeadSpec:
    if name not in _HEADS:
        raise ScanVizError(f"unknown head {name!r}: choose one of {', '.join(head_names())}")
    return _HEADS[name]


def all_head_params() -> list[HeadParam]:
    """Every declared setting once, in registration order (what the CLI and the app generate controls from)."""
    out: dict[str, HeadParam] = {}
    for spec in _HEADS.values():
        for param in spec.params:
            out.setdefault(param.name, param)
    return list(out.values())


def heads_declaring(setting: str) -> list[str]:
    """The registered heads that take ``setting``."""
    return [spec.name for spec in _HEADS.values() if any(p.name == setting for p in spec.params)]


def head_settings(name: str, config: ScanConfig, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The values head ``name`` runs with: each override, else the config's value, else the declared default.

    The config's value: ``config.head_params`` (where the checkpoint reader put an official checkpoint's own
    lambdas). An override that ``name`` does not declare is an error. (A variant's fixed settings are not among
    them: :func:`create_head` adds those.)
    """
    spec = head_spec(name)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    declared = {p.name for p in spec.params}
    foreign = sorted(set(overrides) - declared)
    if foreign:
        accepts = ", ".join(sorted(declared)) or "no settings"
        raise ScanVizError(f"the {name} head has no setting {', '.join(foreign)} (it takes {accepts})")
    values: dict[str, Any] = {}
    for param in spec.params:
        value = overrides.get(param.name, config.head_params.get(param.name, param.default))
        values[param.name] = param.parse(value)
    return values


def choose_head(name: str | None, config: ScanConfig, settings: Mapping[str, Any] | None = None
                ) -> tuple[str, dict[str, Any]]:
    """The head a request names, as the app and the command line name it, and the settings left for it.

    ``name`` None is the model's own head (``config.head``). A head that has variants becomes the variant whose
    fixed settings match the request's ``settings`` (else the config's, else the defaults): ``scan`` of a model
    trained image-to-text is ``scan_i2t``, and ``scan_t2i`` with ``cross_attn="i2t"`` asked for is ``scan_i2t``.
    The settings a chosen variant fixes are consumed; ``None`` values are dropped.
    """
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    name = name or config.head
    spec = head_spec(name)
    base = spec.variant_of or spec.name
    variants = [s for s in _HEADS.values() if s.variant_of == base]
    if not variants:
        return name, settings
    fixed_keys = {k for s in variants for k, _ in s.fixed}
    base_params = {p.name: p for p in head_spec(base).params}
    wanted = dict(spec.fixed)
    for key in fixed_keys:
        if key in settings:
            wanted[key] = base_params[key].parse(settings[key])
        elif key not in wanted:
            wanted[key] = base_params[key].parse(config.head_params.get(key, base_params[key].default))
    for variant in variants:
        if all(wanted.get(k) == v for k, v in variant.fixed):
            return variant.name, {k: v for k, v in settings.items() if k not in fixed_keys}
    return name, settings


def variant_for(name: str | None, settings: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The variant that ``settings`` pick, and the settings it leaves: of head ``name`` (a base or a variant),
    or of any head when ``name`` is None or not registered; (None, settings) when they fix no variant.

    ``variant_for(None, {"cross_attn": "i2t"})`` is ``("scan_i2t", {})``: a link's ``dir=i2t`` names SCAN i2t.
    """
    base = None
    if name in _HEADS:
        base = _HEADS[name].variant_of or name
    for spec in _HEADS.values():
        if spec.variant_of is None or (base is not None and spec.variant_of != base):
            continue
        if spec.fixed and all(k in settings and settings[k] == v for k, v in spec.fixed):
            return spec.name, {k: v for k, v in settings.items() if k not in dict(spec.fixed)}
    return None, dict(settings)


def own_head(config: ScanConfig) -> str:
    """The head a model was trained with, by the name the app and the command line offer (a variant's)."""
    return choose_head(None, config)[0]


def create_head(name: str | None, config: ScanConfig, dtype: str | torch.dtype | None = None,
                model: Any = None, **overrides: Any) -> MatchingHead:
    """The head called ``name`` (default: the one the model was trained with, ``config.head``).

    ``overrides``: settings by their declared names (None values are ignored); ``dtype``: the dtype of the
    region-word products (``"bfloat16"`` runs them in bf16, the rest in float32); ``model``: the ScanModel, which
    a head with trained weights of its own needs (``ScanModel.head`` passes itself).
    """
    spec = head_spec(name or config.head)
    settings = {**head_settings(spec.name, config, overrides), **dict(spec.fixed)}
    if spec.from_model is None:
        head = spec.factory(spec.name, config, settings)
    elif model is None:
        raise ScanVizError(f"the {spec.name} head has trained weights that belong to a model: "
                           f"get it from a loaded model, model.head({spec.name!r})")
    else:
        head = spec.from_model(spec.name, model, settings)
    return head.with_product_dtype(dtype) if dtype is not None else head


def resolve_head(head: str | MatchingHead | None, model: Any, dtype: str | None = None,
                 **overrides: Any) -> MatchingHead:
    """``head`` as a head: a MatchingHead as it is, else the head of ``model`` (a ScanModel) by that name (None:
    the model's own) with ``overrides``; ``dtype``: the dtype of its region-word products."""
    if isinstance(head, MatchingHead):
        return head.with_product_dtype(dtype) if dtype is not None else head
    return create_head(head, model.config, dtype=dtype, model=model, **overrides)
