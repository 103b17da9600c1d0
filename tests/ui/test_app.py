"""The dashboard entry point runs headless and shows every registered explainer."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

import vitx_core as vx

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")


def test_overview_page_lists_the_registry():
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "vitx" in at.title[0].value
    table = at.dataframe[0].value
    assert list(table["key"]) == [i.name for i in vx.list_explainers()]
