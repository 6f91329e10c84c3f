"""``cvl-eval``: Test-1 / Test-2 recall and position error for several sequence lengths.

``--json`` (and the ``.md`` table and plots beside it) is replaced only when it is an earlier
cvl-eval result (docs/output-safety.md); any other existing file is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from cvl_ros.cli._args import device, number, number_list

PROG = "cvl-eval"
PROTOCOLS = ("test1", "test2")


def _protocols(text: str) -> list:
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    bad = [s for s in items if s not in PROTOCOLS]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"expected test1, test2 or test1,test2, got {text!r}")
    return list(dict.fromkeys(items))


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``cvl-eval``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate a CVLNet checkpoint on a KITTI-CVL tree (real or synthetic): "
                    "recall@1/5/10/100 at 10 m, r@1 at 25 m, median/mean top-1 error.")
    p.add_argument("--checkpoint", required=True, help="model .safetensors (cvl-train output)")
    p.add_argument("--data", required=True, help="KITTI-CVL root with test1/test2 split files")
    p.add_argument("--protocol", default=["test2"], type=_protocols,
                   help="test1 | test2 | test1,test2 (default test2)")
    p.add_argument("--seq", default=[1, 4, 8, 16], type=number_list(int, 1, 64, max_items=16),
                   help="comma-separated sequence lengths, 1-64 (default 1,4,8,16)")
    p.add_argument("--json", required=True, dest="json_out", help="output JSON path; a .md "
                   "table and *_recall_vs_seq.png / *_error_cdf.png are written beside it "
                   "(an existing file is replaced only if cvl-eval wrote it)")
    p.add_argument("--frame-stride", type=number(int, 1, 1000), default=None, metavar="K",
                   help="frames between sequence members, 1-1000 (default: the checkpoint's "
                        "training config, else 3)")
    p.add_argument("--max-queries", type=number(int, 1, 10**9), default=None, metavar="N",
                   help="evaluate an evenly spaced subset of queries (faster)")
    p.add_argument("--device", type=device, default="cpu",
                   help="auto | cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--threads", type=number(int, 1, 1024), default=None, metavar="N",
                   help="torch CPU threads")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def is_eval_result(path) -> bool:
    """Whether ``path`` holds a cvl-eval JSON result (``{"test2": {"seq4": {"r@1": ...}}}``)."""
    from cvl_ros.outputs import read_json

    res = read_json(path)
    return (isinstance(res, dict) and bool(res) and set(res) <= set(PROTOCOLS)
            and all(isinstance(per, dict) and per
                    and all(re.fullmatch(r"seq\d+", k) and isinstance(v, dict) and "r@1" in v
                            for k, v in per.items()) for per in res.values()))


def _is_eval_table(path) -> bool:
    return "| protocol | seq | r@1 |" in Path(path).read_text(errors="replace")


def check_inputs(args) -> None:
    """--data and --json (docs/output-safety.md) before any model is loaded; ``CliError``."""
    from cvl_ros.cli._args import CliError
    from cvl_ros.outputs import check_result_file
    from cvl_ros.tiles import SPLIT_FILES

    data = Path(args.data)
    if not data.is_dir():
        raise CliError(f"--data {data} is not a folder; give a KITTI-CVL root (e.g. written "
                       "by cvl-synth)")
    for proto in args.protocol:
        if not (data / SPLIT_FILES[proto]).is_file():
            raise CliError(f"--data {data} has no {SPLIT_FILES[proto]} (protocol {proto}); "
                           "give a KITTI-CVL root with that split, or another --protocol")
    out = Path(args.json_out)
    sidecars = [(out.with_suffix(".md"), _is_eval_table)]
    if not args.no_plots:
        stem = out.with_suffix("")
        sidecars += [(stem.with_name(stem.name + s), None)
                     for s in ("_recall_vs_seq.png", "_error_cdf.png")]
    check_result_file(out, tool=PROG, is_own=is_eval_result, inputs=[args.checkpoint, data],
                      sidecars=sidecars)


def main(argv=None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from cvl_ros.cli._args import CliError, fail, resolve_device
    from cvl_ros.outputs import OutputError

    try:
        check_inputs(args)
        dev = resolve_device(args.device)
    except (CliError, OutputError) as exc:
        return fail(PROG, exc)
    import torch

    from cvl_ros.evaluation import evaluate, write_reports
    from cvl_ros.model.cvlnet import CheckpointError, load_checkpoint, resolve_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, extra = load_checkpoint(resolve_checkpoint(args.checkpoint), map_location=dev)
    except CheckpointError as exc:
        return fail(PROG, f"--checkpoint: {exc}")
    stride = args.frame_stride
    if stride is None:
        stride = int(((extra.get("train_config") or {}).get("data") or {}).get("frame_stride", 3))
    try:
        results, details = evaluate(model, args.data, args.protocol, args.seq,
                                    max_queries=args.max_queries, frame_stride=stride,
                                    progress=not args.no_progress, return_details=True)
    except (FileNotFoundError, ValueError) as exc:
        return fail(PROG, f"--data {args.data}: {exc}")
    paths = write_reports(results, details, args.json_out, plots=not args.no_plots,
                          title=f"{args.checkpoint} on {args.data}")
    print(open(paths["markdown"]).read())
    print(json.dumps(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
