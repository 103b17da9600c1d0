"""Grad-CAM parity: pytorch-grad-cam 1.5.7 (``GradCAM`` on ``blocks[-1].norm1``) vs vitx ``gradcam``.

Recipe (EXPLAINERS.md §3.6, §6 recipe 1): the same timm model, the same batch, one target per
image. grad-cam returns per-image min-max (eps 1e-7) maps resized with ``cv2.resize`` bilinear to
the input size, then (``aggregate_multi_layers``, one layer) min-max again. vitx returns the raw
patch grid; the test applies the same post-processing with ``F.interpolate(bilinear,
align_corners=False)`` (== cv2 INTER_LINEAR, half-pixel centres) and compares pixel by pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitx_core as vx
from tests.parity._helpers import (
    assert_informative,
    fused_flags,
    max_abs,
    record,
    seeded_input,
    timm_vit,
)

pytestmark = pytest.mark.parity

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

TOL = 1e-5

CASES = {
    # non-square input, CLS only: 64x48 at patch 16 -> 4x3 grid
    "vit_nonsquare": dict(arch="vit_tiny_patch16_224", img_size=(64, 48), kw={}),
    # patch 8, wider than tall: 32x48 -> 4x6 grid
    "vit_patch8_wide": dict(arch="vit_tiny_patch16_224", img_size=(32, 48), kw={"patch_size": 8}),
    # DeiT distilled: two prefix tokens (cls, dist), eval head = mean of the two heads
    "deit_distilled": dict(arch="deit_tiny_distilled_patch16_224", img_size=(48, 64), kw={}),
}


def _scale(cam: torch.Tensor) -> torch.Tensor:
    """grad-cam ``scale_cam_image`` without resize: per image ``(c - min) / (1e-7 + max)``."""
    flat = cam.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / (1e-7 + flat.max(dim=1, keepdim=True).values)
    return flat.reshape(cam.shape)


def gradcam_like_postprocess(grid: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    """Raw ``(B, gh, gw)`` grid -> what grad-cam returns for one target layer."""
    g = _scale(grid.double())
    up = F.interpolate(g[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]
    return _scale(up).numpy()  # aggregate_multi_layers: mean over the one layer, then rescale


def reference_gradcam(model, x: torch.Tensor, targets: list[int], num_prefix: int,
                      grid: tuple[int, int]) -> np.ndarray:
    gh, gw = grid

    def reshape_transform(t: torch.Tensor) -> torch.Tensor:
        assert t.shape[1] == num_prefix + gh * gw  # never sqrt(N - 1)
        return t[:, num_prefix:].reshape(t.shape[0], gh, gw, t.shape[2]).permute(0, 3, 1, 2)

    with GradCAM(model=model, target_layers=[model.blocks[-1].norm1],
                 reshape_transform=reshape_transform) as cam:
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])
    return np.asarray(out, dtype=np.float64)


@pytest.mark.parametrize("case", list(CASES))
def test_gradcam_matches_pytorch_grad_cam(case: str) -> None:
    spec = CASES[case]
    model = timm_vit(spec["arch"], img_size=spec["img_size"], num_classes=3, depth=2, **spec["kw"])
    p = int(model.num_prefix_tokens)
    assert p == (2 if "distilled" in spec["arch"] else 1)
    h, w = spec["img_size"]
    x = seeded_input((2, 3, h, w), seed=3)
    targets = [2, 0]  # two different targets in one batch
    flags_before = fused_flags(model)

    ad = vx.adapter_from_module(model, labels=["a", "b", "c"], multi_label=True)
    grid_hw = ad.grid_size((h, w))
    assert grid_hw == (h // ad.patch_size[0], w // ad.patch_size[1])

    ref = reference_gradcam(model, x, targets, p, grid_hw)
    assert vx.count_hooks(model) == 0, "grad-cam left hooks on the model"
    assert ref.shape == (2, h, w)
    assert ref.max() > 0.99  # a real map, not a constant one

    # vitx: Grad-CAM alone (fused attention untouched) and bundled with attention methods (fused
    # attention switched off for the pass): both must give the same map as grad-cam.
    for methods in (["gradcam"], ["gradcam", "chefer", "rollout"]):
        res = vx.run_explainers(ad, x, [vx.get_explainer(m) for m in methods],
                                target_sets=[torch.tensor(targets)])
        assert vx.count_hooks(model) == 0, "vitx left hooks on the model"
        assert fused_flags(model) == flags_before, "vitx did not restore fused_attn"
        assert res.targets[0].tolist() == targets
        grid = res.outputs[0]["gradcam"].grid
        assert grid.shape == (2, *grid_hw)
        assert_informative(grid)
        ours = gradcam_like_postprocess(grid, (h, w))
        d = record(f"gradcam[{case}] max abs (+{len(methods) - 1} methods)", max_abs(ours, ref))
        assert d <= TOL

    # The comparison discriminates: explaining the other image's target gives another map.
    res_swapped = vx.run_explainers(ad, x, [vx.get_explainer("gradcam")],
                                    target_sets=[torch.tensor(targets[::-1])])
    swapped = gradcam_like_postprocess(res_swapped.outputs[0]["gradcam"].grid, (h, w))
    assert max_abs(swapped, ref) > 1e-2
