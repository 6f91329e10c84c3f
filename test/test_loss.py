"""Soft-weighted triplet loss vs an obvious loop; displacement extension (ce, nll)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cvl_ros.model.loss import (
    bilinear_shift_target,
    displacement_ce_loss,
    displacement_nll_loss,
    triplet_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def slow_triplet(sim, alpha):
    B = sim.shape[0]
    d = [[2 - 2 * float(sim[i, j]) for j in range(B)] for i in range(B)]
    g2s, s2g = [], []
    for i in range(B):  # ground i: positive tile i, negative tiles j
        for j in range(B):
            if j != i:
                g2s.append(math.log(1 + math.exp(alpha * (d[i][i] - d[i][j]))))
    for j in range(B):  # tile j: positive ground j, negative grounds i
        for i in range(B):
            if i != j:
                s2g.append(math.log(1 + math.exp(alpha * (d[j][j] - d[i][j]))))
    return (sum(g2s) / len(g2s) + sum(s2g) / len(s2g)) / 2, sum(g2s) / len(g2s)


@pytest.mark.parametrize("B", [2, 5])
def test_triplet_equals_slow_loop(B):
    torch.manual_seed(B)
    sim = torch.rand(B, B) * 2 - 1
    sim[0, 1] = 1.5  # similarities may exceed 1 after division by U
    out = triplet_loss(sim, alpha=10.0)
    total, g2s = slow_triplet(sim, 10.0)
    assert out["total"].item() == pytest.approx(total, rel=1e-5)
    assert out["triplet_g2s"].item() == pytest.approx(g2s, rel=1e-5)


def test_triplet_asymmetric_directions_and_gradient():
    sim = torch.tensor([[0.9, 0.8, -0.2], [0.1, 0.5, 0.0], [0.0, 0.7, 0.6]], requires_grad=True)
    out = triplet_loss(sim)
    assert out["triplet_g2s"].item() != pytest.approx(out["triplet_s2g"].item())
    out["total"].backward()
    assert sim.grad[0, 0] < 0 and sim.grad[0, 1] > 0  # raise positives, lower negatives


def test_triplet_rejects_bad_shapes():
    with pytest.raises(ValueError):
        triplet_loss(torch.zeros(1, 1))
    with pytest.raises(ValueError):
        triplet_loss(torch.zeros(2, 3))


def test_displacement_ce_prefers_true_cell():
    k, r, cell = 7, 3, 2.0
    disp = torch.tensor([[4.0, -2.0]])  # east 2 cells, north -1 cell -> dr=+1, dc=+2
    good = torch.zeros(1, k, k)
    good[0, r + 1, r + 2] = 1.0
    bad = torch.zeros(1, k, k)
    bad[0, r - 1, r - 2] = 1.0
    assert displacement_ce_loss(good, disp, cell) < displacement_ce_loss(bad, disp, cell)


def _slow_bilinear_target(east_m, north_m, k, cell):
    """Reference: explicit loops over the cells, weight = tent(col) * tent(row) of the shift."""
    r = (k - 1) // 2
    col = min(max(east_m / cell, -r), r)
    row = min(max(-north_m / cell, -r), r)
    t = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            t[i, j] = max(0.0, 1 - abs(i - r - row)) * max(0.0, 1 - abs(j - r - col))
    return t


@settings(max_examples=60, deadline=None)
@given(east=st.floats(-20, 20), north=st.floats(-20, 20), k=st.sampled_from([3, 5, 7]))
def test_bilinear_target_matches_slow_reference(east, north, k):
    cell = 2.5
    got = bilinear_shift_target(torch.tensor([[east, north]], dtype=torch.float64), k, cell)[0]
    ref = _slow_bilinear_target(east, north, k, cell)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-9)
    assert got.sum().item() == pytest.approx(1.0)
    # the target's mean is the (clamped) shift: the sub-cell part is kept, not rounded
    r = (k - 1) // 2
    cols = torch.arange(k, dtype=torch.float64) - r
    assert (got.sum(0) * cols).sum().item() * cell == pytest.approx(
        min(max(east, -r * cell), r * cell), abs=1e-9)


def test_displacement_nll_equals_ce_on_cell_centres():
    torch.manual_seed(0)
    sm = torch.randn(4, 5, 5)
    disp = torch.tensor([[2.0, 0.0], [0.0, 0.0], [-4.0, 4.0], [4.0, -2.0]])
    for temp in (0.1, 1.0):
        assert displacement_nll_loss(sm, disp, 2.0, temp).item() == pytest.approx(
            displacement_ce_loss(sm, disp, 2.0, temp).item(), rel=1e-6)


def test_displacement_nll_minimum_is_the_bilinear_target():
    """The soft-target NLL is smallest when softmax(map / T) equals the bilinear weights: its
    gradient vanishes there, and any other map scores worse (Gibbs' inequality)."""
    disp = torch.tensor([[1.3, -0.6]])  # 0.65 cells east, 0.3 cells south
    target = bilinear_shift_target(disp, 5, 2.0)
    best = torch.log(target.clamp_min(1e-12)).requires_grad_(True)
    loss = displacement_nll_loss(best, disp, 2.0, 1.0)
    loss.backward()
    assert best.grad.abs().max().item() < 1e-6
    torch.manual_seed(1)
    for _ in range(5):
        other = best.detach() + 0.3 * torch.randn_like(best)
        assert displacement_nll_loss(other, disp, 2.0, 1.0) > loss
    # rounding to the nearest cell (what the ce term trains) is worse for a sub-cell shift
    rounded = torch.full((1, 5, 5), -30.0)
    rounded[0, 2, 3] = 0.0  # nearest cell: row 2 (0.3 south), col 3 (0.65 east)
    assert displacement_nll_loss(rounded, disp, 2.0, 1.0) > loss + 1.0
