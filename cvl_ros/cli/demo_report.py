"""Report of a live node run: the node's recorded outputs against the replayed bag.

``python -m cvl_ros.cli.demo_report --outputs OUT_BAG --bag INPUT_BAG --out DIR`` writes
``estimates.csv``, ``summary.json``, ``trajectory.png``, ``error.png`` and ``heatmap.png`` and
prints a short summary. Used by ``make demo`` and the end-to-end test.

Both bags are checked first (a folder with readable metadata and the topics the report needs);
``--out`` may hold other things (the demo's folder): the report files are written beside them
as in docs/output-safety.md (``prepare_members``): existing ones need ``--overwrite`` and are
replaced only where this tool wrote them.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cvl_ros import params as P
from cvl_ros import report
from cvl_ros.cli._args import number
from cvl_ros.offline import expected_keyframes
from cvl_ros.plots import find_mosaic
from cvl_ros.ros import bags


def _image_to_array(msg: Any) -> np.ndarray:
    h, w = int(msg.height), int(msg.width)
    ch = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}.get(msg.encoding)
    if ch is None:
        if msg.encoding in ("32FC1", "mono16"):
            dt = np.float32 if msg.encoding == "32FC1" else np.uint16
            return np.frombuffer(bytes(msg.data), dtype=dt).reshape(h, -1)[:, :w]
        raise ValueError(f"heatmap encoding {msg.encoding!r} not supported")
    a = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(h, int(msg.step))[:, : w * ch]
    a = a.reshape(h, w, ch)
    if msg.encoding.startswith("bgr"):
        a = a[..., [2, 1, 0]]
    return a[..., 0] if ch == 1 else a[..., :3]


def node_run_report(outputs_bag: str | Path, input_bag: str | Path, out_dir: str | Path, *,
                    node_name: str = "cvl_localizer", mosaic: str | Path | None = None,
                    keyframe_distance_m: float = 1.0, keyframe_interval_s: float = 0.0,
                    extra: dict | None = None) -> dict:
    """Compare the node's recorded outputs with the input bag; write the report files."""
    store = bags.make_typestore()
    geo_topic = f"/{node_name}/geo_pose"
    heat_topic = f"/{node_name}/heatmap"
    rows: list[report.EstimateRow] = []
    heatmaps: list[tuple[int, np.ndarray]] = []
    map_odom: list[int] = []
    available = bags.bag_topics(outputs_bag)
    for m in bags.iter_bag(outputs_bag):
        if m.topic == geo_topic:
            rows.append(report.EstimateRow.from_geo_pose(store.deserialize_cdr(m.data, m.msgtype)))
        elif m.topic == heat_topic:
            msg = store.deserialize_cdr(m.data, m.msgtype)
            heatmaps.append((msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec,
                             _image_to_array(msg)))
        elif m.topic == bags.TOPIC_TF:
            msg = store.deserialize_cdr(m.data, m.msgtype)
            for t in msg.transforms:
                if t.child_frame_id.endswith("odom") and t.header.frame_id.endswith("map"):
                    map_odom.append(t.header.stamp.sec * 1_000_000_000 + t.header.stamp.nanosec)
    rows.sort(key=lambda r: r.stamp_ns)
    # The node latches a NO_FIX message with a zero stamp at activation (nothing seen yet).
    startup = [r for r in rows if r.stamp_ns == 0]
    rows = [r for r in rows if r.stamp_ns != 0]
    image_stamps = [m.stamp_ns for m in bags.iter_bag(input_bag, [bags.TOPIC_IMAGE])]
    image_set = set(image_stamps)
    values = dict(P.defaults(), **{"localizer.keyframe_distance_m": float(keyframe_distance_m),
                                   "localizer.keyframe_interval_s": float(keyframe_interval_s)})
    keyframes = expected_keyframes(input_bag, values)
    gt = report.ground_truth_from_bag(input_bag)
    est_stamps = {r.stamp_ns for r in rows}
    fix_stamps = {r.stamp_ns for r in rows if r.has_fix}
    src = bags.bag_custom_data(input_bag).get(bags.META_PREFIX + "source_drive")
    mosaic = mosaic or find_mosaic(src)
    # The example heatmap: the one of a fix in the middle of the run (TRACKING preferred).
    heat, heat_row = None, None
    by_stamp = {r.stamp_ns: r for r in rows}
    for wanted in ("TRACKING", "LOW_CONFIDENCE"):
        cands = [(s_, h) for s_, h in heatmaps
                 if s_ in by_stamp and by_stamp[s_].status == wanted]
        if cands:
            stamp, heat = cands[len(cands) // 2]
            heat_row = by_stamp[stamp]
            break
    if heat is None and heatmaps:
        heat = heatmaps[len(heatmaps) // 2][1]
    info = {
        "outputs_bag": str(outputs_bag),
        "input_bag": str(input_bag),
        "recorded_topics": {t: c for t, (_, c) in available.items()},
        "expected_keyframes": len(keyframes),
        # The node picks its keyframes by the same rule on the frames it sees; a frame dropped
        # while it is busy shifts the chain, so the rates compare counts, not exact stamps.
        "keyframe_estimate_rate": (min(len(est_stamps & image_set), len(keyframes))
                                   / len(keyframes) if keyframes else 0.0),
        "keyframe_fix_rate": (min(len(fix_stamps & image_set), len(keyframes)) / len(keyframes)
                              if keyframes else 0.0),
        "estimates_at_expected_keyframe_stamps": len(est_stamps & set(keyframes)),
        "stamps_match_images": bool(rows) and est_stamps <= image_set,
        "estimates_not_at_image_stamps": len(est_stamps - image_set),
        "startup_messages": len(startup),
        "tf_map_odom": len(map_odom),
        "heatmaps": len(heatmaps),
    }
    if extra:
        info.update(extra)
    summary = report.write_report(rows, out_dir, images=len(image_stamps), gt=gt, mosaic=mosaic,
                                  heatmap=heat, heatmap_row=heat_row,
                                  gps_track=report.gps_errors(input_bag, gt),
                                  odometry=report.odometry_from_bag(input_bag),
                                  start_ns=image_stamps[0] if image_stamps else None,
                                  extra=info)
    return summary


def format_summary(s: dict) -> str:
    """A few human lines of a node-run summary."""
    def f(v: Any, unit: str = "") -> str:
        return "n/a" if v is None else (f"{v:.2f}{unit}" if isinstance(v, float) else f"{v}{unit}")

    return "\n".join([
        f"images replayed      : {s.get('images')}",
        f"keyframes (expected) : {s.get('expected_keyframes')}",
        f"estimates / fixes    : {s.get('estimates')} / {s.get('fixes')} "
        f"(fix at {100 * s.get('keyframe_fix_rate', 0.0):.0f} % of keyframes)",
        f"median / p90 error   : {f(s.get('median_error_m'), ' m')} / "
        f"{f(s.get('p90_error_m'), ' m')}",
        f"p95 / max error      : {f(s.get('p95_error_m'), ' m')} / "
        f"{f(s.get('max_error_m'), ' m')}",
        f"in the 95 % ellipse  : {f(s.get('ellipse95_coverage'))} of fixes (NEES "
        f"{f(s.get('nees_mean'))}; 2 = consistent)",
        f"GPS fix median error : {f(s.get('gps_median_error_m'), ' m')} (the prior's input)",
        f"dead reckoning median: {f(s.get('odometry_only_median_error_m'), ' m')} (odometry "
        "from the true start)",
        f"mean latency         : {f(s.get('mean_latency_ms'), ' ms')}",
        f"map->odom TFs        : {s.get('tf_map_odom')}   heatmaps: {s.get('heatmaps')}",
        f"stamps = image stamps: {s.get('stamps_match_images')}",
    ])


PROG = "python -m cvl_ros.cli.demo_report"
TOOL = "demo_report"
#: The files ``report.write_report`` may write (checked before any work).
REPORT_FILES = ("estimates.csv", "summary.json", "trajectory.png", "error.png",
                "error_vs_distance.png", "yaw_error.png", "heatmap.png")


def _json_object(text: str) -> dict:
    try:
        v = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got {text!r}")
    return v


def _node_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        raise argparse.ArgumentTypeError(f"not a ROS node name (letters, digits, _): {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the report."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--outputs", required=True, help="bag recorded from the node's outputs")
    p.add_argument("--bag", required=True, help="the input bag that was replayed")
    p.add_argument("--out", required=True, help="report folder (may hold other things)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace report files this tool wrote into --out before")
    p.add_argument("--node-name", type=_node_name, default="cvl_localizer")
    p.add_argument("--mosaic", default=None)
    p.add_argument("--keyframe-distance", type=number(float, 0.0, 10000.0, unit="m"),
                   default=1.0, metavar="M")
    p.add_argument("--keyframe-interval", type=number(float, 0.0, 86400.0, unit="s"),
                   default=0.0, metavar="S")
    p.add_argument("--extra", type=_json_object, default=None,
                   help="JSON object merged into summary.json")
    return p


def _check(args) -> None:
    from cvl_ros.cli._args import CliError
    from cvl_ros.cli._bags import check_bag
    from cvl_ros.outputs import check_members

    check_bag(args.outputs, "--outputs", topics=[f"/{args.node_name}/geo_pose"])
    check_bag(args.bag, "--bag", topics=[bags.TOPIC_IMAGE])
    if args.mosaic and not Path(args.mosaic).is_file():
        raise CliError(f"--mosaic {args.mosaic}: no such file; give the mosaic PNG (with its "
                       ".geo.json beside it), or leave --mosaic out")
    check_members(args.out, REPORT_FILES, tool=TOOL, inputs=[args.outputs, args.bag],
                  overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> int:
    """Write the report of a node run; returns the exit status."""
    from cvl_ros.cli._args import CliError, fail
    from cvl_ros.cli._bags import READ_ERRORS, read_error
    from cvl_ros.outputs import OutputError, prepare_members

    args = build_parser().parse_args(argv)
    try:
        _check(args)
    except (CliError, OutputError) as exc:
        return fail(PROG, exc)
    with tempfile.TemporaryDirectory(prefix="cvl-demo-report-") as tmp:
        try:
            s = node_run_report(args.outputs, args.bag, tmp, node_name=args.node_name,
                                mosaic=args.mosaic, keyframe_distance_m=args.keyframe_distance,
                                keyframe_interval_s=args.keyframe_interval, extra=args.extra)
        except READ_ERRORS as exc:
            return fail(PROG, read_error(f"{args.outputs} or {args.bag}", exc, "reading"))
        names = sorted(p.name for p in Path(tmp).iterdir())
        try:
            with prepare_members(args.out, names, tool=TOOL, inputs=[args.outputs, args.bag],
                                 overwrite=args.overwrite) as staging:
                for name in names:
                    shutil.move(str(Path(tmp) / name), str(staging / name))
        except OutputError as exc:
            return fail(PROG, exc)
    print(format_summary(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
