from dataclasses import dataclass

import pytest

import vitx_core as vx
from vitx_core import registry

STABLE_KEYS = ["attention", "rollout", "attention_flow", "gmar", "legrad", "gradcam", "chefer",
               "occlusion", "integrated_gradients"]


def test_stable_keys_in_order():
    assert [i.name for i in vx.list_explainers()] == STABLE_KEYS


def test_default_set_is_the_one_pass_set():
    assert vx.default_methods() == ["attention", "rollout", "gmar", "legrad", "gradcam", "chefer"]
    on_demand = {i.name for i in vx.list_explainers() if i.on_demand}
    assert on_demand == {"attention_flow", "occlusion", "integrated_gradients"}


def test_duplicate_name_raises():
    class Dup(vx.Explainer):
        name = "rollout"
        title = "dup"

        def compute(self, cap, adapter, x):  # pragma: no cover
            raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        vx.register_explainer(Dup)
    assert registry.get_explainer_class("rollout").__name__ == "AttentionRollout"


def test_unknown_name_lists_known():
    with pytest.raises(KeyError, match="gradcam"):
        vx.get_explainer("grad_cam_typo")


def test_unknown_option_and_bad_choice():
    with pytest.raises(TypeError, match="discard"):
        vx.get_explainer("rollout", discard=0.5)
    with pytest.raises(ValueError, match="mean"):
        vx.get_explainer("rollout", head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        vx.get_explainer("rollout", discard_ratio=1.0)


def test_params_json_canonical_and_presets():
    a = vx.get_explainer("rollout")
    b = vx.get_explainer("rollout", head_fusion="mean", discard_ratio=0.0)
    assert a.params_json == b.params_json
    assert '"discard_ratio":0.0' in a.params_json
    p = registry.get_explainer_class("rollout").from_preset("vit-explain")
    assert p.params.head_fusion == "max" and p.params.discard_ratio == 0.9
    with pytest.raises(KeyError, match="vit-explain"):
        registry.get_explainer_class("rollout").from_preset("nope")


def test_schema_exposes_choices_for_the_ui():
    info = {i.name: i for i in vx.list_explainers()}
    assert info["attention"].params["head_fusion"]["choices"] == ["mean", "max", "min"]
    assert info["gmar"].params["norm"]["choices"] == ["l1", "l2"]
    assert info["legrad"].presets["official"] == {"layers": (-2, -1)}


def test_build_explainers_forms():
    names = lambda xs: [e.name for e in xs]  # noqa: E731
    assert names(vx.build_explainers(None)) == vx.default_methods()
    assert names(vx.build_explainers("all")) == STABLE_KEYS
    assert names(vx.build_explainers("rollout,gradcam")) == ["rollout", "gradcam"]
    ex = vx.build_explainers({"rollout": {"preset": "vit-explain", "discard_ratio": 0.5}})
    assert ex[0].params.head_fusion == "max" and ex[0].params.discard_ratio == 0.5


def test_register_requires_name():
    @dataclass(frozen=True)
    class P:
        pass

    class NoName(vx.Explainer):
        title = "x"

        def compute(self, cap, adapter, x):  # pragma: no cover
            raise AssertionError

    with pytest.raises(ValueError, match="no registry name"):
        vx.register_explainer(NoName)
