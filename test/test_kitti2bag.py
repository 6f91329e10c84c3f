"""cvl-kitti2bag: KITTI raw drive -> ROS 2 bag (rosbags + mcap readers, both storages)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from _bag_drives import real_drive_with_image, tiny_drive
from rosbags.rosbag2 import Reader

from cvl_ros.cli.kitti2bag import main as kitti2bag_main
from cvl_ros.kitti import KittiDrive, read_calib_cam_to_cam, read_timestamps
from cvl_ros.ros import bags
from cvl_ros.ros.bags import make_typestore
from cvl_ros.ros.kitti_bag import write_kitti_bag


def _read_all(path):
    store = make_typestore()
    out = {}
    with Reader(path) as reader:
        for conn, stamp, raw in reader.messages():
            msg = store.deserialize_cdr(raw, conn.msgtype)
            out.setdefault(conn.topic, []).append((stamp, msg))
    return out


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_real_fixture_bag(tmp_path, storage):
    drive = real_drive_with_image(tmp_path)
    info = write_kitti_bag(drive, tmp_path / "bag", storage=storage, odom_drift_pct=0.0,
                           odom_yaw_drift_deg_per_100m=0.0)
    assert info.frames == 1
    msgs = _read_all(tmp_path / "bag")
    for topic in (bags.TOPIC_IMAGE, bags.TOPIC_CAMERA_INFO, bags.TOPIC_FIX, bags.TOPIC_IMU,
                  bags.TOPIC_ODOM, bags.TOPIC_GT_POSE, bags.TOPIC_TF_STATIC, bags.TOPIC_TF):
        assert len(msgs[topic]) == 1, topic
    cam_stamp = int(read_timestamps(drive / "image_02" / "timestamps.txt")[0])
    oxts_stamp = int(read_timestamps(drive / "oxts" / "timestamps.txt")[0])
    stamp, img = msgs[bags.TOPIC_IMAGE][0]
    assert stamp == cam_stamp
    assert img.header.stamp.sec * 10**9 + img.header.stamp.nanosec == cam_stamp
    assert (img.encoding, img.height, img.width, img.step) == ("rgb8", 375, 1242, 1242 * 3)
    np.testing.assert_array_equal(img.data.reshape(375, 1242, 3), KittiDrive(drive).image(0))
    # camera_info from P_rect_02 / R_rect_02.
    calib = read_calib_cam_to_cam(drive.parent / "calib_cam_to_cam.txt")
    _, info_msg = msgs[bags.TOPIC_CAMERA_INFO][0]
    np.testing.assert_allclose(info_msg.p.reshape(3, 4), calib["P_rect_02"].reshape(3, 4))
    np.testing.assert_allclose(info_msg.k.reshape(3, 3), calib["P_rect_02"].reshape(3, 4)[:, :3])
    np.testing.assert_allclose(info_msg.r.reshape(3, 3), calib["R_rect_02"].reshape(3, 3))
    assert info_msg.header.frame_id == img.header.frame_id == bags.FRAME_CAMERA
    # GPS fix equals the real packet; stamped with the OXTS stamp.
    stamp, fix = msgs[bags.TOPIC_FIX][0]
    assert stamp == oxts_stamp
    assert fix.latitude == pytest.approx(49.015003823272, abs=1e-12)
    assert fix.longitude == pytest.approx(8.4342971002335, abs=1e-12)
    # IMU quaternion is (x, y, z, w) of Rz(yaw) Ry(pitch) Rx(roll): yaw -2.6087, small roll/pitch.
    _, imu = msgs[bags.TOPIC_IMU][0]
    q = imu.orientation
    yaw = -2.6087069803847
    assert q.w == pytest.approx(math.cos(yaw / 2), abs=0.03)
    assert q.z == pytest.approx(math.sin(yaw / 2), abs=0.03)
    assert abs(q.x) < 0.05 and abs(q.y) < 0.05
    siny = 2 * (q.w * q.z + q.x * q.y)
    cosy = 1 - 2 * (q.y * q.y + q.z * q.z)
    assert math.atan2(siny, cosy) == pytest.approx(yaw, abs=1e-6)
    assert imu.linear_acceleration.z == pytest.approx(10.209117821189)  # au
    assert imu.angular_velocity.z == pytest.approx(-0.018809330937153)  # wu
    # Ground truth at the datum (first packet) = origin; odometry starts at identity.
    _, gt = msgs[bags.TOPIC_GT_POSE][0]
    assert gt.header.frame_id == "world"
    assert abs(gt.pose.position.x) < 1e-6 and abs(gt.pose.position.y) < 1e-6
    _, odom = msgs[bags.TOPIC_ODOM][0]
    assert (odom.header.frame_id, odom.child_frame_id) == ("odom", "base_link")
    assert odom.twist.twist.linear.x == pytest.approx(13.172716663769)  # vf
    # Static offsets: base_link -> camera optical frame from the real calibration.
    _, static = msgs[bags.TOPIC_TF_STATIC][0]
    children = {t.child_frame_id: t for t in static.transforms}
    assert {"imu_link", "camera_color_left", "velo_link"} <= set(children)
    cam = children["camera_color_left"]
    assert cam.header.frame_id == "base_link"
    # KITTI's camera 2 is ~1.08 m ahead of and ~0.73 m above the OXTS unit (sensor setup).
    assert 0.9 < cam.transform.translation.x < 1.3
    assert 0.6 < cam.transform.translation.z < 0.9
    # optical z (forward) ~ body x: third column of R is ~(1, 0, 0)
    from scipy.spatial.transform import Rotation

    r = cam.transform.rotation
    R = Rotation.from_quat([r.x, r.y, r.z, r.w]).as_matrix()
    np.testing.assert_allclose(R[:, 2], [1, 0, 0], atol=0.03)
    np.testing.assert_allclose(R[:, 1], [0, 0, -1], atol=0.03)  # optical y down


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_tf_static_qos_metadata(tmp_path, storage):
    drive = tiny_drive(tmp_path, n=3)
    write_kitti_bag(drive, tmp_path / "bag", storage=storage)
    meta = yaml.safe_load((tmp_path / "bag" / "metadata.yaml").read_text())
    topics = {t["topic_metadata"]["name"]: t["topic_metadata"]
              for t in meta["rosbag2_bagfile_information"]["topics_with_message_count"]}
    qos = topics["/tf_static"]["offered_qos_profiles"]
    if isinstance(qos, str):
        qos = yaml.safe_load(qos)
    assert qos[0]["durability"] == "transient_local"
    assert qos[0]["reliability"] == "reliable"
    assert qos[0]["depth"] == 1
    with Reader(tmp_path / "bag") as reader:
        by_topic = {c.topic: c for c in reader.connections}
        assert by_topic["/tf_static"].ext.offered_qos_profiles[0].durability.name == \
            "TRANSIENT_LOCAL"
        assert by_topic[bags.TOPIC_IMAGE].ext.offered_qos_profiles[0].durability.name == \
            "VOLATILE"


def test_mcap_reader(tmp_path):
    from mcap.reader import make_reader

    drive = tiny_drive(tmp_path, n=5)
    info = write_kitti_bag(drive, tmp_path / "bag", storage="mcap")
    files = list((tmp_path / "bag").glob("*.mcap"))
    assert len(files) == 1
    counts = {}
    stamps = []
    with open(files[0], "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary is not None
        for schema, channel, message in reader.iter_messages():
            assert schema.encoding == "ros2msg"
            assert channel.message_encoding == "cdr"
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            if channel.topic == bags.TOPIC_IMAGE:
                assert schema.name == "sensor_msgs/msg/Image"
                stamps.append(message.log_time)
                # CDR decodes with rosbags' deserializer too
                img = make_typestore().deserialize_cdr(message.data, schema.name)
                assert img.header.stamp.sec * 10**9 + img.header.stamp.nanosec == \
                    message.log_time
    assert counts == info.topics
    expected = read_timestamps(drive / "image_02" / "timestamps.txt")
    assert stamps == [int(s) for s in expected]


def test_synthetic_drive_odometry_and_stamps(tmp_path):
    drive = tiny_drive(tmp_path, n=20, image_hw=(40, 124))
    info = write_kitti_bag(drive, tmp_path / "bag", storage="sqlite3", odom_drift_pct=0.0,
                           odom_yaw_drift_deg_per_100m=0.0)
    assert info.frames == 20
    msgs = _read_all(tmp_path / "bag")
    cam = read_timestamps(drive / "image_02" / "timestamps.txt")
    ox = read_timestamps(drive / "oxts" / "timestamps.txt")
    assert [s for s, _ in msgs[bags.TOPIC_IMAGE]] == list(cam)
    assert [s for s, _ in msgs[bags.TOPIC_ODOM]] == list(ox)
    for i, (_, img) in enumerate(msgs[bags.TOPIC_IMAGE]):
        assert int(img.data[0]) == i  # frame order kept
    # camera_info scaled to the 124x40 image (S_rect 1242x375)
    _, ci = msgs[bags.TOPIC_CAMERA_INFO][0]
    assert (ci.width, ci.height) == (124, 40)
    assert ci.k[0] == pytest.approx(721.5377 * 124 / 1242, rel=1e-5)
    # drift-free odometry = ground truth relative to the first pose
    gt = np.array([[m.pose.position.x, m.pose.position.y] for _, m in msgs[bags.TOPIC_GT_POSE]])
    od = np.array([[m.pose.pose.position.x, m.pose.pose.position.y]
                   for _, m in msgs[bags.TOPIC_ODOM]])
    assert np.linalg.norm(od[0]) < 1e-6
    d_gt = np.linalg.norm(np.diff(gt, axis=0), axis=1)
    d_od = np.linalg.norm(np.diff(od, axis=0), axis=1)
    np.testing.assert_allclose(d_od, d_gt, atol=1e-3)
    assert d_gt.sum() == pytest.approx(8.0 * 0.1 * 19, rel=0.01)
    # /tf carries odom -> base_link by default
    tf = [m.transforms[0] for _, m in msgs[bags.TOPIC_TF]]
    assert {(t.header.frame_id, t.child_frame_id) for t in tf} == {("odom", "base_link")}


def test_drift_and_gt_tf(tmp_path):
    drive = tiny_drive(tmp_path, n=30, yaw_rate=0.0)
    write_kitti_bag(drive, tmp_path / "bag", storage="mcap", odom_drift_pct=5.0,
                    odom_yaw_drift_deg_per_100m=2.0, seed=3, gt_tf=True)
    msgs = _read_all(tmp_path / "bag")
    gt = np.array([[m.pose.position.x, m.pose.position.y] for _, m in msgs[bags.TOPIC_GT_POSE]])
    od = np.array([[m.pose.pose.position.x, m.pose.pose.position.y]
                   for _, m in msgs[bags.TOPIC_ODOM]])
    travelled = np.linalg.norm(np.diff(gt, axis=0), axis=1).sum()
    d_gt = np.linalg.norm(gt[-1] - gt[0])
    d_od = np.linalg.norm(od[-1] - od[0])
    assert d_od != pytest.approx(d_gt, abs=1e-6)  # drift applied
    assert abs(d_od - d_gt) < 0.25 * travelled  # but bounded
    tf = [m.transforms[0] for _, m in msgs[bags.TOPIC_TF]]
    assert {(t.header.frame_id, t.child_frame_id) for t in tf} == {("world", "base_link")}
    np.testing.assert_allclose([tf[-1].transform.translation.x, tf[-1].transform.translation.y],
                               gt[-1])


def test_cli(tmp_path, capsys):
    drive = tiny_drive(tmp_path, n=3)
    assert kitti2bag_main(["--drive", str(drive), "--out", str(tmp_path / "b"), "--quiet",
                           "--storage", "sqlite3"]) == 0
    assert "/kitti/camera_color_left/image_raw: 3" in capsys.readouterr().out
    # existing output is refused with a clear message
    assert kitti2bag_main(["--drive", str(drive), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err
    assert kitti2bag_main(["--drive", str(tmp_path / "nope"), "--out", str(tmp_path / "c"),
                           "--quiet"]) == 2


def test_synthetic_ground_truth_from_oxts_true(tmp_path):
    drive = tiny_drive(tmp_path, n=5, gps_offset_m=3.0)
    info = write_kitti_bag(drive, tmp_path / "bag", odom_drift_pct=0.0,
                           odom_yaw_drift_deg_per_100m=0.0)
    assert info.ground_truth == "oxts_true"
    assert bags.bag_custom_data(tmp_path / "bag")["cvl_ros.ground_truth_source"] == "oxts_true"
    msgs = _read_all(tmp_path / "bag")
    from cvl_ros.geo import GeoDatum

    d = GeoDatum(*info.datum)
    for (_, gt), (_, fix) in zip(msgs[bags.TOPIC_GT_POSE], msgs[bags.TOPIC_FIX]):
        e, n, _ = d.to_enu(fix.latitude, fix.longitude, 0.0)
        assert float(e) - gt.pose.position.x == pytest.approx(3.0, abs=0.01)  # the GPS error
        assert float(n) - gt.pose.position.y == pytest.approx(0.0, abs=0.01)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_camera_info_precedes_its_image(tmp_path, storage):
    drive = tiny_drive(tmp_path, n=6)
    write_kitti_bag(drive, tmp_path / "bag", storage=storage)
    order = [(m.stamp_ns, m.topic) for m in bags.iter_bag(
        tmp_path / "bag", [bags.TOPIC_IMAGE, bags.TOPIC_CAMERA_INFO])]
    assert order == sorted(order, key=lambda x: x[0])
    for k in range(0, len(order), 2):
        assert order[k][1] == bags.TOPIC_CAMERA_INFO and order[k + 1][1] == bags.TOPIC_IMAGE
        assert order[k][0] == order[k + 1][0]
