"""cvl-train (2 steps, checkpoint, CSV, resume, DDP gloo smoke) and cvl-eval JSON shape."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import _tiny_cvl
import pytest
import torch
import yaml

from cvl_ros.cli import evaluate as eval_cli
from cvl_ros.cli import train as train_cli
from cvl_ros.model.cvlnet import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return _tiny_cvl.make_tree(tmp_path_factory.mktemp("tiny_cvl"))


def _config(tmp_path, tree, out="run"):
    cfg = {
        "seed": 1,
        "device": "cpu",
        "threads": 1,
        "out_dir": str(tmp_path / out),
        "model": _tiny_cvl.TINY_MODEL,
        "data": {"roots": [str(tree)], "seq_len": 2, "frame_stride": 2},
        "optim": {"batch_size": 4, "epochs": 1, "max_steps": 2},
        "log": {"every": 1, "tensorboard": False},
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_two_steps_checkpoint_csv_resume(tmp_path, tree):
    cfg = _config(tmp_path, tree)
    assert train_cli.main(["--config", str(cfg), "--no-progress"]) == 0
    run = tmp_path / "run"
    model, extra = load_checkpoint(run / "last.safetensors")
    assert extra["train_state"]["step"] == 2
    assert (run / "last.optim.safetensors").is_file()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(float(r["loss"]) > 0 for r in rows)
    # resume: two more steps, continuing the step counter and the CSV
    assert train_cli.main(["--config", str(cfg), "optim.max_steps=4", "--resume",
                           "--no-progress"]) == 0
    _, extra = load_checkpoint(run / "last.safetensors")
    assert extra["train_state"]["step"] == 4
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]



def test_init_from_starts_from_the_checkpoints_weights(tmp_path, tree, capsys):
    """init_from (fine-tuning): a run with lr 1e-30 keeps the source's weights (another seed
    would draw other initial weights; batch-norm statistics move, so only parameters compare);
    the nll displacement term trains; a checkpoint of another network is refused in one line,
    exit 2."""
    src_cfg = _config(tmp_path, tree, "src")
    assert train_cli.main(["--config", str(src_cfg), "optim.max_steps=1", "--no-progress"]) == 0
    src = tmp_path / "src" / "last.safetensors"
    source, _ = load_checkpoint(src)
    cfg = _config(tmp_path, tree, "tune")
    assert train_cli.main(["--config", str(cfg), f"init_from={src}", "seed=7", "optim.lr=1.0e-30",
                           "model.displacement_loss_weight=1.0", "model.displacement_loss=nll",
                           "model.displacement_temperature=1.0", "--no-progress"]) == 0
    tuned, _ = load_checkpoint(tmp_path / "tune" / "last.safetensors")
    got, want = dict(tuned.named_parameters()), dict(source.named_parameters())
    assert set(got) == set(want)  # (a zero bias may move by 1e-30)
    assert all(torch.allclose(got[k], want[k], rtol=0, atol=1e-20) for k in want)
    rows = list(csv.DictReader(open(tmp_path / "tune" / "metrics.csv")))
    assert all(float(r["displacement"]) > 0 for r in rows)
    capsys.readouterr()
    rc = train_cli.main(["--config", str(cfg), f"init_from={src}", "model.feature_dim=12",
                         "out_dir=" + str(tmp_path / "other"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "init_from" in err and "Traceback" not in err
    rc = train_cli.main(["--config", str(cfg), f"init_from={src}", "model.coverage_m=60.0",
                         "out_dir=" + str(tmp_path / "other3"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.coverage_m" in err  # same shapes, another geometry: refused
    rc = train_cli.main(["--config", str(cfg), "init_from=" + str(tmp_path / "missing.st"),
                         "out_dir=" + str(tmp_path / "other2"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "init_from" in err and "does not exist" in err
    # a fine-tune resumed from its own last checkpoint no longer needs the file it started from
    moved = tmp_path / "src_moved.safetensors"
    src.rename(moved)
    assert train_cli.main(["--config", str(cfg), f"init_from={src}", "seed=7",
                           "optim.lr=1.0e-30", "model.displacement_loss_weight=1.0",
                           "model.displacement_loss=nll", "model.displacement_temperature=1.0",
                           "--resume", "--no-progress"]) == 0
    rc = train_cli.main(["--config", str(cfg), f"init_from={src}",
                         "out_dir=" + str(tmp_path / "fresh"), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err  # nothing to resume: the file is needed


def test_eval_json_shape(tmp_path, tree):
    cfg = _config(tmp_path, tree, "evalrun")
    assert train_cli.main(["--config", str(cfg), "optim.max_steps=1", "--no-progress"]) == 0
    out = tmp_path / "eval" / "res.json"
    rc = eval_cli.main(["--checkpoint", str(tmp_path / "evalrun" / "last.safetensors"),
                        "--data", str(tree), "--protocol", "test1,test2", "--seq", "1,2",
                        "--json", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    keys = {"r@1", "r@5", "r@10", "r@100", "r@1_25m", "median_error_m", "mean_error_m",
            "queries", "tiles"}
    assert set(res) == {"test1", "test2"}
    for proto in res.values():
        assert set(proto) == {"seq1", "seq2"}
        for rec in proto.values():
            assert set(rec) == keys
            assert rec["queries"] == 30
            assert 0.0 <= rec["r@1"] <= rec["r@5"] <= rec["r@10"] <= rec["r@100"] <= 100.0
    assert res["test2"]["seq1"]["tiles"] >= res["test1"]["seq1"]["tiles"]
    assert out.with_suffix(".md").read_text().count("| test2 |") == 2
    assert (out.parent / "res_recall_vs_seq.png").is_file()
    assert (out.parent / "res_error_cdf.png").is_file()


def test_ddp_gloo_two_processes(tmp_path, tree):
    try:
        import torch.distributed as dist
        if not dist.is_available() or not dist.is_gloo_available():
            pytest.skip("torch.distributed with gloo is not available in this build")
    except ImportError:
        pytest.skip("torch.distributed is not importable")
    cfg = _config(tmp_path, tree, "ddp")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "cvl_ros.cli.train", "--config", str(cfg), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        proc.communicate()
        pytest.skip("torchrun did not finish within 120 s on this machine")
    if proc.returncode != 0 and ("Address already in use" in stderr
                                 or "Connection refused" in stderr):
        pytest.skip(f"torchrun rendezvous could not start: {stderr[-300:]}")
    assert proc.returncode == 0, stderr[-3000:]
    _, extra = load_checkpoint(tmp_path / "ddp" / "last.safetensors")
    assert extra["train_state"]["step"] == 2


def test_build_db_cli_from_tree_and_mosaic(tmp_path, tree):
    from cvl_ros.cli import build_db
    from cvl_ros.database import DatabaseError, TileDatabase

    cfg = _config(tmp_path, tree, "dbrun")
    assert train_cli.main(["--config", str(cfg), "optim.max_steps=1", "--no-progress"]) == 0
    ckpt = tmp_path / "dbrun" / "last.safetensors"
    model, _ = load_checkpoint(ckpt)
    assert build_db.main(["--checkpoint", str(ckpt), "--tiles", str(tree), "--out",
                          str(tmp_path / "db"), "--no-progress"]) == 0
    db = TileDatabase.open(tmp_path / "db", model=model)
    assert len(db) == 14 and db.tile_ids[0].startswith("test/")
    assert build_db.main(["--checkpoint", str(ckpt), "--tiles", str(tree / "mosaic.png"),
                          "--out", str(tmp_path / "dbm"), "--spacing-m", "40",
                          "--no-progress"]) == 0
    dbm = TileDatabase.open(tmp_path / "dbm", expected_model_hash=model.model_hash())
    assert len(dbm) > 4
    with pytest.raises(DatabaseError):
        TileDatabase.open(tmp_path / "dbm", expected_model_hash="0" * 16)


def test_bench_json_keys_tiny(tmp_path):
    from cvl_ros.cli import bench

    out = tmp_path / "bench.json"
    assert bench.main(["--backbone", "mobilenet_v2", "--device", "cpu", "--json", str(out),
                       "--ground-hw", "32x128", "--sat-px", "64", "--grid-cells", "8",
                       "--reps", "2", "--windows", "1,4", "--db-sizes", "100,300",
                       "--threads", "1", "--fusion", "attn_conv2d"]) == 0
    res = json.loads(out.read_text())
    assert (res["fusion"], res["grid_cells"], res["pcsf_layers"]) == ("attn_conv2d", 8, 2)
    for key in ("backbone_forward_ms", "update_ms", "recompute_update_ms", "peak_rss_mb",
                "retrieval_ms_per_query", "device", "backbone"):
        assert key in res
    assert set(res["update_ms"]) == set(res["recompute_update_ms"]) == {"1", "4"}
    assert set(res["retrieval_ms_per_query"]) == {"100", "300"}
    assert res["device"] == "cpu" and res["backbone"] == "mobilenet_v2"
    assert all(v > 0 for v in res["update_ms"].values())
    assert 0 < res["peak_rss_mb"] <= res["recompute_peak_rss_mb"]


def test_ablate_tiny(tmp_path, tree):
    from cvl_ros.cli import ablate

    cfg = _config(tmp_path, tree, "abl")
    out = tmp_path / "ablate"
    assert ablate.main(["--config", str(cfg), "--data", str(tree), "--out", str(out),
                        "--variants", "ours,no_ssm,mobilenet_v2", "--steps", "1",
                        "--max-queries", "6", "--no-progress"]) == 0
    md = (out / "ablation.md").read_text()
    assert "Table 2" in md and "Table 3" in md and "Table 4" in md
    assert "Ours w/o SSM" in md and "MobileNetV2" in md
    res = json.loads((out / "ablation.json").read_text())
    assert res["mobilenet_v2"]["same_as"] == "ours"
    assert set(res["no_ssm"]["test2"]) >= {"r@1", "r@5", "r@10", "r@100"}


def test_color_jitter_shares_factors_across_a_sequence():
    import torch

    from cvl_ros.training import color_jitter

    torch.manual_seed(0)
    x = torch.full((3, 4, 3, 5, 7), 0.5)
    y = color_jitter(x, 0.3, 0.3, 0.3, 0.1)
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert torch.allclose(y[:, 0], y[:, 3])  # same jitter for every frame of a sequence
    assert not torch.allclose(y[0], y[1])  # different per batch row


def test_sigterm_saves_checkpoint(tmp_path, tree):
    import time

    cfg = _config(tmp_path, tree, "sig")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "cvl_ros.cli.train", "--config", str(cfg), "--no-progress",
           "optim.max_steps=100000", "optim.epochs=1000"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    csv_path = tmp_path / "sig" / "metrics.csv"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not csv_path.exists():
            time.sleep(0.2)
        assert csv_path.exists(), "training did not start within 60 s"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, stderr[-2000:]
    _, extra = load_checkpoint(tmp_path / "sig" / "last.safetensors")
    assert extra["train_state"]["step"] >= 1
    assert (tmp_path / "sig" / "last.optim.safetensors").is_file()
