"""Geometry-driven view projection (GVP): ground-view features -> north-up overhead grid.

Grid frame (README.md, "The house"):
origin at the optical centre of the newest camera (frame 0), axes
east / north / up. Cell (r, c) of an S x S grid covering ``coverage_m`` has its centre at
east = (c - (S-1)/2) * cell_m, north = ((S-1)/2 - r) * cell_m, and its ground point at
z = -camera_height_m. Each ground point is transformed into every camera with
``inv(T_grid_cams[b, n])`` and projected with K; it is valid when its depth is > ``eps_depth``
and it falls inside the image. Features are sampled bilinearly (differentiable, zero padding)
and zeroed where invalid. Content outside the grid's coverage is never sampled (dropped).

``T_grid_cams`` are optical-frame poses: a caller with a camera mounted off the body origin
composes ``T_grid_cam = T_grid_body @ T_body_cam`` (see ``cvl_ros.camera``) before calling.

K is given for the network input image (``image_hw``); the feature map (h, w) is smaller. With
the pixel-centre convention (pixel i centred at u = i) and ``align_corners=False``, input pixel
u maps to the normalised sampling coordinate (2u + 1) / W - 1 whatever the stride, provided the
feature map covers the input evenly (W = stride * w); we use the exact stride W / w per axis.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["grid_ground_points", "project_to_overhead", "ResizeProjection", "UNetProjection"]


def grid_ground_points(grid_cells: int, coverage_m: float, camera_height_m, device=None,
                       dtype=torch.float32) -> torch.Tensor:
    """Homogeneous ground points of the grid cells, (B or 1, S, S, 4) in the grid frame."""
    S = int(grid_cells)
    cell = float(coverage_m) / S
    idx = torch.arange(S, device=device, dtype=dtype)
    east = (idx - (S - 1) / 2.0) * cell  # by column
    north = ((S - 1) / 2.0 - idx) * cell  # by row
    h = torch.as_tensor(camera_height_m, device=device, dtype=dtype).reshape(-1, 1, 1)
    B = h.shape[0]
    e = east.view(1, 1, S).expand(B, S, S)
    n = north.view(1, S, 1).expand(B, S, S)
    z = (-h).expand(B, S, S)
    return torch.stack([e, n, z, torch.ones_like(e)], dim=-1)


def project_to_overhead(
    frame_feats: torch.Tensor,
    K: torch.Tensor,
    T_grid_cams: torch.Tensor,
    camera_height_m,
    grid_cells: int,
    coverage_m: float,
    image_hw: tuple[int, int] | None = None,
    eps_depth: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project per-frame ground features onto the overhead grid of the newest camera.

    Args:
        frame_feats: (B, N, C, h, w) features of each frame.
        K: (B, N, 3, 3) intrinsics for an input image of ``image_hw`` (None: K is already for
            the (h, w) feature map, pixel-centre convention).
        T_grid_cams: (B, N, 4, 4) optical-frame poses in the grid frame (camera -> grid).
        camera_height_m: float or (B,) tensor, height of frame 0's optical centre above ground.
        grid_cells: S, the number of cells per side.
        coverage_m: side of the grid in metres.
        image_hw: (H, W) of the network input the K refers to.
        eps_depth: points with depth <= eps (behind or at the camera) are masked.

    Returns:
        overhead (B, N, C, S, S) (zero where invalid) and mask (B, N, 1, S, S) in {0, 1}.
    """
    B, N, C, h, w = frame_feats.shape
    S = int(grid_cells)
    dev, dt = frame_feats.device, frame_feats.dtype
    if image_hw is None:
        image_hw = (h, w)
    H, W = float(image_hw[0]), float(image_hw[1])
    hgt = torch.as_tensor(camera_height_m, device=dev, dtype=dt)
    if hgt.dim() == 0:
        hgt = hgt.expand(B)
    pts = grid_ground_points(S, coverage_m, hgt, dev, dt)  # (B,S,S,4)
    T = T_grid_cams.to(device=dev, dtype=dt)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    # camera <- grid: p_cam = R^T (p - t)
    rel = pts[:, None, ..., :3] - t[:, :, None, None, :]  # (B,N,S,S,3)
    p_cam = torch.einsum("bnji,bnrcj->bnrci", R, rel)
    Kd = K.to(device=dev, dtype=dt)
    z = p_cam[..., 2]
    valid = z > eps_depth
    zs = torch.where(valid, z, torch.ones_like(z))
    uvw = torch.einsum("bnij,bnrcj->bnrci", Kd, p_cam)
    u = uvw[..., 0] / zs
    v = uvw[..., 1] / zs
    gx = (2.0 * u + 1.0) / W - 1.0
    gy = (2.0 * v + 1.0) / H - 1.0
    valid = valid & (gx >= -1.0) & (gx <= 1.0) & (gy >= -1.0) & (gy <= 1.0)
    # keep masked coordinates finite and far outside so they sample zeros
    far = torch.full_like(gx, -2.0)
    gx = torch.where(valid, gx, far)
    gy = torch.where(valid, gy, far)
    grid = torch.stack([gx, gy], dim=-1).reshape(B * N, S, S, 2)
    sampled = F.grid_sample(frame_feats.reshape(B * N, C, h, w), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)
    mask = valid.to(dt).reshape(B, N, 1, S, S)
    overhead = sampled.reshape(B, N, C, S, S) * mask
    return overhead, mask


class ResizeProjection(nn.Module):
    """Ablation ``projection="none"``: unprojected features resized to S x S, mask all ones."""

    def __init__(self, grid_cells: int) -> None:
        super().__init__()
        self.S = int(grid_cells)

    def forward(self, frame_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,N,C,h,w) -> (B,N,C,S,S), (B,N,1,S,S)."""
        B, N, C, h, w = frame_feats.shape
        out = F.interpolate(frame_feats.reshape(B * N, C, h, w), size=(self.S, self.S),
                            mode="bilinear", align_corners=False)
        out = out.reshape(B, N, C, self.S, self.S)
        return out, torch.ones_like(out[:, :, :1])


class UNetProjection(nn.Module):
    """Ablation ``projection="unet"``: a small U-Net learns the ground->overhead mapping.

    The (h, w) feature map is resized to 2S x 2S, passed through a two-level encoder/decoder
    with skip connections and pooled to S x S. No geometry is used; the mask is all ones.
    """

    def __init__(self, channels: int, grid_cells: int, width: int = 32) -> None:
        super().__init__()
        self.S = int(grid_cells)
        c = width

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, 1, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(o, o, 3, 1, 1), nn.ReLU(inplace=True))

        self.enc1 = block(channels, c)
        self.enc2 = block(c, 2 * c)
        self.mid = block(2 * c, 2 * c)
        self.dec2 = block(4 * c, c)
        self.dec1 = block(2 * c, c)
        self.out = nn.Conv2d(c, channels, 1)

    def forward(self, frame_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,N,C,h,w) -> (B,N,C,S,S), (B,N,1,S,S)."""
        B, N, C, h, w = frame_feats.shape
        x = F.interpolate(frame_feats.reshape(B * N, C, h, w), size=(2 * self.S, 2 * self.S),
                          mode="bilinear", align_corners=False)
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(m, scale_factor=2.0), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1))
        out = F.avg_pool2d(self.out(d1), 2).reshape(B, N, C, self.S, self.S)
        return out, torch.ones_like(out[:, :, :1])
