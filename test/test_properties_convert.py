"""Property tests at the message boundary (issue 13, item 6): cvl_ros.ros.convert and the front end.

Arbitrary field values (encodings, sizes, steps, data lengths, NaN/Inf/huge numbers, zero
quaternions) give either a valid result or the documented exception (ImageConversionError /
ValueError), never another exception and never a silently wrong shape. Messages are duck-typed
``types.SimpleNamespace`` objects (the converters read fields by attribute), so no rclpy is needed.
"""

from __future__ import annotations

import math
import struct
import tracemalloc
import zlib
from types import SimpleNamespace as NS

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvl_ros.camera import PinholeCamera
from cvl_ros.localizer import Frame
from cvl_ros.localizer.frontend import FrameAssembler, FrontendConfig, GpsPrior, Rejection
from cvl_ros.ros import convert
from cvl_ros.ros.convert import ImageConversionError

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

any_float = st.floats(allow_nan=True, allow_infinity=True)
#: floats biased towards the interesting ones (0, +-1, huge, tiny, NaN, Inf)
edge_float = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 5e-324, 1e300,
                                        -1e300, 1.7e308, float("nan"), float("inf"),
                                        float("-inf")]), any_float)
uint32 = st.one_of(st.integers(0, 12), st.integers(0, 2**32 - 1))
ENCODINGS = ["rgb8", "bgr8", "mono8", "rgba8", "bgra8", "RGB8", " bgr8 ", "16UC1", "yuv422",
             "bayer_rggb8", "32FC1", "", None]
CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}


def _finite_rotation(R) -> bool:
    R = np.asarray(R)
    return (R.shape == (3, 3) and bool(np.all(np.isfinite(R)))
            and abs(np.linalg.det(R) - 1.0) < 1e-6
            and float(np.abs(R.T @ R - np.eye(3)).max()) < 1e-6)


def _safe_norm(q) -> float:
    q = np.asarray(q, dtype=np.float64)
    s = float(np.abs(q).max())
    return float(np.linalg.norm(q / s)) * s if s > 0 else 0.0


# ------------------------------------------------------------------------ raw images
@st.composite
def image_msgs(draw):
    """Image messages: consistent ones (any padding, last row padded or not) and garbage."""
    enc = draw(st.sampled_from(ENCODINGS) | st.text(max_size=8))
    if draw(st.booleans()):  # arbitrary fields
        return NS(encoding=enc, height=draw(uint32), width=draw(uint32), step=draw(uint32),
                  data=draw(st.binary(max_size=512)))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    ch = CHANNELS.get((enc or "").strip().lower(), draw(st.integers(1, 4)))
    step = w * ch + draw(st.integers(0, 7))
    n = step * h - draw(st.sampled_from([0, 0, step - w * ch, 1]))  # the last row's padding
    data = draw(st.binary(min_size=max(0, n), max_size=max(0, n)))
    return NS(encoding=enc, height=h, width=w, step=step, data=data)


def _reference_rgb(msg) -> np.ndarray:
    """Pixel-by-pixel reading of a supported Image message (the slow, obvious way)."""
    enc = msg.encoding.strip().lower()
    ch = CHANNELS[enc]
    out = np.zeros((msg.height, msg.width, 3), np.uint8)
    for r in range(msg.height):
        for c in range(msg.width):
            px = list(msg.data[r * msg.step + c * ch: r * msg.step + (c + 1) * ch])
            if enc == "mono8":
                px = px * 3
            elif enc.startswith("bgr"):
                px = px[2::-1]
            out[r, c] = px[:3]
    return out


@SETTINGS
@given(image_msgs())
def test_image_to_rgb_gives_the_pixels_or_a_conversion_error(msg):
    try:
        rgb = convert.image_to_rgb(msg)
    except ImageConversionError:
        return
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8
    assert rgb.shape == (msg.height, msg.width, 3) and rgb.flags.c_contiguous
    assert np.array_equal(rgb, _reference_rgb(msg))


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(list(CHANNELS)), st.integers(1, 5), st.integers(2**20, 2**32 - 1))
def test_a_huge_step_allocates_nothing_for_the_padding(enc, w, step):
    """One row of a few bytes with ``step`` up to 4 GiB: the missing padding of the last row
    is never materialised (it was: ``step * h`` zero bytes, 4 GiB for this message)."""
    data = bytes(range(w * CHANNELS[enc]))
    msg = NS(encoding=enc, height=1, width=w, step=step, data=data)
    tracemalloc.start()
    try:
        rgb = convert.image_to_rgb(msg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(rgb, _reference_rgb(msg))
    assert peak < 64 << 10, f"{peak} bytes allocated for a {w}x1 image"


# ------------------------------------------------------------------------ compressed images
def _encoded(kind: str, h: int, w: int, seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png" if kind == "png" else ".jpg", img)
    assert ok
    return buf.tobytes()


@st.composite
def compressed_msgs(draw):
    kind = draw(st.sampled_from(["png", "jpeg", "garbage"]))
    if kind == "garbage":
        data = draw(st.binary(max_size=600))
    else:
        data = _encoded(kind, draw(st.integers(1, 24)), draw(st.integers(1, 24)),
                        draw(st.integers(0, 1000)))
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] if draw(st.booleans()) else data
        if data and draw(st.booleans()):  # flip a byte
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    return NS(format=draw(st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", ""])),
              data=data)


@SETTINGS
@given(compressed_msgs())
def test_compressed_to_rgb_gives_an_rgb_image_or_a_conversion_error(msg):
    try:
        rgb = convert.compressed_to_rgb(msg)
    except ImageConversionError:
        return
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[0] > 0 and rgb.shape[1] > 0


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h RGB pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("w, h", [(100_000, 100_000), (70_000, 70_000), (2**31 - 1, 1)])
def test_a_png_claiming_too_many_pixels_is_a_conversion_error(w, h):
    """OpenCV's pixel limit raised cv2.error out of imdecode, past the front end's
    ``except ImageConversionError`` (the offline runner ended on it)."""
    with pytest.raises(ImageConversionError, match="cannot decode"):
        convert.compressed_to_rgb(NS(format="png", data=_png_header_only(w, h)))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 24), st.integers(1, 24), st.integers(0, 1000))
def test_an_intact_png_decodes_to_its_pixels(h, w, seed):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert np.array_equal(convert.compressed_to_rgb(NS(format="png", data=buf.tobytes())), img)


# ------------------------------------------------------------------------ camera_info
@st.composite
def camera_info_msgs(draw):
    if draw(st.booleans()):
        k = [draw(edge_float) for _ in range(9)]
        p = [draw(edge_float) for _ in range(12)]
    else:  # a plausible K or P with one field possibly spoiled
        fx, fy = draw(st.floats(-10, 1e4)), draw(st.floats(-10, 1e4))
        cx, cy = draw(edge_float), draw(edge_float)
        k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        if draw(st.booleans()):
            k = [0.0] * 9  # only P filled
        if draw(st.booleans()):
            k[draw(st.integers(0, 8))] = draw(edge_float)
    return NS(width=draw(uint32), height=draw(uint32), k=k, p=p)


@SETTINGS
@given(camera_info_msgs())
def test_camera_info_gives_valid_intrinsics_or_a_conversion_error(msg):
    try:
        cam = convert.camera_info_to_pinhole(msg)
    except ImageConversionError:
        return
    assert isinstance(cam, PinholeCamera)
    assert cam.width_px == msg.width > 0 and cam.height_px == msg.height > 0
    assert all(math.isfinite(v) for v in (cam.fx, cam.fy, cam.cx, cam.cy))
    assert cam.fx > 0 and cam.fy > 0
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if np.all(np.isfinite(k)) and k[0, 0] > 0 and k[1, 1] > 0:  # a valid K is the one used
        assert (cam.fx, cam.fy, cam.cx, cam.cy) == (k[0, 0], k[1, 1], k[0, 2], k[1, 2])


# ------------------------------------------------------------------------ poses
quats = st.one_of(
    st.tuples(edge_float, edge_float, edge_float, edge_float),
    st.tuples(st.floats(-1, 1), st.floats(-1, 1), st.floats(-1, 1), st.floats(-1, 1)),
    st.just((0.0, 0.0, 0.0, 0.0)))


def _q(t):
    return NS(x=t[0], y=t[1], z=t[2], w=t[3])


def _p(t):
    return NS(x=t[0], y=t[1], z=t[2])


@SETTINGS
@given(quats, st.tuples(edge_float, edge_float, edge_float))
def test_transform_to_matrix_is_rigid_or_a_value_error(q, t):
    try:
        T = convert.transform_to_matrix(NS(translation=_p(t), rotation=_q(q)))
    except ValueError:
        assert not all(math.isfinite(v) for v in q) or _safe_norm(q) < 1e-9
        return
    assert all(math.isfinite(v) for v in q) and _safe_norm(q) >= 1e-9
    assert T.shape == (4, 4) and T.dtype == np.float64
    assert _finite_rotation(T[:3, :3])
    assert np.array_equal(T[3], [0, 0, 0, 1])
    assert np.array_equal(T[:3, 3], np.asarray(t, np.float64), equal_nan=True)


@SETTINGS
@given(quats, st.tuples(edge_float, edge_float, edge_float))
def test_odometry_to_matrix_never_raises_and_nan_marks_what_is_unusable(q, t):
    msg = NS(pose=NS(pose=NS(position=_p(t), orientation=_q(q))))
    T = convert.odometry_to_matrix(msg)
    assert T.shape == (4, 4) and np.array_equal(T[3], [0, 0, 0, 1])
    assert np.array_equal(T[:3, 3], np.asarray(t, np.float64), equal_nan=True)
    usable = all(math.isfinite(v) for v in q) and _safe_norm(q) >= 1e-9
    if usable:
        assert _finite_rotation(T[:3, :3])
    else:  # a NaN rotation: the front end and the localizer reject it by name
        assert np.all(np.isnan(T[:3, :3]))


@SETTINGS
@given(quats)
def test_yaw_from_quat_is_an_angle_or_a_value_error(q):
    try:
        yaw = convert.yaw_from_quat(_q(q))
    except ValueError:
        assert not all(math.isfinite(v) for v in q) or _safe_norm(q) < 1e-9
        return
    assert math.isfinite(yaw) and -math.pi <= yaw <= math.pi


@SETTINGS
@given(st.floats(-math.pi + 1e-6, math.pi - 1e-6), st.floats(1e-8, 1e300))
def test_yaw_of_a_scaled_quaternion_is_its_yaw(yaw, scale):
    """A non-unit quaternion is normalised; huge components once overflowed the norm to inf."""
    q = (0.0, 0.0, math.sin(yaw / 2) * scale, math.cos(yaw / 2) * scale)
    assert convert.yaw_from_quat(_q(q)) == pytest.approx(yaw, abs=1e-9)


# ------------------------------------------------------------------------ the front end
FRAMES = ["base_link", "/base_link", "camera_optical", "imu_link", "/imu_link", "a", "b", ""]
STAMP0 = 1_000_000_000


def _stamp(ns: int):
    return NS(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _header(ns: int, frame: str = ""):
    return NS(stamp=_stamp(ns), frame_id=frame)


stamps = st.one_of(st.integers(-4, 40).map(lambda k: STAMP0 + k * 50_000_000),
                   st.integers(0, 2**62))
positions = st.one_of(st.tuples(st.floats(-100, 100), st.floats(-100, 100), st.floats(-5, 5)),
                      st.tuples(edge_float, edge_float, edge_float))


@st.composite
def camera_info_events(draw):
    msg = draw(camera_info_msgs()) if draw(st.booleans()) else NS(
        width=16, height=12, k=[10.0, 0, 8.0, 0, 10.0, 6.0, 0, 0, 1.0], p=[0.0] * 12)
    msg.header = _header(draw(stamps), draw(st.sampled_from(FRAMES)))
    return "camera_info", msg


@st.composite
def odometry_events(draw):
    msg = NS(header=_header(draw(stamps), "odom"),
             pose=NS(pose=NS(position=_p(draw(positions)), orientation=_q(draw(quats)))))
    return "odom", msg


@st.composite
def transforms(draw, parents, children):
    return NS(header=_header(draw(stamps), draw(st.sampled_from(parents))),
              child_frame_id=draw(st.sampled_from(children)),
              transform=NS(translation=_p(draw(positions)), rotation=_q(draw(quats))))


@st.composite
def tf_events(draw):
    ts = draw(st.lists(transforms(["odom", "/odom", "map"], ["base_link", "/base_link", "x"]),
                       max_size=3))
    return "tf", NS(transforms=ts)


@st.composite
def tf_static_events(draw):
    return "tf_static", NS(transforms=draw(st.lists(transforms(FRAMES, FRAMES), max_size=4)))


@st.composite
def imu_events(draw):
    cov0 = draw(st.sampled_from([-1.0, 0.0, 0.01, float("nan")]))
    msg = NS(header=_header(draw(stamps), draw(st.sampled_from(FRAMES))),
             orientation=_q(draw(quats)), orientation_covariance=[cov0] + [0.0] * 8)
    return "imu", msg


@st.composite
def gps_events(draw):
    lat = draw(st.one_of(st.floats(-90, 90), edge_float, st.floats(-1000, 1000)))
    lon = draw(st.one_of(st.floats(-180, 180), edge_float, st.floats(-1000, 1000)))
    cov = [draw(edge_float) if draw(st.booleans()) else 4.0 for _ in range(9)]
    msg = NS(header=_header(draw(stamps), "gps"), status=NS(status=draw(st.integers(-2, 2))),
             latitude=lat, longitude=lon, altitude=draw(edge_float), position_covariance=cov,
             position_covariance_type=draw(st.integers(0, 3)))
    return "gps", msg


@st.composite
def image_events(draw):
    if draw(st.integers(0, 3)) == 0:
        msg = draw(compressed_msgs())
    elif draw(st.booleans()):
        msg = draw(image_msgs())
    else:  # a valid image of the camera_info's size above
        data = draw(st.binary(min_size=16 * 12 * 3, max_size=16 * 12 * 3))
        msg = NS(encoding="rgb8", height=12, width=16, step=48, data=data)
    msg.header = _header(draw(stamps), draw(st.sampled_from(FRAMES)))
    return "image", msg


events = st.one_of(camera_info_events(), odometry_events(), tf_events(), tf_static_events(),
                   imu_events(), gps_events(), image_events())

frontend_configs = st.builds(
    FrontendConfig,
    camera_frame=st.sampled_from(["", "camera_optical", "a"]),
    heading_source=st.sampled_from(["auto", "imu", "odom"]),
    imu_tolerance_s=st.sampled_from([0.0, 0.2, 1e9]),
    camera_info_tolerance_s=st.sampled_from([-1.0, 0.0, 0.05, 1e9]),
    odom_max_extrapolation_s=st.sampled_from([0.0, 0.1, 1e9]),
    odom_buffer_s=st.sampled_from([0.1, 10.0]),
    use_tf_static_extrinsics=st.booleans(),
    camera_extrinsics_xyz_rpy=st.sampled_from([(0.0, 0.0, 1.65, 0.0, 0.0, 0.0),
                                               (1.0, -0.5, 2.0, 0.1, -0.2, 3.0)]),
    gps_prior_sigma_m=st.sampled_from([0.0, 3.0]))


def _check_gps(fe: FrameAssembler, msg) -> None:
    out = fe.gps_prior(msg)
    assert out is None or isinstance(out, (GpsPrior, Rejection))
    if msg.status.status < 0:
        assert out is None
    lat, lon = float(msg.latitude), float(msg.longitude)
    valid = math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180
    if isinstance(out, GpsPrior):  # never a prior from an impossible position
        assert valid and (out.lat_deg, out.lon_deg) == (lat, lon)
        assert math.isfinite(out.sigma_m) and out.sigma_m >= 0.0
    elif msg.status.status >= 0:
        assert not valid and isinstance(out, Rejection)


def _check_frame(fe: FrameAssembler, msg) -> None:
    fe.note_image_stamp(convert.stamp_to_ns(msg.header.stamp))
    out = fe.assemble(msg)
    assert isinstance(out, (Frame, Rejection)), out
    if isinstance(out, Rejection):
        assert out.reason and out.message
        return
    assert out.stamp_ns == convert.stamp_to_ns(msg.header.stamp)
    img = out.image_rgb
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
    assert img.shape[2] == 3 and img.shape[0] > 0 and img.shape[1] > 0
    cam = out.camera
    assert isinstance(cam, PinholeCamera) and cam.fx > 0 and cam.fy > 0
    assert np.all(np.isfinite(cam.K)) and cam.width_px > 0 and cam.height_px > 0
    assert out.T_odom_body.shape == (4, 4)  # NaN allowed: the localizer refuses it by name
    assert out.heading_enu_rad is None or (math.isfinite(out.heading_enu_rad)
                                           and abs(out.heading_enu_rad) <= math.pi + 1e-12)
    Tb = out.T_body_cam  # every stored /tf_static transform is finite (a chain of huge
    assert Tb.shape == (4, 4)  # translations may overflow: the localizer refuses that by name)
    if np.all(np.isfinite(Tb)):
        assert _finite_rotation(Tb[:3, :3]) and np.array_equal(Tb[3], [0, 0, 0, 1])


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frontend_configs, st.lists(events, min_size=1, max_size=25))
def test_frame_assembler_never_raises_and_never_builds_a_frame_from_garbage(config, seq):
    """Arbitrary sequences of every input: each input is taken or rejected (a Rejection), each
    image becomes a Frame or a Rejection, never an exception; a Frame has an RGB image,
    valid intrinsics, a finite heading or none and finite extrinsics."""
    fe = FrameAssembler(config)
    for kind, msg in seq:
        if kind == "camera_info":
            r = fe.add_camera_info(msg)
            assert r is None or isinstance(r, Rejection)
        elif kind == "odom":
            r = fe.add_odometry(msg)
            assert r is None or isinstance(r, Rejection)
        elif kind == "tf":
            assert all(isinstance(r, Rejection) for r in fe.add_tf(msg))
        elif kind == "tf_static":
            assert all(isinstance(r, Rejection) for r in fe.add_tf_static(msg))
            for _, T in fe.static_tf.values():
                assert np.all(np.isfinite(T))
        elif kind == "imu":
            r = fe.add_imu(msg)
            assert r is None or isinstance(r, Rejection)
        elif kind == "gps":
            _check_gps(fe, msg)
        else:
            _check_frame(fe, msg)


@SETTINGS
@given(gps_events())
def test_gps_prior_only_from_a_finite_wgs84_position(event):
    _check_gps(FrameAssembler(), event[1])


@SETTINGS
@given(st.lists(tf_static_events(), min_size=1, max_size=4), st.sampled_from(FRAMES))
def test_tf_static_with_nan_or_inf_translation_is_rejected_not_stored(evs, camera_frame):
    """A NaN/Inf translation on /tf_static was stored and made every frame's extrinsics NaN
    (each frame then refused by the localizer, the /tf_static message never named)."""
    fe = FrameAssembler(FrontendConfig(use_tf_static_extrinsics=True))
    for _, msg in evs:
        rejected = {r.message for r in fe.add_tf_static(msg)}
        for t in msg.transforms:
            tr = t.transform.translation
            if not all(math.isfinite(v) for v in (tr.x, tr.y, tr.z)):
                assert any(t.child_frame_id in m for m in rejected)
    T = fe.extrinsics(camera_frame.lstrip("/"))
    assert np.all(np.isfinite(T))
