"""The frame around every page: the four pages, the served bundle, Explore's deep link, the head controls."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from scan_viz.app import fair, state, upload_guard
from scan_viz.app.bundle import Bundle
from scan_viz.app.params import (ExploreParams, HeadSettings, explore_query, link_changed, normalise_query,
                                 parse_explore_query)

HERE = Path(__file__).resolve().parent
EXPLORE = HERE / "explore.py"
#: The page icon: a region outlined as the word panels outline the strongest one.
FAVICON = HERE.parent / "assets" / "favicon.png"


def pages() -> list:
    """The app's pages; Explore is the default (its deep links are the root URL's)."""
    return [
        st.Page(EXPLORE, title="Explore", icon=":material/image_search:", url_path="explore",
                default=True),
        st.Page(HERE / "retrieve.py", title="Retrieve", icon=":material/manage_search:", url_path="retrieve"),
        st.Page(HERE / "evaluate.py", title="Evaluate", icon=":material/analytics:", url_path="evaluate"),
        st.Page(HERE / "models.py", title="Model", icon=":material/model_training:", url_path="model"),
    ]


def before_page(page) -> None:
    """Apply a new link (model, head settings and, on Explore, the pair), load the served bundle (errors shown
    once, here) and draw the head controls.

    The link is read before the controls are drawn because it sets them, and Streamlit refuses to change a
    widget's value once the widget exists in a run. A reload is a new session, so it re-applies the URL.
    """
    fair.start_run()
    upload_guard.start_run()
    query = st.query_params.to_dict()
    params = None
    if link_changed(query, st.session_state.get(state.LINK_KEY)):
        params, notes = parse_explore_query(query)
        if params.model is not None:
            state.apply_link_model(params.model, notes)
        st.session_state[state.LINK_KEY] = normalise_query(query)
    bundle = state.current_bundle()
    if params is not None:
        if bundle is not None:
            state.apply_link_settings(bundle, params, notes)
            if page.title == "Explore":
                from scan_viz.app.explore import apply_deep_link

                apply_deep_link(params)
        st.session_state[state.NOTES_KEY] = notes
    if bundle is not None:
        state.head_controls(bundle)


def after_page(page) -> None:
    """Write the served model and the head settings into the URL of a page that does not write its own link
    (Explore writes the pair too), so a reload or a shared link restores them."""
    upload_guard.end_run()
    if page.title == "Explore":
        return
    bundle = state.current_bundle(quiet=True)
    if bundle is not None:
        state.write_link(state.link_fields(bundle, state.current_settings(bundle)))


def open_in_explore(image_id: str, text: str, settings: HeadSettings, bundle: Bundle) -> None:
    """Jump to Explore showing this pair with the served model and these head settings (its link)."""
    params = ExploreParams(image=image_id, q=text, **state.link_fields(bundle, settings))
    st.switch_page(EXPLORE, query_params=explore_query(params))
