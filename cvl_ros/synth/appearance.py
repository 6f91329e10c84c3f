"""Appearance shared by both renderers: lighting draws, cast shadows, ground colour rasters.

The two views of a town use *different* draws of everything here (sun, palette jitter, texture
noise, paint wear detail, shadows), so the satellite mosaic looks captured at another time than
the video; the ground-level geometry (classes) is the only thing they share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cvl_ros.synth.town import (
    BUILDING,
    CURB,
    MARKING,
    PARKING,
    ROAD,
    SIDEWALK,
    Town,
    _circle,
    _poly,
    _rect,
    value_noise,
)

__all__ = ["Lighting", "draw_lighting", "height_raster", "cast_shadows", "ground_colour_raster"]


@dataclass(frozen=True)
class Lighting:
    """Sun and camera response of one capture (satellite or video)."""

    sun_az_rad: float  # direction the light comes FROM, ENU angle (0 = east, CCW)
    sun_elev_rad: float
    shadow_strength: float  # 0 = no shadow, 1 = black
    gain: float
    gamma: float
    wb: tuple[float, float, float]
    saturation: float
    haze: float
    lean_en_m_per_m: tuple[float, float] = (0.0, 0.0)
    """Off-nadir lean (satellite capture): horizontal east/north shift per metre of height."""

    @property
    def sun_dir(self) -> np.ndarray:
        """Unit vector towards the sun (east, north, up)."""
        ce = math.cos(self.sun_elev_rad)
        return np.array([ce * math.cos(self.sun_az_rad), ce * math.sin(self.sun_az_rad),
                         math.sin(self.sun_elev_rad)])


def draw_lighting(rng: np.random.Generator, elev_deg, strength, gain, gamma=(1.0, 1.0),
                  wb_spread=0.05, saturation=(0.9, 1.1), haze=(0.0, 0.05),
                  avoid_az: float | None = None) -> Lighting:
    """Draw a capture's lighting; ``avoid_az`` keeps the sun >= 60 deg away from that azimuth."""
    az = rng.uniform(-math.pi, math.pi)
    if avoid_az is not None:
        for _ in range(50):
            d = abs((az - avoid_az + math.pi) % (2 * math.pi) - math.pi)
            if d > math.radians(60):
                break
            az = rng.uniform(-math.pi, math.pi)
    return Lighting(
        sun_az_rad=float(az), sun_elev_rad=math.radians(rng.uniform(*elev_deg)),
        shadow_strength=float(rng.uniform(*strength)), gain=float(rng.uniform(*gain)),
        gamma=float(rng.uniform(*gamma)),
        wb=tuple(float(x) for x in 1.0 + rng.uniform(-wb_spread, wb_spread, 3)),
        saturation=float(rng.uniform(*saturation)), haze=float(rng.uniform(*haze)))


def height_raster(town: Town, res_m: float, view: str, with_base: bool = False):
    """Top height (m) of what stands on each cell in ``view`` ('sat' or 'ground').

    With ``with_base`` also returns the bottom height of the occluder (tree canopies float).
    """
    n = int(round(town.size_m / res_m))
    half = town.size_m / 2
    h = np.zeros((n, n), np.float32)
    for b in town.buildings:
        _poly(h, half, res_m, b["poly"], float(b["height"]))
    tr = town.trees
    key = "sat_leaf_off" if view == "sat" else "ground_leaf_off"
    ht = np.zeros((n, n), np.float32)
    hb = np.zeros((n, n), np.float32)
    for i in np.argsort(tr["z_top"], kind="stable"):
        top = float(tr["z_top"][i])
        r = float(tr["r"][i]) * (0.75 if tr["conifer"][i] else 1.0)
        base = float(tr["z_base"][i]) * (0.5 if tr["conifer"][i] else 1.0)
        if tr[key][i]:  # bare tree: only the trunk and main limbs
            r, base = 0.3, 0.0
        _circle(ht, half, res_m, (tr["x"][i], tr["y"][i]), r, top)
        _circle(hb, half, res_m, (tr["x"][i], tr["y"][i]), r, base)
        _circle(hb, half, res_m, (tr["x"][i], tr["y"][i]), 0.3, 0.0)
    hc = np.zeros((n, n), np.float32)
    cars = town.cars
    vis = cars["in_sat"] if view == "sat" else cars["in_ground"]
    for i in np.nonzero(vis)[0]:
        poly = _rect(cars["x"][i], cars["y"][i], cars["yaw"][i], cars["length"][i] / 2,
                     cars["width"][i] / 2)
        _poly(hc, half, res_m, poly, float(cars["height"][i]))
    hb[h > 0] = 0.0
    hb[hc > 0] = 0.0
    np.maximum(h, ht, out=h)
    np.maximum(h, hc, out=h)
    return (h, hb) if with_base else h


def cast_shadows(height: np.ndarray, res_m: float, light: Lighting,
                 max_len_m: float = 60.0, base: np.ndarray | None = None) -> np.ndarray:
    """Shadow amount in [0,1] on the ground (north-up raster) for the sun of ``light``.

    A cell is shadowed when some cell towards the sun is taller than the sun ray over it.
    """
    sd = light.sun_dir
    tan_e = math.tan(light.sun_elev_rad)
    hmax = float(height.max()) if height.size else 0.0
    L = min(max_len_m, hmax / max(tan_e, 1e-3))
    steps = int(L / res_m)
    n0, n1 = height.shape
    shadow = np.zeros(height.shape, bool)
    dx, dy = sd[0], sd[1]
    nrm = math.hypot(dx, dy) + 1e-12
    dx, dy = dx / nrm, dy / nrm
    for k in range(1, steps + 1):
        d = k * res_m
        oc = int(round(d * dx / res_m))
        orow = int(round(-d * dy / res_m))
        need = d * tan_e
        # value at (r + orow, c + oc) compared with need
        r0, r1 = max(0, -orow), min(n0, n0 - orow)
        c0, c1 = max(0, -oc), min(n1, n1 - oc)
        if r1 <= r0 or c1 <= c0:
            break
        src = height[r0 + orow:r1 + orow, c0 + oc:c1 + oc]
        if base is None:
            shadow[r0:r1, c0:c1] |= src > need
        else:
            bsrc = base[r0 + orow:r1 + orow, c0 + oc:c1 + oc]
            shadow[r0:r1, c0:c1] |= (src > need) & (bsrc < need)
    sh = shadow.astype(np.float32)
    sh[height > 0.5] = 0.0  # roofs/canopies are lit (approximation)
    return sh


def _mix(lo, hi, t):
    lo = np.asarray(lo, np.float32)
    hi = np.asarray(hi, np.float32)
    return lo + (hi - lo) * t[..., None]


def ground_colour_raster(town: Town, rng: np.random.Generator, view: str,
                         palette_shift: float = 0.0) -> np.ndarray:
    """Float32 RGB (n,n,3) of the ground surface as seen in ``view`` (no shadows, no objects).

    The two views use different palettes drawn from the style ranges and independent textures.
    """
    st = town.style
    n = town.n_px
    res = town.res_m
    cls = town.ground_cls
    lo_f = value_noise(rng, (n, n), 12.0 / res)
    mid_f = value_noise(rng, (n, n), 2.0 / res)
    hi_f = rng.random((n, n), dtype=np.float32)
    out = np.zeros((n, n, 3), np.float32)

    def pick(rgb_range):
        a, b = np.asarray(rgb_range[0], np.float32), np.asarray(rgb_range[1], np.float32)
        base = a + (b - a) * rng.random()
        return base * (1.0 + rng.uniform(-palette_shift, palette_shift, 3)).astype(np.float32)

    grass_a, grass_b = pick(st.grass_rgb), pick(st.grass_rgb) * 0.8
    road_c = pick(st.road_rgb)
    walk_c = pick(st.sidewalk_rgb)
    t = np.clip(lo_f * 0.7 + mid_f * 0.3, 0, 1)
    out[:] = _mix(grass_a, grass_b, t) * (0.85 + 0.3 * hi_f)[..., None]
    m = (cls == ROAD) | (cls == MARKING)
    road = road_c[None, :] * (0.88 + 0.16 * mid_f[m, None] + 0.08 * hi_f[m, None])
    out[m] = road
    m = cls == PARKING
    out[m] = road_c * 1.08 * (0.9 + 0.12 * mid_f[m, None] + 0.06 * hi_f[m, None])
    m = cls == SIDEWALK
    # paving joints every ~0.6 m
    yy, xx = np.nonzero(m)
    joint = ((yy % 6) == 0) | ((xx % 6) == 0)
    out[m] = walk_c * (0.9 + 0.1 * mid_f[m, None]) * np.where(joint, 0.85, 1.0)[:, None]
    m = cls == CURB
    out[m] = np.array([200, 198, 192], np.float32) * (0.92 + 0.08 * hi_f[m, None])
    m = cls == BUILDING
    out[m] = np.array([70, 70, 70], np.float32)
    # paint, blended by amount (wear), on roads and parking
    paint = town.paint
    white = np.array([235, 235, 228], np.float32) * (0.9 + 0.1 * rng.random())
    pm = (paint > 0) & ((cls == ROAD) | (cls == MARKING) | (cls == PARKING))
    a = np.clip(paint[pm] * (0.75 + 0.25 * mid_f[pm]), 0, 1)[:, None]
    out[pm] = out[pm] * (1 - a) + white * a
    return out
