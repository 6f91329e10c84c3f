"""Training loop behind ``cvl-train``: config, data, optimiser, checkpoints, DDP.

One YAML config holds everything (see ``config/train_synth.yaml``)::

    seed: 0
    device: auto            # auto | cpu | cuda
    threads: 2              # torch intra-op threads (CPU)
    out_dir: runs/synth     # checkpoints, metrics.csv, config.yaml, train.log
    model: {...}            # CVLNetConfig fields
    data:
      roots: [data/town_a]  # one or more KITTI-CVL trees (several towns are concatenated)
      split: train
      seq_len: 4
      frame_stride: 3
      min_separation_m: 22.0
      num_workers: 0
      augment: null         # or {brightness: 0.3, contrast: 0.3, saturation: 0.3,
                            #     channel_gain: 0.1}: colour jitter, drawn independently for
                            #     the ground sequence (same for all its frames) and the tile
    optim:
      lr: 1.0e-4
      weight_decay: 5.0e-5
      batch_size: 8
      epochs: 5
      max_steps: null       # stop after this many optimiser steps (budget)
      max_minutes: null     # or after this much wall time
      grad_clip: null
    val:                    # optional quick evaluation after each epoch (rank 0)
      root: null
      protocol: test1
      seq_len: 4
      max_queries: 200
    log:
      every: 10             # CSV row every N steps
      tensorboard: true     # when torch.utils.tensorboard is importable

Command-line ``key=value`` overrides use dotted keys (``optim.lr=3e-4``), values parsed as YAML.

Batches are exhaustive mini-batches drawn by ``DistanceAwareBatchSampler`` (samples >= 22 m
apart, so no tile is a false negative of another sample in the batch). Batch order is a pure
function of ``(seed, epoch)``, so ``--resume`` continues inside an epoch by skipping the batches
already done. Under ``torchrun`` (``WORLD_SIZE > 1``) each rank takes every WORLD_SIZE-th batch
of the same order and gradients are averaged by DistributedDataParallel (gloo on CPU, NCCL on
CUDA); only rank 0 writes files.

Checkpoints: ``<out_dir>/last.safetensors`` (``cvl_ros.model.cvlnet.save_checkpoint``; the
training state is in its ``extra``) plus ``last.optim.safetensors`` (optimiser tensors, no
pickle), after every epoch and when interrupted (Ctrl-C or SIGTERM); ``epoch<N>.safetensors``
after each epoch; ``best.safetensors`` when a validation set is configured.

Longer than 700 lines: the training loop's named steps, colour augmentation and the resumable
checkpoint/optimiser state in one module, since resume must restore exactly what the steps save.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

LOG = logging.getLogger("cvl_ros.training")

DEFAULTS: dict = {
    "seed": 0,
    "device": "auto",
    "threads": None,
    "out_dir": "runs/train",
    "init_from": None,
    "model": {},
    "data": {
        "roots": [],
        "split": "train",
        "seq_len": 4,
        "frame_stride": 3,
        "min_separation_m": 22.0,
        "num_workers": 0,
        "max_samples": None,
        "augment": None,
    },
    "optim": {
        "lr": 1.0e-4,
        "weight_decay": 5.0e-5,
        "batch_size": 8,
        "epochs": 5,
        "max_steps": None,
        "max_minutes": None,
        "grad_clip": None,
    },
    "val": {"root": None, "protocol": "test1", "seq_len": 4, "max_queries": 200},
    "log": {"every": 10, "tensorboard": True},
}


class TrainingError(RuntimeError):
    """Bad training configuration or data."""


# ---------------------------------------------------------------------- config
def deep_update(base: dict, upd: dict) -> dict:
    """Recursively merge ``upd`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for k, v in (upd or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(cfg: dict, overrides) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a config dict."""
    cfg = copy.deepcopy(cfg)
    for item in overrides or []:
        if "=" not in item:
            raise TrainingError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        node = cfg
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return cfg


def load_config(path=None, overrides=None) -> dict:
    """Defaults <- YAML file <- overrides. Relative data paths stay relative to the CWD."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise TrainingError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise TrainingError(f"config {path} must be a mapping")
        cfg = deep_update(cfg, loaded)
    cfg = apply_overrides(cfg, overrides)
    roots = cfg["data"].get("roots")
    if isinstance(roots, str):
        cfg["data"]["roots"] = [roots]
    if "root" in cfg["data"] and cfg["data"]["root"]:
        cfg["data"]["roots"] = list(cfg["data"]["roots"] or []) + [cfg["data"].pop("root")]
    return cfg


# ---------------------------------------------------------------------- environment
def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (0, 1, 0 otherwise)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` picks this rank's GPU."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("device cuda requested but CUDA is not available")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------------- model & data
def build_model(cfg: dict):
    """A ``CVLNet`` from ``cfg['model']``."""
    from cvl_ros.model.cvlnet import CVLNet, CVLNetConfig

    mcfg = dict(cfg.get("model") or {})
    path = mcfg.get("pretrained_path")
    if path and not Path(path).is_file():
        LOG.warning("pretrained weights %s not found: starting from random initialisation", path)
        mcfg["pretrained_path"] = None
        mcfg["pretrained"] = False
    return CVLNet(CVLNetConfig.from_dict(mcfg))


#: Model settings a fine-tune (``init_from``) may change: the loss and the initialisation.
INIT_FROM_MAY_DIFFER = frozenset({"pretrained", "pretrained_path", "backbone_frozen",
                                  "triplet_alpha", "displacement_loss_weight",
                                  "displacement_loss", "displacement_temperature", "extra"})


def init_weights(model, path) -> None:
    """Start ``model`` from the weights of the checkpoint at ``path`` (fine-tuning).

    The checkpoint (a file or its folder) is loaded safely (``load_checkpoint``: safetensors, no
    code). Its network must be this config's network: the same configuration except the loss and
    initialisation settings (``INIT_FROM_MAY_DIFFER``), and the same tensor names and shapes.
    Raises ``CheckpointError`` naming the first difference otherwise.
    """
    from cvl_ros.model.cvlnet import CheckpointError, load_checkpoint, resolve_checkpoint

    src, _ = load_checkpoint(resolve_checkpoint(path))
    want, got_cfg = model.config.to_dict(), src.config.to_dict()
    differ = sorted(k for k in want if k not in INIT_FROM_MAY_DIFFER
                    and want[k] != got_cfg.get(k))
    if differ:
        k = differ[0]
        raise CheckpointError(f"init_from {path}: its model.{k} is {got_cfg.get(k)!r}, the "
                              f"config's {want[k]!r}; give a checkpoint of the same network "
                              "and geometry")
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in src.state_dict().items()}
    if have != got:
        diff = sorted(set(have) ^ set(got)) or sorted(k for k in have if have[k] != got[k])
        raise CheckpointError(f"init_from {path}: its network differs from model: in the config "
                              f"(first difference: {diff[0]}); give a checkpoint of the same "
                              "architecture")
    model.load_state_dict(src.state_dict())
    LOG.info("weights initialised from %s (model hash %s)", path, src.model_hash())


def make_dataset(root, split: str, model_cfg, data_cfg: dict, seq_len: int | None = None):
    """``KittiCVL`` for one root with the geometry of the model config."""
    from cvl_ros.datasets import KittiCVL

    return KittiCVL(
        root,
        split=split,
        seq_len=int(seq_len if seq_len is not None else data_cfg.get("seq_len", 4)),
        frame_stride=int(data_cfg.get("frame_stride", 3)),
        ground_hw=tuple(model_cfg.ground_hw),
        sat_px=int(model_cfg.sat_px),
        coverage_m=float(model_cfg.coverage_m),
    )


def dataset_positions(ds) -> np.ndarray:
    """(N, 2) ENU positions of a dataset's queries without loading images when possible."""
    for name in ("positions_enu", "positions"):
        attr = getattr(ds, name, None)
        if attr is not None:
            pos = attr() if callable(attr) else attr
            return np.asarray(pos, dtype=np.float64).reshape(-1, 2)
    return np.stack([np.asarray(ds[i]["position_enu"], dtype=np.float64) for i in range(len(ds))])


class _Subset(torch.utils.data.Dataset):
    def __init__(self, ds, indices):
        self.ds = ds
        self.indices = list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.ds[self.indices[i]]


def build_train_data(cfg: dict, model_cfg):
    """Concatenated training dataset and the ENU positions for the batch sampler.

    Positions of different roots are offset by 1000 km so that towns never share a batch
    constraint by accident (every town is a separate region).
    """
    dcfg = cfg["data"]
    roots = dcfg.get("roots") or []
    if not roots:
        raise TrainingError("data.roots is empty: give at least one KITTI-CVL tree")
    sets, positions = [], []
    for i, root in enumerate(roots):
        if not Path(root).exists():
            raise TrainingError(f"data root {root} does not exist")
        ds = make_dataset(root, dcfg.get("split", "train"), model_cfg, dcfg)
        if len(ds) == 0:
            raise TrainingError(f"data root {root} has no '{dcfg.get('split')}' samples")
        pos = dataset_positions(ds) + np.array([1.0e6 * i, 0.0])
        sets.append(ds)
        positions.append(pos)
    full = torch.utils.data.ConcatDataset(sets)
    pos = np.concatenate(positions)
    max_samples = dcfg.get("max_samples")
    if max_samples:
        keep = np.random.default_rng(int(cfg["seed"])).permutation(len(full))[:int(max_samples)]
        keep = np.sort(keep)
        full = _Subset(full, keep)
        pos = pos[keep]
    return full, pos


def epoch_batches(positions: np.ndarray, batch_size: int, min_sep: float, seed: int,
                  epoch: int) -> list[list[int]]:
    """The epoch's batch order (a pure function of seed and epoch)."""
    from cvl_ros.datasets import DistanceAwareBatchSampler

    state = torch.random.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        torch.manual_seed(seed * 1000 + epoch)
        np.random.seed((seed * 1000 + epoch) % (2 ** 32))
        random.seed(seed * 1000 + epoch)
        try:
            sampler = DistanceAwareBatchSampler(positions, batch_size, min_separation_m=min_sep,
                                                seed=seed * 1000 + epoch)
        except TypeError:
            sampler = DistanceAwareBatchSampler(positions, batch_size, min_separation_m=min_sep)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        batches = [list(map(int, b)) for b in sampler]
    finally:
        torch.random.set_rng_state(state)
        np.random.set_state(np_state)
        random.setstate(py_state)
    return [b for b in batches if len(b) >= 2]


def collate(samples: list[dict]) -> dict:
    """Stack tensors; keep ids and other non-tensors as lists."""
    out = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        if torch.is_tensor(vals[0]):
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], np.ndarray):
            out[k] = torch.from_numpy(np.stack(vals))
        elif isinstance(vals[0], (float, int)) and not isinstance(vals[0], bool):
            out[k] = torch.tensor(vals, dtype=torch.float32)
        else:
            out[k] = vals
    return out


def to_device(batch: dict, device: torch.device) -> dict:
    """Move tensors of a batch to ``device`` (float64 -> float32)."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.float() if v.dtype == torch.float64 else v
            out[k] = v.to(device, non_blocking=True)
        else:
            out[k] = v
    return out


def color_jitter(x: torch.Tensor, brightness: float = 0.0, contrast: float = 0.0,
                 saturation: float = 0.0, channel_gain: float = 0.0) -> torch.Tensor:
    """Random photometric jitter of RGB images in [0, 1].

    ``x`` is (B, 3, H, W) or (B, N, 3, H, W); one set of factors is drawn per batch row (all N
    frames of a sequence share it, keeping the sequence photo-consistent). Factors are uniform
    in [1 - a, 1 + a] for brightness, contrast, saturation and each channel's gain.
    """
    b = x.shape[0]
    shape = (b,) + (1,) * (x.dim() - 1)
    dev = x.device

    def factor(a):
        return 1.0 + (torch.rand(shape, device=dev) * 2.0 - 1.0) * float(a)

    y = x
    if brightness:
        y = y * factor(brightness)
    if contrast:
        mean = y.mean(dim=tuple(range(1, y.dim())), keepdim=True)
        y = (y - mean) * factor(contrast) + mean
    if saturation:
        w = torch.tensor([0.299, 0.587, 0.114], device=dev).view(3, 1, 1)
        gray = (y * w).sum(dim=-3, keepdim=True)
        y = (y - gray) * factor(saturation) + gray
    if channel_gain:
        gshape = (b,) + (1,) * (x.dim() - 4) + (3, 1, 1)
        y = y * (1.0 + (torch.rand(gshape, device=dev) * 2.0 - 1.0) * float(channel_gain))
    return y.clamp(0.0, 1.0)


def augment_batch(batch: dict, aug: dict | None) -> dict:
    """Apply :func:`color_jitter` to ``images`` and ``sat`` independently (training only)."""
    if not aug:
        return batch
    kw = {k: float(aug.get(k, 0.0)) for k in ("brightness", "contrast", "saturation",
                                              "channel_gain")}
    out = dict(batch)
    out["images"] = color_jitter(batch["images"], **kw)
    out["sat"] = color_jitter(batch["sat"], **kw)
    return out


# ---------------------------------------------------------------------- checkpoints
def save_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """Optimiser state to safetensors (tensors) + JSON metadata (no pickle)."""
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars[f"{pid}.{k}"] = v
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    tmp = str(path) + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """Inverse of :func:`save_optimizer`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state: dict = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for key, v in json.loads(meta.get("scalars", "{}")).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    groups = json.loads(meta["param_groups"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------------- logging
class MetricsLog:
    """Append-only CSV (+ TensorBoard when importable) of training rows."""

    def __init__(self, path: Path, tensorboard: bool):
        self.path = Path(path)
        self.fields: list[str] | None = None
        if self.path.exists():
            with open(self.path, newline="") as f:
                head = f.readline().strip()
            self.fields = head.split(",") if head else None
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.path.parent / "tb"))
            except Exception:
                self.tb = None

    def write(self, row: dict) -> None:
        """Write one row; the first row fixes the columns (unknown keys are dropped)."""
        new = self.fields is None
        if new:
            self.fields = list(row.keys())
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(v) for k, v in row.items()})
        if self.tb is not None:
            step = int(row.get("step", 0))
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.tb is not None:
            self.tb.close()


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


# ---------------------------------------------------------------------- the loop
class _StopFlag:
    def __init__(self):
        self.requested = False
        self.signal = None

    def __call__(self, signum, frame):
        self.requested = True
        self.signal = signum


@dataclass
class _Process:
    """Where this process runs: rank, device, seed and the output folder."""

    rank: int
    world: int
    device: torch.device
    seed: int
    out_dir: Path

    @property
    def distributed(self) -> bool:
        """Whether this is one of several ``torchrun`` ranks."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the one that writes files."""
        return self.rank == 0


@dataclass
class _Run:
    """The state of one training run, built by ``_setup`` and advanced by ``_train_epoch``."""

    cfg: dict
    proc: _Process
    model: torch.nn.Module
    ddp: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    params: list
    dataset: torch.utils.data.Dataset
    positions: np.ndarray
    state: dict  # epoch, batch_in_epoch, step, elapsed_s, best (saved in the checkpoints)
    metrics_log: MetricsLog | None
    stop: _StopFlag = field(default_factory=_StopFlag)
    t_start: float = 0.0
    last_row: dict = field(default_factory=dict)
    budget_hit: bool = False
    interrupted: bool = False

    @property
    def last(self) -> Path:
        """``<out_dir>/last.safetensors``."""
        return self.proc.out_dir / "last.safetensors"

    @property
    def epochs(self) -> int:
        """Epochs to train in all."""
        return int(self.cfg["optim"].get("epochs", 5))


def train(cfg: dict, resume: bool = False, progress: bool = True) -> dict:
    """Train according to ``cfg``; returns a summary dict (steps, epochs, last loss, paths)."""
    run = _setup(cfg, resume)
    old_handlers = _catch_stop_signals(run.stop)
    run.t_start = time.monotonic() - float(run.state.get("elapsed_s", 0.0))
    try:
        while run.state["epoch"] < run.epochs and not run.budget_hit:
            if _train_epoch(run, progress):
                _finish_epoch(run)  # epoch<N>.safetensors, validation (best.safetensors)
            else:  # the step or time budget ended it
                _write_checkpoint(run)
    except KeyboardInterrupt:
        run.interrupted = True
        LOG.warning("interrupted (%s): saving checkpoint", run.stop.signal or "Ctrl-C")
        _write_checkpoint(run)
    finally:
        _close(run, old_handlers)
    return {"steps": run.state["step"], "epochs": run.state["epoch"],
            "interrupted": run.interrupted, "checkpoint": str(run.last), "last": run.last_row,
            "out_dir": str(run.proc.out_dir)}


def _setup(cfg: dict, resume: bool) -> _Run:
    """Process, model and optimiser (fresh or resumed), training data and the metrics log."""
    proc = _setup_process(cfg)
    model, ddp, optimizer, params, state = _setup_model(cfg, proc, resume)
    dataset, positions = build_train_data(cfg, model.config)
    metrics_log = MetricsLog(proc.out_dir / "metrics.csv",
                             bool(cfg["log"].get("tensorboard"))) if proc.is_main else None
    return _Run(cfg, proc, model, ddp, optimizer, params, dataset, positions, state,
                metrics_log)


def _setup_process(cfg: dict) -> _Process:
    """Rank, device, threads, process group, seeds; rank 0 writes ``out_dir/config.yaml``."""
    rank, world, local_rank = dist_info()
    device = resolve_device(cfg.get("device", "auto"), local_rank)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    seed = int(cfg.get("seed", 0))
    seed_everything(seed + rank)
    proc = _Process(rank, world, device, seed, Path(cfg["out_dir"]))
    if proc.is_main:
        proc.out_dir.mkdir(parents=True, exist_ok=True)
        (proc.out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if proc.distributed:
        torch.distributed.barrier()
    return proc


def _setup_model(cfg: dict, proc: _Process, resume: bool):
    """Model, optimiser and training state: resumed from ``last.safetensors``, or fresh.

    Returns (model, its DDP wrapper or the model itself, Adam optimiser, trained parameters,
    training state).
    """
    from cvl_ros.model.cvlnet import load_checkpoint

    last = proc.out_dir / "last.safetensors"
    state = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "elapsed_s": 0.0, "best": None}
    if resume and last.is_file():
        model, extra = load_checkpoint(last)
        state.update(extra.get("train_state", {}))
        LOG.info("resuming from %s at epoch %d batch %d (step %d)", last, state["epoch"],
                 state["batch_in_epoch"], state["step"])
    else:
        if resume:
            LOG.warning("--resume: no checkpoint at %s, starting fresh", last)
        torch.manual_seed(proc.seed)  # identical initial weights on every rank
        model = build_model(cfg)
        if cfg.get("init_from"):
            init_weights(model, cfg["init_from"])
    model.to(proc.device)
    model.train()
    ocfg = cfg["optim"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=float(ocfg["lr"]),
                                 weight_decay=float(ocfg.get("weight_decay", 0.0)))
    if resume and last.is_file() and (proc.out_dir / "last.optim.safetensors").is_file():
        load_optimizer(proc.out_dir / "last.optim.safetensors", optimizer)
    ddp = model
    if proc.distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[proc.device.index] if proc.device.type == "cuda" else None,
            find_unused_parameters=True)
    return model, ddp, optimizer, params, state


def _catch_stop_signals(stop: _StopFlag) -> dict:
    """Route SIGTERM and SIGINT to ``stop`` (main thread only); returns the old handlers."""
    old_handlers = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old_handlers[sig] = signal.signal(sig, stop)
        except ValueError:  # not in the main thread
            pass
    return old_handlers


def _train_epoch(run: _Run, progress: bool) -> bool:
    """Train on the rest of the current epoch; returns whether the epoch is complete.

    Stops early when the step/time budget is spent (``run.budget_hit``), or raises
    KeyboardInterrupt when SIGTERM/SIGINT was received.
    """
    cfg, proc, state = run.cfg, run.proc, run.state
    epoch = int(state["epoch"])
    batches = epoch_batches(run.positions, int(cfg["optim"].get("batch_size", 8)),
                            float(cfg["data"].get("min_separation_m", 22.0)), proc.seed, epoch)
    if proc.distributed:
        n = len(batches) // proc.world
        batches = batches[proc.rank::proc.world][:n]
    start = int(state["batch_in_epoch"])
    loader = torch.utils.data.DataLoader(
        run.dataset, batch_sampler=batches[start:], collate_fn=collate,
        num_workers=int(cfg["data"].get("num_workers", 0)), persistent_workers=False)
    bar = None
    if progress and proc.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(batches), initial=start, desc=f"epoch {epoch + 1}/{run.epochs}",
                   unit="batch", dynamic_ncols=True)
    log_every = int(cfg["log"].get("every", 10))
    run_loss = []
    for batch in loader:
        batch, pred, losses, loss = _train_step(run, batch)
        run_loss.append(loss)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(run_loss[-20:]):.4f}")
        if proc.is_main and (state["step"] % log_every == 0 or state["step"] == 1):
            _log_step(run, epoch, len(batches), pred, batch, losses, run_loss,
                      to_console=bar is None)
        _check_budget(run)
        if run.stop.requested or run.budget_hit:
            break
    if bar is not None:
        bar.close()
    if run.stop.requested:
        raise KeyboardInterrupt
    return state["batch_in_epoch"] >= len(batches)


def _train_step(run: _Run, batch: dict):
    """One optimiser step; returns (batch on the device, augmented; pred; losses; total).

    Raises TrainingError on a non-finite loss.
    """
    cfg, state = run.cfg, run.state
    batch = augment_batch(to_device(batch, run.proc.device), cfg["data"].get("augment"))
    pred = run.ddp(batch)
    losses = run.model.loss(pred, batch)
    run.optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    if cfg["optim"].get("grad_clip"):
        torch.nn.utils.clip_grad_norm_(run.params, float(cfg["optim"]["grad_clip"]))
    run.optimizer.step()
    state["step"] += 1
    state["batch_in_epoch"] += 1
    state["elapsed_s"] = time.monotonic() - run.t_start
    loss = float(losses["total"].detach())
    if not math.isfinite(loss):
        raise TrainingError(f"non-finite loss at step {state['step']}")
    return batch, pred, losses, loss


def _log_step(run: _Run, epoch: int, n_batches: int, pred, batch, losses, run_loss: list,
              to_console: bool) -> None:
    """One metrics row (mean loss since the last row, loss terms, batch metrics)."""
    state = run.state
    log_every = int(run.cfg["log"].get("every", 10))
    mets = run.model.metrics(pred, batch)
    row = {"step": state["step"], "epoch": epoch, "time_s": round(state["elapsed_s"], 2),
           "lr": run.optimizer.param_groups[0]["lr"],
           "loss": float(np.mean(run_loss[-log_every:]))}
    row.update({k: float(v.detach()) if torch.is_tensor(v) else float(v)
                for k, v in losses.items() if k != "total"})
    row.update({k: float(v) for k, v in mets.items()})
    run.metrics_log.write(row)
    run.last_row = row
    if to_console:
        LOG.info("epoch %d step %d (%d/%d) loss %.4f batch-r@1 %.2f %.0fs", epoch,
                 state["step"], state["batch_in_epoch"], n_batches, row["loss"],
                 row.get("recall@1_batch", float("nan")), state["elapsed_s"])


def _check_budget(run: _Run) -> None:
    """Set ``run.budget_hit`` at max_steps / max_minutes; under DDP all ranks stop together."""
    ocfg, state = run.cfg["optim"], run.state
    max_steps, max_minutes = ocfg.get("max_steps"), ocfg.get("max_minutes")
    if max_steps is not None and state["step"] >= int(max_steps):
        run.budget_hit = True
    if max_minutes is not None and state["elapsed_s"] >= 60.0 * float(max_minutes):
        run.budget_hit = True
    if run.proc.distributed:
        flag = torch.tensor([float(run.stop.requested), float(run.budget_hit)])
        torch.distributed.all_reduce(flag)
        run.stop.requested = bool(flag[0] > 0)
        run.budget_hit = bool(flag[1] > 0)


def _finish_epoch(run: _Run) -> None:
    """Count the epoch done, write ``epoch<N>.safetensors`` and validate."""
    epoch = int(run.state["epoch"])
    run.state["epoch"] = epoch + 1
    run.state["batch_in_epoch"] = 0
    _write_checkpoint(run, f"epoch{epoch + 1}")
    _validate(run)


def _write_checkpoint(run: _Run, tag: str | None = None) -> None:
    """``last.safetensors`` + optimiser state (and ``<tag>.safetensors``); rank 0 only."""
    from cvl_ros.model.cvlnet import save_checkpoint

    if not run.proc.is_main:
        return
    extra = {"train_state": dict(run.state), "train_config": run.cfg}
    save_checkpoint(run.last, run.model, extra)
    save_optimizer(run.proc.out_dir / "last.optim.safetensors", run.optimizer)
    if tag:
        save_checkpoint(run.proc.out_dir / f"{tag}.safetensors", run.model, extra)
    LOG.info("checkpoint %s (epoch %d, step %d)", run.last, run.state["epoch"],
             run.state["step"])


def _validate(run: _Run) -> None:
    """Quick evaluation on ``val.root`` (rank 0): a row in val.jsonl, ``best.safetensors``."""
    cfg, model, state, out_dir = run.cfg, run.model, run.state, run.proc.out_dir
    vcfg = cfg.get("val") or {}
    if not run.proc.is_main or not vcfg.get("root"):
        return
    from cvl_ros.evaluation import evaluate

    model.eval()
    try:
        res = evaluate(model, vcfg["root"], vcfg.get("protocol", "test1"),
                       [int(vcfg.get("seq_len", 4))], max_queries=vcfg.get("max_queries"),
                       progress=False, frame_stride=int(cfg["data"].get("frame_stride", 3)))
    finally:
        model.train()
    rec = next(iter(next(iter(res.values())).values()))
    row = {"step": state["step"], "epoch": state["epoch"], **rec}
    with open(out_dir / "val.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    LOG.info("validation after epoch %d: %s", state["epoch"], rec)
    key = rec.get("r@1", 0.0) + 0.01 * rec.get("r@5", 0.0)
    if state.get("best") is None or key > state["best"]:
        state["best"] = key
        _write_checkpoint(run, "best")


def _close(run: _Run, old_handlers: dict) -> None:
    """Restore the signal handlers, flush the metrics log, wait for the other ranks."""
    for sig, h in old_handlers.items():
        signal.signal(sig, h)
    if run.metrics_log is not None:
        run.metrics_log.close()
    if run.proc.distributed and torch.distributed.is_initialized():
        try:
            torch.distributed.barrier()
        except Exception:
            pass
