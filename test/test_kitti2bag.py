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
    assert "pass --overwrite" in capsys.readouterr().err
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


# ------------------------------------------------------------------ output safety (issue 13)
def _digest(root):
    import hashlib

    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest()
                                       if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _debris(parent):
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def _run(capsys, *args):
    code = kitti2bag_main([*map(str, args), "--quiet"])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_mistyped_drive_never_touches_the_output(tmp_path, capsys):
    drive = tiny_drive(tmp_path, n=3)
    bag = tmp_path / "bag"
    assert _run(capsys, "--drive", drive, "--out", bag)[0] == 0
    before = _digest(bag)
    code, _, err = _run(capsys, "--drive", str(drive) + "_typo", "--out", bag, "--overwrite")
    assert code == 2 and "drive folder not found" in err and "Traceback" not in err
    assert _digest(bag) == before


@pytest.mark.parametrize("where", ["drive", "inside", "above", "date"])
def test_output_overlapping_the_drive_is_refused(tmp_path, capsys, where):
    drive = tiny_drive(tmp_path, n=3)
    out = {"drive": drive, "inside": drive / "bag", "above": drive.parents[1],
           "date": drive.parent}[where]
    before = _digest(tmp_path)
    code, _, err = _run(capsys, "--drive", drive, "--out", out, "--overwrite")
    assert code == 2 and err.startswith("cvl-kitti2bag: error: --out ")
    assert any(w in err for w in ("is the input", "inside the input", "contains the input"))
    assert _digest(tmp_path) == before  # the drive (and everything else) untouched


def test_foreign_folder_is_refused_with_or_without_overwrite(tmp_path, capsys):
    drive = tiny_drive(tmp_path, n=3)
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    for extra in ([], ["--overwrite"]):
        code, _, err = _run(capsys, "--drive", drive, "--out", home, *extra)
        assert code == 2 and "did not write" in err
    assert (home / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
    assert _debris(tmp_path) == []


def test_overwrite_replaces_only_its_own_bag(tmp_path, capsys):
    from cvl_ros.outputs import MARKER, read_marker

    drive = tiny_drive(tmp_path, n=4)
    bag = tmp_path / "bag"
    assert _run(capsys, "--drive", drive, "--out", bag, "--frames", "2")[0] == 0
    assert read_marker(bag)["tool"] == "cvl-kitti2bag"
    code, _, err = _run(capsys, "--drive", drive, "--out", bag)
    assert code == 2 and "pass --overwrite" in err
    assert _run(capsys, "--drive", drive, "--out", bag, "--overwrite")[0] == 0
    assert len(_read_all(bag)[bags.TOPIC_IMAGE]) == 4
    assert sorted(p.name for p in bag.iterdir()) == [MARKER, "bag.mcap", "metadata.yaml"]
    # the user's file in the bag folder: --overwrite refused, naming it
    (bag / "notes.txt").write_text("mine")
    code, _, err = _run(capsys, "--drive", drive, "--out", bag, "--overwrite")
    assert code == 2 and "notes.txt" in err
    assert (bag / "notes.txt").read_text() == "mine"
    assert _debris(tmp_path) == []


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_markerless_bag_of_an_earlier_version(tmp_path, capsys, storage):
    from cvl_ros.outputs import MARKER
    from cvl_ros.ros.kitti_bag import recognise_kitti_bag

    drive = tiny_drive(tmp_path, n=3)
    bag = tmp_path / "old"
    write_kitti_bag(drive, bag, storage=storage)
    (bag / MARKER).unlink()  # as an earlier version wrote it
    files = {p.name for p in bag.iterdir()}
    assert recognise_kitti_bag(bag) == files
    assert _run(capsys, "--drive", drive, "--out", bag, "--overwrite",
                "--storage", storage)[0] == 0
    assert (bag / MARKER).is_file()
    # a bag another tool recorded (no cvl_ros custom data) is not ours: refused
    (bag / MARKER).unlink()
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())
    meta["rosbag2_bagfile_information"]["custom_data"] = {}
    (bag / "metadata.yaml").write_text(yaml.safe_dump(meta))
    assert recognise_kitti_bag(bag) == set()
    before = _digest(bag)
    code, _, err = _run(capsys, "--drive", drive, "--out", bag, "--overwrite")
    assert code == 2 and "delete it yourself" in err
    assert _digest(bag) == before
    # ours, but with a file of the user's beside it: not recognised as a whole
    meta["rosbag2_bagfile_information"]["custom_data"] = {
        "cvl_ros.source_drive": "x", "cvl_ros.datum_lat_deg": "1", "cvl_ros.datum_lon_deg": "2"}
    (bag / "metadata.yaml").write_text(yaml.safe_dump(meta))
    assert recognise_kitti_bag(bag) == files
    (bag / "plot.png").write_bytes(b"png")
    assert recognise_kitti_bag(bag) == set()


def test_failure_mid_run_keeps_the_old_bag_and_leaves_no_debris(tmp_path, capsys):
    drive = tiny_drive(tmp_path, n=5)
    bag = tmp_path / "bag"
    assert _run(capsys, "--drive", drive, "--out", bag)[0] == 0
    before = _digest(bag)
    (drive / "image_02" / "data" / "0000000003.png").write_bytes(b"not a png")
    code, _, err = _run(capsys, "--drive", drive, "--out", bag, "--overwrite")
    assert code == 2 and "could not decode image" in err and "0000000003.png" in err
    assert _digest(bag) == before
    assert _debris(tmp_path) == []
    # a new output: nothing at all is left
    code, _, _ = _run(capsys, "--drive", drive, "--out", tmp_path / "new")
    assert code == 2 and not (tmp_path / "new").exists() and _debris(tmp_path) == []


def _dead_pid() -> int:
    import os

    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_partial_outputs_of_a_crashed_run_do_not_block(tmp_path, capsys):
    import json

    from cvl_ros.outputs import MARKER, MARKER_FORMAT

    drive = tiny_drive(tmp_path, n=3)
    bag = tmp_path / "bag"
    # this version killed mid-run: its hidden temporary folder (with rosbags' bag folder in it)
    stale = tmp_path / f".bag.cvl-kitti2bag.partial-{_dead_pid()}-abcd1234"
    (stale / "bag").mkdir(parents=True)
    (stale / "bag" / "bag.mcap").write_bytes(b"\x89MCAP0\r\n")
    (stale / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "tool": "cvl-kitti2bag",
                                            "tools": ["cvl-kitti2bag"], "files": [],
                                            "partial": True}))
    assert _run(capsys, "--drive", drive, "--out", bag)[0] == 0
    assert not stale.exists() and _debris(tmp_path) == []
    # an earlier version killed mid-run: bag/bag.mcap without metadata.yaml
    mcap = (bag / "bag.mcap").read_bytes()
    for name in ("bag2", "bag3", "bag4", "bag5"):
        (tmp_path / name).mkdir()
    (tmp_path / "bag2" / "bag2.mcap").write_bytes(mcap[:-300])  # cut in the summary
    (tmp_path / "bag3" / "bag3.mcap").write_bytes(b"")  # nothing flushed
    (tmp_path / "bag4" / "bag4.mcap").write_bytes(mcap[:200])  # cut inside the first chunk
    header_end = 17 + int.from_bytes(mcap[9:17], "little")
    (tmp_path / "bag5" / "bag5.mcap").write_bytes(mcap[:header_end])  # rosbags' header only
    for name in ("bag2", "bag3", "bag5"):
        code, _, err = _run(capsys, "--drive", drive, "--out", tmp_path / name)
        assert code == 2 and "incomplete bag of an interrupted" in err and "--overwrite" in err
        assert _run(capsys, "--drive", drive, "--out", tmp_path / name, "--overwrite")[0] == 0
        assert (tmp_path / name / "metadata.yaml").is_file()
    # a cut chunk cannot be told from someone else's data: refused, never deleted
    code, _, err = _run(capsys, "--drive", drive, "--out", tmp_path / "bag4", "--overwrite")
    assert code == 2 and "delete it yourself" in err
    assert (tmp_path / "bag4" / "bag4.mcap").read_bytes() == mcap[:200]


def test_interrupted_recordings_of_others_are_not_recognised(tmp_path):
    from mcap.writer import Writer as McapWriter

    from cvl_ros.ros.kitti_bag import recognise_kitti_bag

    def mcap_file(name, topic, library_profile="ros2", compression=None):
        folder = tmp_path / name
        folder.mkdir()
        with open(folder / f"{name}.mcap", "wb") as f:
            w = McapWriter(f, **({"compression": compression} if compression else {}))
            w.start(profile=library_profile, library="rosbags-0.11.9")
            sid = w.register_schema("std_msgs/msg/String", "ros2msg", b"string data")
            cid = w.register_channel(topic, "cdr", sid)
            w.add_message(cid, 1, b"\0" * 8, 1)
            w.finish()
        data = (folder / f"{name}.mcap").read_bytes()
        (folder / f"{name}.mcap").write_bytes(data[:-200])  # no summary: as if interrupted
        return folder

    from mcap.writer import CompressionType

    ours = mcap_file("a", bags.TOPIC_FIX, compression=CompressionType.NONE)
    assert recognise_kitti_bag(ours) == {"a.mcap"}  # the parser reads what mcap writes
    assert recognise_kitti_bag(mcap_file("b", "/my/camera",
                                         compression=CompressionType.NONE)) == set()
    assert recognise_kitti_bag(mcap_file("c", bags.TOPIC_FIX,
                                         compression=CompressionType.ZSTD)) == set()
    (ours / "notes.txt").write_text("mine")
    assert recognise_kitti_bag(ours) == set()


@pytest.mark.parametrize("flag,value", [("--frames", "0"), ("--frames", "1.5"),
                                        ("--odom-drift", "nan"), ("--odom-drift", "1e9"),
                                        ("--odom-yaw-drift", "inf"), ("--odom-noise", "-1"),
                                        ("--seed", "-3")])
def test_bad_numeric_flags(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exc:
        kitti2bag_main(["--drive", str(tmp_path), "--out", str(tmp_path / "b"), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_library_options_are_checked(tmp_path):
    drive = tiny_drive(tmp_path, n=2)
    for kw in ({"odom_drift_pct": math.nan}, {"odom_noise_pct": -1.0},
               {"odom_yaw_drift_deg_per_100m": 1e6}, {"max_frames": 0}):
        with pytest.raises(ValueError):
            write_kitti_bag(drive, tmp_path / "b", **kw)
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------ input checks (issue 13)
def _stamps(msgs, topic):
    return [s for s, _ in msgs.get(topic, [])]


def test_invalid_gps_never_becomes_a_fix_or_ground_truth(tmp_path, capsys):
    from cvl_ros.kitti import read_oxts_dir, read_timestamps, write_oxts_dir

    drive = tiny_drive(tmp_path, n=8)
    packets = read_oxts_dir(drive)
    packets[2].lat = math.nan  # a GPS outage
    packets[4].lat = 999.0  # a corrupt line
    packets[5].lon = -math.inf
    write_oxts_dir(drive, packets, read_timestamps(drive / "oxts" / "timestamps.txt"))
    code, out, _ = _run(capsys, "--drive", drive, "--out", tmp_path / "bag")
    assert code == 0
    assert "gps_invalid: 3" in out and "ground_truth_invalid: 3" in out
    msgs = _read_all(tmp_path / "bag")
    ox = [int(s) for s in read_timestamps(drive / "oxts" / "timestamps.txt")]
    good = [ox[i] for i in (0, 1, 3, 6, 7)]
    assert _stamps(msgs, bags.TOPIC_FIX) == good
    assert all(f.status.status == 0 and math.isfinite(f.latitude)
               and abs(f.latitude) <= 90 for _, f in msgs[bags.TOPIC_FIX])
    assert _stamps(msgs, bags.TOPIC_GT_POSE) == good
    for _, gt in msgs[bags.TOPIC_GT_POSE]:
        assert abs(gt.pose.position.x) < 100 and abs(gt.pose.position.y) < 100
    # velocities are fine: odometry, IMU and the camera keep every frame
    assert len(msgs[bags.TOPIC_ODOM]) == len(msgs[bags.TOPIC_IMU]) == 8
    assert len(msgs[bags.TOPIC_IMAGE]) == 8
    custom = bags.bag_custom_data(tmp_path / "bag")
    assert custom["cvl_ros.dropped_gps_invalid"] == "3"
    assert custom["cvl_ros.dropped_ground_truth_invalid"] == "3"
    assert custom["cvl_ros.dropped_camera_stamp_not_increasing"] == "0"


def test_nonfinite_velocity_and_attitude_are_dropped_not_integrated(tmp_path):
    from cvl_ros.kitti import read_oxts_dir, read_timestamps, write_oxts_dir

    drive = tiny_drive(tmp_path, n=10, yaw_rate=0.0)
    packets = read_oxts_dir(drive)
    packets[3].vf = math.nan
    packets[6].yaw = math.inf
    write_oxts_dir(drive, packets, read_timestamps(drive / "oxts" / "timestamps.txt"))
    info = write_kitti_bag(drive, tmp_path / "bag", odom_drift_pct=0.0,
                           odom_yaw_drift_deg_per_100m=0.0)
    assert info.dropped["odom_invalid"] == 1
    assert info.dropped["imu_invalid"] == 1  # packet 6 (yaw); vf is no IMU field
    assert info.dropped["ground_truth_invalid"] == 1
    msgs = _read_all(tmp_path / "bag")
    assert len(msgs[bags.TOPIC_ODOM]) == 9 and len(msgs[bags.TOPIC_IMU]) == 9
    od = np.array([[m.pose.pose.position.x, m.pose.pose.position.y]
                   for _, m in msgs[bags.TOPIC_ODOM]])
    assert np.all(np.isfinite(od))
    # 8 m/s straight on: the dead reckoning bridges the dropped packet (2 steps = 1.6 m)
    steps = np.linalg.norm(np.diff(od, axis=0), axis=1)
    np.testing.assert_allclose(steps, [0.8, 0.8, 1.6, 0.8, 0.8, 0.8, 0.8, 0.8], rtol=1e-3)
    for _, m in msgs[bags.TOPIC_IMU] + [(0, t.transforms[0]) for _, t in msgs[bags.TOPIC_TF]]:
        q = m.orientation if hasattr(m, "orientation") else m.transform.rotation
        assert all(math.isfinite(v) for v in (q.x, q.y, q.z, q.w))


def test_stamps_that_go_backwards_are_dropped_and_counted(tmp_path, capsys):
    from cvl_ros.kitti import read_timestamps, write_timestamps

    drive = tiny_drive(tmp_path, n=8)
    cam_file, ox_file = drive / "image_02" / "timestamps.txt", drive / "oxts" / "timestamps.txt"
    cam, ox = read_timestamps(cam_file), read_timestamps(ox_file)
    cam[3] = cam[1] - 5  # goes back
    cam[5] = cam[4]  # repeats
    ox[2] = ox[7] + 10**9  # jumps ahead: dropping it, not every later packet
    write_timestamps(cam_file, cam)
    write_timestamps(ox_file, ox)
    code, out, _ = _run(capsys, "--drive", drive, "--out", tmp_path / "bag")
    assert code == 0
    assert "camera_stamp_not_increasing: 2" in out and "oxts_stamp_not_increasing: 1" in out
    msgs = _read_all(tmp_path / "bag")
    img = _stamps(msgs, bags.TOPIC_IMAGE)
    assert img == [int(cam[i]) for i in (0, 1, 2, 4, 6, 7)]
    assert [int(m.data[0]) for _, m in msgs[bags.TOPIC_IMAGE]] == [0, 1, 2, 4, 6, 7]
    assert _stamps(msgs, bags.TOPIC_CAMERA_INFO) == img
    for topic in (bags.TOPIC_FIX, bags.TOPIC_IMU, bags.TOPIC_ODOM, bags.TOPIC_GT_POSE):
        assert _stamps(msgs, topic) == [int(ox[i]) for i in (0, 1, 3, 4, 5, 6, 7)], topic
    custom = bags.bag_custom_data(tmp_path / "bag")
    assert custom["cvl_ros.dropped_camera_stamp_not_increasing"] == "2"
    assert custom["cvl_ros.dropped_oxts_stamp_not_increasing"] == "1"


def test_oxts_stamps_come_from_the_oxts_file(tmp_path, capsys):
    drive = tiny_drive(tmp_path, n=4)
    (drive / "oxts" / "timestamps.txt").unlink()
    code, _, err = _run(capsys, "--drive", drive, "--out", tmp_path / "bag")
    assert code == 2 and "oxts/timestamps.txt not found" in err
    assert "OXTS stamps" in err and not (tmp_path / "bag").exists()
    # too few stamps, or a line that is no stamp: clear errors naming the file
    from cvl_ros.kitti import write_timestamps

    write_timestamps(drive / "oxts" / "timestamps.txt", [1, 2])
    code, _, err = _run(capsys, "--drive", drive, "--out", tmp_path / "bag")
    assert code == 2 and "2 stamps for 4 frames" in err
    (drive / "oxts" / "timestamps.txt").write_text("2011-09-26 13:02:25.1\nyesterday\n")
    code, _, err = _run(capsys, "--drive", drive, "--out", tmp_path / "bag")
    assert code == 2 and "timestamps.txt:2: not a timestamp" in err


def test_town_datum_out_of_range_is_an_error(tmp_path, capsys):
    import json

    drive = tiny_drive(tmp_path, n=3)
    (drive.parents[1] / "town.json").write_text(json.dumps({"datum": {"lat_deg": 999.0,
                                                                      "lon_deg": 8.4}}))
    code, _, err = _run(capsys, "--drive", drive, "--out", tmp_path / "bag")
    assert code == 2 and "town.json" in err and "WGS84" in err


def test_clean_drive_reports_nothing_dropped(tmp_path, capsys):
    drive = tiny_drive(tmp_path, n=3)
    code, out, _ = _run(capsys, "--drive", drive, "--out", tmp_path / "bag")
    assert code == 0 and "input checks: nothing dropped" in out


def test_incomplete_calibration_is_a_clear_error(tmp_path, capsys):
    drive = tiny_drive(tmp_path, n=2)
    cc = drive.parent / "calib_cam_to_cam.txt"
    cc.write_text("\n".join(ln for ln in cc.read_text().splitlines()
                            if not ln.startswith("R_rect_00")) + "\n")
    code, _, err = _run(capsys, "--drive", drive, "--out", tmp_path / "bag")
    assert code == 2 and "lacks 'R_rect_00'" in err and not (tmp_path / "bag").exists()
    (drive.parent / "calib_imu_to_velo.txt").unlink()
    code, _, err = _run(capsys, "--drive", drive, "--out", tmp_path / "bag")
    assert code == 2 and "calib_imu_to_velo.txt" in err
