"""Shared pytest setup for cvl_ros: DDS isolation, an isolated rclpy context, spin helpers.

Environment (set here before any test runs, so `python -m pytest` alone is enough; subprocesses
started by tests inherit it):
- ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``: DDS traffic stays on this machine;
- ``ROS_DOMAIN_ID``: random per test run (override with ``CVL_TEST_ROS_DOMAIN_ID``), so parallel
  runs on one machine do not see each other;
- ``ROS_HOME`` / ``ROS_LOG_DIR``: a temporary folder, removed at the end of the run;
- ``AMENT_PREFIX_PATH``: the interpreter's prefix (the venv) is added.

Fixtures: ``ros_context`` (an ``rclpy.Context`` initialised for one test and shut down after it),
``ros_executor`` (a SingleThreadedExecutor on that context), ``spin_until`` (the helper below).
Tests marked ``@pytest.mark.ros`` or using these fixtures are skipped, with the reason, when
rclpy or the built interfaces (``cvl_ros.msg``) cannot be imported.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from typing import Callable

import pytest

_ROS_TMP = tempfile.mkdtemp(prefix="cvl_ros_test_ros_home_")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = os.environ.get(
    "CVL_TEST_ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100))
)
os.environ["ROS_HOME"] = _ROS_TMP
os.environ["ROS_LOG_DIR"] = os.path.join(_ROS_TMP, "log")
_prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
if sys.prefix not in _prefixes:
    os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join([sys.prefix, *_prefixes])


def _ros_skip_reason() -> str | None:
    try:
        import rclpy  # noqa: F401
    except Exception as exc:  # ImportError, or a missing shared library
        return f"rclpy is not importable ({exc}); run `make setup`"
    try:
        from cvl_ros.msg import GeoPoseEstimate  # noqa: F401
    except Exception as exc:
        return f"cvl_ros.msg is not built ({exc}); run `make setup`"
    return None


ROS_SKIP_REASON = _ros_skip_reason()
"""Why ROS tests cannot run here, or None when rclpy and cvl_ros.msg import."""

requires_ros = pytest.mark.skipif(ROS_SKIP_REASON is not None, reason=str(ROS_SKIP_REASON))
"""Decorator for tests that need rclpy and the built interfaces (same as the ``ros`` marker)."""


def pytest_collection_modifyitems(config, items):
    if ROS_SKIP_REASON is None:
        return
    skip = pytest.mark.skip(reason=ROS_SKIP_REASON)
    for item in items:
        if "ros" in item.keywords:
            item.add_marker(skip)


def pytest_unconfigure(config):
    shutil.rmtree(_ROS_TMP, ignore_errors=True)


def spin_until(executor, predicate: Callable[[], bool], timeout_s: float = 10.0,
               what: str = "condition") -> float:
    """Spin ``executor`` until ``predicate()`` is true; fail the test after ``timeout_s``.

    Returns the seconds it took. ``what`` names the condition in the failure message.
    """
    t0 = time.monotonic()
    while not predicate():
        elapsed = time.monotonic() - t0
        if elapsed > timeout_s:
            pytest.fail(f"timed out after {timeout_s:.1f} s waiting for {what}")
        executor.spin_once(timeout_sec=min(0.05, max(0.0, timeout_s - elapsed)))
    return time.monotonic() - t0


@pytest.fixture
def ros_context():
    """An initialised ``rclpy.Context`` private to one test; shut down after it."""
    if ROS_SKIP_REASON is not None:
        pytest.skip(ROS_SKIP_REASON)
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        context.try_shutdown()


@pytest.fixture
def ros_executor(ros_context):
    """A SingleThreadedExecutor on ``ros_context``; its nodes are destroyed after the test."""
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=ros_context)
    try:
        yield executor
    finally:
        for node in list(executor.get_nodes()):
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown(timeout_sec=1.0)


@pytest.fixture(name="spin_until")
def spin_until_fixture():
    """The ``spin_until(executor, predicate, timeout_s=10.0, what=...)`` helper."""
    return spin_until


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch code on one thread (the 2 shared cores run small ops faster so)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
