import json

import numpy as np
import pytest

from cvl_ros.geo import GeoDatum
from cvl_ros.kitti import read_image
from cvl_ros.tiles import (
    GeoMosaic,
    build_tiles,
    format_latlon,
    parse_tile_file_name,
    read_tiles_meta,
    resample_north_up,
    tile_file_name,
)

DATUM = GeoDatum(49.015, 8.434, 115.0)


def _mosaic(size=200, m=0.5, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return GeoMosaic(img, DATUM, m, -size * m / 2, size * m / 2)


def test_mosaic_write_read(tmp_path):
    mo = _mosaic()
    mo.write(tmp_path / "mosaic.png")
    side = json.loads((tmp_path / "mosaic.geo.json").read_text())
    assert side["m_per_px"] == 0.5 and side["nw_corner_enu_m"] == [-50.0, 50.0]
    back = GeoMosaic.read(tmp_path / "mosaic.png")
    assert np.array_equal(back.image, mo.image) and back.datum == DATUM
    assert (back.m_per_px, back.nw_east_m, back.nw_north_m) == (0.5, -50.0, 50.0)
    (tmp_path / "other.png").write_bytes((tmp_path / "mosaic.png").read_bytes())
    with pytest.raises(FileNotFoundError, match="other.geo.json"):
        GeoMosaic.read(tmp_path / "other.png")


def test_pixel_enu_convention():
    mo = _mosaic()
    # pixel (0,0) centre is half a pixel south-east of the north-west corner
    assert mo.pixel_to_enu(0, 0) == pytest.approx((-49.75, 49.75))
    assert mo.enu_to_pixel(-49.75, 49.75) == pytest.approx((0.0, 0.0))
    assert mo.extent_enu == (-50.0, 50.0, -50.0, 50.0)


def test_crop_native_equals_slice():
    mo = _mosaic()
    # pixel (100, 80) centre: east = -50 + 80.5*0.5, north = 50 - 100.5*0.5
    crop = mo.crop(-9.75, -0.25, 5)
    assert np.array_equal(crop, mo.image[98:103, 78:83])


def test_crop_orientation_marker():
    img = np.zeros((200, 200, 3), np.uint8)
    mo = GeoMosaic(img, DATUM, 0.5, -50.0, 50.0)
    r, c = mo.enu_to_pixel(10.25, 5.25)  # a point 10 m east, 5 m north of the origin (approx.)
    img[int(round(r)), int(round(c))] = 255
    crop = mo.crop(0.25, 0.25, 101)  # centre on a pixel centre, native resolution
    rr, cc = np.argwhere(crop[..., 0] == 255)[0]
    assert (rr, cc) == (50 - 10, 50 + 20)  # north is up (smaller row), east is right


def test_crop_resampled_linear_ramp_and_border():
    cols = np.tile(np.arange(400, dtype=np.float64), (400, 1))
    img = np.repeat((cols / 2)[..., None], 3, axis=2).astype(np.uint8)
    out = resample_north_up(img, (199.5, 199.5), 0.25, 41, 1.0)  # shrink by 4
    centre = out[20, 20, 0]
    assert abs(int(centre) - 99.75) <= 1
    # 1 output pixel = 4 input pixels = 2 grey levels
    assert abs(int(out[20, 30, 0]) - int(out[20, 10, 0]) - 40) <= 2
    far = resample_north_up(img, (-1000, -1000), 0.25, 8)
    assert far.shape == (8, 8, 3) and far.max() == 0


def test_tile_names_round_trip():
    lat, lon, _ = DATUM.to_geodetic(1234.5, -987.6)
    name = tile_file_name(lat, lon)
    la, lo = parse_tile_file_name("satmap/test/x/" + name)
    e, n, _ = DATUM.to_enu(la, lo, DATUM.alt_m)
    assert abs(e - 1234.5) < 1e-4 and abs(n + 987.6) < 1e-4
    assert parse_tile_file_name("-33.5_-70.25.png") == (-33.5, -70.25)
    assert format_latlon(1.0) == "1.0000000000"


def test_build_tiles_layout(tmp_path):
    mo = _mosaic(size=400, m=0.5)  # 200 m x 200 m
    t = np.arange(0, 60, 1.0)
    traj = {
        "2011_09_26/2011_09_26_drive_0001_sync": (np.arange(len(t)), np.c_[t - 30, 0 * t + 3]),
        "2011_09_26/2011_09_26_drive_0002_sync": (np.arange(len(t)), np.c_[0 * t - 4, t - 30]),
    }
    stats = build_tiles(mo, traj, tmp_path, ["2011_09_26/2011_09_26_drive_0001_sync"],
                        ["2011_09_26/2011_09_26_drive_0002_sync"], spacing_m=10.0, tile_px=64)
    assert stats["train"] == 60 and stats["test1"] == 60 and stats["test2"] == 60
    lines = (tmp_path / "train_files.txt").read_text().splitlines()
    assert lines[0].startswith("2011_09_26/2011_09_26_drive_0001_sync/0000000000.png ")
    for ln in lines:
        rel, lat, lon = ln.split()
        f = tmp_path / "satmap" / "train_10mgap" / rel
        assert f.is_file()
        e, n, _ = DATUM.to_enu(float(lat), float(lon), DATUM.alt_m)
        frame = int(rel.split("/")[-1][:-4])
        # tile centre is the nearest 10 m grid point to the camera: within +-5 m
        assert abs(e - (t[frame] - 30)) <= 5.0 + 1e-4 and abs(n - 3) <= 5.0 + 1e-4
        assert abs(e / 10 - round(e / 10)) < 1e-5 and abs(n / 10 - round(n / 10)) < 1e-5
    # tile content is the mosaic cut at the centre
    rel, lat, lon = lines[17].split()
    e, n, _ = DATUM.to_enu(float(lat), float(lon), DATUM.alt_m)
    tile = read_image(tmp_path / "satmap" / "train_10mgap" / rel)
    assert tile.shape == (64, 64, 3)
    assert np.abs(tile.astype(int) - mo.crop(e, n, 64).astype(int)).max() <= 1
    # test tiles: every 10 m grid point within 10 m of the drive (x in -10..0, y in -30..30)
    test_dir = tmp_path / "satmap" / "test" / "2011_09_26_drive_0002_sync"
    cents = set()
    for p in test_dir.glob("*.png"):
        e, n, _ = DATUM.to_enu(*parse_tile_file_name(p.name), DATUM.alt_m)
        cents.add((round(e), round(n)))
    expected = {(x, y) for x in range(-20, 20, 10) for y in range(-50, 50, 10)
                if min(np.hypot(x + 4, y - (t - 30))) <= 10}
    assert cents == expected and stats["test_tiles"] == len(expected)
    # every test1 line's tile exists under its drive
    for ln in (tmp_path / "test1_files.txt").read_text().splitlines():
        rel, lat, lon = ln.split()
        drive = rel.split("/")[1]
        assert (tmp_path / "satmap" / "test" / drive / f"{lat}_{lon}.png").is_file()
    # frames sharing a grid point share one file (hard links)
    d1 = tmp_path / "satmap" / "train_10mgap" / "2011_09_26" / "2011_09_26_drive_0001_sync"
    assert (d1 / "0000000001.png").stat().st_ino == (d1 / "0000000002.png").stat().st_ino
    assert (d1 / "0000000001.png").stat().st_ino != (d1 / "0000000030.png").stat().st_ino
    meta = read_tiles_meta(tmp_path / "satmap")
    assert meta["m_per_px"] == 0.5 and meta["tile_px"] == 64 and meta["spacing_m"] == 10.0
    assert stats["partial_tiles"] == 0


def test_build_tiles_resampled(tmp_path):
    mo = _mosaic(size=400, m=0.25)
    traj = {"d/d_drive_0001_sync": (np.arange(3), np.array([[0.0, 0], [1, 0], [2, 0]]))}
    stats = build_tiles(mo, traj, tmp_path, ["d/d_drive_0001_sync"], [], tile_px=32,
                        m_per_px=1.0)
    assert stats["m_per_px"] == 1.0 and stats["train"] == 3 and stats["test1"] == 0
    assert read_image(next((tmp_path / "satmap" / "train_10mgap").rglob("*.png"))).shape == \
        (32, 32, 3)
