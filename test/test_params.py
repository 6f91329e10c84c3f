"""The one parameter table (cvl_ros.params): validation, mapping, generated documents."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from cvl_ros import params as P
from cvl_ros.localizer import LocalizerConfig

ROOT = Path(__file__).resolve().parents[1]


def _errors(**changes):
    try:
        P.validate(changes)
    except P.ParameterError as exc:
        return exc.errors
    return []


def test_defaults_validate_and_equal_the_core_defaults():
    values = P.validate({})
    assert values == P.defaults()
    cfg = P.localizer_config(values)
    core = LocalizerConfig()
    for f in dataclasses.fields(LocalizerConfig):
        key = "localizer." + f.name
        if key == "localizer.score_temperature":  # 0 = the model's calibration, else 0.1
            assert P.PARAMS[key].default == 0.0
            assert cfg.score_temperature == P.UNCALIBRATED_SCORE_TEMPERATURE == f.default
        elif key in P.PARAMS:  # every tunable field is a parameter with the dataclass default
            assert P.PARAMS[key].default == f.default, key
            assert getattr(cfg, f.name) == getattr(core, f.name), key
    skipped = {f.name for f in dataclasses.fields(LocalizerConfig)
               if "localizer." + f.name not in P.PARAMS}
    # the fields set from node parameters of another name
    assert skipped == {"camera_height_m", "odom_yaw_offset_rad", "map_datum_lat_deg",
                       "map_datum_lon_deg", "map_datum_alt_m",
                       "estimate_heading"}  # heading_source: estimate


def test_heading_source_estimate_sets_the_core_flag():
    for source in ("auto", "estimate"):  # auto: the IMU is a measurement, never the truth
        assert P.localizer_config(P.validate({"heading_source": source})).estimate_heading
    for source in ("imu", "odom"):
        assert not P.localizer_config(P.validate({"heading_source": source})).estimate_heading
    errors = _errors(**{"localizer.yaw_bins": 4})
    assert any("yaw_bins" in e and "odd" in e for e in errors), errors


@pytest.mark.parametrize("name, value, words", [
    ("heading_source", "IMU", "one of auto, estimate, imu, odom"),
    ("odom_source", "wheel", "one of odom, tf"),
    ("heatmap_source", "x", "one of"),
    ("queue_size", 0, ">= 1"),
    ("odom_wait_s", math.nan, "finite"),
    ("imu_tolerance_s", -1.0, ">= 0"),
    ("transform_tolerance", -5.0, ">= 0"),
    ("camera_extrinsics_xyz_rpy", [0.0, 0.0, 1.65], "6 finite numbers"),
    ("use_gps_prior", "false", "true or false"),
    ("localizer.window_length", True, "an integer"),
    ("localizer.window_length", 2.0, "an integer"),
    ("localizer.window_length", 0, "window_length"),
    ("localizer.score_temperature", "0.1", "a number"),
    ("device", "bogus", "auto, cpu, cuda"),
    ("window_length", 4, "did you mean localizer.window_length"),
])
def test_each_invalid_value_is_refused_naming_the_parameter(name, value, words):
    errs = _errors(**{name: value})
    assert len(errs) == 1, errs
    assert name.split(".")[-1] in errs[0] and words in errs[0], errs


def test_integer_for_a_float_is_accepted_losslessly():
    v = P.validate({"localizer.keyframe_distance_m": 2, "odom_wait_s": 1})
    assert v["localizer.keyframe_distance_m"] == 2.0
    assert isinstance(v["localizer.keyframe_distance_m"], float)
    assert P.localizer_config(v).keyframe_distance_m == 2.0


def test_datum_range_and_mapping():
    errs = _errors(use_database_datum=False, map_datum_latitude_deg=95.0)
    assert errs and "WGS84" in errs[0]
    v = P.validate({"use_database_datum": False, "map_datum_latitude_deg": 49.0,
                    "map_datum_longitude_deg": 8.4, "camera_height_m": 1.7})
    cfg = P.localizer_config(v)
    assert (cfg.map_datum_lat_deg, cfg.map_datum_lon_deg, cfg.camera_height_m) == (49.0, 8.4,
                                                                                  1.7)
    assert P.localizer_config(P.defaults()).camera_height_m is None  # 0 = the model's


def test_frontend_config_carries_the_parameters():
    v = P.validate({"heading_source": "imu", "camera_info_tolerance_s": -1.0,
                    "base_frame": "body"})
    fc = P.frontend_config(v)
    assert (fc.heading_source, fc.camera_info_tolerance_s, fc.base_frame) == ("imu", -1.0,
                                                                              "body")


def test_params_files(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("cvl_localizer:\n  ros__parameters:\n    heading_source: odom\n"
                 "    localizer:\n      window_length: 8\n")
    assert P.read_params_file(f) == {"heading_source": "odom", "localizer.window_length": 8}
    f.write_text("a: [\n")
    with pytest.raises(P.ParameterError, match="not valid YAML"):
        P.read_params_file(f)
    f.write_text("just a string\n")
    with pytest.raises(P.ParameterError, match="ros__parameters"):
        P.read_params_file(f)
    with pytest.raises(P.ParameterError, match="not found"):
        P.read_params_file(tmp_path / "missing.yaml")


def test_generated_documents_are_up_to_date():
    """config/localize.yaml and docs/parameters.md are the table's own output (regenerate with
    `python -m cvl_ros.params --yaml|--markdown`)."""
    assert (ROOT / "config" / "localize.yaml").read_text() == P.params_yaml()
    assert (ROOT / "docs" / "parameters.md").read_text() == P.params_markdown()
    md = P.params_markdown()
    for name in P.PARAMS:
        assert f"| `{name}` |" in md


def test_shipped_params_file_is_the_defaults():
    assert P.validate(P.read_params_file(ROOT / "config" / "localize.yaml")) == P.defaults()


def test_score_temperature_zero_takes_the_models_calibration():
    from cvl_ros.calibration import Calibration

    cal = Calibration(score_temperature=0.8, model_hash="x")
    assert P.localizer_config(P.defaults(), cal).score_temperature == 0.8
    assert P.localizer_config(P.defaults()).score_temperature == 0.1
    set_t = P.validate({"localizer.score_temperature": 0.3})
    assert P.localizer_config(set_t, cal).score_temperature == 0.3  # an explicit value wins
    assert _errors(**{"localizer.score_temperature": -1.0})
