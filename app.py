"""Streamlit entry point: `streamlit run app.py` (or `make app`, `workbench app`); serves on 127.0.0.1.

Pages are found in pages/ (one file a page, thin: widgets -> an analysis -> its figures). Pages
of back-ends that are not installed are skipped, so the shell always starts.
"""

from pathlib import Path

import streamlit as st

st.set_page_config(page_title="Workbench", layout="wide")

PAGES_DIR = Path(__file__).parent / "pages"


def _title(path: Path) -> str:
    return path.stem.split("_", 1)[1].replace("_", " ") if "_" in path.stem else path.stem


home = st.Page(str(PAGES_DIR / "0_Home.py"), title="Home", default=True)
analysis_pages = [st.Page(str(p), title=_title(p)) for p in sorted(PAGES_DIR.glob("[1-8]_*.py"))]
tools = [st.Page(str(PAGES_DIR / "9_Cache.py"), title="Cache")]
st.navigation({"": [home], "Analyses": analysis_pages, "Tools": tools}).run()
