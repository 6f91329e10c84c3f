"""``cvl-train``: train CVLNet from a YAML config (see ``cvl_ros.training``).

User errors (a missing or broken config, a key of the wrong type, a bad device, an
``out_dir`` that is not cvl-train's) are one line on stderr, ``cvl-train: error: ...``, exit
status 2, before any work. The run folder (``out_dir``) follows docs/output-safety.md: it is
new or empty, or an earlier cvl-train run (``.cvl-output.json`` marker, or recognised by its
``config.yaml``); an existing run is continued with ``--resume`` or started again with
``--overwrite`` (which removes only the run's own files), never silently mixed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

PROG = "cvl-train"


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``cvl-train``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train CVLNet (exhaustive mini-batches, distance-aware sampler, Adam). "
                    "Launch with torchrun for DDP (gloo on CPU, NCCL on CUDA).")
    p.add_argument("--config", required=True, help="YAML config (see config/train_synth.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. optim.lr=3e-4 data.roots=[data/a,data/b]")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from <out_dir>/last.safetensors (+ optimiser state)")
    again.add_argument("--overwrite", action="store_true",
                       help="start an existing run in out_dir again: its checkpoints, "
                       "metrics.csv, val.jsonl and tb/ are removed first (only files cvl-train "
                       "wrote)")
    p.add_argument("--no-progress", action="store_true", help="disable the tqdm bar")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def load_checked_config(path, overrides, prog: str = PROG, resume: bool = False) -> dict:
    """``training.load_config`` with every user error as a ``CliError`` (file, YAML, types).

    ``resume``: a run that continues from ``<out_dir>/last.safetensors`` does not need its
    ``init_from`` checkpoint any more.
    """
    import yaml

    from cvl_ros.cli._args import CliError
    from cvl_ros.cli._train_config import check_config
    from cvl_ros.training import TrainingError, load_config

    p = Path(path)
    if not p.is_file():
        raise CliError(f"--config {path}: no such file" if not p.exists() else
                       f"--config {path} is a folder; give a YAML file (e.g. "
                       "config/train_synth.yaml)")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"override {item!r} is not key=value (e.g. optim.lr=3e-4)")
        try:
            yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise CliError(f"override {item!r}: the value is not valid YAML ({first})") from None
    try:
        cfg = load_config(path, overrides)
    except TrainingError as exc:
        if isinstance(exc.__cause__, yaml.YAMLError):
            mark = getattr(exc.__cause__, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc.__cause__, "problem", None) or "syntax error"
            raise CliError(f"--config {path}: broken YAML{at}: {problem}; fix the file") \
                from None
        raise CliError(f"--config {path}: {exc}") from None
    out_dir = cfg.get("out_dir")
    resuming = (resume and isinstance(out_dir, str) and out_dir.strip() != ""
                and (Path(out_dir) / "last.safetensors").is_file())
    check_config(cfg, source=f"--config {path}", overrides=overrides, check_init=not resuming)
    return cfg


def prepare_run_folder(cfg: dict, resume: bool, overwrite: bool) -> Path:
    """Check ``out_dir`` (docs/output-safety.md), empty it of the old run with ``overwrite``,
    write its marker; returns it. Raises ``OutputError`` / ``CliError``."""  # noqa: D205, D209
    from cvl_ros.cli._args import CliError
    from cvl_ros.cli._train_config import recognise_run_folder, run_folder_owns
    from cvl_ros.outputs import check_run_folder, mark_run_folder, run_entries

    out = Path(cfg["out_dir"])
    inputs = list(cfg["data"]["roots"]) + [cfg["val"].get("root")]
    state = check_run_folder(out, tool=PROG, owns=run_folder_owns, inputs=inputs,
                             recognise=recognise_run_folder, what="out_dir")
    old = run_entries(out, run_folder_owns) if state == "run" else []
    if old and not resume:
        if not overwrite:
            raise CliError(f"out_dir {out} already holds a cvl-train run "
                           f"({', '.join(e for e in old[:4])}{' ...' if len(old) > 4 else ''}); "
                           "pass --resume to continue it, --overwrite to start it again, or "
                           "set another out_dir (e.g. out_dir=runs/new)")
        for e in sorted(old, reverse=True):  # files first, then tb/ sub-folders
            p = out / e
            if e.endswith("/"):
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists() or p.is_symlink():
                p.unlink()
    mark_run_folder(out, tool=PROG, owns=run_folder_owns)
    return out


def main(argv=None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cvl_ros.cli._args import CliError, fail, resolve_device
    from cvl_ros.outputs import OutputError

    rank0 = int(os.environ.get("RANK", 0)) == 0
    try:
        cfg = load_checked_config(args.config, args.overrides, resume=args.resume)
        try:
            resolve_device(cfg.get("device", "auto"), what="device")
        except CliError as exc:
            raise CliError(f"--config {args.config}: {exc}") from None
        out = prepare_run_folder(cfg, args.resume, args.overwrite) if rank0 else None
    except (CliError, OutputError) as exc:
        return fail(PROG, exc)
    from cvl_ros.cli._train_config import run_folder_owns
    from cvl_ros.model.cvlnet import CheckpointError
    from cvl_ros.outputs import mark_run_folder
    from cvl_ros.training import TrainingError, train

    try:
        summary = train(cfg, resume=args.resume, progress=not args.no_progress)
    except (TrainingError, CheckpointError) as exc:
        return fail(PROG, exc)
    finally:
        if out is not None and out.is_dir():
            mark_run_folder(out, tool=PROG, owns=run_folder_owns)
    print(json.dumps(summary, default=str))
    return 130 if summary.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
