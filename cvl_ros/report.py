"""Run reports: one row per estimate, ground truth, ``summary.json``, ``estimates.csv``.

Shared by ``cvl-localize-bag`` (rows from the core ``Estimate``) and the demo (rows from the
node's recorded ``GeoPoseEstimate`` messages); :func:`write_report` also draws the plots of
:mod:`cvl_ros.plots`.
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


def write_report(rows: list[EstimateRow], out_dir: str | Path, *, images: int,
                 gt: GroundTruth | None, wall_s: float | None = None,
                 bag_duration_s: float | None = None, mosaic: str | Path | None = None,
                 heatmap: np.ndarray | None = None, heatmap_row: EstimateRow | None = None,
                 gps_errors_m: list[float] | None = None, extra: dict | None = None) -> dict:
    """Write ``estimates.csv``, ``summary.json`` and the plots; return the summary."""
    from cvl_ros.plots import plot_errors, plot_heatmap, plot_trajectory

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

