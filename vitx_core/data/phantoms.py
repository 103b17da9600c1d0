"""Synthetic PA chest-radiograph phantoms with exact ground-truth masks (numpy / scipy only).

Display convention as a normal PA film viewed in the usual orientation: air and lungs dark, bone
and soft tissue bright, the patient's left on the image's right (heart shadow bulging to the
image's right of the spine, left hemidiaphragm lower, gastric bubble under it).

How an image is made
--------------------
Everything is built as a *density* map ``D`` (attenuation along the ray) in a canonical thorax
frame (``u`` across, ``+u`` = image right = patient's left; ``v`` down; about 256 x 280 units),
mapped to pixels by a per-case affine (rotation, anisotropic scale, translation). Anatomy: body
soft tissue, two lung fields (air subtracts density), mediastinum, hila and vessel markings, heart,
aortic knob, spine, posterior and anterior ribs, clavicles, hemidiaphragm domes, gastric bubble.
Each finding adds a density term that is **exactly zero outside its mask**. Then, pixel by pixel:
a smooth low-frequency gain, film grain / quantum noise (in density space) and a sigmoid
"film curve" ``I = 1 / (1 + exp(-g (D - D0)))``, strictly increasing, so ``I`` is in (0, 1)
without clipping.

Exactness property (tested): every random draw comes from its own stream, keyed by the case seed
and a component name, so a finding's presence never changes another component's draws. Rendering
the same seed without finding ``f`` gives **bit-identical pixels outside ``masks[f]``**; inside the
mask every pixel differs (nodule, consolidation, effusion: their term has a positive pedestal).
For cardiomegaly the mask is the enlarged heart silhouette (which contains the normal one); pixels
outside it are identical, most pixels inside differ.

Cohort files: DICOM (pydicom, Explicit VR Little Endian, MONOCHROME1/2, 12/14/16-bit stored) and
PNG (8/16-bit), CheXlocalize-style GT JSON (COCO compressed RLE, column-major), boxes and labels
CSVs, a manifest and a folder of intentionally broken files.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FINDINGS: tuple[str, ...] = ("nodule", "consolidation", "effusion", "cardiomegaly")
GENERATOR_VERSION = "1.0.0"
#: Seeds at or above this offset are reserved for training data (disjoint from cohort seeds).
TRAIN_SEED_OFFSET = 1_000_000
#: Canonical frame size (units) the anatomy is drawn in; scaled to each image's size.
_REF_W, _REF_H = 256.0, 280.0

_STREAMS = ("anatomy", "labels", "noise", "nodule", "consolidation", "effusion", "cardiomegaly",
            "format")
_F32 = np.float32


# ----------------------------------------------------------------------------- seeds / streams


def _seed_key(rng_or_seed: Any) -> tuple[int, ...]:
    """A tuple of non-negative ints identifying a case (int, tuple of ints, Generator, SeedSequence)."""
    if isinstance(rng_or_seed, np.random.Generator):
        return (int(rng_or_seed.integers(0, 2**63 - 1)),)
    if isinstance(rng_or_seed, np.random.SeedSequence):
        return tuple(int(x) for x in rng_or_seed.generate_state(4))
    if isinstance(rng_or_seed, (int, np.integer)):
        if int(rng_or_seed) < 0:
            raise ValueError("seeds must be non-negative")
        return (int(rng_or_seed),)
    if isinstance(rng_or_seed, Sequence) and not isinstance(rng_or_seed, (str, bytes)):
        key = tuple(int(x) for x in rng_or_seed)
        if not key or min(key) < 0:
            raise ValueError("seed tuples must be non-empty and non-negative")
        return key
    raise TypeError(f"cannot derive a seed from {type(rng_or_seed).__name__}")


def _stream(key: tuple[int, ...], name: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key), spawn_key=(_STREAMS.index(name),)))


def case_key(seed: int, index: int) -> tuple[int, int]:
    """The render key of case ``index`` of a cohort / batch with ``seed`` (reproducible alone)."""
    return (int(seed), int(index))


# ----------------------------------------------------------------------------- data classes


@dataclass
class Phantom:
    """One rendered phantom.

    Attributes:
        image: float32 ``(H, W)`` in (0, 1); dark = air / lung, bright = bone / soft tissue.
        masks: bool ``(H, W)`` per finding in :data:`FINDINGS` (all-False when absent).
        labels: 0/1 per finding.
        anatomy: bool masks ``lung_right`` (image left), ``lung_left`` (image right), ``lungs``,
            ``heart`` (the drawn heart silhouette, enlarged when cardiomegaly), ``body``.
        ctr: cardiothoracic ratio measured on the masks (heart width / lung-field width).
        meta: geometry and contrast parameters (JSON-able).
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    labels: dict[str, int]
    anatomy: dict[str, np.ndarray] = field(default_factory=dict)
    ctr: float = float("nan")
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label_vector(self) -> np.ndarray:
        return np.array([self.labels[f] for f in FINDINGS], dtype=_F32)


@dataclass
class _Geo:
    cx: float
    cy: float
    theta: float
    sx: float
    sy: float

    def to_pixel(self, u: float, v: float) -> tuple[float, float]:
        """Canonical (u, v) -> pixel (row, col)."""
        c, s = math.cos(self.theta), math.sin(self.theta)
        col = self.cx + c * self.sx * u - s * self.sy * v
        row = self.cy + s * self.sx * u + c * self.sy * v
        return row, col

    def grid(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel row / col index vectors -> canonical (u, v) arrays of shape (len(rows), len(cols))."""
        c, s = math.cos(self.theta), math.sin(self.theta)
        r = (rows.astype(_F32) - _F32(self.cy))[:, None]
        q = (cols.astype(_F32) - _F32(self.cx))[None, :]
        u = (q * _F32(c / self.sx) + r * _F32(s / self.sx)).astype(_F32)
        v = (r * _F32(c / self.sy) - q * _F32(s / self.sy)).astype(_F32)
        return u, v

    @property
    def px_per_unit(self) -> float:
        return math.sqrt(self.sx * self.sy)


@dataclass
class _Lung:
    ae: float   # ellipse centre (lateral distance from midline)
    ve: float
    ra: float   # ellipse semi-axes
    rv: float
    am0: float  # medial border a = am0 + am1 * v + hb * exp(-((v - vb) / sb)^2)
    am1: float
    ap: float   # dome peak (lateral distance) and height
    vp: float
    kd: float   # dome curvature
    hb: float = 0.0
    vb: float = 0.0
    sb: float = 1.0

    def dome(self, a):
        return self.vp + self.kd * (a - self.ap) ** 2

    def sdf(self, a, v):
        """Approximate signed distance (canonical units, > 0 inside) to the lung field."""
        da = (a - self.ae) / self.ra
        dv = (v - self.ve) / self.rv
        grad = 2.0 * np.sqrt((da / self.ra) ** 2 + (dv / self.rv) ** 2) + 1e-3
        d_e = (1.0 - (da * da + dv * dv)) / grad
        d_m = a - (self.am0 + self.am1 * v + self.hb * np.exp(-(((v - self.vb) / self.sb) ** 2)))
        d_d = self.dome(a) - v
        return np.minimum(np.minimum(d_e, d_m), d_d)


@dataclass
class _Anat:
    geo: _Geo
    lung_r: _Lung  # patient's right = image left (u < 0)
    lung_l: _Lung  # patient's left = image right (u > 0)
    heart: tuple[float, float, float, float, float]  # uc, vc, A, B, angle
    heart_pivot: tuple[float, float]
    body_hw: float
    rib: dict[str, float]
    clav: dict[str, float]
    air: float
    vessels: dict[str, float]
    knob: tuple[float, float, float, float]
    bubble: tuple[float, float, float, float] | None
    film: dict[str, float]
    lowfreq: list[tuple[float, ...]]


# ----------------------------------------------------------------------------- anatomy


def _sample_anatomy(rng: np.random.Generator, h: int, w: int) -> _Anat:
    U = rng.uniform
    theta = math.radians(U(-4.0, 4.0))
    sx = w / _REF_W * U(0.90, 1.04)
    sy = h / _REF_H * U(0.90, 1.04)
    geo = _Geo(cx=w / 2 + U(-0.035, 0.035) * w, cy=h / 2 + U(-0.03, 0.04) * h, theta=theta,
               sx=sx, sy=sy)

    def lung(side_drop: float, bulge: float) -> _Lung:
        ra = U(63.0, 71.0)
        return _Lung(ae=U(33.0, 37.0), ve=U(62.0, 72.0), ra=ra, rv=U(168.0, 182.0),
                     am0=U(17.0, 20.0), am1=U(0.0, 0.03), ap=U(44.0, 54.0),
                     vp=U(50.0, 58.0) + side_drop, kd=U(0.011, 0.016),
                     hb=bulge, vb=U(5.0, 15.0), sb=U(22.0, 30.0))

    lung_r = lung(0.0, U(4.0, 8.0))
    lung_l = lung(U(5.0, 11.0), U(9.0, 14.0))  # left hemidiaphragm lower; PA / LAA bulge
    # heart: rotated ellipse, bulging to the image right (patient's left); normal CTR ~0.40-0.47
    A, B = U(43.0, 49.0), U(35.0, 40.0)
    heart = (U(17.0, 22.0), U(36.0, 44.0), A, B, math.radians(U(18.0, 28.0)))
    pivot = (heart[0] - 0.55 * A, heart[1] - 0.45 * B)  # upper right-heart border: grows left / down
    rib = dict(sp=U(20.5, 23.0), t0=U(-126.0, -118.0), gamma=U(0.008, 0.014), half=U(0.16, 0.2),
               k1=U(0.26, 0.34), k2=U(0.0040, 0.0050), amp=U(0.08, 0.11), ant_amp=U(0.035, 0.06),
               ant_sp=U(25.0, 29.0), ant_t0=U(-70.0, -60.0), ant_k=U(0.45, 0.6),
               side_shift=U(-0.15, 0.15))
    clav = dict(v0=U(-92.0, -84.0), slope=U(-0.30, -0.18), curv=U(0.0015, 0.0028), th=U(9.5, 12.0),
                amp=U(0.16, 0.22))
    vessels = dict(n1=float(rng.integers(11, 16)), n2=float(rng.integers(23, 31)), p1=U(0, 6.28),
                   p2=U(0, 6.28), w1=U(1.6, 2.6), w2=U(1.6, 2.6), lam=U(9.0, 14.0),
                   amp=U(0.10, 0.14), ah=U(31.0, 36.0), vh=U(-12.0, 0.0))
    knob = (U(17.0, 20.0), U(-58.0, -50.0), U(9.0, 12.0), U(9.0, 12.0))
    bubble = None
    if rng.uniform() < 0.65:
        bubble = (U(45.0, 62.0), U(10.0, 16.0), U(12.0, 18.0), U(6.0, 9.0))
    film = dict(gain=U(4.6, 5.6), d0=U(0.66, 0.74), noise=U(0.012, 0.022), grain=U(0.3, 0.7),
                body=U(0.95, 1.05))
    lowfreq = []
    for _ in range(4):
        lowfreq.append((U(0.3, 2.2), U(0.3, 2.2), U(0, 6.28), U(0, 6.28), U(0.01, 0.035)))
    lowfreq.append((U(-0.05, 0.05), U(-0.04, 0.04)))  # linear "heel effect" ramps (x, y)
    return _Anat(geo=geo, lung_r=lung_r, lung_l=lung_l, heart=heart, heart_pivot=pivot,
                 body_hw=U(112.0, 122.0), rib=rib, clav=clav, air=U(0.50, 0.60), vessels=vessels,
                 knob=knob, bubble=bubble, film=film, lowfreq=lowfreq)


def _ramp(d, width: float):
    """Linear edge 0 -> 1 across ``width`` centred on d = 0."""
    return np.clip(d * _F32(1.0 / width) + _F32(0.5), _F32(0.0), _F32(1.0))


def _heart_F(anat: _Anat, u, v, scale: float = 1.0):
    """Normalised ellipse radius^2 of the heart (scaled about its pivot), < 1 inside."""
    uc, vc, A, B, ang = anat.heart
    pu, pv = anat.heart_pivot
    uc, vc = pu + scale * (uc - pu), pv + scale * (vc - pv)
    A, B = A * scale, B * scale
    c, s = math.cos(ang), math.sin(ang)
    du, dv = u - _F32(uc), v - _F32(vc)
    x = (du * _F32(c) + dv * _F32(s)) * _F32(1.0 / A)
    y = (dv * _F32(c) - du * _F32(s)) * _F32(1.0 / B)
    y = y / (_F32(1.0) + _F32(0.18) * np.clip(x, -1, 1))  # pear: wider at the apex side
    return x * x + y * y


def _dome_line(anat: _Anat, u):
    """Diaphragm height under each side (right dome for u < 0, left dome for u >= 0)."""
    a = np.abs(u)
    return np.where(u < 0, anat.lung_r.dome(a), anat.lung_l.dome(a))


def _heart_floor(anat: _Anat, u):
    """Where the heart meets the diaphragm: the domes, flattened between the cardiophrenic angles."""
    vr, vl = float(anat.lung_r.dome(25.0)), float(anat.lung_l.dome(25.0))
    line = _F32((vr + vl) / 2) + _F32((vl - vr) / 50.0) * u
    return np.minimum(_dome_line(anat, u), line) + _F32(3.0)


def _heart_region(anat: _Anat, u, v, scale: float):
    F = _heart_F(anat, u, v, scale)
    inside = (F < 1.0) & (v < _heart_floor(anat, u))
    return F, inside


def _fast_atan2(y, x):
    """float32 atan2 (abs error < 2e-5 rad), several times faster than np.arctan2."""
    ax, ay = np.abs(x), np.abs(y)
    mx = np.maximum(ax, ay)
    r = np.minimum(ax, ay) / (mx + _F32(1e-12))
    r2 = r * r
    t = r * (_F32(0.9998660) + r2 * (_F32(-0.3302995) + r2 * (_F32(0.1801410)
                                                         + r2 * (_F32(-0.0851330) + r2 * _F32(0.0208351)))))
    swap = ay > ax
    t = t + swap * (_F32(math.pi / 2) - _F32(2.0) * t)
    t = t + (x < 0) * (_F32(math.pi) - _F32(2.0) * t)
    return np.copysign(t, y)


def _bbox(mask: np.ndarray, pad: int = 2) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    h, w = mask.shape
    return (slice(max(0, rows[0] - pad), min(h, rows[-1] + pad + 1)),
            slice(max(0, cols[0] - pad), min(w, cols[-1] + pad + 1)))


def _ellipse_crop(geo: _Geo, shape: tuple[int, int], u0: float, v0: float, rad: float
                  ) -> tuple[slice, slice]:
    row, col = geo.to_pixel(u0, v0)
    return _crop(shape[0], shape[1], row, col, rad * max(geo.sx, geo.sy) + 3)


def _render_anatomy(anat: _Anat, u, v) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Density terms (float32) and hard anatomy masks on the (u, v) grid; heart kept separate."""
    shape = u.shape
    a = np.abs(u)
    lr, ll = anat.lung_r, anat.lung_l
    d_r = lr.sdf(-u, v)
    d_l = ll.sdf(u, v)
    dp = np.maximum(np.maximum(d_r, d_l), _F32(0.0))
    basal = _F32(0.82) + _F32(0.22) * np.clip((v + _F32(100.0)) * _F32(1 / 180.0), 0, 1)
    air = _F32(anat.air) * basal * dp / (dp + _F32(5.0))
    lungs = dp > 0

    # body: projected thickness of an elliptic cylinder, wider at the shoulders
    hw = _F32(anat.body_hw) + _F32(14.0) * np.clip((-v - _F32(105.0)) * _F32(1 / 30.0), 0, 1)
    q = np.clip(_F32(1.0) - (u / hw) ** 2, 0, 1)
    body_mask = q > 0
    dens = _F32(anat.film["body"]) * np.sqrt(q) - air
    # abdomen below the domes: slightly denser (liver)
    dome = _dome_line(anat, u)
    dens += _F32(0.07) * _ramp(v - dome - _F32(4.0), 10.0) * body_mask
    if anat.bubble is not None:  # gastric bubble under the left dome (image right)
        ba, bdv, bra, brv = anat.bubble
        bv0 = float(ll.dome(ba)) + bdv
        rs, cs = _ellipse_crop(anat.geo, shape, ba, bv0, bra)
        bu = (u[rs, cs] - _F32(ba)) * _F32(1 / bra)
        bv = (v[rs, cs] - _F32(bv0)) * _F32(1 / brv)
        bf = np.clip(_F32(1.0) - (bu * bu + bv * bv), 0, 1)
        dens[rs, cs] -= _F32(0.22) * np.sqrt(bf) * _ramp(-bv * _F32(brv), 2.0)

    # trachea (air column ending at the carina)
    dens -= _F32(0.16) * _ramp(_F32(8.0) - a, 3.0) * _ramp(_F32(-42.0) - v, 12.0)
    # aortic knob: a bulge of the left mediastinal border into the lung
    ku, kv, kra, krv = anat.knob
    rs, cs = _ellipse_crop(anat.geo, shape, ku, kv, max(kra, krv))
    kf = np.clip(_F32(1.0) - (((u[rs, cs] - _F32(ku)) / kra) ** 2 + ((v[rs, cs] - _F32(kv)) / krv) ** 2),
                 0, 1)
    dens[rs, cs] += np.sqrt(kf) * (_F32(0.03) + _F32(0.85) * air[rs, cs])

    # hila and vessel markings radiating from them, fading to the periphery (lung box only)
    vs = anat.vessels
    rs, cs = _bbox(lungs, pad=4)
    ac, vc, airc = a[rs, cs], v[rs, cs], air[rs, cs]
    hx, hy = ac - _F32(vs["ah"]), vc - _F32(vs["vh"])
    rho2 = hx * hx + hy * hy
    rho = np.sqrt(rho2)
    phi = _fast_atan2(hy, hx)
    wig = np.sin(rho * _F32(1.0 / vs["lam"]) + phi * _F32(3.0))
    s1 = np.maximum(np.cos(phi * _F32(vs["n1"]) + _F32(vs["w1"]) * wig + _F32(vs["p1"])), _F32(0.0))
    s2 = np.maximum(np.cos(phi * _F32(vs["n2"]) - _F32(vs["w2"]) * wig + _F32(vs["p2"])), _F32(0.0))
    s1 = s1 * s1
    s1 = s1 * s1 * s1          # ^6
    s2 = s2 * s2
    s2 = s2 * s2
    s2 = s2 * s2               # ^8
    seg = _F32(0.55) + _F32(0.45) * np.cos(rho * _F32(0.16) + phi * _F32(7.0) + _F32(vs["p1"]))
    fade = np.exp(rho * _F32(-1 / 60.0)) * np.clip((rho - _F32(6.0)) * _F32(0.1), 0, 1) * seg
    vessels = _F32(vs["amp"] / anat.air) * (s1 + _F32(0.7) * s2) * fade * airc
    hila = _F32(0.13) * np.exp(rho2 * _F32(-1 / (2 * 13.0**2)))
    dens[rs, cs] += vessels + hila

    # spine with vertebral end plates
    spine_band = _ramp(_F32(14.0) - a, 5.0) * _ramp(v + _F32(150.0), 6.0)
    ph = (v + _F32(140.0)) * _F32(1 / 23.0)
    dd = np.abs(ph - np.rint(ph))
    dens += _F32(0.06) * spine_band * (_F32(1.0) - _F32(0.35) * _ramp(dd - _F32(0.43), 0.06))

    # posterior ribs: arcs rising then curving down laterally; spacing grows caudally; mostly
    # visible over the lungs
    rb = anat.rib
    t = v - (_F32(-rb["k1"]) * a + _F32(rb["k2"]) * a * a) - _F32(rb["t0"])
    x = t * _F32(1 / rb["sp"])
    ph = x - _F32(rb["gamma"]) * x * x + _F32(rb["side_shift"]) * (u > 0)
    dd = np.abs(ph - np.rint(ph))
    half = _F32(rb["half"])
    band = np.clip((half - dd) * _F32(rb["sp"] / 2.0) + _F32(0.5), 0, 1)
    dq = dd * _F32(1 / rb["half"])
    prof = _F32(0.65) + _F32(0.35) * dq * dq
    lat = _ramp(hw - _F32(6.0) - a, 6.0) * np.clip((a - _F32(7.0)) * _F32(1 / 12.0), 0, 1)
    rng_ok = _ramp(ph - _F32(0.4), 0.3) * _ramp(_F32(11.3) - ph, 0.3)
    ribs = band * prof * lat * rng_ok * (_F32(0.3 * rb["amp"]) + _F32(0.7 * rb["amp"] / anat.air) * air)
    # anterior ribs: fainter, running down-medially, only lateral (cartilage is invisible)
    t2 = (v + _F32(rb["ant_k"]) * a - _F32(rb["ant_t0"])) * _F32(1 / rb["ant_sp"])
    d2 = np.abs(t2 - np.rint(t2))
    ant = np.clip((_F32(0.2) - d2) * _F32(rb["ant_sp"] / 2.0) + _F32(0.5), 0, 1)
    ant = ant * (_ramp(a - _F32(45.0), 20.0) * _ramp(hw - _F32(8.0) - a, 6.0))
    ant = ant * (_ramp(_F32(5.2) - t2, 0.5) * _ramp(t2 + _F32(0.7), 0.5))
    dens += ribs + _F32(rb["ant_amp"]) * ant

    # clavicles (rows near the top only)
    cl = anat.clav
    rows = np.flatnonzero(v.min(axis=1) < _F32(cl["v0"] + 20.0))
    if rows.size:
        rsl = slice(0, int(rows[-1]) + 1)
        ac, vc = a[rsl], v[rsl]
        vcl = (_F32(cl["v0"]) + _F32(cl["slope"]) * (ac - _F32(15.0))
               + _F32(cl["curv"]) * (ac - _F32(60.0)) ** 2)
        dcl = np.abs(vc - vcl)
        cb = np.clip((_F32(cl["th"] / 2) - dcl) * _F32(0.7) + _F32(0.5), 0, 1)
        dq = dcl * _F32(2 / cl["th"])
        cb = cb * (_F32(0.8) + _F32(0.2) * dq * dq)
        dens[rsl] += _F32(cl["amp"]) * cb * _ramp(ac - _F32(12.0), 4.0) * _ramp(_F32(112.0) - ac, 8.0)

    masks = {"lung_right": d_r > 0, "lung_left": d_l > 0, "body": body_mask, "lungs": lungs}
    return {"density": dens.astype(_F32, copy=False), "air": air.astype(_F32, copy=False)}, masks


def _heart_term(anat: _Anat, u, v, air, normal: tuple[np.ndarray, np.ndarray],
                enlarged: float | None):
    """Heart density (exactly 0 outside the silhouette) and its silhouette mask.

    ``normal`` = ``_heart_region(anat, u, v, 1.0)``. The enlarged silhouette is the union of the
    heart scaled about a point on its upper right border (it grows to the image right and down) and
    the normal one, so it always contains the normal heart on the pixel grid.
    """
    F0, in0 = normal
    if enlarged is None:
        F, inside = F0, in0
    else:
        F, inside = _heart_region(anat, u, v, enlarged)
        inside = inside | in0
    _, _, A, B, _ = anat.heart
    depth = (_F32(1.0) - np.sqrt(np.clip(F, 0, 1))) * _F32(min(A, B) * (enlarged or 1.0) / 6.0)
    prof = _F32(0.35) + _F32(0.65) * np.clip(depth, 0, 1)
    term = (prof * (_F32(0.07) + _F32(0.93) * air)) * inside
    return term.astype(_F32, copy=False), inside


# ----------------------------------------------------------------------------- findings


def _lung_for(anat: _Anat, side: int) -> _Lung:
    return anat.lung_r if side == 0 else anat.lung_l


def _canon_point(anat: _Anat, side: int, a: float, v: float) -> tuple[float, float]:
    return (-a if side == 0 else a), v


def _place_in_lung(rng, anat: _Anat, h: int, w: int, margin_units: float, margin_px: float,
                   v_range=(-95.0, 90.0), tries: int = 200) -> tuple[int, float, float, float, float]:
    """Rejection-sample a point inside a lung, away from its border, the heart and the image edge."""
    for _ in range(tries):
        side = int(rng.integers(0, 2))
        lung = _lung_for(anat, side)
        a = float(rng.uniform(lung.am0 + 4, lung.ae + lung.ra - 2))
        v = float(rng.uniform(*v_range))
        d = float(lung.sdf(np.float32(a), np.float32(v)))
        u, vv = _canon_point(anat, side, a, v)
        hf = float(_heart_F(anat, np.float32(u), np.float32(vv), 1.0))
        row, col = anat.geo.to_pixel(u, vv)
        if (d > margin_units and hf > 1.25 and margin_px <= row < h - margin_px
                and margin_px <= col < w - margin_px):
            return side, a, v, row, col
    raise RuntimeError("could not place a finding inside the lungs")  # pragma: no cover


def _crop(h: int, w: int, row: float, col: float, rad: float) -> tuple[slice, slice]:
    r0, r1 = max(0, math.floor(row - rad)), min(h, math.ceil(row + rad) + 1)
    c0, c1 = max(0, math.floor(col - rad)), min(w, math.ceil(col + rad) + 1)
    return slice(r0, r1), slice(c0, c1)


def _nodule(rng, anat: _Anat, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    term = np.zeros((h, w), _F32)
    mask = np.zeros((h, w), bool)
    n = 1 if rng.uniform() < 0.75 else 2
    ppu = anat.geo.px_per_unit
    placed: list[tuple[float, float, float]] = []
    for _ in range(n):
        # 9-18 px on the cohort's 224-300 px wide films; proportionally smaller on small renders
        diam = float(rng.uniform(9.0, 18.0)) * min(1.0, ppu / 0.9)
        r = diam / 2
        lob = [(float(rng.uniform(0, 0.05)), int(k), float(rng.uniform(0, 6.28))) for k in (3, 5)]
        for _ in range(50):  # keep nodules apart: one box per nodule
            _, _, _, row, col = _place_in_lung(rng, anat, h, w, margin_units=r / ppu + 4.0,
                                               margin_px=r + 3)
            if all(math.hypot(row - r0, col - c0) > 1.15 * (r + r1) + 4 for r0, c0, r1 in placed):
                break
        placed.append((row, col, r))
        c = float(rng.uniform(0.11, 0.26))
        ped = float(rng.uniform(0.3, 0.5))
        rs, cs = _crop(h, w, row, col, r * 1.15 + 2)
        yy = np.arange(rs.start, rs.stop, dtype=_F32)[:, None] - _F32(row)
        xx = np.arange(cs.start, cs.stop, dtype=_F32)[None, :] - _F32(col)
        rho = np.sqrt(yy * yy + xx * xx)
        ang = np.arctan2(yy, xx)
        R = _F32(r) * (1.0 + sum(_F32(am) * np.cos(k * ang + _F32(p)) for am, k, p in lob))
        inside = rho < R
        prof = np.sqrt(np.clip(1.0 - (rho / R) ** 2, 0, 1))
        add = np.where(inside, _F32(c) * (_F32(ped) + _F32(1 - ped) * prof), _F32(0.0))
        term[rs, cs] += add.astype(_F32)
        mask[rs, cs] |= inside
    return term, mask


def _smooth3(a: np.ndarray, passes: int = 2) -> np.ndarray:
    """Cheap separable [1, 2, 1] / 4 blur (edge-replicated)."""
    for _ in range(passes):
        p = np.pad(a, 1, mode="edge")
        a = (p[:-2, :] + 2 * p[1:-1, :] + p[2:, :])[:, 1:-1] * _F32(0.25)
        p = np.pad(a, 1, mode="edge")
        a = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:])[1:-1, :] * _F32(0.25)
    return a.astype(_F32)


def _consolidation(rng, anat: _Anat, h: int, w: int, lung_masks, air
                   ) -> tuple[np.ndarray, np.ndarray]:
    term = np.zeros((h, w), _F32)
    mask = np.zeros((h, w), bool)
    ppu = anat.geo.px_per_unit
    side, _, _, row, col = _place_in_lung(rng, anat, h, w, margin_units=8.0, margin_px=4,
                                          v_range=(-60.0, 80.0))
    k = int(rng.integers(5, 11))
    spread = float(rng.uniform(13.0, 26.0)) * ppu
    centres = [(row + rng.normal(0, spread * 0.7), col + rng.normal(0, spread)) for _ in range(k)]
    sig = [float(rng.uniform(7.0, 15.0)) * ppu for _ in range(k)]
    wts = [float(rng.uniform(0.6, 1.0)) for _ in range(k)]
    rad = max(abs(cr - row) + 3 * s for (cr, _), s in zip(centres, sig))
    rad = max(rad, max(abs(cc - col) + 3 * s for (_, cc), s in zip(centres, sig)))
    rs, cs = _crop(h, w, row, col, rad)
    yy = np.arange(rs.start, rs.stop, dtype=_F32)[:, None]
    xx = np.arange(cs.start, cs.stop, dtype=_F32)[None, :]
    g = np.zeros((rs.stop - rs.start, cs.stop - cs.start), _F32)
    for (cr, cc), s, wt in zip(centres, sig, wts):
        g += _F32(wt) * np.exp(((yy - _F32(cr)) ** 2 + (xx - _F32(cc)) ** 2) * _F32(-0.5 / s**2))
    tex = _smooth3(rng.standard_normal(g.shape).astype(_F32), 3)
    tex = tex / (np.abs(tex).max() + 1e-6)
    g = g * (_F32(1.0) + _F32(0.25) * tex)
    gmax = float(g.max())
    thr = _F32(float(rng.uniform(0.28, 0.42)) * gmax)
    lung = lung_masks["lung_right" if side == 0 else "lung_left"][rs, cs]
    inside = (g > thr) & lung
    frac = float(rng.uniform(0.35, 0.75))  # share of the local air replaced at the densest point
    ped = float(rng.uniform(0.12, 0.25))
    prof = np.clip((g - thr) / max(gmax - float(thr), 1e-6), 0, 1) ** 0.6
    mottle = _F32(1.0) + _F32(0.2) * tex
    add = _F32(frac) * (_F32(ped) + _F32(1 - ped) * prof) * mottle * (air[rs, cs] + _F32(0.03)) * inside
    term[rs, cs] = add.astype(_F32)
    mask[rs, cs] = inside
    return term, mask


def _effusion(rng, anat: _Anat, u, v, lung_masks, air) -> tuple[np.ndarray, np.ndarray, int]:
    side = int(rng.integers(0, 2))
    lung = _lung_for(anat, side)
    a = -u if side == 0 else u
    # costophrenic angle: where the lateral ellipse wall meets the dome
    a_lat = lung.ae + lung.ra * 0.97
    v_cp = float(lung.dome(a_lat))
    hgt = float(rng.uniform(25.0, 70.0))
    width = float(rng.uniform(45.0, 85.0))
    vm = _F32(v_cp - hgt) + _F32(hgt / width**2) * (_F32(a_lat) - a) ** 2
    lung_mask = lung_masks["lung_right" if side == 0 else "lung_left"]
    inside = lung_mask & (v > vm) & (a > _F32(a_lat - width * 1.3))
    frac = float(rng.uniform(0.6, 0.95))  # share of the air replaced by fluid at the bottom
    ped = float(rng.uniform(0.25, 0.4))
    prof = np.clip((v - vm) * _F32(1 / 25.0), 0, 1)
    term = (_F32(frac) * (_F32(ped) + _F32(1 - ped) * prof) * (air + _F32(0.03)) * inside).astype(_F32)
    return term, inside, side


# ----------------------------------------------------------------------------- rendering


def _lowfreq(anat: _Anat, h: int, w: int) -> np.ndarray:
    y = np.linspace(0, math.pi, h, dtype=_F32)[:, None]
    x = np.linspace(0, math.pi, w, dtype=_F32)[None, :]
    out = np.zeros((h, w), _F32)
    for fx, fy, px, py, amp in anat.lowfreq[:-1]:
        out += _F32(amp) * (np.cos(_F32(fx) * x + _F32(px)) * np.cos(_F32(fy) * y + _F32(py)))
    rx, ry = anat.lowfreq[-1]
    out += _F32(rx) * (x * _F32(2 / math.pi) - 1) + _F32(ry) * (y * _F32(2 / math.pi) - 1)
    return out


def _validate_findings(findings: Iterable[str]) -> set[str]:
    fs = set(findings)
    bad = fs - set(FINDINGS)
    if bad:
        raise ValueError(f"unknown findings {sorted(bad)}; expected a subset of {FINDINGS}")
    return fs


def render_phantom(rng_or_seed: Any, size_hw: tuple[int, int] = (256, 256),
                   findings: Iterable[str] = ()) -> Phantom:
    """Render one phantom.

    Args:
        rng_or_seed: an int, a tuple of ints (e.g. :func:`case_key`), a ``SeedSequence`` or a
            ``Generator`` (one draw is taken from it). The same key gives bit-identical output.
        size_hw: ``(H, W)`` in pixels (any size from 64 up; anatomy scales with it).
        findings: subset of :data:`FINDINGS`; empty = normal.

    Returns:
        A :class:`Phantom` (image float32 in (0, 1), exact finding masks, labels, anatomy masks).
    """
    fs = _validate_findings(findings)
    h, w = int(size_hw[0]), int(size_hw[1])
    if h < 32 or w < 32:
        raise ValueError(f"size_hw too small: {size_hw}")
    key = _seed_key(rng_or_seed)
    anat = _sample_anatomy(_stream(key, "anatomy"), h, w)
    u, v = anat.geo.grid(np.arange(h), np.arange(w))
    terms, amasks = _render_anatomy(anat, u, v)

    rng_c = _stream(key, "cardiomegaly")
    normal_heart = _heart_region(anat, u, v, 1.0)
    ctr0 = measure_ctr(normal_heart[1], amasks["lungs"])
    # enlargement: random, but at least enough for a CTR of ~0.6 (normal hearts: CTR 0.40-0.48)
    enlarge = max(float(rng_c.uniform(1.36, 1.52)), 0.60 / ctr0 if ctr0 > 0 else 1.4)
    heart, heart_mask = _heart_term(anat, u, v, terms["air"], normal_heart,
                                    enlarge if "cardiomegaly" in fs else None)
    dens = terms["density"] + heart
    masks = {f: np.zeros((h, w), bool) for f in FINDINGS}
    meta: dict[str, Any] = {"seed_key": list(key), "size": [h, w],
                            "theta_deg": math.degrees(anat.geo.theta),
                            "scale": [anat.geo.sx, anat.geo.sy],
                            "centre_rc": [anat.geo.cy, anat.geo.cx]}
    if "cardiomegaly" in fs:
        masks["cardiomegaly"] = heart_mask
        meta["heart_scale"] = enlarge
    if "nodule" in fs:
        t, m = _nodule(_stream(key, "nodule"), anat, h, w)
        dens = dens + t
        masks["nodule"] = m
    if "consolidation" in fs:
        t, m = _consolidation(_stream(key, "consolidation"), anat, h, w, amasks, terms["air"])
        dens = dens + t
        masks["consolidation"] = m
    if "effusion" in fs:
        t, m, side = _effusion(_stream(key, "effusion"), anat, u, v, amasks, terms["air"])
        dens = dens + t
        masks["effusion"] = m
        meta["effusion_side"] = "image_left" if side == 0 else "image_right"

    # pixelwise: low-frequency gain, noise in density space, film curve
    film = anat.film
    rn = _stream(key, "noise")
    white = (rn.random((h, w), dtype=_F32) - _F32(0.5)) * _F32(math.sqrt(12.0))
    grain = _smooth3(white, 1)
    noise = white * _F32(1 - film["grain"]) + grain * _F32(film["grain"] * 2.2)
    dens = dens * (_F32(1.0) + _lowfreq(anat, h, w))
    dens = dens + _F32(film["noise"]) * (_F32(0.6) + _F32(0.5) * np.abs(dens)) * noise
    img = _F32(1.0) / (_F32(1.0) + np.exp(_F32(-film["gain"]) * (dens - _F32(film["d0"]))))
    img = img.astype(_F32)

    anatomy = dict(amasks)
    anatomy["heart"] = heart_mask
    ctr = measure_ctr(heart_mask, anatomy["lungs"])
    labels = {f: int(f in fs) for f in FINDINGS}
    return Phantom(image=img, masks=masks, labels=labels, anatomy=anatomy, ctr=ctr, meta=meta)


def measure_ctr(heart_mask: np.ndarray, lungs_mask: np.ndarray) -> float:
    """Cardiothoracic ratio on masks: widest heart extent / lung-field (inner thorax) width, in columns."""
    hc = np.flatnonzero(heart_mask.any(axis=0))
    lc = np.flatnonzero(lungs_mask.any(axis=0))
    if hc.size == 0 or lc.size == 0:
        return float("nan")
    return float((hc[-1] - hc[0] + 1) / (lc[-1] - lc[0] + 1))


def sample_findings(rng: np.random.Generator, p: float = 0.33) -> set[str]:
    """Independent Bernoulli(p) per finding (p = 0.33 gives ~20 % normal)."""
    return {f for f in FINDINGS if rng.uniform() < p}


def phantom_batch(seed: int, n: int, size_hw: tuple[int, int] = (256, 256), *, p: float = 0.33,
                  with_masks: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield ``(image float32 (H, W), labels float32 (len(FINDINGS),))`` for ``n`` phantoms.

    Image ``i`` uses the key ``(seed, i)``; its findings are Bernoulli(p) draws from that key's
    own stream, so any item is reproducible alone. Use ``seed >= TRAIN_SEED_OFFSET`` for training
    so it never shares a key with a cohort (cohorts use small seeds). With ``with_masks=True``
    yields ``(image, labels, masks (len(FINDINGS), H, W) bool)``.
    """
    for i in range(int(n)):
        key = case_key(seed, i)
        fs = sample_findings(_stream(key, "labels"), p)
        ph = render_phantom(key, size_hw, fs)
        if with_masks:
            yield ph.image, ph.label_vector, np.stack([ph.masks[f] for f in FINDINGS])
        else:
            yield ph.image, ph.label_vector


# ----------------------------------------------------------------------------- masks: RLE and boxes


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a 2-D mask, column-major, as ``pycocotools.mask.encode`` writes it.

    Returns ``{"size": [h, w], "counts": str}`` (counts as text, as in CheXlocalize JSON).
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    h, w = m.shape
    flat = (m != 0).ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0, *runs]
    if not runs:
        runs = [0]
    out = []
    for i, cnt in enumerate(runs):
        x = int(cnt)
        if i > 2:  # pycocotools' quirk: delta from the count two back, only from index 3 on
            x -= int(runs[i - 2])
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return {"size": [int(h), int(w)], "counts": "".join(out)}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_rle` (compressed string or bytes counts, or a list of counts)."""
    h, w = (int(x) for x in rle["size"])
    from .annotations import rle_counts  # the one validated parser of COCO RLE text

    cnts = rle_counts(rle["counts"])
    if sum(cnts) != h * w or min(cnts, default=0) < 0:
        raise ValueError(f"RLE counts sum to {sum(cnts)}, expected {h * w}")
    vals = np.zeros(len(cnts), dtype=bool)
    vals[1::2] = True
    flat = np.repeat(vals, cnts)
    return flat.reshape((w, h)).T.copy()


def mask_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Tight ``(x, y, w, h)`` pixel boxes of each 8-connected component, sorted by (y, x).

    Inclusive pixel extent: the box covers columns ``x .. x + w - 1`` and rows ``y .. y + h - 1``
    (origin top-left, original pixel grid).
    """
    from scipy import ndimage

    lab, _ = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3), int))
    boxes = []
    for sl in ndimage.find_objects(lab):
        if sl is None:
            continue
        ys, xs = sl
        boxes.append((xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start))
    return sorted(boxes, key=lambda b: (b[1], b[0]))


# ----------------------------------------------------------------------------- writers


def _uid(*parts: Any) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["vitx-phantom", *[str(p) for p in parts]]))


def dicom_pixels(image: np.ndarray, *, bits: int, photometric: str = "MONOCHROME2",
                 window: str | None = None, rescale: tuple[float, float] | None = None
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """Stored values and tags so that a DICOM display chain shows ``image`` (up to quantisation).

    window: ``None`` (no VOI: the viewer min-max scales), ``"exact"`` (the data fill a window that
        maps back to ``image`` exactly) or ``"voi"`` (data on the full range; a narrower window on
        the 0.5 - 99.8th percentiles, so air and dense bone clip, as a typical DX VOI does).
    rescale: ``(slope, intercept)`` modality LUT (slope > 0); the window is then given in modality
        units, as the standard requires.
    """
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(photometric)
    slope, intercept = (float(rescale[0]), float(rescale[1])) if rescale is not None else (1.0, 0.0)
    if slope <= 0:
        raise ValueError("rescale slope must be > 0")
    maxv = 2**bits - 1
    x = np.clip(np.asarray(image, np.float64), 0.0, 1.0)
    tags: dict[str, Any] = {}
    if window == "exact":
        width = float(round(0.85 * maxv))
        centre = float(round(maxv / 2.0)) + 0.5
        raw = np.rint((centre - 0.5) + (x - 0.5) * (width - 1.0))
    else:
        raw = np.rint(x * maxv)
        if window == "voi":
            lo, hi = np.percentile(raw, [0.5, 99.8])
            width = float(hi - lo + 1.0)
            centre = float(lo + hi) / 2.0 + 0.5
        elif window is not None:
            raise ValueError(f"window must be None, 'exact' or 'voi', got {window!r}")
    raw = np.clip(raw, 0, maxv)
    if photometric == "MONOCHROME1":  # invert the stored values; the viewer inverts once more
        raw = maxv - raw
        if window is not None:
            centre = maxv + 1.0 - centre
    if window is not None:
        # LINEAR window in stored units (centre c, width w) -> the same mapping in modality units
        tags["WindowCenter"] = slope * centre + intercept + 0.5 - 0.5 * slope
        tags["WindowWidth"] = slope * (width - 1.0) + 1.0
    if rescale is not None:
        tags["RescaleSlope"], tags["RescaleIntercept"] = slope, intercept
    return raw.astype(np.uint16), tags


def write_dicom(path: str | Path, image: np.ndarray, *, bits: int = 12,
                photometric: str = "MONOCHROME2", window: str | None = None,
                rescale: tuple[float, float] | None = None, case_id: str = "PHANTOM",
                with_pixels: bool = True) -> dict[str, Any]:
    """Write a DX For-Presentation DICOM (Explicit VR Little Endian, uncompressed, no PHI)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
    )

    raw, tags = dicom_pixels(image, bits=bits, photometric=photometric, window=window,
                             rescale=rescale)
    sop = _uid(case_id, "sop", photometric, bits, window, rescale)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = _uid(case_id, "study")
    ds.SeriesInstanceUID = _uid(case_id, "series")
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.PatientName = "ANON^PHANTOM"
    ds.PatientID = case_id
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom (vitx), no patient data"
    ds.BurnedInAnnotation = "NO"
    ds.SeriesDescription = "SYNTHETIC PHANTOM"
    ds.ImagerPixelSpacing = [0.5, 0.5]
    if with_pixels:
        ds.set_pixel_data(raw, photometric_interpretation=photometric, bits_stored=bits,
                          generate_instance_uid=False)
    else:
        ds.Rows, ds.Columns = raw.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
        ds.PixelRepresentation = 0
    for k, val in tags.items():
        setattr(ds, k, val)
    ds.save_as(path, enforce_file_format=True)
    return {"photometric": photometric, "bits": bits,
            "window": [tags["WindowCenter"], tags["WindowWidth"]] if "WindowCenter" in tags else None,
            "window_kind": window,
            "rescale": [tags["RescaleSlope"], tags["RescaleIntercept"]] if rescale else None}


def write_png(path: str | Path, image: np.ndarray, *, bits: int = 8) -> dict[str, Any]:
    """Grayscale PNG, 8-bit (mode L) or 16-bit (mode I;16), value = round(image * (2**bits - 1))."""
    from PIL import Image

    x = np.clip(np.asarray(image, np.float64), 0.0, 1.0)
    if bits == 8:
        im = Image.fromarray(np.rint(x * 255).astype(np.uint8))
    elif bits == 16:
        im = Image.fromarray(np.rint(x * 65535).astype(np.uint16))
    else:
        raise ValueError(f"PNG bits must be 8 or 16, got {bits}")
    im.save(path, format="PNG")
    return {"photometric": None, "bits": bits, "window": None, "window_kind": None, "rescale": None}


# ----------------------------------------------------------------------------- cohort

#: File formats cycled through the cohort (index % len): (format, photometric, bits, window, rescale)
_FORMATS: tuple[tuple[str, str | None, int, str | None, tuple[float, float] | None], ...] = (
    ("dicom", "MONOCHROME2", 12, None, None),
    ("dicom", "MONOCHROME1", 14, None, (0.5, -1024.0)),
    ("png", None, 8, None, None),
    ("dicom", "MONOCHROME2", 16, "exact", (1.0, 0.0)),
    ("png", None, 16, None, None),
    ("dicom", "MONOCHROME1", 12, "exact", None),
    ("dicom", "MONOCHROME2", 14, "voi", None),
    ("dicom", "MONOCHROME1", 16, None, (2.0, -32768.0)),
)

_PAIR_CYCLES = (
    (("nodule", "consolidation"), ("consolidation", "effusion"), ("effusion", "cardiomegaly"),
     ("cardiomegaly", "nodule")),
    (("nodule", "effusion"), ("effusion", "consolidation"), ("consolidation", "cardiomegaly"),
     ("cardiomegaly", "nodule")),
    (("nodule", "consolidation"), ("consolidation", "cardiomegaly"), ("cardiomegaly", "effusion"),
     ("effusion", "nodule")),
)


def cohort_case(seed: int, index: int) -> dict[str, Any]:
    """The recipe of cohort case ``index``: id, findings, size, file format (reproducible alone).

    Findings come in blocks of 10 cases (2 normal, 4 single findings, 4 pairs forming a cycle over
    the 4 findings), shuffled within each block by ``(seed, block)``: every finding is in 30 % of
    cases and 20 % are normal. Size: H in [256, 320], W in [224, 300] (even).
    """
    block, pos = divmod(int(index), 10)
    brng = np.random.default_rng(np.random.SeedSequence([int(seed), block], spawn_key=(99,)))
    pairs = _PAIR_CYCLES[int(brng.integers(0, len(_PAIR_CYCLES)))]
    sets: list[tuple[str, ...]] = [(), (), *[(f,) for f in FINDINGS], *pairs]
    order = brng.permutation(len(sets))
    findings = sorted(sets[order[pos]], key=FINDINGS.index)
    key = case_key(seed, index)
    frng = _stream(key, "format")
    h = int(frng.integers(128, 161)) * 2
    w = int(frng.integers(112, 151)) * 2
    fmt, phot, bits, window, rescale = _FORMATS[int(index) % len(_FORMATS)]
    case_id = f"case_{int(index):04d}"
    return {"image_id": case_id, "key": list(key), "findings": findings, "size": [h, w],
            "format": fmt, "photometric": phot, "bits": bits, "window_kind": window,
            "rescale": list(rescale) if rescale else None}


_BROKEN_NAMES = ("truncated.dcm", "random_bytes.dcm", "empty.png", "truncated.png", "no_pixels.dcm")


def _broken_files(out: Path, seed: int, good_dicom: Path, good_png: Path) -> list[dict[str, str]]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed)], spawn_key=(98,)))
    items = []
    data = good_dicom.read_bytes()
    (out / "truncated.dcm").write_bytes(data[: int(len(data) * 0.6)])
    items.append({"file": "broken/truncated.dcm", "kind": "DICOM cut at 60 % (inside PixelData)"})
    (out / "random_bytes.dcm").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    items.append({"file": "broken/random_bytes.dcm", "kind": "4096 random bytes, .dcm suffix"})
    (out / "empty.png").write_bytes(b"")
    items.append({"file": "broken/empty.png", "kind": "0-byte PNG"})
    png = good_png.read_bytes()
    (out / "truncated.png").write_bytes(png[: len(png) // 2])
    items.append({"file": "broken/truncated.png", "kind": "PNG cut at 50 %"})
    write_dicom(out / "no_pixels.dcm", np.zeros((64, 48), _F32), case_id="broken_no_pixels",
                with_pixels=False)
    items.append({"file": "broken/no_pixels.dcm", "kind": "DICOM header without PixelData"})
    for it in items:
        it["expect"] = "ImageReadError"
    return items


def generate_sample_cohort(out_dir: str | Path, *, seed: int = 0, n_cases: int = 48,
                           broken: bool = True) -> dict[str, Any]:
    """Write a synthetic cohort with ground truth; returns the manifest (also ``manifest.json``).

    Layout under ``out_dir``: ``images/<image_id>.{dcm,png}``, ``gt_segmentations.json``
    (CheXlocalize: ``{image_id: {finding: {"size": [h, w], "counts": RLE}}}``, every finding for
    every image, all-zero = absent), ``boxes.csv`` (``image,finding,x,y,w,h``: one tight box per
    8-connected mask component), ``labels.csv`` (``image,<findings...>,patient_id``),
    ``manifest.json`` and, with ``broken=True``, ``broken/`` (files that must fail to load).
    """
    out = Path(out_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for old in img_dir.iterdir():  # regenerate cleanly (only our own file types)
        if old.suffix in (".dcm", ".png") and old.name.startswith("case_"):
            old.unlink()
    gt: dict[str, Any] = {}
    box_rows: list[list[Any]] = []
    label_rows: list[list[Any]] = []
    cases = []
    first = {"dicom": None, "png": None}
    for i in range(int(n_cases)):
        spec = cohort_case(seed, i)
        ph = render_phantom(tuple(spec["key"]), tuple(spec["size"]), spec["findings"])
        cid = spec["image_id"]
        if spec["format"] == "dicom":
            path = img_dir / f"{cid}.dcm"
            info = write_dicom(path, ph.image, bits=spec["bits"], photometric=spec["photometric"],
                               window=spec["window_kind"],
                               rescale=tuple(spec["rescale"]) if spec["rescale"] else None,
                               case_id=cid)
        else:
            path = img_dir / f"{cid}.png"
            info = write_png(path, ph.image, bits=spec["bits"])
        first[spec["format"]] = first[spec["format"]] or path
        gt[cid] = {f: encode_rle(ph.masks[f]) for f in FINDINGS}
        for f in FINDINGS:
            for x, y, bw, bh in mask_boxes(ph.masks[f]):
                box_rows.append([cid, f, x, y, bw, bh])
        label_rows.append([cid, *[ph.labels[f] for f in FINDINGS], cid])
        cases.append({"image_id": cid, "file": f"images/{path.name}", "size": spec["size"],
                      "format": spec["format"], "photometric": info["photometric"],
                      "bits": info["bits"], "window": info["window"],
                      "window_kind": info["window_kind"], "rescale": info["rescale"],
                      "findings": spec["findings"], "key": spec["key"],
                      "ctr": round(ph.ctr, 4), "bytes": path.stat().st_size})
    (out / "gt_segmentations.json").write_text(json.dumps(gt, sort_keys=True))
    _write_csv(out / "boxes.csv", ["image", "finding", "x", "y", "w", "h"], box_rows)
    _write_csv(out / "labels.csv", ["image", *FINDINGS, "patient_id"], label_rows)
    manifest: dict[str, Any] = {
        "generator": "vitx_core.data.phantoms", "version": GENERATOR_VERSION, "seed": int(seed),
        "n_cases": int(n_cases), "findings": list(FINDINGS),
        "conventions": {
            "display": "dark = air/lung, bright = bone; patient's left on the image right (PA)",
            "masks": "CheXlocalize JSON, COCO compressed RLE of the column-major (Fortran) mask",
            "boxes": "x, y = top-left pixel (col, row); w, h inclusive extent; 8-connected parts",
            "labels": "image = image id = file stem; patient_id = image id",
        },
        "counts": {f: int(sum(f in c["findings"] for c in cases)) for f in FINDINGS}
        | {"normal": int(sum(not c["findings"] for c in cases))},
        "cases": cases, "broken": [],
    }
    if broken and first["dicom"] and first["png"]:
        manifest["broken"] = _broken_files(out / "broken", seed, first["dicom"], first["png"])
    elif (out / "broken").is_dir():  # drop broken files of an earlier run (only our own names)
        for name in _BROKEN_NAMES:
            (out / "broken" / name).unlink(missing_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(header)
    wr.writerows(rows)
    path.write_text(buf.getvalue())
