"""The run sections declare every constraint beside its field (range, seed, choices, counts,
strings, flags, cross-field rules: unitune/schema.py) and one function, ``check_fields``, enforces
them: no section checks itself by hand."""

from __future__ import annotations

import dataclasses

import pytest

from unitune.engine.config import PretrainConfig, RetrainConfig, SearchConfig, SupernetConfig, TrainConfig, from_mapping
from unitune.data import DataConfig
from unitune.errors import UniTuneError

SECTIONS = (TrainConfig, SupernetConfig, RetrainConfig, PretrainConfig, SearchConfig)


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.__name__)
def test_no_section_checks_itself_by_hand(cls):
    for klass in cls.__mro__[:-1]:  # object aside
        assert "validate" not in vars(klass) and "__post_init__" not in vars(klass), klass.__name__


def test_the_declared_choices_and_rules_are_where_their_fields_are():
    meta = {f.name: f.metadata for f in dataclasses.fields(SupernetConfig)}
    assert meta["sampler"]["choices"] == ("uniform", "sandwich", "budget")
    assert callable(meta["warmup_epochs"]["rule"])
    assert {f.name: f.metadata for f in dataclasses.fields(RetrainConfig)}["init"]["choices"] == ("pretrained", "supernet")
    assert callable({f.name: f.metadata for f in dataclasses.fields(SearchConfig)}["pruner"]["rule"])


@pytest.mark.parametrize("cls, data, message", [
    (SupernetConfig, {"sampler": "greedy"}, "x.sampler: expected one of ['uniform', 'sandwich', 'budget'], got 'greedy'"),
    (RetrainConfig, {"init": "scratch"}, "x.init: expected one of ['pretrained', 'supernet'], got 'scratch'"),
    (RetrainConfig, {"epochs": 2, "warmup_epochs": 3}, "x.warmup_epochs: expected 0..epochs (2), got 3"),
    # ranges come before the rules that read them: epochs 0 is reported, not warmup > epochs
    (TrainConfig, {"epochs": 0, "warmup_epochs": 3}, "x.epochs: expected a number >= 1, got 0"),
    (SupernetConfig, {"sampler": "greedy", "num_random": -1}, "x.num_random: expected a number in [0, 64], got -1"),
    (SearchConfig, {"fitness": "inherited"}, "x.fitness: expected one of ['supernet', 'standalone'], got 'inherited'"),
    (SearchConfig, {"objectives": "acc,params", "pruner": "sha"},
     "x.pruner: 'sha' needs the single objective 'acc' (Optuna prunes single-objective studies only); "
     "use pruner none with acc,params"),
])
def test_each_declared_constraint_gives_its_one_line_error(cls, data, message):
    with pytest.raises(UniTuneError) as info:
        from_mapping(cls, data, "x")
    assert str(info.value) == message


def test_every_data_field_declares_its_constraint():
    kinds = {"range", "seed", "choices", "count", "text", "flag", "rule"}
    for f in dataclasses.fields(DataConfig):
        if f.name != "where":  # the section's name in messages, not a setting
            assert kinds & set(f.metadata), f"DataConfig.{f.name} declares no constraint"


@pytest.mark.parametrize("data, message", [
    ({"source": "digits", "seed": -1}, "d.seed: expected an integer seed in [0, 2**32 - 1], got -1"),  # as every seed
    ({"source": "digits", "num_workers": -1}, "d.num_workers: expected an integer >= 0, got -1"),
    ({"source": "digits", "num_workers": 257}, "d.num_workers: expected an integer in [0, 256], got 257"),
    ({"source": "digits", "eval_batch_size": 0}, "d.eval_batch_size: expected an integer >= 1, got 0"),
    ({"source": "digits", "check_images": 1}, "d.check_images: expected true or false, got 1"),
    ({"source": "fewshot", "root": 5}, "d.root: expected a string, got 5"),
    ({"source": "minivtab", "task": "cifar"}, "d.task: source 'minivtab' has the tasks"),
    ({"source": "minivtab", "task": "digits", "split_sizes": [1, 2]},
     "d.split_sizes: expected three integers >= 1 [train, val, test], got [1, 2]"),
    ({"source": "synthetic", "num_classes": 10, "classes": [9, 10]}, "d.classes: class 10 >= num_classes 10"),
])
def test_data_constraints_give_their_one_line_errors(data, message):
    with pytest.raises(UniTuneError) as info:
        DataConfig.from_dict(data, source="d")
    assert str(info.value).startswith(message)


def test_a_data_config_built_in_code_is_checked_and_normalised():
    with pytest.raises(UniTuneError, match=r"^data.batch_size: expected an integer >= 1, got 0$"):
        DataConfig(source="digits", batch_size=0)
    c = DataConfig(source="synthetic", classes=[2, 0])
    assert c.classes == (2, 0) and (c.num_classes, c.samples_per_class, c.image_size) == (10, 20, 32)


# ---- JSON records: the export manifest and peft_config.json ----------------------------------


def test_the_manifest_and_peft_config_declare_their_keys_on_the_one_record_checker():
    from unitune.supernet.api import CONFIG_KEYS
    from unitune.retrain.export import MANIFEST_KEYS
    from unitune.schema import Key

    for table in (MANIFEST_KEYS, CONFIG_KEYS):
        assert all(isinstance(spec, Key) for spec in table.values())
        # each constraint beside its key: the format's name, its version, the weights' digest
        assert all(table[k].rule is not None for k in ("format", "format_version", "weights"))
    assert MANIFEST_KEYS["class_names"].kind == (list, type(None)) and CONFIG_KEYS["backbone"].kind == (str, type(None))


GOOD = {"format": "f", "format_version": 1, "names": None, "weights": {"sha256": "0" * 64}, "params": {}}


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("weights"), "missing key 'weights'"),
    (lambda r: r.update(format_version=True), "'format_version' has the wrong type (bool)"),
    (lambda r: r.update(names=3), "'names' has the wrong type (int)"),
    (lambda r: r.update(format="g"), "'format' is 'g', expected 'f'"),
    (lambda r: r.update(format_version=2), "format_version 2 is not supported (this unitune reads 1)"),
    (lambda r: r.update(weights={"sha256": "ab"}), "'weights.sha256' must be a 64-character hex digest"),
    # every type is checked before any constraint: a wrong format and a wrong type name the type
    (lambda r: r.update(format="g", weights=[]), "'weights' has the wrong type (list)"),
])
def test_check_record_gives_the_one_line_errors(change, message):
    from unitune.schema import check_record, digest, equals, json_key, version

    keys = {"format": json_key(str, equals("f")), "format_version": json_key(int, version(1)),
            "names": json_key((list, type(None))), "weights": json_key(dict, digest("sha256"))}
    record = {**GOOD, "weights": dict(GOOD["weights"])}
    assert check_record(record, keys, "x.json") is record  # extra keys allowed, nothing changed
    change(record)
    with pytest.raises(UniTuneError) as e:
        check_record(record, keys, "x.json")
    assert str(e.value) == f"x.json: {message}"
    with pytest.raises(UniTuneError, match=r"^x\.json: expected a JSON object, got list$"):
        check_record([], keys, "x.json")
