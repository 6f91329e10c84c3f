"""``python -m cvl_ros.cli.soak`` (``make soak``): the node on a looped bag for a long time.

Runs the node (``cvl-localize``, ``use_sim_time``) and ``cvl-replay --loop`` as their own
processes for ``--minutes`` (``make soak``: ``CVL_SOAK_MINUTES``, default 20), watching from this
process: the node's resident memory (``/proc/<pid>/status`` VmRSS), ``/clock`` (where the bag
loops: the clock jumps back), ``map -> odom`` on ``/tf``, ``/diagnostics`` and ``~/geo_pose``.
Then it checks:

* the node's RSS grows by at most ``--max-rss-growth-pct`` (5 %) after the warm-up (median of
  the window right after the warm-up against the median of the last window);
* no exception in the node's log, and the node ran until it was stopped;
* ``map -> odom`` is continuous: within each loop its stamps never decrease and no two
  consecutive stamps are more than ``--max-tf-gap-s`` apart (sim time); each complete loop has
  it, up to its end; a stamp goes back only once per loop restart (the node resets when the bag
  loops and starts its stamps again at the new loop's first estimate);
* at least ``--min-loops`` loop restarts happened.

Outputs in ``--out`` (the output-safety rule, docs/output-safety.md: a new or empty folder, or
an earlier soak's with ``--overwrite``; written beside it and renamed into place at the end):
``soak.json`` (figures and checks), ``soak.png`` (RSS over time, map->odom stamps), ``rss.csv``,
``tf_map_odom.csv``, ``node.log``, ``replay.log``; without ``--bag`` the drive's tile database
and logs under ``inputs/``. Exit status 0 when every check holds, 1 when one fails (the results
are written either way), 2 for a user error.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cvl_ros.cli._args import number

PROG = "python -m cvl_ros.cli.soak"
TOOL = "cvl-soak"
NODE = "cvl_localizer"
KITTI_REMAPS = {"image": "/kitti/camera_color_left/image_raw",
                "camera_info": "/kitti/camera_color_left/camera_info",
                "odom": "/kitti/odom", "imu": "/kitti/oxts/imu", "gps/fix": "/kitti/oxts/gps/fix"}


def _minutes_default() -> float:
    try:
        return float(os.environ.get("CVL_SOAK_MINUTES", "20"))
    except ValueError:
        return 20.0


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the soak."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run the localizer node on a looped bag (cvl-replay --loop, sim time) and "
                    "check its memory, its log and the continuity of map->odom; writes "
                    "soak.json and soak.png into --out.")
    p.add_argument("--out", required=True, help="output folder (new, empty, or an earlier soak "
                   "output with --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier soak output at --out (never anything else)")
    p.add_argument("--minutes", type=number(float, 0.05, 10080.0, unit="min"),
                   default=_minutes_default(), metavar="M",
                   help="minutes of looping (default: CVL_SOAK_MINUTES, else 20)")
    p.add_argument("--bag", default=None, help="bag to loop (default: a cvl-synth drive turned "
                   "into a bag by cvl-kitti2bag, built into --out/inputs); needs --db")
    p.add_argument("--db", default=None, help="tile database of the bag's town (with --bag)")
    p.add_argument("--checkpoint", default="models/cvlnet_demo",
                   help="model checkpoint or its folder (default: the shipped demo model)")
    p.add_argument("--params-file", default="config/localize.yaml")
    p.add_argument("--seed", type=number(int, 0, 2**31 - 1), default=7,
                   help="cvl-synth seed of the built drive (default 7, the demo's)")
    p.add_argument("--frames", type=number(int, 10, 20000), default=200,
                   help="frames of the built drive at 10 Hz (default 200, the demo's)")
    p.add_argument("--size-m", type=number(float, 100.0, 2000.0, unit="m"), default=None,
                   help="town side of the built drive (default: cvl-synth's)")
    p.add_argument("--rate", type=number(float, 0.01, 100.0, unit="x"), default=0.25,
                   metavar="X", help="replay speed (default 0.25, as the demo: the CPU keeps up)")
    p.add_argument("--threads", type=number(int, 1, 1024), default=2,
                   help="the node's torch threads (default 2)")
    p.add_argument("--warmup-s", type=number(float, 0.0, 86400.0, unit="s"), default=None,
                   metavar="S", help="warm-up left out of the RSS growth (default: the first "
                   "loop or 10 %% of the run, whichever is longer)")
    p.add_argument("--max-rss-growth-pct", type=number(float, 0.0, 1000.0, unit="%"),
                   default=5.0, metavar="PCT")
    p.add_argument("--max-tf-gap-s", type=number(float, 0.01, 3600.0, unit="s"), default=2.0,
                   metavar="S", help="largest gap between map->odom stamps within a loop "
                   "(sim time; default 2)")
    p.add_argument("--min-loops", type=number(int, 0, 100000), default=2, metavar="N",
                   help="loop restarts the run must see (default 2)")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="another node parameter (repeatable)")
    p.add_argument("--domain-id", type=number(int, 0, 232), default=None, metavar="ID",
                   help="ROS_DOMAIN_ID of the run (default: random in 100-199)")
    return p


# ------------------------------------------------------------------------------ monitoring
class _Monitor:
    """Listens to /clock, /tf, /diagnostics and ~/geo_pose (this process, one rclpy node)."""

    def __init__(self, context) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from tf2_msgs.msg import TFMessage

        from cvl_ros.msg import GeoPoseEstimate

        self.node = rclpy.create_node("cvl_soak_monitor", context=context)
        self.lock = threading.Lock()
        self.clock_first: int | None = None
        self.clock_last: int | None = None
        self.play_start: float | None = None  # monotonic time the clock first advanced
        self.loop_starts: list[tuple[float, int]] = []  # (monotonic, clock ns) of jumps back
        self.tf: list[tuple[float, int]] = []  # (monotonic receipt, stamp ns) of map->odom
        self.diag: dict | None = None
        self.diag_t: float | None = None
        self.in_flight: list[int] = []
        self.geo_status: dict[int, int] = {}
        rel = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Clock, "/clock", self._on_clock, QoSProfile(depth=10))
        self.node.create_subscription(TFMessage, "/tf", self._on_tf, rel)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.node.create_subscription(GeoPoseEstimate, f"/{NODE}/geo_pose", self._on_geo, rel)

    def _on_clock(self, msg) -> None:
        t = time.monotonic()
        ns = msg.clock.sec * 1_000_000_000 + msg.clock.nanosec
        with self.lock:
            if self.clock_first is None:
                self.clock_first = ns
            elif self.play_start is None and ns > self.clock_first:
                self.play_start = t
            if self.clock_last is not None and ns < self.clock_last - 500_000_000:
                self.loop_starts.append((t, ns))
            self.clock_last = ns

    def _on_tf(self, msg) -> None:
        t = time.monotonic()
        for tr in msg.transforms:
            if tr.header.frame_id.lstrip("/") == "map" and tr.child_frame_id.lstrip("/") == "odom":
                ns = tr.header.stamp.sec * 1_000_000_000 + tr.header.stamp.nanosec
                with self.lock:
                    self.tf.append((t, ns))

    def _on_diag(self, msg) -> None:
        from cvl_ros.ros.monitoring import counters, diagnostic_values

        v = diagnostic_values(msg)
        if v is None:
            return
        c = counters(v)
        with self.lock:
            self.diag, self.diag_t = v, time.monotonic()
            if c["received_images"] >= 0:
                self.in_flight.append(c["received_images"] - c["dropped_images"]
                                      - c["frames_handled"])

    def _on_geo(self, msg) -> None:
        with self.lock:
            self.geo_status[int(msg.status)] = self.geo_status.get(int(msg.status), 0) + 1


# ------------------------------------------------------------------------------ analysis
def analyse_tf(tf: list[tuple[float, int]], loop_bounds: list[float], bag_start_ns: int,
               bag_end_ns: int, max_gap_s: float) -> dict:
    """Continuity of map->odom: ``tf`` = [(receipt time, stamp ns)] in arrival order.

    ``loop_bounds`` are the (monotonic) times the loops started (the first: the play start).
    A stamp may go back only once after each loop restart (the node's reset); between such
    points (a segment) consecutive stamps must be at most ``max_gap_s`` apart.
    """
    restarts = loop_bounds[1:]
    decreases = [i for i in range(1, len(tf)) if tf[i][1] < tf[i - 1][1]]
    unexplained = []
    prev_t = float("-inf")
    for i in decreases:
        t = tf[i][0]
        if not any(prev_t < s <= t for s in restarts):
            unexplained.append({"received_s": round(t - loop_bounds[0], 2),
                                "from_ns": tf[i - 1][1], "to_ns": tf[i][1]})
        prev_t = t
    cuts = [0, *decreases, len(tf)]
    segments = [tf[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    max_gap = 0.0
    max_wall_gap = 0.0
    for seg in segments:
        for (t0, s0), (t1, s1) in zip(seg[:-1], seg[1:]):
            max_gap = max(max_gap, (s1 - s0) / 1e9)
            max_wall_gap = max(max_wall_gap, t1 - t0)
    loops = []
    bounds = [*loop_bounds, float("inf")]
    for k in range(len(loop_bounds)):
        a, b = bounds[k], bounds[k + 1]
        stamps = [s for t, s in tf if a <= t < b and s <= bag_end_ns + 5_000_000_000]
        complete = b != float("inf")
        first = min(stamps) if stamps else None
        last = max(stamps) if stamps else None
        loops.append({
            "loop": k, "complete": complete, "tf_messages": len(stamps),
            "first_tf_after_start_s": round((first - bag_start_ns) / 1e9, 2)
            if first is not None else None,
            # 0 when map->odom reached the loop's end (it runs transform_tolerance ahead)
            "tail_gap_s": round(max(0.0, (bag_end_ns - last) / 1e9), 2)
            if last is not None else None})
    complete = [lp for lp in loops if lp["complete"]]
    return {
        "messages": len(tf), "stamp_decreases": len(decreases),
        "unexplained_decreases": unexplained, "segments": len(segments),
        "max_gap_s": round(max_gap, 3), "max_wall_gap_s": round(max_wall_gap, 3),
        "loops": loops,
        "every_complete_loop_has_tf": all(lp["tf_messages"] > 0 for lp in complete),
        "max_tail_gap_s": max([lp["tail_gap_s"] for lp in complete
                               if lp["tail_gap_s"] is not None], default=None),
        "max_first_tf_after_start_s": max([lp["first_tf_after_start_s"] for lp in loops
                                           if lp["first_tf_after_start_s"] is not None],
                                          default=None),
    }


def analyse_rss(samples: list[tuple[float, float]], warmup_s: float, duration_s: float) -> dict:
    """RSS growth after the warm-up: ``samples`` = [(seconds since play start, MB)]."""
    import numpy as np

    win = max(0.1 * duration_s, 3.0)
    after = [(t, mb) for t, mb in samples if t >= warmup_s]
    base = [mb for t, mb in after if t <= warmup_s + win]
    end_t = max((t for t, _ in samples), default=0.0)
    end = [mb for t, mb in after if t >= end_t - win]
    if not base or not end:
        return {"samples": len(samples), "warmup_s": round(warmup_s, 1), "growth_pct": None}
    b, e = float(np.median(base)), float(np.median(end))
    slope = None
    if len(after) >= 3:
        ts = np.array([t for t, _ in after])
        if ts.max() > ts.min():
            slope = float(np.polyfit(ts / 3600.0, [mb for _, mb in after], 1)[0])
    return {
        "samples": len(samples), "warmup_s": round(warmup_s, 1), "window_s": round(win, 1),
        "start_mb": round(samples[0][1], 1) if samples else None,
        "baseline_mb": round(b, 1), "end_mb": round(e, 1),
        "max_after_warmup_mb": round(max(mb for _, mb in after), 1),
        "growth_pct": round(100.0 * (e - b) / b, 2),
        "max_growth_pct": round(100.0 * (max(mb for _, mb in after) - b) / b, 2),
        "slope_mb_per_h": round(slope, 2) if slope is not None else None,
    }


def plot(path: Path, rss: list[tuple[float, float]], tf: list[tuple[float, int]],
         loop_starts: list[float], bag_start_ns: int, rss_summary: dict, title: str) -> None:
    """``soak.png``: RSS over time (loop restarts, warm-up) above the map->odom stamps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True,
                                  gridspec_kw={"height_ratios": [2, 1]})
    if rss:
        ax.plot([t / 60 for t, _ in rss], [mb for _, mb in rss], lw=1.2, color="C0",
                label="node RSS")
    w = rss_summary.get("warmup_s")
    if w:
        ax.axvspan(0, w / 60, color="0.9", label="warm-up")
    if rss_summary.get("baseline_mb") is not None:
        b = rss_summary["baseline_mb"]
        ax.axhline(b * 1.05, color="C3", ls="--", lw=0.8, label="baseline + 5 %")
    for k, s in enumerate(loop_starts):
        for a in (ax, ax2):
            a.axvline(s / 60, color="0.6", ls=":", lw=0.8,
                      label="bag loops" if (k == 0 and a is ax) else None)
    ax.set_ylabel("RSS [MB]")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    if tf:
        ax2.plot([t / 60 for t, _ in tf], [(s - bag_start_ns) / 1e9 for _, s in tf], ".",
                 ms=1.5, color="C2")
    ax2.set_ylabel("map->odom stamp\n[s into the bag]")
    ax2.set_xlabel("wall time since the replay started [min]")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------ running
def _run_tool(cmd: list[str], log: Path, timeout_s: float, env: dict) -> None:
    with open(log, "w") as f:
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:4])} failed (exit {res.returncode}); see {log}:\n"
                           + log.read_text(errors="replace")[-2000:])


def build_inputs(args, folder: Path, ckpt: Path, env: dict) -> tuple[Path, Path]:
    """A cvl-synth drive -> tile database (``folder/db``) and bag (``folder/bag``)."""
    py = sys.executable
    folder.mkdir(parents=True, exist_ok=True)
    synth = [py, "-m", "cvl_ros.synth.cli", "--seed", str(args.seed), "--out",
             str(folder / "town"), "--drives", "1", "--frames-per-drive", str(args.frames),
             "--style", "old_town", "--split", "test", "--heading-noise-deg", "0.5",
             "--image-size", "512x128", "--quiet"]
    if args.size_m is not None:
        synth += ["--size-m", f"{args.size_m:g}"]
    _run_tool(synth, folder / "synth.log", 900, env)
    drive = next((folder / "town" / "raw_data").glob("*/*_sync"))
    _run_tool([py, "-m", "cvl_ros.cli.build_db", "--checkpoint", str(ckpt), "--tiles",
               str(folder / "town"), "--split", "test2", "--out", str(folder / "db"),
               "--no-progress", "--threads", str(args.threads)],
              folder / "build_db.log", 900, env)
    _run_tool([py, "-m", "cvl_ros.cli.kitti2bag", "--drive", str(drive), "--out",
               str(folder / "bag"), "--odom-drift", "1.0", "--quiet"],
              folder / "kitti2bag.log", 600, env)
    shutil.rmtree(folder / "town")  # the images and tiles: rebuilt from the seed when needed
    return folder / "bag", folder / "db"


def _bag_span(bag: Path) -> tuple[int, int]:
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        return int(reader.start_time), int(reader.end_time)


def soak(args, out: Path, ckpt: Path, params_file: Path) -> dict:
    """Build (or take) the inputs, run the node and the replay, analyse; returns soak.json."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from cvl_ros.ros import monitoring as M

    domain = args.domain_id if args.domain_id is not None else 100 + random.randrange(100)
    tmp_logs = Path(tempfile.mkdtemp(prefix="cvl_soak_ros_log_"))
    env = M.ros_env(domain, tmp_logs)
    env["OMP_NUM_THREADS"] = str(args.threads)
    t_build = time.monotonic()
    if args.bag is None:
        bag, db = build_inputs(args, out / "inputs", ckpt, env)
    else:
        bag, db = Path(args.bag).resolve(), Path(args.db).resolve()
    build_s = time.monotonic() - t_build
    bag_start, bag_end = _bag_span(bag)
    params = {"use_sim_time": True, "checkpoint_path": ckpt, "database_path": db,
              "torch_threads": args.threads}
    cmd = M.node_command(params_file, params, KITTI_REMAPS, extra=args.param)
    for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE",
              "AMENT_PREFIX_PATH"):
        os.environ[k] = env[k]
    node_log = open(out / "node.log", "w")
    replay_log = open(out / "replay.log", "w")
    node = subprocess.Popen(cmd, env=env, stdout=node_log, stderr=subprocess.STDOUT)
    replay = None
    context = rclpy.Context()
    rclpy.init(args=[PROG], context=context)  # not our argv: no ROS arguments
    mon = executor = spinner = None
    sampler = M.RssSampler(node.pid, max(1.0, args.minutes * 60.0 / 600.0))
    sampler.sample()
    sampler.start()
    duration_s = args.minutes * 60.0
    t_node = time.monotonic()
    stopped_early = ""
    try:
        mon = _Monitor(context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(mon.node)
        spinner = threading.Thread(target=executor.spin, name="spin", daemon=True)
        spinner.start()
        replay = subprocess.Popen(
            [sys.executable, "-m", "cvl_ros.cli.replay", str(bag), "--rate", f"{args.rate:g}",
             "--loop", "--tail", "0", "--wait-timeout", "600"],
            env=env, stdout=replay_log, stderr=subprocess.STDOUT)
        while mon.play_start is None:
            if node.poll() is not None or replay.poll() is not None:
                stopped_early = "the node or the replay exited before the bag started playing"
                break
            if time.monotonic() - t_node > 900:
                stopped_early = "the bag did not start playing within 900 s"
                break
            time.sleep(0.1)
        t0 = mon.play_start or time.monotonic()
        while not stopped_early and time.monotonic() - t0 < duration_s:
            if node.poll() is not None:
                stopped_early = f"the node exited (code {node.returncode})"
            elif replay.poll() is not None:
                stopped_early = f"the replay exited (code {replay.returncode})"
            time.sleep(0.5)
        t_end = time.monotonic()
        node_alive = node.poll() is None
        replay_rc = M.stop_process(replay)
        time.sleep(1.0)
        sampler.stop()
        sampler.sample()
    finally:
        sampler.stop()
        if replay is not None and replay.poll() is None:
            M.stop_process(replay)
        node_rc = M.stop_process(node)
        node_log.close()
        replay_log.close()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if mon is not None:
            mon.node.destroy_node()
        context.try_shutdown()
        shutil.rmtree(tmp_logs, ignore_errors=True)
    if args.bag is None:
        shutil.rmtree(out / "inputs" / "bag", ignore_errors=True)  # rebuilt from the seed
    return _report(args, out, mon, sampler, t0, t_end, t_node, node_alive, node_rc, replay_rc,
                   stopped_early, bag, db, ckpt, bag_start, bag_end, build_s, duration_s)


def _report(args, out, mon, sampler, t0, t_end, t_node, node_alive, node_rc, replay_rc,
            stopped_early, bag, db, ckpt, bag_start, bag_end, build_s, duration_s) -> dict:
    from cvl_ros.ros import monitoring as M

    ran_s = t_end - t0
    loop_starts = [t for t, _ in mon.loop_starts if t <= t_end]
    bounds = [t0, *loop_starts]
    first_loop_s = (loop_starts[0] - t0) if loop_starts else ran_s
    warmup = args.warmup_s if args.warmup_s is not None else max(first_loop_s, 0.1 * ran_s)
    rss = [(t - t0, mb) for t, mb in sampler.samples]
    rss_after_play = [(t, mb) for t, mb in rss if t >= 0]
    rss_summary = analyse_rss(rss_after_play, warmup, ran_s)
    tf = [(t, s) for t, s in mon.tf if t <= t_end + 0.5]
    tf_summary = analyse_tf(tf, bounds, bag_start, bag_end, args.max_tf_gap_s)
    node_text = (out / "node.log").read_text(errors="replace")
    replay_text = (out / "replay.log").read_text(errors="replace")
    exceptions = M.exception_lines(node_text)
    diag = mon.diag or {}
    c = M.counters(diag)
    restarts = len(loop_starts)
    growth = rss_summary.get("growth_pct")
    checks = {
        "ran_full_duration": not stopped_early,
        "node_alive_until_stopped": bool(node_alive) and M.clean_exit(node_rc),
        "no_exceptions_in_node_log": not exceptions,
        "rss_growth_within_limit": growth is not None and growth <= args.max_rss_growth_pct,
        "loop_restarts_at_least_min": restarts >= args.min_loops,
        "tf_present": tf_summary["messages"] > 0,
        "tf_every_complete_loop": tf_summary["every_complete_loop_has_tf"],
        "tf_stamps_non_decreasing_within_loops": not tf_summary["unexplained_decreases"],
        "tf_max_gap_within_limit": tf_summary["max_gap_s"] <= args.max_tf_gap_s,
        "tf_reaches_loop_ends": tf_summary["max_tail_gap_s"] is None
        or tf_summary["max_tail_gap_s"] <= args.max_tf_gap_s,
    }
    queue_size = 1
    for item in args.param:
        if item.startswith("queue_size:="):
            queue_size = int(item.split(":=", 1)[1])
    # received - dropped - handled at each /diagnostics: the queue plus the frame in work
    checks["in_flight_within_queue_bound"] = all(0 <= k <= queue_size + 1
                                                 for k in mon.in_flight)
    with open(out / "rss.csv", "w") as f:
        f.write("seconds_since_play,rss_mb\n")
        f.writelines(f"{t:.2f},{mb:.1f}\n" for t, mb in rss)
    with open(out / "tf_map_odom.csv", "w") as f:
        f.write("received_s_since_play,stamp_ns\n")
        f.writelines(f"{t - t0:.3f},{s}\n" for t, s in tf)
    title = (f"soak {ran_s / 60:.1f} min, {restarts} loop restarts: RSS growth "
             f"{growth if growth is not None else float('nan'):.2f} % after warm-up; "
             f"map->odom max gap {tf_summary['max_gap_s']:.2f} s")
    plot(out / "soak.png", rss_after_play, [(t - t0, s) for t, s in tf],
         [t - t0 for t in loop_starts], bag_start, rss_summary, title)
    result = {
        "tool": TOOL, "date": _dt.date.today().isoformat(),
        "command": " ".join([PROG, *args.argv]),
        "config": {"minutes": args.minutes, "rate": args.rate, "bag": str(bag),
                   "database": str(db), "checkpoint": str(ckpt), "threads": args.threads,
                   "params": list(args.param), "seed": args.seed if args.bag is None else None,
                   "frames": args.frames if args.bag is None else None,
                   "max_rss_growth_pct": args.max_rss_growth_pct,
                   "max_tf_gap_s": args.max_tf_gap_s, "min_loops": args.min_loops},
        "bag_duration_s": round((bag_end - bag_start) / 1e9, 3),
        "inputs_build_s": round(build_s, 1),
        "node_start_to_play_s": round(t0 - t_node, 1),
        "ran_s": round(ran_s, 1), "stopped_early": stopped_early,
        "loop_restarts": restarts,
        "rss": rss_summary, "tf_map_odom": tf_summary,
        "node_counters": c, "node_resets": c.get("resets"),
        "in_flight_max": max(mon.in_flight) if mon.in_flight else None,
        "geo_pose_status_counts": {str(k): v for k, v in sorted(mon.geo_status.items())},
        "node_exit_code": node_rc, "replay_exit_code": replay_rc,
        "node_log_exceptions": exceptions,
        "replay_log_exceptions": M.exception_lines(replay_text),
        "checks": checks, "ok": all(checks.values()),
    }
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> int:
    """Entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from cvl_ros.cli._args import CliError, fail
    from cvl_ros.outputs import OutputError, check_output, prepare_output
    from cvl_ros.resources import resolve_path

    try:
        ckpt = resolve_path(args.checkpoint)
        params_file = resolve_path(args.params_file)
        if ckpt is None:
            raise CliError(f"--checkpoint {args.checkpoint} not found")
        if params_file is None:
            raise CliError(f"--params-file {args.params_file} not found")
        if (args.bag is None) != (args.db is None):
            raise CliError("--bag and --db go together (the database of the bag's town); "
                           "give both, or neither to build a drive")
        if args.bag is not None:
            if not (Path(args.bag) / "metadata.yaml").is_file():
                raise CliError(f"--bag {args.bag}: not a ROS 2 bag (no metadata.yaml)")
            if not Path(args.db).is_dir():
                raise CliError(f"--db {args.db}: not a folder")
        for item in args.param:
            if ":=" not in item:
                raise CliError(f"--param {item!r}: expected NAME:=VALUE")
        inputs = [ckpt, params_file] + ([args.bag, args.db] if args.bag else [])
        check_output(args.out, tool=TOOL, inputs=inputs, overwrite=args.overwrite)
    except (CliError, OutputError, ValueError) as exc:
        return fail(PROG, exc)
    ckpt, params_file = Path(ckpt).resolve(), Path(params_file).resolve()
    print(f"[soak] {args.minutes:g} min of looping into {args.out} (results at the end)",
          flush=True)
    try:
        with prepare_output(args.out, tool=TOOL, inputs=inputs, overwrite=args.overwrite) as tmp:
            result = soak(args, Path(tmp), ckpt, params_file)
    except OutputError as exc:
        return fail(PROG, exc)
    except RuntimeError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    brief = {"ran_s": result["ran_s"], "loop_restarts": result["loop_restarts"],
             "rss": {k: result["rss"].get(k) for k in ("baseline_mb", "end_mb", "growth_pct",
                                                       "max_growth_pct", "slope_mb_per_h")},
             "tf_map_odom": {k: result["tf_map_odom"][k] for k in (
                 "messages", "stamp_decreases", "max_gap_s", "max_tail_gap_s",
                 "max_first_tf_after_start_s")},
             "checks": result["checks"], "ok": result["ok"]}
    print(json.dumps(brief, indent=2))
    print(f"[soak] {'OK' if result['ok'] else 'FAILED'}: {Path(args.out) / 'soak.json'}, "
          f"{Path(args.out) / 'soak.png'}", flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
