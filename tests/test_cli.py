"""``python -m vitx_core``: explain / list-explainers, outputs on the original pixel grid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitx_core as vx
from vitx_core import cli

from .conftest import LABELS, tiny_timm

REPO = Path(__file__).resolve().parents[1]
GRID = (4, 3)  # tiny_timm: 64x48 input, patch 16


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A vitx model directory of the tiny non-square timm ViT (3 blocks, 3 classes)."""
    ad = vx.adapter_from_module(tiny_timm(), labels=LABELS, multi_label=True)
    d = tmp_path_factory.mktemp("models") / "model"
    vx.save_model_dir(ad, d)
    return d


def _write_dicom(path: Path, rows: int = 80, cols: int = 60) -> np.ndarray:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    yy, xx = np.mgrid[0:rows, 0:cols]
    px = (400 + 3000 * np.exp(-(((yy - 20) / 10.0) ** 2 + ((xx - 40) / 8.0) ** 2))).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = px.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return px


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    out = {}
    out["png8"] = d / "chest8.png"  # 70 rows x 90 columns
    Image.fromarray((rng.random((70, 90)) * 255).astype(np.uint8), mode="L").save(out["png8"])
    out["png16"] = d / "chest16.png"  # 16-bit grayscale, 50 x 40
    Image.fromarray((rng.random((50, 40)) * 65535).astype(np.uint16)).save(out["png16"])
    out["dcm"] = d / "scan.dcm"
    _write_dicom(out["dcm"])
    out["dcm_noext"] = d / "IM0001"  # extension-less DICOM
    _write_dicom(out["dcm_noext"], rows=72, cols=56)
    out["corrupt"] = d / "broken.png"
    out["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(200))
    return out


@pytest.fixture(scope="module")
def entry_point_run(tmp_path_factory, model_dir, inputs):
    """``python -m vitx_core explain ...`` started in the background (its interpreter start-up
    overlaps the in-process tests); ``test_python_dash_m_entry_point`` checks the result."""
    out = tmp_path_factory.mktemp("entry") / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitx_core", "explain", str(inputs["dcm"]), str(inputs["corrupt"]),
         "--model", str(model_dir), "--methods", "rollout", "--target", "nodule",
         "--device", "cpu", "--out", str(out)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    yield proc, out
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _check_outputs(folder: Path, methods: list[str], hw: tuple[int, int], grid=GRID) -> dict:
    for m in methods:
        hm = np.load(folder / f"{m}.npy")
        assert hm.dtype == np.float32 and hm.shape == hw
        assert np.isfinite(hm).all() and hm.min() >= 0.0 and hm.max() <= 1.0
        g = np.load(folder / f"{m}.grid.npy")
        assert g.shape == grid
        with Image.open(folder / f"{m}.png") as im:
            assert im.width > hw[1] and im.height > hw[0]
    pred = json.loads((folder / "prediction.json").read_text())
    assert pred["image_size"] == list(hw)
    assert sorted(pred["methods"]) == sorted(methods)
    return pred


# ---- explain -------------------------------------------------------------------------------
@pytest.mark.usefixtures("entry_point_run")  # start the subprocess early, check it at the end
def test_explain_model_dir_png_dicom(capsys, tmp_path, model_dir, inputs):
    out = tmp_path / "out"
    methods = ["rollout", "gradcam", "legrad"]
    rc, stdout, err = _run(capsys, "explain", inputs["png8"], inputs["png16"], inputs["dcm"],
                           inputs["dcm_noext"], "--model", model_dir, "--methods", ",".join(methods),
                           "--target", "effusion", "--out", out, "--batch-size", "2")
    assert rc == 0, err
    sizes = {"chest8": (70, 90), "chest16": (50, 40), "scan": (80, 60), "IM0001": (72, 56)}
    for stem, hw in sizes.items():
        pred = _check_outputs(out / stem, methods, hw)
        assert pred["target"] == {"index": 1, "label": "effusion"}
        assert pred["prediction"]["multi_label"] is True
        assert pred["model"]["key"] == str(model_dir)
        assert str(out / stem) in stdout
    assert json.loads((out / "scan" / "prediction.json").read_text())["meta"]["Rows"] == 80
    assert "4 of 4" in err


def test_heatmap_matches_the_api(capsys, tmp_path, model_dir, inputs):
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "explain", inputs["png8"], "--model", model_dir, "--methods",
                      "rollout", "--target", "0", "--out", out)
    assert rc == 0, err
    res = vx.explain(vx.load_model(model_dir, device="cpu"), inputs["png8"], ["rollout"], target=0)
    np.testing.assert_allclose(np.load(out / "chest8" / "rollout.npy"), res["rollout"].heatmap,
                               atol=1e-5)
    pred = json.loads((out / "chest8" / "prediction.json").read_text())
    assert pred["target"]["label"] == "nodule" and pred["file"] == "chest8.png"


def test_corrupt_file_is_skipped(capsys, tmp_path, model_dir, inputs):
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "explain", inputs["corrupt"], inputs["png8"], "--model", model_dir,
                      "--methods", "rollout", "--out", out)
    assert rc == 1
    assert "broken.png" in err and "not a readable image" in err
    assert "Traceback" not in err
    _check_outputs(out / "chest8", ["rollout"], (70, 90))
    assert not (out / "broken").exists()


def test_same_stem_gets_its_own_folder(capsys, tmp_path, model_dir, inputs):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    Image.open(inputs["png8"]).save(a / "x.png")
    Image.open(inputs["png16"]).save(b / "x.png")
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "explain", a / "x.png", b / "x.png", "--model", model_dir,
                      "--methods", "attention", "--out", out, "--no-png")
    assert rc == 0, err
    assert np.load(out / "x" / "attention.npy").shape == (70, 90)
    assert np.load(out / "x_2" / "attention.npy").shape == (50, 40)
    assert not (out / "x" / "attention.png").exists()


def test_timm_spec_with_weights_and_options(capsys, tmp_path, inputs):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    m = timm.create_model("test_vit", pretrained=False, num_classes=2, img_size=(32, 48))
    w = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(w))
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "explain", inputs["dcm"], "--model", "timm:test_vit", "--weights", w,
                      "--img-size", "32x48", "--methods", "rollout,legrad,attention", "--target", "1",
                      "--option", "rollout.preset=vit-explain", "--option", "legrad.layers=-2,-1",
                      "--option", "attention.layer=-2", "--option", "attention.head_fusion=max",
                      "--device", "cpu", "--out", out)
    assert rc == 0, err
    pred = _check_outputs(out / "scan", ["rollout", "legrad", "attention"], (80, 60), grid=(2, 3))
    assert pred["target"] == {"index": 1, "label": "class_1"}
    assert pred["methods"]["rollout"]["params"]["discard_ratio"] == 0.9
    assert pred["methods"]["rollout"]["params"]["head_fusion"] == "max"
    assert pred["methods"]["legrad"]["params"]["layers"] == [-2, -1]
    assert pred["methods"]["attention"]["params"]["layer"] == -2
    args = cli.build_parser().parse_args(["explain", "a.png", "--model", "timm:x", "--out", "o",
                                          "--img-size", "32", "48"])
    assert cli.parse_img_size(args.img_size) == (32, 48) and args.images == ["a.png"]


# ---- usage errors --------------------------------------------------------------------------
def test_unknown_method_is_a_usage_error(capsys, tmp_path, model_dir, inputs):
    rc, _, err = _run(capsys, "explain", inputs["png8"], "--model", model_dir, "--methods",
                      "rollout,nosuch", "--out", tmp_path / "out")
    assert rc == 2
    assert "nosuch" in err and "rollout" in err and "gradcam" in err and "legrad" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_weights_and_model_are_usage_errors(capsys, tmp_path, inputs):
    missing = tmp_path / "nowhere" / "w.safetensors"
    rc, _, err = _run(capsys, "explain", inputs["png8"], "--model", "timm:test_vit", "--weights",
                      missing, "--out", tmp_path / "out")
    assert rc == 2 and str(missing) in err and "Traceback" not in err
    rc, _, err = _run(capsys, "explain", inputs["png8"], "--model", tmp_path / "no_model",
                      "--out", tmp_path / "out")
    assert rc == 2 and str(tmp_path / "no_model") in err
    empty = tmp_path / "empty_model"
    empty.mkdir()
    rc, _, err = _run(capsys, "explain", inputs["png8"], "--model", empty, "--out", tmp_path / "o")
    assert rc == 2 and str(empty) in err


@pytest.mark.parametrize("argv, needle", [
    (["--target", "pneumothorax"], "pneumothorax"),
    (["--target", "7"], "out of range"),
    (["--option", "rollout.discard_ratio=abc"], "discard_ratio"),
    (["--option", "rollout.discard_ratio=1.5"], "discard_ratio"),
    (["--option", "rollout.nosuch=1"], "nosuch"),
    (["--option", "rollout.preset=nosuch"], "nosuch"),
    (["--option", "occlusion.baseline=zero"], "not selected"),
    (["--option", "rollout"], "METHOD.OPTION=VALUE"),
    (["--img-size", "64x48"], "timm:"),
    (["--batch-size", "0"], "batch-size"),
    (["--cmap", "nosuch"], "colormap"),
])
def test_bad_arguments_exit_2(capsys, tmp_path, model_dir, inputs, argv, needle):
    rc, _, err = _run(capsys, "explain", inputs["png8"], "--model", model_dir, "--methods",
                      "rollout", "--out", tmp_path / "out", *argv)
    assert rc == 2, err
    assert needle in err and "Traceback" not in err


def test_argparse_errors_and_help_return_codes(capsys):
    assert cli.main(["explain", "x.png"]) == 2  # --model / --out missing
    assert "required" in capsys.readouterr().err
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    assert "explain" in capsys.readouterr().out


def test_list_explainers(capsys):
    rc, out, _ = _run(capsys, "list-explainers")
    assert rc == 0
    for info in vx.list_explainers():
        assert info.name in out and info.title in out
    assert "on-demand" in out and "one-pass" in out
    assert "discard_ratio = 0.0" in out and "preset vit-explain" in out
    rc, out, _ = _run(capsys, "list-explainers", "--json")
    data = json.loads(out)
    assert {d["name"] for d in data} == {i.name for i in vx.list_explainers()}


# ---- option parsing ------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [
    ("3", 3), ("-2", -2), ("0.9", 0.9), ("1e-3", 1e-3), ("true", True), ("False", False),
    ("none", None), ("null", None), ("mean", "mean"), ("-2,-1", (-2, -1)), ("-1,", (-1,)),
    ("(1, 2)", (1, 2)), ("[0.5]", (0.5,)), ("'3'", "3"),
])
def test_parse_value(text, value):
    assert cli.parse_value(text) == value
    assert type(cli.parse_value(text)) is type(value)


def test_options_are_typed_by_the_explainer_params():
    d = cli.methods_with_options("rollout,legrad,attention", [
        "rollout.discard_ratio=0", "rollout.end_layer=none", "legrad.layers=-1",
        "attention.per_head=1", "attention.head_fusion=max"])
    assert d["rollout"] == {"discard_ratio": 0.0, "end_layer": None}
    assert type(d["rollout"]["discard_ratio"]) is float
    assert d["legrad"] == {"layers": (-1,)}
    assert d["attention"] == {"per_head": True, "head_fusion": "max"}
    assert list(cli.methods_with_options("default", [])) == vx.default_methods()
    assert len(cli.methods_with_options("all", [])) == len(vx.list_explainers())
    assert cli.parse_img_size(["64x48"]) == (64, 48)
    assert cli.parse_img_size(["64", "48"]) == (64, 48)
    assert cli.parse_img_size(["224"]) == (224, 224)
    with pytest.raises(cli.UsageError):
        cli.parse_img_size(["64", "48", "x.png"])


# ---- the module entry point ----------------------------------------------------------------
def test_python_dash_m_entry_point(entry_point_run):
    proc, out = entry_point_run
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 1, stderr  # the corrupt input fails, the DICOM is written
    assert "broken.png" in stderr and "Traceback" not in stderr
    pred = _check_outputs(out / "scan", ["rollout"], (80, 60))
    assert pred["target"]["label"] == "nodule"
