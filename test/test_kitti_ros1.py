"""ROS 1 bags of the kitti2bag tool: read by cvl-localize-bag and cvl-replay, converted by
cvl-kitti2bag --from-bag (issue 14, item 9).

The ROS 1 bags are written here with rosbags' rosbag1 writer in kitti2bag's layout
(``_kitti2bag_ros1``) from the real KITTI calibration and OXTS template of
``test/data/kitti_raw`` (``_bag_drives.tiny_drive``) and generated images.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _bag_drives import tiny_drive
from _kitti2bag_ros1 import IMAGE_RAW, write_kitti2bag_ros1

from cvl_ros.cli import kitti2bag as k2b
from cvl_ros.geo import GeoDatum
from cvl_ros.kitti import KittiDrive, kitti_T_imu_cam2, oxts_to_enu_poses, rpy_to_rotation
from cvl_ros.ros import bags
from cvl_ros.ros.convert import pose_to_matrix, quat_to_matrix, transform_to_matrix
from cvl_ros.ros.kitti_bag import write_kitti_bag
from cvl_ros.ros.kitti_ros1 import Ros1KittiBag, Ros1Options, is_ros1_bag, open_ros1_bag

DT = 0.1  # s between frames of tiny_drive


def _read(bag, topic):
    store = bags.make_typestore()
    return [(m.stamp_ns, store.deserialize_cdr(m.data, m.msgtype))
            for m in bags.iter_bag(bag, [topic])]


def _poses(bag, topic):
    out = []
    for _, msg in _read(bag, topic):
        pose = msg.pose.pose if topic == bags.TOPIC_ODOM else msg.pose
        out.append(pose_to_matrix(pose))
    return np.array(out)


def _convert(tmp_path, bag, name="conv", *extra):
    code = k2b.main(["--from-bag", str(bag), "--out", str(tmp_path / name), "--quiet", *extra])
    assert code == 0
    return tmp_path / name


@pytest.fixture()
def drive_and_bag(tmp_path):
    drive = tiny_drive(tmp_path, n=20, yaw_rate=0.2)
    return drive, write_kitti2bag_ros1(drive, tmp_path / "kitti.bag")


@pytest.mark.parametrize("image_topic", [IMAGE_RAW, "/kitti/camera_color_left/image"])
def test_from_bag_gives_the_layout_of_a_drive_conversion(tmp_path, image_topic, capsys):
    """--from-bag of the ROS 1 bag == --drive of the drive it was made from (same defaults)."""
    drive = tiny_drive(tmp_path, n=20, yaw_rate=0.2)
    src = write_kitti2bag_ros1(drive, tmp_path / "kitti.bag", image_topic=image_topic)
    assert is_ros1_bag(src) and not is_ros1_bag(drive)
    write_kitti_bag(drive, tmp_path / "ref")
    conv = _convert(tmp_path, src)
    assert "wrote" in capsys.readouterr().out
    ref_topics, conv_topics = bags.bag_topics(tmp_path / "ref"), bags.bag_topics(conv)
    assert conv_topics == ref_topics  # the same topics, types and counts
    assert conv_topics[bags.TOPIC_TF_STATIC][1] == 1  # re-sent 20 times in the source: once

    # ground truth = the OXTS poses in ENU about the first packet (the datum)
    packets = KittiDrive(drive).oxts
    p0 = packets[0]
    custom = bags.bag_custom_data(conv)
    assert bags.bag_datum(conv) == pytest.approx((p0.lat, p0.lon, p0.alt), abs=1e-9)
    truth = oxts_to_enu_poses(packets, GeoDatum(p0.lat, p0.lon, p0.alt))
    gt = _poses(conv, bags.TOPIC_GT_POSE)
    np.testing.assert_allclose(gt[:, :3, 3], truth[:, :3, 3], atol=1e-6)
    np.testing.assert_allclose(gt[:, :3, :3], truth[:, :3, :3], atol=1e-9)
    assert custom["cvl_ros.ground_truth_source"].startswith("kitti2bag")
    assert custom["cvl_ros.source_bag"] == str(src.resolve())
    assert all(custom[f"cvl_ros.dropped_{k}"] == "0" for k in (
        "camera_stamp_not_increasing", "oxts_stamp_not_increasing", "odom_invalid"))

    # odometry: the same dead reckoning (+ the default drift) as from the drive's OXTS files
    np.testing.assert_allclose(_poses(conv, bags.TOPIC_ODOM),
                               _poses(tmp_path / "ref", bags.TOPIC_ODOM), atol=1e-9)

    # camera: rgb8 images equal to the drive's, camera_info K = P_rect (scaled), D = 0
    imgs = _read(conv, bags.TOPIC_IMAGE)
    stamps = KittiDrive(drive).timestamps_ns
    for i, (t, msg) in enumerate(imgs):
        assert t == stamps[i] == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        assert msg.encoding == "rgb8" and msg.header.frame_id == bags.FRAME_CAMERA
        rgb = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
        np.testing.assert_array_equal(rgb, KittiDrive(drive).image(i))
    (_, info), (_, ref_info) = _read(conv, bags.TOPIC_CAMERA_INFO)[0], \
        _read(tmp_path / "ref", bags.TOPIC_CAMERA_INFO)[0]
    np.testing.assert_allclose(info.k, ref_info.k, rtol=1e-12)
    np.testing.assert_allclose(info.p, ref_info.p, rtol=1e-12)
    assert (info.width, info.height) == (ref_info.width, ref_info.height)
    assert not np.any(info.d)

    # extrinsics: base_link (= the IMU) -> camera from the source's imu_link -> camera chain
    (_, static), = _read(conv, bags.TOPIC_TF_STATIC)
    by_child = {t.child_frame_id: (t.header.frame_id, transform_to_matrix(t.transform))
                for t in static.transforms}
    assert by_child[bags.FRAME_IMU][0] == bags.FRAME_BASE
    np.testing.assert_allclose(by_child[bags.FRAME_IMU][1], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(by_child[bags.FRAME_CAMERA][1], kitti_T_imu_cam2(drive.parent),
                               atol=1e-9)
    assert bags.FRAME_VELO in by_child

    # fix and IMU as recorded (the IMU's orientation is the OXTS attitude)
    fixes = _read(conv, bags.TOPIC_FIX)
    assert [(m.latitude, m.longitude) for _, m in fixes] == [(p.lat, p.lon) for p in packets]
    for (_, m), p in zip(_read(conv, bags.TOPIC_IMU), packets):
        q = m.orientation
        np.testing.assert_allclose(quat_to_matrix(q.x, q.y, q.z, q.w),
                                   rpy_to_rotation(p.roll, p.pitch, p.yaw), atol=1e-12)
        assert m.angular_velocity.z == p.wu


def test_odometry_never_uses_the_gps_the_pose_or_the_absolute_heading(tmp_path):
    """Move the fixes and world->base_link by 30 m and turn the IMU heading: same odometry."""
    drive = tiny_drive(tmp_path, n=15, yaw_rate=0.2)
    a = Ros1KittiBag(write_kitti2bag_ros1(drive, tmp_path / "a.bag"))
    b = Ros1KittiBag(write_kitti2bag_ros1(drive, tmp_path / "b.bag", world_shift_m=(30, -20, 5),
                                          imu_yaw_offset_rad=0.7))
    # (roll and pitch are read from the IMU quaternion: equal to rounding)
    np.testing.assert_allclose(a.odometry, b.odometry, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(a.odometry_stamps, b.odometry_stamps)
    # ... while the ground truth moves with the pose (kitti2bag's Mercator metres on a sphere
    # are 0.2 % longer than WGS84 ENU metres here: 6 cm of the 30 m)
    d = b.ground_truth[:, :3, 3] - a.ground_truth[:, :3, 3]
    np.testing.assert_allclose(d, np.tile([30.0, -20.0, 5.0], (len(d), 1)), atol=0.1)


@pytest.mark.parametrize(("drift", "yaw_drift"), [(0.0, 0.0), (1.0, 0.5)])
def test_odometry_follows_the_truth_within_the_dead_reckoning_bound(tmp_path, drift,
                                                                     yaw_drift):
    """The dead-reckoned odometry, started at the true first pose, stays on the truth.

    tiny_drive moves v = 8 m/s with yaw rate w = 0.2 rad/s, the truth integrated by Euler steps
    ``p += v dt u(yaw_k)``; the odometry integrates the same v and w with the trapezoidal rule
    (the heading exactly, w being constant): ``q += v dt (u(yaw_k) + u(yaw_k+1)) / 2``. The
    difference telescopes to ``v dt (u(yaw_i) - u(yaw_0)) / 2``: after i steps the position error
    is ``v dt sin(i w dt / 2)`` (<= 0.4 m), the heading error 0. Drift adds at most
    ``drift% d + rad(yaw_drift / 100 m) d^2 / 2`` over the distance d.
    """
    drive = tiny_drive(tmp_path, n=30, speed_mps=8.0, yaw_rate=0.2)
    src = write_kitti2bag_ros1(drive, tmp_path / "kitti.bag")
    conv = _convert(tmp_path, src, "conv", "--odom-drift", str(drift), "--odom-yaw-drift",
                    str(yaw_drift))
    gt, odo = _poses(conv, bags.TOPIC_GT_POSE), _poses(conv, bags.TOPIC_ODOM)
    assert len(gt) == len(odo) == 30
    pred = gt[0] @ np.linalg.inv(odo[0]) @ odo  # the odometry started at the true first pose
    err = np.linalg.norm(pred[:, :3, 3] - gt[:, :3, 3], axis=1)
    i = np.arange(30)
    v, w = 8.0, 0.2
    d = v * DT * i
    bound = (v * DT * np.abs(np.sin(i * w * DT / 2)) + drift / 100 * d
             + math.radians(yaw_drift) / 100 * d**2 / 2 * (1 + drift / 100) + 1e-6)
    assert np.all(err <= bound), (err, bound)
    if drift == 0.0:  # the derived error is the error made: the bound is tight
        np.testing.assert_allclose(err, v * DT * np.abs(np.sin(i * w * DT / 2)), atol=1e-6)
        yaw_err = [math.atan2(R[1, 0], R[0, 0]) for R in
                   np.linalg.inv(gt[:, :3, :3]) @ pred[:, :3, :3]]
        np.testing.assert_allclose(yaw_err, 0.0, atol=1e-9)
    assert err[-1] > 0.0  # the odometry is not the truth


def test_localize_bag_runs_on_the_ros1_bag(tmp_path, capsys):
    """cvl-localize-bag on the .bag directly == on its --from-bag conversion."""
    from _ros_node_helpers import build_tiny_resources

    from cvl_ros.cli import localize_bag as lb

    drive = tiny_drive(tmp_path, n=12, image_hw=(40, 124), yaw_rate=0.0)
    src = write_kitti2bag_ros1(drive, tmp_path / "kitti.bag")
    p0 = KittiDrive(drive).oxts[0]
    ckpt, db = build_tiny_resources(tmp_path, datum=GeoDatum(p0.lat, p0.lon, 0.0))
    run = ["--checkpoint", str(ckpt), "--db", str(db), "--quiet", "--threads", "1"]
    assert lb.main([str(src), "--out", str(tmp_path / "out1"), *run]) == 0
    assert "images=12" in capsys.readouterr().out
    s1 = json.loads((tmp_path / "out1" / "summary.json").read_text())
    assert s1["images"] == 12 and s1["frames_used"] == 12, s1["skipped"]
    assert s1["gps_priors_used"] >= 1 and s1["keyframes"] >= 5
    assert s1["median_error_m"] is not None  # the bag's ground truth was found
    assert s1["odometry_only_median_error_m"] is not None
    conv = _convert(tmp_path, src)
    assert lb.main([str(conv), "--out", str(tmp_path / "out2"), *run]) == 0
    s2 = json.loads((tmp_path / "out2" / "summary.json").read_text())
    for key in ("images", "keyframes", "fixes", "frames_used", "gps_priors_used"):
        assert s1[key] == s2[key], key
    for key in ("median_error_m", "p90_error_m", "gps_median_error_m",
                "odometry_only_median_error_m"):
        assert s1[key] == pytest.approx(s2[key], abs=1e-6), key
    # the report never goes into (or onto) the input bag
    capsys.readouterr()
    assert lb.main([str(src), "--out", str(src), *run]) == 2
    assert "input" in capsys.readouterr().err


def test_camera_info_of_the_image_size_is_taken_as_is(tmp_path):
    """kitti2bag's released version gives camera_info the image's size: P is not rescaled."""
    drive = tiny_drive(tmp_path, n=3)
    view = Ros1KittiBag(write_kitti2bag_ros1(drive, tmp_path / "k.bag", info_size="image"))
    (_, _, _, info), *_ = view.objects([bags.TOPIC_CAMERA_INFO])
    P = np.asarray(KittiDrive(drive).calib["P_rect_02"]).reshape(3, 4)
    np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), P[:, :3])
    assert (info.width, info.height) == (160, 48)


def test_repeated_oxts_packet_is_dropped_and_counted(tmp_path):
    drive = tiny_drive(tmp_path, n=6)
    src = write_kitti2bag_ros1(drive, tmp_path / "k.bag", repeat_oxts=2)
    view = Ros1KittiBag(src)
    assert view.dropped["oxts_stamp_not_increasing"] == 1
    assert view.topics[bags.TOPIC_ODOM][1] == view.topics[bags.TOPIC_FIX][1] == 6
    conv = _convert(tmp_path, src)
    assert bags.bag_custom_data(conv)["cvl_ros.dropped_oxts_stamp_not_increasing"] == "1"


def test_the_view_is_cached_per_file_and_options(tmp_path):
    drive = tiny_drive(tmp_path, n=3)
    src = write_kitti2bag_ros1(drive, tmp_path / "k.bag")
    assert open_ros1_bag(src) is open_ros1_bag(str(src))
    assert open_ros1_bag(src, Ros1Options(odom_drift_pct=0.0)) is not open_ros1_bag(src)


# ------------------------------------------------------------------ errors and output safety
def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def test_from_bag_errors_are_one_line(tmp_path, capsys):
    drive = tiny_drive(tmp_path, n=4)
    src = write_kitti2bag_ros1(drive, tmp_path / "k.bag")
    out = str(tmp_path / "out")
    assert k2b.main(["--from-bag", str(tmp_path / "nope.bag"), "--out", out]) == 2
    assert "nope.bag" in _err(capsys)
    (tmp_path / "text.bag").write_text("not a bag\n")
    assert k2b.main(["--from-bag", str(tmp_path / "text.bag"), "--out", out]) == 2
    assert "not a ROS 1 bag" in _err(capsys)
    novel = write_kitti2bag_ros1(drive, tmp_path / "novel.bag",
                                 skip_topics=("/kitti/oxts/gps/vel",))
    assert k2b.main(["--from-bag", str(novel), "--out", out]) == 2
    line = _err(capsys)
    assert line.startswith("cvl-kitti2bag: error: --from-bag") and "/kitti/oxts/gps/vel" in line
    notf = write_kitti2bag_ros1(drive, tmp_path / "notf.bag", skip_topics=("/tf",))
    assert k2b.main(["--from-bag", str(notf), "--out", out]) == 2
    assert "no ground truth" in _err(capsys)
    nostatic = write_kitti2bag_ros1(drive, tmp_path / "nostatic.bag", skip_topics=("/tf_static",))
    assert k2b.main(["--from-bag", str(nostatic), "--out", out]) == 2
    assert "/tf_static" in _err(capsys)
    cut = tmp_path / "cut.bag"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    assert k2b.main(["--from-bag", str(cut), "--out", out]) == 2
    assert "cannot read" in _err(capsys)
    for argv in (["--from-bag", str(src), "--drive", str(drive), "--out", out],
                 ["--from-bag", str(src), "--frames", "2", "--out", out]):
        with pytest.raises(SystemExit) as e:
            k2b.main(argv)
        assert e.value.code == 2
        assert _err(capsys).startswith("cvl-kitti2bag: error: argument")
    assert not (tmp_path / "out").exists()


def test_from_bag_follows_the_output_safety_rule(tmp_path, capsys):
    drive = tiny_drive(tmp_path, n=3)
    src = write_kitti2bag_ros1(drive, tmp_path / "k.bag")
    before = src.read_bytes()
    assert k2b.main(["--from-bag", str(src), "--out", str(src), "--overwrite"]) == 2
    assert "input" in _err(capsys)
    assert k2b.main(["--from-bag", str(src), "--out", str(tmp_path), "--overwrite"]) == 2
    _err(capsys)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    assert k2b.main(["--from-bag", str(src), "--out", str(tmp_path / "foreign"),
                     "--overwrite"]) == 2
    assert "did not write" in _err(capsys)
    assert src.read_bytes() == before and (tmp_path / "foreign" / "notes.txt").is_file()
    out = _convert(tmp_path, src, "out")
    assert k2b.main(["--from-bag", str(src), "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in _err(capsys)
    assert k2b.main(["--from-bag", str(src), "--out", str(out), "--quiet", "--overwrite",
                     "--storage", "sqlite3"]) == 0
    assert sorted(p.suffix for p in out.iterdir() if p.suffix) == [".db3", ".json", ".yaml"]
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_check_bag_and_localize_bag_errors_name_the_ros1_bag(tmp_path, capsys):
    from cvl_ros.cli import localize_bag as lb
    from cvl_ros.cli._args import CliError
    from cvl_ros.cli._bags import check_bag

    drive = tiny_drive(tmp_path, n=3)
    src = write_kitti2bag_ros1(drive, tmp_path / "k.bag")
    info = check_bag(src, topics=[bags.TOPIC_IMAGE, bags.TOPIC_ODOM])
    assert info.topics[bags.TOPIC_IMAGE] == (bags.MSG_IMAGE, 3) and info.duration_s > 0
    novel = write_kitti2bag_ros1(drive, tmp_path / "novel.bag", skip_topics=("/kitti/oxts/imu",))
    with pytest.raises(CliError, match="novel.bag.*/kitti/oxts/imu"):
        check_bag(novel)
    (tmp_path / "text.bag").write_text("x")
    with pytest.raises(CliError, match="ROSBAG"):
        check_bag(tmp_path / "text.bag")
    assert lb.main([str(novel), "--out", str(tmp_path / "o")]) == 2
    line = _err(capsys)
    assert line.startswith("cvl-localize-bag: error: bag") and "novel.bag" in line
    cut = tmp_path / "cut.bag"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    assert lb.main([str(cut), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read" in _err(capsys)


# ------------------------------------------------------------------ replay (rclpy)
@pytest.mark.ros
def test_replay_plays_the_ros1_bag_as_the_layout(drive_and_bag, ros_context):
    import threading
    import time

    import rclpy
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    from cvl_ros.ros.replay import BagReplayer

    _, src = drive_and_bag
    got: dict[str, list] = {"img": [], "info": [], "odom": [], "static": []}
    sink = rclpy.create_node("sink", context=ros_context)
    sink.create_subscription(Image, bags.TOPIC_IMAGE, got["img"].append, 50)
    sink.create_subscription(CameraInfo, bags.TOPIC_CAMERA_INFO, got["info"].append, 50)
    sink.create_subscription(Odometry, bags.TOPIC_ODOM, got["odom"].append, 50)
    sink.create_subscription(TFMessage, "/tf_static", got["static"].append, QoSProfile(
        depth=5, durability=DurabilityPolicy.TRANSIENT_LOCAL,
        reliability=ReliabilityPolicy.RELIABLE))
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(sink)
    stop = threading.Event()

    def spin():
        while not stop.is_set() and ros_context.ok():
            ex.spin_once(timeout_sec=0.05)

    th = threading.Thread(target=spin, daemon=True)
    th.start()
    pub = rclpy.create_node("replay", context=ros_context)
    replayer = BagReplayer(src, node=pub, rate=4.0, tail_s=1.0, wait_timeout_s=20.0)
    stats = replayer.run()
    deadline = time.monotonic() + 5
    while len(got["odom"]) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    th.join()
    replayer.close()
    assert stats.subscribers_matched and not stats.skipped
    assert stats.published[bags.TOPIC_IMAGE] == 20
    assert stats.published[bags.TOPIC_TF_STATIC] == 1  # re-sent 20 times in the bag
    assert stats.published[bags.TOPIC_ODOM] == stats.published[bags.TOPIC_GT_POSE] == 20
    assert len(got["img"]) == 20 and len(got["odom"]) == 20 and len(got["info"]) == 20
    assert {m.encoding for m in got["img"]} == {"rgb8"}
    assert len(got["static"]) == 1
    assert {t.child_frame_id for t in got["static"][0].transforms} == {
        bags.FRAME_IMU, bags.FRAME_CAMERA, bags.FRAME_VELO}


@pytest.mark.ros
def test_replay_cli_accepts_the_ros1_bag(drive_and_bag, capsys):
    from cvl_ros.cli import replay

    _, src = drive_and_bag
    assert replay.main([str(src), "--no-wait", "--rate", "50", "--tail", "0"]) == 0
    out = capsys.readouterr().out
    assert "replayed" in out and f"{bags.TOPIC_IMAGE}: 20" in out and "/tf_static: 1" in out
    assert replay.main([str(src), "--start", "100"]) == 2
    assert "past the end" in _err(capsys)
