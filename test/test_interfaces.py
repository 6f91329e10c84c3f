"""The msg/ interfaces, tf2_msgs and geographic_msgs: build products import, round-trip through
rclpy, hash."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]


def _make_estimate():
    from cvl_ros.msg import Candidate, GeoPoseEstimate

    msg = GeoPoseEstimate()
    msg.header.stamp.sec = 1317384000
    msg.header.stamp.nanosec = 123456789
    msg.header.frame_id = "map"
    msg.status = GeoPoseEstimate.TRACKING
    msg.latitude_deg = 49.01502614 + 1e-9
    msg.longitude_deg = 8.43940484
    msg.altitude_m = math.nan
    msg.yaw_rad = -2.5
    msg.pose.pose.position.x = 12.25
    msg.pose.pose.position.y = -3.5
    msg.pose.pose.orientation.z = math.sin(-1.25)
    msg.pose.pose.orientation.w = math.cos(-1.25)
    msg.pose.covariance = [float(i) * 0.5 for i in range(36)]
    msg.pose.covariance[35] = 1e9
    msg.confidence = 0.75
    msg.match_score = 0.6171875
    msg.tile_id = "49.015026_8.439405"
    msg.displacement_east_m = 4.5
    msg.displacement_north_m = -7.25
    msg.window_length = 4
    msg.tiles_searched = 2473
    msg.latency_s = 0.125
    msg.datum_latitude_deg = 49.011
    msg.datum_longitude_deg = 8.4225
    msg.datum_altitude_m = 112.5
    msg.candidates = [
        Candidate(tile_id="a", latitude_deg=49.0151, longitude_deg=8.4394, score=0.5),
        Candidate(tile_id="b", latitude_deg=49.0152, longitude_deg=8.4395, score=0.25),
    ]
    return msg


def _assert_same_estimate(sent, received):
    # NaN != NaN: check the altitude apart, then compare every other field with ==.
    assert math.isnan(received.altitude_m)
    received.altitude_m = sent.altitude_m = 0.0
    assert received == sent
    assert list(received.pose.covariance) == list(sent.pose.covariance)
    assert [c.tile_id for c in received.candidates] == ["a", "b"]


def _round_trip(context, executor, spin_until, msg_type, msg, topic):
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub_node = Node("rt_pub", context=context)
    sub_node = Node("rt_sub", context=context)
    executor.add_node(pub_node)
    executor.add_node(sub_node)
    received = []
    pub = pub_node.create_publisher(msg_type, topic, qos)
    sub_node.create_subscription(msg_type, topic, received.append, qos)
    spin_until(executor, lambda: pub.get_subscription_count() > 0, 10.0, "the subscription")
    pub.publish(msg)
    spin_until(executor, lambda: len(received) > 0, 10.0, f"a message on {topic}")
    return received[0]


def test_constants_and_fields():
    from cvl_ros.msg import Candidate, GeoPoseEstimate

    assert (GeoPoseEstimate.NO_FIX, GeoPoseEstimate.INITIALIZING, GeoPoseEstimate.TRACKING,
            GeoPoseEstimate.LOW_CONFIDENCE, GeoPoseEstimate.RELOCALIZING) == (0, 1, 2, 3, 4)
    fields = GeoPoseEstimate.get_fields_and_field_types()
    assert list(fields) == [
        "header", "status", "latitude_deg", "longitude_deg", "altitude_m", "yaw_rad", "pose",
        "confidence", "match_score", "tile_id", "displacement_east_m", "displacement_north_m",
        "window_length", "tiles_searched", "latency_s", "datum_latitude_deg",
        "datum_longitude_deg", "datum_altitude_m", "candidates",
    ]
    assert fields["pose"] == "geometry_msgs/PoseWithCovariance"
    assert fields["candidates"] == "sequence<cvl_ros/Candidate>"
    assert Candidate.get_fields_and_field_types() == {
        "tile_id": "string", "latitude_deg": "double", "longitude_deg": "double",
        "score": "float",
    }


def test_every_field_documented_with_units():
    """Each field line of the .msg files follows a comment; GeoPoseEstimate numbers carry units."""
    for name in ("GeoPoseEstimate.msg", "Candidate.msg"):
        lines = (ROOT / "msg" / name).read_text().splitlines()
        for i, line in enumerate(lines):
            text = line.split("#")[0].strip()
            if not text or "=" in text:
                continue
            previous = [ln.strip() for ln in lines[:i] if ln.strip()]
            assert previous and previous[-1].startswith("#"), f"{name}: undocumented: {line}"


def test_serialization_round_trip():
    from rclpy.serialization import deserialize_message, serialize_message

    from cvl_ros.msg import GeoPoseEstimate

    sent = _make_estimate()
    received = deserialize_message(bytes(serialize_message(sent)), GeoPoseEstimate)
    _assert_same_estimate(sent, received)


def test_publish_subscribe_round_trip(ros_context, ros_executor, spin_until):
    from cvl_ros.msg import GeoPoseEstimate

    sent = _make_estimate()
    received = _round_trip(ros_context, ros_executor, spin_until, GeoPoseEstimate, sent,
                           "/cvl_ros_test/geo_pose")
    assert received is not sent
    _assert_same_estimate(sent, received)
    # float32 fields come back rounded to float32 (values above are exact in float32).
    assert received.confidence == 0.75 and received.latency_s == 0.125


def test_tf_message_round_trip(ros_context, ros_executor, spin_until):
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    t = TransformStamped()
    t.header.frame_id = "map"
    t.header.stamp.sec = 5
    t.child_frame_id = "odom"
    t.transform.translation.x = 1.5
    t.transform.rotation.w = 1.0
    sent = TFMessage(transforms=[t])
    received = _round_trip(ros_context, ros_executor, spin_until, TFMessage, sent,
                           "/cvl_ros_test/tf")
    assert received == sent


def test_tf_message_type_hash_is_standard():
    """Where setup.sh built tf2_msgs, its type hash must equal the distribution's."""
    from ament_index_python.packages import get_package_share_directory

    share = Path(get_package_share_directory("tf2_msgs"))
    description = json.loads((share / "msg" / "TFMessage.json").read_text())
    hashes = {h["type_name"]: h["hash_string"] for h in description["type_hashes"]}
    assert hashes["tf2_msgs/msg/TFMessage"].startswith("RIHS01_e369d0f0")


#: RIHS01 type hashes of the distribution's geographic_msgs (Iron and later; the same in Jazzy
#: and Kilted, whose std_msgs/Header, builtin_interfaces/Time and geometry_msgs/Quaternion
#: hashes they build on are unchanged). Source: rosidl's generated
#: geographic_msgs/msg/detail/*__description.c of a colcon build of
#: ros-geographic-info/geographic_info (public repository MarcosEALima/warehouse, folder
#: dev_ws/build/geographic_msgs/rosidl_generator_c), which also lists Header f49fb3ae,
#: Time b106235e and Quaternion 8a765f66, as this environment's wheels have them.
GEOGRAPHIC_HASHES = {
    "geographic_msgs/msg/GeoPoseWithCovarianceStamped":
        "RIHS01_e8e87d7bc02d092be564be3b6a2ca2302ff6997a82b996e4c6a9052b88e09aac",
    "geographic_msgs/msg/GeoPoseWithCovariance":
        "RIHS01_e5a071a4c061688377f825b777166e80c3e380aa9e41e1fac0695f54415ee474",
    "geographic_msgs/msg/GeoPose":
        "RIHS01_8052786d7663e225e38926f7d05716046c931572c25e557d4f70dca55b972626",
    "geographic_msgs/msg/GeoPoint":
        "RIHS01_602c647cf87bbe95a0231b459b5ac30051875d07c0c740b31ad7a8c4662b971e",
    "std_msgs/msg/Header":
        "RIHS01_f49fb3ae2cf070f793645ff749683ac6b06203e41c891e17701b1cb597ce6a01",
}


def test_geo_pose_with_covariance_type_hash_is_standard():
    """The geographic_msgs setup.sh built (or the environment's) has the distribution's hashes:
    rosidl's type description (share/.../GeoPoseWithCovarianceStamped.json) and rosbags' own
    computation from the definitions the recorder writes into bags both give them."""
    pytest.importorskip("geographic_msgs.msg", reason="geographic_msgs not built; make setup")
    from ament_index_python.packages import get_package_share_directory

    from cvl_ros.ros.bags import make_typestore

    share = Path(get_package_share_directory("geographic_msgs"))
    description = json.loads((share / "msg" / "GeoPoseWithCovarianceStamped.json").read_text())
    hashes = {h["type_name"]: h["hash_string"] for h in description["type_hashes"]}
    for name, expected in GEOGRAPHIC_HASHES.items():
        assert hashes[name] == expected, name
    store = make_typestore()
    for name, expected in GEOGRAPHIC_HASHES.items():
        assert store.hash_rihs01(name) == expected, name


def test_geo_pose_with_covariance_fields_and_round_trip(ros_context, ros_executor, spin_until):
    """Upstream fields, in upstream order, survive a round trip (NaN altitude included)."""
    pytest.importorskip("geographic_msgs.msg", reason="geographic_msgs not built; make setup")
    from geographic_msgs.msg import (
        GeoPoint,
        GeoPose,
        GeoPoseWithCovariance,
        GeoPoseWithCovarianceStamped,
    )

    assert GeoPoseWithCovarianceStamped.get_fields_and_field_types() == {
        "header": "std_msgs/Header", "pose": "geographic_msgs/GeoPoseWithCovariance"}
    assert GeoPoseWithCovariance.get_fields_and_field_types() == {
        "pose": "geographic_msgs/GeoPose", "covariance": "double[36]"}
    assert GeoPose.get_fields_and_field_types() == {
        "position": "geographic_msgs/GeoPoint", "orientation": "geometry_msgs/Quaternion"}
    assert list(GeoPoint.get_fields_and_field_types().items()) == [
        ("latitude", "double"), ("longitude", "double"), ("altitude", "double")]
    sent = GeoPoseWithCovarianceStamped()
    sent.header.frame_id = "map"
    sent.header.stamp.sec = 7
    sent.pose.pose.position.latitude = 49.015
    sent.pose.pose.position.longitude = 8.4394
    sent.pose.pose.position.altitude = math.nan
    sent.pose.pose.orientation.z, sent.pose.pose.orientation.w = math.sin(0.35), math.cos(0.35)
    sent.pose.covariance = [float(i) for i in range(36)]
    received = _round_trip(ros_context, ros_executor, spin_until, GeoPoseWithCovarianceStamped,
                           sent, "/cvl_ros_test/geo_pose_std")
    assert math.isnan(received.pose.pose.position.altitude)
    received.pose.pose.position.altitude = sent.pose.pose.position.altitude = 0.0
    assert received == sent
