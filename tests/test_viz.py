"""vitx_core.viz: colormaps, blending and overlay figures on hand-made arrays."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image

from vitx_core import viz


def _cmap_rgb(name: str, v: float) -> np.ndarray:
    return np.asarray(matplotlib.colormaps[name](v, bytes=True)[:3], dtype=np.uint8)


@pytest.mark.parametrize("name", ["jet", "inferno", "viridis", "gray"])
def test_colorize_endpoints_match_matplotlib(name):
    h = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    rgb = viz.colorize(h, name)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert np.array_equal(rgb[0, 0], _cmap_rgb(name, 0.0))
    assert np.array_equal(rgb[0, 1], _cmap_rgb(name, 1.0))
    assert not np.array_equal(rgb[0, 0], rgb[0, 1])


def test_colorize_clips_and_handles_nan():
    h = np.array([[-3.0, np.nan, 7.0]])
    rgb = viz.colorize(h, "viridis")
    assert np.array_equal(rgb[0, 0], _cmap_rgb("viridis", 0.0))
    assert np.array_equal(rgb[0, 1], _cmap_rgb("viridis", 0.0))
    assert np.array_equal(rgb[0, 2], _cmap_rgb("viridis", 1.0))


def test_colorize_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown colormap"):
        viz.colorize(np.zeros((2, 2)), "no-such-map")
    with pytest.raises(ValueError, match="2-D"):
        viz.colorize(np.zeros((2, 2, 3)))


def test_to_uint8_rgb_variants():
    g = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    out = viz.to_uint8_rgb(g)
    assert out.shape == (1, 3, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 128, 255]
    assert (out[..., 0] == out[..., 2]).all()
    rgb = np.zeros((2, 3, 3), dtype=np.float32)
    rgb[..., 1] = 1.0
    assert viz.to_uint8_rgb(rgb)[0, 0].tolist() == [0, 255, 0]
    u8 = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert np.array_equal(viz.to_uint8_rgb(u8)[..., 1], u8)
    u16 = np.array([[0, 65535]], dtype=np.uint16)
    assert viz.to_uint8_rgb(u16)[0, :, 0].tolist() == [0, 255]
    with pytest.raises(ValueError):
        viz.to_uint8_rgb(np.zeros((2, 2, 2)))


@pytest.fixture
def image_and_map():
    rng = np.random.default_rng(1)
    img = rng.random((70, 90)).astype(np.float32)  # non-square
    hm = rng.random((70, 90)).astype(np.float32)
    return img, hm


def test_blend_alpha_extremes(image_and_map):
    img, hm = image_and_map
    assert np.array_equal(viz.blend(img, hm, alpha=0.0), viz.to_uint8_rgb(img))
    assert np.array_equal(viz.blend(img, hm, alpha=1.0, cmap="inferno"), viz.colorize(hm, "inferno"))
    mid = viz.blend(img, hm, alpha=0.5).astype(int)
    lo = np.minimum(viz.to_uint8_rgb(img), viz.colorize(hm)).astype(int)
    hi = np.maximum(viz.to_uint8_rgb(img), viz.colorize(hm)).astype(int)
    assert ((mid >= lo) & (mid <= hi)).all()


def test_blend_per_pixel_alpha_and_shape_checks(image_and_map):
    img, hm = image_and_map
    a = np.zeros(img.shape)
    a[:, 45:] = 1.0
    out = viz.blend(img, hm, alpha=a)
    assert np.array_equal(out[:, :45], viz.to_uint8_rgb(img)[:, :45])
    assert np.array_equal(out[:, 45:], viz.colorize(hm)[:, 45:])
    with pytest.raises(ValueError, match="does not match"):
        viz.blend(img, hm[:, :-1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        viz.blend(img, hm, alpha=1.5)


def test_overlay_figure_keeps_the_image_grid():
    h0, w0 = 70, 90
    img = np.full((h0, w0), 0.2, dtype=np.float32)
    hm = np.zeros((h0, w0), dtype=np.float32)
    hm[13, 61] = 1.0  # single peak at a known pixel
    fig = viz.overlay_figure(img, hm, "rollout — predicted: nodule (p=0.93) — target: nodule",
                             alpha=0.6, cmap="jet")
    assert isinstance(fig, Image.Image) and fig.mode == "RGB"
    x, y, w, h = fig.info["overlay_box"]
    assert (w, h) == (w0, h0)
    assert y > 0  # title bar above, outside the overlay region
    assert fig.width >= x + w0 and fig.height >= y + h0
    region = viz.overlay_region(fig)
    assert region.shape == (h0, w0, 3)
    assert np.array_equal(region, viz.blend(img, hm, alpha=0.6, cmap="jet"))
    # the peak is at the same pixel, and only there
    dist = np.abs(region.astype(int) - region[0, 0].astype(int)).sum(axis=2)
    assert np.argwhere(dist > 0).tolist() == [[13, 61]]
    # round trip through PNG keeps it
    import io

    buf = io.BytesIO()
    fig.save(buf, format="PNG")
    again = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal(again[y:y + h0, x:x + w0], region)


def test_overlay_figure_tiny_image_and_rgb_input():
    img = np.zeros((5, 4, 3), dtype=np.float32)
    img[..., 0] = 1.0
    hm = np.linspace(0, 1, 20, dtype=np.float32).reshape(5, 4)
    fig = viz.overlay_figure(img, hm, "a long title that is much wider than the image", alpha=0.0)
    assert tuple(fig.info["overlay_box"][2:]) == (4, 5) and fig.width > 4
    assert np.array_equal(viz.overlay_region(fig), viz.to_uint8_rgb(img))


def test_colour_bar_lies_outside_the_overlay():
    img = np.zeros((40, 30), dtype=np.float32)
    hm = np.zeros((40, 30), dtype=np.float32)
    fig = viz.overlay_figure(img, hm, "", alpha=1.0, cmap="viridis")
    x, y, w, h = fig.info["overlay_box"]
    arr = np.asarray(fig)
    right = arr[y:y + h, x + w:]
    top = _cmap_rgb("viridis", 1.0)
    assert (right == top).all(axis=2).any()  # colour bar shows the high end beside the overlay


def test_draw_contour_draws_the_mask_boundary():
    rgb = np.zeros((8, 9, 3), dtype=np.uint8)
    mask = np.zeros((8, 9), dtype=bool)
    mask[2:6, 3:8] = True
    out = viz.draw_contour(rgb, mask, (255, 0, 0))
    edge = (out == [255, 0, 0]).all(axis=2)
    expected = mask.copy()
    expected[3:5, 4:7] = False
    assert np.array_equal(edge, expected)
    assert rgb.max() == 0  # input untouched
    full = viz.mask_boundary(np.ones((3, 4), dtype=bool))
    assert full.sum() == 3 * 4 - 2  # 1-px ring around the image border
    fig = viz.overlay_figure(np.zeros((8, 9)), np.zeros((8, 9)), "t", alpha=0.0,
                             contour_mask=mask, contour_color=(0, 255, 0))
    assert np.array_equal((viz.overlay_region(fig) == [0, 255, 0]).all(axis=2), expected)
