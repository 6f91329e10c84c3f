"""CVLNet: the model object, its config, and safe checkpoints (safetensors + JSON, no pickle).

The API separates the costs the node and the tile database need apart:

* ``encode_ground(images (B,3,H,W))`` -> per-frame features (B,C,h,w): one backbone pass per
  keyframe, cacheable.
* ``project_and_fuse(frame_feats (B,N,C,h,w), K, T_grid_cams, camera_height_m)`` ->
  ``GroundDescriptor``: GVP of every cached frame for the newest pose + fusion + descriptor head.
* ``encode_satellite(tiles (T,3,P,P))`` -> ``SatelliteDescriptor`` (features + uncertainty),
  precomputable.
* ``match(ground, sat, pairwise=True)`` -> ``MatchResult`` (scores, metric displacements, maps).

``forward/loss/metrics`` serve training on batches shaped like ``cvl_ros.datasets.KittiCVL``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cvl_ros.model.backbones import build_backbone
from cvl_ros.model.fusion import FUSIONS, build_fusion
from cvl_ros.model.loss import displacement_ce_loss, displacement_nll_loss, triplet_loss
from cvl_ros.model.matching import (
    GroundDescriptor,
    MatchResult,
    SatelliteDescriptor,
    UncertaintyNet,
    match_descriptors,
)
from cvl_ros.model.projection import ResizeProjection, UNetProjection, project_to_overhead

__all__ = [
    "CVLNetConfig",
    "CVLNet",
    "CHECKPOINT_NAMES",
    "CheckpointError",
    "GroundDescriptor",
    "SatelliteDescriptor",
    "MatchResult",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "CHECKPOINT_FORMAT",
]

LOG = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "cvl_ros.cvlnet/1"
BACKBONES = ("mobilenet_v2", "vgg16", "resnet50")
PROJECTIONS = ("gvp", "none", "unet")
# config fields newer than checkpoint format 1 and their defaults (see ``CVLNet.model_hash``)
_HASH_OMITTED_IF_DEFAULT = {"pcsf_frame_canvas": False, "displacement_loss": "ce",
                            "displacement_temperature": 0.1}
DISPLACEMENT_LOSSES = ("ce", "nll")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match this code's model."""


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


# field: (kind, low, low exclusive, high, high exclusive); checked by CVLNetConfig on creation
_CONFIG_RANGES = {
    "pretrained": ("bool", None, False, None, False),
    "backbone_frozen": ("int", 0, False, None, False),
    "sat_px": ("int", 0, True, None, False),
    "coverage_m": ("real", 0.0, True, None, False),
    "grid_cells": ("int", 0, True, None, False),
    "feature_dim": ("int", 0, True, None, False),
    "descriptor_dim": ("int", 0, True, None, False),
    "use_ssm": ("bool", None, False, None, False),
    "use_uncertainty": ("bool", None, False, None, False),
    "search_cells": ("int", 0, False, None, False),
    "camera_height_m": ("real", 0.0, True, None, False),
    "triplet_alpha": ("real", 0.0, True, None, False),
    "max_frames": ("int", 0, True, None, False),
    "pcsf_heads": ("int", 0, True, None, False),
    "pcsf_layers": ("int", 0, True, None, False),
    "pcsf_separable": ("bool", None, False, None, False),
    "pcsf_frame_canvas": ("bool", None, False, None, False),
    "uncertainty_min": ("real", 0.0, True, 1.0, True),
    "displacement_loss_weight": ("real", 0.0, False, None, False),
    "displacement_temperature": ("real", 0.0, True, None, False),
}


@dataclass
class CVLNetConfig:
    """Model configuration (JSON-serialisable; stored in every checkpoint).

    Geometry: ``ground_hw`` network input (H, W) of ground frames (K refers to it);
    ``sat_px`` satellite crop side in pixels covering ``coverage_m`` metres (also the overhead
    grid's coverage); ``grid_cells`` S; ``camera_height_m`` default height of the camera above
    the ground plane. Network: ``backbone`` (mobilenet_v2 | vgg16 | resnet50), ``pretrained`` /
    ``pretrained_path`` (ImageNet weights), ``backbone_frozen`` (leading trunk modules kept
    frozen; None = backbone default), ``feature_dim`` C of per-frame features,
    ``descriptor_dim`` D of the matched descriptors. Ablations: ``projection`` (gvp | none |
    unet), ``fusion`` (pcsf | conv2d | conv3d | lstm | attn_conv2d | attn_conv3d | attn_lstm),
    ``use_ssm`` (False: centre-aligned matching only), ``use_uncertainty`` (False: U = 1),
    ``search_cells`` r of the (2r+1)^2 shift window. PCSF: ``pcsf_heads``, ``pcsf_layers``,
    ``pcsf_separable`` (depthwise-separable Q/K/V convs), ``pcsf_frame_canvas`` (the paper's
    one-layer PCSF without frame encoding, with each frame's Q/K/V computed once on its own
    north-up canvas and translated into the newest frame's grid, so that a sliding window
    caches them; see ``frame_states``). Loss: ``triplet_alpha``,
    ``displacement_loss_weight`` (extension, default 0 = the paper's loss),
    ``displacement_loss`` (``ce``: the shift rounded to a cell; ``nll``: the dense likelihood's
    NLL of the sub-cell shift, ``cvl_ros.model.loss``) at ``displacement_temperature``.
    """

    backbone: str = "mobilenet_v2"
    pretrained: bool = True
    pretrained_path: str | None = None
    backbone_frozen: int | None = None
    ground_hw: tuple = (128, 512)
    sat_px: int = 256
    coverage_m: float = 100.0
    grid_cells: int = 32
    feature_dim: int = 16
    descriptor_dim: int = 4
    projection: str = "gvp"
    fusion: str = "pcsf"
    use_ssm: bool = True
    use_uncertainty: bool = True
    search_cells: int = 3
    camera_height_m: float = 1.65
    triplet_alpha: float = 10.0
    max_frames: int = 16
    pcsf_heads: int = 2
    pcsf_layers: int = 2
    pcsf_separable: bool = True
    pcsf_frame_canvas: bool = False
    uncertainty_min: float = 0.05
    displacement_loss_weight: float = 0.0
    displacement_loss: str = "ce"
    displacement_temperature: float = 0.1
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.ground_hw, (list, tuple)) or len(self.ground_hw) != 2 or not all(
                _is_int(v) and v > 0 for v in self.ground_hw):
            raise ValueError(f"ground_hw must be (H, W), two whole numbers > 0, got "
                             f"{self.ground_hw!r}")
        self.ground_hw = tuple(int(v) for v in self.ground_hw)
        self._check_values()
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.displacement_loss not in DISPLACEMENT_LOSSES:
            raise ValueError(f"displacement_loss must be one of {DISPLACEMENT_LOSSES}, got "
                             f"{self.displacement_loss!r}")
        if len(self.ground_hw) != 2:
            raise ValueError("ground_hw must be (H, W)")
        if self.pcsf_frame_canvas and (self.fusion != "pcsf" or self.projection != "gvp"
                                       or self.pcsf_layers != 1):
            raise ValueError("pcsf_frame_canvas needs fusion pcsf, projection gvp and "
                             f"pcsf_layers 1 (got {self.fusion}, {self.projection}, "
                             f"{self.pcsf_layers})")

    def _check_values(self) -> None:
        """Refuse values no model can use (a negative camera height, a zero grid, NaN).

        Only checks, never changes a value: the config enters the model hash as given.
        """
        for name, (kind, low, low_open, high, high_open) in _CONFIG_RANGES.items():
            v = getattr(self, name)
            if name == "backbone_frozen" and v is None:
                continue
            if kind == "bool":
                if not isinstance(v, bool):
                    raise ValueError(f"{name} must be true or false, got {v!r}")
                continue
            ok = _is_int(v) if kind == "int" else _is_real(v)
            if ok and low is not None:
                ok = v > low if low_open else v >= low
            if ok and high is not None:
                ok = v < high if high_open else v <= high
            if not ok:
                what = "a whole number" if kind == "int" else "a finite number"
                lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
                hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
                rule = " and ".join(x for x in (lo, hi) if x)
                raise ValueError(f"{name} must be {what} {rule}, got {v!r}")

    @property
    def cell_m(self) -> float:
        """Metres per overhead / satellite descriptor cell."""
        return self.coverage_m / self.grid_cells

    @property
    def canvas_cells(self) -> int:
        """Side (cells) of a frame's own Q/K/V canvas (``pcsf_frame_canvas``): twice the grid,
        so a frame up to ``coverage_m`` / 2 behind the newest still covers its whole grid."""  # noqa: D205, D209
        return 2 * int(self.grid_cells)

    @property
    def sat_m_per_px(self) -> float:
        """Metres per satellite input pixel."""
        return self.coverage_m / self.sat_px

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        d["ground_hw"] = list(self.ground_hw)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CVLNetConfig:
        """Build from a dict; unknown keys are ignored with a warning."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            LOG.warning("CVLNetConfig: ignoring unknown keys %s", unknown)
        return cls(**{k: v for k, v in d.items() if k in names})


def _zero_padded_crop(img: torch.Tensor, y: int, x: int, size: int) -> torch.Tensor:
    """``img[:, y:y+size, x:x+size]`` of a (C,H,W) tensor, zeros where it leaves the image."""
    H, W = img.shape[-2:]
    if 0 <= y and y + size <= H and 0 <= x and x + size <= W:
        return img[:, y:y + size, x:x + size]
    out = img.new_zeros(img.shape[0], size, size)
    y0, y1, x0, x1 = max(y, 0), min(y + size, H), max(x, 0), min(x + size, W)
    if y0 < y1 and x0 < x1:
        out[:, y0 - y:y1 - y, x0 - x:x1 - x] = img[:, y0:y1, x0:x1]
    return out


class CVLNet(nn.Module):
    """Cross-view video-based localisation network (GVP + fusion + SSM)."""

    def __init__(self, config: CVLNetConfig | None = None, load_pretrained: bool = True) -> None:
        super().__init__()
        cfg = config or CVLNetConfig()
        self.config = cfg
        pre = cfg.pretrained and load_pretrained
        if load_pretrained and not cfg.pretrained:
            LOG.warning("CVLNet: %s backbones randomly initialised (pretrained: false)",
                        cfg.backbone)
        C, D, S = cfg.feature_dim, cfg.descriptor_dim, cfg.grid_cells
        self.ground_backbone = build_backbone(cfg.backbone, C, cfg.pretrained_path, pre,
                                              cfg.backbone_frozen)
        self.sat_backbone = build_backbone(cfg.backbone, C, cfg.pretrained_path, pre,
                                           cfg.backbone_frozen)
        if cfg.projection == "none":
            self.projector = ResizeProjection(S)
        elif cfg.projection == "unet":
            self.projector = UNetProjection(C, S)
        else:
            self.projector = None
        self.fusion = build_fusion(cfg.fusion, C, cfg.max_frames, cfg.pcsf_heads, cfg.pcsf_layers,
                                   cfg.pcsf_separable, frame_encoding=not cfg.pcsf_frame_canvas)
        self.ground_head = nn.Conv2d(C, D, 1)
        self.sat_head = nn.Conv2d(C, D, 1)
        self.uncertainty_net = UncertaintyNet(C, u_min=cfg.uncertainty_min)

    # ------------------------------------------------------------------ split API
    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    @property
    def search_radius(self) -> int:
        """Half-width r of the shift window actually used (0 without SSM)."""
        return int(self.config.search_cells) if self.config.use_ssm else 0

    def encode_ground(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) RGB in [0,1] at ``ground_hw`` -> per-frame features (B,C,h,w)."""
        if tuple(images.shape[-2:]) != self.config.ground_hw:
            raise ValueError(f"ground images must be resized to {self.config.ground_hw} (K "
                             f"scaled to match), got {tuple(images.shape[-2:])}")
        return self.ground_backbone(images)

    @property
    def frame_state_uses_rotation(self) -> bool:
        """Whether a ``frame_states`` entry depends on its camera's rotation in the grid frame
        (then a cache must be refreshed when the window's heading changes)."""  # noqa: D205, D209
        return bool(self.config.pcsf_frame_canvas)

    def project_and_fuse(self, frame_feats: torch.Tensor, K, T_grid_cams,
                         camera_height_m=None) -> GroundDescriptor:
        """Project cached per-frame features for the newest pose and fuse them.

        ``frame_feats`` (B,N,C,h,w) with frame 0 the newest; ``K`` (B,N,3,3) for ``ground_hw``;
        ``T_grid_cams`` (B,N,4,4) optical-frame poses in frame 0's ENU grid frame
        (``cvl_ros.camera.relative_camera_poses``); ``camera_height_m`` float or (B,) (default
        from the config). Returns a ``GroundDescriptor`` ((B,D,S,S), mask (B,1,S,S)).
        Equal to ``fuse_frame_states(frame_states(...), ...)``.
        """
        states = self.frame_states(frame_feats, K, T_grid_cams, camera_height_m)
        return self.fuse_frame_states(states, K, T_grid_cams, camera_height_m)

    def frame_states(self, frame_feats: torch.Tensor, K, T_grid_cams,
                     camera_height_m=None) -> torch.Tensor:
        """The per-frame part of ``project_and_fuse``, which a sliding window caches.

        Without ``pcsf_frame_canvas`` this is ``frame_feats`` itself (projection depends on the
        whole window). With it: each frame's features are projected onto its own north-up
        canvas (``canvas_cells`` square, the grid's cell size, centred on that camera, ground
        ``camera_height_m`` below it) and PCSF's Q/K/V convs run there, giving (B,N,3C+1,Sc,Sc)
        (Q, K, V, mask). That depends on the frame's K, its rotation in the grid frame and the
        camera height, not on where the newest frame is.
        """
        if not self.config.pcsf_frame_canvas:
            return frame_feats
        cfg = self.config
        dev, dt = frame_feats.device, frame_feats.dtype
        B, N = frame_feats.shape[:2]
        h = cfg.camera_height_m if camera_height_m is None else camera_height_m
        K = torch.as_tensor(K, device=dev, dtype=dt)
        T_canvas = torch.as_tensor(T_grid_cams, device=dev, dtype=dt).clone()
        T_canvas[..., :3, 3] = 0.0  # the canvas frame: ENU axes at this camera's optical centre
        Sc = cfg.canvas_cells
        overhead, mask = project_to_overhead(frame_feats, K, T_canvas, h, Sc, Sc * cfg.cell_m,
                                             cfg.ground_hw)
        states = self.fusion.canvas_qkv(overhead.flatten(0, 1), mask.flatten(0, 1))
        return states.reshape(B, N, *states.shape[1:])

    def fuse_frame_states(self, states, K, T_grid_cams,
                          camera_height_m=None) -> GroundDescriptor:
        """Fuse the window's ``frame_states`` (frame 0 newest) into the ground descriptor.

        ``states`` is (B,N,...) or, for one window (B = 1), a sequence of the N per-frame
        states, which spares stacking a sliding window's cache at every update.
        """
        cfg = self.config
        if not torch.is_tensor(states) and len(states) == 0:
            raise ValueError("fuse_frame_states needs the state of at least one frame")
        if not torch.is_tensor(states) and not cfg.pcsf_frame_canvas:
            states = torch.stack(list(states))[None]
        first = states if torch.is_tensor(states) else states[0]
        dev, dt = first.device, first.dtype
        if cfg.pcsf_frame_canvas:
            T = torch.as_tensor(T_grid_cams, device=dev, dtype=dt)
            qkvm = self._canvases_to_grid(states, T[..., 0, 3], T[..., 1, 3])
            fused, fmask = self.fusion.fuse_qkv(qkvm)
            return GroundDescriptor(self.ground_head(fused) * fmask, fmask)
        if camera_height_m is None:
            camera_height_m = cfg.camera_height_m
        if self.projector is None:
            K = torch.as_tensor(K, device=dev, dtype=dt)
            T = torch.as_tensor(T_grid_cams, device=dev, dtype=dt)
            overhead, mask = project_to_overhead(states, K, T, camera_height_m,
                                                 cfg.grid_cells, cfg.coverage_m, cfg.ground_hw)
        else:
            overhead, mask = self.projector(states)
        fused, fmask = self.fusion(overhead, mask)
        return GroundDescriptor(self.ground_head(fused) * fmask, fmask)

    def _canvases_to_grid(self, states: torch.Tensor, east_m: torch.Tensor,
                          north_m: torch.Tensor) -> torch.Tensor:
        """Sample per-frame canvases (B,N,Cs,Sc,Sc), or one window's N canvases (Cs,Sc,Sc) as a
        sequence, centred at (``east_m``, ``north_m``) (B,N) of the newest frame's grid at its
        cell centres -> (B,N,Cs,S,S); the last channel (the mask) is thresholded at 1/2.

        A pure translation: bilinear with zeros outside the canvas, i.e. ``F.grid_sample``
        (``align_corners=False``) at the grid's cell centres (``test/_references.py``),
        computed from one integer crop per frame and three ``lerp``s, which is faster on CPU.
        """  # noqa: D205
        cfg = self.config
        if torch.is_tensor(states):
            B, N = states.shape[:2]
            frames = list(states.flatten(0, 1))
        else:  # one window as a sequence of per-frame (Cs,Sc,Sc) states
            B, N, frames = 1, len(states), list(states)
        Cs, Sc = frames[0].shape[0], frames[0].shape[-1]
        S, cell = int(cfg.grid_cells), cfg.cell_m
        dt = frames[0].dtype
        # canvas pixel coordinate of grid cell (r, c): (r + off_y, c + off_x)
        off_x = ((Sc - S) / 2.0 - east_m / cell).reshape(B * N)
        off_y = ((Sc - S) / 2.0 + north_m / cell).reshape(B * N)
        # beyond these integer offsets every tap falls outside the canvas (all zeros)
        x0 = torch.floor(off_x).clamp(-S - 1, Sc)
        y0 = torch.floor(off_y).clamp(-S - 1, Sc)
        fx = (off_x - x0).clamp(0.0, 1.0).to(dt).view(B * N, 1, 1, 1)
        fy = (off_y - y0).clamp(0.0, 1.0).to(dt).view(B * N, 1, 1, 1)
        crops = torch.stack([_zero_padded_crop(f, y, x, S + 1)
                             for f, x, y in zip(frames, x0.long().tolist(),
                                                y0.long().tolist())])
        top = torch.lerp(crops[..., :-1, :-1], crops[..., :-1, 1:], fx)
        bottom = torch.lerp(crops[..., 1:, :-1], crops[..., 1:, 1:], fx)
        out = torch.lerp(top, bottom, fy).reshape(B, N, Cs, S, S)
        out[:, :, -1] = (out[:, :, -1] > 0.5).to(out.dtype)
        return out

    def encode_satellite(self, tiles: torch.Tensor, region: bool = False) -> SatelliteDescriptor:
        """(T,3,P,P) RGB in [0,1] -> ``SatelliteDescriptor`` ((T,D,S,S), U (T,1,S,S)).

        ``region=True``: the images are larger satellite regions at the tiles' ground
        resolution (``sat_px`` pixels per ``coverage_m``), P >= ``sat_px``; the descriptor keeps
        that extent, R = S * P / sat_px cells (rounded to S + an even number), for a dense
        search by ``match`` over the whole region.
        """
        feats = self.sat_backbone(tiles)
        S = self.config.grid_cells
        if region:
            P = int(tiles.shape[-1])
            if P < self.config.sat_px or tiles.shape[-2] != P:
                raise ValueError(f"a satellite region must be square and at least sat_px = "
                                 f"{self.config.sat_px} px, got {tuple(tiles.shape[-2:])}")
            extra = round((S * P / self.config.sat_px - S) / 2.0)
            S = S + 2 * extra
        if tuple(feats.shape[-2:]) != (S, S):
            feats = F.interpolate(feats, size=(S, S), mode="bilinear", align_corners=False)
        desc = self.sat_head(feats)
        if self.config.use_uncertainty:
            unc = self.uncertainty_net(feats)
        else:
            unc = torch.ones_like(desc[:, :1])
        return SatelliteDescriptor(desc, unc)

    def match(self, ground: GroundDescriptor, sat: SatelliteDescriptor,
              pairwise: bool = True, search_cells: int | None = None,
              upsample: int = 1) -> MatchResult:
        """Score grounds vs tiles; ``search_cells`` overrides r (a wider window over each
        tile); a region descriptor (``encode_satellite(..., region=True)``) searches all of
        it; ``upsample`` evaluates displacements on a finer grid (``match_descriptors``)."""  # noqa: D205, D209
        r = self.config.search_cells if search_cells is None else int(search_cells)
        return match_descriptors(ground, sat, self.config.cell_m, r, self.config.use_ssm,
                                 self.config.use_uncertainty, pairwise, upsample)

    # ------------------------------------------------------------------ training API
    def encode_ground_sequence(self, images: torch.Tensor) -> torch.Tensor:
        """(B,N,3,H,W) -> (B,N,C,h,w) (one backbone pass over all frames)."""
        B, N = images.shape[:2]
        f = self.encode_ground(images.flatten(0, 1))
        return f.reshape(B, N, *f.shape[1:])

    def forward(self, batch: dict) -> dict:
        """Batch dict (images, K, T_grid_cams, camera_height_m, sat) -> predictions.

        Returns ``ground``/``sat`` descriptors and the pairwise ``score`` (B,B),
        ``displacement_m`` (B,B,2) and ``score_map`` (B,B,k,k) (ground rows, tile columns).
        """
        feats = self.encode_ground_sequence(batch["images"])
        h = batch.get("camera_height_m")
        ground = self.project_and_fuse(feats, batch["K"], batch["T_grid_cams"], h)
        sat = self.encode_satellite(batch["sat"])
        m = self.match(ground, sat, pairwise=True)
        return {"ground": ground, "sat": sat, "score": m.score,
                "displacement_m": m.displacement_m, "score_map": m.score_map}

    def loss(self, pred: dict, batch: dict) -> dict:
        """Triplet loss (Eq. 7, both directions) + optional displacement term (extension)."""
        out = triplet_loss(pred["score"], self.config.triplet_alpha)
        w = self.config.displacement_loss_weight
        if w > 0 and self.search_radius > 0:
            idx = torch.arange(pred["score"].shape[0], device=pred["score"].device)
            loss_fn = (displacement_nll_loss if self.config.displacement_loss == "nll"
                       else displacement_ce_loss)
            dl = loss_fn(pred["score_map"][idx, idx],
                         batch["displacement_m"].to(pred["score"].dtype), self.config.cell_m,
                         self.config.displacement_temperature)
            out["displacement"] = dl
            out["total"] = out["total"] + w * dl
        return out

    @torch.no_grad()
    def metrics(self, pred: dict, batch: dict) -> dict:
        """In-batch retrieval and localisation metrics (scalars as 0-dim tensors)."""
        score = pred["score"]
        B = score.shape[0]
        idx = torch.arange(B, device=score.device)
        top1 = score.argmax(1)
        pos = score[idx, idx]
        neg = score.masked_fill(torch.eye(B, dtype=torch.bool, device=score.device), -1e9)
        disp = pred["displacement_m"][idx, idx]
        gt = batch["displacement_m"].to(disp.dtype)
        err = (disp - gt).norm(dim=-1)
        # error of the top-1 tile's prediction, in the query tile's frame is unknown here:
        # report the positive pair's displacement error and in-batch recall@1.
        return {
            "recall@1_batch": (top1 == idx).float().mean(),
            "pos_score": pos.mean(),
            "max_neg_score": neg.max(1).values.mean(),
            "disp_err_m": err.mean(),
            "disp_err_median_m": err.median(),
            "disp_within_5m": (err <= 5.0).float().mean(),
        }

    def model_hash(self) -> str:
        """sha256 of the config JSON and every state-dict tensor (sorted keys), 16 hex chars.

        Config fields added after checkpoint format 1 (``_HASH_OMITTED_IF_DEFAULT``) enter the
        hash only when they differ from their default, so existing checkpoints and tile
        databases keep their hash.
        """
        h = hashlib.sha256()
        cfg = {k: v for k, v in self.config.to_dict().items()
               if k not in _HASH_OMITTED_IF_DEFAULT or v != _HASH_OMITTED_IF_DEFAULT[k]}
        h.update(json.dumps(cfg, sort_keys=True).encode())
        for k, v in sorted(self.state_dict().items()):
            t = v.detach().cpu().contiguous()
            h.update(k.encode())
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:16]


def save_checkpoint(path, model: CVLNet, extra: dict | None = None) -> str:
    """Write ``path`` (safetensors: weights; metadata: format, config JSON, extra JSON, hash).

    ``extra`` must be JSON-serialisable (e.g. epoch, metrics). Written atomically. Returns the
    model hash.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    mh = model.model_hash()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True),
        "model_hash": mh,
    }
    path = os.fspath(path)
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)
    return mh


#: File names a checkpoint folder is searched for, in order (``cvl-train`` writes best/last).
CHECKPOINT_NAMES = ("model.safetensors", "checkpoint.safetensors", "best.safetensors",
                    "last.safetensors")


def resolve_checkpoint(path=None) -> Path:
    """The checkpoint file meant by ``path``: the one resolver of the node, tools and training.

    ``path`` is a ``.safetensors`` file or a folder (its first of :data:`CHECKPOINT_NAMES`, else
    its only ``*.safetensors`` that is not optimiser state); relative paths are tried against
    the working directory, then the package (:func:`cvl_ros.resources.resolve_path`); empty or
    None means the shipped demo model. Raises ``CheckpointError`` saying what is missing.
    """
    from cvl_ros.params import DEFAULT_CHECKPOINT
    from cvl_ros.resources import MODEL_HINT, resolve_path

    given = str(path) if path not in (None, "") else DEFAULT_CHECKPOINT
    p = resolve_path(given)
    if p is None:
        raise CheckpointError(f"model checkpoint '{given}' not found; {MODEL_HINT}")
    if not p.is_dir():
        return p
    for name in CHECKPOINT_NAMES:
        if (p / name).is_file():
            return p / name
    files = sorted(f for f in p.glob("*.safetensors") if not f.name.endswith(".optim.safetensors"))
    if len(files) == 1:
        return files[0]
    if not files:
        raise CheckpointError(f"checkpoint folder {p} holds no *.safetensors file; {MODEL_HINT}")
    raise CheckpointError(f"checkpoint folder {p} holds {len(files)} checkpoints "
                          f"({', '.join(f.name for f in files)}) and none of "
                          f"{', '.join(CHECKPOINT_NAMES)}: name the file")


def load_checkpoint(path, map_location="cpu") -> tuple[CVLNet, dict]:
    """Load a checkpoint written by ``save_checkpoint`` -> (model in eval mode, extra dict).

    Raises ``CheckpointError`` when the file is missing, not a safetensors file, has a wrong
    format tag, a config or tensors that do not fit this code, or a hash that does not match.
    """
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        tensors = {}
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as e:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"checkpoint {path!r} is corrupt or not a safetensors file: "
                              f"{e}") from e
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path!r}: format {meta.get('format')!r}, expected "
                              f"{CHECKPOINT_FORMAT!r}")
    try:
        config_dict = json.loads(meta["config"])
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path!r}: unreadable config/extra: {e}") from e
    if not isinstance(config_dict, dict):
        raise CheckpointError(f"checkpoint {path!r}: its config is not a JSON object")
    try:
        config = CVLNetConfig.from_dict(config_dict)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path!r}: invalid model config: {e}; the checkpoint "
                              "cannot be used as it is (retrain, or fix the config it was "
                              "trained with)") from e
    model = CVLNet(config, load_pretrained=False)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path!r} does not match the model of its config "
                              f"(mismatched keys or shapes): {e}") from e
    mh = model.model_hash()
    if not meta.get("model_hash"):
        raise CheckpointError(f"checkpoint {path!r} carries no model_hash (not written by "
                              "cvl_ros.model.cvlnet.save_checkpoint, or edited)")
    if meta["model_hash"] != mh:
        raise CheckpointError(f"checkpoint {path!r}: model hash {mh} != stored "
                              f"{meta['model_hash']} (corrupt?)")
    model.eval()
    return model.to(map_location), extra
