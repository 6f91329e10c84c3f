"""``cvl-calibrate``: fit the likelihood temperature of a model by NLL on validation drives.

A thin CLI over :func:`cvl_ros.calibration.fit_temperature`; writes
``<checkpoint stem>.calibration.json`` beside the checkpoint (docs/calibration.md).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path

from cvl_ros import params as P
from cvl_ros.cli._args import number


def _temperatures(text: str) -> list[float]:
    parse = number(float, 0.0, 1000.0, low_inclusive=False)
    try:
        out = sorted({parse(t.strip()) for t in text.split(",") if t.strip()})
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"temperatures: {exc}") from None
    if not 1 <= len(out) <= 20:
        raise argparse.ArgumentTypeError("give 1 to 20 comma-separated temperatures")
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cvl-calibrate``."""
    p = argparse.ArgumentParser(
        prog="cvl-calibrate",
        description="Fit localizer.score_temperature by the NLL of the true position under the "
        "filter's posterior, over validation drives (bags with ground truth + their tile "
        "databases); write it beside the checkpoint.")
    p.add_argument("--checkpoint", required=True, help="model .safetensors (or its folder)")
    p.add_argument("--run", nargs=2, action="append", metavar=("BAG", "DB"), required=True,
                   help="a validation bag (written by cvl-kitti2bag, with ground truth) and the "
                   "tile database of its town; repeat for several drives")
    p.add_argument("--temperatures", type=_temperatures, default="0.1,0.2,0.4,0.7,1,1.5,2.5",
                   help="candidate temperatures, comma-separated (default: %(default)s)")
    p.add_argument("--params-file", default=None,
                   help="node params file for the other settings (default: the shipped one)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a calibration this tool wrote earlier")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``cvl-calibrate``; returns the exit status."""
    args = build_parser().parse_args(argv)

    def fail(msg: str) -> int:
        print(f"cvl-calibrate: error: {msg}", file=sys.stderr)
        return 2

    from cvl_ros import offline
    from cvl_ros.calibration import (
        CalibrationError,
        calibration_path,
        fit_temperature,
        save_calibration,
    )
    from cvl_ros.model.cvlnet import CheckpointError, resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(args.checkpoint)
        values = offline.load_params(args.params_file)
    except (CheckpointError, P.ParameterError) as exc:
        return fail(str(exc))
    from cvl_ros.cli._args import CliError
    from cvl_ros.cli._bags import READ_ERRORS, check_bag
    from cvl_ros.offline import BagTopics

    for bag, db in args.run:
        try:  # corrupt storage, broken metadata, missing topics: one line naming the bag
            check_bag(bag, "--run bag", topics=[BagTopics().image, BagTopics().odom])
        except CliError as exc:
            return fail(str(exc))
        if not (Path(db) / "manifest.json").is_file():
            return fail(f"{db} is not a tile database (no manifest.json); build it with "
                        "cvl-build-db")
    target = calibration_path(ckpt)
    if target.exists() and not args.overwrite:
        return fail(f"{target} exists; pass --overwrite to replace it")
    try:
        cal = fit_temperature(ckpt, [tuple(r) for r in args.run], args.temperatures, values,
                              progress=not args.quiet)
    except (CalibrationError, FileNotFoundError, RuntimeError, *READ_ERRORS) as exc:
        return fail(str(exc))
    cal.date = datetime.date.today().isoformat()
    cal.command = "cvl-calibrate " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print("score_temperature  mean_nll  coverage95  median_error_m  fixes/estimates")
    for r in cal.table:
        cov = "-" if r["coverage95"] is None else f"{r['coverage95']:.2f}"
        med = "-" if r["median_error_m"] is None else f"{r['median_error_m']:.2f}"
        mark = "  <- fitted" if r["score_temperature"] == cal.score_temperature else ""
        print(f"{r['score_temperature']:>17g}  {r['mean_nll']:8.3f}  {cov:>10}  {med:>14}  "
              f"{r['fixes']}/{r['estimates']}{mark}")
    try:
        path = save_calibration(cal, ckpt, overwrite=args.overwrite)
    except FileExistsError as exc:
        return fail(str(exc))
    except OSError as exc:  # a read-only model folder: the fit is printed above, nothing lost
        return fail(f"cannot write {target} ({exc.strerror}); copy the model to a writable "
                    "folder and pass it as --checkpoint")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
