"""A subnet file's ``meta.recipe``: the learning rate, weight decay and per-family multipliers
chosen with the structure, which ``retrain`` applies over the config's retrain section.

The second computation: the same retrain with those values given as config overrides instead,
which must give the same weights bit for bit; and without them, different ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny import tiny_minivtab_config

import unitune.retrain.train as retrain_train
from unitune.engine.config import TrainConfig, apply_recipe, load_run_config
from unitune.errors import UniTuneError
from unitune.retrain.export import load_export
from unitune.supernet import Subnet

RECIPE = {"lr": 0.02, "weight_decay": 0.0, "lr_mult": {"prompt": 5, "head": 0.5}}

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def config(tmp_path: Path) -> Path:
    return tiny_minivtab_config(tmp_path)


def subnet_file(tmp_path: Path, name: str, recipe=None) -> Path:
    meta = {"recipe": recipe} if recipe is not None else None
    return Subnet.uniform(4, lora=4, vpt=4).save(tmp_path / name, meta)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_export(folder / "export")[0].state_dict()


def test_retrain_applies_the_files_recipe_as_the_config_would(tmp_path):
    path = config(tmp_path)
    with_recipe = retrain_train.retrain(load_run_config(path), subnet_file(tmp_path, "chosen.yaml", RECIPE),
                                        tmp_path / "a", progress=False, curves=False)
    overrides = ["retrain.lr=0.02", "retrain.weight_decay=0.0", "retrain.lr_mult={prompt: 5, head: 0.5}"]
    by_config = retrain_train.retrain(load_run_config(path, overrides), subnet_file(tmp_path, "plain.yaml"),
                                      tmp_path / "b", progress=False, curves=False)
    default = retrain_train.retrain(load_run_config(path), subnet_file(tmp_path, "plain2.yaml"),
                                    tmp_path / "c", progress=False, curves=False)
    a, b, c = weights(tmp_path / "a"), weights(tmp_path / "b"), weights(tmp_path / "c")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert with_recipe["test_accuracy"] == by_config["test_accuracy"]
    assert with_recipe["recipe"] == RECIPE and "recipe" not in by_config and "recipe" not in default
    saved = json.loads((tmp_path / "a" / "retrain_result.json").read_text())
    assert saved["recipe"] == RECIPE


def test_a_bad_recipe_is_one_line_before_any_work(tmp_path):
    path = config(tmp_path)
    cases = {
        "lr_rate": r"meta\.recipe\.lr_rate: unknown key, expected some of \['lr', 'weight_decay', 'lr_mult'\]$",
        "lr": r"meta\.recipe\.lr: expected a number > 0",
        "lr_mult": r"meta\.recipe\.lr_mult: unknown family 'promt'",
    }
    values = {"lr_rate": {"lr_rate": 0.1}, "lr": {"lr": -1.0}, "lr_mult": {"lr_mult": {"promt": 2}}}
    for key, message in cases.items():
        file = subnet_file(tmp_path, f"{key}.yaml", values[key])
        out = tmp_path / f"out-{key}"
        with pytest.raises(UniTuneError, match=message) as err:
            retrain_train.retrain(load_run_config(path), file, out, progress=False, curves=False)
        assert str(err.value).startswith(str(file)) and "\n" not in str(err.value)
        assert not out.exists() or not any(out.rglob("*.safetensors"))  # nothing trained or written


def test_apply_recipe_keeps_the_rest_of_the_recipe():
    cfg = TrainConfig(epochs=7, lr=1e-3, weight_decay=1e-4, warmup_epochs=2)
    out = apply_recipe(cfg, RECIPE, "f.yaml")
    assert (out.lr, out.weight_decay, out.lr_mult) == (0.02, 0.0, {"prompt": 5, "head": 0.5})
    assert (out.epochs, out.warmup_epochs) == (7, 2)
    with pytest.raises(UniTuneError, match=r"^f\.yaml: meta\.recipe: expected a mapping"):
        apply_recipe(cfg, [0.1], "f.yaml")


def test_a_command_line_override_the_files_recipe_would_beat_is_refused(tmp_path, capsys):
    from unitune.commands.cli import main

    path = config(tmp_path)
    file = subnet_file(tmp_path, "chosen.yaml", {"lr": 0.02})
    out = tmp_path / "out"
    assert main(["retrain", "--config", str(path), "--out", str(out), "--subnet", str(file), "--quiet",
                 "retrain.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "retrain.lr: " in err and "chosen.yaml's meta.recipe sets lr too" in err
    assert not (out / "export").exists()
    assert main(["retrain", "--config", str(path), "--out", str(out), "--subnet", str(file), "--quiet",
                 "retrain={lr: 0.5, epochs: 1}"]) == 2  # the mapping form too
    assert "retrain.lr: " in capsys.readouterr().err
    # a key the file does not set is the config's to give
    assert main(["retrain", "--config", str(path), "--out", str(out), "--subnet", str(file), "--quiet",
                 "retrain.weight_decay=0.0"]) == 0


def test_retrain_full_on_the_command_line_takes_tunes_printed_overrides(tmp_path, capsys):
    """`unitune tune --full` prints its recipe as overrides; `unitune retrain --full` uses them:
    the result is full fine-tuning (every weight counted) at that recipe."""
    from unitune.commands.cli import main

    path = config(tmp_path)
    out = tmp_path / "full"
    assert main(["retrain", "--config", str(path), "--out", str(out), "--full", "--quiet", "retrain.epochs=1",
                 "retrain.lr=0.0001", "retrain.lr_mult={head: 50}"]) == 0
    result = json.loads((out / "retrain_result.json").read_text())
    assert result["mode"] == "full" and result["subnet_file"] is None
    assert result["params"]["per_method"]["full"] == result["params"]["trainable_params"] > 100_000
    assert main(["retrain", "--config", str(path), "--out", str(out), "--full", "--subnet", "x.yaml"]) == 2
    assert "--full trains every weight from the pretrained backbone" in capsys.readouterr().err
