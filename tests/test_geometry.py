"""Geometry: original pixels <-> model input <-> patch grid, on non-square images."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitx_core.geometry import PreprocessSpec, preprocess

MODES = ["resize", "letterbox", "center_crop"]


def test_resize_grid_to_original_equals_interpolate():
    spec = PreprocessSpec(size=(64, 48))
    g = spec.geometry((300, 170))
    grid = np.random.default_rng(0).random((4, 3)).astype(np.float32)
    ours = g.grid_to_original(grid, 16)
    ref = F.interpolate(torch.from_numpy(grid)[None, None], size=(300, 170), mode="bilinear",
                        align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_forward_inverse_roundtrip(mode):
    g = PreprocessSpec(size=(64, 48), mode=mode).geometry((301, 177))
    pts = np.random.default_rng(1).random((50, 2)) * [177, 301]
    np.testing.assert_allclose(g.inverse_points(g.forward_points(pts)), pts, atol=1e-9)
    box = (10.0, 20.0, 30.0, 40.0)
    np.testing.assert_allclose(g.inverse_box(g.forward_box(box)), box, atol=1e-9)


def test_letterbox_keeps_aspect_and_pads_symmetrically():
    spec = PreprocessSpec(size=(64, 64), mode="letterbox", pad_value=0.0, mean=(0,) * 3, std=(1,) * 3)
    img = np.ones((100, 50), np.float32)
    x, g = preprocess(img, spec)
    assert g.resized_hw == (64, 32) and g.offset == (0.0, 16.0)
    assert g.scale == (0.64, 0.64)
    assert torch.all(x[:, :, :16] == 0) and torch.all(x[:, :, 48:] == 0)
    assert torch.allclose(x[:, :, 16:48], torch.ones(3, 64, 32))
    assert g.seen_mask().all()  # every original pixel is inside the input


def test_center_crop_flags_unseen_pixels():
    spec = PreprocessSpec(size=(64, 64), mode="center_crop", crop_pct=1.0)
    g = spec.geometry((64, 128))  # wide image: the left/right quarters are cropped away
    seen = g.seen_mask()
    assert not g.covers_whole_image
    assert seen[:, 32:96].all() and not seen[:, :32].any() and not seen[:, 96:].any()


def _patch_block_in_original(g, r, c, patch):
    """Original pixels whose centre falls in model-input patch (r, c)."""
    h0, w0 = g.src_hw
    (sy, sx), (ty, tx) = g.scale, g.offset
    v = (np.arange(h0) + 0.5) * sy + ty
    u = (np.arange(w0) + 0.5) * sx + tx
    return ((v // patch) == r)[:, None] & ((u // patch) == c)[None, :]


@pytest.mark.parametrize("mode", MODES)
def test_one_hot_patch_maps_back_to_its_pixels(mode):
    """A map that is 1 on one patch comes back (nearest) on exactly that patch's pixels, and the
    bilinear map peaks inside them."""
    spec = PreprocessSpec(size=(64, 48), mode=mode, crop_pct=0.9)
    g = spec.geometry((250, 130))  # non-square, other aspect than the input
    for r, c in [(0, 0), (2, 1), (3, 2)]:
        grid = np.zeros((4, 3), np.float32)
        grid[r, c] = 1.0
        near = g.grid_to_original(grid, 16, mode="nearest")
        block = _patch_block_in_original(g, r, c, 16)
        if mode != "center_crop":
            assert block.any()
        seen = g.seen_mask()
        np.testing.assert_array_equal((near > 0.5) & seen, block & seen)
        bil = g.grid_to_original(grid, 16) * seen  # unseen pixels only repeat the border value
        if block.any():
            assert block[np.unravel_index(np.argmax(bil), bil.shape)]
            assert bil[block].max() == pytest.approx(bil.max())


def test_preprocess_shapes_and_normalisation():
    spec = PreprocessSpec(size=(32, 24), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x, g = preprocess(np.full((90, 70), 0.75, np.float32), spec)
    assert x.shape == (3, 32, 24)
    assert torch.allclose(x, torch.ones_like(x))  # (0.75 - 0.5) / 0.25
    assert g.src_hw == (90, 70) and g.dst_hw == (32, 24)


def test_preprocess_resize_matches_pixels():
    """A bright square in the original lands where the geometry says in the input."""
    img = np.zeros((200, 100), np.float32)
    img[50:100, 25:50] = 1.0
    spec = PreprocessSpec(size=(80, 40), mean=(0,) * 3, std=(1,) * 3, interpolation="nearest")
    x, g = preprocess(img, spec)
    x0, y0, w, h = g.forward_box((25, 50, 25, 50))
    assert (x0, y0, w, h) == (10.0, 20.0, 10.0, 20.0)
    assert torch.all(x[0, 20:40, 10:20] == 1) and x[0].sum() == 200


def test_spec_validation():
    with pytest.raises(ValueError, match="mode"):
        PreprocessSpec(mode="stretch")
    with pytest.raises(ValueError, match="std"):
        PreprocessSpec(std=(0, 1, 1))
    with pytest.raises(ValueError, match="unknown"):
        PreprocessSpec.from_dict({"size": [2, 2], "colour": 1})
    assert PreprocessSpec.from_dict(PreprocessSpec(size=(30, 20)).to_dict()) == PreprocessSpec(size=(30, 20))


def test_grid_extent_for_plotly():
    g = PreprocessSpec(size=(64, 48)).geometry((128, 144))
    x0, y0, dx, dy = g.grid_extent((4, 3), 16)
    assert (x0, y0) == (0.0, 0.0) and dx == pytest.approx(48.0) and dy == pytest.approx(32.0)
