"""One error style for user errors (issue 13, item 3): ``cvl-X: error: what, where, how to fix``.

Table-driven: for every CLI a list of bad argument vectors. Each runs the CLI's ``main(argv)``
in-process (argparse's ``SystemExit`` caught) and must end with exit status 2, one error line
``<prog>: error: ...`` (after argparse's usage text at most) that names the offending flag or
file, and no traceback. A few run as real processes (``python -m ...``) to see the exit status
and stderr of the command line. No case reaches a model run: every error is found first.

Cases of CLIs whose files this change did not touch and that still fail are marked
``xfail(strict=True)`` with the reason, so that fixing them makes the test fail until the mark
is removed.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE = "/kitti/camera_color_left/image_raw"

#: CLI id -> (module with main(argv), the prog its messages start with)
CLIS = {
    "cvl-train": ("cvl_ros.cli.train", "cvl-train"),
    "cvl-eval": ("cvl_ros.cli.evaluate", "cvl-eval"),
    "cvl-ablate": ("cvl_ros.cli.ablate", "cvl-ablate"),
    "cvl-bench": ("cvl_ros.cli.bench", "cvl-bench"),
    "cvl-build-db": ("cvl_ros.cli.build_db", "cvl-build-db"),
    "cvl-synth": ("cvl_ros.synth.cli", "cvl-synth"),
    "cvl-build-tiles": ("cvl_ros.cli.build_tiles", "cvl-build-tiles"),
    "cvl-replay": ("cvl_ros.cli.replay", "cvl-replay"),
    "record": ("cvl_ros.cli.record", "python -m cvl_ros.cli.record"),
    "demo_report": ("cvl_ros.cli.demo_report", "python -m cvl_ros.cli.demo_report"),
    "cvl-kitti2bag": ("cvl_ros.cli.kitti2bag", "cvl-kitti2bag"),
    "cvl-localize-bag": ("cvl_ros.cli.localize_bag", "cvl-localize-bag"),
}
ROS_CLIS = {"cvl-replay", "record"}  # import rclpy


# ------------------------------------------------------------------ fixtures: bad inputs
def _kitti_cvl_stub(root: Path) -> Path:
    """A folder with the three (empty) split files: passes the cheap checks, holds no data."""
    root.mkdir(parents=True)
    for name in ("train_files.txt", "test1_files.txt", "test2_files.txt"):
        (root / name).write_text("")
    return root


def _outputs_bag(path: Path) -> Path:
    """A bag shaped like the recorder's: the node's ~/geo_pose topic, no messages."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from cvl_ros.ros.bags import make_typestore

    w = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP)
    w.open()
    w.add_connection("/cvl_localizer/geo_pose", "cvl_ros/msg/GeoPoseEstimate",
                     typestore=make_typestore())
    w.close()
    return path


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """Paths of the bad (and a few good) inputs, by name; ``{name}`` in the table."""
    import yaml
    from _bag_drives import tiny_drive

    from cvl_ros.outputs import write_marker
    from cvl_ros.ros.kitti_bag import write_kitti_bag

    t = tmp_path_factory.mktemp("cli_errors")
    p: dict[str, str] = {"t": str(t)}
    drive = tiny_drive(t, n=4)
    p["drive"] = str(drive)
    write_kitti_bag(drive, t / "bag", storage="mcap", progress=False)
    p["bag"] = str(t / "bag")
    p["mcapfile"] = str(next((t / "bag").glob("*.mcap")))
    # ROS 1 bags of the kitti2bag tool: a good one, one without gps/vel, a cut one
    from _kitti2bag_ros1 import write_kitti2bag_ros1

    ros1 = write_kitti2bag_ros1(drive, t / "kitti.bag")
    p["ros1bag"] = str(ros1)
    p["ros1novel"] = str(write_kitti2bag_ros1(drive, t / "novel.bag",
                                               skip_topics=("/kitti/oxts/gps/vel",)))
    (t / "cut.bag").write_bytes(ros1.read_bytes()[: ros1.stat().st_size // 2])
    p["ros1cut"] = str(t / "cut.bag")
    p["outputs"] = str(_outputs_bag(t / "outputs"))
    # broken bags
    (t / "notbag").mkdir()
    (t / "notbag" / "x.txt").write_text("not a bag")
    p["notbag"] = str(t / "notbag")
    for name, edit in (("garbage", "storage"), ("badmeta", "meta"), ("nostorage", "rm")):
        b = t / name
        b.mkdir()
        (b / "metadata.yaml").write_text((t / "bag" / "metadata.yaml").read_text())
        store = b / Path(p["mcapfile"]).name
        if edit == "storage":
            store.write_bytes(b"\x00garbage" * 500)
        elif edit == "meta":
            (b / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: [\n")
            store.write_bytes(Path(p["mcapfile"]).read_bytes())
        p[name] = str(b)
    # configs
    tree = _kitti_cvl_stub(t / "tree")
    p["tree"] = str(tree)
    (t / "empty_dir").mkdir()
    p["empty_dir"] = str(t / "empty_dir")
    base = {"device": "cpu", "out_dir": str(t / "run"), "data": {"roots": [str(tree)]},
            "model": {"backbone": "mobilenet_v2", "pretrained": False}}
    p["good_yaml"] = str(t / "good.yaml")
    Path(p["good_yaml"]).write_text(yaml.safe_dump(base))
    for name, text in (("broken_yaml", "optim: {lr: [\n"),
                       ("list_yaml", "- a\n- b\n"),
                       ("badtype_yaml", yaml.safe_dump({**base, "optim": {"lr": "fast"}})),
                       ("typo_yaml", yaml.safe_dump({**base, "optm": {"lr": 1e-4}})),
                       ("cuda_yaml", yaml.safe_dump({**base, "device": "cuda:99"}))):
        (t / f"{name}.yaml").write_text(text)
        p[name] = str(t / f"{name}.yaml")
    # outputs that are someone else's
    (t / "foreign").mkdir()
    (t / "foreign" / "thesis.tex").write_text("mine")
    p["foreign"] = str(t / "foreign")
    (t / "mine.json").write_text('{"grades": [1, 2]}')
    p["foreign_json"] = str(t / "mine.json")
    (t / "res.md").write_text("# my notes\n")
    p["json_with_foreign_md"] = str(t / "res.json")
    (t / "reportdir").mkdir()
    (t / "reportdir" / "summary.json").write_text('{"mine": true}')
    p["reportdir"] = str(t / "reportdir")
    # an earlier cvl-train run (marker + checkpoint name)
    run = t / "oldrun"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(base))
    (run / "last.safetensors").write_bytes(b"x")
    write_marker(run, "cvl-train", ["config.yaml", "last.safetensors"])
    p["oldrun"] = str(run)
    # mosaic with a broken geo-reference
    (t / "m.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (t / "m.geo.json").write_text("{broken")
    p["mosaic"] = str(t / "m.png")
    p["broken_georef"] = str(t / "m.geo.json")
    (t / "broken_params.yaml").write_text("cvl_localizer: {ros__parameters: [\n")
    p["broken_params"] = str(t / "broken_params.yaml")
    return p


# ------------------------------------------------------------------ the table
def C(cli, argv, *needles, marks=(), id=None):
    """One case: ``cli`` run with ``argv``; every needle must be in its error line."""
    return pytest.param(cli, argv, needles, marks=marks,
                        id=id or f"{cli}:{' '.join(argv)[:60]}")


COMMON_DB = ["--checkpoint", "{t}/nope.safetensors", "--tiles", "{tree}", "--out", "{t}/db"]
EVAL = ["--checkpoint", "{t}/nope.safetensors", "--data", "{tree}", "--json", "{t}/e.json"]
ABL = ["--config", "{good_yaml}", "--data", "{tree}", "--out", "{t}/abl", "--steps", "1"]
TILES = ["--raw", "{drive}", "--mosaic", "{mosaic}", "--out", "{t}/tiles",
         "--train-drives", "x"]
REPLAY = ["{bag}", "--no-wait"]
DEMO = ["--outputs", "{outputs}", "--bag", "{bag}", "--out", "{t}/rep"]
K2B = ["--drive", "{drive}", "--out", "{t}/k2b"]
LB = ["{bag}", "--out", "{t}/lb"]

CASES = [
    # ---------------------------------------------------------------- cvl-train
    C("cvl-train", ["--config", "{t}/nope.yaml"], "--config", "nope.yaml", "no such file"),
    C("cvl-train", ["--config", "{empty_dir}"], "--config", "is a folder"),
    C("cvl-train", ["--config", "{broken_yaml}"], "broken_yaml.yaml", "broken YAML", "line"),
    C("cvl-train", ["--config", "{list_yaml}"], "list_yaml.yaml", "mapping"),
    C("cvl-train", ["--config", "{badtype_yaml}"], "badtype_yaml.yaml", "optim.lr", "'fast'"),
    C("cvl-train", ["--config", "{typo_yaml}"], "typo_yaml.yaml", "optm"),
    C("cvl-train", ["--config", "{cuda_yaml}"], "cuda_yaml.yaml", "cuda:99"),
    C("cvl-train", ["--config", "{good_yaml}", "optim.batch_size=0"], "optim.batch_size"),
    C("cvl-train", ["--config", "{good_yaml}", "optim.lr=nan"], "optim.lr"),
    C("cvl-train", ["--config", "{good_yaml}", "optim.lr=["], "optim.lr=[", "YAML"),
    C("cvl-train", ["--config", "{good_yaml}", "nokey"], "nokey", "key=value"),
    C("cvl-train", ["--config", "{good_yaml}", "device=bogus"], "device", "bogus"),
    C("cvl-train", ["--config", "{good_yaml}", "threads=-1"], "threads"),
    C("cvl-train", ["--config", "{good_yaml}", "data.seq_len=0"], "data.seq_len"),
    C("cvl-train", ["--config", "{good_yaml}", "model.sat_px=0"], "model.sat_px"),
    C("cvl-train", ["--config", "{good_yaml}", "model.backbone=alexnet"], "backbone"),
    C("cvl-train", ["--config", "{good_yaml}", "model.displacement_loss=mse"],
      "displacement_loss", "nll"),
    C("cvl-train", ["--config", "{good_yaml}", "model.displacement_temperature=0"],
      "model.displacement_temperature", "> 0"),
    C("cvl-train", ["--config", "{good_yaml}", "init_from={t}/nope.safetensors"], "init_from",
      "does not exist"),
    C("cvl-train", ["--config", "{good_yaml}", "init_from=7"], "init_from", "checkpoint file"),
    C("cvl-train", ["--config", "{good_yaml}", "model.use_ssm=maybe"], "model.use_ssm"),
    C("cvl-train", ["--config", "{good_yaml}", "data.roots=[{t}/nowhere]"], "data.roots",
      "nowhere"),
    C("cvl-train", ["--config", "{good_yaml}", "data.roots=[{empty_dir}]"], "data.roots",
      "train_files.txt"),
    C("cvl-train", ["--config", "{good_yaml}", "out_dir={foreign}"], "out_dir", "foreign",
      "did not write"),
    C("cvl-train", ["--config", "{good_yaml}", "out_dir={tree}/run"], "out_dir", "input"),
    C("cvl-train", ["--config", "{good_yaml}", "out_dir={oldrun}"], "oldrun", "--resume",
      "--overwrite"),
    C("cvl-train", ["--config", "{good_yaml}", "--resume", "--overwrite"], "--overwrite"),
    C("cvl-train", ["--config", "{good_yaml}", "--log-level", "loud"], "--log-level"),
    # ---------------------------------------------------------------- cvl-eval
    C("cvl-eval", [*EVAL, "--seq", "0"], "--seq"),
    C("cvl-eval", [*EVAL, "--seq", "1,x"], "--seq"),
    C("cvl-eval", [*EVAL, "--seq", "1000"], "--seq"),
    C("cvl-eval", [*EVAL, "--frame-stride", "0"], "--frame-stride"),
    C("cvl-eval", [*EVAL, "--max-queries", "-1"], "--max-queries"),
    C("cvl-eval", [*EVAL, "--threads", "-1"], "--threads"),
    C("cvl-eval", [*EVAL, "--device", "bogus"], "--device", "bogus"),
    C("cvl-eval", [*EVAL, "--device", "cuda:99"], "--device", "cuda:99"),
    C("cvl-eval", [*EVAL, "--protocol", "test3"], "--protocol"),
    C("cvl-eval", ["--checkpoint", "x", "--data", "{t}/nowhere", "--json", "{t}/e.json"],
      "--data", "nowhere"),
    C("cvl-eval", ["--checkpoint", "x", "--data", "{empty_dir}", "--json", "{t}/e.json"],
      "--data", "test2_files.txt"),
    C("cvl-eval", ["--checkpoint", "x", "--data", "{tree}", "--json", "{foreign_json}"],
      "--json", "mine.json", "not a cvl-eval result"),
    C("cvl-eval", ["--checkpoint", "x", "--data", "{tree}", "--json", "{empty_dir}"],
      "--json", "folder"),
    C("cvl-eval", ["--checkpoint", "x", "--data", "{tree}", "--json",
                   "{json_with_foreign_md}"], "res.md"),
    C("cvl-eval", EVAL, "--checkpoint", "nope.safetensors"),
    # ---------------------------------------------------------------- cvl-bench
    C("cvl-bench", ["--json", "{t}/b.json", "--reps", "0"], "--reps"),
    C("cvl-bench", ["--json", "{t}/b.json", "--windows", "0"], "--windows"),
    C("cvl-bench", ["--json", "{t}/b.json", "--windows", ","], "--windows"),
    C("cvl-bench", ["--json", "{t}/b.json", "--db-sizes", "100000000"], "--db-sizes"),
    C("cvl-bench", ["--json", "{t}/b.json", "--ground-hw", "1x1"], "--ground-hw"),
    C("cvl-bench", ["--json", "{t}/b.json", "--ground-hw", "big"], "--ground-hw"),
    C("cvl-bench", ["--json", "{t}/b.json", "--sat-px", "0"], "--sat-px"),
    C("cvl-bench", ["--json", "{t}/b.json", "--grid-cells", "-4"], "--grid-cells"),
    C("cvl-bench", ["--json", "{t}/b.json", "--pcsf-layers", "0"], "--pcsf-layers"),
    C("cvl-bench", ["--json", "{t}/b.json", "--threads", "-1"], "--threads"),
    C("cvl-bench", ["--json", "{t}/b.json", "--device", "gpu"], "--device", "gpu"),
    C("cvl-bench", ["--json", "{t}/b.json", "--device", "cuda:99"], "--device", "cuda:99"),
    C("cvl-bench", ["--json", "{t}/b.json", "--fusion", "magic"], "--fusion"),
    C("cvl-bench", ["--json", "{t}/b.json", "--backbone", "alexnet"], "--backbone"),
    C("cvl-bench", ["--json", "{t}/b.json", "--frame-canvas"], "pcsf_frame_canvas"),
    C("cvl-bench", ["--json", "{foreign_json}"], "--json", "mine.json"),
    C("cvl-bench", ["--json", "{t}/b.json", "--checkpoint", "{t}/nope.safetensors"],
      "--checkpoint", "nope.safetensors"),
    # ---------------------------------------------------------------- cvl-ablate
    C("cvl-ablate", [*ABL, "--steps", "0"], "--steps"),
    C("cvl-ablate", [*ABL, "--minutes", "0"], "--minutes"),
    C("cvl-ablate", [*ABL, "--minutes", "nan"], "--minutes"),
    C("cvl-ablate", [*ABL, "--seq", "0"], "--seq"),
    C("cvl-ablate", [*ABL, "--max-queries", "0"], "--max-queries"),
    C("cvl-ablate", [*ABL, "--tables", "5"], "--tables"),
    C("cvl-ablate", [*ABL, "--variants", "ours,bogus"], "--variants", "bogus"),
    C("cvl-ablate", ABL[:-2], "--steps", "--minutes"),
    C("cvl-ablate", ["--config", "{good_yaml}", "--data", "{t}/nowhere", "--out", "{t}/abl",
                     "--steps", "1"], "--data", "nowhere"),
    C("cvl-ablate", ["--config", "{broken_yaml}", "--data", "{tree}", "--out", "{t}/abl",
                     "--steps", "1"], "broken_yaml.yaml", "YAML"),
    C("cvl-ablate", [*ABL, "optim.lr=-1"], "optim.lr"),
    C("cvl-ablate", ["--config", "{good_yaml}", "--data", "{tree}", "--out", "{foreign}",
                     "--steps", "1"], "--out", "foreign", "did not write"),
    C("cvl-ablate", ["--config", "{good_yaml}", "--data", "{tree}", "--out", "{oldrun}",
                     "--steps", "1"], "--out", "oldrun", "cvl-train"),
    # ---------------------------------------------------------------- cvl-build-db
    C("cvl-build-db", [*COMMON_DB, "--spacing-m", "0"], "--spacing-m"),
    C("cvl-build-db", [*COMMON_DB, "--spacing-m", "inf"], "--spacing-m"),
    C("cvl-build-db", [*COMMON_DB, "--batch-size", "0"], "--batch-size"),
    C("cvl-build-db", [*COMMON_DB, "--threads", "-1"], "--threads"),
    C("cvl-build-db", [*COMMON_DB, "--max-tiles", "0"], "--max-tiles"),
    C("cvl-build-db", [*COMMON_DB, "--device", "bogus"], "--device", "bogus"),
    C("cvl-build-db", [*COMMON_DB, "--device", "cuda:99"], "--device", "cuda:99"),
    C("cvl-build-db", [*COMMON_DB, "--split", "val"], "--split"),
    C("cvl-build-db", ["--checkpoint", "x", "--tiles", "{t}/nowhere", "--out", "{t}/db"],
      "--tiles", "nowhere"),
    C("cvl-build-db", ["--checkpoint", "x", "--tiles", "{tree}", "--out", "{foreign}"],
      "--out", "foreign"),
    C("cvl-build-db", COMMON_DB, "nope.safetensors"),
    # ---------------------------------------------------------------- cvl-synth
    C("cvl-synth", ["--out", "{t}/s", "--size-m", "0"], "--size-m"),
    C("cvl-synth", ["--out", "{t}/s", "--size-m", "1e9"], "--size-m"),
    C("cvl-synth", ["--out", "{t}/s", "--drives", "0"], "--drives"),
    C("cvl-synth", ["--out", "{t}/s", "--frames-per-drive", "0"], "--frames-per-drive"),
    C("cvl-synth", ["--out", "{t}/s", "--image-size", "0x0"], "--image-size"),
    C("cvl-synth", ["--out", "{t}/s", "--image-size", "wide"], "--image-size"),
    C("cvl-synth", ["--out", "{t}/s", "--tile-px", "nan"], "--tile-px"),
    C("cvl-synth", ["--out", "{t}/s", "--seed", "-1"], "--seed"),
    C("cvl-synth", ["--out", "{t}/s", "--gps-noise-m", "-1"], "--gps-noise-m"),
    C("cvl-synth", ["--out", "{t}/s", "--style", "mars"], "--style"),
    C("cvl-synth", ["--out", "{foreign}", "--overwrite"], "foreign", "did not write"),
    # ---------------------------------------------------------------- cvl-build-tiles
    C("cvl-build-tiles", [*TILES, "--spacing-m", "0"], "--spacing-m"),
    C("cvl-build-tiles", [*TILES, "--tile-px", "0"], "--tile-px"),
    C("cvl-build-tiles", [*TILES, "--m-per-px", "0"], "--m-per-px"),
    C("cvl-build-tiles", [*TILES, "--query-stride", "0"], "--query-stride"),
    C("cvl-build-tiles", [*TILES, "--max-tiles", "0"], "--max-tiles"),
    C("cvl-build-tiles", [*TILES, "--datum", "100,0"], "--datum"),
    C("cvl-build-tiles", [*TILES, "--cam", "7"], "--cam"),
    C("cvl-build-tiles", ["--raw", "{t}/nowhere", "--mosaic", "{mosaic}", "--out",
                          "{t}/tiles", "--train-drives", "x"], "nowhere"),
    C("cvl-build-tiles", ["--raw", "{t}/tiny", "--mosaic", "{t}/nope.png", "--out",
                          "{t}/tiles", "--train-drives", "2011_09_26_drive_0099_sync"],
      "nope.png"),
    C("cvl-build-tiles", ["--raw", "{t}/tiny", "--mosaic", "{mosaic}", "--out", "{t}/tiles",
                          "--train-drives", "2011_09_26_drive_0099_sync"], "m.geo.json",
      "JSON"),
    # ---------------------------------------------------------------- cvl-replay
    C("cvl-replay", [*REPLAY, "--rate", "0"], "--rate"),
    C("cvl-replay", [*REPLAY, "--rate", "nan"], "--rate"),
    C("cvl-replay", [*REPLAY, "--rate", "-2"], "--rate"),
    C("cvl-replay", [*REPLAY, "--start", "-1"], "--start"),
    C("cvl-replay", [*REPLAY, "--start", "1000"], "--start", "bag"),
    C("cvl-replay", [*REPLAY, "--clock-hz", "0"], "--clock-hz"),
    C("cvl-replay", [*REPLAY, "--wait-timeout", "-1"], "--wait-timeout"),
    C("cvl-replay", [*REPLAY, "--tail", "inf"], "--tail"),
    C("cvl-replay", [*REPLAY, "--topics", "/nope"], "/nope", "bag"),
    C("cvl-replay", [*REPLAY, "--remap=/a"], "--remap", "FROM:=TO"),
    C("cvl-replay", [*REPLAY, "--remap=/a:=bad name"], "--remap", "bad name"),
    C("cvl-replay", ["{t}/nowhere"], "nowhere", "no such folder"),
    C("cvl-replay", ["{notbag}"], "notbag", "metadata.yaml"),
    C("cvl-replay", ["{mcapfile}"], ".mcap", "folder"),
    C("cvl-replay", ["{garbage}"], "garbage", "cannot read"),
    C("cvl-replay", ["{ros1cut}"], "cut.bag", "cannot read"),
    C("cvl-replay", ["{ros1bag}", "--start", "1000"], "--start", "kitti.bag"),
    C("cvl-replay", ["{badmeta}"], "badmeta", "cannot read"),
    C("cvl-replay", ["{nostorage}"], "nostorage", "cannot read"),
    # ---------------------------------------------------------------- record
    C("record", ["{bag}"], "bag", "exists"),
    C("record", ["{t}/nowhere/out"], "nowhere", "does not exist"),
    C("record", ["{t}/rec", "--duration", "0"], "--duration"),
    C("record", ["{t}/rec", "--topic", "/x"], "--topic", "/x"),
    C("record", ["{t}/rec", "--topic", "/x:=nope/msg/Nope"], "--topic", "nope/msg/Nope"),
    C("record", ["{t}/rec", "--topic", "/x y:=std_msgs/msg/String"], "--topic", "/x y"),
    C("record", ["{t}/rec", "--node-name", "a b"], "--node-name"),
    C("record", ["{t}/rec", "--ready-file", "{t}/nowhere/ready"], "--ready-file"),
    # ---------------------------------------------------------------- demo_report
    C("demo_report", ["--outputs", "{notbag}", "--bag", "{bag}", "--out", "{t}/rep"],
      "--outputs", "notbag"),
    C("demo_report", ["--outputs", "{outputs}", "--bag", "{garbage}", "--out", "{t}/rep"],
      "--bag", "garbage", "cannot read"),
    C("demo_report", ["--outputs", "{outputs}", "--bag", "{badmeta}", "--out", "{t}/rep"],
      "--bag", "badmeta"),
    C("demo_report", ["--outputs", "{bag}", "--bag", "{bag}", "--out", "{t}/rep"],
      "--outputs", "/cvl_localizer/geo_pose"),
    C("demo_report", ["--outputs", "{outputs}", "--bag", "{outputs}", "--out", "{t}/rep"],
      "--bag", IMAGE),
    C("demo_report", [*DEMO, "--node-name", "other"], "--outputs", "/other/geo_pose"),
    C("demo_report", [*DEMO, "--node-name", "a b"], "--node-name"),
    C("demo_report", [*DEMO, "--keyframe-distance", "-1"], "--keyframe-distance"),
    C("demo_report", [*DEMO, "--keyframe-interval", "nan"], "--keyframe-interval"),
    C("demo_report", [*DEMO, "--extra", "[1]"], "--extra"),
    C("demo_report", [*DEMO, "--extra", "{{broken"], "--extra"),
    C("demo_report", [*DEMO, "--mosaic", "{t}/nope.png"], "--mosaic", "nope.png"),
    C("demo_report", ["--outputs", "{outputs}", "--bag", "{bag}", "--out", "{reportdir}"],
      "summary.json", "--overwrite"),
    C("demo_report", ["--outputs", "{outputs}", "--bag", "{bag}", "--out", "{reportdir}",
                      "--overwrite"], "summary.json", "not written by"),
    C("demo_report", ["--outputs", "{outputs}", "--bag", "{bag}", "--out", "{bag}"],
      "--out", "input"),
    # ---------------------------------------------------------------- cvl-kitti2bag
    C("cvl-kitti2bag", ["--drive", "{t}/nowhere", "--out", "{t}/k2b"], "nowhere"),
    C("cvl-kitti2bag", [*K2B, "--odom-drift", "nan"], "--odom-drift"),
    C("cvl-kitti2bag", [*K2B, "--odom-noise", "-1"], "--odom-noise"),
    C("cvl-kitti2bag", [*K2B, "--frames", "0"], "--frames"),
    C("cvl-kitti2bag", [*K2B, "--seed", "-1"], "--seed"),
    C("cvl-kitti2bag", [*K2B, "--storage", "rosbag1"], "--storage"),
    C("cvl-kitti2bag", ["--drive", "{drive}", "--out", "{foreign}"], "--out", "foreign"),
    C("cvl-kitti2bag", ["--from-bag", "{t}/nope.bag", "--out", "{t}/k2b"], "nope.bag"),
    C("cvl-kitti2bag", ["--from-bag", "{mcapfile}", "--out", "{t}/k2b"], "--from-bag",
      "ROS 1"),
    C("cvl-kitti2bag", ["--from-bag", "{ros1novel}", "--out", "{t}/k2b"], "novel.bag",
      "/kitti/oxts/gps/vel"),
    C("cvl-kitti2bag", ["--from-bag", "{ros1cut}", "--out", "{t}/k2b"], "cut.bag",
      "cannot read"),
    C("cvl-kitti2bag", ["--from-bag", "{ros1bag}", "--out", "{ros1bag}"], "--out", "input"),
    C("cvl-kitti2bag", ["--from-bag", "{ros1bag}", "--out", "{foreign}"], "--out", "foreign"),
    C("cvl-kitti2bag", ["--from-bag", "{ros1bag}", "--drive", "{drive}", "--out", "{t}/k2b"],
      "--drive", "--from-bag"),
    C("cvl-kitti2bag", ["--from-bag", "{ros1bag}", "--frames", "2", "--out", "{t}/k2b"],
      "--frames", "--from-bag"),
    # ---------------------------------------------------------------- cvl-localize-bag
    C("cvl-localize-bag", ["{t}/nowhere", "--out", "{t}/lb"], "nowhere"),
    C("cvl-localize-bag", ["{notbag}", "--out", "{t}/lb"], "notbag", "metadata.yaml"),
    C("cvl-localize-bag", [*LB, "--threads", "-1"], "--threads"),
    C("cvl-localize-bag", [*LB, "--max-images", "0"], "--max-images"),
    C("cvl-localize-bag", [*LB, "--device", "bogus"], "device", "bogus"),
    C("cvl-localize-bag", [*LB, "--params-file", "{t}/nope.yaml"], "nope.yaml"),
    C("cvl-localize-bag", [*LB, "--params-file", "{broken_params}"], "broken_params.yaml"),
    C("cvl-localize-bag", [*LB, "--heading-source", "compass"], "--heading-source"),
    C("cvl-localize-bag", ["{garbage}", "--out", "{t}/lb"], "garbage"),
    C("cvl-localize-bag", ["{badmeta}", "--out", "{t}/lb"], "badmeta"),
    C("cvl-localize-bag", ["{bag}", "--out", "{bag}/report"], "--out", "input"),
    C("cvl-localize-bag", ["{bag}", "--out", "{foreign}"], "--out", "foreign"),
    C("cvl-localize-bag", [*LB, "--image-topic", "/nope"], "/nope"),
    C("cvl-localize-bag", ["{ros1novel}", "--out", "{t}/lb"], "novel.bag", "/kitti/oxts/gps/vel"),
    C("cvl-localize-bag", ["{ros1cut}", "--out", "{t}/lb"], "cut.bag", "cannot read"),
    C("cvl-localize-bag", ["{ros1bag}", "--out", "{ros1bag}"], "--out", "input"),
]


# ------------------------------------------------------------------ running a case
def _fill(argv, w) -> list:
    return [a.format(**w) for a in argv]


def run_main(cli: str, argv: list) -> tuple[int | None, str]:
    """``main(argv)`` of ``cli`` in-process: (exit status, stderr); an exception that escapes
    is returned as status None with its traceback in the text (a failure, never raised)."""
    mod = importlib.import_module(CLIS[cli][0])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = mod.main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:  # any escape is what the test reports
            traceback.print_exc(file=err)
            code = None
    return code, err.getvalue()


def check_error(cli: str, code, err: str, needles=()) -> None:
    """Exit 2, stderr = [usage text] + one ``<prog>: error: ...`` line naming the needles."""
    prog = CLIS[cli][1]
    assert "Traceback" not in err, err
    assert code == 2, f"exit status {code!r}, stderr:\n{err}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert last.startswith(f"{prog}: error: "), err
    head = lines[:-1]
    assert not head or head[0].startswith("usage: "), f"stderr does not start with the error " \
        f"(or argparse's usage):\n{err}"
    assert all(ln.startswith(("usage: ", " ")) for ln in head), err
    for n in needles:
        assert n in last, f"{n!r} not named in: {last}"


@pytest.mark.parametrize(("cli", "argv", "needles"), CASES)
def test_user_error_is_one_line_exit_2(cli, argv, needles, w, request):
    if cli in ROS_CLIS:
        from conftest import ROS_SKIP_REASON

        if ROS_SKIP_REASON is not None:
            pytest.skip(ROS_SKIP_REASON)
    argv = _fill(argv, w)
    before = sorted(p.name for p in Path(w["t"]).iterdir())
    code, err = run_main(cli, argv)
    check_error(cli, code, err, [n.format(**w) if "{" in n else n for n in needles])
    # a refused command leaves nothing behind (no half output folder beside the inputs)
    assert sorted(p.name for p in Path(w["t"]).iterdir()) == before


# ------------------------------------------------------------------ as real processes
SUBPROCESS = [
    C("cvl-train", ["--config", "{broken_yaml}"], "broken YAML"),
    C("cvl-eval", [*EVAL, "--seq", "0"], "--seq"),
    C("cvl-replay", ["{garbage}"], "garbage", marks=pytest.mark.ros),
    C("demo_report", ["--outputs", "{outputs}", "--bag", "{badmeta}", "--out", "{t}/rep"],
      "badmeta"),
    C("cvl-localize-bag", ["{garbage}", "--out", "{t}/lb"], "garbage"),
]


@pytest.mark.parametrize(("cli", "argv", "needles"), SUBPROCESS)
def test_user_error_as_a_process(cli, argv, needles, w):
    r = subprocess.run([sys.executable, "-m", CLIS[cli][0], *_fill(argv, w)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    check_error(cli, r.returncode, r.stderr, needles)


# ------------------------------------------------------------------ consistency
def test_bench_choices_match_the_model():
    from cvl_ros.cli import bench
    from cvl_ros.model.cvlnet import BACKBONES
    from cvl_ros.model.fusion import FUSIONS

    assert tuple(bench.BACKBONES) == tuple(BACKBONES)
    assert tuple(bench.FUSIONS) == tuple(FUSIONS)


def test_result_files_are_replaced_only_when_the_tools_own(tmp_path):
    from cvl_ros.cli import bench, evaluate
    from cvl_ros.outputs import OutputError, check_result_file

    own = tmp_path / "r.json"
    own.write_text(json.dumps({"test2": {"seq4": {"r@1": 1.0}}}))
    (tmp_path / "r.md").write_text("my table")  # beside an own result: replaced with it
    check_result_file(own, tool="cvl-eval", is_own=evaluate.is_eval_result,
                      sidecars=[(tmp_path / "r.md", None)])
    assert not bench.is_bench_result(own)
    with pytest.raises(OutputError, match="not a cvl-bench result"):
        check_result_file(own, tool="cvl-bench", is_own=bench.is_bench_result)
    with pytest.raises(OutputError, match="is the input"):
        check_result_file(own, tool="cvl-eval", is_own=evaluate.is_eval_result, inputs=[own])


def test_train_overwrite_removes_only_its_own_files(tmp_path):
    from cvl_ros.cli import train
    from cvl_ros.cli._args import CliError
    from cvl_ros.outputs import MARKER, read_marker, write_marker

    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    for name in ("config.yaml", "last.safetensors", "epoch1.safetensors", "metrics.csv",
                 "tb/events.out.tfevents.1"):
        (run / name).write_text("old")
    (run / "notes.txt").write_text("mine")
    write_marker(run, "cvl-train", ["config.yaml", "last.safetensors"])
    cfg = {"out_dir": str(run), "data": {"roots": [str(tmp_path / "data")]}, "val": {}}
    with pytest.raises(CliError, match="--resume"):
        train.prepare_run_folder(cfg, resume=False, overwrite=False)
    assert train.prepare_run_folder(cfg, resume=True, overwrite=False) == run
    assert (run / "last.safetensors").read_text() == "old"  # resumed, nothing removed
    train.prepare_run_folder(cfg, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "notes.txt"]
    assert read_marker(run)["tool"] == "cvl-train"
