"""Online estimate of the odometry's translation scale from the localizer's own tracked path.

Wheel odometry measures distance with a scale error (tyre radius, load, slip): a few percent,
nearly constant over a drive. A filter predicted with it and a random-walk noise model lags the
truth by the scale error times its memory: with 2 % too long odometry the position belief runs
about a metre ahead of the car (measured on the validation towns, docs/results.md "Odometry
scale"). The scale is a property of the vehicle, observable from the path the filter tracks.

``OdometryScaleEstimator`` fits, over the last ``baseline_m`` metres of TRACKING fixes, the
tracked path (map frame) as a 2-D similarity transform of the raw odometry path (odometry
frame): least squares over every fix, ``map = a * odom + b`` in complex numbers, so the frames'
rotation and offset drop out and the fixes' noise averages instead of lengthening the path (a
sum of step lengths would double a 1 m-step path under 1.5 m noise). ``|a|`` is the scale. The
tracked path was predicted with the scale in use and pulled towards the truth by the matches,
so the fit lies between the scale in use and the true one; taking it as the new scale is a
fixed-point iteration towards the truth. It can pass the truth by a little while the filter's
lag unwinds (at most about a fifth of the initial error for a filter that moves 2 % of the way
to each match, a few percent of it at 20 %; ``test/test_odom_scale.py``). A break in tracking
(relocalisation, LOW_CONFIDENCE, NO_FIX) clears the path, not the scale; a reset of the
localizer clears both.
"""

from __future__ import annotations

import numpy as np

__all__ = ["OdometryScaleEstimator", "YawDriftEstimator", "MAX_UPDATES"]

#: Updates kept at most (a vehicle parked while tracking adds updates without travel).
MAX_UPDATES = 5000


def _centred_fit(x: np.ndarray, y: np.ndarray):
    """Least-squares slope of ``y`` on ``x`` (complex for a 2-D similarity) as (numerator,
    denominator), None if degenerate."""  # noqa: D205, D209
    x = x - x.mean()
    y = y - y.mean()
    sxx = float(np.sum(np.abs(x) ** 2))
    return (np.sum(np.conj(x) * y), sxx) if sxx > 0 else None


class OdometryScaleEstimator:
    """Scale ``s`` with true distance = ``s`` x odometry distance, from tracked fixes.

    ``baseline_m``: odometry path the fit is taken over (the path kept); ``max_error``: ``s`` is
    kept within ``1 +- max_error``.
    """

    def __init__(self, baseline_m: float = 150.0, max_error: float = 0.1,
                 memory_m: float = 0.0) -> None:
        if not (baseline_m > 0 and 0 <= max_error < 1 and memory_m >= 0):
            raise ValueError(f"need baseline_m > 0, 0 <= max_error < 1 and memory_m >= 0, got "
                             f"{baseline_m}, {max_error}, {memory_m}")
        self.baseline_m = float(baseline_m)
        self.max_error = float(max_error)
        self.memory_m = float(memory_m)
        self.scale = 1.0
        self.updates = 0
        """How many times the scale was re-fitted since the last reset."""
        self._path: list[float] = []  # odometry path length at each fix
        self._values: list = []  # (odometry xy, map xy) of each fix

    def break_track(self) -> None:
        """Forget the path, keep the scale (tracking was interrupted)."""
        self._path, self._values = [], []

    def _push(self, path_m: float, value) -> bool:
        """Append a fix, drop those beyond the baseline; True when the rest spans it."""
        self._path.append(float(path_m))
        self._values.append(value)
        while len(self._path) > 2 and self._path[-1] - self._path[1] >= self.baseline_m:
            del self._path[0], self._values[0]
        del self._path[:-MAX_UPDATES], self._values[:-MAX_UPDATES]  # parked: bounded memory
        return self._path[-1] - self._path[0] >= self.baseline_m

    def reset(self) -> None:
        """Forget the path and the scale (a new vehicle run)."""
        self.break_track()
        self.scale = 1.0
        self.updates = 0

    def add(self, odom_xy, map_xy) -> float:
        """A TRACKING fix: raw odometry position (odom frame) and the reported map position.

        Returns the scale in use after it (re-estimated once the path spans ``baseline_m``).
        """
        o = np.asarray(odom_xy, np.float64)[:2]
        m = np.asarray(map_xy, np.float64)[:2]
        if not (np.all(np.isfinite(o)) and np.all(np.isfinite(m))):
            return self.scale
        last = self._values[-1][0] if self._values else None
        step = float(np.hypot(*(o - last))) if last is not None else 0.0
        path = self._path[-1] + step if last is not None else 0.0
        if self._push(path, (o, m)):
            odom = np.asarray([v[0] for v in self._values])
            track = np.asarray([v[1] for v in self._values])
            fit = _centred_fit(odom[:, 0] + 1j * odom[:, 1], track[:, 0] + 1j * track[:, 1])
            if fit is not None:  # map = a * odom + b: |a| is the scale
                a = float(abs(fit[0])) / fit[1]
                a = float(min(max(a, 1.0 - self.max_error), 1.0 + self.max_error))
                if self.memory_m > 0:  # an exponential average of the fits over memory_m
                    a = self.scale + min(1.0, step / self.memory_m) * (a - self.scale)
                self.scale = a
                self.updates += 1
        return self.scale


class YawDriftEstimator:
    """Odometry heading drift rate (rad per metre of odometry travel), from the heading belief.

    The heading is estimated as the offset ENU yaw - odometry yaw. Odometry whose heading drifts
    steadily (unequal wheel radii, a miscalibrated yaw rate) makes that offset a ramp over the
    distance, and a belief predicted with a random walk follows a ramp with a lag (1.5-2 deg
    behind at 1 deg/100 m on the field drives without IMU). The rate is a constant bias of the
    prediction, estimated beside the belief by the separate-bias form of the Kalman filter
    (Friedland 1969): the belief is predicted with the rate in use, ``sensitivity`` is how far
    its mean has moved per unit of rate error (it grows by the distance travelled and shrinks by
    the fraction each update corrects), and each update's correction of the mean is read as an
    innovation, to be explained by the rate error in proportion to that sensitivity and to the
    rate's variance. So a correction of an initial heading error (sensitivity still near zero)
    hardly moves the rate, a steady lag does. Each update is a Gaussian one of the belief:
    gain ``K = 1 - var_post / var_prior``, innovation ``correction / K``, variance
    ``var_prior / K``. A changed rate also moves the belief by ``sensitivity x change`` (the
    shift :meth:`update` returns), as if it had been fed forward all along.

    ``rate_sigma``: prior 1-sigma of the rate (rad/m); ``max_rate``: the rate is kept within
    +- this (rad/m).
    """

    def __init__(self, rate_sigma: float = 1.75e-4, max_rate: float = 8.7e-4) -> None:
        if not (rate_sigma > 0 and max_rate >= 0):
            raise ValueError(f"need rate_sigma > 0 and max_rate >= 0, got {rate_sigma}, "
                             f"{max_rate}")
        self.rate_sigma = float(rate_sigma)
        self.max_rate = float(max_rate)
        self.reset()

    def reset(self) -> None:
        """Forget the rate (back to 0 with the prior variance) and the sensitivity."""
        self.rate = 0.0
        self.rate_var = self.rate_sigma**2
        self.sensitivity = 0.0
        self.updates = 0
        """How many updates moved the rate since the last reset."""

    def break_track(self) -> None:
        """Tracking was interrupted: the belief's link to the rate is lost (rate kept)."""
        self.sensitivity = 0.0

    def predict(self, distance_m: float) -> None:
        """The belief was predicted over ``distance_m`` of odometry travel with the rate in use:
        an error of the rate has moved its mean by that much more per unit."""  # noqa: D205, D209
        if np.isfinite(distance_m) and distance_m > 0:
            self.sensitivity += float(distance_m)

    def update(self, correction_rad: float, var_prior: float, var_post: float) -> float:
        """An update moved the belief's mean offset by ``correction_rad`` and its variance from
        ``var_prior`` to ``var_post``. Returns the shift of the belief's mean for the rate's
        change (0 when it did not change)."""  # noqa: D205, D209
        c, vp, vq = float(correction_rad), float(var_prior), float(var_post)
        if not (np.isfinite(c) and np.isfinite(vp) and np.isfinite(vq) and vp > 0):
            return 0.0
        gain = min(max(1.0 - vq / vp, 0.0), 0.999)
        h, p = self.sensitivity, self.rate_var
        shift = 0.0
        if gain > 0.0 and h > 0.0:
            denom = gain * h * h * p + vp
            new = self.rate + p * h * c / denom
            new = float(min(max(new, -self.max_rate), self.max_rate))
            self.rate_var = p * vp / denom
            self.sensitivity = (1.0 - gain) * h
            shift = self.sensitivity * (new - self.rate)
            self.rate = new
            self.updates += 1
        else:
            self.sensitivity = (1.0 - gain) * h
        return shift
