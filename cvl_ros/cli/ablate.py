"""``cvl-ablate``: train and evaluate the paper's ablation set within a budget.

Every variant starts from the same base config (``--config``), changes one thing, trains for
the same budget (``--steps`` and/or ``--minutes`` per variant) with the same seed, and is
evaluated on ``--data`` (Test-1 and Test-2, sequence ``--seq``, default 4). Tables shaped like
the paper's are written to ``<out>/ablation.md`` (and all numbers to ``<out>/ablation.json``):

* Table 2 (view projection and fusion): w/o GVP (U-Net), w/o GVP (resize), direct Conv2D /
  Conv3D / LSTM, attention Conv2D / Conv3D / LSTM, PCSF with per-frame Q/K/V canvases, ours
  (GVP + PCSF of the base config), with model size;
* Table 3 (backbone): MobileNetV2, ResNet-50, VGG16;
* Table 4 (similarity matching): w/o SSM, w/o U, ours.

Finished variants (``<out>/<variant>/eval.json``) are reused, so an interrupted run resumes.
``--out`` follows docs/output-safety.md: a new or empty folder, or an earlier cvl-ablate output
(``.cvl-output.json`` marker, or recognised by its ``ablation.json``); a folder of anything else
is refused. User errors (config, flags, --data) are reported before any training, exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from cvl_ros.cli._args import number

PROG = "cvl-ablate"

# the other fusions and projections replace PCSF's per-frame canvases (pcsf_frame_canvas)
_NO_CANVAS = {"pcsf_frame_canvas": False}
VARIANTS: dict[str, tuple[str, str, dict]] = {
    # name: (table, row label, model overrides)
    "unet": ("2", "Ours w/o GVP (U-Net)", {"projection": "unet", **_NO_CANVAS}),
    "no_gvp": ("2", "Ours w/o GVP", {"projection": "none", **_NO_CANVAS}),
    "conv2d": ("2", "Direct fusion: Conv2D", {"fusion": "conv2d", **_NO_CANVAS}),
    "conv3d": ("2", "Direct fusion: Conv3D", {"fusion": "conv3d", **_NO_CANVAS}),
    "lstm": ("2", "Direct fusion: LSTM", {"fusion": "lstm", **_NO_CANVAS}),
    "attn_conv2d": ("2", "Attention fusion: Conv2D", {"fusion": "attn_conv2d", **_NO_CANVAS}),
    "attn_conv3d": ("2", "Attention fusion: Conv3D", {"fusion": "attn_conv3d", **_NO_CANVAS}),
    "attn_lstm": ("2", "Attention fusion: LSTM", {"fusion": "attn_lstm", **_NO_CANVAS}),
    "pcsf_canvas": ("2", "PCSF, 1 layer, per-frame Q/K/V canvases",
                    {"fusion": "pcsf", "projection": "gvp", "pcsf_layers": 1,
                     "pcsf_frame_canvas": True}),
    "ours": ("2,3,4", "Ours (GVP + PCSF + SSM + U)", {}),
    "mobilenet_v2": ("3", "MobileNetV2", {"backbone": "mobilenet_v2"}),
    # a weights path in the base config names MobileNetV2's file: the other backbones look for
    # their own ImageNet files by name (random initialisation, warned, when absent)
    "resnet50": ("3", "ResNet-50", {"backbone": "resnet50", "pretrained_path": None}),
    "vgg16": ("3", "VGG16", {"backbone": "vgg16", "pretrained_path": None}),
    "no_ssm": ("4", "Ours w/o SSM", {"use_ssm": False}),
    "no_u": ("4", "Ours w/o U", {"use_uncertainty": False}),
}
TABLE_TITLES = {
    "2": "Table 2: view projection and sequence fusion (sequence = {seq})",
    "3": "Table 3: backbones (sequence = {seq})",
    "4": "Table 4: scene-prior driven similarity matching (sequence = {seq})",
}


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``cvl-ablate``."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0][2:])
    p.add_argument("--config", required=True, help="base cvl-train YAML config")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="base config overrides")
    p.add_argument("--data", required=True, help="evaluation KITTI-CVL root (test1/test2)")
    p.add_argument("--out", required=True, help="output folder (new or empty, or an earlier "
                   "cvl-ablate output, which is resumed)")
    p.add_argument("--tables", default="2,3,4", help="which tables (2,3,4)")
    p.add_argument("--variants", default=None,
                   help=f"comma list to run (default: all of the tables); known: "
                        f"{','.join(VARIANTS)}")
    p.add_argument("--steps", type=number(int, 1, 10**9), default=None, metavar="N",
                   help="optimiser steps per variant")
    p.add_argument("--minutes", type=number(float, 0.0, 10**6, low_inclusive=False),
                   default=None, metavar="MIN", help="training minutes per variant")
    p.add_argument("--seq", type=number(int, 1, 64), default=4, metavar="N",
                   help="evaluation sequence length (1-64, default 4)")
    p.add_argument("--max-queries", type=number(int, 1, 10**9), default=None, metavar="N",
                   help="queries per protocol")
    p.add_argument("--no-progress", action="store_true")
    return p


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def tables_markdown(results: dict, tables, seq: int) -> str:
    """Paper-shaped Markdown tables from ``{variant: {"params_m", "test1", "test2"}}``."""
    out = []
    for t in tables:
        out += [f"### {TABLE_TITLES[t].format(seq=seq)}", ""]
        head = ["variant"] + (["model size"] if t == "2" else [])
        head += [f"{p} {k}" for p in ("Test-1", "Test-2") for k in ("r@1", "r@5", "r@10",
                                                                      "r@100")]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for name, (tabs, label, _) in VARIANTS.items():
            if t not in tabs.split(",") or name not in results:
                continue
            r = results[name]
            row = [label] + ([f"{r.get('params_m', 0):.2f}M"] if t == "2" else [])
            for proto in ("test1", "test2"):
                rec = (r.get(proto) or {})
                row += [_fmt(rec.get(k)) for k in ("r@1", "r@5", "r@10", "r@100")]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def ablation_owns(entry: str) -> bool:
    """Whether ``entry`` of ``--out`` is a name cvl-ablate writes (tables, variant runs)."""
    from cvl_ros.cli._train_config import run_folder_owns

    if entry in ("ablation.json", "ablation.md"):
        return True
    head, _, rest = entry.partition("/")
    return head in VARIANTS and (rest in ("", "eval.json") or run_folder_owns(rest))


def recognise_ablation(folder: Path) -> set:
    """Entries of a markerless ``--out`` of an earlier cvl-ablate (its ``ablation.json``)."""
    from cvl_ros.outputs import read_json, run_entries

    res = read_json(Path(folder) / "ablation.json")
    if not isinstance(res, dict) or not set(res) <= set(VARIANTS):
        return set()
    return set(run_entries(folder, ablation_owns))


def _prepare(args):
    """Every user error before any training: ``(tables, variants, base config, out)``."""
    from cvl_ros.cli._args import CliError, resolve_device
    from cvl_ros.cli.train import load_checked_config
    from cvl_ros.outputs import check_run_folder, mark_run_folder
    from cvl_ros.tiles import SPLIT_FILES

    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    if not tables or any(t not in TABLE_TITLES for t in tables):
        raise CliError(f"--tables must be among 2,3,4 (e.g. 2,4), got {args.tables!r}")
    if args.variants:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown or not names:
            raise CliError(f"--variants: unknown {', '.join(unknown) or repr(args.variants)}; "
                           f"known: {', '.join(VARIANTS)}")
    else:
        names = [n for n, (tabs, _, _) in VARIANTS.items()
                 if set(tabs.split(",")) & set(tables)]
    if args.steps is None and args.minutes is None:
        raise CliError("give a budget per variant: --steps N and/or --minutes M")
    data = Path(args.data)
    if not data.is_dir():
        raise CliError(f"--data {data} is not a folder; give a KITTI-CVL root with "
                       "test1/test2 split files")
    for proto in ("test1", "test2"):
        if not (data / SPLIT_FILES[proto]).is_file():
            raise CliError(f"--data {data} has no {SPLIT_FILES[proto]}; give a KITTI-CVL root "
                           "with test1/test2 split files")
    base = load_checked_config(args.config, args.overrides, prog=PROG)
    try:
        resolve_device(base.get("device", "auto"), what="device")
    except CliError as exc:
        raise CliError(f"--config {args.config}: {exc}") from None
    out = Path(args.out)
    check_run_folder(out, tool=PROG, owns=ablation_owns, inputs=[data, *base["data"]["roots"]],
                     recognise=recognise_ablation)
    mark_run_folder(out, tool=PROG, owns=ablation_owns)
    return tables, names, base, out


def main(argv=None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from cvl_ros.cli._args import CliError, fail
    from cvl_ros.outputs import OutputError, mark_run_folder

    try:
        tables, names, base, out = _prepare(args)
    except (CliError, OutputError) as exc:
        return fail(PROG, exc)
    try:
        return _run(args, argv, tables, names, base, out)
    finally:
        mark_run_folder(out, tool=PROG, owns=ablation_owns)


def _run(args, argv, tables, names, base, out) -> int:
    from cvl_ros.cli._args import fail
    from cvl_ros.evaluation import evaluate
    from cvl_ros.model.cvlnet import load_checkpoint
    from cvl_ros.outputs import read_json
    from cvl_ros.training import TrainingError, deep_update, train

    results = {}
    done_by_model: dict = {}
    for name in names:
        vdir = out / name
        eval_path = vdir / "eval.json"
        old = read_json(eval_path)
        if isinstance(old, dict) and "test1" in old and "test2" in old:
            results[name] = old
            done_by_model[json.dumps(deep_update(base, {"model": VARIANTS[name][2]})["model"],
                                     sort_keys=True)] = name
            continue
        _, label, mover = VARIANTS[name]
        cfg = deep_update(base, {"model": mover, "out_dir": str(vdir), "val": {"root": None}})
        key = json.dumps(cfg["model"], sort_keys=True)
        if key in done_by_model:  # e.g. the base backbone row of Table 3 is "ours"
            results[name] = dict(results[done_by_model[key]], label=label,
                                 same_as=done_by_model[key])
            continue
        done_by_model[key] = name
        cfg["optim"]["max_steps"] = args.steps
        cfg["optim"]["max_minutes"] = args.minutes
        cfg["optim"]["epochs"] = max(int(cfg["optim"].get("epochs", 5)), 1000)
        t0 = time.time()
        try:
            summary = train(cfg, resume=True, progress=not args.no_progress)
        except TrainingError as exc:
            return fail(PROG, f"variant {name}: {exc}")
        model, _ = load_checkpoint(vdir / "last.safetensors")
        params = sum(p.numel() for p in model.parameters()) / 1e6
        try:
            res = evaluate(model, args.data, ["test1", "test2"], [args.seq],
                           max_queries=args.max_queries,
                           frame_stride=int(cfg["data"].get("frame_stride", 3)),
                           progress=not args.no_progress)
        except (FileNotFoundError, ValueError) as exc:
            return fail(PROG, f"--data {args.data}: {exc}")
        rec = {"label": label, "params_m": params, "steps": summary["steps"],
               "train_s": round(time.time() - t0, 1),
               "test1": res["test1"][f"seq{args.seq}"], "test2": res["test2"][f"seq{args.seq}"]}
        eval_path.write_text(json.dumps(rec, indent=2))
        results[name] = rec
        (out / "ablation.json").write_text(json.dumps(results, indent=2))
    (out / "ablation.json").write_text(json.dumps(results, indent=2))
    budget = ", ".join(x for x in (f"{args.steps} steps" if args.steps else "",
                                   f"{args.minutes} min" if args.minutes else "") if x)
    md = (f"Budget per variant: {budget}; evaluation data: {args.data}; "
          f"command: cvl-ablate {' '.join(argv if argv is not None else sys.argv[1:])}\n\n"
          + tables_markdown(results, tables, args.seq))
    (out / "ablation.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
