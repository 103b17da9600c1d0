"""Reading images for explanation: PNG / JPEG / DICOM / PIL / arrays -> float32 in [0, 1].

The result keeps the ORIGINAL pixel grid (DICOM ``Rows x Columns``, PNG size); every heatmap vitx
returns is expressed on it. DICOM display chain (pydicom): modality LUT (rescale slope /
intercept) -> VOI LUT or window centre/width -> scale to [0, 1] -> invert MONOCHROME1 exactly once.
Only an allowlist of technical tags is read into :attr:`LoadedImage.meta` (no PHI).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ._warnings import VitxWarning

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}

#: DICOM tags that may be shown or exported: technical, never identifying.
DICOM_TAG_ALLOWLIST: tuple[str, ...] = (
    "Modality",
    "ViewPosition",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "PhotometricInterpretation",
    "BitsStored",
    "ManufacturerModelName",
)


class ImageReadError(ValueError):
    """An input could not be read as an image; the message says why."""


@dataclass
class LoadedImage:
    """An image on its original pixel grid.

    Attributes:
        pixels: float32 ``(H, W)`` (grayscale) or ``(H, W, 3)`` with values in [0, 1].
        source: ``dicom`` | ``raster`` | ``array``.
        name: file stem or a caller-given name (used for output folders).
        meta: allowlisted technical metadata only.
    """

    pixels: np.ndarray
    source: str = "array"
    name: str = "image"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a ``.dcm`` suffix or the ``DICM`` preamble marker (extension-less DICOM)."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _array_to_unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # CHW -> HWC
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ImageReadError(f"expected an (H, W) or (H, W, 3) image array, got shape {a.shape}")
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        if info.min < 0:
            a = a.astype(np.float64)
            lo, hi = float(a.min()), float(a.max())
            return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)
        return (a.astype(np.float64) / info.max).astype(np.float32)
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ImageReadError("image array contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0.0 or hi > 1.0:  # floats outside [0, 1]: min-max, stated in the docstring of load_image
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a


def _pil_to_array(im: Image.Image) -> np.ndarray:
    """A PIL image (EXIF orientation applied) -> integer / float array; grey RGB -> ``(H, W)``.

    Shared by files and in-memory PIL images so both give the same values: 16-bit modes stay
    uint16 (divided by 65535 later), mode ``I`` within 0..65535 too, palettes / bilevel -> L.
    """
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(im, dtype=np.uint16)
    elif mode == "I":
        a = np.asarray(im, dtype=np.int64)
        a = a.astype(np.uint16) if a.size and a.min() >= 0 and a.max() <= 65535 else a
    elif mode == "F":
        a = np.asarray(im, dtype=np.float32)
    elif mode in ("L", "P", "1", "LA"):
        a = np.asarray(im.convert("L"), dtype=np.uint8)
    else:
        a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if a.ndim == 3 and np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
        a = a[..., 0]
    return a


#: Largest image (pixels per frame) decoded by default: a 43 x 35 cm detector at 0.1 mm is
#: ~15 Mpx; anything far above is refused before decoding (decompression bombs).
MAX_PIXELS = 64_000_000


def _check_pixels(name: str, h: int, w: int, max_pixels: int | None) -> None:
    if max_pixels is not None and h * w > max_pixels:
        raise ImageReadError(f"{name}: refused, image too large ({w} x {h} = {h * w:,} pixels > "
                             f"limit {max_pixels:,}; raise max_pixels to allow it)")


def _read_raster(path: Path, max_pixels: int | None = MAX_PIXELS) -> LoadedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_pixels(path.name, im.height, im.width, max_pixels)
                a = _pil_to_array(im)
    except Image.DecompressionBombWarning as e:
        if max_pixels is None or max_pixels > Image.MAX_IMAGE_PIXELS:
            raise ImageReadError(f"{path.name}: refused by Pillow's size guard ({e})") from e
        raise ImageReadError(f"{path.name}: refused, image too large ({e})") from e
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path.name}: refused, image too large ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path.name}: not a readable image ({e})") from e
    return LoadedImage(_array_to_unit(a), "raster", path.stem, {"size": list(a.shape[:2])})


def dicom_display_array(ds: Any) -> np.ndarray:
    """A pydicom dataset -> float32 ``(H, W)`` in [0, 1] for viewing and for the model.

    Modality LUT, then VOI LUT or window (first window if several), then MONOCHROME1 inverted
    once. Without any VOI information the modality values are min-max scaled. Multi-frame data
    uses the first frame (with a warning).
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises several types for missing decoders / bad data
        tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageReadError(f"cannot decode DICOM pixel data (transfer syntax {tsuid}): {e}"
                             ) from e
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        warnings.warn(f"multi-frame DICOM ({frames} frames): using the first frame",
                      VitxWarning, stacklevel=3)
        arr = arr[0]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return _array_to_unit(arr)  # colour DICOM (RGB / YBR converted by pydicom)
    x = apply_modality_lut(arr, ds)
    if _has_values(ds, "VOILUTSequence"):
        # LUT entries are indexed by integer stored values: round (not truncate) rescaled ones,
        # and let pydicom decode LUTData whatever its VR (US list or OW bytes); the output is
        # rescaled by the LUT's own range.
        xi = x if np.issubdtype(x.dtype, np.integer) else np.rint(x).astype(np.int64)
        y = apply_voi_lut(xi, ds, index=0).astype(np.float64)
        lo, hi = _voi_lut_range(ds)
    elif _has_values(ds, "WindowCenter") and _has_values(ds, "WindowWidth"):
        # pydicom's window output spans its own nominal range (stored-bit range, through the
        # rescale when there is one); divide by that range, not by the data, so a window keeps
        # its meaning: below the window -> 0, above -> 1 (PS3.3 C.11.2.1.2).
        y = apply_windowing(x.astype(np.float64), ds, index=0)
        lo, hi = _window_output_range(ds)
    else:
        x = x.astype(np.float64)
        lo, hi = float(x.min()), float(x.max())
        y = x
    y = (y - lo) / (hi - lo) if hi != lo else np.zeros_like(y, dtype=np.float64)
    y = np.clip(y, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        y = 1.0 - y
    return y.astype(np.float32)


def _has_values(ds: Any, keyword: str) -> bool:
    """The tag is present and not empty (an empty WindowCenter is treated as absent)."""
    if keyword not in ds:
        return False
    v = ds[keyword].value
    return v is not None and not (hasattr(v, "__len__") and len(v) == 0)


def _window_output_range(ds: Any) -> tuple[float, float]:
    """(value for pixels below the window, value above it) of ``pydicom.apply_windowing``.

    Probed rather than re-derived, so it follows pydicom exactly (unsigned / signed stored
    values, Modality LUT, RescaleSlope / Intercept, LINEAR / LINEAR_EXACT / SIGMOID); for
    a negative slope ``lo > hi`` and the linear rescale still sends below -> 0, above -> 1.
    """
    from pydicom.pixels import apply_windowing

    with np.errstate(over="ignore"):
        lo, hi = apply_windowing(np.array([-1e30, 1e30]), ds, index=0)
    return float(lo), float(hi)


def _voi_lut_range(ds: Any) -> tuple[float, float]:
    """Min and max of the first VOI LUT's entries, decoded by pydicom (US or OW LUTData)."""
    from pydicom.pixels import apply_voi_lut

    desc = [int(v) for v in ds.VOILUTSequence[0].LUTDescriptor]
    n = desc[0] or 2**16
    every_entry = apply_voi_lut(np.arange(desc[1], desc[1] + n, dtype=np.int64), ds, index=0)
    return float(every_entry.min()), float(every_entry.max())


def dicom_technical_meta(ds: Any) -> dict[str, Any]:
    """Allowlisted technical tags as plain JSON-able values."""
    out: dict[str, Any] = {}
    for kw in DICOM_TAG_ALLOWLIST:
        if kw in ds:
            v = ds.get(kw)
            v = getattr(v, "value", v)
            if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
                v = [float(t) for t in v]
            elif isinstance(v, (int, float)):
                v = v
            else:
                v = str(v)
            out[kw] = v
    return out


def _read_dicom(path: Path, max_pixels: int | None = MAX_PIXELS) -> LoadedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=path.suffix.lower() in DICOM_SUFFIXES)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as e:
        raise ImageReadError(f"{path.name}: not a readable DICOM file ({e})") from e
    if "PixelData" not in ds:
        raise ImageReadError(f"{path.name}: DICOM has no pixel data")
    _check_pixels(path.name, int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), max_pixels)
    try:
        pixels = dicom_display_array(ds)
    except ImageReadError as e:
        raise ImageReadError(f"{path.name}: {e}") from e
    except (ValueError, AttributeError, TypeError, IndexError) as e:
        raise ImageReadError(f"{path.name}: invalid DICOM pixel data ({e})") from e
    return LoadedImage(pixels, "dicom", path.stem, dicom_technical_meta(ds))


def load_image(image: Any, *, name: str | None = None, max_pixels: int | None = MAX_PIXELS
               ) -> LoadedImage:
    """Load a path (PNG, JPEG, TIFF, DICOM incl. extension-less), a PIL image or an array.

    Arrays: integer types are divided by their dtype's maximum (signed ones min-max scaled);
    floats already in [0, 1] are kept, others min-max scaled. ``(H, W)``, ``(H, W, 1|3|4)`` and
    ``(3, H, W)`` are accepted. Returns a :class:`LoadedImage` on the original pixel grid.
    Files larger than ``max_pixels`` (per frame) are refused before decoding.

    Raises:
        ImageReadError: with the file name and the reason (missing, corrupt, undecodable).
    """
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageReadError(f"image file not found: {path}")
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path.name}: empty file (0 bytes)")
        out = (_read_dicom(path, max_pixels) if is_dicom_file(path)
               else _read_raster(path, max_pixels))
        if name:
            out.name = name
        return out
    if isinstance(image, Image.Image):
        return LoadedImage(_array_to_unit(_pil_to_array(image)), "array", name or "image")
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        return LoadedImage(_array_to_unit(image), "array", name or "image")
    raise TypeError(f"cannot load an image from {type(image).__name__}")
