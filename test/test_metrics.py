"""Recall metric functions against slow, obvious loops."""

import math

import numpy as np
import pytest

from cvl_ros import metrics


def _slow_rank(scores, k):
    out = []
    for row in scores:
        order = sorted(range(len(row)), key=lambda t: (-row[t], t))
        out.append(order[:k])
    return out


def _slow_summary(scores, centers, disp, true, ks, radius, radius2):
    q_count, t_count = scores.shape
    hits = {k: 0 for k in ks}
    hits25 = 0
    errors = []
    for q in range(q_count):
        order = _slow_rank(scores[q:q + 1], t_count)[0]
        preds = []
        for t in order:
            px = centers[t][0] + (disp[q][t][0] if disp is not None else 0.0)
            py = centers[t][1] + (disp[q][t][1] if disp is not None else 0.0)
            preds.append((px, py))
        dists = [math.hypot(px - true[q][0], py - true[q][1]) for px, py in preds]
        for k in ks:
            if any(d <= radius for d in dists[:k]):
                hits[k] += 1
        if dists[0] <= radius2:
            hits25 += 1
        errors.append(dists[0])
    out = {f"r@{k}": 100.0 * hits[k] / q_count for k in ks}
    out["r@1_25m"] = 100.0 * hits25 / q_count
    out["median_error_m"] = float(np.median(errors))
    out["mean_error_m"] = float(sum(errors) / len(errors))
    out["queries"] = q_count
    out["tiles"] = t_count
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_disp", [True, False])
def test_summarize_matches_slow_loop(seed, with_disp):
    rng = np.random.default_rng(seed)
    q_count, t_count = 37, 150
    centers = rng.uniform(-200, 200, (t_count, 2))
    true = centers[rng.integers(0, t_count, q_count)] + rng.normal(0, 8, (q_count, 2))
    # Quantised scores create ties, which must be broken by the lower index.
    scores = np.round(rng.normal(size=(q_count, t_count)), 1)
    disp = rng.normal(0, 6, (q_count, t_count, 2)) if with_disp else None
    ks = (1, 5, 10, 100)
    fast = metrics.summarize(scores, centers, disp, true, ks, 10.0, 25.0)
    slow = _slow_summary(scores, centers, disp, true, ks, 10.0, 25.0)
    assert fast.keys() == slow.keys()
    for key in slow:
        assert fast[key] == pytest.approx(slow[key], abs=1e-9), key


def test_rank_topk_ties_and_clip():
    scores = np.array([[1.0, 3.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert metrics.rank_topk(scores, 3).tolist() == [[1, 2, 0], [0, 1, 2]]
    assert metrics.rank_topk(scores, 10).shape == (2, 4)
    assert metrics.rank_topk(scores, 3).tolist() == [r[:3] for r in _slow_rank(scores, 4)]


def test_recall_monotone_and_perfect():
    centers = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    true = centers.copy()
    scores = np.eye(3)
    out = metrics.summarize(scores, centers, None, true, (1, 5, 10, 100))
    assert out["r@1"] == 100.0 and out["median_error_m"] == 0.0
    out = metrics.summarize(-np.eye(3), centers, None, true, (1, 5, 10, 100))
    assert out["r@1"] == 0.0 and out["r@5"] == 100.0


def test_empty_queries():
    rec = metrics.recall_at_k(np.zeros((0, 5, 2)), np.zeros((0, 2)), (1, 5))
    assert rec == {1: 0.0, 5: 0.0}
