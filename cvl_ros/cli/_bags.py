"""Checks of a bag given on a command line, before any work (no rclpy; rosbags only).

:func:`check_bag` turns everything that can be wrong with a user's bag (no such folder, a
file instead of the bag folder, no ``metadata.yaml``, broken metadata, a missing or corrupt
storage file, missing topics) into one :class:`~cvl_ros.cli._args.CliError` naming the bag,
what is wrong and how to fix it. :data:`READ_ERRORS` are the exceptions a bag reader raises
on a corrupt file, for the CLIs' ``except`` at their boundary.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from cvl_ros.cli._args import CliError


def _read_errors() -> tuple:
    # decoding random bytes of a damaged file raises any of these (an mcap chunk with garbage
    # lengths: OverflowError; a short record: struct.error / EOFError / IndexError)
    basic = (OSError, EOFError, ValueError, KeyError, IndexError, OverflowError, struct.error)
    try:
        from rosbags.highlevel import AnyReaderError
        from rosbags.rosbag1 import ReaderError as Ros1ReaderError
        from rosbags.rosbag2 import ReaderError
    except ImportError:  # pragma: no cover - rosbags is a dependency
        return basic
    return (ReaderError, Ros1ReaderError, AnyReaderError, *basic)


#: What reading a corrupt or unreadable bag raises (rosbags' ReaderError, I/O and decoding
#: errors); the CLIs catch these where they read a user's bag and name the bag.
READ_ERRORS = _read_errors()


@dataclass
class BagInfo:
    """What :func:`check_bag` found: ``{topic: (msgtype, count)}`` and the time span."""

    path: Path
    topics: dict = field(default_factory=dict)
    start_ns: int = 0
    end_ns: int = 0

    @property
    def duration_s(self) -> float:
        """Seconds between the first and the last message."""
        return max(0, self.end_ns - self.start_ns) / 1e9


def _topic_list(topics) -> str:
    names = sorted(topics)
    return ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "") \
        if names else "none"


def read_error(path, exc: BaseException, what: str = "bag") -> str:
    """One-line message for an exception raised while reading the bag ``path``."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return (f"{what} {path}: cannot read the bag ({type(exc).__name__}: {text}); it may be "
            "incomplete (a killed recording) or corrupt: record or convert it again")


def _check_ros1(p: Path, what: str) -> BagInfo:
    """A kitti2bag ROS 1 ``.bag``: opened as the layout of cvl-kitti2bag (docs/bags.md)."""
    from cvl_ros.ros.kitti_ros1 import Ros1BagError, open_ros1_bag

    try:
        view = open_ros1_bag(p)
    except Ros1BagError as exc:  # the bag's content (a missing topic, no static chain)
        raise CliError(f"{what} {p}: {exc}") from None
    except READ_ERRORS as exc:
        raise CliError(read_error(p, exc, what)) from None
    return BagInfo(p, dict(view.topics), int(view.start_ns), int(view.end_ns))


def check_bag(path, what: str = "bag", topics=()) -> BagInfo:
    """Open the bag ``path`` (a CLI argument named ``what``) and list its topics.

    ``path`` is a ROS 2 bag folder or a ROS 1 ``.bag`` file of kitti2bag (read as the layout of
    cvl-kitti2bag: :mod:`cvl_ros.ros.kitti_ros1`). ``topics``: topics the command needs; a
    missing one is an error naming the bag's topics.
    """
    from cvl_ros.ros.kitti_ros1 import is_ros1_bag

    p = Path(path)
    if not p.exists():
        raise CliError(f"{what} {p}: no such folder; give a ROS 2 bag folder (written by "
                       "cvl-kitti2bag or ros2 bag record) or a ROS 1 .bag of kitti2bag")
    if p.is_file() and is_ros1_bag(p):
        info = _check_ros1(p, what)
    elif not p.is_dir():
        hint = (f"; the bag is the folder holding it: {p.parent}"
                if p.suffix in (".mcap", ".db3") else
                " (a .bag file must be a ROS 1 bag: it has no '#ROSBAG V2.0' header)"
                if p.suffix == ".bag" else "")
        raise CliError(f"{what} {p} is a file, not a bag folder{hint}")
    else:
        info = _check_ros2(p, what)
    missing = [t for t in topics if t not in info.topics]
    if missing:
        raise CliError(f"{what} {p} has no topic {', '.join(missing)} (it has: "
                       f"{_topic_list(info.topics)})")
    return info


def _check_ros2(p: Path, what: str) -> BagInfo:
    from rosbags.rosbag2 import Reader

    if not (p / "metadata.yaml").is_file():
        raise CliError(f"{what} {p} is not a ROS 2 bag (no metadata.yaml); give a bag folder "
                       "written by cvl-kitti2bag or ros2 bag record")
    info = BagInfo(p)
    try:
        with Reader(p) as reader:
            for c in reader.connections:
                prev = info.topics.get(c.topic, (c.msgtype, 0))[1]
                info.topics[c.topic] = (c.msgtype, prev + c.msgcount)
            if reader.message_count:
                info.start_ns, info.end_ns = int(reader.start_time), int(reader.end_time)
    except READ_ERRORS as exc:
        raise CliError(read_error(p, exc, what)) from None
    return info
