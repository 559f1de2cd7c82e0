"""Which galleries the app offers, and which models may score each.

A gallery's region features were computed by one detector, and a model reads the features of the detector it was
trained on (its config's ``extra["detector"]``): emoji-scene features mean nothing to the photo model and photo
features nothing to the emoji models, even where the dimensions happen to agree. So a gallery is served only with
a model whose detector indexed it. What indexed a gallery is the ``indexed_with`` key of its gallery.json
(``{"model", "detector"}``, written by ``scan-viz index``; a null detector means the model's own); the bundled emoji
gallery was written before that key existed, and its entry here says which detector made it.

Where either side does not say (an operator's or a visitor's gallery without ``indexed_with``, a checkpoint
without a detector), nothing is refused here: the feature dimensions are still checked when the bundle loads, as
they always were. No Streamlit here: :mod:`scan_viz.app.state` and the Model page call these.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from scan_viz.errors import ScanVizError
from scan_viz.pipeline import DEFAULT_GALLERY

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class BundledGallery:
    """A gallery this repository ships: its name in links (``?gallery=NAME``), its folder, and, for a gallery
    written before gallery.json recorded ``indexed_with``, the detector that made its region features."""

    name: str
    path: Path
    legacy_detector: str | None = None


#: The bundled galleries, in the order the Model page lists them. The emoji gallery's regions are the bundled
#: detector's (``python -m scan_viz.train.bundle`` builds both; pretrained/README.md).
BUNDLED_GALLERIES: tuple[BundledGallery, ...] = (
    BundledGallery("emoji", DEFAULT_GALLERY, legacy_detector="detector-emoji"),
    BundledGallery("photos", REPO / "examples" / "photos"),
)


def _same_path(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return False


def offered_galleries() -> list[BundledGallery]:
    """The bundled galleries that can be served: those whose folder holds a gallery file and a region store
    (``examples/photos`` holds only its pictures and annotations until its region store is built)."""
    return [g for g in BUNDLED_GALLERIES
            if (g.path / "gallery.json").is_file() and (g.path / "regions" / "ids.json").is_file()]


def offered_gallery(name: str) -> BundledGallery | None:
    """The offered bundled gallery called ``name`` (as links name it), or None."""
    return next((g for g in offered_galleries() if g.name == name), None)


def bundled_gallery_at(path: str | Path | None) -> BundledGallery | None:
    """The bundled gallery whose folder is ``path``, or None (an operator's or a visitor's gallery)."""
    if path is None:
        return None
    return next((g for g in BUNDLED_GALLERIES if _same_path(g.path, path)), None)


def detector_name(value: object) -> str | None:
    """A detector as a config or ``indexed_with`` names it (a bundled name or a folder path) -> its folder name."""
    text = str(value or "").strip()
    return Path(text).name if text else None


@functools.lru_cache(maxsize=64)
def _config_detector(config_file: str, mtime: int) -> str | None:
    from scan_viz.config import ScanConfig

    return detector_name(ScanConfig.load(config_file).extra.get("detector"))


def model_detector(model: str) -> str | None:
    """The detector whose features the bundled model ``model`` reads (its config's ``extra["detector"]``), or None
    when the model is not a bundled one or names none."""
    from scan_viz import model as scan_model

    if model not in scan_model.bundled_models():
        return None
    config = scan_model.PRETRAINED_DIR / model / "config.json"
    return _config_detector(str(config.resolve()), config.stat().st_mtime_ns)


def config_detector(config) -> str | None:
    """The detector a loaded model (its ScanConfig) reads."""
    return detector_name(config.extra.get("detector"))


@functools.lru_cache(maxsize=64)
def _indexed_with(path: str, mtime: int) -> dict | None:
    from scan_viz.gallery import GALLERY_FILE, MAX_RECORDS_BYTES
    from scan_viz.safe_files import read_json

    meta = read_json(Path(path) / GALLERY_FILE, "gallery file", max_bytes=MAX_RECORDS_BYTES)
    indexed = meta.get("indexed_with") if isinstance(meta, dict) else None
    return indexed if isinstance(indexed, dict) else None


def _detector_of(indexed: dict | None, root: str | Path) -> str | None:
    """``indexed_with.detector``; a null one is the indexing model's own (found when that model is bundled); a
    bundled gallery without ``indexed_with`` has its entry's ``legacy_detector``."""
    if indexed is not None:
        named = detector_name(indexed.get("detector"))
        if named is not None:
            return named
        model = indexed.get("model")
        if isinstance(model, str) and model:
            return model_detector(model)
    bundled = bundled_gallery_at(root)
    return bundled.legacy_detector if bundled is not None else None


def gallery_detector(path: str | Path | None) -> str | None:
    """The detector that made the region features of the gallery folder ``path`` (read from its gallery.json,
    once per version of the file, bounded as the gallery reader bounds it), or None when it does not say or cannot
    be read (loading it will say why). For choosing a pair before loading; a loaded gallery is judged by
    :func:`check_pair`."""
    if path is None:
        return None
    from scan_viz.gallery import GALLERY_FILE

    try:
        indexed = _indexed_with(str(Path(path).resolve()), (Path(path) / GALLERY_FILE).stat().st_mtime_ns)
    except (OSError, ScanVizError):
        return None
    return _detector_of(indexed, path)


def loaded_gallery_detector(gallery) -> str | None:
    """The detector that made a loaded Gallery's region features, or None when it does not say."""
    return _detector_of(gallery.indexed_with, gallery.root)


def fits(model_detector_name: str | None, gallery_detector_name: str | None) -> bool:
    """Whether a model reading ``model_detector_name``'s features may score a gallery made by
    ``gallery_detector_name``: yes unless both are known and differ."""
    return model_detector_name is None or gallery_detector_name is None or model_detector_name == gallery_detector_name


def mismatch_message(model_label: str, model_det: str, gallery_label: str, gallery_det: str) -> str:
    """One line: why this model cannot score this gallery, and what to pick instead."""
    return (f"the gallery {gallery_label} holds region features of the detector {gallery_det}, but the model "
            f"{model_label} reads the features of {model_det}: pick a gallery indexed with {model_det}, or a model "
            f"trained on {gallery_det}'s features")


def check_pair(model_label: str, config, gallery) -> None:
    """ScanVizError (one line) when a loaded model (its ScanConfig) cannot read a loaded Gallery's features."""
    model_det, gallery_det = config_detector(config), loaded_gallery_detector(gallery)
    if not fits(model_det, gallery_det):
        raise ScanVizError(mismatch_message(model_label, model_det, gallery.name, gallery_det))


def check_named_pair(model: str, gallery: BundledGallery) -> None:
    """ScanVizError (one line) when the bundled model ``model`` cannot read the bundled ``gallery``'s features
    (checked before anything loads, from the two files that say so)."""
    wants, made_by = model_detector(model), gallery_detector(gallery.path)
    if not fits(wants, made_by):
        raise ScanVizError(mismatch_message(model, wants, gallery.name, made_by))


def gallery_for(model: str, preferred: list[str | None]) -> str:
    """The gallery folder to serve the bundled model ``model`` with: the first of ``preferred`` (the served one,
    the operator's) that fits it, else the first offered bundled gallery made by its detector.
    ScanVizError (one line) when none does."""
    want = model_detector(model)
    for path in preferred:
        if path is not None and fits(want, gallery_detector(path)):
            return str(path)
    for gallery in offered_galleries():
        if fits(want, gallery_detector(gallery.path)):
            return str(gallery.path)
    raise ScanVizError(f"no gallery here holds region features of the detector {want}, which the model {model} "
                       "reads")


def model_for(gallery_path: str | Path, preferred: list[str | None]) -> str:
    """The model to serve the gallery ``gallery_path`` with: the first of ``preferred`` (the served one, the
    operator's) that fits it (a model that is not bundled names no detector here, so it fits, and the dimensions are
    checked when it loads), else the first bundled model that reads its detector's features.
    ScanVizError (one line) when none does."""
    from scan_viz.model import bundled_models

    have = gallery_detector(gallery_path)
    for name in dict.fromkeys([p for p in preferred if p] + bundled_models()):
        if fits(model_detector(name), have):
            return name
    raise ScanVizError(f"no bundled model reads the features of the detector {have}, which made the gallery "
                       f"{Path(gallery_path).name}")
