"""``cvl-build-db``: run the satellite branch once over tiles and write a ``TileDatabase``.

``--tiles`` is either a KITTI-CVL root (tiles of ``--split``, default ``test2``: every test tile)
or a georeferenced mosaic (``mosaic.png`` with ``mosaic.geo.json``, or a folder holding them):
the mosaic is cut into tiles on a regular ENU grid of ``--spacing-m`` whose tiles lie inside
the mosaic. Under ``torchrun`` every rank encodes every WORLD_SIZE-th tile into a shard and rank
0 merges the shards into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``cvl-build-db``."""
    p = argparse.ArgumentParser(prog="cvl-build-db", description=__doc__.splitlines()[0][2:])
    p.add_argument("--checkpoint", required=True, help="model .safetensors (or its folder)")
    p.add_argument("--tiles", required=True,
                   help="KITTI-CVL root, or a GeoMosaic PNG (with .geo.json) / folder with one")
    p.add_argument("--out", required=True, help="database directory to write")
    p.add_argument("--split", default="test2", help="KITTI-CVL split whose tiles to encode "
                   "(train | test1 | test2; default test2)")
    p.add_argument("--spacing-m", type=float, default=10.0, help="mosaic tile grid spacing")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", help="cpu | cuda (cuda: this rank's GPU)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


def _find_mosaic(path: Path):
    from cvl_ros.tiles import geo_sidecar_path

    if path.is_file() and path.suffix.lower() == ".png":
        return path
    if path.is_dir() and not any((path / f).is_file() for f in
                                 ("train_files.txt", "test1_files.txt", "test2_files.txt")):
        cands = sorted(p for p in path.glob("*.png") if geo_sidecar_path(p).is_file())
        if cands:
            return cands[0]
    return None


def mosaic_tiles(mosaic, coverage_m: float, sat_px: int, spacing_m: float):
    """(count, generator of (tile_id, lat, lon, RGB)) over the mosaic's interior grid."""
    e0, e1, n0, n1 = mosaic.extent_enu
    half = coverage_m / 2.0
    es = np.arange(np.ceil((e0 + half) / spacing_m), np.floor((e1 - half) / spacing_m) + 1)
    ns = np.arange(np.ceil((n0 + half) / spacing_m), np.floor((n1 - half) / spacing_m) + 1)
    grid = [(i * spacing_m, j * spacing_m) for j in ns[::-1] for i in es]

    def gen():
        for e, n in grid:
            lat, lon, _ = mosaic.datum.to_geodetic(e, n, mosaic.datum.alt_m)
            img = mosaic.crop(e, n, sat_px, coverage_m / sat_px)
            yield f"e{e:+.1f}_n{n:+.1f}", float(lat), float(lon), img

    return len(grid), gen()


def main(argv=None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    import torch

    from cvl_ros.database import DatabaseError, TileDatabase
    from cvl_ros.model.cvlnet import CheckpointError, load_checkpoint
    from cvl_ros.training import resolve_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = args.device
    if device == "cuda":
        device = f"cuda:{local % max(1, torch.cuda.device_count())}"
    try:
        model, _ = load_checkpoint(resolve_checkpoint(args.checkpoint), map_location=device)
    except CheckpointError as exc:
        print(f"cvl-build-db: error: {exc}", file=sys.stderr)
        return 2
    cfg = model.config
    src = Path(args.tiles)
    mosaic_path = _find_mosaic(src)
    t0 = time.time()
    try:
        if mosaic_path is not None:
            from cvl_ros.tiles import GeoMosaic

            mosaic = GeoMosaic.read(mosaic_path)
            count, tiles = mosaic_tiles(mosaic, cfg.coverage_m, cfg.sat_px, args.spacing_m)
            datum = mosaic.datum
            extra = {"source": str(mosaic_path), "kind": "mosaic", "spacing_m": args.spacing_m}
        else:
            from cvl_ros.datasets import KittiCVL

            ds = KittiCVL(src, split=args.split, seq_len=1, ground_hw=tuple(cfg.ground_hw),
                          sat_px=cfg.sat_px, coverage_m=cfg.coverage_m, validate=False)
            count = len(ds.tile_table())
            tiles = ds.iter_tiles()
            datum = ds.datum
            extra = {"source": str(src), "kind": "kitti_cvl", "split": args.split}
    except (FileNotFoundError, ValueError) as exc:
        print(f"cvl-build-db: error: {exc}", file=sys.stderr)
        return 2
    if count == 0:
        print(f"cvl-build-db: error: no tiles found in {src}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
            shard_dir = TileDatabase.build(model, tiles, out, datum, args.batch_size, device,
                                           shard=(rank, world), progress=not args.no_progress,
                                           extra=extra)
            dist.barrier()
            if rank == 0:
                shards = sorted((out / "shards").glob("shard-*-of-*"))
                db = TileDatabase.merge(shards, out, remove_shards=True)
            dist.barrier()
            dist.destroy_process_group()
            if rank != 0:
                return 0
            del shard_dir
        else:
            db = TileDatabase.build(model, tiles, out, datum, args.batch_size, device,
                                    progress=not args.no_progress, extra=extra)
    except DatabaseError as exc:
        print(f"cvl-build-db: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(out), "tiles": len(db), "model_hash": db.model_hash,
                      "seconds": round(time.time() - t0, 2), "world_size": world}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
