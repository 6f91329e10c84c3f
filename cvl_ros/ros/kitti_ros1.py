"""ROS 1 KITTI bags of ``kitti2bag`` (tomas789/kitti2bag) read as this project's bag layout.

The KITTI bags most people already have are ROS 1 bags (``#ROSBAG V2.0``) written by the
widely used ``kitti2bag`` tool from a raw ``_sync`` drive. Their topics (the tool's documented
output): ``/kitti/camera_color_left/image_raw`` (``sensor_msgs/Image``, ``bgr8``; some
versions name it ``.../image``) and ``.../camera_info`` (K and D of the *unrectified* camera,
R_rect, P_rect), ``/kitti/oxts/gps/fix`` (``NavSatFix``), ``/kitti/oxts/gps/vel``
(``geometry_msgs/TwistStamped``: ``vf vl vu`` / ``wf wl wu``), ``/kitti/oxts/imu`` (``Imu``),
``/tf`` with ``world -> base_link`` (pykitti's OXTS pose: Mercator metres about the first packet,
Rz(yaw) Ry(pitch) Rx(roll)) and ``/tf_static`` (``base_link -> imu_link``, ``imu_link ->
camera_*``, ``imu_link -> velo_link``) re-sent with every frame; plus topics no cvl tool needs
(the other cameras, the Velodyne).

:class:`Ros1KittiBag` presents such a bag as the rosbag2 layout ``cvl-kitti2bag`` writes
(docs/bags.md): the same topics, types (ROS 2 Kilted, CDR) and frames, so that
``cvl-localize-bag`` and ``cvl-replay`` take a ``.bag`` directly and ``cvl-kitti2bag
--from-bag`` (:func:`write_kitti_bag_from_ros1`) converts one. The messages are deserialized
with the definitions stored in the bag (rosbags' ``AnyReader``) and rebuilt as ROS 2 messages:

* **odometry** ``odom -> base_link`` is dead-reckoned (:func:`cvl_ros.kitti.dead_reckon_oxts`)
  from the forward/left/up speeds of ``gps/vel`` and the yaw rate of the IMU
  (``angular_velocity.z``), roll and pitch from the IMU orientation, then the drift of
  ``--odom-drift``/``--odom-yaw-drift``/``--odom-noise`` as for a drive. The GPS position, the
  IMU's absolute heading and the ``world -> base_link`` pose never enter it;
* **ground truth** ``/kitti/ground_truth/pose`` is the ``world -> base_link`` pose, taken as the
  OXTS/IMU pose (kitti2bag's released version publishes pykitti's ``T_w_imu`` there), turned
  from kitti2bag's Mercator ``world`` into ENU about the datum. The datum is the origin of that
  ``world``: the GPS fix at the first pose's stamp, less the pose's translation (for a bag that
  starts with the drive: its first fix);
* ``base_link`` is the OXTS/IMU frame (kitti2bag's ``imu_link``); ``/tf_static`` is sent once,
  ``base_link -> imu_link`` (identity), ``-> camera_color_left`` and ``-> velo_link`` from the
  bag's static chain;
* the image becomes ``rgb8``; camera_info gets K = P[:3, :3] and D = 0 (the ``_sync`` images are
  rectified: kitti2bag's K and D are those of the raw camera) and precedes its image;
* fix and IMU are kept as they are; repeated or non-finite samples are dropped and counted as
  for a drive (:data:`cvl_ros.ros.kitti_bag.DROP_REASONS`).

Everything but the image payloads is read and checked when the bag is opened (the result is
cached per file and options); images are read, converted and checked as they stream.

Longer than 700 lines: the whole ROS 1 kitti2bag layout -> this project's layout conversion
(reading, checks, dead reckoning, ground truth, CDR rebuild) for the three tools that read .bag
files.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

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
    BagMessage,
    make_typestore,
    qos_profile,
)

#: First bytes of a ROS 1 bag (format 2.0).
ROS1_MAGIC = b"#ROSBAG V2.0\n"

#: kitti2bag's colour-left image topic: ``image_raw`` (its released version), ``image`` (later
#: forks); the first one present is read.
SRC_IMAGE_TOPICS = ("/kitti/camera_color_left/image_raw", "/kitti/camera_color_left/image")
SRC_CAMERA_INFO = "/kitti/camera_color_left/camera_info"
SRC_FIX = "/kitti/oxts/gps/fix"
SRC_VEL = "/kitti/oxts/gps/vel"
SRC_IMU = "/kitti/oxts/imu"
SRC_TF = "/tf"
SRC_TF_STATIC = "/tf_static"
SRC_WORLD, SRC_BASE = "world", "base_link"

_SRC_TYPES = {
    SRC_CAMERA_INFO: MSG_CAMERA_INFO,
    SRC_FIX: MSG_NAVSATFIX,
    SRC_VEL: "geometry_msgs/msg/TwistStamped",
    SRC_IMU: MSG_IMU,
    SRC_TF: MSG_TF,
    SRC_TF_STATIC: MSG_TF,
}

#: ``custom_data`` value of ``cvl_ros.ground_truth_source`` for these bags.
GT_SOURCE = "kitti2bag /tf world->base_link"

# merge order at equal stamps: /tf_static first, then camera_info and image, then the rest
_RANK_STATIC, _RANK_INFO, _RANK_IMAGE, _RANK_OTHER = 0, 1, 2, 3


class Ros1BagError(ValueError):
    """What is wrong with a ROS 1 bag's content (the message leaves out the bag's path)."""


def is_ros1_bag(path: str | Path) -> bool:
    """Whether ``path`` is a file that starts as a ROS 1 bag (``#ROSBAG V2.0``)."""
    p = Path(path)
    try:
        if not p.is_file():
            return False
        with open(p, "rb") as f:
            return f.read(len(ROS1_MAGIC)) == ROS1_MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class Ros1Options:
    """How odometry and ``/tf`` are made (the options of ``cvl-kitti2bag``; same defaults)."""

    odom_drift_pct: float = 1.0
    odom_yaw_drift_deg_per_100m: float = 0.5
    odom_noise_pct: float = 0.0
    seed: int = 0
    gt_tf: bool = False
    odom_tf: bool = True


@dataclass
class ViewConnection:
    """A topic of the layout (what replay and the readers need of a rosbags connection)."""

    topic: str
    msgtype: str
    msgcount: int
    ext: Any = None


@dataclass
class _Qos:
    offered_qos_profiles: list


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _frame(name: str) -> str:
    return str(name).lstrip("/")


def _matrix(tr: Any) -> np.ndarray:
    """4x4 of a ``geometry_msgs/Transform`` (quaternion normalised; NaN when degenerate)."""
    from cvl_ros.ros.convert import quat_to_matrix

    q = np.array([tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w], np.float64)
    t = np.array([tr.translation.x, tr.translation.y, tr.translation.z], np.float64)
    T = np.full((4, 4), np.nan)
    norm = float(np.linalg.norm(q)) if np.all(np.isfinite(q)) else math.nan
    if math.isfinite(norm) and norm > 1e-9 and np.all(np.isfinite(t)):
        T = np.eye(4)
        T[:3, :3] = quat_to_matrix(*(q / norm))
        T[:3, 3] = t
    return T


def _static_lookup(tree: dict[str, tuple[str, np.ndarray]], target: str,
                   source: str) -> np.ndarray | None:
    """``T_target_source`` through a static tree ``{child: (parent, T_parent_child)}``."""
    def up(frame: str) -> dict[str, np.ndarray]:
        out, T, seen = {frame: np.eye(4)}, np.eye(4), {frame}
        while frame in tree:
            parent, T_pc = tree[frame]
            if parent in seen:
                break
            T = T_pc @ T
            out[parent] = T
            seen.add(parent)
            frame = parent
        return out

    a, b = up(source), up(target)  # T_ancestor_source, T_ancestor_target
    for anc, T_as in a.items():
        if anc in b:
            return np.linalg.inv(b[anc]) @ T_as
    return None


def _keep_first(stamps: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(order, keep): indices sorted by stamp, and which of them are the first of their stamp."""
    st = np.asarray(stamps, dtype=np.int64)
    order = np.argsort(st, kind="stable")
    keep = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        keep[1:] = np.diff(st[order]) != 0
    return order, keep


class Ros1KittiBag:
    """A kitti2bag ROS 1 bag read as the layout of cvl-kitti2bag (see the module docstring).

    Opening reads and checks every message but the image payloads; raises ``ValueError`` (a
    missing or mistyped topic, no static chain from the IMU to the camera, a camera_info
    without a projection) or a rosbags reader error (a corrupt file).

    Attributes:
        path: the ``.bag`` file.
        topics: ``{layout topic: (msgtype, message count)}`` (image and camera_info: the
            bag's image count, before the stream's checks).
        connections: one :class:`ViewConnection` per layout topic, with the QoS cvl-kitti2bag
            records.
        datum: WGS84 (lat, lon, alt) of the ground truth's ``world``; None without one.
        custom_data: the ``custom_data`` a conversion writes (``cvl_ros.`` keys).
        dropped: samples dropped per reason (image stamps: counted while streaming).
        start_ns, end_ns: the time span.
    """

    def __init__(self, path: str | Path, options: Ros1Options | None = None) -> None:
        from rosbags.highlevel import AnyReader

        self.path = Path(path)
        self.options = options or Ros1Options()
        if not is_ros1_bag(self.path):
            raise Ros1BagError("not a ROS 1 bag (no '#ROSBAG V2.0' header)")
        self.store = make_typestore()
        with AnyReader([self.path]) as reader:
            self._scan(reader)

    # ------------------------------------------------------------------ reading and checks
    def _conn(self, reader: Any, topic: str, required: bool = True) -> Any:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            if required:
                have = sorted({c.topic for c in reader.connections})
                raise Ros1BagError(f"has no topic {topic} (a kitti2bag raw-drive bag "
                                   f"has it; the bag has: {', '.join(have) or 'none'})")
            return None
        want = MSG_IMAGE if topic in SRC_IMAGE_TOPICS else _SRC_TYPES[topic]
        if conns[0].msgtype != want:
            raise Ros1BagError(f"topic {topic} is {conns[0].msgtype}, expected "
                               f"{want} (as kitti2bag writes it)")
        return conns

    def _read(self, reader: Any, conns: list | None) -> list:
        if not conns:
            return []
        return [reader.deserialize(raw, c.msgtype)
                for c, _, raw in reader.messages(connections=conns)]

    def _scan(self, reader: Any) -> None:
        have = {c.topic for c in reader.connections}
        image_topic = next((t for t in SRC_IMAGE_TOPICS if t in have), None)
        if image_topic is None:
            raise Ros1BagError(f"has no image topic {' or '.join(SRC_IMAGE_TOPICS)} "
                               f"(the bag has: {', '.join(sorted(have)) or 'none'})")
        self.image_topic = image_topic
        self._image_conns = self._conn(reader, image_topic)
        infos = self._read(reader, self._conn(reader, SRC_CAMERA_INFO))
        vels = self._read(reader, self._conn(reader, SRC_VEL))
        imus = self._read(reader, self._conn(reader, SRC_IMU))
        statics = self._read(reader, self._conn(reader, SRC_TF_STATIC))
        fixes = self._read(reader, self._conn(reader, SRC_FIX, required=False))
        tfs = self._read(reader, self._conn(reader, SRC_TF, required=False))
        if not vels or not imus:
            raise Ros1BagError(f"{SRC_VEL} or {SRC_IMU} holds no message; the "
                               "odometry is dead-reckoned from them")
        first_img = next(reader.messages(connections=self._image_conns), None)
        if first_img is None:
            raise Ros1BagError(f"{image_topic} holds no image")
        first_image_ns = _stamp_ns(reader.deserialize(first_img[2], first_img[0].msgtype).header)
        self._n_images = sum(c.msgcount for c in self._image_conns)

        self.dropped = {k: 0 for k in (
            "camera_stamp_not_increasing", "oxts_stamp_not_increasing", "gps_invalid",
            "imu_invalid", "odom_invalid", "ground_truth_invalid")}
        self._camera(infos)
        self._imu_frame = _frame(imus[0].header.frame_id) or "imu_link"
        self._statics(statics)
        oxts = self._oxts(vels, imus, fixes, tfs)
        self._build(oxts, first_image_ns)

    def _camera(self, infos: list) -> None:
        """Camera frame and the rectified projection of every camera_info, by stamp."""
        if not infos:
            raise Ros1BagError(f"{SRC_CAMERA_INFO} holds no message")
        self.camera_frame = _frame(infos[0].header.frame_id) or "camera_color_left"
        self._infos: dict[int, tuple] = {}
        for m in infos:
            P = np.asarray(m.P if hasattr(m, "P") else m.p, np.float64).reshape(3, 4)
            R = np.asarray(m.R if hasattr(m, "R") else m.r, np.float64).reshape(3, 3)
            if not (np.all(np.isfinite(P)) and P[0, 0] > 0 and P[1, 1] > 0):
                continue
            if not (np.all(np.isfinite(R)) and abs(np.linalg.det(R) - 1.0) < 1e-3):
                R = np.eye(3)
            self._infos.setdefault(_stamp_ns(m.header), (P, R, int(m.width), int(m.height)))
        if not self._infos:
            raise Ros1BagError(f"no {SRC_CAMERA_INFO} message has a rectified "
                               "projection P with fx, fy > 0 (the _sync images are rectified: "
                               "their intrinsics are P_rect)")
        self._info_stamps = np.array(sorted(self._infos), dtype=np.int64)

    def _statics(self, msgs: list) -> None:
        """Sensor offsets from the /tf_static chain (kitti2bag re-sends it: the first wins)."""
        tree: dict[str, tuple[str, np.ndarray]] = {}
        for m in msgs:
            for t in m.transforms:
                child = _frame(t.child_frame_id)
                T = _matrix(t.transform)
                if child not in tree and np.all(np.isfinite(T)):
                    tree[child] = (_frame(t.header.frame_id), T)
        T_imu_cam = _static_lookup(tree, self._imu_frame, self.camera_frame)
        if T_imu_cam is None:
            raise Ros1BagError(f"{SRC_TF_STATIC} has no chain {self._imu_frame} -> "
                               f"{self.camera_frame} (kitti2bag writes imu_link -> "
                               "camera_color_left); the camera extrinsics come from it")
        self.statics = [(FRAME_BASE, FRAME_IMU, np.eye(4)), (FRAME_BASE, FRAME_CAMERA, T_imu_cam)]
        T_imu_velo = _static_lookup(tree, self._imu_frame, "velo_link")
        if T_imu_velo is not None:
            self.statics.append((FRAME_BASE, FRAME_VELO, T_imu_velo))

    def _oxts(self, vels: list, imus: list, fixes: list, tfs: list) -> dict:
        """OXTS streams sorted by stamp, repeats dropped (counted once per packet)."""
        streams: dict[str, tuple[np.ndarray, list]] = {}
        repeats: dict[int, int] = {}
        poses = [(t, m) for m in tfs for t in m.transforms
                 if _frame(t.header.frame_id) == SRC_WORLD and _frame(t.child_frame_id) == SRC_BASE]
        for name, items, stamp_of in (
                ("vel", vels, lambda m: _stamp_ns(m.header)),
                ("imu", imus, lambda m: _stamp_ns(m.header)),
                ("fix", fixes, lambda m: _stamp_ns(m.header)),
                ("gt", poses, lambda tm: _stamp_ns(tm[0].header))):
            st = [stamp_of(m) for m in items]
            order, keep = _keep_first(st)
            per: dict[int, int] = {}
            for i in order[~keep]:
                per[st[i]] = per.get(st[i], 0) + 1
            for s, k in per.items():
                repeats[s] = max(repeats.get(s, 0), k)
            idx = order[keep]
            streams[name] = (np.asarray(st, np.int64)[idx], [items[i] for i in idx])
        self.dropped["oxts_stamp_not_increasing"] = int(sum(repeats.values()))
        return streams

    def _build(self, ox: dict, first_image_ns: int) -> None:
        """Every message but the images, as ROS 2 objects; datum, counts, custom data."""
        from cvl_ros.geo import GeoDatum, latlon_to_mercator, mercator_scale, mercator_to_latlon
        from cvl_ros.kitti import OxtsPacket, rotation_to_rpy
        from cvl_ros.ros.convert import quat_to_matrix
        from cvl_ros.ros.kitti_bag import (
            _header,
            _odometry_from_oxts,
            _pose,
            _transform_stamped,
            _vec3,
            odometry_covariances,
            rotation_to_quaternion_xyzw,
        )

        store, T, opt = self.store, self.store.types, self.options
        out: list[tuple] = []

        def put(stamp: int, rank: int, topic: str, msgtype: str, msg: Any) -> None:
            out.append((int(stamp), rank, len(out), topic, msgtype, msg))

        # -- GPS fix: as recorded; only finite WGS84 positions
        fix_st, fix_msgs = ox["fix"]
        fix_ok = np.array([math.isfinite(m.latitude) and math.isfinite(m.longitude)
                           and math.isfinite(m.altitude) and abs(m.latitude) <= 90.0
                           and abs(m.longitude) <= 180.0 for m in fix_msgs], dtype=bool)
        self.dropped["gps_invalid"] = int((~fix_ok).sum())
        for s, m, ok in zip(fix_st, fix_msgs, fix_ok):
            if ok:
                put(s, _RANK_OTHER, TOPIC_FIX, MSG_NAVSATFIX, T[MSG_NAVSATFIX](
                    header=_header(store, s, FRAME_IMU),
                    status=T["sensor_msgs/msg/NavSatStatus"](status=int(m.status.status),
                                                             service=int(m.status.service)),
                    latitude=float(m.latitude), longitude=float(m.longitude),
                    altitude=float(m.altitude),
                    position_covariance=np.asarray(m.position_covariance, np.float64),
                    position_covariance_type=int(m.position_covariance_type)))

        # -- IMU: as recorded; roll/pitch and the yaw rate feed the odometry
        imu_st, imu_msgs = ox["imu"]
        imu_by_stamp: dict[int, tuple[float, float, float]] = {}
        bad_imu = 0
        for s, m in zip(imu_st, imu_msgs):
            q = np.array([m.orientation.x, m.orientation.y, m.orientation.z, m.orientation.w])
            vals = np.concatenate([q, [m.angular_velocity.x, m.angular_velocity.y,
                                       m.angular_velocity.z, m.linear_acceleration.x,
                                       m.linear_acceleration.y, m.linear_acceleration.z]])
            try:
                if not np.all(np.isfinite(vals)):
                    raise ValueError("non-finite")
                R = quat_to_matrix(*q)
            except ValueError:
                bad_imu += 1
                continue
            q = np.asarray(rotation_to_quaternion_xyzw(R), np.float64)
            roll, pitch, _ = rotation_to_rpy(R)  # the absolute yaw is never used
            imu_by_stamp[int(s)] = (roll, pitch, float(m.angular_velocity.z))
            put(s, _RANK_OTHER, TOPIC_IMU, MSG_IMU, T[MSG_IMU](
                header=_header(store, s, FRAME_IMU),
                orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
                orientation_covariance=np.asarray(m.orientation_covariance, np.float64),
                angular_velocity=_vec3(store, vals[4:7]),
                angular_velocity_covariance=np.asarray(m.angular_velocity_covariance,
                                                       np.float64),
                linear_acceleration=_vec3(store, vals[7:10]),
                linear_acceleration_covariance=np.asarray(m.linear_acceleration_covariance,
                                                          np.float64)))
        self.dropped["imu_invalid"] = bad_imu

        # -- ground truth: kitti2bag's world -> base_link (Mercator about the first packet)
        gt_st, gt_items = ox["gt"]
        T_wb = np.array([_matrix(t.transform) for t, _ in gt_items]).reshape(-1, 4, 4)
        gt_ok = np.all(np.isfinite(T_wb), axis=(1, 2))
        self.dropped["ground_truth_invalid"] = int((~gt_ok).sum())
        self.datum = None
        T_gt = np.zeros((0, 4, 4))
        gt_st = gt_st[gt_ok]
        T_wb = T_wb[gt_ok]
        fix_at = {int(s): m for s, m, ok in zip(fix_st, fix_msgs, fix_ok) if ok}
        anchor = next((k for k, s in enumerate(gt_st) if int(s) in fix_at), None)
        if anchor is not None:
            # world origin = the fix at the first pose that has one, less that pose's shift
            scale = mercator_scale(float(fix_msgs[int(np.argmax(fix_ok))].latitude))
            f = fix_at[int(gt_st[anchor])]
            mx, my = latlon_to_mercator(f.latitude, f.longitude, scale)
            ox0, oy0 = mx - T_wb[anchor, 0, 3], my - T_wb[anchor, 1, 3]
            oz0 = float(f.altitude) - T_wb[anchor, 2, 3]
            lat0, lon0 = mercator_to_latlon(ox0, oy0, scale)
            self.datum = (float(lat0), float(lon0), float(oz0))
            lat, lon = mercator_to_latlon(T_wb[:, 0, 3] + ox0, T_wb[:, 1, 3] + oy0, scale)
            e, n, u = GeoDatum(*self.datum).to_enu(lat, lon, T_wb[:, 2, 3] + oz0)
            T_gt = T_wb.copy()
            T_gt[:, 0, 3], T_gt[:, 1, 3], T_gt[:, 2, 3] = e, n, u
            for s, Tg in zip(gt_st, T_gt):
                put(s, _RANK_OTHER, TOPIC_GT_POSE, MSG_POSE_STAMPED, T[MSG_POSE_STAMPED](
                    header=_header(store, s, FRAME_WORLD), pose=_pose(store, Tg)))
        else:
            gt_st = gt_st[:0]
        self.ground_truth_stamps, self.ground_truth = gt_st, T_gt

        # -- odometry: gps/vel speeds + IMU yaw rate, dead-reckoned; never a position
        vel_st, vel_msgs = ox["vel"]
        packets, odo_st, twists = [], [], []
        for s, m in zip(vel_st, vel_msgs):
            lin, ang = m.twist.linear, m.twist.angular
            imu = imu_by_stamp.get(int(s))
            vals = [lin.x, lin.y, lin.z]
            if imu is None or not all(math.isfinite(v) for v in vals):
                continue
            roll, pitch, wu = imu
            packets.append(OxtsPacket(vf=lin.x, vl=lin.y, vu=lin.z, wu=wu, roll=roll,
                                      pitch=pitch))
            odo_st.append(int(s))
            twists.append(((lin.x, lin.y, lin.z), (ang.x, ang.y, ang.z)))
        self.dropped["odom_invalid"] = len(vel_st) - len(packets)
        if not packets:
            raise Ros1BagError(f"no {SRC_VEL} message has a finite velocity and an "
                               f"{SRC_IMU} sample (finite rate and orientation) at its stamp; "
                               "nothing to dead-reckon the odometry from")
        odo_st = np.asarray(odo_st, np.int64)
        T_odom = _odometry_from_oxts(packets, odo_st, float(opt.odom_drift_pct),
                                     float(opt.odom_yaw_drift_deg_per_100m),
                                     float(opt.odom_noise_pct), int(opt.seed))
        self.odometry_stamps, self.odometry = odo_st, T_odom
        # distance travelled for the covariance: along the truth when there is one
        if len(gt_st) > 1:
            along = np.concatenate([[0.0], np.cumsum(np.linalg.norm(
                np.diff(T_gt[:, :3, 3], axis=0), axis=1))])
            i = np.searchsorted(gt_st, odo_st, side="right") - 1
            travelled = np.where(i >= 0, along[np.maximum(i, 0)], 0.0)
        else:
            travelled = np.concatenate([[0.0], np.cumsum(np.linalg.norm(
                np.diff(T_odom[:, :3, 3], axis=0), axis=1))])
        for s, To, (lin, ang), d in zip(odo_st, T_odom, twists, travelled):
            pose_cov, twist_cov = odometry_covariances(
                float(d), float(opt.odom_drift_pct), float(opt.odom_yaw_drift_deg_per_100m))
            put(s, _RANK_OTHER, TOPIC_ODOM, MSG_ODOMETRY, T[MSG_ODOMETRY](
                header=_header(store, s, FRAME_ODOM), child_frame_id=FRAME_BASE,
                pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=_pose(store, To),
                                                               covariance=pose_cov),
                twist=T["geometry_msgs/msg/TwistWithCovariance"](
                    twist=T["geometry_msgs/msg/Twist"](linear=_vec3(store, lin),
                                                       angular=_vec3(store, ang)),
                    covariance=twist_cov)))
            if opt.odom_tf and not opt.gt_tf:
                put(s, _RANK_OTHER, TOPIC_TF, MSG_TF, T[MSG_TF](transforms=[
                    _transform_stamped(store, s, FRAME_ODOM, FRAME_BASE, To)]))
        if opt.gt_tf:
            for s, Tg in zip(gt_st, T_gt):
                put(s, _RANK_OTHER, TOPIC_TF, MSG_TF, T[MSG_TF](transforms=[
                    _transform_stamped(store, s, FRAME_WORLD, FRAME_BASE, Tg)]))

        # -- /tf_static once, before everything
        stamps = [r[0] for r in out] + [first_image_ns]
        self.start_ns = min(stamps)
        put(self.start_ns, _RANK_STATIC, TOPIC_TF_STATIC, MSG_TF, T[MSG_TF](transforms=[
            _transform_stamped(store, self.start_ns, a, b, Tm) for a, b, Tm in self.statics]))
        out.sort(key=lambda r: r[:3])
        self._messages = out
        self.end_ns = max(max(r[0] for r in out), first_image_ns)

        counts: dict[str, int] = {}
        for r in out:
            counts[r[3]] = counts.get(r[3], 0) + 1
        types = {r[3]: r[4] for r in out}
        self.topics = {TOPIC_IMAGE: (MSG_IMAGE, self._n_images),
                       TOPIC_CAMERA_INFO: (MSG_CAMERA_INFO, self._n_images)}
        self.topics.update({t: (types[t], c) for t, c in counts.items()})
        qos = {TOPIC_TF: qos_profile(100), TOPIC_TF_STATIC: qos_profile(1, transient_local=True)}
        self.connections = [ViewConnection(t, mt, c, _Qos([qos.get(t, qos_profile(10))]))
                            for t, (mt, c) in self.topics.items()]
        custom = {"source_bag": str(self.path.resolve()),
                  "odom_drift_pct": repr(float(opt.odom_drift_pct)),
                  "odom_yaw_drift_deg_per_100m": repr(float(opt.odom_yaw_drift_deg_per_100m)),
                  "seed": str(int(opt.seed))}
        if self.datum is not None:
            custom.update(datum_lat_deg=repr(self.datum[0]), datum_lon_deg=repr(self.datum[1]),
                          datum_alt_m=repr(self.datum[2]), ground_truth_source=GT_SOURCE)
        self.custom_data = {META_PREFIX + k: v for k, v in custom.items()}

    # ------------------------------------------------------------------ messages
    def _camera_info(self, stamp: int, width: int, height: int) -> Any:
        """The layout's camera_info for an image: K = P[:3, :3], D = 0, scaled to its size."""
        from cvl_ros.ros.kitti_bag import _header

        k = int(np.searchsorted(self._info_stamps, stamp))
        near = [j for j in (k - 1, k) if 0 <= j < len(self._info_stamps)]
        j = min(near, key=lambda j: abs(int(self._info_stamps[j]) - stamp))
        P, R, w0, h0 = self._infos[int(self._info_stamps[j])]
        P = P.copy()
        if w0 > 0 and h0 > 0 and (w0 != width or h0 != height):
            P[0] *= width / w0
            P[1] *= height / h0
        T = self.store.types
        return T[MSG_CAMERA_INFO](
            header=_header(self.store, stamp, FRAME_CAMERA), height=height, width=width,
            distortion_model="plumb_bob", d=np.zeros(5), k=P[:, :3].reshape(-1).copy(),
            r=R.reshape(-1).copy(), p=P.reshape(-1).copy(), binning_x=0, binning_y=0,
            roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0,
                                                      width=0, do_rectify=False))

    def _images(self) -> Iterator[tuple[int, Any, Any]]:
        """(stamp, camera_info, rgb8 image) of every image whose stamp increases."""
        from rosbags.highlevel import AnyReader

        from cvl_ros.ros.convert import ImageConversionError, image_to_rgb
        from cvl_ros.ros.kitti_bag import _header

        T = self.store.types
        last = None
        dropped = 0
        with AnyReader([self.path]) as reader:
            conns = [c for c in reader.connections if c.topic == self.image_topic]
            for c, _, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, c.msgtype)
                stamp = _stamp_ns(msg.header)
                if last is not None and stamp <= last:
                    dropped += 1
                    self.dropped["camera_stamp_not_increasing"] = dropped
                    continue
                try:
                    rgb = image_to_rgb(msg)
                except ImageConversionError as exc:
                    raise Ros1BagError(f"{self.image_topic} image at "
                                       f"{stamp / 1e9:.3f} s: {exc}") from None
                last = stamp
                h, w = int(rgb.shape[0]), int(rgb.shape[1])
                yield stamp, self._camera_info(stamp, w, h), T[MSG_IMAGE](
                    header=_header(self.store, stamp, FRAME_CAMERA), height=h, width=w,
                    encoding="rgb8", is_bigendian=0, step=w * 3, data=rgb.reshape(-1))
        self.dropped["camera_stamp_not_increasing"] = dropped

    def objects(self, topics: Iterable[str] | None = None) -> Iterator[tuple[int, str, str, Any]]:
        """``(stamp_ns, topic, msgtype, ROS 2 message object)`` in time order."""
        wanted = set(topics) if topics is not None else None

        def want(t: str) -> bool:
            return wanted is None or t in wanted

        rest = (r for r in self._messages if want(r[3]))
        if not (want(TOPIC_IMAGE) or want(TOPIC_CAMERA_INFO)):
            for r in rest:
                yield r[0], r[3], r[4], r[5]
            return
        pending = next(rest, None)
        for stamp, info, img in self._images():
            while pending is not None and pending[:2] < (stamp, _RANK_INFO):
                yield pending[0], pending[3], pending[4], pending[5]
                pending = next(rest, None)
            if want(TOPIC_CAMERA_INFO):
                yield stamp, TOPIC_CAMERA_INFO, MSG_CAMERA_INFO, info
            if want(TOPIC_IMAGE):
                yield stamp, TOPIC_IMAGE, MSG_IMAGE, img
        while pending is not None:
            yield pending[0], pending[3], pending[4], pending[5]
            pending = next(rest, None)

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """The layout's messages (CDR, ROS 2 types) in time order, as ``bags.iter_bag``."""
        conns = {c.topic: c for c in self.connections}
        for stamp, topic, msgtype, msg in self.objects(topics):
            yield BagMessage(topic, msgtype, stamp, bytes(self.store.serialize_cdr(msg, msgtype)),
                             conns.get(topic))


_CACHE: dict[tuple, Ros1KittiBag] = {}


def open_ros1_bag(path: str | Path, options: Ros1Options | None = None) -> Ros1KittiBag:
    """:class:`Ros1KittiBag` of ``path``, cached per file (size, mtime) and options."""
    p = Path(os.path.abspath(Path(path).expanduser()))
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, options or Ros1Options())
    view = _CACHE.get(key)
    if view is None:
        view = Ros1KittiBag(p, options)
        if len(_CACHE) >= 2:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = view
    return view


# --------------------------------------------------------------------------------------------
# cvl-kitti2bag --from-bag
# --------------------------------------------------------------------------------------------
@dataclass
class _Written:
    counts: dict[str, int] = field(default_factory=dict)
    start_ns: int = 0
    end_ns: int = 0


def write_kitti_bag_from_ros1(
    in_bag: str | Path,
    out: str | Path,
    *,
    storage: str = "mcap",
    odom_drift_pct: float = 1.0,
    odom_yaw_drift_deg_per_100m: float = 0.5,
    odom_noise_pct: float = 0.0,
    seed: int = 0,
    gt_tf: bool = False,
    odom_tf: bool = True,
    overwrite: bool = False,
    progress: bool = False,
) -> Any:
    """Convert a kitti2bag ROS 1 bag into the rosbag2 layout of cvl-kitti2bag.

    The bag is read and checked first (everything but the image payloads; it must hold a
    ground truth: ``/tf`` ``world -> base_link`` and a GPS fix at one of its stamps), then
    ``out`` follows the output-safety rule as for a drive (new or empty folder, or with
    ``overwrite`` a bag cvl-kitti2bag wrote; never the input file or a folder above it;
    written beside ``out`` and renamed into place at the end). Options as
    :func:`cvl_ros.ros.kitti_bag.write_kitti_bag`.

    Returns:
        A :class:`cvl_ros.ros.kitti_bag.KittiBagInfo` (``frames`` = images written).

    Raises:
        FileNotFoundError, ValueError: a missing or invalid input or option.
        cvl_ros.outputs.OutputError: an output that must not be written.
    """
    from cvl_ros.outputs import OutputError, prepare_output, read_marker
    from cvl_ros.ros.kitti_bag import TOOL, KittiBagInfo, _check_options, recognise_kitti_bag

    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', not {storage!r}")
    _check_options(odom_drift_pct=odom_drift_pct,
                   odom_yaw_drift_deg_per_100m=odom_yaw_drift_deg_per_100m,
                   odom_noise_pct=odom_noise_pct)
    in_bag = Path(in_bag)
    if not in_bag.exists():
        raise FileNotFoundError(f"--from-bag {in_bag}: no such file; give a ROS 1 .bag "
                                "written by kitti2bag")
    if not is_ros1_bag(in_bag):
        raise ValueError(f"--from-bag {in_bag} is not a ROS 1 bag (no '#ROSBAG V2.0' header); "
                         "a ROS 2 bag folder needs no conversion")
    try:
        view = Ros1KittiBag(in_bag, Ros1Options(float(odom_drift_pct),
                                                float(odom_yaw_drift_deg_per_100m),
                                                float(odom_noise_pct), int(seed), bool(gt_tf),
                                                bool(odom_tf)))
    except Ros1BagError as exc:
        raise Ros1BagError(f"--from-bag {in_bag}: {exc}") from None
    except _read_errors() as exc:
        raise _unreadable(in_bag, exc) from None
    if view.datum is None:
        raise ValueError(f"--from-bag {in_bag}: no ground truth: no {SRC_TF} world -> "
                         f"base_link pose has a finite {SRC_FIX} fix at its stamp (the datum "
                         "of kitti2bag's world frame)")
    out = Path(out)
    name = Path(os.path.abspath(out.expanduser())).resolve().name
    if (not overwrite and out.is_dir() and read_marker(out) is None
            and not (out / "metadata.yaml").exists() and recognise_kitti_bag(out)):
        raise OutputError(f"--out {out} holds the incomplete bag of an interrupted "
                          f"{TOOL} run (no metadata.yaml); pass --overwrite to replace it")
    with prepare_output(out, tool=TOOL, inputs=[in_bag], overwrite=overwrite,
                        recognise=recognise_kitti_bag) as tmp:
        bag = tmp / name
        try:
            written = _write(view, bag, storage, progress)
        except Ros1BagError as exc:  # an image that cannot be converted
            raise Ros1BagError(f"--from-bag {in_bag}: {exc}") from None
        except _read_errors() as exc:  # a corrupt image chunk
            raise _unreadable(in_bag, exc) from None
        for entry in list(bag.iterdir()):
            os.rename(entry, tmp / entry.name)
        bag.rmdir()
    return KittiBagInfo(path=out, storage=storage, frames=written.counts.get(TOPIC_IMAGE, 0),
                        topics=written.counts, datum=view.datum, ground_truth=GT_SOURCE,
                        start_ns=written.start_ns, end_ns=written.end_ns,
                        dropped=dict(view.dropped))


def _read_errors() -> tuple:
    """What reading a damaged ROS 1 bag raises (rosbags' errors, decoding errors)."""
    import struct

    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag1 import ReaderError

    return (ReaderError, AnyReaderError, EOFError, IndexError, KeyError, OverflowError,
            struct.error, ValueError)


def _unreadable(in_bag: Path, exc: BaseException) -> Ros1BagError:
    text = " ".join(str(exc).split())[:300]
    return Ros1BagError(f"--from-bag {in_bag}: cannot read the bag ({type(exc).__name__}: "
                        f"{text}); it may be incomplete or corrupt: write it again")


def _write(view: Ros1KittiBag, bag: Path, storage: str, progress: bool) -> _Written:
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    res = _Written()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=view.topics[TOPIC_IMAGE][1], desc="kitti2bag --from-bag", unit="img")
    with Writer(bag, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer:
        conns = {}
        for c in view.connections:
            res.counts[c.topic] = 0
            conns[c.topic] = writer.add_connection(
                c.topic, c.msgtype, typestore=view.store,
                offered_qos_profiles=c.ext.offered_qos_profiles)
        first = last = None
        for m in view.messages():
            writer.write(conns[m.topic], m.stamp_ns, m.data)
            res.counts[m.topic] += 1
            first = m.stamp_ns if first is None else first
            last = m.stamp_ns
            if bar is not None and m.topic == TOPIC_IMAGE:
                bar.update(1)
        custom = dict(view.custom_data)
        custom.update({META_PREFIX + f"dropped_{k}": str(v) for k, v in view.dropped.items()})
        for key, value in custom.items():
            writer.set_custom_data(key, value)
        res.start_ns, res.end_ns = int(first or 0), int(last or 0)
    if bar is not None:
        bar.close()
    return res
