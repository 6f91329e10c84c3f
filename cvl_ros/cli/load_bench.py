"""``python -m cvl_ros.cli.load_bench``: the node under a camera faster than its inference.

Starts the node (``cvl-localize``, wall clock) as its own process, publishes synthetic
1024x256 rgb8 images with their camera_info and odometry (a circle drive) at 30 Hz from this
process for ``--duration`` seconds, and measures what the node's latest-wins queue
(``queue_size``) does with the overload: images published, received, processed and dropped
(the node's ``/diagnostics`` counters), the latency of its outputs (image stamp -> receipt of
``~/geo_pose`` here), its resident memory (``/proc/<pid>/status`` VmRSS) before, during and
after, and the accounting invariant ``received == dropped + handled + in flight`` with
``in flight <= queue_size + 1``. Writes one JSON (``--json``; replaced only if this tool
wrote it). Exit status 0 when the invariants hold, 1 when one fails, 2 for a user error.

See docs/node.md (overload) and docs/results.md ("Load: 30 Hz images").
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cvl_ros.cli._args import device, number

PROG = "python -m cvl_ros.cli.load_bench"
TOOL = "cvl-load-bench"
NODE = "cvl_localizer"


def _size(text: str) -> tuple[int, int]:
    parts = str(text).lower().split("x")
    try:
        w, h = (int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH in pixels, e.g. 1024x256, got {text!r}") \
            from None
    if not (16 <= w <= 4096 and 16 <= h <= 4096):
        raise argparse.ArgumentTypeError(f"W and H must be 16-4096 px, got {text!r}")
    return w, h


def is_load_result(path) -> bool:
    """Whether ``path`` holds a JSON this tool wrote."""
    from cvl_ros.outputs import read_json

    res = read_json(path)
    return isinstance(res, dict) and res.get("tool") == TOOL


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the load benchmark."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Publish images + camera_info + odometry at --rate-hz to the localizer "
                    "node (its own process) and report drops, output latency and the node's "
                    "memory under the overload, as JSON.")
    p.add_argument("--json", required=True, dest="json_out",
                   help="output JSON (an existing file is replaced only if this tool wrote it)")
    p.add_argument("--checkpoint", default="models/cvlnet_demo",
                   help="model checkpoint or its folder (default: the shipped demo model)")
    p.add_argument("--db", default="demo_out/db",
                   help="tile database (default demo_out/db, written by `make demo`)")
    p.add_argument("--params-file", default="config/localize.yaml")
    p.add_argument("--duration", type=number(float, 0.5, 86400.0, unit="s"), default=60.0,
                   metavar="S", help="seconds of publishing (default 60)")
    p.add_argument("--rate-hz", type=number(float, 0.1, 1000.0, unit="Hz"), default=30.0,
                   metavar="HZ", help="image rate (default 30)")
    p.add_argument("--image-size", type=_size, default=(1024, 256), metavar="WxH",
                   help="image size (default 1024x256)")
    p.add_argument("--queue-size", type=number(int, 1, 1000), default=1, metavar="N",
                   help="the node's queue_size (default 1, the shipped value)")
    p.add_argument("--speed-mps", type=number(float, 0.0, 100.0, unit="m/s"), default=10.0,
                   metavar="V", help="speed of the synthetic drive (default 10; with the shipped "
                   "keyframe_distance_m 1.0 every third image is a keyframe)")
    p.add_argument("--yaw-rate", type=number(float, -2.0, 2.0, unit="rad/s"), default=0.1,
                   metavar="W", help="yaw rate of the drive: a circle (default 0.1)")
    p.add_argument("--device", type=device, default="auto", help="the node's device")
    p.add_argument("--torch-threads", type=number(int, 0, 1024), default=0, metavar="N",
                   help="the node's torch_threads (0: torch's default)")
    p.add_argument("--warmup", type=number(float, 0.0, 3600.0, unit="s"), default=5.0,
                   metavar="S", help="first seconds left out of the latency figures and the "
                   "'after warm-up' RSS (default 5)")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="another node parameter (repeatable)")
    p.add_argument("--start-timeout", type=number(float, 1.0, 3600.0, unit="s"), default=180.0,
                   metavar="S", help="seconds to wait for the node to become active")
    p.add_argument("--domain-id", type=number(int, 0, 232), default=None, metavar="ID",
                   help="ROS_DOMAIN_ID of the run (default: random in 100-199)")
    return p


def _images(w: int, h: int, n: int = 8) -> list:
    """``n`` smooth random textures (they pass the node's image check) as rgb8 arrays."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        a = rng.normal(0.0, 1.0, (h // 4, w // 4, 3)).astype(np.float32)
        a = cv2.GaussianBlur(a, (0, 0), 2.0)
        a = cv2.resize(a, (w, h), interpolation=cv2.INTER_CUBIC)
        a = (a - a.mean()) / (a.std() + 1e-6)
        out.append(np.clip(128 + 40 * a, 0, 255).astype(np.uint8))
    return out


class _Bench:
    """The publishing and listening side of the benchmark (one rclpy node, this process)."""

    def __init__(self, args, context) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import Odometry
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image

        from cvl_ros.msg import GeoPoseEstimate
        from cvl_ros.ros import convert

        self.args = args
        self.node = rclpy.create_node("cvl_load_bench", context=context)
        sensor = qos_profile_sensor_data
        self.pub_img = self.node.create_publisher(Image, "image", sensor)
        self.pub_info = self.node.create_publisher(CameraInfo, "camera_info", sensor)
        self.pub_odom = self.node.create_publisher(Odometry, "odom", sensor)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.lock = threading.Lock()
        self.diags: list[tuple[float, dict]] = []
        self.geo: list[tuple[int, int, float, int]] = []  # stamp, recv ns, node latency, status
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.sub_geo = self.node.create_subscription(GeoPoseEstimate, f"/{NODE}/geo_pose",
                                                     self._on_geo, reliable)
        w, h = args.image_size
        self.msgs = [convert.rgb_to_image(a, "rgb8", None, "camera_optical")
                     for a in _images(w, h)]
        info = CameraInfo(width=w, height=h)
        info.header.frame_id = "camera_optical"
        fx, fy = 721.54 * w / 1242.0, 721.54 * h / 375.0  # KITTI's P_rect_02, rescaled
        info.k = [fx, 0.0, 609.56 * w / 1242.0, 0.0, fy, 172.85 * h / 375.0, 0.0, 0.0, 1.0]
        self.info = info
        self.odom = Odometry()
        self.odom.header.frame_id, self.odom.child_frame_id = "odom", "base_link"
        self.published: list[int] = []  # image stamps [ns]
        self.publish_t: list[float] = []
        self._stop = threading.Event()

    def _on_diag(self, msg) -> None:
        from cvl_ros.ros.monitoring import diagnostic_values

        v = diagnostic_values(msg)
        if v is not None:
            with self.lock:
                self.diags.append((time.monotonic(), v))

    def _on_geo(self, msg) -> None:
        recv = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.geo.append((stamp, recv, float(msg.latency_s), int(msg.status)))

    def last_diag(self) -> dict | None:
        with self.lock:
            return self.diags[-1][1] if self.diags else None

    def _set_odom(self, t_s: float, stamp) -> None:
        v, wz = self.args.speed_mps, self.args.yaw_rate
        yaw = wz * t_s
        if abs(wz) > 1e-9:
            x, y = v / wz * math.sin(yaw), v / wz * (1.0 - math.cos(yaw))
        else:
            x, y = v * t_s, 0.0
        m = self.odom
        m.header.stamp = stamp
        p = m.pose.pose
        p.position.x, p.position.y, p.position.z = float(x), float(y), 0.0
        p.orientation.z, p.orientation.w = math.sin(yaw / 2.0), math.cos(yaw / 2.0)
        m.twist.twist.linear.x = float(v)
        m.twist.twist.angular.z = float(wz)

    def publish_for(self, duration_s: float) -> None:
        """Publish odometry, camera_info and image at the rate (a fixed schedule)."""
        from cvl_ros.ros import convert

        period = 1.0 / self.args.rate_hz
        t0 = time.monotonic()
        i = 0
        while not self._stop.is_set():
            target = t0 + i * period
            if target - t0 >= duration_s:
                break
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stamp_ns = time.time_ns()
            stamp = convert.ns_to_stamp(stamp_ns)
            self._set_odom(i * period, stamp)
            self.pub_odom.publish(self.odom)
            self.info.header.stamp = stamp
            self.pub_info.publish(self.info)
            img = self.msgs[i % len(self.msgs)]
            img.header.stamp = stamp
            self.pub_img.publish(img)
            self.published.append(stamp_ns)
            self.publish_t.append(time.monotonic())
            i += 1

    def stop(self) -> None:
        self._stop.set()


def _wait(pred, timeout_s: float, proc=None, step_s: float = 0.05) -> bool:
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if pred():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(step_s)
    return bool(pred())


def run(args, log_path: Path) -> dict:
    """Run the benchmark; returns the result dict (``ok`` says whether the invariants hold)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from cvl_ros.ros import monitoring as M

    domain = args.domain_id if args.domain_id is not None else 100 + random.randrange(100)
    env = M.ros_env(domain, log_path.parent / "ros_log")
    params = {"checkpoint_path": args.checkpoint_resolved, "database_path": args.db_resolved,
              "device": args.device, "torch_threads": args.torch_threads,
              "queue_size": args.queue_size, "use_sim_time": False,
              "use_tf_static_extrinsics": False, "heading_source": "odom",
              "use_gps_prior": False, "diagnostics_rate_hz": 2.0}
    cmd = M.node_command(args.params_file_resolved, params, extra=args.param)
    for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE",
              "AMENT_PREFIX_PATH"):
        os.environ[k] = env[k]  # this process joins the same graph
    if args.torch_threads:
        env["OMP_NUM_THREADS"] = str(args.torch_threads)
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(args=[PROG], context=context)  # not our argv: no ROS arguments
    bench = executor = spinner = sampler = None
    result: dict = {"tool": TOOL, "date": _dt.date.today().isoformat(),
                    "command": " ".join([PROG, *args.argv]), "node_pid": proc.pid,
                    "ros_domain_id": domain}
    try:
        bench = _Bench(args, context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(bench.node)
        spinner = threading.Thread(target=executor.spin, name="spin", daemon=True)
        spinner.start()

        def active():
            d = bench.last_diag()
            return (d is not None and d.get("lifecycle_state") == "active"
                    and bench.pub_img.get_subscription_count() > 0
                    and bench.pub_odom.get_subscription_count() > 0
                    and bench.pub_info.get_subscription_count() > 0
                    and bench.sub_geo.get_publisher_count() > 0)

        t_start = time.monotonic()
        if not _wait(active, args.start_timeout, proc):
            d = bench.last_diag() or {}
            why = ("the node exited" if proc.poll() is not None else
                   f"the node is not active after {args.start_timeout:g} s")
            raise RuntimeError(f"{why}: {d.get('_message') or d.get('missing_resources') or ''}"
                               f" (log: {log_path})")
        time.sleep(1.0)  # the last subscriptions settle
        result["node_start_s"] = round(time.monotonic() - t_start, 2)
        sampler = M.RssSampler(proc.pid, 0.5)
        rss_idle = sampler.sample()
        sampler.start()
        diag_before = M.counters(bench.last_diag() or {})
        t_pub0 = time.monotonic()
        bench.publish_for(args.duration)
        t_pub1 = time.monotonic()

        def drained():
            d = bench.last_diag()
            if d is None:
                return False
            c = M.counters(d)
            return (c["received_images"] == c["dropped_images"] + c["frames_handled"]
                    and bench.diags[-1][0] > t_pub1 + 0.6)

        result["drained"] = _wait(drained, 60.0, proc)
        time.sleep(1.0)  # the last outputs arrive
        sampler.stop()
        rss_end = sampler.sample()
        alive = proc.poll() is None
    finally:
        if sampler is not None:
            sampler.stop()
        rc = M.stop_process(proc)
        log.close()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if bench is not None:
            bench.stop()
            bench.node.destroy_node()
        context.try_shutdown()
    return _summarise(args, result, bench, sampler, rss_idle, rss_end, diag_before,
                      t_pub0, t_pub1, alive, rc, log_path)


def _summarise(args, result, bench, sampler, rss_idle, rss_end, diag_before, t_pub0, t_pub1,
               alive, rc, log_path) -> dict:
    from cvl_ros.ros import monitoring as M

    final = M.counters(bench.last_diag() or {})
    c = {k: final[k] - max(diag_before.get(k, 0), 0) for k in final}
    published = len(bench.published)
    pub_s = t_pub1 - t_pub0
    # in flight at each diagnostics message during the run: received - dropped - handled
    in_flight = []
    for t, v in bench.diags:
        if t_pub0 <= t <= t_pub1 + 60:
            k = M.counters(v)
            in_flight.append(k["received_images"] - k["dropped_images"] - k["frames_handled"])
    ours = set(bench.published)
    warm_ns = bench.published[0] + int(args.warmup * 1e9) if bench.published else 0
    geo = [g for g in bench.geo if g[0] in ours]
    lat = [(r - s) / 1e6 for s, r, _, _ in geo if s >= warm_ns]
    node_lat = [1e3 * nl for s, _, nl, _ in geo if s >= warm_ns]
    samples = sampler.samples
    warm_t = t_pub0 + args.warmup
    after = [mb for t, mb in samples if t >= warm_t]
    rss_warm = after[0] if after else rss_idle
    rss_max = max([mb for _, mb in samples] + [rss_idle or 0.0])
    log_text = Path(log_path).read_text(errors="replace")
    exceptions = M.exception_lines(log_text)
    accounting = (c["received_images"] == c["dropped_images"] + c["frames_handled"])
    result.update({
        "config": {
            "rate_hz": args.rate_hz, "image_size": "x".join(map(str, args.image_size)),
            "duration_s": args.duration, "queue_size": args.queue_size,
            "checkpoint": str(args.checkpoint_resolved), "database": str(args.db_resolved),
            "device": args.device, "torch_threads": args.torch_threads,
            "speed_mps": args.speed_mps, "yaw_rate": args.yaw_rate, "warmup_s": args.warmup,
            "params": list(args.param)},
        "published_images": published,
        "publish_rate_hz": round(published / pub_s, 2) if pub_s > 0 else None,
        "received_images": c["received_images"],
        "transport_lost": published - c["received_images"],
        "dropped_images": c["dropped_images"],
        "processed_images": c["processed_images"],
        "frames_handled": c["frames_handled"],
        "rejected_frames": c["frames_handled"] - c["processed_images"],
        "estimates": c["estimates"],
        "outputs_received": len(geo),
        "input_errors": c["input_errors"],
        "drop_rate": round(c["dropped_images"] / c["received_images"], 4)
        if c["received_images"] > 0 else None,
        "processed_rate_hz": round(c["processed_images"] / pub_s, 2) if pub_s > 0 else None,
        "latency_ms": M.percentiles(lat),
        "node_latency_ms": M.percentiles(node_lat),
        "rss_mb": {"idle": round(rss_idle or 0.0, 1), "after_warmup": round(rss_warm or 0.0, 1),
                   "end": round(rss_end or 0.0, 1), "max": round(rss_max, 1),
                   "growth_after_warmup_mb": round((rss_end or 0.0) - (rss_warm or 0.0), 1)},
        "queue_size": args.queue_size,
        "in_flight_max": max(in_flight) if in_flight else None,
        "in_flight_min": min(in_flight) if in_flight else None,
        "node_exit_code": rc,
        "node_log_exceptions": exceptions,
        "rss_samples": [[round(t - t_pub0, 2), round(mb, 1)] for t, mb in samples],
    })
    checks = {
        "node_alive_until_stopped": bool(alive) and M.clean_exit(rc),
        "no_exceptions_in_node_log": not exceptions,
        "drained": bool(result.get("drained")),
        "received_eq_dropped_plus_handled": accounting,
        "in_flight_within_queue_bound": bool(in_flight) and min(in_flight) >= 0
        and max(in_flight) <= args.queue_size + 1,
        "transport_lost_nonnegative": published >= c["received_images"],
    }
    result["checks"] = checks
    result["ok"] = all(checks.values())
    return result


def main(argv=None) -> int:
    """Entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from cvl_ros.cli._args import CliError, fail
    from cvl_ros.outputs import OutputError, check_result_file
    from cvl_ros.resources import resolve_path

    try:
        ckpt, db = resolve_path(args.checkpoint), resolve_path(args.db)
        params_file = resolve_path(args.params_file)
        if ckpt is None:
            raise CliError(f"--checkpoint {args.checkpoint} not found")
        if db is None:
            raise CliError(f"--db {args.db} not found; `make demo` writes demo_out/db, or "
                           "cvl-build-db builds one")
        if params_file is None:
            raise CliError(f"--params-file {args.params_file} not found")
        for item in args.param:
            if ":=" not in item:
                raise CliError(f"--param {item!r}: expected NAME:=VALUE")
        check_result_file(args.json_out, tool=TOOL, is_own=is_load_result,
                          inputs=[ckpt, db, params_file])
    except (CliError, OutputError) as exc:
        return fail(PROG, exc)
    args.checkpoint_resolved = Path(ckpt).resolve()
    args.db_resolved = Path(db).resolve()
    args.params_file_resolved = Path(params_file).resolve()
    with tempfile.TemporaryDirectory(prefix="cvl_load_bench_") as tmp:
        log_path = Path(tmp) / "node.log"
        try:
            result = run(args, log_path)
        except RuntimeError as exc:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            print(f"{PROG}: {exc}\n{tail}", file=sys.stderr)
            return 1
        if not result["ok"]:
            result["node_log_tail"] = log_path.read_text(errors="replace")[-4000:]
    path = Path(args.json_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.partial")
    tmp_path.write_text(json.dumps(result, indent=2))
    tmp_path.replace(path)
    brief = {k: result[k] for k in ("published_images", "received_images", "dropped_images",
                                     "processed_images", "drop_rate", "latency_ms", "rss_mb",
                                     "queue_size", "in_flight_max", "checks", "ok")}
    print(json.dumps(brief, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
