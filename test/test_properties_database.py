"""Property tests of ``TileDatabase.open`` on corrupted databases (issue 13, item 6).

A tiny valid database is built once; each example copies it, then sets hypothesis-chosen
manifest fields to NaN/Inf/huge numbers/wrong types (or removes them), or corrupts an array file
(truncated, extended, a NaN/Inf row, a foreign array, a spoilt header, removed). Opening either
raises :class:`DatabaseError` (a RuntimeError) naming the file, or gives a database that is
valid: finite WGS84/ENU centres, one per tile id, finite descriptor arrays of one row per tile.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cvl_ros.database import ARRAYS, MANIFEST, DatabaseError, TileDatabase
from cvl_ros.geo import GeoDatum

DATUM = GeoDatum(49.015, 8.43, 110.0)
N_TILES = 6
SETTINGS = settings(max_examples=500, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(N_TILES, 4, 8, 8)).astype(np.float32)
    unc = rng.uniform(0.5, 1.5, size=(N_TILES, 1, 8, 8)).astype(np.float32)
    latlon = np.stack([49.015 + 0.0005 * np.arange(N_TILES), 8.43 + 0.0007 * np.arange(N_TILES)],
                      1)
    out = tmp_path_factory.mktemp("db_props") / "db"
    TileDatabase.from_arrays(out, "0123456789abcdef", feats, unc, latlon, DATUM,
                             tile_ids=[f"t{i}" for i in range(N_TILES)], coverage_m=50.0)
    return out


# ------------------------------------------------------------------------ mutations
BAD_VALUES = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 10**30, 10**400,
                     -1, 0, 0.5, 1.5, True, None, "", "x", "1", [], [1, 2], {}, {"a": 1}]),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=5))
MISSING = object()


@st.composite
def manifest_paths(draw):
    """A path to a field of the manifest (list indices as ints)."""
    top = draw(st.sampled_from(["format", "version", "model_hash", "tile_ids", "centers_latlon",
                                "centers_enu", "datum", "arrays", "tile", "search",
                                "model_config", "source_index"]))
    if top == "datum" and draw(st.booleans()):
        return [top, draw(st.sampled_from(["lat_deg", "lon_deg", "alt_m"]))]
    if top in ("centers_latlon", "centers_enu") and draw(st.booleans()):
        path = [top, draw(st.integers(0, N_TILES - 1))]
        return path + ([draw(st.integers(0, 1))] if draw(st.booleans()) else [])
    if top == "tile_ids" and draw(st.booleans()):
        return [top, draw(st.integers(0, N_TILES - 1))]
    if top == "arrays" and draw(st.booleans()):
        path = [top, draw(st.sampled_from(list(ARRAYS)))]
        if draw(st.booleans()):
            path.append(draw(st.sampled_from(["bytes", "shape", "dtype", "sha256"])))
            if path[-1] == "shape" and draw(st.booleans()):
                path.append(draw(st.integers(0, 3)))
        return path
    if top in ("tile", "search") and draw(st.booleans()):
        return [top, draw(st.sampled_from(["coverage_m", "grid_cells", "search_cells", "pool",
                                           "shortlist"]))]
    return [top]


def _set(doc, path, value) -> None:
    for key in path[:-1]:
        doc = doc[key]
    last = path[-1]
    if value is MISSING:
        if isinstance(doc, dict):
            doc.pop(last, None)
        else:
            del doc[last]
    elif isinstance(doc, dict) or (isinstance(doc, list) and last < len(doc)):
        doc[last] = value


def _edit_manifest(db: Path, edits) -> None:
    path = db / MANIFEST
    man = json.loads(path.read_text())
    for p, v in edits:
        try:
            _set(man, p, v)
        except (KeyError, IndexError, TypeError):  # an earlier edit removed the parent
            pass
    path.write_text(json.dumps(man))


def _corrupt_array(db: Path, name: str, how: str, k: int) -> None:
    f = db / f"{name}.npy"
    data = f.read_bytes()
    if how == "truncate":
        f.write_bytes(data[: k % len(data)])
    elif how == "extend":
        f.write_bytes(data + bytes(1 + k % 64))
    elif how == "remove":
        f.unlink()
    elif how == "header":  # spoil one byte of the magic/header
        i = k % 128
        f.write_bytes(data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:])
    elif how == "flip":  # one byte of the data: same size, only a checksum sees it
        i = len(data) - 1 - k % 256
        f.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif how in ("nan", "inf"):
        arr = np.load(f, mmap_mode="r+")
        arr[k % len(arr)].flat[k % arr[0].size] = np.nan if how == "nan" else -np.inf
        arr.flush()
        del arr
    elif how == "foreign":  # another array with the same byte size
        arr = np.load(f)
        np.save(f, arr.view(np.int32 if arr.dtype.itemsize == 4 else np.int16))
    else:
        raise AssertionError(how)


mutations = st.one_of(
    st.tuples(st.just("manifest"),
              st.lists(st.tuples(manifest_paths(), BAD_VALUES | st.just(MISSING)), min_size=1,
                       max_size=3)),
    st.tuples(st.just("array"),
              st.tuples(st.sampled_from(list(ARRAYS)),
                        st.sampled_from(["truncate", "extend", "remove", "header", "flip",
                                         "nan", "inf", "foreign"]),
                        st.integers(0, 10**6))))


def _assert_valid(db: TileDatabase) -> None:
    n = len(db)
    assert n == len(db.tile_ids) > 0
    assert db.centers_latlon.shape == (n, 2) and db.centers_enu.shape == (n, 2)
    assert np.all(np.isfinite(db.centers_latlon)) and np.all(np.isfinite(db.centers_enu))
    assert np.all(np.abs(db.centers_latlon[:, 0]) <= 90)
    assert np.all(np.abs(db.centers_latlon[:, 1]) <= 180)
    d = db.datum
    assert all(math.isfinite(v) for v in (d.lat_deg, d.lon_deg, d.alt_m))
    for name in ARRAYS:
        arr = np.asarray(db._array(name))
        assert arr.shape[0] == n and np.all(np.isfinite(arr)), name
    sat = db.descriptors(np.arange(n))
    assert sat.features.shape[0] == n and bool(sat.features.isfinite().all())
    assert bool(sat.uncertainty.isfinite().all())
    assert np.array_equal(db.query_radius(*db.centers_enu[0], 1.0)[:1], [0])


def _check_open(path: Path, verify: bool) -> None:
    try:
        db = TileDatabase.open(path, verify_sha256=verify)
    except DatabaseError as exc:
        msg = str(exc)
        assert isinstance(exc, RuntimeError)
        assert str(path) in msg, f"the message names no file: {msg}"
        return
    _assert_valid(db)


@SETTINGS
@given(mutations, st.booleans())
# found by this test: int(version) raised TypeError/ValueError/OverflowError, not DatabaseError
@example(("manifest", [(["version"], float("nan"))]), False)
@example(("manifest", [(["version"], float("inf"))]), False)
@example(("manifest", [(["version"], None)]), False)
@example(("manifest", [(["version"], "x")]), False)
@example(("manifest", [(["version"], 1.5)]), False)
def test_open_refuses_a_corrupt_database_by_name_or_opens_a_valid_one(pristine, mutation,
                                                                     verify):
    tmp = Path(tempfile.mkdtemp(prefix="cvl_db_prop_"))
    try:
        db = tmp / "db"
        shutil.copytree(pristine, db)
        kind, arg = mutation
        if kind == "manifest":
            _edit_manifest(db, arg)
        else:
            _corrupt_array(db, *arg)
        _check_open(db, verify)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_pristine_database_opens(pristine):
    _assert_valid(TileDatabase.open(pristine, verify_sha256=True))
