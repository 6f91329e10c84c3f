"""Fusion: PCSF equals Eq. 2-3 computed by loops; masks and frame order; all variants."""

import math

import pytest
import torch

from cvl_ros.model.fusion import FUSIONS, PCSF, build_fusion, frame_encoding

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def slow_pcsf(model: PCSF, x, mask):
    """Eq. 2-3 per pixel with explicit loops over frames (B=1), using the model's convs."""
    _, N, C, S, _ = x.shape
    h = model.heads
    d = C // h
    enc = frame_encoding(N, C, dtype=x.dtype).view(N, C, 1, 1)
    cur = x[0]
    m = mask[0, :, 0]
    out = None
    for li, layer in enumerate(model.qkv):
        q, k, v = layer((cur + enc) * mask[0])
        out = torch.zeros(N, C, S, S, dtype=x.dtype)
        fused = torch.zeros(C, S, S, dtype=x.dtype)
        for y in range(S):
            for xx in range(S):
                valid = [j for j in range(N) if m[j, y, xx] > 0.5]
                if not valid:
                    continue
                for hh in range(h):
                    sl = slice(hh * d, (hh + 1) * d)
                    for i in range(N):
                        logits = torch.stack([(q[i, sl, y, xx] * k[j, sl, y, xx]).sum()
                                              / math.sqrt(d) for j in valid])
                        wts = torch.softmax(logits, 0)
                        out[i, sl, y, xx] = sum(w * v[j, sl, y, xx] for w, j in zip(wts, valid))
                    # Eq. 3: (1/N_valid) sum over valid i of sum_j M_ij V_j
                    fused[sl, y, xx] = sum(out[i, sl, y, xx] for i in valid) / len(valid)
        cur = out * mask[0]
    return fused


@pytest.mark.parametrize("separable", [True, False])
def test_pcsf_equals_equations_loop(separable):
    torch.manual_seed(0)
    N, C, S = 3, 8, 5
    model = PCSF(C, heads=2, layers=2, separable=separable).double()
    x = torch.randn(1, N, C, S, S, dtype=torch.float64)
    mask = (torch.rand(1, N, 1, S, S) > 0.35).double()
    mask[0, :, :, 0, 0] = 0  # a cell nobody sees
    fused, fmask = model(x, mask)
    torch.testing.assert_close(fused[0], slow_pcsf(model, x, mask), atol=1e-9, rtol=1e-7)
    assert fmask[0, 0, 0, 0] == 0 and fused[0, :, 0, 0].abs().max() == 0
    torch.testing.assert_close(fmask, (mask.sum(1) > 0).double())


def variants():
    return list(FUSIONS)


@pytest.mark.parametrize("name", variants())
def test_padding_frames_and_masked_content_are_ignored(name):
    torch.manual_seed(1)
    N, C, S = 3, 8, 6
    fus = build_fusion(name, C, max_frames=5).eval()
    x = torch.randn(1, N, C, S, S)
    mask = (torch.rand(1, N, 1, S, S) > 0.3).float()
    ref, rmask = fus(x, mask)
    # (a) an all-masked padding frame appended at the end (oldest) changes nothing
    x2 = torch.cat([x, torch.randn(1, 1, C, S, S)], 1)
    m2 = torch.cat([mask, torch.zeros(1, 1, 1, S, S)], 1)
    out, omask = fus(x2, m2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(omask, rmask)
    # (b) content where a frame is masked is never read
    x3 = x + (1 - mask) * torch.randn_like(x) * 10
    torch.testing.assert_close(fus(x3, mask)[0], ref, atol=1e-5, rtol=1e-5)
    # (c) cells seen by no frame are zero and unmasked
    none = mask.sum(1) == 0
    if none.any():
        assert out.masked_select(none.expand_as(out)).abs().max() == 0


@pytest.mark.parametrize("name", variants())
def test_every_variant_forward_backward(name):
    N, C, S = 4, 8, 8
    fus = build_fusion(name, C, max_frames=4)
    x = torch.randn(2, N, C, S, S, requires_grad=True)
    mask = (torch.rand(2, N, 1, S, S) > 0.3).float()
    out, m = fus(x, mask)
    assert out.shape == (2, C, S, S) and m.shape == (2, 1, S, S)
    out.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for n, p in fus.named_parameters():
        assert p.grad is not None, n


@pytest.mark.parametrize("name", ["pcsf", "lstm", "attn_lstm", "conv2d", "conv3d"])
def test_frame_order_matters(name):
    """Frame 0 is the newest: reordering past frames changes the fused result (order-aware),
    while a single valid frame gives the same result wherever it sits for PCSF."""
    torch.manual_seed(2)
    N, C, S = 3, 8, 5
    fus = build_fusion(name, C, max_frames=3).eval()
    x = torch.randn(1, N, C, S, S)
    mask = torch.ones(1, N, 1, S, S)
    a, _ = fus(x, mask)
    b, _ = fus(x[:, [0, 2, 1]], mask)
    assert not torch.allclose(a, b, atol=1e-4)


def test_pcsf_all_equal_frames_average():
    """With identical frames every M_ij is uniform; the fused value is V of that frame."""
    torch.manual_seed(3)
    C, S = 8, 4
    fus = PCSF(C).eval()
    f = torch.randn(1, 1, C, S, S)
    one, _ = fus(f, torch.ones(1, 1, 1, S, S))
    assert torch.isfinite(one).all()


def test_frame_encoding():
    e = frame_encoding(16, 16)
    assert e.shape == (16, 16)
    assert torch.allclose(e[0, 0::2], torch.zeros(8)) and torch.allclose(e[0, 1::2], torch.ones(8))
    assert len({tuple(r.tolist()) for r in e}) == 16  # distinct per index
