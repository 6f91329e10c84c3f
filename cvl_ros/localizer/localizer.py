"""The ROS-free localizer: sliding window + CVLNet matching + grid Bayes filter.

``Localizer.add_frame(Frame)`` is the whole interface used by the node, the offline bag runner
and the benchmark: it validates the frame, picks keyframes, encodes each keyframe once, fuses the
window into an overhead descriptor, matches it against the tiles near the predicted position
(tracking) or against the whole database (relocalisation), and updates a histogram filter over
the body position. The map frame is a local ENU frame about the map datum (by default the
database's datum); yaw is absolute (0 = east, CCW), taken from the frame's heading.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time

import cv2
import numpy as np

from cvl_ros.localizer.filter import GridFilter, PosteriorStats, TileScores
from cvl_ros.localizer.heading import (
    INITIAL_POSE_YAW_SIGMA_RAD,
    absolute_yaw_likelihood,
    gps_course_offset,
    inflated_imu_sigma,
    max_yaw_sigma,
    wrap,
    yaw_bin_step,
)
from cvl_ros.localizer.image_check import image_problem
from cvl_ros.localizer.modes import (
    Evidence,
    GridAction,
    ModeState,
    Status,
    decide,
    reported_covariance,
    sigma_m,
)
from cvl_ros.localizer.odom_scale import OdometryScaleEstimator, YawDriftEstimator
from cvl_ros.localizer.types import (
    Candidate,
    Estimate,
    Frame,
    InvalidFrameError,
    LocalizerConfig,
    compose_map_odom,
)
from cvl_ros.localizer.window import Keyframe, SlidingWindow, rot_z, yaw_of

__all__ = [
    "Candidate",
    "Estimate",
    "Frame",
    "InvalidFrameError",
    "Localizer",
    "LocalizerConfig",
    "Status",
    "compose_map_odom",
    "resolve_device",
]


def resolve_device(device: str) -> tuple[str, str]:
    """Map ``auto|cpu|cuda[:n]`` to a torch device string; returns (device, warning or '')."""
    import torch

    d = (device or "auto").strip().lower()
    if d == "auto":
        return ("cuda" if torch.cuda.is_available() else "cpu"), ""
    if d.startswith("cuda"):
        if torch.cuda.is_available():
            return d, ""
        return "cpu", f"device '{device}' requested but CUDA is not available: using the CPU"
    if d == "cpu":
        return "cpu", ""
    raise ValueError(f"unknown device '{device}' (expected auto, cpu or cuda)")


def _to_device(obj, device):
    """Move the tensors of a (data)class / namedtuple / tensor to ``device``."""
    import dataclasses

    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _to_device(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj)})
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_to_device(v, device) for v in obj))
    return obj


def _default_T_body_cam() -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]
    return T


#: Newest GPS fixes kept for the course of an unknown heading (10 Hz: 100 s).
GPS_COURSE_MAX_FIXES = 1000


class Localizer:
    """Cross-view localizer over a tile database; thread-safe (one internal lock)."""

    def __init__(self, model, database, config: LocalizerConfig | None = None,
                 device: str = "cpu") -> None:
        import torch

        self.config = config or LocalizerConfig()
        self.device, self.device_warning = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.db = database
        if len(database) == 0:
            raise ValueError("the tile database has no tiles")
        mc = model.config
        self._ground_hw = tuple(int(v) for v in mc.ground_hw)
        self._disp_cell_m = float(mc.coverage_m) / float(mc.grid_cells)
        self._score_cell_m = self._disp_cell_m / self.config.match_upsample
        self._coverage_m = float(mc.coverage_m)
        self._cam_h = float(self.config.camera_height_m if self.config.camera_height_m is not None
                            else mc.camera_height_m)
        self._torch = torch
        self._lock = threading.RLock()
        # the GPS-course fixes arrive on the GPS callback's thread while an update may hold
        # ``_lock``: their list has its own short lock so a fix never waits on inference
        self._gps_track_lock = threading.Lock()
        self._odom_scale = OdometryScaleEstimator(self.config.odom_scale_baseline_m,
                                                  self.config.odom_scale_max_error,
                                                  self.config.odom_scale_memory_m)
        self._yaw_drift = YawDriftEstimator(
            math.radians(self.config.yaw_drift_rate_sigma_deg_per_100m) / 100.0,
            math.radians(self.config.yaw_drift_rate_max_deg_per_100m) / 100.0)
        self._gps_track: list[tuple[float, float, float, float, float]] = []
        self._gps_track_epoch = 0
        # requests made while an update holds the lock (initial pose, GPS prior, relocalise):
        # applied at the start of the next add_frame, so callers never wait on inference
        self._deferred: list = []
        self._deferred_lock = threading.Lock()
        self.window = SlidingWindow(self.config.window_length, self.config.keyframe_distance_m,
                                    self.config.keyframe_interval_s)
        self.filter = GridFilter()
        self.state_refreshes = 0
        """Per-frame model states computed so far (new keyframes + rotation refreshes)."""
        self._setup_datum()
        self.reset("init")

    # ------------------------------------------------------------------ frames / datum
    def _setup_datum(self) -> None:
        from cvl_ros.geo import GeoDatum

        c = self.config
        db_datum = self.db.datum
        if c.map_datum_lat_deg is not None and c.map_datum_lon_deg is not None:
            self.datum = GeoDatum(float(c.map_datum_lat_deg), float(c.map_datum_lon_deg),
                                  float(c.map_datum_alt_m or 0.0))
        else:
            self.datum = db_datum
        self._same_datum = (abs(self.datum.lat_deg - db_datum.lat_deg) < 1e-12
                            and abs(self.datum.lon_deg - db_datum.lon_deg) < 1e-12)
        if self._same_datum:
            self._centers = np.asarray(self.db.centers_enu, dtype=np.float64)[:, :2]
        else:
            ll = np.asarray(self.db.centers_latlon, dtype=np.float64)
            e, n, _ = self.datum.to_enu(ll[:, 0], ll[:, 1], db_datum.alt_m)
            self._centers = np.stack([np.asarray(e), np.asarray(n)], axis=1)
        self._tile_ids = [str(t) for t in self.db.tile_ids]

    def _map_to_db(self, east_m: float, north_m: float) -> tuple[float, float]:
        if self._same_datum:
            return east_m, north_m
        lat, lon, _ = self.datum.to_geodetic(east_m, north_m, 0.0)
        e, n, _ = self.db.datum.to_enu(lat, lon, self.datum.alt_m)
        return float(e), float(n)

    def latlon_to_map(self, lat_deg: float, lon_deg: float) -> tuple[float, float]:
        """(east, north) in the map frame of a WGS84 position."""
        e, n, _ = self.datum.to_enu(lat_deg, lon_deg, self.datum.alt_m)
        return float(e), float(n)

    def map_to_latlon(self, east_m: float, north_m: float) -> tuple[float, float]:
        """WGS84 (lat, lon) of a map position."""
        lat, lon, _ = self.datum.to_geodetic(east_m, north_m, 0.0)
        return float(lat), float(lon)

    @staticmethod
    def validate_frame(frame: Frame) -> None:
        """Raise ``InvalidFrameError`` for anything the localizer cannot use."""
        img = frame.image_rgb
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 \
                or img.shape[2] != 3:
            shape = getattr(img, "shape", None)
            dtype = getattr(img, "dtype", type(img).__name__)
            raise InvalidFrameError(f"image must be HxWx3 uint8 RGB, got shape {shape} {dtype}")
        if img.shape[0] < 8 or img.shape[1] < 8:
            raise InvalidFrameError(f"image too small: {img.shape[1]}x{img.shape[0]}")
        cam = frame.camera
        if cam is None:
            raise InvalidFrameError("no camera intrinsics (camera_info missing)")
        if int(cam.width_px) != img.shape[1] or int(cam.height_px) != img.shape[0]:
            raise InvalidFrameError(
                f"image is {img.shape[1]}x{img.shape[0]} but the camera intrinsics are for "
                f"{cam.width_px}x{cam.height_px}")
        K = cam.K
        if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise InvalidFrameError(f"invalid intrinsics fx={cam.fx} fy={cam.fy}")
        T = np.asarray(frame.T_odom_body, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise InvalidFrameError("odometry pose T_odom_body is not a finite 4x4 matrix")
        R = T[:3, :3]
        if abs(np.linalg.det(R) - 1.0) > 1e-3 or np.abs(R.T @ R - np.eye(3)).max() > 1e-3:
            raise InvalidFrameError("odometry rotation is not a rotation matrix")
        if frame.heading_enu_rad is not None and not math.isfinite(frame.heading_enu_rad):
            raise InvalidFrameError("heading_enu_rad is not finite")
        if frame.T_body_cam is not None:
            Tb = np.asarray(frame.T_body_cam, dtype=np.float64)
            if Tb.shape != (4, 4) or not np.all(np.isfinite(Tb)):
                raise InvalidFrameError("T_body_cam is not a finite 4x4 matrix")

    # ------------------------------------------------------------------ public control
    def reset(self, reason: str = "") -> None:
        """Forget window, filter and time; the next frame starts a global relocalisation."""
        with self._lock:
            self.window.clear()
            self.filter.clear()
            self._last_stamp_ns: int | None = None
            self._last_update_odom: np.ndarray | None = None
            self._last_odom: np.ndarray | None = None
            self._yaw_offset = float(self.config.odom_yaw_offset_rad)
            self._yaw_offset_known = False
            self._pending_yaw: float | None = None
            # heading estimated (estimate_heading): the filter's yaw axis, its sources
            self.filter.drop_yaw_axis()
            self._heading_known = False
            with self._gps_track_lock:
                self._gps_track = []
                self._gps_track_epoch += 1  # a course computed before this reset is dropped
            self._odom_scale.reset()
            self._yaw_drift.reset()
            self._last_abs_yaw_ns: int | None = None
            self.abs_yaw_inconsistent = 0
            """Absolute headings (IMU) more than 3 sigma from the estimated heading."""
            if self.config.estimate_heading:
                sigma = math.radians(self.config.initial_yaw_sigma_deg)
                if sigma <= self._max_yaw_sigma():
                    self._set_yaw_belief(self._yaw_offset, sigma)
            self._mode = ModeState()  # global search (see cvl_ros.localizer.modes)
            self._grid_global = False  # the filter's grid covers the whole database
            self._pending_reset_reason = reason if reason != "init" else ""
            self.last_reset_reason = reason

    # ------------------------------------------------------------------ heading belief
    def _max_yaw_sigma(self) -> float:
        c = self.config
        return max_yaw_sigma(c.yaw_bins, math.radians(c.yaw_bin_max_deg))

    def _set_yaw_belief(self, offset_rad: float, sigma_rad: float) -> None:
        """(Re)start the heading belief: a Gaussian over the yaw bins (position kept)."""
        c = self.config
        sigma = min(max(float(sigma_rad), math.radians(c.yaw_bin_min_deg)), self._max_yaw_sigma())
        step = yaw_bin_step(sigma, c.yaw_bins, math.radians(c.yaw_bin_min_deg),
                            math.radians(c.yaw_bin_max_deg))
        self.filter.set_yaw_axis(float(wrap(offset_rad)), sigma, c.yaw_bins, step)
        self._heading_known = True
        self._yaw_offset = self.filter.yaw_center_rad
        self._yaw_offset_known = True

    @property
    def heading_known(self) -> bool:
        """Whether there is a heading (given, or an estimated belief)."""
        if self.config.estimate_heading:
            return self._heading_known
        return self._yaw_offset_known

    @property
    def yaw_offset_belief(self) -> tuple[float, float]:
        """(mean, variance) of the odometry->ENU yaw offset [rad, rad^2] (estimate mode), or the
        given offset and the configured heading variance."""  # noqa: D205, D209
        if self.config.estimate_heading and self._heading_known:
            mean, var = self.filter.yaw_stats()
            return float(wrap(mean)), var
        var = self.config.heading_sigma_rad**2 if self._yaw_offset_known else math.pi**2
        return self._yaw_offset, var

    def _absolute_heading(self, stamp_ns: int, offset_rad: float) -> None:
        """Fuse an absolute heading (as an odometry->ENU offset) into the estimated heading."""
        c = self.config
        sigma = math.radians(c.imu_yaw_sigma_deg)
        if not self._heading_known:
            self._set_yaw_belief(offset_rad, sigma)
            self._last_abs_yaw_ns = stamp_ns
            return
        dt = None if self._last_abs_yaw_ns is None else (stamp_ns - self._last_abs_yaw_ns) * 1e-9
        if dt is not None and dt <= 0.0:
            return
        mean, var = self.filter.yaw_stats()
        if float(wrap(offset_rad - mean)) ** 2 > 9.0 * (var + sigma**2):
            self.abs_yaw_inconsistent += 1
        eff = inflated_imu_sigma(sigma, dt, c.imu_yaw_correlation_s)
        self.filter.update_yaw(absolute_yaw_likelihood(self.filter.yaw_offsets(), offset_rad,
                                                       eff, c.imu_yaw_floor))
        self._last_abs_yaw_ns = stamp_ns

    def _run_or_defer(self, request) -> bool:
        """Run ``request()`` now when no update holds the lock (True), else queue it for the
        start of the next ``add_frame`` (False). Callers (ROS callbacks) never block."""  # noqa: D205, D209
        if self._lock.acquire(blocking=False):
            try:
                request()
                return True
            finally:
                self._lock.release()
        with self._deferred_lock:
            self._deferred.append(request)
        return False

    def _apply_deferred(self) -> None:
        with self._deferred_lock:
            pending, self._deferred = self._deferred, []
        for request in pending:
            request()

    def relocalize(self) -> bool:
        """Forget the position belief (keep the window); the next keyframe searches globally.

        Returns True if applied now, False if deferred to the next frame (an update was
        running); either way it takes effect before the next keyframe's estimate.
        """
        return self._run_or_defer(self._relocalize_now)

    def _relocalize_now(self) -> None:
        self._odom_scale.break_track()  # the tracked path does not continue across a jump
        self._yaw_drift.break_track()
        self.filter.clear()
        self._mode = self._mode.relocalized()

    def set_initial_pose(self, east_m: float, north_m: float, yaw_rad: float | None = None,
                         sigma_m: float = 5.0) -> bool:
        """Initialise the belief as a Gaussian at a map position (e.g. rviz ``initialpose``).

        ``yaw_rad`` (map/ENU yaw of base_link) fixes the odometry->ENU heading offset when frames
        carry no absolute heading. Raises ``ValueError`` for a non-finite position or a sigma
        that is not finite and > 0 (nothing changes). Returns True if applied now, False if
        deferred to the start of the next frame (an update was running).
        """
        east_m, north_m, sigma_m = float(east_m), float(north_m), float(sigma_m)
        if not (math.isfinite(east_m) and math.isfinite(north_m)):
            raise ValueError(f"initial pose position must be finite, got ({east_m}, {north_m})")
        if not (math.isfinite(sigma_m) and sigma_m > 0.0):
            raise ValueError(f"initial pose sigma must be finite and > 0 m, got {sigma_m}")
        if yaw_rad is not None:
            yaw_rad = float(yaw_rad) if math.isfinite(float(yaw_rad)) else None
        return self._run_or_defer(lambda: self._set_initial_pose_now(east_m, north_m, yaw_rad,
                                                                     sigma_m))

    def _set_initial_pose_now(self, east_m: float, north_m: float, yaw_rad: float | None,
                              sigma_m: float) -> None:
        c = self.config
        self._odom_scale.break_track()  # the tracked path does not continue across a jump
        self._yaw_drift.break_track()
        sigma = max(sigma_m, c.filter_cell_m)
        extent = max(c.tracking_grid_extent_m, 8.0 * sigma)
        self.filter.init_gaussian((east_m, north_m), sigma, extent,
                                  max(c.filter_cell_m, extent / c.global_grid_max_cells))
        self._grid_global = False
        self._mode = self._mode.at_initial_pose()
        if yaw_rad is not None:
            if self._last_odom is not None:
                if self.config.estimate_heading:  # a given yaw is a prior, not the truth
                    self._set_yaw_belief(yaw_rad - yaw_of(self._last_odom),
                                         INITIAL_POSE_YAW_SIGMA_RAD)
                else:
                    self._yaw_offset = yaw_rad - yaw_of(self._last_odom)
                    self._yaw_offset_known = True
            else:
                self._pending_yaw = yaw_rad
        # the belief refers to the body position now: predict from the newest odometry
        self._last_update_odom = None if self._last_odom is None else self._last_odom.copy()

    def set_gps_prior(self, lat_deg: float, lon_deg: float, sigma_m: float,
                      T_odom_body: np.ndarray | None = None) -> bool:
        """Use a coarse GNSS fix to initialise when there is no belief.

        Returns True if accepted (applied now, or at the start of the next frame when an update
        is running, if there is still no belief then); False if ignored (a belief exists, or
        the fix is not finite).

        When the heading is estimated and still unknown, fixes are collected with the odometry
        pose at their stamp (``T_odom_body``; default the newest frame's) until the odometry
        spans ``gps_course_baseline_m``: the course of the track then starts the heading belief
        and the newest fix the position (True); until then nothing is initialised (False).
        """
        if not (math.isfinite(lat_deg) and math.isfinite(lon_deg)):
            return False
        if self.config.estimate_heading and not self._heading_known:
            return self._gps_course(lat_deg, lon_deg, sigma_m, T_odom_body)
        if self.filter.initialized and not self._mode.global_search:
            return False
        sigma = max(float(sigma_m) if math.isfinite(sigma_m) else 0.0,
                    self.config.gps_prior_min_sigma_m)

        def apply() -> None:
            if self.filter.initialized and not self._mode.global_search:
                return  # a belief appeared meanwhile
            e, n = self.latlon_to_map(lat_deg, lon_deg)
            self._set_initial_pose_now(e, n, None, sigma)

        self._run_or_defer(apply)
        return True

    def _gps_course(self, lat_deg: float, lon_deg: float, sigma_m: float,
                    T_odom_body: np.ndarray | None) -> bool:
        odom = self._last_odom if T_odom_body is None else np.asarray(T_odom_body, np.float64)
        if odom is None or odom.shape != (4, 4) or not np.all(np.isfinite(odom)):
            return False
        sigma = max(float(sigma_m) if math.isfinite(sigma_m) else 0.0, 0.5)
        e, n = self.latlon_to_map(lat_deg, lon_deg)
        with self._gps_track_lock:
            self._gps_track.append((e, n, float(odom[0, 3]), float(odom[1, 3]), sigma))
            del self._gps_track[:-GPS_COURSE_MAX_FIXES]  # a parked vehicle: bounded memory
            tr = np.asarray(self._gps_track)
            epoch = self._gps_track_epoch
        course = gps_course_offset(tr[:, 0:2], tr[:, 2:4], tr[:, 4],
                                   self.config.gps_course_baseline_m)
        if course is None or course[1] > self._max_yaw_sigma():
            return False
        offset, yaw_sigma = course

        def apply() -> None:
            if self._heading_known or epoch != self._gps_track_epoch:
                return  # the heading started meanwhile, or a reset came between
            self._set_yaw_belief(offset, yaw_sigma)
            with self._gps_track_lock:
                self._gps_track = []
            if not self.filter.initialized or self._mode.global_search:
                self._set_initial_pose_now(e, n, None, max(sigma,
                                                           self.config.gps_prior_min_sigma_m))
                # the fix refers to the odometry pose at its stamp
                self._last_update_odom = odom.copy()

        self._run_or_defer(apply)
        return True

    @property
    def _global_mode(self) -> bool:
        """Whether the next update searches the whole database (read-only; tests read it)."""
        return self._mode.global_search

    @property
    def window_fill(self) -> int:
        """Keyframes currently in the window."""
        return len(self.window)

    # ------------------------------------------------------------------ main entry
    def add_frame(self, frame: Frame) -> Estimate | None:
        """Process one frame; returns an Estimate for a keyframe, None otherwise.

        Raises ``InvalidFrameError`` for unusable input (the state is left unchanged). A stamp
        older than the previous one resets the localizer (looping bag) and the frame is used as
        the first of the new run; the estimate's ``reset_reason`` says so.
        """
        t0 = time.perf_counter()
        self.validate_frame(frame)
        if self.config.reject_uninformative_images:
            problem = image_problem(frame.image_rgb)
            if problem:
                raise InvalidFrameError(f"uninformative image: {problem}")
        with self._lock:
            c = self.config
            stamp = int(frame.stamp_ns)
            if self._last_stamp_ns is not None:
                dt = (stamp - self._last_stamp_ns) * 1e-9
                if dt < 0:
                    self.reset(f"time went backwards by {-dt:.3f} s")
                elif c.max_time_gap_s > 0 and dt > c.max_time_gap_s:
                    self.reset(f"time jumped forward by {dt:.3f} s")
            self._last_stamp_ns = stamp
            self._apply_deferred()  # after a time reset: the latest request wins
            T_ob = np.asarray(frame.T_odom_body, dtype=np.float64).copy()
            T_bc = (np.asarray(frame.T_body_cam, dtype=np.float64)
                    if frame.T_body_cam is not None else _default_T_body_cam())
            self._last_odom = T_ob
            if c.estimate_heading:  # frames' headings are measurements, not the truth
                if self._pending_yaw is not None:
                    self._set_yaw_belief(self._pending_yaw - yaw_of(T_ob),
                                         INITIAL_POSE_YAW_SIGMA_RAD)
                    self._pending_yaw = None
                if frame.heading_enu_rad is not None:
                    self._absolute_heading(stamp, float(frame.heading_enu_rad) - yaw_of(T_ob))
            elif frame.heading_enu_rad is not None:
                self._yaw_offset = float(frame.heading_enu_rad) - yaw_of(T_ob)
                self._yaw_offset_known = True
            elif self._pending_yaw is not None:
                self._yaw_offset = self._pending_yaw - yaw_of(T_ob)
                self._yaw_offset_known = True
                self._pending_yaw = None
            if not self.window.is_keyframe(stamp, T_ob):
                return None
            return self._update(frame, stamp, T_ob, T_bc, t0)

    # ------------------------------------------------------------------ internals
    def _encode(self, image_rgb: np.ndarray):
        torch = self._torch
        h, w = self._ground_hw
        img = cv2.resize(image_rgb, (w, h), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
        return self.model.encode_ground(x.unsqueeze(0).to(self.device))[0]

    def _search_indices(self, pred_en, radius_m: float, ground) -> tuple[np.ndarray, bool]:
        c = self.config
        n_tiles = len(self._tile_ids)
        if self._mode.global_search:
            if n_tiles <= c.global_max_tiles:
                return np.arange(n_tiles), True
            idx, _ = self.db.global_topk(_to_device(ground, "cpu"), min(c.global_topk, n_tiles))
            return np.asarray(idx, dtype=np.int64).reshape(-1), True
        e, n = self._map_to_db(float(pred_en[0]), float(pred_en[1]))
        idx = self.db.query_radius(e, n, radius_m)
        return np.asarray(idx, dtype=np.int64).reshape(-1), False

    def _match(self, ground, idx: np.ndarray):
        """Scores (T,), displacements (T,2) and score maps (T,k,k) of one ground vs tiles."""
        scores, disps, maps = self._match_rows(ground, idx)
        return scores[0], disps[0], maps[0]

    def _match_rows(self, ground, idx: np.ndarray):
        """Every row of a (B, ...) ground descriptor against the tiles ``idx``, each tile's
        descriptor loaded once: (B,T), (B,T,2), (B,T,k,k)."""  # noqa: D205, D209
        torch = self._torch
        scores, disps, maps = [], [], []
        for s in range(0, len(idx), self.config.tile_batch):
            chunk = idx[s:s + self.config.tile_batch]
            sat = _to_device(self.db.descriptors(chunk), self.device)
            up = self.config.match_upsample
            res = self.model.match(ground, sat, pairwise=True,
                                   **({"upsample": up} if up != 1 else {}))
            scores.append(res.score.detach().float().cpu())
            disps.append(res.displacement_m.detach().float().cpu())
            maps.append(res.score_map.detach().float().cpu())
        return (torch.cat(scores, 1).numpy().astype(np.float64),
                torch.cat(disps, 1).numpy().astype(np.float64),
                torch.cat(maps, 1).numpy().astype(np.float64))

    def _global_grid(self) -> tuple[np.ndarray, float, float]:
        c = self.config
        lo = self._centers.min(axis=0) - self._coverage_m / 2
        hi = self._centers.max(axis=0) + self._coverage_m / 2
        extent = float(max(hi - lo)) + 2.0 * c.filter_cell_m
        cell = max(c.filter_cell_m, extent / c.global_grid_max_cells)
        return (lo + hi) / 2.0, extent, cell

    def _update(self, frame: Frame, stamp: int, T_ob, T_bc, t0) -> Estimate:
        """One keyframe: predict, fuse the window, search, measure, decide the mode, report."""
        torch = self._torch
        c = self.config
        with torch.inference_mode():
            feats = self._encode(frame.image_rgb)
            K_net = frame.camera.scaled_to(self._ground_hw[1], self._ground_hw[0]).K
            self.window.push(Keyframe(stamp, feats, K_net, T_ob, T_bc))
            # ---- predict
            estimating = c.estimate_heading
            learn_drift = (estimating and c.yaw_drift_rate_max_deg_per_100m > 0
                           and self._track_only_heading(stamp))
            if estimating and not self._heading_known:
                return self._no_heading_estimate(stamp, T_ob, t0)
            R_off = rot_z(self.filter.yaw_center_rad if estimating else self._heading_offset())
            travel_m = 0.0
            if self.filter.initialized and self._last_update_odom is not None:
                d = (R_off @ np.append(T_ob[:3, 3] - self._last_update_odom[:3, 3], 0.0))[:2]
                d = d * self._odom_scale.scale  # the odometry's estimated scale error removed
                travel_m = float(np.hypot(*d))
                sigma = c.process_noise_m + c.odom_noise_fraction * travel_m
                yaw_sigma = (math.radians(c.yaw_drift_deg_per_100m) * math.sqrt(travel_m / 100.0)
                             if estimating else 0.0)
                self.filter.predict(d, sigma, yaw_sigma)
                odom_m = float(np.hypot(*(T_ob[:2, 3] - self._last_update_odom[:2, 3])))
                if learn_drift:  # the odometry's estimated heading drift, fed forward
                    self.filter.shift_yaw(self._yaw_drift.rate * odom_m)
                    self._yaw_drift.predict(odom_m)
                if self._grid_global:  # keep the whole-database grid on the database
                    center, extent, cell = self._global_grid()
                    self.filter.regrid(center, extent, cell)
            self._last_update_odom = T_ob.copy()
            if estimating:  # the window is rotated into ENU by the heading belief's mean
                yaw_prior = self.yaw_offset_belief
                self._yaw_offset = yaw_prior[0]
            R_off = rot_z(self._heading_offset())
            # ---- fused ground descriptor of the window
            kfs = self.window.frames()
            Ks = torch.from_numpy(np.stack([k.K_net for k in kfs])).float()
            T_np = self.window.relative_poses(self._yaw_offset)
            T_grid = torch.from_numpy(T_np).float().unsqueeze(0).to(self.device)
            Ks = Ks.unsqueeze(0).to(self.device)
            self._refresh_frame_states(kfs, Ks, T_grid, T_np)
            ground = self.model.fuse_frame_states([k.state for k in kfs], Ks, T_grid,
                                                  self._cam_h)
            # ---- search
            prior = None  # statistics of the predicted belief
            if self.filter.initialized and not self._mode.global_search:
                prior = self.filter.stats(c.confidence_radius_m)
                pred = prior.peak_en
                radius = max(c.tracking_search_radius_m,
                             c.search_radius_sigma_factor * sigma_m(prior.cov_about_peak))
            else:
                pred, radius = np.zeros(2), 0.0
            idx, global_search = self._search_indices(pred, radius, ground)
            if global_search and (not self.filter.initialized or not self._grid_global):
                center, extent, cell = self._global_grid()
                if self.filter.initialized:
                    self.filter.regrid(center, extent, cell)
                    self.filter.inject_uniform(0.5)
                else:
                    self.filter.init_uniform(center, extent, cell)
                self._grid_global = True
            if len(idx):
                scores, disps, maps = self._match(ground, idx)
            else:
                scores, disps, maps = np.zeros(0), np.zeros((0, 2)), np.zeros((0, 1, 1))
        # lever arm: camera optical centre relative to the body, horizontal, in the map frame
        lever = (R_off @ T_ob @ T_bc)[:3, 3] - (R_off @ T_ob)[:3, 3]
        lever_en = lever[:2]
        tiles = [TileScores(self._centers[i] - lever_en, maps[k], self._score_cell_m)
                 for k, i in enumerate(idx)]
        applied = self.filter.update(tiles, c.score_temperature, None, c.outlier_weight)
        yaw_post = self.yaw_offset_belief if estimating else None
        # ---- decide the mode and the status (cvl_ros.localizer.modes), then apply it
        # (an update that covered no cell leaves the grid as predicted: reuse its statistics)
        st = (prior if prior is not None and applied["covered_fraction"] == 0.0
              else self.filter.stats(c.confidence_radius_m))
        if estimating:  # keep the yaw bins on the belief
            self.filter.recenter_yaw(math.radians(c.yaw_bin_min_deg),
                                     math.radians(c.yaw_bin_max_deg))
        evidence = self._evidence(st, idx, scores, disps, travel_m)
        if estimating and (self.yaw_offset_belief[1]
                           > math.radians(c.tracking_max_yaw_sigma_deg) ** 2):
            evidence = dataclasses.replace(evidence, heading_known=False)
        decision = decide(self._mode, evidence, c)
        self._mode = decision.state
        if decision.grid is GridAction.CONVERGE:  # continue on a fine grid around the peak
            self.filter.regrid(st.peak_en, c.tracking_grid_extent_m, c.filter_cell_m)
            self._grid_global = False
            st = self.filter.stats(c.confidence_radius_m)
        elif decision.grid is GridAction.FOLLOW:  # re-centre the tracking grid on the peak
            half = self.filter.extent_m / 2.0
            if np.abs(st.peak_en - self.filter.center_en).max() > 0.25 * half:
                self.filter.regrid(st.peak_en, self.filter.extent_m, self.filter.cell_m)
        cov = reported_covariance(decision, st.cov_local, st.cov_about_peak,
                                  c.min_position_sigma_m)
        est = self._make_estimate(stamp, T_ob, R_off, idx, scores, disps, maps, global_search,
                                  st, decision.status, cov, t0)
        if c.odom_scale_max_error > 0:  # the tracked path teaches the odometry's scale
            if est.status is Status.TRACKING:
                self._odom_scale.add(T_ob[:2, 3], (est.east_m, est.north_m))
            else:
                self._odom_scale.break_track()
        if learn_drift and est.status is Status.TRACKING:  # the heading's drift, learnt
            shift = self._yaw_drift.update(float(wrap(yaw_post[0] - yaw_prior[0])),
                                           yaw_prior[1], yaw_post[1])
            if shift:
                self.filter.shift_yaw(shift)
        elif estimating:
            self._yaw_drift.break_track()
        self._pending_reset_reason = ""
        return est

    def _track_only_heading(self, stamp_ns: int) -> bool:
        """Whether the heading is observed only through the track (no absolute heading fused
        within the last ``imu_yaw_correlation_s``, at least 1 s): then the belief lags a
        drifting odometry heading and the drift is learnt and fed forward. An IMU observes the
        heading itself; the belief's changes then also hold the IMU's corrections of other
        errors (measured on validation towns 303/304: learnt with an IMU, the yaw error grew
        0.36 -> 0.71 deg and 0.94 -> 1.40 deg), so the drift is neither learnt nor used."""  # noqa: D205, D209
        last = self._last_abs_yaw_ns
        return last is None or (stamp_ns - last) * 1e-9 > max(self.config.imu_yaw_correlation_s,
                                                              1.0)

    @property
    def yaw_drift_rate_deg_per_100m(self) -> float:
        """Learnt odometry heading drift (the offset's change per 100 m) [deg]; fed into the
        prediction only while no absolute heading arrives, 0 until learnt."""  # noqa: D205, D209
        return math.degrees(self._yaw_drift.rate) * 100.0

    @property
    def odom_scale(self) -> float:
        """Estimated odometry translation scale in use (true = scale x odometry distance)."""
        return self._odom_scale.scale

    def _heading_offset(self) -> float:
        """ENU yaw - odometry yaw in use: the heading belief's mean when it is estimated, else
        the given offset."""  # noqa: D205, D209
        return self._yaw_offset

    def _no_heading_estimate(self, stamp: int, T_ob, t0) -> Estimate:
        """An estimate without a fix while the estimated heading has no source yet (the
        keyframe is already in the window; the position belief, if any, only widens)."""  # noqa: D205, D209
        c = self.config
        if self.filter.initialized and self._last_update_odom is not None:
            travel = float(np.linalg.norm(T_ob[:2, 3] - self._last_update_odom[:2, 3]))
            self.filter.predict(np.zeros(2), c.process_noise_m + travel)  # direction unknown
        self._last_update_odom = T_ob.copy()
        nan = float("nan")
        est = Estimate(
            stamp_ns=stamp, status=Status.INITIALIZING, lat_deg=nan, lon_deg=nan, alt_m=nan,
            east_m=nan, north_m=nan, yaw_rad=nan, covariance_xy=np.full((2, 2), nan),
            yaw_var_rad2=math.pi**2, confidence=0.0, score=nan, tile_id="",
            displacement_m=np.full(2, nan), window_len=len(self.window), tiles_searched=0,
            latency_s=time.perf_counter() - t0, T_odom_body=T_ob.copy(),
            datum_lat_deg=self.datum.lat_deg, datum_lon_deg=self.datum.lon_deg,
            datum_alt_m=self.datum.alt_m, reset_reason=self._pending_reset_reason)
        self._pending_reset_reason = ""
        return est

    def _evidence(self, st: PosteriorStats, idx, scores, disps, travel_m: float) -> Evidence:
        """The numbers the mode decision uses, read after the measurement update."""
        c = self.config
        s_peak = self.filter.score_at(*st.peak_en)
        gap = (self.filter.last_max_score - s_peak) / c.score_temperature
        mismatch_m2 = float("nan")
        if len(scores):
            best = int(np.argmax(scores))
            best_en = self._centers[idx[best]] + disps[best]
            mismatch_m2 = float(np.sum((best_en - st.peak_en) ** 2))
        return Evidence(mass_near_peak=st.mass_near_peak, second_mode_mass=st.second_mode_mass,
                        cov_local=st.cov_local, cov_about_peak=st.cov_about_peak,
                        score_gap=gap, mismatch_m2=mismatch_m2, travel_m=travel_m,
                        tiles_searched=int(len(idx)), window_full=self.window.full)

    def _refresh_frame_states(self, kfs, Ks, T_grid, T_np) -> None:
        """Compute the model's cached per-frame state of new keyframes, and of keyframes whose
        ENU rotation moved by more than ``frame_state_rotation_tolerance_rad`` since their state
        was computed (only for models whose state depends on it); one batched call."""  # noqa: D205, D209
        torch = self._torch
        tol = self.config.frame_state_rotation_tolerance_rad
        uses_rot = self.model.frame_state_uses_rotation
        stale = []
        for i, kf in enumerate(kfs):
            if kf.state is None:
                stale.append(i)
            elif uses_rot:
                R_rel = kf.state_rotation.T @ T_np[i, :3, :3]
                cos = min(1.0, max(-1.0, (float(np.trace(R_rel)) - 1.0) / 2.0))
                if math.acos(cos) > tol:
                    stale.append(i)
        if not stale:
            return
        sel = torch.tensor(stale, device=self.device)
        feats = torch.stack([kfs[i].features for i in stale]).unsqueeze(0)
        states = self.model.frame_states(feats, Ks[:, sel], T_grid[:, sel], self._cam_h)[0]
        for j, i in enumerate(stale):
            kfs[i].state = states[j]
            kfs[i].state_rotation = T_np[i, :3, :3].copy()
        self.state_refreshes += len(stale)

    def _make_estimate(self, stamp, T_ob, R_off, idx, scores, disps, maps, global_search,
                       st: PosteriorStats, status: Status, cov: np.ndarray, t0) -> Estimate:
        """Pack an Estimate of the decided status/covariance and the posterior statistics."""
        c = self.config
        east, north = float(st.peak_en[0]), float(st.peak_en[1])
        lat, lon = self.map_to_latlon(east, north)
        yaw_body = self._heading_offset() + yaw_of(T_ob)
        yaw_body = float(math.atan2(math.sin(yaw_body), math.cos(yaw_body)))
        T_mb = R_off @ T_ob
        T_mb[0, 3], T_mb[1, 3] = east, north
        order = np.argsort(-scores)[: c.num_candidates] if len(scores) else np.zeros(0, int)
        cands = []
        for k in order:
            ce, cn = self._centers[idx[k]] + disps[k]
            la, lo = self.map_to_latlon(float(ce), float(cn))
            cands.append(Candidate(self._tile_ids[idx[k]], la, lo, float(scores[k]),
                                   float(ce), float(cn)))
        best = int(order[0]) if len(order) else -1
        yaw_var = self.yaw_offset_belief[1]
        est = Estimate(
            stamp_ns=stamp, status=status, lat_deg=lat, lon_deg=lon, alt_m=float("nan"),
            east_m=east, north_m=north, yaw_rad=yaw_body, covariance_xy=cov,
            yaw_var_rad2=float(yaw_var), confidence=float(st.mass_near_peak),
            score=float(scores[best]) if best >= 0 else float("nan"),
            tile_id=self._tile_ids[idx[best]] if best >= 0 else "",
            displacement_m=disps[best].copy() if best >= 0 else np.full(2, np.nan),
            window_len=len(self.window), tiles_searched=int(len(idx)),
            latency_s=time.perf_counter() - t0, candidates=cands,
            score_map=maps[best].astype(np.float32) if best >= 0 else None,
            T_map_body=T_mb, T_odom_body=T_ob.copy(), datum_lat_deg=self.datum.lat_deg,
            datum_lon_deg=self.datum.lon_deg, datum_alt_m=self.datum.alt_m,
            global_search=bool(global_search), reset_reason=self._pending_reset_reason,
            posterior=self.filter.prob.astype(np.float32) if self.filter.prob is not None
            else None,
            posterior_center_en=(None if self.filter.prob is None
                                 else np.asarray(self.filter.center_en, np.float64).copy()),
            posterior_cell_m=float(self.filter.cell_m) if self.filter.prob is not None
            else float("nan"))
        return est
