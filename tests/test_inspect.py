"""``unitune inspect``: the table, the JSON, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from unitune.commands.cli import main

BASE = "vit_base_patch16_224"


def subnet_file(tmp_path, name="s.yaml", **lists):
    lines = [f"backbone: {BASE}", "subnet:"] + [f"  {k}: {v}" for k, v in lists.items()]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "lists, expected",
    [
        (dict(lora=[8] * 12), 294_912),
        (dict(adapter=[8] * 12), 156_768),
        (dict(vpt=[10] * 12), 92_160),
        (dict(ssf=[1] * 12, ssf_global=1), 205_824),
    ],
)
def test_json_figures(tmp_path, capsys, lists, expected):
    path = subnet_file(tmp_path, **lists)
    assert main(["inspect", "--subnet", str(path), "--num-classes", "100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trainable_params"] == expected
    assert out["head_params"] == 768 * 100 + 100
    assert sum(out["per_method"].values()) == expected
    assert set(out["per_method"]) == {"lora", "adapter", "vpt", "ssf"}


def test_table(tmp_path, capsys):
    path = subnet_file(tmp_path, lora=[8] * 12)
    assert main(["inspect", "--subnet", str(path), "--backbone", BASE, "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "294,912" in out and "24,576" in out  # total and per block (4·768·8)
    assert "7,690" in out  # head: 768·10 + 10
    assert len([ln for ln in out.splitlines() if ln.strip() and ln.split()[0].isdigit()]) == 12


def test_mixed_subnet_matches_formula(tmp_path, capsys):
    d = 768
    path = subnet_file(tmp_path, lora=[1, 5, 10] * 4, adapter=[10, 0, 5] * 4, vpt=[0, 5, 1] * 4, ssf=[1, 0, 0] * 4)
    main(["inspect", "--subnet", str(path), "--json"])
    out = json.loads(capsys.readouterr().out)
    lora = 4 * d * (1 + 5 + 10) * 4
    adapter = 4 * ((2 * d * 10 + 10 + d) + (2 * d * 5 + 5 + d))
    vpt = 4 * d * (5 + 1)
    ssf = 4 * 22 * d
    assert out["per_method"] == {"lora": lora, "adapter": adapter, "vpt": vpt, "ssf": ssf}
    assert out["head_params"] == 768 * 1000 + 1000  # the model's own head by default


def test_one_size_for_every_block_counts_as_the_list(tmp_path, capsys):
    """``lora: 8`` in a subnet file is 8 in every block (as the API's ``subnet={"lora": 8}``): the
    same figures as the list; the block count comes from the backbone the file or --backbone names."""
    listed = subnet_file(tmp_path, "list.yaml", lora=[8] * 12, vpt=[10] * 12)
    scalar = subnet_file(tmp_path, "one.yaml", lora=8, vpt=10)
    unnamed = tmp_path / "unnamed.yaml"
    unnamed.write_text("subnet:\n  lora: 8\n  vpt: 10\n")
    outs = []
    for argv in ([str(listed)], [str(scalar)], [str(unnamed), "--backbone", BASE]):
        assert main(["inspect", "--subnet", *argv, "--json"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["trainable_params"] == 294_912 + 92_160
    assert outs[1] == outs[0] and outs[2] == outs[0]
    assert main(["inspect", "--subnet", str(unnamed)]) == 2
    assert capsys.readouterr().err == f"unitune: error: {unnamed}: names no backbone; give --backbone NAME or --config CFG\n"


@pytest.mark.parametrize(
    "lists, extra, fragment",
    [
        (dict(lora=[8] * 12, prompt=[1] * 12), [], "unknown method 'prompt'"),
        (dict(lora=[8] * 11), [], "lists have 11 entries, but the backbone has 12 blocks"),
        (dict(lora=[8] * 12), ["--space", "SPACE"], "lora[0] = 8 is not in the search space [0, 1, 5, 10]"),
        (dict(lora=[-8] + [8] * 11), [], "subnet.lora[0]: expected a non-negative integer, got -8"),
        (dict(lora=[8] * 12), ["--backbone", "resnet18"], "is not a timm VisionTransformer"),
        (dict(lora=[8] * 12), ["--backbone", "vit_nonexistent_9"], "unknown timm model name"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, lists, extra, fragment):
    path = subnet_file(tmp_path, **lists)
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  lora: [0, 1, 5, 10]\n")
    extra = [str(space) if a == "SPACE" else a for a in extra]
    assert main(["inspect", "--subnet", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("unitune: error: ")
    assert fragment in err
    assert "Traceback" not in err


def test_real_process_prints_no_traceback(tmp_path):
    path = subnet_file(tmp_path, lora=[8] * 11)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "unitune", "inspect", "--subnet", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"unitune: error: {path}: lists have 11 entries, but the backbone has 12 blocks"
    ]
    assert proc.stdout == ""


def test_every_option_of_every_command_has_help_and_version_prints(capsys):
    """Help on every option (dashboard --port, evaluate --split/--device/--json, predict --top-k
    had none), each command's own override example, and --version."""
    import argparse

    from unitune import __version__
    from unitune.commands.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    examples = set()
    for name, command in sub.choices.items():
        for action in command._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
            if action.dest == "overrides" and "e.g." in action.help:
                examples.add(action.help)
    assert len(examples) >= 6  # run, compare, pretrain, supernet, search, retrain: each its own
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"unitune {__version__}"
