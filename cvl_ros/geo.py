"""Geodesy: WGS84 <-> local ENU (exact, via ECEF), KITTI's Mercator, web-mercator resolution.

Conventions (README.md, "The house"): the world frame is a local East-North-Up frame about a
WGS84 datum (x east, y north, z up, metres). Every function is vectorised over numpy arrays
and returns numpy float64 arrays (0-d arrays become Python floats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
