"""Training objective: soft-weighted triplet loss over an exhaustive mini-batch (Eq. 7).

``sim`` is the (B, B) matrix of max-over-shift similarities, ground i (rows) vs tile j (columns),
with matching pairs on the diagonal. With d = 2 - 2 sim:

    L_g2s = mean_{i != j} log(1 + exp(alpha (d_ii - d_ij)))   (ground i, negative tile j)
    L_s2g = mean_{i != j} log(1 + exp(alpha (d_jj - d_ij)))   (tile j, negative ground i)
    L = (L_g2s + L_s2g) / 2

Optional extension (not in the paper, default off): a displacement term on the positive pair's
score map (softmax over shifts), either

* ``ce``: the cross-entropy against the ground-truth shift rounded to a cell (temperature 0.1), or
* ``nll``: the negative log-likelihood of the true, sub-cell shift under the score map read as a
  dense likelihood, ``p(shift) = softmax(score / T)``, against a soft target: the true
  shift's bilinear weights over its four neighbouring cells, so a shift of 0.3 cells trains
  0.7 / 0.3 of the mass onto the two cells around it and the likelihood's mean, not only its
  arg-max, is trained.
  At ``T`` 1.0 the map is one window's likelihood in the localizer's form
  ``exp((s - s_max) / T)``; the localizer's fitted ``T`` for the shipped model is larger (the
  NLL's minimum at 4 = 4 windows sharing each keyframe; docs/calibration.md).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["triplet_loss", "displacement_ce_loss", "displacement_nll_loss",
           "bilinear_shift_target"]


def triplet_loss(sim: torch.Tensor, alpha: float = 10.0) -> dict:
    """Soft-margin triplet loss of a square similarity matrix; returns total/g2s/s2g."""
    B = sim.shape[0]
    if sim.shape != (B, B) or B < 2:
        raise ValueError(f"need a (B,B) similarity matrix with B >= 2, got {tuple(sim.shape)}")
    d = 2.0 - 2.0 * sim
    pos = torch.diagonal(d)
    off = ~torch.eye(B, dtype=torch.bool, device=sim.device)
    g2s = F.softplus(alpha * (pos[:, None] - d))[off].mean()
    s2g = F.softplus(alpha * (pos[None, :] - d))[off].mean()
    return {"total": 0.5 * (g2s + s2g), "triplet_g2s": g2s, "triplet_s2g": s2g}


def displacement_ce_loss(score_map: torch.Tensor, displacement_m: torch.Tensor,
                         cell_m: float, temperature: float = 0.1) -> torch.Tensor:
    """Cross-entropy of paired score maps (B,k,k) vs the ground-truth shift (B,2) east/north.

    Targets outside the window are clamped to its border. Extension, off by default.
    """
    B, k, _ = score_map.shape
    r = (k - 1) // 2
    dc = torch.round(displacement_m[:, 0] / cell_m).long().clamp(-r, r)
    dr = torch.round(-displacement_m[:, 1] / cell_m).long().clamp(-r, r)
    target = (dr + r) * k + (dc + r)
    return F.cross_entropy(score_map.reshape(B, -1) / temperature, target)


def bilinear_shift_target(displacement_m: torch.Tensor, k: int, cell_m: float) -> torch.Tensor:
    """(B,2) east/north shifts -> (B,k,k) bilinear weights over the shift cells (rows north-down).

    Cell (i, j) holds the shift (east, north) = ((j - r) cell_m, -(i - r) cell_m), r = (k-1)/2,
    as in ``displacement_ce_loss``. Shifts beyond the window are clamped to its border. Each
    map sums to 1; a shift on a cell centre puts all its weight on that cell.
    """
    r = (k - 1) // 2
    col = (displacement_m[:, 0] / cell_m).clamp(-r, r) + r
    row = (-displacement_m[:, 1] / cell_m).clamp(-r, r) + r
    c0 = col.floor().clamp(0, k - 1)
    r0 = row.floor().clamp(0, k - 1)
    fc = col - c0
    fr = row - r0
    c1 = (c0 + 1).clamp(max=k - 1)
    r1 = (r0 + 1).clamp(max=k - 1)
    B = displacement_m.shape[0]
    target = displacement_m.new_zeros(B, k * k)
    for rr, cc, w in ((r0, c0, (1 - fr) * (1 - fc)), (r0, c1, (1 - fr) * fc),
                      (r1, c0, fr * (1 - fc)), (r1, c1, fr * fc)):
        target.scatter_add_(1, (rr * k + cc).long()[:, None], w[:, None])
    return target.reshape(B, k, k)


def displacement_nll_loss(score_map: torch.Tensor, displacement_m: torch.Tensor,
                          cell_m: float, temperature: float = 1.0) -> torch.Tensor:
    """Mean NLL of the true sub-cell shift (B,2) under ``softmax(score_map / T)`` (B,k,k).

    Soft-target cross-entropy against ``bilinear_shift_target``; by Jensen's inequality an upper
    bound on the NLL of the bilinearly interpolated likelihood at the true shift, equal to it
    when the shift lies on a cell centre. Unlike that NLL it is smallest when the map's mass
    matches the bilinear weights, so the map's mean carries the sub-cell shift.
    """
    B, k, _ = score_map.shape
    target = bilinear_shift_target(displacement_m, k, cell_m)
    logp = torch.log_softmax(score_map.reshape(B, -1) / temperature, dim=1)
    return -(target.reshape(B, -1) * logp).sum(1).mean()
