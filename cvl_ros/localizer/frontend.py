"""The frame front end: messages in, :class:`~cvl_ros.localizer.Frame` (or a rejection) out.

:class:`FrameAssembler` is the one place where camera_info, odometry, IMU heading, static TF and
the GPS fix are buffered and paired with an image. The node's callbacks and the offline bag
runner (``cvl-localize-bag``) feed it the same message objects (rclpy messages in the node,
``rosbags``-deserialised ones offline: both expose the same fields), so a number measured
offline is the number the node achieves. It needs no rclpy: messages are read by attribute.

Rules (each the node's documented parameter, see docs/parameters.md):

- camera_info: the one with the image's stamp, else the nearest within
  ``camera_info_tolerance_s`` (negative: the newest whatever its stamp);
- odometry: interpolated at the image stamp (held at most ``odom_max_extrapolation_s`` beyond
  the buffered span); a stamp going backwards clears the buffer (a looping bag);
- heading: the absolute ENU yaw of ``base_frame`` from the IMU, interpolated within
  ``imu_tolerance_s`` when ``heading_source`` is imu/auto/estimate (estimate: a measurement,
  not the truth). REP-145 orientations are those of the IMU's own frame
  (``header.frame_id``): they are rotated into ``base_frame`` through the /tf_static tree
  (an empty frame_id or ``base_frame`` itself is taken as is). An IMU whose
  frame has no /tf_static connection to ``base_frame`` is **no heading source** (its yaw would
  be the sensor's, not the body's): it is said once per frame (a Rejection) and shown by
  ``imu_heading_frame``; the heading is used as soon as the transform arrives. An IMU without
  orientation (REP-145: ``orientation_covariance[0] == -1``) is no heading source either; with
  ``imu`` and no heading the image is rejected;
- extrinsics: base_frame <- camera optical frame from the /tf_static tree when
  ``use_tf_static_extrinsics`` and the two frames are connected, else
  ``camera_extrinsics_xyz_rpy``;
- GPS prior: a fix with status >= 0 and a valid WGS84 position; sigma from
  ``gps_prior_sigma_m``, else the NavSatFix covariance, else 10 m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cvl_ros.localizer.types import Frame
from cvl_ros.ros import convert
from cvl_ros.ros.sync import PoseBuffer, ScalarBuffer, StampPairer, TimeWentBackwards

#: Sigma of a GPS prior whose NavSatFix carries no covariance [m].
GPS_UNKNOWN_SIGMA_M = 10.0


@dataclass(frozen=True)
class FrontendConfig:
    """Settings of the front end (built from the node's parameters by ``params``)."""

    base_frame: str = "base_link"
    odom_frame: str = "odom"
    camera_frame: str = ""
    heading_source: str = "auto"
    imu_tolerance_s: float = 0.2
    camera_info_tolerance_s: float = 0.05
    odom_max_extrapolation_s: float = 0.1
    odom_buffer_s: float = 10.0
    use_tf_static_extrinsics: bool = True
    camera_extrinsics_xyz_rpy: tuple = (0.0, 0.0, 1.65, 0.0, 0.0, 0.0)
    gps_prior_sigma_m: float = 0.0


@dataclass(frozen=True)
class Rejection:
    """Why an input was not used: ``reason`` is a short stable key (counted), ``message`` the
    full text (logged / shown in /diagnostics)."""  # noqa: D205, D209

    reason: str
    message: str
    time_jump: bool = False


@dataclass(frozen=True)
class GpsPrior:
    """A usable GPS fix: WGS84 position and the 1-sigma of the prior [m]."""

    lat_deg: float
    lon_deg: float
    sigma_m: float
    T_odom_body: np.ndarray | None = None
    """Odometry pose at the fix's stamp, when buffered (the GPS course of an estimated heading)."""


@dataclass
class FrameAssembler:
    """Buffers of the non-image inputs and the rule that pairs them with an image."""

    config: FrontendConfig = field(default_factory=FrontendConfig)

    def __post_init__(self) -> None:
        self.odom = PoseBuffer(self.config.odom_buffer_s)
        self.heading = ScalarBuffer()
        self.camera_infos = StampPairer()
        self.static_tf: dict[str, tuple[str, np.ndarray]] = {}
        self.extrinsics_source = ""
        self.imu_without_orientation = 0
        #: IMU messages not used as heading: their frame has no /tf_static link to base_frame
        self.imu_frame_unresolved = 0
        #: how the IMU orientation reaches base_frame (shown in /diagnostics)
        self.imu_heading_frame = ""
        self._imu_R_base: dict[str, np.ndarray] = {}  # imu frame -> R_base_imu (cache)
        self._imu_frames_reported: set[str] = set()
        self._imu_unusable = False  # the newest IMU message's frame is not linked to base_frame
        self._last_image_stamp_ns: int | None = None

    # ------------------------------------------------------------------ inputs
    def add_camera_info(self, msg) -> Rejection | None:
        """Buffer a ``sensor_msgs/CameraInfo``."""
        try:
            cam = convert.camera_info_to_pinhole(msg)
        except (convert.ImageConversionError, ValueError) as exc:
            return Rejection("bad camera_info", f"camera_info rejected: {exc}")
        self.camera_infos.add(convert.stamp_to_ns(msg.header.stamp), cam)
        return None

    def add_odometry(self, msg) -> Rejection | None:
        """Buffer a ``nav_msgs/Odometry`` (T_odom_body at its stamp)."""
        T = convert.odometry_to_matrix(msg)
        return self.add_odom_pose(convert.stamp_to_ns(msg.header.stamp), T)

    def add_odom_pose(self, stamp_ns: int, T: np.ndarray) -> Rejection | None:
        """Buffer an odometry pose (from Odometry or the /tf odom->base transform)."""
        problem = None
        if not np.all(np.isfinite(T)):
            problem = Rejection("odometry not finite", "odometry contains NaN/Inf (or a zero "
                                "quaternion); frames that need it are rejected")
        try:
            self.odom.add(int(stamp_ns), T)
        except TimeWentBackwards as exc:  # the buffer restarted with this pose
            return Rejection("odometry went backwards", f"odometry: {exc}", time_jump=True)
        return problem

    def add_tf(self, msg) -> list[Rejection]:
        """Odometry from a ``tf2_msgs/TFMessage`` on /tf (``odom_frame -> base_frame``)."""
        odom, base = self.config.odom_frame, self.config.base_frame
        out = []
        for t in msg.transforms:
            if t.header.frame_id.lstrip("/") == odom and t.child_frame_id.lstrip("/") == base:
                try:
                    T = convert.transform_to_matrix(t.transform)
                except ValueError as exc:
                    out.append(Rejection("bad /tf", f"/tf {odom}->{base} rejected: {exc}"))
                    continue
                r = self.add_odom_pose(convert.stamp_to_ns(t.header.stamp), T)
                if r is not None:
                    out.append(r)
        return out

    def add_tf_static(self, msg) -> list[Rejection]:
        """Static transforms of a ``tf2_msgs/TFMessage`` on /tf_static."""
        out = []
        for t in msg.transforms:
            try:
                T = convert.transform_to_matrix(t.transform)
                if not np.all(np.isfinite(T)):  # a NaN/Inf translation
                    raise ValueError(f"translation {T[:3, 3].tolist()} is not finite")
                self.static_tf[t.child_frame_id.lstrip("/")] = (t.header.frame_id.lstrip("/"), T)
            except ValueError as exc:
                out.append(Rejection("bad /tf_static",
                                     f"/tf_static {t.child_frame_id} rejected: {exc}"))
        self._imu_R_base.clear()  # the tree changed: IMU rotations are looked up again
        return out

    def static_transform(self, target: str, source: str) -> np.ndarray | None:
        """``T_target_source`` from the /tf_static tree, or None when they are not connected.

        Both frames are walked up to their common ancestor, so ``source`` may be a descendant
        of ``target`` (base_link -> a -> b -> camera), its ancestor, or a sibling.
        """
        if source == target:
            return np.eye(4)
        up: dict[str, np.ndarray] = {source: np.eye(4)}  # ancestor -> T_ancestor_source
        frame, T = source, np.eye(4)
        while frame in self.static_tf:
            parent, T_pc = self.static_tf[frame]
            if parent in up:  # a cycle
                break
            T = T_pc @ T
            up[parent] = T
            frame = parent
        frame, T, seen = target, None, set()  # T: T_ancestor_target (None = identity)
        while True:
            if frame in up:
                return up[frame] if T is None else np.linalg.inv(T) @ up[frame]
            if frame not in self.static_tf or frame in seen:
                return None
            seen.add(frame)
            parent, T_pc = self.static_tf[frame]
            T = T_pc if T is None else T_pc @ T
            frame = parent

    def add_imu(self, msg) -> Rejection | None:
        """Buffer the absolute ENU heading of ``base_frame`` that a ``sensor_msgs/Imu`` gives.

        REP-145: the orientation is the IMU frame's (``header.frame_id``); it is rotated into
        ``base_frame`` through /tf_static. Nothing is buffered without an orientation or when the
        IMU frame has no /tf_static link to ``base_frame`` (said once per frame: a Rejection).
        """
        if msg.orientation_covariance[0] == -1.0:
            self.imu_without_orientation += 1
            if self.config.heading_source == "imu":
                return Rejection("imu without orientation", "imu has no orientation "
                                 "(orientation_covariance[0] = -1) but heading_source is imu")
            return None
        base = self.config.base_frame
        frame = msg.header.frame_id.lstrip("/")
        R_base_imu = None
        if frame and frame != base:
            R_base_imu = self._imu_R_base.get(frame)
            if R_base_imu is None:
                T = self.static_transform(base, frame)
                if T is None:  # REP-145: the orientation is the sensor's, not the body's
                    self.imu_frame_unresolved += 1
                    self._imu_unusable = True
                    self.imu_heading_frame = (f"{frame}: no /tf_static link to {base}; "
                                              "not used as heading")
                    if frame in self._imu_frames_reported:
                        return None
                    self._imu_frames_reported.add(frame)
                    return Rejection(
                        "imu frame without /tf_static",
                        f"imu frame '{frame}' has no /tf_static link to '{base}' (yet): its "
                        "orientation is not used as the heading until there is one (publish "
                        f"the static transform {base} -> {frame})")
                R_base_imu = self._imu_R_base[frame] = T[:3, :3]
        self._imu_unusable = False
        self.imu_heading_frame = (f"{frame} -> {base} (/tf_static)" if R_base_imu is not None
                                  else base if frame else f"'' (taken as {base})")
        try:
            if R_base_imu is None:
                yaw = convert.yaw_from_quat(msg.orientation)
            else:  # R_enu_base = R_enu_imu * R_imu_base
                q = msg.orientation
                R = convert.quat_to_matrix(q.x, q.y, q.z, q.w) @ R_base_imu.T
                yaw = float(math.atan2(R[1, 0], R[0, 0]))
        except ValueError as exc:
            return Rejection("bad imu orientation", f"imu orientation rejected: {exc}")
        self.heading.add(convert.stamp_to_ns(msg.header.stamp), yaw)
        return None

    def gps_prior(self, msg) -> GpsPrior | Rejection | None:
        """The prior a ``sensor_msgs/NavSatFix`` gives; None for a fix without position."""
        if msg.status.status < 0:
            return None
        lat, lon = float(msg.latitude), float(msg.longitude)
        if not (math.isfinite(lat) and math.isfinite(lon) and -90.0 <= lat <= 90.0
                and -180.0 <= lon <= 180.0):
            return Rejection("bad gps fix", f"gps/fix rejected: position ({lat}, {lon}) deg is "
                             "not a finite WGS84 latitude/longitude")
        sigma = float(self.config.gps_prior_sigma_m)
        if sigma <= 0:
            c = np.asarray(msg.position_covariance, dtype=np.float64)
            known = msg.position_covariance_type and np.all(np.isfinite(c[[0, 4]]))
            sigma = math.sqrt(max(c[0], c[4], 0.0)) if known else GPS_UNKNOWN_SIGMA_M
        try:
            T_ob = self.odom.lookup(convert.stamp_to_ns(msg.header.stamp),
                                    self.config.odom_max_extrapolation_s)
        except LookupError:
            T_ob = None
        return GpsPrior(lat, lon, sigma, T_ob)

    # ------------------------------------------------------------------ time
    def note_image_stamp(self, stamp_ns: int) -> str | None:
        """Record an image stamp; when it went backwards, forget the buffered future of the
        previous run and return the reason (the caller resets its localizer)."""  # noqa: D205, D209
        last, self._last_image_stamp_ns = self._last_image_stamp_ns, int(stamp_ns)
        if last is None or stamp_ns >= last:
            return None
        self.odom.drop_after(stamp_ns)
        self.heading.drop_after(stamp_ns)
        return f"image stamps went backwards by {(last - stamp_ns) * 1e-9:.3f} s"

    def odometry_reaches(self, stamp_ns: int) -> bool:
        """Whether odometry at or after ``stamp_ns`` is buffered (no need to wait for more)."""
        latest = self.odom.latest_stamp_ns
        return latest is not None and latest >= stamp_ns

    def camera_info_at(self, stamp_ns: int):
        """The camera (PinholeCamera) paired with an image stamp, or None."""
        return self.camera_infos.match(stamp_ns, self.config.camera_info_tolerance_s)

    # ------------------------------------------------------------------ assembly
    def extrinsics(self, camera_frame: str) -> np.ndarray:
        """T_base_camera: the /tf_static chain when there is one, else the parameter.

        ``extrinsics_source`` says which was used.
        """
        c = self.config
        base = c.base_frame
        if c.use_tf_static_extrinsics and camera_frame and camera_frame != base:
            T = self.static_transform(base, camera_frame)
            if T is not None:
                self.extrinsics_source = f"/tf_static {base}->{camera_frame}"
                return T
        from cvl_ros.camera import make_body_from_camera

        self.extrinsics_source = "parameter camera_extrinsics_xyz_rpy" + (
            f" (no /tf_static chain {base}->{camera_frame or '?'} yet)"
            if c.use_tf_static_extrinsics else "")
        x, y, z, r, p, yw = (float(v) for v in c.camera_extrinsics_xyz_rpy)
        return make_body_from_camera(x, y, z, r, p, yw)

    def assemble(self, image_msg) -> Frame | Rejection:
        """The Frame of an ``Image``/``CompressedImage`` message, or why there is none."""
        stamp_ns = convert.stamp_to_ns(image_msg.header.stamp)
        cam = self.camera_info_at(stamp_ns)
        if cam is None:
            return Rejection("no camera_info", "image dropped: no camera_info with a matching "
                             f"stamp (have {len(self.camera_infos)} camera_info; tolerance "
                             f"{self.config.camera_info_tolerance_s} s)")
        try:
            T_ob = self.odom.lookup(stamp_ns, self.config.odom_max_extrapolation_s)
        except LookupError as exc:
            return Rejection("no odometry", f"image dropped: no odometry at its stamp ({exc})")
        heading = None
        if self.config.heading_source in ("imu", "auto", "estimate"):
            heading = self.heading.lookup(stamp_ns, self.config.imu_tolerance_s)
            if heading is None and self.config.heading_source == "imu":
                why = f"; imu frame {self.imu_heading_frame}" if self._imu_unusable else ""
                return Rejection("no imu heading", "image dropped: no IMU heading near its "
                                 f"stamp (tolerance {self.config.imu_tolerance_s} s){why}")
        try:
            if hasattr(image_msg, "format"):  # CompressedImage
                rgb = convert.compressed_to_rgb(image_msg)
            else:
                rgb = convert.image_to_rgb(image_msg)
        except convert.ImageConversionError as exc:
            return Rejection("bad image", f"image rejected: {exc}")
        camera_frame = self.config.camera_frame or image_msg.header.frame_id.lstrip("/")
        return Frame(stamp_ns=stamp_ns, image_rgb=rgb, camera=cam, T_odom_body=T_ob,
                     heading_enu_rad=heading, T_body_cam=self.extrinsics(camera_frame))

    def clear(self) -> None:
        """Forget every buffered input."""
        self.odom.clear()
        self.heading.clear()
        self.camera_infos.clear()
        self.static_tf.clear()
        self._imu_R_base.clear()
        self._imu_frames_reported.clear()
        self._last_image_stamp_ns = None
