"""GVP projection against hand computations with the real KITTI camera-2 calibration."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from cvl_ros.camera import (
    PinholeCamera,
    invert_pose,
    make_body_from_camera,
    pose_enu,
    relative_camera_poses,
)
from cvl_ros.model.projection import ResizeProjection, UNetProjection, project_to_overhead

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CALIB = Path(__file__).parent / "data" / "kitti_raw" / "2011_09_26" / "calib_cam_to_cam.txt"
H, W = 128, 512
S, COV = 32, 100.0
CELL = COV / S
HEIGHT = 1.65


def read_p_rect_02(path):
    for line in Path(path).read_text().splitlines():
        if line.startswith("P_rect_02:"):
            return np.array([float(v) for v in line.split(":", 1)[1].split()]).reshape(3, 4)
    raise KeyError("P_rect_02")


@pytest.fixture(scope="module")
def cam():
    if not CALIB.is_file():
        pytest.skip(f"real KITTI calibration {CALIB} absent")
    return PinholeCamera.from_kitti_projection(read_p_rect_02(CALIB), 1242, 375).scaled_to(W, H)


def cell_centre(r, c):
    return (c - (S - 1) / 2) * CELL, ((S - 1) / 2 - r) * CELL


def coord_features(stride):
    """Feature map whose channels are the input-pixel coordinates (u, v) of each cell centre."""
    h, w = H // stride, W // stride
    u = torch.arange(w, dtype=torch.float64) * stride + (stride - 1) / 2
    v = torch.arange(h, dtype=torch.float64) * stride + (stride - 1) / 2
    return torch.stack([u.view(1, w).expand(h, w), v.view(h, 1).expand(h, w)])  # (2,h,w)


def run(feats, K, T, height=HEIGHT):
    """feats (N,C,h,w) float64, K (3,3) numpy, T (N,4,4) numpy -> overhead (N,C,S,S), mask."""
    N = feats.shape[0]
    Kt = torch.tensor(K).expand(1, N, 3, 3)
    Tt = torch.tensor(np.asarray(T)).reshape(1, N, 4, 4)
    ov, m = project_to_overhead(feats[None], Kt, Tt, height, S, COV, (H, W))
    return ov[0], m[0]


@pytest.mark.parametrize("stride", [8, 16])
def test_ground_point_lands_in_predicted_cell(cam, stride):
    # vehicle heading north-east (yaw 30 deg), camera 0.3 m left of and 1.65 m above base_link
    T_body_cam = make_body_from_camera(0.8, 0.3, HEIGHT)
    T_world_cam = pose_enu(500.0, -20.0, 0.0, np.deg2rad(30)) @ T_body_cam
    T = relative_camera_poses(T_world_cam[None])
    ov, m = run(coord_features(stride)[None], cam.K, T)
    R = T_world_cam[:3, :3]
    checked = 0
    for r, c in [(9, 20), (5, 25), (12, 17), (2, 29)]:
        e, n = cell_centre(r, c)
        # by hand: ground point relative to the optical centre, rotated into the camera
        p = R.T @ np.array([e, n, -HEIGHT])
        assert p[2] > 0
        u = cam.fx * p[0] / p[2] + cam.cx
        v = cam.fy * p[1] / p[2] + cam.cy
        assert m[0, 0, r, c] == 1.0, (r, c, u, v)
        # a linear feature is reproduced exactly by bilinear sampling away from the border
        if stride / 2 < u < W - stride / 2 and stride / 2 < v < H - stride / 2:
            assert ov[0, 0, r, c].item() == pytest.approx(u, abs=1e-6)
            assert ov[0, 1, r, c].item() == pytest.approx(v, abs=1e-6)
            checked += 1
    assert checked >= 3


def pattern(e, n):
    return np.sin(2 * np.pi * e / 17.0) * np.cos(2 * np.pi * n / 23.0) + 0.3 * np.sin(
        2 * np.pi * (e + n) / 31.0)


def render_ground(cam, T_grid_cam):
    """Render the ground-plane pattern through the camera: (H,W) image, NaN above horizon."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.linalg.inv(cam.K) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    rays_g = T_grid_cam[:3, :3] @ rays
    o = T_grid_cam[:3, 3]
    lam = (-HEIGHT - o[2]) / rays_g[2]
    pts = o[:, None] + lam * rays_g
    img = pattern(pts[0], pts[1])
    img[lam <= 0] = 0.0
    return img.reshape(H, W)


def expected_overhead():
    r, c = np.mgrid[0:S, 0:S].astype(np.float64)
    e, n = cell_centre(r, c)
    return pattern(e, n), np.hypot(e, n)


def test_rendered_ground_pattern_projects_back(cam):
    T_world_cam = pose_enu(0, 0, 0, np.deg2rad(80)) @ make_body_from_camera(0, 0, HEIGHT)
    T = relative_camera_poses(T_world_cam[None])
    img = torch.tensor(render_ground(cam, T[0]))[None, None]
    exp, dist = expected_overhead()
    # full resolution features (stride 1) and a stride-4 average-pooled feature map: K is
    # given for the input size both times, the projection accounts for the stride
    for stride in (1, 4):
        f = F.avg_pool2d(img, stride) if stride > 1 else img
        ov, m = run(f, cam.K, T)
        sel = (m[0, 0].numpy() > 0) & (dist > 4) & (dist < 30)
        assert sel.sum() > 40
        err = np.abs(ov[0, 0].numpy()[sel] - exp[sel])
        assert err.mean() < 0.05 * stride and err.max() < 0.25 * stride, (stride, err.max())


def test_past_frame_translation_and_rotation(cam):
    """A past frame 12 m behind and turned 15 deg projects the same world content in place."""
    T_body_cam = make_body_from_camera(0.5, 0.0, HEIGHT)
    T0 = pose_enu(40.0, 10.0, 0.0, np.deg2rad(90)) @ T_body_cam
    T1 = pose_enu(40.0 + 1.0, 10.0 - 12.0, 0.0, np.deg2rad(105)) @ T_body_cam
    Tg = relative_camera_poses(np.stack([T0, T1]))
    # the world pattern is defined in the grid frame of frame 0
    imgs = torch.tensor(np.stack([render_ground(cam, Tg[i]) for i in range(2)]))[:, None]
    ov, m = run(imgs, cam.K, Tg)
    exp, dist = expected_overhead()
    both = (m[0, 0] * m[1, 0]).numpy() > 0
    sel = both & (dist < 30) & (dist > 4)
    assert sel.sum() > 30
    for i in range(2):
        assert np.abs(ov[i, 0].numpy()[sel] - exp[sel]).mean() < 0.05
    # frame 1 sees cells behind frame 0 that frame 0 cannot (it is 12 m further south)
    only1 = (m[1, 0] > 0) & (m[0, 0] == 0)
    rows = np.nonzero(only1.numpy())[0]
    assert rows.size > 0 and rows.max() > (S - 1) / 2
    # a wrong sign of the past translation would break the agreement: check it does
    Tbad = Tg.copy()
    Tbad[1, :3, 3] *= -1
    ov_bad, m_bad = run(imgs, cam.K, Tbad)
    sel_bad = (m_bad[1, 0].numpy() > 0) & (dist < 30) & (dist > 4)
    assert np.abs(ov_bad[1, 0].numpy()[sel_bad] - exp[sel_bad]).mean() > 0.15


def test_behind_camera_masked(cam):
    T_world_cam = pose_enu(0, 0, 0, np.pi / 2) @ make_body_from_camera(0, 0, HEIGHT)  # north
    T = relative_camera_poses(T_world_cam[None])
    f = torch.ones(1, 3, H // 8, W // 8, dtype=torch.float64)
    ov, m = run(f, cam.K, T)
    r, c = np.mgrid[0:S, 0:S]
    e, n = cell_centre(r, c)
    behind = n <= 0
    assert m[0, 0].numpy()[behind].max() == 0
    assert ov[0].numpy()[:, behind].max() == 0
    # without the depth test, the mirrored images of ground points behind the camera would
    # land inside the image (in its upper part, above the horizon): check they are masked
    p_cam = np.einsum("ji,rcj->rci", T[0, :3, :3], np.stack([e, n, np.full_like(e, -HEIGHT)], -1))
    uu = cam.fx * p_cam[..., 0] / p_cam[..., 2] + cam.cx
    vv = cam.fy * p_cam[..., 1] / p_cam[..., 2] + cam.cy
    mirrored = (p_cam[..., 2] <= 0) & (uu > 0) & (uu < W - 1) & (vv > 0) & (vv < H - 1)
    assert mirrored.sum() > 20  # the trap exists for this geometry
    assert m[0, 0].numpy()[mirrored].max() == 0 and ov[0].numpy()[:, mirrored].max() == 0
    # cells in front are valid inside the field of view
    assert m[0, 0, 5, 15] == 1 and m[0, 0, 5, 16] == 1
    assert ov[0, :, 5, 15].min() > 0.99


def test_height_tensor_and_batch(cam):
    T_world_cam = pose_enu(0, 0, 0, np.pi / 2) @ make_body_from_camera(0, 0, HEIGHT)
    T = torch.tensor(relative_camera_poses(T_world_cam[None]), dtype=torch.float32)
    feats = torch.rand(2, 1, 4, H // 8, W // 8)
    K = torch.tensor(cam.K, dtype=torch.float32).expand(2, 1, 3, 3)
    ov, m = project_to_overhead(feats, K, T.expand(2, 1, 4, 4), torch.tensor([1.65, 3.0]), S,
                                COV, (H, W))
    assert ov.shape == (2, 1, 4, S, S) and m.shape == (2, 1, 1, S, S)
    # a higher camera sees the ground at a given cell lower in the image: different sampling
    assert not torch.allclose(ov[0], ov[1])


def test_projection_differentiable(cam):
    T_world_cam = pose_enu(0, 0, 0, np.pi / 2) @ make_body_from_camera(0, 0, HEIGHT)
    T = torch.tensor(relative_camera_poses(T_world_cam[None]), dtype=torch.float32)[None]
    feats = torch.rand(1, 1, 4, H // 8, W // 8, requires_grad=True)
    K = torch.tensor(cam.K, dtype=torch.float32)[None, None]
    ov, m = project_to_overhead(feats, K, T, HEIGHT, S, COV, (H, W))
    ov.sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_ablation_projections_shapes():
    x = torch.rand(2, 3, 8, 16, 64)
    for proj in (ResizeProjection(S), UNetProjection(8, S)):
        ov, m = proj(x)
        assert ov.shape == (2, 3, 8, S, S) and m.shape == (2, 3, 1, S, S)
        assert torch.all(m == 1)


def test_invert_consistency(cam):
    # T_grid_cams must be camera->grid: a camera translated east sees the origin to its left
    T_world_cam = pose_enu(5.0, 0, 0, np.pi / 2) @ make_body_from_camera(0, 0, HEIGHT)
    Tg = relative_camera_poses(np.stack([pose_enu(0, 0, 0, np.pi / 2) @ make_body_from_camera(
        0, 0, HEIGHT), T_world_cam]))
    p = invert_pose(Tg[1]) @ [0.0, 10.0, -HEIGHT, 1.0]
    assert p[0] < 0  # left of camera 1 (image x to the right)
