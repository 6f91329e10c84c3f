"""config/: the robot_localization EKF example, the RViz config and the Foxglove layout parse and
name only what the node publishes (topics, frames of config/localize.yaml). No ROS needed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from cvl_ros.cli.record import NODE_OUTPUTS, node_output_topics

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
NODE = "cvl_localizer"

#: Topics the node subscribes to (relative names in the root namespace), see docs/node.md.
NODE_INPUTS = {"/image", "/image/compressed", "/camera_info", "/odom", "/imu", "/gps/fix",
               "/initialpose", "/tf", "/tf_static"}

#: robot_localization's *_config order.
STATE = ["x", "y", "z", "roll", "pitch", "yaw", "vx", "vy", "vz", "vroll", "vpitch", "vyaw",
         "ax", "ay", "az"]


def _node_params() -> dict:
    return yaml.safe_load((CONFIG / "localize.yaml").read_text())["/**"]["ros__parameters"]


def _outputs() -> dict[str, str]:
    return node_output_topics(NODE)


def _fused(cfg: list) -> set[str]:
    assert len(cfg) == 15 and all(isinstance(v, bool) for v in cfg)
    return {name for name, on in zip(STATE, cfg) if on}


def test_ekf_example_is_wired_to_the_node_outputs_and_frames():
    doc = yaml.safe_load((CONFIG / "ekf_gps_denied.yaml").read_text())
    (name, body), = doc.items()
    p = body["ros__parameters"]
    node = _node_params()
    assert p["map_frame"] == node["map_frame"] == p["world_frame"]
    assert p["odom_frame"] == node["odom_frame"]
    assert p["base_link_frame"] == node["base_frame"]
    assert p["two_d_mode"] is True and p["publish_tf"] is True
    # pose0: the node's map pose (a type robot_localization takes as poseN)
    assert p["pose0"] == f"/{NODE}/pose" and p["pose0"] in _outputs()
    assert NODE_OUTPUTS["pose"] == "geometry_msgs/msg/PoseWithCovarianceStamped"
    # x, y and yaw: the example runs heading_source estimate, so the node's yaw is its own
    # estimate with its variance; the IMU's yaw is then not fused a second time
    assert _fused(p["pose0_config"]) == {"x", "y", "yaw"}
    text0 = (CONFIG / "ekf_gps_denied.yaml").read_text()
    assert "heading_source auto (= estimate)" in text0
    imu0 = [ln for ln in text0.splitlines() if ln.strip().startswith("#") and "false," in ln]
    assert imu0  # the commented imu0 block
    block = text0[text0.index("# imu0_config"):].splitlines()[:2]
    assert "false, false, false" in block[1]  # imu0 yaw (6th entry) false
    assert p["pose0_differential"] is False and p["pose0_relative"] is False
    # odom0: the odometry the node reads, velocities only
    assert p["odom0"] == "/odom" and p["odom0"] in NODE_INPUTS
    assert _fused(p["odom0_config"]) == {"vx", "vy", "vyaw"}
    # the lag of the fixes is absorbed by the history
    assert p["smooth_lagged_data"] is True and p["history_length"] >= 1.0
    text = (CONFIG / "ekf_gps_denied.yaml").read_text()
    assert "publish_tf:=false" in text  # the node must leave map -> odom to the EKF
    assert "imu0" in text  # says what to do when the IMU is fused directly


def _rviz_topics(node) -> list[str]:
    """Every ``Topic: {Value: ...}`` under ``node`` (displays and tools)."""
    out = []
    if isinstance(node, dict):
        t = node.get("Topic")
        if isinstance(t, dict) and "Value" in t:
            out.append(t["Value"])
        for v in node.values():
            out += _rviz_topics(v)
    elif isinstance(node, list):
        for v in node:
            out += _rviz_topics(v)
    return out


def test_rviz_config_shows_tf_pose_heatmap_in_the_map_frame():
    cfg = yaml.safe_load((CONFIG / "cvl_localize.rviz").read_text())
    vm = cfg["Visualization Manager"]
    node = _node_params()
    assert vm["Global Options"]["Fixed Frame"] == node["map_frame"]
    displays = {d["Class"]: d for d in vm["Displays"]}
    assert {f"rviz_default_plugins/{c}" for c in ("TF", "Grid", "PoseWithCovariance",
                                                  "Image")} <= set(displays)
    assert displays["rviz_default_plugins/Grid"]["Reference Frame"] == node["map_frame"]
    assert displays["rviz_default_plugins/PoseWithCovariance"]["Topic"]["Value"] == f"/{NODE}/pose"
    assert displays["rviz_default_plugins/Image"]["Topic"]["Value"] == f"/{NODE}/heatmap"
    outputs = _outputs()
    for topic in _rviz_topics(vm["Displays"]):
        assert topic in outputs, topic
    # the initial-pose tool publishes what the node listens to
    assert _rviz_topics(vm["Tools"]) == ["/initialpose"]
    assert vm["Views"]["Current"]["Target Frame"] == node["base_frame"]


def _geo_pose_fields() -> set[str]:
    text = (ROOT / "msg" / "GeoPoseEstimate.msg").read_text()
    fields = set()
    for line in text.splitlines():
        m = re.match(r"^\s*[A-Za-z0-9_/\[\]<=]+\s+([a-z_][a-z0-9_]*)\s*(#.*)?$", line)
        if m:
            fields.add(m.group(1))
    return fields


def test_foxglove_layout_panels_name_node_outputs():
    doc = json.loads((CONFIG / "foxglove_layout.json").read_text())
    panels = doc["configById"]

    def ids(node):
        if isinstance(node, str):
            return {node}
        return ids(node["first"]) | ids(node["second"])

    assert ids(doc["layout"]) == set(panels)
    kinds = {pid.split("!")[0]: cfg for pid, cfg in panels.items()}
    assert set(kinds) == {"3D", "Image", "Plot"}
    outputs = _outputs()
    three_d = kinds["3D"]
    assert set(three_d["topics"]) == {"/tf", f"/{NODE}/pose"}
    assert set(three_d["topics"]) <= set(outputs)
    assert three_d["followTf"] == _node_params()["map_frame"]
    assert three_d["layers"]["grid"]["frameId"] == _node_params()["map_frame"]
    assert three_d["publish"]["poseEstimateTopic"] == "/initialpose"
    assert kinds["Image"]["imageMode"]["imageTopic"] == f"/{NODE}/heatmap" in outputs
    paths = [p["value"] for p in kinds["Plot"]["paths"] if p["enabled"]]
    assert paths == [f"/{NODE}/geo_pose.confidence"]
    topic, field = paths[0].split(".")
    assert topic in outputs and field in _geo_pose_fields()
