"""PCSF with per-frame Q/K/V canvases (``pcsf_frame_canvas``): geometry, attention, caching.

Each check compares against a slow, obvious formulation: ``F.grid_sample`` for the canvas
translation, Q/K/V computed directly on the grid for integer-cell offsets, and a per-cell,
per-head Python loop for the attention of Eq. 2-3.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from _references import canvases_to_grid_reference

from cvl_ros.benchmark import window_geometry
from cvl_ros.model.cvlnet import CVLNet, CVLNetConfig
from cvl_ros.model.projection import project_to_overhead


def _model(**kw) -> CVLNet:
    torch.manual_seed(0)
    cfg = dict(pretrained=False, ground_hw=(32, 128), sat_px=64, grid_cells=8, coverage_m=40.0,
               feature_dim=8, pcsf_layers=1, pcsf_frame_canvas=True, search_cells=2)
    cfg.update(kw)
    return CVLNet(CVLNetConfig(**cfg), load_pretrained=False).eval()


def test_config_needs_one_layer_pcsf_and_gvp():
    for bad in (dict(pcsf_layers=2), dict(fusion="attn_conv2d"), dict(projection="unet")):
        with pytest.raises(ValueError, match="pcsf_frame_canvas"):
            CVLNetConfig(**{**dict(pcsf_layers=1, pcsf_frame_canvas=True), **bad})


def test_translation_equals_grid_sample_inside_beyond_and_far_outside_the_canvas():
    m = _model()
    torch.manual_seed(1)
    S, Sc = m.config.grid_cells, m.config.canvas_cells
    states = torch.rand(2, 5, 3 * 8 + 1, Sc, Sc)
    states[:, :, -1] = (states[:, :, -1] > 0.3).float()
    cell = m.config.cell_m
    east = torch.tensor([[0.0, 1.3 * cell, -2.0 * cell, 7.9 * cell, 500.0],
                         [-0.4, 3.5 * cell, S * cell, -S * cell - 0.2, -1e4]])
    north = torch.tensor([[0.0, -0.7 * cell, 2.0 * cell, -6.2 * cell, 3.0],
                          [0.25, 1.0, -S * cell, 0.5 * S * cell, 1e4]])
    fast = m._canvases_to_grid(states, east, north)
    slow = canvases_to_grid_reference(m, states, east, north)
    assert fast.shape == (2, 5, 25, S, S)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert fast[0, 4].abs().max() == 0 and fast[1, 4].abs().max() == 0  # far outside: zeros


def test_integer_cell_offsets_give_the_qkv_computed_on_the_grid():
    """For a frame displaced by whole cells, its canvas Q/K/V translated into the newest grid
    equal Q/K/V computed on that grid directly at the cells the frame sees, away from the grid
    border (where the grid's zero padding differs from the canvas's real content)."""
    m = _model(grid_cells=16, coverage_m=80.0)
    cfg = m.config
    S, C, cell = cfg.grid_cells, cfg.feature_dim, cfg.cell_m
    n = 3
    K, T = window_geometry(m, n, spacing_m=cell)
    T[0, 2, :2, 3] = torch.tensor([-2.0 * cell, 1.0 * cell])  # one more, off the road
    torch.manual_seed(2)
    feats = torch.randn(1, n, C, 4, 16)
    with torch.no_grad():
        states = m.frame_states(feats, K, T)
        qkvm = m._canvases_to_grid(states, T[..., 0, 3], T[..., 1, 3])
        x, mask = project_to_overhead(feats, K, T, cfg.camera_height_m, S, cfg.coverage_m,
                                      cfg.ground_hw)
        for j in range(n):
            q, k, v = m.fusion.qkv[0]((x[0, j:j + 1] * mask[0, j:j + 1]))
            direct = torch.cat([q, k, v], 1)[0]
            inner = torch.zeros(S, S, dtype=torch.bool)
            inner[2:S - 2, 2:S - 2] = True
            cells = inner & (mask[0, j, 0] > 0)
            assert cells.sum() >= 10
            torch.testing.assert_close(qkvm[0, j, :3 * C][:, cells], direct[:, cells],
                                       atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(qkvm[0, j, 3 * C], mask[0, j, 0])


def _slow_attention(qkvm: torch.Tensor, heads: int) -> torch.Tensor:
    """Eq. 2-3 cell by cell: M_ij = softmax_j(Q_i.K_j/sqrt(d)) over valid j, and the mean over
    valid i of sum_j M_ij V_j; cells no frame sees give 0."""
    B, N, Cs, S, _ = qkvm.shape
    C = (Cs - 1) // 3
    d = C // heads
    out = torch.zeros(B, C, S, S, dtype=torch.float64)
    for b in range(B):
        for r in range(S):
            for c in range(S):
                valid = [j for j in range(N) if qkvm[b, j, -1, r, c] > 0.5]
                if not valid:
                    continue
                for hd in range(heads):
                    sl = slice(hd * d, (hd + 1) * d)
                    acc = torch.zeros(d, dtype=torch.float64)
                    for i in valid:
                        qi = qkvm[b, i, :C][sl, r, c].double()
                        logits = [float(qi @ qkvm[b, j, C:2 * C][sl, r, c].double())
                                  / math.sqrt(d) for j in valid]
                        mx = max(logits)
                        w = [math.exp(v - mx) for v in logits]
                        z = sum(w)
                        for wj, j in zip(w, valid):
                            acc += wj / z * qkvm[b, j, 2 * C:3 * C][sl, r, c].double()
                    out[b, sl, r, c] = acc / len(valid)
    return out


def test_fused_attention_equals_the_per_cell_loop():
    m = _model()
    cfg = m.config
    n = 4
    K, T = window_geometry(m, n, spacing_m=3.3)
    torch.manual_seed(3)
    feats = torch.randn(2, n, cfg.feature_dim, 4, 16)
    K2, T2 = K.expand(2, -1, -1, -1).clone(), T.expand(2, -1, -1, -1).clone()
    T2[1, :, 1, 3] += 4.0  # the second sample's window is offset sideways
    T2[1, 0, :3, 3] = 0.0
    with torch.no_grad():
        states = m.frame_states(feats, K2, T2)
        qkvm = m._canvases_to_grid(states, T2[..., 0, 3], T2[..., 1, 3])
        fused, fmask = m.fusion.fuse_qkv(qkvm)
    slow = _slow_attention(qkvm, cfg.pcsf_heads)
    torch.testing.assert_close(fused.double(), slow, atol=1e-5, rtol=1e-4)
    assert torch.equal(fmask[:, 0] > 0, (qkvm[:, :, -1] > 0.5).any(1))
    assert fmask.sum() > 10


def test_project_and_fuse_is_states_then_fusion_and_trains():
    m = _model()
    n = 3
    K, T = window_geometry(m, n)
    torch.manual_seed(4)
    feats = torch.randn(1, n, m.config.feature_dim, 4, 16, requires_grad=True)
    g = m.project_and_fuse(feats, K, T)
    g2 = m.fuse_frame_states(m.frame_states(feats, K, T), K, T)
    torch.testing.assert_close(g.features, g2.features)
    with torch.no_grad():  # one window given as a list of per-frame states (no stacking)
        states = m.frame_states(feats, K, T)
        g3 = m.fuse_frame_states(list(states[0]), K, T)
        torch.testing.assert_close(g3.features, g2.features)
        plain = _model(pcsf_frame_canvas=False, pcsf_layers=2)
        torch.testing.assert_close(plain.fuse_frame_states(list(feats[0]), K, T).features,
                                   plain.project_and_fuse(feats, K, T).features)
    with pytest.raises(ValueError, match="at least one frame"):
        m.fuse_frame_states([], K, T)
    g.features.square().sum().backward()
    assert feats.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in m.fusion.qkv[0].parameters())


def test_model_hash_omits_the_new_field_at_its_default():
    """A checkpoint written before ``pcsf_frame_canvas`` (and the later displacement-loss
    fields) existed keeps its hash."""
    m = CVLNet(CVLNetConfig(pretrained=False, ground_hw=(32, 128), sat_px=64, grid_cells=8,
                            feature_dim=8), load_pretrained=False)
    old_cfg = m.config.to_dict()
    for name in ("pcsf_frame_canvas", "displacement_loss", "displacement_temperature"):
        del old_cfg[name]
    h = hashlib.sha256()
    h.update(json.dumps(old_cfg, sort_keys=True).encode())
    for k, v in sorted(m.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    assert m.model_hash() == h.hexdigest()[:16]
    assert _model().model_hash() != _model(pcsf_frame_canvas=False).model_hash()


def test_localizer_caches_canvases_and_refreshes_them_when_the_heading_turns(tmp_path):
    from _localizer_fakes import CAMERA, T_BODY_CAM, FakeDB, image

    from cvl_ros.database import TileDatabase
    from cvl_ros.localizer import Frame, Localizer, LocalizerConfig

    m = _model(grid_cells=16, coverage_m=50.0)
    fdb = FakeDB(spacing_m=20.0, east=(-40, 80), north=(-20, 20))
    rng = np.random.default_rng(0)
    tiles = [(tid, float(ll[0]), float(ll[1]), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
             for tid, ll in zip(fdb.tile_ids, fdb.centers_latlon)]
    db = TileDatabase.build(m, tiles, tmp_path / "db", fdb.datum)
    loc = Localizer(m, db, LocalizerConfig(window_length=3,
                                           frame_state_rotation_tolerance_rad=0.01))
    calls = []
    real = m.frame_states
    m.frame_states = lambda f, *a, **k: calls.append(f.shape[1]) or real(f, *a, **k)

    def feed(i, heading):
        T = np.eye(4)
        T[0, 3] = 1.5 * i
        return loc.add_frame(Frame(i * 100_000_000, image(i), CAMERA, T, heading, T_BODY_CAM))

    for i in range(4):
        assert feed(i, 0.0) is not None
    assert calls == [1, 1, 1, 1]  # each keyframe's canvas once
    # the cached canvases are what a fresh computation for the current window gives
    kfs = loc.window.frames()
    T_np = loc.window.relative_poses(loc._yaw_offset)
    fresh = real(torch.stack([k.features for k in kfs])[None],
                 torch.from_numpy(np.stack([k.K_net for k in kfs])).float()[None],
                 torch.from_numpy(T_np).float()[None], loc._cam_h)[0]
    torch.testing.assert_close(torch.stack([k.state for k in kfs]), fresh)
    feed(4, 0.005)  # turned less than the tolerance: only the new frame
    assert calls[-1] == 1
    feed(5, 0.005 + 0.02)  # turned by more: the new frame and the two cached ones
    assert calls[-1] == 3 and loc.state_refreshes == sum(calls)


def test_bench_with_frame_canvas_reports_it(tmp_path):
    from cvl_ros.cli import bench

    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--json", str(out), "--ground-hw", "32x128",
                       "--sat-px", "64", "--grid-cells", "8", "--reps", "2", "--windows", "1,4",
                       "--db-sizes", "100", "--threads", "1", "--pcsf-layers", "1",
                       "--frame-canvas"]) == 0
    res = json.loads(out.read_text())
    assert res["pcsf_frame_canvas"] is True and res["pcsf_layers"] == 1
    assert set(res["update_ms"]) == {"1", "4"} and all(v > 0 for v in res["update_ms"].values())
    assert bench.main(["--json", str(out), "--ground-hw", "32x128", "--sat-px", "64",
                       "--grid-cells", "8", "--frame-canvas"]) == 2  # needs --pcsf-layers 1
