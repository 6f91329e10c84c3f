"""Heading from the images (cvl_ros.localizer.heading): rotation, yaw belief, rotated oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _localizer_fakes import CAMERA, T_BODY_CAM, FakeDB, OracleConfig, image
from scipy import ndimage

from cvl_ros.camera import invert_pose, pose_enu
from cvl_ros.localizer import Frame, Localizer, LocalizerConfig, Status
from cvl_ros.localizer.heading import COARSE_HYPOTHESES, YawFilter, rotate_ground, wrap
from cvl_ros.model.matching import GroundDescriptor, SatelliteDescriptor, match_descriptors

torch.set_num_threads(1)


# ------------------------------------------------------------------ rotation
def _hot_cell(s=17, r=8, c=12):
    f = torch.zeros(1, 1, s, s)
    f[0, 0, r, c] = 1.0
    return GroundDescriptor(f, torch.ones(1, 1, s, s))


def test_rotation_is_counter_clockwise_in_enu_about_the_centre():
    g = _hot_cell()  # 4 cells east of the centre (8, 8)
    out = rotate_ground(g, [0.0, math.pi / 2, math.pi, -math.pi / 2])
    peaks = [divmod(int(out.features[k, 0].argmax()), 17) for k in range(4)]
    # 0: east stays east; +90 deg (CCW): north (row above); 180: west; -90: south
    assert peaks == [(8, 12), (4, 8), (8, 4), (12, 8)]


def test_rotation_masks_what_left_the_grid_and_round_trips_inside():
    rng = np.random.default_rng(0)
    f = torch.from_numpy(ndimage.gaussian_filter(rng.normal(size=(2, 33, 33)), (0, 2, 2)))
    g = GroundDescriptor(f[None].float(), torch.ones(1, 1, 33, 33))
    out = rotate_ground(g, [math.radians(30)])
    assert out.mask[0, 0, 0, 0] == 0 and out.mask[0, 0, 16, 16] == 1  # corners came from outside
    back = rotate_ground(GroundDescriptor(out.features, out.mask), [math.radians(-30)])
    inner = (back.mask[0, 0] > 0)
    inner[:8] = inner[-8:] = False
    inner[:, :8] = inner[:, -8:] = False
    err = (back.features[0][:, inner] - g.features[0][:, inner]).abs().max()
    assert err < 0.25 * g.features.abs().max()  # two bilinear resamplings


# ------------------------------------------------------------------ yaw belief
def test_fine_update_is_the_product_of_gaussians():
    """(Both sigmas above the 3 deg floors of one window's measurement and of the belief.)"""
    yf = YawFilter(0.2, math.radians(8.0), hypotheses=41)
    deltas = yf.hypotheses()
    z, r = math.radians(4.0), math.radians(6.0)  # measurement: offset +4 deg, sigma 6 deg
    yf.update(deltas, -0.5 * (deltas - z) ** 2 / r**2)
    p, q = math.radians(8.0) ** 2, r**2
    assert yf.mean == pytest.approx(0.2 + z * p / (p + q), abs=math.radians(0.1))
    assert yf.sigma == pytest.approx(math.sqrt(p * q / (p + q)), rel=0.05)


def test_coarse_search_finds_the_heading_anywhere_on_the_circle():
    yf = YawFilter(0.0, math.pi)
    assert yf.coarse and len(yf.hypotheses()) == COARSE_HYPOTHESES
    deltas = yf.hypotheses()
    truth = math.radians(-130.0)
    ll = -0.5 * wrap(deltas - truth) ** 2 / math.radians(8.0) ** 2
    yf.update(deltas, ll)
    assert abs(wrap(yf.mean - truth)) < math.radians(5.0)
    assert not yf.coarse
    yf.predict(100.0, math.radians(1.0) / 100.0)  # 1 deg per 100 m of drift
    assert yf.var > math.radians(1.0) ** 2


# ------------------------------------------------------------------ rotated oracle
CELL_M = OracleConfig.coverage_m / OracleConfig.grid_cells
TEMPERATURE = 0.2  # the oracle's NCC scores span about [-1, 1]


class _World:
    """A smooth random feature field over the area (what a perfect network would see)."""

    def __init__(self, seed=0, lo=(-120.0, -100.0), size_m=340.0, res_m=1.0, dim=4):
        rng = np.random.default_rng(seed)
        n = int(size_m / res_m)
        self.f = ndimage.gaussian_filter(rng.normal(size=(dim, n, n)), (0, 4, 4)) * 10.0
        self.lo, self.res = np.asarray(lo), res_m

    def sample(self, east, north):
        """(dim, *shape) bilinear samples at world east/north."""
        cols = (np.asarray(east) - self.lo[0]) / self.res
        rows = (np.asarray(north) - self.lo[1]) / self.res
        return np.stack([ndimage.map_coordinates(ch, [rows, cols], order=1) for ch in self.f])

    def crop(self, center_en, rot_rad=0.0, s=16):
        """North-up S x S grid around ``center_en``, the content rotated CCW by ``rot_rad``."""
        idx = np.arange(s) - (s - 1) / 2
        e, n = np.meshgrid(idx * CELL_M, -idx * CELL_M)  # row 0 = north
        c, si = math.cos(rot_rad), math.sin(rot_rad)
        src_e, src_n = c * e + si * n, -si * e + c * n  # R(-rot) of each output cell
        return self.sample(center_en[0] + src_e, center_en[1] + src_n)


class _RotatedOracleDB(FakeDB):
    def __init__(self, world):
        super().__init__(spacing_m=10.0, east=(-60, 160), north=(-50, 50))
        self.world = world

    def descriptors(self, indices):
        feats = np.stack([self.world.crop(self.centers_enu[i]) for i in np.asarray(indices)])
        t = torch.from_numpy(feats).float()
        return SatelliteDescriptor(t, torch.ones(t.shape[0], 1, *t.shape[-2:]))


class _RotatedOracleModel(torch.nn.Module):
    """Projects the true surroundings of the camera with the heading the localizer believes:
    a heading error of d rotates the whole overhead view by d about the camera."""

    frame_state_uses_rotation = False

    def __init__(self, world):
        super().__init__()
        self.config = OracleConfig()
        self.world = world
        self.truth_cam_en = np.zeros(2)
        self.truth_cam_yaw = 0.0
        self._dummy = torch.nn.Parameter(torch.zeros(1))

    def encode_ground(self, images):
        return torch.zeros(images.shape[0], 2, 4, 8)

    def frame_states(self, frame_feats, K, T_grid_cams, camera_height_m=None):
        return frame_feats

    def fuse_frame_states(self, states, K, T_grid_cams, camera_height_m=None):
        z = T_grid_cams[0, 0, :3, 2].double().numpy()  # optical axis of the newest camera, ENU
        believed = math.atan2(z[1], z[0])
        err = float(wrap(believed - self.truth_cam_yaw))
        f = torch.from_numpy(self.world.crop(self.truth_cam_en, err)).float()[None]
        return GroundDescriptor(f, torch.ones(1, 1, 16, 16))

    def match(self, ground, sat, pairwise=True):
        return match_descriptors(ground, sat, CELL_M, self.config.search_cells)


def _run_heading(offset_error_rad, initial_sigma_deg, n=40, yaw=0.3):
    world = _World()
    db = _RotatedOracleDB(world)
    model = _RotatedOracleModel(world)
    true_offset = 0.0  # odometry frame = ENU; the localizer is told otherwise
    cfg = LocalizerConfig(window_length=2, estimate_heading=True,
                          odom_yaw_offset_rad=true_offset + offset_error_rad,
                          initial_yaw_sigma_deg=initial_sigma_deg, global_min_travel_m=0.0,
                          score_temperature=TEMPERATURE, reject_uninformative_images=False)
    loc = Localizer(model, db, cfg)
    poses = [pose_enu(i * 1.5 * math.cos(yaw), i * 1.5 * math.sin(yaw), 0.0, yaw)
             for i in range(n)]
    T0_inv = invert_pose(poses[0])
    first = poses[0] @ T_BODY_CAM
    loc.set_initial_pose(first[0, 3], first[1, 3], None, 3.0)
    ests = []
    for i, Twb in enumerate(poses):
        Twc = Twb @ T_BODY_CAM
        model.truth_cam_en = Twc[:2, 3]
        model.truth_cam_yaw = math.atan2(Twc[1, 2], Twc[0, 2])
        est = loc.add_frame(Frame(i * 100_000_000, image(i), CAMERA, T0_inv @ Twb, None,
                                  T_BODY_CAM))
        if est is not None:
            ests.append((est, Twb))
    return ests, yaw


@pytest.mark.parametrize("error_deg, sigma_deg", [(6.0, 10.0), (-4.0, 10.0), (120.0, 180.0)])
def test_rotated_oracle_heading_is_recovered(error_deg, sigma_deg):
    ests, yaw = _run_heading(math.radians(error_deg), sigma_deg)
    last = [e for e, _ in ests[-10:]]
    errs = [abs(math.degrees(wrap(e.yaw_rad - yaw))) for e in last]
    assert max(errs) < 1.5, errs
    # the reported yaw variance covers the error (1.96 sigma) and is no longer "unknown"
    for e in last:
        assert abs(wrap(e.yaw_rad - yaw)) <= 1.96 * math.sqrt(e.yaw_var_rad2) + math.radians(0.5)
        assert e.yaw_var_rad2 < math.radians(5.0) ** 2
    # positions follow once the heading is known
    pos = [math.hypot(e.east_m - T[0, 3], e.north_m - T[1, 3]) for e, T in ests[-10:]]
    assert np.median(pos) < 3.0, pos


def test_unknown_heading_never_tracks_before_the_circle_search_settles():
    ests, _ = _run_heading(math.radians(120.0), 180.0, n=6)
    first = ests[0][0]
    assert first.status != Status.TRACKING and first.yaw_var_rad2 > math.radians(20) ** 2
