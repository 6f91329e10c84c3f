"""argparse ``type=`` functions for bounded numbers (finite, in range, clear messages).

A bad value makes argparse print ``cvl-X: error: argument --flag: must be ... , got ...`` to
stderr and exit with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import math


def number(kind: type = float, low: float | None = None, high: float | None = None,
           low_inclusive: bool = True, unit: str = ""):
    """An argparse ``type=``: a finite ``kind`` (float or int) within ``[low, high]``.

    ``low_inclusive=False`` makes the lower bound strict (``> low``). ``unit`` is shown in the
    message (e.g. ``"m"``).
    """
    what = "an integer" if kind is int else "a number"
    u = f" {unit}" if unit else ""
    lo = "" if low is None else f"{'>=' if low_inclusive else '>'} {low:g}{u}"
    hi = "" if high is None else f"<= {high:g}{u}"
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
