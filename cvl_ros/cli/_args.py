"""argparse ``type=`` functions for bounded numbers (finite, in range, clear messages).

A bad value makes argparse print ``cvl-X: error: argument --flag: must be ... , got ...`` to
stderr and exit with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import math
import re
import sys


def number(kind: type = float, low: float | None = None, high: float | None = None,
           low_inclusive: bool = True, unit: str = ""):
    """An argparse ``type=``: a finite ``kind`` (float or int) within ``[low, high]``.

    ``low_inclusive=False`` makes the lower bound strict (``> low``). ``unit`` is shown in the
    message (e.g. ``"m"``).
    """
    what = "an integer" if kind is int else "a number"
    u = f" {unit}" if unit else ""
    def fmt(x):
        return f"{int(x)}" if kind is int and float(x).is_integer() else f"{x:g}"

    lo = "" if low is None else f"{'>=' if low_inclusive else '>'} {fmt(low)}{u}"
    hi = "" if high is None else f"<= {fmt(high)}{u}"
    rule = " and ".join(x for x in (lo, hi) if x)

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not math.isfinite(v) or (low is not None and (v < low or (v == low
                                                                    and not low_inclusive))) \
                or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return v

    parse.__name__ = f"{kind.__name__}"  # argparse names the type in some messages
    return parse


def number_list(kind: type = int, low: float | None = None, high: float | None = None,
                max_items: int = 64, unit: str = ""):
    """An argparse ``type=``: a comma list (``1,4,8``) of :func:`number` values, at least one.

    The list is de-duplicated in order; at most ``max_items`` values.
    """
    one = number(kind, low, high, unit=unit)
    what = "integers" if kind is int else "numbers"

    def parse(text: str):
        items = [s.strip() for s in str(text).split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma list of {what}, got {text!r}")
        if len(items) > max_items:
            raise argparse.ArgumentTypeError(f"at most {max_items} values, got {len(items)}")
        out = []
        for s in items:
            try:
                v = one(s)
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(
                    f"{exc} (in {text!r})" if len(items) > 1 else str(exc)) from None
            if v not in out:
                out.append(v)
        return out

    parse.__name__ = f"{kind.__name__}_list"
    return parse


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def device(text: str) -> str:
    """An argparse ``type=``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (lower-cased)."""
    d = str(text).strip().lower()
    if not _DEVICE.match(d):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return d


class CliError(ValueError):
    """A user error found by a CLI: printed as ``prog: error: <message>``, exit status 2."""


def fail(prog: str, message) -> int:
    """Print ``prog: error: message`` to stderr (one line, no traceback); returns 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def resolve_device(name: str, what: str = "--device") -> str:
    """Torch device of ``name``: ``auto`` is ``cuda`` when available, else ``cpu``.

    A CUDA device that this machine lacks is a :class:`CliError` (these tools do not fall back
    to the CPU silently).
    """
    d = device(name)
    if d == "cpu":
        return d
    import torch

    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise CliError(f"{what} {d}: CUDA is not available on this machine (torch "
                       f"{torch.__version__}); use {what} cpu, or {what} auto to take a GPU "
                       "only when there is one")
    n = torch.cuda.device_count()
    if ":" in d and int(d.split(":")[1]) >= n:
        raise CliError(f"{what} {d}: this machine has {n} CUDA device(s), cuda:0 to "
                       f"cuda:{n - 1}; choose one of them")
    return d


def split_ros_args(argv: list) -> tuple[list, list]:
    """``(tool arguments, ROS arguments)`` of a command line without the program name.

    Only what follows ``--ros-args`` is ROS's (``rclpy.init(args=[prog, *ros])``): a
    ``FROM:=TO`` value of the tool's own ``--remap`` is never taken for a legacy ROS remap rule.
    """
    argv = list(argv)
    if "--ros-args" not in argv:
        return argv, []
    i = argv.index("--ros-args")
    rest = argv[i:]
    end = rest.index("--") if "--" in rest else len(rest)
    return argv[:i] + rest[end + 1:], rest[:end]
