"""KITTI raw readers and writers: calibration, OXTS, poses, timestamps, images, drives.

Formats follow the KITTI raw dataset (Geiger et al., IJRR 2013) byte for byte where the format
is fixed: OXTS packets are 30 space-separated values (floats as ``%.14g``, the last five as
integers), timestamps ``YYYY-MM-DD HH:MM:SS.fffffffff``, calibration ``key: v v v`` with
``%e``-style floats. Poses use pykitti's Mercator formulas. Images are RGB uint8 in the core.

Longer than 700 lines: the readers and writers of one format (calibration, OXTS packets, timestamps,
drives) kept together so that a writer is always tested against its reader.
"""

from __future__ import annotations

import calendar
import os
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from cvl_ros.camera import PinholeCamera
from cvl_ros.geo import GeoDatum, latlon_to_mercator, mercator_scale, mercator_to_latlon

# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------

_SHAPES = {"P_rect": (3, 4), "R_rect": (3, 3), "K": (3, 3), "R": (3, 3), "S": (2,),
           "S_rect": (2,), "D": (5,), "T": (3,)}


def _key_shape(key: str):
    for prefix in ("P_rect", "R_rect", "S_rect"):
        if key.startswith(prefix + "_") or key == prefix:
            return _SHAPES[prefix]
    base = key.split("_")[0] if "_" in key else key
    if base in ("K", "R", "S", "D", "T"):
        return _SHAPES[base]
    return None


def read_calib_file(path) -> dict:
    """Parse a KITTI ``key: values`` calibration file.

    Numeric values become float64 arrays (reshaped for known keys: ``P_rect_xx`` (3,4),
    ``R_rect_xx``/``K_xx``/``R_xx``/``R`` (3,3), ``S_xx``/``S_rect_xx`` (2,), ``D_xx`` (5,),
    ``T_xx``/``T`` (3,), ``corner_dist`` a float); non-numeric values (``calib_time``) stay str.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI calibration file not found: {path}")
    out: dict = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise ValueError(f"{path}:{lineno}: expected 'key: values', got {line!r}")
        key, val = line.split(":", 1)
        key, val = key.strip(), val.strip()
        try:
            arr = np.array([float(v) for v in val.split()], dtype=np.float64)
        except ValueError:
            out[key] = val
            continue
        shape = _key_shape(key)
        if shape is not None and arr.size == int(np.prod(shape)):
            arr = arr.reshape(shape)
        elif arr.size == 1:
            arr = float(arr[0])
        out[key] = arr
    return out


def _fmt_val(v, fmt: str) -> str:
    if isinstance(v, str):
        return v
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    return " ".join(fmt % x for x in arr)


def write_calib_file(path, calib: dict, fmt: str = "%e") -> None:
    """Write a ``key: values`` calibration file (insertion order; arrays flattened row-major).

    ``fmt`` defaults to KITTI's ``%e`` (7 significant digits); pass ``"%.17g"`` for lossless
    floats.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{k}: {_fmt_val(v, fmt)}" for k, v in calib.items()]
    path.write_text("\n".join(lines) + "\n")


def read_calib_cam_to_cam(path) -> dict:
    """Read ``calib_cam_to_cam.txt`` -> dict (``P_rect_02`` (3,4), ``R_rect_00`` (3,3), ...)."""
    return read_calib_file(path)


def write_calib_cam_to_cam(path, calib: dict, fmt: str = "%e") -> None:
    """Write ``calib_cam_to_cam.txt`` from a dict as returned by :func:`read_calib_cam_to_cam`."""
    write_calib_file(path, calib, fmt)


def make_calib_cam_to_cam(P_rect: dict, S_rect=(1242.0, 375.0), R_rect_00=None,
                          calib_time: str = "09-Jan-2012 13:57:47") -> dict:
    """Build a minimal cam_to_cam dict: ``{cam: P_rect (3,4)}`` for cams 0..3.

    Unrectified entries (S, K, D, R, T) are filled consistently (ideal camera, no distortion).
    """
    R0 = np.eye(3) if R_rect_00 is None else np.asarray(R_rect_00, dtype=np.float64)
    out: dict = {"calib_time": calib_time, "corner_dist": 9.95e-02}
    for cam in sorted(P_rect):
        P = np.asarray(P_rect[cam], dtype=np.float64).reshape(3, 4)
        c = f"{int(cam):02d}"
        out[f"S_{c}"] = np.asarray(S_rect, dtype=np.float64)
        out[f"K_{c}"] = P[:, :3].copy()
        out[f"D_{c}"] = np.zeros(5)
        out[f"R_{c}"] = np.eye(3)
        out[f"T_{c}"] = np.linalg.solve(P[:, :3], P[:, 3])
        out[f"S_rect_{c}"] = np.asarray(S_rect, dtype=np.float64)
        out[f"R_rect_{c}"] = R0 if int(cam) == 0 else np.eye(3)
        out[f"P_rect_{c}"] = P
    return out


def _rigid(R, T) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = np.asarray(R, dtype=np.float64).reshape(3, 3)
    M[:3, 3] = np.asarray(T, dtype=np.float64).reshape(3)
    return M


def read_calib_imu_to_velo(path) -> np.ndarray:
    """Read ``calib_imu_to_velo.txt`` -> ``T_velo_imu`` (4,4) (maps IMU points to velodyne)."""
    c = read_calib_file(path)
    return _rigid(c["R"], c["T"])


def write_calib_imu_to_velo(path, T_velo_imu, calib_time: str = "25-May-2012 16:47:16",
                            fmt: str = "%e") -> None:
    """Write ``calib_imu_to_velo.txt`` from ``T_velo_imu`` (4,4)."""
    T = np.asarray(T_velo_imu, dtype=np.float64)
    write_calib_file(path, {"calib_time": calib_time, "R": T[:3, :3], "T": T[:3, 3]}, fmt)


def read_calib_velo_to_cam(path) -> np.ndarray:
    """Read ``calib_velo_to_cam.txt`` -> ``T_cam0unrect_velo`` (4,4)."""
    c = read_calib_file(path)
    return _rigid(c["R"], c["T"])


def write_calib_velo_to_cam(path, T_cam0_velo, calib_time: str = "15-Mar-2012 11:37:16",
                            fmt: str = "%e") -> None:
    """Write ``calib_velo_to_cam.txt`` from ``T_cam0unrect_velo`` (4,4) (+ zero delta_f/c)."""
    T = np.asarray(T_cam0_velo, dtype=np.float64)
    write_calib_file(path, {"calib_time": calib_time, "R": T[:3, :3], "T": T[:3, 3],
                            "delta_f": np.zeros(2), "delta_c": np.zeros(2)}, fmt)


def kitti_T_cam_velo(calib_dir, cam: int = 2) -> np.ndarray:
    """``T_camN_velo`` (4,4) of RECTIFIED camera ``cam``.

    T = T_shift(P_rect_0N) @ R_rect_00 @ T_cam0unrect_velo, where the shift is the full
    ``inv(P[:, :3]) @ P[:, 3]`` (pykitti keeps only its x part; the rest is < 1 mm on KITTI).
    """
    calib_dir = Path(calib_dir)
    cc = read_calib_cam_to_cam(calib_dir / "calib_cam_to_cam.txt")
    T_c0_velo = read_calib_velo_to_cam(calib_dir / "calib_velo_to_cam.txt")
    R_rect = np.eye(4)
    R_rect[:3, :3] = cc["R_rect_00"]
    P = cc[f"P_rect_{cam:02d}"]
    shift = np.eye(4)
    shift[:3, 3] = np.linalg.solve(P[:, :3], P[:, 3])
    return shift @ R_rect @ T_c0_velo


def kitti_T_imu_cam(calib_dir, cam: int = 2) -> np.ndarray:
    """``T_imu_camN`` (4,4): rectified camera ``cam`` (optical frame) in the IMU/body frame."""
    T_velo_imu = read_calib_imu_to_velo(Path(calib_dir) / "calib_imu_to_velo.txt")
    return np.linalg.inv(kitti_T_cam_velo(calib_dir, cam) @ T_velo_imu)


def kitti_T_imu_cam2(calib_dir) -> np.ndarray:
    """``T_imu_cam2`` (4,4) from calib_imu_to_velo + calib_velo_to_cam + R_rect_00 + P_rect_02.

    The KITTI IMU frame is x forward, y left, z up (the project's body frame); on KITTI the
    IMU is mounted 0.93 m above the ground (:data:`KITTI_IMU_HEIGHT_M`).
    """
    return kitti_T_imu_cam(calib_dir, 2)


def write_kitti_calibration(date_dir, P_rect_02, size_wh, T_imu_cam2,
                            fmt: str = "%.17g") -> None:
    """Write the three KITTI calibration files of a (synthetic) recording day.

    ``P_rect_02`` (3,4) and image size ``size_wh`` = (width, height) define camera 2;
    ``T_imu_cam2`` (4,4) is its rectified optical frame in the IMU/body frame. Files are
    chosen so that ``kitti_T_imu_cam2(date_dir)`` returns ``T_imu_cam2`` (identity IMU->velo
    and R_rect_00; camera 0 = camera 2 without the baseline shift). ``fmt`` ``%.17g`` is
    lossless; ``%e`` gives KITTI's 7 significant digits.
    """
    date_dir = Path(date_dir)
    P2 = np.asarray(P_rect_02, dtype=np.float64).reshape(3, 4)
    P0 = P2.copy()
    P0[:, 3] = 0.0
    shift = np.eye(4)
    shift[:3, 3] = np.linalg.solve(P2[:, :3], P2[:, 3])
    T_cam0_velo = np.linalg.inv(shift) @ np.linalg.inv(np.asarray(T_imu_cam2, dtype=np.float64))
    calib = make_calib_cam_to_cam({0: P0, 1: P0, 2: P2, 3: P2}, S_rect=tuple(size_wh))
    write_calib_cam_to_cam(date_dir / "calib_cam_to_cam.txt", calib, fmt)
    write_calib_imu_to_velo(date_dir / "calib_imu_to_velo.txt", np.eye(4), fmt=fmt)
    write_calib_velo_to_cam(date_dir / "calib_velo_to_cam.txt", T_cam0_velo, fmt=fmt)


#: Height of the KITTI OXTS/IMU unit above the ground (m), from the KITTI sensor setup.
KITTI_IMU_HEIGHT_M = 0.93

# --------------------------------------------------------------------------------------------
# OXTS
# --------------------------------------------------------------------------------------------

OXTS_FIELDS = ("lat", "lon", "alt", "roll", "pitch", "yaw", "vn", "ve", "vf", "vl", "vu",
               "ax", "ay", "az", "af", "al", "au", "wx", "wy", "wz", "wf", "wl", "wu",
               "pos_accuracy", "vel_accuracy", "navstat", "numsats", "posmode", "velmode",
               "orimode")
_OXTS_INT = frozenset(("navstat", "numsats", "posmode", "velmode", "orimode"))


@dataclass
class OxtsPacket:
    """One KITTI OXTS packet (30 fields, see ``oxts/dataformat.txt``). Angles in rad."""

    lat: float = 0.0
    lon: float = 0.0
    alt: float = 0.0
    roll: float = 0.0
    pitch: float = 0.0
    yaw: float = 0.0
    vn: float = 0.0
    ve: float = 0.0
    vf: float = 0.0
    vl: float = 0.0
    vu: float = 0.0
    ax: float = 0.0
    ay: float = 0.0
    az: float = 0.0
    af: float = 0.0
    al: float = 0.0
    au: float = 0.0
    wx: float = 0.0
    wy: float = 0.0
    wz: float = 0.0
    wf: float = 0.0
    wl: float = 0.0
    wu: float = 0.0
    pos_accuracy: float = 0.0
    vel_accuracy: float = 0.0
    navstat: int = 4
    numsats: int = 10
    posmode: int = 6
    velmode: int = 6
    orimode: int = 6

    def to_line(self) -> str:
        """KITTI's text format: ``%.14g`` floats, integers for the five status fields."""
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            parts.append(str(int(v)) if f.name in _OXTS_INT else "%.14g" % float(v))
        return " ".join(parts)

    @classmethod
    def from_line(cls, line: str, source: str = "<string>") -> OxtsPacket:
        """Parse one packet line."""
        vals = line.split()
        if len(vals) != 30:
            raise ValueError(f"{source}: OXTS packet needs 30 values, got {len(vals)}")
        kw = {}
        for name, v in zip(OXTS_FIELDS, vals):
            try:
                kw[name] = int(float(v)) if name in _OXTS_INT else float(v)
            except (ValueError, OverflowError):
                raise ValueError(f"{source}: OXTS field {name} is not a "
                                 f"{'whole number' if name in _OXTS_INT else 'number'}: "
                                 f"{v!r}") from None
        return cls(**kw)

    def as_array(self) -> np.ndarray:
        """All 30 fields as float64 (30,)."""
        return np.array(astuple(self), dtype=np.float64)


def read_oxts_packet(path) -> OxtsPacket:
    """Read one ``oxts/data/<frame>.txt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI OXTS packet not found: {path}")
    return OxtsPacket.from_line(path.read_text(), str(path))


def write_oxts_packet(path, packet: OxtsPacket) -> None:
    """Write one packet in KITTI's exact format (single line, trailing newline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(packet.to_line() + "\n")


def _drive_subdir(drive_dir, sub: str) -> Path:
    d = Path(drive_dir)
    return d if d.name == sub else d / sub


def read_oxts_dir(drive_dir) -> list:
    """Read every packet of a drive (``<drive>/oxts/data/*.txt``, sorted).

    ``drive_dir`` may be the drive folder or its ``oxts`` folder.
    """
    data = _drive_subdir(drive_dir, "oxts") / "data"
    if not data.is_dir():
        raise FileNotFoundError(f"KITTI OXTS folder not found: {data}")
    files = sorted(p for p in data.iterdir() if p.suffix == ".txt")
    return [read_oxts_packet(p) for p in files]


def write_oxts_dir(drive_dir, packets, stamps_ns=None) -> None:
    """Write ``<drive>/oxts/data/%010d.txt`` (+ ``oxts/timestamps.txt`` when stamps given)."""
    oxts = Path(drive_dir) / "oxts"
    for i, p in enumerate(packets):
        write_oxts_packet(oxts / "data" / f"{i:010d}.txt", p)
    if stamps_ns is not None:
        write_timestamps(oxts / "timestamps.txt", stamps_ns)


def rpy_to_rotation(roll, pitch, yaw) -> np.ndarray:
    """R = Rz(yaw) Ry(pitch) Rx(roll) (KITTI OXTS convention), (3,3)."""
    cr, sr = np.cos(roll), np.sin(roll)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def rotation_to_rpy(R) -> tuple:
    """Inverse of :func:`rpy_to_rotation` -> (roll, pitch, yaw) in rad."""
    R = np.asarray(R, dtype=np.float64)
    pitch = float(np.arctan2(-R[2, 0], np.hypot(R[2, 1], R[2, 2])))
    roll = float(np.arctan2(R[2, 1], R[2, 2]))
    yaw = float(np.arctan2(R[1, 0], R[0, 0]))
    return roll, pitch, yaw


def oxts_to_poses(packets, scale=None):
    """Poses as pykitti computes them: ``(T_w_imu (N,4,4), scale)``.

    scale = cos(lat of the FIRST packet) unless given; t = Mercator(lat, lon), alt;
    R = Rz(yaw) Ry(pitch) Rx(roll); translations are relative to the first packet.
    """
    packets = list(packets)
    if not packets:
        return np.zeros((0, 4, 4)), scale
    if scale is None:
        scale = mercator_scale(packets[0].lat)
    lat = np.array([p.lat for p in packets])
    lon = np.array([p.lon for p in packets])
    x, y = latlon_to_mercator(lat, lon, scale)
    t = np.stack([np.atleast_1d(x), np.atleast_1d(y), np.array([p.alt for p in packets])], 1)
    T = np.tile(np.eye(4), (len(packets), 1, 1))
    for i, p in enumerate(packets):
        T[i, :3, :3] = rpy_to_rotation(p.roll, p.pitch, p.yaw)
    T[:, :3, 3] = t - t[0]
    return T, float(scale)


def poses_to_oxts(T_w_imu, lat0_deg: float, lon0_deg: float, alt0_m: float, scale=None,
                  template: OxtsPacket | None = None) -> list:
    """Inverse of :func:`oxts_to_poses`.

    Mercator poses relative to a first packet at (lat0, lon0, alt0) -> packets (lat, lon, alt,
    roll, pitch, yaw set; other fields copied from ``template`` or defaults).
    """
    T = np.asarray(T_w_imu, dtype=np.float64).reshape(-1, 4, 4)
    if scale is None:
        scale = mercator_scale(lat0_deg)
    x0, y0 = latlon_to_mercator(lat0_deg, lon0_deg, scale)
    lat, lon = mercator_to_latlon(T[:, 0, 3] + x0, T[:, 1, 3] + y0, scale)
    lat, lon = np.atleast_1d(lat), np.atleast_1d(lon)
    out = []
    for i in range(len(T)):
        roll, pitch, yaw = rotation_to_rpy(T[i, :3, :3])
        kw = {} if template is None else {f.name: getattr(template, f.name)
                                          for f in fields(template)}
        kw.update(lat=float(lat[i]), lon=float(lon[i]), alt=float(T[i, 2, 3] + alt0_m),
                  roll=roll, pitch=pitch, yaw=yaw)
        out.append(OxtsPacket(**kw))
    return out


def oxts_to_enu_poses(packets, datum: GeoDatum) -> np.ndarray:
    """Exact ``T_enu_imu`` (N,4,4) about ``datum`` (WGS84 via ECEF; no Mercator distortion)."""
    packets = list(packets)
    e, n, u = datum.to_enu(np.array([p.lat for p in packets]),
                           np.array([p.lon for p in packets]),
                           np.array([p.alt for p in packets]))
    T = np.tile(np.eye(4), (len(packets), 1, 1))
    for i, p in enumerate(packets):
        T[i, :3, :3] = rpy_to_rotation(p.roll, p.pitch, p.yaw)
    T[:, 0, 3], T[:, 1, 3], T[:, 2, 3] = e, n, u
    return T


def oxts_position_valid(packets) -> np.ndarray:
    """(N,) bool: the packet's position is a finite WGS84 point.

    Latitude in [-90, 90] deg, longitude in [-180, 180] deg, altitude finite. A packet failing
    this carries no position (a GPS outage written as NaN, or a corrupt line).
    """
    a = np.array([[p.lat, p.lon, p.alt] for p in packets], dtype=np.float64).reshape(-1, 3)
    with np.errstate(invalid="ignore"):
        return (np.all(np.isfinite(a), axis=1) & (np.abs(a[:, 0]) <= 90.0)
                & (np.abs(a[:, 1]) <= 180.0))


def oxts_fields_finite(packets, names) -> np.ndarray:
    """(N,) bool: every field ``names`` of the packet is finite."""
    a = np.array([[getattr(p, f) for f in names] for p in packets],
                 dtype=np.float64).reshape(-1, len(names))
    return np.all(np.isfinite(a), axis=1)


#: Fields an OXTS pose needs besides its position (the attitude).
OXTS_ATTITUDE = ("roll", "pitch", "yaw")


def oxts_pose_valid(packets) -> np.ndarray:
    """(N,) bool: the packet gives a pose (finite WGS84 position and finite attitude)."""
    packets = list(packets)
    return oxts_position_valid(packets) & oxts_fields_finite(packets, OXTS_ATTITUDE)


def increasing_mask(stamps) -> np.ndarray:
    """(N,) bool: the samples kept so that the stamps strictly increase, dropping the fewest.

    The kept samples are a longest strictly increasing subsequence of ``stamps``: a stamp that
    jumps back is dropped, and so is one that jumps ahead (which would otherwise make every
    later sample "go backwards"). Of repeated stamps the first sample is kept.
    """
    import bisect

    st = np.asarray(stamps, dtype=np.int64).reshape(-1)
    n = len(st)
    tails: list[int] = []        # smallest last stamp of an increasing run of each length
    tail_idx: list[int] = []     # its sample index
    prev = np.full(n, -1, dtype=np.int64)
    for i, s in enumerate(st.tolist()):
        k = bisect.bisect_left(tails, s)
        if k < len(tails) and tails[k] == s:
            continue  # a repeated stamp: the earlier sample stays
        if k:
            prev[i] = tail_idx[k - 1]
        if k == len(tails):
            tails.append(s)
            tail_idx.append(i)
        else:
            tails[k] = s
            tail_idx[k] = i
    keep = np.zeros(n, dtype=bool)
    i = tail_idx[-1] if tail_idx else -1
    while i >= 0:
        keep[i] = True
        i = int(prev[i])
    return keep


def dead_reckon_oxts(packets, stamps_ns) -> np.ndarray:
    """Odometry ``T_odom_imu`` (N,4,4) integrated from the OXTS velocities, as a wheel/visual-
    inertial odometry would measure the motion (no GPS position, no absolute heading).

    Heading integrates ``wu`` (rate about the upward axis, rad/s) from 0; position integrates
    the level-frame velocities ``vf``/``vl``/``vu`` (m/s; KITTI: forward and left parallel to the
    earth surface, up perpendicular) rotated by that heading, both with the trapezoidal rule
    over the packet stamps. Roll and pitch are the packets' own (gravity makes them observable
    to any inertial odometry). The odometry frame is the first pose's level, heading-0 frame,
    so ``T_odom_imu[0]`` carries only the first roll and pitch. Errors of the velocities (and of
    the trapezoidal rule in turns) accumulate as drift, as in a real odometry.

    Raises ``ValueError`` for non-finite fields or stamps that go backwards.
    """  # noqa: D205
    packets = list(packets)
    st = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
    n = len(packets)
    if len(st) < n:
        raise ValueError(f"dead_reckon_oxts: {n} packets but {len(st)} stamps")
    T = np.tile(np.eye(4), (n, 1, 1))
    if n == 0:
        return T
    f = np.array([[p.vf, p.vl, p.vu, p.wu, p.roll, p.pitch] for p in packets], dtype=np.float64)
    if not np.all(np.isfinite(f)):
        bad = int(np.nonzero(~np.all(np.isfinite(f), axis=1))[0][0])
        raise ValueError(f"dead_reckon_oxts: packet {bad} has a non-finite velocity/attitude")
    dt = np.diff(st[:n]).astype(np.float64) * 1e-9
    if np.any(dt < 0):
        raise ValueError(f"dead_reckon_oxts: stamps go backwards at packet "
                         f"{int(np.nonzero(dt < 0)[0][0]) + 1}")
    yaw = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:, 3] + f[:-1, 3]) * dt)])
    c, s = np.cos(yaw), np.sin(yaw)
    v_odom = np.stack([c * f[:, 0] - s * f[:, 1], s * f[:, 0] + c * f[:, 1], f[:, 2]], 1)
    pos = np.concatenate([np.zeros((1, 3)),
                          np.cumsum(0.5 * (v_odom[1:] + v_odom[:-1]) * dt[:, None], axis=0)])
    for i in range(n):
        T[i, :3, :3] = rpy_to_rotation(f[i, 4], f[i, 5], yaw[i])
    T[:, :3, 3] = pos
    return T


def enu_poses_to_oxts(T_enu_imu, datum: GeoDatum, template: OxtsPacket | None = None) -> list:
    """Inverse of :func:`oxts_to_enu_poses` (what a synthetic drive should write)."""
    T = np.asarray(T_enu_imu, dtype=np.float64).reshape(-1, 4, 4)
    lat, lon, alt = datum.to_geodetic(T[:, 0, 3], T[:, 1, 3], T[:, 2, 3])
    lat, lon, alt = np.atleast_1d(lat), np.atleast_1d(lon), np.atleast_1d(alt)
    out = []
    for i in range(len(T)):
        roll, pitch, yaw = rotation_to_rpy(T[i, :3, :3])
        kw = {} if template is None else {f.name: getattr(template, f.name)
                                          for f in fields(template)}
        kw.update(lat=float(lat[i]), lon=float(lon[i]), alt=float(alt[i]),
                  roll=roll, pitch=pitch, yaw=yaw)
        out.append(OxtsPacket(**kw))
    return out


# --------------------------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------------------------


def parse_timestamp(text: str) -> int:
    """``YYYY-MM-DD HH:MM:SS[.fffffffff]`` -> int nanoseconds since the Unix epoch.

    The wall-clock time is taken as UTC (KITTI does not state a zone); the fraction may have
    1-9 digits and is exact (no float rounding).
    """
    text = text.strip()
    main, _, frac = text.partition(".")
    dt = datetime.strptime(main, "%Y-%m-%d %H:%M:%S")
    if frac and (not frac.isdigit() or len(frac) > 9):
        raise ValueError(f"bad timestamp fraction in {text!r}")
    ns = int(frac.ljust(9, "0")) if frac else 0
    return calendar.timegm(dt.timetuple()) * 1_000_000_000 + ns


def format_timestamp(stamp_ns: int) -> str:
    """Inverse of :func:`parse_timestamp` (always 9 fraction digits)."""
    stamp_ns = int(stamp_ns)
    sec, ns = divmod(stamp_ns, 1_000_000_000)
    dt = datetime.fromtimestamp(sec, tz=timezone.utc)
    return dt.strftime("%Y-%m-%d %H:%M:%S") + f".{ns:09d}"


def read_timestamps(path) -> np.ndarray:
    """Read a KITTI ``timestamps.txt`` -> int64 ns since epoch (N,)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI timestamps file not found: {path}")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(parse_timestamp(line))
        except ValueError:
            raise ValueError(f"{path}:{lineno}: not a timestamp 'YYYY-MM-DD HH:MM:SS.fffffffff': "
                             f"{line.strip()!r}") from None
    return np.array(out, dtype=np.int64)


def write_timestamps(path, stamps_ns) -> None:
    """Write a KITTI ``timestamps.txt`` (one stamp a line, trailing newline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(format_timestamp(s) + "\n" for s in np.asarray(stamps_ns)))


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def read_image(path) -> np.ndarray:
    """Read an image file as RGB uint8 (H,W,3); missing/unreadable -> error naming the path."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"could not decode image: {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_image(path, rgb) -> None:
    """Write an RGB uint8 image (PNG by extension), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_image needs uint8 HxWx3 RGB, got {rgb.dtype} {rgb.shape}")
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image: {path}")


# --------------------------------------------------------------------------------------------
# Drives
# --------------------------------------------------------------------------------------------


def pinhole_from_projection(P, width_px: int, height_px: int):
    """:class:`cvl_ros.camera.PinholeCamera` from a rectified projection P_rect (3,4)."""
    P = np.asarray(P, dtype=np.float64).reshape(3, 4)
    return PinholeCamera.from_kitti_projection(P, int(width_px), int(height_px))


def parse_drive_name(drive_dir) -> tuple:
    """Split a drive path into (date folder, drive folder) names."""
    d = Path(drive_dir)
    return d.parent.name, d.name


class KittiDrive:
    """One KITTI raw drive folder ``<date>/<date>_drive_<NNNN>_sync``.

    Calibration is read from the date folder (``../calib_*.txt``). Frame ``i`` is
    ``image_02/data/%010d.png`` and ``oxts/data/%010d.txt``.
    """

    def __init__(self, drive_dir, cam: int = 2):
        self.drive_dir = Path(drive_dir)
        if not self.drive_dir.is_dir():
            raise FileNotFoundError(f"KITTI drive folder not found: {self.drive_dir}")
        self.calib_dir = self.drive_dir.parent
        self.cam = cam
        self._calib = None
        self._oxts = None
        self._stamps = None

    @property
    def date(self) -> str:
        """Recording date folder name."""
        return self.calib_dir.name

    @property
    def name(self) -> str:
        """Drive folder name."""
        return self.drive_dir.name

    @property
    def calib(self) -> dict:
        """``calib_cam_to_cam.txt`` of the date folder (cached)."""
        if self._calib is None:
            self._calib = read_calib_cam_to_cam(self.calib_dir / "calib_cam_to_cam.txt")
        return self._calib

    def camera(self, cam: int | None = None):
        """Rectified camera model (P_rect_0N, size S_rect_0N)."""
        cam = self.cam if cam is None else cam
        S = self.calib[f"S_rect_{cam:02d}"]
        return pinhole_from_projection(self.calib[f"P_rect_{cam:02d}"], int(round(S[0])),
                                       int(round(S[1])))

    def T_imu_cam(self, cam: int | None = None) -> np.ndarray:
        """Camera ``cam`` (rectified, optical) in the IMU/body frame, (4,4)."""
        return kitti_T_imu_cam(self.calib_dir, self.cam if cam is None else cam)

    @property
    def oxts(self) -> list:
        """All OXTS packets (cached)."""
        if self._oxts is None:
            self._oxts = read_oxts_dir(self.drive_dir)
        return self._oxts

    def oxts_packet(self, i: int) -> OxtsPacket:
        """Packet of frame ``i`` (reads just that file when the drive is not cached)."""
        if self._oxts is not None:
            return self._oxts[i]
        return read_oxts_packet(self.drive_dir / "oxts" / "data" / f"{i:010d}.txt")

    def frame_ids(self) -> list:
        """Frame numbers of the OXTS packets (from ``oxts/data/<frame>.txt`` names, sorted)."""
        data = self.drive_dir / "oxts" / "data"
        if not data.is_dir():
            raise FileNotFoundError(f"KITTI OXTS folder not found: {data}")
        return sorted(int(p.stem) for p in data.iterdir() if p.suffix == ".txt")

    def camera_poses_enu(self, datum: GeoDatum, cam: int | None = None) -> np.ndarray:
        """Camera poses ``T_enu_cam`` (N,4,4) of every OXTS frame.

        Exact ENU about ``datum`` composed with the camera extrinsic (rectified optical frame).
        """
        return oxts_to_enu_poses(self.oxts, datum) @ self.T_imu_cam(cam)

    def poses(self):
        """Pykitti-style ``(T_w_imu (N,4,4), scale)``."""
        return oxts_to_poses(self.oxts)

    @property
    def timestamps_ns(self) -> np.ndarray:
        """Image timestamps of camera ``cam`` (int64 ns)."""
        if self._stamps is None:
            self._stamps = read_timestamps(
                self.drive_dir / f"image_{self.cam:02d}" / "timestamps.txt")
        return self._stamps

    def image_path(self, i: int, cam: int | None = None) -> Path:
        """Path of frame ``i``'s PNG."""
        cam = self.cam if cam is None else cam
        return self.drive_dir / f"image_{cam:02d}" / "data" / f"{i:010d}.png"

    def image(self, i: int, cam: int | None = None) -> np.ndarray:
        """Frame ``i`` as RGB uint8."""
        return read_image(self.image_path(i, cam))

    def __len__(self) -> int:
        d = self.drive_dir / f"image_{self.cam:02d}" / "data"
        if d.is_dir():
            return sum(1 for p in d.iterdir() if p.suffix == ".png")
        ts = self.drive_dir / f"image_{self.cam:02d}" / "timestamps.txt"
        if ts.is_file():
            return len(self.timestamps_ns)
        return len(self.oxts)
