"""KITTI raw drive -> ROS 2 bag (``cvl-kitti2bag``), written with ``rosbags``.

:func:`write_kitti_bag` converts a KITTI raw drive (real or synthetic) into a ROS 2 bag
(sqlite3 or mcap storage) with camera image + camera_info, GPS fix, IMU, drifting odometry,
ground truth, ``/tf`` and ``/tf_static``. No ROS 2 runtime is needed. The topic, frame and
type names are those of :mod:`cvl_ros.ros.bags`.

**Inputs are checked where they enter**, before anything is written: a missing drive,
calibration, image or ``timestamps.txt`` (the OXTS stamps come from ``oxts/timestamps.txt``,
never from the camera's) is an error; samples whose stamps do not increase, fixes without a
finite WGS84 position and packets with non-finite values are dropped (never written, never
ground truth) and counted per reason (:data:`DROP_REASONS`, ``KittiBagInfo.dropped``, the bag's
``custom_data`` ``cvl_ros.dropped_<reason>``).

**Output safety** (``docs/output-safety.md``): the bag folder is written through
:func:`cvl_ros.outputs.prepare_output` (tool ``cvl-kitti2bag``): never equal to, inside or above
the drive, never a foreign non-empty folder; ``overwrite`` replaces only a bag cvl-kitti2bag
wrote (marker, or recognised by :func:`recognise_kitti_bag`); written beside ``out`` and renamed
into place at the end.

Longer than 700 lines: the KITTI drive -> rosbag2 writer with its input checks, drop counting and
the output-safety recognition of earlier bags, which must agree with one another.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cvl_ros.ros.bags import (
    FRAME_BASE,
    FRAME_CAMERA,
    FRAME_IMU,
    FRAME_ODOM,
    FRAME_VELO,
    FRAME_WORLD,
    META_PREFIX,
    MSG_CAMERA_INFO,
    MSG_IMAGE,
    MSG_IMU,
    MSG_NAVSATFIX,
    MSG_ODOMETRY,
    MSG_POSE_STAMPED,
    MSG_TF,
    TOPIC_CAMERA_INFO,
    TOPIC_FIX,
    TOPIC_GT_POSE,
    TOPIC_IMAGE,
    TOPIC_IMU,
    TOPIC_ODOM,
    TOPIC_TF,
    TOPIC_TF_STATIC,
    make_typestore,
    qos_profile,
)


# --------------------------------------------------------------------------------------------
# rosbags message builders
# --------------------------------------------------------------------------------------------
def _stamp(store: Any, stamp_ns: int) -> Any:
    stamp_ns = int(stamp_ns)
    return store.types["builtin_interfaces/msg/Time"](
        sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000
    )


def _header(store: Any, stamp_ns: int, frame_id: str) -> Any:
    return store.types["std_msgs/msg/Header"](stamp=_stamp(store, stamp_ns), frame_id=frame_id)


def rotation_to_quaternion_xyzw(R: np.ndarray) -> np.ndarray:
    """Return the unit quaternion (x, y, z, w) of a 3x3 rotation matrix (w >= 0)."""
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat()  # scalar last
    if q[3] < 0:
        q = -q
    return q


def _quat(store: Any, R: np.ndarray) -> Any:
    x, y, z, w = rotation_to_quaternion_xyzw(R)
    return store.types["geometry_msgs/msg/Quaternion"](x=float(x), y=float(y), z=float(z),
                                                        w=float(w))


def _vec3(store: Any, v: Sequence[float]) -> Any:
    return store.types["geometry_msgs/msg/Vector3"](x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _pose(store: Any, T: np.ndarray) -> Any:
    p = store.types["geometry_msgs/msg/Point"](x=float(T[0, 3]), y=float(T[1, 3]),
                                               z=float(T[2, 3]))
    return store.types["geometry_msgs/msg/Pose"](position=p, orientation=_quat(store, T[:3, :3]))


def _transform_stamped(store: Any, stamp_ns: int, parent: str, child: str,
                       T: np.ndarray) -> Any:
    tr = store.types["geometry_msgs/msg/Transform"](
        translation=_vec3(store, T[:3, 3]), rotation=_quat(store, T[:3, :3])
    )
    return store.types["geometry_msgs/msg/TransformStamped"](
        header=_header(store, stamp_ns, parent), child_frame_id=child, transform=tr
    )


# --------------------------------------------------------------------------------------------
# KITTI -> bag
# --------------------------------------------------------------------------------------------
TOOL = "cvl-kitti2bag"

#: Every topic a cvl-kitti2bag bag can hold (recognises bags of earlier versions).
BAG_TOPICS = frozenset({TOPIC_IMAGE, TOPIC_CAMERA_INFO, TOPIC_FIX, TOPIC_IMU, TOPIC_ODOM,
                        TOPIC_GT_POSE, TOPIC_TF, TOPIC_TF_STATIC})
#: ``custom_data`` keys every version of cvl-kitti2bag wrote.
_OWN_KEYS = frozenset(META_PREFIX + k for k in ("source_drive", "datum_lat_deg",
                                                "datum_lon_deg"))

#: Bounds of the numeric options (``write_kitti_bag`` arguments and the CLI flags).
LIMITS = {
    "odom_drift_pct": (-50.0, 50.0),
    "odom_yaw_drift_deg_per_100m": (-90.0, 90.0),
    "odom_noise_pct": (0.0, 50.0),
}

#: What is dropped at the input checks, and why. Counted in ``KittiBagInfo.dropped`` and in the
#: bag's ``custom_data`` as ``cvl_ros.dropped_<reason>``; see docs/bags.md.
DROP_REASONS = {
    "camera_stamp_not_increasing": "camera frames whose stamp does not increase (no image, "
                                   "no camera_info)",
    "oxts_stamp_not_increasing": "OXTS packets whose stamp does not increase (no fix, IMU, "
                                 "odometry, ground truth or /tf)",
    "gps_invalid": "OXTS packets without a finite WGS84 position (no NavSatFix)",
    "imu_invalid": "OXTS packets with a non-finite attitude, rate or acceleration (no Imu)",
    "odom_invalid": "OXTS packets with a non-finite velocity, rate or attitude (no odometry, "
                    "not dead-reckoned)",
    "ground_truth_invalid": "ground-truth packets without a finite WGS84 position or attitude "
                            "(no ground-truth pose)",
}

_IMU_FIELDS = ("roll", "pitch", "yaw", "wf", "wl", "wu", "af", "al", "au")
_ODOM_FIELDS = ("roll", "pitch", "vf", "vl", "vu", "wf", "wl", "wu")


@dataclass
class KittiBagInfo:
    """What :func:`write_kitti_bag` wrote."""

    path: Path
    storage: str
    frames: int
    topics: dict[str, int] = field(default_factory=dict)
    datum: tuple[float, float, float] = (0.0, 0.0, 0.0)
    ground_truth: str = "oxts"
    start_ns: int = 0
    end_ns: int = 0
    #: samples dropped by the input checks, per reason of :data:`DROP_REASONS`
    dropped: dict[str, int] = field(default_factory=dict)


def _valid_latlon(lat: float, lon: float, alt: float) -> bool:
    return (all(math.isfinite(v) for v in (lat, lon, alt)) and abs(lat) <= 90.0
            and abs(lon) <= 180.0)


def _find_town_datum(drive_dir: Path) -> tuple[tuple[float, float, float], Path] | None:
    """The datum of a synthetic town (``town.json`` above the drive) and its file, if present.

    Raises ``ValueError`` for a ``town.json`` that cannot be read or whose datum is not a
    finite WGS84 point (it would put the ground truth anywhere).
    """
    for parent in [drive_dir, *drive_dir.parents][:5]:
        town = parent / "town.json"
        if not town.is_file():
            continue
        try:
            data = json.loads(town.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{town}: unreadable ({exc}); fix or remove it (the datum is then "
                             "the first OXTS packet)") from None
        datum = data.get("datum") if isinstance(data, dict) else None
        if isinstance(datum, dict):
            lat = datum.get("lat_deg", datum.get("lat"))
            lon = datum.get("lon_deg", datum.get("lon"))
            alt = datum.get("alt_m", datum.get("alt", 0.0))
        elif isinstance(datum, (list, tuple)) and len(datum) >= 2:
            lat, lon = datum[0], datum[1]
            alt = datum[2] if len(datum) > 2 else 0.0
        else:
            return None
        if lat is None or lon is None:
            return None
        try:
            d = (float(lat), float(lon), float(alt or 0.0))
        except (TypeError, ValueError):
            d = (math.nan, math.nan, math.nan)
        if not _valid_latlon(*d):
            raise ValueError(f"{town}: datum ({lat}, {lon}, {alt}) is not a finite WGS84 point "
                             "(latitude -90..90 deg, longitude -180..180 deg); fix it or "
                             "regenerate the town with cvl-synth")
        return d, town
    return None


def _read_stamps(path: Path, n: int, what: str) -> np.ndarray:
    """The first ``n`` stamps of a ``timestamps.txt`` (errors say which file and what to do)."""
    from cvl_ros.kitti import read_timestamps

    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the {what} stamps are read from it (no other sensor's stamps "
            "are used in its place); a KITTI raw *_sync drive has one per sensor folder")
    stamps = np.asarray(read_timestamps(path), dtype=np.int64)
    if len(stamps) < n:
        raise ValueError(f"{path}: {len(stamps)} stamps for {n} frames; the drive is incomplete "
                         "(pass --frames N to convert only the first N)")
    return stamps[:n]


def _camera_info_matrices(calib: dict, width: int, height: int,
                          cam: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Return (P (3,4), R (3,3)) of rectified camera ``cam``, scaled to the image size."""
    P = np.asarray(calib[f"P_rect_0{cam}"], dtype=np.float64).reshape(3, 4).copy()
    size = calib.get(f"S_rect_0{cam}")
    if size is not None:
        sw, sh = (float(v) for v in np.asarray(size).reshape(-1)[:2])
        if sw > 0 and sh > 0 and (abs(sw - width) > 0.5 or abs(sh - height) > 0.5):
            P[0] *= width / sw
            P[1] *= height / sh
    R = calib.get(f"R_rect_0{cam}", calib.get("R_rect_00"))
    R = np.eye(3) if R is None else np.asarray(R, dtype=np.float64).reshape(3, 3)
    return P, R


def _static_transforms(drive_dir: Path) -> list[tuple[str, str, np.ndarray]]:
    """Return (parent, child, T_parent_child) of the sensor offsets (base_link = OXTS IMU)."""
    from cvl_ros.kitti import kitti_T_imu_cam2, read_calib_imu_to_velo

    calib_dir = drive_dir.parent
    out = [(FRAME_BASE, FRAME_IMU, np.eye(4)),
           (FRAME_BASE, FRAME_CAMERA, np.asarray(kitti_T_imu_cam2(calib_dir), np.float64))]
    velo = calib_dir / "calib_imu_to_velo.txt"
    if velo.is_file():
        out.append((FRAME_BASE, FRAME_VELO, np.linalg.inv(read_calib_imu_to_velo(velo))))
    return out


def _odometry_from_oxts(packets, stamps_ns, drift_pct: float, yaw_drift: float,
                        noise_pct: float, seed: int) -> np.ndarray:
    """``T_odom_body`` (first pose = identity): the OXTS velocities dead-reckoned
    (:func:`cvl_ros.kitti.dead_reckon_oxts`), then scale/yaw drift and seeded per-step noise
    added to every relative motion by the synth package's odometry model."""  # noqa: D205, D209
    from cvl_ros.kitti import dead_reckon_oxts
    from cvl_ros.synth.odometry import simulate_odometry

    return np.asarray(simulate_odometry(dead_reckon_oxts(packets, stamps_ns),
                                        drift_pct=drift_pct, yaw_drift_deg_per_100m=yaw_drift,
                                        noise_frac=noise_pct / 100.0, seed=seed), np.float64)



def odometry_covariances(travelled_m: float, drift_pct: float,
                         yaw_drift_deg_per_100m: float) -> tuple[np.ndarray, np.ndarray]:
    """(pose, twist) covariances (36,) of the odometry after ``travelled_m`` metres.

    Position sigma 2 cm + the drift's share of the distance, yaw sigma 0.1 deg + the yaw drift.
    """
    sig_xy = 0.02 + abs(drift_pct) / 100.0 * travelled_m
    sig_yaw = math.radians(0.1 + abs(yaw_drift_deg_per_100m) * travelled_m / 100.0)
    pose_cov = np.diag([sig_xy**2, sig_xy**2, (2 * sig_xy) ** 2, 1e-4, 1e-4,
                        sig_yaw**2]).reshape(-1)
    twist_cov = np.diag([0.01, 0.01, 0.01, 1e-4, 1e-4, 1e-4]).reshape(-1)
    return pose_cov, twist_cov


# --------------------------------------------------------------------------------------------
# Output safety: bags of earlier versions (no marker)
# --------------------------------------------------------------------------------------------
def recognise_kitti_bag(folder) -> set:
    """Entries of a markerless bag folder an earlier cvl-kitti2bag wrote, else an empty set.

    Recognised exactly (``cvl_ros.outputs`` ``recognise=``):

    * a complete bag: the folder holds nothing but ``metadata.yaml`` and the storage files it
      lists, its ``custom_data`` has the ``cvl_ros.`` keys cvl-kitti2bag writes
      (``source_drive``, ``datum_lat_deg``, ``datum_lon_deg``) and every topic is one of
      :data:`BAG_TOPICS`;
    * the remains of an interrupted run: no ``metadata.yaml`` (rosbags writes it at the end), only
      ``<folder name>.mcap`` (or ``.db3``, with its ``-journal``/``-wal``/``-shm``), whose
      recorded topics are all cvl-kitti2bag's (an MCAP file may also be empty or hold only
      rosbags' header: no data of anyone's).
    """
    folder = Path(folder)
    try:
        children = list(folder.iterdir())
    except OSError:
        return set()
    if not children or not all(c.is_file() and not c.is_symlink() for c in children):
        return set()
    names = {c.name for c in children}
    if "metadata.yaml" in names:
        return names if _recognise_complete(folder, names) else set()
    return names if _recognise_incomplete(folder, names) else set()


def _recognise_complete(folder: Path, names: set) -> bool:
    import yaml

    try:
        info = yaml.safe_load((folder / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        files = {str(f) for f in info["relative_file_paths"]}
        custom = info.get("custom_data") or {}
        topics = {str(t["topic_metadata"]["name"]) for t in info["topics_with_message_count"]}
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return False
    return (bool(files) and names == {"metadata.yaml"} | files and isinstance(custom, dict)
            and _OWN_KEYS <= set(custom) and bool(topics) and topics <= BAG_TOPICS)


def _recognise_incomplete(folder: Path, names: set) -> bool:
    mcap_name, db_name = f"{folder.name}.mcap", f"{folder.name}.db3"
    if names == {mcap_name}:
        return _mcap_incomplete_ours(folder / mcap_name)
    if db_name in names and names <= {db_name} | {db_name + s for s in ("-journal", "-wal",
                                                                        "-shm")}:
        topics = _sqlite_topics(folder / db_name)
        return bool(topics) and topics <= BAG_TOPICS
    return False


_MCAP_MAGIC = b"\x89MCAP0\r\n"
_OP_HEADER, _OP_CHANNEL, _OP_CHUNK = 0x01, 0x04, 0x06


def _mcap_string(buf: bytes, at: int) -> tuple[str, int]:
    n = int.from_bytes(buf[at:at + 4], "little")
    if at + 4 + n > len(buf):
        raise ValueError("string runs past its record")
    return buf[at + 4:at + 4 + n].decode("utf-8"), at + 4 + n


def _mcap_records(buf: bytes, at: int = 0):
    """``(opcode, content)`` of the whole records in ``buf`` from ``at``; stops at a cut one."""
    while at + 9 <= len(buf):
        op, n = buf[at], int.from_bytes(buf[at + 1:at + 9], "little")
        if at + 9 + n > len(buf):
            return
        yield op, buf[at + 9:at + 9 + n]
        at += 9 + n


def _mcap_channel_topics(records) -> set:
    """Channel topics in ``records`` and in the uncompressed chunks among them."""
    topics: set = set()
    for op, content in records:
        if op == _OP_CHANNEL:
            topics.add(_mcap_string(content, 4)[0])
        elif op == _OP_CHUNK:
            compression, at = _mcap_string(content, 28)
            if compression:  # cvl-kitti2bag never compresses: someone else's file
                raise ValueError(f"compressed chunk ({compression})")
            n = int.from_bytes(content[at:at + 8], "little")
            topics |= _mcap_channel_topics(_mcap_records(content[at + 8:at + 8 + n]))
    return topics


def _mcap_incomplete_ours(path: Path) -> bool:
    """Whether ``path`` is the MCAP file of an interrupted rosbags writer of our topics.

    rosbags writes the magic and a header naming itself, then whole 1 MiB chunks (the first
    holds the channels), each uncompressed as cvl-kitti2bag writes them; a killed run leaves the
    file cut anywhere. Recognised: an empty file, a rosbags header and nothing else, or channels
    that are all cvl-kitti2bag's. (Parsed here: the ``mcap`` package is no runtime dependency.)
    """
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if not data:
        return True  # nothing reached the disk
    if data[:8] != _MCAP_MAGIC:
        return False
    records = list(_mcap_records(data, 8))
    if not records or records[0][0] != _OP_HEADER:
        return False
    try:
        profile, at = _mcap_string(records[0][1], 0)
        library, _ = _mcap_string(records[0][1], at)
        topics = _mcap_channel_topics(records[1:])
    except (ValueError, UnicodeDecodeError):
        return False
    if profile != "ros2" or not library.startswith("rosbags"):
        return False
    if topics:
        return topics <= BAG_TOPICS
    return len(records) == 1 and len(data) == 8 + 9 + len(records[0][1])  # the header only


def _sqlite_topics(path: Path) -> set:
    """Topic names of a rosbag2 sqlite3 file (read-only); empty when unreadable."""
    import sqlite3

    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return {str(r[0]) for r in con.execute("SELECT name FROM topics")}
        finally:
            con.close()
    except sqlite3.Error:
        return set()


# --------------------------------------------------------------------------------------------
# Reading and checking the drive (before anything is written)
# --------------------------------------------------------------------------------------------
@dataclass
class _Drive:
    """A drive read and checked: the first ``n`` frames and what of them may be written."""

    drive: Any
    n: int
    packets: list
    true_packets: list
    gt_source: str
    cam_stamps: np.ndarray
    oxts_stamps: np.ndarray
    datum: tuple[float, float, float]
    statics: list
    inputs: list
    keep: dict[str, np.ndarray]
    dropped: dict[str, int]


def _check_options(**values: float) -> None:
    for name, v in values.items():
        low, high = LIMITS[name]
        if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                and low <= v <= high):
            raise ValueError(f"{name} must be a number from {low:g} to {high:g}, got {v!r}")


def _load_drive(drive_dir: Path, max_frames: int | None) -> _Drive:
    """Read the drive and check every input; raises before any output is touched."""
    from cvl_ros.kitti import (
        KittiDrive,
        increasing_mask,
        oxts_fields_finite,
        oxts_pose_valid,
        oxts_position_valid,
        read_oxts_packet,
    )

    drive = KittiDrive(drive_dir)  # FileNotFoundError: no drive folder
    calib = drive.calib  # FileNotFoundError: no calibration
    try:
        statics = _static_transforms(drive_dir)
    except KeyError as exc:
        raise ValueError(f"{drive.calib_dir}: the calibration lacks {exc.args[0]!r} (KITTI's "
                         "calib_cam_to_cam.txt / calib_velo_to_cam.txt / calib_imu_to_velo.txt "
                         "are needed)") from None
    packets = list(drive.oxts)
    n = min(len(drive), len(packets))
    if max_frames is not None:
        n = min(n, int(max_frames))
    if n <= 0:
        raise ValueError(f"{drive_dir}: no frames (images: {len(drive)}, oxts: {len(packets)})")
    packets = packets[:n]
    cam_stamps = _read_stamps(drive_dir / f"image_{drive.cam:02d}" / "timestamps.txt", n,
                              "camera")
    oxts_stamps = _read_stamps(drive_dir / "oxts" / "timestamps.txt", n, "OXTS")
    missing = [i for i in range(n) if not drive.image_path(i).is_file()]
    if missing:
        shown = ", ".join(str(drive.image_path(i)) for i in missing[:3])
        raise FileNotFoundError(f"{len(missing)} of {n} images missing: {shown}"
                                f"{' ...' if len(missing) > 3 else ''}")
    P = calib.get(f"P_rect_{drive.cam:02d}")
    if P is None or not np.all(np.isfinite(np.asarray(P, dtype=np.float64))):
        raise ValueError(f"{drive.calib_dir / 'calib_cam_to_cam.txt'}: P_rect_{drive.cam:02d} "
                         "missing or not finite")

    # Ground truth: synthetic drives keep the exact poses in oxts_true/ (their oxts/ carries
    # GPS-like errors, as a real receiver would); on real KITTI the OXTS/INS is the reference.
    true_packets, gt_source = packets, "oxts"
    true_dir = drive_dir / "oxts_true" / "data"
    if true_dir.is_dir():
        files = sorted(p for p in true_dir.iterdir() if p.suffix == ".txt")
        if len(files) >= n:
            true_packets = [read_oxts_packet(p) for p in files[:n]]
            gt_source = "oxts_true"

    cam_keep = increasing_mask(cam_stamps)
    ox_keep = increasing_mask(oxts_stamps)
    gps_ok = oxts_position_valid(packets)
    imu_ok = oxts_fields_finite(packets, _IMU_FIELDS)
    odom_ok = oxts_fields_finite(packets, _ODOM_FIELDS)
    gt_ok = oxts_pose_valid(true_packets)
    keep = {"camera": cam_keep, "fix": ox_keep & gps_ok, "imu": ox_keep & imu_ok,
            "odom": ox_keep & odom_ok, "gt": ox_keep & gt_ok}
    dropped = {
        "camera_stamp_not_increasing": int((~cam_keep).sum()),
        "oxts_stamp_not_increasing": int((~ox_keep).sum()),
        "gps_invalid": int((ox_keep & ~gps_ok).sum()),
        "imu_invalid": int((ox_keep & ~imu_ok).sum()),
        "odom_invalid": int((ox_keep & ~odom_ok).sum()),
        "ground_truth_invalid": int((ox_keep & ~gt_ok).sum()),
    }

    inputs = [drive_dir] + [drive.calib_dir / f for f in (
        "calib_cam_to_cam.txt", "calib_imu_to_velo.txt", "calib_velo_to_cam.txt")]
    town = _find_town_datum(drive_dir)
    if town is not None:
        datum, town_file = town
        inputs.append(town_file)
    else:
        first = np.flatnonzero(keep["gt"])
        if not len(first):
            raise ValueError(f"{drive_dir}: no OXTS packet of the first {n} frames has a finite "
                             "WGS84 position and attitude; nothing to take the datum and the "
                             "ground truth from")
        p0 = true_packets[int(first[0])]
        datum = (float(p0.lat), float(p0.lon), float(p0.alt))
    return _Drive(drive=drive, n=n, packets=packets, true_packets=true_packets,
                  gt_source=gt_source, cam_stamps=cam_stamps, oxts_stamps=oxts_stamps,
                  datum=datum, statics=statics, inputs=inputs, keep=keep, dropped=dropped)


def _poses(src: _Drive, drift_pct: float, yaw_drift: float, noise_pct: float, seed: int):
    """``(T_world_body, T_world_imu, T_odom_body, travelled)``; rows not kept are NaN."""
    from cvl_ros.geo import GeoDatum
    from cvl_ros.kitti import oxts_to_enu_poses, rpy_to_rotation

    n, datum = src.n, GeoDatum(*src.datum)
    nan = np.full((n, 4, 4), np.nan)
    T_world_body, T_world_imu, T_odom_body = nan.copy(), nan.copy(), nan.copy()
    gt, imu, odom = (np.flatnonzero(src.keep[k]) for k in ("gt", "imu", "odom"))
    if len(gt):
        # Ground truth: body (= OXTS IMU) poses in local ENU about the datum.
        T_world_body[gt] = oxts_to_enu_poses([src.true_packets[i] for i in gt], datum)
    for i in imu:
        # The IMU's absolute orientation comes from the (possibly noisy) OXTS unit (it needs no
        # position: an IMU sample survives a GPS outage).
        pk = src.packets[i]
        T_world_imu[i] = np.eye(4)
        T_world_imu[i, :3, :3] = rpy_to_rotation(pk.roll, pk.pitch, pk.yaw)
    if len(odom):
        # Odometry: the OXTS velocities dead-reckoned (what a wheel/visual odometry measures; no
        # GPS position or absolute heading enters), with the chosen drift on top.
        T_odom_body[odom] = _odometry_from_oxts([src.packets[i] for i in odom],
                                                src.oxts_stamps[odom], drift_pct, yaw_drift,
                                                noise_pct, seed)
    # Distance travelled along the ground truth (held over frames without one).
    travelled = np.zeros(n)
    if len(gt):
        steps = np.linalg.norm(np.diff(T_world_body[gt, :3, 3], axis=0), axis=1)
        along = np.concatenate([[0.0], np.cumsum(steps)])
        idx = np.searchsorted(gt, np.arange(n), side="right") - 1
        travelled = np.where(idx >= 0, along[np.maximum(idx, 0)], 0.0)
    return T_world_body, T_world_imu, T_odom_body, travelled


def write_kitti_bag(
    drive_dir: str | Path,
    out: str | Path,
    *,
    storage: str = "mcap",
    odom_drift_pct: float = 1.0,
    odom_yaw_drift_deg_per_100m: float = 0.5,
    odom_noise_pct: float = 0.0,
    seed: int = 0,
    gt_tf: bool = False,
    odom_tf: bool = True,
    max_frames: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> KittiBagInfo:
    """Convert a KITTI raw drive (``..._sync`` folder) into a ROS 2 bag.

    The inputs are read and checked first (see :data:`DROP_REASONS` for what is dropped and
    counted), then the output: ``out`` follows ``docs/output-safety.md`` (new or empty folder,
    or, with ``overwrite``, a bag cvl-kitti2bag wrote and nothing else; never equal to, inside
    or above the drive). The bag is written into a temporary folder beside ``out`` and renamed
    into place at the end; a failure leaves an old bag as it was.

    Args:
        drive_dir: ``raw_data/<date>/<date>_drive_<NNNN>_sync`` (calibration in its parent).
        out: output bag folder.
        storage: ``"mcap"`` or ``"sqlite3"``.
        odom_drift_pct: odometry translation drift, percent of distance travelled.
        odom_yaw_drift_deg_per_100m: odometry heading drift.
        odom_noise_pct: per-step odometry translation noise, std in percent of the step.
        seed: seed of that noise.
        gt_tf: also put ground truth on ``/tf`` as ``world -> base_link`` (then ``odom ->
            base_link`` is left off ``/tf`` so that ``base_link`` keeps one parent).
        odom_tf: put ``odom -> base_link`` on ``/tf`` (what a robot's odometry publishes).
        max_frames: convert only the first frames.
        overwrite: replace an existing bag written by cvl-kitti2bag.
        progress: show a tqdm bar.

    Returns:
        A :class:`KittiBagInfo` with message counts per topic and the drop counts.

    Raises:
        FileNotFoundError, ValueError: a missing or invalid input, or an invalid option.
        cvl_ros.outputs.OutputError: an output that must not be written (a ``ValueError``).
    """
    from cvl_ros.outputs import OutputError, prepare_output, read_marker

    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', not {storage!r}")
    _check_options(odom_drift_pct=odom_drift_pct,
                   odom_yaw_drift_deg_per_100m=odom_yaw_drift_deg_per_100m,
                   odom_noise_pct=odom_noise_pct)
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    drive_dir = Path(drive_dir)
    src = _load_drive(drive_dir, max_frames)
    poses = _poses(src, float(odom_drift_pct), float(odom_yaw_drift_deg_per_100m),
                   float(odom_noise_pct), int(seed))

    out = Path(out)
    name = Path(os.path.abspath(out.expanduser())).resolve().name
    if (not overwrite and out.is_dir() and read_marker(out) is None
            and not (out / "metadata.yaml").exists() and recognise_kitti_bag(out)):
        raise OutputError(f"--out {out} holds the incomplete bag of an interrupted "
                          f"{TOOL} run (no metadata.yaml); pass --overwrite to replace it")
    with prepare_output(out, tool=TOOL, inputs=src.inputs, overwrite=overwrite,
                        recognise=recognise_kitti_bag) as tmp:
        # rosbags' Writer creates the bag folder itself (and names its files after it): write
        # the bag as tmp/<name>, then lift its files into tmp (renamed onto ``out`` at the end).
        bag = tmp / name
        counts, start_ns, end_ns = _write_bag(bag, src, poses, storage,
                                              float(odom_drift_pct),
                                              float(odom_yaw_drift_deg_per_100m), int(seed),
                                              gt_tf, odom_tf, progress)
        for entry in list(bag.iterdir()):
            os.rename(entry, tmp / entry.name)
        bag.rmdir()
    return KittiBagInfo(path=out, storage=storage, frames=src.n, topics=counts,
                        datum=src.datum, ground_truth=src.gt_source, start_ns=start_ns,
                        end_ns=end_ns, dropped=dict(src.dropped))


def _write_bag(bag: Path, src: _Drive, poses, storage: str, odom_drift_pct: float,
               odom_yaw_drift_deg_per_100m: float, seed: int, gt_tf: bool, odom_tf: bool,
               progress: bool) -> tuple[dict[str, int], int, int]:
    """Write the checked drive ``src`` as the bag folder ``bag`` (created by rosbags)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    T_world_body, T_world_imu, T_odom_body, travelled = poses
    drive, keep = src.drive, src.keep
    cam_stamps, oxts_stamps = src.cam_stamps, src.oxts_stamps
    store = make_typestore()
    T = store.types
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    counts: dict[str, int] = {}
    img0 = drive.image(0)
    height, width = int(img0.shape[0]), int(img0.shape[1])
    P, R_rect = _camera_info_matrices(drive.calib, width, height)
    ox_kept = np.flatnonzero(keep["fix"] | keep["imu"] | keep["odom"] | keep["gt"])
    cam_kept = np.flatnonzero(keep["camera"])
    firsts = [int(cam_stamps[cam_kept[0]])] + ([int(oxts_stamps[ox_kept[0]])]
                                               if len(ox_kept) else [])
    lasts = [int(cam_stamps[cam_kept[-1]])] + ([int(oxts_stamps[ox_kept[-1]])]
                                               if len(ox_kept) else [])
    first_ns, end_ns = min(firsts), max(lasts)

    with Writer(bag, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer:
        def conn(topic: str, msgtype: str, qos: Any) -> Any:
            counts[topic] = 0
            return writer.add_connection(topic, msgtype, typestore=store,
                                         offered_qos_profiles=[qos])

        c_img = conn(TOPIC_IMAGE, MSG_IMAGE, qos_profile(10))
        c_info = conn(TOPIC_CAMERA_INFO, MSG_CAMERA_INFO, qos_profile(10))
        c_fix = conn(TOPIC_FIX, MSG_NAVSATFIX, qos_profile(10))
        c_imu = conn(TOPIC_IMU, MSG_IMU, qos_profile(10))
        c_odom = conn(TOPIC_ODOM, MSG_ODOMETRY, qos_profile(10))
        c_gt = conn(TOPIC_GT_POSE, MSG_POSE_STAMPED, qos_profile(10))
        c_tf = conn(TOPIC_TF, MSG_TF, qos_profile(100)) if (gt_tf or odom_tf) else None
        c_static = conn(TOPIC_TF_STATIC, MSG_TF, qos_profile(1, transient_local=True))

        def put(connection: Any, stamp_ns: int, msg: Any) -> None:
            writer.write(connection, int(stamp_ns),
                         store.serialize_cdr(msg, msg.__msgtype__))
            counts[connection.topic] += 1

        lat, lon, alt = src.datum
        custom = {
            "source_drive": str(src.drive.drive_dir.resolve()),
            "datum_lat_deg": repr(lat),
            "datum_lon_deg": repr(lon),
            "datum_alt_m": repr(alt),
            "odom_drift_pct": repr(odom_drift_pct),
            "odom_yaw_drift_deg_per_100m": repr(odom_yaw_drift_deg_per_100m),
            "seed": str(seed),
            "ground_truth_source": src.gt_source,
        }
        custom.update({f"dropped_{k}": str(v) for k, v in src.dropped.items()})
        for key, value in custom.items():
            writer.set_custom_data(META_PREFIX + key, value)

        statics = [_transform_stamped(store, first_ns, a, b, Tm) for a, b, Tm in src.statics]
        put(c_static, first_ns, T[MSG_TF](transforms=statics))

        frames = range(src.n)
        if progress:
            from tqdm import tqdm

            frames = tqdm(frames, desc="kitti2bag", unit="frame")
        for i in frames:
            t_cam = int(cam_stamps[i])
            t_ox = int(oxts_stamps[i])
            pk = src.packets[i]
            if keep["camera"][i]:
                # Camera: rectified colour image (KITTI *_sync images are rectified).
                img = img0 if i == 0 else drive.image(i)
                img = np.ascontiguousarray(img, dtype=np.uint8)
                if img.shape[:2] != (height, width):
                    raise ValueError(f"{drive.image_path(i)}: image size {img.shape[:2]} != "
                                     f"{(height, width)} of the first image")
                # camera_info first: a subscriber pairing by stamp then has it with the image
                put(c_info, t_cam, T[MSG_CAMERA_INFO](
                    header=_header(store, t_cam, FRAME_CAMERA), height=height, width=width,
                    distortion_model="plumb_bob", d=np.zeros(5), k=P[:, :3].reshape(-1).copy(),
                    r=R_rect.reshape(-1).copy(), p=P.reshape(-1).copy(), binning_x=0,
                    binning_y=0, roi=T["sensor_msgs/msg/RegionOfInterest"](
                        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)))
                put(c_img, t_cam, T[MSG_IMAGE](
                    header=_header(store, t_cam, FRAME_CAMERA), height=height, width=width,
                    encoding="rgb8", is_bigendian=0, step=width * 3, data=img.reshape(-1)))
            if keep["fix"][i]:
                # GPS fix: the OXTS position (ground truth grade on KITTI).
                acc = float(getattr(pk, "pos_accuracy", 0.0) or 0.0)
                known = math.isfinite(acc) and acc >= 0.0
                var = max(acc, 0.05) ** 2 if known else 0.0
                status = T["sensor_msgs/msg/NavSatStatus"](status=0, service=1)  # FIX, GPS
                put(c_fix, t_ox, T[MSG_NAVSATFIX](
                    header=_header(store, t_ox, FRAME_IMU), status=status,
                    latitude=float(pk.lat), longitude=float(pk.lon), altitude=float(pk.alt),
                    position_covariance=np.diag([var, var, 4.0 * var]).reshape(-1),
                    position_covariance_type=2 if known else 0))  # DIAGONAL_KNOWN / UNKNOWN
            if keep["imu"][i]:
                # IMU: ENU orientation from roll/pitch/yaw, body rates and accelerations.
                R_enu = T_world_imu[i, :3, :3]  # Rz(yaw) Ry(pitch) Rx(roll), ENU
                put(c_imu, t_ox, T[MSG_IMU](
                    header=_header(store, t_ox, FRAME_IMU), orientation=_quat(store, R_enu),
                    orientation_covariance=np.diag([1e-4, 1e-4, 3e-4]).reshape(-1),
                    angular_velocity=_vec3(store, (pk.wf, pk.wl, pk.wu)),
                    angular_velocity_covariance=np.diag([1e-5] * 3).reshape(-1),
                    linear_acceleration=_vec3(store, (pk.af, pk.al, pk.au)),
                    linear_acceleration_covariance=np.diag([1e-3] * 3).reshape(-1)))
            if keep["odom"][i]:
                # Odometry odom -> base_link with drift; twist from the OXTS body velocities.
                pose_cov, twist_cov = odometry_covariances(
                    float(travelled[i]), odom_drift_pct, odom_yaw_drift_deg_per_100m)
                put(c_odom, t_ox, T[MSG_ODOMETRY](
                    header=_header(store, t_ox, FRAME_ODOM), child_frame_id=FRAME_BASE,
                    pose=T["geometry_msgs/msg/PoseWithCovariance"](
                        pose=_pose(store, T_odom_body[i]), covariance=pose_cov),
                    twist=T["geometry_msgs/msg/TwistWithCovariance"](
                        twist=T["geometry_msgs/msg/Twist"](
                            linear=_vec3(store, (pk.vf, pk.vl, pk.vu)),
                            angular=_vec3(store, (pk.wf, pk.wl, pk.wu))),
                        covariance=twist_cov)))
            if keep["gt"][i]:
                # Ground truth on its own topic (the node's map -> odom shares /tf).
                put(c_gt, t_ox, T[MSG_POSE_STAMPED](
                    header=_header(store, t_ox, FRAME_WORLD),
                    pose=_pose(store, T_world_body[i])))
            if c_tf is not None:
                if gt_tf and keep["gt"][i]:
                    put(c_tf, t_ox, T[MSG_TF](transforms=[_transform_stamped(
                        store, t_ox, FRAME_WORLD, FRAME_BASE, T_world_body[i])]))
                elif not gt_tf and odom_tf and keep["odom"][i]:
                    put(c_tf, t_ox, T[MSG_TF](transforms=[_transform_stamped(
                        store, t_ox, FRAME_ODOM, FRAME_BASE, T_odom_body[i])]))
    return counts, first_ns, end_ns
