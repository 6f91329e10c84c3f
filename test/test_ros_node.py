"""In-process tests of the cvl_localizer lifecycle node (isolated domain, timeouts)."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from _ros_node_helpers import Drive, OracleLocalizer, build_tiny_resources, extrinsics_param

pytestmark = pytest.mark.ros

NS = "/cvl_localizer"


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    return build_tiny_resources(tmp_path_factory.mktemp("cvl_node_res"))


def _make_node(ctx, **params):
    from rclpy.parameter import Parameter

    from cvl_ros.ros.node import LocalizerNode

    base = {"tf_publish_rate_hz": 20.0, "diagnostics_rate_hz": 5.0, "odom_wait_s": 0.5,
            "camera_extrinsics_xyz_rpy": extrinsics_param(), "use_tf_static_extrinsics": False}
    base.update(params)
    return LocalizerNode(context=ctx, parameter_overrides=[Parameter(k, value=v)
                                                           for k, v in base.items()])


class Probe:
    """Test-side node: publishes inputs, records outputs."""

    def __init__(self, ctx):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from nav_msgs.msg import Odometry
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, NavSatFix
        from tf2_msgs.msg import TFMessage

        from cvl_ros.msg import GeoPoseEstimate

        self.node = rclpy.create_node("probe", context=ctx)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.geo, self.fix, self.pose, self.tf, self.diag, self.heat = [], [], [], [], [], []
        n = self.node
        n.create_subscription(GeoPoseEstimate, NS + "/geo_pose", self.geo.append, latched)
        n.create_subscription(NavSatFix, NS + "/fix", self.fix.append, 10)
        n.create_subscription(PoseWithCovarianceStamped, NS + "/pose", self.pose.append, 10)
        n.create_subscription(TFMessage, "/tf", self.tf.append, 100)
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, 10)
        n.create_subscription(Image, NS + "/heatmap", self.heat.append, 10)
        self.pub_img = n.create_publisher(Image, "image", 10)
        self.pub_info = n.create_publisher(CameraInfo, "camera_info", 10)
        self.pub_odom = n.create_publisher(Odometry, "odom", 50)
        self.pub_init = n.create_publisher(PoseWithCovarianceStamped, "initialpose", 10)

    def geo_for(self, stamp_ns):
        from cvl_ros.ros.convert import stamp_to_ns

        return [g for g in self.geo if stamp_to_ns(g.header.stamp) == stamp_ns]

    def diag_values(self):
        if not self.diag:
            return {}, None
        st = self.diag[-1].status[0]
        return {kv.key: kv.value for kv in st.values}, st


def _wait_connected(ex, spin_until, probe, node):
    spin_until(ex, lambda: probe.pub_img.get_subscription_count() > 0
               and probe.pub_odom.get_subscription_count() > 0
               and probe.pub_info.get_subscription_count() > 0, 10.0, "subscriptions")


def _feed(ex, spin_until, probe, node, drive, i, expect_output=True, **kw):
    before = (len(probe.geo_for(drive.stamps[i])), node.counters["frames_handled"])
    probe.pub_odom.publish(drive.odom_msg(i, nan=kw.get("nan", False)))
    if kw.get("info", True):
        probe.pub_info.publish(drive.info_msg(i, kw.get("width"), kw.get("height")))
    probe.pub_img.publish(kw.get("img") or drive.image_msg(i, kw.get("encoding", "rgb8")))
    if expect_output:
        spin_until(ex, lambda: len(probe.geo_for(drive.stamps[i])) > before[0], 10.0,
                   f"geo_pose for frame {i} (last input error: {node.last_error!r}, "
                   f"{node.counters})")
    # The worker publishes before it counts the frame as handled: wait for the count too, so
    # the next feed's baseline is this frame's, not a lagging one (a race seen under CI load).
    spin_until(ex, lambda: node.counters["frames_handled"] > before[1], 10.0,
               f"frame {i} handled")


def _setup(ros_executor, spin_until, node, probe=None):
    ex = ros_executor
    ex.add_node(node)
    probe = probe or Probe(ex.context)
    ex.add_node(probe.node)
    return ex, probe


def _lifecycle_state(ex, spin_until, probe):
    from lifecycle_msgs.srv import GetState

    cli = probe.node.create_client(GetState, NS + "/get_state")
    assert cli.wait_for_service(timeout_sec=5.0)
    fut = cli.call_async(GetState.Request())
    spin_until(ex, fut.done, 5.0, "get_state")
    probe.node.destroy_client(cli)
    return fut.result().current_state.label


def _counts(node):
    return (len(list(node.subscriptions)), len(list(node.publishers)),
            len(list(node.services)), len(list(node.timers)), threading.active_count())


def test_lifecycle_transitions_and_repeated_cycles_leak_nothing(ros_executor, spin_until,
                                                                resources):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    ckpt, db = resources
    node = _make_node(ros_executor.context, checkpoint_path=str(ckpt), database_path=str(db))
    ex, probe = _setup(ros_executor, spin_until, node)
    assert _lifecycle_state(ex, spin_until, probe) == "unconfigured"
    base = _counts(node)
    # configure through the standard service, like a lifecycle manager
    cli = probe.node.create_client(ChangeState, NS + "/change_state")
    assert cli.wait_for_service(timeout_sec=5.0)
    fut = cli.call_async(ChangeState.Request(transition=Transition(
        id=Transition.TRANSITION_CONFIGURE)))
    spin_until(ex, fut.done, 20.0, "configure")
    assert fut.result().success
    assert node.localizer is not None and not node.missing
    assert _lifecycle_state(ex, spin_until, probe) == "inactive"
    for _ in range(3):
        node.trigger_activate()
        assert _lifecycle_state(ex, spin_until, probe) == "active"
        assert node._worker is not None and node._worker.is_alive()
        active = _counts(node)
        assert active[0] > base[0] and active[1] > base[1]
        node.trigger_deactivate()
        assert _lifecycle_state(ex, spin_until, probe) == "inactive"
        assert _counts(node) == base
        node.trigger_cleanup()
        assert node.localizer is None
        assert _lifecycle_state(ex, spin_until, probe) == "unconfigured"
        assert _counts(node) == base
        node.trigger_configure()
    node.trigger_shutdown()
    assert _lifecycle_state(ex, spin_until, probe) == "finalized"


def test_missing_database_fails_configure_and_says_how(ros_executor, spin_until, resources,
                                                      tmp_path):
    """nav2 lifecycle semantics: configure FAILS (back to unconfigured) without a database;
    the node stays up and /diagnostics says what is missing and how to build it."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rclpy.lifecycle import TransitionCallbackReturn

    ckpt, _ = resources
    node = _make_node(ros_executor.context, checkpoint_path=str(ckpt),
                      database_path=str(tmp_path / "nope"))
    ex, probe = _setup(ros_executor, spin_until, node)
    # through the standard service, as nav2's lifecycle manager calls it: success is false
    cli = probe.node.create_client(ChangeState, NS + "/change_state")
    assert cli.wait_for_service(timeout_sec=5.0)
    fut = cli.call_async(ChangeState.Request(transition=Transition(
        id=Transition.TRANSITION_CONFIGURE)))
    spin_until(ex, fut.done, 20.0, "configure")
    assert not fut.result().success
    assert _lifecycle_state(ex, spin_until, probe) == "unconfigured"
    assert node.localizer is None and any("database" in m for m in node.missing)
    assert node.trigger_activate() != TransitionCallbackReturn.SUCCESS  # not from unconfigured
    assert _lifecycle_state(ex, spin_until, probe) == "unconfigured"
    spin_until(ex, lambda: probe.diag, 10.0, "diagnostics")
    values, st = probe.diag_values()
    assert st.level == st.ERROR and values["lifecycle_state"] == "unconfigured"
    assert "cvl-build-db" in st.message and "make demo" in values["missing_resources"]
    assert not node._subs and not node._pubs  # no inputs taken, no outputs offered


def test_activate_fails_without_a_localizer(ros_context, resources):
    from rclpy.lifecycle import TransitionCallbackReturn

    ckpt, db = resources
    node = _make_node(ros_context, checkpoint_path=str(ckpt), database_path=str(db))
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        node.localizer = None  # e.g. released behind the state machine's back
        assert node.trigger_activate() == TransitionCallbackReturn.FAILURE
        assert node._lifecycle_state == "inactive" and not node._pubs and not node._subs
    finally:
        node.destroy_node()


def test_autostart_retries_configure_until_the_database_appears(ros_executor, spin_until,
                                                                resources, tmp_path):
    """cvl-localize (autostart): a failed configure leaves the node up and unconfigured with the
    reason in /diagnostics, and is retried until the database built later is found."""
    import shutil

    ckpt, db = resources
    later = tmp_path / "db_built_later"
    node = _make_node(ros_executor.context, checkpoint_path=str(ckpt), database_path=str(later))
    ex, probe = _setup(ros_executor, spin_until, node)
    assert not node.start_autostart(retry_s=0.3)
    assert node._lifecycle_state == "unconfigured" and node.localizer is None
    spin_until(ex, lambda: probe.diag and "retried" in probe.diag[-1].status[0].message, 10.0,
               "diagnostics of the failed configure")
    values, st = probe.diag_values()
    assert st.level == st.ERROR and "database" in values["missing_resources"]
    n_diag = len(probe.diag)
    spin_until(ex, lambda: len(probe.diag) > n_diag + 1, 10.0, "diagnostics keep coming")
    assert node._lifecycle_state == "unconfigured"
    shutil.copytree(db, later)
    spin_until(ex, lambda: node._lifecycle_state == "active", 15.0, "configured by a retry")
    assert node.localizer is not None and not node.missing and node._retry_timer is None
    assert _lifecycle_state(ex, spin_until, probe) == "active"


def _oracle_node(ros_executor, spin_until, drive, resources, wait=True, **params):
    ckpt, db = resources
    node = _make_node(ros_executor.context, checkpoint_path=str(ckpt), database_path=str(db),
                      odom_yaw_offset_rad=float(drive.odom_yaw_offset), **params)
    ex, probe = _setup(ros_executor, spin_until, node)
    node.trigger_configure()
    # the same Localizer with the node's configuration, over the oracle matcher
    node.localizer = OracleLocalizer(drive.truth, odom_yaw_offset_rad=node.p("odom_yaw_offset_rad"))
    node.trigger_activate()
    if wait:
        _wait_connected(ex, spin_until, probe, node)
    return ex, probe, node


def test_pipeline_outputs_agree_and_tf_is_map_to_odom(ros_executor, spin_until, resources):
    from cvl_ros.msg import GeoPoseEstimate
    from cvl_ros.ros.convert import pose_to_matrix, stamp_to_ns, transform_to_matrix

    drive = Drive(n=12)
    ex, probe, node = _oracle_node(ros_executor, spin_until, drive, resources)
    for i in range(len(drive.stamps)):
        _feed(ex, spin_until, probe, node, drive, i)
    last = probe.geo_for(drive.stamps[-1])[-1]
    assert last.status == GeoPoseEstimate.TRACKING
    assert stamp_to_ns(last.header.stamp) == drive.stamps[-1]
    assert last.header.frame_id == "map" and last.window_length == 2
    truth = drive.T_world[-1]
    assert math.hypot(last.pose.pose.position.x - truth[0, 3],
                      last.pose.pose.position.y - truth[1, 3]) < 2.0
    assert abs(last.yaw_rad - 0.2) < 1e-6
    cov = np.asarray(last.pose.covariance).reshape(6, 6)
    assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > 0
    assert last.datum_latitude_deg == pytest.approx(49.015)
    assert len(last.candidates) > 0
    # NavSatFix and PoseWithCovarianceStamped of the same stamp agree with the GeoPoseEstimate
    spin_until(ex, lambda: any(stamp_to_ns(f.header.stamp) == drive.stamps[-1] for f in probe.fix)
               and any(stamp_to_ns(p.header.stamp) == drive.stamps[-1] for p in probe.pose),
               5.0, "fix and pose")
    fix = [f for f in probe.fix if stamp_to_ns(f.header.stamp) == drive.stamps[-1]][-1]
    pose = [p for p in probe.pose if stamp_to_ns(p.header.stamp) == drive.stamps[-1]][-1]
    assert fix.latitude == pytest.approx(last.latitude_deg, abs=1e-12)
    assert fix.longitude == pytest.approx(last.longitude_deg, abs=1e-12)
    fcov = np.asarray(fix.position_covariance).reshape(3, 3)
    assert np.allclose(fcov[:2, :2], cov[:2, :2])
    assert pose.header.frame_id == "map"
    assert np.allclose(np.asarray(pose.pose.covariance), np.asarray(last.pose.covariance))
    T_map_body = pose_to_matrix(pose.pose.pose)
    assert np.allclose(T_map_body, pose_to_matrix(last.pose.pose), atol=1e-9)
    # map->odom: stamped image stamp + transform_tolerance, or later (the stamps never
    # decrease: the re-sends here are stamped with the wall clock, far ahead of the drive's
    # stamps; test_map_odom_stamps_never_decrease checks the exact stamps); it composes with
    # odometry into the pose
    tol_ns = 100_000_000
    assert node._tf_last is not None and node._tf_last[1] == drive.stamps[-1]
    n_sent = len(probe.tf)
    spin_until(ex, lambda: len(probe.tf) > n_sent, 5.0, "map->odom")
    tfs = [t for m in probe.tf for t in m.transforms]
    assert all(t.header.frame_id == "map" and t.child_frame_id == "odom" for t in tfs)
    stamps = [stamp_to_ns(t.header.stamp) for t in tfs]
    assert stamps == sorted(stamps) and stamps[-1] >= drive.stamps[-1] + tol_ns
    T_map_odom = transform_to_matrix(tfs[-1].transform)
    assert np.allclose(T_map_odom @ drive.T_odom[-1], T_map_body, atol=1e-6)
    # re-sent at a steady rate while no new estimate arrives
    n_before = len(probe.tf)
    spin_until(ex, lambda: len(probe.tf) >= n_before + 3, 5.0, "steady map->odom re-sends")
    assert probe.heat and probe.heat[-1].encoding == "rgb8"
    values, st = probe.diag_values()
    spin_until(ex, lambda: probe.diag_values()[0].get("localization_state") == "TRACKING",
               5.0, "diagnostics TRACKING")
    values, st = probe.diag_values()
    assert values["window_fill"] == "2/2" and float(values["latency_s"]) >= 0
    assert int(values["frame_states_computed"]) >= 2
    assert float(values["odom_scale"]) == node.localizer.odom_scale  # (1.0 on this short drive)
    assert float(values["yaw_drift_rate_deg_per_100m"]) == pytest.approx(
        node.localizer.yaw_drift_rate_deg_per_100m, abs=1e-3)


def test_standard_geo_pose_is_published_on_each_fix(ros_executor, spin_until, resources):
    """~/geo_pose_std (geographic_msgs/GeoPoseWithCovarianceStamped): one per TRACKING or
    LOW_CONFIDENCE estimate, none otherwise, agreeing with ~/geo_pose of the same stamp."""
    pytest.importorskip("geographic_msgs.msg", reason="geographic_msgs not built; make setup")
    from geographic_msgs.msg import GeoPoseWithCovarianceStamped

    from cvl_ros.msg import GeoPoseEstimate
    from cvl_ros.ros.convert import stamp_to_ns, yaw_from_quat

    drive = Drive(n=8)
    ex, probe, node = _oracle_node(ros_executor, spin_until, drive, resources)
    std = []
    probe.node.create_subscription(GeoPoseWithCovarianceStamped, NS + "/geo_pose_std",
                                   std.append, 10)
    pub = node._pubs["geo_pose_std"]
    spin_until(ex, lambda: pub.get_subscription_count() > 0, 10.0, "geo_pose_std subscription")
    for i in range(len(drive.stamps)):
        _feed(ex, spin_until, probe, node, drive, i)
    fixes = {stamp_to_ns(g.header.stamp): g for g in probe.geo
             if g.status in (GeoPoseEstimate.TRACKING, GeoPoseEstimate.LOW_CONFIDENCE)}
    assert drive.stamps[-1] in fixes
    spin_until(ex, lambda: len(std) >= len(fixes), 5.0, "one geo_pose_std per fix")
    assert sorted(stamp_to_ns(m.header.stamp) for m in std) == sorted(fixes)
    for m in std:
        g = fixes[stamp_to_ns(m.header.stamp)]
        assert m.header.frame_id == "map"
        assert m.pose.pose.position.latitude == g.latitude_deg
        assert m.pose.pose.position.longitude == g.longitude_deg
        assert math.isnan(m.pose.pose.position.altitude)
        assert yaw_from_quat(m.pose.pose.orientation) == pytest.approx(g.yaw_rad, abs=1e-9)
        c = np.asarray(m.pose.covariance).reshape(6, 6)
        gc = np.asarray(g.pose.covariance).reshape(6, 6)
        assert (c[0, 0], c[1, 1], c[0, 1]) == (gc[1, 1], gc[0, 0], gc[1, 0])
        assert c[5, 5] == gc[5, 5] > 0


def test_time_jump_resets(ros_executor, spin_until, resources):
    drive = Drive(n=6)
    ex, probe, node = _oracle_node(ros_executor, spin_until, drive, resources)
    for i in range(4):
        _feed(ex, spin_until, probe, node, drive, i)
    assert probe.geo_for(drive.stamps[3])[-1].window_length == 2
    looped = Drive(n=6, stamp0_ns=drive.stamps[0] - 10**9)  # the bag loops: stamps go back
    node.localizer.truth_by_stamp.update(looped.truth)
    _feed(ex, spin_until, probe, node, looped, 0)
    g = probe.geo_for(looped.stamps[0])[-1]
    assert g.window_length == 1
    assert node.counters["resets"] >= 1 and "backwards" in node.last_reset_reason
    _feed(ex, spin_until, probe, node, looped, 1)
    assert probe.geo_for(looped.stamps[1])[-1].window_length == 2


def test_bad_inputs_give_diagnostics_and_no_crash(ros_executor, spin_until, resources):
    from cvl_ros.ros import convert

    drive = Drive(n=8)
    ex, probe, node = _oracle_node(ros_executor, spin_until, drive, resources,
                                   camera_info_tolerance_s=0.01)
    _feed(ex, spin_until, probe, node, drive, 0)
    cases = [
        ({"encoding": "bgr8"}, None),  # supported: control
    ]
    _feed(ex, spin_until, probe, node, drive, 1, **cases[0][0])
    bad = drive.image_msg(2)
    bad.encoding = "16UC1"
    _feed(ex, spin_until, probe, node, drive, 2, expect_output=False, img=bad)
    assert "unsupported image encoding '16UC1'" in node.last_error
    _feed(ex, spin_until, probe, node, drive, 3, expect_output=False, width=256, height=128)
    assert "256x128" in node.last_error and "128x64" in node.last_error
    _feed(ex, spin_until, probe, node, drive, 4, expect_output=False, nan=True)
    assert "odometry" in node.last_error
    _feed(ex, spin_until, probe, node, drive, 5, expect_output=False, info=False)
    assert "camera_info" in node.last_error
    spin_until(ex, lambda: "camera_info" in probe.diag_values()[0].get("last_input_error", ""),
               5.0, "diagnostic of the last input error")
    assert probe.diag_values()[1].level == probe.diag_values()[1].WARN
    # a good frame still goes through afterwards
    _feed(ex, spin_until, probe, node, drive, 6)
    assert node._worker.is_alive()
    assert convert.stamp_to_ns(probe.geo[-1].header.stamp) == drive.stamps[6]


def test_real_tiny_model_end_to_end(ros_executor, spin_until, resources):
    from cvl_ros.ros.convert import stamp_to_ns

    ckpt, db = resources
    drive = Drive(n=4, start=(0.0, 0.0), yaw=0.0, odom_yaw=0.0)
    # no IMU and odometry aligned with ENU: the heading is the odometry's, taken as given
    node = _make_node(ros_executor.context, checkpoint_path=str(ckpt), database_path=str(db),
                      device="auto", heading_source="odom")
    ex, probe = _setup(ros_executor, spin_until, node)
    node.trigger_configure()
    node.trigger_activate()
    assert node.localizer is not None, node.missing
    _wait_connected(ex, spin_until, probe, node)
    # the database's datum is shown through the map_datum_* parameters
    d = node.localizer.datum
    assert (node.p("map_datum_latitude_deg"), node.p("map_datum_longitude_deg"),
            node.p("map_datum_altitude_m")) == (d.lat_deg, d.lon_deg, d.alt_m) != (0, 0, 0)
    for i in range(4):
        _feed(ex, spin_until, probe, node, drive, i)
        g = probe.geo_for(drive.stamps[i])[-1]
        assert stamp_to_ns(g.header.stamp) == drive.stamps[i]
        assert g.tiles_searched > 0
        # altitude is not observed: NaN in GeoPoseEstimate (the datum altitude is given)
        assert math.isnan(g.altitude_m) and g.datum_altitude_m == node.localizer.datum.alt_m
        cov = np.asarray(g.pose.covariance).reshape(6, 6)
        assert np.linalg.eigvalsh(cov).min() > 0


def test_relocalize_service_and_initialpose(ros_executor, spin_until, resources):
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from std_srvs.srv import Trigger

    drive = Drive(n=6)
    ex, probe, node = _oracle_node(ros_executor, spin_until, drive, resources)
    for i in range(3):
        _feed(ex, spin_until, probe, node, drive, i)
    cli = probe.node.create_client(Trigger, NS + "/relocalize")
    assert cli.wait_for_service(timeout_sec=5.0)
    fut = cli.call_async(Trigger.Request())
    spin_until(ex, fut.done, 5.0, "relocalize")
    assert fut.result().success
    _feed(ex, spin_until, probe, node, drive, 3)
    assert probe.geo_for(drive.stamps[3])[-1].tiles_searched == len(node.localizer.db)
    # bad initial poses are rejected with a diagnostic; the node stays up, nothing changes
    bad = PoseWithCovarianceStamped()
    bad.header.frame_id = "map"
    bad.pose.pose.orientation.w = 1.0
    bad.pose.covariance[0] = bad.pose.covariance[7] = float("inf")
    probe.pub_init.publish(bad)
    spin_until(ex, lambda: "covariance is not finite" in node.last_error, 5.0, "inf covariance")
    bad.pose.covariance[0] = bad.pose.covariance[7] = 4.0
    bad.pose.pose.position.x = float("nan")
    probe.pub_init.publish(bad)
    spin_until(ex, lambda: "position must be finite" in node.last_error, 5.0, "NaN position")
    assert node.localizer._global_mode  # still relocalising: the bad poses changed nothing
    m = PoseWithCovarianceStamped()
    m.header.frame_id = "map"
    m.pose.pose.position.x, m.pose.pose.position.y = (float(drive.T_world[4][0, 3]),
                                                      float(drive.T_world[4][1, 3]))
    m.pose.pose.orientation.w = 1.0
    m.pose.covariance[0] = m.pose.covariance[7] = 4.0
    probe.pub_init.publish(m)
    spin_until(ex, lambda: not node.localizer._global_mode, 5.0, "initialpose applied")
    _feed(ex, spin_until, probe, node, drive, 4)
    assert probe.geo_for(drive.stamps[4])[-1].tiles_searched < len(node.localizer.db)


def test_tf_odometry_imu_heading_compressed_images_and_tf_static_extrinsics(
        ros_executor, spin_until, resources):
    import cv2
    from _localizer_fakes import T_BODY_CAM, image
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Imu
    from tf2_msgs.msg import TFMessage

    from cvl_ros.camera import pose_enu
    from cvl_ros.msg import GeoPoseEstimate
    from cvl_ros.ros import convert

    drive = Drive(n=8, yaw=0.2, odom_yaw=0.5)
    # wrong odometry yaw offset and wrong fallback extrinsics: IMU and /tf_static must win
    ex, probe, node = _oracle_node(ros_executor, spin_until, drive, resources, wait=False,
                                   odom_source="tf", heading_source="imu", use_compressed=True,
                                   use_tf_static_extrinsics=True,
                                   camera_extrinsics_xyz_rpy=[0.0, 0.0, 2.0, 0.0, 0.0, 0.0])
    n = probe.node
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pub_static = n.create_publisher(TFMessage, "/tf_static", latched)
    pub_tf = n.create_publisher(TFMessage, "/tf", 100)
    pub_imu = n.create_publisher(Imu, "imu", 10)
    pub_cimg = n.create_publisher(CompressedImage, "image/compressed", 10)
    # the IMU is mounted yawed by 90 deg (REP-145: its orientation is the imu_link's)
    T_base_imu = pose_enu(0.3, 0.1, 0.9, math.pi / 2)
    pub_static.publish(TFMessage(transforms=[
        convert.matrix_to_transform_stamped(T_BODY_CAM, "base_link", "camera_optical",
                                            convert.ns_to_stamp(0)),
        convert.matrix_to_transform_stamped(T_base_imu, "base_link", "imu_link",
                                            convert.ns_to_stamp(0))]))
    spin_until(ex, lambda: pub_cimg.get_subscription_count() > 0
               and pub_imu.get_subscription_count() > 0
               and "camera_optical" in node.assembler.static_tf, 10.0,
               "tf_static and subscriptions")
    fe = node.assembler
    assert np.allclose(fe.extrinsics("camera_optical"), T_BODY_CAM)
    assert fe.extrinsics_source == "/tf_static base_link->camera_optical"
    fe.extrinsics("other_camera")  # no chain to base_link: the parameter, said so
    assert "parameter" in fe.extrinsics_source and "no /tf_static chain" in \
        fe.extrinsics_source
    node.assembler.extrinsics("camera_optical")
    for i in range(len(drive.stamps)):
        st = convert.ns_to_stamp(drive.stamps[i])
        pub_tf.publish(TFMessage(transforms=[convert.matrix_to_transform_stamped(
            drive.T_odom[i], "odom", "base_link", st)]))
        imu = Imu()
        imu.header.stamp = st
        imu.header.frame_id = "imu_link"
        (imu.orientation.x, imu.orientation.y, imu.orientation.z,
         imu.orientation.w) = convert.matrix_to_quat((drive.T_world[i] @ T_base_imu)[:3, :3])
        pub_imu.publish(imu)
        probe.pub_info.publish(drive.info_msg(i))
        ok, buf = cv2.imencode(".png", cv2.cvtColor(image(i), cv2.COLOR_RGB2BGR))
        cm = CompressedImage(format="png", data=buf.tobytes())
        cm.header.stamp = st
        cm.header.frame_id = "camera_optical"
        pub_cimg.publish(cm)
        spin_until(ex, lambda: len(probe.geo_for(drive.stamps[i])) > 0, 10.0,
                   f"geo_pose {i} ({node.last_error})")
    g = probe.geo_for(drive.stamps[-1])[-1]
    assert g.status == GeoPoseEstimate.TRACKING
    assert abs(g.yaw_rad - 0.2) < 1e-6  # base_link's heading, not the IMU's (0.2 + 90 deg)
    assert node.assembler.imu_heading_frame == "imu_link -> base_link (/tf_static)"
    truth = drive.T_world[-1]
    assert math.hypot(g.pose.pose.position.x - truth[0, 3],
                      g.pose.pose.position.y - truth[1, 3]) < 1.5


def test_invalid_parameters_fail_configure_keep_the_node_up_and_reported(ros_executor,
                                                                         spin_until, resources):
    from rclpy.lifecycle import TransitionCallbackReturn

    ckpt, db = resources
    node = _make_node(ros_executor.context, checkpoint_path=str(ckpt), database_path=str(db),
                      heading_source="IMU")
    ex, probe = _setup(ros_executor, spin_until, node)
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert node._lifecycle_state == "unconfigured"
    assert node.localizer is None
    assert any("heading_source" in m and "IMU" in m for m in node.missing)
    spin_until(ex, lambda: probe.diag, 10.0, "diagnostics")
    values, st = probe.diag_values()
    assert st.level == st.ERROR and "heading_source" in values["missing_resources"]


def test_imu_without_orientation_is_not_a_heading(ros_executor, spin_until, resources):
    from sensor_msgs.msg import Imu

    drive = Drive(n=2)
    ex, probe, node = _oracle_node(ros_executor, spin_until, drive, resources)
    pub = probe.node.create_publisher(Imu, "imu", 10)
    spin_until(ex, lambda: pub.get_subscription_count() > 0, 5.0, "imu subscription")
    m = Imu()
    m.header.stamp.sec = 1
    m.orientation.w = 1.0
    m.orientation_covariance[0] = -1.0  # REP-145: no orientation estimate
    pub.publish(m)
    spin_until(ex, lambda: node.assembler.imu_without_orientation == 1, 5.0, "imu counted")
    assert len(node.assembler.heading._items) == 0 and node.last_error == ""


def test_latest_wins_queue_drops_old_images_while_busy(ros_executor, spin_until, resources):
    from cvl_ros.ros.convert import stamp_to_ns

    drive = Drive(n=6)
    ex, probe, node = _oracle_node(ros_executor, spin_until, drive, resources)
    processed, real = [], node._process

    def slow(msg, recv_t):  # an inference much slower than the image rate
        processed.append(stamp_to_ns(msg.header.stamp))
        time.sleep(0.3)
        return real(msg, recv_t)

    node._process = slow
    for i in range(6):
        probe.pub_odom.publish(drive.odom_msg(i))
        probe.pub_info.publish(drive.info_msg(i))
    for i in range(6):
        probe.pub_img.publish(drive.image_msg(i))
    spin_until(ex, lambda: drive.stamps[5] in processed and not node._queue, 15.0,
               "the newest image processed")
    assert node.counters["dropped_images"] >= 1
    assert len(processed) < 6 and processed[-1] == drive.stamps[5]
    assert processed == sorted(processed)  # never an older image after a newer one


def test_runtime_parameter_changes_are_validated_like_configure(ros_context, resources):
    """`ros2 param set` goes through cvl_ros.params: refused with the reason, state unchanged;
    a YAML integer for a float parameter is accepted (no InvalidParameterTypeException)."""
    from rclpy.parameter import Parameter

    ckpt, db = resources
    node = _make_node(ros_context, checkpoint_path=str(ckpt), database_path=str(db),
                      **{"localizer.keyframe_distance_m": 2, "odom_wait_s": 1})
    try:
        node.trigger_configure()
        assert node.localizer is not None, node.missing
        assert node.localizer.config.keyframe_distance_m == 2.0
        for name, value, words in [("heading_source", "IMU", "one of auto, estimate, imu, odom"),
                                   ("transform_tolerance", -5.0, ">= 0"),
                                   ("queue_size", 0, ">= 1"),
                                   ("use_gps_prior", "false", "true or false")]:
            res = node.set_parameters([Parameter(name, value=value)])[0]
            assert not res.successful and words in res.reason, (name, res.reason)
            assert node.get_parameter(name).value != value
        res = node.set_parameters([Parameter("imu_tolerance_s", value=0.5)])[0]
        assert res.successful, res.reason
        assert node.p("imu_tolerance_s") == 0.5
        assert node.assembler.config.imu_tolerance_s == 0.5
    finally:
        node.destroy_node()


def _tf_msg(parent, child, T, stamp_ns=0):
    from tf2_msgs.msg import TFMessage

    from cvl_ros.ros import convert

    return TFMessage(transforms=[convert.matrix_to_transform_stamped(
        T, parent, child, convert.ns_to_stamp(stamp_ns))])


def test_tf_static_from_three_broadcasters_started_before_the_node(ros_executor, spin_until,
                                                                   resources):
    """tf2's static QoS (depth 100): each of three separate latched broadcasters reaches the
    node that subscribes after they published (a depth-1 subscription kept one of three)."""
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage

    from cvl_ros.camera import pose_enu

    chain = [("base_link", "a", pose_enu(1.0, 0.0, 0.5, 0.3)),
             ("a", "b", pose_enu(0.0, 0.2, 0.4, -0.1, 0.05)),
             ("b", "camera", pose_enu(0.1, 0.0, 0.2, 0.0, 0.0, -math.pi / 2))]
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    for k, (parent, child, T) in enumerate(chain):  # as tf2_ros' StaticTransformBroadcaster
        b = rclpy.create_node(f"static_broadcaster_{k}", context=ros_executor.context)
        b.create_publisher(TFMessage, "/tf_static", latched).publish(_tf_msg(parent, child, T))
        ros_executor.add_node(b)
    drive = Drive(n=2)
    ex, probe, node = _oracle_node(ros_executor, spin_until, drive, resources, wait=False,
                                   use_tf_static_extrinsics=True, heading_source="odom")
    fe = node.assembler
    deadline = time.monotonic() + 10.0
    while not {"a", "b", "camera"} <= set(fe.static_tf) and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.05)
    assert sorted(fe.static_tf) == ["a", "b", "camera"]
    expected = chain[0][2] @ chain[1][2] @ chain[2][2]
    assert np.allclose(fe.extrinsics("camera"), expected, atol=1e-12)
    assert fe.extrinsics_source == "/tf_static base_link->camera"
    assert np.allclose(fe.static_transform("camera", "base_link"), np.linalg.inv(expected))


def test_map_odom_stamps_never_decrease(ros_executor, spin_until, resources):
    """A re-send stamped with the clock may be ahead of the next estimate's image stamp: the
    new correction is then sent at the stamp sent last, never earlier (tf2 would otherwise mix
    the old and the new correction). A time reset (a looping bag) restarts the stamps."""
    from rclpy.time import Time

    from cvl_ros.ros.convert import stamp_to_ns, transform_to_matrix

    drive = Drive(n=2)
    ex, probe, node = _oracle_node(ros_executor, spin_until, drive, resources, wait=False,
                                   tf_publish_rate_hz=0.0)  # re-sends driven by the test
    sent = []
    pub = node._pubs["tf"]
    publish = pub.publish

    def record(msg):
        sent.append((stamp_to_ns(msg.transforms[0].header.stamp),
                     transform_to_matrix(msg.transforms[0].transform)))
        publish(msg)

    pub.publish = record
    clock_ns = [0]
    node.get_clock = lambda: type("Clock", (), {"now": lambda self: Time(
        nanoseconds=clock_ns[0])})()
    tol, ms = 100_000_000, 1_000_000
    T1, T2, T3 = (np.eye(4) for _ in range(3))
    T1[0, 3], T2[0, 3], T3[0, 3] = 1.0, 2.0, 3.0

    def estimate(stamp_ns, T):  # what _publish_estimate does with a TRACKING estimate
        node._send_tf(stamp_ns, (T, stamp_ns))

    estimate(283_830 * ms, T1)
    assert sent[-1][0] == 283_930 * ms  # image stamp + transform_tolerance
    clock_ns[0] = 284_002 * ms
    node._republish_tf()
    assert sent[-1][0] == 284_102 * ms  # max(now, image stamp) + transform_tolerance
    estimate(283_930 * ms, T2)  # would be 284.030 s: older than the re-send
    assert sent[-1][0] == 284_102 * ms and np.allclose(sent[-1][1], T2)
    clock_ns[0] = 284_500 * ms
    node._republish_tf()
    assert sent[-1][0] == 284_600 * ms and np.allclose(sent[-1][1], T2)
    estimate(284_550 * ms, T3)
    assert sent[-1][0] == 284_650 * ms and np.allclose(sent[-1][1], T3)
    stamps = [t for t, _ in sent]
    assert stamps == sorted(stamps)
    # the bag loops: the clock goes back; nothing is re-sent until the node resets ...
    n = len(sent)
    clock_ns[0] = 10_000 * ms
    node._republish_tf()
    assert len(sent) == n
    node._time_reset("image stamps went backwards by 274.550 s")
    node._republish_tf()
    assert len(sent) == n  # the correction is forgotten with the old run
    # ... then the stamps restart with the new run's first estimate
    estimate(10_050 * ms, T1)
    assert sent[-1][0] == 10_050 * ms + tol
    clock_ns[0] = 10_100 * ms
    node._republish_tf()
    assert sent[-1][0] == 10_200 * ms and np.allclose(sent[-1][1], T1)
    # the same through the odometry time jump path
    epoch = node._tf_epoch  # a frame of this run is being processed ...
    node._rejected(node.assembler.add_odom_pose(20_000 * ms, np.eye(4)))
    node._rejected(node.assembler.add_odom_pose(5_000 * ms, np.eye(4)))
    assert node._tf_last is None and node._tf_sent_ns is None
    # ... and finishes after the jump: its correction must not seed the new run (else the new
    # run's first estimate would send a stamp below it)
    n = len(sent)
    node._send_tf(20_010 * ms, (T2, 20_010 * ms), epoch=epoch)
    assert len(sent) == n and node._tf_last is None
    node._send_tf(5_050 * ms, (T3, 5_050 * ms), epoch=node._tf_epoch)
    assert sent[-1][0] == 5_050 * ms + tol


def _imu_msg(stamp_ns, R_enu_sensor, frame_id):
    from sensor_msgs.msg import Imu

    from cvl_ros.ros import convert

    m = Imu()
    m.header.stamp = convert.ns_to_stamp(stamp_ns)
    m.header.frame_id = frame_id
    (m.orientation.x, m.orientation.y, m.orientation.z,
     m.orientation.w) = convert.matrix_to_quat(R_enu_sensor)
    return m


def test_imu_heading_is_rotated_from_the_imu_frame_into_base_link():
    """REP-145: an IMU mounted yawed by 90 deg (and tilted) gives base_link's heading; an IMU
    frame without a /tf_static link is refused as heading, said once."""
    from cvl_ros import params as P
    from cvl_ros.camera import pose_enu
    from cvl_ros.localizer.frontend import FrameAssembler, Rejection

    drive = Drive(n=3, yaw=0.2)
    fe = FrameAssembler(P.frontend_config(P.validate({
        "heading_source": "imu", "camera_extrinsics_xyz_rpy": extrinsics_param()})))
    T_base_imu = pose_enu(0.2, -0.1, 0.8, math.pi / 2, 0.02, -0.03)
    R_base_imu = T_base_imu[:3, :3]

    def inputs(i):
        fe.add_camera_info(drive.info_msg(i))
        fe.add_odometry(drive.odom_msg(i))

    # no /tf_static yet: refused as a heading source, said once per frame
    inputs(0)
    r = fe.add_imu(_imu_msg(drive.stamps[0], drive.T_world[0][:3, :3] @ R_base_imu, "imu"))
    assert isinstance(r, Rejection) and "'imu'" in r.message and "base_link" in r.message
    assert fe.add_imu(_imu_msg(drive.stamps[0], drive.T_world[0][:3, :3] @ R_base_imu,
                               "/imu")) is None
    assert fe.imu_frame_unresolved == 2 and "not used" in fe.imu_heading_frame
    frame = fe.assemble(drive.image_msg(0))
    assert isinstance(frame, Rejection) and "no /tf_static link" in frame.message
    # with the transform: the body's heading, whatever the mounting
    fe.add_tf_static(_tf_msg("base_link", "imu", T_base_imu))
    for i in (1, 2):
        inputs(i)
        assert fe.add_imu(_imu_msg(drive.stamps[i], drive.T_world[i][:3, :3] @ R_base_imu,
                                   "imu")) is None
        frame = fe.assemble(drive.image_msg(i))
        assert frame.heading_enu_rad == pytest.approx(0.2, abs=1e-9), i
    assert fe.imu_heading_frame == "imu -> base_link (/tf_static)"
    # an IMU in base_link itself, or without a frame_id, is taken as is
    for frame_id in ("base_link", ""):
        fe.heading.clear()
        assert fe.add_imu(_imu_msg(drive.stamps[2], pose_enu(0, 0, 0, -1.0)[:3, :3],
                                   frame_id)) is None
        assert fe.assemble(drive.image_msg(2)).heading_enu_rad == pytest.approx(-1.0)
    # the IMU frame linked through a common ancestor (base_link is not its ancestor)
    fe2 = FrameAssembler(fe.config)
    fe2.add_tf_static(_tf_msg("base_footprint", "base_link", pose_enu(0, 0, 0.3, 0.0)))
    fe2.add_tf_static(_tf_msg("base_footprint", "imu", pose_enu(0, 0, 1.0, -math.pi / 2)))
    fe2.add_camera_info(drive.info_msg(2))
    fe2.add_odometry(drive.odom_msg(2))
    fe2.add_imu(_imu_msg(drive.stamps[2], pose_enu(0, 0, 0, 0.2 - math.pi / 2)[:3, :3], "imu"))
    assert fe2.assemble(drive.image_msg(2)).heading_enu_rad == pytest.approx(0.2)
