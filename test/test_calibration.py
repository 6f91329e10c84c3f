"""Score-temperature calibration (cvl_ros.calibration, cvl-calibrate)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from _bag_drives import tiny_drive
from _ros_node_helpers import build_tiny_resources

from cvl_ros import calibration as C
from cvl_ros.geo import GeoDatum
from cvl_ros.kitti import KittiDrive
from cvl_ros.ros.kitti_bag import write_kitti_bag


def _gaussian_estimate(sigma_m=3.0, cell_m=0.5, n=201, center=(10.0, -4.0)):
    half = (n - 1) / 2
    idx = np.arange(n)
    east = center[0] + (idx - half) * cell_m
    north = center[1] + (half - idx) * cell_m
    E, N = np.meshgrid(east, north)
    p = np.exp(-((E - center[0]) ** 2 + (N - center[1]) ** 2) / (2 * sigma_m**2))
    p /= p.sum()
    cov = np.eye(2) * sigma_m**2
    return SimpleNamespace(posterior=p, posterior_center_en=np.array(center),
                           posterior_cell_m=cell_m, east_m=center[0], north_m=center[1],
                           covariance_xy=cov, has_fix=True)


def test_posterior_nll_is_the_gaussian_density():
    est = _gaussian_estimate()
    for d in (0.0, 2.0, 5.0):
        got = C.posterior_nll(est, (10.0 + d, -4.0))
        want = math.log(2 * math.pi * 9.0) + d * d / 18.0  # -log N(d; 0, 3^2 I)
        assert got == pytest.approx(want, abs=0.01)
    # outside the grid: the floor, not -inf/NaN
    assert C.posterior_nll(est, (1e4, 0.0)) == pytest.approx(-math.log(C.MIN_DENSITY_PER_M2))
    assert math.isnan(C.posterior_nll(SimpleNamespace(posterior=None), (0.0, 0.0)))


def test_score_run_counts_the_95_region_and_the_nll():
    from cvl_ros.report import CHI2_2D_95

    class _Map:  # map frame = east/north as given
        @staticmethod
        def latlon_to_map(lat, lon):
            return lat, lon

    r = 3.0 * math.sqrt(CHI2_2D_95)  # the 95 % ellipse's radius for sigma 3 m
    inside, outside = _gaussian_estimate(), _gaussian_estimate()
    singular = _gaussian_estimate()
    singular.covariance_xy = np.zeros((2, 2))  # claims certainty: never "inside"
    out = C.score_run(_Map, [inside, outside, singular],
                      (np.array([10.0 + 0.99 * r, 10.0 + 1.01 * r, 10.01]),
                       np.array([-4.0, -4.0, -4.0])))
    assert (out["fixes"], out["inside95"], out["scored"]) == (3, 1, 3)
    assert out["errors_m"] == pytest.approx([0.99 * r, 1.01 * r, 0.01])


def test_calibration_file_rules(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    assert C.load_calibration(ckpt) is None
    cal = C.Calibration(score_temperature=0.7, model_hash="abc")
    path = C.save_calibration(cal, ckpt)
    assert path == tmp_path / "model.calibration.json"
    assert C.load_calibration(ckpt, "abc").score_temperature == 0.7
    with pytest.raises(C.CalibrationError, match="fitted for model abc"):
        C.load_calibration(ckpt, "other")
    with pytest.raises(FileExistsError, match="--overwrite"):
        C.save_calibration(cal, ckpt)
    C.save_calibration(C.Calibration(score_temperature=0.9, model_hash="abc"), ckpt,
                       overwrite=True)
    assert C.load_calibration(ckpt).score_temperature == 0.9
    path.write_text(json.dumps({"notes": "mine"}))  # a user's file of that name
    with pytest.raises(FileExistsError, match="not written by cvl-calibrate"):
        C.save_calibration(cal, ckpt, overwrite=True)
    assert json.loads(path.read_text()) == {"notes": "mine"}
    path.write_text(json.dumps({"tool": "cvl-calibrate", "score_temperature": -1,
                                "model_hash": "abc"}))
    with pytest.raises(C.CalibrationError, match="not a positive"):
        C.load_calibration(ckpt)


def test_cli_fits_writes_and_the_localizer_uses_it(tmp_path, capsys):
    from cvl_ros import offline
    from cvl_ros.cli import calibrate

    drive = tiny_drive(tmp_path, n=16, image_hw=(40, 124), yaw_rate=0.05)
    write_kitti_bag(drive, tmp_path / "bag", storage="mcap", odom_drift_pct=0.0,
                    odom_yaw_drift_deg_per_100m=0.0)
    p0 = KittiDrive(drive).oxts[0]
    ckpt, db = build_tiny_resources(tmp_path, datum=GeoDatum(p0.lat, p0.lon, 0.0))
    argv = ["--checkpoint", str(ckpt), "--run", str(tmp_path / "bag"), str(db),
            "--temperatures", "0.05,2", "--quiet"]
    assert calibrate.main(argv) == 0
    out = capsys.readouterr().out
    cal = json.loads(C.calibration_path(ckpt).read_text())
    table = cal["table"]
    assert [r["score_temperature"] for r in table] == [0.05, 2.0]
    best = min(table, key=lambda r: r["mean_nll"])
    assert cal["score_temperature"] == best["score_temperature"]
    assert all(r["scored"] > 0 and math.isfinite(r["mean_nll"]) for r in table)
    assert "<- fitted" in out and cal["command"].startswith("cvl-calibrate ")
    # the offline runner (and the node: same params mapping) now uses the fitted value
    loc, _, _ = offline.load_localizer(offline.load_params(None, {"device": "cpu",
                                                                  "use_gps_prior": True}),
                                       ckpt, db)
    assert loc.config.score_temperature == cal["score_temperature"]
    # again without --overwrite: refused, file kept
    assert calibrate.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    # a new checkpoint beside a calibration of the model before it (a retrained model copied
    # in): the localizer refuses the stale calibration, and cvl-calibrate re-fits it (its
    # candidate temperatures need no calibration)
    path = C.calibration_path(ckpt)
    path.write_text(path.read_text().replace(cal["model_hash"], "0123456789abcdef"))
    with pytest.raises(C.CalibrationError, match="0123456789abcdef"):
        offline.load_localizer(offline.load_params(None, {"device": "cpu"}), ckpt, db)
    # (the node and the offline tools share the rule: read only when the temperature is 0)
    assert C.calibration_in_use(ckpt, cal["model_hash"], 0.5) is None
    with pytest.raises(C.CalibrationError):
        C.calibration_in_use(ckpt, cal["model_hash"], 0.0)
    assert calibrate.main(argv + ["--overwrite"]) == 0
    assert json.loads(path.read_text())["model_hash"] == cal["model_hash"]
    capsys.readouterr()
    # bad inputs: clear errors, exit 2
    assert calibrate.main(["--checkpoint", str(ckpt), "--run", str(tmp_path), str(db)]) == 2
    assert "not a ROS 2 bag" in capsys.readouterr().err
    broken = tmp_path / "broken_bag"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: [\n")
    assert calibrate.main(["--checkpoint", str(ckpt), "--run", str(broken), str(db)]) == 2
    err = capsys.readouterr().err
    assert "broken_bag" in err and "Traceback" not in err, err
    with pytest.raises(SystemExit) as e:
        calibrate.main(["--checkpoint", str(ckpt), "--run", "a", "b", "--temperatures", "0"])
    assert e.value.code == 2


def test_choice_keeps_the_humblest_temperature_the_data_cannot_tell_apart():
    from cvl_ros.calibration import NLL_TIE_FRACTION, choose

    rows = [{"score_temperature": t, "mean_nll": v}
            for t, v in [(0.4, 3.98), (0.7, 3.659), (1.0, 3.685), (1.5, 4.40)]]
    assert NLL_TIE_FRACTION == 0.01
    assert choose(rows)["score_temperature"] == 1.0  # 0.7 % worse than 0.7: a tie
    rows[2]["mean_nll"] = 3.659 * 1.02  # 2 % worse: 0.7 wins
    assert choose(rows)["score_temperature"] == 0.7
    rows.append({"score_temperature": 2.5, "mean_nll": 3.659})  # an exact tie: the larger
    assert choose(rows)["score_temperature"] == 2.5
