"""Drives through a synthetic town: 10 Hz body poses following the roads.

A drive is a random walk over the road graph (no U-turns, turning at junctions, preferring
segments that stay inside the town), smoothed through the junctions, offset to the right-hand
lane, and sampled at 10 Hz with a speed that varies smoothly in ``speed_mps`` and slows for
turns. The body (IMU, x forward, y left, z up) carries small smooth roll/pitch noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d, maximum_filter1d

from cvl_ros.camera import pose_enu
from cvl_ros.synth.town import Town

__all__ = ["Drive", "plan_drive", "plan_traffic", "ou_process"]


@dataclass
class Drive:
    """One drive: times (s), body poses ``T_world_body`` (N,4,4) in the town's ENU frame."""

    t_s: np.ndarray
    T_world_body: np.ndarray
    speed_mps: np.ndarray
    segments: list[int]

    def __len__(self) -> int:
        return len(self.t_s)

    @property
    def xy(self) -> np.ndarray:
        """(N,2) east/north of the body."""
        return self.T_world_body[:, :2, 3]

    @property
    def yaw(self) -> np.ndarray:
        """(N,) ENU yaw of the body (rad)."""
        return np.arctan2(self.T_world_body[:, 1, 0], self.T_world_body[:, 0, 0])


def ou_process(rng: np.random.Generator, n: int, dt: float, tau_s: float, sigma: float,
               x0: float | None = None) -> np.ndarray:
    """Ornstein-Uhlenbeck samples (stationary std ``sigma``, correlation time ``tau_s``)."""
    a = math.exp(-dt / tau_s)
    b = sigma * math.sqrt(1 - a * a)
    x = np.empty(n)
    x[0] = rng.normal(0, sigma) if x0 is None else x0
    e = rng.normal(0, 1, n)
    for i in range(1, n):
        x[i] = a * x[i - 1] + b * e[i]
    return x


def _route(town: Town, rng: np.random.Generator, length_m: float, margin_m: float):
    half = town.size_m / 2 - margin_m
    nodes = town.nodes
    inside = np.all(np.abs(nodes) <= half, axis=1)
    adj = town.adjacency()
    segs = town.segments
    cands = [k for k, s in enumerate(segs) if inside[s.a] and inside[s.b]]
    if not cands:
        cands = list(range(len(segs)))
    k = cands[int(rng.integers(len(cands)))]
    s = segs[k]
    forward = bool(rng.random() < 0.5)
    node = s.b if forward else s.a
    pts = [s.pts if forward else s.pts[::-1]]
    route = [k]
    total = s.length_m
    while total < length_m:
        def far_of(j):
            return segs[j].b if segs[j].a == node else segs[j].a

        options = [j for j in adj[node] if j != route[-1] and inside[far_of(j)]]
        if not options:  # dead end or edge of the tile-safe interior: turn around
            options = [route[-1]] if inside[far_of(route[-1])] else \
                [j for j in adj[node] if j != route[-1]] or [route[-1]]
        # direction of arrival
        last = pts[-1]
        din = last[-1] - last[-2]
        din /= np.linalg.norm(din) + 1e-12
        w = []
        for j in options:
            sj = segs[j]
            p = sj.pts if sj.a == node else sj.pts[::-1]
            far = sj.b if sj.a == node else sj.a
            dout = p[min(3, len(p) - 1)] - p[0]
            dout /= np.linalg.norm(dout) + 1e-12
            straight = float(np.dot(din, dout))
            wt = 1.0 + 0.6 * max(straight, 0.0)
            if not inside[far]:
                wt *= 1e-6  # leave the tile-safe interior only when nothing else is possible
            if j in route:
                wt *= 0.15  # explore: prefer roads not driven yet
            if straight < -0.8:
                wt *= 0.01
            w.append(wt)
        w = np.array(w) / np.sum(w)
        j = options[int(rng.choice(len(options), p=w))]
        sj = segs[j]
        p = sj.pts if sj.a == node else sj.pts[::-1]
        node = sj.b if sj.a == node else sj.a
        pts.append(p)
        route.append(j)
        total += sj.length_m
    return np.concatenate(pts, 0), route


def plan_drive(town: Town, seed: int, n_frames: int, rate_hz: float = 10.0,
               speed_mps: tuple[float, float] = (8.0, 12.0), imu_height_m: float = 0.93,
               lane_offset_m: float | None = None, roll_pitch_deg: float | None = None,
               margin_m: float = 25.0) -> Drive:
    """Plan a drive of ``n_frames`` at ``rate_hz`` through ``town`` (deterministic in seed)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(town.seed), int(seed), 0xD21]))
    dt = 1.0 / rate_hz
    v_mean = rng.uniform(*speed_mps)
    need = (n_frames + 20) * dt * speed_mps[1] + 60.0
    raw, route = _route(town, rng, need, margin_m)
    # resample the centreline at 0.5 m, smooth the corners, offset to the right lane
    d = np.linalg.norm(np.diff(raw, axis=0), axis=1)
    keep = np.concatenate([[True], d > 1e-6])
    raw = raw[keep]
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(raw, axis=0), axis=1))])
    step = 0.5
    si = np.arange(0.0, s[-1], step)
    cl = np.stack([np.interp(si, s, raw[:, 0]), np.interp(si, s, raw[:, 1])], 1)
    cl = gaussian_filter1d(cl, sigma=4.0 / step, axis=0, mode="nearest")
    tan = np.gradient(cl, axis=0)
    tan /= np.linalg.norm(tan, axis=1, keepdims=True) + 1e-12
    right = np.stack([tan[:, 1], -tan[:, 0]], 1)
    lane = town.style.lane_w_m / 2 if lane_offset_m is None else lane_offset_m
    path = gaussian_filter1d(cl + right * lane, sigma=1.0 / step, axis=0, mode="nearest")
    # re-sample the driven path by its own arc length; heading from its own tangent (smooth
    # also through a turn-around, where the centreline folds back on itself)
    d = np.linalg.norm(np.diff(path, axis=0), axis=1)
    path = path[np.concatenate([[True], d > 1e-4])]
    ps = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    ptan = np.gradient(path, ps, axis=0)
    heading = np.unwrap(np.arctan2(ptan[:, 1], ptan[:, 0]))
    curv = np.abs(np.gradient(heading) / np.maximum(np.gradient(ps), 1e-6))
    curv = maximum_filter1d(gaussian_filter1d(curv, 1.0), size=int(8.0 / step) + 1)
    # speed: smooth variation about the drive's mean, slower in turns (lateral acc <= 2.5)
    n = n_frames
    v_var = ou_process(rng, n, dt, 8.0, (speed_mps[1] - speed_mps[0]) / 4)
    start = float(rng.uniform(5.0, 25.0))
    sc = np.empty(n)
    v = np.empty(n)
    pos = start
    for i in range(n):
        k = float(np.interp(pos, ps, curv))
        vmax = math.sqrt(3.5 / max(k, 1e-4))
        v[i] = float(np.clip(min(v_mean + v_var[i], vmax), 1.5, speed_mps[1] + 1.0))
        sc[i] = pos
        pos += v[i] * dt
    if sc[-1] > ps[-1]:
        raise RuntimeError("drive route too short (town too small for the requested frames)")
    x = np.interp(sc, ps, path[:, 0])
    y = np.interp(sc, ps, path[:, 1])
    yaw = np.interp(sc, ps, heading)
    yaw = (yaw + np.pi) % (2 * np.pi) - np.pi
    rp = math.radians(town.style.roll_pitch_noise_deg if roll_pitch_deg is None
                      else roll_pitch_deg)
    roll = ou_process(rng, n, dt, 1.5, rp / 2)
    pitch = ou_process(rng, n, dt, 1.0, rp / 2)
    T = np.stack([pose_enu(x[i], y[i], imu_height_m, yaw[i], pitch[i], roll[i])
                  for i in range(n)])
    return Drive(t_s=np.arange(n) * dt, T_world_body=T, speed_mps=v, segments=route)


def plan_traffic(town: Town, drive: Drive, seed: int, max_cars: int = 8,
                 oncoming_per_100m: float = 0.8, lead_prob: float = 0.5,
                 visible_m: float = 100.0) -> list[np.ndarray]:
    """Moving cars seen by a drive's camera (video only), one (k, 6) array per frame.

    Rows are (east, north, yaw, length, width, height); row j is always car j (a fixed colour
    slot); cars out of sight are parked far away (1e6 m).

    Oncoming cars drive the ego route backwards in the opposite lane; a leading car (with
    probability ``lead_prob``) keeps a varying gap of 12-40 m ahead in the ego lane.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(town.seed), int(seed), 0x7AF]))
    n = len(drive)
    xy = drive.xy
    yaw = np.unwrap(drive.yaw)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    length = float(s[-1])
    dt = float(drive.t_s[1] - drive.t_s[0]) if n > 1 else 0.1
    lane = town.style.lane_w_m

    def at(sq, lateral):
        sq = np.clip(sq, 0.0, length)
        x = np.interp(sq, s, xy[:, 0])
        y = np.interp(sq, s, xy[:, 1])
        a = np.interp(sq, s, yaw)
        return x - np.sin(a) * lateral, y + np.cos(a) * lateral, a

    cars = []  # (s(t) (n,), lateral, yaw offset, L, W, H)
    if rng.random() < lead_prob:
        gap = 12.0 + 28.0 / (1.0 + np.exp(-ou_process(rng, n, dt, 6.0, 1.5)))
        cars.append((s + gap, 0.0, 0.0))
    n_on = int(rng.poisson(oncoming_per_100m * (length + 10.0 * n * dt) / 100.0))
    for _ in range(min(n_on, max_cars - len(cars))):
        v = rng.uniform(7.0, 12.0)
        s0 = rng.uniform(0.0, length + v * n * dt)
        cars.append((s0 - v * drive.t_s, lane, math.pi))
    dims = np.stack([rng.uniform(3.9, 4.9, len(cars)), rng.uniform(1.7, 1.95, len(cars)),
                     rng.uniform(1.4, 1.6, len(cars))], 1) if cars else np.zeros((0, 3))
    frames = []
    for i in range(n):
        rows = []
        for j, (sc, lat, dyaw) in enumerate(cars):
            if not (0.0 <= sc[i] <= length):
                rows.append([1e6, 1e6, 0.0, *dims[j]])  # parked far away: keeps slot j
                continue
            x, y, a = at(sc[i], lat)
            if math.hypot(x - xy[i, 0], y - xy[i, 1]) > visible_m:
                rows.append([1e6, 1e6, 0.0, *dims[j]])
                continue
            rows.append([x, y, a + dyaw, *dims[j]])
        frames.append(np.array(rows, float).reshape(-1, 6))
    return frames
