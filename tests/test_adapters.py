"""load_model: every way to name a model, offline; token layouts; clear errors."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vitx_core as vx
from tests.conftest import LABELS, tiny_hf, tiny_timm


def test_timm_spec_random_init_with_img_size():
    ad = vx.load_model("timm:vit_tiny_patch16_224", img_size=(64, 48), labels=LABELS,
                       multi_label=True, model_kwargs={"depth": 2})
    assert isinstance(ad, vx.TimmAdapter)
    assert ad.preprocess.size == (64, 48) and ad.grid_size((64, 48)) == (4, 3)
    assert ad.labels == LABELS and ad.multi_label
    assert ad.preprocess.mode == "resize"  # whole image, no centre crop by default
    assert not ad.model.training


@pytest.mark.parametrize(("arch", "kw", "p", "grid"), [
    ("deit_tiny_distilled_patch16_224", {}, 2, (14, 14)),
    ("vit_small_patch14_reg4_dinov2", {"img_size": (224, 224)}, 5, (16, 16)),
    ("vit_base_patch32_224", {}, 1, (7, 7)),
])
def test_named_architectures_token_layout(arch, kw, p, grid):
    ad = vx.load_model(f"timm:{arch}", labels=LABELS, model_kwargs={"depth": 1}, **kw)
    assert ad.num_prefix_tokens == p
    assert ad.grid_size(ad.preprocess.size) == grid


def test_non_square_grid_from_patch_embed_not_sqrt():
    ad = vx.load_model("timm:vit_tiny_patch16_224", img_size=(224, 320), model_kwargs={"depth": 1})
    assert ad.grid_size((224, 320)) == (14, 20)
    with pytest.raises(ValueError, match="img_size"):
        ad.grid_size((224, 224))


def test_dynamic_img_size_grid():
    ad = vx.load_model("timm:vit_tiny_patch16_224", model_kwargs={"depth": 1, "dynamic_img_size": True})
    assert ad.grid_size((256, 320)) == (16, 20)


def test_weights_pth_and_safetensors_roundtrip(tmp_path):
    m = tiny_timm("vit_tiny_patch16_224", img_size=(64, 48), depth=3)
    sd = m.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": sd}, tmp_path / "w.pth")
    x = torch.randn(1, 3, 64, 48)
    ref = m(x)
    for f in ("w.safetensors", "w.pth"):
        ad = vx.load_model("timm:vit_tiny_patch16_224", weights=tmp_path / f, img_size=(64, 48),
                           model_kwargs={"depth": 3})
        assert ad.num_classes == 3  # taken from the checkpoint's head
        torch.testing.assert_close(ad.logits(x), ref)
        assert ad.version == vx.adapter_from_module(m).version


def test_missing_weights_file_names_the_path(tmp_path):
    p = tmp_path / "nope" / "weights.safetensors"
    with pytest.raises(FileNotFoundError, match=str(p)):
        vx.load_model("timm:vit_tiny_patch16_224", weights=p)


def test_mismatched_weights_are_a_clear_error(tmp_path):
    m = tiny_timm("vit_tiny_patch16_224", img_size=(64, 48), depth=2)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="do not match"):
        vx.load_model("timm:vit_tiny_patch16_224", weights=tmp_path / "w.safetensors",
                      img_size=(64, 48), model_kwargs={"depth": 3})


def test_unknown_arch_and_bad_spec():
    with pytest.raises(ValueError, match="unknown timm architecture"):
        vx.load_model("timm:vit_nonexistent_patch99")
    with pytest.raises(ValueError, match="weights file"):
        vx.load_model("model.safetensors")
    with pytest.raises(ValueError, match="cannot interpret"):
        vx.load_model("resnet50")


def test_model_dir_roundtrip(tmp_path):
    ad = vx.adapter_from_module(tiny_timm(), labels=LABELS, multi_label=True,
                                preprocess={"mode": "letterbox"})
    d = vx.save_model_dir(ad, tmp_path / "m", description="tiny", metrics={"auroc": {"nodule": 0.5}})
    card = json.loads((d / "model.json").read_text())
    assert card["architecture"] == "timm:vit_tiny_patch16_224"
    assert card["class_names"] == LABELS and card["multi_label"] is True
    ad2 = vx.load_model(d)
    assert ad2.labels == LABELS and ad2.multi_label and ad2.preprocess == ad.preprocess
    assert ad2.version == ad.version
    x = torch.randn(2, 3, 64, 48)
    torch.testing.assert_close(ad2.logits(x), ad.logits(x))


def test_model_dir_missing_weights(tmp_path):
    ad = vx.adapter_from_module(tiny_timm(), labels=LABELS)
    d = vx.save_model_dir(ad, tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        vx.load_model(d)


def test_hf_directory_offline(tmp_path):
    m = tiny_hf()
    m.config.problem_type = "multi_label_classification"
    m.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.4, 0.4, 0.4], "image_std": [0.2, 0.2, 0.2], "size": {"height": 32, "width": 32},
         "resample": 2}))
    ad = vx.load_model(f"hf:{tmp_path / 'hf'}")
    assert isinstance(ad, vx.HFAdapter)
    assert ad.labels == ["finding_0", "finding_1", "finding_2"] and ad.multi_label
    assert ad.preprocess.mean == (0.4, 0.4, 0.4) and ad.preprocess.interpolation == "bilinear"
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(ad.logits(x), m(pixel_values=x).logits)
    # also found without the hf: prefix, and saved as a vitx model dir
    assert isinstance(vx.load_model(tmp_path / "hf"), vx.HFAdapter)
    d = vx.save_model_dir(ad, tmp_path / "card")
    ad3 = vx.load_model(d)
    torch.testing.assert_close(ad3.logits(x), ad.logits(x))


def test_hf_directory_without_weights(tmp_path):
    m = tiny_hf()
    m.config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="weights"):
        vx.load_model(f"hf:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="not found"):
        vx.load_model(f"hf:{tmp_path / 'missing'}")


def test_in_memory_modules_and_labels():
    ad = vx.load_model(tiny_timm(), labels=LABELS)
    assert isinstance(ad, vx.TimmAdapter) and ad.labels == LABELS
    with pytest.raises(ValueError, match="3 outputs"):
        vx.adapter_from_module(tiny_timm(), labels=["a", "b"])
    with pytest.raises(TypeError, match="unsupported"):
        vx.adapter_from_module(torch.nn.Linear(3, 3))
    assert vx.load_model(tiny_hf()).family == "hf"


def test_class_index_by_name_or_number(timm_adapter):
    ad = timm_adapter
    assert ad.class_index("effusion") == 1 and ad.class_index(2) == 2 and ad.class_index("0") == 0
    assert ad.class_index(-1) == 2 and ad.class_index(None) is None
    with pytest.raises(KeyError, match="nodule"):
        ad.class_index("pneumothorax")
    with pytest.raises(IndexError):
        ad.class_index(3)


def test_probabilities_sigmoid_vs_softmax(timm_adapter):
    logits = torch.tensor([[0.0, 1.0, -1.0]])
    np.testing.assert_allclose(timm_adapter.probabilities(logits).numpy(),
                               torch.sigmoid(logits).numpy())
    soft = vx.adapter_from_module(tiny_timm(), multi_label=False)
    assert float(soft.probabilities(logits).sum()) == pytest.approx(1.0)


def test_demo_model_missing_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("VITX_DEMO_MODEL", str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="demo model not found"):
        vx.load_model("demo")
