"""Latency, memory and retrieval benchmark behind ``cvl-bench``.

Measured (median of ``reps`` >= 20 repetitions after warm-up, wall-clock, under
``torch.inference_mode`` as the Localizer's update runs; model timings interleaved so that
load changes on a shared machine hit all of them alike):

* ``backbone_forward_ms``: one ``encode_ground`` of one frame.
* ``update_ms[N]``: one tracking update with a window of N frames and cached per-frame states
  (``CVLNet.frame_states``: the backbone features, or with ``pcsf_frame_canvas`` each frame's
  Q/K/V canvas): the new keyframe's backbone forward and state, the fusion of all N states for
  the newest pose (``fuse_frame_states``), and matching against 50 candidate tiles
  (precomputed satellite descriptors, as the tile database provides them).
* ``recompute_update_ms[N]``: the same, but all N frames go through the backbone every update
  (the paper's way).
* ``peak_rss_mb``: the process's peak resident set size (``getrusage``) after the inference
  runs (backbone and cached updates up to the largest N; ``cuda_peak_mb`` too on CUDA), taken
  before the recompute runs; ``recompute_peak_rss_mb``: the peak after those too (16 frames
  through the backbone at once).
* ``retrieval_ms_per_query[T]``: ``TileDatabase.global_topk`` (two-stage: pooled global
  descriptor shortlist, then full SSM shift search on the shortlist) over a database of T tiles
  (random descriptors of the model's shape; the cost does not depend on their values).
"""

from __future__ import annotations

import gc
import math
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, reps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t) * 1000.0)
    return float(statistics.median(times))


def window_geometry(model, n: int, spacing_m: float = 3.0):
    """K (1,N,3,3) and T_grid_cams (1,N,4,4) of a camera driving east, ``spacing_m`` apart."""
    from cvl_ros.camera import make_body_from_camera, pose_enu, relative_camera_poses

    h, w = model.config.ground_hw
    f = 0.58 * w
    K = torch.tensor([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])
    T_body_cam = make_body_from_camera(1.0, 0.0, 1.65)
    T_world_cams = np.stack([pose_enu(-k * spacing_m, 0.0, 0.0, 0.0) @ T_body_cam
                             for k in range(n)])
    T = torch.from_numpy(relative_camera_poses(T_world_cams)).float()
    return K.expand(1, n, 3, 3).clone(), T[None]


@torch.inference_mode()
def bench_model(model, device, windows=(1, 4, 8, 16), reps: int = 20, warmup: int = 3,
                candidates: int = 50) -> dict:
    """Backbone, update and recompute-update latencies (ms) for the window lengths.

    The measurements are interleaved (each repetition times the backbone and the cached update
    of every window length in turn; then, separately, the recompute updates), so a change of
    machine load during the run affects them alike and their ratios stay meaningful on a shared
    machine. Also returns the peak RSS of the inference phase and of the whole run.
    """
    from cvl_ros.model.matching import SatelliteDescriptor

    model.eval().to(device)
    h, w = model.config.ground_hw
    frame = torch.rand(1, 3, h, w, device=device)
    sat_px = model.config.sat_px
    # the candidates' descriptors come from the tile database in the node; encode them here in
    # small batches so that this setup does not set the inference phase's peak memory
    tiles = [model.encode_satellite(torch.rand(min(8, candidates - i), 3, sat_px, sat_px,
                                               device=device))
             for i in range(0, candidates, 8)]
    tiles = SatelliteDescriptor(torch.cat([t.features for t in tiles]),
                                torch.cat([t.uncertainty for t in tiles]))
    gc.collect()
    feat1 = model.encode_ground(frame)
    tasks = {"backbone": lambda: model.encode_ground(frame)}
    for n in windows:
        K, T = window_geometry(model, n)
        K, T = K.to(device), T.to(device)
        # what a sliding window caches per frame (features, or per-frame Q/K/V canvases)
        cache = model.frame_states(feat1.expand(n, *feat1.shape[1:])[None], K, T)[0, 1:]
        cache = [c.clone() for c in cache]
        frames = torch.rand(n, 3, h, w, device=device)

        def update(n=n, K=K, T=T, cache=cache):
            new = model.encode_ground(frame)  # the new keyframe only
            state = model.frame_states(new[None], K[:, :1], T[:, :1])[0, 0]
            g = model.fuse_frame_states([state] + cache[: n - 1], K, T)
            return model.match(g, tiles)

        def recompute(n=n, K=K, T=T, frames=frames):
            feats = model.encode_ground(frames)[None]
            g = model.project_and_fuse(feats, K, T)
            return model.match(g, tiles)

        tasks[f"update/{n}"] = update
        tasks[f"recompute/{n}"] = recompute
    # phase 1: the node's inference (backbone and cached updates, interleaved), then its peak
    # memory; phase 2: the paper's recompute-everything updates (larger activations)
    inference = {k: fn for k, fn in tasks.items() if not k.startswith("recompute/")}
    recompute = {k: fn for k, fn in tasks.items() if k.startswith("recompute/")}
    med = _interleaved_medians(inference, reps, warmup, device)
    mem = {"peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        mem["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    med.update(_interleaved_medians(recompute, reps, warmup, device))
    mem["recompute_peak_rss_mb"] = peak_rss_mb()
    return {
        "backbone_forward_ms": med["backbone"],
        "update_ms": {str(n): med[f"update/{n}"] for n in windows},
        "recompute_update_ms": {str(n): med[f"recompute/{n}"] for n in windows},
        **mem,
    }


def _interleaved_medians(tasks: dict, reps: int, warmup: int, device: torch.device) -> dict:
    """Median ms of each task, the repetitions interleaved across tasks."""
    for _ in range(warmup):
        for fn in tasks.values():
            fn()
    times: dict = {k: [] for k in tasks}
    for _ in range(reps):
        for key, fn in tasks.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[key].append((time.perf_counter() - t) * 1000.0)
    return {k: float(statistics.median(v)) for k, v in times.items()}


@torch.no_grad()
def bench_retrieval(model, sizes=(100, 1000, 10000), reps: int = 20, warmup: int = 3,
                    k: int = 10, shortlist: int | None = None, workdir=None) -> dict:
    """Median ms per ``global_topk`` query for databases of the given sizes."""
    from cvl_ros.database import TileDatabase
    from cvl_ros.geo import GeoDatum
    from cvl_ros.model.matching import GroundDescriptor

    cfg = model.config
    model = model.cpu().eval()
    d, s = cfg.descriptor_dim, cfg.grid_cells
    rng = np.random.default_rng(0)
    datum = GeoDatum(49.015, 8.43, 110.0)
    res = {}
    tmp = tempfile.TemporaryDirectory(dir=workdir)
    try:
        for t in sizes:
            feats = rng.standard_normal((t, d, s, s)).astype(np.float16)
            unc = rng.uniform(0.1, 1.0, (t, 1, s, s)).astype(np.float16)
            side = int(math.ceil(math.sqrt(t)))
            ij = np.stack(np.divmod(np.arange(t), side), 1).astype(np.float64) * 10.0
            lat, lon, _ = datum.to_geodetic(ij[:, 1], ij[:, 0], 0.0)
            db = TileDatabase.from_arrays(Path(tmp.name) / f"db{t}", model.model_hash(), feats,
                                          unc, np.stack([lat, lon], 1), datum,
                                          model_config=cfg.to_dict(),
                                          search_cells=model.search_radius,
                                          coverage_m=cfg.coverage_m,
                                          use_uncertainty=cfg.use_uncertainty)
            db = TileDatabase.open(db.path, model=model)
            queries = [GroundDescriptor(torch.randn(1, d, s, s), torch.ones(1, 1, s, s))
                       for _ in range(reps + warmup)]
            it = iter(queries)

            def query(db=db, it=it):
                return db.global_topk(next(it), k, shortlist=shortlist)

            res[str(t)] = _median_ms(query, reps, warmup, torch.device("cpu"))
            del db, query
            gc.collect()
    finally:
        tmp.cleanup()
    return res


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(model, device: str = "cpu", windows=(1, 4, 8, 16), reps: int = 20,
        db_sizes=(100, 1000, 10000), backbone: str | None = None) -> dict:
    """The full ``cvl-bench`` record."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    out = bench_model(model, dev, windows, reps)
    out["retrieval_ms_per_query"] = bench_retrieval(model, db_sizes, reps)
    out["device"] = str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    out["backbone"] = backbone or model.config.backbone
    out["threads"] = torch.get_num_threads()
    out["ground_hw"] = list(model.config.ground_hw)
    out["grid_cells"] = int(model.config.grid_cells)
    out["fusion"] = model.config.fusion
    out["pcsf_layers"] = int(model.config.pcsf_layers)
    out["pcsf_frame_canvas"] = bool(model.config.pcsf_frame_canvas)
    out["reps"] = reps
    u = out["update_ms"]
    if "16" in u and "4" in u:
        out["ratios"] = {
            "update16_over_backbone": u["16"] / out["backbone_forward_ms"],
            "update16_over_update4": u["16"] / u["4"],
            "recompute16_over_update16": out["recompute_update_ms"]["16"] / u["16"],
        }
    return out
