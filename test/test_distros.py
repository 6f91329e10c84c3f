"""ROS 2 distributions: Kilted (default) and Jazzy (LTS) in the pip-only world.

- the pinned requirement files of the two distributions differ only in their ROS wheels;
- ``make setup`` picks the distribution from ``ROS_DISTRO``, refuses an unknown one and a venv
  that holds the other one, before anything is installed;
- bags written by ``cvl-kitti2bag`` (rosbag2 metadata version 9, mcap and sqlite3) carry the
  type hashes of the running distribution's message definitions and read back with its rclpy
  (written back, the same message); bags of rosbags' Jazzy typestore read with the project's reader;
- a lifecycle request that is not valid from the current state leaves the node running (Jazzy's
  rclpy 7 raised out of the change_state service and ended the executor).

CI runs the whole suite on Kilted and on Jazzy (.ci/run), so the ROS tests here check each one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from _bag_drives import tiny_drive

from cvl_ros.ros import bags

ROOT = Path(__file__).resolve().parents[1]
FILES = {"kilted": ("requirements.txt", "constraints.txt"),
         "jazzy": ("requirements-jazzy.txt", "constraints-jazzy.txt")}
RCLPY = {"kilted": "9.1.2", "jazzy": "7.1.6"}
#: every message type cvl-kitti2bag writes
BAG_TYPES = (bags.MSG_IMAGE, bags.MSG_CAMERA_INFO, bags.MSG_NAVSATFIX, bags.MSG_IMU,
             bags.MSG_ODOMETRY, bags.MSG_POSE_STAMPED, bags.MSG_TF)


def _pins(name: str) -> dict[str, str]:
    """``{normalised name: version}`` of a pinned requirements/constraints file."""
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        pkg, sep, version = line.partition("==")
        assert sep, f"{name}: not pinned exactly: {line!r}"
        out[re.sub(r"[-_.]+", "-", pkg.strip().lower())] = version.strip()
    return out


def _split(pins: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    ros = {k: v for k, v in pins.items() if k.startswith("ros-")}
    return ros, {k: v for k, v in pins.items() if k not in ros}


@pytest.mark.parametrize("kind", [0, 1], ids=["requirements", "constraints"])
def test_distributions_differ_only_in_ros_wheels(kind):
    kilted_ros, kilted_other = _split(_pins(FILES["kilted"][kind]))
    jazzy_ros, jazzy_other = _split(_pins(FILES["jazzy"][kind]))
    assert jazzy_other == kilted_other
    assert kilted_ros["ros-rclpy"] == RCLPY["kilted"] and jazzy_ros["ros-rclpy"] == RCLPY["jazzy"]
    # no Kilted wheel left in the Jazzy set (same name and version)
    assert not {k for k, v in jazzy_ros.items() if kilted_ros.get(k) == v} - {
        "ros-python-cmake-module", "ros-foonathan-memory-vendor", "ros-wheels-bootstrapper"}


@pytest.mark.parametrize("distro", sorted(FILES))
def test_requirements_agree_with_constraints(distro):
    req, cons = (_pins(f) for f in FILES[distro])
    cons["torch"] = cons["torch"].split("+")[0]  # the local CPU wheel: torch==2.13.0+cpu
    assert {k: cons.get(k) for k in req} == req


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ROS_DISTRO", "VENV", "CVL_VENV", "CVL_ROS_DISTRO", "MAKEFLAGS")}
    env.update(extra)
    return env


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("distro,venv", [(None, ".venv"), ("kilted", ".venv"),
                                         ("jazzy", ".venv-jazzy")])
def test_make_picks_the_distribution_and_its_venv(distro, venv):
    args = ["make", "-n", "setup"] + ([f"ROS_DISTRO={distro}"] if distro else [])
    out = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, check=True)
    assert f'CVL_VENV="{ROOT / venv}"' in out.stdout
    assert f'CVL_ROS_DISTRO="{distro or "kilted"}"' in out.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_unknown_distribution_is_a_clear_error(tmp_path):
    venv = tmp_path / "venv"
    res = subprocess.run(["make", "setup", "ROS_DISTRO=humble", f"VENV={venv}"], cwd=ROOT,
                         env=_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "unknown ROS_DISTRO 'humble'" in res.stderr and "'jazzy'" in res.stderr
    assert not venv.exists()  # nothing made


@pytest.mark.parametrize("stamp", ["distro", "deps"])
def test_venv_of_the_other_distribution_is_refused(tmp_path, stamp):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".cvl-setup").mkdir()
    # a venv set up before the distro stamp existed (deps stamp only) is a Kilted one
    (venv / ".cvl-setup" / stamp).write_text("kilted\n")
    res = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], cwd=ROOT,
                         env=_env(CVL_VENV=str(venv), CVL_ROS_DISTRO="jazzy"),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "holds ROS 2 kilted, not jazzy" in res.stderr and ".venv-jazzy" in res.stderr
    assert sorted(p.name for p in (venv / ".cvl-setup").iterdir()) == sorted([stamp, "lock"])


# ------------------------------------------------------------------------------------- bags
def _share_hash(msgtype: str) -> str:
    """The RIHS01 hash the installed distribution's interface package declares for a type."""
    from ament_index_python.packages import get_package_share_directory

    pkg, _, name = msgtype.split("/")
    desc = Path(get_package_share_directory(pkg), "msg", f"{name}.json")
    return json.loads(desc.read_text())["type_hashes"][0]["hash_string"]


@pytest.mark.ros
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_kitti2bag_bag_reads_with_this_distributions_definitions(tmp_path, storage):
    from rclpy.serialization import deserialize_message, serialize_message

    from cvl_ros.ros.kitti_bag import write_kitti_bag
    from cvl_ros.ros.replay import rclpy_message_class

    bag = tmp_path / "bag"
    write_kitti_bag(tiny_drive(tmp_path, n=3), bag, storage=storage)
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    # rosbag2 of Jazzy and Kilted both read and write metadata version 9
    assert meta["version"] == 9 and meta["storage_identifier"] == storage
    hashes = {t["topic_metadata"]["type"]: t["topic_metadata"]["type_description_hash"]
              for t in meta["topics_with_message_count"]}
    assert set(BAG_TYPES) <= set(hashes)
    assert hashes == {t: _share_hash(t) for t in hashes}
    store = bags.make_typestore()
    seen = set()
    for m in bags.iter_bag(bag):
        msg = deserialize_message(m.data, rclpy_message_class(m.msgtype))
        ref = store.deserialize_cdr(m.data, m.msgtype)
        # this rclpy writes the same message back (Fast CDR leaves its padding bytes
        # uninitialised, so the bytes compare after a round through rosbags, which zeroes them)
        again = store.deserialize_cdr(serialize_message(msg), m.msgtype)
        assert store.serialize_cdr(again, m.msgtype) == m.data, m.topic
        header = getattr(msg, "header", None) or msg.transforms[0].header
        ref_header = getattr(ref, "header", None) or ref.transforms[0].header
        assert (header.frame_id, header.stamp.sec, header.stamp.nanosec) == (
            ref_header.frame_id, ref_header.stamp.sec, ref_header.stamp.nanosec)
        seen.add(m.msgtype)
    assert seen == set(hashes)


def test_jazzy_and_kilted_typestores_agree_both_ways(tmp_path):
    """Same type hashes; a bag of either typestore reads with the other's definitions."""
    from rosbags.rosbag2 import Reader, Writer
    from rosbags.typesys import Stores, get_typestore

    jazzy, kilted = get_typestore(Stores.ROS2_JAZZY), get_typestore(Stores.ROS2_KILTED)
    for t in (*BAG_TYPES, bags.MSG_CLOCK):
        assert jazzy.hash_rihs01(t) == kilted.hash_rihs01(t), t
    for writer_store, reader_store, name in ((jazzy, kilted, "j"), (kilted, jazzy, "k")):
        Header = writer_store.types["std_msgs/msg/Header"]
        Time = writer_store.types["builtin_interfaces/msg/Time"]
        Fix = writer_store.types[bags.MSG_NAVSATFIX]
        Status = writer_store.types["sensor_msgs/msg/NavSatStatus"]
        cov = np.arange(9, dtype=float)
        fix = Fix(header=Header(stamp=Time(sec=7, nanosec=9), frame_id="gps"),
                  status=Status(status=0, service=1), latitude=49.0, longitude=8.4, altitude=1.5,
                  position_covariance=cov, position_covariance_type=2)
        with Writer(tmp_path / name, version=9) as w:
            conn = w.add_connection(bags.TOPIC_FIX, bags.MSG_NAVSATFIX, typestore=writer_store)
            w.write(conn, 5, writer_store.serialize_cdr(fix, bags.MSG_NAVSATFIX))
        with Reader(tmp_path / name) as r:
            (c, stamp, raw), = list(r.messages())
            got = reader_store.deserialize_cdr(raw, c.msgtype)
        assert c.digest == reader_store.hash_rihs01(bags.MSG_NAVSATFIX)
        assert (got.header.frame_id, got.latitude, list(got.position_covariance)) == (
            "gps", 49.0, list(cov))
        # and the project's reader (its typestore) sees the message
        (m,) = list(bags.iter_bag(tmp_path / name))
        assert m.msgtype == bags.MSG_NAVSATFIX and m.stamp_ns == 5


# ---------------------------------------------------------------------------------- lifecycle
@pytest.mark.ros
def test_invalid_lifecycle_request_keeps_the_node_running(ros_executor, spin_until):
    import rclpy
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rclpy.lifecycle import TransitionCallbackReturn

    from cvl_ros.ros.node import LocalizerNode

    node = LocalizerNode(context=ros_executor.context)
    client = rclpy.create_node("lifecycle_client", context=ros_executor.context)
    ros_executor.add_node(node)
    ros_executor.add_node(client)
    cli = client.create_client(ChangeState, f"/{node.get_name()}/change_state")
    assert cli.wait_for_service(timeout_sec=5.0)
    fut = cli.call_async(ChangeState.Request(transition=Transition(
        id=Transition.TRANSITION_ACTIVATE)))  # not valid while unconfigured
    spin_until(ros_executor, fut.done, 10.0, "change_state answer")
    assert fut.result().success is False
    assert node.trigger_activate() == TransitionCallbackReturn.ERROR
    assert node._state_machine.current_state[1] == "unconfigured"
    ros_executor.spin_once(timeout_sec=0.1)  # still spinning
