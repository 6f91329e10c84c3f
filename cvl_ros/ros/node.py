"""``cvl_localizer``: the CVLNet cross-view localization lifecycle node (console script
``cvl-localize``).

A thin rclpy adapter over :class:`cvl_ros.localizer.Localizer`: it converts messages, time,
parameters and TF, and nothing else. Callbacks only convert/buffer and hand the newest image to
a worker thread through a bounded latest-wins queue; the worker pairs it with camera_info and the
odometry interpolated at its stamp, runs the localizer and publishes. See
docs/node.md for topics, frames, parameters and diagnostics.

Longer than 700 lines: the ROS side of one node (lifecycle with nav2 semantics and the configure
retry, subscriptions with tf2's QoS, the worker, publishing with monotonic map->odom stamps,
runtime parameter checks and /diagnostics); the parameter table is cvl_ros/params.py, the frame
assembly cvl_ros/localizer/frontend.py, resource lookup cvl_ros/resources.py.
"""  # noqa: D205

from __future__ import annotations

import math
import sys
import threading
import time
import traceback
from collections import deque

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

from cvl_ros import params as P
from cvl_ros.localizer import InvalidFrameError, Localizer, Status
from cvl_ros.localizer.frontend import FrameAssembler, GpsPrior, Rejection
from cvl_ros.resources import BUILD_DB_HINT, resolve_path
from cvl_ros.ros import convert

NODE_NAME = "cvl_localizer"
_STATUS_NAMES = {int(s): s.name for s in Status}
#: With ``autostart`` (cvl-localize), a failed configure is retried this often [s], so a model or
#: database that appears later (``make demo`` run after the node started) is picked up.
AUTOSTART_RETRY_S = 5.0
#: tf2's ``StaticListenerQoS``: every static broadcaster's transforms reach a late subscriber.
TF_STATIC_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL,
                           history=HistoryPolicy.KEEP_LAST)

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


class LocalizerNode(LifecycleNode):
    """The ``cvl_localizer`` lifecycle node (see the module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        # dynamic typing: ROS would end the process on a YAML integer given for a float
        # (InvalidParameterTypeException); cvl_ros.params types and checks every value instead,
        # at configure and on every runtime change (_on_set_parameters)
        self._values: dict[str, object] = {}
        for prm in P.PARAMS.values():
            self._declare(prm.name, prm.default, prm.description)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = None
        self._tf_timer = None
        self._retry_timer = None
        self._retry_s = AUTOSTART_RETRY_S
        self._last_failure: list[str] = []
        # map->odom: the worker (new estimates) and the re-send timer both publish it; the lock
        # keeps "stamps never decrease" true across the two threads
        self._tf_lock = threading.Lock()
        # time resets so far: an estimate of a frame taken before the latest one (the previous
        # run of a looping bag, finishing late) must not seed the new run's map->odom
        self._tf_epoch = 0
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

        self.declare_parameter(name, default, ParameterDescriptor(description=desc,
                                                                  dynamic_typing=True))

    def p(self, name: str):
        """A parameter's value: typed and validated once configured, else as given."""
        if name in self._values:
            return self._values[name]
        return self.get_parameter(name).value

    def p_or_default(self, name: str):
        """A parameter's value, validated on its own; its default when it is invalid (for the
        few read before configure: ``autostart``, ``diagnostics_rate_hz``)."""  # noqa: D205, D209
        if name in self._values:
            return self._values[name]
        try:
            return P.validate({name: self.get_parameter(name).value})[name]
        except P.ParameterError:
            return P.PARAMS[name].default

    def _raw_values(self) -> dict[str, object]:
        return {name: self.get_parameter(name).value for name in P.PARAMS}

    def _on_set_parameters(self, changed):
        """Refuse a runtime change that the configure-time rules refuse, with the reason."""
        from rcl_interfaces.msg import SetParametersResult

        values = self._raw_values()
        values.update({prm.name: prm.value for prm in changed})
        try:
            validated = P.validate(values)
        except P.ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if self._values:  # configured: takes effect now where it is read per message
            self._values = validated
            self.assembler.config = P.frontend_config(validated)
        return SetParametersResult(successful=True)

    def _reset_state(self) -> None:
        self.rates = {k: _Rate() for k in ("image", "camera_info", "odom", "imu", "gps", "output")}
        self.counters = {"received_images": 0, "dropped_images": 0, "processed_images": 0,
                         "estimates": 0,
                         "input_errors": 0, "resets": 0, "odom_time_jumps": 0,
                         "frames_handled": 0}
        self.last_error = ""
        self.extrinsics_source = ""
        self.last_error_time = 0.0
        self.last_estimate = None
        self.last_latency_s = float("nan")
        self.last_status = Status.NO_FIX
        self.last_reset_reason = ""
        self._tf_last: tuple[np.ndarray, int] | None = None
        self._tf_sent_ns: int | None = None  # stamp of the last map->odom sent (never decreases)
        self.assembler = FrameAssembler(P.frontend_config(self._values) if self._values
                                        else P.frontend_config(P.defaults()))

    def _start_diag_timer(self) -> None:
        rate = float(self.p_or_default("diagnostics_rate_hz"))
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
    def _LifecycleNodeMixin__change_state(self, transition_id: int) -> TransitionCallbackReturn:
        """Every lifecycle transition (trigger_* and the change_state service) passes here.

        A transition that is not valid from the current state (e.g. activate while
        unconfigured) answers ERROR and leaves the state as it is, as rclpy >= 8 (Kilted) does;
        Jazzy's rclpy 7 raised RCLError out of the change_state service callback, which ended
        the node's executor.
        """
        from rclpy.impl.implementation_singleton import rclpy_implementation

        try:
            return super()._LifecycleNodeMixin__change_state(transition_id)
        except rclpy_implementation.RCLError as exc:
            self.get_logger().error(f"lifecycle transition {transition_id} refused: {exc}")
            return TransitionCallbackReturn.ERROR

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Validate the parameters, load the model and the tile database.

        FAILURE (the node stays unconfigured, as a nav2 lifecycle manager expects) when a
        parameter is invalid or the model, the database or the localizer cannot be made; the
        reasons are logged and shown in /diagnostics (``missing_resources``, ERROR).
        """
        self._values = {}
        self._reset_state()
        self.localizer = None
        self.missing = []
        try:
            self._configure()
        except Exception as exc:  # never an unexplained ERROR transition
            self.missing.append(f"configure failed: {type(exc).__name__}: {exc}")
            self.get_logger().debug(traceback.format_exc())
            self.localizer = None
        if self.localizer is None:
            self._values = {}
            if not self.missing:
                self.missing.append("configure failed")
            # a periodic retry repeats the same reasons: logged as errors when they change
            log = (self.get_logger().error if self.missing != self._last_failure
                   else self.get_logger().debug)
            for m in self.missing:
                log(f"not localizing: {m}")
            log("configure failed; the node stays unconfigured" + (
                f" (configure is retried every {self._retry_s:g} s)"
                if self._retry_timer is not None else ""))
            self._last_failure = list(self.missing)
            self._lifecycle_state = "unconfigured"
            return TransitionCallbackReturn.FAILURE
        self._last_failure = []
        self._lifecycle_state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        """The work of ``on_configure``: sets ``localizer``, or leaves it None with ``missing``."""
        try:
            self._values = P.validate(self._raw_values())
        except P.ParameterError as exc:
            self.missing = exc.errors
            return
        self._reset_state()  # the front end with the validated parameters
        if int(self.p("torch_threads")) > 0:
            import torch

            torch.set_num_threads(int(self.p("torch_threads")))
        model = db = calibration = None
        ckpt = db_path = None
        try:
            from cvl_ros.calibration import calibration_in_use, calibration_path
            from cvl_ros.model.cvlnet import load_checkpoint, resolve_checkpoint

            ckpt = resolve_checkpoint(self.p("checkpoint_path"))
            model, _ = load_checkpoint(ckpt)
            calibration = calibration_in_use(ckpt, model.model_hash(),
                                             self.p("localizer.score_temperature"))
        except Exception as exc:  # reported in diagnostics
            self.missing.append(f"model: {exc}")
            model = None
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
                self.localizer = Localizer(model, db,
                                           P.localizer_config(self._values, calibration),
                                           device=str(self.p("device")))
                if self.localizer.device_warning:
                    self.get_logger().warning(self.localizer.device_warning)
            except Exception as exc:
                self.missing.append(f"localizer: {exc}")
                self.localizer = None
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
                f"{self.localizer.device}, map datum {self.localizer.datum}, score temperature "
                f"{self.localizer.config.score_temperature:g} ("
                + ("parameter" if self.p("localizer.score_temperature") else
                   "fitted, " + str(calibration_path(ckpt)) if calibration else "uncalibrated")
                + ")")

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Create publishers/subscriptions/service/timers and start the worker.

        FAILURE (the node stays inactive) when configure left no localizer.
        """
        if self.localizer is None:
            if not self.missing:
                self.missing.append("not configured: no model/database loaded")
            self.get_logger().error("activate refused: not localizing: " + "; ".join(self.missing))
            return TransitionCallbackReturn.FAILURE
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
        try:  # the standard geo-pose (Autoware's geo_pose_projector, ...): fixes only
            from geographic_msgs.msg import GeoPoseWithCovarianceStamped

            self._pubs["geo_pose_std"] = self.create_publisher(
                GeoPoseWithCovarianceStamped, "~/geo_pose_std", 10)
        except ImportError:
            self.missing.append("geographic_msgs is not installed: ~/geo_pose_std is not "
                                "published (run `make setup`, which builds it)")
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
        # /tf_static: the camera extrinsics, and the IMU frame's rotation into base_frame
        want_static = (bool(self.p("use_tf_static_extrinsics"))
                       or str(self.p("heading_source")) in ("imu", "auto", "estimate"))
        if src == "tf" or want_static:
            try:
                from tf2_msgs.msg import TFMessage

                if src == "tf":
                    self._subscribe(
                        TFMessage, "/tf", self._on_tf,
                        QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
                if want_static:
                    # tf2's static listener QoS (depth 100, reliable, transient local): each
                    # static broadcaster latches its own message, and a late subscriber of
                    # depth 1 kept only one of them
                    self._subscribe(TFMessage, "/tf_static", self._on_tf_static, TF_STATIC_QOS)
                    # A volatile publisher (a replayer or relay that lost the transient-local
                    # QoS) is incompatible with the subscription above and is heard only by
                    # this one. It does no harm: a transient-local publisher reaches both, and
                    # a transform heard twice is stored twice under its child frame, unchanged.
                    self._subscribe(
                        TFMessage, "/tf_static", self._on_tf_static,
                        QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                   durability=DurabilityPolicy.VOLATILE))
            except ImportError:
                self.missing.append("tf2_msgs is not installed: /tf input unavailable")
        if src != "tf":
            self._subscribe(Odometry, "odom", self._on_odom, sensor)
        if str(self.p("heading_source")) in ("imu", "auto", "estimate"):
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
        self._values = {}
        self._lifecycle_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ autostart
    def start_autostart(self, retry_s: float = AUTOSTART_RETRY_S) -> bool:
        """Configure and activate now (``autostart``); when configure fails, stay unconfigured
        and retry every ``retry_s`` s (a timer) until it succeeds. Returns whether it is active.

        The retry stops once the node left ``unconfigured`` by any means (a lifecycle manager
        or ``ros2 lifecycle set`` included).
        """  # noqa: D205
        if self._retry_timer is None and self._lifecycle_state == "unconfigured":
            self._retry_s = float(retry_s)
            self._retry_timer = self.create_timer(retry_s, self._guard(self._autostart_tick))
        self._autostart_tick()
        return self._lifecycle_state == "active"

    def _autostart_tick(self) -> None:
        if self._lifecycle_state == "unconfigured":
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()
        if self._lifecycle_state != "unconfigured" and self._retry_timer is not None:
            self.destroy_timer(self._retry_timer)
            self._retry_timer = None

    # ------------------------------------------------------------------ callbacks (cheap)
    def _on_image(self, msg) -> None:
        self.rates["image"].tick()
        with self._cv:
            self.counters["received_images"] += 1
            if len(self._queue) == self._queue.maxlen:
                self.counters["dropped_images"] += 1
            self._queue.append((msg, time.monotonic()))
            self._cv.notify()

    def _on_info(self, msg: CameraInfo) -> None:
        self.rates["camera_info"].tick()
        self._rejected(self.assembler.add_camera_info(msg))

    def _rejected(self, r: Rejection | None) -> None:
        """Report a front-end rejection (odometry time jumps reset the TF correction)."""
        if r is None:
            return
        if r.time_jump:
            # the buffer restarted with this pose; the worker resets the localizer when the
            # first image of the new run arrives (one place, so no reset races a frame)
            self.counters["odom_time_jumps"] += 1
            self.get_logger().warning(r.message)
            self._forget_tf()
        else:
            self.input_error(r.message)

    def _time_reset(self, reason: str) -> None:
        """Time went backwards: the front end forgot the previous run's future; reset."""
        self.counters["resets"] += 1
        self.last_reset_reason = reason
        self.get_logger().warning(f"resetting: {reason}")
        self._forget_tf()
        if self.localizer is not None:
            self.localizer.reset(reason)

    def _on_odom(self, msg: Odometry) -> None:
        self.rates["odom"].tick()
        self._rejected(self.assembler.add_odometry(msg))

    def _on_tf(self, msg) -> None:
        n = len(self.assembler.odom)
        for r in self.assembler.add_tf(msg):
            self._rejected(r)
        if len(self.assembler.odom) != n:
            self.rates["odom"].tick()

    def _on_tf_static(self, msg) -> None:
        for r in self.assembler.add_tf_static(msg):
            self._rejected(r)

    def _on_imu(self, msg: Imu) -> None:
        self.rates["imu"].tick()
        self._rejected(self.assembler.add_imu(msg))

    def _on_gps(self, msg: NavSatFix) -> None:
        self.rates["gps"].tick()
        loc = self.localizer
        if loc is None:
            return
        prior = self.assembler.gps_prior(msg)
        if not isinstance(prior, GpsPrior):
            self._rejected(prior)
            return
        if loc.set_gps_prior(prior.lat_deg, prior.lon_deg, prior.sigma_m, prior.T_odom_body):
            self.get_logger().info(f"GPS prior used: {prior.lat_deg:.7f}, {prior.lon_deg:.7f} "
                                   f"(sigma {prior.sigma_m:.1f} m)")

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

    def _note_extrinsics_source(self) -> None:
        source = self.assembler.extrinsics_source
        if source != self.extrinsics_source:
            if "no /tf_static" in source:  # rclpy: one severity per logging call site
                self.get_logger().warning(f"camera extrinsics from {source}")
            else:
                self.get_logger().info(f"camera extrinsics from {source}")
            self.extrinsics_source = source

    def _wait_for_inputs(self, stamp_ns: int) -> None:
        """Wait up to odom_wait_s for odometry at/after the image and for its camera_info."""
        deadline = time.monotonic() + float(self.p("odom_wait_s"))
        fe = self.assembler
        while not self._stop.is_set() and time.monotonic() < deadline:
            if fe.odometry_reaches(stamp_ns) and fe.camera_info_at(stamp_ns) is not None:
                return
            time.sleep(0.005)

    def _process(self, msg, recv_t: float) -> None:
        stamp_ns = convert.stamp_to_ns(msg.header.stamp)
        stamp = msg.header.stamp
        went_back = self.assembler.note_image_stamp(stamp_ns)
        if went_back:
            self._time_reset(went_back)
        epoch = self._tf_epoch
        loc = self.localizer
        if loc is None:
            self._pubs["geo_pose"].publish(convert.no_fix_geopose(str(self.p("map_frame")), stamp))
            return
        self._wait_for_inputs(stamp_ns)
        frame = self.assembler.assemble(msg)
        if isinstance(frame, Rejection):
            self.input_error(frame.message)
            return
        self._note_extrinsics_source()
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
        self._publish_estimate(est, stamp, latency, epoch)

    # ------------------------------------------------------------------ outputs
    def _publish_estimate(self, est, stamp, latency_s: float, epoch: int | None = None) -> None:
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
            if "geo_pose_std" in pubs:
                pubs["geo_pose_std"].publish(
                    convert.estimate_to_geo_pose_with_covariance(est, map_frame, stamp))
        publish_tf = est.status == Status.TRACKING or (
            est.status == Status.LOW_CONFIDENCE and bool(self.p("tf_publish_low_confidence")))
        if publish_tf and "tf" in pubs and est.T_map_odom is not None:
            self._send_tf(est.stamp_ns, (est.T_map_odom, est.stamp_ns), epoch=epoch)
        if bool(self.p("publish_heatmap")):
            src = est.posterior if str(self.p("heatmap_source")) == "posterior" else est.score_map
            if src is not None:
                pubs["heatmap"].publish(convert.heatmap_to_image(
                    src, stamp, map_frame, colour=bool(self.p("heatmap_colour"))))

    def _send_tf(self, stamp_ns: int, correction: tuple[np.ndarray, int] | None = None,
                 resend: tuple[np.ndarray, int] | None = None, epoch: int | None = None) -> None:
        """Send map->odom: ``correction``, a new (T_map_odom, estimate stamp), or ``resend``,
        the correction a re-send was computed for (skipped when it was replaced meanwhile).
        A correction of a frame taken before the latest time reset (``epoch``: the reset count
        when its frame was taken) is dropped: the previous run is over.

        Stamped ``stamp_ns + transform_tolerance``, but never earlier than the stamp sent last:
        a re-send stamped with the clock may run ahead of the next estimate's image stamp, and
        tf2 would then mix the old and the new correction. The floor is forgotten only with the
        correction, at a time reset (``_forget_tf``).
        """  # noqa: D205
        from tf2_msgs.msg import TFMessage

        with self._tf_lock:
            if epoch is not None and epoch != self._tf_epoch:
                return
            if correction is not None:
                self._tf_last = correction
            elif resend is not self._tf_last:
                return  # replaced or forgotten (a time reset) since the re-send was computed
            pub = self._pubs.get("tf")
            if pub is None or self._tf_last is None:
                return
            T, _ = self._tf_last
            tol_ns = int(float(self.p("transform_tolerance")) * 1e9)
            t_ns = stamp_ns + tol_ns
            if self._tf_sent_ns is not None and t_ns < self._tf_sent_ns:
                t_ns = self._tf_sent_ns
            self._tf_sent_ns = t_ns
            t = convert.matrix_to_transform_stamped(
                T, str(self.p("map_frame")), str(self.p("odom_frame")), convert.ns_to_stamp(t_ns))
            pub.publish(TFMessage(transforms=[t]))

    def _forget_tf(self) -> None:
        """Time went backwards (a looping bag): drop the correction and the stamp floor; the
        next estimate's stamp starts the new run's map->odom stamps."""  # noqa: D205, D209
        with self._tf_lock:
            self._tf_last = None
            self._tf_sent_ns = None
            self._tf_epoch += 1

    def _republish_tf(self) -> None:
        last, sent_ns = self._tf_last, self._tf_sent_ns
        if last is None:
            return
        now_ns = self.get_clock().now().nanoseconds
        tol_ns = int(float(self.p("transform_tolerance")) * 1e9)
        if now_ns and sent_ns is not None and now_ns < sent_ns - tol_ns - int(5e9):
            # the clock jumped back (a looping bag under sim time): nothing is re-sent until
            # the first image of the new run resets the node (_time_reset -> _forget_tf)
            return
        self._send_tf(max(now_ns, last[1]), resend=last)

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
            "score_temperature": (f"{self.localizer.config.score_temperature:g}"
                                  if self.localizer else ""),
            "last_input_error": self.last_error,
            "last_reset_reason": self.last_reset_reason,
            "missing_resources": " | ".join(self.missing),
            "extrinsics_source": self.extrinsics_source,
            "imu_heading_frame": self.assembler.imu_heading_frame,
            "heading_known": (str(self.localizer.heading_known).lower()
                              if self.localizer else "false"),
            "yaw_sigma_deg": (f"{math.degrees(math.sqrt(self.localizer.yaw_offset_belief[1])):.2f}"
                              if self.localizer else "nan"),
            "imu_yaw_inconsistent": (str(self.localizer.abs_yaw_inconsistent)
                                     if self.localizer else "0"),
            "odom_scale": f"{self.localizer.odom_scale:.4f}" if self.localizer else "1.0000",
            "yaw_drift_rate_deg_per_100m": (f"{self.localizer.yaw_drift_rate_deg_per_100m:.3f}"
                                       if self.localizer else "0.000"),
        }
        for k, r in self.rates.items():
            values[f"{k}_rate_hz"] = f"{r.hz():.2f}"
        for k, v in self.counters.items():
            values[k] = str(v)
        values["imu_without_orientation"] = str(self.assembler.imu_without_orientation)
        values["imu_frame_unresolved"] = str(self.assembler.imu_frame_unresolved)
        recent_error = self.last_error and time.monotonic() - self.last_error_time < 5.0
        if self.missing and self.localizer is None:
            level, text = DiagnosticStatus.ERROR, "not localizing: " + "; ".join(self.missing)
            if self._retry_timer is not None:
                text += f" (configure is retried every {self._retry_s:g} s)"
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


def _fail(what: str, exc: BaseException) -> int:
    msg = str(exc).strip() or type(exc).__name__
    print(f"cvl-localize: {what}: {msg}\n(parameters: docs/parameters.md; run with "
          "--ros-args --params-file config/localize.yaml)", file=sys.stderr)
    if rclpy.ok():
        rclpy.shutdown()
    return 2


def main(args=None) -> int:
    """Entry point of ``cvl-localize`` (``--ros-args --params-file config/localize.yaml``).

    Exits 2 with a one-line reason (no traceback) when ROS cannot start the node: an unreadable
    or malformed params file, or a value ROS itself refuses (``use_sim_time: maybe``). Every
    other invalid parameter, a missing model or database: the node stays up, unconfigured,
    with the reason in /diagnostics, and with ``autostart`` retries configure every
    ``AUTOSTART_RETRY_S`` s.
    """
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    try:
        rclpy.init(args=args)
    except Exception as exc:  # RCLError: "Couldn't parse params file ..."
        return _fail("cannot start", exc)
    try:
        node = LocalizerNode()
    except Exception as exc:  # e.g. InvalidParameterTypeException of a ROS-declared parameter
        return _fail("cannot create the node", exc)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    if bool(node.p_or_default("autostart")):
        node.start_autostart()
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGINT/SIGTERM shut the context down while the executor was building its wait set:
        # rclpy then raises RCLError ("context is not valid") instead of
        # ExternalShutdownException. That is a normal stop; anything else is a bug.
        if rclpy.ok():
            raise
    finally:
        try:
            executor.remove_node(node)
            node.destroy_node()
        except Exception:
            pass
        try:
            # release the executor's guard conditions while the context is alive: left to the
            # garbage collector at exit, Jazzy's rclpy printed an InvalidHandle traceback
            executor.shutdown(timeout_sec=1.0)
        except Exception:
            pass
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
