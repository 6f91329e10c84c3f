"""``cvl-bench``: per-update latency, backbone forward, peak RSS and retrieval time."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cvl_ros.cli._args import device, number, number_list

PROG = "cvl-bench"
BACKBONES = ("mobilenet_v2", "vgg16", "resnet50")
FUSIONS = ("pcsf", "conv2d", "conv3d", "lstm", "attn_conv2d", "attn_conv3d", "attn_lstm")
#: keys every cvl-bench JSON holds (an existing --json is replaced only if it has them)
RESULT_KEYS = {"backbone_forward_ms", "update_ms", "recompute_update_ms",
               "retrieval_ms_per_query", "backbone"}


def _hw(text: str) -> tuple:
    """``HxW`` ground input size, 8-4096 px each."""
    parts = str(text).lower().split("x")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW in pixels, e.g. 128x512, got {text!r}") \
            from None
    if not (8 <= h <= 4096 and 8 <= w <= 4096):
        raise argparse.ArgumentTypeError(f"H and W must be 8-4096 px, got {text!r}")
    return h, w


def is_bench_result(path) -> bool:
    """Whether ``path`` holds a cvl-bench JSON result."""
    from cvl_ros.outputs import read_json

    res = read_json(path)
    return isinstance(res, dict) and RESULT_KEYS <= set(res)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``cvl-bench``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark CVLNet updates (cached vs recomputed frame features) for window "
                    "lengths N, one backbone forward, peak RSS and tile retrieval per query.")
    p.add_argument("--backbone", default="mobilenet_v2", choices=BACKBONES,
                   help="backbone of the random model (default mobilenet_v2)")
    p.add_argument("--checkpoint", default=None,
                   help="benchmark this model (default: a randomly initialised model of "
                        "--backbone with the geometry options below)")
    p.add_argument("--device", type=device, default="cpu",
                   help="auto | cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--json", required=True, dest="json_out",
                   help="output JSON (an existing file is replaced only if cvl-bench wrote it)")
    p.add_argument("--windows", type=number_list(int, 1, 64, max_items=16),
                   default=[1, 4, 8, 16], help="window lengths N, 1-64 (default 1,4,8,16)")
    p.add_argument("--reps", type=number(int, 1, 10000), default=20, metavar="N",
                   help="timed repetitions (median; 1-10000, default 20)")
    p.add_argument("--db-sizes", type=number_list(int, 1, 100_000, max_items=16),
                   default=[100, 1000, 10000],
                   help="tile database sizes, 1-100000 (default 100,1000,10000)")
    p.add_argument("--ground-hw", type=_hw, default=(128, 512), metavar="HxW",
                   help="ground input HxW, 8-4096 px (no checkpoint; default 128x512)")
    p.add_argument("--sat-px", type=number(int, 16, 4096), default=256, metavar="PX")
    p.add_argument("--grid-cells", type=number(int, 2, 256), default=32, metavar="S")
    p.add_argument("--fusion", default="pcsf", choices=FUSIONS,
                   help="sequence fusion of the random model (default pcsf)")
    p.add_argument("--pcsf-layers", type=number(int, 1, 16), default=2, metavar="N",
                   help="attention layers of PCSF (1-16)")
    p.add_argument("--frame-canvas", action="store_true",
                   help="PCSF with per-frame Q/K/V canvases (pcsf_frame_canvas; needs "
                        "--pcsf-layers 1): the window caches each frame's Q/K/V")
    p.add_argument("--threads", type=number(int, 1, 1024), default=None, metavar="N",
                   help="torch CPU threads")
    return p


def main(argv=None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    from cvl_ros.cli._args import CliError, fail, resolve_device
    from cvl_ros.outputs import OutputError, check_result_file

    try:
        check_result_file(args.json_out, tool=PROG, is_own=is_bench_result,
                          inputs=[args.checkpoint])
        dev = resolve_device(args.device)
    except (CliError, OutputError) as exc:
        return fail(PROG, exc)
    import torch

    from cvl_ros.benchmark import run
    from cvl_ros.model.cvlnet import (
        CheckpointError,
        CVLNet,
        CVLNetConfig,
        load_checkpoint,
        resolve_checkpoint,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.checkpoint:
        try:
            model, _ = load_checkpoint(resolve_checkpoint(args.checkpoint))
        except CheckpointError as exc:
            return fail(PROG, f"--checkpoint: {exc}")
    else:
        h, w = args.ground_hw
        try:
            cfg = CVLNetConfig(backbone=args.backbone, pretrained=False, ground_hw=(h, w),
                               sat_px=args.sat_px, grid_cells=args.grid_cells,
                               fusion=args.fusion, pcsf_layers=args.pcsf_layers,
                               pcsf_frame_canvas=args.frame_canvas)
        except ValueError as exc:
            return fail(PROG, exc)
        model = CVLNet(cfg, load_pretrained=False)
    out = run(model, dev, args.windows, args.reps, args.db_sizes,
              backbone=model.config.backbone)
    path = Path(args.json_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(path)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
