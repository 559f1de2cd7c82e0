"""Retrieve: a sentence -> the gallery's top-K images, an image -> the gallery's top-K captions.

A page script. Ground truth comes from the gallery: an image matches a query that is one of its captions.
When the gallery's captions carry claims (the generated world), every result is also checked with the truth
check (:mod:`scan_viz.evaluation.truth`): a caption may be true of images other than its own, and a false one says why.
Every result opens in Explore with that pair.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from scan_viz.app import state
from scan_viz.app.bundle import NO_MATCH, NO_PICTURES, Bundle, ground_truth_images, search_gallery
from scan_viz.app.frame import open_in_explore
from scan_viz.app.params import DEFAULT_K, ExploreParams, HeadSettings
from scan_viz.app.safe_text import literal, plain, show_error
from scan_viz.errors import ScanVizError
from scan_viz.evaluation.truth import Verdict, caption_holds
from scan_viz.gallery import Gallery

QUERY_KEY, K_KEY, IMAGE_KEY, TAB_KEY = "rt_q", "rt_k", "rt_image", "rt_tab"
IMAGE_SEARCH_KEY, EXAMPLES_KEY = "rt_image_search", "rt_examples"
#: Result cards per row: 3 keep ids, scores and the Explore button on their lines at 1,024 px (5 broke them)
RESULT_COLUMNS = 3
#: Truth marks as coloured badges of text with a check or cross mark that DejaVu Sans has (Debian's Chromium has no
#: emoji font: the emoji marks were one empty box for own and false alike).
TICK, ALSO_TRUE, CROSS = ":green-badge[\u2713 own]", ":blue-badge[\u2713 true]", ":red-badge[\u2717 false]"
LEGEND = (f"{TICK} caption/image \u00b7 {ALSO_TRUE}: also true, not its own, but every claim of the caption holds "
          f"for the image \u00b7 {CROSS}, with what is wrong")
NO_CLAIMS = "This gallery's captions carry no claims, so only each caption's own image is ticked."


def judge(gallery: Gallery, claims: dict[str, Any] | None, image_index: int, own: bool) -> tuple[str, Verdict | None]:
    """The mark of one (caption, image) result: own (tick), also true, false (cross, with its verdict), or no mark."""
    if own:
        return TICK, None
    if claims is None:
        return CROSS, None
    verdict = caption_holds(claims, gallery.scenes[image_index])
    return (ALSO_TRUE if verdict.holds else CROSS), verdict


def show_reasons(verdict: Verdict | None) -> None:
    """What a false result gets wrong, one line per failed claim (plain text: it quotes gallery data)."""
    if verdict is not None and not verdict.holds:
        st.text(plain("\n".join(verdict.reasons)))


def found_by(stage1_rank: int | None) -> str:
    """Which stage found a result: exhaustive scoring, or stage 1 at some rank then re-scored by the head."""
    return "exhaustive" if stage1_rank is None else f"stage 1 #{stage1_rank} \u2192 re-ranked"


TABS = {"text": "Text \u2192 image", "image": "Image \u2192 text"}


def apply_link(params: ExploreParams) -> None:
    """Copy a new link's query into the page's controls: ``search`` (the tab), ``q``, ``image`` and ``k``."""
    if params.search is not None:
        st.session_state[TAB_KEY] = TABS[params.search]
    if params.q is not None:
        st.session_state[QUERY_KEY] = params.q
    if params.image is not None:
        st.session_state[IMAGE_KEY] = params.image
        st.session_state[IMAGE_SEARCH_KEY] = ""  # the image list unfiltered, so the linked image is in it
    if params.k is not None:
        st.session_state[K_KEY] = params.k


def write_link(bundle: Bundle, settings: HeadSettings, k: int) -> None:
    """The page's query into the URL: the open tab, its sentence or image, K when not the default."""
    by_image = st.session_state.get(TAB_KEY) == TABS["image"]
    text = (st.session_state.get(QUERY_KEY) or "").strip()
    state.write_link({"search": "image" if by_image else None,
                      "q": None if by_image or not text else text,
                      "image": st.session_state.get(IMAGE_KEY) if by_image else None,
                      "k": k if k != DEFAULT_K else None, **state.link_fields(bundle, settings)})


def text_to_image(bundle: Bundle, settings: HeadSettings, k: int) -> None:
    gallery = bundle.gallery
    text = st.text_input("Sentence", key=QUERY_KEY, placeholder="e.g. a red car on the road",
                         persist_state="session", on_change=state.drop_bidi, args=(QUERY_KEY,)).strip()
    examples = [gallery.captions[int(c)] for c in np.unique(gallery.caption_image, return_index=True)[1][:4]]
    if examples:
        st.pills("Try a gallery caption", examples, key=EXAMPLES_KEY, on_change=state.use_choice,
                 args=(EXAMPLES_KEY, QUERY_KEY), wrap=True, format_func=literal)
    if not text:
        st.info("Type a sentence to rank the gallery's images by how well they match it.")
        return
    try:
        results = state.top_images(bundle.key, text, k, settings.key())
    except ScanVizError as exc:
        show_error(exc)
        return
    truth = ground_truth_images(gallery, text)
    claims = gallery.claims_of(text) if truth else None
    marks = {image_id: judge(gallery, claims, gallery.index_of(image_id), image_id in truth)
             for image_id, _, _ in results} if truth else {}
    if truth:
        found = [rank for rank, (image_id, _, _) in enumerate(results, 1) if image_id in truth]
        line = (f"The sentence is a caption of {len(truth)} gallery image(s); "
                + (f"first found at rank {found[0]}." if found else f"none in the top {k}."))
        if claims is not None:
            n_true = int(sum(mark != CROSS for mark, _ in marks.values()))
            line += f" It is true of {n_true} of the top {len(results)}. {LEGEND}."
        else:
            line += " " + NO_CLAIMS
        st.caption(line)
    else:
        st.caption("Not a gallery caption: a typed sentence carries no claims and belongs to no image, so the "
                   "results are neither ticked nor checked for truth.")
    st.session_state["retrieve_results"] = [image_id for image_id, _, _ in results]
    st.session_state["retrieve_marks"] = [marks[image_id][0] if truth else "" for image_id, _, _ in results]
    for start in range(0, len(results), RESULT_COLUMNS):
        columns = st.columns(RESULT_COLUMNS)
        rows = enumerate(results[start:start + RESULT_COLUMNS], start + 1)
        for column, (rank, (image_id, score, stage1_rank)) in zip(columns, rows):
            with column.container(border=True):
                mark, verdict = marks.get(image_id, ("", None))
                if gallery.has_image(image_id):
                    st.image(state.thumbnail(bundle.key, image_id), width="stretch")
                st.markdown(f"**#{rank}** {mark} {literal(image_id)}  \nscore {score:.4f}  \n{found_by(stage1_rank)}")
                show_reasons(verdict)
                if st.button("Explore", key=f"rt_open_{image_id}", icon=":material/open_in_new:", width="stretch"):
                    open_in_explore(image_id, text, settings, bundle)


def image_to_text(bundle: Bundle, settings: HeadSettings, k: int) -> None:
    gallery = bundle.gallery
    if not gallery.captions:
        st.info("This gallery has no captions to rank.")
        return
    left, right = st.columns([2, 5], gap="medium")  # the id list wide enough for an id at 1,024 px
    with left:
        search = st.text_input("Find images by caption words", key=IMAGE_SEARCH_KEY, persist_state="session")
        ids = search_gallery(gallery, search)
        if not ids:
            st.info(NO_MATCH)
            return
        if st.session_state.get(IMAGE_KEY) not in ids:
            st.session_state[IMAGE_KEY] = ids[0]
        image_id = st.selectbox("Gallery image", ids, key=IMAGE_KEY, persist_state="session", format_func=plain)
        if gallery.has_image(image_id):
            st.image(state.thumbnail(bundle.key, image_id), width="stretch")
    with right:
        try:
            results = state.top_captions(bundle.key, image_id, k, settings.key())
        except ScanVizError as exc:
            show_error(exc)
            return
        own = {int(c) for c in gallery.caption_indices_of(image_id)}
        index = gallery.index_of(image_id)
        marks = [judge(gallery, gallery.caption_claims[c], index, c in own) for c, _ in results]
        found = [rank for rank, (c, _) in enumerate(results, 1) if c in own]
        line = (f"{len(own)} of the gallery's {len(gallery.captions)} captions belong to {literal(image_id)}; "
                + (f"first at rank {found[0]}." if found else f"none in the top {k}."))
        if gallery.has_claims:
            n_true = sum(mark != CROSS for mark, _ in marks)
            line += f" {n_true} of the top {len(results)} are true of it. {LEGEND}."
        else:
            line += " " + NO_CLAIMS
        st.caption(line)
        st.session_state["retrieve_marks"] = [mark for mark, _ in marks]
        for rank, ((c, score), (mark, verdict)) in enumerate(zip(results, marks), 1):
            # two columns, the rank, mark and score on one line above the caption: five narrow columns broke
            # "#1" and the score over two lines and shrank the button to its icon at 1,024 px
            text, action = st.columns([3, 1.5], vertical_alignment="center")
            with text:
                st.markdown(f"**#{rank}** {mark} \u00b7 score {score:.4f}")
                st.text(plain(gallery.captions[c]))
                show_reasons(verdict)
            if action.button("Explore", key=f"rt_open_caption_{c}", icon=":material/open_in_new:", width="stretch"):
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
    if not bundle.gallery.has_images:
        st.info(NO_PICTURES)
    tabs = st.tabs(list(TABS.values()), key=TAB_KEY, on_change="rerun")
    with tabs[0]:
        if tabs[0].open:
            text_to_image(bundle, settings, k)
    with tabs[1]:
        if tabs[1].open:
            image_to_text(bundle, settings, k)
    write_link(bundle, settings, k)


if __name__ == "__main__":
    render()
