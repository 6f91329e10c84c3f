"""Output safety (issue 13): cvl-build-db, cvl-synth and cvl-build-tiles never delete or overwrite
what they did not write, replace their own output only with --overwrite, atomically, and refuse
bad numeric flags with a one-line error (exit 2, no traceback)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import _tiny_cvl
import numpy as np
import pytest
import torch

from cvl_ros import outputs
from cvl_ros.cli import build_db, build_tiles
from cvl_ros.database import TileDatabase
from cvl_ros.geo import GeoDatum
from cvl_ros.outputs import MARKER, OutputError, prepare_members, prepare_output, read_marker
from cvl_ros.synth import cli as synth
from cvl_ros.tiles import GeoMosaic

DATUM = GeoDatum(49.015, 8.43, 110.0)
SYNTH = ["--seed", "3", "--size-m", "100", "--drives", "1", "--image-size", "64x32",
         "--split", "test", "--tile-px", "64", "--quiet"]


def _digest(root: Path) -> dict:
    """Every entry under ``root`` with its bytes' hash (folders: None)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest()
                                       if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _debris(parent: Path) -> list:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def _webapp(root: Path) -> Path:
    """A user's web-app folder that happens to hold a manifest.json."""
    (root / "src").mkdir(parents=True)
    (root / "index.html").write_text("<html>my app</html>")
    (root / "src" / "app.js").write_text("console.log(1)")
    (root / "manifest.json").write_text('{"name": "my app"}')
    return root


# ------------------------------------------------------------------ the rule itself
def test_prepare_output_rule(tmp_path):
    out = tmp_path / "o"
    with prepare_output(out, tool="cvl-x") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".o.cvl-x.partial-")
        (tmp / "a.txt").write_text("1")
        (tmp / "d").mkdir()
        (tmp / "d" / "b.txt").write_text("2")
    m = read_marker(out)
    assert m["tool"] == "cvl-x" and m["files"] == ["a.txt", "d/", "d/b.txt"]
    with pytest.raises(OutputError, match="pass --overwrite"):
        with prepare_output(out, tool="cvl-x"):
            pass
    with pytest.raises(OutputError, match="written by cvl-x, not cvl-y"):
        with prepare_output(out, tool="cvl-y", overwrite=True):
            pass
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        with prepare_output(tmp_path / "f", tool="cvl-x", overwrite=True):
            pass
    with prepare_output(out, tool="cvl-x", overwrite=True) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "c.txt"]
    assert _debris(tmp_path) == []
    # an empty folder may be written; a folder above the cwd may not
    (tmp_path / "empty").mkdir()
    with prepare_output(tmp_path / "empty", tool="cvl-x") as tmp:
        (tmp / "x").write_text("")
    assert (tmp_path / "empty" / "x").exists()


def test_interrupted_run_leaves_old_output_and_no_debris(tmp_path):
    out = tmp_path / "o"
    with prepare_output(out, tool="cvl-x") as tmp:
        (tmp / "a.txt").write_text("old")
    before = _digest(out)
    for exc in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with prepare_output(out, tool="cvl-x", overwrite=True) as tmp:
                (tmp / "a.txt").write_text("new, half")
                raise exc
        assert _digest(out) == before and _debris(tmp_path) == []


def test_stale_temporary_folder_of_a_killed_run(tmp_path):
    out = tmp_path / "o"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".o.cvl-x.partial-{dead}-deadbeef"
    stale.mkdir()
    (stale / MARKER).write_text(json.dumps({"format": outputs.MARKER_FORMAT, "tool": "cvl-x",
                                            "files": [], "partial": True}))
    (stale / "half.bin").write_bytes(b"\0")
    alive = tmp_path / f".o.cvl-x.partial-{os.getpid()}-cafecafe"  # a run still going
    alive.mkdir()
    (alive / MARKER).write_text(stale.joinpath(MARKER).read_text())
    with prepare_output(out, tool="cvl-x") as tmp:
        (tmp / "a").write_text("")
    assert not stale.exists() and alive.exists() and (out / "a").exists()


def test_members_keep_everything_else(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with prepare_members(root, ["s/t", "f.txt"], tool="cvl-x") as st:
        (st / "s" / "t").mkdir(parents=True)
        (st / "s" / "t" / "1.png").write_bytes(b"1")
        (st / "f.txt").write_text("v1")
    assert (root / "notes.txt").read_text() == "mine"
    assert set(read_marker(root)["files"]) == {"s/", "s/t/", "s/t/1.png", "f.txt"}
    with pytest.raises(OutputError, match="pass --overwrite"):
        with prepare_members(root, ["f.txt"], tool="cvl-x"):
            pass
    (root / "s" / "t" / "user.txt").write_text("mine too")
    with pytest.raises(OutputError, match="user.txt"):
        with prepare_members(root, ["s/t"], tool="cvl-x", overwrite=True):
            pass
    (root / "s" / "t" / "user.txt").unlink()
    with pytest.raises(OutputError, match="lies inside the input"):
        with prepare_members(root, ["s/t"], tool="cvl-x", inputs=[root / "s"], overwrite=True):
            pass
    with pytest.raises(RuntimeError):  # a failure: nothing moved, no staging left
        with prepare_members(root, ["s/t", "f.txt"], tool="cvl-x", overwrite=True) as st:
            (st / "f.txt").write_text("v2")
            raise RuntimeError
    assert (root / "f.txt").read_text() == "v1" and _debris(root) == []
    with prepare_members(root, ["s/t", "f.txt"], tool="cvl-x", overwrite=True) as st:
        (st / "s" / "t").mkdir(parents=True)
        (st / "s" / "t" / "2.png").write_bytes(b"2")
        (st / "f.txt").write_text("v2")
    assert sorted(p.name for p in (root / "s" / "t").iterdir()) == ["2.png"]
    assert (root / "f.txt").read_text() == "v2" and (root / "notes.txt").read_text() == "mine"
    assert "s/t/1.png" not in read_marker(root)["files"] and _debris(root) == []


# ------------------------------------------------------------------ cvl-build-db
@pytest.fixture(scope="module")
def db_inputs(tmp_path_factory):
    """A tiny random-init checkpoint and a 120 m mosaic (9 tiles at --spacing-m 30)."""
    from cvl_ros.model.cvlnet import CVLNet, CVLNetConfig, save_checkpoint

    base = tmp_path_factory.mktemp("db_inputs")
    torch.manual_seed(0)
    model = CVLNet(CVLNetConfig(pretrained=False, ground_hw=(32, 128), sat_px=32, grid_cells=8,
                                coverage_m=40.0, feature_dim=8, search_cells=2),
                   load_pretrained=False).eval()
    save_checkpoint(base / "m.safetensors", model)
    rng = np.random.default_rng(0)
    GeoMosaic(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8), DATUM, 1.0, -60.0,
              60.0).write(base / "geo" / "mosaic.png")
    return base


def _db_argv(base, out, *extra):
    return ["--checkpoint", str(base / "m.safetensors"), "--tiles",
            str(base / "geo" / "mosaic.png"), "--out", str(out), "--spacing-m", "30",
            "--no-progress", *extra]


def _db(capsys, argv):
    rc = build_db.main(argv)
    cap = capsys.readouterr()
    return rc, cap.err


def test_build_db_refuses_a_web_app_folder(db_inputs, tmp_path, capsys):
    app = _webapp(tmp_path / "app")
    before = _digest(app)
    for extra in ([], ["--overwrite"]):
        rc, err = _db(capsys, _db_argv(db_inputs, app, *extra))
        assert rc == 2 and err.startswith("cvl-build-db: error: ") and "did not write" in err
        assert "delete it yourself" in err and "Traceback" not in err
        assert _digest(app) == before and _debris(tmp_path) == []


def test_build_db_refuses_outputs_above_or_inside_inputs(db_inputs, capsys, monkeypatch):
    geo = db_inputs / "geo"
    before = _digest(db_inputs)
    for out, msg in ((geo, "contains the input"), (db_inputs, "contains the input"),
                     (geo / "mosaic.png", "is the input"), (geo / "mosaic.png" / "db", "inside")):
        rc, err = _db(capsys, _db_argv(db_inputs, out, "--overwrite"))
        assert rc == 2 and msg in err, (out, err)
    sub = db_inputs / "work"
    sub.mkdir()
    monkeypatch.chdir(sub)
    for out in ("..", "."):  # `--out ..` emptied the parent, cwd included, before
        rc, err = _db(capsys, _db_argv(db_inputs, out, "--overwrite"))
        assert rc == 2 and ("current directory" in err or "contains the input" in err), err
    sub.rmdir()
    assert _digest(db_inputs) == before


def test_build_db_overwrite_own_output_only(db_inputs, tmp_path, capsys):
    out = tmp_path / "db"
    rc, err = _db(capsys, _db_argv(db_inputs, out))
    assert rc == 0, err
    assert read_marker(out)["tool"] == "cvl-build-db" and len(TileDatabase.open(out)) == 9
    rc, err = _db(capsys, _db_argv(db_inputs, out))
    assert rc == 2 and "pass --overwrite" in err
    rc, err = _db(capsys, _db_argv(db_inputs, out, "--overwrite"))
    assert rc == 0, err
    # a file of the user's inside the database: --overwrite is refused and names it
    (out / "notes.txt").write_text("my notes")
    before = _digest(out)
    rc, err = _db(capsys, _db_argv(db_inputs, out, "--overwrite"))
    assert rc == 2 and "notes.txt" in err and "move them out" in err
    assert _digest(out) == before and _debris(tmp_path) == []


def test_build_db_earlier_version_database(db_inputs, tmp_path, capsys):
    out = tmp_path / "db"
    assert _db(capsys, _db_argv(db_inputs, out))[0] == 0
    (out / MARKER).unlink()  # as written before markers existed: exactly the four files
    rc, err = _db(capsys, _db_argv(db_inputs, out))
    assert rc == 2 and "pass --overwrite" in err
    rc, err = _db(capsys, _db_argv(db_inputs, out, "--overwrite"))
    assert rc == 0, err
    (out / MARKER).unlink()
    (out / "index.html").write_text("x")  # not exactly a database any more: foreign
    rc, err = _db(capsys, _db_argv(db_inputs, out, "--overwrite"))
    assert rc == 2 and "delete it yourself" in err and (out / "index.html").exists()


def test_build_db_failure_keeps_old_database(db_inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "db"
    assert _db(capsys, _db_argv(db_inputs, out))[0] == 0
    before = _digest(out)

    def broken_write(dirpath, *a, **k):
        (Path(dirpath) / "features.npy").write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(TileDatabase, "_write", staticmethod(broken_write))
    with pytest.raises(OSError, match="No space"):
        build_db.main(_db_argv(db_inputs, out, "--overwrite"))
    assert _digest(out) == before and _debris(tmp_path) == []
    TileDatabase.open(out, verify=True)


def test_build_db_numeric_flags(db_inputs, tmp_path, capsys):
    out = tmp_path / "db"
    for flag, value, msg in (("--spacing-m", "1e-6", "must be >= 0.1 m"),
                             ("--spacing-m", "nan", "must be"), ("--spacing-m", "inf", "must be"),
                             ("--batch-size", "0", "must be >= 1"),
                             ("--threads", "-2", "must be >= 1"),
                             ("--max-tiles", "x", "not an integer")):
        with pytest.raises(SystemExit) as exc:
            build_db.main(_db_argv(db_inputs, out, flag, value))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"argument {flag}: {msg}" in err, err
    # a spacing within bounds whose grid is too large: refused before any grid is made
    rc, err = _db(capsys, _db_argv(db_inputs, out, "--spacing-m", "0.1", "--max-tiles", "1000"))
    assert rc == 2 and "more than --max-tiles 1000" in err and "--spacing-m" in err
    assert not out.exists()


def test_bad_flags_exit_2_without_traceback(tmp_path):
    for mod, argv in (("cvl_ros.cli.build_db", ["--checkpoint", "x", "--tiles", "y", "--out",
                                                str(tmp_path / "o"), "--spacing-m", "1e-6"]),
                      ("cvl_ros.synth.cli", ["--out", str(tmp_path / "o"), "--size-m", "1e9"]),
                      ("cvl_ros.cli.build_tiles", ["--raw", "x", "--mosaic", "y", "--out",
                                                   str(tmp_path / "o"), "--tile-px", "0"])):
        r = subprocess.run([sys.executable, "-m", mod, *argv], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "error: argument --" in r.stderr.splitlines()[-1] and "must be" in r.stderr
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ cvl-synth
def _drive_counts(root: Path) -> tuple:
    d = next((root / "raw_data").glob("*/*_sync"))
    return (len(list((d / "image_02" / "data").glob("*.png"))),
            len((d / "image_02" / "timestamps.txt").read_text().splitlines()),
            len(list((d / "oxts" / "data").glob("*.txt"))),
            len((root / "test1_files.txt").read_text().splitlines()))


def test_synth_second_run_refused_or_replaced_whole(tmp_path, capsys):
    out = tmp_path / "town"
    assert synth.main(["--out", str(out), "--frames-per-drive", "6", *SYNTH]) == 0
    assert _drive_counts(out) == (6, 6, 6, 6)
    (out / "mosaic.png").read_bytes()
    before = _digest(out)
    capsys.readouterr()
    assert synth.main(["--out", str(out), "--frames-per-drive", "2", *SYNTH]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cvl-synth: error: ") and "pass --overwrite" in err
    assert _digest(out) == before
    # with --overwrite: one consistent dataset of the second run, nothing of the first
    assert synth.main(["--out", str(out), "--frames-per-drive", "2", *SYNTH,
                       "--overwrite"]) == 0
    assert _drive_counts(out) == (2, 2, 2, 2) and _debris(tmp_path) == []
    # a user's file inside: --overwrite refused, naming it
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert synth.main(["--out", str(out), *SYNTH, "--frames-per-drive", "2",
                       "--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").exists()


def test_synth_refuses_foreign_folder_and_bad_flags(tmp_path, capsys):
    app = _webapp(tmp_path / "app")
    before = _digest(app)
    assert synth.main(["--out", str(app), *SYNTH, "--frames-per-drive", "2",
                       "--overwrite"]) == 2
    assert "did not write" in capsys.readouterr().err and _digest(app) == before
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bench.json").write_text('{"my": "results"}')
    assert synth.main(["--out", str(tmp_path / "b"), "--bench", "--overwrite"]) == 2
    assert "not a cvl-synth --bench result" in capsys.readouterr().err
    for flag, value in (("--size-m", "1e9"), ("--size-m", "nan"), ("--frames-per-drive", "0"),
                        ("--seed", "-1"), ("--image-size", "0x0"), ("--tile-spacing-m", "1e-6"),
                        ("--drives", "100000"), ("--gps-noise-m", "-1")):
        with pytest.raises(SystemExit) as exc:
            synth.main(["--out", str(tmp_path / "n"), flag, value])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"argument {flag}: " in err, (flag, err)
    assert not (tmp_path / "n").exists()


def test_synth_failure_keeps_old_dataset(tmp_path, capsys, monkeypatch):
    out = tmp_path / "town"
    assert synth.main(["--out", str(out), "--frames-per-drive", "2", *SYNTH]) == 0
    before = _digest(out)

    def broken(*a, **k):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(synth, "write_timestamps", broken)
    assert synth.main(["--out", str(out), "--frames-per-drive", "3", *SYNTH,
                       "--overwrite"]) == 2
    assert "renderer crashed" in capsys.readouterr().err
    assert _digest(out) == before and _debris(tmp_path) == []


# ------------------------------------------------------------------ cvl-build-tiles
@pytest.fixture
def tree(tmp_path):
    """The tiny KITTI-CVL tree (written by the tile library: no marker, an earlier version)."""
    return _tiny_cvl.make_tree(tmp_path / "tree", n_train=8, n_test=6)


def _tiles_argv(root, out, *extra):
    return ["--raw", str(root), "--mosaic", str(root / "mosaic.png"), "--out", str(out),
            "--train-drives", _tiny_cvl.TRAIN, "--test-drives", _tiny_cvl.TEST,
            "--tile-px", "32", "--quiet", *extra]


def test_build_tiles_never_clobbers_split_files(tree, tmp_path, capsys):
    out = tmp_path / "kcvl"
    out.mkdir()
    mine = {"train_files.txt": "my/own/list.png 1 2\n", "test1_files.txt": "mine\n"}
    for name, text in mine.items():
        (out / name).write_text(text)
    for extra in ([], ["--overwrite"]):  # the user's split files: refused either way
        assert build_tiles.main(_tiles_argv(tree, out, *extra)) == 2
        err = capsys.readouterr().err
        assert err.startswith("cvl-build-tiles: error: ") and "train_files.txt" in err
        assert {p.name: p.read_text() for p in out.iterdir()} == mine
    # the dataset written by the library (an earlier version, recognised by satmap/tiles.json)
    before = _digest(tree)
    assert build_tiles.main(_tiles_argv(tree, tree)) == 2
    assert "pass --overwrite" in capsys.readouterr().err and _digest(tree) == before
    (tree / "satmap" / "test" / tree.joinpath(_tiny_cvl.TEST).name / "notes.txt").write_text("m")
    assert build_tiles.main(_tiles_argv(tree, tree, "--overwrite")) == 2
    assert "notes.txt" in capsys.readouterr().err
    (tree / "satmap" / "test" / tree.joinpath(_tiny_cvl.TEST).name / "notes.txt").unlink()
    assert build_tiles.main(_tiles_argv(tree, tree, "--overwrite")) == 0
    assert read_marker(tree)["tool"] == "cvl-build-tiles" and _debris(tree) == []
    assert (tree / "mosaic.png").exists() and (tree / "raw_data").is_dir()
    assert len((tree / "train_files.txt").read_text().splitlines()) == 8


def test_build_tiles_failure_keeps_split_files(tree, capsys, monkeypatch):
    from cvl_ros import tiles

    before = _digest(tree)
    calls = []

    def broken(rgb, compression):
        calls.append(1)
        if len(calls) > 3:
            raise OSError("PNG encoding failed")
        return b"png"

    monkeypatch.setattr(tiles, "_encode_png", broken)
    assert build_tiles.main(_tiles_argv(tree, tree, "--overwrite")) == 2
    assert "PNG encoding failed" in capsys.readouterr().err
    assert _digest(tree) == before and _debris(tree) == []


def test_build_tiles_into_a_synth_dataset(tmp_path, capsys):
    town = tmp_path / "town"
    assert synth.main(["--out", str(town), "--frames-per-drive", "4", *SYNTH]) == 0
    drive = next((town / "raw_data").glob("*/*_sync")).name
    argv = ["--raw", str(town), "--mosaic", str(town / "mosaic.png"), "--out", str(town),
            "--test-drives", drive, "--tile-px", "32", "--spacing-m", "5", "--quiet"]
    before = _digest(town)
    assert build_tiles.main(argv) == 2 and _digest(town) == before
    assert "pass --overwrite" in capsys.readouterr().err
    assert build_tiles.main([*argv, "--overwrite"]) == 0
    m = read_marker(town)
    assert m["tool"] == "cvl-synth" and m["tools"] == ["cvl-build-tiles", "cvl-synth"]
    # every entry is still owned, so cvl-synth may replace the whole dataset again
    assert synth.main(["--out", str(town), "--frames-per-drive", "2", *SYNTH,
                       "--overwrite"]) == 0
    assert _drive_counts(town) == (2, 2, 2, 2)


def test_build_tiles_numeric_flags(tree, tmp_path, capsys):
    out = tmp_path / "o"
    for flag, value in (("--spacing-m", "1e-6"), ("--tile-px", "0"), ("--m-per-px", "0"),
                        ("--query-stride", "0"), ("--test-radius-m", "inf")):
        with pytest.raises(SystemExit) as exc:
            build_tiles.main(_tiles_argv(tree, out, flag, value))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"argument {flag}: must be" in err, (flag, err)
    assert build_tiles.main(_tiles_argv(tree, out, "--spacing-m", "0.1", "--test-radius-m",
                                        "50")) == 2
    assert "more than --max-tiles" in capsys.readouterr().err and not out.exists()
