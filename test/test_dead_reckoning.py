"""Odometry dead-reckoned from the OXTS velocities (``cvl_ros.kitti.dead_reckon_oxts``) and
its use by cvl-kitti2bag: no GPS position enters the odometry topic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _bag_drives import tiny_drive
from rosbags.rosbag2 import Reader

from cvl_ros.cli.kitti2bag import main as kitti2bag_main
from cvl_ros.kitti import (
    OxtsPacket,
    dead_reckon_oxts,
    read_oxts_dir,
    read_timestamps,
    rotation_to_rpy,
    write_oxts_dir,
)
from cvl_ros.ros import bags
from cvl_ros.ros.bags import make_typestore
from cvl_ros.ros.kitti_bag import write_kitti_bag


def _odom_xy(bag):
    store = make_typestore()
    out = []
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == bags.TOPIC_ODOM]
        for conn, _, raw in reader.messages(connections=conns):
            m = store.deserialize_cdr(raw, conn.msgtype)
            out.append((m.pose.pose.position.x, m.pose.pose.position.y))
    return np.array(out)


def test_circle_at_constant_rates_matches_the_analytic_arc():
    v, w, dt, n = 10.0, 0.2, 0.1, 101  # 100 m on a 50 m radius circle
    packets = [OxtsPacket(vf=v, wu=w, roll=0.01, pitch=-0.02) for _ in range(n)]
    stamps = (np.arange(n) * dt * 1e9).astype(np.int64)
    T = dead_reckon_oxts(packets, stamps)
    t = np.arange(n) * dt
    expected = np.stack([v / w * np.sin(w * t), v / w * (1.0 - np.cos(w * t))], 1)
    np.testing.assert_allclose(T[:, :2, 3], expected, atol=0.01)  # trapezoid: mm over 100 m
    roll, pitch, yaw = rotation_to_rpy(T[-1, :3, :3])
    assert (roll, pitch) == pytest.approx((0.01, -0.02), abs=1e-12)
    assert yaw == pytest.approx(w * t[-1], abs=1e-9)
    assert T[0, :3, 3] == pytest.approx([0.0, 0.0, 0.0])


def test_level_frame_velocities_and_uneven_stamps():
    # vl (leftward) moves the vehicle sideways; vu climbs; a dropped packet doubles one dt
    packets = [OxtsPacket(vf=0.0, vl=2.0, vu=0.5) for _ in range(4)]
    stamps = np.array([0, 100_000_000, 300_000_000, 400_000_000])
    T = dead_reckon_oxts(packets, stamps)
    np.testing.assert_allclose(T[:, :3, 3], [[0, 0, 0], [0, 0.2, 0.05], [0, 0.6, 0.15],
                                             [0, 0.8, 0.2]], atol=1e-12)


def test_bad_packets_are_clear_errors():
    good = [OxtsPacket(vf=1.0) for _ in range(3)]
    with pytest.raises(ValueError, match="backwards"):
        dead_reckon_oxts(good, [0, 200, 100])
    with pytest.raises(ValueError, match="packet 1 has a non-finite"):
        dead_reckon_oxts([OxtsPacket(), OxtsPacket(vf=math.nan), OxtsPacket()], [0, 1, 2])
    with pytest.raises(ValueError, match="stamps"):
        dead_reckon_oxts(good, [0, 1])


def test_bag_odometry_ignores_gps_jitter(tmp_path):
    """GPS noise on oxts/ positions must not reach the odometry: it is built from velocities."""
    # no oxts_true/: the (jittered) oxts/ is also the ground truth; odometry must not use it
    drive = tiny_drive(tmp_path, n=40, yaw_rate=0.15)
    clean = write_kitti_bag(drive, tmp_path / "clean", odom_drift_pct=0.0,
                            odom_yaw_drift_deg_per_100m=0.0)
    od_clean = _odom_xy(tmp_path / "clean")
    packets = read_oxts_dir(drive)
    rng = np.random.default_rng(0)
    for p in packets:  # ~2 m of white GPS noise per packet
        p.lat += rng.normal(0.0, 2.0 / 111_000.0)
        p.lon += rng.normal(0.0, 2.0 / 73_000.0)
    write_oxts_dir(drive, packets, read_timestamps(drive / "oxts" / "timestamps.txt"))
    write_kitti_bag(drive, tmp_path / "jitter", odom_drift_pct=0.0,
                    odom_yaw_drift_deg_per_100m=0.0)
    np.testing.assert_allclose(_odom_xy(tmp_path / "jitter"), od_clean, atol=1e-9)
    # and the clean odometry follows the true path (relative to the start) within centimetres
    assert clean.frames == 40
    step = np.linalg.norm(np.diff(od_clean, axis=0), axis=1)
    assert step == pytest.approx(np.full(39, 0.8), abs=0.01)  # 8 m/s at 10 Hz


def test_cli_odom_noise_is_seeded(tmp_path):
    drive = tiny_drive(tmp_path, n=12)
    runs = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert kitti2bag_main(["--drive", str(drive), "--out", str(tmp_path / name), "--quiet",
                               "--storage", "mcap", "--odom-drift", "0", "--odom-noise", "5",
                               "--seed", seed]) == 0
        runs[name] = _odom_xy(tmp_path / name)
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert np.abs(runs["a"] - runs["c"]).max() > 1e-3
