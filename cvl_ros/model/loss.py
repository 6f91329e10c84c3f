"""Training objective: soft-weighted triplet loss over an exhaustive mini-batch (Eq. 7).

``sim`` is the (B, B) matrix of max-over-shift similarities, ground i (rows) vs tile j (columns),
with matching pairs on the diagonal. With d = 2 - 2 sim:

    L_g2s = mean_{i != j} log(1 + exp(alpha (d_ii - d_ij)))   (ground i, negative tile j)
    L_s2g = mean_{i != j} log(1 + exp(alpha (d_jj - d_ij)))   (tile j, negative ground i)
    L = (L_g2s + L_s2g) / 2

Optional extension (not in the paper, default off): a displacement term, the cross-entropy of
the positive pair's score map (softmax over shifts) against the ground-truth shift cell.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["triplet_loss", "displacement_ce_loss"]


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
