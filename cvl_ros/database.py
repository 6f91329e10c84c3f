"""Tile feature database: precomputed satellite descriptors with a geo-index.

On-disk layout of a database directory::

    manifest.json      format, model hash + config, tile geometry, datum, tile ids, centres
                       (WGS84 and ENU), array shapes/dtypes/byte sizes, search settings
    features.npy       (T, D, S, S) float16  satellite descriptor maps
    uncertainty.npy    (T, 1, S, S) float16  uncertainty maps U (ones when the model has no U)
    global.npy         (T, G) float32        stage-1 retrieval descriptors (see below)

Arrays are memory-mapped with ``numpy.load(mmap_mode="r")``: opening reads the manifest, checks
that every file exists with the size and header the manifest promises, that the datum and the
tile centres are finite WGS84 points (the ENU centres consistent with the datum), and that the
arrays hold no NaN/Inf (every row of a small database, :data:`FULL_CHECK_BYTES`; a random
sample of :data:`SAMPLE_ROWS` rows of a larger one). A missing, truncated, foreign or non-finite
file, an unreadable or invalid manifest, or a database made by another model (hash mismatch)
raises :class:`DatabaseError` with a message naming the file and the fix.
``TileDatabase.open(path, verify_sha256=True)`` additionally checks the SHA-256 of every array
against the manifest; the builder records it and refuses to write non-finite arrays, so a
verified database is finite in every row.

**Two-stage global retrieval.** Scoring a query against every tile with the full scene-prior
similarity matching (SSM: correlation over a (2r+1)^2 window of shifts, normalised, divided by
U) costs ``T * (2r+1)^2 * D * S^2`` multiply-adds: ~2 G for 10,000 tiles, too slow for a CPU
query. ``global_topk`` therefore

1. shortlists with a cheap global descriptor: each map (the ground map masked by its visibility
   mask, the satellite map as stored) is box-filtered over the (2r+1)^2 shift window and
   average-pooled to ``pool x pool`` cells, flattened and L2-normalised (G = D * pool^2, 64 for
   D = 4 and pool = 4); a tile's vector is then scaled by 1 / mean U near its centre (SSM divides
   by U at the camera cell). Box filtering makes the zero-shift dot product of the pooled maps
   tolerant to the displacements SSM searches. One (B, G) x (G, T) product ranks all tiles;
2. re-scores the best ``max(shortlist, k)`` tiles (shortlist 64 by default) with the model's
   own full shift search (``model.match``) and returns the top ``k`` of those, best first.

When the shortlist covers every tile the result equals brute-force matching exactly
(``test/test_database.py`` checks this).

**Sharded build.** ``TileDatabase.build(..., shard=(rank, world_size))`` encodes tiles
``i % world_size == rank`` into ``<out_dir>/shards/shard-<rank>-of-<world>``;
``TileDatabase.merge(shard_dirs, out_dir)`` concatenates the shards (in original tile order)
into one database. ``cvl-build-db`` does both under ``torchrun``.

**Writing safely.** Every write goes through :func:`cvl_ros.outputs.prepare_output` (tool
``cvl-build-db``): a database folder is written beside its destination and renamed into place,
holds the marker ``.cvl-output.json``, and replaces an existing folder only with
``overwrite=True`` and only when that folder is a database the builder wrote (marker, or
exactly the four files of a markerless database of an earlier version, see
:func:`recognise_database`) holding nothing else. See ``docs/output-safety.md``.

Longer than 700 lines: building, merging (torchrun shards), opening and validating a database share
its manifest format and checks, which must stay in one place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from cvl_ros.outputs import prepare_output, remove_output

TOOL = "cvl-build-db"
FORMAT_NAME = "cvl_ros.tile_database"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = ("features", "uncertainty", "global")


class DatabaseError(RuntimeError):
    """A tile database is missing, corrupt, or was built by a different model."""


#: Arrays of at most this many bytes (all three together) are checked for NaN/Inf in full on
#: opening; larger databases get :data:`SAMPLE_ROWS` random rows of each array checked (and the
#: full guarantee from ``verify_sha256``: the builder refuses non-finite arrays).
FULL_CHECK_BYTES = 64 << 20
SAMPLE_ROWS = 256
#: Stored ENU centres may differ from those recomputed from the WGS84 centres by this much.
CENTRE_TOLERANCE_M = 0.5
_REBUILD = "rebuild it with cvl-build-db"


def _check_geometry(manifest: dict, where, fix: str = _REBUILD) -> None:
    """Datum and tile centres of a manifest: finite WGS84, ENU consistent with the datum."""
    from cvl_ros.geo import GeoDatum

    d = manifest.get("datum")
    try:
        lat, lon, alt = (float(d["lat_deg"]), float(d["lon_deg"]), float(d.get("alt_m", 0.0)))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DatabaseError(f"{where}: datum {d!r} is not a {{lat_deg, lon_deg, alt_m}} "
                            f"record; {fix}") from None
    if not (math.isfinite(lat) and math.isfinite(lon) and math.isfinite(alt)
            and abs(lat) <= 90.0 and abs(lon) <= 180.0):
        raise DatabaseError(f"{where}: datum ({lat}, {lon}, {alt}) is not a finite WGS84 point "
                            f"(latitude -90..90 deg, longitude -180..180 deg); {fix}")
    try:
        ll = np.asarray(manifest["centers_latlon"], dtype=np.float64).reshape(-1, 2)
        enu = np.asarray(manifest["centers_enu"], dtype=np.float64).reshape(-1, 2)
    except (KeyError, TypeError, ValueError):
        raise DatabaseError(f"{where}: tile centres are not numbers; {fix}") from None
    if ll.shape != enu.shape:
        raise DatabaseError(f"{where}: {len(ll)} WGS84 but {len(enu)} ENU tile centres; "
                            f"{fix}")
    with np.errstate(invalid="ignore"):
        bad = ~(np.all(np.isfinite(ll), axis=1) & (np.abs(ll[:, 0]) <= 90.0)
                & (np.abs(ll[:, 1]) <= 180.0) & np.all(np.isfinite(enu), axis=1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatabaseError(f"{where}: {int(bad.sum())} tile centres are not finite WGS84/ENU "
                            f"points (first: tile {i}, {ll[i].tolist()} deg, {enu[i].tolist()} "
                            f"m); {fix}")
    if len(ll):
        e, n, _ = GeoDatum(lat, lon, alt).to_enu(ll[:, 0], ll[:, 1], np.zeros(len(ll)))
        off = np.hypot(np.asarray(e).reshape(-1) - enu[:, 0], np.asarray(n).reshape(-1)
                       - enu[:, 1])
        if off.max() > CENTRE_TOLERANCE_M:
            i = int(np.argmax(off))
            raise DatabaseError(f"{where}: the ENU tile centres do not match the WGS84 centres "
                                f"about the datum (tile {i}: {off[i]:.1f} m apart; datum or "
                                f"centres edited?); {fix}")


def _nonfinite_row(arr, rows=None) -> int | None:
    """Index of the first row of ``arr`` (or of ``rows``) holding NaN/Inf, else None."""
    step = max(1, (8 << 20) // max(1, int(np.prod(arr.shape[1:])) * arr.dtype.itemsize))
    idx = np.arange(len(arr)) if rows is None else np.asarray(rows, dtype=np.int64)
    for k in range(0, len(idx), step):
        part = idx[k:k + step]
        block = np.asarray(arr[part[0]:part[-1] + 1] if rows is None else arr[part])
        ok = np.isfinite(block.reshape(len(part), -1)).all(axis=1)
        if not ok.all():
            return int(part[int(np.argmin(ok))])
    return None


def recognise_database(folder) -> set:
    """Entries of a markerless database written by an earlier version, else an empty set.

    Recognised exactly: the folder holds nothing but ``manifest.json`` (a readable
    ``cvl_ros.tile_database`` manifest) and the three ``.npy`` arrays.
    """
    folder = Path(folder)
    names = {MANIFEST} | {f"{a}.npy" for a in ARRAYS}
    try:
        children = list(folder.iterdir())
    except OSError:
        return set()
    if {c.name for c in children} != names or not all(c.is_file() and not c.is_symlink()
                                                      for c in children):
        return set()
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        return set()
    return names


@dataclass
class _SatDesc:
    """Fallback container with the fields of ``cvl_ros.model.cvlnet.SatelliteDescriptor``."""

    features: object
    uncertainty: object


def _sat_descriptor_cls():
    try:
        from cvl_ros.model.cvlnet import SatelliteDescriptor

        return SatelliteDescriptor
    except Exception:
        return _SatDesc


def _model_config_dict(model) -> dict:
    cfg = getattr(model, "config", None) or getattr(model, "cfg", None)
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    if isinstance(cfg, dict):
        return dict(cfg)
    return {}


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def pooled_descriptor(features, weight=None, search_cells: int = 3, pool: int = 4):
    """Stage-1 global descriptor of descriptor maps.

    Args:
        features: torch tensor (N, D, S, S).
        weight: optional (N, 1, S, S) multiplier (ground visibility mask, or 1/U for tiles).
        search_cells: half-width r of the SSM shift window; maps are box-filtered over
            (2r+1)^2 cells so that the pooled dot product tolerates those shifts.
        pool: output cells per side.

    Returns:
        (N, D * pool * pool) float32 tensor, rows L2-normalised.
    """
    import torch
    import torch.nn.functional as F

    x = features.float()
    if weight is not None:
        x = x * weight.float()
    if search_cells > 0:
        ks = 2 * int(search_cells) + 1
        x = F.avg_pool2d(x, ks, stride=1, padding=int(search_cells), count_include_pad=True)
    x = F.adaptive_avg_pool2d(x, pool)
    x = x.flatten(1)
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)


def satellite_global_descriptor(features, uncertainty, search_cells: int = 3, pool: int = 4,
                                use_uncertainty: bool = True):
    """Stage-1 descriptor of satellite maps.

    The pooled, L2-normalised map (see :func:`pooled_descriptor`) scaled by 1 / mean(U) over the
    cells where SSM can place the camera (the central (2r+2)^2 window): SSM divides the
    correlation by U at the camera position, so a tile with low U near its centre scores higher.
    """
    import torch

    x = pooled_descriptor(features, None, search_cells, pool)
    if use_uncertainty and uncertainty is not None:
        u = uncertainty.float()
        size = u.shape[-1]
        half = min(search_cells + 1, size // 2)
        c0 = size // 2 - half
        c1 = (size + 1) // 2 + half
        mean_u = u[:, :, c0:c1, c0:c1].flatten(1).mean(1).clamp_min(1e-3)
        x = x / mean_u[:, None]
    return x.to(torch.float32)


def ground_global_descriptor(ground, search_cells: int = 3, pool: int = 4):
    """Stage-1 descriptor of a ``GroundDescriptor`` (features masked by its mask)."""
    mask = getattr(ground, "mask", None)
    return pooled_descriptor(ground.features, mask, search_cells, pool)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _npy_header(path: Path):
    """(shape, dtype, header_bytes) of a .npy file without reading its data."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        return tuple(shape), np.dtype(dtype), f.tell(), fortran


def _resize_tile(image: np.ndarray, out_px: int, crop_px: int | None):
    """Centre-crop ``crop_px`` (if given) and resize an RGB uint8 tile to ``out_px``."""
    import cv2

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"tile image must be HxWx3 RGB, got shape {img.shape}")
    if crop_px is not None:
        h, w = img.shape[:2]
        crop_px = int(min(crop_px, h, w))
        y0 = (h - crop_px) // 2
        x0 = (w - crop_px) // 2
        img = img[y0:y0 + crop_px, x0:x0 + crop_px]
    if img.shape[0] != out_px or img.shape[1] != out_px:
        img = cv2.resize(img, (out_px, out_px), interpolation=cv2.INTER_AREA)
    return img


class TileDatabase:
    """Memory-mapped satellite descriptors with WGS84/ENU tile centres (see module docstring)."""

    def __init__(self, path: Path, manifest: dict, verify: bool = False):
        self.path = Path(path)
        self.manifest = manifest
        self._arrays: dict[str, np.ndarray] = {}
        self._global_cache = None
        self._model = None
        _check_geometry(manifest, self.path / MANIFEST)
        self.tile_ids: list[str] = list(manifest["tile_ids"])
        self.centers_latlon = np.asarray(manifest["centers_latlon"], dtype=np.float64).reshape(
            -1, 2)
        self.centers_enu = np.asarray(manifest["centers_enu"], dtype=np.float64).reshape(-1, 2)
        from cvl_ros.geo import GeoDatum

        d = manifest["datum"]
        self.datum = GeoDatum(float(d["lat_deg"]), float(d["lon_deg"]), float(d.get("alt_m", 0.0)))
        self.model_hash: str = manifest["model_hash"]
        self.model_config: dict = manifest.get("model_config", {})
        self.tile_geometry: dict = manifest.get("tile", {})
        self.search: dict = manifest.get("search", {})
        self._check_files(verify)
        self._check_finite()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path, expected_model_hash: str | None = None, model=None,
             verify: bool = False, verify_sha256: bool = False) -> TileDatabase:
        """Open a database lazily (arrays are memory-mapped on first use).

        Checks on every open: the manifest's datum and tile centres are finite WGS84 points
        (ENU centres consistent with the datum), every array file has the size and header the
        manifest promises, and the arrays hold no NaN/Inf: all of them when they are small
        (:data:`FULL_CHECK_BYTES`), else :data:`SAMPLE_ROWS` random rows of each.

        Args:
            path: database directory.
            expected_model_hash: refuse the database unless it was built by this model hash.
            model: optional ``CVLNet``; its hash is checked and its ``match`` is used for the
                second retrieval stage.
            verify_sha256: also check the SHA-256 of every array file against the manifest
                (reads them once; with the builder's own finite check this proves every row
                finite). A manifest without SHA-256 is then refused.
            verify: the same as ``verify_sha256`` (its older name).

        Raises:
            DatabaseError: missing/corrupt/truncated/non-finite files, an invalid datum or
                tile centres, or a model hash mismatch; the message names the file and the fix.
        """
        verify = bool(verify or verify_sha256)
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise DatabaseError(f"{path}: not a tile database (no {MANIFEST}); build one with "
                                "cvl-build-db")
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as exc:
            raise DatabaseError(f"{mpath}: manifest is unreadable or corrupt ({exc}); rebuild "
                                "the database with cvl-build-db") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise DatabaseError(f"{mpath}: not a {FORMAT_NAME} manifest")
        version = manifest.get("version")
        if isinstance(version, bool) or version != FORMAT_VERSION:  # "1", 1.5, NaN, null...
            raise DatabaseError(f"{mpath}: format version {manifest.get('version')} is not "
                                f"supported (expected {FORMAT_VERSION}); rebuild the database")
        for key in ("model_hash", "tile_ids", "centers_latlon", "centers_enu", "datum", "arrays"):
            if key not in manifest:
                raise DatabaseError(f"{mpath}: manifest lacks '{key}'; rebuild the database")
        if model is not None and expected_model_hash is None:
            expected_model_hash = model.model_hash()
        if expected_model_hash is not None and manifest["model_hash"] != expected_model_hash:
            raise DatabaseError(
                f"{path}: database was built by model {manifest['model_hash']} but the loaded "
                f"model is {expected_model_hash}; rebuild it with cvl-build-db --checkpoint "
                "<your checkpoint>")
        try:
            db = cls(path, manifest, verify=verify)
        except DatabaseError:
            raise
        except Exception as exc:
            raise DatabaseError(f"{path}: corrupt database ({exc})") from exc
        if model is not None:
            db._model = model
        return db

    def _check_files(self, verify: bool):
        count = len(self.tile_ids)
        if self.centers_enu.shape != (count, 2) or self.centers_latlon.shape != (count, 2):
            raise DatabaseError(f"{self.path}: manifest centres do not match {count} tile ids")
        for name in ARRAYS:
            info = self.manifest["arrays"].get(name)
            fpath = self.path / f"{name}.npy"
            if info is None:
                raise DatabaseError(f"{self.path}: manifest has no entry for {name}.npy")
            if not fpath.is_file():
                raise DatabaseError(f"{fpath}: missing; rebuild the database with cvl-build-db")
            size = fpath.stat().st_size
            if size != int(info["bytes"]):
                raise DatabaseError(
                    f"{fpath}: {size} bytes but the manifest expects {info['bytes']} (truncated "
                    "or corrupt); rebuild the database with cvl-build-db")
            try:
                shape, dtype, offset, fortran = _npy_header(fpath)
            except Exception as exc:
                raise DatabaseError(f"{fpath}: not a valid .npy file ({exc})") from exc
            if list(shape) != list(info["shape"]) or str(dtype) != info["dtype"] or fortran:
                raise DatabaseError(
                    f"{fpath}: header says {shape} {dtype} but the manifest expects "
                    f"{tuple(info['shape'])} {info['dtype']}")
            if shape[0] != count:
                raise DatabaseError(f"{fpath}: {shape[0]} rows for {count} tiles")
            if offset + int(np.prod(shape)) * dtype.itemsize != size:
                raise DatabaseError(f"{fpath}: data size does not match its header (truncated)")
            if verify and not info.get("sha256"):
                raise DatabaseError(f"{fpath}: the manifest records no SHA-256 to verify it "
                                    f"against (built by an older version); {_REBUILD}")
            if verify and _sha256(fpath) != info["sha256"]:
                raise DatabaseError(f"{fpath}: checksum mismatch (corrupt); rebuild the database "
                                    "with cvl-build-db")

    def _check_finite(self) -> None:
        """No NaN/Inf in the arrays: all rows when small, else a random sample of rows."""
        total = sum(int(self.manifest["arrays"][a]["bytes"]) for a in ARRAYS)
        rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
        for name in ARRAYS:
            arr = self._array(name)
            if not arr.dtype.kind == "f" or not len(arr):
                continue
            rows = None
            if total > FULL_CHECK_BYTES and len(arr) > SAMPLE_ROWS:
                rows = np.sort(rng.choice(len(arr), SAMPLE_ROWS, replace=False))
            bad = _nonfinite_row(arr, rows)
            if bad is not None:
                raise DatabaseError(f"{self.path / (name + '.npy')}: row {bad} (tile "
                                    f"{self.tile_ids[bad]!r}) holds NaN or Inf; it would give "
                                    f"NaN scores; {_REBUILD}")

    def _array(self, name: str) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None:
            try:
                arr = np.load(self.path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            except Exception as exc:
                raise DatabaseError(f"{self.path / (name + '.npy')}: cannot map ({exc})") from exc
            self._arrays[name] = arr
        return arr

    def attach_model(self, model) -> None:
        """Use ``model.match`` for the second retrieval stage (its hash must match)."""
        h = model.model_hash()
        if h != self.model_hash:
            raise DatabaseError(f"{self.path}: database was built by model {self.model_hash} but "
                                f"the attached model is {h}; rebuild it with cvl-build-db")
        self._model = model

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.tile_ids)

    @property
    def coverage_m(self) -> float:
        """Side length of one tile in metres."""
        return float(self.tile_geometry.get("coverage_m", float("nan")))

    def query_radius(self, east_m: float, north_m: float, radius_m: float) -> np.ndarray:
        """Indices of tiles with centre within ``radius_m`` of (east, north), nearest first."""
        d = np.hypot(self.centers_enu[:, 0] - east_m, self.centers_enu[:, 1] - north_m)
        idx = np.nonzero(d <= radius_m)[0]
        return idx[np.argsort(d[idx], kind="stable")].astype(np.int64)

    def descriptors(self, indices):
        """``SatelliteDescriptor`` (float32 torch tensors) of the tiles at ``indices``."""
        import torch

        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"tile index out of range 0..{len(self) - 1}")
        order = np.argsort(idx, kind="stable")
        inv = np.empty_like(order)
        inv[order] = np.arange(order.size)
        feats = np.asarray(self._array("features")[idx[order]], dtype=np.float32)[inv]
        unc = np.asarray(self._array("uncertainty")[idx[order]], dtype=np.float32)[inv]
        cls = _sat_descriptor_cls()
        return cls(features=torch.from_numpy(feats), uncertainty=torch.from_numpy(unc))

    def global_matrix(self) -> np.ndarray:
        """(T, G) float32 stage-1 descriptors, loaded into memory once."""
        if self._global_cache is None:
            self._global_cache = np.array(self._array("global"), dtype=np.float32, copy=True)
            self._global_torch = torch_from_numpy(self._global_cache)
        return self._global_cache

    def global_topk(self, ground_desc, k: int, shortlist: int | None = None, model=None,
                    return_match: bool = False):
        """Best ``k`` tiles for each ground descriptor (two-stage search).

        Args:
            ground_desc: ``GroundDescriptor`` with features (B, D, S, S) and mask (B, 1, S, S).
            k: number of tiles to return.
            shortlist: stage-1 shortlist length (default ``search.shortlist`` in the manifest,
                at least ``k``); ``>= len(self)`` gives exact brute-force results.
            model: model whose ``match`` re-scores the shortlist (default: the attached model);
                without one the stage-1 ranking is returned.
            return_match: also return the displacement (B, k, 2) of each returned tile.

        Returns:
            ``indices (B, k) int64, scores (B, k) float32`` (best first), plus the displacement
            array when ``return_match`` is set. With B == 1 the leading axis is kept.
        """
        import torch

        model = model if model is not None else self._model
        k = int(min(k, len(self)))
        if shortlist is None:
            shortlist = int(self.search.get("shortlist", 64))
        n_short = int(min(max(shortlist, k), len(self)))
        cfg = self.search
        with torch.no_grad():
            g = ground_global_descriptor(ground_desc, int(cfg.get("search_cells", 3)),
                                         int(cfg.get("pool", 4))).numpy()
            self.global_matrix()
            coarse = (torch.from_numpy(g) @ self._global_torch.T).numpy()  # (B, T)
            if n_short < len(self):
                part = np.argpartition(-coarse, n_short - 1, axis=1)[:, :n_short]
            else:
                part = np.tile(np.arange(len(self)), (coarse.shape[0], 1))
            batch = coarse.shape[0]
            out_idx = np.zeros((batch, k), dtype=np.int64)
            out_score = np.zeros((batch, k), dtype=np.float32)
            out_disp = np.zeros((batch, k, 2), dtype=np.float32)
            for b in range(batch):
                cand = np.sort(part[b])
                if model is None:
                    scores = coarse[b, cand]
                    disp = np.zeros((cand.size, 2), dtype=np.float32)
                else:
                    gb = _slice_ground(ground_desc, b)
                    res = model.match(gb, self.descriptors(cand), pairwise=True)
                    scores = res.score[0].detach().float().numpy()
                    disp = res.displacement_m[0].detach().float().numpy()
                order = np.argsort(-scores, kind="stable")[:k]
                out_idx[b] = cand[order]
                out_score[b] = scores[order]
                out_disp[b] = disp[order]
        if return_match:
            return out_idx, out_score, out_disp
        return out_idx, out_score

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, model, tiles: Iterable, out_dir, datum, batch_size: int = 16,
              device: str = "cpu", source_m_per_px: float | None = None,
              shard: tuple[int, int] | None = None, progress: bool = False,
              extra: dict | None = None, overwrite: bool = False) -> TileDatabase | Path:
        """Run the satellite branch over tiles and write a database.

        Args:
            model: ``CVLNet`` (``encode_satellite``, ``model_hash``, ``config``).
            tiles: iterable of ``(tile_id, lat_deg, lon_deg, rgb_uint8_image)``. Each image is
                centre-cropped to the model's ``coverage_m`` when ``source_m_per_px`` is given,
                then resized to ``sat_px``.
            out_dir: database directory (created; see ``overwrite``).
            datum: ``GeoDatum`` of the local ENU frame stored with the centres.
            batch_size: tiles per forward pass.
            device: torch device for the satellite branch.
            source_m_per_px: ground resolution of the input images (metres per pixel).
            shard: ``(rank, world_size)``: encode only tiles ``i % world_size == rank`` and
                write them as one shard (merge with :meth:`merge`).
            progress: show a tqdm bar.
            extra: JSON-safe metadata stored in the manifest.
            overwrite: replace an existing database at ``out_dir`` that the builder wrote (a
                folder of anything else is never replaced: :class:`cvl_ros.outputs.OutputError`).

        Returns:
            The opened database (or the shard directory when ``shard`` is given).
        """
        cfg = _model_config_dict(model)
        crop_px = None
        if source_m_per_px:
            crop_px = int(round(float(cfg.get("coverage_m", 100.0)) / float(source_m_per_px)))
        rank, world = shard if shard is not None else (0, 1)
        out_dir = Path(out_dir)
        if shard is not None:
            out_dir = out_dir / "shards" / f"shard-{rank:03d}-of-{world:03d}"
        with prepare_output(out_dir, tool=TOOL, overwrite=overwrite,
                            recognise=recognise_database) as tmp_dir:
            manifest, arrays = cls._encode(model, tiles, datum, batch_size, device, crop_px,
                                           rank, world, progress, extra, source_m_per_px)
            cls._write(tmp_dir, manifest, *arrays)
        if shard is not None:
            return out_dir
        return cls.open(out_dir)

    @staticmethod
    def _encode(model, tiles, datum, batch_size, device, crop_px, rank, world, progress, extra,
                source_m_per_px):
        """(manifest, (features, uncertainty, global)) of this rank's tiles."""
        import torch

        cfg = _model_config_dict(model)
        sat_px = int(cfg.get("sat_px", 256))
        coverage_m = float(cfg.get("coverage_m", 100.0))
        search_cells = int(cfg.get("search_cells", 3)) if cfg.get("use_ssm", True) else 0
        use_unc = bool(cfg.get("use_uncertainty", True))
        ids, lats, lons, feats, uncs, globs, order = [], [], [], [], [], [], []
        model_was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        dev = torch.device(device)

        def flush(images):
            x = torch.from_numpy(np.stack(images)).to(dev).permute(0, 3, 1, 2).float() / 255.0
            with torch.no_grad():
                sd = model.encode_satellite(x)
            f = sd.features.float().cpu()
            u = sd.uncertainty.float().cpu() if sd.uncertainty is not None else torch.ones_like(
                f[:, :1])
            feats.append(f.numpy().astype(np.float16))
            uncs.append(u.numpy().astype(np.float16))
            globs.append(satellite_global_descriptor(f, u, search_cells, 4, use_unc).numpy())

        it = tiles
        if progress:
            from tqdm import tqdm

            it = tqdm(tiles, desc=f"tiles (shard {rank}/{world})", unit="tile")
        pending = []
        for i, item in enumerate(it):
            if i % world != rank:
                continue
            tile_id, lat, lon, image = item
            ids.append(str(tile_id))
            lats.append(float(lat))
            lons.append(float(lon))
            order.append(i)
            pending.append(_resize_tile(image, sat_px, crop_px))
            if len(pending) >= batch_size:
                flush(pending)
                pending = []
        if pending:
            flush(pending)
        if model_was_training and hasattr(model, "train"):
            model.train()

        if feats:
            f_all = np.concatenate(feats)
            u_all = np.concatenate(uncs)
            g_all = np.concatenate(globs).astype(np.float32)
        else:
            d = int(cfg.get("descriptor_dim", 4))
            s = int(cfg.get("grid_cells", 32))
            f_all = np.zeros((0, d, s, s), np.float16)
            u_all = np.zeros((0, 1, s, s), np.float16)
            g_all = np.zeros((0, d * 16), np.float32)
        lat_a = np.asarray(lats, dtype=np.float64)
        lon_a = np.asarray(lons, dtype=np.float64)
        east, north, _ = datum.to_enu(lat_a, lon_a, np.zeros_like(lat_a))
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "model_hash": model.model_hash(),
            "model_config": _json_safe(cfg),
            "tile": {
                "px": sat_px,
                "coverage_m": coverage_m,
                "m_per_px": coverage_m / sat_px,
                "source_m_per_px": source_m_per_px,
                "grid_cells": int(f_all.shape[-1]),
                "cell_m": coverage_m / int(f_all.shape[-1]),
            },
            "datum": datum.to_dict() if hasattr(datum, "to_dict") else {
                "lat_deg": datum.lat_deg, "lon_deg": datum.lon_deg, "alt_m": datum.alt_m},
            "search": {"search_cells": search_cells, "pool": 4, "shortlist": 64,
                       "use_uncertainty": use_unc},
            "tile_ids": ids,
            "source_index": order,
            "centers_latlon": np.stack([lat_a, lon_a], 1).tolist(),
            "centers_enu": np.stack([np.asarray(east, float).reshape(-1),
                                     np.asarray(north, float).reshape(-1)], 1).tolist(),
            "shard": {"rank": rank, "world_size": world},
            "extra": _json_safe(extra or {}),
        }
        return manifest, (f_all, u_all, g_all)

    @staticmethod
    def _write(dirpath: Path, manifest: dict, features, uncertainty, global_desc):
        arrays = {"features": features, "uncertainty": uncertainty, "global": global_desc}
        manifest = dict(manifest)
        # Nothing non-finite is ever written: the SHA-256 recorded below then vouches for
        # every row (TileDatabase.open(verify_sha256=True)).
        _check_geometry(manifest, "the database being built",
                        "check the georeferencing of the tiles; nothing was written")
        for name, arr in arrays.items():
            bad = _nonfinite_row(arr) if len(arr) and np.asarray(arr).dtype.kind == "f" else None
            if bad is not None:
                raise DatabaseError(f"{name} of tile {manifest['tile_ids'][bad]!r} (row {bad}) "
                                    "holds NaN or Inf (float16 overflow, or a broken model); "
                                    "nothing was written")
        manifest["arrays"] = {}
        for name, arr in arrays.items():
            fpath = dirpath / f"{name}.npy"
            np.save(fpath, np.ascontiguousarray(arr), allow_pickle=False)
            manifest["arrays"][name] = {
                "shape": list(arr.shape), "dtype": str(arr.dtype),
                "bytes": fpath.stat().st_size, "sha256": _sha256(fpath)}
        (dirpath / MANIFEST).write_text(json.dumps(manifest, indent=1))

    @classmethod
    def merge(cls, shard_dirs, out_dir, remove_shards: bool = False,
              overwrite: bool = False) -> TileDatabase:
        """Concatenate shards built by :meth:`build` with ``shard=`` into one database.

        Tiles keep the order of the original iterable. All shards must share model hash, datum
        and geometry, otherwise :class:`DatabaseError` is raised. ``out_dir`` may not hold or
        lie inside a shard; ``overwrite`` as in :meth:`build`. ``remove_shards`` deletes each
        shard folder afterwards if the builder wrote it and it holds nothing else (and then an
        emptied ``shards/`` folder above them).
        """
        shard_dirs = [Path(p) for p in shard_dirs]
        with prepare_output(out_dir, tool=TOOL, inputs=shard_dirs, overwrite=overwrite,
                            recognise=recognise_database) as tmp:
            cls.write_merged(shard_dirs, tmp)
        if remove_shards:
            for d in shard_dirs:
                remove_output(d, tool=TOOL, recognise=recognise_database)
            for parent in {d.parent for d in shard_dirs}:
                if parent.name == "shards" and parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()
        return cls.open(out_dir)

    @classmethod
    def write_merged(cls, shard_dirs, dirpath) -> None:
        """Write the merged database of ``shard_dirs`` into the prepared folder ``dirpath``.

        ``dirpath`` is e.g. the temporary folder of :func:`cvl_ros.outputs.prepare_output`.
        """
        shards = [cls.open(p) for p in shard_dirs]
        if not shards:
            raise DatabaseError("merge: no shards given")
        ref = shards[0].manifest
        for s in shards[1:]:
            for key in ("model_hash", "datum", "tile", "search"):
                if s.manifest[key] != ref[key]:
                    raise DatabaseError(f"merge: shard {s.path} differs in '{key}' from "
                                        f"{shards[0].path}")
        src = np.concatenate([np.asarray(s.manifest.get("source_index", range(len(s))))
                              for s in shards])
        order = np.argsort(src, kind="stable")
        f_all = np.concatenate([np.asarray(s._array("features")) for s in shards])[order]
        u_all = np.concatenate([np.asarray(s._array("uncertainty")) for s in shards])[order]
        g_all = np.concatenate([np.asarray(s._array("global")) for s in shards])[order]
        ids = [t for s in shards for t in s.tile_ids]
        latlon = np.concatenate([s.centers_latlon for s in shards])[order]
        enu = np.concatenate([s.centers_enu for s in shards])[order]
        manifest = {k: v for k, v in ref.items() if k != "arrays"}
        manifest.update({
            "tile_ids": [ids[i] for i in order],
            "source_index": src[order].tolist(),
            "centers_latlon": latlon.tolist(),
            "centers_enu": enu.tolist(),
            "shard": {"rank": 0, "world_size": 1, "merged_from": len(shards)},
        })
        cls._write(Path(dirpath), manifest, f_all, u_all, g_all)
        for s in shards:
            s._arrays.clear()

    @classmethod
    def from_arrays(cls, out_dir, model_hash: str, features: np.ndarray,
                    uncertainty: np.ndarray, centers_latlon: np.ndarray, datum,
                    tile_ids=None, model_config: dict | None = None, search_cells: int = 3,
                    coverage_m: float = 100.0, use_uncertainty: bool = True,
                    overwrite: bool = False) -> TileDatabase:
        """Write a database from precomputed descriptor arrays (benchmarks and tests)."""
        import torch

        features = np.asarray(features)
        uncertainty = np.asarray(uncertainty)
        globs = []
        for i in range(0, len(features), 1024):
            f = torch.from_numpy(np.asarray(features[i:i + 1024], dtype=np.float32))
            u = torch.from_numpy(np.asarray(uncertainty[i:i + 1024], dtype=np.float32))
            globs.append(satellite_global_descriptor(f, u, search_cells, 4,
                                                     use_uncertainty).numpy())
        g_all = np.concatenate(globs).astype(np.float32)
        latlon = np.asarray(centers_latlon, dtype=np.float64).reshape(-1, 2)
        east, north, _ = datum.to_enu(latlon[:, 0], latlon[:, 1], np.zeros(len(latlon)))
        s = int(features.shape[-1])
        manifest = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "model_hash": model_hash,
            "model_config": _json_safe(model_config or {}),
            "tile": {"px": None, "coverage_m": coverage_m, "m_per_px": None,
                     "source_m_per_px": None, "grid_cells": s, "cell_m": coverage_m / s},
            "datum": datum.to_dict(),
            "search": {"search_cells": search_cells, "pool": 4, "shortlist": 64,
                       "use_uncertainty": use_uncertainty},
            "tile_ids": [str(t) for t in (tile_ids if tile_ids is not None
                                          else range(len(features)))],
            "source_index": list(range(len(features))),
            "centers_latlon": latlon.tolist(),
            "centers_enu": np.stack([np.asarray(east).reshape(-1),
                                     np.asarray(north).reshape(-1)], 1).tolist(),
            "shard": {"rank": 0, "world_size": 1}, "extra": {},
        }
        with prepare_output(out_dir, tool=TOOL, overwrite=overwrite,
                            recognise=recognise_database) as tmp:
            cls._write(tmp, manifest, features.astype(np.float16),
                       uncertainty.astype(np.float16), g_all)
        return cls.open(out_dir)


def torch_from_numpy(arr):
    """``torch.from_numpy`` (imported lazily)."""
    import torch

    return torch.from_numpy(arr)


def _slice_ground(ground, b: int):
    """Row ``b`` of a GroundDescriptor, keeping the batch axis."""
    mask = getattr(ground, "mask", None)
    feats = ground.features[b:b + 1]
    if mask is None:
        return type(ground)(features=feats) if _has_only_features(ground) else ground
    try:
        return type(ground)(features=feats, mask=mask[b:b + 1])
    except TypeError:
        return ground.__class__(feats, mask[b:b + 1])


def _has_only_features(ground) -> bool:
    return not hasattr(ground, "mask")
