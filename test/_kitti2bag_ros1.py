"""Test helper: a KITTI drive written as the ROS 1 bag of the ``kitti2bag`` tool (its layout).

Reproduces the documented output of tomas789/kitti2bag for a raw ``_sync`` drive with rosbags'
``rosbag1.Writer`` and ROS 1 (Noetic) message definitions, from this project's KITTI readers:

* ``/kitti/camera_color_left/image_raw`` (``bgr8``, frame ``camera_color_left``) and
  ``.../camera_info`` (K_02, D_02, R_rect_02, P_rect_02, plumb_bob; width/height S_rect_02,
  the size P_rect_02 belongs to), camera stamps;
* ``/kitti/oxts/imu`` (orientation of roll/pitch/yaw, rates ``wf wl wu``, accelerations
  ``af al au``), ``/kitti/oxts/gps/fix`` (lat/lon/alt, service 1), ``/kitti/oxts/gps/vel``
  (``vf vl vu`` / ``wf wl wu``), frame ``imu_link``, OXTS stamps;
* ``/tf`` ``world -> base_link`` = pykitti's ``T_w_imu`` (Mercator about the first packet);
* ``/tf_static`` re-sent at every OXTS stamp: ``base_link -> imu_link`` (the tool's lever arm),
  ``imu_link -> velo_link``, ``imu_link -> camera_color_left``.

Messages are written topic after topic, as the tool does (the reader sorts them by time).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvl_ros.kitti import (
    KittiDrive,
    kitti_T_imu_cam2,
    oxts_to_poses,
    read_calib_imu_to_velo,
    read_timestamps,
    rpy_to_rotation,
)
from cvl_ros.ros.kitti_bag import rotation_to_quaternion_xyzw

IMAGE_RAW = "/kitti/camera_color_left/image_raw"
#: the tool's static base_link -> imu_link translation (m)
LEVER_ARM = (-2.71 / 2.0 - 0.05, 0.32, 0.93)


def write_kitti2bag_ros1(drive_dir, out_bag, *, image_topic: str = IMAGE_RAW,
                         info_size: str = "S_rect", world_shift_m=(0.0, 0.0, 0.0),
                         imu_yaw_offset_rad: float = 0.0, skip_topics=(),
                         repeat_oxts: int | None = None) -> Path:
    """Write ``out_bag`` (a ROS 1 bag file) from a KITTI raw drive as kitti2bag lays it out.

    ``info_size``: camera_info width/height ``"S_rect"`` (S_rect_02) or ``"image"`` (the
    image's). ``world_shift_m`` moves the ``/tf`` poses (m) and the fixes (the same metres
    north/east/up): a different GPS/pose that must not change the odometry;
    ``imu_yaw_offset_rad`` turns the IMU's absolute heading (same). ``skip_topics`` are left
    out; ``repeat_oxts``: the OXTS messages of that packet are written twice.
    """
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    drive = KittiDrive(drive_dir)
    packets = drive.oxts
    n = len(packets)
    cam_st = np.asarray(drive.timestamps_ns[:n], np.int64)
    ox_st = np.asarray(read_timestamps(Path(drive_dir) / "oxts" / "timestamps.txt")[:n],
                       np.int64)
    calib = drive.calib
    T_w_imu, scale = oxts_to_poses(packets)
    shift = np.asarray(world_shift_m, np.float64)
    store = get_typestore(Stores.ROS1_NOETIC)
    # rosbags' Noetic store lacks tf2_msgs; its ROS 1 definition:
    store.register(get_types_from_msg("geometry_msgs/TransformStamped[] transforms",
                                      "tf2_msgs/msg/TFMessage"))
    T = store.types

    def stamp(ns):
        return T["builtin_interfaces/msg/Time"](sec=int(ns) // 10**9, nanosec=int(ns) % 10**9)

    def header(ns, frame):
        return T["std_msgs/msg/Header"](seq=0, stamp=stamp(ns), frame_id=frame)

    def vec(v):
        return T["geometry_msgs/msg/Vector3"](x=float(v[0]), y=float(v[1]), z=float(v[2]))

    def quat(R):
        x, y, z, w = rotation_to_quaternion_xyzw(R)
        return T["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)

    def tfs(ns, parent, child, M):
        return T["geometry_msgs/msg/TransformStamped"](
            header=header(ns, parent), child_frame_id=child,
            transform=T["geometry_msgs/msg/Transform"](translation=vec(M[:3, 3]),
                                                       rotation=quat(M[:3, :3])))

    T_base_imu = np.eye(4)
    T_base_imu[:3, 3] = LEVER_ARM
    T_imu_velo = np.linalg.inv(read_calib_imu_to_velo(drive.calib_dir / "calib_imu_to_velo.txt"))
    statics = [("base_link", "imu_link", T_base_imu), ("imu_link", "velo_link", T_imu_velo),
               ("imu_link", "camera_color_left", kitti_T_imu_cam2(drive.calib_dir))]
    # the fix moves with the world shift (metres on the ground -> degrees)
    m_per_deg = 6378137.0 * np.pi / 180.0
    dlat = shift[1] / m_per_deg
    dlon = shift[0] / (m_per_deg * scale)
    oxts_rows = list(range(n))
    if repeat_oxts is not None:
        oxts_rows.insert(repeat_oxts + 1, repeat_oxts)

    per_topic: dict[str, list] = {}

    def add(topic, msgtype, ns, msg):
        per_topic.setdefault(topic, (msgtype, []))[1].append((int(ns), msg))

    for i in oxts_rows:
        s, p = ox_st[i], packets[i]
        add("/tf_static", "tf2_msgs/msg/TFMessage", s, T["tf2_msgs/msg/TFMessage"](
            transforms=[tfs(s, a, b, M) for a, b, M in statics]))
        Tw = T_w_imu[i].copy()
        Tw[:3, 3] += shift
        add("/tf", "tf2_msgs/msg/TFMessage", s, T["tf2_msgs/msg/TFMessage"](
            transforms=[tfs(s, "world", "base_link", Tw)]))
        zero9 = np.zeros(9)
        add("/kitti/oxts/imu", "sensor_msgs/msg/Imu", s, T["sensor_msgs/msg/Imu"](
            header=header(s, "imu_link"),
            orientation=quat(rpy_to_rotation(p.roll, p.pitch, p.yaw + imu_yaw_offset_rad)),
            orientation_covariance=zero9, angular_velocity=vec((p.wf, p.wl, p.wu)),
            angular_velocity_covariance=zero9, linear_acceleration=vec((p.af, p.al, p.au)),
            linear_acceleration_covariance=zero9))
        add("/kitti/oxts/gps/fix", "sensor_msgs/msg/NavSatFix", s, T["sensor_msgs/msg/NavSatFix"](
            header=header(s, "imu_link"),
            status=T["sensor_msgs/msg/NavSatStatus"](status=0, service=1),
            latitude=p.lat + dlat, longitude=p.lon + dlon, altitude=p.alt + shift[2],
            position_covariance=zero9, position_covariance_type=0))
        add("/kitti/oxts/gps/vel", "geometry_msgs/msg/TwistStamped",
            s, T["geometry_msgs/msg/TwistStamped"](
                header=header(s, "imu_link"),
                twist=T["geometry_msgs/msg/Twist"](linear=vec((p.vf, p.vl, p.vu)),
                                                   angular=vec((p.wf, p.wl, p.wu)))))
    S = np.asarray(calib["S_rect_02"]).reshape(-1)
    for i in range(n):
        s = cam_st[i]
        rgb = drive.image(i)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        h, w = bgr.shape[:2]
        add(image_topic, "sensor_msgs/msg/Image", s, T["sensor_msgs/msg/Image"](
            header=header(s, "camera_color_left"), height=h, width=w, encoding="bgr8",
            is_bigendian=0, step=w * 3, data=bgr.reshape(-1)))
        iw, ih = (int(round(S[0])), int(round(S[1]))) if info_size == "S_rect" else (w, h)
        add("/kitti/camera_color_left/camera_info", "sensor_msgs/msg/CameraInfo",
            s, T["sensor_msgs/msg/CameraInfo"](
                header=header(s, "camera_color_left"), height=ih, width=iw,
                distortion_model="plumb_bob",
                D=np.asarray(calib["D_02"], np.float64).reshape(-1),
                K=np.asarray(calib["K_02"], np.float64).reshape(-1),
                R=np.asarray(calib["R_rect_02"], np.float64).reshape(-1),
                P=np.asarray(calib["P_rect_02"], np.float64).reshape(-1),
                binning_x=0, binning_y=0,
                roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0,
                                                          width=0, do_rectify=False)))
    out_bag = Path(out_bag)
    with Writer(out_bag) as writer:
        for topic, (msgtype, msgs) in per_topic.items():
            if topic in skip_topics:
                continue
            conn = writer.add_connection(topic, msgtype, typestore=store)
            for ns, msg in msgs:
                writer.write(conn, ns, store.serialize_ros1(msg, msgtype))
    return out_bag
