"""Record live ROS 2 topics into a bag (used by ``python -m cvl_ros.cli.record``).

:class:`TopicRecorder` subscribes raw (serialized) to the given topics and writes them into a
ROS 2 bag with ``rosbags``, like ``ros2 bag record`` (absent in the pip-only ROS world); the
demo records the localizer node's outputs with it. Message classes are resolved only for
known, installed interface types (:func:`cvl_ros.ros.replay.rclpy_message_class`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

from cvl_ros.ros.bags import make_typestore, qos_profile
from cvl_ros.ros.replay import rclpy_message_class


class TopicRecorder:
    """Record live topics into a ROS 2 bag (serialized bytes, like ``ros2 bag record``).

    Subscriptions are raw (no deserialization). The message definitions come from the
    rosbags typestore (ROS 2 Kilted + this package's ``msg/``). Messages are stored at their
    receive time (wall clock, ns), as ``ros2 bag record`` does; the analysis uses header stamps.

    Args:
        node: the rclpy node to subscribe with.
        out: output bag folder (must not exist).
        topics: ``{topic: msgtype}`` (``pkg/msg/Name``).
        storage: ``"mcap"`` or ``"sqlite3"``.
        best_effort: topics subscribed best-effort (e.g. images); others reliable. The
            subscriptions are volatile, which matches volatile and transient-local publishers.
        depth: queue depth of each subscription.
    """

    def __init__(self, node: Any, out: str | Path, topics: dict[str, str], *,
                 storage: str = "mcap", best_effort: Iterable[str] = (), depth: int = 100):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.node = node
        self.store = make_typestore()
        self.counts: dict[str, int] = {t: 0 for t in topics}
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(Path(out), version=Writer.VERSION_LATEST, storage_plugin=plugin)
        self._writer.open()
        self._conns: dict[str, Any] = {}
        self._subs = []
        be = set(best_effort)
        for topic, msgtype in topics.items():
            cls = rclpy_message_class(msgtype, self.store)
            self._conns[topic] = self._writer.add_connection(
                topic, msgtype, typestore=self.store,
                offered_qos_profiles=[qos_profile(depth, reliable=topic not in be)])
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=depth,
                reliability=(ReliabilityPolicy.BEST_EFFORT if topic in be
                             else ReliabilityPolicy.RELIABLE),
                durability=DurabilityPolicy.VOLATILE)
            self._subs.append(node.create_subscription(
                cls, topic, lambda data, t=topic: self._on_msg(t, data), qos, raw=True))
        self._closed = False

    def _on_msg(self, topic: str, data: bytes) -> None:
        if self._closed:
            return
        self._writer.write(self._conns[topic], time.time_ns(), data)
        self.counts[topic] += 1

    def close(self) -> None:
        """Stop recording and finish the bag (metadata.yaml)."""
        if self._closed:
            return
        self._closed = True
        for s in self._subs:
            self.node.destroy_subscription(s)
        self._subs.clear()
        self._writer.close()
