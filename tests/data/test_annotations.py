"""Ground truth -> boolean masks on the ORIGINAL pixel grid: RLE, CSV boxes (NIH), mask folders,
COCO, labels CSVs and external saliency maps. Every image here is non-square."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitx_core.data import encode_rle as phantom_encode_rle
from vitx_core.data.annotations import (
    GTSpec,
    box_to_mask,
    check_rle,
    decode_rle,
    parse_labels_csv,
    rle_counts,
)
from vitx_core.data.cohort import load_cohort
from vitx_core.data.external_maps import (
    MapReadError,
    load_chexlocalize_pickle,
    read_map_file,
    resize_bilinear,
)
from vitx_core.data.phantoms import decode_rle as phantom_decode_rle

KEY = "test-key"


def _png(path: Path, hw: tuple[int, int], value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full(hw, value, np.uint8)
    a[: hw[0] // 2] = 40  # not constant
    Image.fromarray(a).save(path)


def _jpg(path: Path, hw: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]]
    Image.fromarray(((yy + xx) % 256).astype(np.uint8)).save(path, quality=95)


def _blob(hw: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(hw, bool)
    m[r0:r1, c0:c1] = True
    m[r0, c1 - 1] = False  # not a rectangle: orientation errors show
    return m


# ----------------------------------------------------------------------------- box rule


def test_box_to_mask_pixel_centre_rule_hand_computed():
    # integer box: columns x .. x+w-1, rows y .. y+h-1 (centres j + 0.5 in [x, x + w))
    m = box_to_mask((1, 2, 3, 4), (7, 5))
    expect = np.zeros((7, 5), bool)
    expect[2:6, 1:4] = True
    assert np.array_equal(m, expect)
    # fractional edges: x = 0.5 keeps column 0 (centre 0.5 >= 0.5), x = 0.6 drops it;
    # x + w = 2.5 keeps column 1 (1.5 < 2.5) and drops column 2 (2.5 is not < 2.5)
    assert np.flatnonzero(box_to_mask((0.5, 0, 2.0, 1), (1, 5))[0]).tolist() == [0, 1]
    assert np.flatnonzero(box_to_mask((0.6, 0, 1.9, 1), (1, 5))[0]).tolist() == [1]
    # partly outside: clipped; wholly outside: empty
    assert box_to_mask((-3, -3, 5, 5), (4, 6)).sum() == 4
    assert not box_to_mask((10, 0, 2, 2), (4, 6)).any()


# ----------------------------------------------------------------------------- RLE


@pytest.mark.parametrize("hw", [(7, 5), (1, 9), (33, 20)])
def test_rle_decode_agrees_with_pycocotools_and_phantoms(hw):
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(hw[0] * 100 + hw[1])
    masks = [rng.random(hw) < p for p in (0.0, 0.07, 0.5, 1.0)]
    first = np.zeros(hw, bool)
    first[0, 0] = True
    masks.append(first)
    for m in masks:
        enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        text = enc["counts"].decode("ascii")
        rle = {"size": [int(v) for v in enc["size"]], "counts": text}
        assert np.array_equal(decode_rle(rle), m)
        assert np.array_equal(decode_rle({"size": rle["size"], "counts": enc["counts"]}), m)
        assert check_rle(rle) == (hw, int(m.sum()))
        ph = phantom_encode_rle(m)
        assert ph["counts"] == text and ph["size"] == list(hw)
        assert np.array_equal(decode_rle(ph), m)
        assert np.array_equal(phantom_decode_rle(rle), m)
        runs = rle_counts(text)
        assert np.array_equal(decode_rle({"size": list(hw), "counts": runs}), m)  # list counts


def test_rle_validation_rejects_malformed_counts():
    with pytest.raises(ValueError, match="cover"):
        check_rle({"size": [4, 3], "counts": [5, 2]})
    with pytest.raises(ValueError, match="invalid character"):
        rle_counts("ab\x7f")
    with pytest.raises(ValueError, match="size"):
        check_rle({"size": [4], "counts": "0"})
    with pytest.raises(ValueError, match="negative"):
        rle_counts([3, -1])


# ----------------------------------------------------------------------------- CheXlocalize


def test_chexlocalize_json_round_trip_and_absent_masks(tmp_path):
    hw = {"a": (40, 24), "b": (30, 50)}
    for stem, size in hw.items():
        _png(tmp_path / "img" / f"{stem}.png", size)
    ma = _blob(hw["a"], 5, 20, 3, 11)
    mb = _blob(hw["b"], 10, 25, 30, 47)
    gt = {"a": {"nodule": phantom_encode_rle(ma), "effusion": phantom_encode_rle(np.zeros(hw["a"]))},
          "b.png": {"effusion": phantom_encode_rle(mb)}}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    c = load_cohort(tmp_path / "img", gt=tmp_path / "gt.json", key=KEY)
    assert not c.errors
    a, b = sorted(c.cases, key=lambda x: x.image_id)
    assert a.size_hw == (40, 24) and b.size_hw == (30, 50)
    assert np.array_equal(a.mask("nodule"), ma)
    assert np.array_equal(b.mask("effusion"), mb)
    # all-zero mask = finding absent: label 0 and no (empty) annotation
    assert a.labels == {"nodule": 1, "effusion": 0}
    assert a.mask("effusion") is None and "effusion" not in a.annotations
    assert b.labels == {"nodule": None, "effusion": 1}  # not listed for b: unknown
    assert a.annotations["nodule"][0].kind == "mask"


def test_chexpert_layout_ids(tmp_path):
    root = tmp_path / "valid"
    files = {"patient64622/study1/view1_frontal.jpg": (48, 40),
             "patient64622/study1/view2_lateral.jpg": (48, 36),
             "patient00002/study2/view1_frontal.jpg": (44, 56)}
    for rel, size in files.items():
        _jpg(root / rel, size)
    m1 = _blob((48, 40), 4, 30, 6, 25)
    m2 = _blob((44, 56), 20, 40, 30, 50)
    gt = {"patient64622_study1_view1_frontal": {"Cardiomegaly": phantom_encode_rle(m1)},
          "patient00002_study2_view1_frontal": {"Cardiomegaly": phantom_encode_rle(m2)},
          "patient99999_study1_view1_frontal": {"Cardiomegaly": phantom_encode_rle(m2)}}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    # CheXpert's valid.csv names images by a path from the dataset root
    (tmp_path / "valid.csv").write_text(
        "Path,Sex,Age,Cardiomegaly,Edema\n"
        "CheXpert-v1.0/valid/patient64622/study1/view1_frontal.jpg,Female,73,1,0\n"
        "CheXpert-v1.0/valid/patient64622/study1/view2_lateral.jpg,Female,73,1,\n")
    c = load_cohort(root, gt=GTSpec(tmp_path / "gt.json", format="chexlocalize"),
                    labels_csv=tmp_path / "valid.csv", key=KEY)
    assert not c.errors, c.errors
    by_id = {x.image_id: x for x in c.cases}
    # stems collide (view1_frontal twice): image ids become the CheXlocalize ids
    assert set(by_id) == {"patient64622_study1_view1_frontal", "view2_lateral",
                          "patient00002_study2_view1_frontal"}
    assert np.array_equal(by_id["patient64622_study1_view1_frontal"].mask("Cardiomegaly"), m1)
    assert np.array_equal(by_id["patient00002_study2_view1_frontal"].mask("Cardiomegaly"), m2)
    assert by_id["view2_lateral"].labels == {"Cardiomegaly": 1, "Edema": None}
    assert by_id["patient64622_study1_view1_frontal"].labels["Edema"] == 0
    assert by_id["patient00002_study2_view1_frontal"].labels == {"Cardiomegaly": 1, "Edema": None}
    assert by_id["view2_lateral"].format == "jpeg"
    assert any("patient99999" in n for n in c.notes)  # GT for an image not in the cohort
    assert any("Sex" in n and "Age" in n for n in c.notes)  # non-label columns named


# ----------------------------------------------------------------------------- CSV boxes

NIH_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"


def test_nih_bbox_csv_exact_header_with_rescaling(tmp_path):
    _png(tmp_path / "img" / "00000001_000.png", (256, 512))  # H=256, W=512: sy = 1/4, sx = 1/2
    _png(tmp_path / "img" / "00000002_000.png", (1024, 1024))
    (tmp_path / "BBox_List_2017.csv").write_text(
        NIH_HEADER
        + "00000001_000.png,Atelectasis,103,400,200,80\n"
        + "00000002_000.png,Infiltrate,10.5,20.25,30.0,40.5\n")
    c = load_cohort(tmp_path / "img", gt=GTSpec(tmp_path / "BBox_List_2017.csv", format="nih"),
                    key=KEY)
    assert not c.errors
    a, b = c.cases
    # 103/2 = 51.5 .. 151.5 -> columns 51..150; 400/4 = 100 .. 120 -> rows 100..119
    expect = np.zeros((256, 512), bool)
    expect[100:120, 51:151] = True
    assert np.array_equal(a.mask("Atelectasis"), expect)
    box = a.annotations["Atelectasis"][0]
    assert (box.x, box.y, box.w, box.h) == (51.5, 100.0, 100.0, 20.0)
    assert box.ref_hw == (1024, 1024) and box.raw == (103.0, 400.0, 200.0, 80.0)
    assert "rescaled" in box.note
    # same-size image: no rescale; 10.5..40.5 -> columns 10..39, 20.25..60.75 -> rows 20..60
    expect_b = np.zeros((1024, 1024), bool)
    expect_b[20:61, 10:40] = True
    assert np.array_equal(b.mask("Infiltration"), expect_b)  # NIH box name -> label-file name
    assert a.labels == {"Atelectasis": 1, "Infiltration": None}


def test_csv_header_variants_read_the_same_way(tmp_path):
    _png(tmp_path / "img" / "scan_a.png", (60, 90))
    variants = {
        "upper.csv": "FILENAME,FINDING,X,Y,W,H\nscan_a.png,Nodule,10,5,20,30\n",
        "corners.csv": "Image,Label,xmin,ymin,xmax,ymax\nscan_a,nodule,10,5,30,35\n",
        "width.csv": "file,class,x,y,width,height\nSCAN_A.PNG,NODULE,10,5,20,30\n",
        "reordered.csv": "H,W,y,x,finding label,image index\n30,20,5,10,Nodule,scan_a\n",
    }
    expect = np.zeros((60, 90), bool)
    expect[5:35, 10:30] = True
    for name, text in variants.items():
        (tmp_path / name).write_text(text)
        c = load_cohort(tmp_path / "img", gt=tmp_path / name, key=KEY)
        assert not c.errors, (name, c.errors)
        assert c.findings == ["Nodule"] or c.findings == ["nodule"] or c.findings == ["NODULE"]
        f = c.findings[0]
        assert np.array_equal(c.cases[0].mask(f), expect), name


def test_csv_per_row_reference_size_and_single_finding_option(tmp_path):
    _png(tmp_path / "img" / "x1.png", (100, 50))
    (tmp_path / "b.csv").write_text("image,x,y,w,h,OrigWidth,OrigHeight\nx1,20,40,40,20,100,200\n")
    c = load_cohort(tmp_path / "img", gt=GTSpec(tmp_path / "b.csv", finding="lesion"), key=KEY)
    expect = np.zeros((100, 50), bool)
    expect[20:30, 10:30] = True  # scaled by (100/200, 50/100)
    assert np.array_equal(c.cases[0].mask("lesion"), expect)
    (tmp_path / "nofinding.csv").write_text("image,x,y,w,h\nx1,1,1,2,2\n")
    c2 = load_cohort(tmp_path / "img", gt=tmp_path / "nofinding.csv", key=KEY)
    assert len(c2.errors) == 1 and "no finding column" in c2.errors[0].reason
    assert c2.errors[0].file.endswith("nofinding.csv") and len(c2.cases) == 1


def test_box_outside_clipped_and_bad_rows_reported(tmp_path):
    _png(tmp_path / "img" / "k.png", (40, 30))
    _png(tmp_path / "img" / "ok.png", (40, 30))
    (tmp_path / "boxes.csv").write_text(
        "image,finding,x,y,w,h\n"
        "k,nodule,-5,-5,10,10\n"        # partly outside: clipped to [0, 5) x [0, 5)
        "k,effusion,100,100,5,5\n"      # wholly outside: error for this annotation
        "k,mass,1,abc,2,2\n"            # not a number
        "k,mass,1,1,0,2\n"              # zero width
        "ok,nodule,2,3,4,5\n")
    c = load_cohort(tmp_path / "img", gt=tmp_path / "boxes.csv", key=KEY)
    assert len(c.cases) == 2
    k = next(x for x in c.cases if x.image_id == "k")
    expect = np.zeros((40, 30), bool)
    expect[0:5, 0:5] = True
    assert np.array_equal(k.mask("nodule"), expect)
    assert "clipped" in k.annotations["nodule"][0].note
    assert any("clipped" in n for n in c.notes)
    reasons = [str(e) for e in c.errors]
    assert len(reasons) == 3 and all(r.startswith(str(tmp_path / "boxes.csv")) for r in reasons)
    assert any("line 3" in r and "wholly outside" in r for r in reasons)
    assert any("line 4" in r and "not a number" in r for r in reasons)
    assert any("line 5" in r and "non-positive" in r for r in reasons)
    assert k.labels["effusion"] is None and k.labels["nodule"] == 1


def test_malformed_sources_reported_rest_loads(tmp_path):
    _png(tmp_path / "img" / "a.png", (20, 30))
    (tmp_path / "bad.json").write_text('{"a": {"nodule": {"size": [20, 30], ')
    (tmp_path / "nocols.csv").write_text("name,what\na,b\n")
    (tmp_path / "binary.csv").write_bytes(b"image,x\x00\xff\xfe")
    (tmp_path / "badrle.json").write_text(json.dumps({"a": {"nodule": {"size": [20, 30],
                                                                        "counts": [1, 2]}}}))
    c = load_cohort(tmp_path / "img", key=KEY,
                    gt=[tmp_path / "bad.json", tmp_path / "nocols.csv", tmp_path / "binary.csv",
                        tmp_path / "badrle.json", tmp_path / "missing.csv"])
    assert len(c.cases) == 1
    by_file = {Path(e.file).name: e.reason for e in c.errors}
    assert "malformed JSON" in by_file["bad.json"]
    assert "no image column" in by_file["nocols.csv"]
    assert "malformed CSV" in by_file["binary.csv"]
    assert "bad RLE" in by_file["badrle.json"]
    assert "not found" in by_file["missing.csv"]


# ----------------------------------------------------------------------------- mask folders


def test_mask_folders_binarised_and_size_checked(tmp_path):
    _png(tmp_path / "img" / "p1.png", (32, 48))
    _png(tmp_path / "img" / "p2.png", (32, 48))
    _png(tmp_path / "img" / "p3.png", (32, 48))
    m = _blob((32, 48), 3, 20, 10, 40)
    d = tmp_path / "masks"
    (d / "effusion").mkdir(parents=True)
    (d / "nodule").mkdir(parents=True)
    Image.fromarray((m * 7).astype(np.uint8)).save(d / "effusion" / "p1.png")  # grey level 7 > 0
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[m, 2] = 200  # blue only
    Image.fromarray(rgb).save(d / "nodule" / "p1.png")
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(d / "effusion" / "p2.png")  # empty: absent
    Image.fromarray(np.zeros((48, 32), np.uint8)).save(d / "effusion" / "p3.png")  # transposed
    Image.fromarray((m * 255).astype(np.uint8)).save(d / "nodule" / "p2.jpg", quality=90)
    c = load_cohort(tmp_path / "img", gt=GTSpec(d, format="masks"), key=KEY)
    ids = {x.image_id: x for x in c.cases}
    assert set(ids) == {"p1", "p2"}  # p3 skipped: its mask has the wrong size
    assert np.array_equal(ids["p1"].mask("effusion"), m)
    assert np.array_equal(ids["p1"].mask("nodule"), m)
    assert ids["p2"].labels["effusion"] == 0 and ids["p2"].mask("effusion") is None
    reasons = {Path(e.file).name: e.reason for e in c.errors}
    assert "48x32" in reasons["p3.png"] and "never resized" in reasons["p3.png"]
    assert any("JPEG masks are refused" in e.reason and "p2.jpg" in str(e) for e in c.errors)
    # <dir>/<stem>.png needs finding=
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray((m * 255).astype(np.uint8)).save(flat / "p1.png")
    c2 = load_cohort(tmp_path / "img", gt=GTSpec(flat, finding="consolidation"), key=KEY)
    assert np.array_equal(next(x for x in c2.cases if x.image_id == "p1").mask("consolidation"), m)
    c3 = load_cohort(tmp_path / "img", gt=flat, key=KEY)
    assert len(c3.errors) == 1 and "finding" in c3.errors[0].reason


def test_mask_folder_inside_root_is_not_indexed(tmp_path):
    _png(tmp_path / "a.png", (20, 10))
    (tmp_path / "masks" / "nodule").mkdir(parents=True)
    Image.fromarray(np.ones((20, 10), np.uint8)).save(tmp_path / "masks" / "nodule" / "a.png")
    c = load_cohort(tmp_path, gt=tmp_path / "masks", key=KEY)
    assert [x.path for x in c.cases] == ["a.png"] and not c.errors
    assert c.cases[0].mask("nodule").all()


# ----------------------------------------------------------------------------- COCO


def test_coco_boxes_rescaled_and_absent_categories(tmp_path):
    _png(tmp_path / "img" / "c1.png", (60, 80))
    _png(tmp_path / "img" / "c2.png", (60, 80))
    coco = {"images": [{"id": 1, "file_name": "c1.png", "width": 160, "height": 120},
                       {"id": 2, "file_name": "sub/c2.png", "width": 80, "height": 60}],
            "categories": [{"id": 7, "name": "mass"}, {"id": 9, "name": "nodule"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [20, 10, 40, 30]},
                            {"id": 2, "image_id": 2, "category_id": 9, "bbox": [0, 0, 4, 2]},
                            {"id": 3, "image_id": 2, "category_id": 9, "bbox": [1, 2]},
                            {"id": 4, "image_id": 5, "category_id": 9, "bbox": [1, 2, 3, 4]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    c = load_cohort(tmp_path / "img", gt=tmp_path / "coco.json", key=KEY)
    c1, c2 = c.cases
    expect = np.zeros((60, 80), bool)
    expect[5:20, 10:30] = True  # halved from the 120x160 grid COCO declares
    assert np.array_equal(c1.mask("mass"), expect)
    assert c1.labels == {"mass": 1, "nodule": 0} and c2.labels == {"mass": 0, "nodule": 1}
    assert c2.mask("nodule").sum() == 8
    reasons = " | ".join(e.reason for e in c.errors)
    assert "annotations[2]" in reasons and "annotations[3]" in reasons and len(c.errors) == 2


# ----------------------------------------------------------------------------- labels CSV


def test_labels_csv_values_and_nih_multilabel(tmp_path):
    _png(tmp_path / "img" / "n1.png", (20, 30))
    _png(tmp_path / "img" / "n2.png", (20, 30))
    (tmp_path / "labels.csv").write_text(
        "image,nodule,effusion,age,patient_id\n"
        "n1,1,-1,54,P-001\n"
        "n2,0.0,,61,P-001\n")
    res = parse_labels_csv(tmp_path / "labels.csv")
    assert res.findings == ["nodule", "effusion"]
    assert [r.labels for r in res.rows] == [{"nodule": 1, "effusion": None},
                                             {"nodule": 0, "effusion": None}]
    (tmp_path / "boxes.csv").write_text("image,finding,x,y,w,h\nn2,effusion,1,1,3,3\n"
                                        "n2,nodule,1,1,3,3\n")
    c = load_cohort(tmp_path / "img", gt=tmp_path / "boxes.csv", labels_csv=tmp_path / "labels.csv",
                    key=KEY)
    n1, n2 = c.cases
    assert n1.labels == {"nodule": 1, "effusion": None}
    assert n2.labels == {"nodule": 0, "effusion": 1}  # unknown in the CSV + a box -> 1
    assert any("disagreements" in n for n in c.notes)  # nodule: label 0 but a box
    assert n1.group_id == n2.group_id and n1.group_id.startswith("p_")
    assert "P-001" not in repr(c.cases)
    (tmp_path / "entry.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age\n"
        "n1.png,Cardiomegaly|Effusion,0,11,58\nn2.png,No Finding,1,12,40\n")
    c2 = load_cohort(tmp_path / "img", labels_csv=tmp_path / "entry.csv", key=KEY)
    assert c2.findings == ["Cardiomegaly", "Effusion"]
    assert c2.cases[0].labels == {"Cardiomegaly": 1, "Effusion": 1}
    assert c2.cases[1].labels == {"Cardiomegaly": 0, "Effusion": 0}
    assert c2.cases[0].group_id != c2.cases[1].group_id


# ----------------------------------------------------------------------------- external maps


def test_bilinear_resize_equals_torch_interpolate():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    for src, dst in [((7, 5), (45, 31)), ((14, 20), (6, 9)), ((1, 4), (3, 10)), ((8, 8), (8, 8))]:
        a = rng.random(src).astype(np.float32)
        ref = F.interpolate(torch.from_numpy(a)[None, None], size=dst, mode="bilinear",
                            align_corners=False)[0, 0].numpy()
        assert np.allclose(resize_bilinear(a, dst), ref, atol=1e-6)


def test_external_maps_npy_png_layouts(tmp_path):
    import torch
    import torch.nn.functional as F

    _png(tmp_path / "img" / "00000001_000.png", (40, 24))
    _png(tmp_path / "img" / "00000002_000.png", (30, 50))
    maps = tmp_path / "maps"
    (maps / "rollout").mkdir(parents=True)
    grid = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(maps / "rollout" / "00000001_000.npy", grid[None, None])
    full = np.linspace(0, 1, 30 * 50, dtype=np.float32).reshape(30, 50)
    np.save(maps / "00000002_000_grad_cam.npy", full)
    Image.fromarray(np.arange(6, dtype=np.uint8).reshape(2, 3) * 40).save(
        maps / "00000002_000_legrad.png")
    np.save(maps / "00000001_000_broken.npy", np.zeros((2, 3, 4), np.float32))
    c = load_cohort(tmp_path / "img", maps=maps, key=KEY)
    a, b = c.cases
    sm = a.saliency("rollout")
    assert sm.map_hw == (4, 3) and sm.image_hw == (40, 24) and "bilinear" in sm.note
    ref = F.interpolate(torch.from_numpy(grid)[None, None], size=(40, 24), mode="bilinear",
                        align_corners=False)[0, 0].numpy()
    assert np.allclose(sm.to_original(), ref, atol=1e-6)
    # <stem>_<method> split where the left part names an image (stems contain "_" too)
    assert set(b.maps) == {"grad_cam", "legrad"}
    g = b.saliency("grad_cam")
    assert "no resampling" in g.note and np.array_equal(g.to_original(), full)
    assert b.saliency("legrad").values.tolist() == [[0, 40, 80], [120, 160, 200]]
    with pytest.raises(MapReadError, match="2-D"):
        a.saliency("broken")
    with pytest.raises(KeyError, match="known"):
        a.saliency("nope")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_chexlocalize_pickles_restricted_unpickler(tmp_path):
    import torch
    import torch.nn.functional as F

    _jpg(tmp_path / "valid" / "patient1" / "study1" / "view1_frontal.jpg", (64, 48))
    pk = tmp_path / "gradcam_maps"
    pk.mkdir()
    m = torch.rand(1, 1, 7, 5, generator=torch.Generator().manual_seed(0))
    info = {"map": m, "prob": torch.tensor(0.83), "task": "Cardiomegaly", "gt": torch.tensor(1.0),
            "cxr_img": torch.rand(3, 16, 12), "cxr_dims": (48, 64)}
    with open(pk / "patient1_study1_view1_frontal_Cardiomegaly_map.pkl", "wb") as fh:
        pickle.dump(info, fh)
    c = load_cohort(tmp_path / "valid", maps={"path": pk, "method": "gradcam"}, key=KEY)
    case = c.cases[0]
    sm = case.saliency("gradcam", "Cardiomegaly")
    assert sm.map_hw == (7, 5) and sm.extra["task"] == "Cardiomegaly"
    assert abs(sm.extra["prob"] - 0.83) < 1e-6 and sm.extra["cxr_dims"] == (48, 64)
    ref = F.interpolate(m, size=(64, 48), mode="bilinear", align_corners=False)[0, 0].numpy()
    assert np.allclose(sm.to_original(), ref, atol=1e-6)
    # numpy arrays in the pickle work too
    np_info = {"map": m.numpy()[0, 0], "cxr_dims": [48, 60]}
    (pk / "np_map.pkl").write_bytes(pickle.dumps(np_info))
    values, extra = read_map_file(pk / "np_map.pkl")
    assert values.shape == (7, 5) and extra["cxr_dims"] == (48, 60)
    # anything else is refused before it runs
    marker = tmp_path / "pwned"
    (pk / "evil_map.pkl").write_bytes(pickle.dumps({"map": _Evil(marker)}))
    with pytest.raises(MapReadError, match="refused global"):
        load_chexlocalize_pickle(pk / "evil_map.pkl")
    assert not marker.exists()
    (pk / "trunc_map.pkl").write_bytes(pickle.dumps(info)[:50])
    with pytest.raises(MapReadError, match=r"trunc_map\.pkl"):
        load_chexlocalize_pickle(pk / "trunc_map.pkl")
