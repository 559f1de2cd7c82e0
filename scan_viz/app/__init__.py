"""The Streamlit app's code: page scripts, the frame around them, shared state and the pure helpers they use.

``app.py`` at the repository root is the entry point (``streamlit run app.py``): :mod:`shell` lays out the four
page scripts (:mod:`explore`, :mod:`retrieve`, :mod:`evaluate`, :mod:`models`), loads the served bundle and draws
the head controls. What the pages compute comes from the library (:mod:`scan_viz.pipeline`,
:mod:`scan_viz.render`); what they share across reruns and users is in :mod:`state`. :mod:`params` (deep links,
head settings), :mod:`bundle` (what is served), :mod:`uploads`, :mod:`views` and :mod:`safe_text` (visitors'
text shown literally, never as Markdown) import no Streamlit.
"""
