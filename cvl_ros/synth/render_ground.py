"""Forward-camera renderer of a synthetic town (vectorised numpy, one core).

Design (fast, exact where it matters for geometry):

* A *level* virtual camera (same centre and heading, zero roll/pitch) is rendered first:
  - the ground by exact inverse perspective of every pixel row/column into the video's ground
    colour raster (its own lighting, shadows and palette, never the satellite image), with a
    3-level mip pyramid chosen per row against aliasing;
  - vertical structures (building facades, tree trunks, cars, canopies as ellipsoids above the
    trunks) by marching one ray per image column over the 2D structure and canopy rasters
    (Wolfenstein-style) and keeping the first few entries per column; each entry covers the
    rows between its projected top and bottom, nearest entry wins;
  - the sky above (gradient + clouds that turn with the heading).
* The level image is then warped to the real camera by the pure-rotation homography
  ``K R_level_cam K^-1``, which is exact for any roll/pitch (a rotation about the optical centre).

Geometry is therefore exact up to raster resolution (0.1 m ground, 0.2 m structures).
"""

from __future__ import annotations

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
from cvl_ros.synth.town import (
    _SCALE,
    _SHIFT,
    OBJ_BUILDING,
    OBJ_CAR,
    Town,
    _pts_px,
    _rect,
    value_noise,
)

__all__ = ["GroundRenderer", "level_rotation"]

_CAR_RGB = np.array([[200, 200, 205], [30, 30, 35], [150, 20, 25], [40, 60, 130],
                     [120, 120, 125], [230, 230, 230], [90, 100, 70], [170, 140, 90]], float)


def level_rotation(yaw_rad: float) -> np.ndarray:
    """``R_world_optical`` of a level camera looking along ENU heading ``yaw_rad``."""
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    # columns: x_opt (right), y_opt (down), z_opt (forward)
    return np.array([[s, 0.0, c], [-c, 0.0, s], [0.0, -1.0, 0.0]])


class GroundRenderer:
    """Renders RGB frames of ``town`` from arbitrary camera poses (T_world_cam, optical frame).

    ``seed`` draws the video capture (sun, palette, textures); ``avoid_sun_az`` keeps its sun
    >= 60 deg in azimuth from another capture's (the satellite's); ``max_range_m`` bounds the
    ray marching; ``max_entries`` is the number of structure hits kept per column.
    """

    def __init__(self, town: Town, seed: int = 0, max_range_m: float = 90.0,
                 max_entries: int = 6, max_canopy_entries: int = 4,
                 lighting: Lighting | None = None, avoid_sun_az: float | None = None,
                 max_dynamic: int = 8):
        st = town.style
        self.town = town
        rng = np.random.default_rng(np.random.SeedSequence([int(town.seed), int(seed), 0x6D0]))
        self.rng_seed = int(seed)
        self.light = lighting or draw_lighting(
            rng, st.video_sun_elev_deg, st.video_shadow_strength, st.video_gain,
            wb_spread=st.video_wb, avoid_az=avoid_sun_az)
        col = ground_colour_raster(town, rng, "ground", palette_shift=0.06)
        sres = 0.4
        hh, hb = height_raster(town, sres, "ground", with_base=True)
        sh = cast_shadows(hh, sres, self.light, base=hb)
        n = town.n_px
        sh = cv2.resize(sh, (n, n), interpolation=cv2.INTER_LINEAR)
        col *= (1.0 - self.light.shadow_strength * sh)[..., None]
        col *= self.light.gain
        # soften the raster's 0.1 m staircase edges (what a real surface would not show)
        col = cv2.GaussianBlur(col, (0, 0), 0.8)
        g0 = np.clip(col, 0, 255).astype(np.uint8)
        g1 = cv2.resize(g0, (n // 2, n // 2), interpolation=cv2.INTER_AREA)
        g2 = cv2.resize(g1, (n // 4, n // 4), interpolation=cv2.INTER_AREA)
        g3 = cv2.resize(g2, (n // 8, n // 8), interpolation=cv2.INTER_AREA)
        self._mips = [self._pack(g) for g in (g0, g1, g2, g3)]
        self._mip_n = [n, n // 2, n // 4, n // 8]
        self._half = town.size_m / 2.0
        # structures
        self._sid = town.struct_id
        self._cid = town.canopy_id
        self._m = town.struct_id.shape[0]
        # object table + ``max_dynamic`` slots for moving cars (video only, set per frame)
        nb0 = len(town.objects["kind"])
        self._dyn0 = nb0
        self.max_dynamic = int(max_dynamic)
        extra = {"kind": np.full(max_dynamic, OBJ_CAR, np.int8), "z_lo": np.zeros(max_dynamic),
                 "z_hi": np.full(max_dynamic, 1.5), "rgb": _CAR_RGB[np.arange(max_dynamic)
                                                                   % len(_CAR_RGB)],
                 "cx": np.zeros(max_dynamic), "cy": np.zeros(max_dynamic),
                 "angle": np.zeros(max_dynamic), "half_l": np.full(max_dynamic, 2.2),
                 "half_w": np.full(max_dynamic, 0.9), "ref": np.full(max_dynamic, -1)}
        ob = {k: np.concatenate([np.asarray(v), np.asarray(extra[k], dtype=np.asarray(v).dtype)])
              for k, v in town.objects.items()}
        self._ob = ob
        self.max_range_m = float(max_range_m)
        self.bilinear_within_m = 8.0
        self.max_entries = int(max_entries)
        self.max_canopy_entries = int(max_canopy_entries)
        # ray samples in forward depth: fine near, geometric far
        t = [0.6]
        while t[-1] < self.max_range_m:
            t.append(t[-1] + max(0.15, 0.012 * t[-1]))
        self._t = np.array(t, np.float64)
        # per-object colours lit by the video sun
        sd = self.light.sun_dir
        self._sun_xy = sd[:2] / (np.linalg.norm(sd[:2]) + 1e-12)
        rgb = ob["rgb"].astype(np.float32) * self.light.gain
        self._obj_rgb = rgb * (1.0 + rng.uniform(-0.05, 0.05, rgb.shape)).astype(np.float32)
        tr = town.trees
        self._tree_rgb = (tr["rgb"] * rng.uniform(0.85, 1.15, (len(tr["x"]), 1))
                          * self.light.gain).astype(np.float32)
        self._tex = value_noise(rng, (256, 256), 10.0) * 0.8 + rng.random((256, 256)) * 0.2
        self._tex = self._tex.astype(np.float32)
        self._tex_flat = self._tex.reshape(-1)
        nb = len(ob["kind"])
        self._floor_h = np.full(nb, 3.0)
        self._win_sp = np.full(nb, 3.0)
        for i in np.nonzero(ob["kind"] == OBJ_BUILDING)[0]:
            b = town.buildings[int(ob["ref"][i])]
            self._floor_h[i] = b["floor_h"]
            self._win_sp[i] = b["win_spacing"]
        self._branch = (value_noise(rng, (128, 128), 1.5) > 0.62)
        # sky
        zen = np.array([70, 120, 200], np.float32) * rng.uniform(0.85, 1.1)
        hor = np.array([190, 205, 225], np.float32) * rng.uniform(0.9, 1.05)
        self._sky_zen, self._sky_hor = zen, hor
        cl = value_noise(rng, (64, 1024), 10.0) * 0.75 + value_noise(rng, (64, 1024), 3.0) * 0.25
        self._clouds = cv2.resize(cl, (4096, 64), interpolation=cv2.INTER_LINEAR).reshape(-1)
        self._cloud_cover = float(rng.uniform(0.0, 0.6))
        self._noise = (rng.normal(0, 2.5, (512, 2048, 3))).astype(np.float32)

    def _bilinear_ground(self, t, c, dx32, dy32) -> np.ndarray:
        n = self._mip_n[0]
        inv = np.float32(n / self.town.size_m)
        tr_ = t.astype(np.float32)[:, None]
        fx_ = (np.float32(c[0] + self._half) + tr_ * dx32) * inv - np.float32(0.5)
        fy_ = (np.float32(self._half - c[1]) - tr_ * dy32) * inv - np.float32(0.5)
        x0 = np.floor(fx_)
        y0 = np.floor(fy_)
        wx = (fx_ - x0)[..., None]
        wy = (fy_ - y0)[..., None]
        x0 = np.clip(x0.astype(np.int32), 0, n - 2)
        y0 = np.clip(y0.astype(np.int32), 0, n - 2)
        idx = y0 * n + x0
        m = self._mips[0]

        def rgb(ix):
            return m[ix].view(np.uint8).reshape(ix.shape + (4,))[..., :3].astype(np.float32)

        top = rgb(idx) * (1 - wx) + rgb(idx + 1) * wx
        bot = rgb(idx + n) * (1 - wx) + rgb(idx + n + 1) * wx
        return top * (1 - wy) + bot * wy

    @staticmethod
    def _pack(g: np.ndarray) -> np.ndarray:
        out = np.zeros(g.shape[:2] + (4,), np.uint8)
        out[..., :3] = g
        return out.view(np.uint32).reshape(-1)

    def clear_cars_near_path(self, path_xy: np.ndarray, clearance_m: float = 1.1) -> int:
        """Remove from this video the parked cars that a drive along ``path_xy`` would hit.

        Cars whose footprint comes within ``clearance_m`` of the path are taken out of this
        renderer's structure raster (the satellite may still show them: they moved). Returns
        the number of cars removed.
        """
        from scipy.spatial import cKDTree

        p = np.asarray(path_xy, float).reshape(-1, 2)
        if len(p) > 1:
            seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
            s = np.concatenate([[0.0], np.cumsum(seg)])
            si = np.arange(0.0, s[-1] + 1e-9, 0.25)
            p = np.stack([np.interp(si, s, p[:, 0]), np.interp(si, s, p[:, 1])], 1)
        tree = cKDTree(p)
        ob = self._ob
        ids = np.nonzero(ob["kind"][:self._dyn0] == OBJ_CAR)[0]
        if len(ids) == 0:
            return 0
        gu, gv = np.meshgrid(np.linspace(-1, 1, 9), np.linspace(-1, 1, 3))
        gu, gv = gu.ravel(), gv.ravel()
        hit = []
        for i in ids:
            ca, sa = math.cos(ob["angle"][i]), math.sin(ob["angle"][i])
            px = ob["cx"][i] + gu * ob["half_l"][i] * ca - gv * ob["half_w"][i] * sa
            py = ob["cy"][i] + gu * ob["half_l"][i] * sa + gv * ob["half_w"][i] * ca
            d, _ = tree.query(np.stack([px, py], 1))
            if d.min() < clearance_m:
                hit.append(i)
        if hit:
            if self._sid is self.town.struct_id:
                self._sid = self._sid.copy()
            self._sid[np.isin(self._sid, hit)] = 0
        return len(hit)

    # ------------------------------------------------------------------ main entry point
    def render(self, T_world_cam: np.ndarray, fx: float, fy: float, cx: float, cy: float,
               width: int, height: int, exposure: float = 1.0,
               wb: tuple[float, float, float] = (1.0, 1.0, 1.0), noise_seed: int = 0,
               interp: int = cv2.INTER_LINEAR, labels: bool = False,
               dynamic: np.ndarray | None = None) -> np.ndarray:
        """Render an RGB uint8 (height, width, 3) image from the optical pose ``T_world_cam``.

        ``dynamic``: (k, 6) moving cars present in this frame only (east, north, yaw, length,
        width, height); row j always uses colour slot j (at most ``max_dynamic``).

        With ``labels`` the same geometry is rendered as a uint8 (height, width) label image:
        the town's ground class (``town.GRASS`` ...) on the ground, ``200 + object kind`` on
        structures (210 for canopies) and 255 for the sky (nearest-neighbour warp, no noise).
        """
        T = np.asarray(T_world_cam, np.float64)
        R = T[:3, :3]
        c = T[:3, 3]
        zf = R[:, 2]
        yaw = math.atan2(zf[1], zf[0])
        Rl = level_rotation(yaw)
        R_l_c = Rl.T @ R
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        H = K @ R_l_c @ np.linalg.inv(K)  # real pixel -> level pixel
        corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1],
                            [width - 1, height - 1, 1]], float).T
        q = H @ corners
        q = q[:2] / q[2]
        u0 = int(math.floor(min(q[0].min(), 0))) - 1
        u1 = int(math.ceil(max(q[0].max(), width - 1))) + 2
        v0 = int(math.floor(min(q[1].min(), 0))) - 1
        v1 = int(math.ceil(max(q[1].max(), height - 1))) + 2
        g = np.asarray(wb, np.float32) * float(exposure)
        saved = self._place_dynamic(dynamic)
        try:
            img = self._render_level(c, yaw, fx, fy, cx, cy, u0, u1, v0, v1, noise_seed, g,
                                     labels)
        finally:
            for r0, c0, roi in reversed(saved):
                self._sid[r0:r0 + roi.shape[0], c0:c0 + roi.shape[1]] = roi
        if labels:
            interp = cv2.INTER_NEAREST
        # warp: dst(p) = level(H p) - shift by (u0, v0)
        S = np.array([[1, 0, -u0], [0, 1, -v0], [0, 0, 1.0]])
        M = S @ H
        out = cv2.warpPerspective(img, M, (width, height), flags=interp | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REPLICATE)
        return out

    def _place_dynamic(self, dynamic) -> list:
        """Draw this frame's moving cars into the structure raster; returns what to restore."""
        if dynamic is None or len(dynamic) == 0:
            return []
        if self._sid is self.town.struct_id:
            self._sid = self._sid.copy()
        ob = self._ob
        half, res, m = self._half, self.town.struct_res_m, self._m
        saved = []
        for j, (x, y, yw, ln, wd, ht) in enumerate(np.asarray(dynamic, float)[:self.max_dynamic]):
            oid = self._dyn0 + j
            poly = _rect(x, y, yw, ln / 2, wd / 2)
            c0 = max(int(np.floor((poly[:, 0].min() + half) / res)) - 1, 0)
            c1 = min(int(np.ceil((poly[:, 0].max() + half) / res)) + 2, m)
            r0 = max(int(np.floor((half - poly[:, 1].max()) / res)) - 1, 0)
            r1 = min(int(np.ceil((half - poly[:, 1].min()) / res)) + 2, m)
            if c1 <= c0 or r1 <= r0:
                continue
            roi = self._sid[r0:r1, c0:c1].copy()
            saved.append((r0, c0, roi))
            tmp = roi.copy()
            pp = _pts_px(half, res, poly)
            pp[:, 0] -= c0 * _SCALE
            pp[:, 1] -= r0 * _SCALE
            cv2.fillPoly(tmp, [pp], int(oid), cv2.LINE_8, _SHIFT)
            self._sid[r0:r1, c0:c1] = tmp
            ob["cx"][oid], ob["cy"][oid], ob["angle"][oid] = x, y, yw
            ob["half_l"][oid], ob["half_w"][oid], ob["z_hi"][oid] = ln / 2, wd / 2, ht
        return saved

    # ------------------------------------------------------------------ level camera
    def _render_level(self, c, yaw, fx, fy, cx, cy, u0, u1, v0, v1, noise_seed, gain,
                      labels=False):
        town = self.town
        W = u1 - u0
        Hh = v1 - v0
        cz = float(c[2])
        fwd = np.array([math.cos(yaw), math.sin(yaw)])
        right = np.array([math.sin(yaw), -math.cos(yaw)])
        us = np.arange(u0, u1, dtype=np.float64)
        vs = np.arange(v0, v1, dtype=np.float64)
        a = (us - cx) / fx  # lateral slope per unit forward depth
        dx = fwd[0] + a * right[0]  # ray direction per unit forward depth (W,)
        dy = fwd[1] + a * right[1]
        img = np.empty((Hh, W, 3), np.float32) if not labels else np.full((Hh, W), 255, np.uint8)

        # ---- sky + ground
        horizon = cy  # level camera: horizon row
        sky_rows = vs <= horizon + 0.5
        ground_rows = ~sky_rows
        if sky_rows.any() and not labels:
            vv = vs[sky_rows]
            elev = np.arctan((cy - vv) / fy)
            w = np.clip(elev / 0.6, 0, 1)[:, None]
            sky = (self._sky_hor * (1 - w) + self._sky_zen * w).astype(np.float32)
            ang = (yaw - np.arctan(a)) / (2 * math.pi)  # azimuth per column
            ci = (np.floor(ang * 4096).astype(np.int64)) % 4096
            ri = np.clip((elev * 300).astype(np.int64), 0, 63)
            cl = self._clouds[ri[:, None] * 4096 + ci[None, :]]
            cl = np.clip((cl - (1 - self._cloud_cover)) * 3.0, 0, 1)[..., None]
            img[sky_rows] = sky[:, None, :] * (1 - cl) + 235.0 * cl
        if ground_rows.any():
            vv = vs[ground_rows]
            t = fy * cz / (vv - cy)  # forward depth per row
            far = t > 400.0
            t = np.minimum(t, 400.0)
            # mip level per row: footprint along depth of one row
            foot = t * t / (fy * cz)
            lvl = np.clip(np.floor(np.log2(np.maximum(foot / town.res_m, 1.0) / 1.5) + 1), 0, 3)
            lvl = lvl.astype(np.int64)
            if labels:
                lvl[:] = 0
            gimg = np.empty((len(vv), W), np.uint32)
            dx32 = dx.astype(np.float32)
            dy32 = dy.astype(np.float32)
            for L in range(4):
                rows = np.nonzero(lvl == L)[0]
                if len(rows) == 0:
                    continue
                nL = self._mip_n[L]
                inv = np.float32(nL / town.size_m)
                tr_ = t[rows].astype(np.float32)[:, None]
                col = ((np.float32(c[0] + self._half) + tr_ * dx32) * inv).astype(np.int32)
                row = ((np.float32(self._half - c[1]) - tr_ * dy32) * inv).astype(np.int32)
                np.clip(col, 0, nL - 1, out=col)
                np.clip(row, 0, nL - 1, out=row)
                if labels:
                    gimg[rows] = self.town.ground_cls.reshape(-1)[row * nL + col]
                else:
                    gimg[rows] = self._mips[L][row * nL + col]
            if labels:
                g8 = gimg.astype(np.uint8)
                g8[far] = 255
                img[ground_rows] = g8
            else:
                gimg = gimg.view(np.uint8).reshape(len(vv), W, 4)[..., :3].astype(np.float32)
                near = np.nonzero(t < self.bilinear_within_m)[0]
                if len(near):  # magnified texels near the camera: bilinear, not blocky
                    gimg[near] = self._bilinear_ground(t[near], c, dx32, dy32)
                hz = np.nonzero(t > 25.0)[0]
                if len(hz):
                    haze = (1.0 - np.exp(-t[hz] / 350.0)).astype(np.float32)[:, None, None]
                    gimg[hz] = gimg[hz] * (1 - haze) + self._sky_hor * haze
                gimg[far] = self._sky_hor * 0.9
                img[ground_rows] = gimg

        # ---- vertical structures
        tk = self._t
        m = self._m
        sres = town.struct_res_m
        px = c[0] + tk[None, :] * dx[:, None]  # (W, S)
        py = c[1] + tk[None, :] * dy[:, None]
        col = ((px + self._half) / sres).astype(np.int64)
        row = ((self._half - py) / sres).astype(np.int64)
        ok = (col >= 0) & (col < m) & (row >= 0) & (row < m)
        flat = np.where(ok, row * m + col, 0)
        sid = np.where(ok, self._sid.ravel()[flat], 0)
        cid = np.where(ok, self._cid.ravel()[flat], 0)
        layers = []  # (t (W,), z_lo (W,), z_hi (W,), kind, id (W,), valid (W,))
        for ids, kmax, is_canopy in ((sid, self.max_entries, False),
                                     (cid, self.max_canopy_entries, True)):
            # entries = first sample of each run of one id among the NON-ZERO samples of a
            # column, so a ray grazing a disc (A,0,A,0,A) is a single entry
            wi, si = np.nonzero(ids)
            if len(wi) == 0:
                continue
            vals = ids[wi, si]
            new_run = np.ones(len(wi), bool)
            new_run[1:] = (vals[1:] != vals[:-1]) | (wi[1:] != wi[:-1])
            wi, si = wi[new_run], si[new_run]
            first = np.searchsorted(wi, wi, side="left")
            rank = np.arange(len(wi)) - first
            keep = rank < kmax
            wi, si, rank = wi[keep], si[keep], rank[keep]
            for r in range(kmax):
                sel = rank == r
                if not sel.any():
                    break
                tt = np.full(W, np.inf)
                oid = np.zeros(W, np.int64)
                tt[wi[sel]] = tk[si[sel]]
                oid[wi[sel]] = ids[wi[sel], si[sel]]
                layers.append((tt, oid, is_canopy))
        if not layers:
            return img if labels else self._finish(img, noise_seed, gain)
        vcol = vs[:, None].astype(np.float32)
        depth = np.full((Hh, W), np.inf, np.float32)
        lay_idx = np.full((Hh, W), -1, np.int8)
        info = []
        ob = self._ob
        tr = town.trees
        for li, (tt, oid, is_canopy) in enumerate(layers):
            valid = np.isfinite(tt)
            if is_canopy:
                ti = np.maximum(oid - 1, 0)
                # perpendicular offset of the tree centre from the column's ray
                ox = tr["x"][ti] - c[0]
                oy = tr["y"][ti] - c[1]
                dn = np.hypot(dx, dy)
                perp = np.abs(ox * dy - oy * dx) / dn
                rr = np.maximum(tr["r"][ti], 1e-3)
                q = np.clip(perp / rr, 0, 1)
                zb, zt = tr["z_base"][ti], tr["z_top"][ti]
                con = tr["conifer"][ti]
                zc = (zb + zt) / 2
                hh = (zt - zb) / 2 * np.sqrt(1 - q * q)
                z_lo = np.where(con, zb * 0.6, zc - hh)
                z_hi = np.where(con, zb + (zt - zb) * (1 - q), zc + hh)
                # use depth of the tree centre along the column (canopy is a blob)
                tcen = (ox * dx + oy * dy) / (dn * dn)
                tt = np.where(valid, np.maximum(np.minimum(tt + 0.5 * rr * np.sqrt(1 - q * q),
                                                           tcen), 0.3), np.inf)
                kind = np.full(W, 10, np.int64)
                leafoff = tr["ground_leaf_off"][ti] & valid
            else:
                z_lo = ob["z_lo"][oid]
                z_hi = ob["z_hi"][oid]
                kind = ob["kind"][oid].astype(np.int64)
                leafoff = np.zeros(W, bool)
            top = cy - fy * (z_hi - cz) / tt
            bot = cy - fy * (z_lo - cz) / tt
            fin = np.isfinite(tt)
            info.append((tt, oid, kind, leafoff))
            if not fin.any():
                continue
            # only the band of rows this layer can cover
            r0 = max(0, int(math.floor(np.min(top[fin]) - v0)))
            r1 = min(Hh, int(math.ceil(np.max(bot[fin]) - v0)) + 1)
            if r1 <= r0:
                continue
            vb = vcol[r0:r1]
            dband = depth[r0:r1]
            tt32 = tt.astype(np.float32)
            cover = (vb >= top.astype(np.float32)) & (vb <= bot.astype(np.float32)) \
                & (tt32 < dband)
            if leafoff.any():
                br = self._branch[(vs[r0:r1].astype(np.int64) % 128)[:, None],
                                  ((us.astype(np.int64) + oid * 37) % 128)[None, :]]
                cover &= ~(leafoff[None, :] & ~br)
            np.copyto(dband, tt32[None, :].repeat(r1 - r0, 0), where=cover)
            lay_idx[r0:r1][cover] = li
        hit = lay_idx >= 0
        if labels:
            kinds = np.stack([x[2] for x in info])
            ri, ci = np.nonzero(hit)
            img[ri, ci] = (200 + kinds[lay_idx[ri, ci].astype(np.int64), ci]).astype(np.uint8)
            return img
        if hit.any():
            self._shade_structures(img, hit, lay_idx, depth, info, c, cz, dx, dy, us, vs,
                                   fy, cy)
        return self._finish(img, noise_seed, gain)

    def _shade_structures(self, img, hit, lay_idx, depth, info, c, cz, dx, dy, us, vs, fy, cy):
        ob = self._ob
        tr = self.town.trees
        # ---- per (layer, column) quantities (cheap: L x W)
        tt = np.stack([x[0] for x in info])  # (L, W)
        oid = np.stack([x[1] for x in info])
        kind = np.stack([x[2] for x in info])
        leaf = np.stack([x[3] for x in info])
        tfin = np.where(np.isfinite(tt), tt, 0.0)
        hx = c[0] + tfin * dx[None, :]
        hy = c[1] + tfin * dy[None, :]
        canopy = kind == 10
        L, W = tt.shape
        base = np.zeros((L, W, 3), np.float32)
        # objects: face normal, sun shading, coordinate along the face
        o = np.where(canopy, 0, oid)
        ang = ob["angle"][o]
        ca, sa = np.cos(ang), np.sin(ang)
        rx = hx - ob["cx"][o]
        ry = hy - ob["cy"][o]
        lx = rx * ca + ry * sa
        ly = -rx * sa + ry * ca
        on_x = np.abs(lx) * ob["half_w"][o] >= np.abs(ly) * ob["half_l"][o]
        nx = np.where(on_x, np.sign(lx) * ca, -np.sign(ly) * sa)
        ny = np.where(on_x, np.sign(lx) * sa, np.sign(ly) * ca)
        lam = nx * self._sun_xy[0] + ny * self._sun_xy[1]
        shade = 0.62 + 0.38 * np.clip(lam, 0, 1) * math.cos(self.light.sun_elev_rad) \
            - 0.12 * np.clip(-lam, 0, 1)
        base[:] = self._obj_rgb[o] * shade[..., None].astype(np.float32)
        along = np.where(on_x, ly, lx)
        fa = np.mod(along, self._win_sp[o]) / self._win_sp[o]
        wcol = ((fa > 0.25) & (fa < 0.75)) & (kind == OBJ_BUILDING)
        fh_lw = self._floor_h[o].astype(np.float32)
        ztop_lw = (ob["z_hi"][o] - 0.6).astype(np.float32)
        # canopies: lit side
        ti = np.where(canopy, np.maximum(oid - 1, 0), 0)
        side = ((hx - tr["x"][ti]) * self._sun_xy[0] + (hy - tr["y"][ti]) * self._sun_xy[1]) \
            / np.maximum(tr["r"][ti], 1e-3)
        cshade = (0.7 + 0.25 * np.clip(side, -1, 1)).astype(np.float32)
        cbase = self._tree_rgb[ti] * cshade[..., None]
        cbase[leaf] = (95.0, 85.0, 75.0)
        base = np.where(canopy[..., None], cbase, base)
        haze = (1.0 - np.exp(-tfin / 350.0)).astype(np.float32)[..., None]
        base = base * (1 - haze) + self._sky_hor * haze
        # world-anchored texture column per (layer, column)
        tcol = np.where(canopy, (hx + hy) * 8.0, along * 8.0)
        tcol = (np.floor(tcol).astype(np.int64) + oid * 31) % 256
        # ---- per pixel
        flat_px = np.flatnonzero(hit)
        ri = flat_px // W
        ci = flat_px - ri * W
        li = lay_idx.reshape(-1)[flat_px].astype(np.int64)
        flat = li * W + ci
        col = base.reshape(-1, 3)[flat]
        k = kind.reshape(-1)[flat]
        t = tfin.reshape(-1)[flat].astype(np.float32)
        z = np.float32(cz) + (np.float32(cy) - vs[ri].astype(np.float32)) * t * np.float32(1 / fy)
        trow = (z * np.float32(8.0)).astype(np.int64) % 256
        tex = self._tex_flat[trow * 256 + tcol.reshape(-1)[flat]]
        col *= (np.float32(0.85) + np.float32(0.3) * tex)[:, None]
        of = o.reshape(-1)[flat]
        # windows: floors every floor_h, columns every win_spacing (per (layer, column) masks)
        fh = fh_lw.reshape(-1)[flat]
        fz = np.mod(z, fh) / fh
        win = wcol.reshape(-1)[flat] & (fz > 0.35) & (fz < 0.8) & (z > fh * 0.9) \
            & (z < ztop_lw.reshape(-1)[flat])
        if win.any():
            col[win] = col[win] * 0.25 + np.array([45, 55, 70], np.float32)
        carm = k == OBJ_CAR
        if carm.any():
            cc = col[carm]
            zc = z[carm]
            cc[zc < 0.35] = (25.0, 25.0, 28.0)
            glass = (zc > 0.95) & (zc < ob["z_hi"][of[carm]] - 0.12)
            cc[glass] = (45.0, 55.0, 65.0)
            col[carm] = cc
        img.reshape(-1, 3)[flat_px] = col

    def _finish(self, img, noise_seed, gain):
        h, w = img.shape[:2]
        if np.any(np.abs(gain - 1.0) > 1e-6):
            img *= gain
        r = np.random.default_rng(int(noise_seed) + 7919 * self.rng_seed)
        oy = int(r.integers(0, 512 - min(h, 511))) if h < 512 else 0
        ox = int(r.integers(0, 2048 - min(w, 2047))) if w < 2048 else 0
        nz = self._noise[oy:oy + h, ox:ox + w]
        if nz.shape[:2] == (h, w):
            img += nz
        return np.clip(img, 0, 255).astype(np.uint8)
