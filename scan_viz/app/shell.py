"""The frame around every page: the four pages, the served bundle, Explore's deep link, the head controls."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from scan_viz.app import state
from scan_viz.app.bundle import Bundle
from scan_viz.app.params import ExploreParams, HeadSettings, explore_query

HERE = Path(__file__).resolve().parent
EXPLORE = HERE / "explore.py"


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
    """Load the served bundle (errors shown once, here), apply Explore's deep link, draw the head controls.

    The deep link is read before the controls are drawn because it sets two of them (``dir``, ``head``), and
    Streamlit refuses to change a widget's value once the widget exists in a run.
    """
    bundle = state.current_bundle()
    if bundle is None:
        return
    if page.title == "Explore":
        from scan_viz.app.explore import apply_deep_link

        apply_deep_link(bundle)
    state.head_controls(bundle)


def open_in_explore(image_id: str, text: str, settings: HeadSettings, bundle: Bundle) -> None:
    """Jump to Explore showing this pair (its deep link, with the head settings that differ from the model's)."""
    defaults = state.model_settings(bundle)
    params = ExploreParams(image=image_id, q=text,
                           dir=settings.direction if settings.direction != defaults.direction else None,
                           head=settings.head if settings.head != defaults.head else None)
    st.switch_page(EXPLORE, query_params=explore_query(params))
