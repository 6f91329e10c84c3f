"""``cvl-kitti2bag``: convert a KITTI raw drive (real or synthetic) into a ROS 2 bag.

``--drive DIR`` converts a raw ``_sync`` drive; ``--from-bag IN.bag`` converts a ROS 1 bag of
the ``kitti2bag`` tool into the same layout (odometry dead-reckoned from its ``gps/vel`` speeds
and IMU yaw rate, ground truth from its ``world -> base_link``: :mod:`cvl_ros.ros.kitti_ros1`).
Inputs are checked first (what is dropped is counted and printed), then ``--out``, which follows
the output-safety rule (``docs/output-safety.md``): a new or empty folder, or with
``--overwrite`` a bag cvl-kitti2bag wrote; never the input or a folder holding it. Errors are
one line, ``cvl-kitti2bag: error: ...``, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from cvl_ros.cli._args import number

# the bounds of cvl_ros.ros.kitti_bag.LIMITS (kept here so that --help needs no ROS imports)
_DRIFT = number(float, -50.0, 50.0, unit="%")
_YAW_DRIFT = number(float, -90.0, 90.0, unit="deg/100 m")
_NOISE = number(float, 0.0, 50.0, unit="%")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``cvl-kitti2bag``."""
    p = argparse.ArgumentParser(
        prog="cvl-kitti2bag",
        description="KITTI raw drive (raw_data/<date>/<date>_drive_<NNNN>_sync, calibration in "
        "its parent folder), or a ROS 1 bag of the kitti2bag tool, -> ROS 2 bag written with "
        "rosbags (mcap or sqlite3).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--drive", help="the drive folder (..._sync)")
    src.add_argument("--from-bag", metavar="IN.bag",
                     help="a ROS 1 bag written by kitti2bag (tomas789/kitti2bag) from a raw "
                     "drive: odometry dead-reckoned from /kitti/oxts/gps/vel and the IMU yaw "
                     "rate, ground truth from /tf world->base_link (docs/bags.md)")
    p.add_argument("--out", required=True,
                   help="output bag folder: new or empty (or, with --overwrite, a bag "
                   "cvl-kitti2bag wrote)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                   help="bag storage plugin (default: mcap)")
    p.add_argument("--odom-drift", type=_DRIFT, default=1.0, metavar="PCT",
                   help="odometry translation drift in percent of distance, -50..50 "
                   "(default: 1.0)")
    p.add_argument("--odom-yaw-drift", type=_YAW_DRIFT, default=0.5, metavar="DEG_PER_100M",
                   help="odometry heading drift in degrees per 100 m, -90..90 (default: 0.5)")
    p.add_argument("--odom-noise", type=_NOISE, default=0.0, metavar="PCT",
                   help="per-step odometry translation noise, std in percent of the step, "
                   "0..50 (default: 0)")
    p.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=0,
                   help="seed of the --odom-noise draws (default: 0)")
    p.add_argument("--gt-tf", action="store_true",
                   help="also publish ground truth on /tf as world->base_link (then odom->"
                   "base_link is left off /tf so base_link keeps one parent)")
    p.add_argument("--no-odom-tf", action="store_true",
                   help="do not put odom->base_link on /tf (odometry only on /kitti/odom)")
    p.add_argument("--frames", type=number(int, 1, 10_000_000), default=None, metavar="N",
                   help="convert only the first N frames (--drive only)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a bag cvl-kitti2bag wrote (nothing else is ever replaced)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``cvl-kitti2bag``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.from_bag is not None and args.frames is not None:
        parser.error("argument --frames: not allowed with --from-bag (it converts the whole "
                     "bag)")
    from cvl_ros.ros.kitti_bag import write_kitti_bag
    from cvl_ros.ros.kitti_ros1 import write_kitti_bag_from_ros1

    t0 = time.monotonic()
    options = dict(storage=args.storage, odom_drift_pct=args.odom_drift,
                   odom_yaw_drift_deg_per_100m=args.odom_yaw_drift,
                   odom_noise_pct=args.odom_noise, seed=args.seed, gt_tf=args.gt_tf,
                   odom_tf=not args.no_odom_tf, overwrite=args.overwrite,
                   progress=not args.quiet)
    try:
        if args.from_bag is not None:
            info = write_kitti_bag_from_ros1(args.from_bag, args.out, **options)
        else:
            info = write_kitti_bag(args.drive, args.out, max_frames=args.frames, **options)
    except (OSError, ValueError, KeyError) as exc:  # OutputError is a ValueError
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"cvl-kitti2bag: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cvl-kitti2bag: interrupted; nothing was written (an earlier bag at --out is "
              "unchanged)", file=sys.stderr)
        return 130
    dt = time.monotonic() - t0
    print(f"wrote {info.path} ({info.storage}, {info.frames} frames, "
          f"{(info.end_ns - info.start_ns) / 1e9:.1f} s of data) in {dt:.1f} s")
    for topic, count in info.topics.items():
        print(f"  {topic}: {count}")
    print(dropped_summary(info.dropped))
    return 0


def dropped_summary(dropped: dict[str, int]) -> str:
    """One line per reason with samples dropped by the input checks (or that none were)."""
    from cvl_ros.ros.kitti_bag import DROP_REASONS

    lines = [f"  {k}: {v} ({DROP_REASONS.get(k, '')})" for k, v in dropped.items() if v]
    if not lines:
        return "input checks: nothing dropped"
    return "input checks dropped (also in the bag's custom_data cvl_ros.dropped_*):\n" + \
        "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
