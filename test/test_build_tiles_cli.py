"""cvl-build-tiles: KITTI-CVL tiles and split files from a mosaic (.geo.json or world file)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvl_ros import kitti
from cvl_ros.cli.build_tiles import main
from cvl_ros.geo import EARTH_RADIUS_M, GeoDatum, webmercator_m_per_px
from cvl_ros.tiles import (
    GeoMosaic,
    WebMercatorMosaic,
    build_kitti_cvl_tiles,
    parse_tile_file_name,
    read_mosaic,
    read_tiles_meta,
    world_file_candidates,
    write_world_file,
)

REAL_CALIB = Path(__file__).parent / "data" / "kitti_raw" / "2011_09_26"
DATUM = GeoDatum(49.015, 8.434, 115.0)
DATE = "2011_09_26"
TRAIN, TEST, FAR = (f"{DATE}_drive_{k:04d}_sync" for k in (1, 2, 3))
N = 30  # frames per drive, 1 m apart
TILE = ["--spacing-m", "10", "--tile-px", "48"]


def _imu_poses(x, y, yaw):
    T = np.tile(np.eye(4), (len(x), 1, 1))
    T[:, 0, 3], T[:, 1, 3], T[:, 2, 3] = x, y, kitti.KITTI_IMU_HEIGHT_M
    T[:, :3, :3] = kitti.rpy_to_rotation(0.0, 0.0, yaw)
    return T


def _mercator(lat_deg, lon_deg):
    """EPSG:3857 (x, y) of WGS84 lat/lon, written out here independently of cvl_ros.tiles."""
    lat, lon = np.radians(lat_deg), np.radians(lon_deg)
    return EARTH_RADIUS_M * lon, EARTH_RADIUS_M * np.log(np.tan(np.pi / 4 + lat / 2))


def _world_like(mo: GeoMosaic):
    """World file (A, D, B, E, C, F) of a GeoMosaic's image through its corner pixel centres."""
    h, w = mo.height_px, mo.width_px
    (e0, e1), (n0, n1) = mo.pixel_to_enu([0, h - 1], [0, w - 1])
    lat, lon, _ = DATUM.to_geodetic(np.array([e0, e1]), np.array([n0, n1]), 0.0)
    x, y = _mercator(lat, lon)
    return ((x[1] - x[0]) / (w - 1), 0.0, 0.0, (y[1] - y[0]) / (h - 1), x[0], y[0])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Raw root (3 drives: train east, test north, one 1 km away) + a smooth 150 m mosaic."""
    base = tmp_path_factory.mktemp("build_tiles")
    raw = base / "kitti"
    cal = raw / "raw_data" / DATE
    cal.mkdir(parents=True)
    for name in ("calib_cam_to_cam.txt", "calib_imu_to_velo.txt", "calib_velo_to_cam.txt"):
        shutil.copy(REAL_CALIB / name, cal / name)
    s = np.arange(N, dtype=np.float64)
    for drive, T in ((TRAIN, _imu_poses(s - 15.0, 3.3 + 0 * s, 0.0)),
                     (TEST, _imu_poses(-4.2 + 0 * s, s - 15.0, math.pi / 2)),
                     (FAR, _imu_poses(1000.0 + s, 0 * s, 0.0))):
        stamps = 1317042145_000000000 + np.arange(N, dtype=np.int64) * 100_000_000
        kitti.write_oxts_dir(cal / drive, kitti.enu_poses_to_oxts(T, DATUM), stamps)
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8), (0, 0), 2.5)
    img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)
    mosaic = GeoMosaic(img, DATUM, 0.5, -75.0, 75.0)
    mosaic.write(base / "geo" / "mosaic.png")
    out = base / "out"
    rc = main(["--raw", str(raw), "--mosaic", str(base / "geo" / "mosaic.png"), "--out",
               str(out), "--train-drives", TRAIN, "--test-drives", TEST, *TILE, "--quiet"])
    assert rc == 0
    return {"base": base, "raw": raw, "mosaic": mosaic, "png": base / "geo" / "mosaic.png",
            "out": out}


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("tiles.json", ".cvl-output.json")
            and "raw_data" not in p.parts}


def test_writes_kitti_cvl_layout_like_the_library(world, tmp_path):
    out = world["out"]
    train = (out / "train_files.txt").read_text().splitlines()
    test1 = (out / "test1_files.txt").read_text().splitlines()
    assert len(train) == N and len(test1) == N
    assert (out / "test2_files.txt").read_text().splitlines() == test1
    rel, lat, lon = train[0].split()
    assert rel == f"{DATE}/{TRAIN}/0000000000.png"
    assert (out / "satmap" / "train_10mgap" / rel).is_file()
    for ln in test1:
        rel, lat, lon = ln.split()
        assert rel.startswith(f"{DATE}/{TEST}/")
        assert (out / "satmap" / "test" / TEST / f"{lat}_{lon}.png").is_file()
    tiles = sorted((out / "satmap" / "test" / TEST).glob("*.png"))
    assert len(tiles) > 5 and kitti.read_image(tiles[0]).shape == (48, 48, 3)
    for p in tiles:  # tile centres on the 10 m grid about the datum
        e, n, _ = DATUM.to_enu(*parse_tile_file_name(p.name), DATUM.alt_m)
        assert abs(e / 10 - round(e / 10)) < 1e-6 and abs(n / 10 - round(n / 10)) < 1e-6
    meta = read_tiles_meta(out / "satmap")
    assert (meta["m_per_px"], meta["tile_px"], meta["spacing_m"]) == (0.5, 48, 10.0)
    assert meta["source"]["georef"] == "geo.json"
    # the library on a copy of the raw root writes the same bytes
    ref = tmp_path / "ref"
    shutil.copytree(world["raw"], ref)
    build_kitti_cvl_tiles(GeoMosaic.read(world["png"]), ref, [f"{DATE}/{TRAIN}"],
                          [f"{DATE}/{TEST}"], spacing_m=10.0, tile_px=48)
    a, b = _files(out), _files(ref)
    assert a.keys() == b.keys() and len(a) > N
    assert [k for k in a if a[k] != b[k]] == []


def _shift_px(a, b):
    (dx, dy), _ = cv2.phaseCorrelate(a[..., 1].astype(np.float64), b[..., 1].astype(np.float64))
    return math.hypot(dx, dy)


def test_world_file_gives_the_same_tiles(world, tmp_path, capsys):
    wdir = tmp_path / "wf"
    wdir.mkdir()
    shutil.copy(world["png"], wdir / "mosaic.png")
    write_world_file(wdir / "mosaic.pgw", _world_like(world["mosaic"]))
    d = DATUM
    out = tmp_path / "out"
    rc = main(["--raw", str(world["raw"]), "--mosaic", str(wdir / "mosaic.png"), "--out",
               str(out), "--train-drives", TRAIN, "--test-drives", TEST, *TILE, "--quiet",
               "--datum", f"{d.lat_deg!r},{d.lon_deg!r},{d.alt_m!r}"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["train"] == N
    ref = _files(world["out"])
    got = _files(out)
    assert got.keys() == ref.keys()  # same datum -> same grid -> same names and split files
    for k in ref:
        if k.endswith(".txt"):
            assert got[k] == ref[k]
            continue
        a = cv2.imdecode(np.frombuffer(ref[k], np.uint8), cv2.IMREAD_COLOR)
        b = cv2.imdecode(np.frombuffer(got[k], np.uint8), cv2.IMREAD_COLOR)
        assert _shift_px(a, b) < 0.25, k  # within a (quarter) pixel
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.5, k
    meta = read_tiles_meta(out / "satmap")
    assert meta["source"]["georef"].startswith("world_file")
    assert meta["m_per_px"] == pytest.approx(0.5, rel=1e-6)


def test_world_file_default_datum_and_progress(world, tmp_path, capsys):
    wdir = tmp_path / "wf"
    wdir.mkdir()
    shutil.copy(world["png"], wdir / "mosaic.jpg.png")  # odd name: world file by extension
    write_world_file(wdir / "mosaic.jpg.wld", _world_like(world["mosaic"]))
    rc = main(["--raw", str(world["raw"] / "raw_data"), "--mosaic",
               str(wdir / "mosaic.jpg.png"), "--out", str(tmp_path / "out"),
               "--test-drives", TEST, *TILE])
    assert rc == 0
    err = capsys.readouterr().err
    assert "tile" in err and "ln -s" in err  # tqdm bar, and the raw_data hint
    meta = read_tiles_meta(tmp_path / "out" / "satmap")
    # default datum: the image centre, which is DATUM here (to the mm), altitude 0
    assert meta["datum"]["lat_deg"] == pytest.approx(DATUM.lat_deg, abs=1e-7)
    assert meta["datum"]["lon_deg"] == pytest.approx(DATUM.lon_deg, abs=1e-7)
    assert meta["datum"]["alt_m"] == 0.0
    assert (tmp_path / "out" / "train_files.txt").read_text() == ""
    assert len((tmp_path / "out" / "test1_files.txt").read_text().splitlines()) == N


def _blob_centre(img, rc, r=7):
    r0, c0 = int(round(rc[0])), int(round(rc[1]))
    w = img[r0 - r:r0 + r + 1, c0 - r:c0 + r + 1].astype(np.float64)
    rr, cc = np.mgrid[-r:r + 1, -r:r + 1]
    return r0 + (w * rr).sum() / w.sum(), c0 + (w * cc).sum() / w.sum()


def test_webmercator_geometry_on_the_ground():
    """A z18 scale-2 style export (square mercator pixels): ground metres come out right on
    both axes (EPSG:3857's north-south and east-west scales differ by 0.29 % here)."""
    A = 156543.03392 / 2**18 / 2
    x0, y0 = _mercator(DATUM.lat_deg, DATUM.lon_deg)
    size = 1200
    C, F = x0 - A * (size - 1) / 2, y0 + A * (size - 1) / 2
    marks = [(0.0, 0.0), (60.0, 0.0), (0.0, 60.0), (-45.0, -30.0)]  # ENU (m)
    img = np.zeros((size, size), np.float64)
    rr, cc = np.mgrid[0:size, 0:size]
    for e, n in marks:
        lat, lon, _ = DATUM.to_geodetic(e, n, -(e * e + n * n) / (2 * EARTH_RADIUS_M))
        x, y = _mercator(lat, lon)
        col, row = (x - C) / A, (F - y) / A
        img += 250 * np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / (2 * 2.0**2))
    rgb = np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    mo = WebMercatorMosaic(rgb, (A, 0.0, 0.0, -A, C, F), DATUM)
    assert mo.m_per_px == pytest.approx(webmercator_m_per_px(DATUM.lat_deg, 18, 2), rel=3e-3)
    m = 0.25
    tile = mo.crop(0.0, 0.0, 601, m)
    for e, n in marks:
        expect = (300 - n / m, 300 + e / m)
        got = _blob_centre(tile[..., 0], expect)
        assert np.allclose(got, expect, atol=0.08), (e, n, got, expect)
    # a tile away from the datum, and pixel <-> ENU round trips
    tile = mo.crop(60.0, 0.0, 101, m)
    assert np.allclose(_blob_centre(tile[..., 0], (50, 50)), (50, 50), atol=0.08)
    r, c = mo.enu_to_pixel(-45.0, -30.0)
    assert np.allclose(mo.pixel_to_enu(r, c), (-45.0, -30.0), atol=1e-6)
    e0, e1, n0, n1 = mo.extent_enu
    assert mo.contains((e0 + e1) / 2, (n0 + n1) / 2, min(e1 - e0, n1 - n0) / 2 - 0.01)
    assert not mo.contains(e1 + 0.5, (n0 + n1) / 2)


def test_world_file_lookup_and_read(world, tmp_path):
    names = [p.name for p in world_file_candidates(tmp_path / "m.png")]
    assert names[::2] == ["m.pgw", "m.pngw", "m.wld"]
    assert [p.name for p in world_file_candidates("a.jpg")][::2] == ["a.jgw", "a.jpgw", "a.wld"]
    assert world_file_candidates("a.tif")[0].name == "a.tfw"
    # .geo.json wins over a world file beside it; --georef picks explicitly
    shutil.copy(world["png"], tmp_path / "m.png")
    shutil.copy(world["png"].with_name("mosaic.geo.json"), tmp_path / "m.geo.json")
    write_world_file(tmp_path / "m.pgw", _world_like(world["mosaic"]))
    assert type(read_mosaic(tmp_path / "m.png")) is GeoMosaic
    assert type(read_mosaic(tmp_path / "m.png", tmp_path / "m.pgw")) is WebMercatorMosaic


def _err(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("cvl-build-tiles: error: "), err
    return err


def test_input_errors(world, tmp_path, capsys):
    raw, png = str(world["raw"]), str(world["png"])
    out = str(tmp_path / "out")
    ok = ["--raw", raw, "--mosaic", png, "--out", out, *TILE, "--quiet"]
    assert "mosaic image not found" in _err(capsys, [*ok, "--mosaic", str(tmp_path / "x.png"),
                                                     "--train-drives", TRAIN])
    bare = tmp_path / "bare.png"
    shutil.copy(png, bare)
    err = _err(capsys, [*ok, "--mosaic", str(bare), "--train-drives", TRAIN])
    assert "no geo-reference found" in err and "bare.geo.json" in err and "bare.pgw" in err
    err = _err(capsys, [*ok, "--train-drives", f"{TRAIN},{DATE}_drive_0099_sync"])
    assert "drive '2011_09_26_drive_0099_sync' not found" in err
    err = _err(capsys, [*ok, "--test-drives", FAR])
    assert "lie outside the mosaic" in err and f"{DATE}/{FAR}" in err and "30 of 30" in err
    assert not Path(out).exists()  # nothing written
    assert "both a training and a test" in _err(capsys, [*ok, "--train-drives", TRAIN,
                                                        "--test-drives", f"{DATE}/{TRAIN}"])
    assert "no drives" in _err(capsys, ok)
    assert "KITTI raw root not found" in _err(capsys, [*ok, "--raw", str(tmp_path / "none"),
                                                       "--train-drives", TRAIN])
    assert "world file" in _err(capsys, [*ok, "--train-drives", TRAIN, "--datum", "49,8"])
    # world files that are not north-up EPSG:3857
    for world_vals, msg in (((0.5, 0.01, 0.01, -0.5, 0.0, 0.0), "only north-up"),
                            ((1e-6, 0.0, 0.0, -1e-6, 8.43, 49.0), "look like degrees"),
                            ((0.5, 0.0, 0.0, 0.5, 0.0, 0.0), "north-up image")):
        write_world_file(bare.with_suffix(".pgw"), world_vals)
        assert msg in _err(capsys, [*ok, "--mosaic", str(bare), "--train-drives", TRAIN])
    bare.with_suffix(".pgw").write_text("0.5\n0\n0\n-0.5\n0\n")
    assert "6 lines" in _err(capsys, [*ok, "--mosaic", str(bare), "--train-drives", TRAIN])
    with pytest.raises(SystemExit) as exc:
        main([*ok, "--train-drives", TRAIN, "--spacing-m", "0"])
    assert exc.value.code == 2 and "must be >= 0.1 m" in capsys.readouterr().err


def test_existing_tiles_need_overwrite(world, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--raw", str(world["raw"]), "--mosaic", str(world["png"]), "--out", str(out),
            "--test-drives", TEST, *TILE, "--quiet"]
    assert main([*argv, "--spacing-m", "7"]) == 0  # an earlier run on another grid
    capsys.readouterr()
    stale = sorted((out / "satmap" / "test" / TEST).glob("*.png"))
    assert "already holds" in _err(capsys, argv)
    assert all(p.exists() for p in stale)
    capsys.readouterr()
    assert main([*argv, "--overwrite"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # only this run's tiles remain: stale 7 m tiles would become Test-2 distractors
    assert len(list(stale[0].parent.glob("*.png"))) == summary["test_tiles"] > 0
    assert len(stale) != summary["test_tiles"]
