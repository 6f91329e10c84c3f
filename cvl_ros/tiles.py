"""Georeferenced mosaics and the KITTI-CVL tile builder.

A :class:`GeoMosaic` is a north-up RGB image on a local ENU plane about a WGS84 datum: pixel
``(row, col)`` covers ``east in [e0 + col*m, e0 + (col+1)*m]`` and
``north in [n0 - (row+1)*m, n0 - row*m]`` where ``(e0, n0)`` is the ENU of the north-west corner
of pixel (0, 0) and ``m`` is metres per pixel. It is stored as ``<name>.png`` plus a JSON
sidecar ``<name>.geo.json``. A north-up web-mercator (EPSG:3857) image with an ESRI world file
is read as a :class:`WebMercatorMosaic`, an orthophoto in its own CRS (GeoTIFF, COG, JPEG 2000,
...) as a :class:`cvl_ros.orthophoto.RasterMosaic`; both offer the same interface
(:func:`read_mosaic` picks the class from the geo-reference found).

The tile builder cuts KITTI-CVL style satellite tiles from such a mosaic (the script the
KITTI-CVL authors never released) and writes the split files; see docs/data.md.

Longer than 700 lines: the mosaic formats (project .geo.json, web mercator) and the tile builder
share the cropping and resampling code; orthophotos in any CRS live in cvl_ros/orthophoto.py.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cvl_ros.geo import EARTH_RADIUS_M, GeoDatum
from cvl_ros.kitti import KittiDrive, read_image, write_image

#: Split file names (KITTI-CVL), written at the dataset root.
SPLIT_FILES = {"train": "train_files.txt", "test1": "test1_files.txt", "test2": "test2_files.txt"}
#: Metadata file the builder writes (``satmap/tiles.json``); readers use its ``m_per_px``.
TILES_META = "tiles.json"
#: Decimal places of lat/lon in tile names and split files (1e-10 deg ~ 11 micrometres).
LATLON_DECIMALS = 10


def _blurred_window(img: np.ndarray, r0: int, r1: int, c0: int, c1: int, sigma_x: float,
                    sigma_y: float, size_px: int):
    """Source rows r0:r1, columns c0:c1 clipped to ``img`` and Gaussian anti-alias blurred
    (per-axis sigma in px, 0 = none): ``(window or None when it misses the image, row offset,
    col offset, shape of a size_px output with img's channels)``."""  # noqa: D205, D209
    chans = img.shape[2] if img.ndim == 3 else None
    out_shape = (size_px, size_px) + ((chans,) if chans else ())
    H, W = img.shape[:2]
    rr0, rr1, cc0, cc1 = max(r0, 0), min(r1, H), max(c0, 0), min(c1, W)
    if rr0 >= rr1 or cc0 >= cc1:
        return None, rr0, cc0, out_shape
    win = img[rr0:rr1, cc0:cc1]
    if sigma_x > 0 or sigma_y > 0:
        win = cv2.GaussianBlur(win, (0, 0), sigmaX=max(sigma_x, 1e-6),
                               sigmaY=max(sigma_y, 1e-6), borderType=cv2.BORDER_REPLICATE)
    return win, rr0, cc0, out_shape


def resample_north_up(image, center_rc, m_per_px_in: float, size_px: int,
                      m_per_px_out: float | None = None, border_value: int = 0) -> np.ndarray:
    """Cut a north-up square of ``size_px`` pixels centred on a continuous pixel position.

    ``center_rc`` = (row, col) in pixel-centre coordinates of ``image`` (pixel (0,0)'s centre
    is (0,0)); the output's centre pixel coordinate ((S-1)/2, (S-1)/2) lands exactly there.
    Bilinear, with a Gaussian anti-alias pre-filter when shrinking; outside -> border_value.
    """
    img = np.asarray(image)
    m_out = m_per_px_in if m_per_px_out is None else float(m_per_px_out)
    k = m_out / float(m_per_px_in)
    half = (size_px - 1) / 2.0
    rc, cc = float(center_rc[0]), float(center_rc[1])
    # source window (with margin for the filter and bilinear taps)
    sigma = 0.5 * math.sqrt(k * k - 1.0) if k > 1.0 + 1e-9 else 0.0
    margin = int(math.ceil(3 * sigma)) + 2
    r0 = int(math.floor(rc - half * k)) - margin
    r1 = int(math.ceil(rc + half * k)) + margin + 1
    c0 = int(math.floor(cc - half * k)) - margin
    c1 = int(math.ceil(cc + half * k)) + margin + 1
    win, rr0, cc0, out_shape = _blurred_window(img, r0, r1, c0, c1, sigma, sigma, size_px)
    if win is None:
        return np.full(out_shape, border_value, dtype=img.dtype)
    idx = (np.arange(size_px, dtype=np.float64) - half) * k
    map_x = np.broadcast_to((cc + idx - cc0)[None, :], (size_px, size_px)).astype(np.float32)
    map_y = np.broadcast_to((rc + idx - rr0)[:, None], (size_px, size_px)).astype(np.float32)
    out = cv2.remap(np.ascontiguousarray(win), map_x, map_y, interpolation=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT,
                    borderValue=(border_value,) * (win.shape[2] if win.ndim == 3 else 1))
    return out.reshape(out_shape)


def geo_sidecar_path(path) -> Path:
    """``mosaic.png`` -> ``mosaic.geo.json``."""
    p = Path(path)
    return p.with_name(p.stem + ".geo.json")


@dataclass
class GeoMosaic:
    """North-up RGB image with a georeference (see module docstring for the pixel convention)."""

    image: np.ndarray
    datum: GeoDatum
    m_per_px: float
    nw_east_m: float
    nw_north_m: float

    @property
    def height_px(self) -> int:
        """Rows."""
        return int(self.image.shape[0])

    @property
    def width_px(self) -> int:
        """Columns."""
        return int(self.image.shape[1])

    @property
    def extent_enu(self) -> tuple:
        """(east_min, east_max, north_min, north_max) of the image's outer edges (m)."""
        return (self.nw_east_m, self.nw_east_m + self.width_px * self.m_per_px,
                self.nw_north_m - self.height_px * self.m_per_px, self.nw_north_m)

    def enu_to_pixel(self, east_m, north_m):
        """ENU (m) -> continuous (row, col) in pixel-centre coordinates."""
        col = (np.asarray(east_m, dtype=np.float64) - self.nw_east_m) / self.m_per_px - 0.5
        row = (self.nw_north_m - np.asarray(north_m, dtype=np.float64)) / self.m_per_px - 0.5
        return row, col

    def pixel_to_enu(self, row, col):
        """Continuous (row, col) pixel-centre coordinates -> ENU (east_m, north_m)."""
        east = self.nw_east_m + (np.asarray(col, dtype=np.float64) + 0.5) * self.m_per_px
        north = self.nw_north_m - (np.asarray(row, dtype=np.float64) + 0.5) * self.m_per_px
        return east, north

    def contains(self, east_m: float, north_m: float, half_size_m: float = 0.0) -> bool:
        """Whether the square of half side ``half_size_m`` about (east, north) lies inside."""
        e0, e1, n0, n1 = self.extent_enu
        return (e0 <= east_m - half_size_m and east_m + half_size_m <= e1
                and n0 <= north_m - half_size_m and north_m + half_size_m <= n1)

    def crop(self, east_m: float, north_m: float, size_px: int,
             m_per_px_out: float | None = None) -> np.ndarray:
        """North-up ``size_px`` square centred on ENU (east, north).

        The centre pixel coordinate ((S-1)/2, (S-1)/2) is exactly that point; outside the
        mosaic -> black.
        """
        row, col = self.enu_to_pixel(east_m, north_m)
        return resample_north_up(self.image, (float(row), float(col)), self.m_per_px, size_px,
                                 m_per_px_out)

    def crop_latlon(self, lat_deg: float, lon_deg: float, size_px: int,
                    m_per_px_out: float | None = None) -> np.ndarray:
        """Like :meth:`crop` with a WGS84 centre."""
        e, n, _ = self.datum.to_enu(lat_deg, lon_deg, self.datum.alt_m)
        return self.crop(e, n, size_px, m_per_px_out)

    def georef_dict(self) -> dict:
        """The sidecar's content."""
        return {"format": "cvl_ros.geomosaic/1", "datum": self.datum.to_dict(),
                "m_per_px": float(self.m_per_px),
                "nw_corner_enu_m": [float(self.nw_east_m), float(self.nw_north_m)],
                "width_px": self.width_px, "height_px": self.height_px,
                "convention": "north-up; pixel (0,0) north-west corner at nw_corner_enu_m"}

    def write(self, path) -> None:
        """Write ``<name>.png`` and ``<name>.geo.json``."""
        path = Path(path)
        write_image(path, self.image)
        geo_sidecar_path(path).write_text(json.dumps(self.georef_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, path, sidecar=None) -> GeoMosaic:
        """Read ``<name>.png`` with its ``<name>.geo.json`` sidecar (or the given ``sidecar``)."""
        path = Path(path)
        side = geo_sidecar_path(path) if sidecar is None else Path(sidecar)
        if not side.is_file():
            raise FileNotFoundError(f"GeoMosaic georeference sidecar not found: {side}")
        g = json.loads(side.read_text())
        img = read_image(path)
        if (g.get("width_px", img.shape[1]), g.get("height_px", img.shape[0])) != \
                (img.shape[1], img.shape[0]):
            raise ValueError(f"{side}: size {g['width_px']}x{g['height_px']} does not match "
                             f"{path} ({img.shape[1]}x{img.shape[0]})")
        e0, n0 = g["nw_corner_enu_m"]
        return cls(img, GeoDatum.from_dict(g["datum"]), float(g["m_per_px"]), float(e0),
                   float(n0))


# --------------------------------------------------------------------------------------------
# Web-mercator mosaics georeferenced by an ESRI world file
# --------------------------------------------------------------------------------------------

#: Half the side of the EPSG:3857 square (m): x and y lie in [-pi*a, pi*a].
WEBMERCATOR_HALF_SIDE_M = math.pi * EARTH_RADIUS_M


def _num(x):
    a = np.asarray(x, dtype=np.float64)
    return float(a) if a.ndim == 0 else a


def latlon_to_webmercator(lat_deg, lon_deg):
    """WGS84 lat/lon (deg) -> EPSG:3857 (x, y) in web-mercator metres.

    The spherical formulas on the WGS84 equatorial radius a: x = a*lon,
    y = a*ln(tan(pi/4 + lat/2)) (angles in radians).
    """
    lat = np.radians(np.asarray(lat_deg, dtype=np.float64))
    lon = np.radians(np.asarray(lon_deg, dtype=np.float64))
    return (_num(EARTH_RADIUS_M * lon),
            _num(EARTH_RADIUS_M * np.log(np.tan(math.pi / 4.0 + lat / 2.0))))


def webmercator_to_latlon(x_m, y_m):
    """Inverse of :func:`latlon_to_webmercator`: lat = 2*atan(exp(y/a)) - pi/2, lon = x/a."""
    x = np.asarray(x_m, dtype=np.float64)
    y = np.asarray(y_m, dtype=np.float64)
    lat = np.degrees(2.0 * np.arctan(np.exp(y / EARTH_RADIUS_M)) - math.pi / 2.0)
    return _num(lat), _num(np.degrees(x / EARTH_RADIUS_M))


def world_file_candidates(image) -> list:
    """World files looked for beside ``image``, in order.

    ``mosaic.png`` -> ``mosaic.pgw``, ``mosaic.pngw``, ``mosaic.wld`` (``.jpg`` -> ``.jgw``,
    ``.tif`` -> ``.tfw``, ...), each also in upper case.
    """
    p = Path(image)
    ext = p.suffix.lower().lstrip(".")
    names = []
    if len(ext) >= 2:
        names.append(ext[0] + ext[-1] + "w")
    if ext:
        names.append(ext + "w")
    names.append("wld")
    out = []
    for n in names:
        for s in (n, n.upper()):
            c = p.with_name(p.stem + "." + s)
            if c not in out:
                out.append(c)
    return out


def find_world_file(image) -> Path | None:
    """The first existing :func:`world_file_candidates` of ``image``, or None."""
    return next((c for c in world_file_candidates(image) if c.is_file()), None)


def read_world_file(path) -> tuple:
    """ESRI world file -> (A, D, B, E, C, F): six numbers, one a line (blank lines ignored).

    Pixel (row, col) centre -> map x = A*col + B*row + C, y = D*col + E*row + F.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"world file not found: {path}")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) != 6:
        raise ValueError(f"{path}: a world file has 6 lines (A, D, B, E, C, F), found "
                         f"{len(lines)}")
    try:
        vals = tuple(float(ln) for ln in lines)
    except ValueError as exc:
        raise ValueError(f"{path}: not a number in the world file ({exc})") from None
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{path}: non-finite value in the world file: {vals}")
    return vals


def write_world_file(path, world) -> Path:
    """Write (A, D, B, E, C, F) as an ESRI world file (full float precision)."""
    path = Path(path)
    vals = tuple(float(v) for v in world)
    if len(vals) != 6:
        raise ValueError(f"a world file has 6 values (A, D, B, E, C, F), got {len(vals)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{v!r}\n" for v in vals))
    return path


def check_webmercator_world(world, source="world file") -> tuple:
    """Validate (A, D, B, E, C, F) as a north-up EPSG:3857 geo-reference; returns it as floats."""
    A, D, B, E, C, F = (float(v) for v in world)
    if A > 0 and abs(A) < 1e-3 and abs(C) <= 180.0 and abs(F) <= 90.0:
        raise ValueError(f"{source}: the coordinates look like degrees (EPSG:4326: pixel size "
                         f"{A:g}, origin {C:g}, {F:g}); only EPSG:3857 web-mercator metres are "
                         "supported")
    if abs(B) > 1e-9 * abs(A) or abs(D) > 1e-9 * abs(E):
        raise ValueError(f"{source}: rotation terms B={B:g}, D={D:g} are not zero; only "
                         "north-up images are supported (reproject the mosaic north-up in "
                         "EPSG:3857 first)")
    if not (A > 0 and E < 0):
        raise ValueError(f"{source}: A={A:g} must be > 0 and E={E:g} < 0 (a north-up image: "
                         "columns go east, rows go south)")
    lim = WEBMERCATOR_HALF_SIDE_M * (1 + 1e-9)
    if abs(C) > lim or abs(F) > lim:
        raise ValueError(f"{source}: origin ({C:.3f}, {F:.3f}) lies outside the EPSG:3857 "
                         f"square (+-{WEBMERCATOR_HALF_SIDE_M:.2f} m)")
    return A, D, B, E, C, F


class ProjectedMosaic(GeoMosaic):
    """A mosaic whose pixels are not a linear map of ENU: ``local_affine`` by central
    differences of ``enu_to_pixel`` (web mercator, orthophotos in any CRS)."""  # noqa: D205, D209

    def local_affine(self, east_m: float, north_m: float, step_m: float = 10.0) -> tuple:
        """(row, col, J) at ENU (east, north): J = d(row, col)/d(east, north), (2,2) px/m."""
        e, n, s = float(east_m), float(north_m), float(step_m)
        r, c = self.enu_to_pixel(np.array([e, e + s, e - s, e, e]),
                                 np.array([n, n, n, n + s, n - s]))
        jac = np.array([[r[1] - r[2], r[3] - r[4]], [c[1] - c[2], c[3] - c[4]]]) / (2.0 * s)
        return float(r[0]), float(c[0]), jac


class WebMercatorMosaic(ProjectedMosaic):
    """North-up image in EPSG:3857 (web-mercator metres) georeferenced by an ESRI world file.

    It offers the :class:`GeoMosaic` interface on the local ENU plane about ``datum`` (default:
    the image centre, altitude 0), so :func:`build_tiles` cuts it as it cuts a ``.geo.json``
    mosaic: tiles are north-up on that ENU plane, ``m_per_px`` ground metres per pixel.

    Web mercator is not that plane: its scale grows as 1/cos(lat), and since EPSG:3857 applies
    the sphere's formulas to WGS84 latitudes its north-south and east-west scales differ
    (by 0.29 % at latitude 49). One affine map for the whole image would be metres off on a
    city-sized mosaic, so positions are converted exactly (ENU -> WGS84 -> web mercator ->
    pixel) and each crop resamples through the local affine map (the Jacobian) at its
    centre; over a 250 m tile that map is off by about a millimetre.

    World file (A, D, B, E, C, F): pixel (row, col) centre at x = A*col + C, y = E*row + F
    (B = D = 0; A and -E may differ), the pixel-centre convention of :class:`GeoMosaic`.
    ``m_per_px`` is the ground resolution at the datum (geometric mean of the two axes);
    ``extent_enu`` (and ``nw_east_m``/``nw_north_m``) is the largest ENU rectangle whose edges
    stay inside the image (its edges are slightly curved on the ENU plane).
    """

    def __init__(self, image, world, datum: GeoDatum | None = None):
        self.world = check_webmercator_world(world)
        A, _, _, E, C, F = self.world
        img = np.asarray(image)
        h, w = img.shape[:2]
        if datum is None:
            lat, lon = webmercator_to_latlon(C + A * (w - 1) / 2.0, F + E * (h - 1) / 2.0)
            datum = GeoDatum(float(lat), float(lon), 0.0)
        super().__init__(img, datum, 1.0, 0.0, 0.0)
        _, _, jac = self.local_affine(0.0, 0.0)
        self.m_per_px = 1.0 / math.sqrt(abs(float(np.linalg.det(jac))))
        self._extent = self._inscribed_extent()
        self.nw_east_m, self.nw_north_m = self._extent[0], self._extent[3]

    @property
    def extent_enu(self) -> tuple:
        """(east_min, east_max, north_min, north_max) of the ENU rectangle inside the image."""
        return self._extent

    def _inscribed_extent(self, samples: int = 65) -> tuple:
        h, w = self.height_px, self.width_px
        t = np.linspace(0.0, 1.0, samples)
        cols = -0.5 + t * w
        rows = -0.5 + t * h
        _, n_top = self.pixel_to_enu(np.full(samples, -0.5), cols)
        _, n_bot = self.pixel_to_enu(np.full(samples, h - 0.5), cols)
        e_left, _ = self.pixel_to_enu(rows, np.full(samples, -0.5))
        e_right, _ = self.pixel_to_enu(rows, np.full(samples, w - 0.5))
        return (float(np.max(e_left)), float(np.min(e_right)), float(np.max(n_bot)),
                float(np.min(n_top)))

    def enu_to_pixel(self, east_m, north_m):
        """ENU (m) on the ground surface through the datum -> continuous (row, col)."""
        e = np.asarray(east_m, dtype=np.float64)
        n = np.asarray(north_m, dtype=np.float64)
        up = -(e * e + n * n) / (2.0 * EARTH_RADIUS_M)  # the surface curves away from the plane
        lat, lon, _ = self.datum.to_geodetic(e, n, up)
        x, y = latlon_to_webmercator(lat, lon)
        A, _, _, E, C, F = self.world
        return _num((y - F) / E), _num((x - C) / A)

    def pixel_to_enu(self, row, col):
        """Continuous (row, col) -> ENU (east_m, north_m) at the datum's altitude."""
        A, _, _, E, C, F = self.world
        x = C + A * np.asarray(col, dtype=np.float64)
        y = F + E * np.asarray(row, dtype=np.float64)
        lat, lon = webmercator_to_latlon(x, y)
        e, n, _ = self.datum.to_enu(lat, lon, self.datum.alt_m)
        return e, n

    def contains(self, east_m: float, north_m: float, half_size_m: float = 0.0) -> bool:
        """Whether the square of half side ``half_size_m`` about (east, north) lies inside."""
        h = float(half_size_m)
        r, c = self.enu_to_pixel(float(east_m) + np.array([-h, h, h, -h]),
                                 float(north_m) + np.array([h, h, -h, -h]))
        return bool(np.all(r >= -0.5) and np.all(r <= self.height_px - 0.5)
                    and np.all(c >= -0.5) and np.all(c <= self.width_px - 0.5))

    def crop(self, east_m: float, north_m: float, size_px: int,
             m_per_px_out: float | None = None) -> np.ndarray:
        """North-up (on the ENU plane) ``size_px`` square centred on ENU (east, north)."""
        m = self.m_per_px if m_per_px_out is None else float(m_per_px_out)
        r0, c0, jac = self.local_affine(east_m, north_m)
        half = (size_px - 1) / 2.0
        # output pixel (row i, col j) is ENU offset ((j - half)*m, -(i - half)*m)
        lin = np.array([[jac[1, 0] * m, -jac[1, 1] * m],    # source col per (j, i)
                        [jac[0, 0] * m, -jac[0, 1] * m]])   # source row per (j, i)
        shift = np.array([c0, r0]) - lin @ np.array([half, half])
        return resample_affine(self.image, np.hstack([lin, shift[:, None]]), size_px)

    def georef_dict(self) -> dict:
        """A description of the geo-reference (the world file is the stored form)."""
        return {"format": "cvl_ros.webmercator_world_file/1", "crs": "EPSG:3857",
                "world_file": list(self.world), "datum": self.datum.to_dict(),
                "m_per_px": float(self.m_per_px), "width_px": self.width_px,
                "height_px": self.height_px,
                "convention": "world file A, D, B, E, C, F; (C, F) = centre of pixel (0,0)"}

    def write(self, path) -> None:
        """Write the image and its world file (``mosaic.png`` -> ``mosaic.pgw``)."""
        path = Path(path)
        write_image(path, self.image)
        write_world_file(world_file_candidates(path)[0], self.world)

    @classmethod
    def read(cls, path, sidecar=None, datum: GeoDatum | None = None) -> WebMercatorMosaic:
        """Read an image with its world file (``sidecar``, default: found beside it)."""
        path = Path(path)
        wf = find_world_file(path) if sidecar is None else Path(sidecar)
        if wf is None:
            names = ", ".join(c.name for c in world_file_candidates(path)[::2])
            raise FileNotFoundError(f"world file not found beside {path} (looked for {names})")
        world = check_webmercator_world(read_world_file(wf), str(wf))
        return cls(read_image(path), world, datum)


def resample_affine(image, src_from_out, size_px: int, border_value: int = 0) -> np.ndarray:
    """``size_px`` square whose pixel (row i, col j) samples ``image`` at ``M @ (j, i, 1)``.

    ``src_from_out`` M (2,3) gives the source (x=col, y=row) in pixel-centre coordinates.
    Bilinear, with a Gaussian anti-alias pre-filter per axis when shrinking; outside ->
    ``border_value``.
    """
    img = np.asarray(image)
    M = np.asarray(src_from_out, dtype=np.float64).reshape(2, 3)
    kx, ky = float(np.hypot(*M[0, :2])), float(np.hypot(*M[1, :2]))
    sx = 0.5 * math.sqrt(kx * kx - 1.0) if kx > 1.0 + 1e-9 else 0.0
    sy = 0.5 * math.sqrt(ky * ky - 1.0) if ky > 1.0 + 1e-9 else 0.0
    margin = int(math.ceil(3 * max(sx, sy))) + 2
    s = size_px - 0.5
    corners = M @ np.array([[-0.5, s, s, -0.5], [-0.5, -0.5, s, s], [1.0, 1.0, 1.0, 1.0]])
    c0 = int(math.floor(corners[0].min())) - margin
    c1 = int(math.ceil(corners[0].max())) + margin + 1
    r0 = int(math.floor(corners[1].min())) - margin
    r1 = int(math.ceil(corners[1].max())) + margin + 1
    win, rr0, cc0, out_shape = _blurred_window(img, r0, r1, c0, c1, sx, sy, size_px)
    if win is None:
        return np.full(out_shape, border_value, dtype=img.dtype)
    M = M.copy()
    M[0, 2] -= cc0
    M[1, 2] -= rr0
    out = cv2.warpAffine(np.ascontiguousarray(win), M, (size_px, size_px),
                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(border_value,) * (win.shape[2] if win.ndim == 3 else 1))
    return out.reshape(out_shape)


def read_mosaic(path, georef=None, datum: GeoDatum | None = None) -> GeoMosaic:
    """Read a mosaic image with its geo-reference.

    ``georef``: a ``.geo.json`` sidecar (:class:`GeoMosaic`) or an ESRI world file for a
    north-up EPSG:3857 image (:class:`WebMercatorMosaic`); default: ``<name>.geo.json`` if it
    exists, else a world file beside the image (unless GDAL finds a CRS other than EPSG:3857
    for the image: an orthophoto's own ``.tfw``), else the image's own geo-reference: a GeoTIFF,
    COG, JPEG 2000 or any raster GDAL reads with a CRS and a geotransform
    (:class:`cvl_ros.orthophoto.RasterMosaic`). ``datum`` (world files and rasters only) sets
    the ENU datum, i.e. the origin of the tile grid (default: the image centre).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mosaic image not found: {path}")
    if georef is None:
        side = geo_sidecar_path(path)
        georef = side if side.is_file() else find_world_file(path)
        if georef is not None and georef != side and _own_crs_not_webmercator(path):
            georef = None
        if georef is None:
            from cvl_ros.orthophoto import RasterMosaic

            names = ", ".join([side.name] + [c.name for c in world_file_candidates(path)[::2]])
            return RasterMosaic(path, datum, looked_for=names)
    georef = Path(georef)
    if not georef.is_file():
        raise FileNotFoundError(f"geo-reference not found: {georef}")
    if georef.name.lower().endswith(".json"):
        if datum is not None:
            raise ValueError(f"{georef} sets the mosaic's datum; a datum can only be given "
                             "with a world file or an orthophoto in its own CRS")
        return GeoMosaic.read(path, georef)
    return WebMercatorMosaic.read(path, georef, datum)


def _own_crs_not_webmercator(path) -> bool:
    """Whether GDAL finds a CRS other than EPSG:3857 for the image (then its world file is
    in that CRS, not web mercator)."""  # noqa: D205, D209
    from cvl_ros.orthophoto import raster_crs

    crs = raster_crs(path)
    return crs is not None and crs.to_epsg() != 3857


# --------------------------------------------------------------------------------------------
# KITTI-CVL names
# --------------------------------------------------------------------------------------------


def format_latlon(x: float) -> str:
    """Lat/lon text used in tile names and split files (``LATLON_DECIMALS`` decimals)."""
    return f"{float(x):.{LATLON_DECIMALS}f}"


def tile_file_name(lat_deg: float, lon_deg: float) -> str:
    """``<lat>_<lon>.png`` (KITTI-CVL test tile name; the tile centre is in the name)."""
    return f"{format_latlon(lat_deg)}_{format_latlon(lon_deg)}.png"


def parse_tile_file_name(name: str) -> tuple:
    """``'49.01_8.43.png'`` -> (49.01, 8.43)."""
    stem = Path(name).name
    if stem.endswith(".png"):
        stem = stem[:-4]
    lat, sep, lon = stem.partition("_")
    if not sep:
        raise ValueError(f"not a <lat>_<lon>.png tile name: {name!r}")
    return float(lat), float(lon)


def frame_name(frame: int) -> str:
    """KITTI frame file name ``%010d.png``."""
    return f"{int(frame):010d}.png"


def split_line(date: str, drive: str, frame: int, lat: float, lon: float) -> str:
    """One split-file line: ``<date>/<drive>/<frame>.png <lat> <lon>``."""
    return f"{date}/{drive}/{frame_name(frame)} {format_latlon(lat)} {format_latlon(lon)}"


def write_tiles_meta(satmap_dir, m_per_px: float, tile_px: int, **extra) -> Path:
    """Write ``satmap/tiles.json`` (tile resolution; read by :class:`cvl_ros.datasets.KittiCVL`)."""
    p = Path(satmap_dir) / TILES_META
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "cvl_ros.kitti_cvl_tiles/1", "m_per_px": float(m_per_px),
            "tile_px": int(tile_px), "projection": "local ENU tangent plane, north-up"}
    meta.update(extra)
    p.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return p


def read_tiles_meta(satmap_dir) -> dict | None:
    """``satmap/tiles.json`` or None (real KITTI-CVL: web-mercator z18 s2 tiles)."""
    p = Path(satmap_dir) / TILES_META
    return json.loads(p.read_text()) if p.is_file() else None


# --------------------------------------------------------------------------------------------
# Tile builder
# --------------------------------------------------------------------------------------------


def _snap(x, spacing):
    return np.round(np.asarray(x, dtype=np.float64) / spacing) * spacing


def _encode_png(rgb, compression: int) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def drive_key(date: str, drive: str) -> str:
    """``"<date>/<drive>"``."""
    return f"{date}/{drive}"


def build_tiles(mosaic: GeoMosaic, trajectories: dict, root, train_drives, test_drives,
                spacing_m: float = 10.0, tile_px: int = 1280, m_per_px: float | None = None,
                test_radius_m: float | None = None, test2_drives=None, query_stride: int = 1,
                png_compression: int = 1, link_duplicates: bool = True,
                progress: bool = False, source: dict | None = None) -> dict:
    """Cut KITTI-CVL tiles from ``mosaic`` and write the split files.

    ``trajectories``: ``{"<date>/<drive>": (frames (N,) int, cam_enu (N,2))}`` with camera
    positions (east, north) in metres about ``mosaic.datum``. Tile centres lie on a regular
    ENU grid of ``spacing_m`` (origin: the datum). Writes under ``root``:

    - ``satmap/train_10mgap/<date>/<drive>/<frame>.png``: one tile per training query frame,
      centred on the grid point nearest to the camera (so the camera lies within
      +-spacing/2 of the centre in east and north);
    - ``satmap/test/<drive>/<lat>_<lon>.png``: every grid point within ``test_radius_m``
      (default ``spacing_m``) of any camera position of a test drive (distractors included);
    - ``train_files.txt``, ``test1_files.txt``, ``test2_files.txt``: ``<date>/<drive>/<frame>.png
      <lat> <lon>`` with the query's own tile centre (nearest grid point);
    - ``satmap/tiles.json`` (m_per_px, tile_px, spacing, datum).

    Tiles are ``tile_px`` square at ``m_per_px`` (default: the mosaic's). Training frames
    that share a grid point get hard links to one file when ``link_duplicates`` (readers see
    ordinary files). ``query_stride`` keeps every k-th frame as a query. ``progress`` shows a
    tqdm bar of the tiles cut; ``source`` (e.g. the command's inputs) is recorded in
    ``tiles.json``. Returns counts.
    """
    root = Path(root)
    satmap = root / "satmap"
    m_out = float(mosaic.m_per_px if m_per_px is None else m_per_px)
    radius = float(spacing_m if test_radius_m is None else test_radius_m)
    test2_drives = list(test_drives if test2_drives is None else test2_drives)
    datum = mosaic.datum
    half_m = tile_px * m_out / 2.0
    stats = {"train": 0, "test1": 0, "test2": 0, "test_tiles": 0, "train_tiles": 0,
             "partial_tiles": 0, "m_per_px": m_out, "tile_px": int(tile_px)}
    cache: dict = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="tiles", unit="tile")

    def tile_png(e, n):
        key = (round(e / spacing_m), round(n / spacing_m))
        if key not in cache:
            if not mosaic.contains(e, n, half_m):
                stats["partial_tiles"] += 1
            if len(cache) > 256:
                cache.clear()
            cache[key] = _encode_png(mosaic.crop(e, n, tile_px, m_out), png_compression)
            if bar is not None:
                bar.update(1)
        return cache[key]

    def latlon(e, n):
        lat, lon, _ = datum.to_geodetic(e, n, 0.0)
        return float(lat), float(lon)

    def lines_for(key):
        if key not in trajectories:
            raise KeyError(f"no trajectory given for drive {key!r}")
        frames, pos = trajectories[key]
        frames = np.asarray(frames)[::query_stride]
        pos = np.asarray(pos, dtype=np.float64).reshape(-1, 2)[::query_stride]
        snapped = _snap(pos, spacing_m)
        return frames, pos, snapped

    # training tiles: one per query frame
    train_lines = []
    written: dict = {}
    for key in train_drives:
        date, drive = key.split("/")
        frames, _, snapped = lines_for(key)
        for f, (e, n) in zip(frames, snapped):
            lat, lon = latlon(e, n)
            out = satmap / "train_10mgap" / date / drive / frame_name(f)
            out.parent.mkdir(parents=True, exist_ok=True)
            gk = (round(e / spacing_m), round(n / spacing_m))
            if out.exists():
                out.unlink()
            if link_duplicates and gk in written:
                try:  # same grid point as an earlier frame: hard link, same bytes
                    out.hardlink_to(written[gk])
                except OSError:
                    out.write_bytes(tile_png(e, n))
            else:
                out.write_bytes(tile_png(e, n))
                written[gk] = out
            stats["train_tiles"] += 1
            train_lines.append(split_line(date, drive, f, lat, lon))
    # test tiles: every grid point near a test trajectory
    test_lines = {}
    for key in sorted(set(test_drives) | set(test2_drives)):
        date, drive = key.split("/")
        frames, pos, snapped = lines_for(key)
        r_cells = int(math.ceil(radius / spacing_m))
        cand = set()
        for e, n in _snap(pos, spacing_m):
            for di in range(-r_cells, r_cells + 1):
                for dj in range(-r_cells, r_cells + 1):
                    cand.add((round(e / spacing_m) + di, round(n / spacing_m) + dj))
        grid = np.array(sorted(cand), dtype=np.float64) * spacing_m
        d2 = ((grid[:, None, :] - pos[None, :, :]) ** 2).sum(-1).min(1)
        keep = grid[d2 <= radius * radius + 1e-9]
        own = {(round(e / spacing_m), round(n / spacing_m)) for e, n in snapped}
        keep_keys = {(round(e / spacing_m), round(n / spacing_m)) for e, n in keep} | own
        out_dir = satmap / "test" / drive
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, j in sorted(keep_keys):
            e, n = i * spacing_m, j * spacing_m
            lat, lon = latlon(e, n)
            (out_dir / tile_file_name(lat, lon)).write_bytes(tile_png(e, n))
            stats["test_tiles"] += 1
        test_lines[key] = []
        for f, (e, n) in zip(frames, snapped):
            lat, lon = latlon(e, n)
            test_lines[key].append(split_line(date, drive, f, lat, lon))
    t1 = [ln for k in test_drives for ln in test_lines[k]]
    t2 = [ln for k in test2_drives for ln in test_lines[k]]
    for name, lines in (("train", train_lines), ("test1", t1), ("test2", t2)):
        _write_text_atomic(root / SPLIT_FILES[name], "".join(ln + "\n" for ln in lines))
        stats[name] = len(lines)
    if bar is not None:
        bar.close()
    write_tiles_meta(satmap, m_out, tile_px, spacing_m=float(spacing_m),
                     test_radius_m=radius, datum=datum.to_dict(),
                     train_drives=list(train_drives), test_drives=list(test_drives),
                     test2_drives=test2_drives, **({"source": source} if source else {}))
    return stats


def _write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def recognise_tiles(root) -> set:
    """Entries under ``root`` that an earlier tile builder wrote (outputs without a marker).

    Recognised through ``satmap/tiles.json`` (format ``cvl_ros.kitti_cvl_tiles/1``): the tile
    folders of the drives it lists with their ``.png`` tiles, ``tiles.json`` itself, and each
    split file whose lines all name those drives. Anything else: not recognised (empty set).
    """
    root = Path(root)
    try:
        meta = json.loads((root / "satmap" / TILES_META).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(meta, dict) or meta.get("format") != "cvl_ros.kitti_cvl_tiles/1":
        return set()
    train = [str(k) for k in meta.get("train_drives") or []]
    tests = [str(k) for k in (meta.get("test_drives") or []) + (meta.get("test2_drives") or [])]
    owned = {"satmap/", f"satmap/{TILES_META}", "satmap/train_10mgap/", "satmap/test/"}
    dirs = [f"satmap/train_10mgap/{k}" for k in train] + \
        [f"satmap/test/{k.split('/')[-1]}" for k in tests]
    owned |= {f"satmap/train_10mgap/{k.split('/')[0]}/" for k in train}
    for d in dirs:
        if (root / d).is_dir():
            owned.add(d + "/")
            owned |= {f"{d}/{p.name}" for p in (root / d).glob("*.png") if p.is_file()}
    keys = set(train) | set(tests)
    for name in SPLIT_FILES.values():
        try:
            lines = (root / name).read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        if all("/".join(ln.split()[0].split("/")[:2]) in keys for ln in lines if ln.strip()):
            owned.add(name)
    return owned


def drive_camera_track(drive_dir, datum: GeoDatum, cam: int = 2) -> tuple:
    """(frames (N,), T_enu_cam (N,4,4)) of a KITTI raw drive from its OXTS and calibration."""
    d = KittiDrive(drive_dir, cam=cam)
    return np.asarray(d.frame_ids(), dtype=np.int64), d.camera_poses_enu(datum, cam)


def build_kitti_cvl_tiles(mosaic: GeoMosaic, root, train_drives, test_drives,
                          spacing_m: float = 10.0, tile_px: int = 1280,
                          m_per_px: float | None = None, test_radius_m: float | None = None,
                          test2_drives=None, query_stride: int = 1, cam: int = 2,
                          png_compression: int = 1, link_duplicates: bool = True) -> dict:
    """Build KITTI-CVL tiles and split files for drives already written under ``root/raw_data``.

    Drives are named ``"<date>/<date>_drive_<NNNN>_sync"``; camera positions come from each
    drive's OXTS packets composed with the camera extrinsic (``kitti_T_imu_cam``), expressed in
    ENU about ``mosaic.datum``. See :func:`build_tiles` for what is written.
    """
    root = Path(root)
    traj = {}
    for key in set(train_drives) | set(test_drives) | set(test2_drives or ()):
        frames, T = drive_camera_track(root / "raw_data" / key, mosaic.datum, cam)
        traj[key] = (frames, T[:, :2, 3])
    return build_tiles(mosaic, traj, root, train_drives, test_drives, spacing_m=spacing_m,
                       tile_px=tile_px, m_per_px=m_per_px, test_radius_m=test_radius_m,
                       test2_drives=test2_drives, query_stride=query_stride,
                       png_compression=png_compression, link_duplicates=link_duplicates)
