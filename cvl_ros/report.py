"""Run reports: one row per estimate, ground truth, ``summary.json``, ``estimates.csv``.

Shared by ``cvl-localize-bag`` (rows from the core ``Estimate``) and the demo (rows from the
node's recorded ``GeoPoseEstimate`` messages); :func:`write_report` also draws the plots of
:mod:`cvl_ros.plots`.

The field metrics (:func:`field_metrics`, docs/bags.md) measure the localizer as its users
will: error percentiles, the honesty of the reported covariance (95 % ellipse coverage, NEES),
confident-and-wrong fixes, the distance to the first TRACKING fix, and the baselines of the
same run (dead reckoning from the true first pose, the single-window match, the GPS fix).

Longer than 700 lines: one row type and the field-benchmark metrics (coverage, NEES, dead reckoning,
yaw, first-TRACKING distance) that all read the same rows and ground truth; the plots live in
cvl_ros/plots.py.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cvl_ros.ros import bags

#: Columns of ``estimates.csv`` (units in the names).
CSV_COLUMNS = (
    "stamp_ns", "status", "has_fix", "lat_deg", "lon_deg", "east_m", "north_m", "yaw_rad",
    "cov_ee_m2", "cov_en_m2", "cov_nn_m2", "sigma_major_m", "confidence", "score", "tile_id",
    "window_len", "tiles_searched", "latency_ms", "gt_lat_deg", "gt_lon_deg", "error_m",
    "datum_lat_deg", "datum_lon_deg", "datum_alt_m",
    # field metrics (appended; the columns above keep their order)
    "yaw_var_rad2", "match_lat_deg", "match_lon_deg", "gt_yaw_rad", "distance_m",
    "nees", "yaw_error_deg", "match_error_m", "odom_error_m",
    "along_error_m", "cross_error_m", "along_z", "cross_z", "east_error_m", "north_error_m",
)
STATUS_NAMES = {0: "NO_FIX", 1: "INITIALIZING", 2: "TRACKING", 3: "LOW_CONFIDENCE",
                4: "RELOCALIZING"}
FIX_STATUSES = {"TRACKING", "LOW_CONFIDENCE"}


# --------------------------------------------------------------------------------------------
# Rows: one estimate, from the core Estimate or from a GeoPoseEstimate message
# --------------------------------------------------------------------------------------------
def _nan() -> float:
    return float("nan")


@dataclass
class EstimateRow:
    """One estimate in report form (what ``estimates.csv`` holds)."""

    stamp_ns: int
    status: str
    lat_deg: float = field(default_factory=_nan)
    lon_deg: float = field(default_factory=_nan)
    east_m: float = field(default_factory=_nan)
    north_m: float = field(default_factory=_nan)
    yaw_rad: float = field(default_factory=_nan)
    cov_ee_m2: float = field(default_factory=_nan)
    cov_en_m2: float = field(default_factory=_nan)
    cov_nn_m2: float = field(default_factory=_nan)
    confidence: float = field(default_factory=_nan)
    score: float = field(default_factory=_nan)
    tile_id: str = ""
    window_len: int = 0
    tiles_searched: int = 0
    latency_ms: float = field(default_factory=_nan)
    gt_lat_deg: float = field(default_factory=_nan)
    gt_lon_deg: float = field(default_factory=_nan)
    error_m: float = field(default_factory=_nan)
    datum_lat_deg: float = field(default_factory=_nan)
    datum_lon_deg: float = field(default_factory=_nan)
    datum_alt_m: float = field(default_factory=_nan)
    score_map: Any = None
    tile_lat_deg: float = field(default_factory=_nan)
    tile_lon_deg: float = field(default_factory=_nan)
    yaw_var_rad2: float = field(default_factory=_nan)
    match_lat_deg: float = field(default_factory=_nan)
    """The best single-window match (the first candidate: tile centre + displacement)."""
    match_lon_deg: float = field(default_factory=_nan)
    gt_yaw_rad: float = field(default_factory=_nan)
    distance_m: float = field(default_factory=_nan)
    """Distance travelled along the true path since the run's first image (m)."""
    nees: float = field(default_factory=_nan)
    """Mahalanobis d^2 of the true position under the reported 2x2 covariance (fixes)."""
    yaw_error_deg: float = field(default_factory=_nan)
    """Reported minus true yaw, wrapped to (-180, 180] deg."""
    match_error_m: float = field(default_factory=_nan)
    odom_error_m: float = field(default_factory=_nan)
    """Error of dead reckoning from the true first pose at this stamp (m)."""
    east_error_m: float = field(default_factory=_nan)
    """Estimate minus truth, east (m; the truth's local ENU frame; fixes)."""
    north_error_m: float = field(default_factory=_nan)
    """Estimate minus truth, north (m)."""
    along_error_m: float = field(default_factory=_nan)
    """Estimate minus truth along the true heading (m; positive: ahead of the truth)."""
    cross_error_m: float = field(default_factory=_nan)
    """Estimate minus truth across the true heading (m; positive: left of the truth)."""
    along_z: float = field(default_factory=_nan)
    """``along_error_m`` over the reported 1-sigma in that direction (``sqrt(u^T C u)``)."""
    cross_z: float = field(default_factory=_nan)
    """``cross_error_m`` over the reported 1-sigma across the heading."""

    @property
    def has_fix(self) -> bool:
        """TRACKING or LOW_CONFIDENCE with a finite position."""
        return self.status in FIX_STATUSES and math.isfinite(self.lat_deg)

    @property
    def sigma_major_m(self) -> float:
        """1-sigma of the major axis of the position covariance (m)."""
        cov = np.array([[self.cov_ee_m2, self.cov_en_m2], [self.cov_en_m2, self.cov_nn_m2]])
        if not np.all(np.isfinite(cov)):
            return float("nan")
        return float(math.sqrt(max(np.linalg.eigvalsh(cov)[-1], 0.0)))

    def as_csv(self) -> dict:
        """The CSV record."""
        out = {}
        for k in CSV_COLUMNS:
            v = getattr(self, k)
            out[k] = int(v) if isinstance(v, (bool, np.bool_)) else v
        return out

    @classmethod
    def from_estimate(cls, est: Any) -> EstimateRow:
        """From a core ``cvl_ros.localizer.Estimate``."""
        cov = np.asarray(est.covariance_xy, dtype=np.float64).reshape(2, 2)
        status = getattr(est.status, "name", STATUS_NAMES.get(int(est.status), str(est.status)))
        cands = getattr(est, "candidates", []) or []
        return cls(
            stamp_ns=int(est.stamp_ns), status=status, lat_deg=float(est.lat_deg),
            lon_deg=float(est.lon_deg), east_m=float(est.east_m), north_m=float(est.north_m),
            yaw_rad=float(est.yaw_rad), cov_ee_m2=float(cov[0, 0]), cov_en_m2=float(cov[0, 1]),
            cov_nn_m2=float(cov[1, 1]), confidence=float(est.confidence),
            score=float(est.score), tile_id=str(est.tile_id or ""),
            window_len=int(est.window_len), tiles_searched=int(est.tiles_searched),
            latency_ms=1e3 * float(est.latency_s),
            datum_lat_deg=float(getattr(est, "datum_lat_deg", float("nan"))),
            datum_lon_deg=float(getattr(est, "datum_lon_deg", float("nan"))),
            datum_alt_m=float(getattr(est, "datum_alt_m", float("nan"))),
            score_map=getattr(est, "score_map", None),
            tile_lat_deg=next((float(c.lat_deg) for c in getattr(est, "candidates", []) or []
                               if c.tile_id == est.tile_id), float("nan")),
            tile_lon_deg=next((float(c.lon_deg) for c in getattr(est, "candidates", []) or []
                               if c.tile_id == est.tile_id), float("nan")),
            yaw_var_rad2=float(getattr(est, "yaw_var_rad2", float("nan"))),
            match_lat_deg=float(cands[0].lat_deg) if cands else float("nan"),
            match_lon_deg=float(cands[0].lon_deg) if cands else float("nan"),
        )

    @classmethod
    def from_geo_pose(cls, msg: Any) -> EstimateRow:
        """From a ``cvl_ros/GeoPoseEstimate`` message (rclpy or rosbags object)."""
        cov = np.asarray(msg.pose.covariance, dtype=np.float64).reshape(6, 6)
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        return cls(
            stamp_ns=stamp, status=STATUS_NAMES.get(int(msg.status), str(msg.status)),
            lat_deg=float(msg.latitude_deg), lon_deg=float(msg.longitude_deg),
            east_m=float(msg.pose.pose.position.x), north_m=float(msg.pose.pose.position.y),
            yaw_rad=float(msg.yaw_rad), cov_ee_m2=float(cov[0, 0]), cov_en_m2=float(cov[0, 1]),
            cov_nn_m2=float(cov[1, 1]), confidence=float(msg.confidence),
            score=float(msg.match_score), tile_id=str(msg.tile_id),
            window_len=int(msg.window_length), tiles_searched=int(msg.tiles_searched),
            latency_ms=1e3 * float(msg.latency_s), datum_lat_deg=float(msg.datum_latitude_deg),
            datum_lon_deg=float(msg.datum_longitude_deg),
            datum_alt_m=float(msg.datum_altitude_m),
            tile_lat_deg=next((float(c.latitude_deg) for c in msg.candidates
                               if c.tile_id == msg.tile_id), float("nan")),
            tile_lon_deg=next((float(c.longitude_deg) for c in msg.candidates
                               if c.tile_id == msg.tile_id), float("nan")),
            yaw_var_rad2=float(cov[5, 5]),
            match_lat_deg=float(msg.candidates[0].latitude_deg) if len(msg.candidates)
            else float("nan"),
            match_lon_deg=float(msg.candidates[0].longitude_deg) if len(msg.candidates)
            else float("nan"),
        )


# --------------------------------------------------------------------------------------------
# Ground truth from a bag
# --------------------------------------------------------------------------------------------
def _interp_track(src_ns: np.ndarray, values: list[np.ndarray], stamps_ns: Iterable[int],
                  max_gap_s: float = 0.5, tol_s: float = 0.06) -> list[np.ndarray]:
    """Linear interpolation of ``values`` (each over ``src_ns``) at ``stamps_ns``.

    NaN outside the track (beyond ``tol_s``: camera stamps a few ms before the first OXTS stamp
    take the first sample) or across gaps longer than ``max_gap_s``.
    """
    t = np.asarray(list(stamps_ns), dtype=np.int64)
    src = np.asarray(src_ns, dtype=np.int64)
    ref = src[0]
    x = (src - ref).astype(np.float64)
    q = (t - ref).astype(np.float64)
    out = [np.interp(q, x, np.asarray(v, np.float64), left=np.nan, right=np.nan) for v in values]
    tol = tol_s * 1e9
    for i, qi in enumerate(q):
        if not math.isfinite(out[0][i]):
            j = 0 if qi < x[0] else len(x) - 1
            if abs(qi - x[j]) <= tol:
                for o, v in zip(out, values):
                    o[i] = v[j]
    if len(x) > 1:
        k = np.clip(np.searchsorted(x, q), 1, len(x) - 1)
        gap = (x[k] - x[k - 1]) / 1e9
        for o in out:
            o[gap > max_gap_s] = np.nan
    return out


def wrap_angle(a):
    """Angle(s) wrapped to (-pi, pi]."""
    return -np.remainder(-np.asarray(a, dtype=np.float64) + np.pi, 2 * np.pi) + np.pi


def _yaw_of_quaternion(x: float, y: float, z: float, w: float) -> float:
    """ENU yaw (rad) of the body x axis of a unit quaternion (x, y, z, w)."""
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


@dataclass
class GroundTruth:
    """True positions over time (WGS84), and the true yaw when the source has it."""

    stamps_ns: np.ndarray
    lat_deg: np.ndarray
    lon_deg: np.ndarray
    source: str
    yaw_rad: np.ndarray | None = None
    """ENU yaw of the body (rad), from the ground-truth pose's orientation; None for a fix."""

    @property
    def datum(self):
        """The local ENU frame the reports use: about the first true position, altitude 0."""
        from cvl_ros.geo import GeoDatum

        return GeoDatum(float(self.lat_deg[0]), float(self.lon_deg[0]), 0.0)

    def at(self, stamps_ns: Iterable[int], max_gap_s: float = 0.5) -> tuple[np.ndarray, ...]:
        """Linear interpolation at ``stamps_ns`` (NaN outside the track or across gaps)."""
        lat, lon = _interp_track(self.stamps_ns, [self.lat_deg, self.lon_deg], stamps_ns,
                                 max_gap_s)
        return lat, lon

    def yaw_at(self, stamps_ns: Iterable[int], max_gap_s: float = 0.5) -> np.ndarray:
        """True yaw at ``stamps_ns`` (interpolated on the circle), NaN where unknown."""
        stamps = list(stamps_ns)
        if self.yaw_rad is None:
            return np.full(len(stamps), np.nan)
        (y,) = _interp_track(self.stamps_ns, [np.unwrap(self.yaw_rad)], stamps, max_gap_s)
        return wrap_angle(y)

    def enu(self) -> tuple[np.ndarray, np.ndarray]:
        """(east, north) of the samples about :attr:`datum` (m)."""
        e, n, _ = self.datum.to_enu(self.lat_deg, self.lon_deg, np.zeros(len(self.lat_deg)))
        return np.atleast_1d(e), np.atleast_1d(n)

    def distance_at(self, stamps_ns: Iterable[int], start_ns: int | None = None) -> np.ndarray:
        """Distance travelled along the true path (m) at ``stamps_ns``, from ``start_ns``.

        ``start_ns`` default: the first sample. NaN outside the track.
        """
        e, n = self.enu()
        cum = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(e), np.diff(n)))])
        (d,) = _interp_track(self.stamps_ns, [cum], stamps_ns)
        if start_ns is not None:
            (d0,) = _interp_track(self.stamps_ns, [cum], [start_ns])
            d = d - (d0[0] if math.isfinite(d0[0]) else 0.0)
        return d


def ground_truth_from_bag(bag: str | Path) -> GroundTruth | None:
    """True track of a bag: ``/kitti/ground_truth/pose`` (+ datum metadata) or the GPS fix."""
    from cvl_ros.geo import GeoDatum

    topics = bags.bag_topics(bag)
    datum = bags.bag_datum(bag)
    store = bags.make_typestore()
    if bags.TOPIC_GT_POSE in topics and datum is not None:
        d = GeoDatum(*datum)
        st, e, n, u, yaw = [], [], [], [], []
        for m in bags.iter_bag(bag, [bags.TOPIC_GT_POSE]):
            msg = store.deserialize_cdr(m.data, m.msgtype)
            st.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
            p = msg.pose.position
            e.append(p.x)
            n.append(p.y)
            u.append(p.z)
            q = msg.pose.orientation
            yaw.append(_yaw_of_quaternion(q.x, q.y, q.z, q.w))
        lat, lon, _ = d.to_geodetic(np.array(e), np.array(n), np.array(u))
        return GroundTruth(np.array(st, np.int64), np.atleast_1d(lat), np.atleast_1d(lon),
                           bags.TOPIC_GT_POSE, np.array(yaw, np.float64))
    fixes = _read_fixes(bag)
    if fixes is None or not fixes[1]:
        return None
    fix_topic, st, lat, lon = fixes
    return GroundTruth(np.array(st, np.int64), np.array(lat), np.array(lon), fix_topic)


def _read_fixes(bag: str | Path):
    """``(topic, stamps_ns, lat_deg, lon_deg)`` lists of the bag's NavSatFix topic, or None."""
    topics = bags.bag_topics(bag)
    fix_topic = next((t for t, (ty, _) in topics.items() if ty == bags.MSG_NAVSATFIX), None)
    if fix_topic is None:
        return None
    store = bags.make_typestore()
    st, lat, lon = [], [], []
    for m in bags.iter_bag(bag, [fix_topic]):
        msg = store.deserialize_cdr(m.data, m.msgtype)
        st.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
        lat.append(msg.latitude)
        lon.append(msg.longitude)
    return fix_topic, st, lat, lon


def _enu(datum, lat, lon) -> tuple[np.ndarray, np.ndarray]:
    lat = np.asarray(lat, dtype=np.float64)
    e, n, _ = datum.to_enu(lat, np.asarray(lon, dtype=np.float64), np.zeros(lat.shape))
    return np.atleast_1d(e).astype(np.float64), np.atleast_1d(n).astype(np.float64)


def mahalanobis2(d_en, cov) -> float:
    """``d^T C^-1 d`` of a 2-D error ``d`` (east, north) under the covariance ``C`` (2x2).

    NaN when either is not finite; ``inf`` when ``C`` is not positive definite (a covariance that
    claims certainty cannot contain any error).
    """
    d = np.asarray(d_en, dtype=np.float64).reshape(2)
    c = np.asarray(cov, dtype=np.float64).reshape(2, 2)
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(c))):
        return float("nan")
    try:
        L = np.linalg.cholesky(0.5 * (c + c.T))
    except np.linalg.LinAlgError:
        return float("inf")
    y = np.linalg.solve(L, d)
    return float(y @ y)


def attach_ground_truth(rows: list[EstimateRow], gt: GroundTruth | None,
                        start_ns: int | None = None) -> None:
    """Fill the truth columns of ``rows`` from ``gt``.

    ``gt_lat_deg``/``gt_lon_deg``/``gt_yaw_rad`` (interpolated at each stamp), ``distance_m``
    (along the true path since ``start_ns``, default the first row), and for fixes ``error_m``
    (horizontal), ``east_error_m``/``north_error_m`` (estimate minus truth) and ``nees``
    (:func:`mahalanobis2` of truth minus estimate under the reported east/north covariance),
    and where the truth has a heading, the error along and across it
    (``along_error_m``, ``cross_error_m``) and each over the reported 1-sigma in its direction
    (``along_z``, ``cross_z``); ``yaw_error_deg`` where the row has a yaw; ``match_error_m``
    where it has a single-window match. All in the local ENU frame :attr:`GroundTruth.datum`.
    """
    if gt is None or not rows:
        return
    stamps = [r.stamp_ns for r in rows]
    lat, lon = gt.at(stamps)
    yaw = gt.yaw_at(stamps)
    dist = gt.distance_at(stamps, rows[0].stamp_ns if start_ns is None else start_ns)
    datum = gt.datum
    te, tn = _enu(datum, lat, lon)
    ee, en = _enu(datum, [r.lat_deg for r in rows], [r.lon_deg for r in rows])
    me, mn = _enu(datum, [r.match_lat_deg for r in rows], [r.match_lon_deg for r in rows])
    for i, r in enumerate(rows):
        r.gt_lat_deg, r.gt_lon_deg = float(lat[i]), float(lon[i])
        r.gt_yaw_rad, r.distance_m = float(yaw[i]), float(dist[i])
        if math.isfinite(r.yaw_rad) and math.isfinite(yaw[i]):
            r.yaw_error_deg = math.degrees(float(wrap_angle(r.yaw_rad - yaw[i])))
        if not math.isfinite(lat[i]):
            continue
        if r.has_fix:
            d = np.array([te[i] - ee[i], tn[i] - en[i]])
            r.error_m = float(math.hypot(*d))
            r.east_error_m, r.north_error_m = float(-d[0]), float(-d[1])
            cov = np.array([[r.cov_ee_m2, r.cov_en_m2], [r.cov_en_m2, r.cov_nn_m2]])
            r.nees = mahalanobis2(d, cov)
            if math.isfinite(yaw[i]):
                _along_cross(r, -d, float(yaw[i]), cov)
        if math.isfinite(me[i]):
            r.match_error_m = float(math.hypot(te[i] - me[i], tn[i] - mn[i]))


def _along_cross(r: EstimateRow, err_en: np.ndarray, yaw_rad: float, cov: np.ndarray) -> None:
    """Fill ``r``'s along/across-track error (``err_en`` = estimate minus truth, east/north)
    and its z-scores under ``cov`` (NaN where the reported variance is not positive)."""  # noqa: D205, D209
    u = np.array([math.cos(yaw_rad), math.sin(yaw_rad)])  # ahead
    v = np.array([-u[1], u[0]])  # left
    r.along_error_m, r.cross_error_m = float(err_en @ u), float(err_en @ v)
    for axis, e, name in ((u, r.along_error_m, "along_z"), (v, r.cross_error_m, "cross_z")):
        var = float(axis @ cov @ axis)
        if math.isfinite(var) and var > 0.0:
            setattr(r, name, e / math.sqrt(var))


def gps_errors(bag: str | Path, gt: GroundTruth | None) -> tuple[list[int], list[float]]:
    """``(stamps_ns, errors_m)``: horizontal error of the bag's GPS fixes against the truth.

    Empty unless the ground truth is not the fix itself (``/kitti/ground_truth/pose``).
    """
    if gt is None or gt.source != bags.TOPIC_GT_POSE:
        return [], []
    fixes = _read_fixes(bag)
    if fixes is None:
        return [], []
    _, st, lat, lon = fixes
    glat, glon = gt.at(st)
    ok = np.isfinite(glat)
    if not ok.any():
        return [], []
    fe, fn = _enu(gt.datum, np.asarray(lat)[ok], np.asarray(lon)[ok])
    te, tn = _enu(gt.datum, glat[ok], glon[ok])
    errs = np.hypot(fe - te, fn - tn)
    return [int(t) for t in np.asarray(st)[ok]], [float(e) for e in errs]


def gps_error_m(bag: str | Path, gt: GroundTruth | None) -> list[float]:
    """Horizontal error of the bag's GPS fixes against the ground truth (the GPS baseline).

    Only meaningful when the ground truth is not the fix itself (``/kitti/ground_truth/pose``).
    """
    return gps_errors(bag, gt)[1]


# --------------------------------------------------------------------------------------------
# Dead reckoning from the true first pose (the odometry baseline)
# --------------------------------------------------------------------------------------------
@dataclass
class OdometryTrack:
    """Planar odometry ``odom -> base_link`` over time (x, y in m, yaw in rad, odom frame)."""

    stamps_ns: np.ndarray
    x: np.ndarray
    y: np.ndarray
    yaw_rad: np.ndarray
    source: str = ""

    def at(self, stamps_ns: Iterable[int], max_gap_s: float = 0.5) -> tuple[np.ndarray, ...]:
        """(x, y, yaw) interpolated at ``stamps_ns`` (yaw on the circle; NaN outside)."""
        x, y, yaw = _interp_track(self.stamps_ns, [self.x, self.y, np.unwrap(self.yaw_rad)],
                                  stamps_ns, max_gap_s)
        return x, y, wrap_angle(yaw)


def odometry_from_bag(bag: str | Path, topic: str = bags.TOPIC_ODOM) -> OdometryTrack | None:
    """The bag's ``nav_msgs/Odometry`` poses on ``topic`` (None when the topic is absent)."""
    if not topic or topic not in bags.bag_topics(bag):
        return None
    store = bags.make_typestore()
    st, x, y, yaw = [], [], [], []
    for m in bags.iter_bag(bag, [topic]):
        msg = store.deserialize_cdr(m.data, m.msgtype)
        st.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        x.append(p.x)
        y.append(p.y)
        yaw.append(_yaw_of_quaternion(q.x, q.y, q.z, q.w))
    if not st:
        return None
    order = np.argsort(np.asarray(st, np.int64), kind="stable")
    return OdometryTrack(np.asarray(st, np.int64)[order], np.asarray(x, float)[order],
                         np.asarray(y, float)[order], np.asarray(yaw, float)[order], topic)


def dead_reckoning(odom: OdometryTrack, gt: GroundTruth, stamps_ns: Iterable[int],
                   start_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Dead reckoning from the true pose at ``start_ns``: (east, north) at ``stamps_ns``.

    The odometry is aligned to the truth at ``start_ns`` in position and heading (the true
    yaw of the ground-truth pose), then followed: ``p(t) = p_true(t0) + R(yaw_true(t0) -
    yaw_odom(t0)) (xy_odom(t) - xy_odom(t0))``, in the frame :attr:`GroundTruth.datum`. All NaN
    when the truth has no yaw or either track misses ``start_ns``.
    """
    stamps = list(stamps_ns)
    nan = np.full(len(stamps), np.nan)
    lat0, lon0 = gt.at([start_ns])
    yaw0 = gt.yaw_at([start_ns])[0]
    ox0, oy0, oyaw0 = (v[0] for v in odom.at([start_ns]))
    if not all(math.isfinite(v) for v in (lat0[0], yaw0, ox0, oyaw0)):
        return nan, nan.copy()
    e0, n0 = _enu(gt.datum, lat0, lon0)
    ox, oy, _ = odom.at(stamps)
    rot = yaw0 - oyaw0
    c, s = math.cos(rot), math.sin(rot)
    dx, dy = ox - ox0, oy - oy0
    return e0[0] + c * dx - s * dy, n0[0] + s * dx + c * dy


def attach_dead_reckoning(rows: list[EstimateRow], odom: OdometryTrack | None,
                          gt: GroundTruth | None, start_ns: int | None = None) -> None:
    """Fill ``odom_error_m`` of every row: :func:`dead_reckoning` against the truth there."""
    if odom is None or gt is None or not rows:
        return
    stamps = [r.stamp_ns for r in rows]
    e, n = dead_reckoning(odom, gt, stamps, rows[0].stamp_ns if start_ns is None else start_ns)
    te, tn = _enu(gt.datum, *gt.at(stamps))
    for r, err in zip(rows, np.hypot(e - te, n - tn)):
        r.odom_error_m = float(err)


# --------------------------------------------------------------------------------------------
# Field metrics
# --------------------------------------------------------------------------------------------
#: chi-square 95 % quantile, 2 degrees of freedom: the 95 % ellipse is ``d^2 <= 5.991``.
CHI2_2D_95 = 5.991464547107979
#: two-sided 95 % quantile of the normal distribution (1 dof: ``d^2 <= 3.841``).
Z_95 = 1.959963984540054
#: The field benchmark's keys of ``summary.json`` (null where they cannot be computed).
FIELD_KEYS = (
    "p95_error_m", "max_error_m", "ellipse95_coverage", "ellipse95_coverage_tracking",
    "nees_mean", "tracking_fixes_over_10m", "first_tracking_distance_m",
    "odometry_only_median_error_m", "yaw_median_error_deg", "yaw_p95_error_deg",
    "yaw_coverage95", "single_window_median_error_m",
)


def _finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _share(flags: list[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


def field_metrics(rows: list[EstimateRow], gt: GroundTruth | None,
                  gps_errors_m: list[float] | None = None) -> dict:
    """The field benchmark's numbers of rows filled by :func:`attach_ground_truth` (and
    :func:`attach_dead_reckoning`); every :data:`FIELD_KEYS` key, None where not computable.

    - ``p95_error_m``, ``max_error_m``: over the fixes (TRACKING or LOW_CONFIDENCE).
    - ``ellipse95_coverage`` (``_tracking``): share of fixes (TRACKING fixes) whose true
      position lies in the reported 95 % ellipse, ``nees <= 5.991``; ``nees_mean``: mean
      ``d^2`` over the fixes (2 for a consistent estimator; null if a covariance was not
      positive definite, counted in ``nees_invalid_covariances``).
    - ``tracking_fixes_over_10m``: TRACKING fixes more than 10 m off.
    - ``first_tracking_distance_m``: distance along the true path from the first image to the
      first TRACKING fix.
    - ``odometry_only_*``: dead reckoning from the true first pose at every estimate's stamp.
    - ``yaw_*``: over every estimate with a yaw; ``yaw_coverage95``: share whose true yaw lies
      within 1.96 sigma (``sqrt(yaw_var_rad2)``) of the reported yaw.
    - ``single_window_*``: the best single-window match (first candidate) of every estimate.
    - ``along_track_*`` / ``cross_track_*`` (beside the issue's keys): over the fixes, the RMS
      error along and across the true heading, and the RMS of each over the reported 1-sigma
      in its direction (``*_z_rms``: 1 for an honest covariance, below 1 conservative, above
      1 over-confident in that direction).
    - ``mean_east_error_m`` / ``mean_north_error_m`` (beside the issue's keys): the mean of the
      fixes' errors in the map frame, a constant offset of the whole run (e.g. imagery whose
      roofs lean off their footprints); ``bias_m`` is its length.
    """  # noqa: D205
    out: dict[str, Any] = dict.fromkeys(FIELD_KEYS)
    if gt is None:
        return out
    fixes = [r for r in rows if r.has_fix and math.isfinite(r.error_m)]
    errs = [r.error_m for r in fixes]
    out["p95_error_m"] = _pct(errs, 95)
    out["max_error_m"] = max(errs) if errs else None
    tracking = [r for r in fixes if r.status == "TRACKING"]
    with_cov = [r for r in fixes if not math.isnan(r.nees)]
    out["ellipse95_coverage"] = _share([r.nees <= CHI2_2D_95 for r in with_cov])
    out["ellipse95_coverage_tracking"] = _share(
        [r.nees <= CHI2_2D_95 for r in tracking if not math.isnan(r.nees)])
    invalid = sum(math.isinf(r.nees) for r in with_cov)
    out["nees_mean"] = (float(np.mean([r.nees for r in with_cov]))
                        if with_cov and not invalid else None)
    out["nees_fixes"] = len(with_cov)
    out["nees_invalid_covariances"] = invalid
    out["tracking_fixes_over_10m"] = sum(r.error_m > 10.0 for r in tracking)
    first = next((r for r in rows if r.status == "TRACKING" and r.has_fix), None)
    out["first_tracking_distance_m"] = (first.distance_m if first is not None
                                        and math.isfinite(first.distance_m) else None)
    odo = _finite(r.odom_error_m for r in rows)
    out["odometry_only_median_error_m"] = _pct(odo, 50)
    out["odometry_only_p95_error_m"] = _pct(odo, 95)
    out["odometry_only_max_error_m"] = max(odo) if odo else None
    yaw_rows = [r for r in rows if math.isfinite(r.yaw_error_deg)]
    yaw_abs = [abs(r.yaw_error_deg) for r in yaw_rows]
    out["yaw_median_error_deg"] = _pct(yaw_abs, 50)
    out["yaw_p95_error_deg"] = _pct(yaw_abs, 95)
    out["yaw_coverage95"] = _share(
        [math.radians(abs(r.yaw_error_deg)) <= Z_95 * math.sqrt(r.yaw_var_rad2)
         for r in yaw_rows if math.isfinite(r.yaw_var_rad2) and r.yaw_var_rad2 >= 0])
    out["yaw_estimates"] = len(yaw_rows)
    match = _finite(r.match_error_m for r in rows)
    out["single_window_median_error_m"] = _pct(match, 50)
    out["single_window_p95_error_m"] = _pct(match, 95)
    out["single_window_estimates"] = len(match)
    for axis in ("along", "cross"):
        e = _finite(getattr(r, f"{axis}_error_m") for r in fixes)
        z = _finite(getattr(r, f"{axis}_z") for r in fixes)
        out[f"{axis}_track_rms_error_m"] = _rms(e)
        out[f"{axis}_track_z_rms"] = _rms(z)
    de = _finite(r.east_error_m for r in fixes)
    dn = _finite(r.north_error_m for r in fixes)
    mean_en = (float(np.mean(de)), float(np.mean(dn))) if de and dn else (None, None)
    out["mean_east_error_m"], out["mean_north_error_m"] = mean_en
    out["bias_m"] = math.hypot(*mean_en) if de and dn else None
    dist = _finite(r.distance_m for r in rows)
    out["distance_travelled_m"] = max(dist) if dist else None
    if gps_errors_m:
        out["gps_p95_error_m"] = _pct(gps_errors_m, 95)
        out["gps_max_error_m"] = max(gps_errors_m)
    return out


# --------------------------------------------------------------------------------------------
# Summary and files
# --------------------------------------------------------------------------------------------
def _rms(values: list[float]) -> float | None:
    return float(math.sqrt(np.mean(np.square(values)))) if values else None


def _pct(values: list[float], q: float) -> float | None:
    v = [x for x in values if math.isfinite(x)]
    return float(np.percentile(v, q)) if v else None


def summarize(rows: list[EstimateRow], *, images: int, wall_s: float | None = None,
              bag_duration_s: float | None = None, gt: GroundTruth | None = None,
              gps_errors_m: list[float] | None = None) -> dict:
    """Summary numbers of a run (``summary.json``)."""
    fixes = [r for r in rows if r.has_fix]
    errors = [r.error_m for r in fixes if math.isfinite(r.error_m)]
    lat_ms = [r.latency_ms for r in rows if math.isfinite(r.latency_ms)]
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    out = {
        "images": int(images),
        "keyframes": len(rows),
        "estimates": len(rows),
        "fixes": len(fixes),
        "fix_rate": (len(fixes) / len(rows)) if rows else 0.0,
        "status_counts": by_status,
        "mean_latency_ms": float(np.mean(lat_ms)) if lat_ms else None,
        "p90_latency_ms": _pct(lat_ms, 90),
    }
    if gt is not None:
        out.update({
            "ground_truth": gt.source,
            "median_error_m": _pct(errors, 50),
            "p90_error_m": _pct(errors, 90),
            "mean_error_m": float(np.mean(errors)) if errors else None,
            "within_5m": (sum(e <= 5.0 for e in errors) / len(errors)) if errors else None,
            "within_10m": (sum(e <= 10.0 for e in errors) / len(errors)) if errors else None,
            "within_25m": (sum(e <= 25.0 for e in errors) / len(errors)) if errors else None,
        })
        if gps_errors_m:
            out["gps_median_error_m"] = _pct(gps_errors_m, 50)
            out["gps_p90_error_m"] = _pct(gps_errors_m, 90)
        tracking = [r for r in fixes if r.status == "TRACKING" and math.isfinite(r.error_m)]
        out["tracking_fixes"] = len(tracking)
        out["median_error_tracking_m"] = _pct([r.error_m for r in tracking], 50)
    if wall_s is not None:
        out["wall_s"] = float(wall_s)
        if images:
            out["images_per_s"] = images / wall_s if wall_s > 0 else None
    if bag_duration_s is not None:
        out["bag_duration_s"] = float(bag_duration_s)
    return out


def write_csv(rows: list[EstimateRow], path: str | Path) -> None:
    """Write ``estimates.csv`` (one estimate a line, :data:`CSV_COLUMNS`)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        for r in rows:
            rec = r.as_csv()
            for k, v in rec.items():
                if isinstance(v, float):
                    rec[k] = f"{v:.9f}" if k.endswith("_deg") else f"{v:.6g}"
            w.writerow(rec)


def read_csv(path: str | Path) -> list[EstimateRow]:
    """Read an ``estimates.csv`` back."""
    rows = []
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            kw: dict[str, Any] = {}
            for k, v in rec.items():
                if k in ("has_fix", "sigma_major_m") or k not in CSV_COLUMNS:
                    continue
                if k in ("stamp_ns", "window_len", "tiles_searched"):
                    kw[k] = int(v)
                elif k in ("status", "tile_id"):
                    kw[k] = v
                else:
                    kw[k] = float(v) if v not in ("", None) else float("nan")
            rows.append(EstimateRow(**kw))
    return rows


def write_report(rows: list[EstimateRow], out_dir: str | Path, *, images: int,
                 gt: GroundTruth | None, wall_s: float | None = None,
                 bag_duration_s: float | None = None, mosaic: str | Path | None = None,
                 heatmap: np.ndarray | None = None, heatmap_row: EstimateRow | None = None,
                 gps_errors_m: list[float] | None = None, extra: dict | None = None,
                 odometry: OdometryTrack | None = None,
                 gps_track: tuple[list[int], list[float]] | None = None,
                 start_ns: int | None = None) -> dict:
    """Write ``estimates.csv``, ``summary.json`` and the plots; return the summary.

    ``start_ns`` is the run's first image (distances travelled and dead reckoning start there;
    default: the first row). ``odometry`` (the bag's, :func:`odometry_from_bag`) gives the dead
    reckoning baseline, ``gps_track`` (:func:`gps_errors`) the GPS curve of
    ``error_vs_distance.png``; the keys of :func:`field_metrics` are always written (null where
    they cannot be computed).
    """
    from cvl_ros.plots import (
        plot_error_vs_distance,
        plot_errors,
        plot_heatmap,
        plot_trajectory,
        plot_yaw_error,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if gps_track is not None and gps_errors_m is None:
        gps_errors_m = list(gps_track[1])
    attach_ground_truth(rows, gt, start_ns)
    attach_dead_reckoning(rows, odometry, gt, start_ns)
    summary = summarize(rows, images=images, wall_s=wall_s, bag_duration_s=bag_duration_s,
                        gt=gt, gps_errors_m=gps_errors_m)
    summary.update(field_metrics(rows, gt, gps_errors_m))
    if extra:
        summary.update(extra)
    write_csv(rows, out / "estimates.csv")
    plot_trajectory(rows, out / "trajectory.png", gt=gt, mosaic_path=mosaic)
    plot_errors(rows, out / "error.png")
    summary["plots"] = ["trajectory.png", "error.png"]
    if gt is not None and rows:
        gps_dist = None
        if gps_track is not None and len(gps_track[0]):
            t0 = rows[0].stamp_ns if start_ns is None else start_ns
            gps_dist = (gt.distance_at(gps_track[0], t0), np.asarray(gps_track[1], float))
        plot_error_vs_distance(rows, out / "error_vs_distance.png", gps=gps_dist)
        summary["plots"].append("error_vs_distance.png")
        if any(math.isfinite(r.yaw_error_deg) for r in rows):
            plot_yaw_error(rows, out / "yaw_error.png")
            summary["plots"].append("yaw_error.png")
    heat_row = heatmap_row
    if heatmap is None:
        fixes = [r for r in rows if r.has_fix and r.score_map is not None]
        if fixes:
            heat_row = fixes[len(fixes) // 2]
            heatmap = heat_row.score_map
    if heatmap is not None:
        plot_heatmap(heatmap, out / "heatmap.png", row=heat_row, gt=gt, mosaic_path=mosaic,
                     t0_ns=rows[0].stamp_ns if rows else 0)
        summary["plots"].append("heatmap.png")
    summary["mosaic"] = str(mosaic) if mosaic else None
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
    return summary


def _json_safe(x: Any) -> Any:
    """Non-finite floats -> None (strict JSON: never NaN/Infinity in summary.json)."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)) and not math.isfinite(float(x)):
        return None
    return x

