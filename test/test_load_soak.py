"""The load benchmark and the soak, short: invariants only, never timing thresholds.

``python -m cvl_ros.cli.load_bench`` (issue 13, item 7) for 5 s with a tiny model: the node's
accounting (received == dropped + handled once drained, in flight <= queue_size + 1 at every
/diagnostics), a bounded RSS, no exception. ``python -m cvl_ros.cli.soak`` (item 8) for 24 s
of a looped 60-frame bag with the demo model: RSS growth, map->odom continuity per loop, loop
restarts, no exception, with loose bounds. Both refuse foreign outputs before starting anything.
The measured long runs are in docs/results.md ("Load: 30 Hz images", "Soak").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _ros_node_helpers import build_tiny_resources

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "cvlnet_demo" / "model.safetensors"


def _run(args, timeout, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_load_bench_refuses_a_foreign_json(tmp_path):
    foreign = tmp_path / "result.json"
    foreign.write_text('{"mine": true}')
    res = _run(["-m", "cvl_ros.cli.load_bench", "--json", str(foreign), "--checkpoint",
                str(tmp_path), "--db", str(tmp_path)], 60)
    assert res.returncode == 2, res.stderr
    assert "not a cvl-load-bench result" in res.stderr and "Traceback" not in res.stderr
    assert foreign.read_text() == '{"mine": true}'


def test_soak_refuses_a_foreign_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    for extra in ([], ["--overwrite"]):
        res = _run(["-m", "cvl_ros.cli.soak", "--out", str(out), "--minutes", "1", *extra], 60)
        assert res.returncode == 2, res.stderr
        assert "cvl-soak" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    res = _run(["-m", "cvl_ros.cli.soak", "--out", str(tmp_path / "new"), "--bag",
                str(tmp_path)], 60)
    assert res.returncode == 2 and "--bag and --db go together" in res.stderr


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_load_bench_short_run_keeps_the_accounting(tmp_path):
    ckpt, db = build_tiny_resources(tmp_path)
    out = tmp_path / "load.json"
    res = _run(["-m", "cvl_ros.cli.load_bench", "--json", str(out), "--checkpoint", str(ckpt),
                "--db", str(db), "--duration", "5", "--warmup", "1", "--queue-size", "2",
                "--device", "cpu", "--torch-threads", "1"], 110)
    assert out.is_file(), res.stdout + res.stderr
    r = json.loads(out.read_text())
    assert res.returncode == 0 and r["ok"], json.dumps(r["checks"]) + r.get("node_log_tail", "")
    assert r["tool"] == "cvl-load-bench" and r["queue_size"] == 2
    assert r["published_images"] >= 30
    # every image the node received was dropped by the latest-wins queue or handled
    assert r["received_images"] == r["dropped_images"] + r["frames_handled"]
    assert 0 <= r["received_images"] <= r["published_images"]
    assert 0 <= r["in_flight_min"] <= r["in_flight_max"] <= r["queue_size"] + 1
    assert r["processed_images"] >= 1 and r["outputs_received"] >= 1
    assert not r["node_log_exceptions"]
    # bounded memory: 5 s of 1024x256 images is ~118 MB if they were all kept
    assert r["rss_mb"]["growth_after_warmup_mb"] < 64, r["rss_mb"]
    assert r["latency_ms"]["n"] >= 1 and r["latency_ms"]["median"] > 0
    from cvl_ros.cli.load_bench import is_load_result

    assert is_load_result(out)  # a second run may replace it


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_soak_short_loops_with_bounded_memory_and_continuous_tf(tmp_path):
    if not MODEL.is_file():
        pytest.skip(f"the shipped demo model is absent ({MODEL})")
    out = tmp_path / "soak"
    res = _run(["-m", "cvl_ros.cli.soak", "--out", str(out), "--minutes", "0.4",
                "--frames", "60", "--seed", "3", "--size-m", "250", "--rate", "0.5",
                "--threads", "1", "--min-loops", "1", "--max-rss-growth-pct", "20",
                "--max-tf-gap-s", "2.0", "--param", "tf_publish_low_confidence:=true"], 140)
    assert (out / "soak.json").is_file(), res.stdout + res.stderr
    r = json.loads((out / "soak.json").read_text())
    assert res.returncode == (0 if r["ok"] else 1)
    assert r["ok"], json.dumps({k: r[k] for k in ("checks", "rss", "tf_map_odom",
                                                  "node_log_exceptions", "stopped_early")})
    assert r["loop_restarts"] >= 1 and r["node_counters"]["resets"] >= r["loop_restarts"]
    tf = r["tf_map_odom"]
    assert tf["messages"] > 0 and not tf["unexplained_decreases"]
    assert tf["stamp_decreases"] <= r["loop_restarts"]
    assert tf["max_gap_s"] <= 2.0
    assert r["rss"]["growth_pct"] <= 20
    for name in ("soak.png", "rss.csv", "tf_map_odom.csv", "node.log", ".cvl-output.json"):
        assert (out / name).is_file(), name
    # an earlier soak is replaced only with --overwrite
    res = _run(["-m", "cvl_ros.cli.soak", "--out", str(out), "--minutes", "1"], 60)
    assert res.returncode == 2 and "--overwrite" in res.stderr
