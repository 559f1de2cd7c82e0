"""Model: the served model's card, and switching to another bundled model or to a user's checkpoint and data.

A page script. A user's data is an official SCAN checkpoint (or a scan-viz model's files), its vocabulary,
region features with boxes (bottom-up-attention TSV or ``.npz`` files) and the images they were extracted from.
Visitors upload them through the browser; paths on the machine that runs the app are offered only where the
operator lists the folders visitors may use in ``SCAN_VIZ_ALLOWED_ROOTS`` (:mod:`scan_viz.safe_paths`).
"""
from __future__ import annotations

import logging
import math
import os

import streamlit as st

from scan_viz.app import galleries, state, upload_guard, user_files
from scan_viz.app.bundle import Bundle, Sources, bundled_metrics, bundled_models, model_card
from scan_viz.app.explore import forget_pair
from scan_viz.app.frame import UNEXPECTED
from scan_viz.app.safe_text import literal, show_error
from scan_viz.app.views import recall_rows
from scan_viz.errors import ScanVizError
from scan_viz.safe_paths import ENV_ALLOWED_ROOTS, AllowedRoots

KIND_KEY = "md_kind"
#: The gallery choice that pairs the gallery with the picked model (:func:`scan_viz.app.galleries.gallery_for`).
FOLLOWS_MODEL = "the one the model reads (paired by detector)"
BUNDLED, UPLOAD, SERVER = "A bundled model", "Upload your own", "Files on this server"
PATHS_OFF_HELP = (f"Reading files on this server is off. The operator turns it on by starting the app with "
                  f"`{ENV_ALLOWED_ROOTS}=/data/models{os.pathsep}/data/features` (the folders visitors may name). "
                  "Meanwhile, choose **Upload your own**.")
FIELDS = {  # widget key: (label, help)
    "md_checkpoint": ("Checkpoint", ("An official model_best.pth.tar, or a scan-viz model folder (config.json, "
                                     "model.safetensors, vocab.json).")),
    "md_vocab": ("Vocabulary JSON", ("The *_precomp_vocab.json the checkpoint was trained with (not needed for a "
                                     "scan-viz model folder).")),
    "md_regions": ("Region features with boxes", ("A bottom-up-attention .tsv file (or a folder of them), or a "
                                                  "folder of .npz files from bottom-up-attention.pytorch.")),
    "md_images": ("Images folder", ("The images the features were extracted from, named by feature id "
                                    "({id}.jpg/.png).")),
    "md_detector": ("Detector folder (optional)", ("A scan-viz detector for uploads; leave empty to explore "
                                                   "only your images.")),
}
#: A successful switch's message, shown after the rerun that applies it.
OUTCOME_KEY = "_md_outcome"
#: Bumped after a successful upload, which gives the upload form fresh (empty) uploaders and frees the bytes.
UPLOAD_ROUND_KEY = "_md_upload_round"
log = logging.getLogger(__name__)


def card_table(values: dict, **kwargs) -> None:
    """One section of the model card as a two-column table. ``st.table`` renders its cells and row labels as
    Markdown, and a visitor's checkpoint or config.json writes them (``data_name``, the keys and values of
    ``extra``): every one is shown literally."""
    st.table({"value": {literal(k): literal(v) for k, v in values.items()}}, hide_header=True, **kwargs)


def show_card(bundle: Bundle) -> None:
    sources = bundle.sources
    st.subheader(f"Serving {literal(sources.model_label())}")
    card = model_card(bundle)
    served = card.pop("Served")
    columns = st.columns(len(card))
    for column, (title, values) in zip(columns, card.items()):
        with column:
            st.markdown(f"**{title}**")
            card_table(values)
    st.markdown("**Served**")
    card_table(served, width=760)
    metrics = bundled_metrics(sources.model) if sources.model in bundled_models() else None
    if metrics:
        split = f" ({literal(metrics['split'])} images)" if isinstance(metrics.get("split"), str) else ""
        source = literal(f"pretrained/{metrics.get('_source', 'metrics.json')}")
        st.markdown(f"**Metrics on the bundled gallery**{split} (from {source})")
        st.dataframe(recall_rows(metrics), hide_index=True)
        extras = []
        if "rsum" in metrics:
            extras.append(f"rsum {metrics['rsum']:.1f}")
        pointing = metrics.get("pointing_accuracy")
        if isinstance(pointing, (int, float)) and not math.isnan(pointing):
            extras.append(f"pointing accuracy {pointing:.1f}%")
        detector = metrics.get("_build", {}).get("detector", {})
        if isinstance(detector, dict) and "map50" in detector:
            extras.append(f"detector mAP@0.5 {float(detector['map50']):.3f}")
        if extras:
            st.caption("; ".join(extras))
    elif sources.model in bundled_models():
        st.caption("No metrics recorded for this model (pretrained/metrics.json is written by the bundle build).")
    else:
        st.caption("Measure this model on the **Evaluate** page.")


def switch_to(sources: Sources, uploads: state.UploadFolder | None = None) -> None:
    """Load ``sources`` and serve them to this user; any problem is one line and the old model stays.

    ``uploads``: the folder holding the sources' uploaded files. Only when they load does it replace this
    session's previous upload folder (removed then); on failure it is removed itself and the previous upload
    goes on serving. An unexpected error (a library bug, a file no reader foresaw) counts as a failure too: its
    trace goes to the server's log.
    """
    if uploads is not None:
        uploads.sources_key = sources.key()
    try:
        bundle = state.load_sources(sources, uploads=uploads)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the served model must stay
        if uploads is not None:
            uploads.discard()
        if isinstance(exc, ScanVizError):
            show_error(exc)
        elif isinstance(exc, OSError):  # a path the operating system refuses (permissions): still the user's
            show_error(f"cannot read the files: {exc.strerror or type(exc).__name__}")
        else:
            log.exception("scan-viz: loading %s failed unexpectedly", sources.model_label())
            show_error(f"these files could not be loaded ({UNEXPECTED}); check they are what the form asks for")
        return
    previous = st.session_state.get(state.UPLOADS_KEY)
    if previous is not None:  # serving something else now: the earlier upload goes
        previous.discard()
    if uploads is None:
        st.session_state.pop(state.UPLOADS_KEY, None)
    else:
        st.session_state[state.UPLOADS_KEY] = uploads
        st.session_state[UPLOAD_ROUND_KEY] = st.session_state.get(UPLOAD_ROUND_KEY, 0) + 1  # an empty form
    st.session_state[state.SOURCES_KEY] = sources
    forget_pair()
    st.session_state[OUTCOME_KEY] = (f"Now serving {literal(sources.model_label())} on "
                                    f"{literal(bundle.gallery.name)} "
                                    f"({len(bundle.gallery)} images).")
    st.rerun()


def bundled_form(roots: AllowedRoots | None) -> None:
    """A bundled model, on a bundled gallery (by default the one made by the model's detector: the operator's
    where it fits) or (where the operator allows server paths) another folder."""
    names = bundled_models()
    if not names:
        st.info("No bundled model yet: build them with `python -m scan_viz.train.bundle`, or upload your own.")
        return
    operator = Sources.from_env()
    with st.form("md_bundled"):
        served = state.active_sources().model  # preselected: switching starts from what is served
        name = st.selectbox("Model", names, key="md_bundled_name", index=names.index(served) if served in names else 0)
        offered = [g.name for g in galleries.offered_galleries()]
        choice = st.selectbox("Gallery", [FOLLOWS_MODEL, *offered], key="md_bundled_gallery",
                              help="A gallery's region features come from one detector; a model scores only the "
                                   "features of the detector it was trained on, so each gallery is served with the "
                                   "models that read them.")
        gallery = detector = ""
        if roots is not None:  # server paths: typed by the visitor, never prefilled with the server's own
            gallery = st.text_input("Gallery folder on this server (optional)", key="md_gallery",
                                    help="Leave empty for the gallery served by default.")
            detector = st.text_input("Detector folder on this server (optional)", key="md_detector_bundled",
                                     help="Leave empty for the detector the model's config names.")
        if st.form_submit_button("Load", type="primary"):
            try:
                path = gallery.strip() or bundled_gallery_path(name, choice, operator)
            except ScanVizError as exc:
                show_error(exc)
                return
            # the operator's detector override belongs with the operator's gallery; elsewhere the model's own
            switch_to(Sources(model=name, gallery=path, detector=detector.strip() or (
                operator.detector if path == operator.gallery else None)))


def bundled_gallery_path(model: str, choice: str, operator: Sources) -> str:
    """The gallery folder of the bundled form's choice: a bundled gallery by name, or the one the model reads
    (the operator's where it fits). ScanVizError when none fits, or the named one does not (said here, before
    anything loads: the loader would report a bundled pair's failure as the server's)."""
    if choice == FOLLOWS_MODEL:
        return galleries.gallery_for(model, [operator.gallery])
    found = galleries.offered_gallery(choice)
    if found is None:
        raise ScanVizError(f"the gallery {choice} is no longer offered: pick another")
    galleries.check_named_pair(model, found)
    return str(found.path)


def upload_form() -> None:
    """The visitor's own checkpoint, vocabulary, region files and images, uploaded (size-limited)."""
    round_ = st.session_state.get(UPLOAD_ROUND_KEY, 0)
    with st.form(f"md_upload_{round_}"):
        checkpoint = upload_guard.file_uploader(
            "Checkpoint", type=list(user_files.CHECKPOINT_TYPES), accept_multiple_files=True,
            max_upload_size=user_files.MAX_CHECKPOINT_MB, key=f"md_up_checkpoint_{round_}",
            help="An official model_best.pth.tar (read with torch's weights-only loader), or a scan-viz model's "
                 "config.json + model.safetensors (+ vocab.json).")
        vocab = upload_guard.file_uploader(
            "Vocabulary JSON", type=["json"], max_upload_size=user_files.MAX_VOCAB_MB, key=f"md_up_vocab_{round_}",
            help="The *_precomp_vocab.json the checkpoint was trained with.")
        regions = upload_guard.file_uploader(
            f"Region features with boxes (up to {user_files.MAX_REGIONS_MB} MB)", type=list(user_files.REGION_TYPES),
            accept_multiple_files=True, max_upload_size=user_files.MAX_REGIONS_MB, key=f"md_up_regions_{round_}",
            help="bottom-up-attention .tsv files, or one .npz per image from bottom-up-attention.pytorch.")
        images = upload_guard.file_uploader(
            f"Images (up to {user_files.MAX_IMAGES}, {user_files.MAX_IMAGE_MB} MB each)",
            type=list(user_files.IMAGE_TYPES), accept_multiple_files=True, max_upload_size=user_files.MAX_IMAGE_MB,
            key=f"md_up_images_{round_}", help="The images the features were extracted from, named by image id.")
        submitted = st.form_submit_button("Load", type="primary")
    if not submitted:
        return

    def upload(file) -> user_files.Upload | None:
        return None if file is None else user_files.Upload(file.name, file.getvalue())

    def uploads(files) -> list[user_files.Upload]:
        return [upload(f) for f in files or []]

    folder = state.UploadFolder()
    try:
        # no vocabulary file is None: a scan-viz model's files may hold their own vocab.json
        sources = user_files.stage_upload(folder.path, uploads(checkpoint), upload(vocab),
                                          uploads(regions), uploads(images))
    except (ScanVizError, OSError) as exc:
        folder.discard()
        show_error(exc if isinstance(exc, ScanVizError) else "cannot store the upload: try again later")
        return
    switch_to(sources, uploads=folder)


def server_form(roots: AllowedRoots | None) -> None:
    """Paths on the server, only inside the operator's allowed folders; off (with how to turn it on) otherwise."""
    if roots is None:
        st.info(PATHS_OFF_HELP)
        return
    st.caption(f"Paths inside the folders this server shares ({ENV_ALLOWED_ROOTS}); files are checked before "
               "they are read.")
    with st.form("md_user"):
        values = {key: st.text_input(label, key=key, help=help) for key, (label, help) in FIELDS.items()}
        submitted = st.form_submit_button("Load", type="primary")
    if submitted:
        try:
            sources = Sources.user_data(values["md_checkpoint"], values["md_vocab"], values["md_regions"],
                                        values["md_images"], values["md_detector"])
        except ScanVizError as exc:
            show_error(exc)
        else:
            switch_to(sources)


def switch_form() -> None:
    st.subheader("Switch model")
    roots = AllowedRoots.from_env()
    kind = st.segmented_control("Serve", [BUNDLED, UPLOAD, SERVER], key=KIND_KEY, required=True, default=BUNDLED,
                                persist_state="session")
    if kind == BUNDLED:
        bundled_form(roots)
    elif kind == UPLOAD:
        upload_form()
    else:
        server_form(roots)
    if state.SOURCES_KEY in st.session_state and st.button("Back to the default model"):
        del st.session_state[state.SOURCES_KEY]
        uploads = st.session_state.pop(state.UPLOADS_KEY, None)
        if uploads is not None:
            uploads.discard()
        forget_pair()
        st.session_state[OUTCOME_KEY] = "Back to the default model."
        st.rerun()


def render() -> None:
    """The Model page."""
    st.title("Model")
    bundle = state.current_bundle(quiet=True)
    if OUTCOME_KEY in st.session_state:
        st.success(st.session_state.pop(OUTCOME_KEY))
    if bundle is not None:
        show_card(bundle)
    switch_form()


if __name__ == "__main__":
    render()
