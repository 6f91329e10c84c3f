"""``cvl_localizer``: the CVLNet cross-view localization lifecycle node (console script
``cvl-localize``).

A thin rclpy adapter over :class:`cvl_ros.localizer.Localizer`: it converts messages, time,
parameters and TF, and nothing else. Callbacks only convert/buffer and hand the newest image to
a worker thread through a bounded latest-wins queue; the worker pairs it with camera_info and the
odometry interpolated at its stamp, runs the localizer and publishes. See
README.md ("The ROS 2 node") for topics, frames, parameters and diagnostics.
"""  # noqa: D205

from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, Imu, NavSatFix
from std_srvs.srv import Trigger

from cvl_ros.localizer import Frame, InvalidFrameError, Localizer, LocalizerConfig, Status
from cvl_ros.ros import convert
from cvl_ros.ros.sync import PoseBuffer, ScalarBuffer, StampPairer, TimeWentBackwards

NODE_NAME = "cvl_localizer"
DEFAULT_CHECKPOINT = "models/cvlnet_demo"
DEFAULT_DATABASE = "demo_out/db"
BUILD_DB_HINT = ("build it with `make demo` (writes demo_out/db from the synthetic town) or "
                 "`cvl-build-db --checkpoint <ckpt> --tiles <KITTI-CVL root or mosaic.png> --out "
                 "<dir>` for your own tiles, then set the parameter database_path")
MODEL_HINT = ("the demo model ships in models/cvlnet_demo/ (restore it with git, or train one "
              "with `cvl-train`) and set the parameter checkpoint_path")

_STATUS_NAMES = {int(s): s.name for s in Status}

# Node parameters: name -> (default, description with unit). The Localizer's tuning is exposed as
# ``localizer.<field>`` for every LocalizerConfig field (see _LOCALIZER_SKIP).
PARAMS: dict[str, tuple[object, str]] = {
    "checkpoint_path": ("", "model checkpoint (.safetensors file or a folder holding one); "
                            "'' = the shipped demo model models/cvlnet_demo/"),
    "database_path": (DEFAULT_DATABASE, "tile database folder (relative: to the working "
                                        "directory, then the package)"),
    "device": ("auto", "auto | cpu | cuda[:n] (CUDA when present; CPU fallback with a warning)"),
    "torch_threads": (0, "CPU threads of torch (torch.set_num_threads); 0 = torch's default"),
    "autostart": (True, "configure and activate by itself at start (cvl-localize); the launch "
                        "file sets it false and drives the transitions"),
    "map_frame": ("map", "frame of the outputs (ENU about the map datum)"),
    "odom_frame": ("odom", "odometry frame (child of map->odom, parent of base_frame)"),
    "base_frame": ("base_link", "vehicle body frame"),
    "camera_frame": ("", "optical frame of the camera; '' = the image header's frame_id"),
    "use_compressed": (False, "subscribe to image/compressed (CompressedImage) instead of image"),
    "odom_source": ("odom", "odom = nav_msgs/Odometry on `odom`; tf = the odom_frame->base_frame "
                            "transform on /tf"),
    "heading_source": ("auto", "absolute ENU heading of base_frame: imu = yaw of `imu` (INS / "
                               "compass); odom = odometry yaw + odom_yaw_offset_rad (odometry "
                               "aligned with ENU); auto = imu when an IMU heading is near the "
                               "image stamp, else odom"),
    "odom_yaw_offset_rad": (0.0, "ENU yaw of the odometry frame's x axis [rad] (used by "
                                 "heading_source odom/auto without IMU; an initialpose yaw "
                                 "replaces it)"),
    "imu_tolerance_s": (0.2, "largest gap between an image and the IMU heading used [s]"),
    "use_gps_prior": (True, "use `gps/fix` as a coarse prior while there is no belief"),
    "gps_prior_sigma_m": (0.0, "sigma of the GPS prior [m]; 0 = from the NavSatFix covariance"),
    "camera_info_tolerance_s": (0.05, "largest image/camera_info stamp difference [s]; "
                                      "negative = use the newest camera_info whatever its stamp"),
    "odom_max_extrapolation_s": (0.1, "largest gap between an image and the nearest odometry "
                                      "when the image lies outside the buffered span [s]"),
    "odom_wait_s": (0.3, "how long the worker waits for odometry newer than an image, and for "
                         "its camera_info [s]"),
    "odom_buffer_s": (10.0, "odometry history kept [s]"),
    "queue_size": (1, "images waiting for the worker (latest wins; older ones are dropped)"),
    "use_tf_static_extrinsics": (True, "read base_frame->camera optical frame from /tf_static "
                                       "when present"),
    "camera_extrinsics_xyz_rpy": ([0.0, 0.0, 1.65, 0.0, 0.0, 0.0],
                                  "fallback camera mount in base_frame: x, y, z [m], roll, pitch, "
                                  "yaw [rad]; all angles 0 = looking along +x (optical z "
                                  "forward, x right, y down)"),
    "camera_height_m": (0.0, "camera height above the ground [m]; 0 = the model's default"),
    "use_database_datum": (True, "map datum = the tile database's datum; false = the three "
                                 "map_datum_* parameters"),
    "map_datum_latitude_deg": (0.0, "WGS84 latitude of the map origin [deg]"),
    "map_datum_longitude_deg": (0.0, "WGS84 longitude of the map origin [deg]"),
    "map_datum_altitude_m": (0.0, "ellipsoidal altitude of the map origin [m]"),
    "publish_tf": (True, "publish map->odom on /tf (REP-105)"),
    "tf_publish_low_confidence": (False, "also update map->odom from LOW_CONFIDENCE fixes"),
    "transform_tolerance": (0.1, "map->odom is stamped this far in the future [s]"),
    "tf_publish_rate_hz": (10.0, "re-send rate of the last map->odom [Hz]; 0 = only on updates"),
    "publish_heatmap": (True, "publish ~/heatmap"),
    "heatmap_source": ("score_map", "score_map (best tile's score map) | posterior (filter grid)"),
    "heatmap_colour": (True, "rgb8 false colour (true) or mono8 (false)"),
    "diagnostics_rate_hz": (1.0, "rate of /diagnostics [Hz]"),
}
_LOCALIZER_SKIP = {"map_datum_lat_deg", "map_datum_lon_deg", "map_datum_alt_m", "camera_height_m",
                   "odom_yaw_offset_rad"}

# parameters with a fixed set of values, and numeric ones with their lower bound
_CHOICES = {"odom_source": ("odom", "tf"), "heading_source": ("auto", "imu", "odom"),
            "heatmap_source": ("score_map", "posterior")}
_AT_LEAST = {"imu_tolerance_s": 0.0, "gps_prior_sigma_m": 0.0, "odom_max_extrapolation_s": 0.0,
             "odom_wait_s": 0.0, "odom_buffer_s": 0.1, "queue_size": 1, "camera_height_m": 0.0,
             "transform_tolerance": 0.0, "tf_publish_rate_hz": 0.0, "diagnostics_rate_hz": 0.0,
             "torch_threads": 0}


def node_parameter_errors(get) -> list:
    """Problems of the node's own parameters (``get(name)`` -> value); empty when valid.

    Choices are matched exactly (a typo is an error, not the other branch), numbers must be
    finite and not below their bound, the extrinsics six finite numbers, the datum in range.
    """
    errors = []
    for name, allowed in _CHOICES.items():
        if str(get(name)) not in allowed:
            errors.append(f"parameter {name} must be one of {', '.join(allowed)}, got "
                          f"{get(name)!r}")
    for name, low in _AT_LEAST.items():
        v = float(get(name))
        if not math.isfinite(v) or v < low:
            errors.append(f"parameter {name} must be finite and >= {low}, got {v}")
    ext = list(get("camera_extrinsics_xyz_rpy"))
    if len(ext) != 6 or not all(math.isfinite(float(v)) for v in ext):
        errors.append("parameter camera_extrinsics_xyz_rpy must be 6 finite numbers "
                      f"(x, y, z [m], roll, pitch, yaw [rad]), got {ext}")
    if not bool(get("use_database_datum")):
        lat, lon = float(get("map_datum_latitude_deg")), float(get("map_datum_longitude_deg"))
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            errors.append(f"map datum ({lat}, {lon}) deg is outside WGS84 range")
    return errors


def _localizer_param_defaults() -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(LocalizerConfig):
        if f.name in _LOCALIZER_SKIP:
            continue
        out["localizer." + f.name] = f.default
    return out


class _Rate:
    """Arrival rate over a sliding window (monotonic clock)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._t: deque[float] = deque(maxlen=1000)
        self.count = 0

    def tick(self) -> None:
        self._t.append(time.monotonic())
        self.count += 1

    def hz(self) -> float:
        now = time.monotonic()
        while self._t and now - self._t[0] > self.window_s:
            self._t.popleft()
        if len(self._t) < 2:
            return 0.0
        return (len(self._t) - 1) / max(self._t[-1] - self._t[0], 1e-6)


def _package_roots() -> list[Path]:
    roots = [Path(__file__).resolve().parents[2]]  # source checkout (editable install)
    try:
        from ament_index_python.packages import get_package_share_directory

        roots.append(Path(get_package_share_directory("cvl_ros")))
    except Exception:
        pass
    roots.append(Path(sys.prefix) / "share" / "cvl_ros")
    return roots


def resolve_path(p: str) -> Path | None:
    """A path as given if it exists, else relative to the package roots; None if nowhere."""
    if not p:
        return None
    cand = Path(os.path.expanduser(p))
    if cand.exists() or cand.is_absolute():
        return cand if cand.exists() else None
    for root in _package_roots():
        if (root / cand).exists():
            return root / cand
    return None


def find_checkpoint(p: str) -> Path | None:
    """Resolve a checkpoint file (a folder: its model.safetensors or single *.safetensors)."""
    path = resolve_path(p or DEFAULT_CHECKPOINT)
    if path is None:
        return None
    if path.is_dir():
        for name in ("model.safetensors", "checkpoint.safetensors", "best.safetensors"):
            if (path / name).is_file():
                return path / name
        files = sorted(path.glob("*.safetensors"))
        return files[0] if files else None
    return path


class LocalizerNode(LifecycleNode):
    """The ``cvl_localizer`` lifecycle node (see the module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        for name, (default, desc) in PARAMS.items():
            self._declare(name, default, desc)
        for name, default in _localizer_param_defaults().items():
            self._declare(name, default, "Localizer tuning, see LocalizerConfig")
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = None
        self._tf_timer = None
        self._subs: list = []
        self._pubs: dict = {}
        self._srv = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._cv = threading.Condition()
        self._queue: deque = deque(maxlen=1)
        self.localizer: Localizer | None = None
        self.missing: list[str] = []
        self._reset_state()
        self._lifecycle_state = "unconfigured"
        self._start_diag_timer()

    # ------------------------------------------------------------------ helpers
    def _declare(self, name, default, desc):
        from rcl_interfaces.msg import ParameterDescriptor

        if default is None:
            default = 0.0
        self.declare_parameter(name, default, ParameterDescriptor(description=desc))

    def p(self, name: str):
        """A parameter's value."""
        return self.get_parameter(name).value

    def _reset_state(self) -> None:
        self.rates = {k: _Rate() for k in ("image", "camera_info", "odom", "imu", "gps", "output")}
        self.counters = {"dropped_images": 0, "processed_images": 0, "estimates": 0,
                         "input_errors": 0, "resets": 0, "odom_time_jumps": 0,
                         "frames_handled": 0, "imu_without_orientation": 0}
        self.last_error = ""
        self.extrinsics_source = ""
        self.last_error_time = 0.0
        self.last_estimate = None
        self.last_latency_s = float("nan")
        self.last_status = Status.NO_FIX
        self.last_reset_reason = ""
        self._tf_last: tuple[np.ndarray, int] | None = None
        self.odom_buf = PoseBuffer(10.0)
        self.heading_buf = ScalarBuffer()
        self.info_pairer = StampPairer()
        self._static_tf: dict[str, tuple[str, np.ndarray]] = {}
        self._last_image_stamp_ns: int | None = None

    def _start_diag_timer(self) -> None:
        rate = float(self.p("diagnostics_rate_hz"))
        if rate > 0 and self._diag_timer is None:
            self._diag_timer = self.create_timer(1.0 / rate, self._guard(self._publish_diagnostics))

    def _subscribe(self, msg_type, topic: str, callback, qos) -> None:
        """Create a subscription whose callback is guarded (see ``_guard``)."""
        self._subs.append(self.create_subscription(msg_type, topic, self._guard(callback), qos))

    def _guard(self, callback):
        """Wrap a subscription/timer callback: an unexpected exception becomes a diagnostic
        (``last_input_error``) instead of escaping into the executor and ending the node."""  # noqa: D205, D209

        def guarded(*args):
            try:
                return callback(*args)
            except Exception as exc:
                self.input_error(f"{callback.__name__} failed: {type(exc).__name__}: {exc}")
                self.get_logger().debug(traceback.format_exc())
                return None

        return guarded

    def input_error(self, what: str) -> None:
        """Record a rejected input (shown in /diagnostics; logged, throttled)."""
        self.counters["input_errors"] += 1
        self.last_error = what
        self.last_error_time = time.monotonic()
        self.get_logger().warning(what, throttle_duration_sec=2.0)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load the model and the tile database; missing ones are reported, not fatal."""
        self._reset_state()
        self.localizer = None
        self.missing = node_parameter_errors(self.p)
        if self.missing:  # not localizing, reported in diagnostics; the node stays up
            for m in self.missing:
                self.get_logger().error(f"not localizing: {m}")
            self._lifecycle_state = "inactive"
            return TransitionCallbackReturn.SUCCESS
        self.odom_buf = PoseBuffer(float(self.p("odom_buffer_s")))
        if int(self.p("torch_threads")) > 0:
            import torch

            torch.set_num_threads(int(self.p("torch_threads")))
        model = db = None
        ckpt = find_checkpoint(self.p("checkpoint_path"))
        try:
            if ckpt is None:
                raise FileNotFoundError(
                    f"model checkpoint '{self.p('checkpoint_path') or DEFAULT_CHECKPOINT}' not "
                    f"found; {MODEL_HINT}")
            from cvl_ros.model.cvlnet import load_checkpoint

            model, _ = load_checkpoint(ckpt)
        except Exception as exc:
            self.missing.append(f"model: {exc}")
        db_param = str(self.p("database_path"))
        db_path = resolve_path(db_param)
        try:
            if db_path is None:
                raise FileNotFoundError(f"tile database '{db_param}' not found; {BUILD_DB_HINT}")
            from cvl_ros.database import TileDatabase

            db = TileDatabase.open(db_path, expected_model_hash=model.model_hash()
                                   if model is not None else None)
        except Exception as exc:
            msg = str(exc)
            if "cvl-build-db" not in msg and "make demo" not in msg:
                msg += f"; {BUILD_DB_HINT}"
            self.missing.append(f"database: {msg}")
        if model is not None and db is not None:
            try:
                self.localizer = Localizer(model, db, self._localizer_config(),
                                           device=str(self.p("device")))
                if self.localizer.device_warning:
                    self.get_logger().warning(self.localizer.device_warning)
            except Exception as exc:
                self.missing.append(f"localizer: {exc}")
                self.localizer = None
        for m in self.missing:
            self.get_logger().error(f"not localizing: {m}")
        if self.localizer is not None and bool(self.p("use_database_datum")):
            # show the datum in use through the (otherwise ignored) map_datum_* parameters
            from rclpy.parameter import Parameter

            d = self.localizer.datum
            self.set_parameters([Parameter("map_datum_latitude_deg", value=float(d.lat_deg)),
                                 Parameter("map_datum_longitude_deg", value=float(d.lon_deg)),
                                 Parameter("map_datum_altitude_m", value=float(d.alt_m))])
        if self.localizer is not None:
            self.get_logger().info(
                f"configured: model {ckpt}, database {db_path} ({len(db)} tiles), device "
                f"{self.localizer.device}, map datum {self.localizer.datum}")
        self._lifecycle_state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def _localizer_config(self) -> LocalizerConfig:
        kw = {}
        for f in dataclasses.fields(LocalizerConfig):
            if f.name in _LOCALIZER_SKIP:
                continue
            v = self.p("localizer." + f.name)
            kw[f.name] = type(f.default)(v) if f.default is not None else v
        h = float(self.p("camera_height_m"))
        kw["camera_height_m"] = h if h > 0 else None
        kw["odom_yaw_offset_rad"] = float(self.p("odom_yaw_offset_rad"))
        if not bool(self.p("use_database_datum")):
            kw["map_datum_lat_deg"] = float(self.p("map_datum_latitude_deg"))
            kw["map_datum_lon_deg"] = float(self.p("map_datum_longitude_deg"))
            kw["map_datum_alt_m"] = float(self.p("map_datum_altitude_m"))
        return LocalizerConfig(**kw)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Create publishers/subscriptions/service/timers and start the worker."""
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             history=HistoryPolicy.KEEP_LAST)
        from cvl_ros.msg import GeoPoseEstimate

        self._pubs = {
            "geo_pose": self.create_publisher(GeoPoseEstimate, "~/geo_pose", latched),
            "fix": self.create_publisher(NavSatFix, "~/fix", 10),
            "pose": self.create_publisher(PoseWithCovarianceStamped, "~/pose", 10),
            "heatmap": self.create_publisher(Image, "~/heatmap", 1),
        }
        if bool(self.p("publish_tf")):
            try:
                from tf2_msgs.msg import TFMessage

                tf_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                    durability=DurabilityPolicy.VOLATILE)
                self._pubs["tf"] = self.create_publisher(TFMessage, "/tf", tf_qos)
            except ImportError:
                self.missing.append("tf2_msgs is not installed: map->odom is not published "
                                    "(run `make setup`, which builds it)")
        sensor = qos_profile_sensor_data
        if bool(self.p("use_compressed")):
            self._subscribe(CompressedImage, "image/compressed", self._on_image, sensor)
        else:
            self._subscribe(Image, "image", self._on_image, sensor)
        self._subscribe(CameraInfo, "camera_info", self._on_info, sensor)
        src = str(self.p("odom_source"))
        if src == "tf" or bool(self.p("use_tf_static_extrinsics")):
            try:
                from tf2_msgs.msg import TFMessage

                if src == "tf":
                    self._subscribe(
                        TFMessage, "/tf", self._on_tf,
                        QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
                if bool(self.p("use_tf_static_extrinsics")):
                    # transient-local gets the latched statics; a second, volatile subscription
                    # also hears replayers/converters that lost the transient-local QoS
                    self._subscribe(TFMessage, "/tf_static", self._on_tf_static, latched)
                    self._subscribe(
                        TFMessage, "/tf_static", self._on_tf_static,
                        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                   durability=DurabilityPolicy.VOLATILE))
            except ImportError:
                self.missing.append("tf2_msgs is not installed: /tf input unavailable")
        if src != "tf":
            self._subscribe(Odometry, "odom", self._on_odom, sensor)
        if str(self.p("heading_source")) in ("imu", "auto"):
            self._subscribe(Imu, "imu", self._on_imu, sensor)
        if bool(self.p("use_gps_prior")):
            self._subscribe(NavSatFix, "gps/fix", self._on_gps, sensor)
        self._subscribe(PoseWithCovarianceStamped, "initialpose", self._on_initialpose, 10)
        self._srv = self.create_service(Trigger, "~/relocalize", self._on_relocalize)
        rate = float(self.p("tf_publish_rate_hz"))
        if rate > 0 and "tf" in self._pubs:
            self._tf_timer = self.create_timer(1.0 / rate, self._guard(self._republish_tf))
        self._queue = deque(maxlen=max(1, int(self.p("queue_size"))))
        # a fresh stop event per activation: a previous worker still finishing a slow update
        # (teardown waits 10 s at most) keeps its own, set, event and ends after that update
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, args=(self._stop,),
                                        name="cvl_localizer_worker", daemon=True)
        self._worker.start()
        self._pubs["geo_pose"].publish(convert.no_fix_geopose(
            str(self.p("map_frame")), self.get_clock().now().to_msg(),
            self.localizer.datum if self.localizer else None))
        self._lifecycle_state = "active"
        return super().on_activate(state)

    def _teardown_active(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            if self._worker.is_alive():
                self.get_logger().warning("the worker is still finishing an update; it stops "
                                          "after it (its outputs are dropped)")
            self._worker = None
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        for p in self._pubs.values():
            self.destroy_publisher(p)
        self._pubs = {}
        if self._srv is not None:
            self.destroy_service(self._srv)
            self._srv = None
        if self._tf_timer is not None:
            self.destroy_timer(self._tf_timer)
            self._tf_timer = None
        self._queue.clear()

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Stop the worker; destroy subscriptions, publishers, service and the TF timer."""
        self._teardown_active()
        self._lifecycle_state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Release the model and the database."""
        self._teardown_active()
        self.localizer = None
        self.missing = []
        self._reset_state()
        self._lifecycle_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """Release everything."""
        self._teardown_active()
        self.localizer = None
        self._lifecycle_state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        """Release everything and go back to unconfigured."""
        self._teardown_active()
        self.localizer = None
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ callbacks (cheap)
    def _on_image(self, msg) -> None:
        self.rates["image"].tick()
        with self._cv:
            if len(self._queue) == self._queue.maxlen:
                self.counters["dropped_images"] += 1
            self._queue.append((msg, time.monotonic()))
            self._cv.notify()

    def _on_info(self, msg: CameraInfo) -> None:
        self.rates["camera_info"].tick()
        try:
            cam = convert.camera_info_to_pinhole(msg)
        except Exception as exc:
            self.input_error(f"camera_info rejected: {exc}")
            return
        self.info_pairer.add(convert.stamp_to_ns(msg.header.stamp), cam)

    def _add_odom(self, stamp_ns: int, T: np.ndarray) -> None:
        try:
            self.odom_buf.add(stamp_ns, T)
        except TimeWentBackwards as exc:
            # the buffer restarted with this pose; the worker resets the localizer when the
            # first image of the new run arrives (one place, so no reset races a frame)
            self.counters["odom_time_jumps"] += 1
            self.get_logger().warning(f"odometry: {exc}")
            self._tf_last = None

    def _time_reset(self, reason: str, stamp_ns: int | None = None) -> None:
        """Time went backwards: forget the future of the previous run and reset the localizer."""
        self.counters["resets"] += 1
        self.last_reset_reason = reason
        self.get_logger().warning(f"resetting: {reason}")
        if stamp_ns is not None:
            self.odom_buf.drop_after(stamp_ns)
            self.heading_buf.drop_after(stamp_ns)
        self._tf_last = None
        if self.localizer is not None:
            self.localizer.reset(reason)

    def _on_odom(self, msg: Odometry) -> None:
        self.rates["odom"].tick()
        T = convert.odometry_to_matrix(msg)
        if not np.all(np.isfinite(T)):
            self.input_error("odometry contains NaN/Inf (or a zero quaternion); frames that "
                             "need it are rejected")
        self._add_odom(convert.stamp_to_ns(msg.header.stamp), T)

    def _on_tf(self, msg) -> None:
        odom, base = str(self.p("odom_frame")), str(self.p("base_frame"))
        for t in msg.transforms:
            if t.header.frame_id.lstrip("/") == odom and t.child_frame_id.lstrip("/") == base:
                self.rates["odom"].tick()
                try:
                    T = convert.transform_to_matrix(t.transform)
                except ValueError as exc:
                    self.input_error(f"/tf {odom}->{base} rejected: {exc}")
                    continue
                self._add_odom(convert.stamp_to_ns(t.header.stamp), T)

    def _on_tf_static(self, msg) -> None:
        for t in msg.transforms:
            try:
                self._static_tf[t.child_frame_id.lstrip("/")] = (
                    t.header.frame_id.lstrip("/"), convert.transform_to_matrix(t.transform))
            except ValueError as exc:
                self.input_error(f"/tf_static {t.child_frame_id} rejected: {exc}")

    def _on_imu(self, msg: Imu) -> None:
        self.rates["imu"].tick()
        if msg.orientation_covariance[0] == -1.0:
            # REP-145: this IMU gives no orientation; it is no absolute heading source
            self.counters["imu_without_orientation"] += 1
            if str(self.p("heading_source")) == "imu":
                self.input_error("imu has no orientation (orientation_covariance[0] = -1) but "
                                 "heading_source is imu")
            return
        try:
            yaw = convert.yaw_from_quat(msg.orientation)
        except ValueError as exc:
            self.input_error(f"imu orientation rejected: {exc}")
            return
        self.heading_buf.add(convert.stamp_to_ns(msg.header.stamp), yaw)

    def _on_gps(self, msg: NavSatFix) -> None:
        self.rates["gps"].tick()
        loc = self.localizer
        if loc is None or msg.status.status < 0:
            return
        sigma = float(self.p("gps_prior_sigma_m"))
        if sigma <= 0:
            c = np.asarray(msg.position_covariance, dtype=np.float64)
            sigma = math.sqrt(max(c[0], c[4], 0.0)) if msg.position_covariance_type else 10.0
        if loc.set_gps_prior(float(msg.latitude), float(msg.longitude), sigma):
            self.get_logger().info(f"GPS prior used: {msg.latitude:.7f}, {msg.longitude:.7f} "
                                   f"(sigma {sigma:.1f} m)")

    def _on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        loc = self.localizer
        if loc is None:
            self.input_error("initialpose ignored: the localizer is not configured")
            return
        if msg.header.frame_id and msg.header.frame_id.lstrip("/") != str(self.p("map_frame")):
            self.input_error(f"initialpose must be in '{self.p('map_frame')}', got "
                             f"'{msg.header.frame_id}'")
            return
        p = msg.pose.pose
        try:
            yaw = convert.yaw_from_quat(p.orientation)
        except ValueError:
            yaw = None
        c = np.asarray(msg.pose.covariance, dtype=np.float64)
        var = max(float(c[0]), float(c[7])) if np.all(np.isfinite(c[[0, 7]])) else math.nan
        if not math.isfinite(var):
            self.input_error("initialpose rejected: its x/y covariance is not finite")
            return
        sigma = math.sqrt(max(var, 1.0))
        try:
            now = loc.set_initial_pose(float(p.position.x), float(p.position.y), yaw, sigma)
        except ValueError as exc:
            self.input_error(f"initialpose rejected: {exc}")
            return
        self.get_logger().info(f"initial pose set: ({p.position.x:.1f}, {p.position.y:.1f}) "
                               f"sigma {sigma:.1f} m" + ("" if now else
                                                         " (applied with the next frame)"))

    def _on_relocalize(self, request, response):
        if self.localizer is None:
            response.success = False
            response.message = "not localizing: " + "; ".join(self.missing)
            return response
        self.localizer.relocalize()  # never waits on a running update (deferred then)
        response.success = True
        response.message = "global relocalisation starts with the next keyframe"
        return response

    # ------------------------------------------------------------------ worker
    def _work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._cv:
                while not self._queue and not stop.is_set():
                    self._cv.wait(0.2)
                if stop.is_set():
                    return
                msg, recv_t = self._queue.popleft()
            try:
                self._process(msg, recv_t)
            except Exception as exc:
                self.input_error(f"frame failed: {type(exc).__name__}: {exc}")
                self.get_logger().debug(traceback.format_exc())
            finally:
                self.counters["frames_handled"] += 1

    def _camera_extrinsics(self, camera_frame: str) -> np.ndarray:
        """base_frame <- camera optical frame: from /tf_static when a chain reaches base_frame,
        else the ``camera_extrinsics_xyz_rpy`` parameter (``extrinsics_source`` in
        /diagnostics says which; switching source is logged)."""  # noqa: D205, D209
        base = str(self.p("base_frame"))
        use_tf = bool(self.p("use_tf_static_extrinsics"))
        if use_tf and camera_frame:
            T = np.eye(4)
            frame, seen = camera_frame, set()
            while frame in self._static_tf and frame not in seen:
                seen.add(frame)
                parent, Tpc = self._static_tf[frame]
                T = Tpc @ T
                if parent == base:
                    self._note_extrinsics_source(f"/tf_static {base}->{camera_frame}")
                    return T
                frame = parent
        from cvl_ros.camera import make_body_from_camera

        self._note_extrinsics_source(
            "parameter camera_extrinsics_xyz_rpy" + (
                f" (no /tf_static chain {base}->{camera_frame or '?'} yet)" if use_tf else ""))
        x, y, z, r, pch, yw = (float(v) for v in self.p("camera_extrinsics_xyz_rpy"))
        return make_body_from_camera(x, y, z, r, pch, yw)

    def _note_extrinsics_source(self, source: str) -> None:
        if source != self.extrinsics_source:
            if "no /tf_static" in source:  # rclpy: one severity per logging call site
                self.get_logger().warning(f"camera extrinsics from {source}")
            else:
                self.get_logger().info(f"camera extrinsics from {source}")
            self.extrinsics_source = source

    def _process(self, msg, recv_t: float) -> None:
        stamp_ns = convert.stamp_to_ns(msg.header.stamp)
        stamp = msg.header.stamp
        map_frame = str(self.p("map_frame"))
        if self._last_image_stamp_ns is not None and stamp_ns < self._last_image_stamp_ns:
            self._time_reset(f"image stamps went backwards by "
                             f"{(self._last_image_stamp_ns - stamp_ns) * 1e-9:.3f} s", stamp_ns)
        self._last_image_stamp_ns = stamp_ns
        loc = self.localizer
        if loc is None:
            self._pubs["geo_pose"].publish(convert.no_fix_geopose(map_frame, stamp))
            return
        try:
            rgb = (convert.compressed_to_rgb(msg) if isinstance(msg, CompressedImage)
                   else convert.image_to_rgb(msg))
        except convert.ImageConversionError as exc:
            self.input_error(f"image rejected: {exc}")
            return
        cam = self._camera_at(stamp_ns)
        if cam is None:
            self.input_error("image dropped: no camera_info with a matching stamp "
                             f"(have {len(self.info_pairer)} camera_info; tolerance "
                             f"{self.p('camera_info_tolerance_s')} s)")
            return
        T_ob = self._odom_at(stamp_ns)
        if T_ob is None:
            return
        heading = self._heading_at(stamp_ns, T_ob)
        if str(self.p("heading_source")) == "imu" and heading is None:
            self.input_error("image dropped: no IMU heading near its stamp")
            return
        camera_frame = str(self.p("camera_frame")) or msg.header.frame_id.lstrip("/")
        frame = Frame(stamp_ns, rgb, cam, T_ob, heading, self._camera_extrinsics(camera_frame))
        try:
            est = loc.add_frame(frame)
        except InvalidFrameError as exc:
            self.input_error(f"frame rejected: {exc}")
            return
        self.counters["processed_images"] += 1
        if est is None:
            return
        if est.reset_reason:
            self.counters["resets"] += 1
            self.last_reset_reason = est.reset_reason
        latency = time.monotonic() - recv_t
        self._publish_estimate(est, stamp, latency)

    def _camera_at(self, stamp_ns: int):
        """The camera_info paired with the image (waits briefly: it may arrive just after)."""
        tol = float(self.p("camera_info_tolerance_s"))
        deadline = time.monotonic() + float(self.p("odom_wait_s"))
        while True:
            cam = self.info_pairer.match(stamp_ns, tol)
            if cam is not None or self._stop.is_set() or time.monotonic() >= deadline:
                return cam
            time.sleep(0.005)

    def _odom_at(self, stamp_ns: int) -> np.ndarray | None:
        """Odometry interpolated at the image stamp (waits briefly for newer odometry)."""
        deadline = time.monotonic() + float(self.p("odom_wait_s"))
        while not self._stop.is_set() and time.monotonic() < deadline:
            latest = self.odom_buf.latest_stamp_ns
            if latest is not None and latest >= stamp_ns:
                break
            time.sleep(0.005)
        try:
            return self.odom_buf.lookup(stamp_ns, float(self.p("odom_max_extrapolation_s")))
        except LookupError as exc:
            self.input_error(f"image dropped: no odometry at its stamp ({exc})")
            return None

    def _heading_at(self, stamp_ns: int, T_ob: np.ndarray) -> float | None:
        """Absolute ENU heading from the IMU, or None.

        With None the localizer uses the odometry yaw plus ``odom_yaw_offset_rad`` (or the yaw of
        the last initial pose).
        """
        if str(self.p("heading_source")) in ("imu", "auto"):
            return self.heading_buf.lookup(stamp_ns, float(self.p("imu_tolerance_s")))
        return None

    # ------------------------------------------------------------------ outputs
    def _publish_estimate(self, est, stamp, latency_s: float) -> None:
        pubs = self._pubs
        if not pubs or threading.current_thread() is not self._worker:
            return  # inactive, or a previous activation's worker finishing late: dropped
        map_frame, base = str(self.p("map_frame")), str(self.p("base_frame"))
        self.last_estimate = est
        self.last_status = est.status
        self.last_latency_s = latency_s
        self.counters["estimates"] += 1
        self.rates["output"].tick()
        pubs["geo_pose"].publish(convert.estimate_to_geopose(est, map_frame, stamp, latency_s))
        if est.has_fix:
            pubs["fix"].publish(convert.estimate_to_navsatfix(est, base, stamp))
            pubs["pose"].publish(convert.estimate_to_pose(est, map_frame, stamp))
        publish_tf = est.status == Status.TRACKING or (
            est.status == Status.LOW_CONFIDENCE and bool(self.p("tf_publish_low_confidence")))
        if publish_tf and "tf" in pubs and est.T_map_odom is not None:
            self._tf_last = (est.T_map_odom, est.stamp_ns)
            self._send_tf(est.stamp_ns)
        if bool(self.p("publish_heatmap")):
            src = est.posterior if str(self.p("heatmap_source")) == "posterior" else est.score_map
            if src is not None:
                pubs["heatmap"].publish(convert.heatmap_to_image(
                    src, stamp, map_frame, colour=bool(self.p("heatmap_colour"))))

    def _send_tf(self, stamp_ns: int) -> None:
        from tf2_msgs.msg import TFMessage

        pub = self._pubs.get("tf")
        if pub is None or self._tf_last is None:
            return
        T, _ = self._tf_last
        tol_ns = int(float(self.p("transform_tolerance")) * 1e9)
        t = convert.matrix_to_transform_stamped(
            T, str(self.p("map_frame")), str(self.p("odom_frame")),
            convert.ns_to_stamp(stamp_ns + tol_ns))
        pub.publish(TFMessage(transforms=[t]))

    def _republish_tf(self) -> None:
        if self._tf_last is None:
            return
        now_ns = self.get_clock().now().nanoseconds
        est_ns = self._tf_last[1]
        if now_ns and now_ns < est_ns - int(5e9):  # the clock jumped back (looping bag)
            return
        self._send_tf(max(now_ns, est_ns))

    def _publish_diagnostics(self) -> None:
        est = self.last_estimate
        values = {
            "lifecycle_state": self._lifecycle_state,
            "localization_state": _STATUS_NAMES.get(int(self.last_status), "?"),
            "confidence": f"{est.confidence:.3f}" if est else "nan",
            "latency_s": f"{self.last_latency_s:.3f}",
            "window_fill": (f"{self.localizer.window_fill}/{self.localizer.config.window_length}"
                            if self.localizer else "0/0"),
            "tiles_searched": str(est.tiles_searched) if est else "0",
            "frame_states_computed": (str(self.localizer.state_refreshes)
                                      if self.localizer else "0"),
            "device": self.localizer.device if self.localizer else "",
            "last_input_error": self.last_error,
            "last_reset_reason": self.last_reset_reason,
            "missing_resources": " | ".join(self.missing),
            "extrinsics_source": self.extrinsics_source,
        }
        for k, r in self.rates.items():
            values[f"{k}_rate_hz"] = f"{r.hz():.2f}"
        for k, v in self.counters.items():
            values[k] = str(v)
        recent_error = self.last_error and time.monotonic() - self.last_error_time < 5.0
        if self.missing and self.localizer is None:
            level, text = DiagnosticStatus.ERROR, "not localizing: " + "; ".join(self.missing)
        elif self._lifecycle_state != "active":
            level, text = DiagnosticStatus.WARN, f"node is {self._lifecycle_state}"
        elif recent_error:
            level, text = DiagnosticStatus.WARN, self.last_error
        elif self.last_status == Status.TRACKING:
            level, text = DiagnosticStatus.OK, "tracking"
        else:
            level = DiagnosticStatus.WARN if self.rates["image"].hz() == 0 else DiagnosticStatus.OK
            text = _STATUS_NAMES.get(int(self.last_status), "?").lower().replace("_", " ")
            if self.rates["image"].hz() == 0:
                text = f"{text}; no images"
        st = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: localization",
                              message=text, hardware_id="cvl_localizer",
                              values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)

    def destroy_node(self) -> None:
        """Stop the worker before the node goes."""
        self._teardown_active()
        super().destroy_node()


def main(args=None) -> int:
    """Entry point of ``cvl-localize`` (``--ros-args --params-file config/localize.yaml``)."""
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=args)
    node = LocalizerNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    if bool(node.p("autostart")):
        node.trigger_configure()
        node.trigger_activate()
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        try:
            executor.remove_node(node)
            node.destroy_node()
        except Exception:
            pass
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
