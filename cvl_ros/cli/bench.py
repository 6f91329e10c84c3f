"""``cvl-bench``: per-update latency, backbone forward, peak RSS and retrieval time."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _ints(text: str) -> list:
    return [int(v) for v in str(text).split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``cvl-bench``."""
    p = argparse.ArgumentParser(
        prog="cvl-bench",
        description="Benchmark CVLNet updates (cached vs recomputed frame features) for window "
                    "lengths N, one backbone forward, peak RSS and tile retrieval per query.")
    p.add_argument("--backbone", default="mobilenet_v2", help="mobilenet_v2 | vgg16 | resnet50")
    p.add_argument("--checkpoint", default=None,
                   help="benchmark this model (default: a randomly initialised model of "
                        "--backbone with the geometry options below)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--json", required=True, dest="json_out", help="output JSON")
    p.add_argument("--windows", default="1,4,8,16", help="window lengths N")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions (median; >= 20)")
    p.add_argument("--db-sizes", default="100,1000,10000", help="tile database sizes")
    p.add_argument("--ground-hw", default="128x512", help="ground input HxW (no checkpoint)")
    p.add_argument("--sat-px", type=int, default=256)
    p.add_argument("--grid-cells", type=int, default=32)
    p.add_argument("--fusion", default="pcsf",
                   help="sequence fusion of the random model (pcsf, conv2d, conv3d, lstm, "
                        "attn_conv2d, attn_conv3d, attn_lstm)")
    p.add_argument("--pcsf-layers", type=int, default=2, help="attention layers of PCSF")
    p.add_argument("--frame-canvas", action="store_true",
                   help="PCSF with per-frame Q/K/V canvases (pcsf_frame_canvas; needs "
                        "--pcsf-layers 1): the window caches each frame's Q/K/V")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def main(argv=None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
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
    if args.device == "cuda" and not torch.cuda.is_available():
        print("cvl-bench: error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    if args.checkpoint:
        try:
            model, _ = load_checkpoint(resolve_checkpoint(args.checkpoint))
        except CheckpointError as exc:
            print(f"cvl-bench: error: {exc}", file=sys.stderr)
            return 2
    else:
        h, w = (int(v) for v in args.ground_hw.lower().split("x"))
        try:
            cfg = CVLNetConfig(backbone=args.backbone, pretrained=False, ground_hw=(h, w),
                               sat_px=args.sat_px, grid_cells=args.grid_cells,
                               fusion=args.fusion, pcsf_layers=args.pcsf_layers,
                               pcsf_frame_canvas=args.frame_canvas)
        except ValueError as exc:
            print(f"cvl-bench: error: {exc}", file=sys.stderr)
            return 2
        model = CVLNet(cfg, load_pretrained=False)
    out = run(model, args.device, _ints(args.windows), max(1, args.reps), _ints(args.db_sizes),
              backbone=model.config.backbone)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
