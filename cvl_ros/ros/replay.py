"""Replay a ROS 2 bag into a live graph with ``/clock`` (``cvl-replay``; no ``ros2 bag play``).

A ROS 1 ``.bag`` of the kitti2bag tool is replayed as the layout cvl-kitti2bag writes: its
messages rebuilt as ROS 2 messages (CDR) by :mod:`cvl_ros.ros.kitti_ros1`, with dead-reckoned
odometry and ground truth, and its ``/tf_static`` (re-sent with every frame) sent once.

:class:`BagReplayer` deserializes the bag's messages with ``rclpy.serialization`` and publishes
them with the QoS recorded in the bag; :func:`parse_remaps` parses ``FROM:=TO`` topic renames.

The message class of a topic is resolved by :func:`rclpy_message_class`, which never imports a
module named by the bag unless the type is known: it must be in the rosbags typestore of
:func:`cvl_ros.ros.bags.make_typestore` (ROS 2 Kilted + this package's ``msg/``) *and* its
package must be an installed ROS 2 interface package in the ament index (``rosidl_interfaces``).
A bag is untrusted input: a connection declaring ``evilpkg/msg/Foo`` must not make the replayer
import ``evilpkg`` from the current folder. Topics of other types are skipped with a warning.

rclpy is imported lazily.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from cvl_ros.ros.bags import (
    MSG_IMAGE,
    TOPIC_CLOCK,
    TOPIC_TF_STATIC,
    BagMessage,
    iter_bag,
    make_typestore,
)

LOG = logging.getLogger(__name__)

#: ament resource type under which every built ROS 2 interface package registers itself.
_INTERFACES_RESOURCE = "rosidl_interfaces"


# --------------------------------------------------------------------------------------------
# Message classes of known interface types only
# --------------------------------------------------------------------------------------------
class UnknownMessageTypeError(ImportError):
    """A message type that is not a known, installed ROS 2 interface (nothing was imported)."""


def _split_msgtype(msgtype: str) -> tuple[str, str] | None:
    """Return (package, name) of ``pkg/msg/Name`` (or ``pkg/Name``), None when malformed."""
    parts = str(msgtype).split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or parts[1] != "msg":
        return None
    if not all(p.isascii() and p.isidentifier() for p in parts):
        return None
    return parts[0], parts[2]


@functools.lru_cache(maxsize=1)
def _known_types() -> frozenset[str]:
    """Type names of the default typestore (ROS 2 Kilted + ``cvl_ros`` ``msg/``)."""
    return frozenset(make_typestore().types)


def is_interface_package(pkg: str) -> bool:
    """Return whether ``pkg`` is an installed ROS 2 interface package (ament index).

    Looks up the ``rosidl_interfaces`` resource in the ``AMENT_PREFIX_PATH`` prefixes; when that
    variable is unset, in the interpreter's own prefix (the venv of the pip-only ROS world).
    Nothing is imported.
    """
    if not (pkg.isascii() and pkg.isidentifier()):
        return False
    try:
        from ament_index_python import has_resource
    except ImportError:
        return False
    try:
        return bool(has_resource(_INTERFACES_RESOURCE, pkg))
    except OSError:  # AMENT_PREFIX_PATH not set
        index = Path(sys.prefix) / "share" / "ament_index" / "resource_index"
        return (index / _INTERFACES_RESOURCE / pkg).is_file()


def rclpy_message_class(msgtype: str, typestore: Any = None) -> Any:
    """Return the rclpy message class of a known ROS 2 interface type ``pkg/msg/Name``.

    The type must be in ``typestore`` (default: :func:`cvl_ros.ros.bags.make_typestore`) and
    its package must be an installed interface package (:func:`is_interface_package`); only
    then is ``pkg.msg`` imported. A type name read from a bag is never imported otherwise.

    Raises:
        UnknownMessageTypeError: (an ``ImportError``) the type is malformed, unknown, not
            installed, or its module lacks the class.
    """
    parts = _split_msgtype(msgtype)
    if parts is None:
        raise UnknownMessageTypeError(f"{msgtype!r} is not a message type name (pkg/msg/Name)")
    pkg, name = parts
    full = f"{pkg}/msg/{name}"
    known = _known_types() if typestore is None else typestore.types
    if full not in known:
        raise UnknownMessageTypeError(
            f"{msgtype!r} is not a known message type (ROS 2 Kilted + cvl_ros msg/); "
            "not imported")
    if not is_interface_package(pkg):
        raise UnknownMessageTypeError(
            f"{msgtype!r}: {pkg!r} is not an installed ROS 2 interface package "
            f"(ament index {_INTERFACES_RESOURCE!r}); not imported")
    module = importlib.import_module(f"{pkg}.msg")
    cls = getattr(module, name, None)
    if cls is None:
        raise UnknownMessageTypeError(f"{msgtype!r}: {pkg}.msg has no {name!r}")
    return cls


def deserialize_rclpy(msg: BagMessage) -> Any:
    """Deserialize a bag message into its rclpy message object (no DDS needed)."""
    from rclpy.serialization import deserialize_message

    return deserialize_message(bytes(msg.data), rclpy_message_class(msg.msgtype))


# --------------------------------------------------------------------------------------------
# Replay into ROS 2
# --------------------------------------------------------------------------------------------
def _rclpy_qos(connection: Any, default_depth: int = 10) -> Any:
    """Map a bag connection's offered QoS to an rclpy ``QoSProfile`` (reliable by default)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    profiles = []
    ext = getattr(connection, "ext", None)
    if ext is not None:
        profiles = list(getattr(ext, "offered_qos_profiles", []) or [])
    reliable, transient, depth = True, False, default_depth
    if profiles:
        q = profiles[0]
        reliable = getattr(q.reliability, "name", "RELIABLE") != "BEST_EFFORT"
        transient = getattr(q.durability, "name", "") == "TRANSIENT_LOCAL"
        depth = int(q.depth) if int(q.depth) > 0 else default_depth
    if connection.topic == TOPIC_TF_STATIC:
        transient, reliable = True, True
        depth = max(depth, 1)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if transient
                    else DurabilityPolicy.VOLATILE),
    )


def parse_remaps(remaps: Iterable[str] | None) -> dict[str, str]:
    """Parse ``from:=to`` strings into a dict (raises ValueError on bad syntax)."""
    out: dict[str, str] = {}
    for item in remaps or ():
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise ValueError(f"bad remap {item!r}: expected FROM:=TO")
        out[src] = dst
    return out


@dataclass
class ReplayStats:
    """What :meth:`BagReplayer.run` published."""

    published: dict[str, int] = field(default_factory=dict)
    loops: int = 0
    wall_s: float = 0.0
    waited_s: float = 0.0
    subscribers_matched: bool = True
    bag_duration_s: float = 0.0
    #: Bag topics not replayed because their type is unknown or not installed: {topic: type}.
    skipped: dict[str, str] = field(default_factory=dict)


class BagReplayer:
    """Play a ROS 2 bag into a live graph, with ``/clock``, like ``ros2 bag play --clock``.

    Messages are deserialized with ``rclpy.serialization`` and published with the QoS offered
    in the bag (``/tf_static`` always reliable + transient-local). Before the first message the
    replayer waits until the ``wait_for`` topics (default: every image topic) have subscribers,
    then lets the rest of the graph settle; after the last message it keeps publishing
    ``/clock`` for ``tail_s`` seconds so that the tail of the bag is not lost. Topics whose
    type is not a known, installed interface (:func:`rclpy_message_class`) are not replayed:
    one warning each, listed in ``skipped`` and :attr:`ReplayStats.skipped`.

    Args:
        bag: bag folder.
        node: an rclpy node to publish with (one is created when None; rclpy must be init).
        rate: playback speed factor (> 0).
        start_s: skip the first seconds of the bag (latched topics are still sent).
        loop: play again from the start (time jumps back) until stopped or ``max_loops``.
        remaps: ``{from_topic: to_topic}``.
        clock: publish ``/clock`` (rosgraph_msgs/Clock).
        clock_hz: how often ``/clock`` is published between messages.
        wait_for: topics that need a subscriber before playing (after remapping).
        wait_timeout_s: give up waiting after this (play anyway, with a warning).
        settle_s: extra time after the ``wait_for`` topics matched (other subscriptions).
        tail_s: stay alive after the last message.
        topics: only replay these (bag) topics.
        stop: a callable returning True to stop early (e.g. ``threading.Event().is_set``).
    """

    def __init__(
        self,
        bag: str | Path,
        *,
        node: Any = None,
        rate: float = 1.0,
        start_s: float = 0.0,
        loop: bool = False,
        max_loops: int | None = None,
        remaps: dict[str, str] | None = None,
        clock: bool = True,
        clock_hz: float = 50.0,
        wait_for: Sequence[str] | None = None,
        wait_timeout_s: float = 30.0,
        settle_s: float = 1.0,
        tail_s: float = 3.0,
        topics: Sequence[str] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        from cvl_ros.ros.kitti_ros1 import is_ros1_bag

        self.bag = Path(bag)
        self._ros1 = is_ros1_bag(self.bag)
        if not self._ros1 and not (self.bag / "metadata.yaml").is_file():
            raise FileNotFoundError(f"{self.bag}: not a ROS 2 bag (no metadata.yaml) nor a "
                                    "ROS 1 bag of kitti2bag")
        self.rate = float(rate)
        self.start_s = float(start_s)
        self.loop = bool(loop)
        self.max_loops = max_loops
        self.remaps = dict(remaps or {})
        self.clock = bool(clock)
        self.clock_period_s = 1.0 / max(float(clock_hz), 1e-3)
        self.wait_for = list(wait_for) if wait_for is not None else None
        self.wait_timeout_s = float(wait_timeout_s)
        self.settle_s = float(settle_s)
        self.tail_s = float(tail_s)
        self.topics = set(topics) if topics is not None else None
        self._stop = stop or (lambda: False)
        self._own_node = node is None
        if node is None:
            import rclpy

            node = rclpy.create_node("cvl_replay")
        self.node = node
        self._pubs: dict[str, Any] = {}
        self._classes: dict[str, Any] = {}
        #: Bag topics left out (type unknown or not installed): ``{topic: declared type}``.
        self.skipped: dict[str, str] = {}
        self._clock_pub = None
        self._latched: set[str] = set()
        self._setup()

    def _out(self, topic: str) -> str:
        return self.remaps.get(topic, topic)

    def _connections(self) -> tuple[list, int, int]:
        """(connections, start, end) of the bag: a ROS 2 bag's, or a ROS 1 bag's layout."""
        if self._ros1:
            from cvl_ros.ros.kitti_ros1 import open_ros1_bag

            view = open_ros1_bag(self.bag)
            return list(view.connections), int(view.start_ns), int(view.end_ns)
        from rosbags.rosbag2 import Reader

        with Reader(self.bag) as reader:
            return list(reader.connections), int(reader.start_time), int(reader.end_time)

    def _setup(self) -> None:
        store = make_typestore()
        connections, self._start_ns, self._end_ns = self._connections()
        for c in connections:
            if self.topics is not None and c.topic not in self.topics:
                continue
            if c.topic in self._pubs or c.topic in self.skipped:
                continue
            try:
                cls = rclpy_message_class(c.msgtype, store)
            except ImportError as exc:
                LOG.warning("replay: skipping topic %s: %s", c.topic, exc)
                self.skipped[c.topic] = c.msgtype
                continue
            qos = _rclpy_qos(c)
            self._classes[c.topic] = cls
            self._pubs[c.topic] = self.node.create_publisher(cls, self._out(c.topic), qos)
            if qos.durability.name == "TRANSIENT_LOCAL":
                self._latched.add(c.topic)
            if self.wait_for is None and c.msgtype == MSG_IMAGE:
                self._default_wait = getattr(self, "_default_wait", []) + [self._out(c.topic)]
        if self.clock:
            from rclpy.qos import QoSProfile
            from rosgraph_msgs.msg import Clock

            self._clock_msg = Clock
            self._clock_pub = self.node.create_publisher(Clock, TOPIC_CLOCK, QoSProfile(depth=10))

    # -- publishing ----------------------------------------------------------------------
    def _publish_clock(self, stamp_ns: int) -> None:
        if self._clock_pub is None:
            return
        from builtin_interfaces.msg import Time

        stamp_ns = int(stamp_ns)
        self._clock_pub.publish(self._clock_msg(
            clock=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)))

    def _publish(self, msg: BagMessage, stats: ReplayStats) -> None:
        from rclpy.serialization import deserialize_message

        obj = deserialize_message(bytes(msg.data), self._classes[msg.topic])
        self._pubs[msg.topic].publish(obj)
        key = self._out(msg.topic)
        stats.published[key] = stats.published.get(key, 0) + 1

    def wait_for_subscribers(self) -> tuple[bool, float]:
        """Block until the ``wait_for`` topics have subscribers; return (matched, seconds)."""
        topics = self.wait_for if self.wait_for is not None else getattr(self, "_default_wait", [])
        by_name = {self._out(t): p for t, p in self._pubs.items()}
        t0 = time.monotonic()
        pubs = [by_name[t] for t in topics if t in by_name]
        missing = [t for t in topics if t not in by_name]
        if missing:
            LOG.warning("replay: not in the bag, not waited for: %s", ", ".join(missing))
        matched = True
        while pubs and not all(p.get_subscription_count() > 0 for p in pubs):
            if self._stop():
                return False, time.monotonic() - t0
            if time.monotonic() - t0 > self.wait_timeout_s:
                LOG.warning("replay: no subscriber on %s after %.0f s; playing anyway",
                            ", ".join(topics), self.wait_timeout_s)
                matched = False
                break
            time.sleep(0.05)
        if pubs and matched and self.settle_s > 0:
            # Let the other subscriptions of the same node(s) match too.
            total = -1
            t_stable = time.monotonic()
            while time.monotonic() - t_stable < self.settle_s and not self._stop():
                now_total = sum(p.get_subscription_count() for p in self._pubs.values())
                if now_total != total:
                    total, t_stable = now_total, time.monotonic()
                time.sleep(0.05)
        return matched, time.monotonic() - t0

    def _sleep_until(self, wall_target: float, sim_of_wall: Callable[[float], int]) -> None:
        while not self._stop():
            now = time.monotonic()
            if now >= wall_target:
                return
            self._publish_clock(sim_of_wall(now))
            time.sleep(min(self.clock_period_s, wall_target - now))

    def run(self) -> ReplayStats:
        """Play the bag (blocking) and return what was published.

        Stopping (``stop()`` true, e.g. after Ctrl-C shut rclpy down) ends the run quietly.
        """
        stats = ReplayStats(bag_duration_s=(self._end_ns - self._start_ns) / 1e9,
                            skipped=dict(self.skipped))
        wall_start = time.monotonic()
        try:
            self._play(stats)
        except Exception:
            if not self._stop():
                raise
        stats.wall_s = time.monotonic() - wall_start
        return stats

    def _play(self, stats: ReplayStats) -> None:
        start_ns = self._start_ns + int(self.start_s * 1e9)
        # Latched topics before --start are sent first (e.g. /tf_static).
        early = [m for m in iter_bag(self.bag, sorted(self._latched)) if m.stamp_ns < start_ns]
        self._publish_clock(start_ns)
        stats.subscribers_matched, stats.waited_s = self.wait_for_subscribers()
        for m in early:
            self._publish(m, stats)
        last_ns = start_ns
        while not self._stop():
            wall0 = time.monotonic()
            sim0 = start_ns

            def sim_of_wall(now: float, _w0: float = wall0, _s0: int = sim0) -> int:
                return _s0 + int((now - _w0) * self.rate * 1e9)

            for m in iter_bag(self.bag, sorted(self._pubs)):  # skipped topics left out
                if self._stop():
                    return
                if m.stamp_ns < start_ns:
                    continue  # before --start (latched ones were sent up front)
                self._sleep_until(wall0 + (m.stamp_ns - sim0) / 1e9 / self.rate,
                                  lambda now, f=sim_of_wall, t=m.stamp_ns: min(f(now), t))
                if self._stop():
                    return
                self._publish_clock(m.stamp_ns)
                self._publish(m, stats)
                last_ns = max(last_ns, m.stamp_ns)
            stats.loops += 1
            if not self.loop or (self.max_loops is not None and stats.loops >= self.max_loops):
                break
        # Tail: keep the clock going so that the last messages are processed and delivered.
        tail_end = time.monotonic() + self.tail_s
        wall_tail = time.monotonic()
        while not self._stop() and time.monotonic() < tail_end:
            self._publish_clock(last_ns + int((time.monotonic() - wall_tail) * self.rate * 1e9))
            time.sleep(self.clock_period_s)

    def close(self) -> None:
        """Destroy the publishers (and the node when this object created it)."""
        for p in self._pubs.values():
            self.node.destroy_publisher(p)
        if self._clock_pub is not None:
            self.node.destroy_publisher(self._clock_pub)
        self._pubs.clear()
        self._clock_pub = None
        if self._own_node:
            self.node.destroy_node()
