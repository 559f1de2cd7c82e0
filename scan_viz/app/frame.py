"""What pages use from the frame around them: the last-resort error handler and the jump to Explore.

They live here, below the pages, because the shell (:mod:`scan_viz.app.shell`) imports the pages to run them.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import streamlit as st

from scan_viz.app import state
from scan_viz.app.bundle import Bundle
from scan_viz.app.params import ExploreParams, HeadSettings, explore_query
from scan_viz.app.safe_text import show_error
from scan_viz.errors import ScanVizError

EXPLORE = Path(__file__).resolve().parent / "explore.py"
#: What a visitor is told of an error nobody foresaw (its trace is in the server's log).
UNEXPECTED = "an unexpected error; the server's log has the details"
log = logging.getLogger(__name__)


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


def open_in_explore(image_id: str, text: str, settings: HeadSettings, bundle: Bundle) -> None:
    """Jump to Explore showing this pair with the served model and these head settings (its link)."""
    params = ExploreParams(image=image_id, q=text, **state.link_fields(bundle, settings))
    st.switch_page(EXPLORE, query_params=explore_query(params))
