"""``cvl-train``: train CVLNet from a YAML config (see ``cvl_ros.training``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``cvl-train``."""
    p = argparse.ArgumentParser(
        prog="cvl-train",
        description="Train CVLNet (exhaustive mini-batches, distance-aware sampler, Adam). "
                    "Launch with torchrun for DDP (gloo on CPU, NCCL on CUDA).")
    p.add_argument("--config", required=True, help="YAML config (see config/train_synth.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. optim.lr=3e-4 data.roots=[data/a,data/b]")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out_dir>/last.safetensors (+ optimiser state)")
    p.add_argument("--no-progress", action="store_true", help="disable the tqdm bar")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv=None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cvl_ros.training import TrainingError, load_config, train

    try:
        cfg = load_config(args.config, args.overrides)
        summary = train(cfg, resume=args.resume, progress=not args.no_progress)
    except TrainingError as exc:
        print(f"cvl-train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, default=str))
    return 130 if summary.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
