"""Retrieve: a sentence -> the gallery's top-K images, an image -> the gallery's top-K captions.

A page script. Ground truth comes from the gallery: an image matches a query that is one of its captions.
Every result opens in Explore with that pair.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from scan_viz.app import state
from scan_viz.app.bundle import NO_MATCH, Bundle, ground_truth_images, search_gallery
from scan_viz.app.params import DEFAULT_K, HeadSettings
from scan_viz.app.safe_text import show_error
from scan_viz.app.shell import open_in_explore
from scan_viz.errors import ScanVizError

QUERY_KEY, K_KEY, IMAGE_KEY, TAB_KEY = "rt_q", "rt_k", "rt_image", "rt_tab"
IMAGE_SEARCH_KEY, EXAMPLES_KEY = "rt_image_search", "rt_examples"
RESULT_COLUMNS = 5
TICK, CROSS = "\u2705", "\u274c"


def text_to_image(bundle: Bundle, settings: HeadSettings, k: int) -> None:
    gallery = bundle.gallery
    text = st.text_input("Sentence", key=QUERY_KEY, placeholder="e.g. a red car on the road",
                         persist_state="session").strip()
    examples = [gallery.captions[int(c)] for c in np.unique(gallery.caption_image, return_index=True)[1][:4]]
    if examples:
        st.pills("Try a gallery caption", examples, key=EXAMPLES_KEY, on_change=state.use_choice,
                 args=(EXAMPLES_KEY, QUERY_KEY), wrap=True)
    if not text:
        st.info("Type a sentence to rank the gallery's images by how well they match it.")
        return
    try:
        results = state.top_images(bundle.key, text, k, settings.key())
    except ScanVizError as exc:
        show_error(exc)
        return
    truth = ground_truth_images(gallery, text)
    if truth:
        found = [rank for rank, (image_id, _) in enumerate(results, 1) if image_id in truth]
        st.caption(f"The sentence is a caption of {len(truth)} gallery image(s); "
                   + (f"first found at rank {found[0]}." if found else f"none in the top {k}."))
    else:
        st.caption("Not a gallery caption, so there is no ground truth to tick.")
    st.session_state["retrieve_results"] = [image_id for image_id, _ in results]
    for start in range(0, len(results), RESULT_COLUMNS):
        columns = st.columns(RESULT_COLUMNS)
        for column, (rank, (image_id, score)) in zip(columns, enumerate(results[start:start + RESULT_COLUMNS],
                                                                         start + 1)):
            with column.container(border=True):
                mark = (TICK if image_id in truth else CROSS) if truth else ""
                st.image(state.thumbnail(bundle.key, image_id), width="stretch")
                st.markdown(f"**#{rank}** {mark} `{image_id}`  \nscore {score:.4f}")
                if st.button("Explore", key=f"rt_open_{image_id}", icon=":material/open_in_new:", width="stretch"):
                    open_in_explore(image_id, text, settings, bundle)


def image_to_text(bundle: Bundle, settings: HeadSettings, k: int) -> None:
    gallery = bundle.gallery
    if not gallery.captions:
        st.info("This gallery has no captions to rank.")
        return
    left, right = st.columns([1, 3], gap="large")
    with left:
        search = st.text_input("Find images by caption words", key=IMAGE_SEARCH_KEY, persist_state="session")
        ids = search_gallery(gallery, search)
        if not ids:
            st.info(NO_MATCH)
            return
        if st.session_state.get(IMAGE_KEY) not in ids:
            st.session_state[IMAGE_KEY] = ids[0]
        image_id = st.selectbox("Gallery image", ids, key=IMAGE_KEY, persist_state="session")
        st.image(state.thumbnail(bundle.key, image_id), width="stretch")
    with right:
        try:
            results = state.top_captions(bundle.key, image_id, k, settings.key())
        except ScanVizError as exc:
            show_error(exc)
            return
        own = {int(c) for c in gallery.caption_indices_of(image_id)}
        found = [rank for rank, (c, _) in enumerate(results, 1) if c in own]
        st.caption(f"{len(own)} of the gallery's {len(gallery.captions)} captions belong to {image_id}; "
                   + (f"first at rank {found[0]}." if found else f"none in the top {k}."))
        for rank, (c, score) in enumerate(results, 1):
            row = st.columns([0.5, 0.4, 6, 1, 1.6], vertical_alignment="center")
            row[0].markdown(f"**#{rank}**")
            row[1].markdown(TICK if c in own else CROSS)
            row[2].markdown(gallery.captions[c])
            row[3].markdown(f"{score:.4f}")
            if row[4].button("Explore", key=f"rt_open_caption_{c}", icon=":material/open_in_new:"):
                open_in_explore(image_id, gallery.captions[c], settings, bundle)


def render() -> None:
    """The Retrieve page."""
    served = state.page_start("Retrieve")
    if served is None:
        return
    bundle, settings = served
    n_max = max(1, min(50, len(bundle.gallery)))
    st.session_state.setdefault(K_KEY, min(DEFAULT_K, n_max))
    st.session_state[K_KEY] = min(int(st.session_state[K_KEY]), n_max)
    st.slider("K (results shown)", 1, max(2, n_max), key=K_KEY, persist_state="session", width=360)
    k = int(st.session_state[K_KEY])
    tabs = st.tabs(["Text \u2192 image", "Image \u2192 text"], key=TAB_KEY, on_change="rerun")
    with tabs[0]:
        if tabs[0].open:
            text_to_image(bundle, settings, k)
    with tabs[1]:
        if tabs[1].open:
            image_to_text(bundle, settings, k)


if __name__ == "__main__":
    render()
