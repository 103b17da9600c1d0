"""Training: data discovery and patient-level splits, the fit loop (loss, determinism, early stopping,
balancing), the evaluation report, model directories that load and explain, and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch.utils.data import WeightedRandomSampler

import vitx_core as vx
from vitx_core import cli
from vitx_core.data import write_dicom
from vitx_core.training import (
    AugmentConfig,
    DataError,
    ImageDataset,
    TrainConfig,
    augment_batch,
    balanced_weights,
    build_model,
    discover,
    evaluate,
    fit,
    train,
)

ARCH = "timm:vit_tiny_patch16_224"
SIZE = (32, 32)
TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
TINY_ARGS = ["--img-size", "32x32", "--model-arg", "depth=1", "--model-arg", "embed_dim=32",
             "--model-arg", "num_heads=2", "--model-arg", "patch_size=8"]


def _image(kind: int, rng: np.random.Generator, hw: tuple[int, int] = (40, 36)) -> np.ndarray:
    """Class 0: a bright blob on the image's left half; class 1: on its right half."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    cx = rng.uniform(0.15, 0.35) * w if kind == 0 else rng.uniform(0.65, 0.85) * w
    cy = rng.uniform(0.3, 0.7) * h
    img = 0.2 + 0.04 * rng.standard_normal((h, w))
    img += 0.7 * np.exp(-(((yy - cy) / 6.0) ** 2 + ((xx - cx) / 6.0) ** 2))
    return np.clip(img, 0, 1).astype(np.float32)


def _png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)
    return path


def _blob_or_not(kind: int, rng: np.random.Generator, hw: tuple[int, int] = (40, 36)) -> np.ndarray:
    """Class ``blob`` (0): a large bright blob anywhere; class ``normal`` (1): background only."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    img = 0.25 + 0.04 * rng.standard_normal((h, w))
    if kind == 0:
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        img += 0.6 * np.exp(-(((yy - cy) / 9.0) ** 2 + ((xx - cx) / 9.0) ** 2))
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory) -> Path:
    """Class folders blob/ normal/: 12 patients per class, 2 images each (``p<id>_<k>.png``)."""
    root = tmp_path_factory.mktemp("folders")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("blob", "normal")):
        for pid in range(12):
            for k in range(2):
                _png(root / name / f"p{c}{pid:02d}_{k}.png", _blob_or_not(c, rng))
    return root


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory) -> Path:
    """Multi-label CSV (stems, patient_id), 20 patients x 2 images, one image a DICOM."""
    root = tmp_path_factory.mktemp("csvdata")
    (root / "images").mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for pid in range(20):
        for k in range(2):
            left, right = int(rng.uniform() < 0.5), int(rng.uniform() < 0.5)
            img = 0.5 * _image(0, rng) * left + 0.5 * _image(1, rng) * right + 0.1
            stem = f"img_{pid:02d}_{k}"
            if pid == 0 and k == 0:
                write_dicom(root / "images" / f"{stem}.dcm", img, bits=12, case_id=stem)
            else:
                _png(root / "images" / f"{stem}.png", img)
            rows.append([stem, f"patient{pid:02d}", left, right])
    with open(root / "labels.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["image", "patient_id", "left", "right"])
        wr.writerows(rows)
    return root


def _tiny(class_names=("blob", "normal"), multi_label=False, seed=0):
    ad, _ = build_model(ARCH, list(class_names), multi_label, img_size=SIZE, model_kwargs=TINY,
                        seed=seed)
    return ad


def _cfg(**kw) -> TrainConfig:
    base = {"epochs": 3, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 0.0, "patience": 0,
            "progress": False, "augment": None}
    base.update(kw)
    return TrainConfig(**base)


# ---- data ------------------------------------------------------------------------------------
def test_class_folders_split_by_patient(folder_data):
    sp = discover(folder_data, patient_regex=r"^(p\d+)_", seed=0)
    assert sp.class_names == ["blob", "normal"] and not sp.multi_label
    parts = {k: sp.split(k) for k in ("train", "val", "test")}
    assert sum(len(v) for v in parts.values()) == 48
    pats = {k: {s.patient for s in v} for k, v in parts.items()}
    assert not (pats["train"] & pats["val"] or pats["train"] & pats["test"] or pats["val"] & pats["test"])
    for k, v in parts.items():  # stratified: both classes everywhere, both images of a patient
        assert {int(s.target.argmax()) for s in v} == {0, 1}, k
        assert len(v) == 2 * len(pats[k])
    assert all(s.target.sum() == 1 for v in parts.values() for s in v)


def test_split_folders_layout(folder_data, tmp_path):
    for split in ("train", "test"):
        for c in ("blob", "normal"):
            files = sorted((folder_data / c).glob("*.png"))
            for f in files[:16] if split == "train" else files[16:20]:
                _png(tmp_path / split / c / f.name, np.asarray(Image.open(f)) / 255.0)
    sp = discover(tmp_path, patient_regex=r"^(p\d+)_")
    assert len(sp.test) == 8  # test/ kept as given
    assert len(sp.train) + len(sp.val) == 32 and sp.val  # val carved out of train/, by patient
    assert not {s.patient for s in sp.train} & {s.patient for s in sp.val}


def test_csv_patient_split_has_no_leakage(csv_data):
    sp = discover(csv_data, labels_csv=csv_data / "labels.csv", patient_col="patient_id",
                  val_frac=0.25, test_frac=0.25, seed=3)
    assert sp.multi_label and sp.class_names == ["left", "right"]
    parts = {k: sp.split(k) for k in ("train", "val", "test")}
    assert sum(len(v) for v in parts.values()) == 40
    owner: dict[str, str] = {}
    for k, v in parts.items():
        assert v, k
        for s in v:
            assert owner.setdefault(s.patient, k) == k, f"{s.patient} in {owner[s.patient]} and {k}"
    assert len(owner) == 20
    assert any(s.path.suffix == ".dcm" for v in parts.values() for s in v)  # stem -> .dcm found


def test_csv_errors_are_clear(csv_data, tmp_path):
    with pytest.raises(DataError, match="not a column"):
        discover(csv_data, labels_csv=csv_data / "labels.csv", patient_col="nope")
    bad = tmp_path / "bad.csv"
    bad.write_text("image,left\nmissing_file,1\n")
    with pytest.raises(DataError, match="not found"):
        discover(csv_data, labels_csv=bad)


def test_balanced_sampler_counts():
    y = torch.zeros(100, 2)
    y[:90, 0] = 1
    y[90:, 1] = 1
    w = balanced_weights(y)
    assert torch.isclose(w[:90].sum(), w[90:].sum())  # each class gets half the mass
    s = WeightedRandomSampler(w, num_samples=20000, replacement=True,
                              generator=torch.Generator().manual_seed(0))
    idx = torch.tensor(list(s))
    frac_minority = float((idx >= 90).float().mean())
    assert abs(frac_minority - 0.5) < 0.02
    # multi-label: the rarest positive class decides; all-negative rows form their own stratum
    ym = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 1], [0, 0], [0, 0]], dtype=torch.float32)
    wm = balanced_weights(ym)
    assert torch.isclose(wm[3], 4 * wm[0]) and torch.isclose(wm[3], 2 * wm[4])  # 1, 1/4, 1/2
    assert torch.isclose(wm.sum(), torch.tensor(1.0))


def test_no_hflip_by_default_and_flip_option():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 8, 6)
    assert AugmentConfig().hflip == 0.0
    off = AugmentConfig(rotate_deg=0, scale=0, translate=0, brightness=0, contrast=0)
    assert torch.equal(augment_batch(x, off, g), x)
    flip = AugmentConfig(rotate_deg=0, scale=0, translate=0, brightness=0, contrast=0, hflip=1.0)
    assert torch.allclose(augment_batch(x, flip, g), x.flip(-1), atol=1e-5)


# ---- the loop --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder_sets(folder_data):
    sp = discover(folder_data, patient_regex=r"^(p\d+)_", seed=0)
    spec = _tiny().preprocess
    return sp, ImageDataset(sp.train, spec), ImageDataset(sp.val, spec), ImageDataset(sp.test, spec)


def test_fit_loss_decreases(folder_sets):
    _, tr, va, _ = folder_sets
    ad = _tiny()
    res = fit(ad, tr, va, _cfg(epochs=8))
    ls = res.train_losses
    assert len(ls) == res.steps > 10
    assert np.mean(ls[-4:]) < np.mean(ls[:4]) - 0.05
    assert not ad.model.training
    assert res.history and all("val_auroc" in h for h in res.history)


def test_fit_is_deterministic(folder_sets):
    _, tr, va, _ = folder_sets
    cfg = _cfg(epochs=1, max_steps=4, balance=True, augment=AugmentConfig(hflip=0.5), seed=7)
    a, b, c = _tiny(seed=7), _tiny(seed=7), _tiny(seed=7)
    fit(a, tr, va, cfg)
    fit(b, tr, va, cfg)
    fit(c, tr, va, _cfg(epochs=1, max_steps=4, balance=True, augment=AugmentConfig(hflip=0.5),
                        seed=8))
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.version == b.version


def test_early_stopping_when_val_auroc_stalls(folder_sets):
    _, tr, va, _ = folder_sets
    ad = _tiny()
    # lr ~ 0: the weights (and so the val AUROC) never change -> only the first eval improves
    res = fit(ad, tr, va, _cfg(epochs=50, lr=1e-12, eval_every=1, patience=2))
    assert res.stopped_early and "early stop" in res.stop_reason
    assert res.steps == 3 and res.best_step == 1
    assert [h["improved"] for h in res.history] == [True, False, False]


def test_report_files_and_auroc_match_sklearn(folder_sets, tmp_path):
    sp, tr, va, te = folder_sets
    ad = _tiny()
    fit(ad, tr, va, _cfg(epochs=2))
    m = evaluate(ad, te, tmp_path / "report")
    rep = tmp_path / "report"
    for f in ("metrics.json", "predictions.csv", "classification_report.json",
              "classification_report.txt", "roc_curves.csv", "pr_curves.csv",
              "confusion_matrix.csv", "confusion_matrix.json", "calibration.csv", "roc.png",
              "pr.png", "confusion_matrix.png", "calibration.png"):
        assert (rep / f).is_file() and (rep / f).stat().st_size > 0, f
    with open(rep / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(te) == m["n_images"]
    disk = json.loads((rep / "metrics.json").read_text())
    for c in sp.class_names:
        y = np.array([int(r[f"y_{c}"]) for r in rows])
        p = np.array([float(r[f"p_{c}"]) for r in rows])
        auc = roc_auc_score(y, p)
        assert disk["per_class"][c]["auroc"] == pytest.approx(auc, abs=1e-12)
        with open(rep / "roc_curves.csv") as fh:
            pts = [(float(r["fpr"]), float(r["tpr"])) for r in csv.DictReader(fh) if r["class"] == c]
        fpr, tpr = np.array(pts).T
        assert np.trapezoid(tpr, fpr) == pytest.approx(auc, abs=1e-9)
    conf = json.loads((rep / "confusion_matrix.json").read_text())
    assert conf["kind"] == "multiclass" and np.asarray(conf["matrix"]).sum() == len(te)
    assert 0 <= disk["per_class"]["blob"]["ece"] <= 1 and disk["decision"] == "argmax"


# ---- end to end ------------------------------------------------------------------------------
def test_train_class_folders_writes_a_loadable_model(folder_data, tmp_path):
    out = tmp_path / "model"
    res = train(folder_data, ARCH, out, img_size=SIZE, model_kwargs=TINY,
                patient_regex=r"^(p\d+)_", config=_cfg(epochs=2))
    assert (out / "model.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "report" / "metrics.json").is_file() and (out / "report" / "splits.csv").is_file()
    card = vx.adapters.loading.read_model_card(out)
    assert card["metrics"]["split"] == "test" and set(card["metrics"]["auroc"]) == {"blob", "normal"}
    assert card["model_kwargs"]["patch_size"] == 8 and card["training"]["config"]["epochs"] == 2
    ad = vx.load_model(out)
    assert ad.labels == ["blob", "normal"] and ad.preprocess.size == SIZE and not ad.multi_label
    sd_a, sd_b = ad.model.state_dict(), res.adapter.model.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    img = sorted((folder_data / "blob").glob("*.png"))[0]
    r = vx.explain(ad, img, methods=["rollout", "gradcam"], target="blob")
    assert r["gradcam"].heatmap.shape == (40, 36) and r.target_label == "blob"


@pytest.fixture
def cli_with_training(monkeypatch):
    mod = "vitx_core.training.commands"
    if mod not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, mod))
    return cli


def test_cli_train_csv_multilabel_then_explain_dicom(cli_with_training, csv_data, tmp_path, capsys):
    out = tmp_path / "m"
    rc = cli_with_training.main([
        "train", "--data", str(csv_data), "--labels-csv", str(csv_data / "labels.csv"),
        "--patient-col", "patient_id", "--model", ARCH, *TINY_ARGS, "--out", str(out),
        "--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--seed", "1", "--balance",
        "--quiet"])
    assert rc == 0, capsys.readouterr().err
    card = json.loads((out / "model.json").read_text())
    assert card["multi_label"] is True and card["class_names"] == ["left", "right"]
    assert card["training"]["config"]["balance"] is True
    splits = list(csv.DictReader(open(out / "report" / "splits.csv")))
    owner = {}
    for r in splits:
        assert owner.setdefault(r["patient"], r["split"]) == r["split"]
    dcm = csv_data / "images" / "img_00_0.dcm"
    rc = cli_with_training.main(["explain", str(dcm), "--model", str(out), "--methods",
                                 "rollout,gradcam", "--target", "left", "--no-png", "--out",
                                 str(tmp_path / "expl")])
    assert rc == 0, capsys.readouterr().err
    hm = np.load(tmp_path / "expl" / "img_00_0" / "gradcam.npy")
    assert hm.shape == vx.load_image(dcm).hw


def test_cli_train_usage_errors(cli_with_training, folder_data, tmp_path, capsys):
    assert cli_with_training.main(["train", "--data", str(folder_data), "--model", "resnet50",
                                   "--out", str(tmp_path / "x")]) == 2
    assert "timm:<arch> or hf:<dir>" in capsys.readouterr().err
    assert cli_with_training.main(["train", "--data", str(tmp_path / "nope"), "--model", ARCH,
                                   "--out", str(tmp_path / "x")]) == 2
    assert cli_with_training.main(["train", "--data", str(folder_data), "--model", ARCH,
                                   "--labels-csv", str(tmp_path / "none.csv"),
                                   "--out", str(tmp_path / "x")]) == 2
