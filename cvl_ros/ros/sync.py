"""The node's own synchroniser (message_filters is absent in the pip-only world).

- ``PoseBuffer``: time-ordered 4x4 poses (odometry, or the ``/tf`` odom->base_link transform)
  interpolated at an image stamp: linear translation, SLERP rotation. A stamp older than the
  newest buffered one is reported as time going backwards (a looping bag under sim time).
- ``ScalarBuffer``: the same for an angle (IMU heading), interpolated on the circle.
- ``StampPairer``: camera_info messages matched to an image stamp (exact, or nearest within a
  tolerance).
Pure Python/numpy: integer nanosecond stamps, no rclpy.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

__all__ = ["PoseBuffer", "ScalarBuffer", "StampPairer", "TimeWentBackwards"]


class TimeWentBackwards(Exception):
    """A stamp older than the newest buffered one arrived (the buffer has been cleared)."""


class PoseBuffer:
    """Time-ordered poses with interpolation at arbitrary stamps (thread-safe)."""

    def __init__(self, max_age_s: float = 10.0, backwards_tolerance_s: float = 0.0) -> None:
        self.max_age_ns = int(max_age_s * 1e9)
        self.backwards_tolerance_ns = int(backwards_tolerance_s * 1e9)
        self._stamps: list[int] = []
        self._poses: list[np.ndarray] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._stamps)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._stamps.clear()
            self._poses.clear()

    def drop_after(self, stamp_ns: int) -> None:
        """Forget poses newer than ``stamp_ns`` (a previous loop of a bag)."""
        with self._lock:
            i = bisect.bisect_right(self._stamps, int(stamp_ns))
            del self._stamps[i:]
            del self._poses[i:]

    @property
    def latest_stamp_ns(self) -> int | None:
        """Newest stamp, or None."""
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def add(self, stamp_ns: int, T: np.ndarray) -> None:
        """Insert a pose; raises ``TimeWentBackwards`` (after clearing, keeping this pose).

        NaN poses are stored too (the localizer rejects the frames that use them with a clear
        error), so a broken odometry source is visible rather than silently skipped.
        """
        stamp_ns = int(stamp_ns)
        T = np.asarray(T, dtype=np.float64)
        with self._lock:
            if self._stamps and stamp_ns < self._stamps[-1] - self.backwards_tolerance_ns:
                jump = (self._stamps[-1] - stamp_ns) * 1e-9
                self._stamps[:] = [stamp_ns]
                self._poses[:] = [T]
                raise TimeWentBackwards(f"pose stamps went backwards by {jump:.3f} s")
            i = bisect.bisect_right(self._stamps, stamp_ns)
            if i > 0 and self._stamps[i - 1] == stamp_ns:
                self._poses[i - 1] = T
            else:
                self._stamps.insert(i, stamp_ns)
                self._poses.insert(i, T)
            cutoff = self._stamps[-1] - self.max_age_ns
            while len(self._stamps) > 2 and self._stamps[0] < cutoff:
                self._stamps.pop(0)
                self._poses.pop(0)

    def lookup(self, stamp_ns: int, max_extrapolation_s: float = 0.0) -> np.ndarray:
        """Pose at ``stamp_ns``; raises LookupError with the reason when it cannot be given.

        Between two samples: linear translation + SLERP rotation. Outside the buffered span the
        nearest sample is used when it is within ``max_extrapolation_s`` (zero-order hold).
        """
        stamp_ns = int(stamp_ns)
        with self._lock:
            if not self._stamps:
                raise LookupError("no pose received yet")
            s = self._stamps
            if stamp_ns <= s[0] or stamp_ns >= s[-1]:
                j = 0 if stamp_ns <= s[0] else len(s) - 1
                gap = abs(stamp_ns - s[j]) * 1e-9
                if gap <= max_extrapolation_s + 1e-12:
                    return self._poses[j].copy()
                side = "before the oldest" if j == 0 else "after the newest"
                raise LookupError(f"stamp is {gap:.3f} s {side} pose (limit "
                                  f"{max_extrapolation_s:.3f} s)")
            i = bisect.bisect_left(s, stamp_ns)
            if s[i] == stamp_ns:
                return self._poses[i].copy()
            t0, t1 = s[i - 1], s[i]
            P0, P1 = self._poses[i - 1], self._poses[i]
        a = (stamp_ns - t0) / (t1 - t0)
        out = np.eye(4)
        out[:3, 3] = (1 - a) * P0[:3, 3] + a * P1[:3, 3]
        if not (np.all(np.isfinite(P0)) and np.all(np.isfinite(P1))):
            return np.full((4, 4), np.nan)
        rots = Rotation.from_matrix(np.stack([P0[:3, :3], P1[:3, :3]]))
        out[:3, :3] = Slerp([0.0, 1.0], rots)([a]).as_matrix()[0]
        return out


class ScalarBuffer:
    """Time-ordered angles (rad) interpolated on the circle; nearest within a tolerance."""

    def __init__(self, max_len: int = 400) -> None:
        self._items: deque[tuple[int, float]] = deque(maxlen=max_len)
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()

    def drop_after(self, stamp_ns: int) -> None:
        """Forget samples newer than ``stamp_ns``."""
        with self._lock:
            while self._items and self._items[-1][0] > stamp_ns:
                self._items.pop()

    def add(self, stamp_ns: int, value: float) -> None:
        """Append a sample (a sample older than the newest clears the buffer first)."""
        with self._lock:
            if self._items and stamp_ns < self._items[-1][0]:
                self._items.clear()
            self._items.append((int(stamp_ns), float(value)))

    def lookup(self, stamp_ns: int, tolerance_s: float) -> float | None:
        """Angle at ``stamp_ns``, else None.

        Interpolated between the two samples around it when both lie within ``tolerance_s`` of
        it, else the nearest sample within ``tolerance_s``.
        """
        with self._lock:
            items = list(self._items)
        if not items:
            return None
        stamps = [t for t, _ in items]
        i = bisect.bisect_left(stamps, stamp_ns)
        if 0 < i < len(items):
            (t0, v0), (t1, v1) = items[i - 1], items[i]
            a = (stamp_ns - t0) / max(t1 - t0, 1)
            d = math.atan2(math.sin(v1 - v0), math.cos(v1 - v0))
            if max(stamp_ns - t0, t1 - stamp_ns) * 1e-9 <= tolerance_s:
                v = v0 + a * d
                return math.atan2(math.sin(v), math.cos(v))
        j = min(range(len(items)), key=lambda k: abs(items[k][0] - stamp_ns))
        if abs(items[j][0] - stamp_ns) * 1e-9 <= tolerance_s:
            return items[j][1]
        return None


class StampPairer:
    """Keeps recent messages by stamp and returns the one matching an image stamp."""

    def __init__(self, max_len: int = 50) -> None:
        self._items: deque[tuple[int, object]] = deque(maxlen=max_len)
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, stamp_ns: int, item) -> None:
        """Store an item (e.g. a converted camera_info) under its stamp."""
        with self._lock:
            self._items.append((int(stamp_ns), item))

    def match(self, stamp_ns: int, tolerance_s: float):
        """Item with the same stamp, else the nearest within ``tolerance_s`` (< 0: any) or None."""
        with self._lock:
            items = list(self._items)
        if not items:
            return None
        best = min(items, key=lambda it: (abs(it[0] - stamp_ns), -it[0]))
        if best[0] == stamp_ns or tolerance_s < 0 or abs(best[0] - stamp_ns) * 1e-9 <= tolerance_s:
            return best[1]
        return None
