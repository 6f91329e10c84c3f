"""Checks of a ``cvl-train`` / ``cvl-ablate`` config before any work (types, ranges, paths).

:func:`check_config` raises :class:`~cvl_ros.cli._args.CliError` naming the key, the file or
override it came from, what was expected and what was found, so a typo in a YAML file is one
line on stderr (exit status 2), never a traceback minutes into a run.

:func:`run_folder_owns` / :func:`recognise_run_folder` describe ``cvl-train``'s run folder
(``out_dir``) for :func:`cvl_ros.outputs.check_run_folder`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from cvl_ros.cli._args import CliError, device

_INF = math.inf
#: key: (kind, low, high, optional) for the numbers of each section.
_NUMBERS = {
    "seed": (int, 0, 2 ** 32 - 1, False),
    "threads": (int, 1, 1024, True),
    "data.seq_len": (int, 1, 64, False),
    "data.frame_stride": (int, 1, 1000, False),
    "data.min_separation_m": (float, 0.0, 100000.0, False),
    "data.num_workers": (int, 0, 256, False),
    "data.max_samples": (int, 1, 10 ** 9, True),
    "optim.lr": (float, 0.0, 10.0, False),
    "optim.weight_decay": (float, 0.0, 10.0, False),
    "optim.batch_size": (int, 1, 4096, False),
    "optim.epochs": (int, 1, 10 ** 6, False),
    "optim.max_steps": (int, 1, 10 ** 9, True),
    "optim.max_minutes": (float, 0.0, 10 ** 7, True),
    "optim.grad_clip": (float, 0.0, 10 ** 6, True),
    "val.seq_len": (int, 1, 64, False),
    "val.max_queries": (int, 1, 10 ** 9, True),
    "log.every": (int, 1, 10 ** 9, False),
}
#: numbers that must be > low (not >=)
_STRICT = {"optim.lr", "optim.max_minutes", "optim.grad_clip"}
#: model fields with bounds (kind, low, high); other fields are type-checked only
_MODEL_NUMBERS = {
    "sat_px": (int, 16, 4096), "coverage_m": (float, 1.0, 10000.0), "grid_cells": (int, 2, 256),
    "feature_dim": (int, 1, 1024), "descriptor_dim": (int, 1, 1024),
    "search_cells": (int, 0, 64), "camera_height_m": (float, 0.0, 100.0),
    "triplet_alpha": (float, 0.0, 1000.0), "max_frames": (int, 1, 256),
    "pcsf_heads": (int, 1, 64), "pcsf_layers": (int, 0, 64),
    "uncertainty_min": (float, 0.0, 1.0), "displacement_loss_weight": (float, 0.0, 1000.0),
    "displacement_temperature": (float, 0.0, 1000.0), "backbone_frozen": (int, 0, 1000),
}
_MODEL_STRICT = {"camera_height_m", "triplet_alpha", "displacement_temperature"}
_AUGMENT = ("brightness", "contrast", "saturation", "channel_gain")
_SECTIONS = ("model", "data", "optim", "val", "log")


def _where(key: str, source, overrides) -> str:
    for item in reversed(list(overrides or [])):
        k = item.split("=", 1)[0].strip()
        if k == key or key.startswith(k + "."):
            return f"override {item!r}"
    return str(source) if source else "config"


def _is_number(v, kind) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) if kind is int else isinstance(v, (int, float))


def _check_number(key, v, kind, low, high, strict, where):
    what = "an integer" if kind is int else "a number"
    if not _is_number(v, kind):
        raise CliError(f"{where}: {key} must be {what}, got {v!r}")
    if not math.isfinite(v) or v < low or (strict and v == low) or v > high:
        rule = f"{'>' if strict else '>='} {low:g} and <= {high:g}"
        raise CliError(f"{where}: {key} must be {rule}, got {v!r}")


def _get(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_config(cfg: dict, source=None, overrides=(), defaults: dict | None = None,
                 check_paths: bool = True, check_init: bool = True) -> None:
    """Refuse a config that cannot train: unknown keys, wrong types, out-of-range numbers,
    a bad device string, missing data roots. ``source`` names the YAML file in messages;
    ``check_init`` False: ``init_from`` need not exist (a resumed run starts from its own last
    checkpoint, not from it)."""  # noqa: D205, D209
    from cvl_ros.training import DEFAULTS

    defaults = DEFAULTS if defaults is None else defaults

    def where(key):
        return _where(key, source, overrides)

    for key in cfg:
        if key not in defaults:
            raise CliError(f"{where(key)}: unknown key {key!r} (known: "
                           f"{', '.join(defaults)}); fix the spelling")
    for sec in _SECTIONS:
        if not isinstance(cfg.get(sec), dict):
            raise CliError(f"{where(sec)}: {sec} must be a mapping, got {cfg.get(sec)!r}")
        if sec == "model":
            continue
        for key in cfg[sec]:
            if key not in defaults[sec]:
                raise CliError(f"{where(f'{sec}.{key}')}: unknown key {sec}.{key} (known: "
                               f"{', '.join(defaults[sec])}); fix the spelling")
    for key, (kind, low, high, optional) in _NUMBERS.items():
        v = _get(cfg, key)
        if v is None and optional:
            continue
        _check_number(key, v, kind, low, high, key in _STRICT, where(key))
    dev = cfg.get("device", "auto")
    try:
        device(dev if isinstance(dev, str) else repr(dev))
    except Exception:
        raise CliError(f"{where('device')}: device must be auto, cpu, cuda or cuda:N, got "
                       f"{dev!r}") from None
    out_dir = cfg.get("out_dir")
    if not isinstance(out_dir, str) or not out_dir.strip():
        raise CliError(f"{where('out_dir')}: out_dir must be a folder path, got {out_dir!r}")
    init = cfg.get("init_from")
    if init is not None and not (isinstance(init, str) and init.strip()):
        raise CliError(f"{where('init_from')}: init_from must be null or a checkpoint file, "
                       f"got {init!r}")
    if check_paths and check_init and init is not None and not Path(init).exists():
        raise CliError(f"{where('init_from')}: init_from {init} does not exist; give a "
                       "checkpoint written by cvl-train (e.g. models/cvlnet_demo/"
                       "model.safetensors) or null to start from ImageNet weights")
    data = cfg["data"]
    roots = data.get("roots")
    if not isinstance(roots, list) or not roots or \
            not all(isinstance(r, str) and r.strip() for r in roots):
        raise CliError(f"{where('data.roots')}: data.roots must be a list of KITTI-CVL "
                       f"folders (at least one), got {roots!r}")
    split = data.get("split")
    if split not in ("train", "test1", "test2"):
        raise CliError(f"{where('data.split')}: data.split must be train, test1 or test2, got "
                       f"{split!r}")
    aug = data.get("augment")
    if aug is not None:
        if not isinstance(aug, dict) or set(aug) - set(_AUGMENT):
            raise CliError(f"{where('data.augment')}: data.augment must be null or a mapping "
                           f"of {', '.join(_AUGMENT)}, got {aug!r}")
        for k, v in aug.items():
            _check_number(f"data.augment.{k}", v, float, 0.0, 10.0, False,
                          where(f"data.augment.{k}"))
    val = cfg["val"]
    if val.get("root") is not None and not (isinstance(val["root"], str) and val["root"]):
        raise CliError(f"{where('val.root')}: val.root must be null or a KITTI-CVL folder, "
                       f"got {val['root']!r}")
    if val.get("protocol") not in ("test1", "test2"):
        raise CliError(f"{where('val.protocol')}: val.protocol must be test1 or test2, got "
                       f"{val.get('protocol')!r}")
    if not isinstance(cfg["log"].get("tensorboard"), bool):
        raise CliError(f"{where('log.tensorboard')}: log.tensorboard must be true or false, "
                       f"got {cfg['log'].get('tensorboard')!r}")
    _check_model(cfg["model"], where)
    if check_paths:
        from cvl_ros.tiles import SPLIT_FILES

        for i, root in enumerate(roots):
            _check_tree(root, split, SPLIT_FILES, where("data.roots"), f"data.roots[{i}]")
        if val.get("root"):
            _check_tree(val["root"], val["protocol"], SPLIT_FILES, where("val.root"),
                        "val.root")


def _check_tree(root: str, split: str, split_files: dict, where: str, key: str) -> None:
    p = Path(root)
    if not p.is_dir():
        raise CliError(f"{where}: {key} {root} is not a folder (a KITTI-CVL tree, e.g. "
                       "written by cvl-synth); fix the path")
    if not (p / split_files[split]).is_file():
        raise CliError(f"{where}: {key} {root} has no {split_files[split]} (split {split}); "
                       "give a KITTI-CVL tree with that split, or build it with "
                       "cvl-build-tiles")


def _check_model(model: dict, where) -> None:
    from cvl_ros.model.cvlnet import CVLNetConfig

    fields = {f.name: f for f in dataclasses.fields(CVLNetConfig)}
    for k, v in model.items():
        f = fields.get(k)
        if f is None or v is None:
            continue
        key = f"model.{k}"
        default = f.default
        if k in _MODEL_NUMBERS:
            kind, low, high = _MODEL_NUMBERS[k]
            _check_number(key, v, kind, low, high, k in _MODEL_STRICT, where(key))
        elif isinstance(default, bool) and not isinstance(v, bool):
            raise CliError(f"{where(key)}: {key} must be true or false, got {v!r}")
        elif isinstance(default, str) and not isinstance(v, str):
            raise CliError(f"{where(key)}: {key} must be a string, got {v!r}")
    hw = model.get("ground_hw")
    if hw is not None and not (isinstance(hw, (list, tuple)) and len(hw) == 2
                               and all(_is_number(x, int) and 8 <= x <= 4096 for x in hw)):
        raise CliError(f"{where('model.ground_hw')}: model.ground_hw must be [H, W] with "
                       f"8-4096 px each, got {hw!r}")
    path = model.get("pretrained_path")
    if path is not None and not isinstance(path, str):
        raise CliError(f"{where('model.pretrained_path')}: model.pretrained_path must be null "
                       f"or a file path, got {path!r}")
    try:
        CVLNetConfig.from_dict(model)
    except (TypeError, ValueError) as exc:
        raise CliError(f"{where('model')}: {exc}") from None


# ------------------------------------------------------------------ cvl-train's run folder
_RUN_FILES = re.compile(r"^(config\.yaml|metrics\.csv|val\.jsonl|last\.safetensors|"
                        r"last\.optim\.safetensors|best\.safetensors|epoch\d+\.safetensors|"
                        r"tb/(.*))$")


def run_folder_owns(entry: str) -> bool:
    """Whether ``entry`` (relative, folders end with ``/``) is a name cvl-train writes."""
    return bool(_RUN_FILES.match(entry))


def recognise_run_folder(folder: Path) -> set:
    """Entries of a markerless run folder of an earlier cvl-train (its ``config.yaml`` is a
    training config and it holds a checkpoint or metrics); an empty set otherwise."""  # noqa: D205, D209
    import yaml

    folder = Path(folder)
    try:
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return set()
    if not isinstance(cfg, dict) or not {"model", "data", "optim"} <= set(cfg):
        return set()
    if not ((folder / "last.safetensors").is_file() or (folder / "metrics.csv").is_file()):
        return set()
    from cvl_ros.outputs import run_entries

    return set(run_entries(folder, run_folder_owns))
