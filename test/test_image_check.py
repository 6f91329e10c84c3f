"""A covered, blinded or broken camera never becomes a fix (cvl_ros.localizer.image_check)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _bag_drives import frame_image
from _localizer_fakes import CAMERA, T_BODY_CAM, FakeDB, OracleModel, drive_poses, image
from hypothesis import given, settings
from hypothesis import strategies as st

from cvl_ros.camera import invert_pose
from cvl_ros.localizer import Frame, InvalidFrameError, Localizer, LocalizerConfig, Status
from cvl_ros.localizer.image_check import image_problem, image_statistics

torch.set_num_threads(1)

shapes = st.tuples(st.integers(8, 200), st.integers(8, 700))


def _garbage(kind: str, h: int, w: int, a: int, b: int, period: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "constant":
        return np.full((h, w, 3), a, np.uint8)
    if kind == "noise":  # i.i.d. noise about any level, any amplitude (clipped)
        x = a + (b - 128) * rng.standard_normal((h, w, 3))
        return np.clip(x, 0, 255).astype(np.uint8)
    if kind == "uniform_noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    idx = np.arange(w if kind == "vstripes" else h)
    line = np.where((idx // period) % 2 == 0, a, b).astype(np.uint8)
    img = np.broadcast_to(line[None, :] if kind == "vstripes" else line[:, None], (h, w))
    return np.repeat(img[..., None], 3, axis=2).copy()


garbage = st.builds(_garbage, st.sampled_from(["constant", "noise", "uniform_noise", "vstripes",
                                                "hstripes"]),
                    st.integers(8, 200), st.integers(8, 700), st.integers(0, 255),
                    st.integers(0, 255), st.integers(1, 64), st.integers(0, 2**31 - 1))


@settings(max_examples=300, deadline=None)
@given(garbage)
def test_blank_saturated_noise_and_striped_images_are_refused(img):
    assert image_problem(img) is not None, image_statistics(img)


@pytest.mark.parametrize("seed", range(5))
def test_scene_like_images_pass(seed):
    assert image_problem(image(seed)) is None
    assert image_problem(frame_image(seed)) is None
    assert image_problem(image(seed, h=376, w=1241)) is None  # KITTI size


def test_reasons_name_the_failure():
    assert "blank" in image_problem(np.zeros((64, 128, 3), np.uint8))
    assert "blank" in image_problem(np.full((64, 128, 3), 255, np.uint8))
    half = np.zeros((64, 128, 3), np.uint8)
    half[:, ::3] = 255
    assert image_problem(half) is not None
    noise = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    assert "noise" in image_problem(noise)
    stripes = _garbage("vstripes", 64, 128, 40, 200, 8, 0)
    assert "one axis" in image_problem(stripes)


def _run(loc, model, images):
    poses = drive_poses(len(images))
    T0_inv = invert_pose(poses[0])
    out, refused = [], 0
    for i, (Twb, img) in enumerate(zip(poses, images)):
        model.truth_cam_en = (Twb @ T_BODY_CAM)[:2, 3]
        f = Frame(i * 100_000_000, img, CAMERA, T0_inv @ Twb,
                  math.atan2(Twb[1, 0], Twb[0, 0]), T_BODY_CAM)
        try:
            est = loc.add_frame(f)
        except InvalidFrameError as exc:
            assert "uninformative image" in str(exc)
            refused += 1
            continue
        if est is not None:
            out.append(est)
    return out, refused


@pytest.mark.parametrize("kind", ["constant", "uniform_noise", "vstripes", "hstripes"])
def test_garbage_images_never_give_a_fix_even_with_a_matcher_that_would_lock(kind):
    """The oracle matcher answers the true position whatever the image (the worst case: a model
    that is confidently right or confidently wrong on garbage). With the check, no estimate is
    made from garbage; without it, the same run reports TRACKING: the check is what stops it."""
    images = [_garbage(kind, 64, 128, 0 if kind == "constant" else 30, 220, 6, i)
              for i in range(30)]
    db = FakeDB()
    for reject, expect_fix in ((True, False), (False, True)):
        model = OracleModel(db, noise=0.0)
        loc = Localizer(model, db, LocalizerConfig(window_length=2, global_min_travel_m=0.0,
                                                   reject_uninformative_images=reject))
        ests, refused = _run(loc, model, images)
        tracking = [e for e in ests if e.status == Status.TRACKING]
        if expect_fix:
            assert tracking and refused == 0
        else:
            assert refused == 30 and ests == []


@settings(max_examples=25, deadline=None)
@given(st.lists(garbage, min_size=3, max_size=6))
def test_localizer_never_tracks_on_arbitrary_garbage(images):
    images = [np.ascontiguousarray(img[:64, :128]) for img in images]
    images = [img if img.shape == (64, 128, 3) else
              np.resize(img, (64, 128, 3)).astype(np.uint8) for img in images]
    images = [img for img in images if image_problem(img) is not None]
    db = FakeDB()
    model = OracleModel(db, noise=0.0)
    loc = Localizer(model, db, LocalizerConfig(window_length=2, global_min_travel_m=0.0))
    ests, _ = _run(loc, model, images)
    assert not any(e.status == Status.TRACKING for e in ests)
