"""What the app serves: a model, a gallery encoded by it, and (for uploads) its detector, named by ``Sources``.

The sources come from the environment (``SCAN_VIZ_MODEL``, ``SCAN_VIZ_GALLERY``, ``SCAN_VIZ_DETECTOR``; default:
the bundled model and gallery): the operator's, always allowed. A visitor picks other sources on the Model page:
a bundled model, files they upload (:mod:`scan_viz.app.user_files`), or, only where the operator lists folders in
``SCAN_VIZ_ALLOWED_ROOTS``, paths inside those folders; :func:`check_visitor_sources` enforces that before anything
is read. Loading checks that the pieces fit together and says what to change when they do not. No Streamlit here:
:mod:`scan_viz.app.state` caches these calls per process.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scan_viz.errors import ScanVizError
from scan_viz.gallery import Gallery, load_gallery
from scan_viz.heads import head_settings, own_head
from scan_viz.model import PRETRAINED_DIR, ScanModel, bundled_models, load_model
from scan_viz.pipeline import DEFAULT_GALLERY, DEFAULT_MODEL, GalleryIndex
from scan_viz.safe_files import LoadBudget
from scan_viz.safe_paths import ALLOWANCES, ENV_ALLOWED_ROOTS, MB, AllowedRoots

ENV_MODEL = "SCAN_VIZ_MODEL"
ENV_VOCAB = "SCAN_VIZ_VOCAB"
ENV_GALLERY = "SCAN_VIZ_GALLERY"
ENV_DETECTOR = "SCAN_VIZ_DETECTOR"
#: Image files a user's images folder may hold; the file stem is the image id of its region features.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
METRICS_FILE = PRETRAINED_DIR / "metrics.json"
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Sources:
    """Where the served model, gallery and detector come from (paths or bundled names, as typed).

    Either ``gallery`` (a gallery folder) or ``regions`` + ``images`` (a user's region features, TSV or a folder
    of ``.npz``, and the images they were extracted from) name the gallery. ``vocab`` is needed for an official
    checkpoint file; ``detector`` overrides the detector the model's config names. ``label`` names the model on
    screen instead of its file name (uploads).
    """

    model: str = DEFAULT_MODEL
    vocab: str | None = None
    gallery: str | None = str(DEFAULT_GALLERY)
    regions: str | None = None
    images: str | None = None
    detector: str | None = None
    label: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Sources:
        """The default sources: the environment's, else the bundled model and gallery."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        return cls(model=get(ENV_MODEL) or DEFAULT_MODEL, vocab=get(ENV_VOCAB),
                   gallery=get(ENV_GALLERY) or str(DEFAULT_GALLERY), detector=get(ENV_DETECTOR))

    @classmethod
    def user_data(cls, checkpoint: str, vocab: str | None, regions: str, images: str,
                  detector: str | None = None) -> Sources:
        """A user's checkpoint with their own region features and images; blank fields are refused here."""
        fields = {"checkpoint": checkpoint, "region features": regions, "images folder": images}
        blank = [name for name, value in fields.items() if not (value or "").strip()]
        if blank:
            raise ScanVizError(f"give the {' and the '.join(blank)} path: all three are needed to explore your data")
        return cls(model=checkpoint.strip(), vocab=(vocab or "").strip() or None, gallery=None,
                   regions=regions.strip(), images=images.strip(), detector=(detector or "").strip() or None)

    def key(self) -> tuple[str | None, ...]:
        """Hashable, for caches."""
        return dataclasses.astuple(self)

    def model_label(self) -> str:
        """The model's name for the screen: a label, a bundled name or a file name, never a folder path."""
        if self.label:
            return self.label
        return Path(self.model).name if os.sep in self.model else self.model

    def gallery_label(self) -> str:
        if self.gallery is not None:
            return Path(self.gallery).name
        return f"{Path(self.images or '').name} ({Path(self.regions or '').name})"


#: What a gallery without pictures (built from official precomputed features) still offers, and one with pictures
#: but no region boxes; the pages show the line that applies (:func:`drawing_note`).
NO_PICTURES = ("this gallery has no images: the maps cannot be drawn; scores, ranks, retrieval and recall are "
               "computed from its region features")
NO_BOXES = ("this gallery's region features carry no boxes: attention cannot be drawn on the images and pointing "
            "accuracy cannot be measured; scores, ranks, retrieval and recall are computed from the features")


def drawing_note(gallery: Gallery) -> str | None:
    """Why the maps cannot be drawn on this gallery (no images, or no boxes), None when they can."""
    if not gallery.has_images:
        return NO_PICTURES
    return NO_BOXES if gallery.regions.boxes is None else None


@dataclasses.dataclass
class Bundle:
    """A loaded model and its gallery, encoded once for retrieval."""

    sources: Sources
    model: ScanModel
    gallery: Gallery
    index: GalleryIndex

    @property
    def key(self) -> tuple[str | None, ...]:
        return self.sources.key()

    def has_captions(self) -> bool:
        return len(self.gallery.captions) > 0

    def has_boxes(self) -> bool:
        return self.gallery.regions.boxes is not None


def gallery_from_user_data(regions: str | Path, images: str | Path, name: str | None = None,
                           budget: LoadBudget | None = None) -> Gallery:
    """A gallery (no captions) from a user's region features with boxes and the folder of their images.

    regions: a bottom-up-attention TSV (or a folder of them), or a folder of ``.npz`` files, as read by
    :func:`scan_viz.regions.store.load_regions`; every feature row's image id must be the file stem of an image in
    ``images``. Region features without boxes (official ``*_ims.npy``) cannot be drawn and are refused.
    """
    from scan_viz.regions.store import load_regions

    store = load_regions(regions, budget)
    if not store.has_boxes():
        raise ScanVizError(f"{regions} holds region features without boxes, which cannot be drawn: give the "
                           "bottom-up-attention TSV or .npz files, which keep each region's box")
    folder = Path(images)
    if not folder.is_dir():
        raise ScanVizError(f"images folder {folder} {'is a file' if folder.exists() else 'does not exist'}: "
                           "give the folder that holds the images the features were extracted from")
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    missing = [row for row, image_id in enumerate(store.ids, start=1) if image_id not in files]
    if missing:
        # ids come from the region file: its position is named, never its content
        raise ScanVizError(f"{len(missing)} of the {len(store)} images of the region features have no image file in "
                           f"{folder} (the first is feature row {missing[0]}): name each image by its feature id, "
                           "e.g. {id}.jpg")
    records = []
    for row, image_id in enumerate(store.ids):
        if store.image_sizes is not None:
            width, height = (int(v) for v in store.image_sizes[row])
        else:
            from PIL import Image

            with Image.open(files[image_id]) as im:
                width, height = im.size
        records.append({"id": image_id, "file": files[image_id].name, "width": width, "height": height,
                        "captions": []})
    return Gallery(folder, name or folder.name, records, store, None)


#: What one visitor's load (an upload, or server paths they named) may allocate in all: an official-size gallery of
#: 1,000 images x 36 regions x 2048-d float32 (295 MB) with an official checkpoint (about 55 MB) and its vocabulary
#: fits; two such loads cannot be stacked by one visitor, since a new upload replaces the session's old one.
VISITOR_LOAD_BYTES = 512 * MB


def load_bundle(sources: Sources) -> Bundle:
    """Load the model and the gallery the sources name, check that they fit (the detector that made the gallery's
    features is the one the model reads, where both say: :mod:`scan_viz.app.galleries`; the feature dimensions),
    encode the gallery.

    Everything the files expand to is charged to one :class:`~scan_viz.safe_files.LoadBudget` for the whole load
    (model, vocabulary and regions together): :data:`VISITOR_LOAD_BYTES` when a visitor named any part of it,
    else the library's default.
    """
    budget = LoadBudget(VISITOR_LOAD_BYTES) if visitor_inputs(sources) else LoadBudget()
    model = load_model(sources.model, vocab=sources.vocab, budget=budget)
    if sources.gallery is not None:
        gallery = load_gallery(sources.gallery, budget)
    elif sources.regions is not None and sources.images is not None:
        gallery = gallery_from_user_data(sources.regions, sources.images, budget=budget)
    else:
        raise ScanVizError("no gallery: give a gallery folder, or region features and their images folder")
    if len(gallery) == 0:
        raise ScanVizError(f"the gallery {gallery.name} holds no images")
    from scan_viz.app.galleries import check_pair

    check_pair(sources.model_label(), model.config, gallery)  # another detector's features are never scored
    if gallery.regions.img_dim != model.config.img_dim:
        raise ScanVizError(f"the gallery's region features are {gallery.regions.img_dim}-d but the model takes "
                           f"{model.config.img_dim}-d: give the features of the extractor the model was trained on")
    return Bundle(sources, model, gallery, GalleryIndex.build(model, gallery))


def load_detector_for(model: ScanModel, sources: Sources):
    """The detector for uploads: the sources' one, else the one the model's config names.

    A visitor's model may name only a bundled detector: its config is the visitor's text, not a path to trust.
    When the operator's detector fails to load, the visitor gets :func:`operator_failure`'s line.
    """
    from scan_viz.pipeline import detector_for

    if sources.detector is None and not operator_model(sources):
        name = str(model.config.extra.get("detector") or "")
        if name and (Path(name).name != name or not (PRETRAINED_DIR / name).is_dir()):
            raise ScanVizError("your model's config names a detector that is not one of the bundled ones: give a "
                               "detector folder on the Model page, or explore only the gallery images")
    try:
        return detector_for(model, sources.detector)
    except (ScanVizError, OSError) as exc:
        if any(kind == "detector" for kind, _ in visitor_inputs(sources)):
            raise  # the visitor's own detector folder: the reason is theirs to read
        raise operator_failure("detector", exc) from None


#: What a visitor may name, per field of Sources: the kind of input of scan_viz.safe_paths.ALLOWANCES.
VISITOR_INPUTS = {"model": "checkpoint", "vocab": "vocab", "gallery": "gallery", "regions": "regions",
                  "images": "images", "detector": "detector"}
PATHS_OFF = (f"reading files on this server is off: upload your files instead (the operator can allow folders with "
             f"{ENV_ALLOWED_ROOTS})")


def operator_model(sources: Sources) -> bool:
    """Whether the sources' model is the operator's: the environment's or a bundled one."""
    return sources.model == Sources.from_env().model or sources.model in bundled_models()


def visitor_inputs(sources: Sources) -> list[tuple[str, str]]:
    """(kind of input, value) of each field of ``sources`` that names something other than the operator's
    (the environment's sources, a bundled model or a bundled gallery); the kinds are those of
    scan_viz.safe_paths.ALLOWANCES."""
    from scan_viz.app.galleries import bundled_gallery_at

    operator = Sources.from_env()
    named = []
    for name, kind in VISITOR_INPUTS.items():
        value = getattr(sources, name)
        if value is None or value == getattr(operator, name) or (name == "model" and value in bundled_models()):
            continue
        if name == "gallery" and bundled_gallery_at(value) is not None:
            continue
        named.append((kind, value))
    return named


def check_visitor_sources(sources: Sources, roots: AllowedRoots | None, uploads: AllowedRoots | None = None) -> None:
    """Refuse sources that name server paths the operator did not allow; ScanVizError, and nothing is opened.

    The operator's sources (the environment's and the bundled models) are always allowed. Any other path must
    lie inside ``uploads`` (this visitor's own uploaded files) or ``roots`` (``SCAN_VIZ_ALLOWED_ROOTS``; None:
    server paths are off), and pass :meth:`AllowedRoots.check` for its kind of input.
    """
    for kind, value in visitor_inputs(sources):
        if uploads is not None and uploads.contains(value):
            uploads.check(value, kind)
        elif roots is None:
            raise ScanVizError(f"{ALLOWANCES[kind].label}: {PATHS_OFF}")
        else:
            roots.check(value, kind)


def operator_failure(what: str, error: Exception) -> ScanVizError:
    """What a visitor sees when the operator's own ``what`` (model and gallery, or detector) cannot be loaded.

    The reason names the server's paths, which are the operator's business: it goes to the server's log (stderr)
    and the visitor gets one generic line.
    """
    log.error("scan-viz: the server's %s could not be loaded (check %s, %s, %s): %s", what, ENV_MODEL, ENV_GALLERY,
              ENV_DETECTOR, error)
    return ScanVizError(f"the server's {what} could not be loaded; the operator's log has the details")


def detector_name(model: ScanModel, sources: Sources) -> str | None:
    """The detector uploads would use, as a label: a folder's name, never its path (None when there is none)."""
    name = sources.detector or model.config.extra.get("detector")
    return Path(str(name)).name if name else None


def model_domain(model: ScanModel) -> str | None:
    """What the model was trained on, as its config states it (``extra["domain"]``; the bundled models' say
    generated emoji scenes), or None when the config does not say."""
    domain = str(model.config.extra.get("domain") or "").strip()
    return domain or None


def model_label(model: ScanModel) -> str | None:
    """The honest one-line label Explore shows beside a picture: what the model is and what it knows
    (``extra["zero_shot"]`` marks a model that never saw a caption, e.g. ``photo-zeroshot``), or None when its
    config says nothing."""
    domain = model_domain(model)
    if model.config.extra.get("zero_shot"):
        return ("Zero-shot model: it never saw a caption, so its attention is the nearness of each word to the "
                "names of what an ImageNet classifier sees in each region. " + (domain or "")).strip()
    return f"This model knows {domain}." if domain else None


def n_parameters(model: ScanModel) -> int:
    return int(sum(p.numel() for enc in (model.image_encoder, model.text_encoder) for p in enc.parameters()))


def bundled_metrics(model_name: str) -> dict[str, Any] | None:
    """The bundled model's entry of ``pretrained/metrics.json`` (retrieval and pointing on the gallery), if any."""
    own = METRICS_FILE.parent / f"{Path(model_name).name}-metrics.json"
    if own.is_file():  # a model built apart from the emoji bundle (photo-zeroshot: python -m scan_viz.train.photo evaluate)
        try:
            entry = json.loads(own.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return {**entry, "_build": {}, "_source": own.name} if isinstance(entry, dict) else None
    try:
        report = json.loads(METRICS_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = report.get(model_name) if isinstance(report, dict) else None
    if not isinstance(entry, dict):
        return None
    extra = {k: report[k] for k in ("detector", "machine", "wall_minutes") if k in report}
    return {**entry, "_build": extra}


MODEL_CARD_SECTIONS: dict[str, tuple[str, ...]] = {
    "Encoders": ("img_dim", "embed_size", "word_dim", "num_layers", "bi_gru", "precomp_enc_type", "no_imgnorm",
                 "no_txtnorm", "vocab_size"),
    "Training": ("data_name", "num_epochs", "batch_size", "learning_rate", "lr_update", "margin", "max_violation",
                 "grad_clip"),
}


def model_card(bundle: Bundle) -> dict[str, dict[str, Any]]:
    """The model card's tables: config fields by section, the data it was trained on and what it serves."""
    config = bundle.model.config
    card = {title: {name: getattr(config, name) for name in names} for title, names in MODEL_CARD_SECTIONS.items()}
    # the head and its settings, as the head declares them (after the encoders, before the training)
    head = {"head": own_head(config), **head_settings(own_head(config), config)}
    card = {"Encoders": card["Encoders"], "Matching head": head, **{k: v for k, v in card.items() if k != "Encoders"}}
    card["Encoders"]["parameters"] = f"{n_parameters(bundle.model):,}"
    extra = {k: v for k, v in config.extra.items() if isinstance(v, (str, int, float, bool))}
    # a config may hold paths of the machine it was trained on (a detector folder): show names only
    extra = {k: Path(v).name if isinstance(v, str) and os.sep in v else v for k, v in extra.items()}
    card["Training"].update(extra)
    zero_shot = config.extra.get("zero_shot")
    if isinstance(zero_shot, dict):  # a model made without training (scan_viz.photo): its recipe, not a training run
        card["Zero-shot"] = {k: v for k, v in zero_shot.items() if isinstance(v, (str, int, float, bool))}
    gallery = bundle.gallery
    card["Served"] = {
        "model": bundle.sources.model_label(),
        "gallery": gallery.name,
        "gallery images": len(gallery),
        "gallery captions": len(gallery.captions),
        "regions per image": gallery.regions.n_regions,
        "region boxes": "yes" if bundle.has_boxes() else "no (cannot draw)",
        "detector for uploads": detector_name(bundle.model, bundle.sources) or "none",
    }
    return card


def _same_caption(text: str) -> str:
    return " ".join(text.lower().split())


def ground_truth_images(gallery: Gallery, text: str) -> set[str]:
    """Ids of the gallery images one of whose captions is ``text`` (case and spacing ignored)."""
    wanted = _same_caption(text)
    return {gallery.ids[int(gallery.caption_image[c])] for c, caption in enumerate(gallery.captions)
            if _same_caption(caption) == wanted}


def is_own_caption(gallery: Gallery, image_id: str, text: str) -> bool:
    """Whether ``text`` is one of the image's own captions (case and spacing ignored), reading only that image's:
    ``image_id in ground_truth_images(gallery, text)`` without a pass over every caption."""
    wanted = _same_caption(text)
    return any(_same_caption(caption) == wanted for caption in gallery.captions_of(image_id))


#: What the image pickers say when :func:`search_gallery` finds nothing.
NO_MATCH = "No image matches: no caption holds all of these words (whole words). Clear the search to list every image."


def search_gallery(gallery: Gallery, words: str, limit: int | None = None) -> list[str]:
    """Ids of images with a caption holding every word of ``words`` as a whole word; all ids for a blank search.

    Captions and the search are split into words as the model reads them (:func:`scan_viz.text.tokenize`), so
    "ant" finds captions with the word "ant", not "elephant" or "giant". An image id, or a part of one with a
    digit in it (``000042``), finds that image.
    """
    from scan_viz.text import tokenize

    terms = {t.text for t in tokenize(words)}
    if not terms:
        return list(gallery.ids[:limit] if limit else gallery.ids)
    wanted = words.strip().lower()
    by_id = any(ch.isdigit() for ch in wanted)

    def id_matches(image_id: str) -> bool:
        return wanted == image_id.lower() or (by_id and wanted in image_id.lower())

    hits = []
    for image_id, record in zip(gallery.ids, gallery.records):
        if id_matches(image_id) or any(terms <= _caption_words(c["text"]) for c in record["captions"]):
            hits.append(image_id)
            if limit and len(hits) >= limit:
                break
    return hits


@functools.lru_cache(maxsize=65536)
def _caption_words(caption: str) -> frozenset[str]:
    from scan_viz.text import tokenize

    return frozenset(t.text for t in tokenize(caption))
