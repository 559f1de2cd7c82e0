"""Model: the served model's card, and switching to another bundled model or to a user's checkpoint and data.

A page script. A user's data is an official SCAN checkpoint (or a scan-viz model folder), its vocabulary,
region features with boxes (bottom-up-attention TSV or a folder of ``.npz``) and the folder of the images
they were extracted from, all given as paths on the machine that runs the app.
"""
from __future__ import annotations

import math

import streamlit as st

from scan_viz.app import state
from scan_viz.app.bundle import Bundle, Sources, bundled_metrics, bundled_models, model_card
from scan_viz.app.explore import forget_pair
from scan_viz.app.safe_text import literal, show_error
from scan_viz.app.views import recall_rows
from scan_viz.errors import ScanVizError
from scan_viz.pipeline import DEFAULT_GALLERY

KIND_KEY = "md_kind"
BUNDLED, USER = "A bundled model", "Your checkpoint and data"
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


def show_card(bundle: Bundle) -> None:
    sources = bundle.sources
    st.subheader(f"Serving {literal(sources.model_label())}")
    card = model_card(bundle)
    served = card.pop("Served")
    columns = st.columns(len(card))
    for column, (title, values) in zip(columns, card.items()):
        with column:
            st.markdown(f"**{title}**")
            st.table({"value": {k: str(v) for k, v in values.items()}}, hide_header=True)
    st.markdown("**Served**")
    st.table({"value": {k: str(v) for k, v in served.items()}}, hide_header=True, width=760)
    metrics = bundled_metrics(sources.model) if sources.model in bundled_models() else None
    if metrics:
        st.markdown("**Metrics on the bundled gallery** (from `pretrained/metrics.json`)")
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


def switch_to(sources: Sources) -> None:
    """Load ``sources`` and serve them to this user; any problem is one line and the old model stays."""
    try:
        bundle = state.load_sources(sources)
    except ScanVizError as exc:
        show_error(exc)
        return
    except OSError as exc:  # a path the operating system refuses (permissions, a device): still the user's
        show_error(f"cannot read the files: {exc.strerror or exc}")
        return
    st.session_state[state.SOURCES_KEY] = sources
    forget_pair()
    st.session_state[OUTCOME_KEY] = (f"Now serving {literal(sources.model_label())} on "
                                    f"{literal(bundle.gallery.name)} "
                                    f"({len(bundle.gallery)} images).")
    st.rerun()


def switch_form() -> None:
    st.subheader("Switch model")
    kind = st.segmented_control("Serve", [BUNDLED, USER], key=KIND_KEY, required=True, default=BUNDLED,
                                persist_state="session")
    if kind == BUNDLED:
        names = bundled_models()
        if not names:
            st.info("No bundled model yet: build them with `python -m scan_viz.train.bundle`, or load your own.")
            return
        with st.form("md_bundled"):
            name = st.selectbox("Model", names, key="md_bundled_name")
            served = state.active_sources()
            gallery = st.text_input("Gallery folder", value=served.gallery or str(DEFAULT_GALLERY))
            detector = st.text_input("Detector folder (optional)", value=served.detector or "",
                                     help="Leave empty for the detector the model's config names.")
            if st.form_submit_button("Load", type="primary"):
                switch_to(Sources(model=name, gallery=gallery.strip() or str(DEFAULT_GALLERY),
                                  detector=detector.strip() or None))
    else:
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
    if state.SOURCES_KEY in st.session_state and st.button("Back to the default model"):
        del st.session_state[state.SOURCES_KEY]
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
