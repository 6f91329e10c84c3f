"""Sliding window of keyframes with cached ground features.

A frame becomes a keyframe when the body has travelled ``keyframe_distance_m`` since the last
keyframe (odometry), or when ``keyframe_interval_s`` has elapsed (0 disables the time rule). Each
keyframe keeps the backbone features of its image and the model's per-frame state computed from
them (``CVLNet.frame_states``: the features themselves, or that frame's PCSF Q/K/V canvas), so
one update costs one backbone pass and one frame state. The
relative camera poses of the window are expressed in the grid frame of the newest camera
(east/north/up axes, origin at the newest optical centre), built from odometry rotated into ENU
by the absolute heading of the newest frame.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np


def rot_z(yaw_rad: float) -> np.ndarray:
    """4x4 homogeneous rotation about z."""
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    return T


def yaw_of(T: np.ndarray) -> float:
    """Yaw (rad, ENU, CCW from x) of the x axis of a 4x4 pose."""
    return float(np.arctan2(T[1, 0], T[0, 0]))


@dataclass
class Keyframe:
    """One cached window frame."""

    stamp_ns: int
    features: Any  # torch tensor (C, h, w) on the model's device
    K_net: np.ndarray  # (3, 3) intrinsics at the network input size
    T_odom_body: np.ndarray  # (4, 4)
    T_body_cam: np.ndarray  # (4, 4)
    state: Any = None  # the model's cached per-frame state (CVLNet.frame_states), or None
    state_rotation: np.ndarray | None = None  # (3, 3) ENU rotation the state was computed for


class SlidingWindow:
    """Keyframe selection and the N newest keyframes (index 0 = newest everywhere)."""

    def __init__(self, length: int = 4, keyframe_distance_m: float = 1.0,
                 keyframe_interval_s: float = 0.0) -> None:
        if length < 1:
            raise ValueError("window length must be >= 1")
        self.length = int(length)
        self.keyframe_distance_m = float(keyframe_distance_m)
        self.keyframe_interval_s = float(keyframe_interval_s)
        self._frames: deque[Keyframe] = deque(maxlen=self.length)

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def full(self) -> bool:
        """Whether the window holds ``length`` keyframes."""
        return len(self._frames) == self.length

    @property
    def newest(self) -> Keyframe | None:
        """The newest keyframe, or None."""
        return self._frames[0] if self._frames else None

    def frames(self) -> list[Keyframe]:
        """Keyframes, newest first."""
        return list(self._frames)

    def clear(self) -> None:
        """Drop every keyframe."""
        self._frames.clear()

    def is_keyframe(self, stamp_ns: int, T_odom_body: np.ndarray) -> bool:
        """Whether a frame at this stamp/odometry pose should become a keyframe."""
        last = self.newest
        if last is None:
            return True
        dist = float(np.linalg.norm(T_odom_body[:2, 3] - last.T_odom_body[:2, 3]))
        if dist >= self.keyframe_distance_m:
            return True
        dt = (stamp_ns - last.stamp_ns) * 1e-9
        return self.keyframe_interval_s > 0.0 and dt >= self.keyframe_interval_s

    def push(self, kf: Keyframe) -> None:
        """Add a keyframe as the newest (drops the oldest when full)."""
        self._frames.appendleft(kf)

    def world_camera_poses(self, yaw_offset_rad: float) -> np.ndarray:
        """T_enu_cam (N,4,4) of the window, odometry rotated by ``yaw_offset_rad`` into ENU.

        Translations are relative to the odometry origin (only differences matter downstream).
        """
        R = rot_z(yaw_offset_rad)
        return np.stack([R @ f.T_odom_body @ f.T_body_cam for f in self._frames])

    def relative_poses(self, yaw_offset_rad: float) -> np.ndarray:
        """T_grid_cams (N,4,4): the window cameras in the grid frame of the newest camera."""
        T = self.world_camera_poses(yaw_offset_rad)
        out = T.copy()
        out[:, :3, 3] -= T[0, :3, 3]
        return out
