"""Histogram (grid) Bayes filter over the body position (east, north) with known heading.

The posterior is a north-up grid of probabilities in the map's local ENU frame (row 0 = north
edge, column 0 = west edge, as every overhead grid of the project). Prediction with a known
odometry displacement is an exact relabelling of the grid (its centre moves by the
displacement) followed by a Gaussian blur of the process noise; the update multiplies the grid by
a likelihood sampled from the score maps of the searched tiles. The grid can be re-sampled onto
another extent/resolution (coarse over the whole database while relocalising, fine around the
peak while tracking).
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


class GridFilter:
    """Grid Bayes filter over (east, north); see the module docstring."""

    def __init__(self) -> None:
        self.prob: np.ndarray | None = None
        self.last_scores: np.ndarray | None = None  # measurement grid of the last update
        self.last_max_score = float("nan")
        self.center_en = np.zeros(2)
        self.cell_m = 1.0

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
        """Forget the posterior."""
        self.prob = None
        self.last_scores = None

    def _alloc(self, center_en, extent_m: float, cell_m: float) -> None:
        n = max(3, int(np.ceil(extent_m / cell_m)))
        n += (n + 1) % 2  # odd: the centre is a cell centre
        self.prob = np.zeros((n, n))
        self.center_en = np.asarray(center_en, dtype=np.float64).reshape(2).copy()
        self.cell_m = float(cell_m)

    def init_uniform(self, center_en, extent_m: float, cell_m: float) -> None:
        """Uniform prior over a square of ``extent_m`` around ``center_en``."""
        self._alloc(center_en, extent_m, cell_m)
        self.prob[:] = 1.0 / self.prob.size

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
        n = self.prob.shape[0]
        half = (n - 1) / 2.0
        idx = np.arange(n, dtype=np.float64)
        east = self.center_en[0] + (idx - half) * self.cell_m
        north = self.center_en[1] + (half - idx) * self.cell_m
        return np.meshgrid(east, north)  # east varies along columns, north along rows

    def _to_index(self, east, north) -> tuple[np.ndarray, np.ndarray]:
        """Fractional (row, col) of world points."""
        half = (self.prob.shape[0] - 1) / 2.0
        col = half + (np.asarray(east) - self.center_en[0]) / self.cell_m
        row = half - (np.asarray(north) - self.center_en[1]) / self.cell_m
        return row, col

    def _normalise(self) -> float:
        s = float(self.prob.sum())
        if not np.isfinite(s) or s <= 0.0:
            self.prob[:] = 1.0 / self.prob.size
            return 0.0
        self.prob /= s
        return s

    # ----------------------------------------------------------------- filter steps
    def predict(self, delta_en, sigma_m: float) -> None:
        """Move the belief by the odometry displacement ``delta_en`` and blur by ``sigma_m``."""
        if self.prob is None:
            return
        self.center_en = self.center_en + np.asarray(delta_en, dtype=np.float64).reshape(2)
        s = float(sigma_m) / self.cell_m
        if not s <= 8.0 * self.prob.shape[0]:
            # a blur this much wider than the grid (a huge odometry jump) leaves it uniform to
            # 2 %; its Gaussian kernel (6 s + 1 taps) might not even fit in memory
            self.prob[:] = 1.0 / self.prob.size
        elif s > 0.05:
            self.prob = ndimage.gaussian_filter(self.prob, s, mode="constant", truncate=3.0)
            self._normalise()

    def measurement_grid(self, tiles: list[TileScores]) -> tuple[np.ndarray, np.ndarray]:
        """Sample the tiles' score maps onto the grid.

        Returns ``(scores, covered)``: the best score of any tile covering each cell (bilinear in
        the score map; -inf where no tile covers it), and the boolean coverage mask.
        """
        n = self.prob.shape[0]
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
        if self.prob is None or not tiles:
            return {"covered_fraction": 0.0, "max_score": float("nan")}
        scores, covered = self.measurement_grid(tiles)
        if not covered.any():
            return {"covered_fraction": 0.0, "max_score": float("nan")}
        all_scores = np.concatenate([np.asarray(t.score_map, np.float64).ravel() for t in tiles])
        s_max = float(np.max(all_scores))
        floor = float(np.min(all_scores)) if floor_score is None else float(floor_score)
        s = np.where(covered, scores, floor)
        lik = outlier_weight + np.exp(np.minimum(s - s_max, 0.0) / max(temperature, 1e-9))
        self.prob = self.prob * lik
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
        """Mix the belief with a uniform distribution (recovery from a wrong convergence)."""
        if self.prob is None or weight <= 0.0:
            return
        self.prob = (1.0 - weight) * self.prob + weight / self.prob.size
        self._normalise()

    def regrid(self, center_en, extent_m: float, cell_m: float) -> float:
        """Re-sample the belief onto a new grid; returns the probability mass that fell outside."""
        if self.prob is None:
            return 0.0
        old_prob, old_center, old_cell = self.prob, self.center_en.copy(), self.cell_m
        old_half = (old_prob.shape[0] - 1) / 2.0
        self._alloc(center_en, extent_m, cell_m)
        e, n = self.cell_coords()
        if cell_m > old_cell * (1.0 + 1e-9):
            # coarsening: sum old cells into the new ones (mass preserving)
            oe = old_center[0] + (np.arange(old_prob.shape[1]) - old_half) * old_cell
            on = old_center[1] + (old_half - np.arange(old_prob.shape[0])) * old_cell
            OE, ON = np.meshgrid(oe, on)
            row, col = self._to_index(OE, ON)
            row, col = np.rint(row).astype(int), np.rint(col).astype(int)
            nn = self.prob.shape[0]
            ok = (row >= 0) & (row < nn) & (col >= 0) & (col < nn)
            np.add.at(self.prob, (row[ok], col[ok]), old_prob[ok])
            lost = float(old_prob[~ok].sum())
        else:
            # same or finer cells: interpolate the density (sub-cell shifts stay exact on average)
            orow = old_half - (n - old_center[1]) / old_cell
            ocol = old_half + (e - old_center[0]) / old_cell
            dens = ndimage.map_coordinates(old_prob, [orow.ravel(), ocol.ravel()], order=1,
                                           mode="constant", cval=0.0).reshape(e.shape)
            self.prob = np.maximum(dens, 0.0)
            total = float(self.prob.sum()) * (cell_m / old_cell) ** 2
            lost = max(0.0, 1.0 - total)
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
