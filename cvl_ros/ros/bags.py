"""ROS 2 bags for cvl_ros: KITTI -> bag, bag replay with ``/clock``, and output recording.

Three tools share this module:

* :func:`write_kitti_bag` converts a KITTI raw drive (real or synthetic) into a ROS 2 bag with
  ``rosbags`` (no ROS install needed; sqlite3 or mcap storage).
* :class:`BagReplayer` plays a bag into a running ROS 2 graph with ``/clock`` (the pip-only ROS
  world has no ``ros2 bag play``).
* :class:`TopicRecorder` records live topics into a bag (the demo records the node's outputs).

rclpy is imported lazily: writing and reading bags works without a ROS 2 runtime.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

LOG = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Topic and frame names of the bags this project writes (the usual KITTI converter names).
# --------------------------------------------------------------------------------------------
TOPIC_IMAGE = "/kitti/camera_color_left/image_raw"
TOPIC_CAMERA_INFO = "/kitti/camera_color_left/camera_info"
TOPIC_FIX = "/kitti/oxts/gps/fix"
TOPIC_IMU = "/kitti/oxts/imu"
TOPIC_ODOM = "/kitti/odom"
TOPIC_GT_POSE = "/kitti/ground_truth/pose"
TOPIC_TF = "/tf"
TOPIC_TF_STATIC = "/tf_static"
TOPIC_CLOCK = "/clock"

FRAME_WORLD = "world"
FRAME_ODOM = "odom"
FRAME_BASE = "base_link"
FRAME_IMU = "imu_link"
FRAME_VELO = "velo_link"
FRAME_CAMERA = "camera_color_left"

#: Keys written into the bag's ``custom_data`` metadata.
META_PREFIX = "cvl_ros."

#: Type names used in the bags.
MSG_IMAGE = "sensor_msgs/msg/Image"
MSG_CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
MSG_NAVSATFIX = "sensor_msgs/msg/NavSatFix"
MSG_IMU = "sensor_msgs/msg/Imu"
MSG_ODOMETRY = "nav_msgs/msg/Odometry"
MSG_POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
MSG_TF = "tf2_msgs/msg/TFMessage"
MSG_CLOCK = "rosgraph_msgs/msg/Clock"
MSG_GEO_POSE_ESTIMATE = "cvl_ros/msg/GeoPoseEstimate"

_REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# Typestore and QoS helpers (rosbags)
# --------------------------------------------------------------------------------------------
def make_typestore(extra_msg_files: Iterable[Path] = ()) -> Any:
    """Return a rosbags typestore of ROS 2 Kilted types (+ ``cvl_ros`` messages when found).

    ``extra_msg_files`` are ``.msg`` files named ``<pkg>/msg/<Name>.msg`` (or found in this
    repository's ``msg/`` folder, which belongs to the ``cvl_ros`` package).
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    files = list(extra_msg_files)
    msg_dir = _REPO_ROOT / "msg"
    if msg_dir.is_dir():
        files.extend(sorted(msg_dir.glob("*.msg")))
    types: dict[str, Any] = {}
    for path in files:
        path = Path(path)
        pkg = path.parent.parent.name if path.parent.name == "msg" else "cvl_ros"
        if path.parent == msg_dir:
            pkg = "cvl_ros"
        types.update(get_types_from_msg(path.read_text(), f"{pkg}/msg/{path.stem}"))
    if types:
        store.register(types)
    return store


def qos_profile(
    depth: int = 10, *, reliable: bool = True, transient_local: bool = False
) -> Any:
    """Return one rosbags ``Qos`` record (stored as ``offered_qos_profiles`` in the bag)."""
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    zero = QosTime(0, 0)
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=int(depth),
        reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        deadline=zero,
        lifespan=zero,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero,
        avoid_ros_namespace_conventions=False,
    )


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


# --------------------------------------------------------------------------------------------
# Reading bags
# --------------------------------------------------------------------------------------------
@dataclass
class BagMessage:
    """One serialized message of a bag."""

    topic: str
    msgtype: str
    stamp_ns: int
    data: bytes
    connection: Any = None


def bag_custom_data(bag: str | Path) -> dict[str, str]:
    """Return the bag's ``custom_data`` metadata (empty when absent)."""
    import yaml

    meta = Path(bag) / "metadata.yaml"
    if not meta.is_file():
        return {}
    info = yaml.safe_load(meta.read_text()).get("rosbag2_bagfile_information", {})
    return dict(info.get("custom_data") or {})


def bag_datum(bag: str | Path) -> tuple[float, float, float] | None:
    """Return the WGS84 datum (lat, lon, alt) that a cvl-kitti2bag bag's ``world`` is about."""
    custom = bag_custom_data(bag)
    try:
        return (float(custom[META_PREFIX + "datum_lat_deg"]),
                float(custom[META_PREFIX + "datum_lon_deg"]),
                float(custom.get(META_PREFIX + "datum_alt_m", 0.0)))
    except (KeyError, ValueError):
        return None


def iter_bag(bag: str | Path, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """Yield the bag's messages in time order (serialized CDR bytes), optionally some topics."""
    from rosbags.rosbag2 import Reader

    wanted = set(topics) if topics is not None else None
    with Reader(Path(bag)) as reader:
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        for conn, stamp_ns, raw in reader.messages(connections=conns):
            yield BagMessage(conn.topic, conn.msgtype, int(stamp_ns), bytes(raw), conn)


def bag_topics(bag: str | Path) -> dict[str, tuple[str, int]]:
    """Return ``{topic: (msgtype, message count)}`` of a bag."""
    from rosbags.rosbag2 import Reader

    with Reader(Path(bag)) as reader:
        out: dict[str, tuple[str, int]] = {}
        for c in reader.connections:
            prev = out.get(c.topic, (c.msgtype, 0))[1]
            out[c.topic] = (c.msgtype, prev + c.msgcount)
        return out


def rclpy_message_class(msgtype: str) -> Any:
    """Return the rclpy message class of ``pkg/msg/Name`` (raises ImportError when missing)."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    pkg, sub, name = parts
    module = importlib.import_module(f"{pkg}.{sub}")
    return getattr(module, name)


def deserialize_rclpy(msg: BagMessage) -> Any:
    """Deserialize a bag message into its rclpy message object (no DDS needed)."""
    from rclpy.serialization import deserialize_message

    return deserialize_message(bytes(msg.data), rclpy_message_class(msg.msgtype))


# --------------------------------------------------------------------------------------------
# Replay into ROS 2
# --------------------------------------------------------------------------------------------
def _rclpy_qos(connection: Any, default_depth: int = 10) -> Any:
    """Map a bag connection's offered QoS to an rclpy ``QoSProfile`` (reliable by default)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    profiles = []
    ext = getattr(connection, "ext", None)
    if ext is not None:
        profiles = list(getattr(ext, "offered_qos_profiles", []) or [])
    reliable, transient, depth = True, False, default_depth
    if profiles:
        q = profiles[0]
        reliable = getattr(q.reliability, "name", "RELIABLE") != "BEST_EFFORT"
        transient = getattr(q.durability, "name", "") == "TRANSIENT_LOCAL"
        depth = int(q.depth) if int(q.depth) > 0 else default_depth
    if connection.topic == TOPIC_TF_STATIC:
        transient, reliable = True, True
        depth = max(depth, 1)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if transient
                    else DurabilityPolicy.VOLATILE),
    )


def parse_remaps(remaps: Iterable[str] | None) -> dict[str, str]:
    """Parse ``from:=to`` strings into a dict (raises ValueError on bad syntax)."""
    out: dict[str, str] = {}
    for item in remaps or ():
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise ValueError(f"bad remap {item!r}: expected FROM:=TO")
        out[src] = dst
    return out


@dataclass
class ReplayStats:
    """What :meth:`BagReplayer.run` published."""

    published: dict[str, int] = field(default_factory=dict)
    loops: int = 0
    wall_s: float = 0.0
    waited_s: float = 0.0
    subscribers_matched: bool = True
    bag_duration_s: float = 0.0


class BagReplayer:
    """Play a ROS 2 bag into a live graph, with ``/clock``, like ``ros2 bag play --clock``.

    Messages are deserialized with ``rclpy.serialization`` and published with the QoS offered
    in the bag (``/tf_static`` always reliable + transient-local). Before the first message the
    replayer waits until the ``wait_for`` topics (default: every image topic) have subscribers,
    then lets the rest of the graph settle; after the last message it keeps publishing
    ``/clock`` for ``tail_s`` seconds so that the tail of the bag is not lost.

    Args:
        bag: bag folder.
        node: an rclpy node to publish with (one is created when None; rclpy must be init).
        rate: playback speed factor (> 0).
        start_s: skip the first seconds of the bag (latched topics are still sent).
        loop: play again from the start (time jumps back) until stopped or ``max_loops``.
        remaps: ``{from_topic: to_topic}``.
        clock: publish ``/clock`` (rosgraph_msgs/Clock).
        clock_hz: how often ``/clock`` is published between messages.
        wait_for: topics that need a subscriber before playing (after remapping).
        wait_timeout_s: give up waiting after this (play anyway, with a warning).
        settle_s: extra time after the ``wait_for`` topics matched (other subscriptions).
        tail_s: stay alive after the last message.
        topics: only replay these (bag) topics.
        stop: a callable returning True to stop early (e.g. ``threading.Event().is_set``).
    """

    def __init__(
        self,
        bag: str | Path,
        *,
        node: Any = None,
        rate: float = 1.0,
        start_s: float = 0.0,
        loop: bool = False,
        max_loops: int | None = None,
        remaps: dict[str, str] | None = None,
        clock: bool = True,
        clock_hz: float = 50.0,
        wait_for: Sequence[str] | None = None,
        wait_timeout_s: float = 30.0,
        settle_s: float = 1.0,
        tail_s: float = 3.0,
        topics: Sequence[str] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.bag = Path(bag)
        if not (self.bag / "metadata.yaml").is_file():
            raise FileNotFoundError(f"{self.bag}: not a ROS 2 bag (no metadata.yaml)")
        self.rate = float(rate)
        self.start_s = float(start_s)
        self.loop = bool(loop)
        self.max_loops = max_loops
        self.remaps = dict(remaps or {})
        self.clock = bool(clock)
        self.clock_period_s = 1.0 / max(float(clock_hz), 1e-3)
        self.wait_for = list(wait_for) if wait_for is not None else None
        self.wait_timeout_s = float(wait_timeout_s)
        self.settle_s = float(settle_s)
        self.tail_s = float(tail_s)
        self.topics = set(topics) if topics is not None else None
        self._stop = stop or (lambda: False)
        self._own_node = node is None
        if node is None:
            import rclpy

            node = rclpy.create_node("cvl_replay")
        self.node = node
        self._pubs: dict[str, Any] = {}
        self._classes: dict[str, Any] = {}
        self._clock_pub = None
        self._latched: set[str] = set()
        self._setup()

    def _out(self, topic: str) -> str:
        return self.remaps.get(topic, topic)

    def _setup(self) -> None:
        from rosbags.rosbag2 import Reader

        with Reader(self.bag) as reader:
            self._start_ns = int(reader.start_time)
            self._end_ns = int(reader.end_time)
            for c in reader.connections:
                if self.topics is not None and c.topic not in self.topics:
                    continue
                if c.topic in self._pubs:
                    continue
                cls = rclpy_message_class(c.msgtype)
                qos = _rclpy_qos(c)
                self._classes[c.topic] = cls
                self._pubs[c.topic] = self.node.create_publisher(cls, self._out(c.topic), qos)
                if qos.durability.name == "TRANSIENT_LOCAL":
                    self._latched.add(c.topic)
                if self.wait_for is None and c.msgtype == MSG_IMAGE:
                    self._default_wait = getattr(self, "_default_wait", []) + [self._out(c.topic)]
        if self.clock:
            from rclpy.qos import QoSProfile
            from rosgraph_msgs.msg import Clock

            self._clock_msg = Clock
            self._clock_pub = self.node.create_publisher(Clock, TOPIC_CLOCK, QoSProfile(depth=10))

    # -- publishing ----------------------------------------------------------------------
    def _publish_clock(self, stamp_ns: int) -> None:
        if self._clock_pub is None:
            return
        from builtin_interfaces.msg import Time

        stamp_ns = int(stamp_ns)
        self._clock_pub.publish(self._clock_msg(
            clock=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)))

    def _publish(self, msg: BagMessage, stats: ReplayStats) -> None:
        from rclpy.serialization import deserialize_message

        obj = deserialize_message(bytes(msg.data), self._classes[msg.topic])
        self._pubs[msg.topic].publish(obj)
        key = self._out(msg.topic)
        stats.published[key] = stats.published.get(key, 0) + 1

    def wait_for_subscribers(self) -> tuple[bool, float]:
        """Block until the ``wait_for`` topics have subscribers; return (matched, seconds)."""
        topics = self.wait_for if self.wait_for is not None else getattr(self, "_default_wait", [])
        by_name = {self._out(t): p for t, p in self._pubs.items()}
        t0 = time.monotonic()
        pubs = [by_name[t] for t in topics if t in by_name]
        missing = [t for t in topics if t not in by_name]
        if missing:
            LOG.warning("replay: not in the bag, not waited for: %s", ", ".join(missing))
        matched = True
        while pubs and not all(p.get_subscription_count() > 0 for p in pubs):
            if self._stop():
                return False, time.monotonic() - t0
            if time.monotonic() - t0 > self.wait_timeout_s:
                LOG.warning("replay: no subscriber on %s after %.0f s; playing anyway",
                            ", ".join(topics), self.wait_timeout_s)
                matched = False
                break
            time.sleep(0.05)
        if pubs and matched and self.settle_s > 0:
            # Let the other subscriptions of the same node(s) match too.
            total = -1
            t_stable = time.monotonic()
            while time.monotonic() - t_stable < self.settle_s and not self._stop():
                now_total = sum(p.get_subscription_count() for p in self._pubs.values())
                if now_total != total:
                    total, t_stable = now_total, time.monotonic()
                time.sleep(0.05)
        return matched, time.monotonic() - t0

    def _sleep_until(self, wall_target: float, sim_of_wall: Callable[[float], int]) -> None:
        while not self._stop():
            now = time.monotonic()
            if now >= wall_target:
                return
            self._publish_clock(sim_of_wall(now))
            time.sleep(min(self.clock_period_s, wall_target - now))

    def run(self) -> ReplayStats:
        """Play the bag (blocking) and return what was published.

        Stopping (``stop()`` true, e.g. after Ctrl-C shut rclpy down) ends the run quietly.
        """
        stats = ReplayStats(bag_duration_s=(self._end_ns - self._start_ns) / 1e9)
        wall_start = time.monotonic()
        try:
            self._play(stats)
        except Exception:
            if not self._stop():
                raise
        stats.wall_s = time.monotonic() - wall_start
        return stats

    def _play(self, stats: ReplayStats) -> None:
        start_ns = self._start_ns + int(self.start_s * 1e9)
        # Latched topics before --start are sent first (e.g. /tf_static).
        early = [m for m in iter_bag(self.bag, sorted(self._latched)) if m.stamp_ns < start_ns]
        self._publish_clock(start_ns)
        stats.subscribers_matched, stats.waited_s = self.wait_for_subscribers()
        for m in early:
            self._publish(m, stats)
        last_ns = start_ns
        while not self._stop():
            wall0 = time.monotonic()
            sim0 = start_ns

            def sim_of_wall(now: float, _w0: float = wall0, _s0: int = sim0) -> int:
                return _s0 + int((now - _w0) * self.rate * 1e9)

            for m in iter_bag(self.bag, None if self.topics is None else sorted(self.topics)):
                if self._stop():
                    return
                if m.stamp_ns < start_ns:
                    continue  # before --start (latched ones were sent up front)
                self._sleep_until(wall0 + (m.stamp_ns - sim0) / 1e9 / self.rate,
                                  lambda now, f=sim_of_wall, t=m.stamp_ns: min(f(now), t))
                if self._stop():
                    return
                self._publish_clock(m.stamp_ns)
                self._publish(m, stats)
                last_ns = max(last_ns, m.stamp_ns)
            stats.loops += 1
            if not self.loop or (self.max_loops is not None and stats.loops >= self.max_loops):
                break
        # Tail: keep the clock going so that the last messages are processed and delivered.
        tail_end = time.monotonic() + self.tail_s
        wall_tail = time.monotonic()
        while not self._stop() and time.monotonic() < tail_end:
            self._publish_clock(last_ns + int((time.monotonic() - wall_tail) * self.rate * 1e9))
            time.sleep(self.clock_period_s)

    def close(self) -> None:
        """Destroy the publishers (and the node when this object created it)."""
        for p in self._pubs.values():
            self.node.destroy_publisher(p)
        if self._clock_pub is not None:
            self.node.destroy_publisher(self._clock_pub)
        self._pubs.clear()
        self._clock_pub = None
        if self._own_node:
            self.node.destroy_node()


# --------------------------------------------------------------------------------------------
# Recording live topics into a bag
# --------------------------------------------------------------------------------------------
class TopicRecorder:
    """Record live topics into a ROS 2 bag (serialized bytes, like ``ros2 bag record``).

    Subscriptions are raw (no deserialization). The message definitions come from the
    rosbags typestore (ROS 2 Kilted + this package's ``msg/``). Messages are stored at their
    receive time (wall clock, ns), as ``ros2 bag record`` does; the analysis uses header stamps.

    Args:
        node: the rclpy node to subscribe with.
        out: output bag folder (must not exist).
        topics: ``{topic: msgtype}`` (``pkg/msg/Name``).
        storage: ``"mcap"`` or ``"sqlite3"``.
        best_effort: topics subscribed best-effort (e.g. images); others reliable. The
            subscriptions are volatile, which matches volatile and transient-local publishers.
        depth: queue depth of each subscription.
    """

    def __init__(self, node: Any, out: str | Path, topics: dict[str, str], *,
                 storage: str = "mcap", best_effort: Iterable[str] = (), depth: int = 100):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.node = node
        self.store = make_typestore()
        self.counts: dict[str, int] = {t: 0 for t in topics}
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(Path(out), version=Writer.VERSION_LATEST, storage_plugin=plugin)
        self._writer.open()
        self._conns: dict[str, Any] = {}
        self._subs = []
        be = set(best_effort)
        for topic, msgtype in topics.items():
            cls = rclpy_message_class(msgtype)
            self._conns[topic] = self._writer.add_connection(
                topic, msgtype, typestore=self.store,
                offered_qos_profiles=[qos_profile(depth, reliable=topic not in be)])
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=depth,
                reliability=(ReliabilityPolicy.BEST_EFFORT if topic in be
                             else ReliabilityPolicy.RELIABLE),
                durability=DurabilityPolicy.VOLATILE)
            self._subs.append(node.create_subscription(
                cls, topic, lambda data, t=topic: self._on_msg(t, data), qos, raw=True))
        self._closed = False

    def _on_msg(self, topic: str, data: bytes) -> None:
        if self._closed:
            return
        self._writer.write(self._conns[topic], time.time_ns(), data)
        self.counts[topic] += 1

    def close(self) -> None:
        """Stop recording and finish the bag (metadata.yaml)."""
        if self._closed:
            return
        self._closed = True
        for s in self._subs:
            self.node.destroy_subscription(s)
        self._subs.clear()
        self._writer.close()
