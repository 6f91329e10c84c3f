"""Lifecycle cycles of the node in-process (issue 13, item 8): nothing leaks over time.

Each cycle configures the node (real tiny checkpoint and tile database), activates it, feeds it
a few frames through its subscription callbacks (the worker localises them), deactivates and
cleans it up. After every cycle: the Python threads are the baseline's (the worker joined), the
node holds the baseline's subscriptions, publishers, services, clients, timers and guard
conditions, and the open file descriptors are the baseline's; the resident memory
(``/proc/self/statm``) grows by at most a small bound after the first cycles.

10 cycles in the suite; more with ``CVL_LIFECYCLE_CYCLES`` (the 50-cycle numbers of
docs/results.md)::

    CVL_LIFECYCLE_CYCLES=50 .venv/bin/python -m pytest test/test_lifecycle_cycles.py -s -q
"""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest
from _ros_node_helpers import Drive, build_tiny_resources, extrinsics_param

pytestmark = pytest.mark.ros

CYCLES = int(os.environ.get("CVL_LIFECYCLE_CYCLES", "10"))
FRAMES_PER_CYCLE = 3
WARMUP_CYCLES = 3
#: Largest RSS growth from the end of the warm-up to the last cycle, per cycle [KiB] (measured
#: 2026-12-07: see docs/results.md "Lifecycle cycles") and in all [KiB].
MAX_GROWTH_PER_CYCLE_KIB = 512
MAX_GROWTH_KIB = 8 * 1024


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _handles(node) -> dict[str, int]:
    return {k: len(list(getattr(node, k))) for k in ("subscriptions", "publishers", "services",
                                                      "clients", "timers", "guards")}


def _threads() -> set[tuple[int, str]]:
    return {(t.ident, t.name) for t in threading.enumerate()}


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    return build_tiny_resources(tmp_path_factory.mktemp("cvl_cycles_res"))


def _feed(executor, spin_until, node, drive: Drive) -> None:
    """FRAMES_PER_CYCLE frames through the subscription callbacks; wait until each is handled."""
    for i in range(FRAMES_PER_CYCLE):
        before = node.counters["frames_handled"]
        node._on_odom(drive.odom_msg(i))
        node._on_odom(drive.odom_msg(i + 1))
        node._on_info(drive.info_msg(i))
        node._on_image(drive.image_msg(i))
        spin_until(executor, lambda: node.counters["frames_handled"] > before, 20.0,
                   f"frame {i} handled (last input error: {node.last_error!r})")


def test_configure_activate_deactivate_cleanup_cycles_leak_nothing(ros_executor, spin_until,
                                                                   resources):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from cvl_ros.ros.node import LocalizerNode

    ok = TransitionCallbackReturn.SUCCESS
    ckpt, db = resources
    params = {"checkpoint_path": str(ckpt), "database_path": str(db), "autostart": False,
              "tf_publish_rate_hz": 20.0, "diagnostics_rate_hz": 5.0, "odom_wait_s": 0.5,
              "camera_extrinsics_xyz_rpy": extrinsics_param(),
              "use_tf_static_extrinsics": False, "torch_threads": 1}
    node = LocalizerNode(context=ros_executor.context,
                         parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    ros_executor.add_node(node)
    drive = Drive(n=FRAMES_PER_CYCLE + 1)
    base_handles, base_threads, base_fds = _handles(node), _threads(), _fds()
    rss, t0 = [_rss_kib()], time.monotonic()
    estimates = 0
    for cycle in range(CYCLES):
        assert node.trigger_configure() == ok, node.missing
        assert node.trigger_activate() == ok, node.missing
        active = _handles(node)
        assert active["subscriptions"] > base_handles["subscriptions"]
        assert active["publishers"] > base_handles["publishers"]
        assert node._worker is not None and node._worker.is_alive()
        _feed(ros_executor, spin_until, node, drive)
        assert node.counters["processed_images"] == FRAMES_PER_CYCLE, (node.last_error,
                                                                         node.counters)
        estimates += node.counters["estimates"]
        assert node.trigger_deactivate() == ok
        assert _handles(node) == base_handles, f"cycle {cycle}: deactivate left handles"
        assert node.trigger_cleanup() == ok
        assert node.localizer is None and node._worker is None
        assert _handles(node) == base_handles, f"cycle {cycle}: cleanup left handles"
        assert _threads() == base_threads, f"cycle {cycle}: threads {threading.enumerate()}"
        assert _fds() == base_fds, f"cycle {cycle}: {_fds()} open files, {base_fds} before"
        gc.collect()
        rss.append(_rss_kib())
    elapsed = time.monotonic() - t0
    assert estimates > 0  # the worker localised frames, not only received them
    warm = rss[min(WARMUP_CYCLES, CYCLES)]
    growth = rss[-1] - warm
    per_cycle = growth / max(1, CYCLES - WARMUP_CYCLES)
    print(f"\nlifecycle cycles: {CYCLES} in {elapsed:.1f} s ({FRAMES_PER_CYCLE} frames each, "
          f"{estimates} estimates); RSS before {rss[0] / 1024:.1f} MiB, after cycle 1 "
          f"{rss[1] / 1024:.1f} MiB, after cycle {WARMUP_CYCLES} {warm / 1024:.1f} MiB, after "
          f"cycle {CYCLES} {rss[-1] / 1024:.1f} MiB: growth after the warm-up "
          f"{growth / 1024:.2f} MiB ({per_cycle:.0f} KiB per cycle); threads "
          f"{len(base_threads)}, handles {base_handles}, open files {base_fds}, unchanged")
    print("RSS per cycle [MiB]: " + " ".join(f"{v / 1024:.1f}" for v in rss))
    assert per_cycle <= MAX_GROWTH_PER_CYCLE_KIB, rss
    assert growth <= max(MAX_GROWTH_KIB, MAX_GROWTH_PER_CYCLE_KIB * CYCLES), rss
