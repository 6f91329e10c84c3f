"""Test doubles for the localizer: an 'oracle' model over a fake tile database, and tiny real ones.

The oracle model obeys the CVLNet split API but produces score maps peaked at a true camera
position that the test sets (``model.truth_cam_en``), so filter logic can be tested without a
trained network. ``alias_en`` adds a second, equally strong peak (a repeated structure).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cvl_ros.camera import PinholeCamera, make_body_from_camera, pose_enu
from cvl_ros.geo import GeoDatum

DATUM = GeoDatum(49.015, 8.43, 110.0)


@dataclass
class OracleConfig:
    ground_hw: tuple = (32, 64)
    coverage_m: float = 50.0
    grid_cells: int = 16
    search_cells: int = 3
    camera_height_m: float = 1.65


@dataclass
class _Ground:
    features: torch.Tensor
    mask: torch.Tensor


@dataclass
class _Sat:
    features: torch.Tensor  # (T,1) tile indices
    uncertainty: torch.Tensor


@dataclass
class _Match:
    score: torch.Tensor
    displacement_m: torch.Tensor
    score_map: torch.Tensor


class OracleModel(torch.nn.Module):
    """Score map = Gaussian bump at the true displacement (+ optional alias, noise, flatness)."""

    def __init__(self, db, sigma_m=2.5, noise=0.02, alias_en=None, flat=False, seed=0,
                 decoy_en=None, decoy_calls=0):
        super().__init__()
        # a look-alike place: for the first ``decoy_calls`` match calls the score maps show a clean
        # bump at truth + decoy_en instead of the truth (what a repeated street corner does)
        self.decoy_en = decoy_en
        self.decoy_calls = decoy_calls
        self.match_calls = 0
        self.config = OracleConfig()
        self.db = db
        self.truth_cam_en = np.zeros(2)
        self.sigma_m = sigma_m
        self.noise = noise
        self.alias_en = alias_en
        self.flat = flat
        self.rng = np.random.default_rng(seed)
        self.encode_calls = 0
        self._dummy = torch.nn.Parameter(torch.zeros(1))

    def encode_ground(self, images):
        self.encode_calls += 1
        assert tuple(images.shape[-2:]) == self.config.ground_hw
        return torch.zeros(images.shape[0], 2, 4, 8)

    frame_state_uses_rotation = False

    def frame_states(self, frame_feats, K, T_grid_cams, camera_height_m=None):
        assert frame_feats.ndim == 5 and K.shape[:2] == T_grid_cams.shape[:2]
        return frame_feats

    def fuse_frame_states(self, states, K, T_grid_cams, camera_height_m=None):
        if not torch.is_tensor(states):
            states = torch.stack(list(states))[None]
        return self.project_and_fuse(states, K, T_grid_cams, camera_height_m)

    def project_and_fuse(self, frame_feats, K, T_grid_cams, camera_height_m=None):
        assert frame_feats.ndim == 5 and K.shape[:2] == T_grid_cams.shape[:2]
        assert torch.allclose(T_grid_cams[0, 0, :3, 3], torch.zeros(3))
        return _Ground(torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16))

    def match(self, ground, sat, pairwise=True):
        cfg = self.config
        r = cfg.search_cells
        cell = cfg.coverage_m / cfg.grid_cells
        idx = sat.features[:, 0].long().numpy()
        jj, ii = np.meshgrid(np.arange(2 * r + 1), np.arange(2 * r + 1))
        de, dn = (jj - r) * cell, (r - ii) * cell
        maps = np.zeros((len(idx), 2 * r + 1, 2 * r + 1))
        truths = [self.truth_cam_en] + ([np.asarray(self.alias_en) + self.truth_cam_en]
                                        if self.alias_en is not None else [])
        self.match_calls += 1
        if self.decoy_en is not None and self.match_calls <= self.decoy_calls:
            truths = [np.asarray(self.decoy_en) + self.truth_cam_en]
        for k, i in enumerate(idx):
            c = self.db.centers_enu[i]
            m = np.zeros_like(de)
            if not self.flat:
                for t in truths:
                    d = t - c
                    m = np.maximum(m, 0.8 * np.exp(-((de - d[0]) ** 2 + (dn - d[1]) ** 2)
                                                   / (2 * self.sigma_m**2)))
            maps[k] = 0.1 + m + self.noise * self.rng.standard_normal(m.shape)
        flat = maps.reshape(len(idx), -1)
        best = flat.argmax(1)
        disp = np.stack([de.ravel()[best], dn.ravel()[best]], 1)
        return _Match(torch.from_numpy(flat.max(1))[None].float(),
                      torch.from_numpy(disp)[None].float(), torch.from_numpy(maps)[None].float())


class FakeDB:
    """Obeys the TileDatabase query API; descriptors carry the tile indices."""

    def __init__(self, spacing_m=10.0, east=(-50, 150), north=(-40, 40), datum=DATUM):
        es = np.arange(east[0], east[1] + 1e-9, spacing_m)
        ns = np.arange(north[0], north[1] + 1e-9, spacing_m)
        E, N = np.meshgrid(es, ns)
        self.centers_enu = np.stack([E.ravel(), N.ravel()], 1).astype(float)
        self.datum = datum
        lat, lon, _ = datum.to_geodetic(self.centers_enu[:, 0], self.centers_enu[:, 1], 0.0)
        self.centers_latlon = np.stack([lat, lon], 1)
        self.tile_ids = [f"t{i:04d}" for i in range(len(self.centers_enu))]

    def __len__(self):
        return len(self.tile_ids)

    def query_radius(self, east_m, north_m, radius_m):
        d = np.hypot(*(self.centers_enu - [east_m, north_m]).T)
        idx = np.nonzero(d <= radius_m)[0]
        return idx[np.argsort(d[idx])]

    def descriptors(self, indices):
        idx = torch.as_tensor(np.asarray(indices)).reshape(-1, 1).float()
        return _Sat(idx, torch.ones_like(idx))

    def global_topk(self, ground, k):
        return np.arange(min(k, len(self)))[None], np.zeros((1, min(k, len(self))))


CAMERA = PinholeCamera(60.0, 60.0, 63.5, 31.5, 128, 64)
T_BODY_CAM = make_body_from_camera(1.0, 0.0, 1.6)


def drive_poses(n, step_m=1.5, start=(0.0, 0.0), yaw=0.0):
    """Straight drive: world poses of base_link (N,4,4)."""
    out = []
    for i in range(n):
        out.append(pose_enu(start[0] + i * step_m * np.cos(yaw),
                            start[1] + i * step_m * np.sin(yaw), 0.0, yaw))
    return np.stack(out)


def image(seed=0, h=64, w=128):
    """A random image with a scene's spatial structure (smoothed noise, full contrast), so the
    localizer's uninformative-image check passes it."""
    import cv2

    noise = np.random.default_rng(seed).normal(0.0, 1.0, (h, w, 3))
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    smooth = (smooth - smooth.mean()) / (smooth.std() + 1e-9)
    return np.clip(128 + 45 * smooth, 0, 255).astype(np.uint8)
