"""Plots of a run: trajectory over the satellite mosaic, error over time, one score map, and
the field benchmark's error and yaw error over distance travelled."""  # noqa: D205, D209

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cvl_ros.report import EstimateRow, GroundTruth


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


def plot_error_vs_distance(rows: list[EstimateRow], path: str | Path, *,
                           gps: tuple[np.ndarray, np.ndarray] | None = None,
                           title: str = "") -> None:
    """Error over distance travelled: the localizer's fixes, dead reckoning, the GPS fix.

    Reads ``distance_m``, ``error_m`` and ``odom_error_m`` of rows filled by
    :func:`cvl_ros.report.attach_ground_truth` / ``attach_dead_reckoning``; ``gps`` is
    ``(distance_m, error_m)`` of the bag's fixes. The reported 2-sigma (major axis) of the
    fixes is shaded.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=100)
    dist = np.array([r.distance_m for r in rows], dtype=float)
    odo = np.array([r.odom_error_m for r in rows], dtype=float)
    if gps is not None:
        gd, ge = (np.asarray(v, dtype=float) for v in gps)
        ok = np.isfinite(gd) & np.isfinite(ge)
        if ok.any():
            ax.plot(gd[ok], ge[ok], "-", color="tab:purple", lw=0.9, alpha=0.8, label="GPS fix")
    ok = np.isfinite(dist) & np.isfinite(odo)
    if ok.any():
        ax.plot(dist[ok], odo[ok], "-", color="tab:brown", lw=1.6,
                label="dead reckoning (from the true first pose)")
    fixes = [r for r in rows if r.has_fix and math.isfinite(r.distance_m)
             and math.isfinite(r.error_m)]
    if fixes:
        fd = np.array([r.distance_m for r in fixes])
        sig = np.array([2.0 * r.sigma_major_m for r in fixes])
        order = np.argsort(fd)
        ax.fill_between(fd[order], 0, np.nan_to_num(sig[order]), color="tab:blue", alpha=0.15,
                        label="reported 2-sigma (major axis)")
        for status in ("TRACKING", "LOW_CONFIDENCE"):
            sel = [r for r in fixes if r.status == status]
            if sel:
                ax.plot([r.distance_m for r in sel], [r.error_m for r in sel], "o", ms=2.5,
                        color=_STATUS_COLORS[status], label=f"localizer ({status})")
    # a log axis when the localizer's errors dwarf the baselines (metres against hundreds)
    top = max([r.error_m for r in fixes] + [1.0])
    log = top > 50.0
    floor = 0.1 if log else 0.0
    nofix = [r.distance_m for r in rows if not r.has_fix and math.isfinite(r.distance_m)]
    if nofix:
        ax.plot(nofix, np.full(len(nofix), 1.5 * floor), "|", color="tab:gray", ms=6,
                label="no fix")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("distance travelled (m)")
    ax.set_ylabel("horizontal error (m)" + (", log scale" if log else ""))
    ax.set_ylim(bottom=floor)
    ax.set_title(title or "error over distance travelled")
    ax.grid(alpha=0.3, which="both" if log else "major")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_yaw_error(rows: list[EstimateRow], path: str | Path, title: str = "") -> None:
    """Reported minus true yaw over distance travelled, with the reported 1.96-sigma band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if math.isfinite(r.distance_m) and math.isfinite(r.yaw_error_deg)]
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    if sel:
        d = np.array([r.distance_m for r in sel])
        err = np.array([r.yaw_error_deg for r in sel])
        band = np.degrees(1.96 * np.sqrt(np.clip([r.yaw_var_rad2 for r in sel], 0, None)))
        band = np.minimum(band, 180.0)
        if np.isfinite(band).any():
            ax.fill_between(d, -band, band, color="tab:blue", alpha=0.15,
                            label="reported 1.96-sigma")
        ax.plot(d, err, "-", color="black", lw=0.8, label="yaw error")
        lim = max(5.0, float(np.nanpercentile(np.abs(err), 99)) * 1.3,
                  float(np.nanmedian(band)) * 1.15 if np.isfinite(band).any() else 0.0)
        ax.set_ylim(-min(lim, 180.0), min(lim, 180.0))
    ax.axhline(0.0, color="gray", lw=0.5)
    ax.set_xlabel("distance travelled (m)")
    ax.set_ylabel("yaw error (deg)")
    ax.set_title(title or "reported minus true yaw")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)
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


