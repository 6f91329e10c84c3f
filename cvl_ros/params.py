"""The node's one parameter table: names, defaults, units, validation and the mapping to the core.

Every parameter of the ``cvl_localizer`` node lives here once, with its default, its unit (the
bracketed token in its description: ``[m]``, ``[s]``, ``[rad]``, ``[count]``, ``[bool]``...), its
allowed values and bounds. The node (at configure and, through an on-set-parameters callback, at
runtime) and ``cvl-localize-bag`` both call :func:`validate`, so the offline runner refuses
exactly what the node refuses, with the same message; both build the core's configurations with
:func:`localizer_config` and :func:`frontend_config` only.

``config/localize.yaml`` and ``docs/parameters.md`` are generated from this table::

    python -m cvl_ros.params --yaml > config/localize.yaml
    python -m cvl_ros.params --markdown > docs/parameters.md

and a test requires both files to equal what this module generates.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: The shipped demo model (a folder; :func:`cvl_ros.model.cvlnet.resolve_checkpoint` picks the
#: file) and the database ``make demo`` writes; relative paths are resolved by
#: :func:`cvl_ros.resources.resolve_path`.
DEFAULT_CHECKPOINT = "models/cvlnet_demo"
DEFAULT_DATABASE = "demo_out/db"


class ParameterError(ValueError):
    """One or more invalid parameters; ``errors`` lists one message per parameter."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = list(errors)


@dataclass(frozen=True)
class Param:
    """One node parameter: name, default, description (with its unit token) and rules."""

    name: str
    default: object
    description: str
    choices: tuple[str, ...] = ()
    """Allowed values of a string parameter (matched exactly: a typo is an error)."""
    at_least: float | None = None
    """Inclusive lower bound of a number."""

    @property
    def kind(self) -> str:
        """Bool | int | float | str | float_list, from the default."""
        d = self.default
        if isinstance(d, bool):
            return "bool"
        if isinstance(d, int):
            return "int"
        if isinstance(d, float):
            return "float"
        if isinstance(d, str):
            return "str"
        return "float_list"


_RAW: tuple[Param, ...] = (
    Param('checkpoint_path', '',
          "model checkpoint (.safetensors file or a folder holding one) [path]; '' = the "
          'shipped demo model models/cvlnet_demo/'),
    Param('database_path', 'demo_out/db',
          'tile database folder [path] (relative: to the working directory, then the '
          'package)'),
    Param('device', 'auto',
          'auto | cpu | cuda[:n] [choices] (CUDA when present; CPU fallback with a '
          'warning)'),
    Param('torch_threads', 0,
          "CPU threads of torch (torch.set_num_threads) [count]; 0 = torch's default",
          at_least=0),
    Param('autostart', True,
          'configure and activate by itself at start (cvl-localize) [bool]; the launch '
          'file sets it false and drives the transitions'),
    Param('map_frame', 'map',
          'frame of the outputs (ENU about the map datum) [frame]'),
    Param('odom_frame', 'odom',
          'odometry frame (child of map->odom, parent of base_frame) [frame]'),
    Param('base_frame', 'base_link',
          'vehicle body frame [frame]'),
    Param('camera_frame', '',
          "optical frame of the camera [frame]; '' = the image header's frame_id"),
    Param('use_compressed', False,
          'subscribe to image/compressed (CompressedImage) instead of image [bool]'),
    Param('odom_source', 'odom',
          'odom | tf [choices]: odom = nav_msgs/Odometry on `odom`; tf = the '
          'odom_frame->base_frame transform on /tf',
          choices=("odom", "tf")),
    Param('heading_source', 'auto',
          'auto | estimate | imu | odom [choices], the ENU heading of base_frame: auto = '
          'estimate = the heading is part of the filter\'s belief (learnt from how the '
          'odometry track agrees with the matches; the IMU, when present, a time-correlated '
          'measurement, never taken as given; started by the IMU, a GPS course or an '
          'initialpose yaw; none of them = no fix); imu = the yaw of `imu` (INS / compass) '
          'taken as given; odom = odometry yaw + odom_yaw_offset_rad taken as given',
          choices=("auto", "estimate", "imu", "odom")),
    Param('odom_yaw_offset_rad', 0.0,
          "ENU yaw of the odometry frame's x axis [rad]: heading_source odom takes it as "
          'given (an initialpose yaw replaces it); auto/estimate start the heading belief there'
          ' when localizer.initial_yaw_sigma_deg is small enough for the yaw bins'),
    Param('imu_tolerance_s', 0.2,
          'largest gap between an image and the IMU heading used [s]',
          at_least=0.0),
    Param('use_gps_prior', True,
          'use `gps/fix` as a coarse prior while there is no belief [bool]'),
    Param('gps_prior_sigma_m', 0.0,
          'sigma of the GPS prior [m]; 0 = from the NavSatFix covariance',
          at_least=0.0),
    Param('camera_info_tolerance_s', 0.05,
          'largest image/camera_info stamp difference [s]; negative = use the newest '
          'camera_info whatever its stamp'),
    Param('odom_max_extrapolation_s', 0.1,
          'largest gap between an image and the nearest odometry when the image lies '
          'outside the buffered span [s]',
          at_least=0.0),
    Param('odom_wait_s', 0.3,
          'how long the worker waits for odometry newer than an image, and for its '
          'camera_info [s]',
          at_least=0.0),
    Param('odom_buffer_s', 10.0,
          'odometry history kept [s]',
          at_least=0.1),
    Param('queue_size', 1,
          'images waiting for the worker (latest wins; older ones are dropped) [count]',
          at_least=1),
    Param('use_tf_static_extrinsics', True,
          'read base_frame->camera optical frame from /tf_static when present [bool]'),
    Param('camera_extrinsics_xyz_rpy', [0.0, 0.0, 1.65, 0.0, 0.0, 0.0],
          'fallback camera mount in base_frame: x, y, z [m], roll, pitch, yaw [rad]; all '
          'angles 0 = looking along +x (optical z forward, x right, y down)'),
    Param('camera_height_m', 0.0,
          "camera height above the ground [m]; 0 = the model's default",
          at_least=0.0),
    Param('use_database_datum', True,
          "map datum = the tile database's datum [bool]; false = the three map_datum_* "
          'parameters'),
    Param('map_datum_latitude_deg', 0.0,
          'WGS84 latitude of the map origin [deg]'),
    Param('map_datum_longitude_deg', 0.0,
          'WGS84 longitude of the map origin [deg]'),
    Param('map_datum_altitude_m', 0.0,
          'ellipsoidal altitude of the map origin [m]'),
    Param('publish_tf', True,
          'publish map->odom on /tf (REP-105) [bool]'),
    Param('tf_publish_low_confidence', False,
          'also update map->odom from LOW_CONFIDENCE fixes [bool]'),
    Param('transform_tolerance', 0.1,
          'map->odom is stamped this far in the future [s]',
          at_least=0.0),
    Param('tf_publish_rate_hz', 10.0,
          're-send rate of the last map->odom [Hz]; 0 = only on updates',
          at_least=0.0),
    Param('publish_heatmap', True,
          'publish ~/heatmap [bool]'),
    Param('heatmap_source', 'score_map',
          "score_map | posterior [choices]: score_map = best tile's score map, posterior "
          '= filter grid',
          choices=("score_map", "posterior")),
    Param('heatmap_colour', True,
          'rgb8 false colour (true) or mono8 (false) [bool]'),
    Param('diagnostics_rate_hz', 1.0,
          'rate of /diagnostics [Hz]'),
    # ---- LocalizerConfig fields (defaults equal the dataclass's; a test checks)
    Param('localizer.window_length', 4,
          "N, keyframes fused per update (the paper's sequence length) [count]",
          at_least=0.0),
    Param('localizer.keyframe_distance_m', 1.0,
          'a frame becomes a keyframe after this much travel (odometry) since the last '
          'one [m]'),
    Param('localizer.keyframe_interval_s', 0.0,
          '...or after this much time [s]; 0 disables the time rule (a parked vehicle '
          'adds no frames)'),
    Param('localizer.tracking_search_radius_m', 40.0,
          'tiles whose centre lies within this radius of the predicted position are '
          'searched while tracking [m]'),
    Param('localizer.search_radius_sigma_factor', 3.0,
          'the tracking search radius grows to this many posterior 1-sigmas when the '
          'belief is wider [unitless] (multiple of sigma)'),
    Param('localizer.global_max_tiles', 4096,
          'relocalisation matches every tile up to this many; larger databases are pre-'
          'selected [count] (tiles)'),
    Param('localizer.global_topk', 512,
          'tiles kept by TileDatabase.global_topk when the database exceeds '
          'global_max_tiles [count]'),
    Param('localizer.tile_batch', 128,
          'tiles matched per model call (memory bound) [count]'),
    Param('localizer.match_upsample', 1,
          'displacements are scored on a grid this many times finer than the model\'s '
          'cells (both descriptors upsampled bilinearly), 1-4; 1 = the model\'s own cells '
          '[count]'),
    Param('localizer.filter_cell_m', 1.0,
          'side of one cell of the position grid while tracking (its resolution; also the'
          ' smallest cell when relocalising) [m]'),
    Param('localizer.tracking_grid_extent_m', 200.0,
          'side of the square position grid while tracking (re-centred on the peak) [m]'),
    Param('localizer.global_grid_max_cells', 400,
          'cells per side of the grid covering the whole database while relocalising '
          '[count]'),
    Param('localizer.process_noise_m', 0.3,
          'position noise added per update, 1-sigma [m]; the prediction sigma is this '
          'plus odom_noise_fraction x the distance travelled'),
    Param('localizer.odom_noise_fraction', 0.05,
          'odometry noise: 1-sigma as a fraction of the distance travelled between '
          'updates [unitless] (m per m)'),
    Param('localizer.odom_scale_max_error', 0.1,
          'the odometry translation scale is estimated from the tracked path and kept within '
          '1 +- this [unitless]; 0 = not estimated (scale 1)', at_least=0.0),
    Param('localizer.odom_scale_baseline_m', 150.0,
          'odometry travel of TRACKING fixes the odometry scale is estimated over [m]'),
    Param('localizer.odom_scale_memory_m', 0.0,
          'the odometry scale in use is an exponential average of the fits over this much '
          'travel [m]; 0 = the newest fit', at_least=0.0),
    Param('localizer.score_temperature', 0.0,
          'likelihood = exp((score - best score) / T); smaller trusts the matcher more '
          '[unitless] (matcher score units); 0 = the temperature fitted for the model '
          '(<checkpoint>.calibration.json, cvl-calibrate), else 0.1',
          at_least=0.0),
    Param('localizer.outlier_weight', 0.05,
          "constant added to the likelihood (the best match's is 1) so one wrong match "
          'cannot erase the true position [unitless]'),
    Param('localizer.confidence_radius_m', 5.0,
          'confidence = posterior mass within this radius of the peak [m]'),
    Param('localizer.tracking_min_confidence', 0.7,
          'confidence needed for TRACKING (and to leave relocalisation) [unitless] '
          '(posterior mass, 0..1)'),
    Param('localizer.max_second_mode_ratio', 0.2,
          'TRACKING needs the strongest other mode to hold at most this fraction of the '
          "peak's mass [unitless] (0..1)"),
    Param('localizer.innovation_gate', 3.0,
          "the score at the belief's peak may trail the best score of the update by at "
          'most this many score_temperature units [unitless]; beyond, the measurement '
          'contradicts the belief (no TRACKING, the covariance grows by the squared '
          'distance to the best match, and repeated it means lost)'),
    Param('localizer.tracking_max_sigma_m', 5.0,
          'largest local 1-sigma (major axis) accepted for TRACKING [m]'),
    Param('localizer.low_confidence_min', 0.15,
          'below this confidence there is no fix (NO_FIX / RELOCALIZING) [unitless] '
          '(posterior mass, 0..1)'),
    Param('localizer.max_fix_sigma_m', 30.0,
          'largest 1-sigma of the posterior about its peak for which a LOW_CONFIDENCE fix'
          ' is given [m]'),
    Param('localizer.min_position_sigma_m', 0.5,
          'floor of the reported position 1-sigma [m]'),
    Param('localizer.min_updates_to_track', 2,
          'updates needed after (re)initialisation before TRACKING is reported [count]'),
    Param('localizer.global_min_travel_m', 100.0,
          'travel (odometry) a global search must accumulate before it may converge [m]: '
          'along one straight road several places match, so a short stretch can lock onto'
          ' a look-alike place; 0 converges as soon as the belief is peaked'),
    Param('localizer.lost_after_updates', 8,
          'consecutive updates without a good fix after which a global relocalisation '
          'starts [count]'),
    Param('localizer.heading_sigma_rad', 0.05,
          '1-sigma of the absolute heading (IMU/INS), reported as the yaw variance [rad] '
          '(heading_source imu/odom/auto)'),
    Param('localizer.yaw_bins', 15,
          'heading_source estimate: yaw bins of the belief, odd [count]'),
    Param('localizer.yaw_bin_min_deg', 0.25,
          'heading_source estimate: finest spacing of the yaw bins [deg]'),
    Param('localizer.yaw_bin_max_deg', 2.0,
          'heading_source estimate: widest spacing of the yaw bins [deg]; bins x this '
          'bounds the heading uncertainty the belief holds'),
    Param('localizer.yaw_drift_deg_per_100m', 3.0,
          'heading_source estimate: odometry heading drift, 1-sigma random walk per 100 m '
          'travelled [deg]'),
    Param('localizer.yaw_drift_rate_max_deg_per_100m', 5.0,
          "heading_source estimate, no IMU: the odometry's steady heading drift is learnt from "
          "the heading belief's corrections and fed forward, kept within +- this [deg] (per "
          '100 m); 0 = not estimated', at_least=0.0),
    Param('localizer.yaw_drift_rate_sigma_deg_per_100m', 1.0,
          'heading_source estimate, no IMU: prior 1-sigma of that drift [deg] (per 100 m)'),
    Param('localizer.initial_yaw_sigma_deg', 180.0,
          'heading_source estimate: 1-sigma of the heading about odom_yaw_offset_rad at '
          'start [deg]; more than the bins hold = unknown (wait for the IMU, a GPS course or '
          'an initialpose yaw)'),
    Param('localizer.imu_yaw_sigma_deg', 2.0,
          'heading_source estimate: 1-sigma of the IMU heading [deg]'),
    Param('localizer.imu_yaw_correlation_s', 20.0,
          'heading_source estimate: time over which the IMU heading error is correlated [s]'
          ' (one independent measurement per this time; 0 = every reading independent)',
          at_least=0.0),
    Param('localizer.imu_yaw_floor', 0.05,
          'heading_source estimate: floor added to the IMU heading likelihood (a wrong IMU '
          'cannot erase a heading) [unitless]', at_least=0.0),
    Param('localizer.gps_course_baseline_m', 60.0,
          'heading_source estimate without IMU: odometry travel over which GPS fixes give the'
          ' initial heading [m]', at_least=0.0),
    Param('localizer.tracking_max_yaw_sigma_deg', 5.0,
          'heading_source estimate: largest heading 1-sigma accepted for TRACKING [deg]'),
    Param('localizer.frame_state_rotation_tolerance_rad', 0.002,
          "a keyframe's cached per-frame Q/K/V canvas (models with pcsf_frame_canvas) is "
          "recomputed when the window's heading turned it by more than this [rad]"),
    Param('localizer.reject_uninformative_images', True,
          'refuse blank, saturated, noise and striped images (a covered or broken camera: '
          'the frame is rejected with the reason, no estimate) instead of matching them [bool]'),
    Param('localizer.gps_prior_min_sigma_m', 5.0,
          'smallest 1-sigma used for a GPS prior (GPS is coarse; the matcher refines) [m]'),
    Param('localizer.max_time_gap_s', 0.0,
          'a forward jump of the stamps larger than this resets [s]; 0 disables '
          '(backwards always does)'),
    Param('localizer.num_candidates', 5,
          'candidates (best tiles) reported per estimate [count]'),)

_TRUE_KINDS = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
#: Node parameters that feed LocalizerConfig fields of another name (or need a rule).
_NODE_TO_LOCALIZER = {"camera_height_m", "odom_yaw_offset_rad", "heading_source",
                      "map_datum_latitude_deg",
                      "map_datum_longitude_deg", "map_datum_altitude_m", "use_database_datum"}

PARAMS: dict[str, Param] = {p.name: p for p in _RAW}
"""Every parameter of the node by name (``localizer.<field>`` for LocalizerConfig fields)."""


def defaults() -> dict[str, object]:
    """Every parameter's default (lists copied)."""
    return {n: (list(p.default) if isinstance(p.default, (list, tuple)) else p.default)
            for n, p in PARAMS.items()}


def _coerce(p: Param, value: object) -> object:
    """The value in the parameter's type, or ValueError with the reason.

    A YAML/ROS integer is accepted for a float parameter (lossless); nothing else changes type:
    ``"false"`` is not a bool, ``true`` is not a count, ``2.0`` is not a count.
    """
    kind = p.kind
    if kind == "float_list":
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ValueError(f"must be a list of {len(p.default)} numbers, got {value!r}")
        return [_to_float(v) for v in value]
    ok = _TRUE_KINDS[kind]
    if isinstance(value, bool) and kind != "bool" or not isinstance(value, ok):
        want = {"bool": "true or false", "int": "an integer", "float": "a number",
                "str": "a string"}[kind]
        raise ValueError(f"must be {want}, got {value!r} ({type(value).__name__})")
    if kind == "int" and not -2**63 <= value < 2**63:  # a ROS 2 integer parameter is int64
        raise ValueError(f"must be a 64-bit integer, got {value}")
    return _to_float(value) if kind == "float" else value


def _to_float(value: int | float) -> float:
    """``float(value)``; ValueError (not OverflowError) for an integer beyond float range."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"must be a finite number, got an integer of {len(str(value))} "
                         "digits") from None


def _rule_errors(values: Mapping[str, object]) -> list[str]:
    """Errors of rules that involve a value (choices, bounds, shapes, ranges)."""
    errors = []
    for name, p in PARAMS.items():
        v = values[name]
        if p.choices and v not in p.choices:
            errors.append(f"parameter {name} must be one of {', '.join(p.choices)}, got {v!r}")
        if p.kind in ("int", "float") and not math.isfinite(v):
            errors.append(f"parameter {name} must be finite, got {v}")
        elif p.at_least is not None and v < p.at_least:
            errors.append(f"parameter {name} must be >= {p.at_least:g}, got {v}")
    for name in ("diagnostics_rate_hz", "tf_publish_rate_hz"):  # timers of period 1 / rate
        v = values[name]
        if math.isfinite(v) and v > 0 and not 1e9 / v < 2**63:  # rclpy: int64 nanoseconds
            errors.append(f"parameter {name} must be 0 (off) or a rate above "
                          f"{1e9 / 2**63:.2g} Hz (a timer period rclpy can represent), got {v}")
    if not _DEVICE.match(str(values["device"])):
        errors.append(f"parameter device must be auto, cpu, cuda or cuda:<n>, got "
                      f"{values['device']!r}")
    ext = values["camera_extrinsics_xyz_rpy"]
    if len(ext) != 6 or not all(math.isfinite(v) for v in ext):
        errors.append("parameter camera_extrinsics_xyz_rpy must be 6 finite numbers "
                      f"(x, y, z [m], roll, pitch, yaw [rad]), got {ext}")
    if not values["use_database_datum"]:
        lat, lon = values["map_datum_latitude_deg"], values["map_datum_longitude_deg"]
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            errors.append(f"map datum ({lat}, {lon}) deg is outside WGS84 range")
    return errors


def validate(values: Mapping[str, object]) -> dict[str, object]:
    """Every parameter, typed and checked: ``values`` over the defaults.

    Raises :class:`ParameterError` listing each invalid parameter (unknown names included) with
    what was given and what is allowed. This is the only validation: the node runs it at
    configure and on every runtime change, ``cvl-localize-bag`` on its params file.
    """
    out = defaults()
    errors = []
    for name, value in values.items():
        p = PARAMS.get(name)
        if p is None:
            close = [n for n in PARAMS if n.split(".")[-1] == name.split(".")[-1]]
            hint = f" (did you mean {close[0]}?)" if close else ""
            errors.append(f"unknown parameter {name}{hint}")
            continue
        try:
            out[name] = _coerce(p, value)
        except ValueError as exc:
            errors.append(f"parameter {name} {exc}")
    if errors:
        raise ParameterError(errors)
    errors = _rule_errors(out)
    if not errors:
        try:
            localizer_config(out)
        except ValueError as exc:  # LocalizerConfig's own ranges, named by field
            errors.append(str(exc))
    if errors:
        raise ParameterError(errors)
    return out


#: Score temperature used when the parameter is 0 and the model has no calibration.
UNCALIBRATED_SCORE_TEMPERATURE = 0.1


def localizer_config(values: Mapping[str, object], calibration=None):
    """The one ``params -> LocalizerConfig`` mapping (values as :func:`validate` returns).

    ``localizer.score_temperature`` 0 takes the model's fitted temperature from
    ``calibration`` (a :class:`cvl_ros.calibration.Calibration`), else
    :data:`UNCALIBRATED_SCORE_TEMPERATURE`.
    """
    from cvl_ros.localizer import LocalizerConfig

    kw = {}
    for f in dataclasses.fields(LocalizerConfig):
        key = "localizer." + f.name
        if key in values:
            kw[f.name] = values[key]
    if not kw.get("score_temperature"):
        kw["score_temperature"] = (float(calibration.score_temperature) if calibration is not None
                                   else UNCALIBRATED_SCORE_TEMPERATURE)
    h = float(values["camera_height_m"])
    kw["camera_height_m"] = h if h > 0 else None
    kw["odom_yaw_offset_rad"] = float(values["odom_yaw_offset_rad"])
    kw["estimate_heading"] = values["heading_source"] in ("auto", "estimate")
    if not values["use_database_datum"]:
        kw["map_datum_lat_deg"] = float(values["map_datum_latitude_deg"])
        kw["map_datum_lon_deg"] = float(values["map_datum_longitude_deg"])
        kw["map_datum_alt_m"] = float(values["map_datum_altitude_m"])
    return LocalizerConfig(**kw)


def frontend_config(values: Mapping[str, object]):
    """The :class:`~cvl_ros.localizer.frontend.FrontendConfig` of the frame front end."""
    from cvl_ros.localizer.frontend import FrontendConfig

    return FrontendConfig(
        base_frame=str(values["base_frame"]), odom_frame=str(values["odom_frame"]),
        camera_frame=str(values["camera_frame"]), heading_source=str(values["heading_source"]),
        imu_tolerance_s=float(values["imu_tolerance_s"]),
        camera_info_tolerance_s=float(values["camera_info_tolerance_s"]),
        odom_max_extrapolation_s=float(values["odom_max_extrapolation_s"]),
        odom_buffer_s=float(values["odom_buffer_s"]),
        use_tf_static_extrinsics=bool(values["use_tf_static_extrinsics"]),
        camera_extrinsics_xyz_rpy=tuple(values["camera_extrinsics_xyz_rpy"]),
        gps_prior_sigma_m=float(values["gps_prior_sigma_m"]))


# ------------------------------------------------------------------ params files
def read_params_file(path: str | Path) -> dict[str, object]:
    """The node's ``ros__parameters`` of a ROS 2 params file, flattened (``localizer.x``).

    The entry used is ``cvl_localizer``, ``/cvl_localizer`` or ``/**`` (in that order), else
    the first node entry holding ``ros__parameters``. Raises :class:`ParameterError` for a
    missing or unreadable file or one without ``ros__parameters``.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ParameterError([f"params file {p} not found"])
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ParameterError([f"params file {p} is not valid YAML: "
                              f"{str(exc).splitlines()[0]}"]) from None
    raw = None
    if isinstance(data, dict):
        for key in ("cvl_localizer", "/cvl_localizer", "/**", *data.keys()):
            node = data.get(key)
            if isinstance(node, dict) and isinstance(node.get("ros__parameters"), dict):
                raw = node["ros__parameters"]
                break
    if raw is None:
        raise ParameterError([f"params file {p} has no <node>: ros__parameters: mapping (see "
                              "config/localize.yaml)"])
    flat: dict[str, object] = {}

    def walk(prefix: str, d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                flat[prefix + str(k)] = v

    walk("", raw)
    return flat


# ------------------------------------------------------------------ generated documents
def _yaml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    return repr(v)


def params_yaml() -> str:
    """The text of ``config/localize.yaml``: every parameter with its comment and default."""
    out = [
        "# Parameters of the cvl_localizer node (CVLNet cross-view localization), with units "
        "and defaults.",
        "# GENERATED by `python -m cvl_ros.params --yaml` from cvl_ros/params.py (a test "
        "checks it).",
        "#",
        "# pip-only world:   cvl-localize --ros-args --params-file config/localize.yaml",
        "# real ROS 2:       ros2 launch cvl_ros localize.launch.py params_file:=<this file>",
        "# Any value can be overridden on the command line: --ros-args -p device:=cpu",
        "# Relative paths are tried against the working directory, then the package (checkout "
        "or share).",
        "# Each comment gives the unit in brackets ([m], [s], [rad], [deg], [Hz]) or, without "
        "one, what the",
        "# value is: [count], [unitless] (ratio, fraction, factor), [bool], [path], [frame], "
        "or [choices]",
        "# next to the allowed values (a | b). docs/parameters.md has the same table.",
        "/**:",
        "  ros__parameters:",
    ]
    in_loc = False
    for p in PARAMS.values():
        name = p.name
        indent = "    "
        if name.startswith("localizer."):
            if not in_loc:
                out += ["", "    # Localizer tuning (cvl_ros.localizer.LocalizerConfig; "
                        "parameter names localizer.<field>)", "    localizer:"]
                in_loc = True
            name, indent = name.split(".", 1)[1], "      "
        comment = f"{p.description} (default {_yaml_value(p.default)})"
        out += textwrap.wrap(comment, 100, initial_indent=indent + "# ",
                             subsequent_indent=indent + "# ", break_long_words=False,
                             break_on_hyphens=False)
        out.append(f"{indent}{name}: {_yaml_value(p.default)}")
    return "\n".join(out) + "\n"


def params_markdown() -> str:
    """The text of ``docs/parameters.md``: the parameter table."""
    out = ["# Parameters of the `cvl_localizer` node", "",
           "Generated by `python -m cvl_ros.params --markdown` from `cvl_ros/params.py`, the one",
           "table the node and `cvl-localize-bag` validate with (a test checks this file). The",
           "unit is the bracketed token of each description. Invalid values are refused with",
           "the reason: at configure (the transition fails), at runtime (`ros2 param set` is",
           "refused), and by `cvl-localize-bag --params-file` (exit 2). A YAML integer is",
           "accepted for a float parameter; no other type changes.", "",
           "| parameter | default | allowed | description |", "| --- | --- | --- | --- |"]
    for p in PARAMS.values():
        allowed = (" \\| ".join(p.choices) if p.choices else
                   f">= {p.at_least:g}" if p.at_least is not None else p.kind)
        desc = p.description.replace("|", "\\|")
        out.append(f"| `{p.name}` | `{_yaml_value(p.default)}` | {allowed} | {desc} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m cvl_ros.params --yaml|--markdown``: print a generated document."""
    ap = argparse.ArgumentParser(prog="python -m cvl_ros.params",
                                 description="Print the parameter table as a params file or "
                                 "as Markdown.")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--yaml", action="store_true", help="config/localize.yaml")
    g.add_argument("--markdown", action="store_true", help="docs/parameters.md")
    args = ap.parse_args(argv)
    sys.stdout.write(params_yaml() if args.yaml else params_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
