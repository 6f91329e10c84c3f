"""SSM matching: NCC and uncertainty vs slow loops, known-shift recovery (sign!), switches."""

import numpy as np
import pytest
import torch

from cvl_ros.model.matching import (
    GroundDescriptor,
    SatelliteDescriptor,
    UncertaintyNet,
    match_descriptors,
    ncc_maps,
    uncertainty_at_shifts,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

torch.manual_seed(0)


def slow_ncc(g, m, f, r):
    """Obvious loops: g (D,S,S), m (1,S,S), f (D,S,S) -> (2r+1, 2r+1)."""
    g = (g * m).double()
    g = g / g.norm()
    D, S, _ = g.shape
    f = f.double()
    out = torch.zeros(2 * r + 1, 2 * r + 1, dtype=torch.float64)
    for i, dr in enumerate(range(-r, r + 1)):
        for j, dc in enumerate(range(-r, r + 1)):
            num = 0.0
            den = 0.0
            for y in range(S):
                for x in range(S):
                    yy, xx = y + dr, x + dc
                    if 0 <= yy < S and 0 <= xx < S:
                        num += float((g[:, y, x] * f[:, yy, xx]).sum())
                        den += float(m[0, y, x]) * float((f[:, yy, xx] ** 2).sum())
            out[i, j] = num / max(np.sqrt(den), 1e-6)
    return out


def slow_u(u, r):
    """U at camera position ((S-1)/2 + dr, (S-1)/2 + dc), bilinear, 1 outside the tile."""
    S = u.shape[-1]
    c = (S - 1) / 2

    def at(y, x):
        return float(u[0, y, x]) if 0 <= y < S and 0 <= x < S else 1.0

    out = torch.zeros(2 * r + 1, 2 * r + 1, dtype=torch.float64)
    for i, dr in enumerate(range(-r, r + 1)):
        for j, dc in enumerate(range(-r, r + 1)):
            y, x = c + dr, c + dc
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            wy, wx = y - y0, x - x0
            out[i, j] = ((1 - wy) * (1 - wx) * at(y0, x0) + (1 - wy) * wx * at(y0, x0 + 1)
                         + wy * (1 - wx) * at(y0 + 1, x0) + wy * wx * at(y0 + 1, x0 + 1))
    return out


@pytest.mark.parametrize("S", [6, 7])
def test_ncc_equals_slow_loop(S):
    B, T, D, r = 2, 3, 3, 2
    g = torch.randn(B, D, S, S)
    m = (torch.rand(B, 1, S, S) > 0.3).float()
    f = torch.randn(T, D, S, S)
    fast = ncc_maps(g, m, f, r, pairwise=True)
    assert fast.shape == (B, T, 2 * r + 1, 2 * r + 1)
    for b in range(B):
        for t in range(T):
            torch.testing.assert_close(fast[b, t].double(), slow_ncc(g[b], m[b], f[t], r),
                                       atol=1e-5, rtol=1e-5)
    paired = ncc_maps(g, m, f[:B], r, pairwise=False)
    for b in range(B):
        torch.testing.assert_close(paired[b], fast[b, b])


@pytest.mark.parametrize("S", [6, 7])
def test_uncertainty_weighting_equals_slow_loop(S):
    r = 4  # reaches beyond the tile for S=6/7
    u = torch.rand(2, 1, S, S) * 0.9 + 0.1
    fast = uncertainty_at_shifts(u, r)
    for t in range(2):
        torch.testing.assert_close(fast[t].double(), slow_u(u[t], r), atol=1e-6, rtol=1e-6)
    # the full score: D = D0 / U
    B, D = 2, 3
    g = torch.randn(B, D, S, S)
    m = torch.ones(B, 1, S, S)
    f = torch.randn(2, D, S, S)
    res = match_descriptors(GroundDescriptor(g, m), SatelliteDescriptor(f, u), cell_m=2.0,
                            radius=r)
    for b in range(B):
        for t in range(2):
            expect = slow_ncc(g[b], m[b], f[t], r) / slow_u(u[t], r)
            torch.testing.assert_close(res.score_map[b, t].double(), expect, atol=1e-5,
                                       rtol=1e-5)
            assert res.score[b, t].item() == pytest.approx(expect.max().item(), abs=1e-5)


def shifted_ground(f, east_cells, north_cells):
    """Ground grid of a camera (east, north) cells from the tile centre: G[r,c] =
    F[r - north, c + east]; cells falling outside the tile are masked."""
    D, S, _ = f.shape
    g = torch.zeros_like(f)
    m = torch.zeros(1, S, S)
    for r in range(S):
        for c in range(S):
            rr, cc = r - north_cells, c + east_cells
            if 0 <= rr < S and 0 <= cc < S:
                g[:, r, c] = f[:, rr, cc]
                m[0, r, c] = 1
    return g, m


@pytest.mark.parametrize("east,north", [(2, -1), (-3, 0), (0, 3), (1, 2), (-2, -3), (0, 0)])
@pytest.mark.parametrize("use_u", [True, False])
def test_matching_recovers_known_shift(east, north, use_u):
    S, D, cell = 16, 4, 3.125
    f = torch.randn(1, D, S, S)
    g, m = shifted_ground(f[0], east, north)
    u = torch.full((1, 1, S, S), 0.5)
    res = match_descriptors(GroundDescriptor(g[None], m[None]), SatelliteDescriptor(f, u),
                            cell_m=cell, radius=3, use_uncertainty=use_u)
    np.testing.assert_allclose(res.displacement_m[0, 0].numpy(), [east * cell, north * cell])
    assert res.score[0, 0].item() == pytest.approx(1.0 / (0.5 if use_u else 1.0), abs=1e-4)
    # the score map is north-up around the tile centre: row i <-> dr = i - r = -north
    i, j = np.unravel_index(int(res.score_map[0, 0].argmax()), (7, 7))
    assert (j - 3, 3 - i) == (east, north)


def test_dense_search_and_without_ssm():
    S, D, cell = 16, 4, 3.0
    f = torch.randn(1, D, S, S)
    g, m = shifted_ground(f[0], 6, -5)
    gd, sd = GroundDescriptor(g[None], m[None]), SatelliteDescriptor(f, torch.ones(1, 1, S, S))
    small = match_descriptors(gd, sd, cell, radius=3)
    dense = match_descriptors(gd, sd, cell, radius=8)
    np.testing.assert_allclose(dense.displacement_m[0, 0].numpy(), [18.0, -15.0])
    assert dense.score_map.shape == (1, 1, 17, 17)
    assert dense.score[0, 0] > small.score[0, 0]
    nossm = match_descriptors(gd, sd, cell, radius=3, use_ssm=False)
    assert nossm.score_map.shape == (1, 1, 1, 1)
    assert torch.all(nossm.displacement_m == 0)
    torch.testing.assert_close(nossm.score_map[0, 0, 0, 0], dense.score_map[0, 0, 8, 8])


def test_pairwise_retrieval_prefers_true_tile():
    S, D = 16, 4
    f = torch.randn(5, D, S, S)
    grounds = [shifted_ground(f[t], t - 2, 2 - t) for t in range(5)]
    g = torch.stack([x[0] for x in grounds])
    m = torch.stack([x[1] for x in grounds])
    sd = SatelliteDescriptor(f, torch.ones(5, 1, S, S))
    res = match_descriptors(GroundDescriptor(g, m), sd, 1.0, radius=3)
    assert res.score.shape == (5, 5) and res.displacement_m.shape == (5, 5, 2)
    assert torch.equal(res.score.argmax(1), torch.arange(5))
    paired = match_descriptors(GroundDescriptor(g, m), sd, 1.0, radius=3, pairwise=False)
    torch.testing.assert_close(paired.score, torch.diagonal(res.score))
    assert paired.displacement_m.shape == (5, 2)


def test_uncertainty_net_range_and_gradients():
    net = UncertaintyNet(8, u_min=0.05)
    x = torch.randn(2, 8, 10, 10) * 50
    u = net(x)
    assert u.shape == (2, 1, 10, 10)
    assert float(u.detach().min()) >= 0.05 and float(u.detach().max()) <= 1.0
    u.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_empty_ground_is_safe():
    S = 8
    g = GroundDescriptor(torch.zeros(1, 4, S, S), torch.zeros(1, 1, S, S))
    s = SatelliteDescriptor(torch.zeros(2, 4, S, S), torch.full((2, 1, S, S), 1e-9))
    res = match_descriptors(g, s, 1.0, radius=2)
    assert torch.isfinite(res.score).all() and torch.isfinite(res.score_map).all()


def _region_ncc_loop(g, m, region, k):
    """Slow reference: NCC of one ground grid (D,S,S) at every shift of its centre from the
    region centre, the region (D,R,R) zero outside; returns (2k+1, 2k+1), [i, j] = (dr, dc) =
    (i - k, j - k) (row down = south, column = east)."""
    D, S, _ = g.shape
    R = region.shape[-1]
    gm = g * m
    gn = gm / gm.norm().clamp_min(1e-6)
    out = torch.zeros(2 * k + 1, 2 * k + 1)
    top0 = (R - S) // 2  # region row of ground row 0 at zero shift
    for i in range(2 * k + 1):
        for j in range(2 * k + 1):
            win = torch.zeros(D, S, S)
            for y in range(S):
                for x in range(S):
                    yy, xx = top0 + (i - k) + y, top0 + (j - k) + x
                    if 0 <= yy < R and 0 <= xx < R:
                        win[:, y, x] = region[:, yy, xx]
            den = (win * win * m).sum().sqrt().clamp_min(1e-6)
            out[i, j] = (gn * win).sum() / den
    return out


def test_dense_search_over_a_larger_satellite_region_matches_a_slow_loop():
    torch.manual_seed(0)
    S, R, D, r, cell = 8, 14, 3, 1, 2.0  # region 3 cells wider each way: k = 1 + 3 = 4
    regions = torch.randn(2, D, R, R)
    # camera 3 cells east and 2 cells north of region 0's centre: its ground grid is the
    # region window centred there
    top, left = (R - S) // 2 - 2, (R - S) // 2 + 3
    g0 = regions[0, :, top:top + S, left:left + S].clone()
    m0 = torch.ones(1, S, S)
    m0[:, :2] = 0.0  # some cells unseen
    g = torch.stack([g0, torch.randn(D, S, S)])
    m = torch.stack([m0, torch.ones(1, S, S)])
    d0 = ncc_maps(g, m, regions, r)
    assert d0.shape == (2, 2, 9, 9)
    for b in range(2):
        for t in range(2):
            torch.testing.assert_close(d0[b, t], _region_ncc_loop(g[b], m[b], regions[t], 4),
                                       rtol=1e-4, atol=1e-5)
    paired = ncc_maps(g, m, regions, r, pairwise=False)
    torch.testing.assert_close(paired, torch.stack([d0[0, 0], d0[1, 1]]), rtol=1e-4, atol=1e-5)
    res = match_descriptors(GroundDescriptor(g, m), SatelliteDescriptor(
        regions, torch.ones(2, 1, R, R)), cell, radius=r)
    np.testing.assert_allclose(res.displacement_m[0, 0].numpy(), [3 * cell, 2 * cell])
    assert res.score[0, 0] == pytest.approx(1.0, abs=1e-5)
    # beyond the window of a tile-sized search (r = 1 cell), found only by the dense one
    tile = regions[:, :, (R - S) // 2:(R - S) // 2 + S, (R - S) // 2:(R - S) // 2 + S]
    small = match_descriptors(GroundDescriptor(g, m), SatelliteDescriptor(
        tile, torch.ones(2, 1, S, S)), cell, radius=r)
    assert small.score[0, 0] < res.score[0, 0] - 0.2
    with pytest.raises(ValueError, match="R - S even"):
        ncc_maps(g, m, torch.randn(2, D, R + 1, R + 1), r)


def _blob(S, row, col, sigma=2.0):
    r, c = torch.meshgrid(torch.arange(S, dtype=torch.float32),
                          torch.arange(S, dtype=torch.float32), indexing="ij")
    return torch.exp(-0.5 * ((r - row) ** 2 + (c - col) ** 2) / sigma**2)[None, None]


@pytest.mark.parametrize("east_cells,north_cells", [(0.5, 0.0), (-1.5, 0.5), (1.0, -1.0)])
def test_upsampled_matching_recovers_half_cell_shifts(east_cells, north_cells):
    # a smooth scene (bilinear upsampling is near exact): the camera half a cell off the coarse
    # lattice is found at upsample 2 and only rounded at upsample 1
    S, cell = 16, 6.25
    sat = _blob(S, 7.5, 7.5)
    ground = _blob(S, 7.5 + north_cells, 7.5 - east_cells)  # G[r, c] = F[r - north, c + east]
    g = GroundDescriptor(ground, torch.ones(1, 1, S, S))
    f = SatelliteDescriptor(sat, torch.ones(1, 1, S, S))
    fine = match_descriptors(g, f, cell_m=cell, radius=2, use_uncertainty=False, upsample=2)
    assert fine.score_map.shape[-2:] == (9, 9)  # +-2 coarse cells in half cells
    np.testing.assert_allclose(fine.displacement_m[0, 0].numpy(),
                               [east_cells * cell, north_cells * cell], atol=1e-6)
    coarse = match_descriptors(g, f, cell_m=cell, radius=2, use_uncertainty=False)
    d = coarse.displacement_m[0, 0].numpy() / cell
    assert np.all(np.abs(d - [east_cells, north_cells]) <= 0.5 + 1e-6)
    assert np.allclose(d, np.round(d))  # the coarse lattice only
    assert match_descriptors(g, f, cell_m=cell, radius=2, upsample=1).score_map.shape[-1] == 5
    with pytest.raises(ValueError, match="upsample"):
        match_descriptors(g, f, cell_m=cell, radius=2, upsample=0)
