"""Orthophotos in their own CRS (GeoTIFF, COG, JPEG 2000, ...) read through rasterio and pyproj.

A :class:`RasterMosaic` offers the :class:`cvl_ros.tiles.GeoMosaic` interface (local ENU plane
about a WGS84 datum, north-up crops at a given metres per pixel) over any raster GDAL reads
with a geo-reference of its own: a CRS (projected, e.g. UTM or a national grid, or
geographic, e.g. EPSG:4326) and a geotransform (GeoTIFF tags, a COG, a JPEG 2000's GeoJP2/GMLJP2
box, a ``.aux.xml``, a VRT). :func:`cvl_ros.tiles.read_mosaic` returns one when the image has
neither the project's ``.geo.json`` sidecar nor a web-mercator world file.

How a tile is cut (:meth:`RasterMosaic.crop`): the output pixel centres are points of the
north-up ENU grid of the tile (``m_per_px`` apart, centred on the requested point). On a
control grid (every 32 output pixels and the edges) each point goes ENU -> WGS84 (PROJ's
``topocentric`` and ``cart`` operations about the datum, on the ground surface through the
datum) -> the raster's CRS (the best coordinate operation PROJ has, :func:`cvl_ros.geo.
crs_transformer`) -> pixel (inverse geotransform); between control points the source position
is interpolated bilinearly (the maps are smooth: < 1e-4 px off over a 250 m tile). The image
is then sampled bilinearly (OpenCV ``remap``) after the same Gaussian anti-alias pre-filter as
the project's other mosaics when shrinking (sigma = 0.5 sqrt(k^2 - 1) source pixels per axis,
k = source pixels per output pixel); when k >= 4 the window is first read decimated by GDAL
(``average``, using the file's overviews where it has them). Only the window a tile needs is
read from the file, so orthophotos larger than memory work. Pixels outside the raster, or
masked by its nodata value, alpha band or mask band, come out black (0), as outside the
project's own mosaics.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np

from cvl_ros.geo import (
    EARTH_RADIUS_M,
    GeoDatum,
    crs_transformer,
    proj_to_enu,
    proj_to_geodetic,
)
from cvl_ros.tiles import ProjectedMosaic

#: Output pixels between two exactly converted control points of a crop.
CONTROL_STEP_PX = 32
#: Source pixels per output pixel from which a crop reads a decimated window.
DECIMATE_FROM = 4.0
#: GDAL commands named in the error messages (GDAL's own tools).
_GDAL_FIX = "gdal_translate -a_srs EPSG:<code> -a_ullr <ulx> <uly> <lrx> <lry> IN OUT.tif"


class MosaicError(ValueError):
    """An orthophoto that cannot be used; the message says what, where and how to fix it."""


def _open(path: Path):
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise MosaicError(f"{path}: GDAL cannot read it as a raster ({exc}); give a GeoTIFF/COG, "
                          "a JPEG 2000 or another image GDAL reads") from None


def raster_crs(path):
    """The CRS GDAL finds for the image at ``path`` (pyproj CRS), or None (none, unreadable)."""
    try:
        ds = _open(Path(path))
    except MosaicError:
        return None
    with ds:
        if ds.crs is None:
            return None
        from pyproj import CRS

        return CRS.from_wkt(ds.crs.to_wkt())


def _check_georeference(ds, path: Path, looked_for: str | None) -> None:
    """Raise :class:`MosaicError` unless ``ds`` has a CRS and an invertible geotransform."""
    t = ds.transform
    has_transform = not t.is_identity
    gcps, _ = ds.gcps
    where = f" (looked for {looked_for} and a CRS with a geotransform inside it)" \
        if looked_for else ""
    if ds.crs is None and not has_transform:
        if gcps:
            raise MosaicError(
                f"{path}: georeferenced by {len(gcps)} ground control points only; warp it onto "
                "a grid first: gdalwarp -t_srs EPSG:<code> IN OUT.tif")
        raise MosaicError(
            f"no geo-reference found for {path}: the image has no CRS and no geotransform"
            f"{where}; georeference it ({_GDAL_FIX}), or write a <name>.geo.json sidecar")
    if ds.crs is None:
        raise MosaicError(
            f"{path}: the geotransform has no coordinate reference system (CRS){where}; "
            f"assign the one its coordinates are in: gdal_edit.py -a_srs EPSG:<code> {path}")
    if not has_transform:
        if gcps:
            raise MosaicError(
                f"{path}: georeferenced by {len(gcps)} ground control points only ({ds.crs}); "
                "warp it onto a grid first: gdalwarp -t_srs EPSG:<code> IN OUT.tif")
        raise MosaicError(
            f"{path}: has a CRS ({ds.crs}) but no geotransform (pixel size and origin); "
            f"add one: gdal_edit.py -a_ullr <ulx> <uly> <lrx> <lry> {path}")
    if abs(t.determinant) == 0.0 or not all(math.isfinite(v) for v in tuple(t)[:6]):
        raise MosaicError(f"{path}: degenerate geotransform {tuple(t)[:6]}; fix the file's "
                          "georeferencing (gdalinfo shows it)")


def _bands(ds, path: Path) -> tuple:
    """(band indexes (1-based) of R, G, B or of the grey/palette band, palette LUT or None)."""
    names = [c.name for c in ds.colorinterp]
    if all(c in names for c in ("red", "green", "blue")):
        idx = [names.index(c) + 1 for c in ("red", "green", "blue")]
    elif ds.count >= 3:
        idx = [1, 2, 3]
    else:
        idx = [1]
    dtypes = {ds.dtypes[i - 1] for i in idx}
    if dtypes != {"uint8"}:
        raise MosaicError(
            f"{path}: {'/'.join(sorted(dtypes))} pixels; orthophotos are read as 8-bit RGB "
            "(or grey): convert it first, e.g. gdal_translate -ot Byte -scale IN OUT.tif")
    lut = None
    if len(idx) == 1 and names and names[0] == "palette":
        cmap = ds.colormap(1)
        lut = np.zeros((256, 3), np.uint8)
        for k, rgba in cmap.items():
            if 0 <= k < 256:
                lut[k] = rgba[:3]
    return tuple(idx), lut


class RasterMosaic(ProjectedMosaic):
    """An orthophoto in its own CRS on the local ENU plane about ``datum``.

    ``datum`` (default: the image centre, altitude 0) is the origin of the tile grid.
    ``m_per_px`` is the ground resolution at the datum (geometric mean of the two axes);
    ``extent_enu`` the largest ENU rectangle inside the raster. Only the windows that crops
    need are read; :attr:`image` reads the whole raster (plots only).
    """

    def __init__(self, path, datum: GeoDatum | None = None, looked_for: str | None = None):
        self.path = Path(path)
        ds = _open(self.path)
        try:
            _check_georeference(ds, self.path, looked_for)
            self._bands, self._lut = _bands(ds, self.path)
            try:
                self.crs = crs_transformer(ds.crs)
            except ValueError as exc:
                raise MosaicError(f"{self.path}: CRS {ds.crs}: {exc}; reproject it to a map "
                                  "projection or to EPSG:4326 (gdalwarp -t_srs ...)") from None
        except Exception:
            ds.close()
            raise
        self._ds = ds
        self.transform = tuple(ds.transform)[:6]  # x = a*col + b*row + c, y = d*col + e*row + f
        self._inv = tuple((~ds.transform))[:6]
        flags = [set(f) for f in ds.mask_flag_enums]
        from rasterio.enums import MaskFlags

        self._masked = any(f != {MaskFlags.all_valid} for f in flags)
        self._image = None
        if datum is None:
            x, y = self._xy(ds.height / 2.0 - 0.5, ds.width / 2.0 - 0.5)
            lon, lat = self.crs.to_lonlat(x, y)
            if not (math.isfinite(lat) and math.isfinite(lon)):
                raise MosaicError(f"{self.path}: its centre does not convert to WGS84 from "
                                  f"{self.crs.name}; check the CRS (gdalinfo)")
            datum = GeoDatum(float(lat), float(lon), 0.0)
        self.datum = datum
        self.m_per_px = 1.0
        self.nw_east_m = self.nw_north_m = 0.0
        _, _, jac = self.local_affine(0.0, 0.0)
        det = abs(float(np.linalg.det(jac)))
        if not (math.isfinite(det) and det > 0):
            raise MosaicError(f"{self.path}: the datum ({datum.lat_deg:.7f}, "
                              f"{datum.lon_deg:.7f}) does not map into {self.crs.name}; give a "
                              "datum inside the orthophoto")
        self.m_per_px = 1.0 / math.sqrt(det)
        self._extent = self._inscribed_extent()
        self.nw_east_m, self.nw_north_m = self._extent[0], self._extent[3]

    # -- bookkeeping ---------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (f"RasterMosaic({str(self.path)!r}, crs={self.crs.name}, "
                f"{self.width_px}x{self.height_px} px, datum={self.datum})")

    def __eq__(self, other) -> bool:
        return self is other

    __hash__ = object.__hash__

    def close(self) -> None:
        """Close the file (crops need it open)."""
        self._ds.close()

    @property
    def height_px(self) -> int:
        """Rows of the raster."""
        return int(self._ds.height)

    @property
    def width_px(self) -> int:
        """Columns of the raster."""
        return int(self._ds.width)

    @property
    def extent_enu(self) -> tuple:
        """(east_min, east_max, north_min, north_max) of the ENU rectangle inside the raster."""
        return self._extent

    @property
    def image(self) -> np.ndarray:
        """The whole raster as RGB uint8 (read on first use; masked pixels black)."""
        if self._image is None:
            self._image = self._read(0, self.height_px, 0, self.width_px, 1)
        return self._image

    @property
    def masked(self) -> bool:
        """Whether the raster has a nodata value, an alpha band or a mask band."""
        return self._masked

    # -- coordinates ---------------------------------------------------------------------------

    def _xy(self, row, col):
        a, b, c, d, e, f = self.transform
        cc = np.asarray(col, dtype=np.float64) + 0.5
        rr = np.asarray(row, dtype=np.float64) + 0.5
        return a * cc + b * rr + c, d * cc + e * rr + f

    def enu_to_pixel(self, east_m, north_m):
        """ENU (m) on the ground surface through the datum -> continuous (row, col)."""
        e = np.asarray(east_m, dtype=np.float64)
        n = np.asarray(north_m, dtype=np.float64)
        up = -(e * e + n * n) / (2.0 * EARTH_RADIUS_M)  # the surface curves away from the plane
        lat, lon, _ = proj_to_geodetic(self.datum, e, n, up)
        x, y = self.crs.from_lonlat(lon, lat)
        a, b, c, d, ee, f = self._inv
        x, y = np.asarray(x), np.asarray(y)
        col = a * x + b * y + c - 0.5
        row = d * x + ee * y + f - 0.5
        return _num(row), _num(col)

    def pixel_to_enu(self, row, col):
        """Continuous (row, col) -> ENU (east_m, north_m) at the datum's altitude."""
        x, y = self._xy(row, col)
        lon, lat = self.crs.to_lonlat(x, y)
        e, n, _ = proj_to_enu(self.datum, lat, lon, self.datum.alt_m)
        return e, n

    def _inscribed_extent(self, samples: int = 65) -> tuple:
        h, w = self.height_px, self.width_px
        t = np.linspace(0.0, 1.0, samples)
        cols, rows = -0.5 + t * w, -0.5 + t * h
        edges = [self.pixel_to_enu(np.full(samples, -0.5), cols),
                 self.pixel_to_enu(np.full(samples, h - 0.5), cols),
                 self.pixel_to_enu(rows, np.full(samples, -0.5)),
                 self.pixel_to_enu(rows, np.full(samples, w - 0.5))]
        # a north-up raster in a conformal CRS is only slightly rotated on the ENU plane (the
        # meridian convergence): its top edge is the northern one, left the western one ...
        (_, n_top), (_, n_bot), (e_left, _), (e_right, _) = edges
        if np.min(n_top) < np.max(n_bot):  # rows go north: a south-up raster
            n_top, n_bot = n_bot, n_top
        if np.min(e_right) < np.max(e_left):
            e_left, e_right = e_right, e_left
        return (float(np.max(e_left)), float(np.min(e_right)), float(np.max(n_bot)),
                float(np.min(n_top)))

    def contains(self, east_m: float, north_m: float, half_size_m: float = 0.0) -> bool:
        """Whether the square of half side ``half_size_m`` about (east, north) lies inside."""
        h = float(half_size_m)
        r, c = self.enu_to_pixel(float(east_m) + np.array([-h, h, h, -h]),
                                 float(north_m) + np.array([h, h, -h, -h]))
        return bool(np.all(r >= -0.5) and np.all(r <= self.height_px - 0.5)
                    and np.all(c >= -0.5) and np.all(c <= self.width_px - 0.5))

    def valid_at(self, east_m, north_m) -> np.ndarray:
        """Per point: inside the raster and not masked (nodata, alpha, mask band)."""
        from rasterio.windows import Window

        rows, cols = self.enu_to_pixel(east_m, north_m)
        rows, cols = np.atleast_1d(rows), np.atleast_1d(cols)
        ri, ci = np.floor(rows + 0.5).astype(np.int64), np.floor(cols + 0.5).astype(np.int64)
        ok = (ri >= 0) & (ri < self.height_px) & (ci >= 0) & (ci < self.width_px)
        if self._masked:
            for k in np.flatnonzero(ok):
                m = self._ds.dataset_mask(window=Window(int(ci[k]), int(ri[k]), 1, 1))
                ok[k] = bool(m[0, 0])
        return ok

    # -- pixels --------------------------------------------------------------------------------

    def _read(self, r0: int, r1: int, c0: int, c1: int, factor: int) -> np.ndarray:
        """Rows r0:r1, columns c0:c1 (inside the raster) as RGB uint8, masked pixels 0.

        ``factor`` > 1: read decimated by that factor (GDAL ``average``, overviews if any);
        (r1 - r0) and (c1 - c0) are multiples of it.
        """
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        win = Window(c0, r0, c1 - c0, r1 - r0)
        kw = {}
        if factor > 1:
            kw = {"out_shape": (len(self._bands), (r1 - r0) // factor, (c1 - c0) // factor),
                  "resampling": Resampling.average}
        data = self._ds.read(self._bands, window=win, **kw)
        img = np.ascontiguousarray(np.moveaxis(data, 0, -1))
        if self._lut is not None:
            img = self._lut[img[..., 0]]
        elif img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        if self._masked:
            mkw = {"out_shape": kw["out_shape"][1:]} if factor > 1 else {}
            mask = self._ds.dataset_mask(window=win, **mkw)
            img[mask == 0] = 0
        return img

    def source_map(self, east_m: float, north_m: float, size_px: int,
                   m_per_px_out: float | None = None) -> tuple:
        """(rows, cols) (size_px, size_px): the raster pixel each output pixel of a crop samples.

        Exact (PROJ) on a control grid every :data:`CONTROL_STEP_PX` output pixels and at the
        edges, bilinear in between.
        """
        m = self.m_per_px if m_per_px_out is None else float(m_per_px_out)
        half = (size_px - 1) / 2.0
        k = max(2, int(math.ceil((size_px - 1) / CONTROL_STEP_PX)) + 1)
        u = np.linspace(0.0, size_px - 1.0, k)
        ee = float(east_m) + (u[None, :] - half) * m
        nn = float(north_m) - (u[:, None] - half) * m
        rows, cols = self.enu_to_pixel(*np.broadcast_arrays(ee, nn))
        # separable linear interpolation weights (size_px, k)
        pos = np.arange(size_px, dtype=np.float64) * (k - 1) / max(size_px - 1, 1)
        i0 = np.minimum(np.floor(pos).astype(int), k - 2)
        fr = pos - i0
        W = np.zeros((size_px, k))
        W[np.arange(size_px), i0] = 1.0 - fr
        W[np.arange(size_px), i0 + 1] += fr
        return W @ np.asarray(rows) @ W.T, W @ np.asarray(cols) @ W.T

    def crop(self, east_m: float, north_m: float, size_px: int,
             m_per_px_out: float | None = None) -> np.ndarray:
        """North-up (on the ENU plane) ``size_px`` square centred on ENU (east, north)."""
        map_r, map_c = self.source_map(east_m, north_m, size_px, m_per_px_out)
        out_shape = (size_px, size_px, 3)
        if not (np.isfinite(map_r).all() and np.isfinite(map_c).all()):
            return np.zeros(out_shape, np.uint8)
        # source pixels per output pixel along each source axis (at the centre)
        c = size_px // 2
        c1 = min(c + 1, size_px - 1)
        c0 = c1 - 1
        kx = float(np.hypot(map_c[c, c1] - map_c[c, c0], map_c[c1, c] - map_c[c0, c]))
        ky = float(np.hypot(map_r[c, c1] - map_r[c, c0], map_r[c1, c] - map_r[c0, c]))
        factor = max(1, int(min(kx, ky) // DECIMATE_FROM)) if size_px > 1 else 1
        kx, ky = kx / factor, ky / factor
        sx = 0.5 * math.sqrt(kx * kx - 1.0) if kx > 1.0 + 1e-9 else 0.0
        sy = 0.5 * math.sqrt(ky * ky - 1.0) if ky > 1.0 + 1e-9 else 0.0
        margin = (int(math.ceil(3 * max(sx, sy))) + 2) * factor
        H, W = self.height_px, self.width_px
        r0 = max(int(math.floor(map_r.min())) - margin, 0)
        r1 = min(int(math.ceil(map_r.max())) + margin + 1, H)
        c0 = max(int(math.floor(map_c.min())) - margin, 0)
        c1 = min(int(math.ceil(map_c.max())) + margin + 1, W)
        if factor > 1:  # window sides: multiples of the factor, still inside the raster
            r1 = r0 + (r1 - r0) // factor * factor
            c1 = c0 + (c1 - c0) // factor * factor
        if r0 >= r1 or c0 >= c1:
            return np.zeros(out_shape, np.uint8)
        win = self._read(r0, r1, c0, c1, factor)
        if sx > 0 or sy > 0:
            win = cv2.GaussianBlur(win, (0, 0), sigmaX=max(sx, 1e-6), sigmaY=max(sy, 1e-6),
                                   borderType=cv2.BORDER_REPLICATE)
        # pixel-centre coordinates in the (decimated) window
        mx = ((map_c - c0 + 0.5) / factor - 0.5).astype(np.float32)
        my = ((map_r - r0 + 0.5) / factor - 0.5).astype(np.float32)
        out = cv2.remap(win, mx, my, interpolation=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        return out.reshape(out_shape)

    def georef_dict(self) -> dict:
        """A description of the geo-reference (the file itself is the stored form)."""
        return {"format": "cvl_ros.raster_mosaic/1", "path": str(self.path),
                "driver": self._ds.driver, "crs": self.crs.name,
                "crs_operation": self.crs.operation, "crs_accuracy_m": self.crs.accuracy_m,
                "crs_best_available": self.crs.best_available,
                "geotransform": list(self.transform), "datum": self.datum.to_dict(),
                "m_per_px": float(self.m_per_px), "width_px": self.width_px,
                "height_px": self.height_px, "bands": list(self._bands),
                "convention": "GDAL geotransform a, b, c, d, e, f: x = a*col + b*row + c, "
                "y = d*col + e*row + f at the pixel corner (col, row)"}

    def crs_note(self) -> str | None:
        """One line on an inexact WGS84 -> CRS operation (None when exact)."""
        c = self.crs
        if c.accuracy_m == 0.0 and c.best_available:
            return None
        acc = "unknown accuracy" if c.accuracy_m < 0 else f"accuracy {c.accuracy_m:g} m"
        note = f"WGS84 -> {c.name} through '{c.operation}' ({acc}, as PROJ states it)"
        if not c.best_available:
            note += ("; a more accurate operation needs a grid PROJ does not have here "
                     "(projsync, or PROJ_NETWORK=ON)")
        return note

    def write(self, path) -> None:
        """Not supported: the orthophoto stays in its own file."""
        raise TypeError("a RasterMosaic is read from its own file; crop it or use "
                        "GeoMosaic(image, datum, ...) to write a .geo.json mosaic")


def _num(x):
    a = np.asarray(x, dtype=np.float64)
    return float(a) if a.ndim == 0 else a
