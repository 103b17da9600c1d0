"""Baseline maps: uniform, centre Gaussian, leave-one-out mean-mask prior (hand-computed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitx_core.metrics import (
    MaskPrior,
    baseline_map,
    centre_gaussian,
    pixel_auroc,
    resize_area,
    resize_bilinear,
    uniform_map,
)


def test_uniform_and_gaussian():
    u = uniform_map((5, 7))
    assert u.shape == (5, 7) and (u == 1).all()
    g = centre_gaussian((40, 30), 0.25)
    assert g.shape == (40, 30) and g.max() <= 1.0
    iy, ix = np.unravel_index(np.argmax(g), g.shape)
    assert iy in (19, 20) and ix in (14, 15)
    assert np.allclose(g, g[::-1, ::-1])  # symmetric about the centre
    # sigma is a fraction of each side: one sigma from the centre is exp(-1/2)
    assert g[30, 14] / g[20, 14] == pytest.approx(np.exp(-0.5 * ((30.5 - 20) / 10) ** 2)
                                                  / np.exp(-0.5 * (0.5 / 10) ** 2))
    with pytest.raises(ValueError):
        centre_gaussian((4, 4), 0)


def test_resize_area_preserves_mass_and_bilinear_matches_torch():
    rng = np.random.default_rng(0)
    a = rng.random((37, 23))
    r = resize_area(a, (10, 8))
    assert r.mean() == pytest.approx(a.mean())
    assert resize_area(np.ones((37, 23)), (10, 8)) == pytest.approx(np.ones((10, 8)))
    small = rng.random((6, 5))
    ref = F.interpolate(torch.tensor(small)[None, None], size=(17, 11), mode="bilinear",
                        align_corners=False)[0, 0].numpy()
    assert np.allclose(resize_bilinear(small, (17, 11)), ref, atol=1e-12)


def test_mask_prior_leave_one_out_oracle():
    # canvas = image size -> exact: prior = mean of the OTHER cases' masks
    hw = (4, 4)
    m1 = np.zeros(hw, bool)
    m1[0, :] = True
    m2 = np.zeros(hw, bool)
    m2[:, 0] = True
    m3 = np.zeros(hw, bool)
    m3[0, 0] = True
    p = MaskPrior(canvas=hw)
    for m in (m1, m2, m3):
        p.add("effusion", m)
    p.add("effusion", np.zeros(hw, bool))  # empty masks are not part of the prior
    assert p.counts["effusion"] == 3
    loo1 = p.leave_one_out("effusion", hw, own_mask=m1)
    assert np.allclose(loo1, (m2.astype(float) + m3) / 2)
    # a case that was not added (e.g. finding absent): mean over all three
    assert np.allclose(p.leave_one_out("effusion", hw), (m1.astype(float) + m2 + m3) / 3)
    # only one case with the finding: undefined for that case
    q = MaskPrior(canvas=hw)
    q.add("nodule", m3)
    assert q.leave_one_out("nodule", hw, own_mask=m3) is None
    assert q.leave_one_out("unknown", hw) is None
    # back onto another grid: values in [0, 1], float32
    big = p.leave_one_out("effusion", (9, 13), own_mask=m1)
    assert big.shape == (9, 13) and big.dtype == np.float32 and 0 <= big.min() <= big.max() <= 1


def test_prior_localises_a_consistent_finding():
    # every case has the same box -> the leave-one-out prior is an oracle (AUROC 1)
    hw = (32, 24)
    m = np.zeros(hw, bool)
    m[8:20, 4:12] = True
    p = MaskPrior(canvas=(16, 16))
    for _ in range(3):
        p.add("x", m)
    prior = baseline_map("prior", hw, prior=p, finding="x", own_mask=m)
    assert pixel_auroc(prior, m) > 0.95
    assert baseline_map("uniform", hw).shape == hw
    with pytest.raises(ValueError):
        baseline_map("nope", hw)
