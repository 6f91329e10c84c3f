"""cvl_ros.localizer: the ROS-free localizer (sliding window, grid filter, Localizer)."""

from cvl_ros.localizer.filter import GridFilter, PosteriorStats, TileScores
from cvl_ros.localizer.localizer import (
    Candidate,
    Estimate,
    Frame,
    InvalidFrameError,
    Localizer,
    LocalizerConfig,
    Status,
    compose_map_odom,
    resolve_device,
)
from cvl_ros.localizer.window import Keyframe, SlidingWindow

__all__ = [
    "Candidate",
    "Estimate",
    "Frame",
    "GridFilter",
    "InvalidFrameError",
    "Keyframe",
    "Localizer",
    "LocalizerConfig",
    "PosteriorStats",
    "SlidingWindow",
    "Status",
    "TileScores",
    "compose_map_odom",
    "resolve_device",
]
