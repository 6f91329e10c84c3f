"""``cvl-kitti2bag``: convert a KITTI raw drive (real or synthetic) into a ROS 2 bag."""

from __future__ import annotations

import argparse
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``cvl-kitti2bag``."""
    p = argparse.ArgumentParser(
        prog="cvl-kitti2bag",
        description="KITTI raw drive (raw_data/<date>/<date>_drive_<NNNN>_sync, calibration in "
        "its parent folder) -> ROS 2 bag written with rosbags (mcap or sqlite3).",
    )
    p.add_argument("--drive", required=True, help="the drive folder (..._sync)")
    p.add_argument("--out", required=True, help="output bag folder (must not exist)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                   help="bag storage plugin (default: mcap)")
    p.add_argument("--odom-drift", type=float, default=1.0, metavar="PCT",
                   help="odometry translation drift in percent of distance (default: 1.0)")
    p.add_argument("--odom-yaw-drift", type=float, default=0.5, metavar="DEG_PER_100M",
                   help="odometry heading drift in degrees per 100 m (default: 0.5)")
    p.add_argument("--odom-noise", type=float, default=0.0, metavar="PCT",
                   help="per-step odometry translation noise, std in percent of the step "
                   "(default: 0)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the --odom-noise draws (default: 0)")
    p.add_argument("--gt-tf", action="store_true",
                   help="also publish ground truth on /tf as world->base_link (then odom->"
                   "base_link is left off /tf so base_link keeps one parent)")
    p.add_argument("--no-odom-tf", action="store_true",
                   help="do not put odom->base_link on /tf (odometry only on /kitti/odom)")
    p.add_argument("--frames", type=int, default=None, help="convert only the first N frames")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bag")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``cvl-kitti2bag``; returns the exit status."""
    args = build_parser().parse_args(argv)
    from cvl_ros.ros.kitti_bag import write_kitti_bag

    t0 = time.monotonic()
    try:
        info = write_kitti_bag(
            args.drive, args.out, storage=args.storage, odom_drift_pct=args.odom_drift,
            odom_yaw_drift_deg_per_100m=args.odom_yaw_drift,
            odom_noise_pct=args.odom_noise, seed=args.seed, gt_tf=args.gt_tf,
            odom_tf=not args.no_odom_tf, max_frames=args.frames, overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as exc:
        print(f"cvl-kitti2bag: error: {exc}", file=sys.stderr)
        return 2
    dt = time.monotonic() - t0
    print(f"wrote {info.path} ({info.storage}, {info.frames} frames, "
          f"{(info.end_ns - info.start_ns) / 1e9:.1f} s of data) in {dt:.1f} s")
    for topic, count in info.topics.items():
        print(f"  {topic}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
