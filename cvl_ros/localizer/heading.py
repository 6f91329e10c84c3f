"""Heading from the images: the fused overhead descriptor scored over yaw hypotheses.

A heading error of the window rotates everything the window projected about the newest camera
(the window's relative poses are odometry rotated into ENU by one yaw offset). So scoring the
north-up ground descriptor rotated by ``delta`` about its centre against the satellite tiles is
scoring the heading hypothesis ``yaw + delta``. :func:`rotate_ground` makes the K rotated
descriptors in one ``grid_sample``; :class:`YawFilter` keeps the belief over the yaw offset of
the odometry frame (ENU yaw = offset + odometry yaw):

- predict: the variance grows with the distance travelled (odometry yaw drift,
  ``yaw_drift_rad_per_m``);
- hypotheses: 36 over the whole circle while the heading is unknown (sigma above
  ``COARSE_SIGMA_RAD``), else K evenly over mean +- 3 sigma (at least +- ``MIN_HALF_WIDTH_RAD``);
- update: the likelihood of hypothesis k is the position belief's expectation of the score
  likelihood, ``sum_cells p(cell) * (outlier + exp((s_k(cell) - s_max) / T))`` (the position and
  the yaw share one temperature and one outlier weight). While the heading is unknown, the
  posterior over the 36 hypotheses is summarised by its best one and its wrapped spread; after
  that, a parabola through the log-likelihood's peak gives a Gaussian measurement (offset and
  variance, sub-hypothesis) that is Kalman-fused with the prior.

This factorises the 3-DoF (east, north, yaw) belief into the position grid and a Gaussian over
yaw, each updated with the other's current belief: a 3-D histogram would cost K times the grid
in memory and time on every update, and the yaw belief is unimodal once the coarse search has
settled. The position update then uses the score maps of the hypothesis nearest the new yaw.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from cvl_ros.model.matching import GroundDescriptor

#: Above this yaw sigma the heading counts as unknown: hypotheses cover the whole circle.
COARSE_SIGMA_RAD = math.radians(20.0)
#: Hypotheses of the coarse search (10 deg apart).
COARSE_HYPOTHESES = 36
#: Floor of the heading belief's 1-sigma: never more certain than one window's measurement
#: (MIN_MEASUREMENT_SIGMA_RAD), since consecutive windows share N-1 frames and their heading
#: errors are correlated (sequential fusion would count the same evidence again and again).
MIN_SIGMA_RAD = math.radians(3.0)
#: Floor of one update's heading measurement 1-sigma (consecutive windows share most frames).
MIN_MEASUREMENT_SIGMA_RAD = math.radians(3.0)
#: Smallest half-width of the fine search.
MIN_HALF_WIDTH_RAD = math.radians(1.5)


def wrap(a):
    """Angle(s) wrapped to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2.0 * np.pi) - np.pi


def rotate_ground(ground: GroundDescriptor, deltas_rad) -> GroundDescriptor:
    """K copies of a (1, D, S, S) north-up descriptor rotated counter-clockwise (ENU) by
    ``deltas_rad`` about the grid centre (bilinear; cells from outside the grid are empty)."""  # noqa: D205, D209
    d = torch.as_tensor(np.asarray(deltas_rad, dtype=np.float64), dtype=ground.features.dtype,
                        device=ground.features.device)
    c, s = torch.cos(d), torch.sin(d)
    z = torch.zeros_like(d)
    # output cell (x = east, y = south, normalised) samples the input at R(-delta) of it
    theta = torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1)], 1)
    k = d.shape[0]
    feats = ground.features.expand(k, *ground.features.shape[1:])
    mask = ground.mask.expand(k, *ground.mask.shape[1:])
    grid = F.affine_grid(theta, list(feats.shape), align_corners=False)
    f = F.grid_sample(feats, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = F.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = (m > 0.999).to(m.dtype)  # only cells fully inside the rotated footprint
    return GroundDescriptor(f * m, m)


class YawFilter:
    """Gaussian belief over the yaw offset of the odometry frame (ENU yaw - odometry yaw)."""

    def __init__(self, mean_rad: float, sigma_rad: float, hypotheses: int = 7,
                 min_sigma_rad: float = MIN_SIGMA_RAD) -> None:
        self.mean = float(wrap(mean_rad))
        self.var = float(sigma_rad) ** 2
        self.k = int(hypotheses)
        self.min_var = float(min_sigma_rad) ** 2
        # while the heading is unknown: log-posterior over COARSE_HYPOTHESES fixed headings
        # (mean + hypotheses()), accumulated over updates; the mean stays their origin
        self.log_hist = np.zeros(COARSE_HYPOTHESES)
        self.best_offset = 0.0
        """Offset from ``mean`` of the heading in use (the best bin while coarse, else 0)."""

    @property
    def heading_offset(self) -> float:
        """The yaw offset to use now: the mean, or the best bin of the whole-circle search."""
        return float(wrap(self.mean + self.best_offset))

    @property
    def sigma(self) -> float:
        """1-sigma [rad]."""
        return math.sqrt(self.var)

    @property
    def coarse(self) -> bool:
        """Whether the heading is still unknown (hypotheses over the whole circle)."""
        return self.sigma > COARSE_SIGMA_RAD

    def predict(self, travel_m: float, drift_rad_per_m: float) -> None:
        """Odometry yaw drift over ``travel_m`` widens the belief (capped at the circle)."""
        if not self.coarse:
            self.var = min(self.var + (drift_rad_per_m * travel_m) ** 2, math.pi ** 2)

    def hypotheses(self) -> np.ndarray:
        """Offsets from the mean to score [rad]."""
        if self.coarse:
            return np.arange(COARSE_HYPOTHESES) * (2.0 * np.pi / COARSE_HYPOTHESES) - np.pi
        half = max(3.0 * self.sigma, MIN_HALF_WIDTH_RAD)
        return np.linspace(-half, half, self.k)

    def update(self, deltas: np.ndarray, log_lik: np.ndarray) -> int:
        """Posterior over ``mean + deltas`` given the hypotheses' log-likelihoods.

        Returns the index of the hypothesis nearest the new mean (its score maps are the ones
        the position update should use).
        """
        deltas = np.asarray(deltas, np.float64)
        ll = np.asarray(log_lik, np.float64)
        if not np.all(np.isfinite(ll)) or len(ll) != len(deltas):
            return int(np.argmin(np.abs(deltas)))
        if self.coarse:  # whole circle: evidence accumulates until one heading stands out
            self.log_hist = self.log_hist + ll
            w = np.exp(self.log_hist - self.log_hist.max())
            w /= w.sum()
            step = 2.0 * np.pi / len(deltas)
            best = int(np.argmax(w))
            rel = wrap(deltas - deltas[best])
            m = float(np.sum(w * rel))
            var = float(np.sum(w * (rel - m) ** 2)) + step ** 2 / 12.0
            if var <= COARSE_SIGMA_RAD ** 2:  # settled: a Gaussian about the best heading
                self.mean = float(wrap(self.mean + deltas[best] + m))
                self.var = max(var, self.min_var)
                self.best_offset = 0.0
            else:
                self.best_offset = float(deltas[best])
            return best
        else:  # a Gaussian measurement from the log-likelihood's peak, Kalman-fused
            z, r2 = _peak_fit(deltas, ll, self.var)
            r2 = max(r2, MIN_MEASUREMENT_SIGMA_RAD ** 2)
            gain = self.var / (self.var + r2)
            shift = gain * z
            var = (1.0 - gain) * self.var
        self.mean = float(wrap(self.mean + shift))
        self.var = float(min(max(var, self.min_var), math.pi ** 2))
        return int(np.argmin(np.abs(wrap(deltas - shift))))


def _peak_fit(deltas: np.ndarray, ll: np.ndarray, prior_var: float) -> tuple[float, float]:
    """(offset, variance) of a parabola through the log-likelihood's peak and its neighbours.

    A peak at the edge of the hypotheses (or a flat/convex neighbourhood) says only "that way":
    the measurement is then the edge with the prior's variance (a half step of the prior).
    """
    k = int(np.argmax(ll))
    if 0 < k < len(ll) - 1:
        h = float(deltas[k + 1] - deltas[k])
        curv = float(ll[k - 1] - 2.0 * ll[k] + ll[k + 1])
        if curv < -1e-12:
            off = 0.5 * h * float(ll[k - 1] - ll[k + 1]) / curv
            return float(deltas[k]) + off, -h * h / curv
    return float(deltas[k]), float(prior_var)


def yaw_log_likelihoods(prob: np.ndarray, score_grids: list[np.ndarray], covered: list,
                        temperature: float, outlier_weight: float) -> np.ndarray:
    """Log sum_cells p(cell) (outlier + exp((s_k - s_max) / T)) for each hypothesis k.

    ``score_grids[k]`` is hypothesis k's score sampled on the position grid (``-inf`` where no
    tile covers a cell, as ``GridFilter.measurement_grid`` returns it); cells no hypothesis
    covers carry the same floor for all (they do not tell the hypotheses apart).
    """
    finite = [g[c] for g, c in zip(score_grids, covered) if c.any()]
    if not finite:
        return np.zeros(len(score_grids))
    s_max = max(float(v.max()) for v in finite)
    floor = min(float(v.min()) for v in finite)
    out = []
    for g, c in zip(score_grids, covered):
        s = np.where(c, g, floor)
        lik = outlier_weight + np.exp(np.minimum(s - s_max, 0.0) / max(temperature, 1e-9))
        out.append(math.log(max(float(np.sum(prob * lik)), 1e-300)))
    return np.asarray(out)
