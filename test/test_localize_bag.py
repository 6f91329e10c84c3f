"""cvl-localize-bag: the Localizer over a bag offline (oracle model), report files and plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _bag_drives import tiny_drive
from _localizer_fakes import FakeDB, OracleModel

from cvl_ros import offline, plots, report
from cvl_ros import params as P
from cvl_ros.cli import localize_bag as lb
from cvl_ros.geo import GeoDatum
from cvl_ros.kitti import KittiDrive, kitti_T_imu_cam2, oxts_to_enu_poses
from cvl_ros.localizer import Localizer, LocalizerConfig
from cvl_ros.ros.kitti_bag import write_kitti_bag


class _OracleLocalizer:
    """Sets the oracle's true camera position at each frame's stamp, then runs the Localizer."""

    def __init__(self, drive_dir, db, config=None):
        drive = KittiDrive(drive_dir)
        self.stamps = np.asarray(drive.timestamps_ns)
        T_wb = oxts_to_enu_poses(drive.oxts, db.datum)
        T_bc = kitti_T_imu_cam2(drive.calib_dir)
        self.cam_en = (T_wb @ T_bc)[:, :2, 3]
        self.model = OracleModel(db, noise=0.0)
        self.loc = Localizer(self.model, db, config or LocalizerConfig(window_length=2))
        self.frames = []

    def set_gps_prior(self, lat, lon, sigma, T_odom_body=None):
        return self.loc.set_gps_prior(lat, lon, sigma, T_odom_body)

    def add_frame(self, frame):
        i = int(np.argmin(np.abs(self.stamps - frame.stamp_ns)))
        self.model.truth_cam_en = self.cam_en[i]
        self.frames.append(frame)
        return self.loc.add_frame(frame)


@pytest.fixture()
def bag_and_db(tmp_path):
    drive = tiny_drive(tmp_path, n=25, image_hw=(40, 124), yaw_rate=0.0)
    write_kitti_bag(drive, tmp_path / "bag", storage="mcap", odom_drift_pct=0.0,
                    odom_yaw_drift_deg_per_100m=0.0)
    p0 = KittiDrive(drive).oxts[0]
    db = FakeDB(spacing_m=10.0, east=(-60, 60), north=(-60, 60),
                datum=GeoDatum(p0.lat, p0.lon, 0.0))
    return drive, tmp_path / "bag", db


def test_run_localizer_on_bag_with_oracle(bag_and_db, tmp_path):
    drive, bag, db = bag_and_db
    loc = _OracleLocalizer(drive, db)
    res = offline.run_localizer_on_bag(loc, bag, progress=False)
    assert res.images == 25
    assert res.frames_used == 25, res.skipped
    # frames carry what the bag says: stamps, extrinsics from /tf_static, IMU heading
    f = loc.frames[3]
    assert f.stamp_ns == int(KittiDrive(drive).timestamps_ns[3])
    np.testing.assert_allclose(f.T_body_cam, kitti_T_imu_cam2(drive.parent), atol=1e-6)
    assert f.heading_enu_rad == pytest.approx(KittiDrive(drive).oxts[0].yaw, abs=1e-3)
    assert f.image_rgb.shape == (40, 124, 3) and f.image_rgb[0, 0, 0] == 3
    # keyframes every ~1 m of the 0.8 m/frame drive
    assert 10 <= len(res.rows) <= 25
    gt = report.ground_truth_from_bag(bag)
    report.attach_ground_truth(res.rows, gt)
    fixes = [r for r in res.rows if r.has_fix]
    assert len(fixes) >= 0.8 * len(res.rows)
    errs = [r.error_m for r in fixes]
    assert np.median(errs) < 3.0, errs
    summary = report.write_report(res.rows, tmp_path / "out", images=res.images, gt=gt,
                              wall_s=res.wall_s)
    for name in ("estimates.csv", "summary.json", "trajectory.png", "error.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    for key in ("images", "fixes", "median_error_m", "p90_error_m", "mean_latency_ms"):
        assert key in data
    assert data["images"] == 25 and data["fixes"] == len(fixes)
    assert data["median_error_m"] == pytest.approx(summary["median_error_m"])
    back = report.read_csv(tmp_path / "out" / "estimates.csv")
    assert [r.stamp_ns for r in back] == [r.stamp_ns for r in res.rows]
    assert all(math.isfinite(r.error_m) for r in back if r.has_fix)


def test_estimated_heading_over_a_bag_reports_yaw_and_its_variance(bag_and_db, tmp_path):
    # heading_source estimate: the IMU heading of the bag is a measurement that starts the yaw
    # belief; every estimate carries the belief's yaw and a variance that holds the truth
    drive, bag, db = bag_and_db
    cfg = P.localizer_config(P.validate({"heading_source": "estimate",
                                         "localizer.window_length": 2}))
    assert cfg.estimate_heading
    loc = _OracleLocalizer(drive, db, cfg)
    res = offline.run_localizer_on_bag(loc, bag, progress=False)
    gt = report.ground_truth_from_bag(bag)
    report.attach_ground_truth(res.rows, gt)
    fixes = [r for r in res.rows if r.has_fix]
    assert len(fixes) >= 0.8 * len(res.rows)
    assert loc.loc.heading_known
    for r in fixes:
        assert math.isfinite(r.yaw_var_rad2) and r.yaw_var_rad2 < math.radians(5.0) ** 2
        assert abs(r.yaw_error_deg) < 3.0 * math.degrees(math.sqrt(r.yaw_var_rad2)) + 1e-6
    summary = report.field_metrics(res.rows, gt)
    assert summary["yaw_coverage95"] >= 0.9


def test_report_without_ground_truth_and_mosaic(tmp_path):
    from cvl_ros.tiles import GeoMosaic

    datum = GeoDatum(49.0, 8.4, 0.0)
    rows = [report.EstimateRow(stamp_ns=10**9 * i, status="TRACKING", lat_deg=49.0 + 1e-5 * i,
                           lon_deg=8.4, cov_ee_m2=4.0, cov_en_m2=0.5, cov_nn_m2=1.0,
                           latency_ms=20.0, score_map=np.random.rand(7, 7)) for i in range(5)]
    rows.append(report.EstimateRow(stamp_ns=6 * 10**9, status="NO_FIX"))
    mos = GeoMosaic(np.full((100, 100, 3), 90, np.uint8), datum, 1.0, -50.0, 50.0)
    mos.write(tmp_path / "town" / "mosaic.png")
    found = plots.find_mosaic(tmp_path / "town" / "db" / "x")
    assert found == tmp_path / "town" / "mosaic.png"
    s = report.write_report(rows, tmp_path / "out", images=6, gt=None, mosaic=found)
    assert s["fixes"] == 5 and s["keyframes"] == 6 and "median_error_m" not in s
    assert s["mean_latency_ms"] == pytest.approx(20.0)
    assert (tmp_path / "out" / "heatmap.png").is_file()


def test_cli_errors(tmp_path, capsys):
    assert lb.main([str(tmp_path / "nobag"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    drive = tiny_drive(tmp_path, n=2)
    write_kitti_bag(drive, tmp_path / "bag", odom_drift_pct=0.0,
                    odom_yaw_drift_deg_per_100m=0.0)
    assert lb.main([str(tmp_path / "bag"), "--out", str(tmp_path / "o"), "--checkpoint",
                    str(tmp_path / "none.safetensors"), "--db", str(tmp_path)]) == 2
    assert "none.safetensors" in capsys.readouterr().err


def test_node_params_from_the_shipped_params_file():
    params = offline.load_params()
    assert "localizer.window_length" in params and "heading_source" in params
    cfg = P.localizer_config(params)
    assert cfg.window_length == params["localizer.window_length"]
    assert cfg.keyframe_distance_m == pytest.approx(params["localizer.keyframe_distance_m"])
    with pytest.raises(P.ParameterError, match="not found"):
        offline.load_params("/nonexistent/params.yaml")


def test_gps_baseline_error(tmp_path):
    drive = tiny_drive(tmp_path, n=6, gps_offset_m=3.0)
    write_kitti_bag(drive, tmp_path / "bag", odom_drift_pct=0.0,
                    odom_yaw_drift_deg_per_100m=0.0)
    gt = report.ground_truth_from_bag(tmp_path / "bag")
    assert gt.source == "/kitti/ground_truth/pose"
    errs = report.gps_error_m(tmp_path / "bag", gt)
    assert len(errs) == 6
    np.testing.assert_allclose(errs, 3.0, atol=0.05)


def test_expected_keyframes_follow_the_distance_rule(tmp_path):
    drive = tiny_drive(tmp_path, n=10, yaw_rate=0.0)  # 0.8 m per frame
    write_kitti_bag(drive, tmp_path / "bag", odom_drift_pct=0.0,
                    odom_yaw_drift_deg_per_100m=0.0)
    stamps = [int(s) for s in KittiDrive(drive).timestamps_ns]
    def rule(d):
        return dict(P.defaults(), **{"localizer.keyframe_distance_m": d})

    kf = offline.expected_keyframes(tmp_path / "bag", rule(2.0))
    assert kf == [stamps[i] for i in (0, 3, 6, 9)]  # 2.4 m >= 2 m; 1.6 m is not
    assert len(offline.expected_keyframes(tmp_path / "bag", rule(0.5))) == 10


def test_cli_with_a_real_checkpoint_and_database(tmp_path, capsys):
    """The CLI path: checkpoint + TileDatabase loaded like the node, report written."""
    import torch

    from cvl_ros.database import TileDatabase
    from cvl_ros.model.cvlnet import CVLNet, CVLNetConfig, save_checkpoint

    torch.manual_seed(0)
    model = CVLNet(CVLNetConfig(pretrained=False, ground_hw=(32, 128), sat_px=64,
                                grid_cells=8, search_cells=2))
    save_checkpoint(tmp_path / "m.safetensors", model)
    drive = tiny_drive(tmp_path, n=12, image_hw=(40, 124), yaw_rate=0.0)
    write_kitti_bag(drive, tmp_path / "bag", odom_drift_pct=0.0,
                    odom_yaw_drift_deg_per_100m=0.0)
    p0 = KittiDrive(drive).oxts[0]
    datum = GeoDatum(p0.lat, p0.lon, 0.0)
    rng = np.random.default_rng(0)
    tiles = []
    for e in (-20.0, 0.0, 20.0):
        for n in (-20.0, 0.0, 20.0):
            lat, lon, _ = datum.to_geodetic(e, n, 0.0)
            tiles.append((f"e{e:+.0f}_n{n:+.0f}", float(lat), float(lon),
                          rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    TileDatabase.build(model, tiles, tmp_path / "db", datum)
    code = lb.main([str(tmp_path / "bag"), "--out", str(tmp_path / "out"), "--checkpoint",
                    str(tmp_path / "m.safetensors"), "--db", str(tmp_path / "db"), "--quiet",
                    "--threads", "1"])
    assert code == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["images"] == 12 and s["frames_used"] == 12 and s["keyframes"] >= 5
    assert s["heading_source"] == "auto" and s["gps_priors_used"] >= 1
    assert s["frame_states_computed"] >= s["keyframes"]  # a features-only model: one each
    assert s["odom_scale"] == 1.0  # 12 images: no 150 m of TRACKING to fit a scale on
    assert s["yaw_drift_rate_deg_per_100m"] == 0.0  # the bag has an IMU: the drift is not learnt
    assert "median_error_m" in s and (tmp_path / "out" / "trajectory.png").is_file()
    assert "images=12" in capsys.readouterr().out


def test_covariance_ellipse_is_the_two_sigma_contour():
    cov = np.array([[9.0, 2.5], [2.5, 4.0]])
    xy = plots._ellipse_xy(cov)
    maha = np.einsum("ni,ij,nj->n", xy, np.linalg.inv(cov), xy)
    np.testing.assert_allclose(maha, 4.0, rtol=1e-9)  # (2 sigma)^2 for every point


def test_trajectory_plot_shows_mosaic_truth_estimates_and_ellipses(tmp_path):
    import cv2

    from cvl_ros.tiles import GeoMosaic

    datum = GeoDatum(49.0, 8.4, 0.0)
    magenta = (200, 40, 200)
    mos = GeoMosaic(np.full((200, 200, 3), magenta, np.uint8), datum, 1.0, -100.0, 100.0)
    mos.write(tmp_path / "mosaic.png")
    lat = 49.0 + 1e-5 * np.arange(10)
    gt = report.GroundTruth(np.arange(10) * 10**9, lat, np.full(10, 8.4), "test")

    def rows(cov):
        return [report.EstimateRow(stamp_ns=10**9 * i, status="TRACKING", lat_deg=lat[i],
                               lon_deg=8.4 + 2e-5, cov_ee_m2=cov, cov_en_m2=0.0, cov_nn_m2=cov,
                               latency_ms=20.0) for i in range(10)]

    def draw(name, **kw):
        plots.plot_trajectory(kw.pop("r"), tmp_path / name, mosaic_path=tmp_path / "mosaic.png",
                           title="t", **kw)
        return cv2.cvtColor(cv2.imread(str(tmp_path / name)), cv2.COLOR_BGR2RGB).astype(int)

    full = draw("full.png", r=rows(25.0), gt=gt)
    bare = draw("bare.png", r=rows(float("nan")))  # no ellipses, no ground truth

    def axes_area(img):  # the plot's interior: the bounding box of the mosaic's colour
        rr, cc = np.nonzero(np.all(np.abs(img - np.asarray(magenta)) < 10, axis=-1))
        return img[rr.min() + 2:rr.max() - 1, cc.min() + 2:cc.max() - 1]

    def share(img, rgb, tol):
        return np.mean(np.all(np.abs(axes_area(img) - np.asarray(rgb)) < tol, axis=-1))

    assert share(full, magenta, 10) > 0.8  # the mosaic is drawn under everything
    # 10 ellipses of 2 sigma = 10 m: many more pixels off the mosaic colour
    assert share(full, magenta, 10) < share(bare, magenta, 10) - 0.004
    # the white truth line and start marker (none without ground truth)
    assert share(full, (255, 255, 255), 8) > 2e-4 > share(bare, (255, 255, 255), 8)
