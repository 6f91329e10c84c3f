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


# ---------------------------------------------------------------------------------------------
# The fast path against PROJ (pyproj), the standard: cvl_ros/geo.py documents agreement to
# 1e-6 m for ECEF and 1e-4 m for ENU within 10 km; both are the same closed formulas, so the
# measured difference is ~1e-11 m.
# ---------------------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cvl_ros.geo import (  # noqa: E402
    crs_transformer,
    proj_geodetic_to_ecef,
    proj_to_enu,
    proj_to_geodetic,
)

_lat = st.floats(-89.9, 89.9)
_lon = st.floats(-180.0, 180.0)
_alt = st.floats(-500.0, 9000.0)
_off = st.floats(-10_000.0, 10_000.0)


@settings(max_examples=300, deadline=None)
@given(_lat, _lon, _alt)
def test_ecef_fast_path_equals_proj(lat, lon, alt):
    fast = np.array(geodetic_to_ecef(lat, lon, alt), dtype=np.float64)
    ref = np.array(proj_geodetic_to_ecef(lat, lon, alt))
    assert np.abs(fast - ref).max() < 1e-6
    la, lo, h = ecef_to_geodetic(*ref)
    assert abs(la - lat) < 1e-11 and abs(h - alt) < 1e-6
    assert abs(math.remainder(lo - lon, 360.0)) * math.cos(math.radians(lat)) < 1e-11


@settings(max_examples=300, deadline=None)
@given(st.floats(-85.0, 85.0), _lon, st.floats(-100.0, 3000.0), _off, _off,
       st.floats(-200.0, 200.0))
def test_enu_fast_path_equals_proj_within_10_km(lat0, lon0, alt0, east, north, up):
    d = GeoDatum(lat0, lon0, alt0)
    lat, lon, alt = proj_to_geodetic(d, east, north, up)
    fast = np.array(d.to_geodetic(east, north, up))
    assert abs(fast[0] - lat) < 1e-11 and abs(fast[2] - alt) < 1e-4
    assert abs(math.remainder(fast[1] - lon, 360.0)) < 1e-11
    e, n, u = d.to_enu(lat, lon, alt)
    pe, pn, pu = proj_to_enu(d, lat, lon, alt)
    assert max(abs(e - pe), abs(n - pn), abs(u - pu)) < 1e-4
    assert max(abs(e - east), abs(n - north), abs(u - up)) < 1e-4


def test_proj_enu_is_vectorised_and_crs_transformer_states_its_accuracy():
    rng = np.random.default_rng(3)
    e, n = rng.uniform(-1000, 1000, (2, 50))
    lat, lon, alt = proj_to_geodetic(KARLSRUHE, e, n, 0.0)
    assert lat.shape == (50,) and isinstance(proj_to_enu(KARLSRUHE, 49.0, 8.4)[0], float)
    utm = crs_transformer("EPSG:32632")
    assert (utm.name, utm.accuracy_m, utm.best_available) == ("EPSG:32632", 0.0, True)
    # on the zone's central meridian (9 E): easting 500 km, northing 0.9996 x meridian arc
    from scipy.integrate import quad

    a, e2 = EARTH_RADIUS_M, 0.00669437999014
    arc, _ = quad(lambda p: a * (1 - e2) / (1 - e2 * math.sin(p) ** 2) ** 1.5, 0.0,
                  math.radians(49.0), epsabs=1e-9)
    assert utm.from_lonlat(9.0, 49.0) == pytest.approx((500_000.0, 0.9996 * arc), abs=1e-3)
    x, y = utm.from_lonlat(8.4342971002335, 49.015003823272)
    lo, la = utm.to_lonlat(x, y)
    assert (la, lo) == pytest.approx((49.015003823272, 8.4342971002335), abs=1e-10)
    etrs = crs_transformer("EPSG:25832")  # ETRS89: a null transformation of 1 m accuracy
    assert etrs.accuracy_m == 1.0 and "ETRS89" in etrs.operation
    with pytest.raises(ValueError, match="geocentric"):
        crs_transformer("EPSG:4978")
