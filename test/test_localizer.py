"""Localizer core tests (no ROS): filter, window, states, honesty, resets, input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _localizer_fakes import CAMERA, T_BODY_CAM, FakeDB, OracleModel, drive_poses, image

from cvl_ros.camera import invert_pose, pose_enu
from cvl_ros.localizer import (
    Frame,
    GridFilter,
    InvalidFrameError,
    Keyframe,
    Localizer,
    LocalizerConfig,
    SlidingWindow,
    Status,
    TileScores,
    compose_map_odom,
)

torch.set_num_threads(1)


def _run(loc, model, T_world_bodies, stamp0=0, dt_ns=100_000_000, with_heading=True):
    """Feed a drive; odometry starts at identity (odom frame = first pose)."""
    T0_inv = invert_pose(T_world_bodies[0])
    ests = []
    for i, Twb in enumerate(T_world_bodies):
        model.truth_cam_en = (Twb @ T_BODY_CAM)[:2, 3]
        yaw = math.atan2(Twb[1, 0], Twb[0, 0])
        f = Frame(stamp0 + i * dt_ns, image(i), CAMERA, T0_inv @ Twb,
                  yaw if with_heading else None, T_BODY_CAM)
        ests.append(loc.add_frame(f))
    return ests


def _psd(c):
    return np.allclose(c, c.T) and np.linalg.eigvalsh(c).min() > 0


def test_grid_filter_predict_is_exact_shift_and_regrid_keeps_mass():
    f = GridFilter()
    f.init_gaussian((10.0, -5.0), 2.0, 60.0, 1.0)
    f.predict((3.0, 4.0), 0.0)
    st = f.stats(10.0)
    assert np.allclose(st.peak_en, (13.0, -1.0), atol=1e-6)
    lost = f.regrid((13.0, -1.0), 200.0, 2.0)
    assert lost < 1e-3 and abs(f.prob.sum() - 1) < 1e-9
    assert np.allclose(f.stats(10.0).peak_en, (13.0, -1.0), atol=1.0)
    lost = f.regrid((13.0, -1.0), 60.0, 0.5)
    assert lost < 0.02
    assert np.allclose(f.stats(10.0).peak_en, (13.0, -1.0), atol=0.5)


def test_grid_filter_update_uses_north_up_score_maps():
    f = GridFilter()
    f.init_uniform((0.0, 0.0), 100.0, 1.0)
    sm = np.zeros((7, 7))
    sm[1, 5] = 1.0  # north-up: row 1 = 2 cells north, col 5 = 2 cells east
    f.update([TileScores(np.array([10.0, 20.0]), sm, 3.0)], 0.05, None, 0.0)
    st = f.stats(3.0)
    assert np.allclose(st.peak_en, (16.0, 26.0), atol=1.0)


def test_sliding_window_keyframes_and_relative_poses():
    w = SlidingWindow(length=3, keyframe_distance_m=1.0, keyframe_interval_s=0.5)
    assert w.is_keyframe(0, np.eye(4))
    w.push(Keyframe(0, None, np.eye(3), np.eye(4), T_BODY_CAM))
    assert not w.is_keyframe(100_000_000, pose_enu(0.5, 0, 0, 0))
    assert w.is_keyframe(100_000_000, pose_enu(1.2, 0, 0, 0))
    assert w.is_keyframe(600_000_000, pose_enu(0.1, 0, 0, 0))  # time rule
    for i in range(1, 5):
        w.push(Keyframe(i, None, np.eye(3), pose_enu(2.0 * i, 0, 0, 0), T_BODY_CAM))
    assert len(w) == 3 and w.full and w.newest.stamp_ns == 4
    rel = w.relative_poses(math.pi / 2)  # odom x axis points north in ENU
    assert np.allclose(rel[0, :3, 3], 0)
    assert np.allclose(rel[1, :3, 3], (0.0, -2.0, 0.0), atol=1e-9)  # older frame is south


def test_converges_from_global_search_and_tracks_with_honest_covariance():
    db = FakeDB()
    model = OracleModel(db)
    # a 45 m drive: the global search may converge after 25 m (the default waits 100 m)
    loc = Localizer(model, db, LocalizerConfig(window_length=3, global_min_travel_m=25.0))
    Twb = drive_poses(30, step_m=1.5, start=(12.0, 7.0), yaw=0.3)
    ests = [e for e in _run(loc, model, Twb) if e is not None]
    assert ests[0].global_search and ests[0].tiles_searched == len(db)
    assert ests[0].status in (Status.INITIALIZING, Status.TRACKING)
    assert model.encode_calls == len(ests)  # one backbone pass per keyframe
    last = ests[-1]
    assert last.status == Status.TRACKING and not last.global_search
    assert last.tiles_searched < len(db)
    assert last.window_len == 3
    truth = Twb[-1][:2, 3]
    err = np.hypot(last.east_m - truth[0], last.north_m - truth[1])
    assert err < 2.0, err
    assert _psd(last.covariance_xy)
    sig = math.sqrt(np.linalg.eigvalsh(last.covariance_xy).max())
    assert 0.4 < sig < 5.0 and err < 4 * sig
    assert abs(last.yaw_rad - 0.3) < 1e-6
    lat, lon, _ = db.datum.to_geodetic(last.east_m, last.north_m, 0.0)
    assert abs(lat - last.lat_deg) < 1e-9 and abs(lon - last.lon_deg) < 1e-9
    assert last.candidates and last.candidates[0].score >= last.candidates[-1].score
    # map->odom composes with odometry at the same stamp into the published map->body
    T_mo = last.T_map_odom
    assert np.allclose(T_mo @ last.T_odom_body, last.T_map_body)
    assert np.allclose(compose_map_odom(last.T_map_body, last.T_odom_body), T_mo)
    assert abs(T_mo[2, 3]) < 1e-9  # planar correction only


def test_ambiguous_alias_is_not_reported_as_tracking():
    db = FakeDB()
    model = OracleModel(db, alias_en=(60.0, 0.0))
    loc = Localizer(model, db, LocalizerConfig(window_length=2))
    ests = [e for e in _run(loc, model, drive_poses(12, 1.5, (0.0, 0.0), 0.0)) if e]
    for e in ests:
        assert e.status != Status.TRACKING
        assert _psd(e.covariance_xy)
        # a multi-modal belief is reported with a covariance spanning the modes
        assert math.sqrt(np.linalg.eigvalsh(e.covariance_xy).max()) > 10.0


def test_look_alike_place_seen_first_does_not_lock_in():
    # global initialisation: the first updates match a place 60 m away cleanly, then the truth
    db = FakeDB()
    model = OracleModel(db, decoy_en=(60.0, 0.0), decoy_calls=6)
    loc = Localizer(model, db, LocalizerConfig(window_length=2, global_min_travel_m=25.0))
    Twb = drive_poses(30, 1.5, (0.0, 0.0), 0.0)
    errs = [(e.status, float(np.hypot(e.east_m - T[0, 3], e.north_m - T[1, 3])))
            for e, T in zip(_run(loc, model, Twb), Twb) if e is not None]
    assert not [x for x in errs if x[0] == Status.TRACKING and x[1] > 5.0], errs
    assert errs[-1][0] == Status.TRACKING and errs[-1][1] < 2.0, errs


def test_global_search_needs_travel_before_it_converges():
    # a clean matcher would converge at once; the travel rule holds the fix back until
    # global_min_travel_m of odometry has accumulated since the global search began
    Twb = drive_poses(30, 1.5, (0.0, 0.0), 0.0)
    for min_travel in (0.0, 20.0):
        db = FakeDB()
        model = OracleModel(db)
        loc = Localizer(model, db, LocalizerConfig(window_length=2, global_min_travel_m=min_travel))
        fixes = [float(np.hypot(*(T[:2, 3] - Twb[0][:2, 3])))
                 for e, T in zip(_run(loc, model, Twb), Twb) if e is not None and e.has_fix]
        assert fixes, min_travel
        # travel is counted from the second keyframe (the first global update has no motion)
        assert fixes[0] >= min_travel, (min_travel, fixes[0])
        if min_travel == 0.0:
            assert fixes[0] < 10.0, fixes[0]


@pytest.mark.parametrize("bad", [
    {"window_length": 0}, {"score_temperature": 0.0}, {"keyframe_distance_m": -1.0},
    {"tracking_min_confidence": 1.5}, {"global_min_travel_m": float("nan")}])
def test_invalid_config_is_rejected_with_the_field_name(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LocalizerConfig(**bad)


def test_uninformative_matcher_gives_no_fix():
    db = FakeDB()
    model = OracleModel(db, flat=True, noise=0.01)
    loc = Localizer(model, db, LocalizerConfig(window_length=2))
    ests = [e for e in _run(loc, model, drive_poses(10, 1.5)) if e]
    assert ests and all(not e.has_fix for e in ests)
    assert all(e.status in (Status.INITIALIZING, Status.NO_FIX) for e in ests)


def test_lost_then_relocalizes_and_relocalize_call():
    db = FakeDB()
    model = OracleModel(db)
    cfg = LocalizerConfig(window_length=2, lost_after_updates=3, global_min_travel_m=10.0)
    loc = Localizer(model, db, cfg)
    Twb = drive_poses(12, 1.5, (0.0, 0.0), 0.0)
    ests = [e for e in _run(loc, model, Twb) if e]
    assert ests[-1].status == Status.TRACKING
    # a wrong initial pose 60 m away: the belief does not match, it gets lost and relocalises
    loc.set_initial_pose(60.0, 30.0, 0.0, sigma_m=2.0)
    Twb2 = drive_poses(30, 1.5, (Twb[-1][0, 3] + 1.5, 0.0), 0.0)
    ests2 = [e for e in _run(loc, model, Twb2, stamp0=2_000_000_000) if e]
    statuses = [e.status for e in ests2]
    assert Status.RELOCALIZING in statuses
    assert statuses[-1] == Status.TRACKING
    assert np.hypot(ests2[-1].east_m - Twb2[-1][0, 3], ests2[-1].north_m - Twb2[-1][1, 3]) < 2
    loc.relocalize()
    Twb3 = drive_poses(3, 1.5, (Twb2[-1][0, 3] + 1.5, 0.0), 0.0)
    e = [x for x in _run(loc, model, Twb3, stamp0=9_000_000_000) if x][0]
    assert e.global_search and e.status in (Status.RELOCALIZING, Status.TRACKING)


def test_initial_pose_restricts_search_and_gps_prior():
    db = FakeDB()
    model = OracleModel(db)
    loc = Localizer(model, db, LocalizerConfig(window_length=2))
    loc.set_initial_pose(1.0, 0.0, 0.0, sigma_m=3.0)
    e = [x for x in _run(loc, model, drive_poses(2, 1.5)) if x][0]
    assert not e.global_search and e.tiles_searched < len(db)
    loc2 = Localizer(model, db, LocalizerConfig(window_length=2))
    lat, lon, _ = db.datum.to_geodetic(5.0, 3.0, 0.0)
    assert loc2.set_gps_prior(lat, lon, 10.0)
    e2 = [x for x in _run(loc2, model, drive_poses(2, 1.5)) if x][0]
    assert not e2.global_search


def test_time_backwards_resets_and_non_keyframes_return_none():
    db = FakeDB()
    model = OracleModel(db)
    loc = Localizer(model, db, LocalizerConfig(window_length=3, keyframe_distance_m=1.0))
    ests = _run(loc, model, drive_poses(6, 1.5))
    assert ests[-1].window_len == 3
    # a frame 0.2 m further is not a keyframe
    Twb = drive_poses(6, 1.5)[-1] @ pose_enu(0.2, 0, 0, 0)
    f = Frame(600_000_000, image(1), CAMERA, invert_pose(drive_poses(1)[0]) @ Twb, 0.0,
              T_BODY_CAM)
    assert loc.add_frame(f) is None
    # bag loops: stamps go back
    e = _run(loc, model, drive_poses(2, 1.5), stamp0=0)[0]
    assert e is not None and "backwards" in e.reset_reason and e.window_len == 1
    assert e.global_search


def test_invalid_frames_raise_clear_errors_and_leave_state():
    db = FakeDB()
    model = OracleModel(db)
    loc = Localizer(model, db, LocalizerConfig(window_length=2))
    _run(loc, model, drive_poses(3, 1.5))
    n = loc.window_fill
    bad_odom = np.eye(4)
    bad_odom[0, 3] = np.nan
    cases = [
        Frame(10**9, image(), CAMERA, bad_odom, 0.0, T_BODY_CAM),
        Frame(10**9, image(h=32), CAMERA, np.eye(4), 0.0, T_BODY_CAM),
        Frame(10**9, image().astype(np.float32), CAMERA, np.eye(4), 0.0, T_BODY_CAM),
        Frame(10**9, image()[..., 0], CAMERA, np.eye(4), 0.0, T_BODY_CAM),
        Frame(10**9, image(), None, np.eye(4), 0.0, T_BODY_CAM),
        Frame(10**9, image(), CAMERA, np.eye(4), float("nan"), T_BODY_CAM),
    ]
    msgs = []
    for f in cases:
        with pytest.raises(InvalidFrameError) as ei:
            loc.add_frame(f)
        msgs.append(str(ei.value))
    assert "odometry" in msgs[0] and "64" in msgs[1] and "uint8" in msgs[2]
    assert "camera_info" in msgs[4]
    assert loc.window_fill == n


def test_heading_offset_and_lever_arm():
    """Odometry frame rotated 90 deg from ENU; the camera 1 m ahead of base_link."""
    db = FakeDB()
    model = OracleModel(db)
    loc = Localizer(model, db, LocalizerConfig(window_length=2, global_min_travel_m=0.0))
    Twb = drive_poses(14, 1.5, (0.0, -20.0), math.pi / 2)  # driving north
    ests = [e for e in _run(loc, model, Twb) if e]
    last = ests[-1]
    assert last.status == Status.TRACKING
    # base_link (not the camera, 1 m ahead) is estimated
    assert np.hypot(last.east_m - Twb[-1][0, 3], last.north_m - Twb[-1][1, 3]) < 1.5
    assert abs(last.yaw_rad - math.pi / 2) < 1e-6
    R = last.T_map_body[:3, :3]
    assert np.allclose(R, Twb[-1][:3, :3], atol=1e-9)


def test_real_tiny_cvlnet_and_tile_database(tmp_path):
    """The real (random-init) network and TileDatabase run end to end through the localizer."""
    cvlnet = pytest.importorskip("cvl_ros.model.cvlnet")
    database = pytest.importorskip("cvl_ros.database")
    cfg = cvlnet.CVLNetConfig(pretrained=False, ground_hw=(32, 128), sat_px=64, grid_cells=16,
                              coverage_m=50.0, feature_dim=8)
    torch.manual_seed(0)
    model = cvlnet.CVLNet(cfg, load_pretrained=False).eval()
    fdb = FakeDB(spacing_m=20.0, east=(-40, 80), north=(-20, 20))
    rng = np.random.default_rng(0)
    tiles = [(tid, float(ll[0]), float(ll[1]), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
             for tid, ll in zip(fdb.tile_ids, fdb.centers_latlon)]
    db = database.TileDatabase.build(model, tiles, tmp_path / "db", fdb.datum)
    loc = Localizer(model, db, LocalizerConfig(window_length=3))
    T0_inv = invert_pose(drive_poses(1)[0])
    ests = []
    for i, Twb in enumerate(drive_poses(6, 1.5)):
        f = Frame(i * 100_000_000, image(i), CAMERA, T0_inv @ Twb, 0.0, T_BODY_CAM)
        ests.append(loc.add_frame(f))
    ests = [e for e in ests if e]
    assert len(ests) == 6 and ests[0].tiles_searched == len(db)
    for e in ests:
        assert e.status in list(Status)
        assert _psd(e.covariance_xy) and np.isfinite(e.lat_deg)
        assert e.score_map.shape == (7, 7)
        assert e.tile_id in db.tile_ids
    assert ests[-1].window_len == 3
    # a database larger than global_max_tiles is pre-selected by TileDatabase.global_topk
    loc2 = Localizer(model, db, LocalizerConfig(window_length=2, global_max_tiles=5,
                                                global_topk=4))
    e = loc2.add_frame(Frame(0, image(0), CAMERA, np.eye(4), 0.0, T_BODY_CAM))
    assert e.global_search and e.tiles_searched == 4


def test_map_datum_other_than_the_database_datum():
    from cvl_ros.geo import GeoDatum

    db = FakeDB()
    model = OracleModel(db)
    lat0, lon0, _ = db.datum.to_geodetic(100.0, -50.0, 0.0)
    cfg = LocalizerConfig(window_length=2, global_min_travel_m=0.0, map_datum_lat_deg=lat0,
                          map_datum_lon_deg=lon0, map_datum_alt_m=200.0)
    loc = Localizer(model, db, cfg)
    assert loc.datum == GeoDatum(lat0, lon0, 200.0)
    Twb = drive_poses(12, 1.5, (0.0, 0.0), 0.0)
    last = [e for e in _run(loc, model, Twb) if e][-1]
    assert last.status == Status.TRACKING
    # the same place: map coordinates shifted by the datum offset, same WGS84 position
    assert abs(last.east_m - (Twb[-1][0, 3] - 100.0)) < 2.0
    assert abs(last.north_m - (Twb[-1][1, 3] + 50.0)) < 2.0
    lat, lon, _ = db.datum.to_geodetic(Twb[-1][0, 3], Twb[-1][1, 3], 0.0)
    assert abs(last.lat_deg - lat) < 2e-5 and abs(last.lon_deg - lon) < 3e-5
    assert (last.datum_lat_deg, last.datum_alt_m) == (lat0, 200.0)


def test_initial_pose_rejects_non_finite_values_and_changes_nothing():
    db = FakeDB()
    loc = Localizer(OracleModel(db), db, LocalizerConfig(window_length=2))
    for args in [(math.nan, 0.0, None, 3.0), (0.0, math.inf, None, 3.0),
                 (0.0, 0.0, None, math.inf), (0.0, 0.0, None, math.nan), (0.0, 0.0, None, 0.0)]:
        with pytest.raises(ValueError, match="initial pose"):
            loc.set_initial_pose(*args)
    assert not loc.filter.initialized
    assert not loc.set_gps_prior(math.nan, 8.43, 5.0)
    assert not loc.filter.initialized


def test_requests_during_an_update_never_block_and_apply_with_the_next_frame():
    """initialpose / relocalize / GPS prior from a ROS callback while the worker holds the lock
    (an update running) return at once and take effect at the start of the next frame."""
    import threading
    import time

    db = FakeDB()
    model = OracleModel(db)
    loc = Localizer(model, db, LocalizerConfig(window_length=2))
    held, release = threading.Event(), threading.Event()

    def busy():  # stands in for add_frame running inference
        with loc._lock:
            held.set()
            release.wait(10.0)

    th = threading.Thread(target=busy)
    th.start()
    try:
        assert held.wait(5.0)
        t0 = time.perf_counter()
        assert loc.set_initial_pose(1.0, 0.0, 0.0, sigma_m=3.0) is False  # deferred
        lat, lon, _ = db.datum.to_geodetic(5.0, 3.0, 0.0)
        assert loc.set_gps_prior(lat, lon, 10.0) is True  # accepted, deferred
        assert time.perf_counter() - t0 < 0.5
        assert not loc.filter.initialized  # nothing applied behind the update's back
    finally:
        release.set()
        th.join()
    e = [x for x in _run(loc, model, drive_poses(2, 1.5)) if x][0]
    # the initial pose applied first; the GPS prior then saw a belief and was dropped
    assert not e.global_search and e.tiles_searched < len(db)
    assert np.hypot(e.east_m - 1.5, e.north_m) < 3.0
    assert loc._deferred == []
    # relocalise deferred the same way, applied before the next keyframe
    th = threading.Thread(target=busy)
    held.clear()
    release.clear()
    th.start()
    try:
        assert held.wait(5.0)
        assert loc.relocalize() is False
    finally:
        release.set()
        th.join()
    Twb = drive_poses(4, 1.5, (3.0, 0.0), 0.0)
    e = [x for x in _run(loc, model, Twb, stamp0=5_000_000_000) if x][0]
    assert e.global_search


def test_device_resolution_and_cpu_fallback(monkeypatch):
    from cvl_ros.localizer.localizer import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == ("cpu", "")
    assert resolve_device("cpu") == ("cpu", "")
    dev, warning = resolve_device("cuda:1")
    assert dev == "cpu" and "CUDA is not available" in warning
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == ("cuda", "")
    assert resolve_device("CUDA:1") == ("cuda:1", "")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    db = FakeDB()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loc = Localizer(OracleModel(db), db, LocalizerConfig(window_length=2), device="cuda")
    assert loc.device == "cpu" and "CUDA is not available" in loc.device_warning
