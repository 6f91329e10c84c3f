"""cvl_ros.camera: intrinsics scaling, extrinsic helpers, ENU poses, relative poses."""

from pathlib import Path

import numpy as np
import pytest

from cvl_ros.camera import (
    PinholeCamera,
    invert_pose,
    make_body_from_camera,
    optical_to_body_rotation,
    pose_enu,
    relative_camera_poses,
)

CALIB = Path(__file__).parent / "data" / "kitti_raw" / "2011_09_26" / "calib_cam_to_cam.txt"


def read_p_rect_02(path):
    for line in Path(path).read_text().splitlines():
        if line.startswith("P_rect_02:"):
            return np.array([float(v) for v in line.split(":", 1)[1].split()]).reshape(3, 4)
    raise KeyError("P_rect_02")


def kitti_camera():
    if not CALIB.is_file():
        pytest.skip(f"{CALIB} absent")
    return PinholeCamera.from_kitti_projection(read_p_rect_02(CALIB), 1242, 375)


def test_from_kitti_projection_real_calibration():
    cam = kitti_camera()
    assert cam.fx == pytest.approx(721.5377)
    assert cam.fy == pytest.approx(721.5377)
    assert cam.cx == pytest.approx(609.5593)
    assert cam.cy == pytest.approx(172.854)
    K = cam.K
    assert K.shape == (3, 3) and K[2, 2] == 1.0 and K[0, 1] == 0.0


def test_scaled_to_is_new_object_and_pixel_centre_correct():
    cam = kitti_camera()
    small = cam.scaled_to(512, 128)
    assert small is not cam
    assert cam.width_px == 1242 and cam.fx == pytest.approx(721.5377)  # untouched
    assert (small.width_px, small.height_px) == (512, 128)
    # a 3D point projects to (u, v); in the resized image it must be at (u+.5)*s-.5
    X = np.array([1.3, 0.7, 9.0])
    uv = cam.K @ X
    uv = uv[:2] / uv[2]
    uv2 = small.K @ X
    uv2 = uv2[:2] / uv2[2]
    sx, sy = 512 / 1242, 128 / 375
    np.testing.assert_allclose(uv2, [(uv[0] + 0.5) * sx - 0.5, (uv[1] + 0.5) * sy - 0.5],
                               atol=1e-9)
    # round trip
    back = small.scaled_to(1242, 375)
    np.testing.assert_allclose(back.K, cam.K, atol=1e-9)


def test_from_matrix_and_camera_info():
    K = np.array([[500.0, 0, 320], [0, 510.0, 240], [0, 0, 1]])
    a = PinholeCamera.from_matrix(K, 640, 480)
    b = PinholeCamera.from_camera_info(K.ravel().tolist(), 640, 480)
    assert a == b
    np.testing.assert_array_equal(a.K, K)
    with pytest.raises(ValueError):
        PinholeCamera.from_matrix(np.eye(4), 1, 1)


def test_optical_to_body_rotation():
    R = optical_to_body_rotation()
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R @ [0, 0, 1], [1, 0, 0])  # z_opt = x_body
    np.testing.assert_allclose(R @ [1, 0, 0], [0, -1, 0])  # x_opt = -y_body
    np.testing.assert_allclose(R @ [0, 1, 0], [0, 0, -1])  # y_opt = -z_body


def test_make_body_from_camera_and_pose_enu():
    T_body_cam = make_body_from_camera(1.0, 0.2, 1.65)
    np.testing.assert_allclose(T_body_cam[:3, 3], [1.0, 0.2, 1.65])
    # vehicle heading north (yaw 90 deg): the camera looks north, its x axis points east
    T_world_body = pose_enu(10.0, 20.0, 0.0, np.pi / 2)
    T = T_world_body @ T_body_cam
    np.testing.assert_allclose(T[:3, 2], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(T[:3, 0], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(T[:3, 1], [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], [10.0 - 0.2, 21.0, 1.65], atol=1e-12)
    # yaw of the camera mount rotates the view to the left
    T2 = make_body_from_camera(0, 0, 0, yaw_rad=np.pi / 2)
    np.testing.assert_allclose(T2[:3, 2], [0, 1, 0], atol=1e-12)
    # pitch positive tilts the forward axis downward (REP-103: about +y)
    T3 = pose_enu(0, 0, 0, 0.0, pitch_rad=0.1)
    assert T3[2, 0] < 0


def test_invert_pose():
    T = pose_enu(3, -4, 1, 0.3, 0.05, -0.02)
    np.testing.assert_allclose(invert_pose(T) @ T, np.eye(4), atol=1e-12)
    stack = np.stack([T, np.eye(4)])
    np.testing.assert_allclose(invert_pose(stack)[0], np.linalg.inv(T), atol=1e-12)


def test_relative_camera_poses():
    Tw = np.stack([pose_enu(100.0, 50.0, 2.0, 0.4), pose_enu(95.0, 48.0, 2.1, 0.3)])
    Tw_in = Tw.copy()
    Tg = relative_camera_poses(Tw)
    np.testing.assert_array_equal(Tw, Tw_in)  # not modified
    np.testing.assert_allclose(Tg[0, :3, 3], 0.0)
    np.testing.assert_allclose(Tg[1, :3, 3], [-5.0, -2.0, 0.1], atol=1e-12)
    np.testing.assert_allclose(Tg[:, :3, :3], Tw[:, :3, :3])  # ENU axes: rotations unchanged
    with pytest.raises(ValueError):
        relative_camera_poses(np.eye(4))
