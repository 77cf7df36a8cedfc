"""The subnet file format and the search-space section: round trips and one-line errors."""

from __future__ import annotations

import pytest

from unitune.errors import UniTuneError
from unitune.supernet import SearchSpace, Subnet


def write(tmp_path, text: str, name: str = "subnet.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_round_trip(tmp_path):
    s = Subnet((1, 5, 0), (0, 10, 1), (5, 0, 0), (1, 0, 1), 1, backbone="vit_tiny_patch16_224")
    path = s.save(tmp_path / "a" / "best.yaml", meta={"val_accuracy": 0.5})
    loaded = Subnet.load(path)
    assert loaded == s and loaded.backbone == "vit_tiny_patch16_224"
    assert list(tmp_path.joinpath("a").iterdir()) == [path]  # no temporary file left behind


def test_missing_methods_default_to_off(tmp_path):
    s = Subnet.load(write(tmp_path, "subnet:\n  lora: [8, 8]\n"))
    assert s == Subnet((8, 8), (0, 0), (0, 0), (0, 0), 0)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("subnet:\n  lora: [1, 1]\n  loar: [1, 1]\n", "unknown method 'loar'"),
        ("subnet:\n  lora: [1, 1]\nbackbon: x\n", "unknown key 'backbon'"),
        ("subnet:\n  lora: [1, 1]\n  vpt: [1]\n", "different numbers of blocks"),
        ("subnet:\n  lora: [1, -2]\n", "subnet.lora[1]: expected a non-negative integer, got -2"),
        ("subnet:\n  lora: [1, 1.5]\n", "subnet.lora[1]: expected a non-negative integer, got 1.5"),
        ("subnet:\n  ssf: [1, 2]\n", "SSF is off (0) or on (1)"),
        ("subnet:\n  lora: 8\n", "subnet.lora: one size for every block needs the block count"),
        ("subnet:\n  lora: '8'\n", "subnet.lora must be a list with one size per block, or one size"),
        ("subnet:\n  lora: true\n  vpt: [1, 1]\n", "subnet.lora must be a list"),
        ("subnet:\n  lora: -1\n  vpt: [1, 1]\n", "subnet.lora[0]: expected a non-negative integer, got -1"),
        ("subnet:\n  lora: [1, 1]\nmeta: [1, 2]\n", "'meta' must be a mapping (free-form figures), got list"),
        ("subnet:\n  lora: [1, 1]\nmeta: text\n", "'meta' must be a mapping (free-form figures), got str"),
        ("subnet: [1, 2]\n", "'subnet' must be a mapping"),
        ("lora: [1, 2]\n", "unknown key 'lora'"),
        ("subnet:\n  lora: [1, 1\n", "invalid YAML"),
    ],
)
def test_bad_files(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(UniTuneError) as err:
        Subnet.load(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_one_size_means_that_size_in_every_block(tmp_path):
    """``lora: 4`` in a file is what ``get_peft_model(subnet={"lora": 4})`` means: 4 in every block.
    The block count comes from the file's lists, or from ``depth`` (an int, or a function of the
    file's backbone name) when it has none."""
    expected = Subnet.uniform(3, lora=4, vpt=2, ssf_global=1)
    with_list = write(tmp_path, "subnet:\n  lora: 4\n  vpt: [2, 2, 2]\n  ssf_global: 1\n")
    assert Subnet.load(with_list) == expected
    only_scalars = write(tmp_path, "backbone: vit_x\nsubnet:\n  lora: 4\n  vpt: 2\n  ssf_global: 1\n", "b.yaml")
    assert Subnet.load(only_scalars, depth=3) == expected
    asked = []
    assert Subnet.load(only_scalars, depth=lambda name: asked.append(name) or 3) == expected
    assert asked == ["vit_x"]
    assert Subnet.load(with_list, depth=lambda name: 1 / 0) == expected  # not asked: the lists give it


def test_check_against_depth_and_space():
    s = Subnet.uniform(3, lora=8)
    s.check(3)
    with pytest.raises(UniTuneError, match="lists have 3 entries, but the backbone has 12 blocks"):
        s.check(12)
    with pytest.raises(UniTuneError, match=r"lora\[0\] = 8 is not in the search space \[0, 1, 5, 10\]"):
        s.check(3, SearchSpace())


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"lora": [0, 5, 1]}, "space.lora: sizes must be strictly increasing"),
        ({"lora": [-1, 1]}, "space.lora: sizes must be non-negative integers"),
        ({"ssf": [0, 2]}, "space.ssf: SSF is off (0) or on (1)"),
        ({"lora_targets": ["qkv", "out"]}, "unknown target 'out'"),
        ({"adapter_style": "serial"}, "space.adapter_style: expected one of ['sequential', 'parallel']"),
        ({"vtp": [0, 1]}, "space.vtp: unknown key"),
        ({"vpt": []}, "space.vpt: expected a non-empty list"),
    ],
)
def test_bad_spaces(data, fragment):
    with pytest.raises(UniTuneError) as err:
        SearchSpace.from_dict(data)
    assert fragment in str(err.value)


def test_space_round_trip():
    space = SearchSpace(lora=(0, 2), lora_targets=("qkv", "fc1"), adapter_style="parallel")
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_retrain_reads_one_size_for_every_block_at_the_configs_depth(tmp_path):
    """``unitune retrain --subnet`` with ``lora: 4`` alone: the block count is the config's backbone's."""
    from unitune.engine.config import load_run_config
    from unitune.retrain.train import load_subnet

    config = tmp_path / "c.yaml"
    config.write_text("name: t\nmodel: {backbone: vit_tiny_patch16_224, kwargs: {img_size: 16, patch_size: 4, "
                      "embed_dim: 32, depth: 3, num_heads: 2}}\ndata: {source: synthetic, num_classes: 3}\n")
    path = write(tmp_path, "subnet:\n  lora: 4\n  ssf_global: 1\n")
    assert load_subnet(path, load_run_config(config)) == Subnet.uniform(3, lora=4, ssf_global=1)
