"""Config precedence (defaults < file < --set < flags), type checks, the typed TrainConfig, the shipped configs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from retina.preprocessing import get_preset
from training import config as C

CONFIGS = sorted(p.stem for p in C.CONFIG_DIR.glob("*.yaml"))


def test_every_required_config_exists():
    assert {"oct_simplecnn", "oct_resnet18", "fundus_resnet50", "oct_simclr"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_resolve(name):
    cfg = C.resolve(C.CONFIG_DIR / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.task in ("oct", "fundus")
    spec = C.preprocess_spec(cfg)
    assert spec.channels == (1 if cfg.task == "oct" else 3)


def test_oct_simplecnn_is_the_medmnist_recipe():
    cfg = C.resolve("oct_simplecnn")  # a bare name resolves under training/configs/
    assert cfg.model.arch == "simplecnn"
    assert C.preprocess_spec(cfg) == get_preset("oct_28")
    assert (cfg.optim.name, cfg.optim.lr, cfg.epochs, cfg.batch_size) == ("adam", 1e-3, 10, 64)


def test_precedence_file_then_set_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"epochs": 7, "batch_size": 16, "optim": {"lr": 0.01}}))
    cfg = C.resolve(f, ["epochs=9", "optim.lr=3e-4", "batch_size=8"], {"epochs": 2, "data.path": "/d"})
    assert cfg.epochs == 2  # explicit flag beats --set beats file
    assert cfg.optim.lr == pytest.approx(3e-4)  # --set beats file; "3e-4" parsed as float
    assert cfg.batch_size == 8
    assert cfg.optim.name == "adam"  # untouched default survives a partial section
    assert cfg.data.path == "/d"
    assert cfg.name == "c"


@pytest.mark.parametrize(
    "item, match",
    [
        ("epochs=ten", "epochs"),
        ("optim.lr=fast", "optim.lr"),
        ("calibrate=maybe", "calibrate"),
        ("optim.lrr=1", "did you mean lr"),
        ("nonsense=1", "unknown config key"),
        ("preprocess.sise=32", "unknown config key"),
        ("preprocess.size=big", "preprocess.size"),
        ("imbalance=oversample", "imbalance"),
        ("noequals", "key=value"),
    ],
)
def test_bad_overrides_are_rejected(item, match):
    with pytest.raises(C.ConfigError, match=match):
        C.resolve("oct_simplecnn", [item])


def test_preprocess_field_override_and_free_form_model_args():
    cfg = C.resolve("fundus_resnet50", ["preprocess.size=32", "model.args.head_hidden=64", "data.max_images=20"])
    spec = C.preprocess_spec(cfg)
    assert spec.size == 32 and spec.square == "fundus_disc"  # other preset fields kept
    assert cfg.model.args["head_hidden"] == 64
    assert cfg.model.args["freeze_backbone"] is True
    assert cfg.data.max_images == 20


def test_simclr_section_gets_defaults_and_type_checks():
    cfg = C.resolve("oct_simclr", ["simclr.epochs=1"])
    assert cfg.simclr.epochs == 1
    assert cfg.simclr.label_fractions == [0.01, 0.1]
    assert cfg.simclr.temperature == 0.5
    with pytest.raises(C.ConfigError):
        C.resolve("oct_simclr", ["simclr.label_fractions=[0.0]"])
    assert C.resolve("oct_simplecnn").simclr is None


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = C.resolve("oct_resnet18", ["preprocess.size=64"])
    path = C.save_config(cfg, tmp_path / "config.yaml")
    again = C.resolve(C.load_yaml(path))
    assert again == cfg


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_round_trips_load_dump_load(name):
    """load -> dump -> load gives an equal, frozen ``TrainConfig`` for every file in training/configs/."""
    cfg = C.resolve(C.CONFIG_DIR / f"{name}.yaml")
    assert isinstance(cfg, C.TrainConfig)
    again = C.resolve(yaml.safe_load(C.dump(cfg)))
    assert again == cfg
    assert C.dump(again) == C.dump(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 1  # type: ignore[misc]


def test_checkpoint_config_is_plain_and_loads_with_weights_only(tmp_path):
    """What a checkpoint stores under ``config`` is plain types: ``torch.load(weights_only=True)`` reads it back."""
    cfg = C.resolve("oct_simclr")
    torch.save({"config": cfg.to_dict()}, tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)["config"]
    assert saved == cfg.to_dict() and C.resolve(saved) == cfg


def test_data_section_of_an_older_checkpoint_takes_todays_defaults():
    d = C.DataConfig.from_saved({"path": "/d", "seed": 3, "a_key_since_removed": 1})
    assert (d.path, d.seed, d.patients) == ("/d", 3, "shared")
    assert C.DataConfig.from_saved(None) == C.DataConfig()


def test_domain_prevalence_needs_domain_balance_and_a_share():
    cfg = C.resolve("fundus_resnet18_384_v4")
    assert cfg.domain_prevalence == 0.3 and cfg.early_stopping.metric == "val_domain_referable_auc"
    raw = C.load_yaml(C.CONFIG_DIR / "fundus_resnet18_384_v4.yaml")
    del raw["domain_balance"]
    with pytest.raises(C.ConfigError, match="domain_prevalence"):
        C.resolve(raw)
    with pytest.raises(C.ConfigError, match="domain_prevalence"):
        C.resolve("fundus_resnet18_384_v4", ["domain_prevalence=1.5"])
    with pytest.raises(C.ConfigError, match="early_stopping.metric"):
        C.resolve("fundus_resnet18_384_v4", ["early_stopping.metric=val_auc"])
    with pytest.raises(C.ConfigError, match="domain_prevalence works with"):
        C.resolve("fundus_resnet18_384_v4", ["imbalance=weighted_sampler"])
