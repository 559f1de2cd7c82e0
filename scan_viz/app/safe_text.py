"""Text from a visitor or a file (typed, uploaded, in a link, in a file name, in a checkpoint or config) shown as
text, never as Markdown or HTML, and never reordered.

Streamlit renders alerts, captions, labels, help, option labels and ``st.table`` cells as Markdown: a link's
value like ``[Session expired](https://evil.example)`` would become a clickable link in the app's own warning box,
and ``![t](https://evil.example/t.png)`` would make the visitor's browser fetch a remote image. Backslash escapes
are not enough: Streamlit's Markdown also turns bare URLs into links and ``:shortcodes:`` into emoji after the
escapes are resolved. A code span is shown verbatim (no emphasis, links, images, HTML, emoji, colours or maths),
so :func:`literal` wraps a value in one. Plain-text sinks (``st.text``, ``st.code``, selectbox options,
dataframes) take :func:`plain`. Plotly labels are HTML-escaped where the figures are built.

Both also neutralise Unicode bidirectional controls (:data:`BIDI_CONTROLS`): a right-to-left override in a
sentence or a file's string would reorder the rest of the line it is shown in (a caption, a message, a table
cell), so each is shown as a visible ``[U+202E]``. A sentence the model reads has them removed instead
(:func:`without_bidi`): they are no words.
"""
from __future__ import annotations

import re

_BACKTICK_RUNS = re.compile(r"`+")
#: Embeddings, overrides and their pop (U+202A-202E), isolates (U+2066-2069), the LRM/RLM marks and the Arabic
#: letter mark: each changes the order in which the text around it is displayed.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_SHOWN = str.maketrans({c: f"[U+{ord(c):04X}]" for c in BIDI_CONTROLS})
_REMOVED = str.maketrans({c: None for c in BIDI_CONTROLS})


def plain(value: object) -> str:
    """``str(value)`` for a plain-text sink, each bidirectional control shown as a visible ``[U+202E]``."""
    return str(value).translate(_SHOWN)


def without_bidi(text: str) -> str:
    """``text`` without bidirectional controls: a sentence as the model reads it and the sentence box shows it."""
    return text.translate(_REMOVED)


def literal(value: object) -> str:
    """Markdown that shows ``plain(value)`` verbatim (on one line), as a code span.

    The fence is one backtick longer than the longest run of backticks in the value, and padded with a space
    when the value starts or ends with a backtick or a space (CommonMark strips one such space each side).
    """
    text = " ".join(plain(value).splitlines())
    if not text:
        return "` `"
    fence = "`" * (max((len(run) for run in _BACKTICK_RUNS.findall(text)), default=0) + 1)
    if text[0] in "` " or text[-1] in "` ":
        text = f" {text} "
    return f"{fence}{text}{fence}"


def show_error(error: Exception | str) -> None:
    """A user error (ScanVizError's message, which may quote a visitor's value) as one literal ``st.error`` line;
    a file the visitor uploaded is named as they named it, never by its path on the server."""
    import streamlit as st

    from scan_viz.app.user_files import as_uploaded

    st.error(literal(as_uploaded(str(error))))
