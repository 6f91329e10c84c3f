"""One message sequence through the node's callbacks and through the offline runner: the same
frames reach the Localizer and the same estimates come out (issue: one house)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from _bag_drives import tiny_drive
from _ros_node_helpers import build_tiny_resources

from cvl_ros import offline
from cvl_ros import params as P
from cvl_ros.geo import GeoDatum
from cvl_ros.kitti import KittiDrive
from cvl_ros.ros import bags
from cvl_ros.ros.kitti_bag import write_kitti_bag

pytestmark = pytest.mark.ros


def _record(localizer, frames, estimates):
    add = localizer.add_frame

    def recording(frame):
        frames.append(frame)
        est = add(frame)
        if est is not None:
            estimates.append(est)
        return est

    localizer.add_frame = recording


def _through_the_node(ctx, bag, overrides):
    """Feed the bag's messages to the node's own callbacks in bag order (no DDS)."""
    from rclpy.parameter import Parameter

    from cvl_ros.ros.node import LocalizerNode
    from cvl_ros.ros.replay import deserialize_rclpy

    node = LocalizerNode(context=ctx, parameter_overrides=[
        Parameter(k, value=v) for k, v in dict(overrides, autostart=False).items()])
    try:
        node.trigger_configure()
        assert node.localizer is not None, node.missing
        frames, estimates = [], []
        _record(node.localizer, frames, estimates)
        t = offline.BagTopics()
        handlers = {t.camera_info: node._on_info, t.odom: node._on_odom, t.imu: node._on_imu,
                    t.tf_static: node._on_tf_static, t.fix: node._on_gps}
        pending = []
        for m in bags.iter_bag(bag):
            if m.topic == t.image:
                pending.append(deserialize_rclpy(m))
            elif m.topic in handlers:
                handlers[m.topic](deserialize_rclpy(m))
            while pending and node.assembler.odometry_reaches(
                    offline.bags_stamp_ns(pending[0])):
                node._process(pending.pop(0), time.monotonic())
        for img in pending:
            node._process(img, time.monotonic())
        return frames, estimates, node.counters["input_errors"], node.last_error
    finally:
        node.destroy_node()


@pytest.mark.parametrize("heading_source", ["auto", "odom"])
def test_node_and_offline_runner_build_identical_frames_and_estimates(
        tmp_path, ros_context, heading_source):
    drive = tiny_drive(tmp_path, n=24, image_hw=(40, 124), yaw_rate=0.05)
    write_kitti_bag(drive, tmp_path / "bag", storage="mcap", odom_drift_pct=1.0,
                    odom_yaw_drift_deg_per_100m=1.0)
    p0 = KittiDrive(drive).oxts[0]
    ckpt, db = build_tiny_resources(tmp_path, datum=GeoDatum(p0.lat, p0.lon, 0.0))
    overrides = {"checkpoint_path": str(ckpt), "database_path": str(db), "device": "cpu",
                 "heading_source": heading_source, "localizer.window_length": 2,
                 "localizer.keyframe_distance_m": 0.5}
    values = P.validate(overrides)
    loc, _, _ = offline.load_localizer(values)
    off_frames, off_est = [], []
    _record(loc, off_frames, off_est)
    res = offline.run_localizer_on_bag(loc, tmp_path / "bag", frontend=P.frontend_config(values),
                                       use_gps_prior=True, progress=False)
    assert res.frames_used == 24, res.skipped
    node_frames, node_est, node_errors, last_error = _through_the_node(
        ros_context, tmp_path / "bag", overrides)
    assert node_errors == 0, last_error

    assert len(node_frames) == len(off_frames) == 24
    for a, b in zip(node_frames, off_frames):
        assert a.stamp_ns == b.stamp_ns
        assert np.array_equal(a.image_rgb, b.image_rgb)
        assert np.array_equal(a.camera.K, b.camera.K)
        assert np.array_equal(a.T_odom_body, b.T_odom_body)
        assert np.array_equal(a.T_body_cam, b.T_body_cam)
        assert a.heading_enu_rad == b.heading_enu_rad
    # what the frames carry is what the bag says (not both equally wrong): the IMU heading with
    # auto, none with odom; extrinsics from /tf_static, not the parameter's default
    if heading_source == "auto":
        assert all(f.heading_enu_rad is not None for f in off_frames)
    else:
        assert all(f.heading_enu_rad is None for f in off_frames)
    assert not np.allclose(off_frames[0].T_body_cam[:3, 3], [0.0, 0.0, 1.65])

    assert len(node_est) == len(off_est) >= 10
    assert any(e.tiles_searched > 0 for e in off_est)
    for a, b in zip(node_est, off_est):
        assert (a.stamp_ns, a.status, a.tile_id) == (b.stamp_ns, b.status, b.tile_id)
        assert np.array_equal([a.east_m, a.north_m, a.yaw_rad], [b.east_m, b.north_m, b.yaw_rad],
                              equal_nan=True)
        assert np.array_equal(a.covariance_xy, b.covariance_xy)
        assert a.confidence == b.confidence


def test_offline_runner_refuses_what_the_node_refuses(tmp_path, capsys):
    """cvl-localize-bag exits 2 with the parameter module's message for each invalid value."""
    from cvl_ros.cli import localize_bag

    drive = tiny_drive(tmp_path, n=2)
    write_kitti_bag(drive, tmp_path / "bag", odom_drift_pct=0.0, odom_yaw_drift_deg_per_100m=0.0)
    cases = {"heading_source: IMU": "heading_source must be one of auto, estimate, imu, odom",
             'use_gps_prior: "false"': "use_gps_prior must be true or false",
             "localizer:\n      window_length: true": "window_length must be an integer"}
    for line, words in cases.items():
        f = tmp_path / "p.yaml"
        f.write_text(f"/**:\n  ros__parameters:\n    {line}\n")
        code = localize_bag.main([str(tmp_path / "bag"), "--out", str(tmp_path / "o"),
                                  "--params-file", str(f)])
        err = capsys.readouterr().err
        assert code == 2 and words in err and "Traceback" not in err, err
        try:
            P.validate(P.read_params_file(f))
        except P.ParameterError as exc:  # the node's configure fails on the same message
            assert words in str(exc)
        else:
            raise AssertionError("the parameter module accepted " + line)
    assert not (tmp_path / "o").exists()
