"""Message <-> core conversions (no cv_bridge, no tf_transformations: numpy, cv2 and scipy).

Images: ``sensor_msgs/Image`` in rgb8, bgr8, mono8, rgba8, bgra8 (row padding via ``step``;
the big-endian flag is irrelevant for 8-bit data) and ``sensor_msgs/CompressedImage`` (any
format OpenCV decodes) become HxWx3 uint8 RGB; anything else raises ``ImageConversionError``.
Poses: 4x4 float64 ``T_a_b``; quaternions (x, y, z, w) through ``scipy.spatial.transform``.
Estimates become GeoPoseEstimate, NavSatFix (ENU covariance in m^2),
PoseWithCovarianceStamped (6x6 row-major over x, y, z, rotX, rotY, rotZ), the standard
geographic_msgs/GeoPoseWithCovarianceStamped (6x6 over lat, lon, alt, rotE, rotN, rotU) and
TransformStamped.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from cvl_ros.camera import PinholeCamera

__all__ = [
    "ImageConversionError",
    "SUPPORTED_ENCODINGS",
    "image_to_rgb",
    "compressed_to_rgb",
    "rgb_to_image",
    "camera_info_to_pinhole",
    "stamp_to_ns",
    "ns_to_stamp",
    "quat_to_matrix",
    "matrix_to_quat",
    "yaw_from_quat",
    "pose_to_matrix",
    "transform_to_matrix",
    "odometry_to_matrix",
    "matrix_to_pose",
    "matrix_to_transform_stamped",
    "covariance6",
    "estimate_to_geopose",
    "estimate_to_navsatfix",
    "geo_covariance6",
    "estimate_to_geo_pose_with_covariance",
    "estimate_to_pose",
    "heatmap_to_image",
]

# encoding -> (channels, cv2 conversion to RGB or None)
SUPPORTED_ENCODINGS = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
}

UNKNOWN_VARIANCE = 1.0e6
"""Variance used for components the localizer does not observe (z, roll, pitch) [m^2 / rad^2]."""


class ImageConversionError(ValueError):
    """The image message cannot be converted (unsupported encoding, inconsistent size...)."""


# ---------------------------------------------------------------------------- time
def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int):
    """Integer nanoseconds -> builtin_interfaces/Time."""
    from builtin_interfaces.msg import Time

    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# ---------------------------------------------------------------------------- images
def image_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/Image`` -> (H, W, 3) uint8 RGB (a new array)."""
    enc = (msg.encoding or "").strip().lower()
    if enc not in SUPPORTED_ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding '{msg.encoding}' (supported: "
            f"{', '.join(SUPPORTED_ENCODINGS)}; or use_compressed for JPEG/PNG)")
    ch, conv = SUPPORTED_ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError(f"empty image {w}x{h}")
    if step < w * ch:
        raise ImageConversionError(f"step {step} < width {w} x {ch} bytes for {enc}")
    data = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray))
                         else msg.data, dtype=np.uint8)
    if data.size < step * (h - 1) + w * ch:
        raise ImageConversionError(
            f"image data has {data.size} bytes, {step * h} expected for {w}x{h} {enc} "
            f"(step {step})")
    # a strided view of the rows (the last one may lack its padding): nothing is allocated
    # for the padding, which a huge ``step`` would make huge
    rows = np.lib.stride_tricks.as_strided(data, shape=(h, w * ch), strides=(step, 1),
                                           writeable=False)
    img = rows.reshape(h, w, ch) if ch > 1 else rows.reshape(h, w)
    if conv is None:
        return np.ascontiguousarray(img).copy()
    return cv2.cvtColor(np.ascontiguousarray(img), conv)


def compressed_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` -> (H, W, 3) uint8 RGB."""
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    except cv2.error:  # some decoders raise on corrupt data instead of returning None
        img = None
    if img is None:
        raise ImageConversionError(f"cannot decode compressed image (format '{msg.format}', "
                                   f"{buf.size} bytes)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def rgb_to_image(rgb: np.ndarray, encoding: str = "rgb8", stamp=None, frame_id: str = ""):
    """(H, W, 3) RGB or (H, W) mono uint8 -> ``sensor_msgs/Image`` in ``encoding``."""
    from sensor_msgs.msg import Image

    enc = encoding.lower()
    a = np.asarray(rgb, dtype=np.uint8)
    if a.ndim == 2:
        a = cv2.cvtColor(a, cv2.COLOR_GRAY2RGB)
    out = {"rgb8": a, "bgr8": cv2.cvtColor(a, cv2.COLOR_RGB2BGR),
           "mono8": cv2.cvtColor(a, cv2.COLOR_RGB2GRAY),
           "rgba8": cv2.cvtColor(a, cv2.COLOR_RGB2RGBA),
           "bgra8": cv2.cvtColor(a, cv2.COLOR_RGB2BGRA)}.get(enc)
    if out is None:
        raise ImageConversionError(f"cannot encode to '{encoding}'")
    out = np.ascontiguousarray(out)
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(out.shape[0]), int(out.shape[1])
    msg.encoding = enc
    msg.is_bigendian = 0
    msg.step = int(out.strides[0])
    msg.data = out.tobytes()
    return msg


def camera_info_to_pinhole(msg) -> PinholeCamera:
    """``sensor_msgs/CameraInfo`` (K of a rectified/undistorted image; P when K is empty)."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    p = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
    if not (k[0, 0] > 0 and k[1, 1] > 0) and p[0, 0] > 0 and p[1, 1] > 0:
        k = p[:, :3]  # some drivers fill only P (rectified projection)
    w, h = int(msg.width), int(msg.height)
    if w <= 0 or h <= 0 or not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ImageConversionError(f"camera_info is invalid (size {w}x{h}, fx={k[0, 0]}, "
                                   f"fy={k[1, 1]})")
    return PinholeCamera(float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]), w, h)


# ---------------------------------------------------------------------------- geometry
def quat_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> 3x3 rotation; raises ValueError for a non-finite/zero q."""
    q = np.array([x, y, z, w], dtype=np.float64)
    if not np.all(np.isfinite(q)):
        raise ValueError(f"invalid quaternion {q.tolist()}")
    scale = float(np.abs(q).max())  # the norm of huge components would overflow to inf
    n = float(np.linalg.norm(q / scale)) * scale if scale > 0.0 else 0.0
    if n < 1e-9:
        raise ValueError(f"invalid quaternion {q.tolist()}")
    q = q / scale
    return Rotation.from_quat(q / np.linalg.norm(q)).as_matrix()


def matrix_to_quat(R: np.ndarray) -> tuple[float, float, float, float]:
    """3x3 rotation -> quaternion (x, y, z, w) with w >= 0."""
    q = Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat()
    if q[3] < 0:
        q = -q
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


def yaw_from_quat(q) -> float:
    """Yaw (rad, ENU, about z) of a geometry_msgs/Quaternion."""
    R = quat_to_matrix(q.x, q.y, q.z, q.w)
    return float(math.atan2(R[1, 0], R[0, 0]))


def _matrix(p, q) -> np.ndarray:
    """Point-like ``p`` (x, y, z) and quaternion-like ``q`` (x, y, z, w) -> 4x4."""
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(q.x, q.y, q.z, q.w)
    T[:3, 3] = (p.x, p.y, p.z)
    return T


def pose_to_matrix(pose) -> np.ndarray:
    """geometry_msgs/Pose -> 4x4."""
    return _matrix(pose.position, pose.orientation)


def transform_to_matrix(tf) -> np.ndarray:
    """geometry_msgs/Transform -> 4x4."""
    return _matrix(tf.translation, tf.rotation)


def odometry_to_matrix(msg) -> np.ndarray:
    """nav_msgs/Odometry -> T_odom_body (4x4); NaNs propagate (the localizer rejects them)."""
    p = msg.pose.pose
    o = p.orientation
    T = np.full((4, 4), np.nan)
    T[3] = (0, 0, 0, 1)
    try:
        T[:3, :3] = quat_to_matrix(o.x, o.y, o.z, o.w)
    except ValueError:  # non-finite or zero quaternion: the rotation stays NaN
        pass
    T[:3, 3] = (p.position.x, p.position.y, p.position.z)
    return T


def matrix_to_pose(T: np.ndarray):
    """4x4 -> geometry_msgs/Pose."""
    from geometry_msgs.msg import Pose

    p = Pose()
    p.position.x, p.position.y, p.position.z = (float(v) for v in T[:3, 3])
    (p.orientation.x, p.orientation.y, p.orientation.z,
     p.orientation.w) = matrix_to_quat(T[:3, :3])
    return p


def matrix_to_transform_stamped(T: np.ndarray, parent: str, child: str, stamp):
    """4x4 T_parent_child -> geometry_msgs/TransformStamped."""
    from geometry_msgs.msg import TransformStamped

    t = TransformStamped()
    t.header.stamp = stamp
    t.header.frame_id = parent
    t.child_frame_id = child
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (
        float(v) for v in T[:3, 3])
    (t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z,
     t.transform.rotation.w) = matrix_to_quat(T[:3, :3])
    return t


def covariance6(est) -> np.ndarray:
    """6x6 covariance (x, y, z, rotX, rotY, rotZ) of an Estimate.

    The xy block and the yaw variance come from the estimate; z, roll, pitch get UNKNOWN_VARIANCE.
    """
    c = np.diag([0.0, 0.0, UNKNOWN_VARIANCE, UNKNOWN_VARIANCE, UNKNOWN_VARIANCE,
                 float(est.yaw_var_rad2)])
    c[:2, :2] = np.asarray(est.covariance_xy, dtype=np.float64)
    return c


# ---------------------------------------------------------------------------- estimates
def _finite(v: float, default: float = float("nan")) -> float:
    return float(v) if v is not None and math.isfinite(float(v)) else default


def estimate_to_geopose(est, frame_id: str, stamp, latency_s: float | None = None):
    """Estimate -> cvl_ros/GeoPoseEstimate (stamp = the newest image's stamp)."""
    from cvl_ros.msg import Candidate, GeoPoseEstimate

    m = GeoPoseEstimate()
    m.header.stamp = stamp
    m.header.frame_id = frame_id
    m.status = int(est.status)
    m.latitude_deg = _finite(est.lat_deg)
    m.longitude_deg = _finite(est.lon_deg)
    m.altitude_m = _finite(est.alt_m)
    m.yaw_rad = _finite(est.yaw_rad)
    if est.T_map_body is not None and np.all(np.isfinite(est.T_map_body)):
        m.pose.pose = matrix_to_pose(est.T_map_body)
    else:
        m.pose.pose.orientation.w = 1.0
    m.pose.covariance = [float(v) for v in covariance6(est).ravel()]
    m.confidence = float(est.confidence)
    m.match_score = _finite(est.score, 0.0)
    m.tile_id = str(est.tile_id or "")
    d = np.asarray(est.displacement_m, dtype=np.float64).reshape(-1)
    m.displacement_east_m = _finite(d[0], 0.0) if d.size else 0.0
    m.displacement_north_m = _finite(d[1], 0.0) if d.size > 1 else 0.0
    m.window_length = int(est.window_len)
    m.tiles_searched = int(est.tiles_searched)
    m.latency_s = float(est.latency_s if latency_s is None else latency_s)
    m.datum_latitude_deg = float(est.datum_lat_deg)
    m.datum_longitude_deg = float(est.datum_lon_deg)
    m.datum_altitude_m = float(est.datum_alt_m)
    m.candidates = [Candidate(tile_id=str(c.tile_id), latitude_deg=float(c.lat_deg),
                              longitude_deg=float(c.lon_deg), score=float(c.score))
                    for c in est.candidates]
    return m


def no_fix_geopose(frame_id: str, stamp, datum=None):
    """A NO_FIX GeoPoseEstimate (nothing known yet, or resources missing)."""
    from cvl_ros.msg import GeoPoseEstimate

    m = GeoPoseEstimate()
    m.header.stamp = stamp
    m.header.frame_id = frame_id
    m.status = GeoPoseEstimate.NO_FIX
    nan = float("nan")
    m.latitude_deg = m.longitude_deg = m.altitude_m = m.yaw_rad = nan
    m.pose.pose.orientation.w = 1.0
    m.pose.covariance = [float(v) for v in (np.eye(6) * UNKNOWN_VARIANCE).ravel()]
    if datum is not None:
        m.datum_latitude_deg, m.datum_longitude_deg = float(datum.lat_deg), float(datum.lon_deg)
        m.datum_altitude_m = float(datum.alt_m)
    else:
        m.datum_latitude_deg = m.datum_longitude_deg = m.datum_altitude_m = nan
    return m


def estimate_to_navsatfix(est, frame_id: str, stamp):
    """Estimate -> sensor_msgs/NavSatFix with the ENU position covariance [m^2]."""
    from sensor_msgs.msg import NavSatFix, NavSatStatus

    m = NavSatFix()
    m.header.stamp = stamp
    m.header.frame_id = frame_id
    m.status.status = NavSatStatus.STATUS_FIX if est.has_fix else NavSatStatus.STATUS_NO_FIX
    m.status.service = 0
    m.latitude = _finite(est.lat_deg)
    m.longitude = _finite(est.lon_deg)
    # NavSatFix: the map plane's altitude (variance 1e6 below) rather than NaN, which
    # navsat_transform-style consumers would propagate into z
    m.altitude = _finite(est.alt_m, _finite(est.datum_alt_m, 0.0))
    cov = np.zeros((3, 3))
    cov[:2, :2] = est.covariance_xy
    cov[2, 2] = UNKNOWN_VARIANCE
    m.position_covariance = [float(v) for v in cov.ravel()]
    m.position_covariance_type = NavSatFix.COVARIANCE_TYPE_KNOWN
    return m


#: Rows/columns of :func:`covariance6` (x east, y north, z up, rotX, rotY, rotZ) in the order of
#: geographic_msgs/GeoPoseWithCovariance (lat, lon, alt, rot about East, North, Up).
_GEO_ORDER = [1, 0, 2, 3, 4, 5]


def geo_covariance6(est) -> np.ndarray:
    """6x6 covariance of an Estimate in geographic_msgs/GeoPoseWithCovariance's order.

    The upstream message orders its covariance (Lat, Lon, Alt, rotation about East, North, Up):
    here in m^2 along the local north, east and up axes through the position (the units of
    NavSatFix's covariance; what Autoware's geo_pose_projector reads) and rad^2. It is
    :func:`covariance6` with x (east) and y (north) swapped: [0, 0] is the north variance,
    [1, 1] the east one, [0, 1] their covariance, [5, 5] the yaw variance (UNKNOWN_VARIANCE
    when the yaw or its variance is not finite); altitude, roll and pitch get UNKNOWN_VARIANCE.
    """
    c = covariance6(est)
    if not (math.isfinite(_finite(est.yaw_rad)) and math.isfinite(c[5, 5])):
        c[5, 5] = UNKNOWN_VARIANCE
    return c[np.ix_(_GEO_ORDER, _GEO_ORDER)]


def estimate_to_geo_pose_with_covariance(est, frame_id: str, stamp):
    """Estimate -> geographic_msgs/GeoPoseWithCovarianceStamped (the standard geo-pose).

    Position: WGS84 latitude/longitude of base_frame; altitude NaN when not estimated (GeoPoint:
    "NaN if unspecified"). Orientation: the ENU yaw quaternion (rotation about Up by the
    estimate's yaw; roll and pitch 0, their variance UNKNOWN_VARIANCE); the identity with the
    yaw variance UNKNOWN_VARIANCE when the yaw is not finite. The yaw is the map frame's (ENU at
    the datum); ENU at the position differs by the meridian convergence, about 0.01 deg per km
    east of the datum at mid latitudes, which is left out. Covariance: :func:`geo_covariance6`.
    """
    from geographic_msgs.msg import GeoPoseWithCovarianceStamped

    m = GeoPoseWithCovarianceStamped()
    m.header.stamp = stamp
    m.header.frame_id = frame_id
    p = m.pose.pose
    p.position.latitude = _finite(est.lat_deg)
    p.position.longitude = _finite(est.lon_deg)
    p.position.altitude = _finite(est.alt_m)
    yaw = _finite(est.yaw_rad)
    if math.isfinite(yaw):
        p.orientation.z, p.orientation.w = math.sin(yaw / 2.0), math.cos(yaw / 2.0)
        if p.orientation.w < 0:
            p.orientation.z, p.orientation.w = -p.orientation.z, -p.orientation.w
    else:
        p.orientation.z, p.orientation.w = 0.0, 1.0
    p.orientation.x = p.orientation.y = 0.0
    m.pose.covariance = [float(v) for v in geo_covariance6(est).ravel()]
    return m


def estimate_to_pose(est, frame_id: str, stamp):
    """Estimate -> geometry_msgs/PoseWithCovarianceStamped in the map frame."""
    from geometry_msgs.msg import PoseWithCovarianceStamped

    m = PoseWithCovarianceStamped()
    m.header.stamp = stamp
    m.header.frame_id = frame_id
    m.pose.pose = matrix_to_pose(est.T_map_body)
    m.pose.covariance = [float(v) for v in covariance6(est).ravel()]
    return m


def heatmap_to_image(values: np.ndarray, stamp, frame_id: str, size_px: int = 128,
                     colour: bool = True):
    """A north-up score map or posterior -> Image (rgb8 false-colour, or mono8), min-max scaled."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        v = np.zeros_like(v)
    lo, hi = (float(v[finite].min()), float(v[finite].max())) if finite.any() else (0.0, 1.0)
    u8 = np.clip((np.nan_to_num(v, nan=lo) - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255)
    u8 = u8.astype(np.uint8)
    if size_px and max(u8.shape) < size_px:
        f = max(1, size_px // max(u8.shape))
        u8 = cv2.resize(u8, (u8.shape[1] * f, u8.shape[0] * f), interpolation=cv2.INTER_NEAREST)
    if colour:
        rgb = cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)
        return rgb_to_image(rgb, "rgb8", stamp, frame_id)
    return rgb_to_image(u8, "mono8", stamp, frame_id)
