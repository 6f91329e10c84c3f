import math
from pathlib import Path

import numpy as np
import pytest

from cvl_ros import kitti
from cvl_ros.geo import GeoDatum

DATA = Path(__file__).parent / "data" / "kitti_raw" / "2011_09_26"
DRIVE = DATA / "2011_09_26_drive_0001_sync"
PACKET = DRIVE / "oxts" / "data" / "0000000000.txt"
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "kitti_raw"


def test_project_copy_matches_shared_fixture():
    if not SHARED.is_dir():
        pytest.skip("../shared/fixtures/kitti_raw absent (the project copy is used instead)")
    for rel in ("2011_09_26/calib_cam_to_cam.txt",
                "2011_09_26/2011_09_26_drive_0001_sync/oxts/data/0000000000.txt"):
        assert (SHARED / rel).read_bytes() == (DATA.parent / rel).read_bytes()


def test_calib_cam_to_cam_values_by_hand():
    c = kitti.read_calib_cam_to_cam(DATA / "calib_cam_to_cam.txt")
    assert c["calib_time"] == "09-Jan-2012 13:57:47"
    assert c["corner_dist"] == pytest.approx(0.0995)
    P2 = c["P_rect_02"]
    assert P2.shape == (3, 4)
    # P_rect_02: 7.215377e+02 0 6.095593e+02 4.485728e+01 / 0 7.215377e+02 1.728540e+02 2.163791e-01
    assert P2[0, 0] == 721.5377 and P2[0, 2] == 609.5593 and P2[0, 3] == 44.85728
    assert P2[1, 2] == 172.854 and P2[2, 3] == 2.745884e-03
    assert c["R_rect_00"].shape == (3, 3) and c["R_rect_00"][0, 1] == 9.837760e-03
    assert list(c["S_rect_02"]) == [1242.0, 375.0]
    assert c["K_02"][0, 0] == 959.791 and c["D_02"].shape == (5,)
    assert c["T_02"].shape == (3,) and c["T_02"][0] == 5.956621e-02
    assert c["R_03"].shape == (3, 3)


def test_calib_cam_to_cam_byte_exact_round_trip(tmp_path):
    c = kitti.read_calib_cam_to_cam(DATA / "calib_cam_to_cam.txt")
    kitti.write_calib_cam_to_cam(tmp_path / "c.txt", c)
    assert (tmp_path / "c.txt").read_bytes() == (DATA / "calib_cam_to_cam.txt").read_bytes()


def test_rigid_calibs_and_round_trip(tmp_path):
    T_velo_imu = kitti.read_calib_imu_to_velo(DATA / "calib_imu_to_velo.txt")
    assert T_velo_imu[:3, 3] == pytest.approx([-0.8086759, 0.3195559, -0.7997231])
    T_cam_velo = kitti.read_calib_velo_to_cam(DATA / "calib_velo_to_cam.txt")
    assert T_cam_velo[0, 0] == 7.533745e-03 and T_cam_velo[2, 3] == -0.2717806
    kitti.write_calib_imu_to_velo(tmp_path / "calib_imu_to_velo.txt", T_velo_imu)
    assert (tmp_path / "calib_imu_to_velo.txt").read_bytes() == \
        (DATA / "calib_imu_to_velo.txt").read_bytes()
    kitti.write_calib_velo_to_cam(tmp_path / "calib_velo_to_cam.txt", T_cam_velo)
    assert (tmp_path / "calib_velo_to_cam.txt").read_bytes() == \
        (DATA / "calib_velo_to_cam.txt").read_bytes()


def test_T_imu_cam2_geometry():
    T = kitti.kitti_T_imu_cam2(DATA)
    R = T[:3, :3]
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-5)
    # optical z (forward) ~ IMU x, optical x (right) ~ -IMU y, optical y (down) ~ -IMU z
    assert R[:, 2] == pytest.approx([1, 0, 0], abs=0.02)
    assert R[:, 0] == pytest.approx([0, -1, 0], abs=0.02)
    assert R[:, 1] == pytest.approx([0, 0, -1], abs=0.02)
    # KITTI setup: cam2 ~1.08 m ahead of the IMU, 0.25 m to its right, 0.73 m above it, so
    # 0.93 m (IMU height) + 0.73 = 1.65 m camera height.
    assert T[:3, 3] == pytest.approx([1.08, -0.25, 0.73], abs=0.01)
    assert kitti.KITTI_IMU_HEIGHT_M + T[2, 3] == pytest.approx(1.65, abs=0.02)


def test_oxts_packet_values_and_exact_text():
    p = kitti.read_oxts_packet(PACKET)
    assert len(kitti.OXTS_FIELDS) == 30
    assert p.lat == 49.015003823272 and p.lon == 8.4342971002335
    assert p.alt == 116.43032836914 and p.yaw == -2.6087069803847 and p.roll == 0.035752
    assert (p.navstat, p.numsats, p.posmode, p.velmode, p.orimode) == (4, 11, 6, 6, 6)
    assert isinstance(p.numsats, int)
    assert p.to_line() + "\n" == PACKET.read_text()


def test_oxts_write_byte_exact(tmp_path):
    p = kitti.read_oxts_packet(PACKET)
    kitti.write_oxts_packet(tmp_path / "x.txt", p)
    assert (tmp_path / "x.txt").read_bytes() == PACKET.read_bytes()
    assert kitti.read_oxts_dir(DRIVE) == [p]


def test_oxts_bad_packet(tmp_path):
    (tmp_path / "bad.txt").write_text("1 2 3\n")
    with pytest.raises(ValueError, match="30 values"):
        kitti.read_oxts_packet(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        kitti.read_oxts_packet(tmp_path / "nope.txt")


def test_rpy_rotation_convention():
    R = kitti.rpy_to_rotation(0.0, 0.0, math.pi / 2)
    assert R @ np.array([1.0, 0, 0]) == pytest.approx([0, 1, 0])  # yaw 90 deg: forward = north
    R = kitti.rpy_to_rotation(0.1, -0.2, 0.3)
    c, s = math.cos, math.sin
    Rx = np.array([[1, 0, 0], [0, c(0.1), -s(0.1)], [0, s(0.1), c(0.1)]])
    Ry = np.array([[c(-.2), 0, s(-.2)], [0, 1, 0], [-s(-.2), 0, c(-.2)]])
    Rz = np.array([[c(.3), -s(.3), 0], [s(.3), c(.3), 0], [0, 0, 1]])
    assert np.allclose(R, Rz @ Ry @ Rx)
    assert kitti.rotation_to_rpy(R) == pytest.approx((0.1, -0.2, 0.3))


def test_oxts_to_poses_pykitti_and_inverse():
    p0 = kitti.read_oxts_packet(PACKET)
    er = 6378137.0
    p1 = kitti.OxtsPacket(lat=p0.lat + 1e-4, lon=p0.lon + 2e-4, alt=p0.alt + 1.0,
                          roll=0.01, pitch=-0.02, yaw=1.0)
    T, scale = kitti.oxts_to_poses([p0, p1])
    assert scale == pytest.approx(math.cos(math.radians(p0.lat)))
    assert np.allclose(T[0, :3, 3], 0.0)
    # by hand: dx = scale*dlon*pi*er/180
    assert T[1, 0, 3] == pytest.approx(scale * 2e-4 * math.pi * er / 180, rel=1e-9)
    dy = scale * er * (math.log(math.tan((90 + p1.lat) * math.pi / 360))
                       - math.log(math.tan((90 + p0.lat) * math.pi / 360)))
    assert T[1, 1, 3] == pytest.approx(dy, rel=1e-9) and T[1, 2, 3] == pytest.approx(1.0)
    assert np.allclose(T[0, :3, :3], kitti.rpy_to_rotation(p0.roll, p0.pitch, p0.yaw))
    back = kitti.poses_to_oxts(T, p0.lat, p0.lon, p0.alt)
    for a, b in zip(back, [p0, p1]):
        assert (a.lat, a.lon, a.alt) == pytest.approx((b.lat, b.lon, b.alt), abs=1e-10)
        assert (a.roll, a.pitch, a.yaw) == pytest.approx((b.roll, b.pitch, b.yaw), abs=1e-12)


def test_enu_poses_round_trip():
    datum = GeoDatum(49.0, 8.4, 110.0)
    T = np.tile(np.eye(4), (3, 1, 1))
    T[:, :3, 3] = [[0, 0, 0.93], [120.5, -40.25, 1.0], [-3000, 2500, 2.0]]
    T[2, :3, :3] = kitti.rpy_to_rotation(0.02, 0.01, -2.5)
    pk = kitti.enu_poses_to_oxts(T, datum)
    T2 = kitti.oxts_to_enu_poses(pk, datum)
    assert np.abs(T2 - T).max() < 1e-6


def test_timestamps_ns_exact(tmp_path):
    path = DRIVE / "oxts" / "timestamps.txt"
    ts = kitti.read_timestamps(path)
    assert ts.dtype == np.int64 and len(ts) == 108
    # 2011-09-26 = day 15243 since epoch; 15243*86400 + 13:02:25 (46945 s) = 1317042145 s
    assert ts[0] == 1317042145_964389445
    assert kitti.format_timestamp(ts[0]) == "2011-09-26 13:02:25.964389445"
    kitti.write_timestamps(tmp_path / "t.txt", ts)
    assert (tmp_path / "t.txt").read_bytes() == path.read_bytes()
    cam = kitti.read_timestamps(DRIVE / "image_02" / "timestamps.txt")
    assert np.all(np.diff(cam) > 0) and abs(int(cam[0] - ts[0])) < 10_000_000
    assert kitti.parse_timestamp("2011-09-26 13:02:25.5") == 1317042145_500000000


def test_drive_and_images(tmp_path):
    d = kitti.KittiDrive(DRIVE)
    assert d.date == "2011_09_26" and len(d) == 108
    cam = d.camera()
    assert (cam.width_px, cam.height_px) == (1242, 375)
    assert np.allclose(cam.K, [[721.5377, 0, 609.5593], [0, 721.5377, 172.854], [0, 0, 1]])
    assert d.oxts[0].numsats == 11 and d.timestamps_ns[0] == 1317042145_961661696
    assert d.image_path(7).name == "0000000007.png"
    with pytest.raises(FileNotFoundError, match="0000000007.png"):
        d.image(7)
    img = np.zeros((4, 6, 3), np.uint8)
    img[0, 0] = (255, 0, 0)  # red in RGB
    kitti.write_image(tmp_path / "a.png", img)
    back = kitti.read_image(tmp_path / "a.png")
    assert back.shape == (4, 6, 3) and tuple(back[0, 0]) == (255, 0, 0)


def test_make_calib_cam_to_cam_round_trip(tmp_path):
    P = np.array([[700.0, 0, 600, 0], [0, 700, 180, 0], [0, 0, 1, 0]])
    P2 = P.copy()
    P2[0, 3] = 42.0
    c = kitti.make_calib_cam_to_cam({0: P, 2: P2})
    kitti.write_calib_cam_to_cam(tmp_path / "calib_cam_to_cam.txt", c)
    r = kitti.read_calib_cam_to_cam(tmp_path / "calib_cam_to_cam.txt")
    assert np.allclose(r["P_rect_02"], P2) and r["T_02"][0] == pytest.approx(0.06)


def test_write_kitti_calibration_round_trip(tmp_path):
    T = kitti.kitti_T_imu_cam2(DATA)  # a realistic extrinsic
    P = np.array([[600.0, 0, 511.5, 30.0], [0, 600, 127.5, 0.1], [0, 0, 1, 0.001]])
    kitti.write_kitti_calibration(tmp_path, P, (1024, 256), T)
    assert np.abs(kitti.kitti_T_imu_cam2(tmp_path) - T).max() < 1e-12
    c = kitti.read_calib_cam_to_cam(tmp_path / "calib_cam_to_cam.txt")
    assert np.array_equal(c["P_rect_02"], P) and list(c["S_rect_02"]) == [1024, 256]
    kitti.write_kitti_calibration(tmp_path, P, (1024, 256), T, fmt="%e")
    assert np.abs(kitti.kitti_T_imu_cam2(tmp_path) - T).max() < 1e-5


# ------------------------------------------------------------------ input checks (issue 13)
def test_bad_values_name_the_file_and_line(tmp_path):
    line = kitti.read_oxts_packet(PACKET).to_line().split()
    line[26] = "many"  # numsats
    (tmp_path / "p.txt").write_text(" ".join(line) + "\n")
    with pytest.raises(ValueError, match=r"p\.txt: OXTS field numsats is not a whole number"):
        kitti.read_oxts_packet(tmp_path / "p.txt")
    (tmp_path / "t.txt").write_text("2011-09-26 13:02:25.1\n\n2011-09-26 25:00:00.0\n")
    with pytest.raises(ValueError, match=r"t\.txt:3: not a timestamp"):
        kitti.read_timestamps(tmp_path / "t.txt")


def test_oxts_validity():
    P = kitti.OxtsPacket
    pk = [P(lat=49.0, lon=8.4), P(lat=math.nan, lon=8.4), P(lat=999.0, lon=8.4),
          P(lat=49.0, lon=-180.5), P(lat=-90.0, lon=180.0), P(lat=49.0, lon=8.4, alt=math.inf),
          P(lat=49.0, lon=8.4, yaw=math.nan)]
    assert kitti.oxts_position_valid(pk).tolist() == [True, False, False, False, True, False,
                                                      True]
    assert kitti.oxts_pose_valid(pk).tolist() == [True, False, False, False, True, False, False]
    assert kitti.oxts_fields_finite(pk, ("yaw",)).tolist() == [True] * 6 + [False]
    assert kitti.oxts_position_valid([]).shape == (0,)


def test_increasing_mask_examples():
    m = kitti.increasing_mask
    assert m([]).tolist() == []
    assert m([5]).tolist() == [True]
    assert m([0, 1, 2, 3]).all()
    assert m([0, 100, 10**12, 300, 400]).tolist() == [True, True, False, True, True]  # jump ahead
    assert m([0, 100, 50, 300]).sum() == 3  # one back-step dropped
    assert m([0, 1, 1, 1, 2]).tolist() == [True, True, False, False, True]  # repeats: first kept


def test_increasing_mask_keeps_a_longest_increasing_subsequence():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(-20, 20), max_size=30))
    def check(xs):
        keep = kitti.increasing_mask(xs)
        kept = [x for x, k in zip(xs, keep) if k]
        assert all(a < b for a, b in zip(kept, kept[1:]))
        best = [1] * len(xs)  # O(n^2) longest strictly increasing subsequence
        for i in range(len(xs)):
            for j in range(i):
                if xs[j] < xs[i]:
                    best[i] = max(best[i], best[j] + 1)
        assert len(kept) == max(best, default=0)

    check()
