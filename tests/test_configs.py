"""Every config that ships in configs/ validates, and the recipes hold the literature's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from unitune.engine.config import load_run_config
from unitune.errors import UniTuneError
from unitune.supernet import SearchSpace, Subnet

CONFIGS = Path(__file__).parent.parent / "configs"
RUNS = sorted(p for p in CONFIGS.rglob("*.yaml") if "subnets" not in p.parts)


@pytest.mark.parametrize("path", RUNS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_run_configs_validate(path):
    run = load_run_config(path)
    SearchSpace.from_dict(run.space)
    assert run.name


@pytest.mark.parametrize("path", sorted((CONFIGS / "subnets").glob("*.yaml")), ids=lambda p: p.name)
def test_subnet_files_load(path):
    assert Subnet.load(path).depth == 12


def test_noah_vtab_recipe():
    run = load_run_config(CONFIGS / "vtab" / "cifar100.yaml")
    assert run.model.backbone == "vit_base_patch16_224.orig_in21k"
    s = run.supernet
    assert (s.epochs, s.lr, s.weight_decay, s.warmup_epochs) == (500, 5e-4, 1e-4, 10)
    assert (run.retrain.epochs, run.retrain.lr) == (100, 1e-3)
    assert run.data.batch_size == 64 and run.data.resize == "squash" and run.data.augment == "none"


def test_fewshot_recipe():
    run = load_run_config(CONFIGS / "fewshot" / "fgvc_aircraft_4shot.yaml")
    r = run.retrain
    assert (run.supernet.epochs, r.epochs, r.lr, r.mixup, r.cutmix, r.label_smoothing) == (300, 100, 5e-3, 0.8, 1.0, 0.1)


def test_demo_is_an_honest_transfer():
    run = load_run_config(CONFIGS / "demo.yaml")
    source, target = set(run.pretrain_data.classes), set(run.data.classes)
    assert source and target and not source & target


def test_override_and_unknown_section(tmp_path):
    run = load_run_config(CONFIGS / "demo.yaml", ["supernet.epochs=3", "search.budget=0.5%"])
    assert run.supernet.epochs == 3 and run.search.budget == "0.5%"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsuprnet: {}\n")
    with pytest.raises(UniTuneError, match=r"bad.yaml: suprnet: unknown section"):
        load_run_config(bad)


def test_imagefolder_example_documents_every_key():
    """configs/imagefolder.yaml shows every data key an imagefolder run can set, each with a comment
    (a key added to DataConfig without a line here fails)."""
    from dataclasses import fields

    from unitune.data import DataConfig
    from unitune.data.config import _ONLY_FOR

    path = CONFIGS / "imagefolder.yaml"
    run = load_run_config(path)
    assert run.data.source == "imagefolder" and run.data.val_fraction == 0.2
    lines = path.read_text().split("\ndata:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    commented = {ln.split(":", 1)[0].strip() for ln in lines
                 if ":" in ln and "#" in ln and not ln.lstrip().startswith("#")}
    keys = {f.name for f in fields(DataConfig) if f.init and f.name != "where"
            and "imagefolder" in _ONLY_FOR.get(f.name, ("imagefolder",))}
    assert keys - {"source"} <= commented, keys - commented
