"""Geodesy: WGS84 <-> local ENU (exact, via ECEF), KITTI's Mercator, web-mercator resolution.

Conventions (README.md, "The house"): the world frame is a local East-North-Up frame about a
WGS84 datum (x east, y north, z up, metres). Every function is vectorised over numpy arrays
and returns numpy float64 arrays (0-d arrays become Python floats).

:meth:`GeoDatum.to_enu` / :meth:`GeoDatum.to_geodetic` and :func:`geodetic_to_ecef` /
:func:`ecef_to_geodetic` are the fast path (plain numpy, no PROJ context): the same closed
formulas as PROJ's ``cart`` and ``topocentric`` operations. The standard is PROJ, through
pyproj: :func:`proj_to_enu`, :func:`proj_to_geodetic` (one PROJ pipeline per datum) and
:func:`crs_transformer` (WGS84 <-> any CRS, for orthophotos). The fast path agrees with PROJ to
1e-6 m (ECEF, any height on Earth) and 1e-4 m (ENU within 10 km of the datum);
``test/test_geo.py`` checks both with hypothesis.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: Equatorial radius of WGS84 (m); also the sphere radius KITTI/pykitti and web-mercator use.
EARTH_RADIUS_M = 6378137.0
#: WGS84 flattening.
WGS84_F = 1.0 / 298.257223563
#: WGS84 first eccentricity squared.
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)
#: WGS84 polar radius (m).
WGS84_B = EARTH_RADIUS_M * (1.0 - WGS84_F)
#: Web-mercator ground resolution at the equator for zoom 0, scale 1 (m/px).
WEBMERCATOR_M_PER_PX_Z0 = 156543.03392


def _out(x):
    a = np.asarray(x, dtype=np.float64)
    return float(a) if a.ndim == 0 else a


def geodetic_to_ecef(lat_deg, lon_deg, alt_m=0.0):
    """WGS84 geodetic (deg, deg, m) -> ECEF (x, y, z) in metres."""
    lat = np.radians(np.asarray(lat_deg, dtype=np.float64))
    lon = np.radians(np.asarray(lon_deg, dtype=np.float64))
    h = np.asarray(alt_m, dtype=np.float64)
    s, c = np.sin(lat), np.cos(lat)
    n = EARTH_RADIUS_M / np.sqrt(1.0 - WGS84_E2 * s * s)
    x = (n + h) * c * np.cos(lon)
    y = (n + h) * c * np.sin(lon)
    z = (n * (1.0 - WGS84_E2) + h) * s
    return x, y, z


def ecef_to_geodetic(x, y, z):
    """ECEF (m) -> WGS84 geodetic (lat deg, lon deg, alt m); iterated to sub-micrometre."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    lon = np.arctan2(y, x)
    p = np.hypot(x, y)
    # Bowring's initial guess, then Newton-like fixed-point iterations (converges in 2-3).
    lat = np.arctan2(z, p * (1.0 - WGS84_E2))
    for _ in range(6):
        s = np.sin(lat)
        n = EARTH_RADIUS_M / np.sqrt(1.0 - WGS84_E2 * s * s)
        lat = np.arctan2(z + WGS84_E2 * n * s, p)
    s, c = np.sin(lat), np.cos(lat)
    n = EARTH_RADIUS_M / np.sqrt(1.0 - WGS84_E2 * s * s)
    # Height formula stable at all latitudes.
    h = p * c + z * s - EARTH_RADIUS_M * EARTH_RADIUS_M / n
    return np.degrees(lat), np.degrees(lon), h


@dataclass(frozen=True)
class GeoDatum:
    """Origin of a local ENU frame on the WGS84 ellipsoid."""

    lat_deg: float
    lon_deg: float
    alt_m: float = 0.0

    def _rot(self) -> np.ndarray:
        """Rotation ECEF -> ENU (rows: east, north, up)."""
        lat, lon = math.radians(self.lat_deg), math.radians(self.lon_deg)
        sl, cl, so, co = math.sin(lat), math.cos(lat), math.sin(lon), math.cos(lon)
        return np.array([[-so, co, 0.0], [-sl * co, -sl * so, cl], [cl * co, cl * so, sl]])

    def to_enu(self, lat_deg, lon_deg, alt_m=0.0):
        """WGS84 (deg, deg, m) -> (east_m, north_m, up_m) about this datum (exact)."""
        x, y, z = geodetic_to_ecef(lat_deg, lon_deg, alt_m)
        x0, y0, z0 = geodetic_to_ecef(self.lat_deg, self.lon_deg, self.alt_m)
        d = np.stack(np.broadcast_arrays(x - x0, y - y0, z - z0), axis=0)
        enu = np.tensordot(self._rot(), d, axes=1)
        return _out(enu[0]), _out(enu[1]), _out(enu[2])

    def to_geodetic(self, east_m, north_m, up_m=0.0):
        """(east_m, north_m, up_m) about this datum -> WGS84 (lat deg, lon deg, alt m)."""
        e = np.stack(np.broadcast_arrays(np.asarray(east_m, dtype=np.float64),
                                         np.asarray(north_m, dtype=np.float64),
                                         np.asarray(up_m, dtype=np.float64)), axis=0)
        d = np.tensordot(self._rot().T, e, axes=1)
        x0, y0, z0 = geodetic_to_ecef(self.lat_deg, self.lon_deg, self.alt_m)
        lat, lon, h = ecef_to_geodetic(d[0] + x0, d[1] + y0, d[2] + z0)
        return _out(lat), _out(lon), _out(h)

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return {"lat_deg": float(self.lat_deg), "lon_deg": float(self.lon_deg),
                "alt_m": float(self.alt_m)}

    @classmethod
    def from_dict(cls, d: dict) -> GeoDatum:
        """Inverse of :meth:`to_dict`."""
        return cls(float(d["lat_deg"]), float(d["lon_deg"]), float(d.get("alt_m", 0.0)))


def mercator_scale(lat0_deg) -> float:
    """KITTI/pykitti Mercator scale: cos(lat0) of the FIRST OXTS packet."""
    return _out(np.cos(np.radians(np.asarray(lat0_deg, dtype=np.float64))))


def latlon_to_mercator(lat_deg, lon_deg, scale):
    """Lat/lon (deg) -> KITTI Mercator (x_m east, y_m north), pykitti's formulas."""
    lat = np.asarray(lat_deg, dtype=np.float64)
    lon = np.asarray(lon_deg, dtype=np.float64)
    x = scale * lon * np.pi * EARTH_RADIUS_M / 180.0
    y = scale * EARTH_RADIUS_M * np.log(np.tan((90.0 + lat) * np.pi / 360.0))
    return _out(x), _out(y)


def mercator_to_latlon(x_m, y_m, scale):
    """Inverse of :func:`latlon_to_mercator`: (x_m, y_m) -> (lat_deg, lon_deg)."""
    x = np.asarray(x_m, dtype=np.float64)
    y = np.asarray(y_m, dtype=np.float64)
    lon = x / (scale * EARTH_RADIUS_M) * 180.0 / np.pi
    lat = 360.0 / np.pi * np.arctan(np.exp(y / (scale * EARTH_RADIUS_M))) - 90.0
    return _out(lat), _out(lon)


def webmercator_m_per_px(lat_deg, zoom: int = 18, scale: int = 2):
    """Ground resolution (m/px) of web-mercator (Google) tiles at a latitude.

    156543.03392 * cos(lat) / 2**zoom / scale; 0.196 m/px at lat 49.015, zoom 18, scale 2.
    """
    lat = np.radians(np.asarray(lat_deg, dtype=np.float64))
    return _out(WEBMERCATOR_M_PER_PX_Z0 * np.cos(lat) / (2.0 ** zoom) / scale)


# --------------------------------------------------------------------------------------------
# PROJ (pyproj): the reference conversions, and WGS84 <-> any CRS
# --------------------------------------------------------------------------------------------

#: WGS84 geographic 2D, longitude first where pyproj is asked for ``always_xy``.
WGS84_CRS = "EPSG:4326"


def enu_pipeline(datum: GeoDatum) -> str:
    """PROJ pipeline (lon deg, lat deg, h m) -> (east, north, up) m about ``datum``.

    ``cart`` (geodetic -> ECEF on WGS84) then ``topocentric`` (ECEF -> ENU at the datum).
    """
    return ("+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad "
            "+step +proj=cart +ellps=WGS84 "
            f"+step +proj=topocentric +ellps=WGS84 +lat_0={float(datum.lat_deg)!r} "
            f"+lon_0={float(datum.lon_deg)!r} +h_0={float(datum.alt_m)!r}")


@lru_cache(maxsize=64)
def _enu_transformer(lat_deg: float, lon_deg: float, alt_m: float):
    from pyproj import Transformer

    return Transformer.from_pipeline(enu_pipeline(GeoDatum(lat_deg, lon_deg, alt_m)))


def proj_to_enu(datum: GeoDatum, lat_deg, lon_deg, alt_m=0.0):
    """WGS84 (deg, deg, m) -> (east, north, up) m about ``datum`` through PROJ (pyproj)."""
    t = _enu_transformer(float(datum.lat_deg), float(datum.lon_deg), float(datum.alt_m))
    lat, lon, h = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64)
                                        for v in (lat_deg, lon_deg, alt_m)))
    e, n, u = t.transform(lon, lat, h)
    return _out(e), _out(n), _out(u)


def proj_to_geodetic(datum: GeoDatum, east_m, north_m, up_m=0.0):
    """(east, north, up) m about ``datum`` -> WGS84 (lat deg, lon deg, alt m) through PROJ."""
    from pyproj.enums import TransformDirection

    t = _enu_transformer(float(datum.lat_deg), float(datum.lon_deg), float(datum.alt_m))
    e, n, u = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64)
                                    for v in (east_m, north_m, up_m)))
    lon, lat, h = t.transform(e, n, u, direction=TransformDirection.INVERSE)
    return _out(lat), _out(lon), _out(h)


def proj_geodetic_to_ecef(lat_deg, lon_deg, alt_m=0.0):
    """WGS84 geodetic -> ECEF (m) through PROJ (EPSG:4979 -> EPSG:4978)."""
    t = _ecef_transformer()
    lat, lon, h = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64)
                                        for v in (lat_deg, lon_deg, alt_m)))
    x, y, z = t.transform(lon, lat, h)
    return _out(x), _out(y), _out(z)


@lru_cache(maxsize=1)
def _ecef_transformer():
    from pyproj import Transformer

    return Transformer.from_crs("EPSG:4979", "EPSG:4978", always_xy=True)


@dataclass(frozen=True)
class CrsTransform:
    """WGS84 lon/lat (deg) <-> coordinates of ``crs`` (x, y in the CRS's units, x first).

    ``operation``: PROJ's name of the coordinate operation it uses; ``accuracy_m``: PROJ's
    stated accuracy (0 = exact, e.g. a projection of WGS84 itself; 1 for the "null"
    transformations between ETRS89/NAD83/... and WGS84; -1 = unknown); ``best_available``:
    False when a more accurate operation exists but needs a grid PROJ does not have here.
    """

    crs: object
    transformer: object
    operation: str
    accuracy_m: float
    best_available: bool

    def from_lonlat(self, lon_deg, lat_deg):
        """WGS84 (lon, lat) deg -> (x, y) in the CRS."""
        x, y = self.transformer.transform(np.asarray(lon_deg, dtype=np.float64),
                                          np.asarray(lat_deg, dtype=np.float64))
        return _out(x), _out(y)

    def to_lonlat(self, x, y):
        """(x, y) in the CRS -> WGS84 (lon, lat) deg."""
        from pyproj.enums import TransformDirection

        lon, lat = self.transformer.transform(np.asarray(x, dtype=np.float64),
                                              np.asarray(y, dtype=np.float64),
                                              direction=TransformDirection.INVERSE)
        return _out(lon), _out(lat)

    @property
    def name(self) -> str:
        """``EPSG:<code>`` where the CRS has one, else its name."""
        code = self.crs.to_epsg()
        return f"EPSG:{code}" if code else self.crs.name


def crs_transformer(crs) -> CrsTransform:
    """The best coordinate operation PROJ has here between WGS84 and ``crs``.

    ``crs``: anything :class:`pyproj.CRS` takes (``"EPSG:32632"``, WKT, a pyproj or rasterio
    CRS). A geocentric CRS raises ``ValueError``. PROJ's network access stays as configured
    (off by default): grids not shipped with pyproj are not downloaded.
    """
    from pyproj import CRS
    from pyproj.transformer import TransformerGroup

    c = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if c.is_geocentric:
        raise ValueError(f"{c.name} is a geocentric CRS, not a map projection or a "
                         "geographic CRS")
    if c.is_compound:  # horizontal part only (an orthophoto's heights are not used)
        c = c.sub_crs_list[0]
    with warnings.catch_warnings():  # a missing grid is reported as best_available
        warnings.simplefilter("ignore", UserWarning)
        group = TransformerGroup(WGS84_CRS, c, always_xy=True)
    if not group.transformers:
        raise ValueError(f"PROJ has no coordinate operation between WGS84 and {c.name} here")
    t = group.transformers[0]
    acc = t.accuracy
    return CrsTransform(c, t, t.description, float(acc) if acc is not None else -1.0,
                        bool(group.best_available))
