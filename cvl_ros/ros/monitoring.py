"""Watching the node as a process: RSS, its log, its diagnostics (the load bench and the soak).

ROS-free except :func:`diagnostic_values` (which takes a ``DiagnosticArray``). Used by
``python -m cvl_ros.cli.load_bench`` and ``python -m cvl_ros.cli.soak``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from cvl_ros.resources import resolve_path

#: A line of the node's log that shows an exception: a traceback, or ``SomeError: ...`` /
#: ``SomeException: ...`` (the node's guards log caught ones as ``... failed: ValueError: ...``).
EXCEPTION_LINE = re.compile(r"Traceback \(most recent call last\)|\b[A-Z]\w*(Error|Exception)\b:")
#: Fast DDS profile for KITTI-size images between processes (docs/bags.md).
FASTDDS_PROFILE = "config/fastdds_large_images.xml"
#: The counters of the node's /diagnostics that the tools read (integers).
COUNTERS = ("received_images", "dropped_images", "processed_images", "frames_handled",
            "estimates", "input_errors", "resets", "odom_time_jumps")


def rss_kb(pid: int) -> int | None:
    """``VmRSS`` of process ``pid`` in kB (``/proc/<pid>/status``); None when it is gone."""
    try:
        with open(f"/proc/{int(pid)}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class RssSampler:
    """Samples a process's RSS every ``period_s`` on a thread: ``samples`` = [(t_s, MB)].

    ``t_s`` is ``time.monotonic()``; :meth:`stop` ends the thread.
    """

    def __init__(self, pid: int, period_s: float = 1.0) -> None:
        self.pid = int(pid)
        self.period_s = float(period_s)
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss_sampler", daemon=True)

    def start(self) -> RssSampler:
        """Start sampling (returns self)."""
        self._thread.start()
        return self

    def sample(self) -> float | None:
        """One sample now (also recorded); MB, or None when the process is gone."""
        kb = rss_kb(self.pid)
        if kb is None:
            return None
        mb = kb / 1024.0
        self.samples.append((time.monotonic(), mb))
        return mb

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            if self.sample() is None:
                return

    def stop(self) -> None:
        """Stop the thread (the samples stay)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)


def exception_lines(text: str, limit: int = 20) -> list[str]:
    """The lines of a log that show an exception (:data:`EXCEPTION_LINE`), at most ``limit``."""
    out = [line.strip() for line in text.splitlines() if EXCEPTION_LINE.search(line)]
    return out[:limit]


def stop_process(proc: subprocess.Popen, timeout_s: float = 20.0) -> int:
    """SIGINT, then SIGTERM, then SIGKILL (each after ``timeout_s``); returns the exit code."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if proc.poll() is not None:
            return proc.returncode
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    return proc.wait()


def clean_exit(rc: int | None) -> bool:
    """Whether an exit code is that of a node stopped with SIGINT (0, or killed by SIGINT)."""
    return rc in (0, -signal.SIGINT, 130)


def ros_env(domain_id: int, log_dir: Path | None = None) -> dict[str, str]:
    """The environment of a run: its own ROS domain on this machine, large-image DDS profile."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(int(domain_id))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    profile = resolve_path(FASTDDS_PROFILE)
    if profile is not None and "FASTDDS_DEFAULT_PROFILES_FILE" not in env:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(Path(profile).resolve())
    if log_dir is not None:
        env["ROS_LOG_DIR"] = str(log_dir)
    prefixes = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if sys.prefix not in prefixes:
        env["AMENT_PREFIX_PATH"] = os.pathsep.join([sys.prefix, *prefixes])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def node_command(params_file: Path, params: dict[str, object], remaps: dict[str, str] = (),
                 extra: list[str] = ()) -> list[str]:
    """``python -m cvl_ros.ros.node --ros-args --params-file F -p k:=v ... -r a:=b ...``."""
    cmd = [sys.executable, "-m", "cvl_ros.ros.node", "--ros-args", "--params-file",
           str(params_file)]
    for k, v in params.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        cmd += ["-p", f"{k}:={v}"]
    for a, b in dict(remaps).items():
        cmd += ["-r", f"{a}:={b}"]
    for item in extra:
        cmd += ["-p", item]
    return cmd


def diagnostic_values(msg, hardware_id: str = "cvl_localizer") -> dict[str, str] | None:
    """``{key: value}`` of the node's status in a ``DiagnosticArray`` (None when absent)."""
    for st in msg.status:
        if st.hardware_id == hardware_id:
            values = {kv.key: kv.value for kv in st.values}
            values["_level"] = str(int.from_bytes(st.level, "little")
                                   if isinstance(st.level, bytes) else int(st.level))
            values["_message"] = st.message
            return values
    return None


def counters(values: dict[str, str]) -> dict[str, int]:
    """The :data:`COUNTERS` of a diagnostics dict as integers (absent: -1)."""
    out = {}
    for k in COUNTERS:
        try:
            out[k] = int(values.get(k, "-1"))
        except ValueError:
            out[k] = -1
    return out


def percentiles(values, qs=(50, 95)) -> dict[str, float | None]:
    """``{"n", "median", "p95", "max", "mean"}`` of a list (None when empty)."""
    import numpy as np

    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "median": None, "p95": None, "max": None, "mean": None}
    out: dict[str, float | None] = {"n": int(a.size)}
    for q in qs:
        out["median" if q == 50 else f"p{q}"] = round(float(np.percentile(a, q)), 3)
    out["max"] = round(float(a.max()), 3)
    out["mean"] = round(float(a.mean()), 3)
    return out
