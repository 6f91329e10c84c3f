"""Message conversions (cvl_ros.ros.convert) and the synchroniser (cvl_ros.ros.sync)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from cvl_ros.camera import pose_enu
from cvl_ros.ros.sync import PoseBuffer, ScalarBuffer, StampPairer, TimeWentBackwards

sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="rclpy message packages missing")
convert = pytest.importorskip("cvl_ros.ros.convert")


def _rgb(h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_image_round_trip_colour_encodings(enc):
    rgb = _rgb()
    msg = convert.rgb_to_image(rgb, enc)
    assert msg.encoding == enc
    assert np.array_equal(convert.image_to_rgb(msg), rgb)


def test_mono8_and_row_padding_and_bigendian_flag():
    rgb = _rgb()
    mono = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    msg = sensor_msgs.Image(height=5, width=7, encoding="mono8", is_bigendian=1, step=10)
    padded = np.zeros((5, 10), np.uint8)
    padded[:, :7] = mono
    msg.data = padded.tobytes()
    out = convert.image_to_rgb(msg)
    assert out.shape == (5, 7, 3) and np.array_equal(out[..., 0], mono)
    # padded colour image, last row without its padding
    msg = sensor_msgs.Image(height=5, width=7, encoding="rgb8", step=24)
    padded = np.zeros((5, 24), np.uint8)
    padded[:, :21] = rgb.reshape(5, 21)
    msg.data = padded.tobytes()[:-3]
    assert np.array_equal(convert.image_to_rgb(msg), rgb)


@pytest.mark.parametrize("enc,step,size,match", [
    ("16UC1", 14, 70, "unsupported image encoding '16UC1'"),
    ("bayer_rggb8", 7, 35, "unsupported"),
    ("rgb8", 10, 50, "step 10 < width"),
    ("rgb8", 21, 50, "bytes"),
])
def test_bad_images_raise_clear_errors(enc, step, size, match):
    msg = sensor_msgs.Image(height=5, width=7, encoding=enc, step=step)
    msg.data = bytes(size)
    with pytest.raises(convert.ImageConversionError, match=match):
        convert.image_to_rgb(msg)


def test_compressed_image_decode_and_error():
    rgb = _rgb(16, 16)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    msg = sensor_msgs.CompressedImage(format="png", data=buf.tobytes())
    assert np.array_equal(convert.compressed_to_rgb(msg), rgb)
    with pytest.raises(convert.ImageConversionError, match="cannot decode"):
        convert.compressed_to_rgb(sensor_msgs.CompressedImage(format="jpeg", data=b"xx"))


def test_camera_info_and_geometry():
    info = sensor_msgs.CameraInfo(width=128, height=64)
    info.k = [60.0, 0.0, 63.5, 0.0, 61.0, 31.5, 0.0, 0.0, 1.0]
    cam = convert.camera_info_to_pinhole(info)
    assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.width_px, cam.height_px) == (
        60.0, 61.0, 63.5, 31.5, 128, 64)
    with pytest.raises(convert.ImageConversionError):
        convert.camera_info_to_pinhole(sensor_msgs.CameraInfo(width=128, height=64))
    T = pose_enu(1.0, 2.0, 3.0, 0.7, 0.1, -0.2)
    assert np.allclose(convert.pose_to_matrix(convert.matrix_to_pose(T)), T)
    ts = convert.matrix_to_transform_stamped(T, "map", "odom", convert.ns_to_stamp(1_500_000_000))
    assert ts.header.stamp.sec == 1 and ts.header.stamp.nanosec == 500_000_000
    assert np.allclose(convert.transform_to_matrix(ts.transform), T)
    assert convert.stamp_to_ns(convert.ns_to_stamp(123456789012)) == 123456789012
    with pytest.raises(ValueError):
        convert.quat_to_matrix(0, 0, 0, 0)


def test_pose_buffer_interpolates_with_slerp_and_detects_time_going_back():
    b = PoseBuffer(max_age_s=10.0)
    b.add(1_000_000_000, pose_enu(0, 0, 0, 0.0))
    b.add(2_000_000_000, pose_enu(10, 0, 0, math.pi / 2))
    T = b.lookup(1_500_000_000)
    assert np.allclose(T[:3, 3], (5, 0, 0))
    assert math.isclose(math.atan2(T[1, 0], T[0, 0]), math.pi / 4, abs_tol=1e-9)
    assert np.allclose(b.lookup(2_050_000_000, 0.1), pose_enu(10, 0, 0, math.pi / 2))
    with pytest.raises(LookupError, match="after the newest"):
        b.lookup(2_500_000_000, 0.1)
    with pytest.raises(TimeWentBackwards):
        b.add(500_000_000, np.eye(4))
    assert len(b) == 1


def test_scalar_buffer_and_pairer():
    h = ScalarBuffer()
    h.add(0, math.pi - 0.1)
    h.add(100_000_000, -math.pi + 0.1)  # wraps through pi
    v = h.lookup(50_000_000, 0.2)
    assert math.isclose(abs(v), math.pi, abs_tol=1e-9)
    assert h.lookup(10_000_000_000, 0.2) is None
    # a gap in the IMU stream: no interpolation across samples farther than the tolerance
    h.add(600_000_000, 0.5)
    assert h.lookup(350_000_000, 0.2) is None
    assert h.lookup(350_000_000, 0.3) is not None
    assert h.lookup(550_000_000, 0.2) == 0.5  # the nearest, 0.05 s away
    p = StampPairer()
    p.add(100, "a")
    p.add(200, "b")
    assert p.match(200, 0.0) == "b"
    assert p.match(10_000_150, 0.05) == "b"
    assert p.match(10**12, 0.05) is None
    assert p.match(10**12, -1.0) == "b"


def test_status_values_equal_the_message_constants():
    msg = pytest.importorskip("cvl_ros.msg", reason="cvl_ros.msg is not built; run `make setup`")
    from cvl_ros.localizer import Status

    for s in Status:
        assert getattr(msg.GeoPoseEstimate, s.name) == int(s)


def test_zero_or_nan_quaternions_never_become_a_pose():
    """The node rejects odometry whose matrix is not finite; /tf transforms raise."""
    from geometry_msgs.msg import Transform
    from nav_msgs.msg import Odometry

    from cvl_ros.ros import convert

    m = Odometry()
    m.pose.pose.orientation.w = 0.0  # all-zero quaternion
    assert not np.all(np.isfinite(convert.odometry_to_matrix(m)))
    m.pose.pose.orientation.w, m.pose.pose.orientation.x = 1.0, math.nan
    assert not np.all(np.isfinite(convert.odometry_to_matrix(m)))
    t = Transform()
    t.rotation.w = 0.0
    with pytest.raises(ValueError, match="invalid quaternion"):
        convert.transform_to_matrix(t)


def _fix_estimate(**kw):
    from cvl_ros.localizer import Estimate, Status

    base = dict(stamp_ns=5, status=Status.TRACKING, lat_deg=49.015, lon_deg=8.4394,
                alt_m=float("nan"), east_m=10.0, north_m=20.0, yaw_rad=0.7,
                covariance_xy=np.array([[4.0, 0.5], [0.5, 9.0]]), yaw_var_rad2=0.003,
                confidence=0.9, score=0.5, tile_id="t", displacement_m=np.zeros(2),
                window_len=4, tiles_searched=9, latency_s=0.01, datum_alt_m=112.0)
    base.update(kw)
    return Estimate(**base)


def test_standard_geo_pose_covariance_orientation_and_altitude():
    """geographic_msgs/GeoPoseWithCovarianceStamped: covariance over (lat, lon, alt, rotE, rotN,
    rotU) in m^2 / rad^2, orientation the ENU yaw quaternion, unknown altitude NaN."""
    pytest.importorskip("geographic_msgs.msg", reason="geographic_msgs not built; make setup")
    from builtin_interfaces.msg import Time

    est = _fix_estimate()
    m = convert.estimate_to_geo_pose_with_covariance(est, "map", Time(sec=3, nanosec=7))
    assert m.header.frame_id == "map" and (m.header.stamp.sec, m.header.stamp.nanosec) == (3, 7)
    pos = m.pose.pose.position
    assert (pos.latitude, pos.longitude) == (49.015, 8.4394)
    assert math.isnan(pos.altitude)  # not the datum's altitude (NavSatFix's choice)
    c = np.asarray(m.pose.covariance).reshape(6, 6)
    u = convert.UNKNOWN_VARIANCE
    # north (lat) first, east (lon) second: the ENU block of covariance6 with x and y swapped
    assert c[0, 0] == 9.0 and c[1, 1] == 4.0 and c[0, 1] == c[1, 0] == 0.5
    assert c[2, 2] == u and c[3, 3] == u and c[4, 4] == u and c[5, 5] == 0.003
    off = c - np.diag(np.diag(c))
    off[0, 1] = off[1, 0] = 0.0
    assert not off.any()
    enu = convert.covariance6(est)
    assert c[0, 0] == enu[1, 1] and c[1, 1] == enu[0, 0]  # swap of x (east) and y (north)
    o = m.pose.pose.orientation
    assert (o.x, o.y) == (0.0, 0.0)
    assert (o.z, o.w) == pytest.approx((math.sin(0.35), math.cos(0.35)))
    assert convert.yaw_from_quat(o) == pytest.approx(0.7)
    # same yaw as the map-frame pose of ~/pose for a yaw-only body pose
    R = convert.quat_to_matrix(o.x, o.y, o.z, o.w)
    assert R @ np.array([1.0, 0.0, 0.0]) == pytest.approx([math.cos(0.7), math.sin(0.7), 0.0])
    # yaw across +-pi: a unit quaternion with w >= 0 that still gives the yaw back
    m = convert.estimate_to_geo_pose_with_covariance(_fix_estimate(yaw_rad=-3.0), "map", Time())
    o = m.pose.pose.orientation
    assert o.w >= 0 and math.hypot(o.z, o.w) == pytest.approx(1.0)
    assert convert.yaw_from_quat(o) == pytest.approx(-3.0)
    # a known altitude is passed through
    m = convert.estimate_to_geo_pose_with_covariance(_fix_estimate(alt_m=115.5), "map", Time())
    assert m.pose.pose.position.altitude == 115.5


def test_standard_geo_pose_without_a_yaw_says_so_in_its_covariance():
    pytest.importorskip("geographic_msgs.msg", reason="geographic_msgs not built; make setup")
    from builtin_interfaces.msg import Time

    for est in (_fix_estimate(yaw_rad=float("nan")), _fix_estimate(yaw_var_rad2=float("nan"))):
        m = convert.estimate_to_geo_pose_with_covariance(est, "map", Time())
        c = np.asarray(m.pose.covariance).reshape(6, 6)
        assert np.all(np.isfinite(c)) and c[5, 5] == convert.UNKNOWN_VARIANCE
    o = convert.estimate_to_geo_pose_with_covariance(
        _fix_estimate(yaw_rad=float("nan")), "map", Time()).pose.pose.orientation
    assert (o.x, o.y, o.z, o.w) == (0.0, 0.0, 0.0, 1.0)
