"""Greedy weight soups of one structure's tuned finalists (Wortsman et al., "Model soups", ICML 2022).

Models fine-tuned from one pre-trained start with different hyper-parameters often lie in one
basin, and the average of their weights beats the best of them at no inference cost. Here the
members are one subnet trained with the recipes a tune study ranked best (its top trials of the
picked structure, then the pick at neighbouring learning rates: :func:`soup_recipes`), from **one
initialisation** (the same seed: the same PEFT and head init, the same data order).

**The budget rule.** What is averaged is each member's trainable tensors themselves (the LoRA
factors A and B, the adapters, prompts, SSF scales and shifts, the head), never the merged
weights: members of one structure have the same tensors, so the soup is a model of that
structure with exactly the budgeted parameter count, merged (LoRA, DoRA, SSF and BitFit fold into
the backbone) at the backbone's inference cost like any retrained subnet. Members of different
structures are refused. (Averaging merged weights instead would give a LoRA delta of rank up to
the sum of the members' ranks: a soup of different structures, if offered, would count the sum
of its members' trainable parameters against the budget.)

**The protocol, honest about val and test.** (1) Each member trains on the **train** split for
the retrain's epochs and is scored on **val**. (2) Greedy on val: the members in order of val
accuracy; each joins the soup when the soup's val accuracy with it is at least the soup's
without it. (3) The chosen recipes train again on **trainval** (the retrain's data, as every
other row of a comparison) from the same initialisation, their weights are averaged, and the soup
is scored once on **test** and exported. The choice is made on val by models that never saw it;
test is read once, at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from unitune.engine.config import apply_recipe
from unitune.engine.context import RunContext
from unitune.errors import DivergedError, UniTuneError
from unitune.io import write_json_atomic
from unitune.supernet import Subnet

SOUP_DIR = "soup"
SOUP_RESULT = "soup_result.json"


def average(states: Sequence[dict[str, torch.Tensor]], source: str = "soup") -> dict[str, torch.Tensor]:
    """The uniform average of ``states``: the same tensor names and shapes in each (one structure),
    or one line naming the first that differs."""
    if not states:
        raise ValueError("average: no state to average")
    first = states[0]
    for k, state in enumerate(states[1:], 1):
        odd = sorted(first.keys() ^ state.keys()) or [n for n in first if first[n].shape != state[n].shape]
        if odd:
            raise UniTuneError(f"{source}: member {k} differs from member 0 at {odd[0]!r}: a soup averages members "
                               f"of one structure (the budget counts one subnet's parameters)")
    # in float64: the mean of identical float32 (or bf16) members is then exactly the member
    return {n: torch.stack([s[n].double() for s in states]).mean(0).to(first[n].dtype) for n in first}


def greedy(members: Sequence[tuple[dict[str, torch.Tensor], float]],
           score: Callable[[dict[str, torch.Tensor]], float]) -> tuple[list[int], float]:
    """Wortsman's greedy soup: ``members`` (state, val accuracy) taken best first (ties: the
    given order); each joins when ``score`` (val accuracy) of the average with it is at least
    that without it. Returns the chosen members' indices (best first) and the soup's score."""
    order = sorted(range(len(members)), key=lambda i: (-members[i][1], i))
    chosen, best = [order[0]], members[order[0]][1]
    for i in order[1:]:
        trial = score(average([members[j][0] for j in [*chosen, i]]))
        if trial >= best:
            chosen, best = [*chosen, i], trial
    return chosen, best


def soup(run, subnet: Subnet, recipes: Sequence[dict[str, Any]], out: str | Path, progress: bool = False,
         label: str = "soup") -> dict[str, Any]:
    """Greedy soup of ``subnet`` trained with each of ``recipes`` (best first, as a tune study
    ranked them), by the protocol of the module docstring; the soup is tested once and exported
    to ``out/export``. Returns (and writes to ``out/soup/soup_result.json``) the result."""
    from unitune.data import build_dataset, build_loader, build_transform, resolve_data_config
    from unitune.engine.train import evaluate, round_metric
    from unitune.search.rerank import standalone_epochs
    from unitune.supernet import count_params

    from .export import export_model

    ctx = RunContext.of(run, out)
    run, out = ctx.run, ctx.out
    if not recipes:
        raise UniTuneError(f"{label}: no member recipe")
    subnet.check(ctx.depth, ctx.space, source=label)
    epochs = run.retrain.epochs
    for k, recipe in enumerate(recipes):  # every recipe checked before any training
        apply_recipe(run.retrain, recipe, f"{label}: member {k}")
    test_set = build_dataset(run.data, "test", None)
    test_set.verify_files()  # read once, at the end: a broken file is named now
    started, cpu = time.perf_counter(), time.process_time()

    def train(recipe: dict[str, Any], split: Any) -> tuple[dict[str, torch.Tensor], float, Any]:
        cfg = apply_recipe(run.retrain, recipe, label)
        held: list = []
        accuracy = float("nan")
        for _, accuracy in standalone_epochs(ctx.moved(out, dataclasses.replace(run, retrain=cfg)), out, subnet,
                                             epochs, progress, split=split, on_model=held.append):
            pass
        model = held[0]
        return {n: t.detach().clone() for n, t in model.trainable_state_dict().items()}, accuracy, model

    # (1) members on train, scored on val. A recipe from a short trial can diverge over the full
    # epochs: that member is left out (and recorded); the soup needs its first, the pick.
    members, model, kept, diverged = [], None, [], []
    for k, recipe in enumerate(recipes):
        try:
            state, val_accuracy, model = train(recipe, None)
        except DivergedError as e:
            if k == 0:
                raise
            diverged.append({"member": k, "reason": str(e)[:300]})
            continue
        members.append((state, val_accuracy))
        kept.append(k)
        if progress:
            print(f"{label}: member {k} val accuracy {val_accuracy:.4f}")
    # (2) greedy on val
    val_set = build_dataset(run.data, "val", None)
    data_config = resolve_data_config(model.vit)
    val_set.transform = build_transform(data_config, train=False, cfg=run.data)
    val_loader = build_loader(val_set, run.data, train=False, seed=run.retrain.seed, device=ctx.device)

    def score(state: dict[str, torch.Tensor]) -> float:
        model.load_trainable_state_dict(state, source=label)
        return float(evaluate(model, val_loader, ctx.device, val_set.num_classes, run.retrain.amp)["accuracy"])

    chosen, soup_val = greedy(members, score)
    chosen = [kept[i] for i in chosen]  # recipe indices
    # (3) the chosen recipes on trainval, from the same initialisation; averaged; test once
    final = []
    for i in chosen:
        try:
            state, _, model = train(recipes[i], "trainval")
        except DivergedError as e:  # on trainval only: left out of the average, recorded
            diverged.append({"member": i, "reason": "on trainval: " + str(e)[:300]})
            continue
        final.append(state)
    if not final:
        raise UniTuneError(f"{label}: every chosen member diverged on trainval: {diverged[-1]['reason']}")
    model.load_trainable_state_dict(average(final, label), source=label)
    test_set.transform = build_transform(data_config, train=False, cfg=run.data)
    test_loader = build_loader(test_set, run.data, train=False, seed=run.retrain.seed, device=ctx.device)
    test = evaluate(model, test_loader, ctx.device, test_set.num_classes, amp=False)
    dims = ctx.dims_for(test_set.num_classes)
    params = count_params(subnet, dims, ctx.space).to_dict()
    averaged = [i for i in chosen if i not in {d["member"] for d in diverged}]
    result = {
        "test_accuracy": round_metric(test["accuracy"]), "test_images": test["n"], "test_precision": "float32",
        "members": [{"recipe": dict(r), "val_accuracy": members[kept.index(i)][1] if i in kept else None,
                     "in_soup": i in averaged} for i, r in enumerate(recipes)],
        "chosen": averaged, "diverged": diverged,
        "soup_val_accuracy": soup_val, "best_member_val_accuracy": max(a for _, a in members),
        "epochs": epochs, "params": params, "subnet": subnet.to_dict()["subnet"],
        "seconds": round(time.perf_counter() - started, 2), "cpu_seconds": round(time.process_time() - cpu, 2),
    }
    folder = out / SOUP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / SOUP_RESULT, result)
    provenance = {"config": run.raw, "config_file": run.source, "soup": result["members"], "test_split": "test",
                  "test_accuracy": result["test_accuracy"], "data": run.data.to_dict()}
    export_model(ctx.layout.export, model.eval(), run.model.backbone, model_kwargs=run.model.kwargs,
                 class_names=list(test_set.classes), data_config=data_config, provenance=provenance)
    if progress:
        print(f"{label}: {len(result['chosen'])} of {len(recipes)} members, val {soup_val:.4f} (best member "
              f"{result['best_member_val_accuracy']:.4f}); test accuracy {result['test_accuracy']:.4f} "
              f"({result['test_images']} images) -> {ctx.layout.export}")
    return result


# The pick's recipe at neighbouring learning rates, nearest first: the members a study too short to
# complete several trials of one structure leaves missing (the pruner stops trials after their
# first epochs, and the search row spreads its trials over several structures). A sweep around one
# rate from one initialisation is a soup's classic member set (Wortsman et al. sweep the learning
# rate among other values); greedy on val admits a neighbour only where it helps.
LR_NEIGHBOURS = (0.5, 2.0, 0.25, 4.0)


def soup_recipes(tune_result: dict[str, Any], members: int) -> list[dict[str, Any]]:
    """``members`` recipes for a soup of the tune pick's structure: the pick's own, then the study's
    other complete trials of that structure (by val accuracy; ties: the earlier trial), then, while
    fewer, the pick's recipe with its learning rate times each of :data:`LR_NEIGHBOURS` in turn
    (``lr_mult`` and weight decay kept: every family moves with the base rate). Each recipe once:
    a study can hold one recipe twice (a resumed seeded sampler, or trials imported from several
    studies), and a member trained twice from one seed is the same weights again."""
    label = tune_result["structure"]
    same = [t for t in tune_result["trials"] if t.get("structure") == label and t["state"] == "COMPLETE"
            and t.get("value") is not None and t["number"] != tune_result["trial"]]
    same.sort(key=lambda t: (-t["value"], t["number"]))
    pick = tune_result["recipe"]
    found: list[dict[str, Any]] = []
    for recipe in [pick, *(t["recipe"] for t in same), *({**copy.deepcopy(pick), "lr": pick["lr"] * f}
                                                          for f in LR_NEIGHBOURS)]:
        if recipe not in found:
            found.append(recipe)
    return found[:members]


__all__ = ["LR_NEIGHBOURS", "SOUP_DIR", "SOUP_RESULT", "average", "greedy", "soup", "soup_recipes"]
