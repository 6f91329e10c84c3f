"""The localizer's mode machine: global search, tracking, lost; and the Status it reports.

The localizer is in one of two search modes. *Global*: the window is matched against the whole
database (initialisation, an explicit relocalisation, or after being lost) and the belief lives
on a coarse grid over the database. *Local*: only tiles near the belief are searched and the
belief lives on a fine grid that follows its peak. Every update gathers the numbers the decision
needs (``Evidence``) and ``decide`` alone turns them, with the previous ``ModeState``, into the
next state, the reported ``Status``, the covariance to report and what to do with the grid:

- global -> local ("converged") once the belief is good (see ``Evidence.is_good``) and the global
  search has accumulated ``global_min_travel_m`` of odometry; the grid becomes a fine one
  around the peak and the update counts as the first after initialisation.
- local, good: TRACKING after ``min_updates_to_track`` updates with a full window, else
  INITIALIZING; the bad-update count restarts.
- local, not good: LOW_CONFIDENCE or NO_FIX; after ``lost_after_updates`` such updates in a row,
  or at once when no tile lay near the belief, the next update searches globally ("lost").
- global, not converged: INITIALIZING, or RELOCALIZING once the localizer has tracked before
  or a relocalisation was requested.

External requests change the state too: ``ModeState()`` after a reset, ``relocalized()`` and
``at_initial_pose()``. Everything here is pure: the Localizer applies the decision.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cvl_ros.localizer.types import LocalizerConfig

__all__ = [
    "CovarianceChoice",
    "Decision",
    "Evidence",
    "GridAction",
    "ModeState",
    "Status",
    "decide",
    "reported_covariance",
    "sigma_m",
]


#: A belief set from a prior (initial pose, GPS) that the measurements agree with but that is not
#: yet peaked enough for TRACKING (LOW_CONFIDENCE fixes, e.g. after a 5 m GPS prior) is given
#: this many times lost_after_updates before a global relocalisation (which must then travel
#: global_min_travel_m). Only until its first TRACKING: a belief that tracked and then weakens
#: may have locked onto a look-alike place, and is lost after lost_after_updates as before.
WEAK_UPDATES_FACTOR = 4


class Status(enum.IntEnum):
    """Localisation state; values equal the constants of ``cvl_ros/GeoPoseEstimate``."""

    NO_FIX = 0
    INITIALIZING = 1
    TRACKING = 2
    LOW_CONFIDENCE = 3
    RELOCALIZING = 4


@dataclass(frozen=True)
class ModeState:
    """The mode and the counters the transitions depend on (the default: after a reset)."""

    global_search: bool = True
    """Match against the whole database (initialising / relocalising) instead of near the belief."""
    global_travel_m: float = 0.0
    """Odometry travelled since the current global search began."""
    ever_tracked: bool = False
    """TRACKING was reported since the last reset (a later global search is RELOCALIZING)."""
    reloc_requested: bool = False
    """The current global search was requested (``Localizer.relocalize``)."""
    updates_since_init: int = 0
    """Updates since the belief was (re)initialised (an initial pose, convergence: 1)."""
    bad_updates: int = 0
    """Consecutive local updates without a good fix (weak ones excepted, below)."""
    weak_updates: int = 0
    """Consecutive local updates with a LOW_CONFIDENCE fix the measurement agrees with, while the
    belief comes from a prior (``from_prior``): still narrowing, lost only after
    WEAK_UPDATES_FACTOR times lost_after_updates."""
    from_prior: bool = False
    """The belief was set from an initial pose or a GPS prior and has not tracked since."""

    def relocalized(self) -> ModeState:
        """State after an explicit relocalisation request (the belief is forgotten)."""
        return replace(self, global_search=True, global_travel_m=0.0, reloc_requested=True,
                       updates_since_init=0, bad_updates=0, weak_updates=0, from_prior=False)

    def at_initial_pose(self) -> ModeState:
        """State after the belief was set from an initial pose or a GPS prior."""
        return replace(self, global_search=False, reloc_requested=False, updates_since_init=0,
                       bad_updates=0, weak_updates=0, from_prior=True)


@dataclass(frozen=True, eq=False)
class Evidence:
    """What one update measured, after the filter's measurement update."""

    mass_near_peak: float
    """Posterior mass within ``confidence_radius_m`` of the peak (the reported confidence)."""
    second_mode_mass: float
    """Largest mass of a same-size box well away from the peak (``PosteriorStats``)."""
    cov_local: np.ndarray
    """(2, 2) covariance of the posterior near its peak."""
    cov_about_peak: np.ndarray
    """(2, 2) second moment of the whole posterior about its peak."""
    score_gap: float
    """(best score of the update - score at the belief's peak) / score_temperature; NaN when
    the peak was not measured."""
    mismatch_m2: float
    """Squared distance from the belief's peak to the best match's position (NaN without one)."""
    travel_m: float
    """Odometry travelled since the previous update (0 for the first update of a belief)."""
    tiles_searched: int
    """Tiles matched in this update."""
    window_full: bool
    """The sliding window holds ``window_length`` keyframes."""
    heading_known: bool = True
    """The heading is known (given, or estimated past its whole-circle search): a position
    matched under an unknown heading is never good enough to track on."""

    @property
    def sigma_local_m(self) -> float:
        """Major-axis 1-sigma of ``cov_local``."""
        return sigma_m(self.cov_local)

    @property
    def sigma_peak_m(self) -> float:
        """Major-axis 1-sigma of ``cov_about_peak``."""
        return sigma_m(self.cov_about_peak)

    def consistent(self, config: LocalizerConfig) -> bool:
        """Whether the measurement agrees with the belief (the gap is within the gate)."""
        return not (np.isfinite(self.score_gap) and self.score_gap > config.innovation_gate)

    def is_good(self, config: LocalizerConfig) -> bool:
        """A consistent, peaked, unimodal belief: good enough to track on."""
        c = config
        return (self.heading_known and self.consistent(c)
                and self.mass_near_peak >= c.tracking_min_confidence
                and self.sigma_local_m <= c.tracking_max_sigma_m
                and self.second_mode_mass <= c.max_second_mode_ratio * self.mass_near_peak)


class CovarianceChoice(enum.Enum):
    """Which posterior covariance an estimate reports (see ``reported_covariance``)."""

    LOCAL = "local"
    """Covariance near the peak: the belief is peaked and trusted."""
    ABOUT_PEAK = "about_peak"
    """Whole posterior about the peak: a global search, possibly multi-modal."""
    WIDEST = "widest"
    """Element-wise max of both, plus ``inflation_m2`` when the measurement contradicted the
    belief: no good fix."""


class GridAction(enum.Enum):
    """What the update does with the filter's grid after the decision."""

    KEEP = "keep"
    """Leave it (a global search goes on, on the database grid)."""
    CONVERGE = "converge"
    """The global search converged: re-sample onto a fine tracking grid around the peak and
    read the posterior statistics again."""
    FOLLOW = "follow"
    """Local mode: re-centre the grid on the peak when the peak drifted too far from its centre
    (the statistics of the estimate stay those before the re-centring)."""


@dataclass(frozen=True)
class Decision:
    """The outcome of ``decide``."""

    state: ModeState
    status: Status
    covariance: CovarianceChoice
    inflation_m2: float | None = None
    """Added to the diagonal of a WIDEST covariance (None: nothing added)."""
    grid: GridAction = GridAction.KEEP


def sigma_m(cov: np.ndarray) -> float:
    """Major-axis 1-sigma of a (2, 2) covariance."""
    return math.sqrt(max(np.linalg.eigvalsh(cov).max(), 0.0))


def _widest(cov_local: np.ndarray, cov_about_peak: np.ndarray,
            inflation_m2: float | None) -> np.ndarray:
    cov = np.maximum(cov_about_peak, cov_local)
    if inflation_m2 is not None:
        cov = cov + np.eye(2) * inflation_m2
    return cov


def decide(state: ModeState, evidence: Evidence, config: LocalizerConfig) -> Decision:
    """Next mode state, the Status to report, the covariance to report and the grid action."""
    c, ev = config, evidence
    travel = state.global_travel_m + ev.travel_m if state.global_search else state.global_travel_m
    s = replace(state, updates_since_init=state.updates_since_init + 1, global_travel_m=travel)
    good = ev.is_good(c)
    if s.global_search:
        if not (good and s.global_travel_m >= c.global_min_travel_m):
            status = (Status.RELOCALIZING if s.ever_tracked or s.reloc_requested
                      else Status.INITIALIZING)
            return Decision(s, status, CovarianceChoice.ABOUT_PEAK, None, GridAction.KEEP)
        # converged: continue locally on a fine grid around the peak
        s = replace(s, global_search=False, reloc_requested=False, updates_since_init=1)
        grid = GridAction.CONVERGE
    else:
        grid = GridAction.FOLLOW
    if good:
        tracking = s.updates_since_init >= c.min_updates_to_track and ev.window_full
        s = replace(s, bad_updates=0, weak_updates=0, ever_tracked=s.ever_tracked or tracking,
                    from_prior=s.from_prior and not tracking)
        status = Status.TRACKING if tracking else Status.INITIALIZING
        return Decision(s, status, CovarianceChoice.LOCAL, None, grid)
    # local mode without a good fix
    if ev.mass_near_peak >= c.low_confidence_min and ev.sigma_peak_m <= c.max_fix_sigma_m:
        status = Status.LOW_CONFIDENCE
    else:
        status = Status.NO_FIX
    # a measurement contradicting the belief widens it by the distance to the best match
    inflation = ev.mismatch_m2 if not ev.consistent(c) and ev.tiles_searched > 0 else None
    cov = _widest(ev.cov_local, ev.cov_about_peak, inflation)
    if status == Status.LOW_CONFIDENCE and sigma_m(cov) > c.max_fix_sigma_m:
        status = Status.NO_FIX
    weak = (s.from_prior and status == Status.LOW_CONFIDENCE and inflation is None
            and ev.tiles_searched > 0)
    if weak:  # a prior agreed with, not yet peaked: not evidence of being lost, only slow
        s = replace(s, weak_updates=s.weak_updates + 1)
    else:
        s = replace(s, bad_updates=s.bad_updates + 1, weak_updates=0)
    if (ev.tiles_searched == 0 or s.bad_updates >= c.lost_after_updates
            or s.weak_updates >= WEAK_UPDATES_FACTOR * c.lost_after_updates):
        # lost: the next update relocalises globally
        s = replace(s, global_search=True, global_travel_m=0.0, bad_updates=0, weak_updates=0,
                    from_prior=False)
    return Decision(s, status, CovarianceChoice.WIDEST, inflation, grid)


def reported_covariance(decision: Decision, cov_local: np.ndarray, cov_about_peak: np.ndarray,
                        min_sigma_m: float) -> np.ndarray:
    """The decision's covariance of the given statistics, symmetric with a floored spectrum."""
    if decision.covariance is CovarianceChoice.LOCAL:
        cov = cov_local
    elif decision.covariance is CovarianceChoice.ABOUT_PEAK:
        cov = cov_about_peak
    else:
        cov = _widest(cov_local, cov_about_peak, decision.inflation_m2)
    cov = 0.5 * (cov + cov.T)
    w, v = np.linalg.eigh(cov)
    return (v * np.maximum(w, min_sigma_m**2)) @ v.T
