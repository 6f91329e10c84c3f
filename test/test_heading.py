"""Heading as part of the belief (heading_source: estimate): filter yaw axis, sources, oracle.

References are slow and obvious: a product of Gaussians for an absolute heading, a least-squares
rotation by brute force for the GPS course, an explicitly moved delta for a bin's track, and an
oracle matcher (score maps peaked at the true camera whatever the heading) for the track-
consistency evidence.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _localizer_fakes import CAMERA, T_BODY_CAM, FakeDB, OracleModel, drive_poses, image

from cvl_ros.camera import invert_pose, pose_enu
from cvl_ros.localizer import Frame, GridFilter, Localizer, LocalizerConfig, Status, TileScores
from cvl_ros.localizer.heading import (
    absolute_yaw_likelihood,
    gps_course_offset,
    inflated_imu_sigma,
    max_yaw_sigma,
    wrap,
    yaw_bin_step,
)

torch.set_num_threads(1)
DEG = math.pi / 180.0


# ------------------------------------------------------------------ filter yaw axis
def _delta_filter(bins=5, step=1.0 * DEG):
    f = GridFilter()
    f.set_yaw_axis(0.3, 10.0 * DEG, bins, step)
    f.init_uniform((0.0, 0.0), 101.0, 1.0)
    f.prob = np.zeros_like(f.prob)
    f.joint[:] = 0.0
    c = f.joint.shape[-1] // 2
    f.joint[:, c, c] = 1.0 / bins  # every bin: the body at (0, 0)
    return f


def test_each_yaw_bin_moves_by_the_odometry_rotated_by_its_yaw():
    f = _delta_filter(bins=5, step=2.0 * DEG)
    d = np.array([1.2, 0.0])
    for _ in range(50):  # 60 m east under the centre bin's heading
        f.predict(d, 0.0)
    e, n = f.cell_coords()
    for k, dyaw in enumerate(f.yaw_offsets() - f.yaw_center_rad):
        g = f.joint[k] / f.joint[k].sum()
        pe, pn = (g * e).sum(), (g * n).sum()
        want = 60.0 * np.array([math.cos(dyaw), math.sin(dyaw)])  # slow reference: one rotation
        assert abs(pe - want[0]) <= 0.5 + 1e-9 and abs(pn - want[1]) <= 0.5 + 1e-9, (k, pe, pn)
    assert np.allclose(f.yaw_marginal(), 0.2)  # no yaw evidence: the marginal is unchanged


def test_single_bin_filter_is_the_position_filter():
    a, b = GridFilter(), GridFilter()
    b.set_yaw_axis(0.0, 1.0, 1, 0.0)
    for f in (a, b):
        f.init_gaussian((3.0, -2.0), 4.0, 60.0, 1.0)
        f.predict((1.5, 0.5), 0.7)
        sm = np.zeros((5, 5))
        sm[1, 3] = 1.0
        f.update([TileScores(np.array([4.0, -1.0]), sm, 3.0)], 0.2, None, 0.05)
    assert np.array_equal(a.prob, b.prob)
    assert b.yaw_stats() == (0.0, 0.0)


def test_position_evidence_selects_the_yaw_whose_track_agrees():
    # odometry says "1.2 m east" per step; the truth drives at +3 deg: only the +3 deg bin's
    # track stays under the (oracle) position likelihood
    f = GridFilter()
    f.set_yaw_axis(0.0, 3.0 * DEG, 7, 1.0 * DEG)
    f.init_gaussian((0.0, 0.0), 1.0, 120.0, 1.0)
    true_yaw = 3.0 * DEG
    truth = np.zeros(2)
    for _ in range(60):
        f.predict((1.2, 0.0), 0.3)
        truth += 1.2 * np.array([math.cos(true_yaw), math.sin(true_yaw)])
        e, n = f.cell_coords()
        lik = np.exp(-0.5 * ((e - truth[0]) ** 2 + (n - truth[1]) ** 2) / 1.5**2)
        f.joint *= lik[None]
        f._normalise()
    mean, var = f.yaw_stats()
    assert abs(mean - true_yaw) < 0.5 * DEG, math.degrees(mean)
    assert abs(mean - true_yaw) < 3.0 * math.sqrt(var)


def test_absolute_heading_is_a_product_of_gaussians():
    f = GridFilter()
    f.set_yaw_axis(0.0, 2.0 * DEG, 801, 0.025 * DEG)  # fine bins over +-10 deg: Gaussian algebra
    lik = absolute_yaw_likelihood(f.yaw_offsets(), 1.0 * DEG, 1.5 * DEG, 0.0)
    f.update_yaw(lik)
    mean, var = f.yaw_stats()
    var_want = 1.0 / (1.0 / (2.0 * DEG) ** 2 + 1.0 / (1.5 * DEG) ** 2)
    mean_want = var_want * (1.0 * DEG / (1.5 * DEG) ** 2)
    assert abs(mean - mean_want) < 1e-3 * DEG
    assert abs(var - var_want) / var_want < 0.01


def test_a_wrong_absolute_heading_cannot_erase_the_belief():
    lik = absolute_yaw_likelihood(np.array([0.0]), math.pi / 2, 2.0 * DEG, 0.05)
    assert lik[0] >= 0.05  # the floor bounds what one reading takes away
    assert abs(float(wrap(3 * math.pi / 2)) + math.pi / 2) < 1e-12


def test_time_correlated_imu_readings_count_once_per_correlation_time():
    s = 2.0 * DEG
    assert inflated_imu_sigma(s, None, 20.0) == s
    assert inflated_imu_sigma(s, 30.0, 20.0) == s
    eff = inflated_imu_sigma(s, 0.1, 20.0)
    # 200 readings 0.1 s apart carry the information of one reading
    assert abs(1.0 / (200 / eff**2) - s**2) / s**2 < 1e-9
    assert inflated_imu_sigma(s, 0.1, 0.0) == s


def test_recentring_follows_the_mean_and_resizes_the_bins():
    f = GridFilter()
    f.set_yaw_axis(0.0, 1.0 * DEG, 15, 0.25 * DEG)
    f.init_uniform((0.0, 0.0), 21.0, 1.0)
    f.update_yaw(absolute_yaw_likelihood(f.yaw_offsets(), 1.5 * DEG, 0.5 * DEG, 0.0))
    mean0, _ = f.yaw_stats()
    for _ in range(5):
        f.recenter_yaw(0.25 * DEG, 2.0 * DEG)
    mean1, var1 = f.yaw_stats()
    assert abs(f.yaw_center_rad - mean1) <= f.yaw_step_rad
    assert abs(mean1 - mean0) < 0.3 * DEG
    f2 = GridFilter()
    f2.set_yaw_axis(0.0, 0.3 * DEG, 15, 0.25 * DEG)
    f2.init_uniform((0.0, 0.0), 21.0, 1.0)
    f2.predict((0.0, 0.0), 0.0, 3.0 * DEG)  # the belief widens: the bins must span it
    f2.recenter_yaw(0.25 * DEG, 2.0 * DEG)
    assert f2.yaw_step_rad == pytest.approx(0.5 * DEG)


def test_bin_spacing_and_capacity():
    assert yaw_bin_step(1.0 * DEG, 15, 0.25 * DEG, 2.0 * DEG) == pytest.approx(3.0 / 7.0 * DEG)
    assert yaw_bin_step(0.01 * DEG, 15, 0.25 * DEG, 2.0 * DEG) == pytest.approx(0.25 * DEG)
    assert yaw_bin_step(50 * DEG, 15, 0.25 * DEG, 2.0 * DEG) == pytest.approx(2.0 * DEG)
    assert max_yaw_sigma(15, 2.0 * DEG) == pytest.approx(7 * 2.0 / 3.0 * DEG)


# ------------------------------------------------------------------ GPS course
def _brute_force_rotation(p, o):
    best, arg = np.inf, 0.0
    for a in np.linspace(-math.pi, math.pi, 72001):
        c, s = math.cos(a), math.sin(a)
        r = (o - o.mean(0)) @ np.array([[c, s], [-s, c]]) - (p - p.mean(0))
        cost = float((r**2).sum())
        if cost < best:
            best, arg = cost, a
    return arg


def test_gps_course_is_the_least_squares_rotation_of_the_track():
    rng = np.random.default_rng(3)
    s = np.linspace(0.0, 80.0, 40)
    odom = np.stack([s, 0.002 * s**2], axis=1)  # a gentle curve in the odometry frame
    theta = 0.7
    R = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    gps = odom @ R.T + (100.0, -20.0) + rng.normal(0.0, 1.0, odom.shape)
    offset, sigma = gps_course_offset(gps, odom, np.full(40, 1.0), 60.0)
    assert abs(offset - _brute_force_rotation(gps, odom)) < 2e-4
    assert abs(offset - theta) < 3.0 * sigma
    assert sigma == pytest.approx(math.sqrt(2.0) / np.hypot(*(odom[-1] - odom[0])))
    assert gps_course_offset(gps[:10], odom[:10], np.ones(10), 60.0) is None  # short baseline


# ------------------------------------------------------------------ localizer, oracle matcher
def _drive(loc, model, Twb, imu_yaw=None, dt_ns=100_000_000):
    """Odometry starts at identity (odom frame = the first pose); ``imu_yaw`` (per frame) or
    None for no absolute heading."""
    T0_inv = invert_pose(Twb[0])
    out = []
    for i, T in enumerate(Twb):
        model.truth_cam_en = (T @ T_BODY_CAM)[:2, 3]
        h = None if imu_yaw is None else float(imu_yaw[i])
        out.append(loc.add_frame(Frame(i * dt_ns, image(i), CAMERA, T0_inv @ T, h, T_BODY_CAM)))
    return out


def _config(**kw):
    return LocalizerConfig(window_length=2, estimate_heading=True, **kw)


def test_no_heading_source_gives_no_fix():
    db = FakeDB()
    model = OracleModel(db)
    loc = Localizer(model, db, _config())
    ests = [e for e in _drive(loc, model, drive_poses(20, 1.5, (0.0, 0.0), 0.2)) if e]
    assert ests and all(e.status == Status.INITIALIZING and not e.has_fix for e in ests)
    assert model.encode_calls == len(ests)  # each keyframe encoded once, in the window once
    assert [e.window_len for e in ests[:3]] == [1, 2, 2]
    assert all(e.yaw_var_rad2 == pytest.approx(math.pi**2) for e in ests)
    assert not loc.heading_known


@pytest.mark.parametrize("error_deg", [-4.0, 4.0])
def test_wrong_initial_yaw_is_corrected_by_track_consistency(error_deg):
    # rotated oracle: the matcher sees the true camera whatever the heading, so the heading
    # can only be learnt from how the odometry track agrees with the matches
    db = FakeDB()
    model = OracleModel(db, sigma_m=2.0)
    # this odometry does not drift: its random walk set small (the default is for 1 deg/100 m
    # of deterministic drift)
    loc = Localizer(model, db, _config(yaw_drift_deg_per_100m=1.0))
    yaw = 0.1
    Twb = drive_poses(110, 1.5, (-40.0, -15.0), yaw)
    T0_inv = invert_pose(Twb[0])
    model.truth_cam_en = (Twb[0] @ T_BODY_CAM)[:2, 3]
    loc.add_frame(Frame(0, image(0), CAMERA, T0_inv @ Twb[0], None, T_BODY_CAM))
    loc.set_initial_pose(Twb[0][0, 3], Twb[0][1, 3], yaw + error_deg * DEG, 3.0)
    ests = [e for e in _drive(loc, model, Twb[1:]) if e]
    last = ests[-1]
    err = float(wrap(last.yaw_rad - yaw))
    assert abs(err) < 1.0 * DEG, math.degrees(err)
    assert abs(err) < 3.0 * math.sqrt(last.yaw_var_rad2)
    assert last.yaw_var_rad2 < (2.0 * DEG) ** 2
    assert last.status == Status.TRACKING
    assert np.hypot(last.east_m - Twb[-1][0, 3], last.north_m - Twb[-1][1, 3]) < 2.0
    # this odometry does not drift: correcting the initial error is not read as drift
    assert abs(loc.yaw_drift_rate_deg_per_100m) < 0.5


def test_imu_heading_starts_the_belief_and_is_a_measurement():
    db = FakeDB()
    model = OracleModel(db)
    loc = Localizer(model, db, _config(imu_yaw_sigma_deg=2.0))
    yaw = -0.2
    Twb = drive_poses(30, 1.5, (0.0, 10.0), yaw)
    bias = 1.0 * DEG
    ests = [e for e in _drive(loc, model, Twb, imu_yaw=np.full(len(Twb), yaw + bias)) if e]
    assert loc.heading_known
    assert ests[0].yaw_var_rad2 < (2.5 * DEG) ** 2
    assert loc.abs_yaw_inconsistent == 0
    # a reading far from the belief is counted, and moves the belief only a little
    mean_before, _ = loc.yaw_offset_belief
    T0_inv = invert_pose(Twb[0])
    T = pose_enu(Twb[-1][0, 3] + 1.5, Twb[-1][1, 3], 0.0, yaw)
    model.truth_cam_en = (T @ T_BODY_CAM)[:2, 3]
    loc.add_frame(Frame(31 * 100_000_000, image(31), CAMERA, T0_inv @ T, yaw + 0.5,
                        T_BODY_CAM))
    assert loc.abs_yaw_inconsistent == 1
    assert abs(loc.yaw_offset_belief[0] - mean_before) < 0.5 * DEG


def test_gps_course_starts_heading_and_position():
    db = FakeDB()
    model = OracleModel(db)
    loc = Localizer(model, db, _config(gps_course_baseline_m=30.0))
    yaw = 0.25
    Twb = drive_poses(40, 1.5, (-40.0, -20.0), yaw)
    T0_inv = invert_pose(Twb[0])
    used = []
    for i, T in enumerate(Twb):
        model.truth_cam_en = (T @ T_BODY_CAM)[:2, 3]
        loc.add_frame(Frame(i * 100_000_000, image(i), CAMERA, T0_inv @ T, None, T_BODY_CAM))
        lat, lon = loc.map_to_latlon(T[0, 3], T[1, 3])
        used.append(loc.set_gps_prior(lat, lon, 1.0, T0_inv @ T))
    first = used.index(True)
    assert 1.5 * first >= 30.0 - 1.5 and not any(used[first + 1:])  # after the baseline, once
    assert loc.heading_known
    mean, var = loc.yaw_offset_belief
    assert abs(float(wrap(mean - yaw))) < 3.0 * math.sqrt(var)
    assert math.sqrt(var) < 5.0 * DEG
    assert loc.filter.initialized


def test_a_parked_vehicle_keeps_a_bounded_gps_track():
    from cvl_ros.localizer.localizer import GPS_COURSE_MAX_FIXES

    db = FakeDB()
    model = OracleModel(db)
    loc = Localizer(model, db, _config())
    T = drive_poses(1, 1.5, (0.0, 0.0), 0.0)[0]
    model.truth_cam_en = (T @ T_BODY_CAM)[:2, 3]
    loc.add_frame(Frame(0, image(0), CAMERA, np.eye(4), None, T_BODY_CAM))
    lat, lon = loc.map_to_latlon(0.0, 0.0)
    for _ in range(GPS_COURSE_MAX_FIXES + 50):
        assert not loc.set_gps_prior(lat, lon, 1.0, np.eye(4))  # no baseline: no heading
    assert len(loc._gps_track) == GPS_COURSE_MAX_FIXES and not loc.heading_known
