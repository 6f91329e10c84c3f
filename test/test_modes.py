"""The localizer's mode machine (cvl_ros.localizer.modes) on analytic evidence."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from cvl_ros.localizer import LocalizerConfig, Status
from cvl_ros.localizer.modes import (
    CovarianceChoice,
    Evidence,
    GridAction,
    ModeState,
    decide,
    reported_covariance,
    sigma_m,
)

LOCAL = ModeState(global_search=False)


def _cov(sigma_m: float) -> np.ndarray:
    return np.eye(2) * sigma_m**2


def _ev(**kw) -> Evidence:
    """A clean, peaked, consistent measurement (a good fix) unless overridden."""
    base = dict(mass_near_peak=0.95, second_mode_mass=0.0, cov_local=_cov(1.0),
                cov_about_peak=_cov(1.5), score_gap=0.0, mismatch_m2=4.0, travel_m=1.5,
                tiles_searched=20, window_full=True)
    base.update(kw)
    return Evidence(**base)


def _run(state, evidences, cfg):
    out = []
    for ev in evidences:
        d = decide(state, ev, cfg)
        state = d.state
        out.append(d)
    return out


def test_status_values_match_the_message_constants():
    assert [int(s) for s in Status] == [0, 1, 2, 3, 4]
    from cvl_ros.localizer import localizer

    assert localizer.Status is Status


def test_global_search_converges_only_after_the_minimum_travel():
    cfg = LocalizerConfig(global_min_travel_m=25.0, min_updates_to_track=2)
    ds = _run(ModeState(), [_ev(travel_m=10.0)] * 4, cfg)
    # 10 m, 20 m: good but too short a drive
    for d in ds[:2]:
        assert d.state.global_search and d.status == Status.INITIALIZING
        assert d.covariance is CovarianceChoice.ABOUT_PEAK and d.grid is GridAction.KEEP
    assert [d.state.global_travel_m for d in ds[:2]] == [10.0, 20.0]
    # 30 m: converged, fine grid around the peak; the first update after initialisation
    c = ds[2]
    assert not c.state.global_search and c.grid is GridAction.CONVERGE
    assert c.state.updates_since_init == 1 and c.status == Status.INITIALIZING
    assert c.covariance is CovarianceChoice.LOCAL
    # then locally: the grid follows the peak, travel is no longer counted
    assert ds[3].grid is GridAction.FOLLOW and ds[3].status == Status.TRACKING
    assert ds[3].state.global_travel_m == 30.0


def test_zero_minimum_travel_converges_at_once_and_may_track_at_once():
    cfg = LocalizerConfig(global_min_travel_m=0.0, min_updates_to_track=1)
    d = decide(ModeState(), _ev(travel_m=0.0), cfg)
    assert d.grid is GridAction.CONVERGE and d.status == Status.TRACKING
    assert d.state.ever_tracked


def test_a_bad_belief_never_converges_however_long_the_drive():
    cfg = LocalizerConfig(global_min_travel_m=5.0)
    for bad in (dict(mass_near_peak=0.5), dict(cov_local=_cov(6.0)),
                dict(second_mode_mass=0.3), dict(score_gap=3.5)):
        ds = _run(ModeState(), [_ev(travel_m=10.0, **bad)] * 5, cfg)
        assert all(d.state.global_search and d.status == Status.INITIALIZING for d in ds), bad


def test_tracking_needs_min_updates_and_a_full_window():
    cfg = LocalizerConfig(min_updates_to_track=3)
    ds = _run(LOCAL, [_ev(window_full=False)] * 4 + [_ev()], cfg)
    assert [d.status for d in ds] == [Status.INITIALIZING] * 4 + [Status.TRACKING]
    assert not any(d.state.ever_tracked for d in ds[:4]) and ds[-1].state.ever_tracked
    ds = _run(LOCAL, [_ev()] * 3, cfg)
    assert [d.status for d in ds] == [Status.INITIALIZING] * 2 + [Status.TRACKING]
    assert all(d.covariance is CovarianceChoice.LOCAL for d in ds)


def test_lost_after_consecutive_bad_updates_then_relocalizing():
    cfg = LocalizerConfig(lost_after_updates=3)
    tracked = replace(LOCAL, ever_tracked=True, updates_since_init=5, global_travel_m=40.0)
    bad = _ev(mass_near_peak=0.05)
    # a good update in between restarts the count
    ds = _run(tracked, [bad, bad, _ev(), bad, bad], cfg)
    assert [d.state.bad_updates for d in ds] == [1, 2, 0, 1, 2]
    assert not any(d.state.global_search for d in ds)
    d = decide(ds[-1].state, bad, cfg)
    assert d.status == Status.NO_FIX  # the lost update itself still reports the local belief
    assert d.state.global_search and d.state.global_travel_m == 0.0 and d.state.bad_updates == 0
    # the next update searches globally and, having tracked before, reports RELOCALIZING
    nxt = decide(d.state, _ev(mass_near_peak=0.05), cfg)
    assert nxt.status == Status.RELOCALIZING and nxt.covariance is CovarianceChoice.ABOUT_PEAK


def test_a_narrowing_belief_the_matches_agree_with_is_given_longer():
    # LOW_CONFIDENCE fixes the measurements agree with (a GPS-initialised belief still
    # narrowing) are not lost after lost_after_updates, only after WEAK_UPDATES_FACTOR times it;
    # the same fixes with a contradicting measurement count as bad at once
    from cvl_ros.localizer.modes import WEAK_UPDATES_FACTOR

    cfg = LocalizerConfig(lost_after_updates=3)
    weak = _ev(mass_near_peak=0.5)  # a fix, below tracking_min_confidence, consistent
    prior = ModeState().at_initial_pose()
    ds = _run(prior, [weak] * (WEAK_UPDATES_FACTOR * 3 - 1), cfg)
    assert all(d.status == Status.LOW_CONFIDENCE for d in ds)
    assert not any(d.state.global_search for d in ds) and ds[-1].state.bad_updates == 0
    assert decide(ds[-1].state, weak, cfg).state.global_search
    contradicted = _ev(mass_near_peak=0.5, score_gap=10.0, mismatch_m2=400.0)
    ds = _run(prior, [contradicted] * 3, cfg)
    assert [d.state.bad_updates for d in ds[:2]] == [1, 2] and ds[-1].state.global_search
    # a weak spell between bad updates does not restart the bad count; a good fix does
    ds = _run(prior, [contradicted, weak, contradicted], cfg)
    assert ds[-1].state.bad_updates == 2 and ds[1].state.weak_updates == 1
    assert ds[-1].state.weak_updates == 0
    assert _run(prior, [weak, _ev()], cfg)[-1].state.weak_updates == 0
    # after its first TRACKING (or without a prior: a global convergence) weak fixes count as bad
    tracked = _run(prior, [_ev(), _ev()], cfg)[-1]
    assert tracked.status == Status.TRACKING and not tracked.state.from_prior
    assert _run(tracked.state, [weak] * 3, cfg)[-1].state.global_search
    assert _run(LOCAL, [weak] * 3, cfg)[-1].state.global_search


def test_no_tile_near_a_bad_belief_is_lost_at_once():
    cfg = LocalizerConfig(lost_after_updates=8)
    d = decide(LOCAL, _ev(mass_near_peak=0.05, tiles_searched=0), cfg)
    assert d.state.global_search and d.inflation_m2 is None


def test_inconsistent_measurement_is_never_tracking_and_widens_the_covariance():
    cfg = LocalizerConfig(innovation_gate=3.0, min_updates_to_track=1)
    ev = _ev(score_gap=3.01, mismatch_m2=100.0)
    for state in (LOCAL, replace(LOCAL, updates_since_init=10, ever_tracked=True)):
        d = decide(state, ev, cfg)
        assert d.status != Status.TRACKING
        assert d.covariance is CovarianceChoice.WIDEST and d.inflation_m2 == 100.0
    # at the gate, or unmeasured (NaN gap), the measurement counts as consistent
    assert decide(LOCAL, _ev(score_gap=3.0), cfg).status == Status.TRACKING
    assert decide(LOCAL, _ev(score_gap=math.nan), cfg).status == Status.TRACKING
    cov = reported_covariance(decide(LOCAL, ev, cfg), _cov(1.0), _cov(1.5), 0.5)
    assert np.allclose(cov, np.eye(2) * (1.5**2 + 100.0))


def test_low_confidence_versus_no_fix():
    cfg = LocalizerConfig(tracking_min_confidence=0.7, low_confidence_min=0.15,
                          max_fix_sigma_m=30.0)
    assert decide(LOCAL, _ev(mass_near_peak=0.5), cfg).status == Status.LOW_CONFIDENCE
    assert decide(LOCAL, _ev(mass_near_peak=0.15), cfg).status == Status.LOW_CONFIDENCE
    assert decide(LOCAL, _ev(mass_near_peak=0.14), cfg).status == Status.NO_FIX
    # too wide a posterior about the peak: no fix
    assert decide(LOCAL, _ev(mass_near_peak=0.5, cov_about_peak=_cov(31.0)),
                  cfg).status == Status.NO_FIX
    # an inconsistent measurement whose best match lies far away widens the covariance past
    # max_fix_sigma_m: no fix either
    far = _ev(mass_near_peak=0.9, score_gap=10.0, mismatch_m2=31.0**2)
    assert decide(LOCAL, far, cfg).status == Status.NO_FIX
    near = _ev(mass_near_peak=0.9, score_gap=10.0, mismatch_m2=20.0**2)
    assert decide(LOCAL, near, cfg).status == Status.LOW_CONFIDENCE


def test_global_status_and_external_requests():
    cfg = LocalizerConfig()
    bad = _ev(mass_near_peak=0.05)
    assert decide(ModeState(), bad, cfg).status == Status.INITIALIZING
    reloc = LOCAL.relocalized()
    assert reloc.global_search and reloc.reloc_requested and reloc.global_travel_m == 0.0
    assert decide(reloc, bad, cfg).status == Status.RELOCALIZING
    # converging clears the request; an initial pose too
    d = decide(replace(reloc, global_travel_m=100.0), _ev(), cfg)
    assert d.grid is GridAction.CONVERGE and not d.state.reloc_requested
    pose = replace(reloc, bad_updates=3, updates_since_init=7).at_initial_pose()
    assert not pose.global_search and not pose.reloc_requested
    assert (pose.bad_updates, pose.updates_since_init) == (0, 0)
    # the global search counts updates but not bad ones
    d = decide(replace(ModeState(), bad_updates=2), bad, cfg)
    assert d.state.updates_since_init == 1 and d.state.bad_updates == 2


@pytest.mark.parametrize("choice", list(CovarianceChoice))
def test_reported_covariance_is_symmetric_with_a_floor(choice):
    from cvl_ros.localizer.modes import Decision

    cov_local = np.array([[0.01, 0.002], [0.001, 4.0]])
    cov_peak = np.array([[9.0, 0.0], [0.0, 0.04]])
    cov = reported_covariance(Decision(LOCAL, Status.NO_FIX, choice, None), cov_local, cov_peak,
                              0.5)
    assert np.allclose(cov, cov.T, rtol=0.0, atol=1e-15)
    assert np.linalg.eigvalsh(cov).min() >= 0.25 - 1e-12
    expected = {CovarianceChoice.LOCAL: 4.0, CovarianceChoice.ABOUT_PEAK: 9.0,
                CovarianceChoice.WIDEST: 9.0}[choice]
    assert sigma_m(cov) == pytest.approx(math.sqrt(expected), rel=1e-6)
