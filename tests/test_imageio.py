"""vitx_core.imageio: PNG / JPEG / arrays / DICOM -> float32 in [0, 1] on the original pixel grid.

DICOM expectations are computed here by hand from the standard (PS3.3 C.11.2.1.2 linear
window, Modality LUT = slope * stored + intercept, MONOCHROME1 inverted once), never by calling
pydicom's own display functions, so a disagreement with pydicom would show.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitx_core as vx
from vitx_core.imageio import (
    DICOM_TAG_ALLOWLIST,
    dicom_display_array,
    dicom_technical_meta,
    is_dicom_file,
    load_image,
)

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

# ---------------------------------------------------------------------------------------------
# helpers


def linear_window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 'LINEAR' window, output scaled to [0, 1]:
    ``x <= c - 0.5 - (w-1)/2 -> 0``; ``x > c - 0.5 + (w-1)/2 -> 1``;
    else ``(x - (c - 0.5)) / (w - 1) + 0.5``."""
    x = np.asarray(x, dtype=np.float64)
    lo = c - 0.5 - (w - 1) / 2
    hi = c - 0.5 + (w - 1) / 2
    return np.where(x <= lo, 0.0, np.where(x > hi, 1.0, (x - (c - 0.5)) / (w - 1) + 0.5))


def minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x - x.min()) / (x.max() - x.min())


def make_dicom(pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2", bits: int = 12,
               signed: bool = False, frames: int | None = None,
               transfer_syntax=ExplicitVRLittleEndian, **tags) -> FileDataset:
    """A minimal grayscale DICOM dataset; ``pixels`` (H, W) or (F, H, W) stored as 16-bit."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset("test", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        if frames is not None:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    else:
        ds.Rows, ds.Columns = 4, 6
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


def write_dicom(path: Path, pixels: np.ndarray | None, **kw) -> Path:
    ds = make_dicom(pixels, **kw)
    ds.save_as(path, enforce_file_format=True)  # 128-byte preamble + "DICM" + file meta
    return path


def stored_values_12bit(h: int = 6, w: int = 9) -> np.ndarray:
    """Non-square 12-bit stored values including both edges of the window used below."""
    edges = [0, 1547, 1548, 1800, 2047, 2048, 2300, 2547, 2548, 4095]
    rest = np.random.default_rng(1).integers(0, 4096, h * w - len(edges))
    return np.concatenate([edges, rest]).reshape(h, w).astype(np.uint16)


def rg1_uncr_path() -> Path:
    """RG1_UNCR.dcm (real chest CR, MONOCHROME1) from the installed ``pydicom-data`` package,
    located on disk only: pydicom's downloader is never called."""
    try:
        from data_store import DataStore  # the package pydicom-data installs
        return Path(DataStore().get_path("RG1_UNCR.dcm"))
    except (ImportError, ValueError):
        pass
    from pydicom.data import get_testdata_file

    p = get_testdata_file("RG1_UNCR.dcm", download=False)
    if p is None:
        pytest.skip("RG1_UNCR.dcm NOT AVAILABLE OFFLINE: install pydicom-data (pip install "
                    "pydicom-data) to run the real chest CR checks; nothing was downloaded")
    return Path(p)


# ---------------------------------------------------------------------------------------------
# raster files


def test_png_8bit_non_square_round_trip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    a[0, 0], a[-1, -1] = 0, 255
    Image.fromarray(a).save(tmp_path / "g8.png")
    li = load_image(tmp_path / "g8.png")
    assert li.pixels.shape == (37, 53)  # (H, W), not transposed
    assert li.pixels.dtype == np.float32
    np.testing.assert_array_equal(li.pixels, (a / 255.0).astype(np.float32))
    assert li.hw == (37, 53) and li.source == "raster" and li.name == "g8"


def test_png_16bit_non_square_round_trip(tmp_path):
    a = np.random.default_rng(0).integers(0, 65536, (41, 29), dtype=np.uint16)
    a[0, :4] = [0, 257, 4095, 65535]
    Image.fromarray(a).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # Pillow reads it back as a 16-bit mode (I;16)
    li = load_image(tmp_path / "g16.png")
    assert li.pixels.shape == (41, 29)
    np.testing.assert_array_equal(li.pixels, (a / 65535.0).astype(np.float32))
    assert li.pixels[0, 3] == 1.0 and li.pixels[0, 0] == 0.0


def test_rgb_png_with_equal_channels_collapses_to_grey(tmp_path):
    g = np.random.default_rng(2).integers(0, 256, (20, 31), dtype=np.uint8)
    Image.fromarray(np.stack([g, g, g], axis=-1)).save(tmp_path / "rgb_grey.png")
    li = load_image(tmp_path / "rgb_grey.png")
    assert li.pixels.shape == (20, 31)
    np.testing.assert_array_equal(li.pixels, (g / 255.0).astype(np.float32))


def test_rgb_png_with_colour_stays_rgb(tmp_path):
    c = np.random.default_rng(3).integers(0, 256, (20, 31, 3), dtype=np.uint8)
    Image.fromarray(c).save(tmp_path / "colour.png")
    li = load_image(tmp_path / "colour.png")
    assert li.pixels.shape == (20, 31, 3)
    np.testing.assert_array_equal(li.pixels, (c / 255.0).astype(np.float32))


def test_jpeg_loads(tmp_path):
    yy, xx = np.mgrid[0:48, 0:80]
    g = (127 + 100 * np.sin(yy / 7.0) * np.cos(xx / 9.0)).astype(np.uint8)
    Image.fromarray(g).save(tmp_path / "cxr.jpg", quality=95)
    li = load_image(tmp_path / "cxr.jpg")
    assert li.pixels.shape == (48, 80)
    assert 0.0 <= li.pixels.min() and li.pixels.max() <= 1.0
    assert np.abs(li.pixels - g / 255.0).mean() < 0.02  # lossy but close


def test_pil_images_load_like_files(tmp_path):
    a = np.random.default_rng(4).integers(0, 65536, (9, 13), dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "p.png")
    from_file = load_image(tmp_path / "p.png").pixels
    with Image.open(tmp_path / "p.png") as im:
        np.testing.assert_array_equal(load_image(im).pixels, from_file)
        # mode "I" (32-bit) holding 16-bit values: same values, not a min-max stretch
        np.testing.assert_array_equal(load_image(im.convert("I")).pixels, from_file)
    g = np.random.default_rng(5).integers(0, 256, (9, 13), dtype=np.uint8)
    rgb = Image.fromarray(np.stack([g, g, g], axis=-1))
    np.testing.assert_array_equal(load_image(rgb).pixels, (g / 255.0).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# arrays


def test_array_uint8_and_uint16():
    a8 = np.array([[0, 1, 128, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(load_image(a8).pixels, (a8 / 255.0).astype(np.float32))
    a16 = np.array([[0, 1, 4095, 65535], [2, 3, 4, 5]], dtype=np.uint16)
    out = load_image(a16)
    assert out.pixels.shape == (2, 4) and out.source == "array"
    np.testing.assert_array_equal(out.pixels, (a16 / 65535.0).astype(np.float32))


def test_array_float_in_unit_range_kept_and_outside_min_max():
    f = np.random.default_rng(6).random((7, 5))
    np.testing.assert_array_equal(load_image(f).pixels, f.astype(np.float32))
    g = np.array([[-2.0, 0.0], [2.0, 6.0]], dtype=np.float32)
    np.testing.assert_allclose(load_image(g).pixels, [[0.0, 0.25], [0.5, 1.0]])
    with pytest.raises(vx.ImageReadError, match="NaN"):
        load_image(np.array([[0.0, np.nan]]))


def test_array_bool_signed_and_tensor():
    b = np.array([[True, False, True]])
    np.testing.assert_array_equal(load_image(b).pixels, [[1.0, 0.0, 1.0]])
    s = np.array([[-100, 0, 100]], dtype=np.int16)  # signed: min-max
    np.testing.assert_allclose(load_image(s).pixels, [[0.0, 0.5, 1.0]])
    t = torch.rand(6, 4)
    np.testing.assert_array_equal(load_image(t).pixels, t.numpy())


def test_array_channel_layouts():
    rng = np.random.default_rng(7)
    chw = rng.random((3, 10, 14)).astype(np.float32)
    out = load_image(chw).pixels
    assert out.shape == (10, 14, 3)
    np.testing.assert_array_equal(out, np.moveaxis(chw, 0, -1))
    hw1 = rng.random((10, 14, 1)).astype(np.float32)
    np.testing.assert_array_equal(load_image(hw1).pixels, hw1[..., 0])
    rgba = rng.integers(0, 256, (10, 14, 4), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(rgba).pixels, (rgba[..., :3] / 255.0).astype(np.float32))
    with pytest.raises(vx.ImageReadError, match="shape"):
        load_image(np.zeros((2, 3, 4, 5)))
    with pytest.raises(TypeError):
        load_image(12345)


# ---------------------------------------------------------------------------------------------
# DICOM


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_12bit_window_matches_standard(tmp_path, photometric):
    a = stored_values_12bit()
    c, w = 2048, 1001
    p = write_dicom(tmp_path / "w12.dcm", a, photometric=photometric, bits=12,
                    WindowCenter=c, WindowWidth=w)
    li = load_image(p)
    expected = linear_window(a, c, w)
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected  # inverted exactly once
    assert li.pixels.shape == a.shape and li.source == "dicom" and li.name == "w12"
    np.testing.assert_allclose(li.pixels, expected, atol=1e-6, rtol=0)
    # the hand-picked edges: last value clipped low, first value inside, etc.
    lowv, inside = (1.0, 0.0) if photometric == "MONOCHROME1" else (0.0, 1.0)
    assert li.pixels[0, 1] == pytest.approx(lowv) and li.pixels[0, 2] != pytest.approx(lowv)
    assert li.pixels[0, 8] == pytest.approx(inside) and li.pixels[0, 7] != pytest.approx(inside)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_16bit_with_and_without_window(tmp_path, photometric):
    a = np.random.default_rng(8).integers(0, 65536, (11, 7)).astype(np.uint16)
    a[0, 0], a[0, 1] = 0, 65535
    inv = (lambda v: 1.0 - v) if photometric == "MONOCHROME1" else (lambda v: v)
    p = write_dicom(tmp_path / "nowin.dcm", a, photometric=photometric, bits=16)
    np.testing.assert_allclose(load_image(p).pixels, inv(minmax(a)), atol=1e-6, rtol=0)
    c, w = 30000, 20000
    p = write_dicom(tmp_path / "win.dcm", a, photometric=photometric, bits=16,
                    WindowCenter=c, WindowWidth=w)
    np.testing.assert_allclose(load_image(p).pixels, inv(linear_window(a, c, w)), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("slope", "intercept", "c", "w"), [
    (1.0, -1024.0, 0.0, 2000.0),     # CT-like intercept
    (2.0, -1024.0, 1500.0, 3001.0),
    (0.5, 100.0, 900.0, 700.0),
])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_rescale_then_window(tmp_path, slope, intercept, c, w, photometric):
    """The window applies to modality values ``slope * stored + intercept``; below -> 0, above -> 1
    whatever the intercept (a window output range taken as [0, 2**bits - 1] shifted everything
    by ``intercept / 2**bits`` and capped saturated pixels at 0.75)."""
    a = stored_values_12bit()
    p = write_dicom(tmp_path / "resc.dcm", a, photometric=photometric, bits=12,
                    RescaleSlope=slope, RescaleIntercept=intercept, WindowCenter=c, WindowWidth=w)
    expected = linear_window(a * slope + intercept, c, w)
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected
    out = load_image(p).pixels
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)
    assert out.min() == pytest.approx(0.0) and out.max() == pytest.approx(1.0)


def test_dicom_rescale_without_window_is_min_max_of_modality_values(tmp_path):
    a = stored_values_12bit()
    p = write_dicom(tmp_path / "r.dcm", a, RescaleSlope=3.0, RescaleIntercept=-50.0)
    np.testing.assert_allclose(load_image(p).pixels, minmax(a * 3.0 - 50.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("rescale", [False, True])
def test_dicom_signed_16bit_window(tmp_path, rescale):
    a = np.random.default_rng(9).integers(-2000, 3000, (5, 8)).astype(np.int16)
    a[0, :3] = [-2000, 500, 2999]
    tags = {"RescaleSlope": 1.0, "RescaleIntercept": 0.0} if rescale else {}
    p = write_dicom(tmp_path / "s.dcm", a, bits=16, signed=True, WindowCenter=500,
                    WindowWidth=1500, **tags)
    np.testing.assert_allclose(load_image(p).pixels, linear_window(a, 500, 1500), atol=1e-6, rtol=0)


def test_dicom_multiple_windows_uses_the_first(tmp_path):
    a = stored_values_12bit()
    p = write_dicom(tmp_path / "mw.dcm", a, WindowCenter=[2048, 1000], WindowWidth=[1001, 400])
    np.testing.assert_allclose(load_image(p).pixels, linear_window(a, 2048, 1001), atol=1e-6, rtol=0)


def test_dicom_empty_window_tags_are_ignored(tmp_path):
    a = stored_values_12bit() // 2 + 100  # not spanning 0..4095: min-max differs from / 4095
    ds = make_dicom(a)
    ds.add_new(0x00281050, "DS", None)  # WindowCenter present but empty
    ds.add_new(0x00281051, "DS", None)
    ds.save_as(tmp_path / "empty_win.dcm", enforce_file_format=True)
    np.testing.assert_allclose(load_image(tmp_path / "empty_win.dcm").pixels, minmax(a), atol=1e-6)


def voi_lut_item(lut: list[int], first: int, vr: str) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(lut), first, 12]
    if vr == "US":
        item.add_new(0x00283006, "US", lut)
    else:
        item.add_new(0x00283006, "OW", np.asarray(lut, dtype="<u2").tobytes())
    return item


@pytest.mark.parametrize(("vr", "syntax"), [("US", ExplicitVRLittleEndian),
                                            ("OW", ExplicitVRLittleEndian),
                                            ("US", ImplicitVRLittleEndian)])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_voi_lut_sequence(tmp_path, vr, syntax, photometric):
    """A VOI LUT replaces the window (and wins over one); output scaled by the LUT's own range.
    LUTData may be US or OW (implicit-VR files read it back as OW bytes)."""
    first = 10
    lut = [100 + 30 * i for i in range(32)]  # 32 entries for stored values 10..41
    a = np.array([[0, 9, 10, 11, 20, 41, 42, 400], [25, 26, 27, 28, 29, 30, 31, 32]], np.uint16)
    p = write_dicom(tmp_path / "lut.dcm", a, photometric=photometric, transfer_syntax=syntax,
                    VOILUTSequence=Sequence([voi_lut_item(lut, first, vr)]),
                    WindowCenter=2000, WindowWidth=10)
    idx = np.clip(a.astype(np.int64) - first, 0, len(lut) - 1)
    expected = (np.asarray(lut)[idx] - min(lut)) / (max(lut) - min(lut))
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected
    np.testing.assert_allclose(load_image(p).pixels, expected, atol=1e-6, rtol=0)


def test_extensionless_dicom_detected_by_preamble(tmp_path):
    a = stored_values_12bit()
    p = write_dicom(tmp_path / "IM000001", a, WindowCenter=2048, WindowWidth=1001)
    assert is_dicom_file(p)
    li = load_image(p)
    assert li.source == "dicom" and li.name == "IM000001"
    np.testing.assert_allclose(li.pixels, linear_window(a, 2048, 1001), atol=1e-6, rtol=0)


def test_is_dicom_file(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "x.png")
    assert not is_dicom_file(tmp_path / "x.png")
    (tmp_path / "junk.DCM").write_bytes(b"not dicom")
    assert is_dicom_file(tmp_path / "junk.DCM")  # suffix is enough (case-insensitive)
    assert not is_dicom_file(tmp_path / "missing")
    (tmp_path / "short").write_bytes(b"DICM")
    assert not is_dicom_file(tmp_path / "short")
    (tmp_path / "marker").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)
    assert is_dicom_file(tmp_path / "marker")


def test_multiframe_dicom_uses_first_frame_with_warning(tmp_path):
    f0 = stored_values_12bit(4, 6)
    frames = np.stack([f0, np.clip(f0.astype(int) + 500, 0, 4095), np.full_like(f0, 4095)])
    p = write_dicom(tmp_path / "mf.dcm", frames, frames=3)
    with pytest.warns(vx.VitxWarning, match="first frame"):
        li = load_image(p)
    assert li.pixels.shape == (4, 6)
    np.testing.assert_allclose(li.pixels, minmax(f0), atol=1e-6, rtol=0)


def test_dicom_display_array_on_dataset_in_memory():
    a = stored_values_12bit()
    ds = make_dicom(a, photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=1001)
    out = dicom_display_array(ds)
    assert out.dtype == np.float32 and out.shape == a.shape
    np.testing.assert_allclose(out, 1.0 - linear_window(a, 2048, 1001), atol=1e-6, rtol=0)


PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-99887766",
    "PatientBirthDate": "19700131",
    "InstitutionName": "Saint Example Hospital",
    "AccessionNumber": "ACC-55512345",
    "ReferringPhysicianName": "House^Gregory",
}


def test_dicom_meta_has_allowlisted_tags_only_and_no_phi(tmp_path):
    a = stored_values_12bit()
    p = write_dicom(tmp_path / "phi.dcm", a, WindowCenter=2048, WindowWidth=1001,
                    ViewPosition="PA", PixelSpacing=[0.143, 0.139],
                    ImagerPixelSpacing=[0.15, 0.15], ManufacturerModelName="Model X", **PHI)
    li = load_image(p)
    assert set(li.meta) <= set(DICOM_TAG_ALLOWLIST)
    text = json.dumps(li.meta) + repr(li.meta)
    for kw, value in PHI.items():
        assert kw not in li.meta
        assert value not in text
        for part in value.split("^"):
            assert part not in text, f"{kw} leaked into LoadedImage.meta"
    assert li.meta["Modality"] == "DX" and li.meta["ViewPosition"] == "PA"
    assert li.meta["Rows"] == a.shape[0] and li.meta["Columns"] == a.shape[1]
    assert li.meta["PixelSpacing"] == pytest.approx([0.143, 0.139])
    assert li.meta["PhotometricInterpretation"] == "MONOCHROME2" and li.meta["BitsStored"] == 12
    assert json.loads(json.dumps(li.meta)) == li.meta  # plain JSON values


def test_dicom_technical_meta_on_dataset():
    ds = make_dicom(stored_values_12bit(), **PHI)
    meta = dicom_technical_meta(ds)
    assert set(meta) <= set(DICOM_TAG_ALLOWLIST)
    assert not set(PHI) & set(meta)
    assert meta["Rows"] == 6 and meta["Columns"] == 9


# ---------------------------------------------------------------------------------------------
# a real chest radiograph (pydicom-data, offline)


@pytest.fixture(scope="module")
def rg1():
    p = rg1_uncr_path()
    return p, pydicom.dcmread(p), load_image(p)


def test_real_chest_cr_shape_range_and_window(rg1):
    _, ds, li = rg1
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert li.pixels.shape == (ds.Rows, ds.Columns)  # (1955, 1841): not square, not transposed
    assert ds.Rows != ds.Columns
    assert li.pixels.dtype == np.float32
    assert 0.0 <= li.pixels.min() and li.pixels.max() <= 1.0
    # the file's own window, applied by hand, then the single MONOCHROME1 inversion
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = 1.0 - linear_window(ds.pixel_array, c, w)
    np.testing.assert_allclose(li.pixels, expected, atol=1e-6, rtol=0)
    assert li.meta["Modality"] == "CR" and li.meta["PhotometricInterpretation"] == "MONOCHROME1"
    assert "PatientName" not in li.meta and str(ds.PatientName) not in json.dumps(li.meta)


def test_real_chest_cr_lungs_are_dark(rg1):
    """Air-filled lungs must display darker than the mediastinum / spine: catches a missing or
    a double MONOCHROME1 inversion (regions read off the displayed image)."""
    _, _, li = rg1
    p = li.pixels
    h, w = p.shape

    def region(r0, r1, c0, c1):
        return float(p[int(r0 * h):int(r1 * h), int(c0 * w):int(c1 * w)].mean())

    right_lung = region(0.15, 0.38, 0.15, 0.33)   # patient's right = image left (PA view)
    left_lung = region(0.15, 0.38, 0.62, 0.80)
    mediastinum = region(0.20, 0.70, 0.46, 0.54)  # spine / heart centre column band
    assert right_lung < mediastinum - 0.1, (right_lung, mediastinum)
    assert left_lung < mediastinum - 0.1, (left_lung, mediastinum)


# ---------------------------------------------------------------------------------------------
# bad input: always ImageReadError naming the file


def test_missing_file(tmp_path):
    with pytest.raises(vx.ImageReadError, match=re.escape("nope.png")):
        load_image(tmp_path / "nope.png")


@pytest.mark.parametrize("name", ["empty.png", "empty.dcm", "empty"])
def test_zero_byte_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(vx.ImageReadError, match=rf"{re.escape(name)}.*empty|empty.*{re.escape(name)}"):
        load_image(tmp_path / name)


def test_truncated_png(tmp_path):
    a = np.random.default_rng(10).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    for cut in (len(data) // 2, 40, 8):
        (tmp_path / "trunc.png").write_bytes(data[:cut])
        with pytest.raises(vx.ImageReadError, match=re.escape("trunc.png")):
            load_image(tmp_path / "trunc.png")


def test_text_file_with_png_suffix(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image\n")
    with pytest.raises(vx.ImageReadError, match=re.escape("notes.png")):
        load_image(tmp_path / "notes.png")


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_with_dcm_suffix(tmp_path, seed):
    rng = np.random.default_rng(seed)
    (tmp_path / "random.dcm").write_bytes(rng.bytes(int(rng.integers(10, 5000))))
    with pytest.raises(vx.ImageReadError, match=re.escape("random.dcm")):
        load_image(tmp_path / "random.dcm")


def test_random_bytes_after_dicm_marker(tmp_path):
    rng = np.random.default_rng(11)
    (tmp_path / "fake").write_bytes(b"\0" * 128 + b"DICM" + rng.bytes(3000))
    with pytest.raises(vx.ImageReadError, match="fake"):
        load_image(tmp_path / "fake")


def test_dicom_without_pixel_data(tmp_path):
    p = write_dicom(tmp_path / "nopix.dcm", None)
    with pytest.raises(vx.ImageReadError, match=r"nopix\.dcm.*no pixel data"):
        load_image(p)


def test_dicom_with_truncated_pixel_data(tmp_path):
    ds = make_dicom(stored_values_12bit())
    ds.PixelData = ds.PixelData[:10]
    ds.save_as(tmp_path / "short_px.dcm", enforce_file_format=True)
    with pytest.raises(vx.ImageReadError, match=re.escape("short_px.dcm")):
        load_image(tmp_path / "short_px.dcm")


def test_oversized_images_refused_before_decoding(tmp_path):
    """A decompression bomb: a tiny PNG file that declares a huge canvas is refused with a
    clear message (no decoding of the pixels), and the limit is configurable."""
    p = tmp_path / "bomb.png"
    Image.new("L", (4000, 3000)).save(p, optimize=True)  # 12 Mpx, a few kB on disk
    assert p.stat().st_size < 100_000
    with pytest.raises(vx.ImageReadError, match=r"bomb\.png: refused, image too large"):
        vx.load_image(p, max_pixels=1_000_000)
    assert vx.load_image(p).hw == (3000, 4000)  # under the default limit


def test_oversized_dicom_refused_from_its_header(tmp_path):
    p = write_dicom(tmp_path / "huge.dcm", np.zeros((2, 3), np.uint16))
    import pydicom

    ds = pydicom.dcmread(p)
    ds.Rows, ds.Columns = 20000, 20000  # header claims 400 Mpx; pixel data never decoded
    ds.save_as(p)
    with pytest.raises(vx.ImageReadError, match=r"huge\.dcm: refused, image too large"):
        vx.load_image(p)
