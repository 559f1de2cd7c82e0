"""Text from a visitor (typed, uploaded, in a link, in a file name) shown as text, never as Markdown or HTML.

Streamlit renders alerts, captions, labels, help and option labels as Markdown: a link's value like
``[Session expired](https://evil.example)`` would become a clickable link in the app's own warning box, and
``![t](https://evil.example/t.png)`` would make the visitor's browser fetch a remote image. Backslash escapes are
not enough: Streamlit's Markdown also turns bare URLs into links and ``:shortcodes:`` into emoji after the
escapes are resolved. A code span is shown verbatim (no emphasis, links, images, HTML, emoji, colours or maths),
so :func:`literal` wraps a value in one. (Plain-text sinks need nothing: ``st.text``, ``st.code``, text inputs,
selectbox options, dataframes. Plotly labels are HTML-escaped where the figures are built.)
"""
from __future__ import annotations

import re

_BACKTICK_RUNS = re.compile(r"`+")


def literal(value: object) -> str:
    """Markdown that shows ``str(value)`` verbatim (on one line), as a code span.

    The fence is one backtick longer than the longest run of backticks in the value, and padded with a space
    when the value starts or ends with a backtick or a space (CommonMark strips one such space each side).
    """
    text = " ".join(str(value).splitlines())
    if not text:
        return "` `"
    fence = "`" * (max((len(run) for run in _BACKTICK_RUNS.findall(text)), default=0) + 1)
    if text[0] in "` " or text[-1] in "` ":
        text = f" {text} "
    return f"{fence}{text}{fence}"


def show_error(error: Exception | str) -> None:
    """A user error (ScanVizError's message, which may quote a visitor's value) as one literal ``st.error`` line."""
    import streamlit as st

    st.error(literal(error))
