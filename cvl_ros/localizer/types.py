"""The localizer's data types: its configuration, one input frame, one estimate.

``LocalizerConfig`` (every tuning value with its unit and its range check), ``Frame`` (one
synchronised input), ``Estimate`` and ``Candidate`` (one update's result), and
``compose_map_odom``. Kept apart from the ``Localizer`` so the front end, the mode machine and
the parameter module use them without the localizer's machinery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cvl_ros.localizer.modes import Status

__all__ = ["Candidate", "Estimate", "Frame", "InvalidFrameError", "LocalizerConfig",
           "compose_map_odom"]


class InvalidFrameError(ValueError):
    """A frame the localizer refuses (NaN odometry, wrong image shape/dtype, size mismatch...)."""


@dataclass
class LocalizerConfig:
    """Tuning of the localizer. Units are in the names; defaults suit KITTI-like data at 10 Hz."""

    window_length: int = 4
    """N, keyframes fused per update (the paper's sequence length)."""
    keyframe_distance_m: float = 1.0
    """A frame becomes a keyframe after this much travel (odometry) since the last one."""
    keyframe_interval_s: float = 0.0
    """...or after this much time (0 disables the time rule: a parked vehicle adds no frames)."""
    camera_height_m: float | None = None
    """Camera height above the ground plane; None = the model's ``camera_height_m``."""
    tracking_search_radius_m: float = 40.0
    """Tiles whose centre lies within this radius of the predicted position are searched."""
    search_radius_sigma_factor: float = 3.0
    """The tracking radius grows to this many posterior sigmas when the belief is wider."""
    global_max_tiles: int = 4096
    """Relocalisation matches every tile up to this many; larger databases are pre-selected."""
    global_topk: int = 512
    """Tiles kept by ``TileDatabase.global_topk`` when the database exceeds global_max_tiles."""
    tile_batch: int = 128
    """Tiles matched per model call (memory bound)."""
    match_upsample: int = 1
    """Displacements are scored on a grid this many times finer than the model's cells
    (``match_descriptors(upsample=...)``); 1 = the model's own cells (the paper's)."""
    filter_cell_m: float = 1.0
    """Resolution of the position grid while tracking."""
    tracking_grid_extent_m: float = 200.0
    """Side of the square position grid while tracking (re-centred on the peak)."""
    global_grid_max_cells: int = 400
    """Cells per side of the grid covering the whole database while relocalising."""
    process_noise_m: float = 0.3
    """Position noise added per update (1 sigma)."""
    odom_noise_fraction: float = 0.05
    """Odometry noise, sigma as a fraction of the distance travelled between updates."""
    odom_scale_max_error: float = 0.1
    """The odometry's translation scale is estimated from the tracked path
    (``cvl_ros.localizer.odom_scale``) within 1 +- this; 0 = not estimated (scale 1)."""
    odom_scale_baseline_m: float = 150.0
    """Odometry travel of TRACKING fixes the scale is estimated over [m]."""
    odom_scale_memory_m: float = 0.0
    """The scale in use is an exponential average of the fits over this much travel [m];
    0 = the newest fit."""
    score_temperature: float = 0.1
    """Likelihood = exp((score - best score) / T); smaller trusts the matcher more."""
    outlier_weight: float = 0.05
    """Constant added to the likelihood so one wrong match cannot erase the true position."""
    confidence_radius_m: float = 5.0
    """Confidence = posterior mass within this radius of the peak."""
    tracking_min_confidence: float = 0.7
    """Confidence needed for TRACKING (and to leave relocalisation)."""
    max_second_mode_ratio: float = 0.2
    """TRACKING needs the strongest other mode to hold at most this fraction of the peak's mass."""
    innovation_gate: float = 3.0
    """The score at the belief's peak may trail the best score of the update by at most this many
    score_temperature units; beyond, the measurement contradicts the belief (no TRACKING, the
    covariance grows by the squared distance to the best match, and repeated it means lost)."""
    tracking_max_sigma_m: float = 5.0
    """Largest local 1-sigma (major axis) accepted for TRACKING."""
    low_confidence_min: float = 0.15
    """Below this confidence there is no fix (NO_FIX / RELOCALIZING)."""
    max_fix_sigma_m: float = 30.0
    """Largest 1-sigma of the posterior about its peak for which a LOW_CONFIDENCE fix is given."""
    min_position_sigma_m: float = 0.5
    """Floor of the reported position sigma."""
    min_updates_to_track: int = 2
    """Updates needed after (re)initialisation before TRACKING is reported."""
    global_min_travel_m: float = 100.0
    """Travel (odometry) a global search must accumulate before it may converge: along one straight
    road several places match equally well, and consecutive windows share most of their frames,
    so a short stretch can concentrate the belief on a look-alike place (measured on the demo
    drive without GPS prior: a 40 m wrong lock after 7 m; on validation towns 301/302 with 25 m:
    wrong locks 73-172 m off, none with 100 m). 0 converges as soon as the belief is peaked."""
    lost_after_updates: int = 8
    """Consecutive updates without a good fix after which a global relocalisation starts."""
    odom_yaw_offset_rad: float = 0.0
    """ENU yaw of the odometry frame's x axis, used while frames carry no absolute heading (an
    initial pose with a yaw replaces it until the next reset)."""
    estimate_heading: bool = False
    """Estimate the heading (``heading_source: estimate``): the odometry->ENU yaw offset is part
    of the filter's belief (``cvl_ros.localizer.heading``), learnt from how the odometry track
    agrees with the matches, with a frame's absolute heading (IMU) as a time-correlated
    measurement and a GPS course or an initial pose yaw to start from."""
    yaw_bins: int = 15
    """Yaw bins of the belief when the heading is estimated (odd)."""
    yaw_bin_min_deg: float = 0.25
    """Finest spacing of the yaw bins [deg]."""
    yaw_bin_max_deg: float = 2.0
    """Widest spacing of the yaw bins [deg] (bins x this bounds the heading uncertainty held)."""
    yaw_drift_deg_per_100m: float = 3.0
    """Odometry yaw drift: the heading belief's random walk, 1-sigma per 100 m travelled."""
    yaw_drift_rate_max_deg_per_100m: float = 5.0
    """Without an absolute heading (IMU), the odometry's steady heading drift is learnt from
    the heading belief's corrections and fed forward
    (``cvl_ros.localizer.odom_scale.YawDriftEstimator``), kept within +- this; 0 = not
    estimated."""
    yaw_drift_rate_sigma_deg_per_100m: float = 1.0
    """Prior 1-sigma of the odometry's heading drift (per 100 m) [deg]."""
    initial_yaw_sigma_deg: float = 180.0
    """1-sigma of the initial heading belief about ``odom_yaw_offset_rad`` when the heading is
    estimated; more than the bins hold (e.g. 180) = unknown: wait for an IMU, a GPS course or
    an initial pose with a yaw."""
    imu_yaw_sigma_deg: float = 2.0
    """1-sigma of a frame's absolute heading (IMU/INS) when the heading is estimated [deg]."""
    imu_yaw_correlation_s: float = 20.0
    """Time over which the absolute heading's error is correlated [s]: its readings count as
    one independent measurement per this time (0 = every reading independent)."""
    imu_yaw_floor: float = 0.05
    """Floor added to an absolute heading's likelihood (a wrong IMU cannot erase a bin)."""
    gps_course_baseline_m: float = 60.0
    """Odometry travel over which GPS fixes give the initial heading (estimate, no IMU) [m]."""
    tracking_max_yaw_sigma_deg: float = 5.0
    """Largest heading 1-sigma accepted for TRACKING when the heading is estimated [deg]."""
    heading_sigma_rad: float = 0.05
    """1-sigma of the absolute heading (IMU/INS), reported as the yaw variance."""
    frame_state_rotation_tolerance_rad: float = 0.002
    """Models whose cached per-frame state depends on the camera's ENU rotation (per-frame
    Q/K/V canvases, ``pcsf_frame_canvas``) recompute a keyframe's state when the window's
    heading has turned it by more than this since it was cached (0.002 rad moves a point 100 m
    away by 0.2 m, 3 % of a 6.25 m cell)."""
    reject_uninformative_images: bool = True
    """Refuse blank, saturated, noise and striped images (a covered or broken camera) instead
    of matching them (``cvl_ros.localizer.image_check``); False matches every image."""
    gps_prior_min_sigma_m: float = 5.0
    """Smallest sigma used for a GPS prior (GPS is coarse; the matcher refines)."""
    max_time_gap_s: float = 0.0
    """A forward jump of the stamps larger than this resets (0 disables; backwards always does)."""
    num_candidates: int = 5
    """Candidates (best tiles) reported per estimate."""
    map_datum_lat_deg: float | None = None
    """WGS84 origin of the map frame; None = the database's datum (all three must be set)."""
    map_datum_lon_deg: float | None = None
    """See map_datum_lat_deg."""
    map_datum_alt_m: float | None = None
    """See map_datum_lat_deg (None with lat/lon set = 0)."""

    def __post_init__(self) -> None:
        """Reject invalid values with the field's name (the node reports it and stays up)."""
        errors = []
        for name, value in vars(self).items():
            if value is None:
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                errors.append(f"{name} = {value!r} is not a finite number")
            elif name in _POSITIVE_FIELDS and value <= 0:
                errors.append(f"{name} = {value!r} must be > 0")
            elif name in _FRACTION_FIELDS and not 0.0 <= value <= 1.0:
                errors.append(f"{name} = {value!r} must lie in [0, 1]")
            elif name not in _SIGNED_FIELDS and value < 0:
                errors.append(f"{name} = {value!r} must be >= 0")
        if isinstance(self.match_upsample, (int, float)) and self.match_upsample > 4:
            errors.append(f"match_upsample = {self.match_upsample!r} must be at most 4")
        if isinstance(self.odom_scale_max_error, (int, float)) and self.odom_scale_max_error >= 1:
            errors.append(f"odom_scale_max_error = {self.odom_scale_max_error!r} must be < 1")
        if isinstance(self.yaw_bins, int) and self.yaw_bins % 2 == 0:
            errors.append(f"yaw_bins = {self.yaw_bins!r} must be odd")
        if (isinstance(self.yaw_bin_min_deg, (int, float))
                and isinstance(self.yaw_bin_max_deg, (int, float))
                and self.yaw_bin_min_deg > self.yaw_bin_max_deg):
            errors.append(f"yaw_bin_min_deg = {self.yaw_bin_min_deg!r} must not exceed "
                          f"yaw_bin_max_deg = {self.yaw_bin_max_deg!r}")
        if errors:
            raise ValueError("invalid localizer parameters: " + "; ".join(errors))


_POSITIVE_FIELDS = frozenset({
    "window_length", "camera_height_m", "tracking_search_radius_m", "search_radius_sigma_factor",
    "global_max_tiles", "global_topk", "tile_batch", "match_upsample", "filter_cell_m",
    "tracking_grid_extent_m", "odom_scale_baseline_m", "yaw_drift_rate_sigma_deg_per_100m",
    "global_grid_max_cells", "score_temperature", "confidence_radius_m", "tracking_max_sigma_m",
    "max_fix_sigma_m", "min_updates_to_track", "lost_after_updates", "yaw_bins",
    "yaw_bin_min_deg", "yaw_bin_max_deg", "initial_yaw_sigma_deg", "imu_yaw_sigma_deg",
    "tracking_max_yaw_sigma_deg"})
_FRACTION_FIELDS = frozenset({"tracking_min_confidence", "max_second_mode_ratio",
                              "low_confidence_min"})
_SIGNED_FIELDS = frozenset({"odom_yaw_offset_rad", "map_datum_lat_deg", "map_datum_lon_deg",
                            "map_datum_alt_m"})


@dataclass
class Frame:
    """One synchronised input: image, intrinsics, odometry and (optionally) absolute heading."""

    stamp_ns: int
    image_rgb: np.ndarray  # (H, W, 3) uint8 RGB
    camera: object  # PinholeCamera of the image as given (width/height must match the image)
    T_odom_body: np.ndarray  # (4, 4)
    heading_enu_rad: float | None = None  # absolute yaw of base_link (0 = east, CCW)
    T_body_cam: np.ndarray | None = None  # (4, 4) optical frame in base_link


@dataclass
class Candidate:
    """One of the best-matching tiles and the camera position it implies."""

    tile_id: str
    lat_deg: float
    lon_deg: float
    score: float
    east_m: float
    north_m: float


@dataclass
class Estimate:
    """Result of one update (a keyframe). Position fields are NaN when the filter is empty."""

    stamp_ns: int
    status: Status
    lat_deg: float
    lon_deg: float
    alt_m: float  # NaN: altitude is not observed (the map plane is at datum_alt_m)
    east_m: float
    north_m: float
    yaw_rad: float
    covariance_xy: np.ndarray  # (2, 2) m^2, east/north
    yaw_var_rad2: float
    confidence: float
    score: float
    tile_id: str
    displacement_m: np.ndarray  # (2,) camera east/north from the best tile's centre
    window_len: int
    tiles_searched: int
    latency_s: float
    candidates: list[Candidate] = field(default_factory=list)
    score_map: np.ndarray | None = None  # best tile's score map, north-up
    T_map_body: np.ndarray | None = None  # (4, 4)
    T_odom_body: np.ndarray | None = None  # (4, 4) odometry at the same stamp
    datum_lat_deg: float = float("nan")
    datum_lon_deg: float = float("nan")
    datum_alt_m: float = float("nan")
    global_search: bool = False
    reset_reason: str = ""
    posterior: np.ndarray | None = None  # the filter grid (north-up): probability per cell
    posterior_center_en: np.ndarray | None = None  # (2,) map east/north of the grid's centre
    posterior_cell_m: float = float("nan")  # side of one posterior cell [m]

    @property
    def has_fix(self) -> bool:
        """Whether the estimate is a usable fix (TRACKING or LOW_CONFIDENCE)."""
        return self.status in (Status.TRACKING, Status.LOW_CONFIDENCE)

    @property
    def T_map_odom(self) -> np.ndarray | None:
        """map->odom at this stamp (REP-105), or None without a pose."""
        if self.T_map_body is None or self.T_odom_body is None:
            return None
        return compose_map_odom(self.T_map_body, self.T_odom_body)


def compose_map_odom(T_map_body: np.ndarray, T_odom_body: np.ndarray) -> np.ndarray:
    """``T_map_odom = T_map_body @ inv(T_odom_body)``; both poses must share one stamp."""
    T = np.asarray(T_odom_body, dtype=np.float64)
    inv = np.eye(4)
    inv[:3, :3] = T[:3, :3].T
    inv[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return np.asarray(T_map_body, dtype=np.float64) @ inv
