"""Cohort indexing: the bundled sample cohort, broken inputs, PHI never leaking, pseudonymous ids,
compressed / undecodable DICOM, decompression bombs, and the ``cohort`` / ``sample-data`` commands."""

from __future__ import annotations

import json
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitx_core import cli
from vitx_core.data import FINDINGS, mask_boxes
from vitx_core.data.cohort import PSEUDONYM_ENV, load_cohort, pseudonymous_id
from vitx_core.imageio import ImageReadError

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data" / "cohort"
KEY = "test-key"

PHI = {"PatientName": "SMITHERSON^JOHNATHAN^Q", "PatientID": "MRN8675309",
       "PatientBirthDate": "19450317", "AccessionNumber": "ACC5550123",
       "InstitutionName": "St Elsewhere General Hospital",
       "ReferringPhysicianName": "HOUSEMAN^GREGORY", "StudyDate": "20240229"}
PHI_FRAGMENTS = ["SMITHERSON", "JOHNATHAN", "MRN8675309", "19450317", "1945-03-17", "ACC5550123",
                 "Elsewhere", "HOUSEMAN", "GREGORY", "20240229", "2024-02-29"]


def _pixels(hw: tuple[int, int] = (40, 28)) -> np.ndarray:
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]]
    return ((yy * 37 + xx * 101) % 4096).astype(np.uint16)


def write_dicom(path: Path, arr: np.ndarray, *, ts: str | None = None, phi: bool = True,
                bad_ts: str | None = None) -> Path:
    """A DX DICOM (12-bit) full of PHI; ``ts`` compresses it with pydicom's encoders."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        UID,
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    if phi:
        for k, v in PHI.items():
            setattr(ds, k, v)
    ds.set_pixel_data(arr, photometric_interpretation="MONOCHROME2", bits_stored=12)
    if ts is not None:
        ds.compress(UID(ts))
    if bad_ts is not None:
        ds.file_meta.TransferSyntaxUID = UID(bad_ts)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _png(path: Path, hw: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(hw[0] * hw[1]) % 251).astype(np.uint8).reshape(hw)).save(path)


def _everything(cohort) -> str:
    """All text a cohort can show: reprs, ids, metadata, errors, notes, summaries."""
    parts = [repr(cohort.cases), cohort.format_summary(), json.dumps(cohort.summary()),
             *(str(e) for e in cohort.errors), *cohort.notes]
    for c in cohort.cases:
        parts += [c.case_id, c.image_id, json.dumps(c.meta, default=str), str(c.group_id)]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- sample cohort


def test_sample_cohort_loads_and_masks_equal_box_extents():
    c = load_cohort(SAMPLE / "images", gt=SAMPLE / "gt_segmentations.json",
                    labels_csv=SAMPLE / "labels.csv", key=KEY)
    assert len(c.cases) == 48 and c.errors == []
    assert c.findings == list(FINDINGS)
    assert {x.format for x in c.cases} == {"dicom", "png"}
    manifest = json.loads((SAMPLE / "manifest.json").read_text())
    by_image = {x.image_id: x for x in c.cases}
    for m in manifest["cases"]:
        case = by_image[m["image_id"]]
        assert list(case.size_hw) == m["size"]
        assert case.positives == m["findings"]
    boxes = load_cohort(SAMPLE / "images", gt=SAMPLE / "boxes.csv", key=KEY)
    assert boxes.errors == [] and [x.case_id for x in boxes.cases] == [x.case_id for x in c.cases]
    n_checked = 0
    for a, b in zip(c.cases, boxes.cases):
        for f in FINDINGS:
            ma = a.mask(f)
            assert (ma is None) == (f not in b.annotations)
            if ma is None:
                continue
            tight = sorted(mask_boxes(ma))
            drawn = sorted((int(x.x), int(x.y), int(x.w), int(x.h)) for x in b.annotations[f])
            assert tight == drawn
            assert not (ma & ~b.mask(f)).any()  # every mask pixel inside the union of its boxes
            n_checked += 1
    assert n_checked == sum(len(m["findings"]) for m in manifest["cases"])


def test_broken_folder_yields_five_errors_naming_files():
    c = load_cohort(SAMPLE / "broken", key=KEY)
    assert c.cases == []
    reasons = {e.file: e.reason for e in c.errors}
    assert set(reasons) == {"truncated.dcm", "random_bytes.dcm", "empty.png", "truncated.png",
                            "no_pixels.dcm"}
    assert "truncated" in reasons["truncated.dcm"]
    assert "no pixel data" in reasons["no_pixels.dcm"]
    assert "0 bytes" in reasons["empty.png"]
    assert "Truncated" in reasons["truncated.png"] or "truncated" in reasons["truncated.png"]
    assert "not a DICOM" in reasons["random_bytes.dcm"]
    assert all(e.kind == "image" for e in c.errors)


def test_broken_files_among_good_ones_the_rest_loads(tmp_path):
    shutil.copytree(SAMPLE / "broken", tmp_path / "broken")
    for name in ("case_0000.dcm", "case_0002.png"):
        shutil.copy(SAMPLE / "images" / name, tmp_path / name)
    c = load_cohort(tmp_path, gt=SAMPLE / "gt_segmentations.json", key=KEY)
    assert sorted(x.path for x in c.cases) == ["case_0000.dcm", "case_0002.png"]
    assert sorted(e.file for e in c.errors) == sorted(f"broken/{n}" for n in (
        "empty.png", "no_pixels.dcm", "random_bytes.dcm", "truncated.dcm", "truncated.png"))
    assert c.case(c.cases[0].case_id) is c.cases[0]
    with pytest.raises(KeyError, match="unknown case id"):
        c.case("c_nope")
    c2 = load_cohort(tmp_path, key=KEY, exclude=["broken"])
    assert len(c2.cases) == 2 and c2.errors == []


# ----------------------------------------------------------------------------- PHI


def test_phi_never_appears_in_cases_metadata_ids_or_errors(tmp_path, capsys):
    from pydicom.uid import RLELossless

    root = tmp_path / "cohort"
    write_dicom(root / "good.dcm", _pixels())
    write_dicom(root / "compressed.dcm", _pixels(), ts=RLELossless)
    raw = write_dicom(root / "cut.dcm", _pixels()).read_bytes()
    (root / "cut.dcm").write_bytes(raw[: len(raw) - 300])
    write_dicom(root / "nodecoder.dcm", _pixels(), ts=RLELossless, bad_ts="1.2.840.10008.1.2.4.92")
    write_dicom(root / "series" / "1.2.826.0.1.3680043.8.498.1", _pixels())  # extension-less
    (root / "labels.csv").write_text(f"image,nodule,patient_id\ngood,1,{PHI['PatientID']}\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = load_cohort(root, labels_csv=root / "labels.csv", key=KEY)
        li = c.cases[0].load_image()
    assert len(c.cases) == 3 and len(c.errors) == 2
    text = _everything(c) + repr(li.meta) + li.name + "\n".join(str(w.message) for w in caught)
    out = capsys.readouterr()
    text += out.out + out.err
    for frag in PHI_FRAGMENTS:
        assert frag.lower() not in text.lower(), frag
    assert set(c.cases[0].meta) <= {"Modality", "ViewPosition", "Rows", "Columns", "PixelSpacing",
                                    "ImagerPixelSpacing", "PhotometricInterpretation", "BitsStored",
                                    "ManufacturerModelName", "transfer_syntax", "frames"}
    assert c.cases[0].meta["Modality"] == "DX" and li.name == c.cases[0].case_id


# ----------------------------------------------------------------------------- ids


def test_pseudonymous_ids_stable_keyed_and_root_independent(tmp_path, monkeypatch):
    monkeypatch.delenv(PSEUDONYM_ENV, raising=False)
    for d in ("site_a", "elsewhere/site_b"):
        _png(tmp_path / d / "Smith_John.png", (12, 8))
        _png(tmp_path / d / "sub" / "x.png", (12, 8))
    a1 = load_cohort(tmp_path / "site_a", key=KEY)
    a2 = load_cohort(tmp_path / "site_a", key=KEY)
    b = load_cohort(tmp_path / "elsewhere" / "site_b", key=KEY)
    other = load_cohort(tmp_path / "site_a", key="another-key")
    ids = [x.case_id for x in a1.cases]
    assert ids == [x.case_id for x in a2.cases] == [x.case_id for x in b.cases]
    assert all(i.startswith("c_") and len(i) == 18 for i in ids) and len(set(ids)) == 2
    assert not set(ids) & {x.case_id for x in other.cases}
    assert ids[0] == pseudonymous_id("Smith_John.png", KEY)
    assert all("smith" not in i.lower() and "john" not in i.lower() for i in ids)
    # no key: $VITX_PSEUDONYM_KEY, else the public default (noted)
    default = load_cohort(tmp_path / "site_a")
    assert default.key_is_default and any("public default" in n for n in default.notes)
    monkeypatch.setenv(PSEUDONYM_ENV, KEY)
    env = load_cohort(tmp_path / "site_a")
    assert [x.case_id for x in env.cases] == ids and not env.key_is_default


# ----------------------------------------------------------------------------- DICOM


@pytest.mark.parametrize("ts_name", ["JPEG2000Lossless", "RLELossless"])
def test_compressed_dicom_decodes_to_the_same_pixels(tmp_path, ts_name):
    import pydicom.uid

    ts = getattr(pydicom.uid, ts_name)
    arr = _pixels((45, 37))  # J2K needs >= 32 px a side (6 resolutions)
    write_dicom(tmp_path / "plain.dcm", arr, phi=False)
    write_dicom(tmp_path / "packed.dcm", arr, ts=ts, phi=False)
    c = load_cohort(tmp_path, key=KEY)
    assert c.errors == []
    packed, plain = c.cases
    assert packed.meta["transfer_syntax"] == ts.name and packed.size_hw == (45, 37)
    a, b = packed.load_image(), plain.load_image()
    assert a.hw == (45, 37) and np.array_equal(a.pixels, b.pixels)
    import pydicom

    assert np.array_equal(pydicom.dcmread(tmp_path / "packed.dcm").pixel_array, arr)


def test_missing_decoder_and_truncated_compressed_data_reported_at_indexing(tmp_path, monkeypatch):
    from pydicom.uid import JPEGLSLossless, RLELossless

    write_dicom(tmp_path / "j2k_part2.dcm", _pixels(), ts=RLELossless, bad_ts="1.2.840.10008.1.2.4.92")
    raw = write_dicom(tmp_path / "rle_cut.dcm", _pixels(), ts=RLELossless).read_bytes()
    (tmp_path / "rle_cut.dcm").write_bytes(raw[: len(raw) - 100])
    write_dicom(tmp_path / "jpegls.dcm", _pixels(), ts=RLELossless, bad_ts=JPEGLSLossless)
    write_dicom(tmp_path / "ok.dcm", _pixels(), ts=RLELossless)

    import pydicom.pixels

    real = pydicom.pixels.get_decoder

    class _NoPlugin:  # what pydicom reports when no JPEG-LS plugin is installed
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1",
                                "pyjpegls - requires pyjpegls>=1.2"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder",
                        lambda uid: _NoPlugin() if uid == JPEGLSLossless else real(uid))
    c = load_cohort(tmp_path, key=KEY)
    assert [x.path for x in c.cases] == ["ok.dcm"]
    reasons = {e.file: e.reason for e in c.errors}
    assert "no pixel-data decoder" in reasons["j2k_part2.dcm"]
    assert "JPEG 2000 Part 2" in reasons["j2k_part2.dcm"]
    assert "JPEG-LS" in reasons["jpegls.dcm"] and "pyjpegls" in reasons["jpegls.dcm"]
    assert "truncated" in reasons["rle_cut.dcm"]


def _png_header_only(path: Path, w: int, h: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_decompression_bombs_refused_before_decoding(tmp_path):
    _png_header_only(tmp_path / "big.png", 9000, 8000)     # 72 MP: over the 64 MP default
    _png_header_only(tmp_path / "pil_warn.png", 10000, 9500)  # over PIL's warning limit too
    _png_header_only(tmp_path / "pil_error.png", 20000, 20000)  # over PIL's error limit
    _png(tmp_path / "small.png", (30, 20))
    from pydicom import dcmread

    write_dicom(tmp_path / "huge.dcm", _pixels(), phi=False)
    ds = dcmread(tmp_path / "huge.dcm")
    ds.Rows, ds.Columns = 30000, 30000  # header claims 900 MP
    ds.save_as(tmp_path / "huge.dcm")
    c = load_cohort(tmp_path, key=KEY)
    assert [x.path for x in c.cases] == ["small.png"]
    reasons = {e.file: e.reason for e in c.errors}
    assert set(reasons) == {"big.png", "pil_warn.png", "pil_error.png", "huge.dcm"}
    assert all("refused" in r for r in reasons.values()), reasons
    tiny = load_cohort(tmp_path, key=KEY, max_pixels=500, exclude=["*big*", "pil_*", "huge*"])
    assert tiny.cases == [] and "exceeds the limit of 500" in tiny.errors[0].reason
    ok = load_cohort(tmp_path, key=KEY, exclude=["*big*", "pil_*", "huge*"])
    case = ok.cases[0]
    case._max_pixels = 100
    with pytest.raises(ImageReadError, match="pixel limit"):
        case.load_image()


def test_discovery_recursion_limits_and_ignored_files(tmp_path):
    _png(tmp_path / "a.png", (10, 12))
    _png(tmp_path / "deep" / "b.png", (10, 12))
    _png(tmp_path / ".hidden" / "c.png", (10, 12))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.jpg").write_bytes(b"not a jpeg at all")
    noise = np.random.default_rng(0).integers(0, 255, (64, 48), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "cut.jpg", quality=90)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cut.jpg").read_bytes()[:-400])  # in the scan
    c = load_cohort(tmp_path, key=KEY)
    assert [x.path for x in c.cases] == ["a.png", "deep/b.png"]
    assert {e.file for e in c.errors} == {"fake.jpg", "cut.jpg"}
    assert any("end-of-image" in e.reason for e in c.errors)
    assert any("non-image" in n for n in c.notes)
    assert [x.path for x in load_cohort(tmp_path, key=KEY, recursive=False).cases] == ["a.png"]
    limited = load_cohort(tmp_path, key=KEY, max_images=1)
    assert len(limited.cases) + len(limited.errors) == 1
    with pytest.raises(FileNotFoundError, match="cohort folder not found"):
        load_cohort(tmp_path / "nope")


def test_load_image_on_original_grid_and_verify(tmp_path):
    write_dicom(tmp_path / "d.dcm", _pixels((33, 21)), phi=False)
    _png(tmp_path / "p.png", (17, 29))
    c = load_cohort(tmp_path, key=KEY, verify=True)
    assert c.errors == []
    for case in c.cases:
        li = case.load_image()
        assert li.hw == case.size_hw and li.pixels.dtype == np.float32
        assert 0.0 <= li.pixels.min() and li.pixels.max() <= 1.0


# ----------------------------------------------------------------------------- commands


@pytest.fixture
def data_cli(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "vitx_core.data.commands"))
    return cli


def test_cli_sample_data_and_cohort_summary(tmp_path, data_cli, capsys):
    out = tmp_path / "cohort"
    assert data_cli.main(["sample-data", "--out", str(out), "--seed", "3", "--n-cases", "3"]) == 0
    assert "wrote 3 case(s)" in capsys.readouterr().out
    assert len(list((out / "images").iterdir())) == 3
    rc = data_cli.main(["cohort", "--root", str(out / "images"), "--gt",
                        str(out / "gt_segmentations.json"), "--labels", str(out / "labels.csv")])
    text = capsys.readouterr().out
    assert rc == 0 and "3 case(s)" in text and "0 error(s)" in text
    for f in FINDINGS:
        assert f in text
    rc = data_cli.main(["cohort", "--root", str(out / "broken"), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 1 and len(summary["errors"]) == 5
    assert data_cli.main(["cohort", "--root", str(tmp_path / "missing")]) == 2
    assert "cohort folder not found" in capsys.readouterr().err
    assert data_cli.main(["cohort"]) == 2
    assert data_cli.main(["sample-data", "--out", str(out), "--n-cases", "0"]) == 2


def test_cli_cohort_from_config(data_cli, capsys, tmp_path):
    assert data_cli.main(["cohort", "--config", str(REPO / "sample_data" / "vitx.toml")]) == 0
    text = capsys.readouterr().out
    assert "48 case(s)" in text and "0 error(s)" in text
    bad = tmp_path / "bad.toml"
    bad.write_text('[cohort]\nroot = "nowhere"\nrecursiv = true\n')
    assert data_cli.main(["cohort", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "recursiv" in err and "path not found" in err
    assert data_cli.main(["cohort", "--config", str(bad), "--root", "x"]) == 2
