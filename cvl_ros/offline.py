"""The offline bag runner: the node's ``Localizer`` fed from a bag, as fast as the machine allows.

Everything between the messages and the localizer is the node's: the same
:class:`~cvl_ros.localizer.frontend.FrameAssembler` pairs images with camera_info, odometry,
IMU heading and static TF; the same :mod:`cvl_ros.params` validates the params file and maps it
to the ``LocalizerConfig``; the same :func:`~cvl_ros.model.cvlnet.resolve_checkpoint` finds the
model. Only the clock differs: an image is assembled once odometry at or after its stamp has
been read (the node waits up to ``odom_wait_s`` for it instead).

Library functions under the thin CLI ``cvl-localize-bag`` (:mod:`cvl_ros.cli.localize_bag`):
:func:`load_localizer`, :func:`run_localizer_on_bag`, :func:`expected_keyframes`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvl_ros import params as P
from cvl_ros.localizer.frontend import FrameAssembler, FrontendConfig, GpsPrior, Rejection
from cvl_ros.report import EstimateRow
from cvl_ros.ros import bags

#: The params file the runner reads when none is given (the node's shipped one).
DEFAULT_PARAMS = Path(__file__).resolve().parents[1] / "config" / "localize.yaml"


@dataclass
class BagTopics:
    """Topics read by the offline runner (defaults: the names cvl-kitti2bag writes)."""

    image: str = bags.TOPIC_IMAGE
    camera_info: str = bags.TOPIC_CAMERA_INFO
    odom: str = bags.TOPIC_ODOM
    imu: str | None = bags.TOPIC_IMU
    fix: str | None = bags.TOPIC_FIX
    tf_static: str = bags.TOPIC_TF_STATIC


@dataclass
class RunResult:
    """What :func:`run_localizer_on_bag` produced."""

    rows: list[EstimateRow]
    images: int
    frames_used: int
    skipped: dict[str, int]
    wall_s: float
    bag_duration_s: float
    gps_priors_used: int = 0
    estimates: list = field(default_factory=list)
    """The core ``Estimate`` objects (same order as ``rows``)."""
    first_image_ns: int | None = None
    """Stamp of the bag's first image read (where the run starts)."""


def load_params(params_file: str | Path | None = None,
                overrides: dict[str, object] | None = None) -> dict[str, object]:
    """Validated node parameters of a params file (default: the shipped one) + overrides.

    Raises :class:`cvl_ros.params.ParameterError` exactly where the node refuses to configure.
    """
    values = P.read_params_file(params_file) if params_file else (
        P.read_params_file(DEFAULT_PARAMS) if DEFAULT_PARAMS.is_file() else {})
    values = dict(values)
    values.update(overrides or {})
    return P.validate(values)


def load_localizer(values: dict[str, object], checkpoint: str | Path | None = None,
                   db: str | Path | None = None, device: str | None = None) -> tuple:
    """(Localizer, checkpoint file, database folder) configured from validated ``values``.

    ``checkpoint``/``db``/``device`` replace the parameters when given. Raises
    ``CheckpointError``/``FileNotFoundError``/``ValueError`` with what is missing.
    """
    from cvl_ros.calibration import calibration_in_use
    from cvl_ros.database import TileDatabase
    from cvl_ros.localizer import Localizer
    from cvl_ros.model.cvlnet import load_checkpoint, resolve_checkpoint
    from cvl_ros.resources import BUILD_DB_HINT, resolve_path

    ckpt = resolve_checkpoint(checkpoint or values["checkpoint_path"])
    db_given = str(db or values["database_path"] or P.DEFAULT_DATABASE)
    dbp = resolve_path(db_given)
    if dbp is None:
        raise FileNotFoundError(f"tile database '{db_given}' not found; {BUILD_DB_HINT}")
    model, _ = load_checkpoint(ckpt)
    calibration = calibration_in_use(ckpt, model.model_hash(),
                                     values.get("localizer.score_temperature") or 0.0)
    database = TileDatabase.open(dbp, expected_model_hash=model.model_hash())
    loc = Localizer(model, database, P.localizer_config(values, calibration),
                    device=device or str(values["device"]))
    return loc, ckpt, dbp


def _deserialize(store: Any, m: bags.BagMessage) -> Any:
    return store.deserialize_cdr(m.data, m.msgtype)


def run_localizer_on_bag(localizer: Any, bag: str | Path, *, topics: BagTopics | None = None,
                         frontend: FrontendConfig | None = None, use_gps_prior: bool = True,
                         progress: bool = True, max_images: int | None = None,
                         gps_init_only: bool = False) -> RunResult:
    """Feed a bag's images (+ odometry, heading, extrinsics, GPS prior) to ``localizer``.

    ``frontend`` is the node's front-end configuration (:func:`cvl_ros.params.frontend_config`
    of the same parameters). Images wait until odometry at or after their stamp is read, then
    the :class:`FrameAssembler` builds the frame exactly as in the node. As the node, every GPS
    fix is offered as a prior (the localizer takes it while it has no belief, so it also
    re-initialises a lost localizer); ``gps_init_only`` offers fixes only until the first one
    is accepted: GPS initialises, and a lost localizer must find itself by global search.
    """
    topics = topics or BagTopics()
    store = bags.make_typestore()
    avail = bags.bag_topics(bag)
    if topics.image not in avail:
        raise ValueError(f"{bag}: no image topic {topics.image!r} (topics: {sorted(avail)})")
    if topics.odom not in avail:
        raise ValueError(f"{bag}: no odometry topic {topics.odom!r} (topics: {sorted(avail)})")
    wanted = [t for t in (topics.image, topics.camera_info, topics.odom, topics.imu, topics.fix,
                          topics.tf_static) if t and t in avail]
    n_images = avail[topics.image][1]
    if max_images is not None:
        n_images = min(n_images, max_images)
    fe = FrameAssembler(frontend or FrontendConfig())
    pending: list[Any] = []
    rows: list[EstimateRow] = []
    estimates: list = []
    skipped: dict[str, int] = {}
    used = seen = priors = 0
    first_image_ns: int | None = None

    def skip(r: Rejection | None) -> None:
        if r is not None:
            skipped[r.reason] = skipped.get(r.reason, 0) + 1

    def process(img_msg: Any) -> None:
        nonlocal used
        from cvl_ros.localizer import InvalidFrameError

        went_back = fe.note_image_stamp(bags_stamp_ns(img_msg))
        if went_back:
            localizer.reset(went_back)
        frame = fe.assemble(img_msg)
        if isinstance(frame, Rejection):
            skip(frame)
            return
        try:
            est = localizer.add_frame(frame)
        except InvalidFrameError as exc:
            skip(Rejection("invalid frame", f"frame rejected: {exc}"))
            return
        used += 1
        if est is not None:
            estimates.append(est)
            rows.append(EstimateRow.from_estimate(est))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_images, desc="localize-bag", unit="img")
    t_start = time.perf_counter()
    first_ns = last_ns = None
    for m in bags.iter_bag(bag, wanted):
        first_ns = m.stamp_ns if first_ns is None else first_ns
        last_ns = m.stamp_ns
        if m.topic == topics.image:
            if seen >= n_images:
                break
            seen += 1
            pending.append(_deserialize(store, m))
            if first_image_ns is None:
                first_image_ns = bags_stamp_ns(pending[-1])
        elif m.topic == topics.tf_static:
            for r in fe.add_tf_static(_deserialize(store, m)):
                skip(r)
        elif m.topic == topics.camera_info:
            skip(fe.add_camera_info(_deserialize(store, m)))
        elif m.topic == topics.odom:
            skip(fe.add_odometry(_deserialize(store, m)))
        elif m.topic == topics.imu:
            skip(fe.add_imu(_deserialize(store, m)))
        elif m.topic == topics.fix and use_gps_prior and not (gps_init_only and priors):
            # as the node: every fix is offered; the localizer uses it while it has no belief
            prior = fe.gps_prior(_deserialize(store, m))
            if isinstance(prior, GpsPrior):
                priors += bool(localizer.set_gps_prior(prior.lat_deg, prior.lon_deg,
                                                       prior.sigma_m, prior.T_odom_body))
            else:
                skip(prior)
        # images whose stamp the odometry now covers
        while pending and fe.odometry_reaches(bags_stamp_ns(pending[0])):
            process(pending.pop(0))
            if bar is not None:
                bar.update(1)
    for img in pending:
        process(img)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t_start
    dur = ((last_ns or 0) - (first_ns or 0)) / 1e9
    return RunResult(rows, seen, used, skipped, wall, dur, priors, estimates, first_image_ns)


def bags_stamp_ns(msg: Any) -> int:
    """Header stamp of a deserialised message [ns]."""
    from cvl_ros.ros.convert import stamp_to_ns

    return stamp_to_ns(msg.header.stamp)


def expected_keyframes(bag: str | Path, values: dict[str, object] | None = None, *,
                       topics: BagTopics | None = None) -> list[int]:
    """Image stamps that the localizer's keyframe rule selects on a bag.

    Odometry is interpolated at each image stamp by the front end and the keyframe decision is
    :meth:`cvl_ros.localizer.SlidingWindow.is_keyframe` itself (the one keyframe rule).
    """
    import numpy as np

    from cvl_ros.localizer.window import Keyframe, SlidingWindow

    values = values or P.defaults()
    topics = topics or BagTopics()
    cfg = P.localizer_config(values)
    fe = FrameAssembler(P.frontend_config(values))
    window = SlidingWindow(1, cfg.keyframe_distance_m, cfg.keyframe_interval_s)
    store = bags.make_typestore()
    out: list[int] = []
    pending: list[int] = []

    def decide(stamp: int) -> None:
        try:
            T = fe.odom.lookup(stamp, fe.config.odom_max_extrapolation_s)
        except LookupError:
            return
        if window.is_keyframe(stamp, T):
            window.push(Keyframe(stamp, None, np.eye(3), T, np.eye(4)))
            out.append(stamp)

    for m in bags.iter_bag(bag, [topics.image, topics.odom]):
        if m.topic == topics.odom:
            fe.add_odometry(_deserialize(store, m))
        else:
            pending.append(bags_stamp_ns(_deserialize(store, m)))
        while pending and fe.odometry_reaches(pending[0]):
            decide(pending.pop(0))
    for stamp in pending:
        decide(stamp)
    return out
