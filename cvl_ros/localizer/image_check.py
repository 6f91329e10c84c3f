"""Is there anything to localise with in this image? (a covered, blinded or broken camera).

A blank (lens cap, black or white frame), mostly saturated, pure-noise or striped image still
produces a score map, and the filter would turn its arg-max into a confident fix. These images
are refused before they reach the model: the frame is rejected with the reason (counted in the
node's ``/diagnostics`` and in ``cvl-localize-bag``'s ``skipped``), no estimate is made, and the
belief is only predicted with odometry until a usable image arrives. That is the documented
degraded state; nothing is published as a fix from such an image.

The statistics are computed on the grey image reduced to at most 256 pixels wide. Thresholds
are deliberately loose: the 40 frames sampled from the demo drive have a grey standard
deviation of 26-57, at most 1.8 % saturated pixels, neighbouring-pixel correlation >= 0.90 and
at most 70 % of the variance explained by row or column means (measured 2026-12-07 with
``test/test_image_check.py``'s statistics on ``demo_out/town``).
"""

from __future__ import annotations

import cv2
import numpy as np

#: Grey-level standard deviation below which an image is blank [grey levels of 255].
MIN_CONTRAST = 4.0
#: Share of pixels at 0-2 or 253-255 above which an image is saturated [fraction].
MAX_SATURATED_FRACTION = 0.6
#: Smallest correlation of horizontally and vertically neighbouring pixels (noise: ~0).
MIN_NEIGHBOUR_CORRELATION = 0.3
#: Largest share of the variance explained by row or by column means (stripes, bars: ~1).
MAX_ONE_AXIS_SHARE = 0.98


def image_statistics(rgb: np.ndarray) -> dict[str, float]:
    """The statistics the check uses (grey image reduced to <= 256 px wide)."""
    g = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float64)
    if g.shape[1] > 256:
        h = max(8, round(g.shape[0] * 256 / g.shape[1]))
        g = cv2.resize(g, (256, h), interpolation=cv2.INTER_AREA)
    gc = g - g.mean()
    var = float((gc ** 2).mean())
    out = {"contrast": float(np.sqrt(var)),
           "saturated_fraction": float(np.mean((g <= 2.0) | (g >= 253.0)))}
    if var < 1e-9:
        out.update(neighbour_correlation=0.0, one_axis_share=0.0)
        return out
    ch = float((gc[:, 1:] * gc[:, :-1]).mean()) / var
    cv = float((gc[1:] * gc[:-1]).mean()) / var
    rows = float((gc.mean(axis=1) ** 2).mean()) / var
    cols = float((gc.mean(axis=0) ** 2).mean()) / var
    out.update(neighbour_correlation=min(ch, cv), one_axis_share=max(rows, cols))
    return out


def image_problem(rgb: np.ndarray) -> str | None:
    """Why the image carries nothing to localise with, or None when it looks like a scene."""
    s = image_statistics(rgb)
    if s["contrast"] < MIN_CONTRAST:
        return (f"blank image (grey std {s['contrast']:.1f} < {MIN_CONTRAST:g}): covered, "
                "black/white or over/under-exposed camera")
    if s["saturated_fraction"] > MAX_SATURATED_FRACTION:
        return (f"saturated image ({100 * s['saturated_fraction']:.0f} % of pixels at 0 or 255)")
    if s["neighbour_correlation"] < MIN_NEIGHBOUR_CORRELATION:
        return (f"image is noise (neighbouring-pixel correlation "
                f"{s['neighbour_correlation']:.2f} < {MIN_NEIGHBOUR_CORRELATION:g}): broken "
                "camera or transport")
    if s["one_axis_share"] > MAX_ONE_AXIS_SHARE:
        return (f"image varies along one axis only ({100 * s['one_axis_share']:.0f} % of its "
                "variance in row or column means: stripes or bars, not a scene)")
    return None
