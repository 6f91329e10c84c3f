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
            M, _, S, S2 = z.shape
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

    ``frame_encoding=True`` adds a sinusoidal frame-index encoding (0 = newest) to every layer's
    input (an extension); ``False`` is the paper's form, where Q/K/V of a frame depend on that
    frame's projected features only, which is what lets ``canvas_qkv`` + ``fuse_qkv`` cache
    them per frame (one layer).
    """

    def __init__(self, channels: int, heads: int = 2, layers: int = 2,
                 separable: bool = True, frame_encoding: bool = True) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError("channels must be divisible by heads")
        if layers < 1:
            raise ValueError("PCSF needs at least one layer")
        self.c, self.heads = channels, heads
        self.use_encoding = bool(frame_encoding)
        self.qkv = nn.ModuleList([_QKV(channels, separable) for _ in range(layers)])

    @staticmethod
    def _seen_box(seen: torch.Tensor, margin: int):
        """Bounding box (r0, r1, c0, c1) of the set cells of ``seen`` (B,S,S) (any batch) grown
        by ``margin`` and clipped; None when no cell is set."""  # noqa: D205, D209
        rows = seen.any(0).any(1).nonzero()
        if rows.numel() == 0:
            return None
        cols = seen.any(0).any(0).nonzero()
        S, S2 = seen.shape[-2:]
        return (max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, S),
                max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, S2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        """(B,N,C,S,S), (B,N,1,S,S) -> (B,C,S,S), (B,1,S,S)."""
        B, N, C, S, S2 = x.shape
        seen = mask.sum(1)[:, 0] > 0  # (B,S,S)
        anyv = seen.to(x.dtype).unsqueeze(1)
        fused = x.new_zeros(B, C, S, S2)
        # Work on the bounding box of the seen cells plus a 2-cell margin per layer (the reach
        # of two stacked 3x3 convs): inputs outside are zero, so the result at every seen cell
        # is exact (unseen cells output zero anyway) and cheaper.
        box = self._seen_box(seen, 2 * len(self.qkv))
        if box is None:
            return fused, anyv
        r0, r1, c0, c1 = box
        fused[..., r0:r1, c0:c1] = self._fuse(x[..., r0:r1, c0:c1], mask[..., r0:r1, c0:c1])
        return fused, anyv

    def canvas_qkv(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Q, K, V of single frames on their own overhead canvases (the cacheable half).

        ``x`` (M,C,Sc,Sc) projected features of M frames, ``mask`` (M,1,Sc,Sc). Returns
        (M, 3C+1, Sc, Sc): Q, K, V stacked on channels, then the mask. Needs one layer and no
        frame encoding (a frame's Q/K/V must not depend on the rest of the window).
        """
        if len(self.qkv) != 1 or self.use_encoding:
            raise ValueError("per-frame Q/K/V canvases need a one-layer PCSF without frame "
                             "encoding")
        M, C, Sc, Sc2 = x.shape
        out = x.new_zeros(M, 3 * C + 1, Sc, Sc2)
        out[:, 3 * C:] = mask
        box = self._seen_box(mask[:, 0] > 0, 2)
        if box is not None:
            r0, r1, c0, c1 = box
            q, k, v = self.qkv[0]((x * mask)[..., r0:r1, c0:c1])
            out[:, :3 * C, r0:r1, c0:c1] = torch.cat([q, k, v], 1)
        return out

    def fuse_qkv(self, qkvm: torch.Tensor):
        """The attention half: (B,N,3C+1,S,S) Q, K, V and mask on the grid -> fused, mask.

        Equal to ``forward`` of a one-layer PCSF without frame encoding when the Q/K/V were
        computed on the grid itself. Attention runs only at the cells some frame sees (in any
        batch row); the others output zero.
        """
        B, N, _, S, S2 = qkvm.shape
        C = self.c
        flat = qkvm.reshape(B, N, 3 * C + 1, S * S2)
        seen = flat[:, :, 3 * C].sum(1) > 0  # (B,P)
        anyv = seen.to(qkvm.dtype).reshape(B, 1, S, S2)
        fused = qkvm.new_zeros(B, C, S * S2)
        cells = seen.any(0).nonzero()[:, 0]
        if cells.numel() == 0:
            return fused.reshape(B, C, S, S2), anyv
        P = int(cells.numel())
        h, d = self.heads, C // self.heads
        sub = flat.index_select(3, cells)  # (B,N,3C+1,P')
        # one copy into (pixel, head)-major batches of frames for Q, K and V together
        qkv = sub[:, :, :3 * C].reshape(B, N, 3, h, d, P).permute(2, 0, 5, 3, 1, 4)
        qkv = qkv.reshape(3, B * P * h, N, d)
        out = self._attend_pix(qkv[0], qkv[1], qkv[2], sub[:, :, 3 * C], B, P)  # (B,P',C)
        fused[..., cells] = out.transpose(1, 2)
        return fused.reshape(B, C, S, S2), anyv

    def _pix(self, t: torch.Tensor, B: int, N: int, P: int) -> torch.Tensor:
        """(B*N,C,S,S) or (B,N,C,P) -> (B*P*h, N, d) per (pixel, head) batches."""
        h, d = self.heads, self.c // self.heads
        t = t.reshape(B * N, self.c, P).transpose(1, 2)  # (B*N, P, C)
        return t.reshape(B, N, P * h, d).transpose(1, 2).reshape(B * P * h, N, d)

    def _key_bias(self, maskp: torch.Tensor) -> torch.Tensor:
        """Additive key mask (0 valid / -1e4 invalid) per (pixel, head) batch over frames j."""
        B, N, P = maskp.shape
        h = self.heads
        kbias = ((maskp - 1.0) * -_NEG).permute(0, 2, 1).reshape(B, P, 1, N, 1)
        return kbias.expand(B, P, h, N, 1).reshape(B * P * h, N, 1)

    def _attend_last(self, q, k, v, mask, kbias=None) -> torch.Tensor:
        """Last attention layer: (B,N,C,...) Q/K/V over P cells ((S,S) or (P,)) and mask
        (B,N,1,...) -> (B,C,...).

        w_j = mean_{i valid} M_ij (one ``bmm`` of M^T with the validity column), then
        sum_j w_j V_j.
        """  # noqa: D205
        B, N, C = q.shape[:3]
        cells = q.shape[3:]
        P = math.prod(cells)
        out = self._attend_pix(self._pix(q, B, N, P), self._pix(k, B, N, P),
                               self._pix(v, B, N, P), mask.reshape(B, N, P), B, P, kbias)
        return out.transpose(1, 2).reshape(B, C, *cells)

    def _attend_pix(self, qp, kp, vp, maskp, B: int, P: int,
                    kbias: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer on (pixel, head) batches: Q/K/V (B*P*h, N, d), mask (B,N,P) ->
        (B,P,C); ``kbias`` is ``_key_bias(maskp)`` when the caller has it already."""  # noqa: D205, D209
        h, d = self.heads, self.c // self.heads
        N = maskp.shape[1]
        cnt = maskp.sum(1)  # (B,P)
        if kbias is None:
            kbias = self._key_bias(maskp)
        att_t = torch.softmax(torch.baddbmm(kbias, kp, qp.transpose(1, 2),
                                            alpha=1.0 / math.sqrt(d)), dim=1)
        mi = (maskp / cnt.clamp_min(1.0).unsqueeze(1)).permute(0, 2, 1)
        mi = mi.reshape(B, P, 1, N, 1).expand(B, P, h, N, 1).reshape(B * P * h, N, 1)
        w = torch.bmm(att_t, mi)  # (BPh, Nj, 1)
        return torch.bmm(w.transpose(1, 2), vp).reshape(B, P, self.c)

    def _fuse(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Fast path, equal to the explicit attention of Eq. 2-3 within float rounding.

        The per-pixel attention runs as 3-D ``baddbmm``/``bmm`` over (pixel, head) batches in a
        key-major layout: logits^T (BPh, Nj, Ni) = K Q^T with the key mask added inside the
        matmul, softmax over dim 1 (faster on CPU than over a 16-wide last dim), V made
        contiguous once per layer, and O = M V as ``bmm`` of the transposed view (a BLAS
        transpose flag, no copy). The last layer is ``_attend_last``. The tests compare it
        with ``fuse_reference`` (``test/_references.py``), the attention matrices written out.
        """
        B, N, C, S, S2 = x.shape
        P = S * S2
        h, d = self.heads, C // self.heads
        maskp = mask.reshape(B, N, P)
        kbias = self._key_bias(maskp)
        if self.use_encoding:
            enc = frame_encoding(N, C, x.device, x.dtype).view(1, N, C, 1, 1)
        else:
            enc = x.new_zeros(1, N, C, 1, 1)
        mflat = mask.reshape(B * N, 1, S, S2)
        scale = 1.0 / math.sqrt(d)
        cur = ((x + enc) * mask).reshape(B * N, C, S, S2)
        nl = len(self.qkv)
        for li, layer in enumerate(self.qkv):
            q, k, v = layer(cur)
            if li == nl - 1:
                shp = (B, N, C, S, S2)
                return self._attend_last(q.reshape(shp), k.reshape(shp), v.reshape(shp), mask,
                                         kbias)
            v = self._pix(v, B, N, P).contiguous()
            # logits^T[j, i] = K_j . Q_i / sqrt(d) + key bias_j; softmax over j (dim 1)
            att_t = torch.softmax(torch.baddbmm(kbias, self._pix(k, B, N, P),
                                                self._pix(q, B, N, P).transpose(1, 2),
                                                alpha=scale), dim=1)
            # cells no frame sees get a uniform softmax here; they are zeroed below
            out = torch.bmm(att_t.transpose(1, 2), v)  # (BPh, Ni, d)
            out = out.reshape(B, S, S2, h, N, d).permute(0, 4, 3, 5, 1, 2)
            cur = (out.reshape(B * N, C, S, S2) + enc.reshape(N, C, 1, 1).repeat(
                B, 1, 1, 1)) * mflat
        raise AssertionError("unreachable")

class _Conv2dFusion(nn.Module):
    def __init__(self, c: int, max_frames: int, attn: bool) -> None:
        super().__init__()
        self.c, self.max_frames, self.attn = c, max_frames, attn
        cin = max_frames * (c + 1)
        cout = max_frames if attn else c
        self.net = nn.Sequential(nn.Conv2d(cin, 4 * c, 3, 1, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(4 * c, cout, 3, 1, 1))

    def forward(self, x, mask):
        B, N, C, S, S2 = x.shape
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
        B, N, C, S, S2 = x.shape
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
                 layers: int = 2, separable: bool = True,
                 frame_encoding: bool = True) -> nn.Module:
    """Construct a fusion module by name (see ``FUSIONS``)."""
    if name == "pcsf":
        return PCSF(channels, heads, layers, separable, frame_encoding)
    if name in ("conv2d", "attn_conv2d"):
        return _Conv2dFusion(channels, max_frames, name.startswith("attn"))
    if name in ("conv3d", "attn_conv3d"):
        return _Conv3dFusion(channels, name.startswith("attn"))
    if name in ("lstm", "attn_lstm"):
        return _LSTMFusion(channels, name.startswith("attn"))
    raise ValueError(f"unknown fusion {name!r}; one of {FUSIONS}")
