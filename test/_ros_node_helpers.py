"""Helpers for the node tests: tiny real resources, synthetic drives, message builders."""

from __future__ import annotations

import math

import numpy as np
import torch
from _localizer_fakes import CAMERA, T_BODY_CAM, FakeDB, OracleModel, drive_poses, image

from cvl_ros.camera import invert_pose
from cvl_ros.localizer import Localizer, LocalizerConfig


def build_tiny_resources(out_dir, datum=None):
    """A random-init tiny CVLNet checkpoint and a tile database built by it (a few seconds);
    ``datum`` (a GeoDatum) places the database (default: FakeDB's)."""
    from cvl_ros.database import TileDatabase
    from cvl_ros.model.cvlnet import CVLNet, CVLNetConfig, save_checkpoint

    torch.manual_seed(0)
    cfg = CVLNetConfig(pretrained=False, ground_hw=(32, 128), sat_px=64, grid_cells=16,
                       coverage_m=50.0, feature_dim=8)
    model = CVLNet(cfg, load_pretrained=False).eval()
    ckpt = out_dir / "tiny.safetensors"
    save_checkpoint(ckpt, model)
    fdb = FakeDB(spacing_m=20.0, east=(-40, 80), north=(-20, 20),
                 **({"datum": datum} if datum is not None else {}))
    rng = np.random.default_rng(0)
    tiles = [(tid, float(ll[0]), float(ll[1]), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
             for tid, ll in zip(fdb.tile_ids, fdb.centers_latlon)]
    TileDatabase.build(model, tiles, out_dir / "db", fdb.datum)
    return ckpt, out_dir / "db"


class OracleLocalizer(Localizer):
    """The real Localizer over the oracle model; the truth is looked up by the frame's stamp."""

    def __init__(self, truth_by_stamp: dict, window_length=2, odom_yaw_offset_rad=0.0):
        db = FakeDB()
        self.oracle = OracleModel(db, noise=0.0)
        self.truth_by_stamp = truth_by_stamp
        # short test drives: converge on the first peaked belief (the travel rule is tested in
        # test_localizer.py)
        super().__init__(self.oracle, db, LocalizerConfig(
            window_length=window_length, odom_yaw_offset_rad=odom_yaw_offset_rad,
            global_min_travel_m=0.0))

    def add_frame(self, frame):
        T = self.truth_by_stamp.get(int(frame.stamp_ns))
        if T is not None:
            self.oracle.truth_cam_en = (T @ T_BODY_CAM)[:2, 3]
        return super().add_frame(frame)


class Drive:
    """A straight synthetic drive with messages for image, camera_info and odometry."""

    def __init__(self, n=20, step_m=1.5, yaw=0.2, start=(3.0, -2.0), stamp0_ns=10**9,
                 dt_ns=100_000_000, odom_yaw=0.5):
        self.T_world = drive_poses(n, step_m, start, yaw)
        # odometry frame: origin at the first pose, rotated by odom_yaw w.r.t. ENU
        from cvl_ros.camera import pose_enu

        T_w_odom = self.T_world[0] @ pose_enu(0, 0, 0, -odom_yaw)
        self.T_odom = np.stack([invert_pose(T_w_odom) @ T for T in self.T_world])
        self.odom_yaw_offset = yaw - math.atan2(self.T_odom[0][1, 0], self.T_odom[0][0, 0])
        self.stamps = [stamp0_ns + i * dt_ns for i in range(n)]
        self.truth = dict(zip(self.stamps, self.T_world))

    def image_msg(self, i, encoding="rgb8", frame_id="camera_optical"):
        from cvl_ros.ros import convert

        return convert.rgb_to_image(image(i), encoding, convert.ns_to_stamp(self.stamps[i]),
                                    frame_id)

    def info_msg(self, i, width=None, height=None):
        from sensor_msgs.msg import CameraInfo

        from cvl_ros.ros import convert

        m = CameraInfo(width=width or CAMERA.width_px, height=height or CAMERA.height_px)
        m.header.stamp = convert.ns_to_stamp(self.stamps[i])
        m.header.frame_id = "camera_optical"
        m.k = [float(v) for v in CAMERA.K.ravel()]
        return m

    def odom_msg(self, i, nan=False):
        from nav_msgs.msg import Odometry

        from cvl_ros.ros import convert

        m = Odometry()
        m.header.stamp = convert.ns_to_stamp(self.stamps[i])
        m.header.frame_id, m.child_frame_id = "odom", "base_link"
        m.pose.pose = convert.matrix_to_pose(self.T_odom[i])
        if nan:
            m.pose.pose.position.x = float("nan")
        return m


def extrinsics_param():
    """camera_extrinsics_xyz_rpy equal to the fakes' T_BODY_CAM (1 m ahead, 1.6 m up)."""
    return [1.0, 0.0, 1.6, 0.0, 0.0, 0.0]
