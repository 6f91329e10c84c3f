"""Calibration of the likelihood: the score temperature, fitted by NLL, kept beside the model.

The filter turns score maps into a likelihood ``exp((s - s_max) / T)``; with ``T`` too small a
window's evidence is over-trusted (consecutive windows share N-1 frames, and the scores of a
wrong place are often close to the right one's), the posterior is too narrow and the reported
covariance a broken promise. ``T`` is therefore not hand-set: :func:`fit_temperature` runs the
node's offline pipeline (:mod:`cvl_ros.offline`) over validation drives for a set of candidate
temperatures and keeps the one with the smallest mean negative log-likelihood of the true
position under the filter's posterior (a proper scoring rule: it rewards a sharp posterior only
where it is right). Fitting the temperature of the whole filter also absorbs the overlap of
consecutive windows, whose evidence would otherwise be counted N times.

The result is written as ``<checkpoint stem>.calibration.json`` next to the checkpoint (the
shipped one: ``models/cvlnet_demo/model.calibration.json``), with the model hash it belongs to,
the drives it was fitted on, the whole NLL table and the command. The node and
``cvl-localize-bag`` use it when ``localizer.score_temperature`` is 0 (the default);
:func:`load_calibration` refuses a calibration of another model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cvl_ros.report import CHI2_2D_95, mahalanobis2

#: Tool name written into calibration files (only such files are ever overwritten).
TOOL = "cvl-calibrate"
#: Density floor of the NLL [1/m^2]: a true position outside the posterior grid costs
#: -log(1e-9) = 20.7 nats, so one lost update cannot dominate the mean without bound.
MIN_DENSITY_PER_M2 = 1e-9


class CalibrationError(ValueError):
    """A calibration file that cannot be used (unreadable, invalid, or of another model)."""


@dataclass
class Calibration:
    """A fitted score temperature and how it was obtained."""

    score_temperature: float
    model_hash: str
    fitted_on: list[str] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)
    date: str = ""
    command: str = ""
    tool: str = TOOL


def calibration_path(checkpoint: str | os.PathLike) -> Path:
    """``<folder>/<stem>.calibration.json`` of a checkpoint file."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".calibration.json")


def load_calibration(checkpoint: str | os.PathLike, model_hash: str | None = None
                     ) -> Calibration | None:
    """The calibration beside ``checkpoint``, None when there is none.

    Raises :class:`CalibrationError` for an unreadable or invalid file, or one fitted for
    another model (``model_hash`` given and different).
    """
    path = calibration_path(checkpoint)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        cal = Calibration(**{k: data[k] for k in Calibration.__dataclass_fields__ if k in data})
        t = float(cal.score_temperature)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CalibrationError(f"calibration {path} is unreadable ({exc}); re-fit it with "
                               "cvl-calibrate or delete it") from None
    if not (math.isfinite(t) and t > 0):
        raise CalibrationError(f"calibration {path}: score_temperature {t} is not a positive "
                               "number; re-fit it with cvl-calibrate")
    if model_hash is not None and cal.model_hash != model_hash:
        raise CalibrationError(f"calibration {path} was fitted for model {cal.model_hash}, not "
                               f"{model_hash}; re-fit it with cvl-calibrate for this checkpoint")
    cal.score_temperature = t
    return cal


def calibration_in_use(checkpoint: str | os.PathLike, model_hash: str,
                       score_temperature: float) -> Calibration | None:
    """The calibration the localizer reads: only when ``localizer.score_temperature`` is 0.

    An explicit temperature (a user's override, ``cvl-calibrate``'s candidates) needs none, so
    a stale calibration of an earlier model beside a new checkpoint does not stop its re-fit.
    """
    return None if float(score_temperature) else load_calibration(checkpoint, model_hash)


def save_calibration(cal: Calibration, checkpoint: str | os.PathLike,
                     overwrite: bool = False) -> Path:
    """Write the calibration beside the checkpoint (atomically).

    An existing file is replaced only with ``overwrite`` and only when it is a calibration this
    tool wrote; anything else is refused (``FileExistsError``).
    """
    path = calibration_path(checkpoint)
    if path.exists():
        try:
            ours = json.loads(path.read_text()).get("tool") == TOOL
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise FileExistsError(f"{path} exists and was not written by {TOOL}; move it away")
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(cal), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def posterior_nll(est, truth_en) -> float:
    """-log density [1/m^2] of the true map position under the estimate's posterior grid.

    NaN when the estimate has no posterior or the truth is not finite; the density is floored
    at :data:`MIN_DENSITY_PER_M2` (outside the grid included).
    """
    prob = getattr(est, "posterior", None)
    center = getattr(est, "posterior_center_en", None)
    cell = float(getattr(est, "posterior_cell_m", float("nan")))
    e, n = float(truth_en[0]), float(truth_en[1])
    if prob is None or center is None or not (math.isfinite(cell) and math.isfinite(e)
                                              and math.isfinite(n)):
        return float("nan")
    half = (prob.shape[0] - 1) / 2.0
    col = int(round(half + (e - float(center[0])) / cell))
    row = int(round(half - (n - float(center[1])) / cell))
    p = float(prob[row, col]) if 0 <= row < prob.shape[0] and 0 <= col < prob.shape[1] else 0.0
    return -math.log(max(p / (cell * cell), MIN_DENSITY_PER_M2))


def score_run(localizer, estimates: list, truth_latlon: tuple[np.ndarray, np.ndarray]) -> dict:
    """NLL, 95 % coverage and errors of one run against the truth at the estimates' stamps."""
    nll, d2, err = [], [], []
    for est, la, lo in zip(estimates, *truth_latlon):
        if not (math.isfinite(la) and math.isfinite(lo)):
            continue
        te, tn = localizer.latlon_to_map(float(la), float(lo))
        v = posterior_nll(est, (te, tn))
        if math.isfinite(v):
            nll.append(v)
        if est.has_fix:
            d2.append(mahalanobis2((te - est.east_m, tn - est.north_m), est.covariance_xy))
            err.append(math.hypot(est.east_m - te, est.north_m - tn))
    d2 = [v for v in d2 if not math.isnan(v)]  # inf (no positive-definite covariance): outside
    return {"estimates": len(estimates), "scored": len(nll),
            "nll_sum": float(np.sum(nll)) if nll else 0.0,
            "fixes": len(err), "inside95": int(sum(v <= CHI2_2D_95 for v in d2)),
            "errors_m": err}


#: Mean NLLs within this fraction of the smallest are not told apart by the validation drives:
#: the largest temperature among them is kept. A sharper likelihood than the data can justify
#: is what makes a global search lock onto a look-alike place (measured: docs/calibration.md).
NLL_TIE_FRACTION = 0.01


def choose(table: list[dict]) -> dict:
    """The row of the largest temperature whose mean NLL is within ``NLL_TIE_FRACTION`` of
    the smallest."""  # noqa: D205, D209
    best = min(r["mean_nll"] for r in table)
    tied = [r for r in table if r["mean_nll"] <= best + NLL_TIE_FRACTION * abs(best)]
    return max(tied, key=lambda r: r["score_temperature"])


def fit_temperature(checkpoint, runs: list[tuple[str, str]], temperatures: list[float],
                    values: dict, progress: bool = True) -> Calibration:
    """Run the offline pipeline for every temperature over every (bag, database) and keep the
    temperature of smallest mean posterior NLL; temperatures within :data:`NLL_TIE_FRACTION`
    of it count as ties, and the largest of them (the humblest) is kept (:func:`choose`)."""  # noqa: D205, D209
    from cvl_ros import offline
    from cvl_ros import params as P
    from cvl_ros.report import ground_truth_from_bag

    truths = {}
    for bag, _ in runs:
        gt = ground_truth_from_bag(bag)
        if gt is None:
            raise CalibrationError(f"{bag} has no ground truth (/kitti/ground_truth/pose or a "
                                   "GPS fix): a calibration needs the true positions")
        truths[bag] = gt
    table = []
    model_hash = ""
    for t in temperatures:
        vals = P.validate(dict(values, **{"localizer.score_temperature": float(t)}))
        agg = {"score_temperature": float(t), "estimates": 0, "scored": 0, "nll_sum": 0.0,
               "fixes": 0, "inside95": 0, "errors_m": []}
        for bag, db in runs:
            loc, ckpt, _ = offline.load_localizer(vals, checkpoint, db)
            model_hash = loc.model.model_hash()
            res = offline.run_localizer_on_bag(loc, bag, frontend=P.frontend_config(vals),
                                               use_gps_prior=bool(vals["use_gps_prior"]),
                                               progress=progress)
            lat, lon = truths[bag].at([e.stamp_ns for e in res.estimates])
            s = score_run(loc, res.estimates, (lat, lon))
            for k in ("estimates", "scored", "nll_sum", "fixes", "inside95"):
                agg[k] += s[k]
            agg["errors_m"] += s["errors_m"]
        errs = agg.pop("errors_m")
        agg["mean_nll"] = agg["nll_sum"] / agg["scored"] if agg["scored"] else float("inf")
        agg["coverage95"] = agg["inside95"] / agg["fixes"] if agg["fixes"] else None
        agg["median_error_m"] = float(np.median(errs)) if errs else None
        table.append(agg)
    best = choose(table)
    return Calibration(score_temperature=best["score_temperature"], model_hash=model_hash,
                       fitted_on=[str(b) for b, _ in runs], table=table)
