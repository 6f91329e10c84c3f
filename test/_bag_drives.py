"""Helpers for the bag tests: tiny KITTI drives built from the real calibration files."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np

from cvl_ros.geo import GeoDatum
from cvl_ros.kitti import (
    enu_poses_to_oxts,
    read_oxts_packet,
    rpy_to_rotation,
    write_image,
    write_oxts_dir,
    write_oxts_packet,
    write_timestamps,
)

HERE = Path(__file__).resolve().parent
KITTI_DATA = HERE / "data" / "kitti_raw"
DATE = "2011_09_26"
DRIVE = "2011_09_26_drive_0001_sync"


def real_drive_with_image(tmp: Path) -> Path:
    """Copy the real KITTI fixture files and add one generated 1242x375 image for frame 0."""
    dst = Path(tmp) / "kitti_raw"
    shutil.copytree(KITTI_DATA, dst)
    drive = dst / DATE / DRIVE
    rng = np.random.default_rng(0)
    write_image(drive / "image_02" / "data" / "0000000000.png",
                rng.integers(0, 255, (375, 1242, 3), dtype=np.uint8))
    return drive


def frame_image(i: int, h: int = 48, w: int = 160) -> np.ndarray:
    """A small image whose first pixel encodes the frame index."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = np.arange(w, dtype=np.uint8)[None, :]
    img[..., 1] = (100 + 60 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.uint8)  # texture
    img[..., 2] = (yy * 3).astype(np.uint8)
    img[0, 0] = (i % 256, 7, 9)
    return img


def tiny_drive(tmp: Path, n: int = 10, speed_mps: float = 8.0, yaw_rate: float = 0.1,
               image_hw: tuple[int, int] = (48, 160), gps_offset_m: float | None = None) -> Path:
    """Write a small KITTI raw drive (real calibration, generated OXTS path and images).

    With ``gps_offset_m``, ``oxts/`` is shifted that far east (a GPS error) and the exact poses
    go to ``oxts_true/``, as cvl-synth writes them.
    """
    root = Path(tmp) / "tiny"
    date_dir = root / DATE
    drive = date_dir / "2011_09_26_drive_0099_sync"
    date_dir.mkdir(parents=True)
    for name in ("calib_cam_to_cam.txt", "calib_imu_to_velo.txt", "calib_velo_to_cam.txt"):
        shutil.copy(KITTI_DATA / DATE / name, date_dir / name)
    template = read_oxts_packet(KITTI_DATA / DATE / DRIVE / "oxts" / "data" / "0000000000.txt")
    datum = GeoDatum(template.lat, template.lon, template.alt)
    dt = 0.1
    yaw0 = template.yaw
    T = np.tile(np.eye(4), (n, 1, 1))
    x = y = 0.0
    for i in range(n):
        yaw = yaw0 + yaw_rate * i * dt
        T[i, :3, :3] = rpy_to_rotation(0.01, -0.02, yaw)
        T[i, :3, 3] = (x, y, 0.5)
        x += speed_mps * dt * np.cos(yaw)
        y += speed_mps * dt * np.sin(yaw)
    packets = enu_poses_to_oxts(T, datum, template=template)
    for p in packets:
        p.vf, p.vl, p.vu, p.wu = speed_mps, 0.0, 0.0, yaw_rate
    t0 = 1317042145_961661696
    cam_stamps = t0 + np.arange(n, dtype=np.int64) * 100_000_000
    oxts_stamps = cam_stamps + 2_700_000
    if gps_offset_m is not None:
        for i, p in enumerate(packets):
            write_oxts_packet(drive / "oxts_true" / "data" / f"{i:010d}.txt", p)
        write_timestamps(drive / "oxts_true" / "timestamps.txt", oxts_stamps)
        T_noisy = T.copy()
        T_noisy[:, 0, 3] += gps_offset_m
        packets = enu_poses_to_oxts(T_noisy, datum, template=template)
        for p in packets:
            p.vf, p.vl, p.vu, p.wu = speed_mps, 0.0, 0.0, yaw_rate
    write_oxts_dir(drive, packets, oxts_stamps)
    write_timestamps(drive / "image_02" / "timestamps.txt", cam_stamps)
    for i in range(n):
        write_image(drive / "image_02" / "data" / f"{i:010d}.png", frame_image(i, *image_hw))
    return drive


def isolated_ros_env() -> int:
    """Set a per-run domain id and localhost discovery; return the domain id."""
    domain = random.Random(os.getpid() ^ int.from_bytes(os.urandom(2), "little")).randint(30, 200)
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return domain
