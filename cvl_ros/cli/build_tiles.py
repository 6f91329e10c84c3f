"""``cvl-build-tiles``: cut KITTI-CVL satellite tiles and split files from a georeferenced mosaic.

The tile builder KITTI-CVL's authors never released. Camera positions of KITTI raw drives
(``<raw>/raw_data/<date>/<date>_drive_<NNNN>_sync/oxts`` with the date folder's calibration)
are placed on a mosaic: an image with the project's ``<name>.geo.json`` sidecar, a north-up
web-mercator (EPSG:3857) image with an ESRI world file (``.pgw``/``.jgw``/``.tfw``/``.wld``), or
an orthophoto with its own geo-reference in any projected or geographic CRS (GeoTIFF, COG,
JPEG 2000, anything GDAL reads; :mod:`cvl_ros.orthophoto`). Tiles are cut on a regular ENU grid
of ``--spacing-m`` about the mosaic's datum, north-up on that plane, and written in the
KITTI-CVL layout under ``--out``:

- ``satmap/train_10mgap/<date>/<drive>/<frame>.png``: one tile per training frame, centred on
  the grid point nearest to the camera (KITTI-CVL's folder name, whatever the spacing);
- ``satmap/test/<drive>/<lat>_<lon>.png``: every grid point within ``--test-radius-m`` of a
  test drive's camera positions (distractors included);
- ``train_files.txt``, ``test1_files.txt``, ``test2_files.txt``: ``<date>/<drive>/<frame>.png
  <lat> <lon>``;
- ``satmap/tiles.json``: resolution, tile size, spacing, datum and the command's inputs.

``--out`` may already hold other things (a dataset made by ``cvl-synth``, a KITTI raw root).
The run writes only the paths above (:func:`cvl_ros.outputs.prepare_members`): if any exists,
``--overwrite`` is needed, and replaces it only where a cvl tool wrote it (listed in
``--out/.cvl-output.json``, or recognised through ``satmap/tiles.json`` of an earlier version);
everything is cut in a hidden staging folder and moved into place at the end, so a refused or
failed run leaves ``--out`` as it was. See ``docs/output-safety.md`` and
:func:`cvl_ros.tiles.build_tiles`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from cvl_ros.cli._args import number

PROG = "cvl-build-tiles"


#: Default bound on the tiles one run may cut (``--max-tiles``).
MAX_TILES = 200_000


def _drive_list(text: str) -> list:
    return [s.strip() for s in text.split(",") if s.strip()]


def _datum(text: str):
    from cvl_ros.geo import GeoDatum

    parts = [s.strip() for s in text.split(",")]
    try:
        vals = [float(s) for s in parts]
    except ValueError:
        vals = []
    if len(vals) not in (2, 3) or not all(np.isfinite(vals)) or abs(vals[0]) > 85.06 \
            or abs(vals[1]) > 180.0:
        raise argparse.ArgumentTypeError(f"expected LAT,LON[,ALT] in degrees (and m), got "
                                         f"{text!r}")
    return GeoDatum(*vals)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``cvl-build-tiles``."""
    p = argparse.ArgumentParser(
        prog=PROG, description="Cut KITTI-CVL satellite tiles (satmap/) and split files from a "
        "georeferenced mosaic around KITTI raw drives.")
    p.add_argument("--raw", required=True, metavar="DIR",
                   help="dataset root holding raw_data/<date>/<date>_drive_<NNNN>_sync (or "
                   "raw_data/ itself)")
    p.add_argument("--mosaic", required=True, metavar="IMAGE",
                   help="mosaic image; geo-reference beside it: <name>.geo.json, else a "
                   "world file (.pgw/.jgw/.tfw/.wld, EPSG:3857), else the image's own: a "
                   "GeoTIFF/COG, JPEG 2000 or other raster GDAL reads, in any projected or "
                   "geographic CRS")
    p.add_argument("--georef", default=None, metavar="FILE",
                   help="explicit geo-reference: a .geo.json sidecar or an ESRI world file")
    p.add_argument("--datum", type=_datum, default=None, metavar="LAT,LON[,ALT]",
                   help="world file or orthophoto in its own CRS: ENU datum = origin of the "
                   "tile grid (default: the image centre, altitude 0)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="KITTI-CVL root to write satmap/ and the split files into")
    p.add_argument("--train-drives", type=_drive_list, action="extend", default=[],
                   metavar="LIST", help="comma list of training drives "
                   "(2011_09_26_drive_0001_sync or 2011_09_26/2011_09_26_drive_0001_sync)")
    p.add_argument("--test-drives", type=_drive_list, action="extend", default=[],
                   metavar="LIST", help="comma list of test drives (Test-1 and Test-2)")
    p.add_argument("--test2-drives", type=_drive_list, action="extend", default=None,
                   metavar="LIST", help="drives of test2_files.txt (default: --test-drives)")
    p.add_argument("--spacing-m", type=number(float, 0.1, 10000.0, unit="m"), default=10.0,
                   metavar="M", help="tile grid spacing in metres (0.1-10000; default: 10)")
    p.add_argument("--tile-px", type=number(int, 8, 8192), default=1280, metavar="PX",
                   help="tile side in pixels (8-8192; default: 1280)")
    p.add_argument("--m-per-px", type=number(float, 0.0, 100.0, low_inclusive=False, unit="m"),
                   default=None, metavar="M",
                   help="tile resolution in metres per pixel (default: the mosaic's own)")
    p.add_argument("--test-radius-m", type=number(float, 0.0, 10000.0, unit="m"), default=None,
                   metavar="M", help="test tiles: every grid point within this distance of a "
                   "test drive's camera positions (default: --spacing-m)")
    p.add_argument("--query-stride", type=number(int, 1, 100000), default=1, metavar="K",
                   help="keep every K-th frame as a query (default: 1)")
    p.add_argument("--max-tiles", type=number(int, 1, 10_000_000), default=MAX_TILES,
                   metavar="N", help="refuse a run that would cut more tiles "
                   f"(default: {MAX_TILES})")
    p.add_argument("--cam", type=int, default=2, choices=(0, 1, 2, 3),
                   help="KITTI camera whose position centres the tiles (default: 2)")
    p.add_argument("--png-compression", type=int, default=1, choices=range(10),
                   metavar="0-9", help="PNG compression level (default: 1)")
    p.add_argument("--no-links", action="store_true",
                   help="write a copy per training frame instead of hard links for frames "
                   "that share a tile")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the tiles, split files and tiles.json already under OUT "
                   "(only those a cvl tool wrote; default: refuse)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


class _InputError(ValueError):
    """Bad input, reported as ``cvl-build-tiles: error: ...`` with exit status 2."""


def _raw_data_dir(raw: Path) -> Path:
    if (raw / "raw_data").is_dir():
        return raw / "raw_data"
    if raw.is_dir():
        return raw
    raise _InputError(f"KITTI raw root not found: {raw}")


def resolve_drive(raw_data: Path, name: str) -> str:
    """Drive folder name (or ``<date>/<drive>``) -> ``"<date>/<drive>"`` under ``raw_data``."""
    name = name.strip().strip("/")
    if "/" in name:
        date, _, drive = name.rpartition("/")
        cands = [raw_data / date / drive]
    else:
        cands = [raw_data / name.split("_drive_")[0] / name] if "_drive_" in name else []
        cands += [d / name for d in sorted(raw_data.iterdir()) if d.is_dir()]
    for c in cands:
        if c.is_dir():
            return f"{c.parent.name}/{c.name}"
    where = cands[0] if cands else raw_data / "<date>" / name
    raise _InputError(f"drive {name!r} not found: no folder {where}")


def _resolve_all(raw_data: Path, names) -> list:
    out = []
    for n in names:
        key = resolve_drive(raw_data, n)
        if key not in out:
            out.append(key)
    return out


def _check_inside(mosaic, key: str, frames, pos, name: str = "") -> None:
    rows, cols = mosaic.enu_to_pixel(pos[:, 0], pos[:, 1])
    rows, cols = np.atleast_1d(rows), np.atleast_1d(cols)
    inside = ((rows >= -0.5) & (rows <= mosaic.height_px - 0.5)
              & (cols >= -0.5) & (cols <= mosaic.width_px - 0.5))
    what = "outside the mosaic"
    if inside.all() and getattr(mosaic, "masked", False):  # an orthophoto's nodata / alpha
        inside = mosaic.valid_at(pos[:, 0], pos[:, 1])
        what = "where the mosaic has no data (its nodata value, alpha or mask band)"
    if inside.all():
        return
    bad = np.flatnonzero(~inside)
    lat, lon, _ = mosaic.datum.to_geodetic(pos[bad[0], 0], pos[bad[0], 1], 0.0)
    e0, e1, n0, n1 = mosaic.extent_enu
    la0, lo0, _ = mosaic.datum.to_geodetic(e0, n0, 0.0)
    la1, lo1, _ = mosaic.datum.to_geodetic(e1, n1, 0.0)
    raise _InputError(
        f"drive {key}: {len(bad)} of {len(pos)} camera positions lie {what} {name}"
        f"(first: frame {int(frames[bad[0]])} at lat {lat:.7f}, lon {lon:.7f}); the mosaic "
        f"covers about lat {la0:.7f}..{la1:.7f}, lon {lo0:.7f}..{lo1:.7f}; give a mosaic "
        "that covers the drive, or leave the drive out")


def _tile_dirs(out: Path, train, tests) -> list:
    sat = out / "satmap"
    return ([sat / "train_10mgap" / k for k in train]
            + [sat / "test" / k.split("/")[1] for k in tests])


def _check_tile_count(traj, train, tests, spacing_m: float, radius_m: float, stride: int,
                      max_tiles: int) -> None:
    """Refuse a run whose tile count (an upper estimate, made before any work) is too large."""
    n = sum(len(traj[k][0][::stride]) for k in train)
    r = math.ceil(radius_m / spacing_m)
    for k in dict.fromkeys(tests):
        pos = traj[k][1]
        span_e, span_n = np.ptp(pos[:, 0]) + 2 * radius_m, np.ptp(pos[:, 1]) + 2 * radius_m
        box = (span_e / spacing_m + 2) * (span_n / spacing_m + 2)
        n += int(min(box, len(pos) * (2 * r + 1) ** 2))
    if n > max_tiles:
        raise _InputError(f"--spacing-m {spacing_m:g} (test radius {radius_m:g} m) would cut "
                          f"about {n} tiles, more than --max-tiles {max_tiles}; use a larger "
                          "--spacing-m, a smaller --test-radius-m or a larger --query-stride, "
                          "or raise --max-tiles")


def _run(args) -> int:
    from cvl_ros.outputs import prepare_members
    from cvl_ros.tiles import (
        SPLIT_FILES,
        TILES_META,
        GeoMosaic,
        WebMercatorMosaic,
        build_tiles,
        drive_camera_track,
        read_mosaic,
        recognise_tiles,
    )

    t0 = time.monotonic()
    raw_data = _raw_data_dir(Path(args.raw))
    train = _resolve_all(raw_data, args.train_drives)
    test = _resolve_all(raw_data, args.test_drives)
    test2 = None if args.test2_drives is None else _resolve_all(raw_data, args.test2_drives)
    if not train and not test and not test2:
        raise _InputError("no drives: give --train-drives and/or --test-drives")
    both = [k for k in train if k in set(test) | set(test2 or ())]
    if both:
        raise _InputError(f"drive {both[0]} is both a training and a test drive")
    try:
        mosaic = read_mosaic(args.mosaic, args.georef, args.datum)
    except KeyError as exc:
        raise _InputError(f"geo-reference of {args.mosaic} lacks the key {exc}") from None
    except json.JSONDecodeError as exc:
        from cvl_ros.tiles import geo_sidecar_path

        ref = args.georef or geo_sidecar_path(Path(args.mosaic))
        raise _InputError(f"geo-reference {ref} is not valid JSON ({exc}); fix or regenerate "
                          "it") from None
    raster = type(mosaic) not in (GeoMosaic, WebMercatorMosaic)  # an orthophoto in its CRS
    note = mosaic.crs_note() if raster else None
    if note:
        print(f"{PROG}: note: {args.mosaic}: {note}", file=sys.stderr)
    traj = {}
    for key in dict.fromkeys(train + test + (test2 or [])):
        frames, T = drive_camera_track(raw_data / key, mosaic.datum, args.cam)
        if len(frames) == 0:
            raise _InputError(f"drive {key}: no OXTS packets in {raw_data / key / 'oxts/data'}")
        pos = T[:, :2, 3]
        _check_inside(mosaic, key, frames[::args.query_stride], pos[::args.query_stride],
                      f"{args.mosaic} " if raster else "")
        traj[key] = (frames, pos)
    tests = test + (test2 or [])
    _check_tile_count(traj, train, tests, args.spacing_m,
                      args.spacing_m if args.test_radius_m is None else args.test_radius_m,
                      args.query_stride, args.max_tiles)
    out = Path(args.out)
    members = [d.relative_to(out).as_posix() for d in _tile_dirs(out, train, tests)]
    members += [f"satmap/{TILES_META}", *SPLIT_FILES.values()]
    inputs = [raw_data / k for k in dict.fromkeys(train + tests)]
    inputs += [Path(args.mosaic)] + ([Path(args.georef)] if args.georef else [])
    source = {
        "tool": PROG, "raw": str(Path(args.raw).resolve()),
        "mosaic": str(Path(args.mosaic).resolve()),
        "georef": "geo.json" if type(mosaic) is GeoMosaic else "world_file (EPSG:3857)",
        "mosaic_m_per_px": float(mosaic.m_per_px), "query_stride": args.query_stride,
        "cam": args.cam}
    if raster:
        g = mosaic.georef_dict()
        source["georef"] = f"raster ({g['crs']})"
        source.update({k: g[k] for k in ("driver", "crs", "crs_operation", "crs_accuracy_m",
                                         "geotransform")})
    with prepare_members(out, members, tool=PROG, inputs=inputs, overwrite=args.overwrite,
                         recognise=recognise_tiles) as staging:
        stats = build_tiles(mosaic, traj, staging, train, test, spacing_m=args.spacing_m,
                            tile_px=args.tile_px, m_per_px=args.m_per_px,
                            test_radius_m=args.test_radius_m, test2_drives=test2,
                            query_stride=args.query_stride,
                            png_compression=args.png_compression,
                            link_duplicates=not args.no_links, progress=not args.quiet,
                            source=source)
    if stats["partial_tiles"]:
        half = args.tile_px * stats["m_per_px"] / 2.0
        print(f"{PROG}: warning: {stats['partial_tiles']} tiles reach past the mosaic's edge "
              f"(black there); a margin of {half:.0f} m around the drives avoids that",
              file=sys.stderr)
    if not (out / "raw_data").exists():
        print(f"{PROG}: note: KittiCVL reads raw_data/ under the dataset root; link it: "
              f"ln -s {raw_data.resolve()} {out / 'raw_data'}", file=sys.stderr)
    summary = {"out": str(out), **stats, "spacing_m": args.spacing_m,
               "seconds": round(time.monotonic() - t0, 2)}
    print(json.dumps(summary))
    return 0


def main(argv=None) -> int:
    """Run ``cvl-build-tiles``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (OSError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
