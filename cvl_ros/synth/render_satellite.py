"""Satellite (orthophoto) renderer: a north-up georeferenced mosaic of a synthetic town.

The mosaic is captured "at another time" than the video: its own sun (hard cast shadows of
buildings, trees and cars), its own palette draw and textures, its own set of cars (some parked
cars exist in one view only; moving cars only here), its own leaf state (leaf-off trees show
bare branches over the ground), roofs whose colours are independent of the facades seen from
the street, a small off-nadir lean of tall things, and a global colour/exposure transform
(gain, gamma, white balance, saturation, haze), blur and sensor noise.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from cvl_ros.synth.appearance import (
    Lighting,
    cast_shadows,
    draw_lighting,
    ground_colour_raster,
    height_raster,
)
from cvl_ros.synth.town import _SHIFT, Town, _pts_px, _rect, value_noise

__all__ = ["render_satellite", "SAT_M_PER_PX"]

SAT_M_PER_PX = 0.2


def _fill(img, half, res, poly, colour):
    cv2.fillPoly(img, [_pts_px(half, res, poly)], tuple(float(x) for x in colour), cv2.LINE_AA,
                 _SHIFT)


def render_satellite(town: Town, seed: int = 0, m_per_px: float = SAT_M_PER_PX,
                     avoid_sun_az: float | None = None) -> tuple[np.ndarray, Lighting]:
    """Render the town's satellite mosaic: (RGB uint8 (N,N,3), the capture's Lighting).

    ``N = size_m / m_per_px``; pixel (0,0) is the north-west corner of the town square.
    """
    st = town.style
    rng = np.random.default_rng(np.random.SeedSequence([int(town.seed), int(seed), 0x5A7]))
    light = draw_lighting(rng, st.sat_sun_elev_deg, st.sat_shadow_strength, st.sat_gain,
                          st.sat_gamma, st.sat_wb, st.sat_saturation, st.sat_haze,
                          avoid_az=avoid_sun_az)
    half = town.size_m / 2.0
    N = int(round(town.size_m / m_per_px))
    res = m_per_px
    col = ground_colour_raster(town, rng, "sat", palette_shift=0.12)
    col = cv2.resize(col, (N, N), interpolation=cv2.INTER_AREA)
    sun_xy = light.sun_dir[:2] / (np.linalg.norm(light.sun_dir[:2]) + 1e-12)

    # cars present in the satellite image
    cars = town.cars
    for i in np.nonzero(cars["in_sat"])[0]:
        L, W = cars["length"][i], cars["width"][i]
        poly = _rect(cars["x"][i], cars["y"][i], cars["yaw"][i], L / 2, W / 2)
        c = cars["rgb"][i] * rng.uniform(0.9, 1.1)
        _fill(col, half, res, poly, c)
        # windscreen / roof
        poly = _rect(cars["x"][i], cars["y"][i], cars["yaw"][i], L * 0.22, W * 0.4)
        _fill(col, half, res, poly, c * 0.55 + 10)

    # shadows of everything standing in this capture
    sres = 0.4
    hmap, hbase = height_raster(town, sres, "sat", with_base=True)
    sh = cast_shadows(hmap, sres, light, base=hbase)
    sh = cv2.resize(sh, (N, N), interpolation=cv2.INTER_LINEAR)
    col *= (1.0 - light.shadow_strength * sh)[..., None]

    # trees
    tr = town.trees
    lean_k = rng.uniform(*st.sat_lean_m_per_m)
    lean_dir = rng.uniform(-math.pi, math.pi)
    lean = np.array([math.cos(lean_dir), math.sin(lean_dir)]) * lean_k
    nt = len(tr["x"])
    order = np.argsort(tr["z_top"], kind="stable")
    canopy_id = np.zeros((N, N), np.int32)
    branches = np.zeros((N, N), np.float32)
    for i in order:
        cxy = np.array([tr["x"][i], tr["y"][i]]) + lean * tr["z_top"][i] * 0.7
        p = _pts_px(half, res, cxy[None])[0]
        r = tr["r"][i] * (0.75 if tr["conifer"][i] else 1.0)
        if tr["sat_leaf_off"][i]:
            k = int(rng.integers(5, 9))
            for a in rng.uniform(0, 2 * math.pi, k):
                e = cxy + r * rng.uniform(0.6, 1.0) * np.array([math.cos(a), math.sin(a)])
                q = _pts_px(half, res, e[None])[0]
                cv2.line(branches, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), 1.0, 1,
                         cv2.LINE_AA, _SHIFT)
            continue
        cv2.circle(canopy_id, (int(p[0]), int(p[1])), int(round(r / res * (1 << _SHIFT))),
                   int(i) + 1, -1, cv2.LINE_8, _SHIFT)
    if nt:
        leafy = canopy_id > 0
        rr, cc = np.nonzero(leafy)
        ti = canopy_id[rr, cc] - 1
        ce = (cc + 0.5) * res - half
        cn = half - (rr + 0.5) * res
        tx = tr["x"][ti] + lean[0] * tr["z_top"][ti] * 0.7
        ty = tr["y"][ti] + lean[1] * tr["z_top"][ti] * 0.7
        rad = tr["r"][ti] * np.where(tr["conifer"][ti], 0.75, 1.0)
        ox, oy = (ce - tx) / rad, (cn - ty) / rad
        dome = np.sqrt(np.clip(1 - ox * ox - oy * oy, 0, 1))
        lit = 0.55 + 0.35 * np.clip(ox * sun_xy[0] + oy * sun_xy[1], -1, 1) + 0.2 * dome
        tex = value_noise(rng, (N, N), 2.0)[rr, cc]
        fac = rng.uniform(0.85, 1.15, (nt, 1))
        base = tr["rgb"][ti] * fac[ti]
        col[rr, cc] = (base * (lit * (0.75 + 0.5 * tex))[:, None]).astype(np.float32)
    if branches.any():
        a = np.clip(branches, 0, 1)[..., None] * 0.8
        col = col * (1 - a) + np.array([70, 60, 50], np.float32) * a

    # buildings: facade sweep (lean) then roof, lower buildings first
    for b in sorted(town.buildings, key=lambda b: b["height"]):
        poly = b["poly"]
        off = lean * b["height"]
        roof_poly = poly + off
        if np.linalg.norm(off) > 0.05:
            hull = cv2.convexHull(np.concatenate([poly, roof_poly]).astype(np.float32))[:, 0]
            _fill(col, half, res, hull, b["facade_rgb"] * 0.75)
        rc = b["roof_rgb"] * rng.uniform(0.9, 1.1, 3)
        if b["gable"]:
            ang = b["angle"]
            u = np.array([math.cos(ang), math.sin(ang)])
            v = np.array([-math.sin(ang), math.cos(ang)])
            ctr = b["centre"] + off
            hl, hw = b["half_l"], b["half_w"]
            ridge_along = hl >= hw  # ridge along the long side
            ax, ay = (u, v) if ridge_along else (v, u)
            la, lb = (hl, hw) if ridge_along else (hw, hl)
            for sgn in (1.0, -1.0):
                half_poly = np.array([ctr + ax * la, ctr - ax * la,
                                      ctr - ax * la + ay * lb * sgn, ctr + ax * la + ay * lb * sgn])
                lam = float(np.dot(ay * sgn, sun_xy))
                _fill(col, half, res, half_poly, rc * (0.82 + 0.25 * lam))
        else:
            _fill(col, half, res, roof_poly, rc)
            # parapet and a few rooftop boxes
            cv2.polylines(col, [_pts_px(half, res, roof_poly)], True,
                          tuple(float(x) for x in rc * 0.75), 1, cv2.LINE_AA, _SHIFT)
            for _ in range(int(rng.integers(0, 4))):
                p = b["centre"] + off + rng.uniform(-0.6, 0.6) * b["half_l"] * np.array(
                    [math.cos(b["angle"]), math.sin(b["angle"])]) + rng.uniform(-0.6, 0.6) \
                    * b["half_w"] * np.array([-math.sin(b["angle"]), math.cos(b["angle"])])
                box = _rect(p[0], p[1], b["angle"], rng.uniform(0.6, 1.5), rng.uniform(0.6, 1.5))
                _fill(col, half, res, box, rc * 0.7)

    # capture transform: gain, gamma, white balance, saturation, haze, blur, noise
    x = np.clip(col / 255.0, 0, 1)
    x = x * light.gain
    x = np.clip(x, 0, 1) ** light.gamma
    x = x * np.asarray(light.wb, np.float32)
    grey = x.mean(-1, keepdims=True)
    x = grey + (x - grey) * light.saturation
    x = x * (1 - light.haze) + light.haze * np.array([0.8, 0.82, 0.86], np.float32)
    x = np.clip(x * 255.0, 0, 255).astype(np.float32)
    if st.sat_blur_px > 0:
        x = cv2.GaussianBlur(x, (0, 0), st.sat_blur_px)
    x += rng.normal(0, 3.0, x.shape).astype(np.float32)
    light = dataclasses.replace(light, lean_en_m_per_m=(float(lean[0]), float(lean[1])))
    return np.clip(x, 0, 255).astype(np.uint8), light
