"""``cvl-synth``: generate a synthetic town in the KITTI raw + KITTI-CVL layout.

Example::

    cvl-synth --seed 1 --out data/synth_train --style suburb --drives 4 --frames-per-drive 400
    cvl-synth --seed 101 --out data/synth_test --style old_town --split test --drives 2
    cvl-synth --bench --out /tmp/bench            # frames/s at 256x1024 on one core -> JSON

See docs/synth.md for the output layout and the styles.

``--out`` is written safely (``docs/output-safety.md``): a new or empty folder, or with
``--overwrite`` a dataset cvl-synth wrote that holds nothing else. The dataset is generated in
a temporary folder beside ``--out`` and renamed into place at the end, so a second run never
mixes with the first and a failed run leaves the old dataset as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from cvl_ros.cli._args import number
from cvl_ros.geo import GeoDatum
from cvl_ros.kitti import (
    KITTI_IMU_HEIGHT_M,
    OxtsPacket,
    enu_poses_to_oxts,
    kitti_T_imu_cam2,
    write_image,
    write_kitti_calibration,
    write_oxts_packet,
    write_timestamps,
)
from cvl_ros.outputs import OutputError, prepare_output
from cvl_ros.synth.drive import Drive, ou_process, plan_drive, plan_traffic
from cvl_ros.synth.render_ground import GroundRenderer
from cvl_ros.synth.render_satellite import SAT_M_PER_PX, render_satellite
from cvl_ros.synth.styles import STYLES, get_style
from cvl_ros.synth.town import generate_town

__all__ = ["main", "generate", "kitti_camera", "KITTI_P_RECT_02", "KITTI_T_IMU_CAM2",
           "bench", "FORMAT_VERSION"]

FORMAT_VERSION = "cvl_ros.synth/1"
TOOL = "cvl-synth"

#: ``P_rect_02`` of the KITTI 2011_09_26 calibration (1242x375 rectified images).
KITTI_P_RECT_02 = np.array([[721.5377, 0.0, 609.5593, 44.85728],
                            [0.0, 721.5377, 172.854, 0.2163791],
                            [0.0, 0.0, 1.0, 0.002745884]])
KITTI_SIZE_WH = (1242, 375)
#: ``T_imu_cam2`` of the KITTI 2011_09_26 calibration (camera 0.729 m above the IMU).
KITTI_T_IMU_CAM2 = np.array([[0.000998747, 0.008416901, 0.999964108, 1.080499431],
                             [-0.999990478, -0.004250824, 0.001034554, -0.250044568],
                             [0.004259376, -0.999955515, 0.008412576, 0.729283863],
                             [0.0, 0.0, 0.0, 1.0]])


def kitti_camera(width: int, height: int) -> np.ndarray:
    """KITTI ``P_rect_02`` rescaled to an image of ``width`` x ``height`` (pixel-centre rule)."""
    sx = width / KITTI_SIZE_WH[0]
    sy = height / KITTI_SIZE_WH[1]
    S = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
    return S @ KITTI_P_RECT_02


def _date_for(seed: int) -> str:
    d = _dt.date(2011, 10, 1) + _dt.timedelta(days=int(seed) % 3000)
    return d.strftime("%Y_%m_%d")


def _datum_for(seed: int) -> GeoDatum:
    r = np.random.default_rng(np.random.SeedSequence([int(seed), 0xDA7]))
    return GeoDatum(lat_deg=round(49.015 + r.uniform(-0.05, 0.05), 7),
                    lon_deg=round(8.43 + r.uniform(-0.08, 0.08), 7),
                    alt_m=round(float(r.uniform(110.0, 130.0)), 3))


def _oxts_packets(drive: Drive, datum: GeoDatum, gps_sigma_m: float, heading_sigma_deg: float,
                  rng: np.random.Generator, alt_m: float):
    """(noisy packets, true packets): true motion fields, GPS-like position/heading error."""
    T = drive.T_world_body.copy()
    T[:, 2, 3] += 0.0
    n = len(drive)
    dt = float(drive.t_s[1] - drive.t_s[0]) if n > 1 else 0.1
    xy = T[:, :2, 3]
    v = np.gradient(xy, dt, axis=0) if n > 1 else np.zeros((n, 2))
    acc = np.gradient(v, dt, axis=0) if n > 1 else np.zeros((n, 2))
    yaw = drive.yaw
    wz = np.gradient(np.unwrap(yaw), dt) if n > 1 else np.zeros(n)
    true = enu_poses_to_oxts(T, datum)
    noisy_T = T.copy()
    if gps_sigma_m > 0:  # gps_sigma_m is the 2D RMS error: per axis sigma / sqrt(2)
        noisy_T[:, 0, 3] += ou_process(rng, n, dt, 30.0, gps_sigma_m / math.sqrt(2))
        noisy_T[:, 1, 3] += ou_process(rng, n, dt, 30.0, gps_sigma_m / math.sqrt(2))
    if heading_sigma_deg > 0:
        dyaw = ou_process(rng, n, dt, 20.0, math.radians(heading_sigma_deg))
        for i in range(n):
            c, s = math.cos(dyaw[i]), math.sin(dyaw[i])
            Rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
            noisy_T[i, :3, :3] = Rz @ noisy_T[i, :3, :3]
    noisy = enu_poses_to_oxts(noisy_T, datum)
    out_noisy, out_true = [], []
    for i in range(n):
        cy, sy = math.cos(yaw[i]), math.sin(yaw[i])
        vf = v[i, 0] * cy + v[i, 1] * sy
        vl = -v[i, 0] * sy + v[i, 1] * cy
        af = acc[i, 0] * cy + acc[i, 1] * sy
        al = -acc[i, 0] * sy + acc[i, 1] * cy
        common = dict(vn=float(v[i, 1]), ve=float(v[i, 0]), vf=float(vf), vl=float(vl), vu=0.0,
                      ax=float(acc[i, 0]), ay=float(acc[i, 1]), az=9.81, af=float(af),
                      al=float(al), au=9.81, wx=0.0, wy=0.0, wz=float(wz[i]), wf=0.0, wl=0.0,
                      wu=float(wz[i]), vel_accuracy=0.05, navstat=4, numsats=10, posmode=6,
                      velmode=6, orimode=6)
        for src, dst, acc_m in ((noisy[i], out_noisy, gps_sigma_m), (true[i], out_true, 0.01)):
            kw = dict(lat=src.lat, lon=src.lon, alt=src.alt, roll=src.roll, pitch=src.pitch,
                      yaw=src.yaw, pos_accuracy=float(max(acc_m, 0.01)), **common)
            dst.append(OxtsPacket(**kw))
    return out_noisy, out_true


def _stamps(rng: np.random.Generator, date: str, n: int, hour: float, jitter_ns: int):
    d = _dt.datetime.strptime(date, "%Y_%m_%d").replace(tzinfo=_dt.timezone.utc)
    t0 = int(d.timestamp()) * 1_000_000_000 + int(hour * 3600e9)
    base = t0 + np.arange(n, dtype=np.int64) * 100_000_000
    return base + rng.integers(-jitter_ns, jitter_ns + 1, n).astype(np.int64)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        w, h = int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be WxH, got {text!r}") from None
    if not (16 <= w <= 4096 and 16 <= h <= 4096):
        raise argparse.ArgumentTypeError(f"width and height must be 16-4096 pixels, got {text}")
    return w, h


def generate(out, seed: int = 0, style: str = "suburb", size_m: float = 500.0, drives: int = 2,
             frames_per_drive: int = 200, image_size: tuple[int, int] = (1024, 256),
             split: str = "both", n_test_drives: int | None = None, tile_px: int = 512,
             tile_spacing_m: float = 10.0, tile_stride: int = 1, gps_noise_m: float | None = None,
             heading_noise_deg: float | None = None, preview: bool = False,
             build_tiles: bool = True, log=None, overwrite: bool = False,
             sat_lean_max_m_per_m: float | None = None) -> dict:
    """Generate a synthetic town dataset under ``out``; returns a summary dict.

    ``split``: ``train`` (every drive is a training drive), ``test`` (every drive is a test
    drive, Test-1 and Test-2), ``both`` (the last ``n_test_drives`` drives, default
    ``max(1, drives // 4)``, are test drives). ``gps_noise_m``/``heading_noise_deg`` override
    the style's GPS/heading error in ``oxts/`` (``oxts_true/`` always holds the exact poses).
    ``sat_lean_max_m_per_m`` replaces the style's range of the satellite capture's off-nadir
    lean (horizontal shift of a point per metre of its height, drawn once per town) by
    ``[0, sat_lean_max_m_per_m]``.

    ``out`` must be new or empty, or (``overwrite``) a dataset cvl-synth wrote that holds
    nothing else (:func:`cvl_ros.outputs.prepare_output`; ``OutputError`` otherwise). The
    dataset is written beside ``out`` and renamed into place when complete.
    """
    if split not in ("train", "test", "both"):
        raise ValueError(f"split must be train|test|both, got {split!r}")
    st = get_style(style) if isinstance(style, str) else style
    if sat_lean_max_m_per_m is not None:
        if not 0.0 <= float(sat_lean_max_m_per_m) <= 1.0:
            raise ValueError(f"sat_lean_max_m_per_m must be 0-1 m/m, got {sat_lean_max_m_per_m}")
        st = dataclasses.replace(st, sat_lean_m_per_m=(0.0, float(sat_lean_max_m_per_m)))
    with prepare_output(out, tool=TOOL, overwrite=overwrite) as tmp:
        summary = _generate(tmp, seed, st, size_m, drives, frames_per_drive, image_size, split,
                            n_test_drives, tile_px, tile_spacing_m, tile_stride, gps_noise_m,
                            heading_noise_deg, preview, build_tiles, log)
    summary["out"] = str(out)
    return summary


def _generate(out: Path, seed, st, size_m, drives, frames_per_drive, image_size, split,
              n_test_drives, tile_px, tile_spacing_m, tile_stride, gps_noise_m,
              heading_noise_deg, preview, build_tiles, log) -> dict:
    """:func:`generate` into the (temporary) folder ``out``."""
    from cvl_ros.tiles import GeoMosaic, build_kitti_cvl_tiles

    def say(msg):
        if log:
            log(msg)

    t_start = time.perf_counter()
    datum = _datum_for(seed)
    date = _date_for(seed)
    W, H = int(image_size[0]), int(image_size[1])
    say(f"town: seed={seed} style={st.name} size={size_m} m")
    town = generate_town(seed, st, size_m)
    say(f"  {len(town.segments)} road segments, {len(town.buildings)} buildings, "
        f"{len(town.trees['x'])} trees, {len(town.cars['x'])} cars")
    # satellite mosaic
    sat, sat_light = render_satellite(town, seed=1, m_per_px=SAT_M_PER_PX)
    half = size_m / 2.0
    mosaic = GeoMosaic(sat, datum, SAT_M_PER_PX, -half, half)
    mosaic.write(out / "mosaic.png")
    say("  mosaic.png written")
    # calibration of the recording day
    date_dir = out / "raw_data" / date
    date_dir.mkdir(parents=True, exist_ok=True)
    P2 = kitti_camera(W, H)
    write_kitti_calibration(date_dir, P2, (W, H), KITTI_T_IMU_CAM2)
    T_imu_cam = kitti_T_imu_cam2(date_dir)
    fx, fy, cx, cy = P2[0, 0], P2[1, 1], P2[0, 2], P2[1, 2]
    n_test = 0
    if split == "test":
        n_test = drives
    elif split == "both":
        n_test = max(1, drives // 4) if n_test_drives is None else int(n_test_drives)
        n_test = min(n_test, max(drives - 1, 0)) if drives > 1 else 0
    drive_infos = []
    train_keys, test_keys = [], []
    frames_written = 0
    render_s = 0.0
    previews = []
    for k in range(drives):
        drive_name = f"{date}_drive_{k + 1:04d}_sync"
        key = f"{date}/{drive_name}"
        ddir = date_dir / drive_name
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), k, 0xF00D]))
        margin = min(tile_px * SAT_M_PER_PX / 2 + 5.0, size_m / 2 - 40.0) if build_tiles \
            else 25.0
        drive = plan_drive(town, seed=1000 + k, n_frames=frames_per_drive,
                           imu_height_m=KITTI_IMU_HEIGHT_M, margin_m=max(margin, 10.0))
        renderer = GroundRenderer(town, seed=100 + k, avoid_sun_az=sat_light.sun_az_rad)
        n_cleared = renderer.clear_cars_near_path(drive.xy)
        traffic = plan_traffic(town, drive, seed=2000 + k, max_cars=renderer.max_dynamic)
        gps = float(rng.uniform(*st.gps_noise_m)) if gps_noise_m is None else float(gps_noise_m)
        hdg = float(st.heading_noise_deg if heading_noise_deg is None else heading_noise_deg)
        noisy, true = _oxts_packets(drive, datum, gps, hdg, rng, datum.alt_m)
        hour = float(rng.uniform(8.0, 17.0))
        stamps_img = _stamps(rng, date, len(drive), hour, 2_000_000)
        stamps_oxts = stamps_img - rng.integers(0, 6_000_000, len(drive)).astype(np.int64)
        expo = np.exp(ou_process(rng, len(drive), 0.1, 3.0, 0.07))
        wbv = np.stack([np.exp(ou_process(rng, len(drive), 0.1, 5.0, 0.02)) for _ in range(3)], 1)
        T_world_cam = drive.T_world_body @ T_imu_cam
        for i in range(len(drive)):
            t0 = time.perf_counter()
            img = renderer.render(T_world_cam[i], fx, fy, cx, cy, W, H, exposure=float(expo[i]),
                                  wb=tuple(float(x) for x in wbv[i]), noise_seed=i,
                                  dynamic=traffic[i])
            render_s += time.perf_counter() - t0
            write_image(ddir / "image_02" / "data" / f"{i:010d}.png", img)
            write_oxts_packet(ddir / "oxts" / "data" / f"{i:010d}.txt", noisy[i])
            write_oxts_packet(ddir / "oxts_true" / "data" / f"{i:010d}.txt", true[i])
            if preview and i in (0, len(drive) // 2):
                previews.append(img)
        write_timestamps(ddir / "image_02" / "timestamps.txt", stamps_img)
        write_timestamps(ddir / "oxts" / "timestamps.txt", stamps_oxts)
        write_timestamps(ddir / "oxts_true" / "timestamps.txt", stamps_oxts)
        (ddir / "oxts" / "dataformat.txt").write_text(_DATAFORMAT)
        (ddir / "oxts_true" / "dataformat.txt").write_text(_DATAFORMAT)
        frames_written += len(drive)
        is_test = k >= drives - n_test
        (test_keys if is_test else train_keys).append(key)
        lt = renderer.light
        drive_infos.append(dict(
            name=drive_name, key=key, split="test" if is_test else "train",
            frames=len(drive), length_m=float(np.sum(np.linalg.norm(np.diff(drive.xy, axis=0),
                                                                    axis=1))),
            mean_speed_mps=float(np.mean(drive.speed_mps)), gps_noise_sigma_m=gps,
            parked_cars_moved_off_route=int(n_cleared),
            moving_cars_in_video=int(traffic[0].shape[0]) if traffic else 0,
            heading_noise_sigma_deg=hdg,
            video_sun_az_deg=round(math.degrees(lt.sun_az_rad), 3),
            video_sun_elev_deg=round(math.degrees(lt.sun_elev_rad), 3)))
        say(f"  drive {drive_name}: {len(drive)} frames, "
            f"{drive_infos[-1]['length_m']:.0f} m ({drive_infos[-1]['split']})")
        if preview:
            drive_infos[-1]["_xy"] = drive.xy
    tile_stats = None
    if build_tiles and drives:
        tile_stats = build_kitti_cvl_tiles(mosaic, out, train_keys, test_keys,
                                           spacing_m=tile_spacing_m, tile_px=tile_px,
                                           query_stride=tile_stride)
        say(f"  tiles: {tile_stats}")
    town_json = dict(
        format=FORMAT_VERSION, seed=int(seed), style=st.name, style_settings=st.to_dict(),
        datum=datum.to_dict(), size_m=float(size_m), date=date, image_size_wh=[W, H],
        camera_height_m=round(float(KITTI_IMU_HEIGHT_M + T_imu_cam[2, 3]), 4),
        imu_height_m=KITTI_IMU_HEIGHT_M, mosaic="mosaic.png", mosaic_m_per_px=SAT_M_PER_PX,
        satellite_sun_az_deg=round(math.degrees(sat_light.sun_az_rad), 3),
        satellite_sun_elev_deg=round(math.degrees(sat_light.sun_elev_rad), 3),
        satellite_lean_en_m_per_m=[round(v, 5) for v in sat_light.lean_en_m_per_m],
        drives=[{k: v for k, v in d.items() if not k.startswith("_")} for d in drive_infos],
        train_drives=train_keys, test_drives=test_keys,
        counts=dict(segments=len(town.segments), buildings=len(town.buildings),
                    trees=int(len(town.trees["x"])), cars=int(len(town.cars["x"]))),
        tiles=dict(tile_px=tile_px, spacing_m=tile_spacing_m, query_stride=tile_stride))
    (out / "town.json").write_text(json.dumps(_jsonable(town_json), indent=1, sort_keys=True)
                                   + "\n")
    if preview:
        write_preview(out / "preview.png", sat, size_m, drive_infos, previews)
    total = time.perf_counter() - t_start
    return dict(out=str(out), frames=frames_written, seconds=total,
                render_frames_per_s=frames_written / render_s if render_s > 0 else None,
                tiles=tile_stats, train_drives=train_keys, test_drives=test_keys)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, float):
        return round(x, 9)
    return x


def write_preview(path, sat: np.ndarray, size_m: float, drive_infos, frames) -> None:
    """Map (mosaic with the drives drawn) above a strip of a few frames, as one PNG."""
    side = 900
    m = cv2.resize(sat, (side, side), interpolation=cv2.INTER_AREA)
    colours = [(255, 60, 60), (60, 200, 255), (255, 220, 0), (255, 0, 255), (0, 255, 120)]
    for j, d in enumerate(drive_infos):
        if "_xy" not in d:
            continue
        xy = d["_xy"]
        px = np.stack([(xy[:, 0] + size_m / 2) / size_m * side,
                       (size_m / 2 - xy[:, 1]) / size_m * side], 1).astype(np.int32)
        c = colours[j % len(colours)]
        cv2.polylines(m, [px], False, c, 2, cv2.LINE_AA)
        cv2.circle(m, tuple(int(v) for v in px[0]), 6, c, -1)
        cv2.putText(m, d["name"][-9:-5], tuple(int(v) + 8 for v in px[0]),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, c, 2)
    strip = []
    for f in frames[:6]:
        h = int(round(f.shape[0] * (side / 2) / f.shape[1]))
        strip.append(cv2.resize(f, (side // 2, h), interpolation=cv2.INTER_AREA))
    rows = [m]
    for i in range(0, len(strip), 2):
        pair = strip[i:i + 2]
        if len(pair) == 1:
            pair.append(np.zeros_like(pair[0]))
        rows.append(np.concatenate(pair, 1))
    write_image(path, np.ascontiguousarray(np.concatenate(rows, 0)))


def bench(out_json=None, n_frames: int = 60, size_m: float = 300.0, style: str = "suburb",
          image_size=(1024, 256), seed: int = 0, pin_core: bool = True) -> dict:
    """Time ground-frame rendering at ``image_size`` on one core; optionally write JSON."""
    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    core = None
    if pin_core and hasattr(os, "sched_setaffinity"):
        core = sorted(os.sched_getaffinity(0))[0]
        os.sched_setaffinity(0, {core})
    W, H = image_size
    town = generate_town(seed, style, size_m)
    t0 = time.perf_counter()
    renderer = GroundRenderer(town, seed=1)
    prep = time.perf_counter() - t0
    drive = plan_drive(town, seed=7, n_frames=n_frames)
    renderer.clear_cars_near_path(drive.xy)
    traffic = plan_traffic(town, drive, seed=8, max_cars=renderer.max_dynamic)
    P2 = kitti_camera(W, H)
    T = drive.T_world_body @ KITTI_T_IMU_CAM2
    renderer.render(T[0], P2[0, 0], P2[1, 1], P2[0, 2], P2[1, 2], W, H)  # warm-up
    t0 = time.perf_counter()
    c0 = time.process_time()
    for i in range(n_frames):
        renderer.render(T[i], P2[0, 0], P2[1, 1], P2[0, 2], P2[1, 2], W, H, noise_seed=i,
                        dynamic=traffic[i])
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    res = dict(frames_per_s=n_frames / dt, ms_per_frame=1000 * dt / n_frames,
               frames_per_cpu_s=n_frames / cpu, cpu_ms_per_frame=1000 * cpu / n_frames,
               frames=n_frames,
               image_size_wh=[W, H], town_size_m=size_m, style=style, renderer_setup_s=prep,
               pinned_core=core, threads=1, cpu_count=os.cpu_count(),
               loadavg_1min=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
    if out_json:
        out_json = Path(out_json)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_json.with_name(f".{out_json.name}.partial-{os.getpid()}")
        tmp.write_text(json.dumps(res, indent=1) + "\n")
        os.replace(tmp, out_json)  # atomic: a reader never sees half a file
    return res


_DATAFORMAT = """lat:   latitude of the oxts-unit (deg)
lon:   longitude of the oxts-unit (deg)
alt:   altitude of the oxts-unit (m)
roll:  roll angle (rad),    0 = level, positive = left side up,      range: -pi   .. +pi
pitch: pitch angle (rad),   0 = level, positive = front down,        range: -pi/2 .. +pi/2
yaw:   heading (rad),       0 = east,  positive = counter clockwise, range: -pi   .. +pi
vn:    velocity towards north (m/s)
ve:    velocity towards east (m/s)
vf:    forward velocity, i.e. parallel to earth-surface (m/s)
vl:    leftward velocity, i.e. parallel to earth-surface (m/s)
vu:    upward velocity, i.e. perpendicular to earth-surface (m/s)
ax:    acceleration in x, i.e. in direction of vehicle front (m/s^2)
ay:    acceleration in y, i.e. in direction of vehicle left (m/s^2)
az:    acceleration in z, i.e. in direction of vehicle top (m/s^2)
af:    forward acceleration (m/s^2)
al:    leftward acceleration (m/s^2)
au:    upward acceleration (m/s^2)
wx:    angular rate around x (rad/s)
wy:    angular rate around y (rad/s)
wz:    angular rate around z (rad/s)
wf:    angular rate around forward axis (rad/s)
wl:    angular rate around leftward axis (rad/s)
wu:    angular rate around upward axis (rad/s)
pos_accuracy:  position accuracy (north/east in m)
vel_accuracy:  velocity accuracy (north/east in m/s)
navstat:       navigation status (see navstat_to_string)
numsats:       number of satellites tracked by primary GPS receiver
posmode:       position mode of primary GPS receiver (see gps_mode_to_string)
velmode:       velocity mode of primary GPS receiver (see gps_mode_to_string)
orimode:       orientation mode of primary GPS receiver (see gps_mode_to_string)
"""


def _check_bench_json(path: Path, overwrite: bool) -> None:
    """Refuse to replace ``path`` unless it is an earlier ``--bench`` result and ``overwrite``."""
    if not path.exists() and not path.is_symlink():
        return
    try:
        old = json.loads(path.read_text())
        ours = isinstance(old, dict) and {"frames_per_s", "renderer_setup_s"} <= old.keys()
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise OutputError(f"{path} exists and is not a cvl-synth --bench result; cvl-synth will "
                          "not overwrite it: choose another --out")
    if not overwrite:
        raise OutputError(f"{path} holds an earlier --bench result; pass --overwrite to replace "
                          "it, or choose another --out")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``cvl-synth``."""
    p = argparse.ArgumentParser(
        prog="cvl-synth", description="Generate a procedural town in the KITTI raw + KITTI-CVL "
        "layout (satellite mosaic, 10 Hz forward-camera drives, OXTS, tiles, split files).")
    p.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=0,
                   help="town seed (same seed, same bytes)")
    p.add_argument("--out", required=True,
                   help="output folder (the dataset root; new or empty, see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset cvl-synth wrote at --out (never anything else)")
    p.add_argument("--size-m", type=number(float, 100.0, 2000.0, unit="m"), default=500.0,
                   metavar="M", help="town side in metres (100-2000; default 500)")
    p.add_argument("--drives", type=number(int, 1, 100), default=2, metavar="N",
                   help="number of drives (1-100)")
    p.add_argument("--frames-per-drive", type=number(int, 1, 20000), default=200, metavar="N",
                   help="10 Hz frames per drive (1-20000)")
    p.add_argument("--style", default=None, choices=sorted(STYLES),
                   help="generator settings: suburb, downtown (train); old_town, hard (test). "
                   "Default: hard with --split test, else suburb")
    p.add_argument("--split", default="both", choices=("train", "test", "both"),
                   help="which split files the drives go to (both: last drives are test)")
    p.add_argument("--test-drives", type=number(int, 0, 100), default=None, metavar="N",
                   help="with --split both: number of test drives (default drives//4, >= 1)")
    p.add_argument("--image-size", type=_parse_size, default=(1024, 256), metavar="WxH",
                   help="ground image size, 16-4096 px each; KITTI P_rect_02 is rescaled "
                   "(default 1024x256)")
    p.add_argument("--tile-px", type=number(int, 16, 4096), default=512, metavar="PX",
                   help="satellite tile side in pixels (16-4096)")
    p.add_argument("--tile-spacing-m", type=number(float, 1.0, 1000.0, unit="m"), default=10.0,
                   metavar="M", help="tile grid spacing (1-1000 m)")
    p.add_argument("--tile-stride", type=number(int, 1, 10000), default=1, metavar="K",
                   help="use every K-th frame as query")
    p.add_argument("--gps-noise-m", type=number(float, 0.0, 100.0, unit="m"), default=None,
                   metavar="M", help="2D RMS of the GPS error written to oxts/ (0-100 m; "
                   "default: drawn from the style's range, 1-3 m)")
    p.add_argument("--heading-noise-deg", type=number(float, 0.0, 90.0, unit="deg"),
                   default=None, metavar="DEG",
                   help="sigma of the heading error in oxts/ (0-90; default: the style's)")
    p.add_argument("--sat-lean-max-m-per-m", type=number(float, 0.0, 1.0, unit="m/m"),
                   default=None, metavar="K",
                   help="off-nadir lean of the satellite capture: drawn per town in [0, K] m of "
                   "horizontal shift per m of height, in a random direction (0-1; default: the "
                   "style's range, 0-0.05 for the training styles, 0.03-0.1 for the test styles)")
    p.add_argument("--no-tiles", action="store_true", help="skip satmap/ and split files")
    p.add_argument("--preview", action="store_true", help="also write preview.png")
    p.add_argument("--bench", action="store_true",
                   help="only time rendering at 256x1024 on one core; JSON to OUT/bench.json")
    p.add_argument("--bench-frames", type=number(int, 1, 10000), default=60, metavar="N",
                   help="frames timed by --bench")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    """Console entry point of ``cvl-synth``."""
    args = build_parser().parse_args(argv)
    log = None if args.quiet else (lambda m: print(m, flush=True))
    if args.bench:
        out = Path(args.out) / "bench.json"
        try:
            _check_bench_json(out, args.overwrite)
        except OutputError as e:
            print(f"cvl-synth: error: {e}", file=sys.stderr)
            return 2
        res = bench(out, n_frames=args.bench_frames, style=args.style or "suburb", seed=args.seed,
                    image_size=(1024, 256) if args.image_size == (1024, 256) else args.image_size)
        print(json.dumps(res, indent=1))
        return 0
    style = args.style or ("hard" if args.split == "test" else "suburb")
    try:
        summary = generate(
            args.out, seed=args.seed, style=style, size_m=args.size_m, drives=args.drives,
            frames_per_drive=args.frames_per_drive, image_size=args.image_size,
            split=args.split, n_test_drives=args.test_drives, tile_px=args.tile_px,
            tile_spacing_m=args.tile_spacing_m, tile_stride=args.tile_stride,
            gps_noise_m=args.gps_noise_m, heading_noise_deg=args.heading_noise_deg,
            preview=args.preview, build_tiles=not args.no_tiles, log=log,
            overwrite=args.overwrite, sat_lean_max_m_per_m=args.sat_lean_max_m_per_m)
    except (ValueError, RuntimeError) as e:  # OutputError is a ValueError
        print(f"cvl-synth: error: {e}", file=sys.stderr)
        return 2
    if log:
        log(f"done in {summary['seconds']:.1f} s: {summary['frames']} frames "
            f"({summary['render_frames_per_s'] or 0:.1f} rendered frames/s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
