"""cvl-replay message types: a bag's declared type never picks a module to import (issue 13).

A bag is untrusted input. Its connection declares ``evilpkg/msg/Foo``; a package ``evilpkg``
that writes a marker file when imported sits in the current folder and on ``sys.path``. The
resolver must refuse the type without importing anything, the replayer (in process and as
``python -m cvl_ros.cli.replay`` run from that folder) must skip the topic and play the rest.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cvl_ros.ros.bags import MSG_IMU, bag_topics, make_typestore
from cvl_ros.ros.replay import UnknownMessageTypeError, is_interface_package, rclpy_message_class

EVIL_TYPE = "evilpkg/msg/Foo"
EVIL_TOPIC = "/evil"
IMU_TOPIC = "/imu"
N_IMU = 3


def _evil_package(root: Path) -> Path:
    """Create ``root/evilpkg`` (with ``msg/``) whose import writes ``root/marker``; return it."""
    marker = root / "marker"
    pkg = root / "evilpkg"
    (pkg / "msg").mkdir(parents=True)
    payload = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    (pkg / "__init__.py").write_text(payload)
    (pkg / "msg" / "__init__.py").write_text(payload + "class Foo:\n    pass\n")
    return marker


def _write_bag(path: Path) -> Any:
    """Write a tiny sqlite3 bag: one ``evilpkg/msg/Foo`` message and a few IMU messages."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import get_types_from_msg

    store = make_typestore()
    store.register(get_types_from_msg("int32 x", EVIL_TYPE))  # for writing only
    with Writer(path, version=Writer.VERSION_LATEST,
                storage_plugin=StoragePlugin.SQLITE3) as writer:
        c_evil = writer.add_connection(EVIL_TOPIC, EVIL_TYPE, typestore=store)
        c_imu = writer.add_connection(IMU_TOPIC, MSG_IMU, typestore=store)
        t0 = 1_000_000_000
        foo = store.types[EVIL_TYPE](x=42)
        writer.write(c_evil, t0, store.serialize_cdr(foo, EVIL_TYPE))
        T = store.types
        for i in range(N_IMU):
            stamp = t0 + (i + 1) * 10_000_000
            msg = T[MSG_IMU](
                header=T["std_msgs/msg/Header"](
                    stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=(i + 1) * 10_000_000),
                    frame_id="imu_link"),
                orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
                orientation_covariance=np.zeros(9),
                angular_velocity=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=float(i)),
                angular_velocity_covariance=np.zeros(9),
                linear_acceleration=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=9.81),
                linear_acceleration_covariance=np.zeros(9))
            writer.write(c_imu, stamp, store.serialize_cdr(msg, MSG_IMU))
    return store


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """(bag, marker, writer typestore): the evil package importable from cwd and sys.path."""
    marker = _evil_package(tmp_path)
    writer_store = _write_bag(tmp_path / "bag")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path / "bag", marker, writer_store
    sys.modules.pop("evilpkg.msg", None)
    sys.modules.pop("evilpkg", None)


def test_bag_declared_type_is_not_imported(evil):
    bag, marker, writer_store = evil
    declared = bag_topics(bag)[EVIL_TOPIC][0]
    assert declared == EVIL_TYPE
    with pytest.raises(UnknownMessageTypeError, match="not a known message type"):
        rclpy_message_class(declared)
    # Even a typestore that knows the type (the writer's) does not make it importable: the
    # package is not an installed interface package in the ament index.
    assert EVIL_TYPE in writer_store.types
    assert not is_interface_package("evilpkg")
    with pytest.raises(UnknownMessageTypeError, match="not an installed ROS 2 interface"):
        rclpy_message_class(declared, writer_store)
    # Malformed names are refused before any lookup.
    for bad in ("evilpkg.msg/Foo", "../evilpkg/msg/Foo", "evilpkg/srv/Foo", "a/b/c/d", ""):
        with pytest.raises(ImportError):
            rclpy_message_class(bad)
    assert not marker.exists()
    assert "evilpkg" not in sys.modules


def test_known_interface_type_resolves():
    assert is_interface_package("sensor_msgs")
    with pytest.raises(UnknownMessageTypeError, match="not a known message type"):
        rclpy_message_class("sensor_msgs/msg/NotAType")


@pytest.mark.ros
def test_known_interface_type_resolves_to_rclpy_class():
    from sensor_msgs.msg import Imu

    from cvl_ros.msg import GeoPoseEstimate

    assert rclpy_message_class(MSG_IMU) is Imu
    assert rclpy_message_class("sensor_msgs/Imu") is Imu
    assert rclpy_message_class("cvl_ros/msg/GeoPoseEstimate") is GeoPoseEstimate


@pytest.mark.ros
def test_replayer_skips_unknown_type_and_plays_the_rest(evil, ros_context, caplog):
    import rclpy

    from cvl_ros.ros.replay import BagReplayer

    bag, marker, _ = evil
    node = rclpy.create_node("replay_types", context=ros_context)
    with caplog.at_level(logging.WARNING, logger="cvl_ros.ros.replay"):
        replayer = BagReplayer(bag, node=node, clock=False, wait_for=[], settle_s=0.0,
                               tail_s=0.0, rate=100.0)
        try:
            stats = replayer.run()
        finally:
            replayer.close()
            node.destroy_node()
    assert replayer.skipped == {EVIL_TOPIC: EVIL_TYPE}
    assert stats.skipped == {EVIL_TOPIC: EVIL_TYPE}
    assert stats.published == {IMU_TOPIC: N_IMU}
    warnings = [r for r in caplog.records if EVIL_TOPIC in r.getMessage()]
    assert len(warnings) == 1 and EVIL_TYPE in warnings[0].getMessage()
    assert not marker.exists()
    assert "evilpkg" not in sys.modules


@pytest.mark.ros
def test_replay_cli_from_the_evil_folder(evil):
    bag, marker, _ = evil
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    res = subprocess.run(
        [sys.executable, "-m", "cvl_ros.cli.replay", "bag", "--no-wait", "--no-clock",
         "--tail", "0", "--rate", "100"],
        cwd=bag.parent, env=env, capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"skipping topic {EVIL_TOPIC}" in out
    assert f"replayed {N_IMU} messages" in out
    assert not marker.exists(), marker.read_text()
