"""Property tests at the core's entrance (issue 13, item 6): ``Localizer.add_frame``.

Arbitrary frames (NaN/Inf/non-rotation odometry, wrong shapes and dtypes, stamps going
backwards, huge jumps, garbage images, broken intrinsics/extrinsics/headings) give an Estimate,
None or InvalidFrameError, never another exception; a refused frame leaves the state as it
was; an Estimate's numbers are finite where it claims a fix. Sequences whose images are all
uninformative (noise, black, saturated, stripes) never give an estimate at all, whatever else
the frames carry (``test_image_check.py`` covers the images themselves on a clean drive).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from _localizer_fakes import CAMERA, T_BODY_CAM, FakeDB, OracleModel, image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvl_ros.camera import PinholeCamera, pose_enu
from cvl_ros.localizer import Estimate, Frame, InvalidFrameError, Localizer, LocalizerConfig, Status

torch.set_num_threads(1)

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
H, W = CAMERA.height_px, CAMERA.width_px
NAN, INF = float("nan"), float("inf")

edge_float = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 1e6, -1e6, 1e300, -1e300, 1.7e308,
                                        NAN, INF, -INF]),
                       st.floats(allow_nan=True, allow_infinity=True))


# ------------------------------------------------------------------------ images
def _garbage(kind: str, seed: int, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "black":
        return np.zeros((h, w, 3), np.uint8)
    if kind == "saturated":
        return np.full((h, w, 3), 255, np.uint8)
    if kind == "constant":
        return np.full((h, w, 3), int(rng.integers(0, 256)), np.uint8)
    if kind == "noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == "gauss_noise":
        return np.clip(128 + 60 * rng.standard_normal((h, w, 3)), 0, 255).astype(np.uint8)
    if kind == "half_saturated":  # white / black columns
        img = np.zeros((h, w, 3), np.uint8)
        img[:, ::2] = 255
        return img
    if kind == "stripes":
        line = np.where((np.arange(w) // 4) % 2 == 0, 30, 220).astype(np.uint8)
        return np.repeat(np.broadcast_to(line[None, :], (h, w))[..., None], 3, axis=2).copy()
    raise AssertionError(kind)


GARBAGE = ["black", "saturated", "constant", "noise", "gauss_noise", "half_saturated", "stripes"]
garbage_images = st.builds(_garbage, st.sampled_from(GARBAGE), st.integers(0, 2**31 - 1))


def _bad_image(kind: str, seed: int):
    good = image(seed)
    return {"gray": good[..., 0].copy(), "rgba": np.concatenate([good, good[..., :1]], 2),
            "float": good.astype(np.float32), "uint16": good.astype(np.uint16),
            "tiny": good[:4, :4].copy(), "list": good.tolist()[:2], "none": None,
            "other_size": image(seed, h=48, w=96), "empty": np.zeros((0, W, 3), np.uint8),
            "noncontiguous": good[:, ::-1]}[kind]


images = st.one_of(
    st.integers(0, 50).map(image),  # scene-like: passes the image check
    garbage_images,
    st.builds(_bad_image, st.sampled_from(["gray", "rgba", "float", "uint16", "tiny", "list",
                                           "none", "other_size", "empty", "noncontiguous"]),
              st.integers(0, 50)))

# ------------------------------------------------------------------------ the other fields
cameras = st.one_of(
    st.just(CAMERA), st.just(CAMERA), st.none(),
    st.builds(PinholeCamera, edge_float, edge_float, edge_float, edge_float,
              st.sampled_from([W, 96, 0, -1]), st.sampled_from([H, 48, 0])))


@st.composite
def odometry(draw):
    kind = draw(st.sampled_from(["pose", "pose", "pose", "huge", "nan", "scaled", "random",
                                 "shape", "reflection"]))
    x, y = draw(st.floats(-200, 200)), draw(st.floats(-200, 200))
    T = pose_enu(x, y, draw(st.floats(-2, 2)), draw(st.floats(-4, 4)))
    if kind == "huge":
        T[:3, 3] = [draw(edge_float.filter(math.isfinite)) for _ in range(3)]
    elif kind == "nan":
        T[draw(st.integers(0, 3)), draw(st.integers(0, 3))] = draw(st.sampled_from([NAN, INF]))
    elif kind == "scaled":
        T[:3, :3] *= draw(st.sampled_from([0.0, 0.5, 2.0, -1.0]))
    elif kind == "random":
        T = np.random.default_rng(draw(st.integers(0, 1000))).normal(size=(4, 4))
    elif kind == "shape":
        T = draw(st.sampled_from([np.eye(3), np.eye(4)[None], np.zeros((4, 5))]))
    elif kind == "reflection":
        T[:3, 2] *= -1.0
    return T


body_cams = st.one_of(st.none(), st.just(T_BODY_CAM), st.just(T_BODY_CAM),
                      st.just(np.full((4, 4), NAN)), st.just(np.eye(3)),
                      st.builds(lambda t: pose_enu(t, 0.0, 1.6, 0.0),
                                edge_float.filter(math.isfinite)))
headings = st.one_of(st.none(), st.floats(-4, 4), edge_float)


@st.composite
def stamp_sequences(draw, n):
    """n stamps: 0.1 s steps, repeats, going backwards, huge jumps either way."""
    t = draw(st.integers(0, 10**12))
    out = []
    for _ in range(n):
        t += draw(st.one_of(st.just(100_000_000), st.just(100_000_000), st.just(0),
                            st.integers(-10**10, 10**10), st.sampled_from([10**18, -10**18])))
        out.append(t)
    return out


@st.composite
def frame_sequences(draw, image_strategy=images, field_strategies=True):
    n = draw(st.integers(2, 10))
    stamps = draw(stamp_sequences(n))
    out = []
    for i, stamp in enumerate(stamps):
        if field_strategies:
            out.append(Frame(stamp, draw(image_strategy), draw(cameras), draw(odometry()),
                             draw(headings), draw(body_cams)))
        else:  # valid intrinsics and odometry (a straight drive), arbitrary image
            out.append(Frame(stamp, draw(image_strategy), CAMERA,
                             pose_enu(1.5 * i, 0.0, 0.0, 0.0), draw(headings), T_BODY_CAM))
    return out


def _localizer(**kw) -> Localizer:
    db = FakeDB()
    cfg = dict(window_length=2, global_min_travel_m=0.0, min_updates_to_track=1)
    cfg.update(kw)
    return Localizer(OracleModel(db, noise=0.0), db, LocalizerConfig(**cfg))


def _snapshot(loc: Localizer):
    prob = loc.filter.prob
    return (loc.window_fill, loc._last_stamp_ns, loc._mode,
            None if prob is None else prob.copy(), loc.filter.center_en.copy())


def _same(a, b) -> bool:
    return (a[:3] == b[:3] and np.array_equal(a[4], b[4])
            and ((a[3] is None and b[3] is None)
                 or (a[3] is not None and b[3] is not None and np.array_equal(a[3], b[3]))))


def _check_estimate(est: Estimate) -> None:
    assert isinstance(est.status, Status)
    assert 0.0 <= est.confidence <= 1.0 + 1e-9
    cov = np.asarray(est.covariance_xy)
    assert cov.shape == (2, 2)
    if est.has_fix:  # a fix is a finite position with a finite, positive covariance
        assert all(math.isfinite(v) for v in (est.lat_deg, est.lon_deg, est.east_m,
                                              est.north_m, est.yaw_rad))
        assert abs(est.lat_deg) <= 90 and abs(est.lon_deg) <= 180
        assert np.all(np.isfinite(cov)) and np.all(np.linalg.eigvalsh(cov) > 0)
        assert est.T_map_body is not None and np.all(np.isfinite(est.T_map_body))


@SETTINGS
@given(frame_sequences())
def test_add_frame_gives_an_estimate_or_invalid_frame_error_for_arbitrary_frames(frames):
    loc = _localizer()
    for f in frames:
        before = _snapshot(loc)
        try:
            est = loc.add_frame(f)
        except InvalidFrameError as exc:
            assert str(exc)
            assert _same(_snapshot(loc), before), "a refused frame changed the state"
            continue
        assert est is None or isinstance(est, Estimate)
        if est is not None:
            assert est.stamp_ns == int(f.stamp_ns)
            _check_estimate(est)


@SETTINGS
@given(frame_sequences(image_strategy=garbage_images, field_strategies=False))
def test_uninformative_images_never_give_an_estimate_in_any_sequence(frames):
    """Noise, black, saturated and striped images with valid camera_info and odometry, stamps
    going backwards or jumping, any heading: every frame is refused by name, so nothing (a
    fortiori no TRACKING) is ever reported from them."""
    loc = _localizer()
    for f in frames:
        try:
            est = loc.add_frame(f)
        except InvalidFrameError as exc:
            assert "uninformative image" in str(exc) or "heading" in str(exc)
            continue
        raise AssertionError(f"an estimate from a garbage image: {est}")


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.booleans(), garbage_images, st.integers(0, 50)), min_size=4,
                max_size=12),
       stamp_sequences(12))
def test_garbage_frames_within_a_good_drive_never_track_on_their_own(items, stamps):
    """Good and garbage images interleaved on one drive: a frame with a garbage image is always
    refused, and the estimates of the good ones stay well formed (the garbage ones neither
    crash the belief nor reach it)."""
    loc = _localizer()
    for i, (good, junk, seed) in enumerate(items):
        f = Frame(stamps[i], image(seed) if good else junk, CAMERA,
                  pose_enu(1.5 * i, 0.0, 0.0, 0.0), 0.0, T_BODY_CAM)
        try:
            est = loc.add_frame(f)
        except InvalidFrameError as exc:
            assert not good and "uninformative image" in str(exc)
            continue
        assert good, "a garbage frame was accepted"
        if est is not None:
            _check_estimate(est)
