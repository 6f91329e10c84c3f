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
def resolve_checkpoint(path) -> Path:
    """A checkpoint file, or a folder's ``model.safetensors`` / ``best`` / ``last`` / only file.

    Unresolvable folders return the folder itself (``load_checkpoint`` then reports it).
    """
    p = Path(path)
    if p.is_dir():
        for name in ("model.safetensors", "checkpoint.safetensors", "best.safetensors",
                     "last.safetensors"):
            if (p / name).is_file():
                return p / name
        files = sorted(f for f in p.glob("*.safetensors") if not f.name.endswith(".optim"
                                                                                ".safetensors"))
        if len(files) == 1:
            return files[0]
    return p


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


def train(cfg: dict, resume: bool = False, progress: bool = True) -> dict:
    """Train according to ``cfg``; returns a summary dict (steps, epochs, last loss, paths)."""
    from cvl_ros.model.cvlnet import load_checkpoint, save_checkpoint

    rank, world, local_rank = dist_info()
    distributed = world > 1
    device = resolve_device(cfg.get("device", "auto"), local_rank)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    if distributed and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    seed = int(cfg.get("seed", 0))
    seed_everything(seed + rank)
    out_dir = Path(cfg["out_dir"])
    is_main = rank == 0
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if distributed:
        torch.distributed.barrier()

    last = out_dir / "last.safetensors"
    state = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "elapsed_s": 0.0, "best": None}
    if resume and last.is_file():
        model, extra = load_checkpoint(last)
        state.update(extra.get("train_state", {}))
        LOG.info("resuming from %s at epoch %d batch %d (step %d)", last, state["epoch"],
                 state["batch_in_epoch"], state["step"])
    else:
        if resume:
            LOG.warning("--resume: no checkpoint at %s, starting fresh", last)
        torch.manual_seed(seed)  # identical initial weights on every rank
        model = build_model(cfg)
    model.to(device)
    model.train()
    mcfg = model.config
    ocfg = cfg["optim"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=float(ocfg["lr"]),
                                 weight_decay=float(ocfg.get("weight_decay", 0.0)))
    if resume and last.is_file() and (out_dir / "last.optim.safetensors").is_file():
        load_optimizer(out_dir / "last.optim.safetensors", optimizer)
    ddp = model
    if distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)

    dataset, positions = build_train_data(cfg, mcfg)
    bs = int(ocfg.get("batch_size", 8))
    min_sep = float(cfg["data"].get("min_separation_m", 22.0))
    epochs = int(ocfg.get("epochs", 5))
    max_steps = ocfg.get("max_steps")
    max_minutes = ocfg.get("max_minutes")
    log_every = int(cfg["log"].get("every", 10))
    metrics_log = MetricsLog(out_dir / "metrics.csv", bool(cfg["log"].get("tensorboard")))\
        if is_main else None

    stop = _StopFlag()
    old_handlers = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old_handlers[sig] = signal.signal(sig, stop)
        except ValueError:  # not in the main thread
            pass

    def checkpoint(tag: str | None = None):
        if not is_main:
            return
        extra = {"train_state": dict(state), "train_config": cfg}
        save_checkpoint(last, model, extra)
        save_optimizer(out_dir / "last.optim.safetensors", optimizer)
        if tag:
            save_checkpoint(out_dir / f"{tag}.safetensors", model, extra)
        LOG.info("checkpoint %s (epoch %d, step %d)", last, state["epoch"], state["step"])

    t_start = time.monotonic() - float(state.get("elapsed_s", 0.0))
    num_workers = int(cfg["data"].get("num_workers", 0))
    interrupted = False
    last_row: dict = {}
    budget_hit = False
    try:
        while state["epoch"] < epochs and not budget_hit:
            epoch = int(state["epoch"])
            batches = epoch_batches(positions, bs, min_sep, seed, epoch)
            if distributed:
                n = len(batches) // world
                batches = batches[rank::world][:n]
            start = int(state["batch_in_epoch"])
            todo = batches[start:]
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=todo, collate_fn=collate, num_workers=num_workers,
                persistent_workers=False)
            bar = None
            if progress and is_main:
                from tqdm import tqdm

                bar = tqdm(total=len(batches), initial=start, desc=f"epoch {epoch + 1}/{epochs}",
                           unit="batch", dynamic_ncols=True)
            run_loss = []
            for batch in loader:
                batch = augment_batch(to_device(batch, device), cfg["data"].get("augment"))
                pred = ddp(batch)
                losses = model.loss(pred, batch)
                optimizer.zero_grad(set_to_none=True)
                losses["total"].backward()
                if ocfg.get("grad_clip"):
                    torch.nn.utils.clip_grad_norm_(params, float(ocfg["grad_clip"]))
                optimizer.step()
                state["step"] += 1
                state["batch_in_epoch"] += 1
                state["elapsed_s"] = time.monotonic() - t_start
                loss_v = float(losses["total"].detach())
                if not math.isfinite(loss_v):
                    raise TrainingError(f"non-finite loss at step {state['step']}")
                run_loss.append(loss_v)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{np.mean(run_loss[-20:]):.4f}")
                if is_main and (state["step"] % log_every == 0 or state["step"] == 1):
                    mets = model.metrics(pred, batch)
                    last_row = {"step": state["step"], "epoch": epoch,
                                "time_s": round(state["elapsed_s"], 2),
                                "lr": optimizer.param_groups[0]["lr"],
                                "loss": float(np.mean(run_loss[-log_every:]))}
                    last_row.update({k: float(v.detach()) if torch.is_tensor(v) else float(v)
                                     for k, v in losses.items() if k != "total"})
                    last_row.update({k: float(v) for k, v in mets.items()})
                    metrics_log.write(last_row)
                    if bar is None:
                        LOG.info("epoch %d step %d (%d/%d) loss %.4f batch-r@1 %.2f %.0fs", epoch,
                                 state["step"], state["batch_in_epoch"], len(batches),
                                 last_row["loss"], last_row.get("recall@1_batch", float("nan")),
                                 state["elapsed_s"])
                if max_steps is not None and state["step"] >= int(max_steps):
                    budget_hit = True
                if max_minutes is not None and state["elapsed_s"] >= 60.0 * float(max_minutes):
                    budget_hit = True
                if distributed:
                    flag = torch.tensor([float(stop.requested), float(budget_hit)])
                    torch.distributed.all_reduce(flag)
                    stop.requested = bool(flag[0] > 0)
                    budget_hit = bool(flag[1] > 0)
                if stop.requested or budget_hit:
                    break
            if bar is not None:
                bar.close()
            if stop.requested:
                raise KeyboardInterrupt
            if state["batch_in_epoch"] >= len(batches):
                state["epoch"] = epoch + 1
                state["batch_in_epoch"] = 0
                checkpoint(f"epoch{epoch + 1}")
                _maybe_validate(cfg, model, state, out_dir, is_main, checkpoint)
            else:
                checkpoint()
    except KeyboardInterrupt:
        interrupted = True
        LOG.warning("interrupted (%s): saving checkpoint", stop.signal or "Ctrl-C")
        checkpoint()
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        if metrics_log is not None:
            metrics_log.close()
        if distributed and torch.distributed.is_initialized():
            try:
                torch.distributed.barrier()
            except Exception:
                pass
    return {"steps": state["step"], "epochs": state["epoch"], "interrupted": interrupted,
            "checkpoint": str(last), "last": last_row, "out_dir": str(out_dir)}


def _maybe_validate(cfg, model, state, out_dir, is_main, checkpoint) -> None:
    vcfg = cfg.get("val") or {}
    if not is_main or not vcfg.get("root"):
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
        checkpoint("best")
