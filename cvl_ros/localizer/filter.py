"""Histogram (grid) Bayes filter over the body position (east, north) and, optionally, the heading.

The posterior is a north-up grid of probabilities in the map's local ENU frame (row 0 = north
edge, column 0 = west edge, as every overhead grid of the project). Prediction with a known
odometry displacement is an exact relabelling of the grid (its centre moves by the
displacement) followed by a Gaussian blur of the process noise; the update multiplies the grid by
a likelihood sampled from the score maps of the searched tiles. The grid can be re-sampled onto
another extent/resolution (coarse over the whole database while relocalising, fine around the
peak while tracking).

Heading (``heading_source: estimate``): with :meth:`GridFilter.set_yaw_axis` the belief becomes a
3-D histogram ``joint[k, row, col]`` over K bins of the odometry->ENU yaw offset
``yaw_center_rad + (k - (K-1)/2) * yaw_step_rad`` times the position grid. Prediction moves
every bin by the odometry displacement rotated by its own yaw (the grid's centre by the centre
bin's displacement, exactly; each bin's residual (R(dyaw_k) - I) d accumulated and applied in
whole cells; the process noise as a sampled Gaussian blur, which on 1 m cells applies less than
its sigma below about one cell: docs/node.md), then blurs along the yaw axis by the odometry's
heading drift. A position likelihood multiplies every bin alike, so the heading is learnt from
how well each bin's predicted track agrees with the matches (the track-consistency evidence),
and an absolute heading (IMU) multiplies the yaw axis. Statistics of the position use the
marginal over yaw (:attr:`GridFilter.prob`); :meth:`GridFilter.yaw_stats` gives the heading's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class TileScores:
    """Score map of one searched tile, expressed in the filter's coordinates.

    ``score_map`` is (2r+1, 2r+1), north-up: cell (i, j) is the hypothesis that the body is at
    ``center_en + ((j - r) * cell_m, (r - i) * cell_m)``; ``center_en`` already includes the
    camera lever arm (tile centre minus the horizontal body->camera offset).
    """

    center_en: np.ndarray
    score_map: np.ndarray
    cell_m: float


@dataclass
class PosteriorStats:
    """Summary of the posterior: peak, spread, confidence."""

    peak_en: np.ndarray  # (2,) position of the maximum (sub-cell refined by the local mean)
    mean_en: np.ndarray  # (2,) global mean
    cov_local: np.ndarray  # (2,2) covariance within ``radius_m`` of the peak
    cov_about_peak: np.ndarray  # (2,2) second moment of the whole posterior about the peak
    mass_near_peak: float  # probability within ``radius_m`` of the peak, in [0, 1]
    entropy_ratio: float  # entropy / log(cells); 1 = flat, 0 = one cell
    second_mode_mass: float  # largest mass in a same-size box farther than 3 radii from the peak


def _shift_cells(a: np.ndarray, drow: int, dcol: int) -> np.ndarray:
    """``a`` moved by whole cells (rows down, columns right), zero-filled."""
    out = np.zeros_like(a)
    n0, n1 = a.shape
    if abs(drow) >= n0 or abs(dcol) >= n1:
        return out
    src_r = slice(max(0, -drow), n0 - max(0, drow))
    dst_r = slice(max(0, drow), n0 - max(0, -drow))
    src_c = slice(max(0, -dcol), n1 - max(0, dcol))
    dst_c = slice(max(0, dcol), n1 - max(0, -dcol))
    out[dst_r, dst_c] = a[src_r, src_c]
    return out


class GridFilter:
    """Grid Bayes filter over (east, north) [and yaw]; see the module docstring."""

    def __init__(self) -> None:
        self.joint: np.ndarray | None = None  # (K, n, n): yaw bins x north-up position grid
        self.last_scores: np.ndarray | None = None  # measurement grid of the last update
        self.last_max_score = float("nan")
        self.center_en = np.zeros(2)
        self.cell_m = 1.0
        self.yaw_center_rad = 0.0
        """Yaw offset of the centre bin (only meaningful with more than one bin)."""
        self.yaw_step_rad = 0.0
        """Spacing of the yaw bins (0 = no yaw axis)."""
        self._yaw_weights = np.ones(1)  # yaw marginal used when the position is (re)initialised
        self._yaw_residual_m = np.zeros((1, 2))  # per bin: move not yet applied to its grid

    # ----------------------------------------------------------------- views
    @property
    def prob(self) -> np.ndarray | None:
        """The position belief (n, n): the marginal over the yaw bins."""
        if self.joint is None:
            return None
        return self.joint[0] if self.joint.shape[0] == 1 else self.joint.sum(axis=0)

    @prob.setter
    def prob(self, value: np.ndarray | None) -> None:
        if value is None:
            self.joint = None
            return
        value = np.asarray(value, dtype=np.float64)
        w = self._yaw_weights / self._yaw_weights.sum()
        self.joint = w[:, None, None] * value[None]

    @property
    def yaw_bins(self) -> int:
        """Number of yaw bins (1 = the heading is not part of the belief)."""
        return int(self._yaw_weights.shape[0])

    def yaw_offsets(self) -> np.ndarray:
        """Yaw offset of every bin (rad)."""
        k = self.yaw_bins
        return self.yaw_center_rad + (np.arange(k) - (k - 1) / 2.0) * self.yaw_step_rad

    def yaw_marginal(self) -> np.ndarray:
        """Probability of every yaw bin (sums to 1)."""
        if self.joint is None:
            w = self._yaw_weights
        else:
            w = self.joint.sum(axis=(1, 2))
        t = float(w.sum())
        return w / t if t > 0 and np.isfinite(t) else np.full(len(w), 1.0 / len(w))

    def yaw_stats(self) -> tuple[float, float]:
        """(mean, variance) of the yaw offset (rad, rad^2); variance includes the bin width."""
        w, o = self.yaw_marginal(), self.yaw_offsets()
        mean = float((w * o).sum())
        var = float((w * (o - mean) ** 2).sum()) + self.yaw_step_rad**2 / 12.0
        return mean, var

    def set_yaw_axis(self, center_rad: float, sigma_rad: float, bins: int,
                     step_rad: float) -> None:
        """Make the heading part of the belief: ``bins`` bins of ``step_rad`` about
        ``center_rad`` with a Gaussian prior of ``sigma_rad`` (the position belief, if any, is
        kept as every bin's conditional)."""  # noqa: D205, D209
        bins = int(bins)
        if bins < 1 or bins % 2 == 0:
            raise ValueError(f"yaw bins must be an odd number >= 1, got {bins}")
        self.yaw_center_rad = float(center_rad)
        self.yaw_step_rad = float(step_rad) if bins > 1 else 0.0
        k = (np.arange(bins) - (bins - 1) / 2.0) * self.yaw_step_rad
        w = np.exp(-0.5 * (k / max(float(sigma_rad), 1e-9)) ** 2) if bins > 1 else np.ones(1)
        marginal = self.prob
        self._yaw_weights = w / w.sum()
        self._yaw_residual_m = np.zeros((bins, 2))
        if marginal is not None:
            self.prob = marginal
            self._normalise()

    def drop_yaw_axis(self) -> None:
        """Back to a position-only belief (the marginal kept)."""
        marginal = self.prob
        self._yaw_weights = np.ones(1)
        self._yaw_residual_m = np.zeros((1, 2))
        self.yaw_step_rad = 0.0
        if marginal is not None:
            self.prob = marginal

    # ----------------------------------------------------------------- construction
    @property
    def initialized(self) -> bool:
        """Whether the filter holds a posterior."""
        return self.prob is not None

    @property
    def extent_m(self) -> float:
        """Side of the (square) grid in metres."""
        return 0.0 if self.prob is None else self.prob.shape[0] * self.cell_m

    def clear(self) -> None:
        """Forget the posterior (the yaw axis and its current marginal are kept)."""
        if self.joint is not None:
            self._yaw_weights = self.yaw_marginal()
        self.joint = None
        self.last_scores = None

    @property
    def _n(self) -> int:
        return int(self.joint.shape[-1])

    def _alloc(self, center_en, extent_m: float, cell_m: float) -> None:
        if self.joint is not None:
            self._yaw_weights = self.yaw_marginal()
        n = max(3, int(np.ceil(extent_m / cell_m)))
        n += (n + 1) % 2  # odd: the centre is a cell centre
        self.joint = np.zeros((self.yaw_bins, n, n))
        self._yaw_residual_m = np.zeros((self.yaw_bins, 2))
        self.center_en = np.asarray(center_en, dtype=np.float64).reshape(2).copy()
        self.cell_m = float(cell_m)

    def init_uniform(self, center_en, extent_m: float, cell_m: float) -> None:
        """Uniform prior over a square of ``extent_m`` around ``center_en``."""
        self._alloc(center_en, extent_m, cell_m)
        n = self._n
        self.prob = np.full((n, n), 1.0 / (n * n))

    def init_gaussian(self, center_en, sigma_m: float, extent_m: float, cell_m: float) -> None:
        """Isotropic Gaussian prior of ``sigma_m`` around ``center_en``."""
        self._alloc(center_en, extent_m, cell_m)
        e, n = self.cell_coords()
        d2 = (e - self.center_en[0]) ** 2 + (n - self.center_en[1]) ** 2
        s = max(float(sigma_m), 0.5 * cell_m)
        self.prob = np.exp(-0.5 * d2 / s**2)
        self._normalise()

    def cell_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(east, north) of every cell centre, each (n, n)."""
        n = self._n
        half = (n - 1) / 2.0
        idx = np.arange(n, dtype=np.float64)
        east = self.center_en[0] + (idx - half) * self.cell_m
        north = self.center_en[1] + (half - idx) * self.cell_m
        return np.meshgrid(east, north)  # east varies along columns, north along rows

    def _to_index(self, east, north) -> tuple[np.ndarray, np.ndarray]:
        """Fractional (row, col) of world points."""
        half = (self._n - 1) / 2.0
        col = half + (np.asarray(east) - self.center_en[0]) / self.cell_m
        row = half - (np.asarray(north) - self.center_en[1]) / self.cell_m
        return row, col

    def _normalise(self) -> float:
        s = float(self.joint.sum())
        if not np.isfinite(s) or s <= 0.0:
            self.joint[:] = 1.0 / self.joint.size
            return 0.0
        self.joint /= s
        return s

    # ----------------------------------------------------------------- filter steps
    def predict(self, delta_en, sigma_m: float, yaw_sigma_rad: float = 0.0) -> None:
        """Move the belief by the odometry displacement ``delta_en`` and blur by ``sigma_m``.

        ``delta_en`` is the displacement under the centre yaw bin's heading; every other bin
        moves by it rotated by the bin's yaw difference. ``yaw_sigma_rad`` blurs the yaw axis
        (the odometry's heading drift over this step).
        """
        if self.joint is None:
            return
        d = np.asarray(delta_en, dtype=np.float64).reshape(2)
        self.center_en = self.center_en + d
        s = float(sigma_m) / self.cell_m
        n = self._n
        if not s <= 8.0 * n:
            # a blur this much wider than the grid (a huge odometry jump) leaves it uniform to
            # 2 %; its Gaussian kernel (6 s + 1 taps) might not even fit in memory
            self.prob = np.full((n, n), 1.0 / (n * n))
            return
        K = self.yaw_bins
        if s > 0.05:
            self.joint = ndimage.gaussian_filter(self.joint, (0.0, s, s), mode="constant",
                                                 truncate=3.0)
        if K > 1:
            # every bin moves by d rotated by its yaw difference: the centre bin's move is the
            # grid's (exact); the others' residuals accumulate exactly and are applied as whole
            # cells once they reach half a cell (no interpolation blur; at most 0.5 cell behind)
            dyaw = self.yaw_offsets() - self.yaw_center_rad
            c, sn = np.cos(dyaw), np.sin(dyaw)
            res = np.stack([c * d[0] - sn * d[1], sn * d[0] + c * d[1]], axis=1) - d
            self._yaw_residual_m = self._yaw_residual_m + res
            cells = np.rint(self._yaw_residual_m / self.cell_m).astype(int)
            for k in np.flatnonzero(np.any(cells != 0, axis=1)):
                de, dn = int(cells[k, 0]), int(cells[k, 1])
                self.joint[k] = _shift_cells(self.joint[k], -dn, de)
                self._yaw_residual_m[k] -= cells[k] * self.cell_m
            ys = float(yaw_sigma_rad) / self.yaw_step_rad if self.yaw_step_rad > 0 else 0.0
            if ys > 0.05:
                self.joint = ndimage.gaussian_filter1d(self.joint, ys, axis=0, mode="nearest",
                                                       truncate=3.0)
        if s > 0.05 or K > 1:
            self._normalise()

    def shift_yaw(self, delta_rad: float) -> None:
        """Move the whole heading belief by ``delta_rad`` (every bin's offset; the position
        beliefs stay with their bins): a predicted change of the offset."""  # noqa: D205, D209
        if self.yaw_bins > 1 and np.isfinite(delta_rad):
            self.yaw_center_rad = float(self.yaw_center_rad + delta_rad)

    def update_yaw(self, likelihood: np.ndarray) -> None:
        """Multiply the yaw axis by a likelihood over the bins (an absolute heading)."""
        lik = np.asarray(likelihood, dtype=np.float64).reshape(-1)
        if lik.shape[0] != self.yaw_bins:
            raise ValueError(f"yaw likelihood has {lik.shape[0]} values for {self.yaw_bins} bins")
        if self.joint is None:
            w = self._yaw_weights * lik
            if np.isfinite(w.sum()) and w.sum() > 0:
                self._yaw_weights = w / w.sum()
            return
        self.joint *= lik[:, None, None]
        self._normalise()

    def recenter_yaw(self, min_step_rad: float, max_step_rad: float) -> None:
        """Keep the yaw bins on the belief: shift them by whole bins so the centre bin holds
        the mean, and halve / double their spacing (within the bounds) so +-3 sigma spans
        between a third of and the whole range."""  # noqa: D205, D209
        K = self.yaw_bins
        if K == 1 or self.joint is None:
            return
        half = (K - 1) / 2.0
        mean, var = self.yaw_stats()
        sigma = float(np.sqrt(max(var - self.yaw_step_rad**2 / 12.0, 0.0)))
        step = self.yaw_step_rad
        if 3.0 * sigma > half * step and step * 2.0 <= max_step_rad * (1 + 1e-9):
            step *= 2.0
        elif 9.0 * sigma < half * step and step / 2.0 >= min_step_rad * (1 - 1e-9):
            step /= 2.0
        shift = round((mean - self.yaw_center_rad) / step)
        new_center = self.yaw_center_rad + shift * step
        if step == self.yaw_step_rad and shift == 0:
            return
        # new bin k sits at old fractional index ((new offset - old centre) / old step + half);
        # inside the old range the density is interpolated, beyond it the edge bin's position
        # belief continues with the Gaussian tail of the yaw belief (never a copy of the edge
        # bin's mass, which would push the mean outwards)
        old_off = self.yaw_offsets()
        new_off = new_center + (np.arange(K) - half) * step
        raw = (new_off - self.yaw_center_rad) / self.yaw_step_rad + half
        idx = np.clip(raw, 0.0, K - 1.0)
        lo = np.floor(idx).astype(int)
        hi = np.minimum(lo + 1, K - 1)
        f = (idx - lo)[:, None, None]
        joint = (1.0 - f) * self.joint[lo] + f * self.joint[hi]
        var_g = max(sigma**2, (0.25 * step) ** 2)
        for k in np.flatnonzero((raw < 0.0) | (raw > K - 1.0)):
            e = 0 if raw[k] < 0.0 else K - 1
            joint[k] = self.joint[e] * np.exp(
                -0.5 * ((new_off[k] - mean) ** 2 - (old_off[e] - mean) ** 2) / var_g)
        self.joint = joint
        fr = f[:, :, 0]
        self._yaw_residual_m = (1.0 - fr) * self._yaw_residual_m[lo] + fr * self._yaw_residual_m[hi]
        self.yaw_center_rad, self.yaw_step_rad = float(new_center), float(step)
        self._normalise()

    def measurement_grid(self, tiles: list[TileScores]) -> tuple[np.ndarray, np.ndarray]:
        """Sample the tiles' score maps onto the grid.

        Returns ``(scores, covered)``: the best score of any tile covering each cell (bilinear in
        the score map; -inf where no tile covers it), and the boolean coverage mask.
        """
        n = self._n
        out = np.full((n, n), -np.inf)
        half = (n - 1) / 2.0
        for t in tiles:
            sm = np.asarray(t.score_map, dtype=np.float64)
            r = (sm.shape[0] - 1) / 2.0
            reach = (r + 0.5) * t.cell_m
            ce, cn = float(t.center_en[0]), float(t.center_en[1])
            c0 = int(np.floor(half + (ce - reach - self.center_en[0]) / self.cell_m))
            c1 = int(np.ceil(half + (ce + reach - self.center_en[0]) / self.cell_m))
            r0 = int(np.floor(half - (cn + reach - self.center_en[1]) / self.cell_m))
            r1 = int(np.ceil(half - (cn - reach - self.center_en[1]) / self.cell_m))
            c0, r0 = max(c0, 0), max(r0, 0)
            c1, r1 = min(c1, n - 1), min(r1, n - 1)
            if c0 > c1 or r0 > r1:
                continue
            rows = np.arange(r0, r1 + 1, dtype=np.float64)
            cols = np.arange(c0, c1 + 1, dtype=np.float64)
            east = self.center_en[0] + (cols - half) * self.cell_m
            north = self.center_en[1] + (half - rows) * self.cell_m
            # fractional score-map indices (north-up: i grows southwards)
            jj = r + (east - ce) / t.cell_m
            ii = r - (north - cn) / t.cell_m
            inside_j = (jj >= -0.5) & (jj <= sm.shape[1] - 0.5)
            inside_i = (ii >= -0.5) & (ii <= sm.shape[0] - 0.5)
            if not inside_j.any() or not inside_i.any():
                continue
            II, JJ = np.meshgrid(ii, jj, indexing="ij")
            vals = ndimage.map_coordinates(sm, [II.ravel(), JJ.ravel()], order=1, mode="nearest")
            vals = vals.reshape(II.shape)
            mask = inside_i[:, None] & inside_j[None, :]
            vals = np.where(mask, vals, -np.inf)
            block = out[r0:r1 + 1, c0:c1 + 1]
            np.maximum(block, vals, out=block)
        return out, np.isfinite(out)

    def update(self, tiles: list[TileScores], temperature: float, floor_score: float | None,
               outlier_weight: float) -> dict:
        """Multiply the belief by the likelihood of the tiles' score maps.

        Likelihood of a cell: ``outlier_weight + exp((s - s_max) / temperature)`` where ``s`` is the
        score sampled at the cell, or ``floor_score`` for cells no tile covers (default: the lowest
        score observed). The additive ``outlier_weight`` keeps a wrong match from wiping out the
        true hypothesis. Returns a small dict of statistics of the measurement.
        """
        self.last_scores = None
        if self.joint is None or not tiles:
            return {"covered_fraction": 0.0, "max_score": float("nan")}
        scores, covered = self.measurement_grid(tiles)
        if not covered.any():
            return {"covered_fraction": 0.0, "max_score": float("nan")}
        all_scores = np.concatenate([np.asarray(t.score_map, np.float64).ravel() for t in tiles])
        s_max = float(np.max(all_scores))
        floor = float(np.min(all_scores)) if floor_score is None else float(floor_score)
        s = np.where(covered, scores, floor)
        lik = outlier_weight + np.exp(np.minimum(s - s_max, 0.0) / max(temperature, 1e-9))
        self.joint *= lik[None]
        self.last_scores, self.last_max_score = s, s_max
        self._normalise()
        return {"covered_fraction": float(covered.mean()), "max_score": s_max}

    def score_at(self, east_m: float, north_m: float) -> float:
        """Measurement score of the last update at a position (NaN when none/outside)."""
        if self.last_scores is None:
            return float("nan")
        row, col = self._to_index(east_m, north_m)
        row, col = int(np.rint(row)), int(np.rint(col))
        n = self.last_scores.shape[0]
        if not (0 <= row < n and 0 <= col < n):
            return float("nan")
        return float(self.last_scores[row, col])

    def inject_uniform(self, weight: float) -> None:
        """Mix the position belief with a uniform one (recovery from a wrong convergence); the
        yaw marginal is kept."""  # noqa: D205, D209
        if self.joint is None or weight <= 0.0:
            return
        n2 = self._n**2
        w = self.yaw_marginal()
        self.joint = (1.0 - weight) * self.joint + weight * w[:, None, None] / n2
        self._normalise()

    def regrid(self, center_en, extent_m: float, cell_m: float) -> float:
        """Re-sample the belief onto a new grid; returns the probability mass that fell outside."""
        if self.joint is None:
            return 0.0
        old_joint, old_center, old_cell = self.joint, self.center_en.copy(), self.cell_m
        old_n = old_joint.shape[-1]
        old_half = (old_n - 1) / 2.0
        self._alloc(center_en, extent_m, cell_m)
        e, n = self.cell_coords()
        if cell_m > old_cell * (1.0 + 1e-9):
            # coarsening: sum old cells into the new ones (mass preserving)
            oe = old_center[0] + (np.arange(old_n) - old_half) * old_cell
            on = old_center[1] + (old_half - np.arange(old_n)) * old_cell
            OE, ON = np.meshgrid(oe, on)
            row, col = self._to_index(OE, ON)
            row, col = np.rint(row).astype(int), np.rint(col).astype(int)
            nn = self._n
            ok = (row >= 0) & (row < nn) & (col >= 0) & (col < nn)
            for k in range(old_joint.shape[0]):
                np.add.at(self.joint[k], (row[ok], col[ok]), old_joint[k][ok])
            lost = float(old_joint[:, ~ok].sum())
        else:
            # same or finer cells: interpolate the density (sub-cell shifts stay exact on average)
            orow = (old_half - (n - old_center[1]) / old_cell).ravel()
            ocol = (old_half + (e - old_center[0]) / old_cell).ravel()
            for k in range(old_joint.shape[0]):
                dens = ndimage.map_coordinates(old_joint[k], [orow, ocol], order=1,
                                               mode="constant", cval=0.0).reshape(e.shape)
                self.joint[k] = np.maximum(dens, 0.0)
            total = float(self.joint.sum()) * (cell_m / old_cell) ** 2
            lost = max(0.0, float(old_joint.sum()) - total)
        self._normalise()
        return lost

    # ----------------------------------------------------------------- statistics
    def stats(self, radius_m: float) -> PosteriorStats:
        """Peak, local/global covariance and the mass within ``radius_m`` of the peak."""
        p = self.prob
        e, n = self.cell_coords()
        k = int(np.argmax(p))
        pe, pn = float(e.flat[k]), float(n.flat[k])
        d2 = (e - pe) ** 2 + (n - pn) ** 2
        near = d2 <= max(radius_m, self.cell_m) ** 2
        mass = float(p[near].sum())
        w = p * near
        ws = max(float(w.sum()), 1e-300)
        le = float((w * e).sum() / ws)
        ln = float((w * n).sum() / ws)
        de, dn = e - le, n - ln
        cell_var = self.cell_m**2 / 12.0
        cov_local = np.array([[(w * de * de).sum(), (w * de * dn).sum()],
                              [(w * de * dn).sum(), (w * dn * dn).sum()]]) / ws
        cov_local += np.eye(2) * cell_var
        ge, gn = e - le, n - ln
        cov_peak = np.array([[(p * ge * ge).sum(), (p * ge * gn).sum()],
                             [(p * ge * gn).sum(), (p * gn * gn).sum()]]) + np.eye(2) * cell_var
        mean = np.array([(p * e).sum(), (p * n).sum()])
        nz = p[p > 0]
        ent = float(-(nz * np.log(nz)).sum() / np.log(p.size))
        side = 2 * int(round(max(radius_m, self.cell_m) / self.cell_m)) + 1
        box = ndimage.uniform_filter(p, size=side, mode="constant") * side * side
        far = d2 > (3.0 * max(radius_m, self.cell_m)) ** 2
        second = float(box[far].max()) if far.any() else 0.0
        return PosteriorStats(np.array([le, ln]), mean, cov_local, cov_peak, mass, ent, second)
