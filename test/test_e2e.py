"""End to end: a synthetic drive through the node and the replayer, each in its own process.

cvl-synth (small seeded town) -> cvl-build-db (shipped demo model) -> cvl-kitti2bag -> the node
(``python -m cvl_ros.ros.node``, use_sim_time) + the recorder + ``cvl-replay`` -> the report.
Checks: >= 90 % of the keyframes yield an estimate, every estimate carries an image stamp, the
node's map->odom TF is on /tf, and the median position error is below what the shipped model
measurably achieves on this drive (measured: README.md, "Bags, replay, offline runs and the
demo").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "cvlnet_demo"
#: Checkpoint override for development (the bound below is asserted for the shipped model only).
CHECKPOINT = os.environ.get("CVL_E2E_CHECKPOINT")

SEED = 3
FRAMES = 60
KEYFRAME_DISTANCE_M = 2.0
RATE = 0.15
#: Median position error bound [m] for the shipped model on this drive. Measured with the model
#: of hash 30f8e145bac4219d: median 1.90 m, p90 3.88 m, 19 fixes of 20 keyframes (11 TRACKING);
#: with the stage-2 model dbcabaeaa4f3de9a (2026-12-07): median 2.32 m, p90 3.30 m, 19 fixes of
#: 20 keyframes (8 TRACKING); with the stage-3 model 1f66a71f4375c584 (2026-12-07, this run's
#: printed summary): median 2.27 m, p90 3.26 m, 19 fixes of 20 keyframes (8 TRACKING); with the
#: stage-4 model b0d5d74ba1617b88 (2026-12-08): median 2.26 m, p90 3.09 m, 19 fixes of 20
#: keyframes (10 TRACKING); with the stage-5 model cad916ecbc544614 (2026-12-08): median 1.95 m,
#: p90 2.35 m, 19 fixes of 20 keyframes (10 TRACKING). The bound leaves room for frames dropped
#: on a loaded machine.
MAX_MEDIAN_ERROR_M = 4.0
MIN_FIX_RATE = 0.75

pytestmark = [pytest.mark.slow, pytest.mark.ros, pytest.mark.timeout(300)]


def _checkpoint() -> Path | None:
    if CHECKPOINT:
        return Path(CHECKPOINT)
    for name in ("model.safetensors", "checkpoint.safetensors"):
        if (MODEL_DIR / name).is_file():
            return MODEL_DIR / name
    files = sorted(MODEL_DIR.glob("*.safetensors")) if MODEL_DIR.is_dir() else []
    return files[0] if files else None


def _run(cmd: list[str], log: Path, timeout: float) -> None:
    with open(log, "w") as f:
        res = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if res.returncode != 0:
        pytest.fail(f"{' '.join(cmd[:4])} failed ({res.returncode}):\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def node_run(tmp_path_factory):
    ckpt = _checkpoint()
    if ckpt is None:
        pytest.skip(f"the shipped demo model is absent ({MODEL_DIR}/*.safetensors)")
    out = tmp_path_factory.mktemp("e2e")
    py = sys.executable
    # Images of ~0.8 MB between processes need larger Fast DDS shared-memory segments.
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE",
                          str(ROOT / "config" / "fastdds_large_images.xml"))
    _run([py, "-m", "cvl_ros.synth.cli", "--seed", str(SEED), "--out", str(out / "town"),
          "--drives", "1", "--frames-per-drive", str(FRAMES), "--style", "old_town",
          "--split", "test", "--size-m", "250", "--heading-noise-deg", "0.5",
          "--image-size", "512x128", "--quiet"],
         out / "synth.log", 120)
    drive = next((out / "town" / "raw_data").glob("*/*_sync"))
    _run([py, "-m", "cvl_ros.cli.build_db", "--checkpoint", str(ckpt), "--tiles",
          str(out / "town"), "--split", "test2", "--out", str(out / "db"), "--no-progress"],
         out / "build_db.log", 120)
    _run([py, "-m", "cvl_ros.cli.kitti2bag", "--drive", str(drive), "--out", str(out / "bag"),
          "--quiet"], out / "kitti2bag.log", 60)
    node_log = open(out / "node.log", "w")
    node = subprocess.Popen(
        [py, "-m", "cvl_ros.ros.node", "--ros-args", "--params-file",
         str(ROOT / "config" / "localize.yaml"), "-p", "use_sim_time:=true",
         "-p", f"checkpoint_path:={ckpt}", "-p", f"database_path:={out / 'db'}",
         "-p", f"localizer.keyframe_distance_m:={KEYFRAME_DISTANCE_M}",
         # with the shipped model's calibrated temperature this 40 m drive ends LOW_CONFIDENCE
         # (the honest 1-sigma is ~5 m; measured offline on this drive on 2026-12-07: 20 of 20
         # keyframes LOW_CONFIDENCE, error 1.3-3.2 m); the TF pipeline is what is checked here
         "-p", "tf_publish_low_confidence:=true",
         "-r", "image:=/kitti/camera_color_left/image_raw",
         "-r", "camera_info:=/kitti/camera_color_left/camera_info",
         "-r", "odom:=/kitti/odom", "-r", "imu:=/kitti/oxts/imu",
         "-r", "gps/fix:=/kitti/oxts/gps/fix"],
        cwd=ROOT, stdout=node_log, stderr=subprocess.STDOUT)
    rec_log = open(out / "record.log", "w")
    ready = out / "recorder.ready"
    rec = subprocess.Popen([py, "-m", "cvl_ros.cli.record", str(out / "outputs"),
                            "--ready-file", str(ready)],
                           cwd=ROOT, stdout=rec_log, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while not ready.exists() and time.monotonic() - t0 < 30:
            time.sleep(0.1)
        assert ready.exists(), "the recorder did not start"
        t_replay = time.monotonic()
        _run([py, "-m", "cvl_ros.cli.replay", str(out / "bag"), "--rate", str(RATE),
              "--tail", "4", "--wait-timeout", "90"], out / "replay.log", 200)
        replay_s = time.monotonic() - t_replay
        assert node.poll() is None, (out / "node.log").read_text()[-3000:]
    finally:
        _stop(node)
        _stop(rec)
        node_log.close()
        rec_log.close()
    from cvl_ros.cli.demo_report import node_run_report

    summary = node_run_report(out / "outputs", out / "bag", out / "report",
                              keyframe_distance_m=KEYFRAME_DISTANCE_M,
                              extra={"replay_wall_s": replay_s, "checkpoint": str(ckpt)})
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (dict, list))},
                     indent=1))
    return out, summary


def test_keyframes_yield_estimates(node_run):
    _, s = node_run
    assert s["expected_keyframes"] >= 10
    assert s["keyframe_estimate_rate"] >= 0.9, s
    # and most of them at the very stamps the keyframe rule picks (a frame dropped while the
    # node is busy may shift the chain after it, hence not all)
    assert s["estimates_at_expected_keyframe_stamps"] >= 0.75 * s["expected_keyframes"], s


def test_stamps_match_image_stamps(node_run):
    _, s = node_run
    assert s["estimates"] > 0
    assert s["stamps_match_images"], s["estimates_not_at_image_stamps"]


def test_map_odom_tf_and_heatmap_published(node_run):
    _, s = node_run
    assert s["tf_map_odom"] > 0
    assert s["heatmaps"] > 0


def test_median_error_within_the_measured_bound(node_run):
    out, s = node_run
    if CHECKPOINT:
        pytest.skip("CVL_E2E_CHECKPOINT overrides the shipped model; the bound is for it only")
    assert s["keyframe_fix_rate"] >= MIN_FIX_RATE, s
    assert s["median_error_m"] is not None and s["median_error_m"] < MAX_MEDIAN_ERROR_M, s
    assert (out / "report" / "trajectory.png").is_file()
