"""``cvl-eval``: Test-1 / Test-2 recall and position error for several sequence lengths."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``cvl-eval``."""
    p = argparse.ArgumentParser(
        prog="cvl-eval",
        description="Evaluate a CVLNet checkpoint on a KITTI-CVL tree (real or synthetic): "
                    "recall@1/5/10/100 at 10 m, r@1 at 25 m, median/mean top-1 error.")
    p.add_argument("--checkpoint", required=True, help="model .safetensors (cvl-train output)")
    p.add_argument("--data", required=True, help="KITTI-CVL root with test1/test2 split files")
    p.add_argument("--protocol", default="test2",
                   help="test1 | test2 | test1,test2 (default test2)")
    p.add_argument("--seq", default="1,4,8,16", help="comma-separated sequence lengths")
    p.add_argument("--json", required=True, dest="json_out", help="output JSON path; a .md "
                   "table and *_recall_vs_seq.png / *_error_cdf.png are written beside it")
    p.add_argument("--frame-stride", type=int, default=None,
                   help="frames between sequence members (default: the checkpoint's training "
                        "config, else 3)")
    p.add_argument("--max-queries", type=int, default=None,
                   help="evaluate an evenly spaced subset of queries (faster)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from cvl_ros.evaluation import evaluate, write_reports
    from cvl_ros.model.cvlnet import CheckpointError, load_checkpoint, resolve_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        seqs = [int(s) for s in str(args.seq).split(",") if s.strip()]
    except ValueError:
        print(f"cvl-eval: error: --seq must be integers like 1,4,8,16, got {args.seq!r}",
              file=sys.stderr)
        return 2
    try:
        model, extra = load_checkpoint(resolve_checkpoint(args.checkpoint),
                                       map_location=args.device)
    except CheckpointError as exc:
        print(f"cvl-eval: error: {exc}", file=sys.stderr)
        return 2
    stride = args.frame_stride
    if stride is None:
        stride = int(((extra.get("train_config") or {}).get("data") or {}).get("frame_stride", 3))
    try:
        results, details = evaluate(model, args.data, args.protocol, seqs,
                                    max_queries=args.max_queries, frame_stride=stride,
                                    progress=not args.no_progress, return_details=True)
    except (FileNotFoundError, ValueError) as exc:
        print(f"cvl-eval: error: {exc}", file=sys.stderr)
        return 2
    paths = write_reports(results, details, args.json_out, plots=not args.no_plots,
                          title=f"{args.checkpoint} on {args.data}")
    print(open(paths["markdown"]).read())
    print(json.dumps(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
