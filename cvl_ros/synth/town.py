"""Procedural 2.5D town: road network, markings, curbs, sidewalks, buildings, trees, cars.

The town lives in a local ENU frame (x east, y north, metres) centred on its datum and covering
``[-size_m/2, size_m/2]`` on both axes. It is described by

* a ground-level class raster (``ground_cls``, north-up, ``res_m`` per pixel) holding what lies
  on the ground: grass, road, paint, curb, sidewalk, parking asphalt, building footprint;
* a structure raster (``struct_id``, ``struct_res_m`` per pixel) of vertical objects (buildings,
  tree trunks, cars present in the video) indexing ``objects``;
* a canopy raster (``canopy_id``) indexing ``trees``;
* lists of buildings (footprint, height, roof and facade colours drawn independently), trees
  (canopy, trunk, species, leaf state per view) and cars (pose, which views contain them);
* the road graph (junctions, segments as polylines) that ``drive.py`` follows.

Everything is drawn from ``numpy.random.default_rng`` streams spawned from the seed, so the same
(seed, style, size) gives the same town bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from cvl_ros.synth.styles import Style, get_style

__all__ = [
    "GRASS",
    "ROAD",
    "MARKING",
    "CURB",
    "SIDEWALK",
    "PARKING",
    "BUILDING",
    "CLASS_NAMES",
    "OBJ_BUILDING",
    "OBJ_TRUNK",
    "OBJ_CAR",
    "RoadSegment",
    "Town",
    "generate_town",
    "value_noise",
]

# ground-level classes
GRASS, ROAD, MARKING, CURB, SIDEWALK, PARKING, BUILDING = range(7)
CLASS_NAMES = ("grass", "road", "marking", "curb", "sidewalk", "parking", "building")

# kinds of vertical objects in the structure raster
OBJ_NONE, OBJ_BUILDING, OBJ_TRUNK, OBJ_CAR = range(4)

_SHIFT = 4  # cv2 sub-pixel bits
_SCALE = 1 << _SHIFT


def value_noise(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Smooth noise in [0, 1] of ``shape``: random values every ``cell_px`` pixels, bicubic."""
    h, w = shape
    gh = max(2, int(math.ceil(h / cell_px)) + 2)
    gw = max(2, int(math.ceil(w / cell_px)) + 2)
    g = rng.random((gh, gw), dtype=np.float32)
    big = cv2.resize(g, (int(gw * cell_px), int(gh * cell_px)), interpolation=cv2.INTER_CUBIC)
    return np.clip(big[:h, :w], 0.0, 1.0)


@dataclass
class RoadSegment:
    """One road between two junctions: centreline polyline (K,2) east/north and its cross-section.

    ``half_w_m`` is the carriageway half width (lanes + parking strip), kerb to kerb / 2.
    """

    a: int
    b: int
    pts: np.ndarray
    lanes_per_dir: int
    lane_w_m: float
    parking: bool
    sidewalk_w_m: float
    curb_w_m: float
    centre_line: str  # dashed | solid | none
    edge_lines: bool

    @property
    def half_w_m(self) -> float:
        """Carriageway half width in metres."""
        return self.lanes_per_dir * self.lane_w_m + (2.2 if self.parking else 0.0)

    @property
    def length_m(self) -> float:
        """Polyline length in metres."""
        return float(np.sum(np.linalg.norm(np.diff(self.pts, axis=0), axis=1)))


@dataclass
class Town:
    """A generated town (see the module docstring)."""

    seed: int
    style: Style
    size_m: float
    res_m: float
    struct_res_m: float
    nodes: np.ndarray  # (N,2)
    segments: list[RoadSegment]
    ground_cls: np.ndarray  # (n,n) uint8
    paint: np.ndarray  # (n,n) float32 in [0,1] paint amount (markings, wear applied)
    struct_id: np.ndarray  # (m,m) int32, 0 = empty
    canopy_id: np.ndarray  # (m,m) int32, 0 = none, else tree index + 1
    objects: dict  # arrays indexed by struct id (index 0 unused)
    buildings: list[dict]
    trees: dict  # arrays
    cars: dict  # arrays
    node_radius_m: np.ndarray  # (N,) junction radius
    rngs: dict = field(default_factory=dict, repr=False)

    @property
    def n_px(self) -> int:
        """Side of the ground raster in pixels."""
        return self.ground_cls.shape[0]

    def world_to_px(self, east, north, res_m: float | None = None):
        """Continuous pixel coordinates (col, row) of ENU points; pixel centres are integers."""
        r = self.res_m if res_m is None else res_m
        h = self.size_m / 2.0
        return (np.asarray(east) + h) / r - 0.5, (h - np.asarray(north)) / r - 0.5

    def adjacency(self) -> dict[int, list[int]]:
        """Junction -> indices of the segments touching it."""
        adj: dict[int, list[int]] = {i: [] for i in range(len(self.nodes))}
        for k, s in enumerate(self.segments):
            adj[s.a].append(k)
            adj[s.b].append(k)
        return adj

    def ground_class_at(self, east, north) -> np.ndarray:
        """Ground class of ENU points (GRASS outside the town)."""
        c, r = self.world_to_px(east, north)
        c = np.round(c).astype(np.int64)
        r = np.round(r).astype(np.int64)
        n = self.n_px
        ok = (c >= 0) & (c < n) & (r >= 0) & (r < n)
        out = np.full(np.shape(c), GRASS, np.uint8)
        out[ok] = self.ground_cls[r[ok], c[ok]]
        return out


# ----------------------------------------------------------------------------- drawing helpers
def _pts_px(town_half: float, res: float, pts: np.ndarray) -> np.ndarray:
    x = (pts[:, 0] + town_half) / res - 0.5
    y = (town_half - pts[:, 1]) / res - 0.5
    return np.round(np.stack([x, y], 1) * _SCALE).astype(np.int32)


def _polyline(img, half, res, pts, width_m, value):
    t = max(1, int(round(width_m / res)))
    cv2.polylines(img, [_pts_px(half, res, pts)], False, value, t, cv2.LINE_8, _SHIFT)


def _poly(img, half, res, pts, value):
    cv2.fillPoly(img, [_pts_px(half, res, pts)], value, cv2.LINE_8, _SHIFT)


def _circle(img, half, res, centre, radius_m, value):
    p = _pts_px(half, res, np.asarray(centre, float)[None])[0]
    cv2.circle(img, (int(p[0]), int(p[1])), max(1, int(round(radius_m / res * _SCALE))), value,
               -1, cv2.LINE_8, _SHIFT)


def _rect(cx, cy, ang, half_l, half_w) -> np.ndarray:
    c, s = math.cos(ang), math.sin(ang)
    u = np.array([c, s])
    v = np.array([-s, c])
    ctr = np.array([cx, cy])
    return np.array([ctr + u * half_l + v * half_w, ctr - u * half_l + v * half_w,
                     ctr - u * half_l - v * half_w, ctr + u * half_l - v * half_w])


def _resample(pts: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    d = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(d)])
    n = max(2, int(math.ceil(s[-1] / step)) + 1)
    si = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(si, s, pts[:, 0]), np.interp(si, s, pts[:, 1])], 1), si


def _frame_at(pts: np.ndarray, s_arr: np.ndarray, s: float):
    """Point, unit tangent and left normal of a resampled polyline at arc length s."""
    i = int(np.clip(np.searchsorted(s_arr, s) - 1, 0, len(pts) - 2))
    t = pts[i + 1] - pts[i]
    t = t / (np.linalg.norm(t) + 1e-12)
    f = (s - s_arr[i]) / max(s_arr[i + 1] - s_arr[i], 1e-9)
    p = pts[i] + f * (pts[i + 1] - pts[i])
    return p, t, np.array([-t[1], t[0]])


def _offset(pts: np.ndarray, off: float) -> np.ndarray:
    t = np.gradient(pts, axis=0)
    t /= np.linalg.norm(t, axis=1, keepdims=True) + 1e-12
    nrm = np.stack([-t[:, 1], t[:, 0]], 1)
    return pts + nrm * off


def _sub(pts: np.ndarray, s_arr: np.ndarray, s0: float, s1: float) -> np.ndarray | None:
    if s1 - s0 < 0.05:
        return None
    m = (s_arr > s0) & (s_arr < s1)
    p0 = _frame_at(pts, s_arr, s0)[0]
    p1 = _frame_at(pts, s_arr, s1)[0]
    return np.concatenate([p0[None], pts[m], p1[None]], 0)


# ----------------------------------------------------------------------------- network
def _road_network(rng, st: Style, size_m: float):
    half = size_m / 2.0
    block = rng.uniform(*st.block_m)
    ncell = int(math.ceil((size_m + 2 * block) / block))
    origin = -(ncell * block) / 2.0
    gx = origin + np.arange(ncell + 1) * block
    nodes = np.zeros((ncell + 1, ncell + 1, 2))
    for i in range(ncell + 1):
        for j in range(ncell + 1):
            jit = rng.normal(0.0, st.jitter_frac * block, 2)
            jit = np.clip(jit, -0.3 * block, 0.3 * block)
            nodes[i, j] = (gx[j] + jit[0], gx[i] + jit[1])
    idx = np.arange((ncell + 1) ** 2).reshape(ncell + 1, ncell + 1)
    edges = []
    for i in range(ncell + 1):
        for j in range(ncell + 1):
            if j < ncell:
                edges.append((idx[i, j], idx[i, j + 1]))
            if i < ncell:
                edges.append((idx[i, j], idx[i + 1, j]))
    nodes = nodes.reshape(-1, 2)
    deg = np.zeros(len(nodes), int)
    for a, b in edges:
        deg[a] += 1
        deg[b] += 1
    keep = []
    order = rng.permutation(len(edges))
    drop = rng.random(len(edges)) < st.drop_edge_prob
    removed = set()
    for k in order:
        a, b = edges[k]
        if drop[k] and deg[a] >= 3 and deg[b] >= 3:
            deg[a] -= 1
            deg[b] -= 1
            removed.add(k)
    keep = [e for k, e in enumerate(edges) if k not in removed]
    # keep only the part near the town (with margin) and its largest component
    margin = half + block
    inside = np.all(np.abs(nodes) <= margin, axis=1)
    keep = [(a, b) for a, b in keep if inside[a] and inside[b]]
    return nodes, keep, block


def _components(n: int, edges) -> np.ndarray:
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    return np.array([find(i) for i in range(n)])


# ----------------------------------------------------------------------------- generator
def generate_town(seed: int, style: str | Style = "suburb", size_m: float = 400.0,
                  res_m: float = 0.1, struct_res_m: float = 0.2) -> Town:
    """Generate the town of ``seed`` in ``style`` covering ``size_m`` x ``size_m`` metres."""
    st = get_style(style) if isinstance(style, str) else style
    ss = np.random.SeedSequence([int(seed), 0xC71])
    names = ["net", "road", "paint", "bld", "tree", "car", "misc"]
    rngs = {k: np.random.default_rng(s) for k, s in zip(names, ss.spawn(len(names)))}
    half = size_m / 2.0
    n = int(round(size_m / res_m))
    m = int(round(size_m / struct_res_m))

    # --- network
    r = rngs["net"]
    nodes, edges, block = _road_network(r, st, size_m)
    comp = _components(len(nodes), edges)
    counts = np.bincount(comp[[a for a, _ in edges]], minlength=len(nodes)) if edges else None
    if edges:
        main = int(np.argmax(counts))
        edges = [(a, b) for a, b in edges if comp[a] == main]
    rr = rngs["road"]
    segments: list[RoadSegment] = []
    for a, b in edges:
        pa, pb = nodes[a], nodes[b]
        d = pb - pa
        L = float(np.linalg.norm(d))
        if rr.random() < st.curve_prob:
            bulge = rr.uniform(*st.curve_bulge_frac) * L * (1 if rr.random() < 0.5 else -1)
            ctrl = (pa + pb) / 2 + np.array([-d[1], d[0]]) / L * bulge
            t = np.linspace(0, 1, max(8, int(L / 2)))[:, None]
            pts = (1 - t) ** 2 * pa + 2 * (1 - t) * t * ctrl + t**2 * pb
        else:
            pts = np.stack([pa, pb])
        pts, _ = _resample(pts, 1.0)
        lanes = int(rr.integers(st.lanes_per_dir[0], st.lanes_per_dir[1] + 1))
        if st.centre_line == "mixed":
            cl = ["dashed", "solid", "none"][int(rr.choice(3, p=[0.5, 0.2, 0.3]))]
        else:
            cl = st.centre_line
        missing = rr.random() < st.missing_marking_prob
        segments.append(RoadSegment(
            a=int(a), b=int(b), pts=pts, lanes_per_dir=lanes, lane_w_m=st.lane_w_m,
            parking=bool(rr.random() < st.parking_lane_prob),
            sidewalk_w_m=float(rr.uniform(*st.sidewalk_w_m)), curb_w_m=st.curb_w_m,
            centre_line="none" if missing else cl,
            edge_lines=bool((not missing) and rr.random() < st.edge_line_prob)))
    node_r = np.zeros(len(nodes))
    node_sw = np.zeros(len(nodes))
    for s in segments:
        for k in (s.a, s.b):
            node_r[k] = max(node_r[k], s.half_w_m)
            node_sw[k] = max(node_sw[k], s.sidewalk_w_m)

    # --- ground raster: sidewalk, curb, road
    cls = np.zeros((n, n), np.uint8)
    used = set(a for s in segments for a in (s.a, s.b))
    for layer, value in (("sw", SIDEWALK), ("curb", CURB), ("road", ROAD)):
        for s in segments:
            w = s.half_w_m
            if layer in ("sw", "curb"):
                w += s.curb_w_m
            if layer == "sw":
                w += s.sidewalk_w_m
            _polyline(cls, half, res_m, s.pts, 2 * w, value)
        for k in used:
            w = node_r[k] + 0.3
            if layer in ("sw", "curb"):
                w += st.curb_w_m
            if layer == "sw":
                w += node_sw[k]
            _circle(cls, half, res_m, nodes[k], w, value)

    # --- markings (paint mask, then wear)
    rp = rngs["paint"]
    paint = np.zeros((n, n), np.uint8)
    junction_clear = node_r + 1.5
    for s in segments:
        pts, s_arr = _resample(s.pts, 0.5)
        L = s_arr[-1]
        s0 = junction_clear[s.a] + 0.5
        s1 = L - junction_clear[s.b] - 0.5
        if s1 - s0 < 4.0:
            continue
        has_lines = s.centre_line != "none" or s.edge_lines
        cw = [has_lines and rp.random() < st.crosswalk_prob for _ in range(2)]
        stop = [s0 + (3.8 if cw[0] else 0.3), s1 - (3.8 if cw[1] else 0.3)]
        if has_lines:
            for end in (0, 1):
                if cw[end]:
                    sc = s0 + 1.6 if end == 0 else s1 - 1.6
                    p, t, nl = _frame_at(pts, s_arr, sc)
                    for q in np.arange(-s.half_w_m + 0.5, s.half_w_m - 0.3, 1.0):
                        pc = p + nl * q
                        _polyline(paint, half, res_m, np.stack([pc - t * 1.4, pc + t * 1.4]),
                                  0.5, 255)
                p, t, nl = _frame_at(pts, s_arr, stop[end])
                lane_sign = 1.0 if end == 0 else -1.0  # right of the incoming traffic
                a_ = p + nl * lane_sign * 0.1
                b_ = p + nl * lane_sign * (s.lanes_per_dir * st.lane_w_m)
                _polyline(paint, half, res_m, np.stack([a_, b_]), 0.3, 255)
        ls0, ls1 = stop[0] + 0.5, stop[1] - 0.5
        lw = st.lane_w_m
        lines = []  # (offset, kind, width)
        if s.centre_line != "none":
            lines.append((0.0, s.centre_line, 0.15))
        for k in range(1, s.lanes_per_dir):
            if s.centre_line != "none":
                lines += [(k * lw, "dashed", 0.12), (-k * lw, "dashed", 0.12)]
        if s.edge_lines:
            e = s.lanes_per_dir * lw
            lines += [(e, "solid", 0.15), (-e, "solid", 0.15)]
        for off, kind, wdt in lines:
            ol = _offset(pts, off) if off else pts
            if kind == "solid":
                sub = _sub(ol, s_arr, ls0, ls1)
                if sub is not None:
                    _polyline(paint, half, res_m, sub, wdt, 255)
            else:
                dash, gap = (3.0, 6.0) if off == 0.0 else (3.0, 3.0)
                a0 = ls0 + rp.uniform(0, dash + gap)
                while a0 < ls1:
                    sub = _sub(ol, s_arr, a0, min(a0 + dash, ls1))
                    if sub is not None:
                        _polyline(paint, half, res_m, sub, wdt, 255)
                    a0 += dash + gap
    wear_lo, wear_hi = st.marking_wear
    wear = rp.uniform(wear_lo, wear_hi)
    wnoise = value_noise(rp, (n, n), 8.0 / res_m) * 0.6 + value_noise(rp, (n, n), 0.6 / res_m) * 0.4
    paint_f = (paint > 0).astype(np.float32) * np.clip((wnoise - wear) * 4.0 + 0.5, 0.0, 1.0)
    paint_f[cls != ROAD] = 0.0
    cls[(paint_f >= 0.5)] = MARKING

    # --- parking lots, buildings
    rb = rngs["bld"]
    occ = np.zeros((n, n), np.uint8)
    occ[cls != GRASS] = 1
    buildings: list[dict] = []
    lots: list[np.ndarray] = []
    cars_list: list[tuple] = []

    def free(poly, margin_m=0.6):
        ctr = poly.mean(0)
        rad = max(float(np.linalg.norm(poly[0] - ctr)), 1e-3)
        grown = ctr + (poly - ctr) * (1.0 + margin_m / rad)
        c0 = int(np.floor((grown[:, 0].min() + half) / res_m)) - 1
        c1 = int(np.ceil((grown[:, 0].max() + half) / res_m)) + 1
        r0 = int(np.floor((half - grown[:, 1].max()) / res_m)) - 1
        r1 = int(np.ceil((half - grown[:, 1].min()) / res_m)) + 1
        if c1 < 0 or r1 < 0 or c0 >= n or r0 >= n:
            return False
        c0, r0 = max(c0, 0), max(r0, 0)
        c1, r1 = min(c1, n - 1), min(r1, n - 1)
        roi = occ[r0:r1 + 1, c0:c1 + 1]
        tmp = np.zeros_like(roi)
        pp = _pts_px(half, res_m, grown)
        pp[:, 0] -= c0 * _SCALE
        pp[:, 1] -= r0 * _SCALE
        cv2.fillPoly(tmp, [pp], 1, cv2.LINE_8, _SHIFT)
        return not np.any(tmp & roi)

    for s in segments:
        pts, s_arr = _resample(s.pts, 0.5)
        L = s_arr[-1]
        for side in (1.0, -1.0):
            base_off = s.half_w_m + s.curb_w_m + s.sidewalk_w_m
            a = junction_clear[s.a] + node_sw[s.a] + 1.0
            end = L - junction_clear[s.b] - node_sw[s.b] - 1.0
            while a < end:
                if rb.random() < st.parking_lot_prob / 3:
                    ll, dd = rb.uniform(18, 30), rb.uniform(14, 22)
                    if a + ll > end:
                        break
                    p, t, nl = _frame_at(pts, s_arr, a + ll / 2)
                    ang = math.atan2(t[1], t[0])
                    ctr = p + nl * side * (base_off + 0.5 + dd / 2)
                    poly = _rect(ctr[0], ctr[1], ang, ll / 2, dd / 2)
                    if free(poly, 0.3):
                        _poly(cls, half, res_m, poly, PARKING)
                        _poly(occ, half, res_m, poly, 1)
                        lots.append(poly)
                        # stalls: 2.5 m wide, 5 m deep along the far side
                        for q in np.arange(-ll / 2 + 1.0, ll / 2 - 1.0, 2.5):
                            for far in (1.0, -1.0):
                                c0 = ctr + t * q + nl * side * far * (dd / 2 - 2.6)
                                a0 = c0 - nl * side * far * 2.4
                                a1 = c0 + nl * side * far * 2.4
                                _polyline(paint, half, res_m, np.stack([a0, a1]), 0.12, 255)
                                if rb.random() < 0.55 and q + 2.5 < ll / 2 - 1.0:
                                    cc = c0 + t * 1.25
                                    cars_list.append((cc[0], cc[1], ang + math.pi / 2, "lot"))
                    a += ll + rb.uniform(*st.building_gap_m)
                    continue
                bl = rb.uniform(*st.building_len_m)
                bd = rb.uniform(*st.building_depth_m)
                if a + bl > end:
                    break
                if rb.random() < st.building_fill:
                    setback = rb.uniform(*st.setback_m)
                    p, t, nl = _frame_at(pts, s_arr, a + bl / 2)
                    ang = math.atan2(t[1], t[0])
                    ctr = p + nl * side * (base_off + setback + bd / 2)
                    poly = _rect(ctr[0], ctr[1], ang, bl / 2, bd / 2)
                    if free(poly, 0.25):
                        _poly(occ, half, res_m, poly, 1)
                        h = rb.uniform(*st.building_h_m)
                        roof = np.array(st.roof_palette[int(rb.integers(len(st.roof_palette)))],
                                        float) * rb.uniform(0.85, 1.15, 3)
                        fac = np.array(st.facade_palette[int(rb.integers(len(st.facade_palette)))],
                                       float) * rb.uniform(0.85, 1.1, 3)
                        buildings.append(dict(
                            poly=poly, centre=ctr, angle=ang, half_l=bl / 2, half_w=bd / 2,
                            height=float(h), roof_rgb=np.clip(roof, 0, 255),
                            facade_rgb=np.clip(fac, 0, 255),
                            gable=bool(rb.random() < st.gable_prob),
                            window_rgb=np.array([60, 70, 85], float) * rb.uniform(0.7, 1.3),
                            floor_h=float(rb.uniform(2.8, 3.4)),
                            win_spacing=float(rb.uniform(2.4, 3.6))))
                a += bl + rb.uniform(*st.building_gap_m)
    for b in buildings:
        _poly(cls, half, res_m, b["poly"], BUILDING)
    # parking-lot stall paint
    lot_mask = cls == PARKING
    lot_paint = (paint > 0) & lot_mask
    paint_f[lot_paint] = np.clip(wnoise[lot_paint] * 2.0 - wear, 0.0, 1.0)
    cls[lot_paint & (paint_f >= 0.5)] = MARKING

    # --- trees
    rt = rngs["tree"]
    tree_rows = []
    for s in segments:
        pts, s_arr = _resample(s.pts, 0.5)
        L = s_arr[-1]
        for side in (1.0, -1.0):
            if rt.random() > st.street_tree_prob:
                continue
            off = s.half_w_m + s.curb_w_m + s.sidewalk_w_m + 0.9
            spacing = rt.uniform(*st.street_tree_spacing_m)
            a = junction_clear[s.a] + node_sw[s.a] + 4.0 + rt.uniform(0, spacing)
            while a < L - junction_clear[s.b] - node_sw[s.b] - 4.0:
                p, t, nl = _frame_at(pts, s_arr, a)
                tree_rows.append(p + nl * side * off)
                a += spacing * rt.uniform(0.85, 1.15)
    n_yard = int(st.yard_trees_per_ha * (size_m * size_m) / 1e4)
    yard = rt.uniform(-half, half, (n_yard, 2))
    cand = np.concatenate([np.array(tree_rows).reshape(-1, 2), yard], 0)
    occ_grown = cv2.dilate(occ, np.ones((13, 13), np.uint8))
    tx, ty = [], []
    for k, (x, y) in enumerate(cand):
        c = int((x + half) / res_m)
        rr_ = int((half - y) / res_m)
        if not (0 <= c < n and 0 <= rr_ < n):
            continue
        street = k < len(tree_rows)
        if street:
            if cls[rr_, c] not in (GRASS, SIDEWALK):
                continue
            if occ_grown[rr_, c] and cls[rr_, c] != GRASS and cls[rr_, c] != SIDEWALK:
                continue
        elif occ_grown[rr_, c]:
            continue
        tx.append(x)
        ty.append(y)
    nt = len(tx)
    kind = rt.random(nt)
    conifer = kind < st.conifer_frac
    decid = (~conifer) & (rt.random(nt) < st.deciduous_frac / max(1e-9, 1 - st.conifer_frac))
    crgb_lo = np.array(st.canopy_rgb[0], float)
    crgb_hi = np.array(st.canopy_rgb[1], float)
    mix = rt.random(nt)[:, None]
    trees = dict(
        x=np.array(tx, float), y=np.array(ty, float),
        r=rt.uniform(*st.canopy_r_m, nt), z_base=rt.uniform(*st.canopy_base_m, nt),
        z_top=rt.uniform(*st.canopy_top_m, nt), trunk_r=rt.uniform(0.15, 0.3, nt),
        conifer=conifer, deciduous=decid,
        rgb=crgb_lo + (crgb_hi - crgb_lo) * mix,
        sat_leaf_off=decid & (rt.random(nt) < st.sat_leaf_off_prob),
        ground_leaf_off=decid & (rt.random(nt) < st.ground_leaf_off_prob))
    trees["r"][conifer] *= 0.7
    trees["z_top"] = np.maximum(trees["z_top"], trees["z_base"] + 2.5)

    # --- cars
    rc = rngs["car"]
    for s in segments:
        if not s.parking:
            continue
        pts, s_arr = _resample(s.pts, 0.5)
        L = s_arr[-1]
        off = s.lanes_per_dir * s.lane_w_m + 1.1
        for side in (1.0, -1.0):
            a = junction_clear[s.a] + node_sw[s.a] + 3.0 + rc.uniform(0, 4)
            while a < L - junction_clear[s.b] - node_sw[s.b] - 3.0:
                if rc.random() < st.parked_car_prob:
                    p, t, nl = _frame_at(pts, s_arr, a)
                    ctr = p + nl * side * off
                    cars_list.append((ctr[0], ctr[1], math.atan2(t[1], t[0]), "street"))
                a += rc.uniform(*st.parked_car_spacing_m)
    # moving cars (satellite only): on the driving lanes
    total_km = sum(s.length_m for s in segments) / 1000.0
    n_mov = int(rc.poisson(st.moving_cars_per_km * total_km))
    moving = []
    for _ in range(n_mov):
        s = segments[int(rc.integers(len(segments)))]
        pts, s_arr = _resample(s.pts, 0.5)
        a = rc.uniform(0, s_arr[-1])
        p, t, nl = _frame_at(pts, s_arr, a)
        side = 1.0 if rc.random() < 0.5 else -1.0
        ctr = p + nl * side * (s.lane_w_m / 2)
        moving.append((ctr[0], ctr[1], math.atan2(t[1], t[0]), "moving"))
    allc = cars_list + moving
    nc = len(allc)
    u = rc.random(nc)
    both = u < st.car_both_views_prob
    sat_only = (~both) & (rc.random(nc) < 0.5)
    is_moving = np.array([c[3] == "moving" for c in allc], bool)
    in_sat = both | sat_only | is_moving
    in_ground = (both | ~sat_only) & ~is_moving
    palette = np.array([[200, 200, 205], [30, 30, 35], [150, 20, 25], [40, 60, 130],
                        [120, 120, 125], [230, 230, 230], [90, 100, 70], [170, 140, 90]], float)
    cars = dict(
        x=np.array([c[0] for c in allc], float), y=np.array([c[1] for c in allc], float),
        yaw=np.array([c[2] for c in allc], float),
        length=rc.uniform(3.9, 4.9, nc), width=rc.uniform(1.7, 1.95, nc),
        height=rc.uniform(1.4, 1.6, nc),
        rgb=palette[rc.integers(len(palette), size=nc)] * rc.uniform(0.85, 1.1, (nc, 1)),
        in_sat=in_sat, in_ground=in_ground)

    # --- structure raster (video view): buildings, trunks, cars in the video
    struct = np.zeros((m, m), np.int32)
    kinds = [OBJ_NONE]
    zlo = [0.0]
    zhi = [0.0]
    rgb = [np.zeros(3)]
    cx, cy, ca, hl, hw = [0.0], [0.0], [0.0], [1.0], [1.0]
    ref = [-1]
    for i, b in enumerate(buildings):
        oid = len(kinds)
        _poly(struct, half, struct_res_m, b["poly"], oid)
        kinds.append(OBJ_BUILDING)
        zlo.append(0.0)
        zhi.append(b["height"])
        rgb.append(b["facade_rgb"])
        cx.append(b["centre"][0])
        cy.append(b["centre"][1])
        ca.append(b["angle"])
        hl.append(b["half_l"])
        hw.append(b["half_w"])
        ref.append(i)
    for i in range(nc):
        if not cars["in_ground"][i]:
            continue
        oid = len(kinds)
        poly = _rect(cars["x"][i], cars["y"][i], cars["yaw"][i], cars["length"][i] / 2,
                     cars["width"][i] / 2)
        _poly(struct, half, struct_res_m, poly, oid)
        kinds.append(OBJ_CAR)
        zlo.append(0.0)
        zhi.append(cars["height"][i])
        rgb.append(cars["rgb"][i])
        cx.append(cars["x"][i])
        cy.append(cars["y"][i])
        ca.append(cars["yaw"][i])
        hl.append(cars["length"][i] / 2)
        hw.append(cars["width"][i] / 2)
        ref.append(i)
    trunk_rgb = np.array([85, 65, 50], float)
    for i in range(nt):
        oid = len(kinds)
        _circle(struct, half, struct_res_m, (trees["x"][i], trees["y"][i]),
                max(trees["trunk_r"][i], struct_res_m * 0.75), oid)
        kinds.append(OBJ_TRUNK)
        zlo.append(0.0)
        zhi.append(float(trees["z_top"][i]) * (0.5 if trees["conifer"][i] else 0.8))
        rgb.append(trunk_rgb * rt.uniform(0.8, 1.2))
        cx.append(trees["x"][i])
        cy.append(trees["y"][i])
        ca.append(0.0)
        hl.append(trees["trunk_r"][i])
        hw.append(trees["trunk_r"][i])
        ref.append(i)
    objects = dict(kind=np.array(kinds, np.int8), z_lo=np.array(zlo), z_hi=np.array(zhi),
                   rgb=np.array(rgb, float), cx=np.array(cx), cy=np.array(cy),
                   angle=np.array(ca), half_l=np.array(hl), half_w=np.array(hw),
                   ref=np.array(ref, np.int64))
    canopy = np.zeros((m, m), np.int32)
    order = np.argsort(trees["z_top"], kind="stable")
    for i in order:
        _circle(canopy, half, struct_res_m, (trees["x"][i], trees["y"][i]), trees["r"][i],
                int(i) + 1)

    return Town(seed=int(seed), style=st, size_m=float(size_m), res_m=float(res_m),
                struct_res_m=float(struct_res_m), nodes=nodes, segments=segments,
                ground_cls=cls, paint=paint_f, struct_id=struct, canopy_id=canopy,
                objects=objects, buildings=buildings, trees=trees, cars=cars,
                node_radius_m=junction_clear, rngs={})
