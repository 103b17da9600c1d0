"""A tiny cohort (non-square PNGs, whole-patch masks) and tiny saved models for benchmark tests.

Model input 64 x 48 (patch 16 -> a 4 x 3 grid); images 128 x 72, so the geometry scales the two
axes differently (1/2 vertically, 2/3 horizontally) and every patch edge falls on an original
pixel edge, halfway between two pixel centres. The bilinear map of a 0/1 grid then crosses 0.5
exactly at that edge -- along one axis. At a corner of a rectangle both axes ramp and the
bilinear value is a product (0.5 x 0.5 = 0.25 at the corner), so the ground-truth shapes are
whole-patch *bands* (full width or full height): their oracle maps reproduce the masks exactly
at threshold 0.5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitx_core as vx
from vitx_core.capture import Needs
from vitx_core.data import encode_rle
from vitx_core.registry import Explainer

LABELS = ["nodule", "effusion", "cardiomegaly"]
IMG_HW = (128, 72)
GRID_HW = (4, 3)
#: effusion on patch rows 1-2 (all columns) -> original rows 32..95, full width
EFFUSION_GRID = np.zeros(GRID_HW, dtype=np.float32)
EFFUSION_GRID[1:3, :] = 1.0
#: nodule on patch column 2 (all rows) -> original cols 48..71, full height
NODULE_GRID = np.zeros(GRID_HW, dtype=np.float32)
NODULE_GRID[:, 2] = 1.0


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models: one thread is faster, and steady when other jobs share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def grid_to_mask(grid: np.ndarray) -> np.ndarray:
    """Whole patches on the original grid (a patch is 32 x 24 original pixels)."""
    return np.kron(grid, np.ones((32, 24))).astype(bool)


def make_oracle(name: str, grid: np.ndarray) -> Explainer:
    """An unregistered explainer that returns ``grid`` for every image (test-only)."""
    g = torch.tensor(np.asarray(grid, dtype=np.float32))

    class _Oracle(Explainer):
        title = f"oracle {name}"
        needs = Needs()

        def compute(self, cap, adapter, x):
            return g.expand(x.shape[0], *g.shape).clone()

    _Oracle.name = name
    return _Oracle()


# case -> findings present (the same whole-patch masks for every positive case)
CASES = {
    "img_a": ("effusion",),
    "img_b": ("effusion", "nodule"),
    "img_c": ("effusion",),
    "img_d": (),
    "img_e": ("nodule", "effusion"),
}


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    gt = {}
    for cid, present in CASES.items():
        px = (rng.random(IMG_HW) * 200 + 20).astype(np.uint8)
        Image.fromarray(px, mode="L").save(root / "images" / f"{cid}.png")
        masks = {"effusion": grid_to_mask(EFFUSION_GRID) if "effusion" in present else None,
                 "nodule": grid_to_mask(NODULE_GRID) if "nodule" in present else None,
                 "cardiomegaly": None}
        gt[cid] = {f: encode_rle(m if m is not None else np.zeros(IMG_HW, bool))
                   for f, m in masks.items()}
    (root / "gt.json").write_text(json.dumps(gt))
    return root


def _save_model(directory: Path, seed: int) -> Path:
    from tests.conftest import tiny_timm

    m = tiny_timm(img_size=(64, 48), num_classes=3, depth=2, seed=seed)
    ad = vx.adapter_from_module(m, labels=LABELS, multi_label=True,
                                preprocess={"interpolation": "bilinear"})
    vx.save_model_dir(ad, directory)
    return directory


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("models")
    return _save_model(base / "m0", 0), _save_model(base / "m1", 1)


def write_config(path: Path, cohort: Path, model: Path, *, extra: str = "",
                 models: str | None = None) -> Path:
    model_block = models if models is not None else f'[model]\nspec = "{model}"\n'
    path.write_text(f"""
[cohort]
root = "{cohort / 'images'}"

[[ground_truth]]
format = "chexlocalize"
path = "{cohort / 'gt.json'}"

{model_block}

[explainers]
methods = ["attention", "rollout"]
batch_size = 2

[evaluation]
threshold_rule = "otsu"
thresholds = [0.3, 0.5, 0.7]
tolerance_px = 0.0

[benchmark]
n_boot = 200
{extra}
""")
    return path
