"""The frame around every page: the four pages, the served bundle, Explore's deep link, the head controls."""
from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import streamlit as st

from scan_viz.app import fair, state, upload_guard
from scan_viz.app.bundle import Bundle
from scan_viz.app.params import (ExploreParams, HeadSettings, explore_query, link_changed, normalise_query,
                                 own_head, parse_explore_query)
from scan_viz.app.safe_text import show_error
from scan_viz.errors import ScanVizError

HERE = Path(__file__).resolve().parent
EXPLORE = HERE / "explore.py"
LEARN = HERE / "learn.py"
#: The page icon: a region outlined as the word panels outline the strongest one.
FAVICON = HERE.parent / "assets" / "favicon.png"
#: What a visitor is told of an error nobody foresaw (its trace is in the server's log).
UNEXPECTED = "an unexpected error; the server's log has the details"
log = logging.getLogger(__name__)


def pages() -> list:
    """The app's pages; Explore is the default (its deep links are the root URL's)."""
    return [
        st.Page(EXPLORE, title="Explore", icon=":material/image_search:", url_path="explore",
                default=True),
        st.Page(HERE / "retrieve.py", title="Retrieve", icon=":material/manage_search:", url_path="retrieve"),
        st.Page(HERE / "evaluate.py", title="Evaluate", icon=":material/analytics:", url_path="evaluate"),
        st.Page(HERE / "models.py", title="Model", icon=":material/model_training:", url_path="model"),
        st.Page(LEARN, title="Learn", icon=":material/school:", url_path="learn"),
    ]


def run_page(page) -> None:
    """The frame, then the page: a user error that escapes a page is its one line, and any other error (a bug,
    a file no reader foresaw) is logged with its trace while the visitor gets one line, never Streamlit's
    exception box (a traceback, and buttons that link to outside sites).

    Streamlit stops and reruns a script (``st.stop``, ``st.rerun``, ``st.switch_page``) by raising exceptions
    derived from BaseException, not Exception: they pass through untouched.
    """
    try:
        with last_resort(page.title):
            before_page(page)
            page.run()
            after_page(page)
    finally:  # also after st.stop or a rerun: the uploaders drawn so far are the session's caps
        upload_guard.end_run()


@contextlib.contextmanager
def last_resort(where: str):
    """A user error inside is its one line; any other error is logged with its trace and the visitor gets one line.

    Around every page (:func:`run_page`) and inside every ``st.fragment`` (:func:`guarded`): Streamlit draws its
    exception box inside a fragment before the error reaches the page's handler.
    """
    try:
        yield
    except ScanVizError as exc:
        show_error(exc)
    except Exception:  # noqa: BLE001 - the last resort: nothing below may show a visitor a traceback
        log.exception("scan-viz: unexpected error on the %s page", where)
        show_error(f"this page stopped: {UNEXPECTED}. Reload the page, or choose another model on the Model page")


def guarded(where: str):
    """Decorate a function that ``st.fragment`` reruns on its own with :func:`last_resort` (put it under the
    ``@st.fragment``)."""
    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with last_resort(where):
                return func(*args, **kwargs)
        return wrapper
    return decorate


def before_page(page) -> None:
    """Apply a new link (model and gallery, head settings and, on Explore, the pair), load the served bundle
    (errors shown once, here) and draw the head controls.

    The link is read before the controls are drawn because it sets them, and Streamlit refuses to change a
    widget's value once the widget exists in a run. A reload is a new session, so it re-applies the URL.
    """
    fair.start_run()
    upload_guard.start_run()
    query = st.query_params.to_dict()
    params = None
    if link_changed(query, st.session_state.get(state.LINK_KEY)):
        params, notes = parse_explore_query(query)
        if params.model is not None or params.gallery is not None:
            state.apply_link_model(params.model, notes, params.gallery)
        st.session_state[state.LINK_KEY] = normalise_query(query)
    bundle = state.current_bundle()
    if params is not None:
        if bundle is not None:
            state.apply_link_settings(bundle, params, notes)
            if page.title == "Retrieve":
                from scan_viz.app.retrieve import apply_link

                apply_link(params)
            if page.title == "Explore":
                from scan_viz.app.explore import apply_deep_link

                apply_deep_link(params, own_head(bundle.model.config))
            elif page.title == "Learn":
                from scan_viz.app.learn import apply_deep_link as apply_learn_link

                apply_learn_link(params)
        st.session_state[state.NOTES_KEY] = notes
    if bundle is not None:
        state.head_controls(bundle)


def after_page(page) -> None:
    """Write the served model and the head settings into the URL of a page that does not write its own link
    (Explore writes the pair too, Retrieve its query, Learn its step), so a reload or a shared link restores
    them."""
    if page.title in ("Explore", "Retrieve", "Learn"):  # each writes its own view into the link
        return
    bundle = state.current_bundle(quiet=True)
    if bundle is not None:
        state.write_link(state.link_fields(bundle, state.current_settings(bundle)))


def open_in_explore(image_id: str, text: str, settings: HeadSettings, bundle: Bundle) -> None:
    """Jump to Explore showing this pair with the served model and these head settings (its link)."""
    params = ExploreParams(image=image_id, q=text, **state.link_fields(bundle, settings))
    st.switch_page(EXPLORE, query_params=explore_query(params))
