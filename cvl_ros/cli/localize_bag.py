"""``cvl-localize-bag``: run the node's ``Localizer`` over a bag offline (no DDS) and report.

A thin CLI over :mod:`cvl_ros.offline` (the runner, with the node's frame front end and
parameter validation) and :mod:`cvl_ros.report` / :mod:`cvl_ros.plots`. Outputs in ``--out``:
``estimates.csv``, ``summary.json`` (with the field metrics: covariance coverage and NEES, dead
reckoning, single-window and GPS baselines, yaw), ``trajectory.png`` (satellite mosaic with the
true path and the estimates with covariance ellipses, when a mosaic is found), ``error.png``
(error over time), ``error_vs_distance.png`` and ``yaw_error.png`` (with a ground truth) and
``heatmap.png`` (one score map). docs/bags.md describes the flags and keys.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cvl_ros import params as P
from cvl_ros.offline import (
    DEFAULT_PARAMS,
    BagTopics,
    load_localizer,
    load_params,
    run_localizer_on_bag,
)
from cvl_ros.plots import find_mosaic
from cvl_ros.report import gps_errors, ground_truth_from_bag, odometry_from_bag, write_report
from cvl_ros.ros import bags


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``cvl-localize-bag``."""
    p = argparse.ArgumentParser(
        prog="cvl-localize-bag",
        description="Run the node's Localizer over a bag offline (no DDS, as fast as possible) "
        "and write estimates.csv, summary.json and plots.",
    )
    p.add_argument("bag", help="bag folder (e.g. written by cvl-kitti2bag), or a ROS 1 .bag of "
                   "the kitti2bag tool (read as cvl-kitti2bag --from-bag converts it)")
    p.add_argument("--out", required=True,
                   help="output folder (new or empty; see --overwrite; never inside the bag)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a report this tool wrote at --out (never anything else)")
    p.add_argument("--checkpoint", default=None,
                   help="model checkpoint (.safetensors or its folder; default: the params "
                   "file's checkpoint)")
    p.add_argument("--db", default=None, help="tile database (default: the params file's)")
    p.add_argument("--params-file", default=None,
                   help=f"node params file for the localizer settings (default: {DEFAULT_PARAMS})")
    p.add_argument("--mosaic", default=None,
                   help="satellite mosaic.png (+ .geo.json) for the trajectory plot (default: "
                   "searched near the DB and the bag's source drive)")
    p.add_argument("--image-topic", default=bags.TOPIC_IMAGE)
    p.add_argument("--camera-info-topic", default=bags.TOPIC_CAMERA_INFO)
    p.add_argument("--odom-topic", default=bags.TOPIC_ODOM)
    p.add_argument("--imu-topic", default=bags.TOPIC_IMU, help="absolute heading ('' = none)")
    p.add_argument("--fix-topic", default=bags.TOPIC_FIX, help="GPS prior ('' = none)")
    p.add_argument("--no-gps-prior", action="store_true", help="initialise without the GPS fix")
    p.add_argument("--gps-init-only", action="store_true",
                   help="offer the GPS fix only until the first one is accepted (GPS "
                   "initialises; a lost localizer must relocalise by global search); default: "
                   "as the node, every fix is offered while there is no belief")
    p.add_argument("--heading-source", choices=P.PARAMS["heading_source"].choices, default=None,
                   help="absolute heading as the node's heading_source (default: the params "
                   "file's, auto = the IMU when present)")
    p.add_argument("--max-images", type=_positive_int, default=None, help="stop after N images")
    p.add_argument("--device", default=None,
                   help="auto|cpu|cuda (default: the params file's device)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


TOOL = "cvl-localize-bag"
#: Files a report folder of this tool holds (an earlier version wrote them without a marker).
REPORT_FILES = {"estimates.csv", "summary.json", "trajectory.png", "error.png",
                "error_vs_distance.png", "yaw_error.png", "heatmap.png"}


def _earlier_report(folder: Path) -> set:
    """The entries of a report folder written before the marker existed (exactly those)."""
    entries = {p.name for p in folder.iterdir()}
    if "summary.json" in entries and "estimates.csv" in entries and entries <= REPORT_FILES:
        return entries
    return set()


def _fail(msg: str) -> int:
    print(f"cvl-localize-bag: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run ``cvl-localize-bag``; returns the exit status."""
    from cvl_ros.cli._args import CliError
    from cvl_ros.cli._bags import READ_ERRORS, check_bag, read_error
    from cvl_ros.outputs import OutputError, check_output, prepare_output

    args = build_parser().parse_args(argv)
    bag = Path(args.bag)
    try:  # everything about the bag and --out is checked before the model loads
        check_bag(bag, "bag", topics=[args.image_topic, args.odom_topic])
        check_output(args.out, tool=TOOL, inputs=[bag], overwrite=args.overwrite,
                     recognise=_earlier_report)
    except (CliError, OutputError) as exc:
        return _fail(str(exc))
    overrides: dict[str, object] = {}
    if args.heading_source is not None:
        overrides["heading_source"] = args.heading_source
    if args.no_gps_prior:
        overrides["use_gps_prior"] = False
    if args.device is not None:
        overrides["device"] = args.device
    try:
        values = load_params(args.params_file, overrides)
    except P.ParameterError as exc:
        where = args.params_file or DEFAULT_PARAMS
        return _fail(f"{where}: {exc} (the node refuses the same; see docs/parameters.md)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        localizer, ckpt, dbp = load_localizer(values, args.checkpoint, args.db)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        return _fail(str(exc))
    topics = BagTopics(image=args.image_topic, camera_info=args.camera_info_topic,
                       odom=args.odom_topic, imu=args.imu_topic or None,
                       fix=args.fix_topic or None)
    try:
        result = run_localizer_on_bag(
            localizer, bag, topics=topics, frontend=P.frontend_config(values),
            use_gps_prior=bool(values["use_gps_prior"]), progress=not args.quiet,
            max_images=args.max_images, gps_init_only=args.gps_init_only)
    except READ_ERRORS as exc:  # a bag damaged past its metadata (ValueError included)
        return _fail(read_error(bag, exc))
    try:
        with prepare_output(args.out, tool=TOOL, inputs=[bag], overwrite=args.overwrite,
                            recognise=_earlier_report) as tmp:
            summary = _report(args, values, bag, dbp, ckpt, localizer, result, tmp)
    except OutputError as exc:
        return _fail(str(exc))
    keys = ("images", "keyframes", "fixes", "median_error_m", "p90_error_m", "gps_median_error_m",
            "odometry_only_median_error_m", "ellipse95_coverage", "mean_latency_ms", "wall_s")
    print(" ".join(f"{k}={summary.get(k)!s}" if not isinstance(summary.get(k), float)
                   else f"{k}={summary[k]:.2f}" for k in keys))
    print(f"wrote {args.out}/estimates.csv, summary.json, {', '.join(summary['plots'])}")
    return 0


def _report(args, values, bag, dbp, ckpt, localizer, result, out) -> dict:
    gt = ground_truth_from_bag(bag)
    custom = bags.bag_custom_data(bag)
    source = (custom.get(bags.META_PREFIX + "source_drive")
              or custom.get(bags.META_PREFIX + "source_bag"))  # a ROS 1 bag (--from-bag)
    mosaic = Path(args.mosaic) if args.mosaic else find_mosaic(dbp, source)
    return write_report(
        result.rows, out, images=result.images, gt=gt, wall_s=result.wall_s,
        bag_duration_s=result.bag_duration_s, mosaic=mosaic, gps_track=gps_errors(bag, gt),
        odometry=odometry_from_bag(bag, args.odom_topic), start_ns=result.first_image_ns,
        extra={"bag": str(bag), "checkpoint": str(ckpt), "database": str(dbp),
               "frames_used": result.frames_used, "skipped": result.skipped,
               "gps_priors_used": result.gps_priors_used,
               "gps_prior": ("none" if not values["use_gps_prior"] else
                             "init_only" if args.gps_init_only else "while_lost"),
               "heading_source": values["heading_source"], "device": localizer.device,
               # per-frame model states computed: one per keyframe when the cache holds
               "frame_states_computed": localizer.state_refreshes,
               # the likelihood temperature in use (0 in the params = the model's calibration)
               "score_temperature": localizer.config.score_temperature,
               # the odometry's estimated translation scale at the end of the run
               "odom_scale": localizer.odom_scale,
               # the odometry's learnt heading drift at the end (0 if never learnt: an IMU)
               "yaw_drift_rate_deg_per_100m": localizer.yaw_drift_rate_deg_per_100m},
    )


if __name__ == "__main__":
    sys.exit(main())
