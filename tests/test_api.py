"""explain(): images in, maps on the ORIGINAL pixel grid out."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vitx_core as vx
from tests.conftest import LABELS, tiny_timm


def test_heatmap_on_original_grid_non_square(timm_adapter, xray, tmp_path):
    p = tmp_path / "case.png"
    Image.fromarray((xray * 255).astype(np.uint8)).save(p)
    res = vx.explain(timm_adapter, p)
    assert res.image_name == "case" and res.image_hw == (90, 70)
    assert res.methods == vx.default_methods()
    for e in res:
        assert e.grid.shape == (4, 3) and e.grid.dtype == np.float32
        assert e.heatmap.shape == (90, 70) and e.heatmap.dtype == np.float32
        assert e.heatmap.min() >= 0 and e.heatmap.max() <= 1
        if e.constant_map:  # e.g. Grad-CAM all ReLU'd away on a random model: zeros, flagged
            assert not e.heatmap.any() and np.ptp(e.grid) == 0
            continue
        assert e.heatmap.max() == pytest.approx(1.0) and e.heatmap.min() == pytest.approx(0.0)
        # resize mode: exactly one bilinear sampling of the raw grid, then min-max
        up = F.interpolate(torch.from_numpy(e.grid)[None, None], size=(90, 70), mode="bilinear",
                           align_corners=False)[0, 0].numpy()
        ref = (up - up.min()) / (up.max() - up.min())
        np.testing.assert_allclose(e.heatmap, ref, atol=1e-5)
        assert e.target == res.prediction.top and e.target_label == res.prediction.top_label
        assert e.model_version == timm_adapter.version


def test_prediction_and_targets(timm_adapter, xray):
    res = vx.explain(timm_adapter, xray, methods=["gradcam"], target="cardiomegaly")
    assert res.target == 2 and res["gradcam"].target_label == "cardiomegaly"
    logits = torch.from_numpy(res.prediction.logits)
    np.testing.assert_allclose(res.prediction.probs, torch.sigmoid(logits).numpy(), rtol=1e-6)
    assert res["gradcam"].prob == pytest.approx(float(res.prediction.probs[2]))
    many = vx.explain(timm_adapter, xray, methods=["gradcam"], target=[0, "effusion", None])
    assert [r.target for r in many] == [0, 1, res.prediction.top]
    with pytest.raises(KeyError, match="known classes"):
        vx.explain(timm_adapter, xray, target="pneumothorax")


def test_batch_of_images_equals_one_by_one(timm_adapter, xray):
    other = np.ascontiguousarray(xray[::-1, :50])
    both = vx.explain(timm_adapter, [xray, other], methods=["chefer", "legrad"])
    single = vx.explain(timm_adapter, other, methods=["chefer", "legrad"])
    assert both[1].image_hw == (90, 50)
    for m in ("chefer", "legrad"):
        np.testing.assert_allclose(both[1][m].grid, single[m].grid, rtol=1e-4, atol=1e-7)


def test_methods_dict_and_presets(timm_adapter, xray):
    res = vx.explain(timm_adapter, xray, methods={"rollout": {"preset": "vit-explain"},
                                                   "legrad": {"preset": "official"},
                                                   "attention": {"per_head": True}})
    assert res["rollout"].params["head_fusion"] == "max"
    assert res["legrad"].params["layers"] == [-2, -1]
    assert res["attention"].extras["per_head"].shape == (3, 4, 3)
    assert 0 < res["attention"].stats["patch_mass"] <= 1


def test_constant_map_is_flagged_not_stretched(xray):
    m = tiny_timm()
    with torch.no_grad():
        m.head.weight.zero_()  # every logit constant: all gradients vanish
    ad = vx.adapter_from_module(m, labels=LABELS)
    res = vx.explain(ad, xray, methods=["gradcam", "chefer", "rollout"])
    for k in ("gradcam", "chefer"):
        assert res[k].constant_map and not res[k].heatmap.any()
    assert not res["rollout"].constant_map


def test_dicom_input(timm_adapter, tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "CR", "DOE^JANE"
    ds.Rows, ds.Columns = 80, 60
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(80 * 60, dtype=np.uint16).reshape(80, 60) % 4096).tobytes()
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    res = vx.explain(timm_adapter, tmp_path / "x.dcm", methods=["rollout"])
    assert res.image_hw == (80, 60) and res["rollout"].heatmap.shape == (80, 60)
    assert "DOE" not in str(res.to_dict())
    assert res.meta["PhotometricInterpretation"] == "MONOCHROME1"


def test_iter_explain_skips_bad_files(timm_adapter, xray, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray((xray * 255).astype(np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = list(vx.iter_explain(timm_adapter, [good, bad, good], methods=["rollout"], batch_size=3))
    assert [type(r).__name__ for _, r in out] == ["ExplainResult", "ImageReadError", "ExplainResult"]
    assert "bad.png" in str(out[1][1])


def test_explain_accepts_specs_and_modules(xray):
    res = vx.explain(tiny_timm(), xray, methods=["attention"])
    assert res["attention"].heatmap.shape == xray.shape
    spec = vx.explain("timm:vit_tiny_patch16_224", np.zeros((40, 30, 3), np.uint8) + 7,
                      methods=["attention"])
    assert spec["attention"].heatmap.shape == (40, 30)


def test_to_dict_is_json_ready(timm_adapter, xray):
    import json

    d = vx.explain(timm_adapter, xray, methods=["rollout", "gradcam"]).to_dict()
    s = json.dumps(d)
    assert '"rollout"' in s and d["prediction"]["top"]["label"] in LABELS
