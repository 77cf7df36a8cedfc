"""Numeric config ranges live beside their fields (issue 14), and the safe YAML loader refuses
duplicate keys and alias bombs while keeping ordinary anchors and merge keys."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from unitune.engine.config import PretrainConfig, RetrainConfig, SearchConfig, SupernetConfig, TrainConfig, from_mapping
from unitune.errors import UniTuneError
from unitune.io import MAX_YAML_NODES, safe_load

CONFIGS = (TrainConfig, SupernetConfig, RetrainConfig, PretrainConfig, SearchConfig)


def numeric(tp) -> bool:
    """int, float, or one of them or None. A budget (``str | int``: "0.4M", "0.5%") is a spec that
    search.budget parses and checks against the backbone, not a plain number."""
    args = set(typing.get_args(tp) or (tp,))
    return bool(args & {int, float}) and args <= {int, float, type(None)}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_field_declares_its_range(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if numeric(hints[f.name]):
            assert "range" in f.metadata or f.metadata.get("seed"), f"{cls.__name__}.{f.name} has no range"


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_the_defaults_are_within_their_ranges(cls):
    from_mapping(cls, {}, "x")


@pytest.mark.parametrize("key, value, message", [
    ("weight_decay", -0.5, "x.weight_decay: expected a number >= 0, got -0.5"),
    ("mixup", -1, "x.mixup: expected a number >= 0, got -1.0"),
    ("cutmix", float("inf"), "x.cutmix: expected a finite number, got inf"),
    ("grad_clip", -1.0, "x.grad_clip: expected a number > 0, got -1.0"),
    ("grad_clip", 0, "x.grad_clip: expected a number > 0, got 0.0"),
    ("lr", float("nan"), "x.lr: expected a finite number, got nan"),
    ("lr", 0, "x.lr: expected a number > 0, got 0.0"),
    ("epochs", 0, "x.epochs: expected a number >= 1, got 0"),
    ("label_smoothing", 1.0, "x.label_smoothing: expected a number in [0, 1), got 1.0"),
    ("seed", 2**32, "x.seed: expected an integer seed in [0, 2**32 - 1], got 4294967296"),
    ("seed", -1, "x.seed: expected an integer seed in [0, 2**32 - 1], got -1"),
    ("num_random", -1, "x.num_random: expected a number in [0, 64], got -1"),
    ("num_random", 65, "x.num_random: expected a number in [0, 64], got 65"),
])
def test_out_of_range_values_name_the_key_and_the_range(key, value, message):
    with pytest.raises(UniTuneError) as info:
        from_mapping(SupernetConfig, {key: value}, "x")
    assert str(info.value) == message


def test_in_range_edges_are_accepted():
    cfg = from_mapping(SupernetConfig, {"weight_decay": 0, "mixup": 0.8, "grad_clip": 1e-9, "seed": 2**32 - 1,
                                        "label_smoothing": 0.0}, "x")
    assert cfg.seed == 2**32 - 1 and cfg.grad_clip == 1e-9


def test_duplicate_keys_and_sections_are_refused():
    with pytest.raises(yaml.YAMLError, match=r"duplicate key 'lr' \(first at line 2\)"):
        safe_load("supernet:\n  lr: 1\n  lr: 2\n")
    with pytest.raises(yaml.YAMLError, match=r"duplicate key 'supernet' \(first at line 1\)"):
        safe_load("supernet: {lr: 1}\nretrain: {}\nsupernet: {lr: 2}\n")
    assert safe_load("a: {lr: 1}\nb: {lr: 1}\n") == {"a": {"lr": 1}, "b": {"lr": 1}}  # same key, two mappings


def test_anchors_and_merge_keys_still_work():
    doc = safe_load("base: &b {lr: 1e-3, epochs: 3}\nsupernet:\n  <<: *b\n  epochs: 5\nretrain: *b\n")
    assert doc == {"base": {"lr": 1e-3, "epochs": 3}, "supernet": {"lr": 1e-3, "epochs": 5},
                   "retrain": {"lr": 1e-3, "epochs": 3}}


def test_an_alias_bomb_is_refused_quickly():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
    # Refused while composing (a ComposerError, before any Python object is built), after walking
    # at most MAX_YAML_NODES nodes: expanding the 9**9 values is never started. No clock involved.
    with pytest.raises(yaml.composer.ComposerError, match="alias bomb"):
        safe_load("\n".join(lines) + "\n")
    safe_load("[" + ", ".join(["1"] * (MAX_YAML_NODES - 10)) + "]")  # a big plain document is fine
