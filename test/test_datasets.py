import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cvl_ros import kitti
from cvl_ros.datasets import DistanceAwareBatchSampler, KittiCVL, read_split_file
from cvl_ros.geo import GeoDatum
from cvl_ros.tiles import GeoMosaic, build_kitti_cvl_tiles

REAL_CALIB = Path(__file__).parent / "data" / "kitti_raw" / "2011_09_26"
DATUM = GeoDatum(49.015, 8.434, 110.0)
DATE = "2011_09_26"
TRAIN = f"{DATE}/{DATE}_drive_0001_sync"
TEST = f"{DATE}/{DATE}_drive_0002_sync"
N = 40  # frames per drive, 1 m apart


def _imu_poses(kind):
    T = np.tile(np.eye(4), (N, 1, 1))
    s = np.arange(N, dtype=np.float64)
    if kind == "east":  # along y = 3.3, heading east (yaw 0)
        T[:, 0, 3], T[:, 1, 3] = s - 20.0, 3.3
        yaw = 0.0
    else:  # along x = -4.2, heading north (yaw 90 deg)
        T[:, 0, 3], T[:, 1, 3] = -4.2, s - 20.0
        yaw = math.pi / 2
    T[:, 2, 3] = kitti.KITTI_IMU_HEIGHT_M
    T[:, :3, :3] = kitti.rpy_to_rotation(0.0, 0.0, yaw)
    return T


def _write_drive(root, key, T_enu_imu):
    d = root / "raw_data" / key
    stamps = 1317042145_000000000 + np.arange(N, dtype=np.int64) * 100_000_000
    kitti.write_oxts_dir(d, kitti.enu_poses_to_oxts(T_enu_imu, DATUM), stamps)
    kitti.write_timestamps(d / "image_02" / "timestamps.txt", stamps)
    img = np.zeros((375, 1242, 3), np.uint8)
    for i in range(N):
        img[:] = (i, 255 - i, 7)
        kitti.write_image(d / "image_02" / "data" / f"{i:010d}.png", img)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti_cvl")
    cal = root / "raw_data" / DATE
    cal.mkdir(parents=True)
    for name in ("calib_cam_to_cam.txt", "calib_imu_to_velo.txt", "calib_velo_to_cam.txt"):
        shutil.copy(REAL_CALIB / name, cal / name)
    _write_drive(root, TRAIN, _imu_poses("east"))
    _write_drive(root, TEST, _imu_poses("north"))
    rng = np.random.default_rng(0)
    mosaic = GeoMosaic(rng.integers(0, 256, (600, 600, 3), dtype=np.uint8), DATUM, 0.5,
                       -150.0, 150.0)
    mosaic.write(root / "mosaic.png")
    stats = build_kitti_cvl_tiles(mosaic, root, [TRAIN], [TEST], spacing_m=10.0, tile_px=128)
    return root, mosaic, stats


def _ds(root, split, **kw):
    kw.setdefault("ground_hw", (64, 256))
    kw.setdefault("sat_px", 32)
    kw.setdefault("coverage_m", 40.0)
    return KittiCVL(root, split, **kw)


def test_split_files_and_counts(tree):
    root, _, stats = tree
    assert stats["train"] == N and stats["test1"] == N and stats["test2"] == N
    e = read_split_file(root / "train_files.txt")[5]
    assert (e.date, e.drive, e.frame) == (DATE, f"{DATE}_drive_0001_sync", 5)
    ds1, ds2 = _ds(root, "test1"), _ds(root, "test2")
    assert len(ds1) == len(ds2) == N
    t1, t2 = ds1.tile_table(), ds2.tile_table()
    # Test-1: the queries' own tiles: x=-4.2 -> grid column 0 (camera at x=-4.2+0.25=-3.95);
    # y from -20+1.08 .. 19+1.08 -> grid rows -20..20 => 5 tiles
    assert len(t1) == 5
    assert {round(r.east) for r in t1} == {0} and {round(r.north) for r in t1} == \
        {-20, -10, 0, 10, 20}
    # Test-2: every tile within 10 m of the drive, distractors included
    assert len(t2) == stats["test_tiles"] > len(t1)
    assert {r.tile_id for r in t1} <= {r.tile_id for r in t2}
    assert all(r.path.is_file() and r.tile_id.startswith("test/") for r in t2)


def test_sample_shapes_and_geometry(tree):
    root, mosaic, _ = tree
    ds = _ds(root, "train")
    s = ds[15]
    assert s["images"].shape == (4, 3, 64, 256) and s["images"].dtype == torch.float32
    assert 0.0 <= float(s["images"].min()) and float(s["images"].max()) <= 1.0
    # frames t, t-3, t-6, t-9; image colour encodes the frame number
    assert s["frames"].tolist() == [15, 12, 9, 6]
    assert s["images"][1, 0, 0, 0].item() == pytest.approx(12 / 255, abs=1e-6)
    assert s["K"].shape == (4, 3, 3)
    assert s["K"][0, 0, 0].item() == pytest.approx(721.5377 * 256 / 1242, rel=1e-6)
    assert s["K"][0, 1, 1].item() == pytest.approx(721.5377 * 64 / 375, rel=1e-6)
    assert s["K"][0, 0, 2].item() == pytest.approx((609.5593 + 0.5) * 256 / 1242 - 0.5, rel=1e-6)
    T_imu_cam = kitti.kitti_T_imu_cam2(REAL_CALIB)
    assert s["camera_height_m"].item() == pytest.approx(0.93 + T_imu_cam[2, 3], abs=1e-5)
    assert s["camera_height_m"].item() == pytest.approx(1.659, abs=0.01)
    # heading east: grid frame is camera 0's optical centre; older frames lie 3, 6, 9 m west
    G = s["T_grid_cams"].numpy()
    assert np.allclose(G[:, :3, 3], [[0, 0, 0], [-3, 0, 0], [-6, 0, 0], [-9, 0, 0]], atol=2e-3)
    assert np.allclose(G[0, :3, :3], T_imu_cam[:3, :3], atol=1e-5)
    # by hand: camera = IMU (x=15-20=-5, y=3.3) + (1.0805, -0.2500) (yaw 0); tile = nearest
    # 10 m grid point (-0, 0) -> displacement (-3.9195, 3.0500)
    cam_e = -5.0 + T_imu_cam[0, 3]
    cam_n = 3.3 + T_imu_cam[1, 3]
    assert s["displacement_m"].numpy() == pytest.approx([cam_e - 0.0, cam_n - 0.0], abs=0.01)
    assert s["position_enu"].numpy() == pytest.approx([cam_e, cam_n], abs=0.01)
    assert s["tile_id"] == f"train_10mgap/{TRAIN}/0000000015.png"
    assert s["query_id"] == f"{TRAIN}/0000000015"
    # sat: the tile centre-cropped to 40 m and resampled to 32 px = the mosaic at that centre
    sat = (s["sat"].permute(1, 2, 0).numpy() * 255).round()
    ref = mosaic.crop(0.0, 0.0, 32, 40.0 / 32).astype(np.float64)
    assert s["sat"].shape == (3, 32, 32) and np.abs(sat - ref).max() <= 2


def test_test_drive_heading_north(tree):
    root, _, _ = tree
    s = _ds(root, "test1")[25]
    T_imu_cam = kitti.kitti_T_imu_cam2(REAL_CALIB)
    # heading north: body x = north, body y = west; camera offset (1.08 fwd, -0.25 left)
    cam_e = -4.2 - T_imu_cam[1, 3]
    cam_n = 5.0 + T_imu_cam[0, 3]
    assert s["displacement_m"].numpy() == pytest.approx([cam_e - 0.0, cam_n - 10.0], abs=0.01)
    G = s["T_grid_cams"].numpy()
    assert np.allclose(G[1, :3, 3], [0, -3, 0], atol=2e-3)
    assert s["yaw_rad"].item() == pytest.approx(math.pi / 2, abs=1e-6)


def test_sequence_clamp_and_distance_mode(tree):
    root, _, _ = tree
    ds = _ds(root, "train")
    assert ds.sequence_frames(ds.entries[2]) == [2, 0, 0, 0]
    dd = _ds(root, "train", frame_spacing_m=2.5)
    assert dd.sequence_frames(dd.entries[20]) == [20, 17, 15, 12]
    assert _ds(root, "train", seq_len=1)[3]["images"].shape[0] == 1


def test_collate_batch(tree):
    root, _, _ = tree
    ds = _ds(root, "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    b = next(iter(loader))
    assert b["images"].shape == (2, 4, 3, 64, 256) and len(b["tile_id"]) == 2


def test_distance_aware_sampler():
    rng = np.random.default_rng(3)
    pos = np.concatenate([np.c_[np.arange(300.0), np.zeros(300)],
                          np.c_[rng.uniform(0, 500, 200), rng.uniform(0, 500, 200)]])
    sampler = DistanceAwareBatchSampler(pos, batch_size=8, min_separation_m=22.0, seed=1)
    batches = list(sampler)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(pos)))
    assert all(len(b) <= 8 for b in batches)
    assert sum(len(b) == 8 for b in batches) >= 0.8 * len(batches)
    for b in batches:
        assert DistanceAwareBatchSampler.min_pairwise_separation(pos, b) >= 22.0
    assert list(sampler) != batches  # next epoch reshuffles


def test_sampler_with_dataset_positions(tree):
    root, _, _ = tree
    ds = _ds(root, "train")
    pos = ds.positions_enu()
    assert pos.shape == (N, 2)
    batches = list(DistanceAwareBatchSampler(pos, 4, 22.0))
    assert all(DistanceAwareBatchSampler.min_pairwise_separation(pos, b) >= 22 for b in batches)


def test_missing_files_are_clear_errors(tree, tmp_path):
    root, _, _ = tree
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    img = copy / "raw_data" / TRAIN / "image_02" / "data" / "0000000009.png"
    img.unlink()
    with pytest.raises(FileNotFoundError, match="0000000009.png"):
        _ds(copy, "train")
    ds = _ds(copy, "train", validate=False)
    with pytest.raises(FileNotFoundError, match="ground image.*0000000009.png"):
        ds[12]
    tile = next((copy / "satmap" / "test").rglob("*.png"))
    tile.unlink()
    with pytest.raises(FileNotFoundError, match="test tile|satellite tile"):
        _ds(copy, "test1")
    (copy / "test2_files.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test2_files.txt"):
        _ds(copy, "test2")
    (copy / "raw_data" / DATE / "calib_velo_to_cam.txt").unlink()
    with pytest.raises(FileNotFoundError, match="calib_velo_to_cam.txt"):
        _ds(copy, "train", validate=False)[20]
