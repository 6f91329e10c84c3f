"""Heading as part of the localizer's belief (``heading_source: estimate``): the pure parts.

The estimated quantity is the yaw offset of the odometry frame, ``theta = ENU yaw - odometry
yaw``: it changes only as the odometry's heading drifts, and the position filter
(:class:`cvl_ros.localizer.filter.GridFilter` with a yaw axis) carries it as K bins beside the
position grid. Evidence about it, each counted once:

- **track consistency** (every image update): each yaw bin predicts the odometry track rotated
  by its own offset; the matches multiply every bin's position belief alike, so the bins whose
  track agrees with the map gain mass. 1 deg of heading error moves a track 1.7 m sideways
  over 100 m, which the matcher sees.
- **an absolute heading** (IMU / INS yaw, when present): a Gaussian likelihood over the bins
  (:func:`absolute_yaw_likelihood`) whose variance is inflated for the IMU's time-correlated
  error (one independent measurement per ``correlation_s``), plus a floor, so a wrong or biased
  IMU cannot overrule the track for long; readings beyond 3 sigma of the belief are counted.
- **a GPS course** (to initialise without IMU or initial pose): the rotation that best aligns
  the odometry track with the GPS fixes over ``baseline_m`` of travel
  (:func:`gps_course_offset`).
- **an initial pose yaw** (RViz ``initialpose``): a Gaussian prior of
  :data:`INITIAL_POSE_YAW_SIGMA_RAD`.

Why a histogram over yaw and not a Gaussian beside the position grid: the track-consistency
evidence is a correlation between heading and position (a wrong heading shows as a sideways
offset of the predicted track), which a factorised belief loses; K bins of the position grid keep
it exactly, at K times the grid's cost (15 bins of a 200 x 200 grid: about 10 ms per keyframe on
one CPU thread).
"""

from __future__ import annotations

import math

import numpy as np

#: 1-sigma of the heading belief set from an initial pose's yaw when the heading is estimated.
INITIAL_POSE_YAW_SIGMA_RAD = math.radians(5.0)


def wrap(a):
    """Angle(s) wrapped to [-pi, pi)."""
    return (np.asarray(a, dtype=np.float64) + np.pi) % (2.0 * np.pi) - np.pi


def yaw_bin_step(sigma_rad: float, bins: int, min_step_rad: float, max_step_rad: float) -> float:
    """Bin spacing whose range (bins - 1) * step spans +-3 sigma, within the bounds."""
    half = max((int(bins) - 1) / 2.0, 1.0)
    return float(np.clip(3.0 * float(sigma_rad) / half, min_step_rad, max_step_rad))


def max_yaw_sigma(bins: int, max_step_rad: float) -> float:
    """Largest heading 1-sigma the bins can hold (+-3 sigma inside the widest range)."""
    return (int(bins) - 1) / 2.0 * float(max_step_rad) / 3.0


def absolute_yaw_likelihood(offsets_rad: np.ndarray, measured_rad: float, sigma_rad: float,
                            floor: float) -> np.ndarray:
    """Likelihood of every bin's yaw offset given an absolute heading (as an offset).

    ``floor + exp(-0.5 * (wrap(offset - measured) / sigma)^2)``: the floor bounds how much one
    reading can take away from any bin (an IMU pointing the wrong way is not the truth).
    """
    d = wrap(np.asarray(offsets_rad, dtype=np.float64) - float(measured_rad))
    return float(floor) + np.exp(-0.5 * (d / max(float(sigma_rad), 1e-9)) ** 2)


def inflated_imu_sigma(sigma_rad: float, dt_s: float | None, correlation_s: float) -> float:
    """1-sigma to apply to one IMU heading ``dt_s`` after the previous one applied.

    An error correlated over ``correlation_s`` carries one independent measurement per
    ``correlation_s``; applying every reading with variance ``sigma^2 * correlation_s / dt``
    keeps that information rate (and never below ``sigma``). ``dt_s`` None: the first reading.
    """
    if dt_s is None or correlation_s <= 0.0:
        return float(sigma_rad)
    return float(sigma_rad) * math.sqrt(max(1.0, float(correlation_s) / max(float(dt_s), 1e-3)))


def gps_course_offset(map_en: np.ndarray, odom_xy: np.ndarray, sigma_m: np.ndarray,
                      baseline_m: float) -> tuple[float, float] | None:
    """Yaw offset (ENU yaw - odometry yaw) that rotates the odometry track onto GPS fixes.

    ``map_en`` (N,2) GPS positions in the map frame, ``odom_xy`` (N,2) odometry positions at the
    same stamps, ``sigma_m`` (N,) the fixes' 1-sigma. None until the odometry spans
    ``baseline_m`` between the first and the newest fix. Otherwise the least-squares rotation
    about the centroids (2-D Procrustes) and a conservative 1-sigma: the two end fixes' errors
    across the baseline, ``sqrt(s_first^2 + s_last^2) / baseline`` (GPS errors are correlated
    in time, so the N fixes are not N independent measurements).
    """
    p = np.asarray(map_en, dtype=np.float64).reshape(-1, 2)
    o = np.asarray(odom_xy, dtype=np.float64).reshape(-1, 2)
    s = np.asarray(sigma_m, dtype=np.float64).reshape(-1)
    if len(p) < 2 or len(o) != len(p) or len(s) != len(p):
        return None
    base = float(np.hypot(*(o[-1] - o[0])))
    if not base >= baseline_m or base <= 0.0:
        return None
    pc, oc = p - p.mean(axis=0), o - o.mean(axis=0)
    dot = float((oc * pc).sum())
    cross = float((oc[:, 0] * pc[:, 1] - oc[:, 1] * pc[:, 0]).sum())
    if dot == 0.0 and cross == 0.0:
        return None
    offset = math.atan2(cross, dot)
    sigma = math.sqrt(float(s[0]) ** 2 + float(s[-1]) ** 2) / base
    return offset, sigma
