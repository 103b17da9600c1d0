"""vitx review dashboard: router and frame (pages are registered explicitly with st.navigation).

The review pages (cohort, compare, metrics, review, agreement) arrive with the dashboard issue;
until then the app shows the overview page: the explainers vitx computes and their options.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import streamlit as st

st.set_page_config(page_title="vitx review", layout="wide")
nav = st.navigation([st.Page("pages/overview.py", title="Overview", default=True)])
nav.run()
