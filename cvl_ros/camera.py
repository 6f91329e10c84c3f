"""Pinhole intrinsics, camera extrinsics and pose helpers (one ENU convention for the project).

Conventions (README.md, "The house"):

* World / grid frames are ENU: x east, y north, z up, metres. Yaw 0 = east, counter-clockwise.
* Body (``base_link``): x forward, y left, z up. Camera optical frame: z forward, x right, y down.
* A pose ``T_a_b`` is a 4x4 float64 matrix mapping points in frame ``b`` to frame ``a``.
* Pixel coordinates follow OpenCV: the centre of pixel (0, 0) is at (u, v) = (0, 0).

Nothing here mutates its inputs: scaling intrinsics returns a new object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "PinholeCamera",
    "rot_x",
    "rot_y",
    "rot_z",
    "rpy_to_matrix",
    "optical_to_body_rotation",
    "make_body_from_camera",
    "pose_enu",
    "invert_pose",
    "relative_camera_poses",
    "world_camera_poses",
]


@dataclass(frozen=True)
class PinholeCamera:
    """Pinhole intrinsics of an undistorted (rectified) image of ``width_px`` x ``height_px``."""

    fx: float
    fy: float
    cx: float
    cy: float
    width_px: int
    height_px: int

    @property
    def K(self) -> np.ndarray:
        """The 3x3 intrinsic matrix (float64, a fresh array)."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64
        )

    def scaled_to(self, width_px: int, height_px: int) -> PinholeCamera:
        """Return the intrinsics of this image resized to ``width_px`` x ``height_px``.

        Uses the pixel-centre convention of a plain resize (``cv2.resize`` / ``F.interpolate``
        with ``align_corners=False``): u' = (u + 0.5) * sx - 0.5. A new object is returned.
        """
        sx = float(width_px) / float(self.width_px)
        sy = float(height_px) / float(self.height_px)
        return PinholeCamera(
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            width_px=int(width_px),
            height_px=int(height_px),
        )

    @classmethod
    def from_matrix(cls, K, width_px: int, height_px: int) -> PinholeCamera:
        """Build from a 3x3 intrinsic matrix (zero skew assumed)."""
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"K must be 3x3, got {K.shape}")
        return cls(
            fx=float(K[0, 0]),
            fy=float(K[1, 1]),
            cx=float(K[0, 2]),
            cy=float(K[1, 2]),
            width_px=int(width_px),
            height_px=int(height_px),
        )

    @classmethod
    def from_kitti_projection(cls, P, width_px: int, height_px: int) -> PinholeCamera:
        """Build from a KITTI rectified projection matrix ``P_rect_0x`` (3x4): K = P[:3, :3]."""
        P = np.asarray(P, dtype=np.float64).reshape(3, 4)
        return cls.from_matrix(P[:3, :3], width_px, height_px)

    @classmethod
    def from_camera_info(cls, k, width_px: int, height_px: int) -> PinholeCamera:
        """Build from a ``sensor_msgs/CameraInfo``-like row-major 9-vector ``k``."""
        return cls.from_matrix(np.asarray(k, dtype=np.float64).reshape(3, 3), width_px, height_px)


def rot_x(a: float) -> np.ndarray:
    """Rotation about x by ``a`` rad (3x3)."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(a: float) -> np.ndarray:
    """Rotation about y by ``a`` rad (3x3)."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(a: float) -> np.ndarray:
    """Rotation about z by ``a`` rad (3x3)."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rpy_to_matrix(roll_rad: float, pitch_rad: float, yaw_rad: float) -> np.ndarray:
    """R = Rz(yaw) Ry(pitch) Rx(roll) (KITTI OXTS / REP-103 convention)."""
    return rot_z(yaw_rad) @ rot_y(pitch_rad) @ rot_x(roll_rad)


def optical_to_body_rotation() -> np.ndarray:
    """Rotation ``R_body_optical`` of a forward-looking camera: z_opt = x_body, x_opt = -y_body,
    y_opt = -z_body (columns are the optical axes expressed in the body frame).
    """  # noqa: D205
    return np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def make_body_from_camera(
    x_m: float,
    y_m: float,
    z_m: float,
    roll_rad: float = 0.0,
    pitch_rad: float = 0.0,
    yaw_rad: float = 0.0,
) -> np.ndarray:
    """``T_body_cam`` (4x4) of an optical frame mounted at (x, y, z) in the body frame.

    The mount orientation (roll, pitch, yaw; R = Rz Ry Rx, about body axes) rotates a camera that
    looks along body +x; with all angles zero the camera looks forward with the image x axis to
    the body's right and image y axis down.
    """
    T = np.eye(4)
    T[:3, :3] = rpy_to_matrix(roll_rad, pitch_rad, yaw_rad) @ optical_to_body_rotation()
    T[:3, 3] = (x_m, y_m, z_m)
    return T


def pose_enu(
    east_m: float,
    north_m: float,
    up_m: float,
    yaw_rad: float,
    pitch_rad: float = 0.0,
    roll_rad: float = 0.0,
) -> np.ndarray:
    """``T_world_body`` (4x4) in ENU with R = Rz(yaw) Ry(pitch) Rx(roll); yaw 0 = east, CCW."""
    T = np.eye(4)
    T[:3, :3] = rpy_to_matrix(roll_rad, pitch_rad, yaw_rad)
    T[:3, 3] = (east_m, north_m, up_m)
    return T


def invert_pose(T) -> np.ndarray:
    """Inverse of a rigid 4x4 pose (or a stack (..., 4, 4))."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def world_camera_poses(T_world_bodies, T_body_cam) -> np.ndarray:
    """Compose body poses (N,4,4) with a camera extrinsic (4,4) or (N,4,4): ``T_world_cam``."""
    T_world_bodies = np.asarray(T_world_bodies, dtype=np.float64)
    return T_world_bodies @ np.asarray(T_body_cam, dtype=np.float64)


def relative_camera_poses(T_world_cams) -> np.ndarray:
    """Camera poses in the grid frame of the newest camera (index 0).

    The grid frame has ENU axes (east, north, up) and its origin at the optical centre of camera
    0, so only translations change: ``T_grid_cam[i] = [R_world_cam_i | t_i - t_0]``. Heading is
    taken as known (absolute yaw), as in the paper; the overhead grid is therefore north-up.
    Accepts (N,4,4) and returns a new (N,4,4) float64 array.
    """
    T = np.array(T_world_cams, dtype=np.float64, copy=True)
    if T.ndim != 3 or T.shape[1:] != (4, 4):
        raise ValueError(f"T_world_cams must be (N,4,4), got {T.shape}")
    T[:, :3, 3] -= T[0, :3, 3]
    return T
