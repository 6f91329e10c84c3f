"""A tiny KITTI-CVL tree (two drives, random mosaic) and a tiny model config for fast tests."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from cvl_ros import kitti
from cvl_ros.geo import GeoDatum
from cvl_ros.tiles import GeoMosaic, build_kitti_cvl_tiles

REAL_CALIB = Path(__file__).parent / "data" / "kitti_raw" / "2011_09_26"
DATUM = GeoDatum(49.015, 8.434, 110.0)
DATE = "2011_09_26"
TRAIN = f"{DATE}/{DATE}_drive_0001_sync"
TEST = f"{DATE}/{DATE}_drive_0002_sync"

TINY_MODEL = {
    "backbone": "mobilenet_v2",
    "pretrained": False,
    "ground_hw": [32, 128],
    "sat_px": 64,
    "coverage_m": 40.0,
    "grid_cells": 8,
    "feature_dim": 8,
    "descriptor_dim": 4,
    "search_cells": 2,
}


def _poses(n, step_m, heading):
    T = np.tile(np.eye(4), (n, 1, 1))
    s = np.arange(n, dtype=np.float64) * step_m - n * step_m / 2
    if heading == "east":
        T[:, 0, 3], T[:, 1, 3], yaw = s, 3.3, 0.0
    else:
        T[:, 0, 3], T[:, 1, 3], yaw = -4.2, s, math.pi / 2
    T[:, 2, 3] = kitti.KITTI_IMU_HEIGHT_M
    T[:, :3, :3] = kitti.rpy_to_rotation(0.0, 0.0, yaw)
    return T


def _write_drive(root, key, T_enu_imu, seed):
    d = root / "raw_data" / key
    n = len(T_enu_imu)
    stamps = 1317042145_000000000 + np.arange(n, dtype=np.int64) * 100_000_000
    kitti.write_oxts_dir(d, kitti.enu_poses_to_oxts(T_enu_imu, DATUM), stamps)
    kitti.write_timestamps(d / "image_02" / "timestamps.txt", stamps)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 256, (47, 155, 3), dtype=np.uint8)
        kitti.write_image(d / "image_02" / "data" / f"{i:010d}.png", img)


def make_tree(root: Path, n_train: int = 60, n_test: int = 30) -> Path:
    """Write the tree under ``root`` and return it."""
    cal = root / "raw_data" / DATE
    cal.mkdir(parents=True, exist_ok=True)
    for name in ("calib_cam_to_cam.txt", "calib_imu_to_velo.txt", "calib_velo_to_cam.txt"):
        shutil.copy(REAL_CALIB / name, cal / name)
    _write_drive(root, TRAIN, _poses(n_train, 3.0, "east"), 1)
    _write_drive(root, TEST, _poses(n_test, 2.0, "north"), 2)
    rng = np.random.default_rng(0)
    mosaic = GeoMosaic(rng.integers(0, 256, (320, 320, 3), dtype=np.uint8), DATUM, 1.0,
                       -160.0, 160.0)
    mosaic.write(root / "mosaic.png")
    build_kitti_cvl_tiles(mosaic, root, [TRAIN], [TEST], spacing_m=10.0, tile_px=64)
    return root
