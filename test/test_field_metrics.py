"""Field metrics of cvl-localize-bag (cvl_ros.report.field_metrics and the baselines).

Checked against slow obvious references (explicit inverses, SE(2) matrices) and analytic cases:
the 95 % ellipse coverage and NEES of a Gaussian oracle, an over-confident covariance, the
distance to the first TRACKING fix on hand-made tracks, dead reckoning from a bag written
without drift (error 0) and with drift (error grows), yaw metrics on hand-made rows.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _bag_drives import tiny_drive

from cvl_ros import offline, report
from cvl_ros.geo import GeoDatum
from cvl_ros.kitti import KittiDrive
from cvl_ros.ros.kitti_bag import write_kitti_bag

DATUM = GeoDatum(49.0, 8.4, 0.0)
S = 1_000_000_000


def _latlon(e, n):
    lat, lon, _ = DATUM.to_geodetic(np.asarray(e, float), np.asarray(n, float),
                                    np.zeros(np.shape(e)))
    return np.atleast_1d(lat), np.atleast_1d(lon)


def _track(e, n, yaw=None, dt_s=0.1):
    """Ground truth through ENU points (about DATUM), one sample every dt_s from t = 0."""
    lat, lon = _latlon(e, n)
    stamps = (np.arange(len(lat)) * dt_s * S).astype(np.int64)
    return report.GroundTruth(stamps, lat, lon, "/kitti/ground_truth/pose",
                              None if yaw is None else np.asarray(yaw, float))


def _rows_at(gt, idx, status="TRACKING", offsets=None, covs=None, **kw):
    """Rows at the truth's samples ``idx``, displaced by ``offsets`` (east, north) metres."""
    e, n = gt.enu()
    rows = []
    for k, i in enumerate(idx):
        de, dn = (0.0, 0.0) if offsets is None else offsets[k]
        lat, lon, _ = DATUM.to_geodetic(e[i] + de, n[i] + dn, 0.0)
        c = np.eye(2) if covs is None else covs[k]
        st = status[k] if isinstance(status, list) else status
        rows.append(report.EstimateRow(stamp_ns=int(gt.stamps_ns[i]), status=st,
                                       lat_deg=float(lat), lon_deg=float(lon),
                                       cov_ee_m2=float(c[0, 0]), cov_en_m2=float(c[0, 1]),
                                       cov_nn_m2=float(c[1, 1]), **kw))
    return rows


def _gaussian_oracle(n=2000, seed=0, scale=1.0):
    """Rows whose errors are drawn from exactly the reported covariance (times ``scale``)."""
    rng = np.random.default_rng(seed)
    gt = _track(np.linspace(0.0, 400.0, n), np.zeros(n))
    covs, offsets = [], []
    for _ in range(n):
        a = rng.normal(size=(2, 2))
        c = a @ a.T * rng.uniform(0.5, 20.0) + 0.1 * np.eye(2)
        covs.append(c * scale)
        # estimate = truth - d, d ~ N(0, C): the truth minus the estimate is d
        offsets.append(-rng.multivariate_normal(np.zeros(2), c))
    status = ["TRACKING" if i % 2 else "LOW_CONFIDENCE" for i in range(n)]
    rows = _rows_at(gt, range(n), status, offsets, covs)
    report.attach_ground_truth(rows, gt)
    return rows, gt, covs, offsets


def _binomial_tol(p, n, k=4.0):
    return k * math.sqrt(p * (1 - p) / n)


def test_gaussian_oracle_has_95_percent_coverage_and_nees_2():
    rows, gt, covs, offsets = _gaussian_oracle()
    m = report.field_metrics(rows, gt)
    n = len(rows)
    assert m["ellipse95_coverage"] == pytest.approx(0.95, abs=_binomial_tol(0.95, n))
    assert m["ellipse95_coverage_tracking"] == pytest.approx(0.95,
                                                             abs=_binomial_tol(0.95, n // 2))
    # chi-square with 2 dof: mean 2, variance 4 -> sd of the mean 2 / sqrt(n)
    assert m["nees_mean"] == pytest.approx(2.0, abs=4 * 2 / math.sqrt(n))
    # slow reference: d^T inv(C) d with an explicit inverse, row by row
    slow = [float(np.asarray(d) @ np.linalg.inv(c) @ np.asarray(d)) for d, c in
            zip(offsets, covs)]
    np.testing.assert_allclose([r.nees for r in rows], slow, rtol=1e-4, atol=1e-4)  # um: geodesy
    assert m["ellipse95_coverage"] == pytest.approx(np.mean(np.array(slow) <= 5.991), abs=2e-3)
    assert m["nees_fixes"] == n and m["nees_invalid_covariances"] == 0


def test_too_small_covariance_has_coverage_near_zero():
    rows, gt, _, _ = _gaussian_oracle(n=500, seed=1, scale=1e-3)  # reports 1/1000 the variance
    m = report.field_metrics(rows, gt)
    # P(chi2_2 <= 5.991e-3) = 1 - exp(-0.003) = 0.3 %
    assert m["ellipse95_coverage"] < 0.02
    assert m["nees_mean"] == pytest.approx(2000.0, rel=0.25)


def test_along_and_cross_track_errors_analytic():
    # driving north (ENU yaw 90 deg): 2 m ahead and 1 m to the right of the truth
    gt = _track(np.zeros(5), np.arange(5.0), yaw=np.full(5, math.pi / 2))
    rows = _rows_at(gt, [1, 2], offsets=[(1.0, 2.0), (0.0, -3.0)],
                    covs=[np.diag([4.0, 1.0]), np.diag([4.0, 9.0])])
    report.attach_ground_truth(rows, gt)
    a, b = rows
    assert a.along_error_m == pytest.approx(2.0, abs=1e-4)   # um: geodesy round trip
    assert a.cross_error_m == pytest.approx(-1.0, abs=1e-4)  # right of the truth
    assert a.along_z == pytest.approx(2.0 / 1.0, abs=1e-4)   # sigma north = 1
    assert a.cross_z == pytest.approx(-1.0 / 2.0, abs=1e-4)  # sigma east = 2
    assert b.along_error_m == pytest.approx(-3.0, abs=1e-4) and b.along_z == pytest.approx(
        -1.0, abs=1e-4)
    assert b.cross_error_m == pytest.approx(0.0, abs=1e-4)
    m = report.field_metrics(rows, gt)
    assert m["along_track_rms_error_m"] == pytest.approx(math.sqrt((4 + 9) / 2), abs=1e-4)
    assert m["cross_track_rms_error_m"] == pytest.approx(math.sqrt(1 / 2), abs=1e-4)
    assert m["along_track_z_rms"] == pytest.approx(math.sqrt((4 + 1) / 2), abs=1e-4)
    assert m["cross_track_z_rms"] == pytest.approx(math.sqrt(0.25 / 2), abs=1e-4)
    # without a true heading there is no along/across split
    gt0 = _track(np.zeros(5), np.arange(5.0))
    rows0 = _rows_at(gt0, [1], offsets=[(1.0, 2.0)])
    report.attach_ground_truth(rows0, gt0)
    assert math.isnan(rows0[0].along_error_m) and math.isnan(rows0[0].cross_z)
    assert report.field_metrics(rows0, gt0)["along_track_z_rms"] is None


def test_mean_map_frame_error_is_the_constant_offset():
    # a run whose every fix is off by the same (+0.8 east, -1.5 north) plus zero-mean noise in
    # pairs (+-e): the mean error is the offset, bias_m its length; NO_FIX rows do not count
    gt = _track(np.linspace(0.0, 300.0, 40), np.zeros(40), yaw=np.zeros(40))
    rng = np.random.default_rng(3)
    noise = rng.normal(0.0, 2.0, (10, 2))
    offs = [(0.8 + s * e, -1.5 + s * n) for e, n in noise for s in (1.0, -1.0)]
    rows = _rows_at(gt, range(20), offsets=offs)
    rows += _rows_at(gt, range(20, 25), status="NO_FIX", offsets=[(50.0, 50.0)] * 5)
    report.attach_ground_truth(rows, gt)
    assert rows[1].east_error_m == pytest.approx(offs[1][0], abs=1e-4)
    assert rows[1].north_error_m == pytest.approx(offs[1][1], abs=1e-4)
    m = report.field_metrics(rows, gt)
    assert m["mean_east_error_m"] == pytest.approx(0.8, abs=1e-4)
    assert m["mean_north_error_m"] == pytest.approx(-1.5, abs=1e-4)
    assert m["bias_m"] == pytest.approx(math.hypot(0.8, 1.5), abs=1e-4)
    assert report.field_metrics(rows[20:], gt)["bias_m"] is None


@pytest.mark.parametrize("scale,expect", [(1.0, 1.0), (0.25, 2.0)])
def test_along_and_cross_z_of_a_gaussian_oracle(scale, expect):
    """Errors drawn from C, reported as scale x C: the z RMS is 1 / sqrt(scale) on both axes,
    and every z equals a slow reference (rotation matrix, explicit projection)."""
    rng = np.random.default_rng(3)
    n, heading = 3000, math.radians(30.0)
    s = np.linspace(0.0, 600.0, n)
    gt = _track(s * math.cos(heading), s * math.sin(heading), yaw=np.full(n, heading))
    covs, offsets = [], []
    for _ in range(n):
        a = rng.normal(size=(2, 2))
        c = a @ a.T * rng.uniform(0.5, 20.0) + 0.1 * np.eye(2)
        covs.append(c)
        offsets.append(rng.multivariate_normal(np.zeros(2), c))  # estimate minus truth
    rows = _rows_at(gt, range(n), offsets=offsets, covs=[c * scale for c in covs])
    report.attach_ground_truth(rows, gt)
    m = report.field_metrics(rows, gt)
    tol = 4 * math.sqrt(2 / n) / 2 * expect  # z^2 has variance 2; sqrt halves the relative sd
    assert m["along_track_z_rms"] == pytest.approx(expect, abs=tol)
    assert m["cross_track_z_rms"] == pytest.approx(expect, abs=tol)
    rot = np.array([[math.cos(heading), math.sin(heading)],
                    [-math.sin(heading), math.cos(heading)]])  # ENU -> (ahead, left)
    for r, d, c in list(zip(rows, offsets, covs))[:50]:
        ac = rot @ d
        cv = rot @ (c * scale) @ rot.T
        assert (r.along_error_m, r.cross_error_m) == pytest.approx(tuple(ac), abs=1e-3)
        assert (r.along_z, r.cross_z) == pytest.approx(
            (ac[0] / math.sqrt(cv[0, 0]), ac[1] / math.sqrt(cv[1, 1])), abs=1e-3)


def test_mahalanobis_analytic_and_degenerate():
    assert report.mahalanobis2([2.0, 1.0], np.diag([4.0, 1.0])) == pytest.approx(2.0)
    # on the 95 % contour of a correlated covariance
    c = np.array([[9.0, 2.5], [2.5, 4.0]])
    w, v = np.linalg.eigh(c)
    d = v[:, 1] * math.sqrt(w[1] * report.CHI2_2D_95)
    assert report.mahalanobis2(d, c) == pytest.approx(report.CHI2_2D_95)
    assert math.isinf(report.mahalanobis2([0.1, 0.0], np.zeros((2, 2))))
    assert math.isnan(report.mahalanobis2([0.1, 0.0], np.full((2, 2), np.nan)))
    # a zero covariance is counted outside the ellipse; the mean NEES is then null
    gt = _track(np.arange(5.0), np.zeros(5))
    rows = _rows_at(gt, range(5), offsets=[(1.0, 0.0)] * 5,
                    covs=[np.eye(2)] * 4 + [np.zeros((2, 2))])
    report.attach_ground_truth(rows, gt)
    m = report.field_metrics(rows, gt)
    assert m["ellipse95_coverage"] == pytest.approx(0.8)
    assert m["nees_mean"] is None and m["nees_invalid_covariances"] == 1


def test_error_percentiles_and_confident_wrong_fixes():
    gt = _track(np.arange(30.0), np.zeros(30))
    errs = [1.0, 2.0, 3.0, 12.0, 20.0, 5.0]
    status = ["TRACKING", "TRACKING", "LOW_CONFIDENCE", "TRACKING", "LOW_CONFIDENCE",
              "TRACKING"]
    rows = _rows_at(gt, range(6), status, [(0.0, e) for e in errs])
    rows.append(report.EstimateRow(stamp_ns=int(gt.stamps_ns[7]), status="NO_FIX"))
    report.attach_ground_truth(rows, gt)
    m = report.field_metrics(rows, gt)
    assert m["max_error_m"] == pytest.approx(20.0, abs=1e-6)
    assert m["p95_error_m"] == pytest.approx(np.percentile(errs, 95), abs=1e-6)
    assert m["tracking_fixes_over_10m"] == 1  # 12 m TRACKING; 20 m is LOW_CONFIDENCE


def test_first_tracking_distance_on_hand_made_tracks():
    # 2 m per sample east for 10 samples, then north: an L of 20 m + 20 m
    e = np.concatenate([np.arange(11) * 2.0, np.full(10, 20.0)])
    n = np.concatenate([np.zeros(11), np.arange(1, 11) * 2.0])
    gt = _track(e, n)
    status = ["INITIALIZING", "LOW_CONFIDENCE", "LOW_CONFIDENCE", "TRACKING", "TRACKING"]
    rows = _rows_at(gt, [2, 5, 8, 15, 20], status)
    report.attach_ground_truth(rows, gt, start_ns=int(gt.stamps_ns[0]))
    m = report.field_metrics(rows, gt)
    # along the path to sample 15: 20 m east + 10 m north (not the 22.4 m straight line)
    assert m["first_tracking_distance_m"] == pytest.approx(30.0, abs=1e-3)
    assert [r.distance_m for r in rows] == pytest.approx([4.0, 10.0, 16.0, 30.0, 40.0],
                                                         abs=1e-3)
    # measured from the first row when no start is given
    report.attach_ground_truth(rows, gt)
    assert report.field_metrics(rows, gt)["first_tracking_distance_m"] == pytest.approx(26.0,
                                                                                       abs=1e-3)
    # no TRACKING fix: null, never a made-up number
    rows = _rows_at(gt, [2, 5], "LOW_CONFIDENCE")
    report.attach_ground_truth(rows, gt)
    m = report.field_metrics(rows, gt)
    assert m["first_tracking_distance_m"] is None
    assert m["ellipse95_coverage_tracking"] is None and m["tracking_fixes_over_10m"] == 0


def test_yaw_metrics_on_hand_made_rows():
    n = 8
    gt = _track(np.arange(n, dtype=float), np.zeros(n), yaw=[0.1] * 5 + [3.13] * 3)
    errs_deg = [1.0, -2.0, 3.0, 4.0, -5.0]
    rows = _rows_at(gt, range(5), yaw_var_rad2=math.radians(2.0) ** 2)
    for r, e in zip(rows, errs_deg):
        r.yaw_rad = 0.1 + math.radians(e)
    # across the +-pi seam: 3.13 true, -3.13 reported = 0.0232 rad = 1.33 deg
    seam = _rows_at(gt, [5], yaw_var_rad2=math.radians(2.0) ** 2)[0]
    seam.yaw_rad = -3.13
    # unknown heading: sigma = pi covers everything
    unknown = _rows_at(gt, [6], yaw_var_rad2=math.pi ** 2)[0]
    unknown.yaw_rad = 3.13 - math.radians(170.0)
    nan_yaw = _rows_at(gt, [7])[0]  # no yaw: not counted
    rows += [seam, unknown, nan_yaw]
    report.attach_ground_truth(rows, gt)
    m = report.field_metrics(rows, gt)
    seam_deg = math.degrees(2 * math.pi - 6.26)
    assert seam.yaw_error_deg == pytest.approx(seam_deg, abs=1e-6)
    absd = [1.0, 2.0, 3.0, 4.0, 5.0, seam_deg, 170.0]
    assert m["yaw_median_error_deg"] == pytest.approx(np.median(absd), abs=1e-6)
    assert m["yaw_p95_error_deg"] == pytest.approx(np.percentile(absd, 95), abs=1e-6)
    # within 1.96 * 2 deg = 3.92 deg: 1, 2, 3, the seam; and the unknown heading
    assert m["yaw_coverage95"] == pytest.approx(5 / 7)
    assert m["yaw_estimates"] == 7


def test_true_yaw_interpolates_across_the_seam():
    gt = _track(np.arange(3.0), np.zeros(3), yaw=[3.1, -3.1, -3.0])
    yaw = gt.yaw_at([int(0.05 * S), int(0.15 * S)])
    assert abs(yaw[0]) == pytest.approx(math.pi, abs=1e-9)  # halfway across +-pi
    assert yaw[1] == pytest.approx(-3.05, abs=1e-9)
    assert np.isnan(report.GroundTruth(gt.stamps_ns, gt.lat_deg, gt.lon_deg, "fix").yaw_at([0]))


def test_single_window_error_from_the_first_candidate():
    gt = _track(np.arange(10.0), np.zeros(10))
    rows = _rows_at(gt, range(4), ["INITIALIZING", "TRACKING", "TRACKING", "NO_FIX"])
    e, n = gt.enu()
    for i, (r, off) in enumerate(zip(rows, [3.0, 4.0, 5.0, 60.0])):
        la, lo = _latlon([e[i]], [n[i] + off])  # the match `off` metres north of the truth
        r.match_lat_deg, r.match_lon_deg = float(la[0]), float(lo[0])
    report.attach_ground_truth(rows, gt)
    m = report.field_metrics(rows, gt)
    assert [r.match_error_m for r in rows] == pytest.approx([3.0, 4.0, 5.0, 60.0], abs=1e-3)
    assert m["single_window_median_error_m"] == pytest.approx(4.5, abs=1e-3)
    assert m["single_window_estimates"] == 4


def test_rows_from_an_estimate_carry_yaw_variance_and_the_best_match():
    from cvl_ros.localizer import Candidate, Estimate, Status

    est = Estimate(stamp_ns=5, status=Status.TRACKING, lat_deg=49.0, lon_deg=8.4,
                   alt_m=float("nan"), east_m=0.0, north_m=0.0, yaw_rad=0.2,
                   covariance_xy=np.eye(2), yaw_var_rad2=0.003, confidence=0.9, score=0.5,
                   tile_id="b", displacement_m=np.zeros(2), window_len=4, tiles_searched=9,
                   latency_s=0.01,
                   candidates=[Candidate("a", 49.001, 8.401, 0.7, 1.0, 2.0),
                               Candidate("b", 49.002, 8.402, 0.5, 3.0, 4.0)])
    r = report.EstimateRow.from_estimate(est)
    assert r.yaw_var_rad2 == pytest.approx(0.003)
    assert (r.match_lat_deg, r.match_lon_deg) == (49.001, 8.401)


def _drift_bag(tmp_path, drift_pct, yaw_drift, n=60, yaw_rate=0.0, name="bag"):
    drive = tiny_drive(tmp_path / name, n=n, image_hw=(8, 16), yaw_rate=yaw_rate)
    bag = tmp_path / name / "bag"
    write_kitti_bag(drive, bag, odom_drift_pct=drift_pct,
                    odom_yaw_drift_deg_per_100m=yaw_drift)
    return drive, bag


def _se2(x, y, yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, x], [s, c, y], [0.0, 0.0, 1.0]])


def test_dead_reckoning_is_exact_without_drift_and_grows_with_drift(tmp_path):
    drive, bag = _drift_bag(tmp_path, 0.0, 0.0)
    gt = report.ground_truth_from_bag(bag)
    odom = report.odometry_from_bag(bag)
    assert gt.yaw_rad is not None and odom is not None
    stamps = [int(s) for s in KittiDrive(drive).timestamps_ns]
    rows = [report.EstimateRow(stamp_ns=s, status="NO_FIX") for s in stamps]
    report.attach_ground_truth(rows, gt, stamps[0])
    report.attach_dead_reckoning(rows, odom, gt, stamps[0])
    m = report.field_metrics(rows, gt)
    # the odometry frame starts at yaw 0, the truth heads elsewhere: aligned, it is the truth
    assert abs(odom.yaw_rad[0]) < 1e-9 and abs(gt.yaw_rad[0]) > 0.1
    assert m["odometry_only_median_error_m"] < 0.01
    assert m["odometry_only_max_error_m"] < 0.02
    assert m["distance_travelled_m"] == pytest.approx(0.8 * (len(stamps) - 1), abs=0.1)

    finals = []
    for pct, yaw_drift in ((1.0, 0.0), (2.0, 0.0), (2.0, 1.0)):
        _, bag_d = _drift_bag(tmp_path, pct, yaw_drift, name=f"d{pct}_{yaw_drift}")
        gt_d = report.ground_truth_from_bag(bag_d)
        rows = [report.EstimateRow(stamp_ns=s, status="NO_FIX") for s in stamps]
        report.attach_ground_truth(rows, gt_d, stamps[0])
        report.attach_dead_reckoning(rows, report.odometry_from_bag(bag_d), gt_d, stamps[0])
        err = np.array([r.odom_error_m for r in rows])
        dist = np.array([r.distance_m for r in rows])
        # grows with distance: a scale drift of pct % of the distance travelled
        assert np.all(np.diff(err) > -1e-6)
        if yaw_drift == 0.0:
            np.testing.assert_allclose(err[1:], pct / 100.0 * dist[1:], rtol=0.1, atol=0.01)
        finals.append(err[-1])
    assert finals[0] < finals[1] < finals[2]


def test_dead_reckoning_matches_se2_composition_on_a_curve(tmp_path):
    """Slow reference: T_true(t0) inv(T_odom(t0)) T_odom(t) with SE(2) matrices."""
    _, bag = _drift_bag(tmp_path, 2.0, 1.0, n=50, yaw_rate=0.3)
    gt = report.ground_truth_from_bag(bag)
    odom = report.odometry_from_bag(bag)
    t0 = int(odom.stamps_ns[3])
    q = [int(t) for t in odom.stamps_ns[3:]]  # the odometry's own stamps: no interpolation
    e, n = report.dead_reckoning(odom, gt, q, t0)
    ge, gn = report._enu(gt.datum, *gt.at([t0]))
    yaw0 = gt.yaw_at([t0])[0]
    A = _se2(ge[0], gn[0], yaw0) @ np.linalg.inv(_se2(odom.x[3], odom.y[3], odom.yaw_rad[3]))
    ref = np.array([A @ _se2(odom.x[i], odom.y[i], odom.yaw_rad[i]) for i in
                    range(3, len(odom.stamps_ns))])[:, :2, 2]
    np.testing.assert_allclose(np.stack([e, n], 1), ref, atol=1e-6)
    # a start the odometry does not cover: null, never a made-up number
    e, _ = report.dead_reckoning(odom, gt, q, int(odom.stamps_ns[0]) - 10 * S)
    assert np.all(np.isnan(e))


def test_report_without_ground_truth_writes_nulls(tmp_path):
    rows = [report.EstimateRow(stamp_ns=S * i, status="TRACKING", lat_deg=49.0 + 1e-5 * i,
                               lon_deg=8.4, cov_ee_m2=4.0, cov_en_m2=0.0, cov_nn_m2=4.0,
                               yaw_rad=0.1, yaw_var_rad2=0.01) for i in range(4)]
    s = report.write_report(rows, tmp_path / "out", images=4, gt=None)
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    for key in report.FIELD_KEYS:
        assert key in data and data[key] is None, key
    assert "error_vs_distance.png" not in s["plots"]
    assert "median_error_m" not in data  # the existing rule: error keys only with a truth


def test_report_with_truth_odometry_and_gps(tmp_path):
    drive, bag = _drift_bag(tmp_path, 2.0, 1.0, n=40, yaw_rate=0.1)
    gt = report.ground_truth_from_bag(bag)
    stamps = [int(s) for s in KittiDrive(drive).timestamps_ns]
    rows = []
    for i, st in enumerate(stamps[::2]):
        la, lo = gt.at([st])
        rows.append(report.EstimateRow(
            stamp_ns=st, status="TRACKING" if i >= 3 else "INITIALIZING",
            lat_deg=float(la[0]) + 1e-5, lon_deg=float(lo[0]), cov_ee_m2=2.0, cov_en_m2=0.0,
            cov_nn_m2=2.0, yaw_rad=float(gt.yaw_at([st])[0]) + 0.01, yaw_var_rad2=1e-4,
            match_lat_deg=float(la[0]), match_lon_deg=float(lo[0]) + 2e-5))
    s = report.write_report(rows, tmp_path / "out", images=len(stamps), gt=gt,
                            odometry=report.odometry_from_bag(bag),
                            gps_track=report.gps_errors(bag, gt), start_ns=stamps[0])
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    for key in report.FIELD_KEYS:
        assert data[key] is not None, key
    assert data["first_tracking_distance_m"] == pytest.approx(6 * 0.8, abs=0.05)
    assert data["odometry_only_median_error_m"] > 0.0
    assert data["single_window_median_error_m"] == pytest.approx(2e-5 * 111e3 * 0.656, rel=0.05)
    assert data["yaw_median_error_deg"] == pytest.approx(math.degrees(0.01), abs=1e-6)
    assert data["yaw_coverage95"] == 1.0 and data["ellipse95_coverage"] == 1.0
    assert "median_error_m" in data and "gps_median_error_m" in data  # the existing keys
    for name in ("error_vs_distance.png", "yaw_error.png"):
        assert name in s["plots"] and (tmp_path / "out" / name).stat().st_size > 0
    # estimates.csv keeps its columns in order and gains the new ones; it reads back
    header = (tmp_path / "out" / "estimates.csv").read_text().splitlines()[0].split(",")
    old = ["stamp_ns", "status", "has_fix", "lat_deg", "lon_deg", "east_m", "north_m", "yaw_rad",
           "cov_ee_m2", "cov_en_m2", "cov_nn_m2", "sigma_major_m", "confidence", "score",
           "tile_id", "window_len", "tiles_searched", "latency_ms", "gt_lat_deg", "gt_lon_deg",
           "error_m", "datum_lat_deg", "datum_lon_deg", "datum_alt_m"]
    assert header[:len(old)] == old and "yaw_var_rad2" in header
    back = report.read_csv(tmp_path / "out" / "estimates.csv")
    assert back[5].yaw_var_rad2 == pytest.approx(1e-4)
    assert back[5].odom_error_m == pytest.approx(rows[5].odom_error_m, rel=1e-4)
    assert back[5].along_error_m == pytest.approx(rows[5].along_error_m, rel=1e-4)
    # the split keeps the length: along^2 + across^2 = error^2 (isotropic C = 2: z^2 = d^2 / 2)
    fixes = [r for r in rows if r.has_fix]
    ms = float(np.mean([r.error_m ** 2 for r in fixes]))
    assert (data["along_track_rms_error_m"] ** 2 + data["cross_track_rms_error_m"] ** 2
            == pytest.approx(ms, rel=1e-6))
    assert (data["along_track_z_rms"] ** 2 + data["cross_track_z_rms"] ** 2
            == pytest.approx(ms / 2.0, rel=1e-6))


class _CountingLocalizer:
    """Accepts every GPS prior offered and gives no estimate."""

    def __init__(self):
        self.offered = 0

    def set_gps_prior(self, lat, lon, sigma, T_odom_body=None):
        self.offered += 1
        return True

    def add_frame(self, frame):
        return None

    def reset(self, reason):
        pass


def test_gps_init_only_offers_the_fix_until_one_is_accepted(tmp_path):
    drive = tiny_drive(tmp_path, n=6, image_hw=(8, 16))
    write_kitti_bag(drive, tmp_path / "bag", odom_drift_pct=0.0,
                    odom_yaw_drift_deg_per_100m=0.0)
    loc = _CountingLocalizer()
    res = offline.run_localizer_on_bag(loc, tmp_path / "bag", progress=False)
    assert loc.offered == 6 and res.gps_priors_used == 6
    assert res.first_image_ns == int(KittiDrive(drive).timestamps_ns[0])
    loc = _CountingLocalizer()
    res = offline.run_localizer_on_bag(loc, tmp_path / "bag", progress=False,
                                       gps_init_only=True)
    assert loc.offered == 1 and res.gps_priors_used == 1
