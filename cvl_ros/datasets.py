"""KITTI-CVL dataset (real or synthetic tree), Test-1/Test-2 tile tables, distance-aware sampler.

Layout (see docs/data.md)::

    <root>/raw_data/<date>/<date>_drive_<NNNN>_sync/{image_02,oxts}/...
    <root>/raw_data/<date>/calib_{cam_to_cam,imu_to_velo,velo_to_cam}.txt
    <root>/satmap/train_10mgap/<date>/<drive>/<frame>.png     one tile per training query
    <root>/satmap/test/<drive>/<lat>_<lon>.png                test tiles, centre in the name
    <root>/satmap/tiles.json                                  optional: tile m/px (builder)
    <root>/{train,test1,test2}_files.txt                      ``<date>/<drive>/<frame>.png lat lon``

A sample is a query sequence (index 0 = newest frame t, then t-stride, ...) with its camera
poses, intrinsics and the satellite tile of the query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cvl_ros.camera import PinholeCamera, relative_camera_poses
from cvl_ros.geo import GeoDatum, webmercator_m_per_px
from cvl_ros.kitti import (
    KITTI_IMU_HEIGHT_M,
    kitti_T_imu_cam,
    oxts_to_enu_poses,
    read_calib_cam_to_cam,
    read_image,
    read_oxts_packet,
)
from cvl_ros.tiles import (
    SPLIT_FILES,
    parse_tile_file_name,
    read_tiles_meta,
    resample_north_up,
)


@dataclass(frozen=True)
class SplitEntry:
    """One split-file line."""

    date: str
    drive: str
    frame: int
    tile_lat: float
    tile_lon: float
    lat_text: str
    lon_text: str
    line: str

    @property
    def query_id(self) -> str:
        """``<date>/<drive>/<frame>``."""
        return f"{self.date}/{self.drive}/{self.frame:010d}"


@dataclass(frozen=True)
class TileRecord:
    """A satellite tile: id (path relative to ``satmap/``), file, centre lat/lon and ENU."""

    tile_id: str
    path: Path
    lat: float
    lon: float
    east: float
    north: float


def read_split_file(path) -> list:
    """Parse a KITTI-CVL split file (``<date>/<drive>/<frame>.png <lat> <lon>`` a line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI-CVL split file not found: {path}")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        rel = parts[0].split("/")
        if len(parts) != 3 or len(rel) != 3 or not rel[2].endswith(".png"):
            raise ValueError(f"{path}:{lineno}: expected '<date>/<drive>/<frame>.png <lat> "
                             f"<lon>', got {line!r}")
        out.append(SplitEntry(rel[0], rel[1], int(rel[2][:-4]), float(parts[1]),
                              float(parts[2]), parts[1], parts[2], line))
    return out


def _missing(path: Path, what: str, entry: SplitEntry | None = None) -> FileNotFoundError:
    ctx = f" (needed by split line {entry.line!r})" if entry is not None else ""
    return FileNotFoundError(f"KITTI-CVL: missing {what}: {path}{ctx}")


class KittiCVL(Dataset):
    """KITTI-CVL query sequences with their satellite tiles (torch Dataset).

    Args:
        root: dataset root (holds ``raw_data/``, ``satmap/`` and the split files).
        split: ``"train"`` | ``"test1"`` | ``"test2"``.
        seq_len: frames per query sequence (index 0 = the query frame t).
        frame_stride: history frames are t - k*frame_stride (clamped at the drive's first frame).
        frame_spacing_m: if set, history frame k is the latest frame at least k*spacing metres
            of travel before t (distance mode), instead of ``frame_stride``.
        ground_hw: (H, W) of the returned images; K is scaled to match.
        sat_px, coverage_m: the tile is centre-cropped to ``coverage_m`` metres and resampled
            to ``sat_px`` pixels (m/px from ``satmap/tiles.json`` or web-mercator z18 s2).
        sat_m_per_px: override of the tiles' m/px.
        camera_height_m: override; default ``imu_height_m`` + the camera's height above the
            IMU from the calibration (KITTI: 0.93 + 0.73 = 1.66 m).
        datum: ENU datum of ``position_enu`` and the tile table (default: ``mosaic.geo.json``
            datum if the root has one, else the first split line's tile centre).
        split_file: explicit split file path (default ``<root>/<split>_files.txt``).
        validate: check at construction that every needed file exists (clear error otherwise).
    """

    def __init__(self, root, split: str = "train", seq_len: int = 4, frame_stride: int = 3,
                 ground_hw=(128, 512), sat_px: int = 256, coverage_m: float = 100.0,
                 frame_spacing_m: float | None = None, sat_m_per_px: float | None = None,
                 camera_height_m: float | None = None, imu_height_m: float = KITTI_IMU_HEIGHT_M,
                 datum: GeoDatum | None = None, split_file=None, cam: int = 2,
                 validate: bool = True):
        if split not in SPLIT_FILES:
            raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.seq_len = int(seq_len)
        self.frame_stride = int(frame_stride)
        self.frame_spacing_m = frame_spacing_m
        self.ground_hw = (int(ground_hw[0]), int(ground_hw[1]))
        self.sat_px = int(sat_px)
        self.coverage_m = float(coverage_m)
        self.cam = int(cam)
        self.imu_height_m = float(imu_height_m)
        self._camera_height_override = camera_height_m
        self.split_file = Path(split_file) if split_file else self.root / SPLIT_FILES[split]
        self.entries = read_split_file(self.split_file)
        self.raw_dir = self.root / "raw_data"
        self.satmap_dir = self.root / "satmap"
        meta = read_tiles_meta(self.satmap_dir)
        self._meta_m_per_px = None if meta is None else float(meta["m_per_px"])
        self._sat_m_per_px = sat_m_per_px
        self.datum = datum if datum is not None else self._default_datum()
        self._calib_cache: dict = {}
        self._drive_cache: dict = {}
        self._test_tile_index: dict = {}
        self._positions = None
        self.tile_paths = [self._tile_path(e) for e in self.entries]
        if validate:
            self.validate()

    # ------------------------------------------------------------------ paths and metadata
    def _default_datum(self) -> GeoDatum:
        side = self.root / "mosaic.geo.json"
        if side.is_file():
            import json

            return GeoDatum.from_dict(json.loads(side.read_text())["datum"])
        if not self.entries:
            return GeoDatum(0.0, 0.0)
        return GeoDatum(self.entries[0].tile_lat, self.entries[0].tile_lon)

    def drive_dir(self, date: str, drive: str) -> Path:
        """``raw_data/<date>/<drive>``."""
        return self.raw_dir / date / drive

    def image_path(self, date: str, drive: str, frame: int) -> Path:
        """Ground image path of a frame."""
        return self.drive_dir(date, drive) / f"image_{self.cam:02d}" / "data" / f"{frame:010d}.png"

    def oxts_path(self, date: str, drive: str, frame: int) -> Path:
        """OXTS packet path of a frame."""
        return self.drive_dir(date, drive) / "oxts" / "data" / f"{frame:010d}.txt"

    def _test_tiles_of(self, drive: str) -> dict:
        if drive not in self._test_tile_index:
            d = self.satmap_dir / "test" / drive
            if not d.is_dir():
                raise _missing(d, "test tile folder")
            self._test_tile_index[drive] = {p.name: p for p in sorted(d.glob("*.png"))}
        return self._test_tile_index[drive]

    def _tile_path(self, e: SplitEntry) -> Path:
        if self.split == "train":
            return self.satmap_dir / "train_10mgap" / e.date / e.drive / f"{e.frame:010d}.png"
        path = self.satmap_dir / "test" / e.drive / f"{e.lat_text}_{e.lon_text}.png"
        if path.is_file():
            return path
        # names written with other decimals: match the tile centre numerically (< ~1 cm)
        tiles = self._test_tiles_of(e.drive)
        best, best_d = None, 1e-7
        for name, p in tiles.items():
            lat, lon = parse_tile_file_name(name)
            d = max(abs(lat - e.tile_lat), abs(lon - e.tile_lon))
            if d <= best_d:
                best, best_d = p, d
        if best is None:
            raise _missing(path, "test tile", e)
        return best

    def tile_m_per_px(self, lat_deg: float) -> float:
        """Metres per pixel of the stored tiles at a latitude."""
        if self._sat_m_per_px is not None:
            return float(self._sat_m_per_px)
        if self._meta_m_per_px is not None:
            return self._meta_m_per_px
        return float(webmercator_m_per_px(lat_deg, 18, 2))

    def _calib(self, date: str) -> dict:
        if date not in self._calib_cache:
            cdir = self.raw_dir / date
            for name in ("calib_cam_to_cam.txt", "calib_imu_to_velo.txt",
                         "calib_velo_to_cam.txt"):
                if not (cdir / name).is_file():
                    raise _missing(cdir / name, "calibration file")
            cc = read_calib_cam_to_cam(cdir / "calib_cam_to_cam.txt")
            T_imu_cam = kitti_T_imu_cam(cdir, self.cam)
            P = cc[f"P_rect_{self.cam:02d}"]
            S = cc.get(f"S_rect_{self.cam:02d}")
            self._calib_cache[date] = {"P": P, "S": S, "T_imu_cam": T_imu_cam}
        return self._calib_cache[date]

    def camera_height(self, date: str) -> float:
        """Camera height above the ground (m) for a recording date."""
        if self._camera_height_override is not None:
            return float(self._camera_height_override)
        return self.imu_height_m + float(self._calib(date)["T_imu_cam"][2, 3])

    # ------------------------------------------------------------------ sequences
    def _drive_track(self, date: str, drive: str) -> np.ndarray:
        """Cumulative travelled distance per frame (distance mode only)."""
        key = (date, drive)
        if key not in self._drive_cache:
            data = self.drive_dir(date, drive) / "oxts" / "data"
            if not data.is_dir():
                raise _missing(data, "OXTS folder")
            frames = sorted(int(p.stem) for p in data.glob("*.txt"))
            pk = [read_oxts_packet(data / f"{f:010d}.txt") for f in frames]
            e, n, _ = GeoDatum(pk[0].lat, pk[0].lon, pk[0].alt).to_enu(
                np.array([p.lat for p in pk]), np.array([p.lon for p in pk]),
                np.array([p.alt for p in pk]))
            step = np.hypot(np.diff(e), np.diff(n))
            self._drive_cache[key] = (np.array(frames), np.concatenate([[0.0],
                                                                        np.cumsum(step)]))
        return self._drive_cache[key]

    def sequence_frames(self, e: SplitEntry) -> list:
        """Frame numbers of a query sequence, newest first (index 0 = the query frame)."""
        if self.frame_spacing_m is None:
            return [max(e.frame - k * self.frame_stride, 0) for k in range(self.seq_len)]
        frames, cum = self._drive_track(e.date, e.drive)
        idx = int(np.searchsorted(frames, e.frame))
        if idx >= len(frames) or frames[idx] != e.frame:
            raise _missing(self.oxts_path(e.date, e.drive, e.frame), "OXTS packet", e)
        out = [e.frame]
        for k in range(1, self.seq_len):
            ok = np.nonzero(cum[: idx + 1] <= cum[idx] - k * self.frame_spacing_m + 1e-3)[0]
            out.append(int(frames[ok[-1]]) if len(ok) else int(frames[0]))
        return out

    def validate(self) -> None:
        """Raise FileNotFoundError naming the first missing file any sample needs."""
        for e in self.entries:
            self._calib(e.date)
            for f in self.sequence_frames(e):
                for p, what in ((self.image_path(e.date, e.drive, f), "ground image"),
                                (self.oxts_path(e.date, e.drive, f), "OXTS packet")):
                    if not p.is_file():
                        raise _missing(p, what, e)
        for e, p in zip(self.entries, self.tile_paths):
            if not p.is_file():
                raise _missing(p, "satellite tile", e)

    def __len__(self) -> int:
        return len(self.entries)

    def _packet(self, e: SplitEntry, frame: int):
        p = self.oxts_path(e.date, e.drive, frame)
        if not p.is_file():
            raise _missing(p, "OXTS packet", e)
        return read_oxts_packet(p)

    def camera_poses(self, e: SplitEntry, frames, datum: GeoDatum) -> np.ndarray:
        """``T_enu_cam`` (N,4,4) of the given frames about ``datum``."""
        pk = [self._packet(e, f) for f in frames]
        return oxts_to_enu_poses(pk, datum) @ self._calib(e.date)["T_imu_cam"]

    def positions_enu(self) -> np.ndarray:
        """(M,2) east/north of every query camera about :attr:`datum` (for the sampler)."""
        if self._positions is None:
            pos = np.zeros((len(self.entries), 2))
            for i, e in enumerate(self.entries):
                T = self.camera_poses(e, [e.frame], self.datum)
                pos[i] = T[0, :2, 3]
            self._positions = pos
        return self._positions

    def load_sat(self, path, lat_deg: float) -> np.ndarray:
        """Tile file -> RGB uint8 (sat_px, sat_px, 3): centre crop of ``coverage_m``."""
        img = read_image(path)
        h, w = img.shape[:2]
        m_in = self.tile_m_per_px(lat_deg)
        return resample_north_up(img, ((h - 1) / 2.0, (w - 1) / 2.0), m_in, self.sat_px,
                                 self.coverage_m / self.sat_px)

    def __getitem__(self, i: int) -> dict:
        e = self.entries[i]
        frames = self.sequence_frames(e)
        cal = self._calib(e.date)
        H, W = self.ground_hw
        imgs, Ks = [], []
        for f in frames:
            p = self.image_path(e.date, e.drive, f)
            if not p.is_file():
                raise _missing(p, "ground image", e)
            img = read_image(p)
            S = cal["S"]  # calibrated (rectified) size; the file may have been resized
            w0, h0 = (int(round(S[0])), int(round(S[1]))) if S is not None else \
                (img.shape[1], img.shape[0])
            cam = PinholeCamera.from_kitti_projection(cal["P"], w0, h0)
            Ks.append(cam.scaled_to(W, H).K)
            if img.shape[:2] != (H, W):
                img = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
            imgs.append(img)
        pk0 = self._packet(e, frames[0])
        tile_datum = GeoDatum(e.tile_lat, e.tile_lon, pk0.alt)
        T_enu_cams = self.camera_poses(e, frames, tile_datum)
        disp = T_enu_cams[0, :2, 3].copy()
        pos = self.camera_poses(e, frames[:1], self.datum)[0, :2, 3]
        tile_path = self.tile_paths[i]
        if not tile_path.is_file():
            raise _missing(tile_path, "satellite tile", e)
        sat = self.load_sat(tile_path, e.tile_lat)
        images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div_(255.0)
        return {
            "images": images,
            "K": torch.from_numpy(np.stack(Ks)).float(),
            "T_grid_cams": torch.from_numpy(relative_camera_poses(T_enu_cams)).float(),
            "camera_height_m": torch.tensor(self.camera_height(e.date), dtype=torch.float32),
            "sat": torch.from_numpy(sat).permute(2, 0, 1).float().div_(255.0),
            "displacement_m": torch.from_numpy(disp).float(),
            "position_enu": torch.from_numpy(np.asarray(pos, dtype=np.float64)).float(),
            "yaw_rad": torch.tensor(pk0.yaw, dtype=torch.float32),
            "tile_latlon": torch.tensor([e.tile_lat, e.tile_lon], dtype=torch.float64),
            "tile_id": self.tile_id(tile_path),
            "query_id": e.query_id,
            "frames": torch.tensor(frames, dtype=torch.int64),
        }

    # ------------------------------------------------------------------ tiles
    def tile_id(self, path) -> str:
        """Tile id = path relative to ``satmap/`` (e.g. ``test/<drive>/<lat>_<lon>.png``)."""
        return Path(path).relative_to(self.satmap_dir).as_posix()

    def tile_table(self) -> list:
        """Every tile of this split, as :class:`TileRecord` (sorted by id).

        ``test2``: every ``satmap/test/<drive>/*.png`` of the split's drives (distractors
        included); ``test1`` and ``train``: the tiles the queries reference (unique).
        """
        recs = {}
        if self.split == "test2":
            for drive in sorted({e.drive for e in self.entries}):
                for name, p in self._test_tiles_of(drive).items():
                    lat, lon = parse_tile_file_name(name)
                    recs[self.tile_id(p)] = (p, lat, lon)
        else:
            for e, p in zip(self.entries, self.tile_paths):
                recs[self.tile_id(p)] = (p, e.tile_lat, e.tile_lon)
        ids = sorted(recs)
        if not ids:
            return []
        lat = np.array([recs[k][1] for k in ids])
        lon = np.array([recs[k][2] for k in ids])
        east, north, _ = self.datum.to_enu(lat, lon, self.datum.alt_m)
        east, north = np.atleast_1d(east), np.atleast_1d(north)
        return [TileRecord(k, recs[k][0], float(lat[j]), float(lon[j]), float(east[j]),
                           float(north[j])) for j, k in enumerate(ids)]

    def iter_tiles(self):
        """Yield ``(tile_id, lat, lon, RGB uint8 (sat_px, sat_px, 3))`` for the tile table.

        This is the input ``TileDatabase.build`` expects.
        """
        for r in self.tile_table():
            yield r.tile_id, r.lat, r.lon, self.load_sat(r.path, r.lat)


class DistanceAwareBatchSampler(Sampler):
    """Batches whose samples are pairwise >= ``min_separation_m`` apart (CVLNet's sampler).

    Every index appears exactly once per epoch. Greedy: indices are shuffled (seed + epoch),
    each batch takes the next pending indices compatible with those already in it; when no
    compatible index is found within ``max_scan`` candidates, the batch is emitted short.
    With ``drop_last`` short batches are dropped (then not every index appears).
    """

    def __init__(self, positions, batch_size: int, min_separation_m: float = 22.0,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 max_scan: int = 4096):
        self.positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
        self.batch_size = int(batch_size)
        self.min_sep = float(min_separation_m)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.max_scan = int(max_scan)
        self.epoch = 0
        self._batches = None

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for a new epoch."""
        self.epoch = int(epoch)
        self._batches = None

    def _make(self) -> list:
        n = len(self.positions)
        order = (np.random.default_rng(self.seed + self.epoch).permutation(n) if self.shuffle
                 else np.arange(n))
        pending = list(order)
        batches = []
        sep2 = self.min_sep * self.min_sep
        while pending:
            batch = [pending[0]]
            rest = []
            scanned = 0
            j = 1
            while j < len(pending) and len(batch) < self.batch_size and scanned < self.max_scan:
                c = pending[j]
                d2 = ((self.positions[batch] - self.positions[c]) ** 2).sum(1)
                if np.all(d2 >= sep2):
                    batch.append(c)
                else:
                    rest.append(c)
                scanned += 1
                j += 1
            pending = rest + pending[j:]
            if len(batch) == self.batch_size or not self.drop_last:
                batches.append([int(b) for b in batch])
        return batches

    def __iter__(self):
        if self._batches is None:
            self._batches = self._make()
        batches, self._batches = self._batches, None
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        if self._batches is None:
            self._batches = self._make()
        return len(self._batches)

    @staticmethod
    def min_pairwise_separation(positions, batch) -> float:
        """Smallest distance (m) between two samples of a batch (inf for one sample)."""
        p = np.asarray(positions, dtype=np.float64)[list(batch)]
        if len(p) < 2:
            return math.inf
        d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
        return float(d[np.triu_indices(len(p), 1)].min())
