"""KITTI raw drive -> ROS 2 bag (``cvl-kitti2bag``), written with ``rosbags``.

:func:`write_kitti_bag` converts a KITTI raw drive (real or synthetic) into a ROS 2 bag
(sqlite3 or mcap storage) with camera image + camera_info, GPS fix, IMU, drifting odometry,
ground truth, ``/tf`` and ``/tf_static``. No ROS 2 runtime is needed. The topic, frame and
type names are those of :mod:`cvl_ros.ros.bags`.
"""

from __future__ import annotations

import json
import math
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


def _find_town_datum(drive_dir: Path) -> tuple[float, float, float] | None:
    """Return the datum of a synthetic town (``town.json`` above the drive), when present."""
    for parent in [drive_dir, *drive_dir.parents][:5]:
        town = parent / "town.json"
        if town.is_file():
            try:
                data = json.loads(town.read_text())
            except (OSError, ValueError):
                return None
            datum = data.get("datum")
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
            return float(lat), float(lon), float(alt or 0.0)
    return None


def _read_sensor_stamps(drive_dir: Path, sensor: str, n: int,
                        fallback: np.ndarray) -> np.ndarray:
    from cvl_ros.kitti import read_timestamps

    path = drive_dir / sensor / "timestamps.txt"
    if path.is_file():
        stamps = np.asarray(read_timestamps(path), dtype=np.int64)
        if len(stamps) >= n:
            return stamps[:n]
    return np.asarray(fallback[:n], dtype=np.int64)


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

    Args:
        drive_dir: ``raw_data/<date>/<date>_drive_<NNNN>_sync`` (calibration in its parent).
        out: output bag folder (must not exist unless ``overwrite``).
        storage: ``"mcap"`` or ``"sqlite3"``.
        odom_drift_pct: odometry translation drift, percent of distance travelled.
        odom_yaw_drift_deg_per_100m: odometry heading drift.
        odom_noise_pct: per-step odometry translation noise, std in percent of the step.
        seed: seed of that noise.
        gt_tf: also put ground truth on ``/tf`` as ``world -> base_link`` (then ``odom ->
            base_link`` is left off ``/tf`` so that ``base_link`` keeps one parent).
        odom_tf: put ``odom -> base_link`` on ``/tf`` (what a robot's odometry publishes).
        max_frames: convert only the first frames.
        overwrite: replace an existing bag.
        progress: show a tqdm bar.

    Returns:
        A :class:`KittiBagInfo` with message counts per topic.
    """
    import shutil

    from rosbags.rosbag2 import StoragePlugin, Writer

    from cvl_ros.geo import GeoDatum
    from cvl_ros.kitti import KittiDrive, oxts_to_enu_poses, read_oxts_packet

    drive_dir = Path(drive_dir)
    out = Path(out)
    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', not {storage!r}")
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists (pass overwrite=True / --overwrite)")
        shutil.rmtree(out)

    drive = KittiDrive(drive_dir)
    packets = list(drive.oxts)
    n = min(len(drive), len(packets))
    if max_frames is not None:
        n = min(n, int(max_frames))
    if n <= 0:
        raise ValueError(f"{drive_dir}: no frames (images: {len(drive)}, oxts: {len(packets)})")
    cam_stamps = np.asarray(drive.timestamps_ns, dtype=np.int64)[:n]
    cam_stamps = _read_sensor_stamps(drive_dir, "image_02", n, cam_stamps)
    oxts_stamps = _read_sensor_stamps(drive_dir, "oxts", n, cam_stamps)

    # Ground truth: synthetic drives keep the exact poses in oxts_true/ (their oxts/ carries
    # GPS-like errors, as a real receiver would); on real KITTI the OXTS/INS is the reference.
    true_packets, gt_source = packets, "oxts"
    true_dir = drive_dir / "oxts_true" / "data"
    if true_dir.is_dir():
        files = sorted(p for p in true_dir.iterdir() if p.suffix == ".txt")
        if len(files) >= n:
            true_packets = [read_oxts_packet(p) for p in files[:n]]
            gt_source = "oxts_true"

    datum_t = _find_town_datum(drive_dir)
    if datum_t is None:
        p0 = true_packets[0]
        datum_t = (float(p0.lat), float(p0.lon), float(p0.alt))
    datum = GeoDatum(*datum_t)

    # Ground truth: body (= OXTS IMU) poses in local ENU about the datum.
    T_world_body = oxts_to_enu_poses(true_packets[:n], datum)
    # The IMU's absolute orientation comes from the (possibly noisy) OXTS unit.
    T_world_imu = oxts_to_enu_poses(packets[:n], datum)
    # Odometry: the OXTS velocities dead-reckoned (what a wheel/visual odometry measures; no
    # GPS position or absolute heading enters), with the chosen drift on top.
    T_odom_body = _odometry_from_oxts(packets[:n], oxts_stamps, odom_drift_pct,
                                      odom_yaw_drift_deg_per_100m, odom_noise_pct, seed)
    steps = np.linalg.norm(np.diff(T_world_body[:, :3, 3], axis=0), axis=1)
    travelled = np.concatenate([[0.0], np.cumsum(steps)])

    calib = drive.calib
    store = make_typestore()
    T = store.types
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    counts: dict[str, int] = {}
    img0 = drive.image(0)
    height, width = int(img0.shape[0]), int(img0.shape[1])
    P, R_rect = _camera_info_matrices(calib, width, height)

    with Writer(out, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer:
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

        for key, value in {
            "source_drive": str(drive_dir.resolve()),
            "datum_lat_deg": repr(datum.lat_deg),
            "datum_lon_deg": repr(datum.lon_deg),
            "datum_alt_m": repr(datum.alt_m),
            "odom_drift_pct": repr(float(odom_drift_pct)),
            "odom_yaw_drift_deg_per_100m": repr(float(odom_yaw_drift_deg_per_100m)),
            "seed": str(int(seed)),
            "ground_truth_source": gt_source,
        }.items():
            writer.set_custom_data(META_PREFIX + key, value)

        first_ns = int(min(cam_stamps[0], oxts_stamps[0]))
        statics = [_transform_stamped(store, first_ns, a, b, Tm)
                   for a, b, Tm in _static_transforms(drive_dir)]
        put(c_static, first_ns, T[MSG_TF](transforms=statics))

        frames = range(n)
        if progress:
            from tqdm import tqdm

            frames = tqdm(frames, desc="kitti2bag", unit="frame")
        for i in frames:
            t_cam = int(cam_stamps[i])
            t_ox = int(oxts_stamps[i])
            pk = packets[i]
            # Camera: rectified colour image (KITTI *_sync images are rectified).
            img = img0 if i == 0 else drive.image(i)
            img = np.ascontiguousarray(img, dtype=np.uint8)
            if img.shape[:2] != (height, width):
                raise ValueError(f"frame {i}: image size {img.shape[:2]} != {(height, width)}")
            # camera_info first: a subscriber pairing by stamp then has it when the image comes
            put(c_info, t_cam, T[MSG_CAMERA_INFO](
                header=_header(store, t_cam, FRAME_CAMERA), height=height, width=width,
                distortion_model="plumb_bob", d=np.zeros(5), k=P[:, :3].reshape(-1).copy(),
                r=R_rect.reshape(-1).copy(), p=P.reshape(-1).copy(), binning_x=0, binning_y=0,
                roi=T["sensor_msgs/msg/RegionOfInterest"](
                    x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)))
            put(c_img, t_cam, T[MSG_IMAGE](
                header=_header(store, t_cam, FRAME_CAMERA), height=height, width=width,
                encoding="rgb8", is_bigendian=0, step=width * 3, data=img.reshape(-1)))
            # GPS fix: the OXTS position (ground truth grade on KITTI).
            acc = float(getattr(pk, "pos_accuracy", 0.0) or 0.0)
            var = max(acc, 0.05) ** 2
            status = T["sensor_msgs/msg/NavSatStatus"](status=0, service=1)  # FIX, GPS
            put(c_fix, t_ox, T[MSG_NAVSATFIX](
                header=_header(store, t_ox, FRAME_IMU), status=status, latitude=float(pk.lat),
                longitude=float(pk.lon), altitude=float(pk.alt),
                position_covariance=np.diag([var, var, 4.0 * var]).reshape(-1),
                position_covariance_type=2))  # DIAGONAL_KNOWN
            # IMU: ENU orientation from roll/pitch/yaw, body rates and accelerations.
            R_enu = T_world_imu[i, :3, :3]  # Rz(yaw) Ry(pitch) Rx(roll), ENU
            put(c_imu, t_ox, T[MSG_IMU](
                header=_header(store, t_ox, FRAME_IMU), orientation=_quat(store, R_enu),
                orientation_covariance=np.diag([1e-4, 1e-4, 3e-4]).reshape(-1),
                angular_velocity=_vec3(store, (pk.wf, pk.wl, pk.wu)),
                angular_velocity_covariance=np.diag([1e-5] * 3).reshape(-1),
                linear_acceleration=_vec3(store, (pk.af, pk.al, pk.au)),
                linear_acceleration_covariance=np.diag([1e-3] * 3).reshape(-1)))
            # Odometry odom -> base_link with drift; twist from the OXTS body velocities.
            sig_xy = 0.02 + odom_drift_pct / 100.0 * travelled[i]
            sig_yaw = math.radians(0.1 + odom_yaw_drift_deg_per_100m * travelled[i] / 100.0)
            pose_cov = np.diag([sig_xy**2, sig_xy**2, (2 * sig_xy) ** 2, 1e-4, 1e-4,
                                sig_yaw**2]).reshape(-1)
            twist_cov = np.diag([0.01, 0.01, 0.01, 1e-4, 1e-4, 1e-4]).reshape(-1)
            put(c_odom, t_ox, T[MSG_ODOMETRY](
                header=_header(store, t_ox, FRAME_ODOM), child_frame_id=FRAME_BASE,
                pose=T["geometry_msgs/msg/PoseWithCovariance"](
                    pose=_pose(store, T_odom_body[i]), covariance=pose_cov),
                twist=T["geometry_msgs/msg/TwistWithCovariance"](
                    twist=T["geometry_msgs/msg/Twist"](
                        linear=_vec3(store, (pk.vf, pk.vl, pk.vu)),
                        angular=_vec3(store, (pk.wf, pk.wl, pk.wu))),
                    covariance=twist_cov)))
            # Ground truth on its own topic (the node's map -> odom shares /tf).
            put(c_gt, t_ox, T[MSG_POSE_STAMPED](
                header=_header(store, t_ox, FRAME_WORLD), pose=_pose(store, T_world_body[i])))
            if c_tf is not None:
                tfs = []
                if gt_tf:
                    tfs.append(_transform_stamped(store, t_ox, FRAME_WORLD, FRAME_BASE,
                                                  T_world_body[i]))
                elif odom_tf:
                    tfs.append(_transform_stamped(store, t_ox, FRAME_ODOM, FRAME_BASE,
                                                  T_odom_body[i]))
                put(c_tf, t_ox, T[MSG_TF](transforms=tfs))

    return KittiBagInfo(
        path=out, storage=storage, frames=n, topics=counts, datum=datum_t, ground_truth=gt_source,
        start_ns=first_ns, end_ns=int(max(cam_stamps[-1], oxts_stamps[-1])),
    )
