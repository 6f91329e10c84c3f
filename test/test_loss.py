"""Soft-weighted triplet loss vs an obvious loop; displacement extension."""

import math

import pytest
import torch

from cvl_ros.model.loss import displacement_ce_loss, triplet_loss

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
