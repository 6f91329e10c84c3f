"""cvl-replay: in-process replay into a subscriber (no lost tail, /clock, latched /tf_static)."""

from __future__ import annotations

import threading
import time

import pytest
from _bag_drives import tiny_drive

from cvl_ros.ros import bags
from cvl_ros.ros.kitti_bag import write_kitti_bag
from cvl_ros.ros.replay import BagReplayer, parse_remaps

pytestmark = pytest.mark.ros


def _spin_in_thread(node, ctx):
    from rclpy.executors import SingleThreadedExecutor

    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    stop = threading.Event()

    def run():
        while not stop.is_set() and ctx.ok():
            ex.spin_once(timeout_sec=0.05)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return stop, th, ex


def test_replay_delivers_everything_with_clock(tmp_path, ros_context):
    from nav_msgs.msg import Odometry
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage

    n = 12
    drive = tiny_drive(tmp_path, n=n)
    write_kitti_bag(drive, tmp_path / "bag", storage="mcap")
    ctx = ros_context
    import rclpy

    sub_node = rclpy.create_node("sink", context=ctx)
    got: dict[str, list] = {"img": [], "odom": [], "clock": [], "static": []}
    # best effort (as the node subscribes), deep enough for a loaded machine's slow spin
    sub_node.create_subscription(Image, "/camera/image", lambda m: got["img"].append(m),
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT))
    sub_node.create_subscription(Odometry, bags.TOPIC_ODOM, lambda m: got["odom"].append(m), 50)
    sub_node.create_subscription(Clock, "/clock", lambda m: got["clock"].append(m), 100)
    stop, th, ex = _spin_in_thread(sub_node, ctx)

    pub_node = rclpy.create_node("replay", context=ctx)
    replayer = BagReplayer(tmp_path / "bag", node=pub_node, rate=4.0, tail_s=1.0,
                           remaps=parse_remaps([f"{bags.TOPIC_IMAGE}:=/camera/image"]),
                           wait_timeout_s=20.0)
    t0 = time.monotonic()
    stats = replayer.run()
    wall = time.monotonic() - t0
    # a late joiner still gets /tf_static (transient local)
    late = rclpy.create_node("late", context=ctx)
    late.create_subscription(
        TFMessage, "/tf_static", lambda m: got["static"].append(m),
        QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                   reliability=ReliabilityPolicy.RELIABLE))
    stop2, th2, ex2 = _spin_in_thread(late, ctx)
    deadline = time.monotonic() + 5
    while not got["static"] and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    stop2.set()
    th.join()
    th2.join()
    replayer.close()

    assert stats.subscribers_matched
    assert stats.published["/camera/image"] == n
    assert len(got["img"]) == n  # the tail is not lost
    assert len(got["odom"]) == n
    assert [m.data[0] for m in got["img"]] == list(range(n))  # in order
    assert len(got["static"]) == 1
    # throttled: 1.1 s of bag at 4x plus the 1 s tail
    assert wall >= 0.25 + 1.0
    # /clock is monotonic and reaches the last stamp
    clocks = [c.clock.sec * 10**9 + c.clock.nanosec for c in got["clock"]]
    assert clocks == sorted(clocks)
    last_img = got["img"][-1].header.stamp
    assert clocks[-1] >= last_img.sec * 10**9 + last_img.nanosec


def test_replay_waits_for_late_subscriber(tmp_path, ros_context):
    import rclpy
    from sensor_msgs.msg import Image

    n = 5
    drive = tiny_drive(tmp_path, n=n)
    write_kitti_bag(drive, tmp_path / "bag", storage="sqlite3")
    ctx = ros_context
    pub_node = rclpy.create_node("replay", context=ctx)
    replayer = BagReplayer(tmp_path / "bag", node=pub_node, rate=10.0, tail_s=0.5,
                           start_s=0.15, wait_timeout_s=20.0)
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("stats", replayer.run()))
    th.start()
    time.sleep(1.0)  # the replayer is waiting: nothing must be lost
    sub_node = rclpy.create_node("sink", context=ctx)
    got = []
    sub_node.create_subscription(Image, bags.TOPIC_IMAGE, got.append, 10)
    stop, sth, ex = _spin_in_thread(sub_node, ctx)
    th.join(timeout=30)
    stop.set()
    sth.join()
    replayer.close()
    assert result["stats"].waited_s >= 0.9
    # --start 0.15 s skips frames 0 and 1 (stamps 0.0 and 0.1 s)
    assert [m.data[0] for m in got] == [2, 3, 4]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        parse_remaps(["nope"])
    with pytest.raises(FileNotFoundError):
        BagReplayer(tmp_path / "missing", node=object())


def test_replay_loop_restarts_time(tmp_path, ros_context):
    import rclpy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    n = 4
    drive = tiny_drive(tmp_path, n=n)
    write_kitti_bag(drive, tmp_path / "bag", storage="mcap")
    ctx = ros_context
    sub_node = rclpy.create_node("sink", context=ctx)
    got, clocks = [], []
    sub_node.create_subscription(Image, bags.TOPIC_IMAGE, got.append, 20)
    sub_node.create_subscription(Clock, "/clock", clocks.append, 200)
    stop, th, ex = _spin_in_thread(sub_node, ctx)
    replayer = BagReplayer(tmp_path / "bag", node=rclpy.create_node("replay", context=ctx),
                           rate=5.0, loop=True, max_loops=2, tail_s=0.5, wait_timeout_s=20.0)
    stats = replayer.run()
    stop.set()
    th.join()
    replayer.close()
    assert stats.loops == 2
    assert [m.data[0] for m in got] == list(range(n)) * 2
    t = [c.clock.sec * 10**9 + c.clock.nanosec for c in clocks]
    assert sum(1 for a, b in zip(t, t[1:]) if b < a) == 1  # time jumps back once (the loop)


def test_topic_recorder_roundtrip(tmp_path, ros_context):
    import rclpy

    from cvl_ros.cli.record import node_output_topics
    from cvl_ros.msg import Candidate, GeoPoseEstimate
    from cvl_ros.report import EstimateRow
    from cvl_ros.ros.bags import make_typestore
    from cvl_ros.ros.recording import TopicRecorder

    ctx = ros_context
    topics = node_output_topics("cvl_localizer")
    assert topics["/cvl_localizer/geo_pose"] == "cvl_ros/msg/GeoPoseEstimate"
    node = rclpy.create_node("rec", context=ctx)
    rec = TopicRecorder(node, tmp_path / "out", {"/cvl_localizer/geo_pose": topics[
        "/cvl_localizer/geo_pose"]})
    pub_node = rclpy.create_node("pub", context=ctx)
    pub = pub_node.create_publisher(GeoPoseEstimate, "/cvl_localizer/geo_pose", 10)
    stop, th, ex = _spin_in_thread(node, ctx)
    deadline = time.monotonic() + 10
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    for i in range(3):
        m = GeoPoseEstimate()
        m.header.stamp.sec, m.header.stamp.nanosec = 100 + i, 5
        m.status = GeoPoseEstimate.TRACKING
        m.latitude_deg, m.longitude_deg = 49.0 + i * 1e-5, 8.4
        m.tile_id = f"t{i}"
        m.candidates = [Candidate(tile_id=f"t{i}", latitude_deg=49.0, longitude_deg=8.41,
                                  score=0.5)]
        pub.publish(m)
    deadline = time.monotonic() + 10
    while rec.counts["/cvl_localizer/geo_pose"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    th.join()
    rec.close()
    store = make_typestore()
    rows = [EstimateRow.from_geo_pose(store.deserialize_cdr(m.data, m.msgtype))
            for m in bags.iter_bag(tmp_path / "out")]
    assert [r.stamp_ns for r in rows] == [100 * 10**9 + 5, 101 * 10**9 + 5, 102 * 10**9 + 5]
    assert rows[1].status == "TRACKING" and rows[1].has_fix
    assert rows[2].tile_lon_deg == pytest.approx(8.41)


def _schema_typestore(schema_name: str, text: str):
    """A rosbags typestore from nothing but one MCAP ros2msg schema (as Foxglove decodes it)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.EMPTY)
    sep = "=" * 80 + "\n"
    types = {}
    for i, part in enumerate(text.split(sep)):
        if i == 0:
            name = schema_name
        else:
            first, _, part = part.partition("\n")
            assert first.startswith("MSG: "), first
            pkg, _, typ = first[5:].strip().partition("/")
            name = f"{pkg}/msg/{typ}"
        types.update(get_types_from_msg(part, name))
    store.register(types)
    return store


def test_recorder_mcap_has_schemas_foxglove_decodes(tmp_path, ros_context):
    """Every node output the recorder writes: a valid MCAP (CRCs checked, summary present),
    channels in cdr, schemas ros2msg named pkg/msg/Type that carry every dependency, so each
    message decodes from its own schema alone (what Foxglove does with a ROS 2 MCAP)."""
    import rclpy
    from mcap.reader import make_reader

    from cvl_ros.cli.record import BEST_EFFORT, node_output_topics
    from cvl_ros.ros.recording import TopicRecorder
    from cvl_ros.ros.replay import rclpy_message_class

    topics = node_output_topics("cvl_localizer")
    assert "/cvl_localizer/geo_pose_std" in topics
    pytest.importorskip("geographic_msgs.msg", reason="geographic_msgs not built; make setup")
    ctx = ros_context
    node = rclpy.create_node("rec", context=ctx)
    rec = TopicRecorder(node, tmp_path / "out", topics,
                        best_effort={t for t in topics if t.rsplit("/", 1)[-1] in BEST_EFFORT})
    pub_node = rclpy.create_node("pub", context=ctx)
    pubs = {t: pub_node.create_publisher(rclpy_message_class(ty), t, 10)
            for t, ty in topics.items()}
    stop, th, ex = _spin_in_thread(node, ctx)
    deadline = time.monotonic() + 15
    while (any(p.get_subscription_count() == 0 for p in pubs.values())
           and time.monotonic() < deadline):
        time.sleep(0.05)
    for t, pub in pubs.items():
        msg = rclpy_message_class(topics[t])()
        if hasattr(msg, "header"):
            msg.header.frame_id = "map"
            msg.header.stamp.sec = 42
        if t.endswith("/geo_pose_std"):
            msg.pose.pose.position.latitude = 49.015
            msg.pose.pose.position.altitude = float("nan")
            msg.pose.covariance[0] = 9.0
        pub.publish(msg)
    while any(rec.counts[t] < 1 for t in topics) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    th.join()
    rec.close()
    assert all(rec.counts[t] >= 1 for t in topics), rec.counts
    files = sorted((tmp_path / "out").glob("*.mcap"))
    assert len(files) == 1
    with open(files[0], "rb") as f:
        reader = make_reader(f, validate_crcs=True)
        summary = reader.get_summary()
        assert summary is not None and summary.statistics.message_count >= len(topics)
        assert {c.topic for c in summary.channels.values()} == set(topics)
        seen = set()
        for schema, channel, message in reader.iter_messages():
            assert channel.message_encoding == "cdr"
            assert schema.encoding in ("ros2msg", "ros2idl")
            assert schema.name == topics[channel.topic]
            store = _schema_typestore(schema.name, schema.data.decode())
            msg = store.deserialize_cdr(message.data, schema.name)
            if hasattr(msg, "header"):
                assert (msg.header.frame_id, msg.header.stamp.sec) == ("map", 42)
            if channel.topic.endswith("/geo_pose_std"):
                assert msg.pose.pose.position.latitude == 49.015
                assert msg.pose.pose.position.altitude != msg.pose.pose.position.altitude
                assert msg.pose.covariance[0] == 9.0
            seen.add(channel.topic)
    assert seen == set(topics)


def test_recorder_leaves_out_geo_pose_std_without_geographic_msgs(monkeypatch, capsys):
    from cvl_ros.cli import record
    from cvl_ros.cli._args import CliError
    from cvl_ros.ros import replay

    real = replay.is_interface_package
    monkeypatch.setattr(replay, "is_interface_package",
                        lambda pkg: pkg != "geographic_msgs" and real(pkg))
    topics, _ = record._topics(record.build_parser().parse_args(["out"]))
    assert "/cvl_localizer/geo_pose_std" not in topics
    assert "/cvl_localizer/geo_pose" in topics and "/tf" in topics
    assert "not recording /cvl_localizer/geo_pose_std" in capsys.readouterr().err
    # asked for by name, it is an error
    args = record.build_parser().parse_args(
        ["out", "--topic", "/g:=geographic_msgs/msg/GeoPoseWithCovarianceStamped"])
    with pytest.raises(CliError, match="geographic_msgs"):
        record._topics(args)
