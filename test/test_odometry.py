import math

import numpy as np
import pytest

from cvl_ros.kitti import rotation_to_rpy, rpy_to_rotation
from cvl_ros.synth.odometry import simulate_odometry


def _path(n=1001, curvy=False):
    T = np.tile(np.eye(4), (n, 1, 1))
    if not curvy:
        T[:, 0, 3] = np.arange(n, dtype=float) + 100.0
        T[:, 1, 3] = -50.0
        return T
    yaw = np.cumsum(np.full(n, 0.01) * np.sin(np.arange(n) / 50.0))
    x = np.cumsum(np.cos(yaw))
    y = np.cumsum(np.sin(yaw))
    for i in range(n):
        T[i, :3, :3] = rpy_to_rotation(0.0, 0.0, yaw[i])
    T[:, 0, 3], T[:, 1, 3], T[:, 2, 3] = x, y, 0.02 * np.sin(np.arange(n) / 7.0)
    return T


def test_no_drift_is_exact():
    T = _path(200, curvy=True)
    odo = simulate_odometry(T, drift_pct=0.0, yaw_drift_deg_per_100m=0.0)
    assert np.allclose(odo, np.linalg.inv(T[0]) @ T, atol=1e-9)
    odo_w = simulate_odometry(T, drift_pct=0.0, yaw_drift_deg_per_100m=0.0, origin="world")
    assert np.allclose(odo_w, T, atol=1e-9)
    assert np.allclose(odo[0], np.eye(4))


def test_scale_drift_matches_parameter():
    T = _path()
    odo = simulate_odometry(T, drift_pct=1.5, yaw_drift_deg_per_100m=0.0)
    # 1000 m straight: the odometry says 1015 m -> 1.5 % of the distance
    assert odo[-1, 0, 3] == pytest.approx(1015.0, abs=1e-6)
    # on a curvy path too: the error at each point is 1.5 % of its distance from the start
    T = _path(curvy=True)
    odo = simulate_odometry(T, drift_pct=1.5, yaw_drift_deg_per_100m=0.0)
    rel = np.linalg.inv(T[0]) @ T
    err = np.linalg.norm(odo[:, :3, 3] - rel[:, :3, 3], axis=1)
    dist = np.linalg.norm(rel[:, :3, 3], axis=1)
    assert np.allclose(err[1:] / dist[1:], 0.015, atol=1e-9)


def test_yaw_drift_matches_parameter():
    T = _path()
    odo = simulate_odometry(T, drift_pct=0.0, yaw_drift_deg_per_100m=2.0)
    yaw_end = rotation_to_rpy(odo[-1, :3, :3])[2]
    assert math.degrees(yaw_end) == pytest.approx(20.0, abs=1e-6)  # 1000 m * 2 deg/100 m
    # lateral error of a linearly growing heading error: ~ k d^2 / 2 (small angles)
    k = math.radians(2.0) / 100.0
    assert odo[-1, 1, 3] == pytest.approx(k * 1000.0**2 / 2, rel=0.05)


def test_noise_seeded_and_bounded():
    T = _path(500, curvy=True)
    a = simulate_odometry(T, 1.0, 0.5, noise_frac=0.01, yaw_noise_deg_per_sqrt_m=0.05, seed=4)
    b = simulate_odometry(T, 1.0, 0.5, noise_frac=0.01, yaw_noise_deg_per_sqrt_m=0.05, seed=4)
    c = simulate_odometry(T, 1.0, 0.5, noise_frac=0.01, yaw_noise_deg_per_sqrt_m=0.05, seed=5)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    # still rigid transforms
    R = a[:, :3, :3]
    assert np.allclose(R @ np.transpose(R, (0, 2, 1)), np.eye(3), atol=1e-9)
    # short-term relative motion stays close to the truth (what the localizer relies on)
    d_true = np.linalg.norm(np.diff(T[:, :3, 3], axis=0), axis=1)
    d_odo = np.linalg.norm(np.diff(a[:, :3, 3], axis=0), axis=1)
    assert np.median(np.abs(d_odo / d_true - 1.01)) < 0.02


def test_bad_input():
    with pytest.raises(ValueError):
        simulate_odometry(np.eye(4))
    assert simulate_odometry(np.zeros((0, 4, 4))).shape == (0, 4, 4)
