"""End-to-end benchmark on a tiny cohort: oracle IoU 1 through the whole pipeline, baselines,
summary with paired CIs, resume after a kill (byte-identical CSVs), cache reuse, model sweep."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vitx_core.benchmark import (
    PER_CASE_COLUMNS,
    SUMMARY_COLUMNS,
    BenchmarkError,
    load_benchmark_config,
    run_benchmark,
)
from vitx_core.benchmark import runner as runner_mod

from .conftest import EFFUSION_GRID, NODULE_GRID, make_oracle, write_config


def oracle_methods():
    shifted = np.roll(EFFUSION_GRID, 1, axis=0)  # one patch down
    return [make_oracle("oracle", EFFUSION_GRID), make_oracle("shifted", shifted),
            make_oracle("nodule_oracle", NODULE_GRID)]


@pytest.fixture
def cfg_path(tmp_path, tiny_cohort, model_dirs):
    return write_config(tmp_path / "vitx.toml", tiny_cohort, model_dirs[0])


def _rows(df, **kw):
    m = np.ones(len(df), dtype=bool)
    for k, v in kw.items():
        m &= (df[k] == v).to_numpy()
    return df[m]


def test_oracle_heatmap_scores_iou_1_through_the_pipeline(tmp_path, cfg_path):
    res = run_benchmark(cfg_path, tmp_path / "out", methods=oracle_methods(), progress=False)
    pc = pd.read_csv(res.per_case_csv, dtype=str, keep_default_na=False)
    assert tuple(pc.columns) == PER_CASE_COLUMNS
    eff = _rows(pc, finding="effusion", metric="iou", rule="fixed:0.5")
    oracle = eff[eff["method"] == "oracle"]["value"].astype(float)
    assert len(oracle) == 4 and (oracle == 1.0).all()  # exactly 1 on every positive case
    shifted = eff[eff["method"] == "shifted"]["value"].replace("", "nan").astype(float)
    assert (shifted.fillna(0) < 0.5).all()
    hits = _rows(pc, finding="effusion", metric="hit", rule="", method="oracle")["value"]
    assert (hits.astype(float) == 1.0).all()
    # the nodule map scored against the nodule GT: also exact
    nod = _rows(pc, finding="nodule", metric="iou", rule="fixed:0.5", method="nodule_oracle")
    assert (nod["value"].astype(float) == 1.0).all() and len(nod) == 2
    # protocol columns: IoU rows carry tp_only, hit rows the tolerance, threshold-free neither
    r = eff.iloc[0]
    assert r["tp_only"] == "true" and r["threshold"] == "0.5" and r["tolerance_px"] == ""
    assert _rows(pc, metric="hit", rule="").iloc[0]["tolerance_px"] == "0"
    assert set(pc["pred_label"]) <= {"nodule", "effusion", "cardiomegaly"}
    # only present findings are scored (img_d has none)
    assert pc["case_id"].nunique() == 4

    s = pd.read_csv(res.summary_csv, dtype=str, keep_default_na=False)
    assert tuple(s.columns) == SUMMARY_COLUMNS
    row = _rows(s, finding="effusion", method="oracle", metric="iou", rule="fixed:0.5").iloc[0]
    assert float(row["mean"]) == 1.0 and row["n"] == "4" and float(row["ci_low"]) == 1.0
    # every table has the baselines, and the gain over the best one with a paired CI
    kinds = set(_rows(s, finding="(all)", metric="pxap")["method"])
    assert {"uniform", "centre_gaussian", "prior"} <= kinds
    assert row["baseline"] in {"uniform", "centre_gaussian", "prior"}
    assert float(row["diff_ci_low"]) <= float(row["diff_vs_baseline"]) <= float(row["diff_ci_high"])
    # the leave-one-out prior of identical masks is itself an oracle -> best baseline on AUROC
    au = _rows(s, finding="effusion", metric="auroc", kind="baseline")
    assert au.sort_values("mean").iloc[-1]["method"] == "prior"
    # uniform map: constant -> thresholded IoU undefined (NaN, n = 0), PxAP = area fraction
    u = _rows(s, finding="effusion", method="uniform", metric="iou", rule="otsu").iloc[0]
    assert u["mean"] == "" and u["n"] == "0"
    upx = _rows(s, finding="effusion", method="uniform", metric="pxap").iloc[0]
    assert float(upx["mean"]) == pytest.approx(0.5, abs=1e-4)  # area fraction of the band
    assert res.exit_code == 0 and res.best_model == "m0"
    assert "best model: m0" in res.format_table()


def test_full_set_and_predicted_targets(tmp_path, cfg_path):
    from dataclasses import replace

    bc = load_benchmark_config(cfg_path)
    res = run_benchmark(bc, tmp_path / "all", methods=oracle_methods()[:1], progress=False,
                        targets="all", baselines=("uniform",), n_boot=50)
    pc = pd.read_csv(res.per_case_csv, dtype=str, keep_default_na=False)
    assert pc["case_id"].nunique() == 5  # the normal case is scored too
    absent = pc[pc["gt_frac"] == "0"]
    assert set(absent["finding"]) == {"nodule", "effusion", "cardiomegaly"}
    # empty GT: NaN everywhere (never a hit, never IoU 0 under tp_only) ...
    assert (absent["value"] == "").all()
    # ... except IoU in full mode: the oracle's non-empty map on an absent finding is a FP -> 0
    full = replace(bc, vitx=replace(bc.vitx, evaluation=replace(bc.vitx.evaluation,
                                                                 true_positive_only=False)))
    res_f = run_benchmark(full, tmp_path / "full", methods=oracle_methods()[:1], progress=False,
                          targets="all", baselines=("uniform",), n_boot=50)
    pf = pd.read_csv(res_f.per_case_csv, dtype=str, keep_default_na=False)
    fp = _rows(pf, gt_frac="0", finding="effusion", method="oracle", metric="iou", rule="fixed:0.5")
    assert len(fp) == 1 and fp.iloc[0]["value"] == "0" and fp.iloc[0]["tp_only"] == "false"
    assert (_rows(pf, gt_frac="0", metric="hit")["value"] == "").all()
    res2 = run_benchmark(cfg_path, tmp_path / "pred", methods=oracle_methods()[:1],
                         progress=False, targets="predicted", n_boot=50)
    pc2 = pd.read_csv(res2.per_case_csv, dtype=str, keep_default_na=False)
    assert (pc2["finding"] == pc2["pred_label"]).all()
    assert (pc2["gt_frac"] != "0").all()  # absent predicted findings are not scored by default


def test_resume_after_interruption_is_byte_identical(tmp_path, cfg_path, monkeypatch):
    methods = oracle_methods()[:2]
    ref = run_benchmark(cfg_path, tmp_path / "ref", methods=methods, progress=False)

    real = runner_mod._score_case
    calls = {"n": 0}

    def dying(ctx, cd, i):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed in the middle of the second batch
        return real(ctx, cd, i)

    monkeypatch.setattr(runner_mod, "_score_case", dying)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(cfg_path, out, methods=methods, progress=False)
    monkeypatch.setattr(runner_mod, "_score_case", real)
    assert not (out / "summary.csv").exists()
    # a torn write after the last marker (kill during a write) is cut away on resume
    with open(out / "per_case.csv", "ab") as fh:
        fh.write(b"m0,half-a-row")
    with open(out / "progress.jsonl", "ab") as fh:
        fh.write(b'{"m": "m0", "c": "broken')
    res = run_benchmark(cfg_path, out, methods=methods, progress=False)
    assert res.resumed
    for name in ("per_case.csv", "summary.csv", "errors.csv", "models.csv"):
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    # a complete run re-run: everything from the journal, files unchanged
    again = run_benchmark(cfg_path, out, methods=methods, progress=False)
    assert (out / "per_case.csv").read_bytes() == ref.per_case_csv.read_bytes()
    assert again.resumed


def test_cache_is_reused_and_keyed_by_hashes_only(tmp_path, cfg_path):
    cache = tmp_path / "cache"
    r1 = run_benchmark(cfg_path, tmp_path / "a", progress=False, cache_dir=cache, n_boot=50)
    assert r1.statuses["m0"]["cache_hits"] == 0
    files = list(cache.rglob("*.npz"))
    assert files and all(len(f.stem) == 40 and all(c in "0123456789abcdef" for c in f.stem)
                         for f in files)
    assert not any("img_" in str(f) for f in files)  # no file names / case ids in the cache
    r2 = run_benchmark(cfg_path, tmp_path / "b", progress=False, cache_dir=cache, n_boot=50)
    assert r2.statuses["m0"]["cache_misses"] == 0 and r2.statuses["m0"]["cache_hits"] > 0
    assert r1.per_case_csv.read_bytes() == r2.per_case_csv.read_bytes()


def test_model_sweep_reports_a_failing_model_and_goes_on(tmp_path, tiny_cohort, model_dirs):
    models = (f'[[models]]\nname = "first"\nspec = "{model_dirs[0]}"\n\n'
              '[[models]]\nname = "broken"\nspec = "timm:not_a_real_vit_arch"\n\n'
              f'[[models]]\nname = "second"\nspec = "{model_dirs[1]}"\n')
    cfg = write_config(tmp_path / "sweep.toml", tiny_cohort, model_dirs[0], models=models)
    bc = load_benchmark_config(cfg)
    assert [m.name for m in bc.model_entries()] == ["first", "broken", "second"]
    res = run_benchmark(bc, tmp_path / "sweep", progress=False, n_boot=50,
                        headline="auroc:")
    assert res.statuses["broken"]["status"] == "failed"
    assert res.statuses["first"]["status"] == "ok" and res.statuses["second"]["status"] == "ok"
    mt = pd.read_csv(res.models_csv, dtype=str, keep_default_na=False)
    assert list(mt["model"]) == ["first", "broken", "second"]
    assert "not_a_real_vit_arch" in mt.set_index("model").loc["broken", "error"]
    assert mt["best_model"].tolist().count("true") == 1
    assert res.best_model in {"first", "second"} and res.exit_code == 1
    s = pd.read_csv(res.summary_csv, dtype=str, keep_default_na=False)
    assert set(s["model"]) == {"first", "second"}
    err = pd.read_csv(res.errors_csv, dtype=str, keep_default_na=False)
    assert list(err["stage"]) == ["load_model"]
    text = res.format_table()
    assert "model broken: FAILED" in text and "best model:" in text


def test_figures_and_attention_gif(tmp_path, cfg_path):
    from PIL import Image

    res = run_benchmark(cfg_path, tmp_path / "fig", methods=["attention"], progress=False,
                        n_boot=20, overlays=True, panels=True, max_panel_cases=1,
                        attention_gif=True, baselines=("prior",))
    pngs = sorted(p.name for p in (tmp_path / "fig" / "figures").rglob("*.png"))
    assert "effusion__attention_overlay.png" in pngs and "effusion__prior_thresholds.png" in pngs
    gifs = list((tmp_path / "fig" / "attention").glob("*.gif"))
    assert len(gifs) == 1 and gifs[0].name.startswith("m0__c_")
    with Image.open(gifs[0]) as im:
        assert im.n_frames == 2 and im.info.get("loop") == 0  # one frame per block, loops
    assert res.exit_code == 0


def test_faithfulness_and_randomisation_rows(tmp_path, cfg_path):
    res = run_benchmark(cfg_path, tmp_path / "f", methods=["rollout"], progress=False, n_boot=20,
                        faithfulness=True, faithfulness_steps=4, randomisation="full",
                        randomisation_cases=2, baselines=("uniform",), max_cases=2)
    pc = pd.read_csv(res.per_case_csv, dtype=str, keep_default_na=False)
    dele = _rows(pc, metric="deletion_auc")
    assert set(dele["method"]) == {"rollout", "uniform"} and (dele["rule"] == "blur,logit,steps=4").all()
    rnd = _rows(pc, metric="mprt_spearman")
    assert set(rnd["rule"]) == {"full:all"} and set(rnd["method"]) == {"rollout"}
    v = rnd["value"].replace("", "nan").astype(float)
    assert ((v.abs() <= 1) | v.isna()).all()


def test_config_tables_are_validated(tmp_path, tiny_cohort, model_dirs):
    bad = write_config(tmp_path / "bad.toml", tiny_cohort, model_dirs[0],
                       extra='targets = "everything"\nbogus = 1\nseed = "many"\nci = 2.0')
    with pytest.raises(BenchmarkError) as e:
        load_benchmark_config(bad)
    msg = str(e.value)
    assert "targets" in msg and "bogus" in msg and "seed" in msg and "ci:" in msg
    ok = load_benchmark_config(write_config(tmp_path / "ok.toml", tiny_cohort, model_dirs[0],
                                            extra="targets = \"predicted\"\nseed = 3"))
    assert ok.settings.targets == "predicted" and ok.settings.seed == 3
    assert ok.fixed_thresholds == (0.3, 0.5, 0.7)
    with pytest.raises(TypeError):
        run_benchmark(ok, tmp_path / "x", no_such_option=1)


def test_cli_benchmark_command(tmp_path, cfg_path, monkeypatch, capsys):
    from vitx_core import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "vitx_core.benchmark.commands"))
    rc = cli.main(["benchmark", "--config", str(cfg_path), "--out", str(tmp_path / "cli"),
                   "--no-progress", "--n-boot", "30", "--methods", "attention", "--max-cases", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and "best model: m0" in out and "baseline: prior" in out
    assert (tmp_path / "cli" / "summary.csv").is_file()
    rc = cli.main(["benchmark", "--config", str(tmp_path / "missing.toml")])
    assert rc == 2
    rc = cli.main(["benchmark", "--config", str(cfg_path), "--methods", "nope", "--no-progress"])
    assert rc == 2


def test_unreadable_case_is_reported_without_its_file_name(tmp_path, cfg_path, monkeypatch):
    from vitx_core.data.cohort import Case
    from vitx_core.imageio import ImageReadError

    real = Case.load_image

    def flaky(self):
        if self.image_id == "img_b":
            raise ImageReadError(f"{self.path}: decoder exploded")
        return real(self)

    monkeypatch.setattr(Case, "load_image", flaky)
    res = run_benchmark(cfg_path, tmp_path / "err", methods=oracle_methods()[:1], progress=False,
                        n_boot=20)
    err = pd.read_csv(res.errors_csv, dtype=str, keep_default_na=False)
    assert len(err) == 1 and err.iloc[0]["stage"] == "explain"
    assert "img_b" not in err.iloc[0]["error"] and f"<{err.iloc[0]['case_id']}>" in err.iloc[0]["error"]
    pc = pd.read_csv(res.per_case_csv, dtype=str, keep_default_na=False)
    assert pc["case_id"].nunique() == 3 and err.iloc[0]["case_id"] not in set(pc["case_id"])
    assert res.statuses["m0"]["status"] == "partial" and res.exit_code == 1
