"""Reading the ROS 2 bags of cvl_ros: topic/frame/type names, the typestore, message iteration.

The names of the topics, frames and message types of the bags this project writes, the
``custom_data`` metadata prefix, the rosbags typestore (ROS 2 Kilted + this package's ``msg/``)
and its QoS records, and helpers that read a bag's topics, metadata and serialized messages.
Everything here uses ``rosbags`` only: no ROS 2 runtime is needed.

Writing a KITTI drive into a bag is :mod:`cvl_ros.ros.kitti_bag`, playing a bag into a live
graph is :mod:`cvl_ros.ros.replay`, recording live topics is :mod:`cvl_ros.ros.recording`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

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
#: Standard types the node publishes that rosbags' Kilted store lacks: ``{pkg: (Name, ...)}``.
STANDARD_EXTRA_TYPES = {
    "geographic_msgs": ("GeoPoint", "GeoPose", "GeoPoseWithCovariance",
                        "GeoPoseWithCovarianceStamped"),
}


def _standard_extra_msg_files() -> list[Path]:
    """Return the ``.msg`` files of STANDARD_EXTRA_TYPES.

    This repository's copies (scripts/interfaces, what setup.sh builds), else the installed
    package's ``share/<pkg>/msg`` (ament index, or the interpreter's prefix), else none (the
    types stay unknown).
    """
    import sys

    out: list[Path] = []
    for pkg, names in STANDARD_EXTRA_TYPES.items():
        folders = [_REPO_ROOT / "scripts" / "interfaces" / pkg / "msg"]
        try:
            from ament_index_python.packages import get_package_share_directory

            folders.append(Path(get_package_share_directory(pkg)) / "msg")
        except Exception:  # not installed, no ament_index_python, AMENT_PREFIX_PATH unset
            folders.append(Path(sys.prefix) / "share" / pkg / "msg")
        for folder in folders:
            if all((folder / f"{n}.msg").is_file() for n in names):
                out.extend(folder / f"{n}.msg" for n in names)
                break
    return out


def make_typestore(extra_msg_files: Iterable[Path] = ()) -> Any:
    """Return a rosbags typestore of ROS 2 Kilted types (+ ``cvl_ros`` messages when found).

    ``extra_msg_files`` are ``.msg`` files named ``<pkg>/msg/<Name>.msg`` (or found in this
    repository's ``msg/`` folder, which belongs to the ``cvl_ros`` package). The standard types
    of STANDARD_EXTRA_TYPES (geographic_msgs/GeoPoseWithCovarianceStamped, ...) are added when
    their definitions are found.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    files = list(extra_msg_files)
    msg_dir = _REPO_ROOT / "msg"
    if msg_dir.is_dir():
        files.extend(sorted(msg_dir.glob("*.msg")))
    files.extend(_standard_extra_msg_files())
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


def _ros1_view(bag: str | Path) -> Any:
    """The layout view of a kitti2bag ROS 1 ``.bag`` file, None for anything else."""
    from cvl_ros.ros.kitti_ros1 import is_ros1_bag, open_ros1_bag

    return open_ros1_bag(bag) if is_ros1_bag(bag) else None


def bag_custom_data(bag: str | Path) -> dict[str, str]:
    """Return the bag's ``custom_data`` metadata (empty when absent).

    A kitti2bag ROS 1 ``.bag`` gives what ``cvl-kitti2bag --from-bag`` would write.
    """
    import yaml

    view = _ros1_view(bag)
    if view is not None:
        return dict(view.custom_data)
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
    """Yield the bag's messages in time order (serialized CDR bytes), optionally some topics.

    ``bag`` is a ROS 2 bag folder, or a ROS 1 ``.bag`` of kitti2bag, read as the layout
    cvl-kitti2bag writes (:mod:`cvl_ros.ros.kitti_ros1`).
    """
    from rosbags.rosbag2 import Reader

    view = _ros1_view(bag)
    if view is not None:
        yield from view.messages(topics)
        return
    wanted = set(topics) if topics is not None else None
    with Reader(Path(bag)) as reader:
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        for conn, stamp_ns, raw in reader.messages(connections=conns):
            yield BagMessage(conn.topic, conn.msgtype, int(stamp_ns), bytes(raw), conn)


def bag_topics(bag: str | Path) -> dict[str, tuple[str, int]]:
    """Return ``{topic: (msgtype, message count)}`` of a bag (or of a ROS 1 ``.bag``'s view)."""
    from rosbags.rosbag2 import Reader

    view = _ros1_view(bag)
    if view is not None:
        return dict(view.topics)
    with Reader(Path(bag)) as reader:
        out: dict[str, tuple[str, int]] = {}
        for c in reader.connections:
            prev = out.get(c.topic, (c.msgtype, 0))[1]
            out[c.topic] = (c.msgtype, prev + c.msgcount)
        return out
