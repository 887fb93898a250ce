"""Streamlit entry point: `streamlit run app.py` (or `make app`, `workbench app`); serves on 127.0.0.1.

Pages are found in app_pages/ (one file a page, thin: widgets -> an analysis -> its figures). Pages
of back-ends that are not installed are skipped, so the shell always starts.
"""

from pathlib import Path

import streamlit as st

st.set_page_config(page_title="Workbench", layout="wide")

PAGES_DIR = Path(__file__).parent / "app_pages"


def _title(path: Path) -> str:
    return path.stem.split("_", 1)[1].replace("_", " ") if "_" in path.stem else path.stem


def _number(path: Path) -> int:
    return int(path.stem.split("_", 1)[0])


# pages are numbered files: 0 is Home, 1..98 the analyses (in that order), 99 the Cache tool
home = st.Page(str(PAGES_DIR / "0_Home.py"), title="Home", default=True)
numbered = sorted((p for p in PAGES_DIR.glob("*_*.py") if p.stem.split("_", 1)[0].isdigit()), key=_number)
analysis_pages = [st.Page(str(p), title=_title(p)) for p in numbered if 0 < _number(p) < 99]
tools = [st.Page(str(PAGES_DIR / "99_Cache.py"), title="Cache")]
st.navigation({"": [home], "Analyses": analysis_pages, "Tools": tools}).run()
