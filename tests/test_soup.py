"""Greedy weight soups (retrain/soup.py): the average of identical members is each member, the
greedy rule keeps only members that do not lower val, members of two structures are refused
(the budget rule), and the soup reads test once, after its members trained on train / trainval."""

from __future__ import annotations

import pytest
import torch

from tiny import tiny_minivtab_config

import unitune.data as data_module
from unitune.engine.config import load_run_config
from unitune.engine.context import RunContext
from unitune.errors import UniTuneError
from unitune.retrain.export import load_export
from unitune.retrain.soup import LR_NEIGHBOURS, average, greedy, soup, soup_recipes
from unitune.supernet import Subnet

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_the_average_of_identical_members_is_each_member_and_of_two_the_mean():
    g = torch.Generator().manual_seed(0)
    a = {"blocks.0.lora.qkv.lora_A": torch.randn(4, 8, generator=g), "head.weight": torch.randn(3, 8, generator=g)}
    b = {k: torch.randn(v.shape, generator=g) for k, v in a.items()}
    same = average([a, a, a])
    assert all(torch.equal(same[k], a[k]) for k in a)
    mean = average([a, b])
    assert all(torch.allclose(mean[k], (a[k] + b[k]) / 2) for k in a)


def test_members_of_two_structures_are_refused_naming_the_tensor():
    a = {"blocks.0.lora.qkv.lora_A": torch.zeros(4, 8)}
    with pytest.raises(UniTuneError, match=r"member 1 differs from member 0 at 'blocks.0.lora.qkv.lora_A': a soup "
                                           r"averages members of one structure"):
        average([a, {"blocks.0.lora.qkv.lora_A": torch.zeros(2, 8)}])
    with pytest.raises(UniTuneError, match=r"member 1 differs from member 0 at 'blocks.0.vpt.prompts'"):
        average([a, {**a, "blocks.0.vpt.prompts": torch.zeros(1, 8)}])


def test_greedy_takes_members_best_first_while_val_does_not_drop():
    # members are scalars; the "val accuracy" of a soup is 1 - |mean - 0.5|
    members = [({"w": torch.tensor([v])}, 1 - abs(v - 0.5)) for v in (0.9, 0.45, 0.1, 0.55)]
    calls = []

    def score(state):
        calls.append(float(state["w"]))
        return 1 - abs(float(state["w"]) - 0.5)

    chosen, best = greedy(members, score)
    # best first: 0.45 (0.95), then 0.55 (0.95): mean 0.5 -> 1.0 joins; 0.9 -> mean 0.633 drops: out; 0.1 -> 0.367: out
    assert chosen == [1, 3] and best == pytest.approx(1.0)
    assert len(calls) == 3  # one val score per candidate member after the first


def test_soup_recipes_are_the_picks_then_the_same_structures_best_then_its_lr_neighbours(tmp_path):
    trials = [{"number": 0, "state": "COMPLETE", "value": 0.5, "structure": "a", "recipe": {"lr": 1.0}},
              {"number": 1, "state": "COMPLETE", "value": 0.7, "structure": "b", "recipe": {"lr": 2.0}},
              {"number": 2, "state": "PRUNED", "value": 0.9, "structure": "a", "recipe": {"lr": 3.0}},
              {"number": 3, "state": "COMPLETE", "value": 0.6, "structure": "a", "recipe": {"lr": 4.0}},
              {"number": 4, "state": "COMPLETE", "value": 0.4, "structure": "a", "recipe": {"lr": 5.0}}]
    result = {"structure": "a", "trial": 0, "recipe": {"lr": 1.0}, "trials": trials}
    assert soup_recipes(result, 3) == [{"lr": 1.0}, {"lr": 4.0}, {"lr": 5.0}]
    assert soup_recipes(result, 1) == [{"lr": 1.0}]
    # fewer complete trials of the structure than members: the pick at its neighbouring rates,
    # the rest of the recipe (weight decay, the families' multipliers) kept
    pick = {"lr": 0.02, "weight_decay": 1e-3, "lr_mult": {"prompt": 3.0}}
    alone = {"structure": "b", "trial": 1, "recipe": pick, "trials": trials}
    got = soup_recipes(alone, 4)
    assert [r["lr"] for r in got] == pytest.approx([0.02, 0.02 * LR_NEIGHBOURS[0], 0.02 * LR_NEIGHBOURS[1],
                                                    0.02 * LR_NEIGHBOURS[2]])
    assert sorted(LR_NEIGHBOURS[:2]) == [0.5, 2.0]  # nearest first, one on each side
    assert all(r["weight_decay"] == 1e-3 and r["lr_mult"] == {"prompt": 3.0} for r in got)
    assert pick == {"lr": 0.02, "weight_decay": 1e-3, "lr_mult": {"prompt": 3.0}}  # the study's recipe untouched
    # a recipe the study holds twice (here the pick's, in trial 5) is one member, not two
    twice = {**result, "trials": [*trials, {"number": 5, "state": "COMPLETE", "value": 0.8, "structure": "a",
                                            "recipe": {"lr": 1.0}}]}
    assert soup_recipes(twice, 4) == [{"lr": 1.0}, {"lr": 4.0}, {"lr": 5.0}, {"lr": 1.0 * LR_NEIGHBOURS[0]}]


def test_a_soup_of_identical_members_equals_the_member_and_reads_test_once(tmp_path, monkeypatch):
    tiny_minivtab_config(tmp_path)
    run = load_run_config(tmp_path / "config.yaml", ["retrain.epochs=2", "retrain.warmup_epochs=0"])
    subnet = Subnet.uniform(4, lora=4, ssf=1)
    recipe = {"lr": 0.01, "weight_decay": 1e-4}
    built: list[str] = []
    real = data_module.build_dataset

    def counting(cfg, split, *args, **kwargs):
        built.append(split)
        return real(cfg, split, *args, **kwargs)

    monkeypatch.setattr(data_module, "build_dataset", counting)
    two = soup(RunContext.of(run, tmp_path / "two"), subnet, [recipe, recipe], tmp_path / "two")
    assert built.count("test") == 1  # the soup's one score
    assert built.count("train") == 2 and built.count("trainval") == 2  # two members on train, two on trainval
    monkeypatch.setattr(data_module, "build_dataset", real)
    one = soup(RunContext.of(run, tmp_path / "one"), subnet, [recipe], tmp_path / "one")

    assert two["chosen"] == [0, 1] and one["chosen"] == [0]  # an identical member never lowers val
    assert two["members"][0]["val_accuracy"] == two["members"][1]["val_accuracy"] == two["soup_val_accuracy"]
    assert two["test_accuracy"] == one["test_accuracy"]
    assert two["params"] == one["params"]  # the budget: one subnet's count
    model_two, _ = load_export(tmp_path / "two/export")
    model_one, _ = load_export(tmp_path / "one/export")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model_two(x), model_one(x), rtol=1e-5, atol=1e-5)
    assert type(model_two).__module__.startswith("timm")  # LoRA + SSF fold: a plain timm model


def test_a_bad_member_recipe_is_one_line_before_any_training(tmp_path):
    tiny_minivtab_config(tmp_path)
    run = load_run_config(tmp_path / "config.yaml")
    with pytest.raises(UniTuneError, match=r"soup: member 1.*lr_mult"):
        soup(RunContext.of(run, tmp_path / "x"), Subnet.uniform(4, lora=4),
             [{"lr": 0.01}, {"lr": 0.01, "lr_mult": {"nope": 2}}], tmp_path / "x")
    assert not (tmp_path / "x" / "soup").exists()


def test_the_exported_soup_holds_the_mean_of_its_trainval_members(tmp_path, monkeypatch):
    """Two different recipes, both kept (greedy forced to take them): the export's logits are those
    of a model holding the plain mean of the two members trained on trainval (a second
    computation: each member trained here by itself, averaged with torch.mean), and differ from
    either member's."""
    import unitune.retrain.soup as soup_module
    from unitune.engine.config import apply_recipe
    from unitune.search.rerank import standalone_epochs
    import dataclasses

    tiny_minivtab_config(tmp_path)
    run = load_run_config(tmp_path / "config.yaml", ["retrain.epochs=2", "retrain.warmup_epochs=0"])
    subnet = Subnet.uniform(4, lora=4, ssf=1)
    recipes = [{"lr": 0.01, "weight_decay": 1e-4}, {"lr": 0.003, "weight_decay": 0.0}]
    monkeypatch.setattr(soup_module, "greedy", lambda members, score: (list(range(len(members))), 0.5))
    result = soup(RunContext.of(run, tmp_path / "s"), subnet, recipes, tmp_path / "s")
    assert result["chosen"] == [0, 1]

    members, model = [], None
    for recipe in recipes:
        held = []
        member_run = dataclasses.replace(run, retrain=apply_recipe(run.retrain, recipe, "test"))
        for _ in standalone_epochs(member_run, tmp_path / "ref", subnet, 2, split="trainval", on_model=held.append):
            pass
        model = held[0]
        members.append({k: v.detach().clone() for k, v in model.trainable_state_dict().items()})
    mean = {k: torch.stack([m[k] for m in members]).mean(0) for k in members[0]}
    assert any(not torch.allclose(members[0][k], members[1][k]) for k in mean)  # two different members
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    exported, _ = load_export(tmp_path / "s/export")
    model.eval()
    with torch.no_grad():
        model.load_trainable_state_dict(mean)
        torch.testing.assert_close(exported(x), model(x), rtol=1e-4, atol=1e-5)
        model.load_trainable_state_dict(members[1])
        assert not torch.allclose(exported(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_member_that_diverges_is_left_out_and_recorded(tmp_path, monkeypatch):
    from unitune.errors import DivergedError
    import unitune.search.rerank as rerank

    tiny_minivtab_config(tmp_path)
    run = load_run_config(tmp_path / "config.yaml", ["retrain.epochs=1", "retrain.warmup_epochs=0"])
    real = rerank.standalone_epochs

    def diverge_high(run_, out, subnet, epochs, *args, **kwargs):
        if run_.run.retrain.lr > 1:
            raise DivergedError("stand-alone epoch 1/1: the loss is nan (not finite); lower the learning rate")
        yield from real(run_, out, subnet, epochs, *args, **kwargs)

    monkeypatch.setattr(rerank, "standalone_epochs", diverge_high)
    result = soup(RunContext.of(run, tmp_path / "d"), Subnet.uniform(4, lora=4),
                  [{"lr": 0.01, "weight_decay": 0.0}, {"lr": 5.0, "weight_decay": 0.0}], tmp_path / "d")
    assert result["chosen"] == [0] and [d["member"] for d in result["diverged"]] == [1]
    assert result["members"][1]["val_accuracy"] is None and not result["members"][1]["in_soup"]
    with pytest.raises(DivergedError):  # the pick itself diverging is the cell's failure
        soup(RunContext.of(run, tmp_path / "e"), Subnet.uniform(4, lora=4), [{"lr": 5.0}], tmp_path / "e")
