"""vitx_core never imports streamlit/sqlalchemy; db never imports streamlit (fresh interpreters)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules_after_import(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return {m.split(".")[0] for m in out.stdout.split()}


@pytest.mark.parametrize("stmt", ["import vitx_core", "import vitx_core.cli"
                                  if (ROOT / "vitx_core" / "cli.py").exists() else "import vitx_core"])
def test_vitx_core_has_no_ui_or_db_imports(stmt):
    mods = _modules_after_import(stmt)
    assert "streamlit" not in mods
    assert "sqlalchemy" not in mods


def test_db_does_not_import_streamlit_or_torch():
    mods = _modules_after_import("import db")
    assert "streamlit" not in mods
    assert "torch" not in mods


def test_importing_vitx_core_sets_hub_offline():
    code = ("import os; os.environ.pop('HF_HUB_OFFLINE', None); import vitx_core; "
            "import huggingface_hub.constants as c; print(os.environ['HF_HUB_OFFLINE'], c.HF_HUB_OFFLINE)")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.split() == ["1", "True"]
