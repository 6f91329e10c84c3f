"""``cvl-replay``: play a ROS 2 bag into a live graph with ``/clock`` (no ``ros2 bag play``).

A ROS 1 ``.bag`` of the kitti2bag tool is played as the layout cvl-kitti2bag writes
(:mod:`cvl_ros.ros.kitti_ros1`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from cvl_ros.cli._args import number

PROG = "cvl-replay"


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``cvl-replay``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Play a ROS 2 bag (mcap or sqlite3) into ROS 2 with /clock, keeping the "
        "recorded QoS (/tf_static transient-local). Waits for subscribers before the first "
        "message and stays alive after the last one so that the tail is not lost. Nodes "
        "should run with use_sim_time:=true.",
    )
    p.add_argument("bag", help="bag folder, or a ROS 1 .bag of the kitti2bag tool (played as "
                   "cvl-kitti2bag --from-bag converts it: docs/bags.md)")
    p.add_argument("--rate", type=number(float, 0.0, 1000.0, low_inclusive=False), default=1.0,
                   metavar="X", help="playback speed factor (> 0 and <= 1000; default: 1)")
    p.add_argument("--start", type=number(float, 0.0, 1e7, unit="s"), default=0.0, metavar="S",
                   help="skip the first S seconds of the bag (latched topics still sent)")
    p.add_argument("--loop", action="store_true", help="play again from the start until Ctrl-C")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                   help="rename a topic (repeatable)")
    p.add_argument("--topics", nargs="+", default=None, help="replay only these bag topics")
    p.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    p.add_argument("--clock-hz", type=number(float, 0.0, 10000.0, low_inclusive=False),
                   default=50.0, metavar="HZ",
                   help="/clock rate between messages (> 0 and <= 10000; default: 50)")
    p.add_argument("--wait-for", action="append", default=None, metavar="TOPIC",
                   help="wait for a subscriber on TOPIC before playing (repeatable; default: "
                   "every image topic)")
    p.add_argument("--wait-timeout", type=number(float, 0.0, 86400.0, unit="s"), default=60.0,
                   metavar="S",
                   help="seconds to wait for subscribers before playing anyway (default: 60)")
    p.add_argument("--no-wait", action="store_true", help="play at once")
    p.add_argument("--tail", type=number(float, 0.0, 3600.0, unit="s"), default=3.0, metavar="S",
                   help="seconds to stay alive after the last message (default: 3)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``cvl-replay``; returns the exit status."""
    import rclpy

    from cvl_ros.cli._args import split_ros_args

    mine, ros = split_ros_args(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(mine)
    logging.basicConfig(level=logging.INFO, format="[cvl-replay] %(message)s")
    from rclpy.exceptions import NameValidationException
    from rclpy.validate_topic_name import validate_topic_name

    from cvl_ros.cli._args import CliError, fail
    from cvl_ros.cli._bags import READ_ERRORS, check_bag, read_error
    from cvl_ros.ros.replay import BagReplayer, parse_remaps

    try:
        remaps = parse_remaps(args.remap)
        for src, dst in remaps.items():
            try:
                validate_topic_name(dst)
            except NameValidationException as exc:
                first = str(exc).splitlines()[0]
                raise ValueError(f"bad remap {src}:={dst}: {first}") from None
    except ValueError as exc:
        return fail(PROG, f"--remap: {exc}")
    try:
        info = check_bag(args.bag, "bag", topics=args.topics or ())
        if info.topics and args.start > info.duration_s:
            raise CliError(f"--start {args.start:g} is past the end of bag {args.bag} "
                           f"({info.duration_s:.1f} s long); give a smaller --start")
    except CliError as exc:
        return fail(PROG, exc)
    rclpy.init(args=[PROG, *ros])
    replayer = None
    try:
        replayer = BagReplayer(
            args.bag, rate=args.rate, start_s=args.start, loop=args.loop, remaps=remaps,
            clock=not args.no_clock, clock_hz=args.clock_hz,
            wait_for=[] if args.no_wait else args.wait_for, wait_timeout_s=args.wait_timeout,
            tail_s=args.tail, topics=args.topics, stop=lambda: not rclpy.ok(),
        )
        stats = replayer.run()
    except READ_ERRORS as exc:
        return fail(PROG, read_error(args.bag, exc))
    except KeyboardInterrupt:
        return 130
    finally:
        if replayer is not None and rclpy.ok():
            replayer.close()
        interrupted = not rclpy.ok()
        if rclpy.ok():
            rclpy.shutdown()
    total = sum(stats.published.values())
    note = " (interrupted)" if interrupted else ""
    print(f"replayed{note} {total} messages ({stats.loops} loop(s), "
          f"{stats.bag_duration_s:.1f} s of bag) in {stats.wall_s:.1f} s; waited "
          f"{stats.waited_s:.1f} s for subscribers")
    for topic, count in sorted(stats.published.items()):
        print(f"  {topic}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
