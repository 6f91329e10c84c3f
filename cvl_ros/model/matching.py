"""Scene-prior driven similarity matching (SSM): NCC over displacements, uncertainty, argmax.

Shapes: ground descriptor G (B, D, S, S) with mask (B, 1, S, S); satellite descriptor
F (T, D, S, S) with uncertainty U (T, 1, S, S) in (0, 1]. Both grids are north-up, S cells over
the same coverage, ground grid centred on the camera, satellite grid on the tile centre.

Displacement convention: if the camera is ``(east, north)`` metres from the tile centre, the
ground content at cell (r, c) is the satellite content at (r - north/cell, c + east/cell). The
correlation is evaluated at integer cell shifts (dr, dc) in [-r, r]^2:

    D0[dr, dc] = sum_{d,y,x} G[d,y,x] * Fpad[d, y+dr, x+dc] / (||G|| * ||Fpad window ⊙ mask||)

(satellite zero-padded by r), so the best shift is dr = -north/cell, dc = east/cell and
``displacement_m = (dc * cell_m, -dr * cell_m)``; ``score_map[..., i, j]`` is shift
(dr, dc) = (i - r, j - r), i.e. the map is itself north-up around the tile centre. The
satellite window norm is taken over the cells where the ground descriptor is valid (equal to the
plain windowed norm when the mask is all ones). Then D = D0 / U[camera cell] (Eq. 5), with U
sampled at the candidate camera position (centre + shift; bilinear when S is even) and 1 outside
the tile. Score = max over the window (Eq. 6).

Dense search: ``sat`` may also be a larger region (R > S cells at the same cell size, centred
on the tile centre); the shift window then grows by (R - S) / 2 cells each way.

Cost: one ``conv2d`` of the padded satellite stack with the ground descriptors as filters
(pairwise) or one grouped conv (paired), i.e. O(B T D S^2 (2r+1)^2) multiply-adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "GroundDescriptor",
    "SatelliteDescriptor",
    "MatchResult",
    "UncertaintyNet",
    "normalize_ground",
    "ncc_maps",
    "uncertainty_at_shifts",
    "match_descriptors",
]

_EPS = 1e-6


@dataclass
class GroundDescriptor:
    """Fused overhead ground descriptor: ``features`` (B,D,S,S) and ``mask`` (B,1,S,S)."""

    features: torch.Tensor
    mask: torch.Tensor

    def __getitem__(self, idx) -> GroundDescriptor:
        """Select batch rows."""
        return GroundDescriptor(self.features[idx], self.mask[idx])


@dataclass
class SatelliteDescriptor:
    """Satellite descriptor: ``features`` (T,D,S,S) and ``uncertainty`` (T,1,S,S) in (0, 1]."""

    features: torch.Tensor
    uncertainty: torch.Tensor

    def __getitem__(self, idx) -> SatelliteDescriptor:
        """Select tiles."""
        return SatelliteDescriptor(self.features[idx], self.uncertainty[idx])

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass
class MatchResult:
    """Matching output. Pairwise: score (B,T), displacement_m (B,T,2) east/north of the camera
    from the tile centre, score_map (B,T,2r+1,2r+1); paired: the leading (B,T) becomes (B,).
    """  # noqa: D205

    score: torch.Tensor
    displacement_m: torch.Tensor
    score_map: torch.Tensor


class UncertaintyNet(nn.Module):
    """U: 3x3 conv, ReLU, 3x3 conv, ReLU, 1x1 conv, sigmoid; output in [u_min, 1]."""

    def __init__(self, channels: int, hidden: int = 16, u_min: float = 0.05) -> None:
        super().__init__()
        self.u_min = float(u_min)
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(T,C,S,S) -> (T,1,S,S)."""
        return self.u_min + (1.0 - self.u_min) * torch.sigmoid(self.net(feats))


def normalize_ground(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mask and L2-normalise each ground descriptor over all of (D,S,S)."""
    g = features * mask
    n = g.flatten(1).norm(dim=1).clamp_min(_EPS)
    return g / n.view(-1, 1, 1, 1)


def ncc_maps(ground: torch.Tensor, mask: torch.Tensor, sat: torch.Tensor, radius: int,
             pairwise: bool = True) -> torch.Tensor:
    """Normalised cross-correlation D0 over shifts in [-k, k]^2, k = radius + (R - S) / 2.

    ``ground`` (B,D,S,S) (normalised or not: it is normalised here), ``mask`` (B,1,S,S),
    ``sat`` (T,D,R,R) with R >= S and R - S even: a tile's own grid (R = S) or a larger
    satellite region around it (dense search: every placement of the ground grid whose centre
    lies in the region, plus ``radius`` cells beyond). Returns (B,T,2k+1,2k+1) (pairwise) or
    (B,2k+1,2k+1) (paired, B == T).
    """
    g = normalize_ground(ground, mask)
    r = int(radius)
    B, D, S, S2 = g.shape
    R = sat.shape[-1]
    extra = R - S
    if extra < 0 or extra % 2 or sat.shape[-2] != R:
        raise ValueError(f"satellite grid must be square, R >= S and R - S even; got "
                         f"{tuple(sat.shape[-2:])} for S = {S}")
    if pairwise:
        # Same sums as conv2d(pad(sat), g) (``test/_references.py``) with the roles
        # swapped: the zero-padded ground is the input and the T tiles are the filters, so
        # oneDNN runs one conv with T output channels instead of T convs with B filters (about
        # 3-4x faster on CPU for T = 50); output index i is shift k - i, hence the flip.
        q = r + extra
        gp = F.pad(g, (q, q, q, q))
        mp = F.pad(mask.to(g.dtype), (q, q, q, q))
        f2 = (sat * sat).sum(1, keepdim=True)
        num = F.conv2d(gp, sat)  # (B,T,k,k), flipped
        den = F.conv2d(mp, f2)  # (B,T,k,k), flipped
        out = num / den.clamp_min(0).sqrt().clamp_min(_EPS)
        return out.flip(-2, -1)
    fp = F.pad(sat, (r, r, r, r))
    f2 = (fp * fp).sum(1, keepdim=True)
    T = fp.shape[0]
    if T != B:
        raise ValueError(f"paired matching needs as many tiles as grounds ({T} != {B})")
    k = fp.shape[-1]
    num = F.conv2d(fp.reshape(1, T * D, k, k), g, groups=B)[0]
    den = F.conv2d(f2.reshape(1, T, k, k), mask.to(g.dtype), groups=B)[0]
    return num / den.clamp_min(0).sqrt().clamp_min(_EPS)


def uncertainty_at_shifts(u: torch.Tensor, radius: int) -> torch.Tensor:
    """U at the camera position of each shift: (T,1,S,S) -> (T, 2r+1, 2r+1).

    Shift (dr, dc) puts the camera at tile pixel ((S-1)/2 + dr, (S-1)/2 + dc); for even S that
    is between four cells and U is averaged over them (bilinear). Outside the tile U = 1.
    """
    r = int(radius)
    S = u.shape[-1]
    # U padded with ones by r + 1 cells; index of tile cell (0, 0) is then r + 1
    up = F.pad(u, (r + 1,) * 4, value=1.0)
    if S % 2 == 0:
        c = S // 2 + r + 1  # padded index of the cell just after position (S-1)/2
        win = up[:, 0, c - r - 1:c + r + 1, c - r - 1:c + r + 1]  # (2r+2)^2 cells
        return 0.25 * (win[:, :-1, :-1] + win[:, 1:, :-1] + win[:, :-1, 1:] + win[:, 1:, 1:])
    c = (S - 1) // 2 + r + 1
    return up[:, 0, c - r:c + r + 1, c - r:c + r + 1]


def _upsampled(ground: GroundDescriptor, sat: SatelliteDescriptor,
               factor: int) -> tuple[GroundDescriptor, SatelliteDescriptor]:
    """Both descriptors on a grid ``factor`` times finer (bilinear, half-pixel centres)."""
    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)

    return (GroundDescriptor(up(ground.features), up(ground.mask.to(ground.features.dtype))),
            SatelliteDescriptor(up(sat.features), up(sat.uncertainty)))


def match_descriptors(
    ground: GroundDescriptor,
    sat: SatelliteDescriptor,
    cell_m: float,
    radius: int = 3,
    use_ssm: bool = True,
    use_uncertainty: bool = True,
    pairwise: bool = True,
    upsample: int = 1,
) -> MatchResult:
    """Score every ground against every tile (``pairwise``) or row i against tile i.

    ``upsample`` > 1 evaluates the displacements on a grid ``upsample`` times finer: both
    descriptors, the ground mask and U are bilinearly upsampled (cell edges kept, so cell
    centres stay where the convention puts them), the shift window keeps its extent in metres
    (r * upsample fine cells) and ``cell_m`` becomes ``cell_m / upsample``. Both sides are
    smoothed alike, so no shift is favoured for lying on the coarse lattice (a coarse score map
    sampled bilinearly peaks only on its nodes: the quantisation floor of the localizer).

    ``use_ssm=False`` evaluates the centre-aligned shift only (radius 0, displacement 0);
    ``use_uncertainty=False`` uses U = 1. ``sat`` may be a region of R > S cells around each
    tile centre (``CVLNet.encode_satellite(..., region=True)``): the window then spans
    r + (R - S) / 2 cells each way and displacements are from the region's centre.
    """
    r = int(radius) if use_ssm else 0
    up = int(upsample)
    if up < 1:
        raise ValueError(f"upsample must be >= 1, got {upsample}")
    if up > 1:
        ground, sat = _upsampled(ground, sat, up)
        r, cell_m = r * up, float(cell_m) / up
    d0 = ncc_maps(ground.features, ground.mask, sat.features, r, pairwise)
    # a satellite region larger than the ground grid widens the shift window (dense search)
    r = r + (sat.features.shape[-1] - ground.features.shape[-1]) // 2
    if use_uncertainty:
        u = uncertainty_at_shifts(sat.uncertainty, r)  # (T,k,k)
        dmap = d0 / (u.unsqueeze(0) if pairwise else u).clamp_min(_EPS)
    else:
        dmap = d0
    k = 2 * r + 1
    flat = dmap.flatten(-2)
    score, idx = flat.max(dim=-1)
    dr = torch.div(idx, k, rounding_mode="floor") - r
    dc = idx % k - r
    disp = torch.stack([dc.to(dmap.dtype) * cell_m, -dr.to(dmap.dtype) * cell_m], dim=-1)
    return MatchResult(score=score, displacement_m=disp, score_map=dmap)
