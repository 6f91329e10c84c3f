"""Sequence fusion of projected overhead features (B, N, C, S, S) + masks (B, N, 1, S, S).

Every variant has the same interface: ``forward(x, mask) -> (fused (B, C, S, S), mask (B,1,S,S))``
where the output mask marks cells seen by at least one frame. Frame 0 is the newest (query)
frame; frames whose mask is zero everywhere are padding and do not change the result of the
mask-aware variants (``pcsf``, ``conv3d``, ``lstm``, ``attn_*``), so windows of different lengths
can share a batch. ``conv2d`` / ``attn_conv2d`` stack a fixed number of frames (``max_frames``,
missing ones zero-padded) on the channel axis, as a plain 2D conv fusion must.

Variants (paper Sec. 5 ablations):

* ``pcsf``: photo-consistency constrained sequence fusion, Eq. 2-3: per frame Q, K, V from two
  stacked 3x3 convs (on features + sinusoidal frame-index encoding), per overhead pixel
  M_ij = softmax_j(Q_i . K_j / sqrt(d)) over the frames j valid at that pixel, 2 heads, 2
  layers; the last layer outputs (1/N_valid) sum_i sum_j M_ij V_j over the valid i.
* ``conv2d`` / ``conv3d`` / ``lstm``: direct fusion by a 2D conv over stacked frames, a 3D conv
  over (frame, y, x) followed by a masked mean, or a per-pixel LSTM run oldest -> newest.
* ``attn_conv2d`` / ``attn_conv3d`` / ``attn_lstm``: the same networks predict per-frame,
  per-pixel weights (softmax over valid frames) and the output is the weighted sum of the frames.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FUSIONS", "build_fusion", "frame_encoding", "PCSF", "masked_mean"]

FUSIONS = ("pcsf", "conv2d", "conv3d", "lstm", "attn_conv2d", "attn_conv3d", "attn_lstm")
_NEG = -1e4


def frame_encoding(n_frames: int, channels: int, device=None, dtype=torch.float32):
    """Sinusoidal encoding of frame indices 0..N-1 (0 = newest): (N, C)."""
    pos = torch.arange(n_frames, device=device, dtype=dtype)[:, None]
    i = torch.arange(0, channels, 2, device=device, dtype=dtype)
    div = torch.exp(-math.log(100.0) * i / max(channels, 1))
    enc = torch.zeros(n_frames, channels, device=device, dtype=dtype)
    enc[:, 0::2] = torch.sin(pos * div)
    enc[:, 1::2] = torch.cos(pos * div)[:, : channels // 2]
    return enc


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over frames (dim 1) of ``x`` (B,N,C,S,S) where ``mask`` (B,N,1,S,S) is set."""
    cnt = mask.sum(1)
    out = (x * mask).sum(1) / cnt.clamp_min(1.0)
    return out, (cnt > 0).to(x.dtype)


def _masked_softmax_over_frames(logits: torch.Tensor, valid: torch.Tensor, dim: int):
    """Softmax of ``logits`` along ``dim`` restricted to ``valid`` (bool); all-invalid -> 0."""
    logits = logits.masked_fill(~valid, _NEG)
    w = torch.softmax(logits, dim=dim)
    return w * valid.to(w.dtype)


def _pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv as a matmul over the channels of a channels_last tensor (fast on CPU)."""
    w = conv.weight.reshape(conv.out_channels, conv.in_channels)
    return F.linear(x.permute(0, 2, 3, 1), w, conv.bias).permute(0, 3, 1, 2)


class _QKV(nn.Module):
    """Q, K and V, each by two stacked 3x3 convs (ReLU between), computed jointly.

    ``separable=True`` (default, for CPU latency at N=16) factorises every 3x3 conv into a
    depthwise 3x3 followed by a pointwise conv (same 5x5 receptive field, ~6x fewer
    multiply-adds); ``separable=False`` uses full 3x3 convs as the reference does. Q, K and V
    never share weights.
    """

    def __init__(self, c: int, separable: bool = True) -> None:
        super().__init__()
        self.c = c
        self.separable = separable
        if separable:
            self.dw1 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
            self.conv1 = nn.Conv2d(c, 3 * c, 1)
            self.dw2 = nn.Conv2d(3 * c, 3 * c, 3, 1, 1, groups=3 * c, bias=False)
            self.conv2 = nn.ModuleList([nn.Conv2d(c, c, 1) for _ in range(3)])
        else:
            self.conv1 = nn.Conv2d(c, 3 * c, 3, 1, 1)
            self.conv2 = nn.ModuleList([nn.Conv2d(c, c, 3, 1, 1) for _ in range(3)])

    def forward(self, x):
        """(M, C, S, S) -> q, k, v each (M, C, S, S) (channels_last memory)."""
        # channels_last lets oneDNN run these small-channel convs fast on CPU; grouped
        # pointwise convs are slow there, hence matmuls per Q/K/V.
        x = x.contiguous(memory_format=torch.channels_last)
        if self.separable:
            y = F.relu(_pointwise(self.conv1, self.dw1(x)), inplace=True)
            z = self.dw2(y.contiguous(memory_format=torch.channels_last))  # (M,3C,S,S) ch-last
            M, _, S, S2 = z.shape  # noqa: N806
            c = self.c
            # the three pointwise convs as one batched matmul over the Q/K/V groups
            w = torch.stack([conv.weight.reshape(c, c).t() for conv in self.conv2])  # (3,C,C)
            b = torch.stack([conv.bias for conv in self.conv2]).unsqueeze(1)  # (3,1,C)
            zz = z.permute(0, 2, 3, 1).reshape(M * S * S2, 3, c).transpose(0, 1)
            out = torch.baddbmm(b, zz, w)  # (3, M*S*S, C)
            return [o.reshape(M, S, S2, c).permute(0, 3, 1, 2) for o in out.unbind(0)]
        y = F.relu(self.conv1(x))
        return [conv(p) for conv, p in zip(self.conv2, y.split(self.c, dim=1))]


class PCSF(nn.Module):
    """Photo-consistency constrained sequence fusion (Eq. 2-3), mask-aware, multi-head.

    Layer l: for every overhead pixel p and head, M_ij = softmax_j(Q_i . K_j / sqrt(d)) over the
    frames j valid at p, O_i = sum_j M_ij V_j (per-frame output, input of the next layer).
    The last layer returns (1/N_valid) sum_{i valid} sum_j M_ij V_j (Eq. 3), computed as
    sum_j w_j V_j with w_j = mean_i M_ij. Cells valid in no frame output zero.
    """

    def __init__(self, channels: int, heads: int = 2, layers: int = 2,
                 separable: bool = True) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError("channels must be divisible by heads")
        self.c, self.heads = channels, heads
        self.qkv = nn.ModuleList([_QKV(channels, separable) for _ in range(layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        """(B,N,C,S,S), (B,N,1,S,S) -> (B,C,S,S), (B,1,S,S)."""
        B, N, C, S, S2 = x.shape  # noqa: N806
        seen = mask.sum(1)[:, 0] > 0  # (B,S,S)
        anyv = seen.to(x.dtype).unsqueeze(1)
        fused = x.new_zeros(B, C, S, S2)
        rows = seen.any(0).any(1).nonzero()
        cols = seen.any(0).any(0).nonzero()
        if rows.numel() == 0:
            return fused, anyv
        # Work on the bounding box of the seen cells plus a 2-cell margin (the reach of two
        # stacked 3x3 convs): inputs outside are zero, so the result is exact and cheaper.
        m = 2 * len(self.qkv)
        r0, r1 = max(int(rows[0]) - m, 0), min(int(rows[-1]) + m + 1, S)
        c0, c1 = max(int(cols[0]) - m, 0), min(int(cols[-1]) + m + 1, S2)
        fused[..., r0:r1, c0:c1] = self._fuse(x[..., r0:r1, c0:c1], mask[..., r0:r1, c0:c1])
        return fused, anyv

    def _fuse(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Fast path, equal to ``_fuse_reference`` within float rounding.

        The per-pixel attention runs as 3-D ``baddbmm``/``bmm`` over (pixel, head) batches in a
        key-major layout: logits^T (BPh, Nj, Ni) = K Q^T with the key mask added inside the
        matmul, softmax over dim 1 (faster on CPU than over a 16-wide last dim), V made
        contiguous once per layer, and O = M V as ``bmm`` of the transposed view (a BLAS
        transpose flag, no copy). The last layer's w_j = mean_{i valid} M_ij is one ``bmm`` of
        M^T with the validity column, then sum_j w_j V_j.
        """
        B, N, C, S, S2 = x.shape  # noqa: N806
        P = S * S2  # noqa: N806
        h, d = self.heads, C // self.heads
        maskp = mask.reshape(B, N, P)
        cnt = maskp.sum(1)  # (B,P)
        # additive key mask (0 valid / -1e4 invalid) per (pixel, head) batch over frames j
        kbias = ((maskp - 1.0) * -_NEG).permute(0, 2, 1).reshape(B, P, 1, N, 1)
        kbias = kbias.expand(B, P, h, N, 1).reshape(B * P * h, N, 1)
        enc = frame_encoding(N, C, x.device, x.dtype).view(1, N, C, 1, 1)
        mflat = mask.reshape(B * N, 1, S, S2)
        scale = 1.0 / math.sqrt(d)
        cur = ((x + enc) * mask).reshape(B * N, C, S, S2)
        nl = len(self.qkv)

        def pix(t):  # (B*N,C,S,S) channels_last = (B,N,P,h,d) memory -> (B*P*h, N, d)
            return t.permute(0, 2, 3, 1).reshape(B, N, P * h, d).transpose(1, 2).reshape(
                B * P * h, N, d)

        for li, layer in enumerate(self.qkv):
            q, k, v = layer(cur)
            v = pix(v).contiguous()
            # logits^T[j, i] = K_j . Q_i / sqrt(d) + key bias_j; softmax over j (dim 1)
            att_t = torch.softmax(
                torch.baddbmm(kbias, pix(k), pix(q).transpose(1, 2), alpha=scale), dim=1)
            # cells no frame sees get a uniform softmax here; they are zeroed below
            if li < nl - 1:
                out = torch.bmm(att_t.transpose(1, 2), v)  # (BPh, Ni, d)
                out = out.reshape(B, S, S2, h, N, d).permute(0, 4, 3, 5, 1, 2)
                cur = (out.reshape(B * N, C, S, S2) + enc.reshape(N, C, 1, 1).repeat(
                    B, 1, 1, 1)) * mflat
            else:
                # w_j = sum_{i valid} M_ij / N_valid, then sum_j w_j V_j
                mi = (maskp / cnt.clamp_min(1.0).unsqueeze(1)).permute(0, 2, 1)
                mi = mi.reshape(B, P, 1, N, 1).expand(B, P, h, N, 1).reshape(B * P * h, N, 1)
                w = torch.bmm(att_t, mi)  # (BPh, Nj, 1)
                out = torch.bmm(w.transpose(1, 2), v).reshape(B, S, S2, C)  # (B,S,S,h*d)
        return out.permute(0, 3, 1, 2)

    def _fuse_reference(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Explicit attention matrices (the formulation of Eq. 2-3); kept for tests."""
        B, N, C, S, S2 = x.shape  # noqa: N806
        P = S * S2  # noqa: N806
        h, d = self.heads, C // self.heads
        maskp = mask.reshape(B, N, P)
        cnt = maskp.sum(1)  # (B,P)
        # additive key mask (0 valid / -1e4 invalid), per pixel over frames j
        kbias = ((maskp - 1.0) * -_NEG).permute(0, 2, 1).reshape(B, 1, P, 1, N)
        enc = frame_encoding(N, C, x.device, x.dtype).view(1, N, C, 1, 1)
        mflat = mask.reshape(B * N, 1, S, S2)
        scale = 1.0 / math.sqrt(d)
        cur = ((x + enc) * mask).reshape(B * N, C, S, S2)
        nl = len(self.qkv)
        for li, layer in enumerate(self.qkv):
            q, k, v = layer(cur)

            def pix(t):  # (B*N,C,S,S) channels_last -> (B,h,P,N,d)
                return t.permute(0, 2, 3, 1).reshape(B, N, P, h, d).permute(0, 3, 2, 1, 4)

            q, k, v = pix(q) * scale, pix(k), pix(v)
            logits = torch.matmul(q, k.transpose(-1, -2)) + kbias  # (B,h,P,Ni,Nj)
            # cells no frame sees get a uniform softmax here; they are zeroed below (the
            # next layer's input is masked, the last layer's mean runs over valid i only)
            att = torch.softmax(logits, dim=-1)
            if li < nl - 1:
                out = torch.matmul(att, v)  # (B,h,P,Ni,d)
                out = out.permute(0, 3, 2, 1, 4).reshape(B * N, S, S2, C).permute(0, 3, 1, 2)
                cur = (out + enc.reshape(N, C, 1, 1).repeat(B, 1, 1, 1)) * mflat
            else:
                mi = maskp.permute(0, 2, 1).reshape(B, 1, P, N, 1)  # valid queries i
                w = (att * mi).sum(3) / cnt.clamp_min(1.0).reshape(B, 1, P, 1)
                out = torch.matmul(w.unsqueeze(-2), v).squeeze(-2)  # (B,h,P,d)
        return out.permute(0, 1, 3, 2).reshape(B, C, S, S2)


class _Conv2dFusion(nn.Module):
    def __init__(self, c: int, max_frames: int, attn: bool) -> None:
        super().__init__()
        self.c, self.max_frames, self.attn = c, max_frames, attn
        cin = max_frames * (c + 1)
        cout = max_frames if attn else c
        self.net = nn.Sequential(nn.Conv2d(cin, 4 * c, 3, 1, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(4 * c, cout, 3, 1, 1))

    def forward(self, x, mask):
        B, N, C, S, S2 = x.shape  # noqa: N806
        if N > self.max_frames:
            raise ValueError(f"{N} frames > max_frames={self.max_frames}")
        pad = self.max_frames - N
        xm = torch.cat([x * mask, mask], 2)
        if pad:
            xm = torch.cat([xm, xm.new_zeros(B, pad, C + 1, S, S2)], 1)
        y = self.net(xm.reshape(B, -1, S, S2))
        anyv = (mask.sum(1) > 0).to(x.dtype)
        if not self.attn:
            return y * anyv, anyv
        w = _masked_softmax_over_frames(y[:, :N, None], mask > 0.5, dim=1)
        return (w * x).sum(1), anyv


class _Conv3dFusion(nn.Module):
    def __init__(self, c: int, attn: bool) -> None:
        super().__init__()
        self.attn = attn
        self.conv1 = nn.Conv3d(c + 1, c, 3, 1, 1)
        self.conv2 = nn.Conv3d(c, 1 if attn else c, 3, 1, 1)

    def forward(self, x, mask):
        mt = mask.transpose(1, 2)  # (B,1,N,S,S)
        xm = torch.cat([x * mask, mask], 2).transpose(1, 2)  # (B,C+1,N,S,S)
        # hidden activations are zeroed where a frame is invalid, so padding frames are inert
        y = self.conv2(torch.relu(self.conv1(xm)) * mt).transpose(1, 2)  # (B,N,c',S,S)
        if not self.attn:
            return masked_mean(y, mask)
        w = _masked_softmax_over_frames(y, mask > 0.5, dim=1)
        return (w * x).sum(1), (mask.sum(1) > 0).to(x.dtype)


class _LSTMFusion(nn.Module):
    """Per-pixel LSTM over the frames, oldest -> newest; masked steps keep the state."""

    def __init__(self, c: int, attn: bool) -> None:
        super().__init__()
        self.attn = attn
        self.cell = nn.LSTMCell(c, c)
        self.score = nn.Linear(c, 1) if attn else None

    def forward(self, x, mask):
        B, N, C, S, S2 = x.shape  # noqa: N806
        seq = x.permute(1, 0, 3, 4, 2).reshape(N, B * S * S2, C)
        msk = mask.permute(1, 0, 3, 4, 2).reshape(N, B * S * S2, 1)
        hx = seq.new_zeros(B * S * S2, C)
        cx = seq.new_zeros(B * S * S2, C)
        hs = [None] * N
        for n in reversed(range(N)):  # oldest first, newest (index 0) last
            h2, c2 = self.cell(seq[n], (hx, cx))
            hx = msk[n] * h2 + (1 - msk[n]) * hx
            cx = msk[n] * c2 + (1 - msk[n]) * cx
            hs[n] = hx
        anyv = (mask.sum(1) > 0).to(x.dtype)
        if not self.attn:
            return hx.reshape(B, S, S2, C).permute(0, 3, 1, 2) * anyv, anyv
        logits = torch.stack([self.score(hh) for hh in hs], 0)  # (N, BSS, 1)
        logits = logits.reshape(N, B, S, S2, 1).permute(1, 0, 4, 2, 3)
        w = _masked_softmax_over_frames(logits, mask > 0.5, dim=1)
        return (w * x).sum(1), anyv


def build_fusion(name: str, channels: int, max_frames: int = 16, heads: int = 2,
                 layers: int = 2, separable: bool = True) -> nn.Module:
    """Construct a fusion module by name (see ``FUSIONS``)."""
    if name == "pcsf":
        return PCSF(channels, heads, layers, separable)
    if name in ("conv2d", "attn_conv2d"):
        return _Conv2dFusion(channels, max_frames, name.startswith("attn"))
    if name in ("conv3d", "attn_conv3d"):
        return _Conv3dFusion(channels, name.startswith("attn"))
    if name in ("lstm", "attn_lstm"):
        return _LSTMFusion(channels, name.startswith("attn"))
    raise ValueError(f"unknown fusion {name!r}; one of {FUSIONS}")
