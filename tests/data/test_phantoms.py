"""Synthetic chest phantoms: determinism, exact masks, anatomy sanity, cohort files and round trips."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import vitx_core as vx
from vitx_core.data import (
    FINDINGS,
    case_key,
    cohort_case,
    decode_rle,
    encode_rle,
    generate_sample_cohort,
    mask_boxes,
    phantom_batch,
    render_phantom,
    write_dicom,
)

ALL = set(FINDINGS)


# ----------------------------------------------------------------------------- rendering


def test_same_seed_identical_different_seed_differs():
    a = render_phantom((3, 1), (288, 240), {"nodule", "effusion"})
    b = render_phantom((3, 1), (288, 240), {"nodule", "effusion"})
    assert a.image.dtype == np.float32 and a.image.shape == (288, 240)
    assert a.image.tobytes() == b.image.tobytes()
    for f in FINDINGS:
        assert np.array_equal(a.masks[f], b.masks[f])
    c = render_phantom((3, 2), (288, 240), {"nodule", "effusion"})
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.masks["nodule"], c.masks["nodule"])
    # int seeds and Generators work too; a Generator is consumed like any rng
    assert np.array_equal(render_phantom(5, (64, 64)).image, render_phantom(5, (64, 64)).image)
    g1 = render_phantom(np.random.default_rng(1), (64, 64)).image
    g2 = render_phantom(np.random.default_rng(1), (64, 64)).image
    assert np.array_equal(g1, g2)


def test_image_range_and_display_convention():
    ph = render_phantom((0, 0), (300, 260), set())
    img = ph.image
    assert 0.0 < img.min() and img.max() < 1.0
    lungs, heart, body = ph.anatomy["lungs"], ph.anatomy["heart"], ph.anatomy["body"]
    assert img[lungs].mean() < img[heart].mean() - 0.25  # lungs dark, heart bright
    assert img[~body].mean() < img[lungs].mean()  # air outside the body darkest
    # heart shadow bulges to the image right (patient's left on a PA film)
    cols = np.flatnonzero(heart.any(axis=0))
    mid = np.flatnonzero(lungs.any(axis=0))
    centre = (mid[0] + mid[-1]) / 2
    assert cols[-1] - centre > 1.3 * (centre - cols[0])


@pytest.mark.parametrize("seed", range(6))
def test_masks_nonempty_exactly_when_labelled(seed):
    rng = np.random.default_rng(seed)
    fs = {f for f in FINDINGS if rng.uniform() < 0.5}
    ph = render_phantom((9, seed), (256 + 8 * seed, 224 + 12 * seed), fs)
    assert set(ph.masks) == ALL and set(ph.labels) == ALL
    for f in FINDINGS:
        m = ph.masks[f]
        assert m.dtype == bool and m.shape == ph.image.shape
        assert bool(m.any()) == (f in fs) == bool(ph.labels[f])
    assert np.array_equal(ph.label_vector, [float(f in fs) for f in FINDINGS])


@pytest.mark.parametrize("finding", FINDINGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_removing_a_finding_changes_only_its_mask(finding, seed):
    others = {f for i, f in enumerate(FINDINGS) if f != finding and (i + seed) % 2 == 0}
    size = (270 + 10 * seed, 230 + 20 * seed)
    with_f = render_phantom((21, seed), size, others | {finding})
    without = render_phantom((21, seed), size, others)
    m = with_f.masks[finding]
    changed = with_f.image != without.image
    assert m.any()
    assert not changed[~m].any(), "pixels outside the finding mask changed"
    # the other findings' masks do not depend on this one
    for f in others:
        assert np.array_equal(with_f.masks[f], without.masks[f])
    if finding == "cardiomegaly":
        normal_heart = without.anatomy["heart"]
        assert np.all(m[normal_heart])  # the enlarged silhouette contains the normal heart
        assert changed[m & ~normal_heart].all()
        assert with_f.image[m & ~normal_heart].mean() > without.image[m & ~normal_heart].mean() + 0.1
    else:
        assert changed[m].all(), "every mask pixel is changed by the finding"
        gain = float((with_f.image[m] - without.image[m]).mean())
        assert 0.02 < gain < 0.6  # visible, not saturated


def test_cardiothoracic_ratio():
    for k in range(12):
        size = (256 + 16 * (k % 5), 224 + 19 * (k % 4))
        n = render_phantom((4, k), size, set())
        c = render_phantom((4, k), size, {"cardiomegaly"})
        assert n.ctr < 0.5, (k, n.ctr)
        assert c.ctr > 0.55, (k, c.ctr)
        assert np.array_equal(c.masks["cardiomegaly"], c.anatomy["heart"])


def test_findings_lie_in_the_lungs_effusion_lower_lateral():
    for k in range(8):
        ph = render_phantom((5, k), (300, 260), {"nodule", "consolidation", "effusion"})
        lungs = ph.anatomy["lungs"]
        for f in ("nodule", "consolidation", "effusion"):
            assert np.all(lungs[ph.masks[f]]), f
        for _, _, w, h in mask_boxes(ph.masks["nodule"]):
            assert 8 <= max(w, h) <= 20, (w, h)  # 8-20 px nodules
        eff = ph.masks["effusion"]
        side = [s for s in ("lung_right", "lung_left") if ph.anatomy[s][eff].all()]
        assert len(side) == 1  # inside one lung
        lung = ph.anatomy[side[0]]
        lr, lc = np.nonzero(lung)
        er, ec = np.nonzero(eff)
        top, bottom = lr.min(), lr.max()
        assert er.mean() > top + 0.6 * (bottom - top)  # lower part of the lung
        lateral = -1 if side[0] == "lung_right" else 1  # patient's right lung = image left
        assert lateral * (ec.mean() - lc.mean()) > 0  # lateral half (costophrenic angle)


def test_phantom_batch_reproducible_per_item():
    seed = 1_000_000  # TRAIN_SEED_OFFSET: disjoint from cohort keys
    items = list(phantom_batch(seed, 5, (96, 80), with_masks=True))
    assert len(items) == 5
    for i, (img, lab, masks) in enumerate(items):
        assert img.shape == (96, 80) and img.dtype == np.float32
        assert lab.shape == (len(FINDINGS),) and set(np.unique(lab)) <= {0.0, 1.0}
        assert np.array_equal(masks.any(axis=(1, 2)), lab.astype(bool))
        fs = {f for f, v in zip(FINDINGS, lab) if v}
        assert np.array_equal(render_phantom(case_key(seed, i), (96, 80), fs).image, img)
    again = list(phantom_batch(seed, 5, (96, 80)))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(items, again))


def test_unknown_finding_rejected():
    with pytest.raises(ValueError, match="unknown findings"):
        render_phantom(0, (64, 64), {"pneumothorax"})


# ----------------------------------------------------------------------------- RLE and boxes


def _build(lo, hi, n=25):
    m = np.zeros((n, n), np.uint8)
    m[lo:hi, lo:hi] = 1
    return m


@pytest.mark.parametrize(("mask", "counts"), [
    # strings as pycocotools.mask.encode(np.asfortranarray(mask)) writes them (pycocotools tests /
    # pytorchcocotools test cases)
    (_build(0, 5), "05d00000000d?"),
    (_build(5, 10), "R45d00000000b;"),
    (_build(20, 25), "X`05d00000000"),
])
def test_rle_matches_pycocotools_strings(mask, counts):
    rle = encode_rle(mask)
    assert rle == {"size": [25, 25], "counts": counts}
    assert np.array_equal(decode_rle(rle), mask.astype(bool))


def test_rle_round_trip_random_and_edge_cases():
    rng = np.random.default_rng(0)
    cases = [np.zeros((7, 5), bool), np.ones((7, 5), bool), np.eye(6, 9, dtype=bool)]
    for _ in range(30):
        h, w = rng.integers(1, 70, 2)
        cases.append(rng.uniform(size=(h, w)) < rng.uniform(0.01, 0.99))
    cases.append(render_phantom((1, 1), (200, 170), {"consolidation"}).masks["consolidation"])
    for m in cases:
        rle = encode_rle(m)
        assert rle["size"] == list(m.shape) and isinstance(rle["counts"], str)
        assert np.array_equal(decode_rle(rle), m)
        assert np.array_equal(decode_rle({**rle, "counts": rle["counts"].encode()}), m)
    # uncompressed counts (column-major runs starting with zeros)
    assert np.array_equal(decode_rle({"size": [2, 2], "counts": [1, 2, 1]}),
                          np.array([[False, True], [True, False]]))


def test_mask_boxes_tight_per_component():
    m = np.zeros((20, 30), bool)
    m[2:5, 3:9] = True
    m[10, 20] = True
    m[11, 21] = True  # diagonal neighbour: same 8-connected component
    assert mask_boxes(m) == [(3, 2, 6, 3), (20, 10, 2, 2)]
    assert mask_boxes(np.zeros((4, 4), bool)) == []


# ----------------------------------------------------------------------------- DICOM / PNG


@pytest.mark.parametrize("bits", [12, 14, 16])
@pytest.mark.parametrize("window", [None, "exact", "voi"])
def test_monochrome1_and_2_display_the_same(tmp_path, bits, window):
    ph = render_phantom((2, bits), (190, 150), {"nodule"})
    p1, p2 = tmp_path / "m1.dcm", tmp_path / "m2.dcm"
    write_dicom(p1, ph.image, bits=bits, photometric="MONOCHROME1", window=window)
    write_dicom(p2, ph.image, bits=bits, photometric="MONOCHROME2", window=window)
    a, b = vx.load_image(p1), vx.load_image(p2)
    assert a.hw == b.hw == (190, 150)
    assert a.meta["PhotometricInterpretation"] == "MONOCHROME1"
    assert np.abs(a.pixels - b.pixels).max() < 1e-4
    if window == "exact":  # the window maps the stored values back onto the phantom's intensities
        assert np.abs(b.pixels - ph.image).max() < 1.0 / (2**bits - 1)
    else:  # min-max or a narrower VOI window: an affine (clipped) view of the same image
        sel = (b.pixels > 0.001) & (b.pixels < 0.999)
        coef = np.polyfit(ph.image[sel], b.pixels[sel], 1)
        assert np.abs(np.polyval(coef, ph.image[sel]) - b.pixels[sel]).max() < 4.0 / (2**bits - 1)
        assert coef[0] > 1.0


@pytest.mark.parametrize("rescale", [(1.0, -1024.0), (0.5, -2048.0), (2.0, 100.0)])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_window_with_rescale_displays_the_phantom(tmp_path, rescale, photometric):
    # pydicom's window output spans [intercept, slope * (2**bits - 1) + intercept] when a rescale
    # is present; the display chain must rescale by that range, not by [0, 2**bits - 1]
    ph = render_phantom((2, 9), (120, 96), set())
    p = tmp_path / "r.dcm"
    write_dicom(p, ph.image, bits=12, photometric=photometric, window="exact", rescale=rescale)
    out = vx.load_image(p).pixels
    assert np.abs(out - ph.image).max() < 2.0 / 4095


# ----------------------------------------------------------------------------- cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    man = generate_sample_cohort(out, seed=3, n_cases=10)
    return out, man


def test_cohort_layout_and_manifest(cohort):
    out, man = cohort
    assert json.loads((out / "manifest.json").read_text()) == man
    assert man["seed"] == 3 and len(man["cases"]) == 10 and man["version"]
    kinds = {(c["format"], c["photometric"], c["bits"]) for c in man["cases"]}
    assert {("dicom", "MONOCHROME1"), ("dicom", "MONOCHROME2"), ("png", None)} <= {k[:2] for k in kinds}
    assert {b for f, _, b in kinds if f == "dicom"} == {12, 14, 16}
    assert {b for f, _, b in kinds if f == "png"} == {8, 16}
    assert any(c["window"] for c in man["cases"]) and any(c["rescale"] for c in man["cases"])
    for c in man["cases"]:
        assert Path(c["file"]).stem == c["image_id"]
        assert (out / c["file"]).is_file()
        h, w = c["size"]
        assert 256 <= h <= 320 and 224 <= w <= 300 and h != w


def test_cohort_images_load_and_line_up_with_ground_truth(cohort):
    out, man = cohort
    gt = json.loads((out / "gt_segmentations.json").read_text())
    assert set(gt) == {c["image_id"] for c in man["cases"]}
    for c in man["cases"]:
        li = vx.load_image(out / c["file"])
        assert li.hw == tuple(c["size"])  # DICOM Rows = H, Columns = W; no transpose
        ph = render_phantom(tuple(c["key"]), tuple(c["size"]), c["findings"])
        # what the viewer shows is an affine (possibly clipped) copy of the phantom on the same grid
        sel = (li.pixels > 0.002) & (li.pixels < 0.998)
        coef = np.polyfit(ph.image[sel], li.pixels[sel], 1)
        assert np.abs(np.polyval(coef, ph.image[sel]) - li.pixels[sel]).max() < 3e-3, c["image_id"]
        assert set(gt[c["image_id"]]) == ALL
        for f in FINDINGS:
            rle = gt[c["image_id"]][f]
            assert rle["size"] == list(c["size"])
            assert np.array_equal(decode_rle(rle), ph.masks[f])
            assert decode_rle(rle).any() == (f in c["findings"])


def test_cohort_boxes_and_labels_match_masks(cohort):
    out, _ = cohort
    gt = json.loads((out / "gt_segmentations.json").read_text())
    with open(out / "boxes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == ["image", "finding", "x", "y", "w", "h"]
    got: dict[tuple[str, str], list] = {}
    for r in rows:
        got.setdefault((r["image"], r["finding"]), []).append(tuple(int(r[k]) for k in "xywh"))
    want = {}
    for cid, per in gt.items():
        for f, rle in per.items():
            m = decode_rle(rle)
            if m.any():
                want[(cid, f)] = mask_boxes(m)
                ys, xs = np.nonzero(m)  # union of the boxes = the mask's tight box
                bx = got[(cid, f)]
                assert min(b[0] for b in bx) == xs.min() and min(b[1] for b in bx) == ys.min()
                assert max(b[0] + b[2] for b in bx) == xs.max() + 1
                assert max(b[1] + b[3] for b in bx) == ys.max() + 1
    assert got == want
    with open(out / "labels.csv", newline="") as fh:
        labels = list(csv.DictReader(fh))
    assert list(labels[0]) == ["image", *FINDINGS, "patient_id"]
    for r in labels:
        for f in FINDINGS:
            assert int(r[f]) == int(decode_rle(gt[r["image"]][f]).any())
        assert r["patient_id"] == r["image"]


def test_cohort_dicom_tags_carry_no_phi(cohort):
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    out, man = cohort
    for c in man["cases"]:
        if c["format"] != "dicom":
            continue
        ds = pydicom.dcmread(out / c["file"])
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert str(ds.PatientName) == "ANON^PHANTOM" and ds.PatientID == c["image_id"]
        assert (ds.Rows, ds.Columns) == tuple(c["size"])
        assert ds.BitsStored == c["bits"] and ds.PhotometricInterpretation == c["photometric"]
        assert "PatientBirthDate" not in ds and "InstitutionName" not in ds


def test_broken_files_fail_cleanly(cohort):
    out, man = cohort
    names = {Path(b["file"]).name for b in man["broken"]}
    assert names == {"truncated.dcm", "random_bytes.dcm", "empty.png", "truncated.png", "no_pixels.dcm"}
    for b in man["broken"]:
        with pytest.raises(vx.ImageReadError):
            vx.load_image(out / b["file"])


def test_cohort_files_are_byte_identical_across_runs(tmp_path):
    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    generate_sample_cohort(tmp_path / "a", seed=7, n_cases=4, broken=True)
    generate_sample_cohort(tmp_path / "b", seed=7, n_cases=4, broken=True)
    da, db = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert da == db and len(da) >= 4 + 5 + 4
    generate_sample_cohort(tmp_path / "c", seed=8, n_cases=4, broken=False)
    assert digest(tmp_path / "c")["gt_segmentations.json"] != da["gt_segmentations.json"]


def test_cohort_case_is_reproducible_alone_and_balanced():
    assert cohort_case(0, 17) == cohort_case(0, 17)
    specs = [cohort_case(0, i) for i in range(50)]
    for f in FINDINGS:
        assert sum(f in s["findings"] for s in specs) == 15  # 30 %
    assert sum(not s["findings"] for s in specs) == 10  # 20 % normal
    assert cohort_case(1_000_000, 3)["key"] != cohort_case(0, 3)["key"]
