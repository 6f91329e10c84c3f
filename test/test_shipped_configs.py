"""The training configs shipped in config/ are ones cvl-train accepts (keys, types, ranges).

Data roots and ``init_from`` are not checked: they name towns and checkpoints a user makes
with the commands in each file's header (docs/training.md)."""

from pathlib import Path

import pytest

from cvl_ros.cli._args import CliError
from cvl_ros.cli._train_config import check_config
from cvl_ros.training import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "config").glob("train_*.yaml"))


def test_there_are_training_configs():
    names = {p.name for p in CONFIGS}
    assert {"train_synth.yaml", "train_synth_nll_lean.yaml", "train_kitti_cvl.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_training_config_is_accepted(path):
    cfg = load_config(path)
    check_config(cfg, source=str(path), check_paths=False)


def test_a_misspelt_key_in_a_config_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS[0]).read_text().replace("optim:", "optimiser:", 1))
    with pytest.raises(CliError, match="optimiser"):
        check_config(load_config(bad), source=str(bad), check_paths=False)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_model_keys_are_fields_of_the_network(path):
    """check_config leaves the model section's names to CVLNetConfig, which only warns of an
    unknown one: a misspelt field would silently train with its default."""
    import dataclasses

    import yaml

    from cvl_ros.model.cvlnet import CVLNetConfig

    fields = {f.name for f in dataclasses.fields(CVLNetConfig)}
    model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
    assert set(model) <= fields, f"{path.name}: not CVLNetConfig fields: {set(model) - fields}"


def test_the_demo_model_was_trained_by_its_shipped_config():
    """models/cvlnet_demo/train_config.yaml (what cvl-train wrote) is the last stage's config in
    config/ (docs/training.md), so the documented command reproduces the shipped model's run."""
    root = Path(__file__).resolve().parents[1]
    shipped = load_config(root / "models" / "cvlnet_demo" / "train_config.yaml")
    assert shipped == load_config(root / "config" / "train_synth_nll_lean.yaml")
