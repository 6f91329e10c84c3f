import math

import numpy as np
import pytest

from cvl_ros.geo import (
    EARTH_RADIUS_M,
    GeoDatum,
    ecef_to_geodetic,
    geodetic_to_ecef,
    latlon_to_mercator,
    mercator_scale,
    mercator_to_latlon,
    webmercator_m_per_px,
)

KARLSRUHE = GeoDatum(49.015003823272, 8.4342971002335, 116.43)


def test_webmercator_resolution_kitti():
    # 156543.03392 * cos(49.015 deg) / 2**18 / 2 = 0.19583 m/px (field notes: ~0.196).
    assert webmercator_m_per_px(49.015, 18, 2) == pytest.approx(0.196, abs=5e-4)
    assert webmercator_m_per_px(0.0, 0, 1) == pytest.approx(156543.03392)
    assert webmercator_m_per_px(49.015, 19, 2) == pytest.approx(0.5 * webmercator_m_per_px(49.015))


def test_ecef_known_points():
    x, y, z = geodetic_to_ecef(0.0, 0.0, 0.0)
    assert (x, y, z) == pytest.approx((EARTH_RADIUS_M, 0.0, 0.0))
    x, y, z = geodetic_to_ecef(90.0, 0.0, 0.0)
    assert z == pytest.approx(6356752.314245, abs=1e-3)  # WGS84 polar radius
    lat, lon, h = ecef_to_geodetic(*geodetic_to_ecef(49.0, 8.4, 1234.5))
    assert (lat, lon, h) == pytest.approx((49.0, 8.4, 1234.5), abs=1e-9)


def test_enu_axes_directions():
    d = KARLSRUHE
    # 1e-4 deg north is ~11.1 m north, and no east offset.
    e, n, u = d.to_enu(d.lat_deg + 1e-4, d.lon_deg, d.alt_m)
    assert abs(e) < 1e-6 and n == pytest.approx(11.12, abs=0.01) and abs(u) < 1e-4
    e, n, u = d.to_enu(d.lat_deg, d.lon_deg + 1e-4, d.alt_m)
    assert e == pytest.approx(11.12 * math.cos(math.radians(d.lat_deg)) * 1.0017, abs=0.02)
    assert abs(n) < 1e-3
    e, n, u = d.to_enu(d.lat_deg, d.lon_deg, d.alt_m + 5.0)
    assert (e, n, u) == pytest.approx((0.0, 0.0, 5.0), abs=1e-9)


def test_enu_round_trip_10km_sub_mm():
    rng = np.random.default_rng(0)
    east = rng.uniform(-10_000, 10_000, 500)
    north = rng.uniform(-10_000, 10_000, 500)
    up = rng.uniform(-50, 50, 500)
    lat, lon, alt = KARLSRUHE.to_geodetic(east, north, up)
    e2, n2, u2 = KARLSRUHE.to_enu(lat, lon, alt)
    err = np.sqrt((e2 - east) ** 2 + (n2 - north) ** 2 + (u2 - up) ** 2)
    assert err.max() < 1e-3
    # and the other way round
    lat0 = 49.0 + rng.uniform(-0.09, 0.09, 100)
    lon0 = 8.4 + rng.uniform(-0.13, 0.13, 100)
    lat1, lon1, _ = KARLSRUHE.to_geodetic(*KARLSRUHE.to_enu(lat0, lon0, 100.0))
    assert np.abs(lat1 - lat0).max() < 1e-8 and np.abs(lon1 - lon0).max() < 1e-8


def test_enu_distance_matches_ellipsoid_scale():
    # 1 arc-minute of latitude at 49 deg is ~1853.3 m on WGS84 (meridian radius of curvature).
    d = GeoDatum(49.0, 8.0)
    _, n, _ = d.to_enu(49.0 + 1 / 60.0, 8.0)
    a, e2 = EARTH_RADIUS_M, 0.00669437999014
    m = a * (1 - e2) / (1 - e2 * math.sin(math.radians(49.0)) ** 2) ** 1.5
    assert n == pytest.approx(m * math.radians(1 / 60.0), rel=1e-5)


def test_mercator_pykitti_and_inverse():
    lat0, lon0 = 49.015003823272, 8.4342971002335
    s = mercator_scale(lat0)
    assert s == pytest.approx(math.cos(math.radians(lat0)))
    x, y = latlon_to_mercator(lat0, lon0, s)
    # hand: tx = s*lon*pi*er/180, ty = s*er*ln(tan((90+lat)*pi/360))
    assert x == pytest.approx(s * lon0 * math.pi * 6378137.0 / 180.0)
    assert y == pytest.approx(s * 6378137.0 * math.log(math.tan((90 + lat0) * math.pi / 360)))
    rng = np.random.default_rng(1)
    lat = lat0 + rng.uniform(-0.09, 0.09, 200)
    lon = lon0 + rng.uniform(-0.13, 0.13, 200)
    la, lo = mercator_to_latlon(*latlon_to_mercator(lat, lon, s), s)
    # < 1 mm: 1e-8 deg is ~1.1 mm of latitude
    assert np.abs(la - lat).max() < 5e-9 and np.abs(lo - lon).max() < 5e-9


def test_mercator_close_to_enu_locally():
    # near the datum, KITTI Mercator offsets agree with ENU to ~0.1 %
    lat0, lon0 = 49.015, 8.434
    s = mercator_scale(lat0)
    x0, y0 = latlon_to_mercator(lat0, lon0, s)
    x, y = latlon_to_mercator(lat0 + 0.001, lon0 + 0.001, s)
    e, n, _ = GeoDatum(lat0, lon0).to_enu(lat0 + 0.001, lon0 + 0.001)
    assert x - x0 == pytest.approx(e, rel=3e-3) and y - y0 == pytest.approx(n, rel=3e-3)


def test_datum_dict_round_trip():
    assert GeoDatum.from_dict(KARLSRUHE.to_dict()) == KARLSRUHE
