"""``cvl-localize-bag``: run the node's ``Localizer`` over a bag offline (no DDS) and report.

The same ``Localizer`` the node runs is fed from the bag as fast as the machine allows: images
paired with ``camera_info``, odometry interpolated at each image stamp, absolute heading from the
IMU, camera extrinsics from ``/tf_static``, the GPS fix as a coarse prior (as the node does).
Outputs in ``--out``: ``estimates.csv``, ``summary.json``, ``trajectory.png`` (satellite mosaic
with the true path and the estimates with covariance ellipses, when a mosaic is found),
``error.png`` (error over time) and ``heatmap.png`` (one score map).

The report half of this module (:func:`summarize`, :func:`attach_ground_truth`, the plots) is
shared with the demo, which records the node's live outputs instead.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cvl_ros.ros import bags

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Columns of ``estimates.csv`` (units in the names).
CSV_COLUMNS = (
    "stamp_ns", "status", "has_fix", "lat_deg", "lon_deg", "east_m", "north_m", "yaw_rad",
    "cov_ee_m2", "cov_en_m2", "cov_nn_m2", "sigma_major_m", "confidence", "score", "tile_id",
    "window_len", "tiles_searched", "latency_ms", "gt_lat_deg", "gt_lon_deg", "error_m",
    "datum_lat_deg", "datum_lon_deg", "datum_alt_m",
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
        )


# --------------------------------------------------------------------------------------------
# Ground truth from a bag
# --------------------------------------------------------------------------------------------
@dataclass
class GroundTruth:
    """True positions over time (WGS84)."""

    stamps_ns: np.ndarray
    lat_deg: np.ndarray
    lon_deg: np.ndarray
    source: str

    def at(self, stamps_ns: Iterable[int], max_gap_s: float = 0.5) -> tuple[np.ndarray, ...]:
        """Linear interpolation at ``stamps_ns`` (NaN outside the track or across gaps)."""
        t = np.asarray(list(stamps_ns), dtype=np.int64)
        ref = self.stamps_ns[0]
        x = (self.stamps_ns - ref).astype(np.float64)
        q = (t - ref).astype(np.float64)
        lat = np.interp(q, x, self.lat_deg, left=np.nan, right=np.nan)
        lon = np.interp(q, x, self.lon_deg, left=np.nan, right=np.nan)
        # allow a small extrapolation (camera stamps a few ms before the first OXTS stamp)
        tol = 0.06e9
        for i, qi in enumerate(q):
            if not math.isfinite(lat[i]):
                j = 0 if qi < x[0] else len(x) - 1
                if abs(qi - x[j]) <= tol:
                    lat[i], lon[i] = self.lat_deg[j], self.lon_deg[j]
        if len(x) > 1:
            k = np.clip(np.searchsorted(x, q), 1, len(x) - 1)
            gap = (x[k] - x[k - 1]) / 1e9
            lat[gap > max_gap_s] = np.nan
            lon[gap > max_gap_s] = np.nan
        return lat, lon


def ground_truth_from_bag(bag: str | Path) -> GroundTruth | None:
    """True track of a bag: ``/kitti/ground_truth/pose`` (+ datum metadata) or the GPS fix."""
    from cvl_ros.geo import GeoDatum

    topics = bags.bag_topics(bag)
    datum = bags.bag_datum(bag)
    store = bags.make_typestore()
    if bags.TOPIC_GT_POSE in topics and datum is not None:
        d = GeoDatum(*datum)
        st, e, n, u = [], [], [], []
        for m in bags.iter_bag(bag, [bags.TOPIC_GT_POSE]):
            msg = store.deserialize_cdr(m.data, m.msgtype)
            st.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
            p = msg.pose.position
            e.append(p.x)
            n.append(p.y)
            u.append(p.z)
        lat, lon, _ = d.to_geodetic(np.array(e), np.array(n), np.array(u))
        return GroundTruth(np.array(st, np.int64), np.atleast_1d(lat), np.atleast_1d(lon),
                           bags.TOPIC_GT_POSE)
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


def attach_ground_truth(rows: list[EstimateRow], gt: GroundTruth | None) -> None:
    """Fill ``gt_lat_deg``, ``gt_lon_deg`` and ``error_m`` (horizontal, fixes only)."""
    from cvl_ros.geo import GeoDatum

    if gt is None or not rows:
        return
    lat, lon = gt.at([r.stamp_ns for r in rows])
    datum = GeoDatum(float(gt.lat_deg[0]), float(gt.lon_deg[0]), 0.0)
    for r, la, lo in zip(rows, lat, lon):
        r.gt_lat_deg, r.gt_lon_deg = float(la), float(lo)
        if r.has_fix and math.isfinite(la):
            e0, n0, _ = datum.to_enu(la, lo, 0.0)
            e1, n1, _ = datum.to_enu(r.lat_deg, r.lon_deg, 0.0)
            r.error_m = float(math.hypot(float(e1) - float(e0), float(n1) - float(n0)))


def gps_error_m(bag: str | Path, gt: GroundTruth | None) -> list[float]:
    """Horizontal error of the bag's GPS fixes against the ground truth (the GPS baseline).

    Only meaningful when the ground truth is not the fix itself (``/kitti/ground_truth/pose``).
    """
    from cvl_ros.geo import GeoDatum

    if gt is None or gt.source != bags.TOPIC_GT_POSE:
        return []
    fixes = _read_fixes(bag)
    if fixes is None:
        return []
    _, st, lat, lon = fixes
    glat, glon = gt.at(st)
    d = GeoDatum(float(gt.lat_deg[0]), float(gt.lon_deg[0]), 0.0)
    out = []
    for a, b, c, e in zip(lat, lon, glat, glon):
        if math.isfinite(c):
            e0, n0, _ = d.to_enu(a, b, 0.0)
            e1, n1, _ = d.to_enu(c, e, 0.0)
            out.append(float(math.hypot(float(e1) - float(e0), float(n1) - float(n0))))
    return out


# --------------------------------------------------------------------------------------------
# Summary and files
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------
def find_mosaic(*hints: str | Path | None) -> Path | None:
    """Find a satellite ``mosaic.png`` (+ ``mosaic.geo.json``) near the given paths.

    Looks in each hint (a file or folder: the DB, the bag's source drive) and up to five folders
    above it.
    """
    for hint in hints:
        if not hint:
            continue
        p = Path(hint)
        for parent in [p, *p.parents][:7]:
            cand = parent / "mosaic.png"
            if cand.is_file() and (parent / "mosaic.geo.json").is_file():
                return cand
    return None


def _ellipse_xy(cov: np.ndarray, n_sigma: float = 2.0, n: int = 40) -> np.ndarray:
    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0.0, None)
    t = np.linspace(0, 2 * np.pi, n)
    circle = np.stack([np.cos(t), np.sin(t)])
    return (vecs @ (np.sqrt(vals)[:, None] * circle)).T * n_sigma


_STATUS_COLORS = {"TRACKING": "tab:green", "LOW_CONFIDENCE": "tab:orange",
                  "INITIALIZING": "tab:blue", "RELOCALIZING": "tab:red", "NO_FIX": "tab:gray"}


def plot_trajectory(rows: list[EstimateRow], path: str | Path, *, gt: GroundTruth | None = None,
                    mosaic_path: str | Path | None = None, title: str = "") -> None:
    """Estimates with 2-sigma covariance ellipses over the true path (and the mosaic if any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cvl_ros.geo import GeoDatum

    mosaic = None
    if mosaic_path is not None:
        from cvl_ros.tiles import GeoMosaic

        mosaic = GeoMosaic.read(mosaic_path)
        datum = mosaic.datum
    elif gt is not None:
        datum = GeoDatum(float(gt.lat_deg[0]), float(gt.lon_deg[0]), 0.0)
    else:
        first = next((r for r in rows if r.has_fix), None)
        datum = GeoDatum(first.lat_deg, first.lon_deg, 0.0) if first else GeoDatum(0.0, 0.0)

    def enu(lat, lon):
        e, n, _ = datum.to_enu(np.asarray(lat, float), np.asarray(lon, float),
                               np.zeros(np.shape(lat)))
        return np.atleast_1d(e), np.atleast_1d(n)

    fig, ax = plt.subplots(figsize=(8, 8), dpi=110)
    pts = []
    if gt is not None:
        ge, gn = enu(gt.lat_deg, gt.lon_deg)
        ax.plot(ge, gn, "-", color="white" if mosaic is not None else "black", lw=2.5,
                label="ground truth", zorder=3)
        ax.plot(ge, gn, "-", color="black", lw=1.0, zorder=3)
        ax.plot(ge[:1], gn[:1], "^", color="white", mec="black", ms=10, zorder=6, label="start")
        pts += list(zip(ge, gn))
    fixes = [r for r in rows if r.has_fix]
    for status in ("TRACKING", "LOW_CONFIDENCE"):
        sel = [r for r in fixes if r.status == status]
        if not sel:
            continue
        e, n = enu([r.lat_deg for r in sel], [r.lon_deg for r in sel])
        ax.scatter(e, n, s=14, color=_STATUS_COLORS[status], label=f"estimate ({status})",
                   zorder=5, edgecolors="black", linewidths=0.3)
        for r, ei, ni in zip(sel, e, n):
            cov = np.array([[r.cov_ee_m2, r.cov_en_m2], [r.cov_en_m2, r.cov_nn_m2]])
            if np.all(np.isfinite(cov)):
                xy = _ellipse_xy(cov)
                ax.plot(ei + xy[:, 0], ni + xy[:, 1], "-", color=_STATUS_COLORS[status],
                        lw=0.7, alpha=0.8 if status == "TRACKING" else 0.35, zorder=4)
        pts += list(zip(e, n))
    if pts:
        arr = np.array(pts)
        lo, hi = arr.min(axis=0) - 40.0, arr.max(axis=0) + 40.0
    else:
        lo, hi = np.array([-50.0, -50.0]), np.array([50.0, 50.0])
    if mosaic is not None:
        e0, e1, n0, n1 = mosaic.extent_enu
        ax.imshow(mosaic.image, extent=(e0, e1, n0, n1), origin="upper", zorder=1)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_xlabel("east (m)")
    ax.set_ylabel("north (m)")
    ax.set_title(title or f"{len(fixes)} fixes of {len(rows)} keyframes (2-sigma ellipses)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_errors(rows: list[EstimateRow], path: str | Path, title: str = "") -> None:
    """Position error and reported 2-sigma over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    if rows:
        t0 = rows[0].stamp_ns
        fixes = [r for r in rows if r.has_fix]
        t = np.array([(r.stamp_ns - t0) / 1e9 for r in fixes])
        err = np.array([r.error_m for r in fixes])
        sig = np.array([2.0 * r.sigma_major_m for r in fixes])
        if len(t):
            ax.fill_between(t, 0, sig, color="tab:blue", alpha=0.2,
                            label="reported 2-sigma (major axis)")
            for status in ("TRACKING", "LOW_CONFIDENCE"):
                m = np.array([r.status == status for r in fixes])
                if m.any():
                    ax.plot(t[m], err[m], "o", ms=3, color=_STATUS_COLORS[status],
                            label=f"error ({status})")
            ax.plot(t, err, "-", color="black", lw=0.5)
        nofix = [(r.stamp_ns - t0) / 1e9 for r in rows if not r.has_fix]
        if nofix:
            ax.plot(nofix, np.zeros(len(nofix)), "x", color="tab:gray", ms=4, label="no fix")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("horizontal error (m)")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "position error over time")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_heatmap(score_map: np.ndarray, path: str | Path, title: str = "", *,
                 row: EstimateRow | None = None, gt: GroundTruth | None = None,
                 mosaic_path: str | Path | None = None, context_m: float = 80.0,
                 t0_ns: int = 0) -> None:
    """One score map (north-up), beside the satellite view of that estimate when available.

    Left (with a mosaic and an estimate): the satellite mosaic around the estimate, the true
    path, the estimate with its 2-sigma ellipse and the centre of the matched tile. Right: the
    score map (as the node's ``~/heatmap`` shows it; the peak is marked).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(score_map, dtype=np.float64)
    if m.ndim == 3 and m.shape[2] in (3, 4):
        img, cmap = m[..., :3].astype(np.uint8), None
    else:
        img, cmap = m.squeeze(), "viridis"
    with_context = mosaic_path is not None and row is not None and row.has_fix
    fig, axes = plt.subplots(1, 2 if with_context else 1, dpi=110,
                             figsize=(9.5, 4.6) if with_context else (4.8, 4.4))
    axes = np.atleast_1d(axes)
    ax = axes[-1]
    im = ax.imshow(img, cmap=cmap, origin="upper", interpolation="nearest")
    if cmap is not None:
        fig.colorbar(im, ax=ax, fraction=0.046)
        r, c = np.unravel_index(np.nanargmax(img), img.shape)
        ax.plot(c, r, "c+", ms=12, mew=2)
    ax.set_title(title or "score map of the best tile (north up)", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if with_context:
        from cvl_ros.tiles import GeoMosaic

        mosaic = GeoMosaic.read(mosaic_path)
        d = mosaic.datum

        def enu(lat, lon):
            e, n, _ = d.to_enu(np.asarray(lat, float), np.asarray(lon, float),
                               np.zeros(np.shape(lat)))
            return np.atleast_1d(e), np.atleast_1d(n)

        ax0 = axes[0]
        e0, e1, n0, n1 = mosaic.extent_enu
        ax0.imshow(mosaic.image, extent=(e0, e1, n0, n1), origin="upper")
        ee, en = enu(row.lat_deg, row.lon_deg)
        if gt is not None:
            ge, gn = enu(gt.lat_deg, gt.lon_deg)
            ax0.plot(ge, gn, "-", color="white", lw=2.0, label="ground truth")
        if math.isfinite(row.gt_lat_deg):
            te, tn = enu(row.gt_lat_deg, row.gt_lon_deg)
            ax0.plot(te, tn, "x", color="white", ms=10, mew=2.5, label="true position")
        cov = np.array([[row.cov_ee_m2, row.cov_en_m2], [row.cov_en_m2, row.cov_nn_m2]])
        col = _STATUS_COLORS.get(row.status, "tab:green")
        ax0.plot(ee, en, "o", color=col, mec="black", ms=7, label=f"estimate ({row.status})")
        if np.all(np.isfinite(cov)):
            xy = _ellipse_xy(cov)
            ax0.plot(ee[0] + xy[:, 0], en[0] + xy[:, 1], "-", color=col, lw=1.5)
        if math.isfinite(row.tile_lat_deg):
            ce, cn = enu(row.tile_lat_deg, row.tile_lon_deg)
            ax0.plot(ce, cn, "s", mfc="none", mec="cyan", ms=9, mew=2, label="matched tile centre")
        h = context_m / 2
        ax0.set_xlim(ee[0] - h, ee[0] + h)
        ax0.set_ylim(en[0] - h, en[0] + h)
        ax0.set_aspect("equal")
        ax0.set_xlabel("east (m)")
        ax0.set_ylabel("north (m)")
        err = f", error {row.error_m:.1f} m" if math.isfinite(row.error_m) else ""
        ax0.set_title(f"estimate at t = {(row.stamp_ns - t0_ns) / 1e9:.1f} s{err}", fontsize=10)
        ax0.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(rows: list[EstimateRow], out_dir: str | Path, *, images: int,
                 gt: GroundTruth | None, wall_s: float | None = None,
                 bag_duration_s: float | None = None, mosaic: str | Path | None = None,
                 heatmap: np.ndarray | None = None, heatmap_row: EstimateRow | None = None,
                 gps_errors_m: list[float] | None = None, extra: dict | None = None) -> dict:
    """Write ``estimates.csv``, ``summary.json`` and the plots; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    attach_ground_truth(rows, gt)
    summary = summarize(rows, images=images, wall_s=wall_s, bag_duration_s=bag_duration_s,
                        gt=gt, gps_errors_m=gps_errors_m)
    if extra:
        summary.update(extra)
    write_csv(rows, out / "estimates.csv")
    plot_trajectory(rows, out / "trajectory.png", gt=gt, mosaic_path=mosaic)
    plot_errors(rows, out / "error.png")
    summary["plots"] = ["trajectory.png", "error.png"]
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
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------------------------
# Bag -> Frames (messages deserialized with rosbags: no ROS runtime needed)
# --------------------------------------------------------------------------------------------
def _stamp_ns(header: Any) -> int:
    from cvl_ros.ros.convert import stamp_to_ns

    return stamp_to_ns(header.stamp)


#: Largest gap (s) between an image stamp and the odometry span it may be held over (the
#: camera stamps of KITTI precede the OXTS stamps by a few ms).
ODOM_EXTRAPOLATION_S = 0.06
#: Largest gap (s) between an image and the IMU heading used for it.
HEADING_TOLERANCE_S = 0.2


@dataclass
class BagTopics:
    """Topics read by the offline runner (defaults: the names cvl-kitti2bag writes)."""

    image: str = bags.TOPIC_IMAGE
    camera_info: str = bags.TOPIC_CAMERA_INFO
    odom: str = bags.TOPIC_ODOM
    imu: str | None = bags.TOPIC_IMU
    fix: str | None = bags.TOPIC_FIX
    tf_static: str = bags.TOPIC_TF_STATIC


@dataclass
class RunResult:
    """What :func:`run_localizer_on_bag` produced."""

    rows: list[EstimateRow]
    images: int
    frames_used: int
    skipped: dict[str, int]
    wall_s: float
    bag_duration_s: float
    gps_priors_used: int = 0


def _T_from_tf_static(statics: dict[str, tuple[str, np.ndarray]], base: str,
                      frame: str) -> np.ndarray | None:
    """T_base_frame from a {child: (parent, T_parent_child)} tree, or None."""
    T = np.eye(4)
    cur = frame
    for _ in range(16):
        if cur == base:
            return T
        if cur not in statics:
            return None
        parent, T_pc = statics[cur]
        T = T_pc @ T
        cur = parent
    return None


def run_localizer_on_bag(localizer: Any, bag: str | Path, *, topics: BagTopics | None = None,
                         base_frame: str = "base_link", heading_source: str = "auto",
                         heading_tolerance_s: float = HEADING_TOLERANCE_S,
                         odom_max_extrapolation_s: float = ODOM_EXTRAPOLATION_S,
                         use_gps_prior: bool = True, gps_prior_sigma_m: float | None = None,
                         T_body_cam: np.ndarray | None = None,
                         progress: bool = True, max_images: int | None = None) -> RunResult:
    """Feed a bag's images (+ odometry, heading, extrinsics, GPS prior) to ``localizer``.

    Images wait until odometry at or after their stamp is read, then odometry is interpolated
    at the image stamp (the node's rule); the IMU's absolute ENU yaw is interpolated likewise.
    """
    from cvl_ros.localizer import Frame, InvalidFrameError

    topics = topics or BagTopics()
    store = bags.make_typestore()
    avail = bags.bag_topics(bag)
    if topics.image not in avail:
        raise ValueError(f"{bag}: no image topic {topics.image!r} (topics: {sorted(avail)})")
    if topics.odom not in avail:
        raise ValueError(f"{bag}: no odometry topic {topics.odom!r}")
    wanted = [t for t in (topics.image, topics.camera_info, topics.odom, topics.imu, topics.fix,
                          topics.tf_static) if t and t in avail]
    n_images = avail[topics.image][1]
    if max_images is not None:
        n_images = min(n_images, max_images)
    from cvl_ros.ros.convert import (
        ImageConversionError,
        camera_info_to_pinhole,
        image_to_rgb,
        odometry_to_matrix,
        transform_to_matrix,
        yaw_from_quat,
    )
    from cvl_ros.ros.sync import PoseBuffer, ScalarBuffer, StampPairer, TimeWentBackwards

    odom = PoseBuffer(max_age_s=30.0)
    yaw_buf = ScalarBuffer()
    infos = StampPairer()
    statics: dict[str, tuple[str, np.ndarray]] = {}
    pending: list[tuple[int, Any]] = []
    rows: list[EstimateRow] = []
    skipped: dict[str, int] = {}
    used = 0
    seen = 0
    priors = 0

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    def process(stamp: int, img_msg: Any) -> None:
        nonlocal used
        info = infos.match(stamp, -1.0)  # same stamp, else the nearest (as the node pairs)
        if info is None:
            skip("no camera_info")
            return
        try:
            T_ob = odom.lookup(stamp, odom_max_extrapolation_s)
        except LookupError:
            skip("no odometry at the image stamp")
            return
        try:
            rgb = image_to_rgb(img_msg)
            cam = camera_info_to_pinhole(info)
        except ImageConversionError as exc:
            skip(f"bad image: {exc}")
            return
        heading = (yaw_buf.lookup(stamp, heading_tolerance_s)
                   if heading_source in ("imu", "auto") else None)
        if heading_source == "imu" and heading is None:
            skip("no IMU heading near the image stamp")
            return
        T_bc = T_body_cam
        if T_bc is None:
            T_bc = _T_from_tf_static(statics, base_frame, img_msg.header.frame_id)
        frame = Frame(stamp_ns=stamp, image_rgb=rgb, camera=cam, T_odom_body=T_ob,
                      heading_enu_rad=heading, T_body_cam=T_bc)
        try:
            est = localizer.add_frame(frame)
        except InvalidFrameError as exc:
            skip(f"invalid frame: {exc}")
            return
        used += 1
        if est is not None:
            rows.append(EstimateRow.from_estimate(est))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_images, desc="localize-bag", unit="img")
    t_start = time.perf_counter()
    first_ns = last_ns = None
    for m in bags.iter_bag(bag, wanted):
        first_ns = m.stamp_ns if first_ns is None else first_ns
        last_ns = m.stamp_ns
        if m.topic == topics.tf_static:
            msg = store.deserialize_cdr(m.data, m.msgtype)
            for t in msg.transforms:
                statics[t.child_frame_id] = (t.header.frame_id,
                                             transform_to_matrix(t.transform))
        elif m.topic == topics.camera_info:
            msg = store.deserialize_cdr(m.data, m.msgtype)
            infos.add(_stamp_ns(msg.header), msg)
        elif m.topic == topics.odom:
            msg = store.deserialize_cdr(m.data, m.msgtype)
            try:
                odom.add(_stamp_ns(msg.header), odometry_to_matrix(msg))
            except TimeWentBackwards:
                skip("odometry went backwards (buffer reset)")
        elif m.topic == topics.imu:
            msg = store.deserialize_cdr(m.data, m.msgtype)
            try:
                yaw_buf.add(_stamp_ns(msg.header), yaw_from_quat(msg.orientation))
            except ValueError:
                skip("invalid IMU orientation")
        elif m.topic == topics.fix:
            # As the node: every fix is offered; the localizer uses it while it has no belief.
            if use_gps_prior and hasattr(localizer, "set_gps_prior"):
                msg = store.deserialize_cdr(m.data, m.msgtype)
                if msg.status.status >= 0:
                    sigma = float(gps_prior_sigma_m or 0.0)
                    if sigma <= 0:
                        c = np.asarray(msg.position_covariance, dtype=np.float64)
                        sigma = (math.sqrt(max(c[0], c[4], 0.0))
                                 if msg.position_covariance_type else 10.0)
                    if localizer.set_gps_prior(msg.latitude, msg.longitude, sigma):
                        priors += 1
        elif m.topic == topics.image:
            if seen >= n_images:
                break
            seen += 1
            msg = store.deserialize_cdr(m.data, m.msgtype)
            pending.append((_stamp_ns(msg.header), msg))
        # images whose stamp the odometry now covers
        newest = odom.latest_stamp_ns
        while pending and newest is not None and pending[0][0] <= newest:
            process(*pending.pop(0))
            if bar is not None:
                bar.update(1)
    for item in pending:
        process(*item)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t_start
    dur = ((last_ns or 0) - (first_ns or 0)) / 1e9
    return RunResult(rows, seen, used, skipped, wall, dur, priors)


# --------------------------------------------------------------------------------------------
# Loading the model and the database
# --------------------------------------------------------------------------------------------
DEFAULT_PARAMS = REPO_ROOT / "config" / "localize.yaml"
DEFAULT_CHECKPOINT = "models/cvlnet_demo"
DEFAULT_DATABASE = "demo_out/db"


def node_params(params_file: str | Path | None = None) -> dict:
    """The node's ``ros__parameters`` from a params file, flattened (``localizer.window_length``).

    The first node entry (``/**``, ``cvl_localizer``...) holding ``ros__parameters`` is used.
    """
    import yaml

    p = Path(params_file) if params_file else DEFAULT_PARAMS
    if not p.is_file():
        if params_file:
            raise FileNotFoundError(f"params file not found: {p}")
        return {}
    data = yaml.safe_load(p.read_text()) or {}
    raw: dict = {}
    for key in ("cvl_localizer", "/cvl_localizer", "/**", *data.keys()):
        node = data.get(key)
        if isinstance(node, dict) and isinstance(node.get("ros__parameters"), dict):
            raw = node["ros__parameters"]
            break
    flat: dict = {}

    def walk(prefix: str, d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                flat[prefix + str(k)] = v

    walk("", raw)
    return flat


def localizer_config_from_params(params: dict) -> Any:
    """``LocalizerConfig`` built from node parameters the way the node builds it."""
    from dataclasses import fields

    from cvl_ros.localizer import LocalizerConfig

    kw: dict = {}
    for f in fields(LocalizerConfig):
        key = "localizer." + f.name
        if key in params:
            v = params[key]
            kw[f.name] = type(f.default)(v) if f.default is not None else v
    h = float(params.get("camera_height_m", 0.0) or 0.0)
    kw["camera_height_m"] = h if h > 0 else None
    if "odom_yaw_offset_rad" in {f.name for f in fields(LocalizerConfig)}:
        kw["odom_yaw_offset_rad"] = float(params.get("odom_yaw_offset_rad", 0.0))
    if not bool(params.get("use_database_datum", True)):
        kw["map_datum_lat_deg"] = float(params["map_datum_latitude_deg"])
        kw["map_datum_lon_deg"] = float(params["map_datum_longitude_deg"])
        kw["map_datum_alt_m"] = float(params.get("map_datum_altitude_m", 0.0))
    return LocalizerConfig(**kw)


def _resolve(path: str | Path | None) -> Path | None:
    """A path as given if it exists, else relative to the checkout (as the node resolves it)."""
    if not path:
        return None
    p = Path(str(path)).expanduser()
    if p.exists() or p.is_absolute():
        return p
    return REPO_ROOT / p


def _find_checkpoint(path: Path) -> Path:
    if path.is_dir():
        for name in ("model.safetensors", "checkpoint.safetensors", "best.safetensors"):
            if (path / name).is_file():
                return path / name
        cands = sorted(path.glob("*.safetensors"))
        if not cands:
            raise FileNotFoundError(f"no *.safetensors checkpoint in {path}")
        return cands[0]
    return path


def load_localizer(checkpoint: str | Path | None, db: str | Path | None,
                   params_file: str | Path | None = None, device: str | None = None) -> tuple:
    """Return (Localizer, params, checkpoint path, db path), configured like the node."""
    from cvl_ros.database import TileDatabase
    from cvl_ros.localizer import Localizer
    from cvl_ros.model.cvlnet import load_checkpoint

    params = node_params(params_file)
    ckpt = _resolve(checkpoint or params.get("checkpoint_path") or DEFAULT_CHECKPOINT)
    dbp = _resolve(db or params.get("database_path") or DEFAULT_DATABASE)
    if ckpt is None or not ckpt.exists():
        raise FileNotFoundError(f"model checkpoint not found: {ckpt} (pass --checkpoint)")
    ckpt = _find_checkpoint(ckpt)
    if dbp is None or not dbp.exists():
        raise FileNotFoundError(f"tile database not found: {dbp} (pass --db; build one with "
                                "cvl-build-db, or run `make demo`)")
    model, _ = load_checkpoint(ckpt)
    database = TileDatabase.open(dbp, expected_model_hash=model.model_hash())
    cfg = localizer_config_from_params(params)
    dev = device or str(params.get("device", "cpu"))
    return Localizer(model, database, cfg, device=dev), params, ckpt, dbp


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``cvl-localize-bag``."""
    p = argparse.ArgumentParser(
        prog="cvl-localize-bag",
        description="Run the node's Localizer over a bag offline (no DDS, as fast as possible) "
        "and write estimates.csv, summary.json and plots.",
    )
    p.add_argument("bag", help="bag folder (e.g. written by cvl-kitti2bag)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint", default=None,
                   help="model checkpoint (.safetensors or its folder; default: the params "
                   "file's checkpoint)")
    p.add_argument("--db", default=None, help="tile database (default: the params file's)")
    p.add_argument("--params-file", default=None,
                   help=f"node params file for the localizer settings (default: {DEFAULT_PARAMS})")
    p.add_argument("--mosaic", default=None,
                   help="satellite mosaic.png (+ .geo.json) for the trajectory plot (default: "
                   "searched near the DB and the bag's source drive)")
    p.add_argument("--image-topic", default=bags.TOPIC_IMAGE)
    p.add_argument("--camera-info-topic", default=bags.TOPIC_CAMERA_INFO)
    p.add_argument("--odom-topic", default=bags.TOPIC_ODOM)
    p.add_argument("--imu-topic", default=bags.TOPIC_IMU, help="absolute heading ('' = none)")
    p.add_argument("--fix-topic", default=bags.TOPIC_FIX, help="GPS prior ('' = none)")
    p.add_argument("--no-gps-prior", action="store_true", help="initialise without the GPS fix")
    p.add_argument("--heading-source", choices=("auto", "imu", "odom"), default=None,
                   help="absolute heading as the node's heading_source (default: the params "
                   "file's, auto = the IMU when present)")
    p.add_argument("--max-images", type=int, default=None, help="stop after N images")
    p.add_argument("--device", default=None,
                   help="auto|cpu|cuda (default: the params file's device)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``cvl-localize-bag``; returns the exit status."""
    args = build_parser().parse_args(argv)
    bag = Path(args.bag)
    if not (bag / "metadata.yaml").is_file():
        print(f"cvl-localize-bag: error: {bag} is not a ROS 2 bag (no metadata.yaml)",
              file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        localizer, params, ckpt, dbp = load_localizer(args.checkpoint, args.db,
                                                      args.params_file, args.device)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"cvl-localize-bag: error: {exc}", file=sys.stderr)
        return 2
    topics = BagTopics(image=args.image_topic, camera_info=args.camera_info_topic,
                       odom=args.odom_topic, imu=args.imu_topic or None,
                       fix=args.fix_topic or None)
    use_gps = not args.no_gps_prior and bool(params.get("use_gps_prior", True))
    heading = args.heading_source or str(params.get("heading_source", "auto"))
    try:
        result = run_localizer_on_bag(
            localizer, bag, topics=topics, base_frame=str(params.get("base_frame", "base_link")),
            heading_source=heading,
            heading_tolerance_s=float(params.get("imu_tolerance_s", HEADING_TOLERANCE_S)),
            odom_max_extrapolation_s=float(params.get("odom_max_extrapolation_s",
                                                      ODOM_EXTRAPOLATION_S)),
            use_gps_prior=use_gps, gps_prior_sigma_m=float(params.get("gps_prior_sigma_m", 0.0)),
            progress=not args.quiet, max_images=args.max_images)
    except ValueError as exc:
        print(f"cvl-localize-bag: error: {exc}", file=sys.stderr)
        return 2
    gt = ground_truth_from_bag(bag)
    source = bags.bag_custom_data(bag).get(bags.META_PREFIX + "source_drive")
    mosaic = Path(args.mosaic) if args.mosaic else find_mosaic(dbp, source)
    summary = write_report(
        result.rows, args.out, images=result.images, gt=gt, wall_s=result.wall_s,
        bag_duration_s=result.bag_duration_s, mosaic=mosaic, gps_errors_m=gps_error_m(bag, gt),
        extra={"bag": str(bag), "checkpoint": str(ckpt), "database": str(dbp),
               "frames_used": result.frames_used, "skipped": result.skipped,
               "gps_priors_used": result.gps_priors_used, "heading_source": heading,
               "device": localizer.device,
               # per-frame model states computed: one per keyframe when the cache holds
               "frame_states_computed": localizer.state_refreshes},
    )
    keys = ("images", "keyframes", "fixes", "median_error_m", "p90_error_m", "gps_median_error_m",
            "mean_latency_ms", "wall_s")
    print(" ".join(f"{k}={summary.get(k)!s}" if not isinstance(summary.get(k), float)
                   else f"{k}={summary[k]:.2f}" for k in keys))
    print(f"wrote {args.out}/estimates.csv, summary.json, {', '.join(summary['plots'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def expected_keyframes(bag: str | Path, *, keyframe_distance_m: float = 1.0,
                       keyframe_interval_s: float = 0.0, topics: BagTopics | None = None,
                       ) -> list[int]:
    """Image stamps that the localizer's keyframe rule selects (odometry at image stamps)."""
    topics = topics or BagTopics()
    store = bags.make_typestore()
    from cvl_ros.ros.convert import odometry_to_matrix
    from cvl_ros.ros.sync import PoseBuffer

    odom = PoseBuffer(max_age_s=1e9)
    stamps: list[int] = []
    for m in bags.iter_bag(bag, [topics.image, topics.odom]):
        msg = store.deserialize_cdr(m.data, m.msgtype) if m.topic == topics.odom else None
        if msg is not None:
            odom.add(_stamp_ns(msg.header), odometry_to_matrix(msg))
        else:
            stamps.append(m.stamp_ns)
    out: list[int] = []
    last_T, last_t = None, None
    for s in stamps:
        try:
            T = odom.lookup(s, ODOM_EXTRAPOLATION_S)
        except LookupError:
            continue
        if last_T is None or np.linalg.norm(T[:2, 3] - last_T[:2, 3]) >= keyframe_distance_m \
                or (keyframe_interval_s > 0 and (s - last_t) * 1e-9 >= keyframe_interval_s):
            out.append(s)
            last_T, last_t = T, s
    return out
