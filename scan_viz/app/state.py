"""What the pages share: the served bundle (loaded once per process), cached results, the head controls.

Models, galleries and detectors are ``st.cache_resource`` (one copy per process, shared by every user); results
that depend on a user's input are ``st.cache_data`` keyed by that input; what one user picked lives in
``st.session_state``. Every user error is a :class:`~scan_viz.errors.ScanVizError` and is shown with
:func:`~scan_viz.app.safe_text.show_error` (its message may quote a visitor's text).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import streamlit as st

from scan_viz.app import fair, galleries
from scan_viz.app.bundle import (Bundle, Sources, bundled_models, check_visitor_sources, load_bundle, load_detector_for,
                                 operator_failure, visitor_inputs)
from scan_viz.app.params import ExploreParams, HeadSettings, echo, explore_query, normalise_query, settings_fields
from scan_viz.app.safe_text import literal, show_error, without_bidi
from scan_viz.app.views import word_panels
from scan_viz.errors import ScanVizError
from scan_viz.safe_paths import AllowedRoots
from scan_viz.types import Alignment, Regions

T = TypeVar("T")

SOURCES_KEY = "sources"
#: This session's UploadFolder, and the sources key last checked against the allowed folders.
UPLOADS_KEY, _CHECKED_KEY = "_uploads", "_checked_sources"
#: Widget key of the head control (sidebar); each head setting's control is keyed by :func:`setting_key`.
HEAD_KEY = "ctl_head"
_CONTROLS_FOR = "_controls_for"
#: The link this session last wrote or applied (a URL that differs is a new link), and the notes on a new link.
LINK_KEY, NOTES_KEY = "_link", "_link_notes"
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the served bundle


def active_sources() -> Sources:
    """The sources this user picked on the Model page, else the environment's (default: bundled)."""
    return st.session_state.get(SOURCES_KEY) or Sources.from_env()


# Three homes for loaded bundles, so that no link or upload can evict the model the operator serves: the
# operator's own (one entry), the bundled models a link may name with the operator's gallery (shared by every
# session), and anything else a visitor loads (uploads, typed paths: kept in that session's state, so it is
# released when the session ends and never seen by another).
#: Bundled models kept loaded besides the operator's: all of them, so links cycling through them load each once
#: (each with the gallery it is paired with; a model that fits two galleries may take two entries).
SHARED_BUNDLES = max(1, len(bundled_models())) + len(galleries.BUNDLED_GALLERIES)
#: Session state key of the bundle this session loaded from its own files: (sources key, Bundle).
OWN_BUNDLE_KEY = "_own_bundle"


def _load(key: tuple) -> Bundle:
    with fair.turn(load=True):
        return load_bundle(Sources(*key))


@st.cache_resource(show_spinner=False, max_entries=1)
def _operator_bundle(key: tuple) -> Bundle:
    return _load(key)


@st.cache_resource(show_spinner=False, max_entries=SHARED_BUNDLES)
def _shared_bundle(key: tuple) -> Bundle:
    return _load(key)


def bundle_home(sources: Sources) -> str:
    """Where ``sources``' bundle is kept: ``operator`` (the environment's sources), ``shared`` (a bundled model
    with the operator's gallery and detector, or with a bundled gallery, as a link names it) or ``session``
    (everything else)."""
    operator = Sources.from_env()
    if sources == operator:
        return "operator"
    gallery_shared = sources.gallery == operator.gallery or galleries.bundled_gallery_at(sources.gallery) is not None
    if (sources.model in bundled_models() and gallery_shared and sources.vocab is None
            and sources.regions is None and sources.images is None and sources.label is None
            and sources.detector in (None, operator.detector)):
        return "shared"
    return "session"


def bundle_by_key(key: tuple) -> Bundle:
    """The loaded bundle of a sources key (``Sources.key()``), loading it on first use into its home
    (:func:`bundle_home`). Raises ScanVizError (or OSError for a visitor's unreadable file)."""
    home = bundle_home(Sources(*key))
    if home == "operator":
        return _operator_bundle(key)
    if home == "shared":
        return _shared_bundle(key)
    own = st.session_state.get(OWN_BUNDLE_KEY)
    if own is None or own[0] != key:
        # one visitor bundle per session, replaced only once the new one has loaded (a failed load keeps it)
        own = (key, _load(key))
        st.session_state[OWN_BUNDLE_KEY] = own
    return own[1]


def forget_bundle(key: tuple) -> None:
    """Drop the bundle of ``key`` if this session holds it (its files are being removed)."""
    own = st.session_state.get(OWN_BUNDLE_KEY)
    if own is not None and own[0] == key:
        del st.session_state[OWN_BUNDLE_KEY]


def _is_loaded(key: tuple) -> bool:
    """Whether ``key``'s bundle was loaded already (no status box then)."""
    if bundle_home(Sources(*key)) == "session":
        own = st.session_state.get(OWN_BUNDLE_KEY)
        return own is not None and own[0] == key
    return key in _loaded()


@st.cache_resource(show_spinner=False)
def _loaded() -> set[tuple]:
    """Keys of the operator's and the shared bundles this process has loaded, to show a status box only for the
    first load."""
    return set()


class UploadFolder:
    """A private folder (mode 0700) for one session's uploaded model and data.

    Removed by :meth:`discard`, or when the session's state is dropped (the session ended) or the process exits.
    """

    def __init__(self) -> None:
        from scan_viz.app.user_files import UPLOAD_PREFIX

        self.path = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX))
        self.sources_key: tuple | None = None
        self._remove = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def discard(self) -> None:
        """Remove the folder, and the bundle loaded from it from the process's cache."""
        self._remove()
        if self.sources_key is not None:
            forget_bundle(self.sources_key)


def upload_roots() -> AllowedRoots | None:
    """This session's upload folder as the one root its uploaded sources may use, or None."""
    folder = st.session_state.get(UPLOADS_KEY)
    return AllowedRoots.of(folder.path) if folder is not None else None


def load_sources(sources: Sources, uploads: UploadFolder | None = None) -> Bundle:
    """The bundle of ``sources``, loaded once per process; the first load shows its steps. Raises ScanVizError
    (or OSError for a visitor's unreadable file).

    Sources other than the operator's are first checked against the allowed folders and this session's uploads
    (:func:`~scan_viz.app.bundle.check_visitor_sources`), once per session and sources; ``uploads``: a new
    upload folder to check them against instead (it becomes the session's only once they load). When only the
    operator's sources fail, the reason (server paths) goes to the log and the visitor gets one generic line.
    """
    key = sources.key()
    if st.session_state.get(_CHECKED_KEY) != key:
        roots = AllowedRoots.of(uploads.path) if uploads is not None else upload_roots()
        check_visitor_sources(sources, AllowedRoots.from_env(), roots)
        st.session_state[_CHECKED_KEY] = key
    if _is_loaded(key):
        return bundle_by_key(key)
    with st.status(f"Loading {literal(sources.model_label())} and the gallery "
                   f"{literal(sources.gallery_label())}\u2026") as status:
        try:
            bundle = bundle_by_key(key)
        except Exception as exc:
            status.update(label="Loading failed", state="error")  # never left at "Loading..."
            if visitor_inputs(sources):
                raise  # the visitor's own files: the reason is theirs to read (an unforeseen one, the caller logs)
            if not isinstance(exc, (ScanVizError, OSError)):
                log.exception("scan-viz: the server's model and gallery failed to load unexpectedly")
            raise operator_failure("model and gallery", exc) from None
        status.update(label=f"Loaded {literal(sources.model_label())}: {len(bundle.gallery)} gallery images, "
                            f"{len(bundle.gallery.captions)} captions", state="complete")
    if bundle_home(sources) != "session":
        _loaded().add(key)
    return bundle


def current_bundle(quiet: bool = False) -> Bundle | None:
    """The served bundle, or None after showing why it could not be loaded (one line, no traceback).

    ``quiet``: show nothing (the frame around the page has shown the error already).
    """
    sources = active_sources()
    try:
        return load_sources(sources)
    except (ScanVizError, OSError) as exc:
        if quiet:
            return None
        show_error(exc if isinstance(exc, ScanVizError) else f"cannot read the files: {exc.strerror or 'unreadable'}")
        if SOURCES_KEY in st.session_state:
            st.info("Choose another model on the **Model** page.")
        else:  # the operator's model: nothing the visitor can build or fix
            st.info("The server's own model is not available right now: choose another one on the **Model** page "
                    "(a bundled model or your own upload), or tell the operator of this server.")
        return None


@st.cache_resource(show_spinner="Loading the detector\u2026", max_entries=4)
@fair.heavy
def _detector(key: tuple):
    bundle = bundle_by_key(key)
    return load_detector_for(bundle.model, bundle.sources)


def detector(bundle: Bundle):
    """The bundle's detector (for uploads), loaded once per process. Raises ScanVizError."""
    return _detector(bundle.key)


# ----------------------------------------------------------------------------- cached results


def content_key(data: bytes) -> str:
    """A short stable name for uploaded bytes (cache keys, session state)."""
    return hashlib.sha1(data).hexdigest()[:16]


# Entry limits keep the caches' memory bounded: a decoded upload may be 25 megapixels (75 MB), a set of word
# panels (JPEG) a few hundred KB.
@st.cache_data(show_spinner=False, max_entries=4)
@fair.heavy
def decoded_upload(key: str, _data: bytes, name: str) -> np.ndarray:
    """(H, W, 3) uint8 of uploaded bytes; ScanVizError for anything that is not a usable image."""
    from scan_viz.app.uploads import read_upload

    return read_upload(_data, name)


@st.cache_data(show_spinner=False, max_entries=32)
@fair.heavy
def detected_regions(bundle_key: tuple, image_key: str, _image: np.ndarray) -> Regions:
    """The detector's regions of an uploaded image."""
    from scan_viz.pipeline import detect

    return detect(_detector(bundle_key), _image)


@st.cache_data(show_spinner=False, max_entries=256)
@fair.heavy
def upload_in_domain(bundle_key: tuple, image_key: str, _regions: Regions) -> bool:
    """Whether an upload's regions are as like the gallery's as the gallery's own images are
    (:mod:`scan_viz.regions.domain`; the check is fitted once per served bundle)."""
    return bundle_by_key(bundle_key).index.looks_in_domain(_regions)


@st.cache_data(show_spinner=False, max_entries=256)
def upload_row_flatness(bundle_key: tuple, image_key: str, _image: np.ndarray) -> float | None:
    """An upload's :func:`scan_viz.regions.domain.row_flatness` when the served model expects photographs (its
    config's ``extra["pictures"]``), else None: the pixel check that tells a generated drawing from a photo."""
    from scan_viz.regions.domain import expects_photographs, row_flatness

    if not expects_photographs(bundle_by_key(bundle_key).model.config.extra):
        return None
    return row_flatness(_image)


@st.cache_data(show_spinner=False, max_entries=256)
@fair.heavy
def alignment(bundle_key: tuple, image_key: str, text: str, settings: tuple, _regions: Regions) -> Alignment:
    """The alignment of ``text`` with an image's regions under the head ``settings`` (HeadSettings.key())."""
    from scan_viz.pipeline import explain

    bundle = bundle_by_key(bundle_key)
    return explain(bundle.model, _regions, text, HeadSettings(*settings).build(bundle.model))


@dataclasses.dataclass(frozen=True)
class ShownPanel:
    """A word panel as the page shows it: the word, its caption and the panel as JPEG bytes."""

    word: str
    caption: str
    jpeg: bytes


@st.cache_data(show_spinner=False, max_entries=16)
@fair.heavy
def panels(bundle_key: tuple, image_key: str, text: str, settings: tuple, _image: np.ndarray,
           _alignment: Alignment) -> list[ShownPanel]:
    """The on-screen word panels of one alignment, encoded once (not by st.image on every rerun)."""
    from scan_viz.regions.images import image_to_jpeg_bytes

    return [ShownPanel(p.word, p.caption, image_to_jpeg_bytes(p.image)) for p in word_panels(_image, _alignment)]


@st.cache_data(show_spinner=False, max_entries=64)
@fair.heavy
def ablation(bundle_key: tuple, image_key: str, text: str, settings: tuple, _regions: Regions) -> dict[str, Any]:
    """Score change when each word, or each region, is removed."""
    from scan_viz.pipeline import ablate

    bundle = bundle_by_key(bundle_key)
    return ablate(bundle.model, _regions, text, HeadSettings(*settings).build(bundle.model))


@st.cache_data(show_spinner=False, max_entries=16)
@fair.heavy
def region_words_png(bundle_key: tuple, image_key: str, text: str, settings: tuple, top: int,
                     _image: np.ndarray, _alignment: Alignment) -> bytes:
    """PNG bytes of the image-to-text view (each of the ``top`` regions' attention over the words)."""
    from scan_viz.render import figure_to_png, region_word_figure

    return figure_to_png(region_word_figure(_image, _alignment, top=top), dpi=100)


@st.cache_data(show_spinner=False, max_entries=256)
@fair.heavy
def top_images(bundle_key: tuple, text: str, k: int, settings: tuple) -> list[tuple[str, float, int | None]]:
    """Text -> the top-k gallery images (id, score, stage-1 rank or None when exhaustive), best first.

    Two-stage when a stage-1 head fits the model (its K from the measured recall curve), else exhaustive.
    """
    bundle = bundle_by_key(bundle_key)
    hits = bundle.index.two_stage.search_text(text, k, head=HeadSettings(*settings).build(bundle.model))
    return [(hit.id, hit.score, hit.stage1_rank) for hit in hits]


@st.cache_data(show_spinner=False, max_entries=256)
@fair.heavy
def sentence_scores(bundle_key: tuple, text: str, settings: tuple) -> np.ndarray:
    """(n_images,) every gallery image's score for the sentence (exhaustive: ~13 ms for 1,000 images)."""
    bundle = bundle_by_key(bundle_key)
    return bundle.index.image_scores(text, HeadSettings(*settings).build(bundle.model))


@st.cache_data(show_spinner=False, max_entries=256)
@fair.heavy
def top_captions(bundle_key: tuple, image_id: str, k: int, settings: tuple) -> list[tuple[int, float]]:
    """Gallery image -> the top-k gallery captions (caption index, score), best first."""
    bundle = bundle_by_key(bundle_key)
    return bundle.index.search_captions(image_id, k, HeadSettings(*settings).build(bundle.model))


@st.cache_data(show_spinner=False, max_entries=64)
@fair.heavy
def comparison(bundle_key: tuple, image_id: str, text: str, settings: tuple[tuple, ...]) -> list:
    """The pair under each head (HeadSettings.key() each): alignment, score and the image's rank in the gallery
    for the sentence (:func:`scan_viz.pipeline.compare_heads`)."""
    from scan_viz.pipeline import compare_heads

    bundle = bundle_by_key(bundle_key)
    return compare_heads(bundle.index, image_id, text, [HeadSettings(*key).build(bundle.model) for key in settings])


@st.cache_data(show_spinner=False, max_entries=512)
def thumbnail(bundle_key: tuple, image_id: str) -> bytes:
    """A gallery image shrunk for the pickers, as JPEG bytes."""
    from scan_viz.app.views import shrink
    from scan_viz.regions.images import image_to_jpeg_bytes

    return image_to_jpeg_bytes(shrink(bundle_by_key(bundle_key).gallery.load_image(image_id)))


@st.cache_data(show_spinner=False, max_entries=64)
def shown_image(bundle_key: tuple, image_key: str, _image: np.ndarray) -> bytes:
    """The explored image (``image_key``: ``gallery:ID`` or ``upload:SHA``) fitted to the page, as JPEG bytes:
    an upload may be 25 megapixels, which st.image would re-encode in full on every rerun."""
    from scan_viz.app.views import SHOWN_SIDE
    from scan_viz.regions.images import fit_within, image_to_jpeg_bytes

    return image_to_jpeg_bytes(fit_within(_image, SHOWN_SIDE, SHOWN_SIDE)[0])


@st.cache_data(show_spinner=False, max_entries=16)
def gallery_image(bundle_key: tuple, image_id: str) -> np.ndarray:
    return bundle_by_key(bundle_key).gallery.load_image(image_id)


#: Evaluations kept per process (each holds a few arrays of one int per caption).
MAX_EVALUATIONS = 32


@st.cache_resource(show_spinner=False)
def evaluation_store() -> dict[tuple, dict[str, Any]]:
    """Evaluations by (bundle, head settings): computed with a progress bar on request, kept for every user.

    Streamlit's result caches replay what a cached function drew, not a progress bar updated from inside
    it, so evaluations are kept here by hand; see :func:`keep_evaluation`.
    """
    return {}


def keep_evaluation(key: tuple, result: dict[str, Any]) -> None:
    store = evaluation_store()
    store[key] = result
    while len(store) > MAX_EVALUATIONS:
        store.pop(next(iter(store)))


# ----------------------------------------------------------------------------- head controls


def setting_key(name: str) -> str:
    """The widget key of a head setting's control (its declared name)."""
    return f"ctl_{name}"


def _reset_controls(settings: HeadSettings) -> None:
    st.session_state[HEAD_KEY] = settings.head
    for name, value in settings.values:
        st.session_state[setting_key(name)] = value


def model_settings(bundle: Bundle) -> HeadSettings:
    """The model's own head and settings (its config), what the controls start from."""
    return HeadSettings.from_config(bundle.model.config)


def ensure_controls(bundle: Bundle) -> None:
    """Start the controls from the model's settings on first use and whenever the served model changes."""
    if st.session_state.get(_CONTROLS_FOR) != bundle.key:
        from scan_viz.heads import all_head_params

        for param in all_head_params():  # another model's values must not leak into this one's heads
            st.session_state.pop(setting_key(param.name), None)
        _reset_controls(model_settings(bundle))
        st.session_state[_CONTROLS_FOR] = bundle.key


def head_controls(bundle: Bundle) -> HeadSettings:
    """Sidebar controls of the matching head, generated from its declared settings; every page's results
    recompute when they change. A setting the user has not touched starts at the model's own value."""
    from scan_viz.heads import head_spec, own_head, selectable_heads

    ensure_controls(bundle)
    heads = selectable_heads()
    if st.session_state.get(HEAD_KEY) not in heads:
        st.session_state[HEAD_KEY] = own_head(bundle.model.config)
    with st.sidebar:
        st.subheader("Matching head")
        head = st.selectbox("Head", heads, key=HEAD_KEY, persist_state="session",
                            help="; ".join(f"{n}: {head_spec(n).help}" for n in heads) + ".")
        trained = own_head(bundle.model.config)
        if head != trained:
            st.info(f"This model's encoders were trained for {trained}, not {head}: the scores and maps show what "
                    f"{head} computes on embeddings trained for another head, not what a model trained for it "
                    "would do.", icon=":material/info:")
        own = HeadSettings.for_head(head, bundle.model.config).overrides()
        for param in head_spec(head).params:  # all first: a control greyed out by another reads its value
            st.session_state.setdefault(setting_key(param.name), own[param.name])
        for param in head_spec(head).params:
            key = setting_key(param.name)
            disabled = param.needs is not None and st.session_state.get(setting_key(param.needs[0])) != param.needs[1]
            if param.choices is not None:
                st.selectbox(param.display, list(param.choices), key=key, persist_state="session", help=param.help,
                             disabled=disabled)
            else:
                st.session_state[key] = float(min(max(float(st.session_state[key]), param.low), param.high))
                st.slider(param.display, float(param.low), float(param.high), step=float(param.step), key=key,
                          persist_state="session", help=param.help, disabled=disabled)
        st.button("Reset to the model's settings", on_click=_reset_controls, args=(model_settings(bundle),),
                  width="stretch")
        st.caption(f"Serving {literal(bundle.sources.model_label())} on {literal(bundle.gallery.name)} "
                   f"({len(bundle.gallery)} images).")
    return current_settings(bundle)


def current_settings(bundle: Bundle) -> HeadSettings:
    """The head settings the controls hold now (a setting without a control yet: the model's own)."""
    from scan_viz.heads import head_spec, own_head

    head = st.session_state.get(HEAD_KEY) or own_head(bundle.model.config)
    given = {p.name: st.session_state[setting_key(p.name)] for p in head_spec(head).params
             if setting_key(p.name) in st.session_state}
    return HeadSettings.for_head(head, bundle.model.config, given)


def page_start(title: str) -> tuple[Bundle, HeadSettings] | None:
    """A page's title and the notes on its link, then the served bundle and the head settings; None when no
    bundle could be loaded (the frame above the page has said why)."""
    st.title(title)
    show_link_notes()
    bundle = current_bundle(quiet=True)
    return None if bundle is None else (bundle, current_settings(bundle))


# ----------------------------------------------------------------------------- links


def link_fields(bundle: Bundle, settings: HeadSettings) -> dict[str, Any]:
    """What every page's link carries (ExploreParams fields): the served model when it is a bundled one (a link
    never names a server path), the served gallery when it is a bundled one other than the operator's, and the
    head settings that differ from the model's own."""
    model = bundle.sources.model if bundle.sources.model in bundled_models() else None
    bundled = galleries.bundled_gallery_at(bundle.sources.gallery)
    gallery = bundled.name if bundled is not None and bundle.sources.gallery != Sources.from_env().gallery else None
    return {"model": model, "gallery": gallery,
            **settings_fields(settings, model_settings(bundle), bundle.model.config)}


def write_link(fields: dict[str, Any]) -> None:
    """Put a page's state into the URL (ExploreParams fields; None = left out)."""
    wanted = explore_query(ExploreParams(**fields))
    if wanted != normalise_query(st.query_params.to_dict()):
        st.query_params.from_dict(wanted)
    st.session_state[LINK_KEY] = wanted


def apply_link_model(name: str | None, notes: list[str], gallery: str | None = None) -> None:
    """Serve the bundled model and the bundled gallery a link names, paired by detector
    (:mod:`scan_viz.app.galleries`): a model alone keeps the served gallery where it fits, else gets the bundled
    gallery its detector made; a gallery alone keeps the served model where it fits, else gets a bundled model
    that reads its features. A name that is not bundled, a named pair that does not fit, or a model that cannot
    serve the gallery is a note and what is served stays."""
    active, default = active_sources(), Sources.from_env()
    names = bundled_models()
    if name is not None and name not in names:
        notes.append(f"the link's model {name!r} is not a bundled model ({', '.join(names) or 'none'}): ignored")
        name = None
    path = None
    if gallery is not None:
        found = galleries.offered_gallery(gallery)
        if found is None:
            offered = ", ".join(g.name for g in galleries.offered_galleries()) or "none"
            notes.append(f"the link's gallery {echo(gallery)} is not a bundled gallery ({offered}): ignored")
        else:
            try:
                if name is not None:
                    galleries.check_named_pair(name, found)
                path = str(found.path)
            except ScanVizError as exc:
                notes.append(f"the link's gallery is not used: {exc}")
    if name is None and path is None:
        return
    try:
        if path is None:
            path = galleries.gallery_for(name, [active.gallery, default.gallery])
        elif name is None:
            name = galleries.model_for(path, [active.model, default.model])
    except ScanVizError as exc:
        notes.append(f"the link's {'model' if gallery is None else 'gallery'} is not used: {exc}")
        return
    if active.model == name and active.gallery == path:
        return
    if default.model == name and default.gallery == path:
        wanted = default
    elif name in (active.model, default.model):  # its vocabulary, label and detector stay with it
        base = active if name == active.model else default
        wanted = dataclasses.replace(base, gallery=path, regions=None, images=None)
    else:
        wanted = Sources(model=name, gallery=path)
    try:
        load_sources(wanted)
    except ScanVizError as exc:
        notes.append(f"the link's model {name!r} cannot serve this gallery ({exc}): ignored")
        return
    if wanted == default:
        st.session_state.pop(SOURCES_KEY, None)
    else:
        st.session_state[SOURCES_KEY] = wanted


def apply_link_settings(bundle: Bundle, params: ExploreParams, notes: list[str]) -> None:
    """Set the head controls to a link's head and settings; what the link leaves out is the model's own (the
    link's head was checked when it was read)."""
    ensure_controls(bundle)
    _reset_controls(params.head_settings(model_settings(bundle), bundle.model.config))


def show_link_notes() -> None:
    """What could not be used of a new link, one warning each (the link's values shown literally)."""
    for note in st.session_state.pop(NOTES_KEY, []):
        st.warning(literal(note))


def use_choice(choice_key: str, target_key: str) -> None:
    """Widget callback: copy a clicked chip (an example sentence) into a text field, then release the chip so
    the same example can be clicked again."""
    choice = st.session_state.get(choice_key)
    if choice:
        st.session_state[target_key] = without_bidi(choice)
    st.session_state[choice_key] = None


def drop_bidi(key: str) -> None:
    """Widget callback of a sentence field: remove Unicode direction controls, which would reorder what the
    field (and every caption quoting the sentence) shows, and are no words to the model."""
    text = st.session_state.get(key)
    if isinstance(text, str) and text != without_bidi(text):
        st.session_state[key] = without_bidi(text)


def shown(action: Callable[[], T]) -> T | None:
    """Run ``action``; a user error becomes a one-line ``st.error`` and None."""
    try:
        return action()
    except ScanVizError as exc:
        show_error(exc)
        return None
