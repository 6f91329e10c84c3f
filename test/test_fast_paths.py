"""The inference fast paths equal their reference formulations (and the trained demo model)."""

from pathlib import Path

import pytest
import torch
from _references import canvases_to_grid_reference, fuse_reference, ncc_maps_reference
from torch.nn import functional as F

from cvl_ros.model.fusion import PCSF, _pointwise
from cvl_ros.model.matching import ncc_maps

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEMO = Path(__file__).resolve().parents[1] / "models" / "cvlnet_demo" / "model.safetensors"


@pytest.mark.parametrize("S,r,B", [(16, 2, 1), (32, 3, 3), (15, 2, 2)])
def test_pairwise_ncc_equals_reference(S, r, B):
    g = torch.Generator().manual_seed(S)
    ground = torch.randn(B, 4, S, S, generator=g)
    mask = (torch.rand(B, 1, S, S, generator=g) > 0.3).float()
    sat = torch.randn(7, 4, S, S, generator=g)
    fast = ncc_maps(ground, mask, sat, r, pairwise=True)
    ref = ncc_maps_reference(ground, mask, sat, r)
    assert fast.shape == ref.shape == (B, 7, 2 * r + 1, 2 * r + 1)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)


def _qkv_reference(layer, x):
    """The previous _QKV.forward (three separate pointwise convs)."""
    x = x.contiguous(memory_format=torch.channels_last)
    if not layer.separable:
        y = F.relu(layer.conv1(x))
        return [conv(p) for conv, p in zip(layer.conv2, y.split(layer.c, dim=1))]
    y = F.relu(_pointwise(layer.conv1, layer.dw1(x)))
    parts = layer.dw2(y.contiguous(memory_format=torch.channels_last)).split(layer.c, 1)
    return [_pointwise(conv, p) for conv, p in zip(layer.conv2, parts)]


@pytest.mark.parametrize("separable", [True, False])
@pytest.mark.parametrize("N", [1, 4, 16])
def test_pcsf_fast_equals_reference(separable, N):
    torch.manual_seed(N)
    m = PCSF(16, heads=2, layers=2, separable=separable).eval()
    x = torch.randn(2, N, 16, 12, 10)
    mask = (torch.rand(2, N, 1, 12, 10) > 0.4).float()
    mask[1, :, :, :3] = 0.0  # cells no frame sees
    with torch.no_grad():
        for layer in m.qkv:
            for a, b in zip(layer(x[0]), _qkv_reference(layer, x[0])):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        fast = m._fuse(x, mask)
        ref = fuse_reference(m, x, mask)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_pcsf_fast_path_gradients_match_reference():
    torch.manual_seed(0)
    m = PCSF(8, heads=2, layers=2)
    x = torch.randn(1, 3, 8, 6, 6, requires_grad=True)
    mask = (torch.rand(1, 3, 1, 6, 6) > 0.3).float()
    g1 = torch.autograd.grad(m._fuse(x, mask).square().sum(), x)[0]
    g2 = torch.autograd.grad(fuse_reference(m, x, mask).square().sum(), x)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


def _explicit_attention(qkvm: torch.Tensor, heads: int) -> torch.Tensor:
    """Eq. 2-3 with the attention matrices written out: (B,N,3C+1,S,S) -> (B,C,S,S)."""
    B, N, Cs, S, _ = qkvm.shape
    C = (Cs - 1) // 3
    d = C // heads

    def split(t):  # (B,N,C,S,S) -> (B,h,P,N,d)
        return t.reshape(B, N, heads, d, S * S).permute(0, 2, 4, 1, 3)

    q, k, v = (split(qkvm[:, :, i * C:(i + 1) * C]) for i in range(3))
    valid = qkvm[:, :, -1].reshape(B, N, S * S).permute(0, 2, 1)  # (B,P,N)
    logits = q @ k.transpose(-1, -2) / d ** 0.5  # (B,h,P,Ni,Nj)
    logits = logits.masked_fill(valid[:, None, :, None, :] < 0.5, float("-inf"))
    att = torch.softmax(logits, -1).nan_to_num(0.0)
    out_i = att @ v  # (B,h,P,Ni,d)
    w = valid[:, None, :, :, None]
    out = (out_i * w).sum(3) / w.sum(3).clamp_min(1.0)  # (B,h,P,d)
    return out.permute(0, 1, 3, 2).reshape(B, C, S, S)


@pytest.mark.skipif(not DEMO.is_file(), reason="demo model not present")
def test_demo_model_update_equals_reference_path():
    from cvl_ros.benchmark import window_geometry
    from cvl_ros.model.cvlnet import load_checkpoint
    from cvl_ros.model.matching import match_descriptors, uncertainty_at_shifts

    model, _ = load_checkpoint(DEMO)
    cfg = model.config
    torch.manual_seed(1)
    with torch.inference_mode():
        feats = model.encode_ground(torch.rand(8, 3, *cfg.ground_hw))[None]
        K, T = window_geometry(model, 8)
        sat = model.encode_satellite(torch.rand(50, 3, cfg.sat_px, cfg.sat_px))
        g = model.project_and_fuse(feats, K, T)
        res = model.match(g, sat)
        # reference: explicit-attention fusion + direct NCC conv
        if cfg.pcsf_frame_canvas:  # canvases translated by grid_sample, attention matrices
            states = model.frame_states(feats, K, T)
            qkvm = canvases_to_grid_reference(model, states, T[..., 0, 3], T[..., 1, 3])
            ref_fused = _explicit_attention(qkvm, cfg.pcsf_heads)
            fmask = (qkvm[:, :, -1:].sum(1) > 0).float()
        else:
            from cvl_ros.model.projection import project_to_overhead
            ov, mk = project_to_overhead(feats, K, T, cfg.camera_height_m, cfg.grid_cells,
                                         cfg.coverage_m, cfg.ground_hw)
            fused, fmask = model.fusion(ov, mk)
            ref_fused = fuse_reference(model.fusion, ov, mk)
            torch.testing.assert_close(fused, ref_fused * fmask, rtol=1e-5, atol=1e-5)
        assert fmask.sum() > 0
        torch.testing.assert_close(g.mask, fmask)
        gd = model.ground_head(ref_fused * fmask) * fmask
        torch.testing.assert_close(g.features, gd, rtol=1e-5, atol=1e-5)
        r = model.search_radius
        d0 = ncc_maps_reference(gd, fmask, sat.features, r)
        dmap = d0 / uncertainty_at_shifts(sat.uncertainty, r).unsqueeze(0).clamp_min(1e-6)
        torch.testing.assert_close(res.score_map, dmap, rtol=1e-4, atol=1e-5)
        ref = match_descriptors(g, sat, cfg.cell_m, r)
        assert torch.equal(res.score.argmax(1), ref.score.argmax(1))
