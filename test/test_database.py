"""TileDatabase: build, open, corruption, hash mismatch, radius and two-stage top-k."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cvl_ros.database import DatabaseError, TileDatabase
from cvl_ros.geo import GeoDatum
from cvl_ros.outputs import OutputError

DATUM = GeoDatum(49.015, 8.43, 110.0)


@dataclass
class Ground:
    features: torch.Tensor
    mask: torch.Tensor


@dataclass
class Sat:
    features: torch.Tensor
    uncertainty: torch.Tensor


@dataclass
class Match:
    score: torch.Tensor
    displacement_m: torch.Tensor
    score_map: torch.Tensor


class FakeModel:
    """Satellite branch = fixed pooling; match = brute-force shift search (r = 2)."""

    def __init__(self, tag="a"):
        self.tag = tag
        self.config = {"sat_px": 32, "coverage_m": 100.0, "grid_cells": 8, "descriptor_dim": 3,
                       "search_cells": 2, "use_ssm": True, "use_uncertainty": True}

    def model_hash(self):
        return ("0123456789abcdef" if self.tag == "a" else "fedcba9876543210")

    def eval(self):
        return self

    def encode_satellite(self, x):
        f = F.adaptive_avg_pool2d(x, 8) - 0.5
        u = torch.sigmoid(f.mean(1, keepdim=True))
        return Sat(f, u)

    def match(self, ground, sat, pairwise=True):
        r = 2
        g = ground.features * ground.mask
        g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
        s = sat.features / sat.features.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None,
                                                                                    None]
        s = s / sat.uncertainty
        sp = F.pad(s, (r, r, r, r))
        size = g.shape[-1]
        maps = torch.zeros(g.shape[0], s.shape[0], 2 * r + 1, 2 * r + 1)
        for dy in range(2 * r + 1):
            for dx in range(2 * r + 1):
                win = sp[:, :, dy:dy + size, dx:dx + size]
                maps[:, :, dy, dx] = torch.einsum("bchw,tchw->bt", g, win)
        flat = maps.flatten(2)
        score, arg = flat.max(-1)
        disp = torch.stack([(arg % (2 * r + 1) - r).float(), (r - arg // (2 * r + 1)).float()],
                           -1) * 12.5
        return Match(score, disp, maps)


def _tiles(n, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        yield f"t{i:03d}", 49.015 + 0.0005 * (i % 7), 8.43 + 0.0007 * (i // 7), img


def test_build_open_roundtrip(tmp_path):
    model = FakeModel()
    db = TileDatabase.build(model, _tiles(23), tmp_path / "db", DATUM, batch_size=5)
    assert len(db) == 23
    assert db.tile_ids[0] == "t000"
    man = json.loads((tmp_path / "db" / "manifest.json").read_text())
    assert man["model_hash"] == model.model_hash()
    assert man["tile"]["coverage_m"] == 100.0 and man["tile"]["px"] == 32
    assert np.allclose(db.centers_enu[0], DATUM.to_enu(49.015, 8.43)[:2], atol=1e-6)
    db2 = TileDatabase.open(tmp_path / "db", expected_model_hash=model.model_hash(), verify=True)
    d = db2.descriptors([5, 2, 5])
    assert d.features.shape == (3, 3, 8, 8) and d.features.dtype == torch.float32
    assert torch.equal(d.features[0], d.features[2])


def test_hash_mismatch_and_corruption(tmp_path):
    TileDatabase.build(FakeModel(), _tiles(9), tmp_path / "db", DATUM)
    with pytest.raises(DatabaseError, match="built by model"):
        TileDatabase.open(tmp_path / "db", model=FakeModel("b"))
    with pytest.raises(DatabaseError, match="built by model"):
        TileDatabase.open(tmp_path / "db", expected_model_hash="ffff")
    with pytest.raises(DatabaseError, match="no manifest"):
        TileDatabase.open(tmp_path / "nothing")
    feat = tmp_path / "db" / "features.npy"
    data = feat.read_bytes()
    feat.write_bytes(data[:-10])
    with pytest.raises(DatabaseError, match="truncated"):
        TileDatabase.open(tmp_path / "db")
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    feat.write_bytes(bytes(flipped))
    TileDatabase.open(tmp_path / "db")  # same size: only the checksum notices
    with pytest.raises(DatabaseError, match="checksum"):
        TileDatabase.open(tmp_path / "db", verify=True)
    (tmp_path / "db" / "manifest.json").write_text("{not json")
    with pytest.raises(DatabaseError, match="corrupt"):
        TileDatabase.open(tmp_path / "db")


def test_query_radius(tmp_path):
    db = TileDatabase.build(FakeModel(), _tiles(21), tmp_path / "db", DATUM)
    e, n = db.centers_enu[10]
    idx = db.query_radius(e, n, 60.0)
    d = np.hypot(db.centers_enu[:, 0] - e, db.centers_enu[:, 1] - n)
    assert set(idx.tolist()) == set(np.nonzero(d <= 60.0)[0].tolist())
    assert idx[0] == 10 and np.all(np.diff(d[idx]) >= 0)
    assert db.query_radius(1e6, 1e6, 10).size == 0


def test_two_stage_equals_brute_force(tmp_path):
    model = FakeModel()
    db = TileDatabase.build(model, _tiles(30, seed=3), tmp_path / "db", DATUM)
    db.attach_model(model)
    g = Ground(torch.randn(3, 3, 8, 8), (torch.rand(3, 1, 8, 8) > 0.3).float())
    brute = model.match(g, db.descriptors(np.arange(len(db))))
    idx, score, disp = db.global_topk(g, 7, shortlist=len(db), return_match=True)
    for b in range(3):
        order = np.argsort(-brute.score[b].numpy(), kind="stable")[:7]
        assert idx[b].tolist() == order.tolist()
        assert np.allclose(score[b], brute.score[b].numpy()[order], atol=1e-6)
        assert np.allclose(disp[b], brute.displacement_m[b].numpy()[order])
    # A short shortlist still returns k results, each re-scored exactly.
    idx2, score2 = db.global_topk(g, 5, shortlist=10)
    assert idx2.shape == (3, 5)
    assert np.allclose(score2, brute.score.numpy()[np.arange(3)[:, None], idx2], atol=1e-6)


def test_sharded_build_merges_in_order(tmp_path):
    model = FakeModel()
    full = TileDatabase.build(model, _tiles(17), tmp_path / "full", DATUM)
    shards = [TileDatabase.build(model, _tiles(17), tmp_path / "sh", DATUM, shard=(r, 3))
              for r in range(3)]
    with pytest.raises(OutputError, match="contains the input"):  # output above its inputs
        TileDatabase.merge(shards, tmp_path / "sh", remove_shards=True)
    merged = TileDatabase.merge(shards, tmp_path / "merged", remove_shards=True)
    assert merged.tile_ids == full.tile_ids
    assert np.allclose(merged.centers_enu, full.centers_enu)
    a = full.descriptors(np.arange(17)).features
    b = merged.descriptors(np.arange(17)).features
    assert torch.equal(a, b)
    assert not (tmp_path / "sh" / "shards").exists()  # the builder's shards, nothing else


# ------------------------------------------------------------------ manifest checks (issue 13)
def _edit_manifest(db, edit):
    path = db / "manifest.json"
    man = json.loads(path.read_text())
    edit(man)
    path.write_text(json.dumps(man))


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["datum"].update(lat_deg=999.0), "datum .* not a finite WGS84 point"),
    (lambda m: m["datum"].update(lon_deg=float("nan")), "datum .* not a finite WGS84 point"),
    (lambda m: m["datum"].update(alt_m=float("inf")), "datum .* not a finite WGS84 point"),
    (lambda m: m.update(datum="Karlsruhe"), "datum 'Karlsruhe' is not"),
    (lambda m: m["centers_latlon"][3].__setitem__(0, float("nan")), "tile centres are not finite"),
    (lambda m: m["centers_latlon"][4].__setitem__(1, 200.0), "tile centres are not finite"),
    (lambda m: m["centers_enu"][2].__setitem__(1, float("inf")), "tile centres are not finite"),
    (lambda m: m["centers_enu"][5].__setitem__(0, 1e6), "do not match the WGS84 centres"),
    (lambda m: m["datum"].update(lat_deg=48.0), "do not match the WGS84 centres"),
])
def test_invalid_manifest_geometry_is_refused(tmp_path, edit, match):
    TileDatabase.build(FakeModel(), _tiles(9), tmp_path / "db", DATUM)
    _edit_manifest(tmp_path / "db", edit)
    with pytest.raises(DatabaseError, match=match) as exc:
        TileDatabase.open(tmp_path / "db")
    assert "manifest.json" in str(exc.value) and "rebuild it with cvl-build-db" in str(exc.value)


def _poison(db, name, row, value=np.nan):
    """Write ``value`` into one row of an array in place (size and header unchanged)."""
    arr = np.load(db / f"{name}.npy", mmap_mode="r+")
    arr[row].flat[0] = value
    arr.flush()
    del arr


@pytest.mark.parametrize("name,value", [("features", np.nan), ("uncertainty", np.inf),
                                        ("global", -np.inf)])
def test_nonfinite_arrays_are_refused_on_open(tmp_path, name, value):
    TileDatabase.build(FakeModel(), _tiles(9), tmp_path / "db", DATUM)
    _poison(tmp_path / "db", name, 6, value)
    with pytest.raises(DatabaseError, match=rf"{name}\.npy: row 6 \(tile 't006'\) holds NaN or "
                                            "Inf.*rebuild it with cvl-build-db"):
        TileDatabase.open(tmp_path / "db")


def test_large_database_is_sampled_and_sha256_catches_the_rest(tmp_path, monkeypatch):
    import cvl_ros.database as database

    TileDatabase.build(FakeModel(), _tiles(40), tmp_path / "db", DATUM)
    _poison(tmp_path / "db", "features", 17)
    monkeypatch.setattr(database, "FULL_CHECK_BYTES", 0)  # "large": rows are sampled
    monkeypatch.setattr(database, "SAMPLE_ROWS", 20)
    seen = 0
    for _ in range(40):  # a sample of 20 of 40 rows finds row 17 about every other time
        try:
            TileDatabase.open(tmp_path / "db")
        except DatabaseError as exc:
            assert "row 17" in str(exc)
            seen += 1
    assert 0 < seen < 40
    with pytest.raises(DatabaseError, match="checksum mismatch"):  # the full guarantee
        TileDatabase.open(tmp_path / "db", verify_sha256=True)
    monkeypatch.setattr(database, "SAMPLE_ROWS", 1000)  # more rows than the database: all
    with pytest.raises(DatabaseError, match="row 17"):
        TileDatabase.open(tmp_path / "db")


def test_sha256_is_recorded_and_required_when_verifying(tmp_path):
    db = TileDatabase.build(FakeModel(), _tiles(5), tmp_path / "db", DATUM)
    for name in ("features", "uncertainty", "global"):
        assert len(db.manifest["arrays"][name]["sha256"]) == 64
    TileDatabase.open(tmp_path / "db", verify_sha256=True)
    _edit_manifest(tmp_path / "db", lambda m: m["arrays"]["global"].pop("sha256"))
    TileDatabase.open(tmp_path / "db")  # an older manifest opens
    with pytest.raises(DatabaseError, match="records no SHA-256"):
        TileDatabase.open(tmp_path / "db", verify_sha256=True)


def test_builder_never_writes_nonfinite_descriptors(tmp_path):
    class NaNModel(FakeModel):
        def encode_satellite(self, x):
            s = super().encode_satellite(x)
            s.features[1, 0, 0, 0] = float("nan")
            return s

    with pytest.raises(DatabaseError, match="features of tile 't001' .* NaN or Inf"):
        TileDatabase.build(NaNModel(), _tiles(4), tmp_path / "db", DATUM)
    assert not (tmp_path / "db").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary folder left either
    bad = [(t, float("nan"), lon, img) for t, _, lon, img in _tiles(3)]
    with pytest.raises(DatabaseError, match="tile centres are not finite"):
        TileDatabase.build(FakeModel(), bad, tmp_path / "db", DATUM)
    with pytest.raises(DatabaseError, match="datum"):
        TileDatabase.build(FakeModel(), _tiles(3), tmp_path / "db", GeoDatum(999.0, 8.4, 0.0))
    assert [p.name for p in tmp_path.iterdir()] == []
