"""Record the localizer node's outputs into a bag (``python -m cvl_ros.cli.record``).

A small stand-in for ``ros2 bag record`` (absent in the pip-only world), used by the demo and
the end-to-end test. Stops on SIGINT/SIGTERM (or ``--duration``) and finishes the bag.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import time
from pathlib import Path

from cvl_ros.cli._args import number

PROG = "python -m cvl_ros.cli.record"
_MSGTYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*/msg/[A-Za-z][A-Za-z0-9_]*$")

#: Outputs of ``cvl_localizer`` (relative names are put under ``/<node name>/``).
NODE_OUTPUTS = {
    "geo_pose": "cvl_ros/msg/GeoPoseEstimate",
    "fix": "sensor_msgs/msg/NavSatFix",
    "pose": "geometry_msgs/msg/PoseWithCovarianceStamped",
    "heatmap": "sensor_msgs/msg/Image",
    "geo_pose_std": "geographic_msgs/msg/GeoPoseWithCovarianceStamped",
    "/tf": "tf2_msgs/msg/TFMessage",
    "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
}
BEST_EFFORT = {"heatmap"}
#: Node outputs left out (with a note) when their interface package is not installed.
OPTIONAL_OUTPUTS = {"geo_pose_std"}


def node_output_topics(node_name: str = "cvl_localizer", namespace: str = "") -> dict[str, str]:
    """``{topic: msgtype}`` of the node's outputs (``~/x`` resolved for the node's name)."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    out = {}
    for name, msgtype in NODE_OUTPUTS.items():
        out[name if name.startswith("/") else f"{ns}/{node_name}/{name}"] = msgtype
    return out


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the recorder."""
    p = argparse.ArgumentParser(prog=PROG,
                                description="Record the localizer node's outputs into a bag.")
    p.add_argument("out", help="output bag folder (must not exist)")
    p.add_argument("--node-name", default="cvl_localizer")
    p.add_argument("--namespace", default="")
    p.add_argument("--topic", action="append", default=[], metavar="TOPIC:=pkg/msg/Type",
                   help="record this topic instead of the node's outputs (repeatable)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--duration", type=number(float, 0.0, 1e7, low_inclusive=False, unit="s"),
                   default=None, metavar="S", help="stop after this many seconds")
    p.add_argument("--ready-file", default=None,
                   help="touch this file once the subscriptions exist")
    return p


def _topics(args) -> tuple[dict, set]:
    """``({topic: msgtype}, best-effort topics)`` from the flags; ``CliError`` when bad."""
    from rclpy.exceptions import NameValidationException
    from rclpy.validate_full_topic_name import validate_full_topic_name

    from cvl_ros.cli._args import CliError
    from cvl_ros.ros.bags import make_typestore
    from cvl_ros.ros.replay import rclpy_message_class

    if args.topic:
        topics = {}
        for item in args.topic:
            t, sep, ty = item.partition(":=")
            if not sep or not t or not _MSGTYPE.match(ty):
                raise CliError(f"--topic {item!r}: expected TOPIC:=pkg/msg/Type, e.g. "
                               "/fix:=sensor_msgs/msg/NavSatFix")
            topics[t] = ty
        best_effort: set[str] = set()
    else:
        topics = node_output_topics(args.node_name, args.namespace)
        best_effort = {t for t in topics if t.rsplit("/", 1)[-1] in BEST_EFFORT}
    for t in topics:
        try:
            validate_full_topic_name(t)
        except NameValidationException as exc:
            where = "--topic" if args.topic else "--node-name/--namespace"
            raise CliError(f"{where}: {t!r} is not a valid topic name "
                           f"({str(exc).splitlines()[0]})") from None
    store = make_typestore()
    for t, ty in list(topics.items()):
        try:
            rclpy_message_class(ty, store)
        except ImportError as exc:
            if not args.topic and t.rsplit("/", 1)[-1] in OPTIONAL_OUTPUTS:
                print(f"[record] not recording {t}: {exc}", file=sys.stderr, flush=True)
                del topics[t]
                continue
            raise CliError(f"--topic {t}:={ty}: {exc}") from None
    return topics, best_effort


def main(argv: list[str] | None = None) -> int:
    """Run the recorder; returns the exit status."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    from cvl_ros.cli._args import CliError, fail, split_ros_args

    mine, ros = split_ros_args(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(mine)
    from cvl_ros.ros.recording import TopicRecorder

    out = Path(args.out)
    try:
        if out.exists() or out.is_symlink():
            raise CliError(f"{out} exists; the recorder writes a new bag folder: give a new "
                           "path (it never writes into or over an existing one)")
        if not out.parent.is_dir():
            raise CliError(f"{out}: its folder {out.parent} does not exist; create it first")
        if args.ready_file and not Path(args.ready_file).parent.is_dir():
            raise CliError(f"--ready-file {args.ready_file}: its folder does not exist")
        topics, best_effort = _topics(args)
    except CliError as exc:
        return fail(PROG, exc)
    rclpy.init(args=["record", *ros])
    node = rclpy.create_node("cvl_record")
    stop = {"flag": False}

    def on_term(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_term)
    recorder = TopicRecorder(node, args.out, topics, storage=args.storage,
                             best_effort=best_effort)
    if args.ready_file:
        Path(args.ready_file).touch()
    print(f"[record] recording {', '.join(topics)} into {args.out}", flush=True)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    t_end = None if args.duration is None else time.monotonic() + args.duration
    try:
        while rclpy.ok() and not stop["flag"]:
            ex.spin_once(timeout_sec=0.1)
            if t_end is not None and time.monotonic() > t_end:
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        recorder.close()
        counts = ", ".join(f"{t}: {n}" for t, n in recorder.counts.items())
        print(f"[record] wrote {args.out} ({counts})", flush=True)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
