"""Direct, slow formulations that the model's inference fast paths must equal (tests only).

- ``fuse_reference``: PCSF fusion with the attention matrices written out (Eq. 2-3), the
  reference of ``PCSF._fuse``;
- ``canvases_to_grid_reference``: per-frame canvases translated into the newest grid by one
  ``F.grid_sample``, the reference of ``CVLNet._canvases_to_grid``;
- ``ncc_maps_reference``: pairwise NCC as the padded satellite conv'd with the grounds, the
  reference of ``matching.ncc_maps``.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from cvl_ros.model.fusion import _NEG, frame_encoding
from cvl_ros.model.matching import _EPS, normalize_ground


def fuse_reference(pcsf, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``pcsf._fuse(x, mask)`` with explicit attention matrices (the formulation of Eq. 2-3)."""
    B, N, C, S, S2 = x.shape
    P = S * S2
    h, d = pcsf.heads, C // pcsf.heads
    maskp = mask.reshape(B, N, P)
    cnt = maskp.sum(1)  # (B,P)
    # additive key mask (0 valid / -1e4 invalid), per pixel over frames j
    kbias = ((maskp - 1.0) * -_NEG).permute(0, 2, 1).reshape(B, 1, P, 1, N)
    enc = frame_encoding(N, C, x.device, x.dtype).view(1, N, C, 1, 1)
    if not pcsf.use_encoding:
        enc = torch.zeros_like(enc)
    mflat = mask.reshape(B * N, 1, S, S2)
    scale = 1.0 / math.sqrt(d)
    cur = ((x + enc) * mask).reshape(B * N, C, S, S2)
    nl = len(pcsf.qkv)
    for li, layer in enumerate(pcsf.qkv):
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


def canvases_to_grid_reference(model, states: torch.Tensor, east_m: torch.Tensor,
                               north_m: torch.Tensor) -> torch.Tensor:
    """``model._canvases_to_grid(states, east_m, north_m)`` as one ``F.grid_sample``."""
    cfg = model.config
    B, N, Cs, Sc, _ = states.shape
    S, cell = cfg.grid_cells, cfg.cell_m
    idx = torch.arange(S, device=states.device, dtype=states.dtype)
    east = (idx - (S - 1) / 2.0) * cell
    north = ((S - 1) / 2.0 - idx) * cell
    col = (east.view(1, 1, 1, S) - east_m[..., None, None]) / cell + (Sc - 1) / 2.0
    row = (Sc - 1) / 2.0 - (north.view(1, 1, S, 1) - north_m[..., None, None]) / cell
    gx = ((2.0 * col + 1.0) / Sc - 1.0).expand(B, N, S, S)
    gy = ((2.0 * row + 1.0) / Sc - 1.0).expand(B, N, S, S)
    grid = torch.stack([gx, gy], -1).reshape(B * N, S, S, 2)
    out = F.grid_sample(states.reshape(B * N, Cs, Sc, Sc), grid, mode="bilinear",
                        padding_mode="zeros", align_corners=False).reshape(B, N, Cs, S, S)
    return torch.cat([out[:, :, :-1], (out[:, :, -1:] > 0.5).to(out.dtype)], 2)


def ncc_maps_reference(ground: torch.Tensor, mask: torch.Tensor, sat: torch.Tensor,
                       radius: int) -> torch.Tensor:
    """Pairwise D0 of ``ncc_maps`` by the direct formulation (padded satellite conv'd with the
    grounds): (B,T,2r+1,2r+1)."""
    g = normalize_ground(ground, mask)
    r = int(radius)
    fp = F.pad(sat, (r, r, r, r))
    f2 = (fp * fp).sum(1, keepdim=True)
    num = F.conv2d(fp, g)  # (T,B,k,k)
    den = F.conv2d(f2, mask.to(g.dtype))  # (T,B,k,k)
    return (num / den.clamp_min(0).sqrt().clamp_min(_EPS)).transpose(0, 1)
