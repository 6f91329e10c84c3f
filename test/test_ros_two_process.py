"""The node as its own process (`cvl-localize` + the shipped params file), inputs from this one."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _ros_node_helpers import Drive, build_tiny_resources, extrinsics_param

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = ROOT / "config" / "localize.yaml"
# Each parameter's comment in the params file states its unit in brackets, or what it is when it
# has none: [count], [unitless] (ratio, fraction, factor, score units), [bool], [path], [frame],
# or [choices] next to the list of allowed values ("a | b").
_UNIT_TOKEN = re.compile(r"\[(m|s|rad|deg|Hz|m/s|px|%|count|unitless|bool|path|frame|choices)\]")
_NAME_SUFFIX_UNIT = {"_m": "m", "_s": "s", "_rad": "rad", "_deg": "deg", "_hz": "Hz"}


def _stop(proc, log) -> int:
    """SIGINT the node process (kill after 15 s), close its log; its exit code."""
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    log.close()
    return rc


def _node_cmd():
    exe = shutil.which("cvl-localize", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "cvl_ros.ros.node"]


def test_params_file_documents_every_parameter_with_the_node_defaults():
    from cvl_ros import params as P

    text = PARAMS_FILE.read_text()
    params = yaml.safe_load(text)["/**"]["ros__parameters"]
    loc = params.pop("localizer")
    flat = dict(params, **{"localizer." + k: v for k, v in loc.items()})
    assert flat == P.defaults()
    lines = text.splitlines()
    checked = 0
    for i, line in enumerate(lines):  # every parameter line follows a comment with unit + default
        s = line.strip()
        if s and not s.startswith("#") and ":" in s and not s.endswith(":"):
            j, block = i - 1, []
            while j >= 0 and lines[j].strip().startswith("#"):
                block.insert(0, lines[j].strip().lstrip("#").strip())
                j -= 1
            comment = " ".join(block)
            key, value = s.split(":", 1)
            value = yaml.safe_load(value)
            default = re.search(r"\(default (.*)\)$", comment)
            assert default, f"{key}: comment must end with (default ...): {comment!r}"
            assert yaml.safe_load(default.group(1)) == value, (key, default.group(1), value)
            units = _UNIT_TOKEN.findall(comment)
            assert units, f"{key}: comment states no unit/kind token {_UNIT_TOKEN.pattern}"
            for suffix, unit in _NAME_SUFFIX_UNIT.items():  # the name's unit is stated too
                if key.endswith(suffix):
                    assert unit in units, f"{key}: comment lacks [{unit}]: {comment!r}"
            if isinstance(value, bool):
                assert "bool" in units, f"{key}: bool parameter without [bool]"
            if "choices" in units:
                assert " | " in comment and str(value) in comment, f"{key}: choices not listed"
            checked += 1
    assert checked == len(P.PARAMS)


def test_shipped_params_file_alone_configures_or_fails_configure_with_the_reason(ros_context):
    from rclpy.lifecycle import TransitionCallbackReturn

    from cvl_ros.ros.node import LocalizerNode

    node = LocalizerNode(context=ros_context,
                         cli_args=["--ros-args", "--params-file", str(PARAMS_FILE)])
    try:
        assert node.p("database_path") == "demo_out/db"
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            # the demo model and the demo database are built: it localizes
            assert node.localizer is not None
            node.trigger_activate()
            assert node._lifecycle_state == "active"
        else:
            # a real install without them: configure fails (a lifecycle manager sees it) and
            # the node says what is missing and how to build it
            assert node._lifecycle_state == "unconfigured" and node.localizer is None
            assert any("cvl-build-db" in m or "models/cvlnet_demo" in m for m in node.missing)
    finally:
        node.destroy_node()


def test_cvl_localize_refuses_a_broken_params_file_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    queue_size: [1,\n")
    for args in (["--params-file", str(bad)], ["-p", "use_sim_time:=maybe"]):
        res = subprocess.run(_node_cmd() + ["--ros-args", *args], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr and "cvl-localize:" in res.stderr, res.stderr


def test_cvl_localize_stays_up_unconfigured_with_the_reason(tmp_path, ros_executor, spin_until):
    """A wrong-typed parameter and a missing database: no exit, no traceback; /diagnostics
    says why (ERROR, unconfigured) and that configure is retried."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    params = tmp_path / "wrong_types.yaml"
    params.write_text(PARAMS_FILE.read_text().replace("queue_size: 1", "queue_size: two")
                      .replace("diagnostics_rate_hz: 1.0", "diagnostics_rate_hz: fast"))
    assert "queue_size: two" in params.read_text() and "rate_hz: fast" in params.read_text()
    cmd = _node_cmd() + ["--ros-args", "--params-file", str(params),
                         "-p", f"database_path:={tmp_path / 'nope'}"]
    log = open(tmp_path / "node.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        n = rclpy.create_node("diag_probe", context=ros_executor.context)
        diags = []
        n.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
        ros_executor.add_node(n)
        spin_until(ros_executor, lambda: any(
            d.status[0].hardware_id == "cvl_localizer" for d in diags), 30.0,
            "diagnostics of the unconfigured node")
        st = [d.status[0] for d in diags if d.status[0].hardware_id == "cvl_localizer"][-1]
        values = {kv.key: kv.value for kv in st.values}
        assert st.level == st.ERROR and values["lifecycle_state"] == "unconfigured"
        assert "queue_size" in values["missing_resources"] and "retried" in st.message
        assert proc.poll() is None
    finally:
        rc = _stop(proc, log)
    out = (tmp_path / "node.log").read_text()
    assert "Traceback" not in out and "queue_size" in out, out
    assert rc in (0, -signal.SIGINT), out


def test_two_processes(tmp_path, ros_executor, spin_until):
    from test_ros_node import Probe

    from cvl_ros.ros.convert import stamp_to_ns

    ckpt, db = build_tiny_resources(tmp_path)
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("OMP_NUM_THREADS", "1")
    xyz = ",".join(str(v) for v in extrinsics_param())
    cmd = _node_cmd() + ["--ros-args", "--params-file", str(PARAMS_FILE),
                         "-p", f"checkpoint_path:={ckpt}", "-p", f"database_path:={db}",
                         "-p", "device:=cpu", "-p", "use_tf_static_extrinsics:=false",
                         "-p", f"camera_extrinsics_xyz_rpy:=[{xyz}]",
                         "-p", "odom_wait_s:=1.0",
                         # no IMU, odometry aligned with ENU: its heading taken as given
                         "-p", "heading_source:=odom"]
    log = open(tmp_path / "node.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        probe = Probe(ros_executor.context)
        ros_executor.add_node(probe.node)

        # the node is another process: its start (importing torch, loading the model) is
        # part of this wait, which takes longer than in-process on a loaded machine
        def connected():
            if proc.poll() is not None:
                pytest.fail(f"the node exited ({proc.returncode}) before subscribing:\n"
                            + (tmp_path / "node.log").read_text())
            return (probe.pub_img.get_subscription_count() > 0
                    and probe.pub_odom.get_subscription_count() > 0
                    and probe.pub_info.get_subscription_count() > 0)

        spin_until(ros_executor, connected, 60.0, "the node process's subscriptions")
        # discovery is asymmetric: the first messages may go before the node has matched our
        # publishers, so frames are fed until outputs flow, then every frame must get one
        drive = Drive(n=12)
        t0 = time.monotonic()
        got = []
        for i in range(len(drive.stamps)):
            probe.pub_odom.publish(drive.odom_msg(i))
            probe.pub_info.publish(drive.info_msg(i))
            probe.pub_img.publish(drive.image_msg(i))
            deadline = time.monotonic() + (20.0 if got else 3.0)
            while not probe.geo_for(drive.stamps[i]) and time.monotonic() < deadline:
                ros_executor.spin_once(timeout_sec=0.05)
            if probe.geo_for(drive.stamps[i]):
                got.append(i)
            elif got:
                pytest.fail(f"no geo_pose for frame {i} after outputs started (got {got})")
            if len(got) >= 3:
                break
        assert len(got) >= 3, (tmp_path / "node.log").read_text()
        drive.stamps = drive.stamps[: got[-1] + 1]
        g = probe.geo_for(drive.stamps[-1])[-1]
        assert stamp_to_ns(g.header.stamp) == drive.stamps[-1]
        assert g.tiles_searched > 0 and g.window_length >= 1
        assert time.monotonic() - t0 < 60
        spin_until(ros_executor, lambda: any(
            d.status[0].name.endswith("localization") for d in probe.diag), 5.0, "diagnostics")
        # runtime parameter changes from another process (what `ros2 param set` does) go
        # through the configure-time rules: refused with the reason, or applied
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        cli = probe.node.create_client(SetParameters, "/cvl_localizer/set_parameters")
        assert cli.wait_for_service(timeout_sec=10.0)
        for name, value, ok, words in [("heading_source", "IMU", False, "one of auto"),
                                       ("transform_tolerance", -5.0, False, ">= 0"),
                                       ("queue_size", 0, False, ">= 1"),
                                       ("imu_tolerance_s", 0.5, True, "")]:
            fut = cli.call_async(SetParameters.Request(
                parameters=[Parameter(name, value=value).to_parameter_msg()]))
            spin_until(ros_executor, fut.done, 10.0, f"set {name}")
            res = fut.result().results[0]
            assert res.successful is ok and words in res.reason, (name, res)
    finally:
        rc = _stop(proc, log)
    out = (tmp_path / "node.log").read_text()
    assert "configured: model" in out, out
    assert rc in (0, -signal.SIGINT), out
