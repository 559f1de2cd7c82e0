"""scan-viz's Streamlit app: ``streamlit run app.py`` (serves the bundled model and gallery by default).

Set SCAN_VIZ_MODEL, SCAN_VIZ_GALLERY and SCAN_VIZ_DETECTOR to serve others; the pages live in scan_viz/app/.
"""
import streamlit as st

from scan_viz.app import shell

# a local icon: Streamlit fetches a ":material/...:" page icon from fonts.gstatic.com, and the app makes no
# request off its own server
st.set_page_config(page_title="scan-viz: SCAN attention explorer", page_icon=str(shell.FAVICON), layout="wide")
page = st.navigation(shell.pages(), position="top")
shell.run_page(page)  # the frame around the page, and the last resort for an error nobody foresaw
