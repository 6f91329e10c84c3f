"""Odometry scale estimate: a similarity fit of the tracked path, a fixed point to the truth."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvl_ros.localizer.odom_scale import OdometryScaleEstimator


def _path(n: int, step_m: float = 1.0, turn_rad_per_m: float = 0.004) -> np.ndarray:
    """A gently curving true path (n points, step_m apart)."""
    yaw = np.cumsum(np.full(n, turn_rad_per_m * step_m))
    steps = step_m * np.stack([np.cos(yaw), np.sin(yaw)], 1)
    return np.cumsum(steps, 0)


def _track(true_scale: float, gain: float, n: int = 1500, noise_m: float = 0.0, seed: int = 0,
           est: OdometryScaleEstimator | None = None):
    """A 1-step tracker: predict with the odometry x the scale in use, then move a fraction
    ``gain`` of the way to the (noisy) truth, as a filter's update pulls towards the matches.
    Odometry is the true path / true_scale (true distance = scale x odometry distance)."""
    rng = np.random.default_rng(seed)
    truth = _path(n)
    odom = truth / true_scale  # same shape, lengths off by the scale
    est = est or OdometryScaleEstimator(300.0, 0.1)
    pos = truth[0].copy()
    scales = []
    for i in range(1, n):
        pos = pos + est.scale * (odom[i] - odom[i - 1])
        meas = truth[i] + rng.normal(0.0, noise_m, 2)
        pos = pos + gain * (meas - pos)
        est.add(odom[i], pos)
        scales.append(est.scale)
    return np.asarray(scales), est


def test_exact_fixes_give_the_true_scale_after_one_baseline():
    scales, est = _track(1 / 1.02, gain=1.0)
    assert est.updates > 0
    assert scales[-1] == pytest.approx(1 / 1.02, rel=1e-6)
    assert np.all(scales[:250] == 1.0)  # nothing before the path spans the baseline


@pytest.mark.parametrize("true_scale", [1 / 1.02, 1.03, 0.95])
@pytest.mark.parametrize("gain,max_overshoot", [(0.02, 0.25), (0.05, 0.12), (0.2, 0.03),
                                                (0.6, 0.01)])
def test_fixed_point_converges_with_a_bounded_overshoot(true_scale, gain, max_overshoot):
    """The tracked path lies between the odometry's prediction and the truth, so the scale
    moves towards the truth; while the filter's lag unwinds it passes it by at most a small
    share of the initial error (the less the filter follows the matches, the more)."""
    scales, _ = _track(true_scale, gain)
    side = math.copysign(1.0, 1.0 - true_scale)
    err = side * (scales - true_scale) / abs(1.0 - true_scale)  # 1 = the initial error
    assert err.max() <= 1.0 + 1e-9  # never farther from the truth than odometry as it is
    assert -err.min() <= max_overshoot
    assert abs(err[-1]) < 0.01  # converged after 1.5 km


def test_noisy_fixes_are_not_lengthened():
    """Fixes with 1.5 m independent noise (the matcher's median error): the fit averages the
    noise (a sum of 1 m steps would double the path); within 0.3 % of the truth."""
    errs = []
    for seed in range(5):
        scales, _ = _track(1 / 1.02, gain=1.0, noise_m=1.5, seed=seed, n=1200)
        errs.append(scales[-1] - 1 / 1.02)
    assert max(abs(e) for e in errs) < 0.003


def test_bounds_break_and_reset():
    est = OdometryScaleEstimator(100.0, 0.05)
    truth = _path(400)
    for i in range(400):
        est.add(truth[i] / 1.5, truth[i])  # a 50 % scale error: clamped
    assert est.scale == pytest.approx(1.05)
    est.break_track()
    assert est.scale == pytest.approx(1.05)
    est.add((0.0, 0.0), (5.0, 5.0))
    est.add((float("nan"), 0.0), (5.0, 5.0))  # ignored
    assert est.scale == pytest.approx(1.05)
    est.reset()
    assert est.scale == 1.0 and est.updates == 0
    with pytest.raises(ValueError):
        OdometryScaleEstimator(0.0, 0.1)
    with pytest.raises(ValueError):
        OdometryScaleEstimator(100.0, 1.0)


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(0.9, 1.1), start=st.floats(-1e5, 1e5), yaw=st.floats(-math.pi, math.pi))
def test_ratio_is_invariant_to_where_and_which_way(scale, start, yaw):
    """The map frame's origin and rotation (odometry and map frames differ by both) do not
    change the estimate."""
    truth = _path(400)
    c, s = math.cos(yaw), math.sin(yaw)
    R = np.array([[c, -s], [s, c]])
    est = OdometryScaleEstimator(300.0, 0.1)
    for p in truth:
        est.add(p / scale, R @ p + start)
    assert est.scale == pytest.approx(min(max(scale, 0.9), 1.1), rel=1e-6)


def _oracle_run(odom_scale_max_error: float, odom_long: float = 1.05):
    """An oracle localizer (score maps peaked at the true camera) on a 345 m straight drive
    whose odometry reports every step ``odom_long`` times too long, heading given."""
    from _localizer_fakes import CAMERA, T_BODY_CAM, FakeDB, OracleModel, drive_poses, image

    from cvl_ros.camera import invert_pose
    from cvl_ros.localizer import Frame, Localizer, LocalizerConfig

    db = FakeDB(east=(-50, 310))
    model = OracleModel(db, sigma_m=3.0, noise=0.05)
    loc = Localizer(model, db, LocalizerConfig(
        window_length=2, estimate_heading=False, odom_scale_max_error=odom_scale_max_error,
        odom_scale_baseline_m=60.0))
    Twb = drive_poses(231, 1.5, (-45.0, 0.0), 0.0)
    T0_inv = invert_pose(Twb[0])
    along = []
    for i, T in enumerate(Twb):
        model.truth_cam_en = (T @ T_BODY_CAM)[:2, 3]
        T_odom = T0_inv @ T
        T_odom[:3, 3] *= odom_long
        est = loc.add_frame(Frame(i * 100_000_000, image(i), CAMERA, T_odom, 0.0, T_BODY_CAM))
        if i == 0:
            loc.set_initial_pose(T[0, 3], T[1, 3], None, 2.0)
        if est is not None and est.has_fix and i > 150:
            along.append(est.east_m - T[0, 3])  # the drive heads east
    return loc, float(np.mean(along))


def test_localizer_learns_the_odometry_scale_and_loses_the_along_track_bias():
    """5 % too long odometry puts the belief ahead of the car; estimating the scale from the
    tracked path removes most of that bias (measured: the comparison run without it)."""
    off, bias_off = _oracle_run(0.0)
    on, bias_on = _oracle_run(0.1)
    assert off.odom_scale == 1.0
    assert on.odom_scale == pytest.approx(1 / 1.05, abs=0.01)
    assert bias_off > 0.3  # ahead of the car
    assert abs(bias_on) < 0.5 * bias_off


def _scalar_belief_with_drift(z, ds, q, r_meas, p0, rate_sigma, max_rate=1.0):
    """A scalar Kalman heading belief (random walk ``q`` per metre, measurements ``z`` of
    variance ``r_meas``) predicted with the estimator's rate and shifted as it says: the
    localizer's use of :class:`YawDriftEstimator` in the linear-Gaussian case."""
    from cvl_ros.localizer.odom_scale import YawDriftEstimator

    est = YawDriftEstimator(rate_sigma, max_rate)
    theta, p, out = 0.0, p0, []
    for zk, dk in zip(z, ds):
        theta += est.rate * dk
        est.predict(dk)
        p += q * dk
        k = p / (p + r_meas)
        prior, p_prior = theta, p
        theta += k * (zk - theta)
        p *= 1.0 - k
        theta += est.update(theta - prior, p_prior, p)
        out.append((theta, est.rate))
    return np.asarray(out), est


def _augmented_kalman(z, ds, q, r_meas, p0, rate_sigma):
    """The slow obvious reference: one Kalman filter over (heading, rate)."""
    x = np.zeros(2)
    P = np.diag([p0, rate_sigma**2])
    out = []
    for zk, dk in zip(z, ds):
        F = np.array([[1.0, dk], [0.0, 1.0]])
        x = F @ x
        P = F @ P @ F.T + np.diag([q * dk, 0.0])
        S = P[0, 0] + r_meas
        K = P[:, 0] / S
        x = x + K * (zk - x[0])
        P = P - np.outer(K, P[0])
        out.append(x.copy())
    return np.asarray(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_yaw_drift_estimate_equals_the_augmented_kalman_filter(seed):
    """Separate-bias estimation (Friedland): the scalar belief + the drift estimator give the
    heading and rate of one Kalman filter over both, to round-off, for a drifting odometry with
    noisy heading evidence, an initial error and uneven steps."""
    rng = np.random.default_rng(seed)
    n = 400
    ds = rng.uniform(0.5, 2.0, n)
    true_rate = math.radians(rng.uniform(-2.0, 2.0)) / 100.0
    truth = 0.05 + true_rate * np.cumsum(ds)  # the offset ramps, 0.05 rad start error
    r_meas = math.radians(2.0) ** 2
    z = truth + rng.normal(0.0, math.sqrt(r_meas), n)
    args = (z, ds, math.radians(0.3) ** 2 / 100.0, r_meas, math.radians(5.0) ** 2,
            math.radians(1.0) / 100.0)
    ours, est = _scalar_belief_with_drift(*args)
    ref = _augmented_kalman(*args)
    np.testing.assert_allclose(ours[:, 0], ref[:, 0], atol=1e-10)
    np.testing.assert_allclose(ours[:, 1], ref[:, 1], atol=1e-12)
    assert est.updates == n  # every update had a sensitivity (each follows a step)
    # and it learns: the rate ends near the truth, the heading error is small
    assert abs(ours[-1, 1] - true_rate) < math.radians(0.5) / 100.0
    assert abs(ours[-1, 0] - truth[-1]) < math.radians(1.0)


def test_an_initial_heading_error_is_not_read_as_drift():
    """A 4 deg initial error corrected by the evidence, odometry without drift: the rate stays
    small, because the sensitivity to the rate is near zero while the error is being corrected;
    the integral of the corrections would have read it as 4 deg over the correcting distance."""
    rng = np.random.default_rng(5)
    n = 200
    ds = np.full(n, 1.5)
    r_meas = math.radians(1.0) ** 2
    z = math.radians(4.0) + rng.normal(0.0, math.sqrt(r_meas), n)
    ours, _ = _scalar_belief_with_drift(z, ds, math.radians(0.3) ** 2 / 100.0, r_meas,
                                        math.radians(5.0) ** 2, math.radians(1.0) / 100.0)
    assert abs(math.degrees(ours[-1, 1]) * 100.0) < 0.25  # deg per 100 m
    assert abs(math.degrees(ours[-1, 0]) - 4.0) < 0.5


def test_yaw_drift_bounds_break_and_bad_input():
    from cvl_ros.localizer.odom_scale import YawDriftEstimator

    est = YawDriftEstimator(1e-2, math.radians(2.0) / 100.0)
    for _ in range(50):  # a huge steady correction: the rate is clamped
        est.predict(1.0)
        est.update(0.05, 1e-4, 0.5e-4)
    assert est.rate == pytest.approx(math.radians(2.0) / 100.0)
    rate, var = est.rate, est.rate_var
    est.break_track()  # the belief's link to the rate is gone: the next update cannot move it
    assert est.sensitivity == 0.0
    assert est.update(0.05, 1e-4, 0.5e-4) == 0.0 and est.rate == rate and est.rate_var == var
    est.predict(1.0)
    assert est.update(0.05, 1e-4, 1e-4) == 0.0 and est.rate == rate  # no information (K = 0)
    for bad in ((float("nan"), 1e-4, 1e-5), (0.01, 0.0, 0.0), (0.01, float("inf"), 1e-5)):
        assert est.update(*bad) == 0.0 and est.rate == rate
    est.predict(float("nan"))
    est.predict(-1.0)
    assert est.sensitivity == 1.0
    est.reset()
    assert (est.rate, est.updates, est.sensitivity) == (0.0, 0, 0.0)
    assert est.rate_var == pytest.approx(1e-4)
    with pytest.raises(ValueError):
        YawDriftEstimator(0.0, 1e-4)
    with pytest.raises(ValueError):
        YawDriftEstimator(1e-4, -1.0)


def test_shift_yaw_moves_every_bin_and_keeps_the_position_beliefs():
    from cvl_ros.localizer import GridFilter

    f = GridFilter()
    f.init_gaussian((0.0, 0.0), 3.0, 40.0, 1.0)
    f.set_yaw_axis(0.2, math.radians(2.0), 5, math.radians(1.0))
    joint = f.joint.copy()
    offsets = f.yaw_offsets()
    f.shift_yaw(0.01)
    np.testing.assert_allclose(f.yaw_offsets(), offsets + 0.01)
    np.testing.assert_array_equal(f.joint, joint)
    assert f.yaw_stats()[0] == pytest.approx(float((f.yaw_marginal() * offsets).sum()) + 0.01)


def _oracle_heading_run(drift_max_deg: float, yaw_drift_deg_per_100m: float = 6.0,
                        imu: bool = False):
    """An oracle localizer estimating the heading (no IMU unless ``imu``: the true heading in
    every frame; an initial pose with the true yaw) on a 345 m straight drive whose odometry
    heading drifts steadily; returns the localizer and the mean |yaw error| over the last
    100 m."""
    from _localizer_fakes import CAMERA, T_BODY_CAM, FakeDB, OracleModel, drive_poses, image

    from cvl_ros.localizer import Frame, Localizer, LocalizerConfig
    from cvl_ros.synth.odometry import simulate_odometry

    db = FakeDB(east=(-50, 310))
    model = OracleModel(db, sigma_m=2.0, noise=0.02)
    loc = Localizer(model, db, LocalizerConfig(
        window_length=2, estimate_heading=True, yaw_drift_deg_per_100m=3.0,
        yaw_drift_rate_max_deg_per_100m=drift_max_deg, yaw_drift_rate_sigma_deg_per_100m=5.0,
        odom_scale_max_error=0.0))
    Twb = drive_poses(231, 1.5, (-45.0, 0.0), 0.0)
    T_odom = simulate_odometry(Twb, drift_pct=0.0,
                               yaw_drift_deg_per_100m=yaw_drift_deg_per_100m)
    errs = []
    for i, T in enumerate(Twb):
        model.truth_cam_en = (T @ T_BODY_CAM)[:2, 3]
        est = loc.add_frame(Frame(i * 100_000_000, image(i), CAMERA, T_odom[i],
                                  0.0 if imu else None, T_BODY_CAM))
        if i == 0:
            loc.set_initial_pose(T[0, 3], T[1, 3], 0.0, 2.0)
        if est is not None and est.has_fix and i > 160:
            errs.append(abs(math.remainder(est.yaw_rad - 0.0, 2 * math.pi)))
    return loc, float(np.mean(errs))


def test_localizer_feeds_the_odometry_heading_drift_forward():
    """Odometry turning 6 deg/100 m on a straight road: the belief's offset is a ramp. Fed
    forward, the estimated drift has the ramp's sign (the offset ENU - odometry yaw falls) and
    the heading error over the last 100 m shrinks against the run without it."""
    off, err_off = _oracle_heading_run(0.0)
    on, err_on = _oracle_heading_run(10.0)
    assert off.yaw_drift_rate_deg_per_100m == 0.0
    assert on.yaw_drift_rate_deg_per_100m < -2.0  # true: -6
    assert err_on < 0.7 * err_off, (math.degrees(err_on), math.degrees(err_off))


def test_heading_drift_is_not_learnt_while_an_imu_gives_the_heading():
    """With an absolute heading in every frame the belief follows the IMU, not a lagging ramp:
    the drift is neither learnt nor fed forward, the run is the one without the estimator."""
    off, err_off = _oracle_heading_run(0.0, imu=True)
    on, err_on = _oracle_heading_run(10.0, imu=True)
    assert on.yaw_drift_rate_deg_per_100m == 0.0 and on._yaw_drift.updates == 0
    assert err_on == err_off


def test_memory_averages_the_fits():
    """memory_m: the scale in use is an exponential average of the window fits, so its
    fluctuation under correlated fix noise shrinks while it still converges."""
    def run(memory_m, seed):
        rng = np.random.default_rng(seed)
        truth = _path(2000)
        odom = truth * 1.02
        # along-track errors correlated over ~30 m (a random walk pulled back to zero)
        err = np.zeros(len(truth))
        for i in range(1, len(truth)):
            err[i] = 0.97 * err[i - 1] + rng.normal(0.0, 0.35)
        d = np.gradient(truth, axis=0)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        fixes = truth + err[:, None] * d
        est = OdometryScaleEstimator(150.0, 0.1, memory_m)
        out = [est.add(o, m) for o, m in zip(odom, fixes)]
        return np.asarray(out[1000:])  # the second kilometre

    spread0 = np.mean([np.std(run(0.0, s)) for s in range(3)])
    spread = np.mean([np.std(run(500.0, s)) for s in range(3)])
    assert spread < 0.6 * spread0, (spread, spread0)
    assert abs(np.mean(run(500.0, 0)) - 1 / 1.02) < 0.01
    with pytest.raises(ValueError):
        OdometryScaleEstimator(150.0, 0.1, -1.0)
