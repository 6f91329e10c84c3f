"""``cvl-build-db``: run the satellite branch once over tiles and write a ``TileDatabase``.

``--tiles`` is either a KITTI-CVL root (tiles of ``--split``, default ``test2``: every test tile)
or a georeferenced mosaic: ``mosaic.png`` with ``mosaic.geo.json`` (or a folder holding them),
an image with a web-mercator world file, or an orthophoto with its own geo-reference in any
projected or geographic CRS (GeoTIFF, COG, JPEG 2000, anything GDAL reads;
:mod:`cvl_ros.orthophoto`, datum ``--datum``, default its centre). The mosaic is cut into
north-up tiles on a regular ENU grid of ``--spacing-m`` about its datum whose tiles lie inside
the mosaic (at most ``--max-tiles``). Under ``torchrun`` every rank encodes every WORLD_SIZE-th
tile into a shard and rank 0 merges the shards into ``--out``.

``--out`` is written safely (``docs/output-safety.md``): a new or empty folder, or with
``--overwrite`` a database this tool wrote that holds nothing else; never a folder of anything
else, never one that holds or lies inside an input; written beside and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from cvl_ros.cli._args import device, number
from cvl_ros.cli.build_tiles import _datum

PROG = "cvl-build-db"


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``cvl-build-db``."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0][2:])
    p.add_argument("--checkpoint", required=True, help="model .safetensors (or its folder)")
    p.add_argument("--tiles", required=True,
                   help="KITTI-CVL root, or a GeoMosaic PNG (with .geo.json) / folder with one, "
                   "or a mosaic image with a world file, or an orthophoto (GeoTIFF/COG, "
                   "JPEG 2000, ...) in its own CRS")
    p.add_argument("--out", required=True,
                   help="database folder to write (new or empty; see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a database this tool wrote at --out (never anything else)")
    p.add_argument("--split", default="test2", choices=("train", "test1", "test2"),
                   help="KITTI-CVL split whose tiles to encode (default test2)")
    p.add_argument("--spacing-m", type=number(float, 0.1, 10000.0, unit="m"), default=10.0,
                   metavar="M", help="mosaic tile grid spacing (0.1-10000 m; default 10)")
    p.add_argument("--datum", type=_datum, default=None, metavar="LAT,LON[,ALT]",
                   help="mosaic with a world file or orthophoto in its own CRS: ENU datum = "
                   "origin of the tile grid (default: the image centre, altitude 0)")
    p.add_argument("--max-tiles", type=number(int, 1, 10_000_000), default=MAX_TILES,
                   metavar="N", help=f"refuse a mosaic grid of more tiles (default {MAX_TILES})")
    p.add_argument("--batch-size", type=number(int, 1, 4096), default=16, metavar="N")
    p.add_argument("--device", type=device, default="cpu",
                   help="auto | cpu | cuda | cuda:N (cuda: this rank's GPU; default cpu)")
    p.add_argument("--threads", type=number(int, 1, 1024), default=None, metavar="N")
    p.add_argument("--no-progress", action="store_true")
    return p


def _find_mosaic(path: Path):
    from cvl_ros.tiles import geo_sidecar_path

    if path.is_file():  # a PNG with .geo.json, an image with a world file, an orthophoto
        return path
    if path.is_dir() and not any((path / f).is_file() for f in
                                 ("train_files.txt", "test1_files.txt", "test2_files.txt")):
        cands = sorted(p for p in path.glob("*.png") if geo_sidecar_path(p).is_file())
        if cands:
            return cands[0]
    return None


MAX_TILES = 200_000


def mosaic_tiles(mosaic, coverage_m: float, sat_px: int, spacing_m: float,
                 max_tiles: int | None = None):
    """(count, generator of (tile_id, lat, lon, RGB)) over the mosaic's interior grid.

    Raises ``ValueError`` when the grid has more than ``max_tiles`` tiles (counted before any
    grid is made, so a tiny spacing cannot exhaust memory).
    """
    e0, e1, n0, n1 = mosaic.extent_enu
    half = coverage_m / 2.0
    n_e = max(0, math.floor((e1 - half) / spacing_m) - math.ceil((e0 + half) / spacing_m) + 1)
    n_n = max(0, math.floor((n1 - half) / spacing_m) - math.ceil((n0 + half) / spacing_m) + 1)
    if max_tiles is not None and n_e * n_n > max_tiles:
        suggest = spacing_m * math.sqrt(n_e * n_n / max_tiles)
        raise ValueError(
            f"--spacing-m {spacing_m:g} over the mosaic's {e1 - e0:.0f} x {n1 - n0:.0f} m gives "
            f"{n_e * n_n} tiles, more than --max-tiles {max_tiles}; use --spacing-m "
            f"{math.ceil(suggest * 10) / 10:g} or more, or raise --max-tiles")
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
    from cvl_ros.cli._args import CliError, fail, resolve_device
    from cvl_ros.database import DatabaseError, TileDatabase, recognise_database
    from cvl_ros.outputs import OutputError, check_output

    try:
        device = resolve_device(args.device)
        if not Path(args.tiles).exists():
            raise CliError(f"--tiles {args.tiles}: no such file or folder; give a KITTI-CVL "
                           "root or a mosaic PNG with its .geo.json")
        if int(os.environ.get("RANK", 0)) == 0:  # checked again before writing
            check_output(args.out, tool=PROG, inputs=[args.checkpoint, args.tiles],
                         overwrite=args.overwrite, recognise=recognise_database)
        mosaic_path = _find_mosaic(Path(args.tiles))
        if args.datum is not None and mosaic_path is None:
            raise CliError(f"--datum applies to a mosaic; {args.tiles} is a KITTI-CVL root, "
                           "whose datum is its own")
    except (CliError, OutputError) as exc:
        return fail(PROG, exc)
    mosaic = None
    if mosaic_path is not None:  # read (and checked) before the model loads
        from cvl_ros.tiles import read_mosaic

        try:
            mosaic = read_mosaic(mosaic_path, datum=args.datum)
        except (OSError, ValueError) as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        note = mosaic.crs_note() if hasattr(mosaic, "crs_note") else None
        if note and int(os.environ.get("RANK", 0)) == 0:
            print(f"{PROG}: note: {mosaic_path}: {note}", file=sys.stderr)
    import torch

    from cvl_ros.model.cvlnet import CheckpointError, load_checkpoint, resolve_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        device = f"cuda:{local % max(1, torch.cuda.device_count())}"
    try:
        model, _ = load_checkpoint(resolve_checkpoint(args.checkpoint), map_location=device)
    except CheckpointError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    cfg = model.config
    src = Path(args.tiles)
    t0 = time.time()
    try:
        if mosaic is not None:
            count, tiles = mosaic_tiles(mosaic, cfg.coverage_m, cfg.sat_px, args.spacing_m,
                                        args.max_tiles)
            datum = mosaic.datum
            extra = {"source": str(mosaic_path), "kind": "mosaic", "spacing_m": args.spacing_m}
            if hasattr(mosaic, "crs_note"):  # an orthophoto in its own CRS
                g = mosaic.georef_dict()
                extra["georef"] = {k: g[k] for k in (
                    "format", "driver", "crs", "crs_operation", "crs_accuracy_m",
                    "geotransform", "m_per_px", "width_px", "height_px")}
            if count == 0:
                e0, e1, n0, n1 = mosaic.extent_enu
                raise ValueError(
                    f"{mosaic_path}: the mosaic covers {e1 - e0:.1f} x {n1 - n0:.1f} m about "
                    f"its datum, less than one {cfg.coverage_m:g} m tile of this model "
                    f"(grid --spacing-m {args.spacing_m:g}); give a mosaic that covers at "
                    "least one tile")
        else:
            from cvl_ros.datasets import KittiCVL

            ds = KittiCVL(src, split=args.split, seq_len=1, ground_hw=tuple(cfg.ground_hw),
                          sat_px=cfg.sat_px, coverage_m=cfg.coverage_m, validate=False)
            count = len(ds.tile_table())
            tiles = ds.iter_tiles()
            datum = ds.datum
            extra = {"source": str(src), "kind": "kitti_cvl", "split": args.split}
    except (FileNotFoundError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if count == 0:
        print(f"{PROG}: error: no tiles found in {src}", file=sys.stderr)
        return 2
    out = Path(args.out)
    inputs = [Path(args.checkpoint), src]
    try:
        if world > 1:
            db = _build_distributed(args, model, tiles, out, datum, device, extra, inputs,
                                    rank, world)
            if db is None:
                return 0
        else:
            check_output(out, tool=PROG, inputs=inputs, overwrite=args.overwrite,
                         recognise=recognise_database)
            db = TileDatabase.build(model, tiles, out, datum, args.batch_size, device,
                                    progress=not args.no_progress, extra=extra,
                                    overwrite=args.overwrite)
    except (DatabaseError, OutputError) as exc:
        if rank == 0:  # under torchrun every rank fails alike: one message
            print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(out), "tiles": len(db), "model_hash": db.model_hash,
                      "seconds": round(time.time() - t0, 2), "world_size": world}))
    return 0


def _build_distributed(args, model, tiles, out, datum, device, extra, inputs, rank, world):
    """torchrun: shards in rank 0's temporary output folder, merged there, renamed onto out.

    Returns the database on rank 0, None on the other ranks.
    """
    import torch.distributed as dist

    from cvl_ros.database import TileDatabase, recognise_database
    from cvl_ros.outputs import OutputError, prepare_output

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        with ExitStack() as stack:
            box = [None, None]  # staging folder, error message
            if rank == 0:
                try:
                    box[0] = str(stack.enter_context(prepare_output(
                        out, tool=PROG, inputs=inputs, overwrite=args.overwrite,
                        recognise=recognise_database)))
                except OutputError as exc:
                    box[1] = str(exc)
            dist.broadcast_object_list(box, src=0)
            if box[1] is not None:
                raise OutputError(box[1])
            staging = Path(box[0])
            TileDatabase.build(model, tiles, staging, datum, args.batch_size, device,
                               shard=(rank, world), progress=not args.no_progress, extra=extra)
            dist.barrier()
            if rank == 0:
                shards = sorted((staging / "shards").glob("shard-*-of-*"))
                TileDatabase.write_merged(shards, staging)
                shutil.rmtree(staging / "shards")  # inside this run's own temporary folder
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return TileDatabase.open(out) if rank == 0 else None


if __name__ == "__main__":
    sys.exit(main())
