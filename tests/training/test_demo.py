"""The demo-model recipe end to end with a tiny budget (the real `train-demo` is not run here)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import vitx_core as vx
from vitx_core import cli
from vitx_core.data import FINDINGS, TRAIN_SEED_OFFSET
from vitx_core.training.demo import (
    DEFAULT_COHORT,
    TEST_SEED_OFFSET,
    VAL_SEED_OFFSET,
    DemoConfig,
    cohort_cases,
    render_phantom_set,
    train_demo,
)

TINY = DemoConfig(img_size=(32, 32), patch_size=8, depth=1, embed_dim=32, num_heads=2,
                  pool_size=16, val_size=8, test_size=8, chunk=8, render_hw=(64, 64), steps=2,
                  batch_size=8, warmup_steps=1, eval_every=1, minutes=None, threads=1,
                  render_workers=0, cohort_limit=5)


def test_seed_ranges_are_disjoint():
    cfg = DemoConfig()
    n_chunks = -(-cfg.pool_size // cfg.chunk)
    assert TRAIN_SEED_OFFSET + 1000 * 499 + n_chunks <= VAL_SEED_OFFSET
    assert VAL_SEED_OFFSET + 1000 * 499 + n_chunks <= TEST_SEED_OFFSET
    assert TRAIN_SEED_OFFSET > 0  # the cohort uses small seeds (0)


def test_phantom_set_is_reproducible_and_labelled():
    spec = vx.PreprocessSpec(size=(32, 32))
    a = render_phantom_set(TEST_SEED_OFFSET, 6, spec, chunk=4, render_hw=(64, 64), progress=False)
    b = render_phantom_set(TEST_SEED_OFFSET, 6, spec, chunk=4, render_hw=(64, 64), progress=False)
    assert a.images.shape == (6, 1, 32, 32) and a.targets.shape == (6, 4)
    assert np.array_equal(a.images.numpy(), b.images.numpy())
    assert float(a.images.min()) >= 0 and float(a.images.max()) <= 1


def test_cohort_cases_match_labels_csv():
    cases = cohort_cases(DEFAULT_COHORT)
    with open(DEFAULT_COHORT / "labels.csv") as fh:
        rows = {r["image"]: r for r in csv.DictReader(fh)}
    assert len(cases) == len(rows) == 48
    for c in cases:
        assert c["labels"] == [int(rows[c["image_id"]][f]) for f in FINDINGS]
        assert set(c["masks"]) == {f for f in FINDINGS if int(rows[c["image_id"]][f])}


def test_train_demo_tiny_end_to_end(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    res = train_demo(out, seed=0, config=TINY, progress=False, command="python -m vitx_core "
                     "train-demo --steps 2")
    assert res.fit.steps == 2
    card = json.loads((out / "model.json").read_text())
    assert card["architecture"] == "timm:vit_tiny_patch16_224"
    assert card["class_names"] == list(FINDINGS) and card["multi_label"] is True
    st = card["metrics"]["synthetic_test"]
    assert st["n_images"] == 8 and set(st["auroc"]) == set(FINDINGS)
    pg = card["metrics"]["cohort_pointing_game"]
    assert pg["n_cases"] == 5 and pg["n_trials"] == sum(pg["trials_per_finding"].values()) > 0
    assert set(pg["hit_rate"]) == set(vx.default_methods())
    assert all(0.0 <= v <= 1.0 for v in pg["hit_rate"].values())
    assert pg["best_explainer"] in pg["hit_rate"]
    readme = (out / "README.md").read_text()
    assert "train-demo --steps 2" in readme and "Pointing game" in readme
    for f in ("report/history.csv", "report/synthetic_test/metrics.json",
              "report/synthetic_test/roc.png", "report/cohort/pointing_game.csv"):
        assert (out / f).is_file(), f
    monkeypatch.setenv("VITX_DEMO_MODEL", str(out))
    ad = vx.load_model("demo")
    assert ad.preprocess.size == (32, 32) and ad.patch_size == (8, 8)
    img = Path(cohort_cases(DEFAULT_COHORT, 1)[0]["path"])
    r = vx.explain(ad, img, target="effusion")
    assert r["gradcam"].heatmap.shape == vx.load_image(img).hw


def test_train_demo_cli_rejects_bad_arguments(monkeypatch, capsys):
    mod = "vitx_core.training.commands"
    if mod not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, mod))
    assert cli.main(["train-demo", "--seed", "600"]) == 2
    assert cli.main(["train-demo", "--minutes", "0"]) == 2
    assert "--minutes" in capsys.readouterr().err


@pytest.mark.parametrize("bad_seed", [-1, 500])
def test_train_demo_seed_range(tmp_path, bad_seed):
    with pytest.raises(ValueError, match="seed"):
        train_demo(tmp_path / "x", seed=bad_seed, config=TINY, progress=False)
