"""One RunContext per command: a tiny `unitune run` builds the search space, the shapes-only
backbone, the budget and the seed subnets once, and the sampler once to check it plus once seeded
for its study; the context's dims and frozen count agree with a real backbone's; RunLayout names
what the stages write."""

from __future__ import annotations

import collections
import sys

import pytest
import torch

import unitune.engine.backbone
import unitune.search.sampler
import unitune.search.study
import unitune.supernet.budget
from test_pipeline import write_config
from unitune.engine.backbone import create_backbone
from unitune.engine.config import load_run_config
from unitune.engine.context import RunContext, RunLayout
from unitune.errors import UniTuneError
from unitune.commands.pipeline import run_all
from unitune.supernet import BackboneDims, SearchSpace


def _count_calls(monkeypatch, counts: collections.Counter, func, name: str, when=lambda args, kwargs: True) -> None:
    """Count ``func``'s calls under every name a unitune module imported it as."""
    def counted(*args, **kwargs):
        if when(args, kwargs):
            counts[name] += 1
        return func(*args, **kwargs)

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("unitune"):
            for attr, value in list(vars(module).items()):
                if value is func:
                    monkeypatch.setattr(module, attr, counted)


@pytest.fixture(scope="module")
def counted_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctx")
    config = write_config(folder, pretrain__epochs=1, supernet__epochs=1, retrain__epochs=1, search__trials=4,
                          search__rerank={"top_k": 2, "epochs": 1})
    counts: collections.Counter = collections.Counter()
    with pytest.MonkeyPatch.context() as mp:
        run_space = f"{config}: space"
        from_dict = SearchSpace.from_dict.__func__

        def counted_from_dict(cls, data, source="space"):
            counts["space"] += source == run_space  # the run's (a study's or an export's space is read back)
            return from_dict(cls, data, source)

        mp.setattr(SearchSpace, "from_dict", classmethod(counted_from_dict))
        import unitune.commands.pipeline  # noqa: F401 (every stage module imported before the counters go in)
        import unitune.retrain.train  # noqa: F401
        import unitune.search.stage  # noqa: F401

        _count_calls(mp, counts, unitune.engine.backbone.create_backbone, "shapes", lambda a, k: k.get("meta", False))
        _count_calls(mp, counts, unitune.supernet.budget.parse_budget, "budget")
        _count_calls(mp, counts, unitune.search.study.prepare_seeds, "seeds")
        _count_calls(mp, counts, unitune.search.sampler.make_sampler, "sampler")
        summary = run_all(load_run_config(config), folder / "out", progress=False)
    return config, folder / "out", summary, counts


def test_one_run_builds_each_thing_once(counted_run):
    _, _, summary, counts = counted_run
    assert summary["complete"] and summary["search_trials"] == 4
    # Before the context (e9367a8, `unitune run` on configs/demo.yaml with its epochs cut): the
    # run's space was built 13 times, a shapes-only backbone 14, the budget parsed 4 times, the
    # seeds prepared 4 and the sampler made 4 times.
    assert counts["space"] == 1  # load_run_config checks it built; the context keeps that one
    assert counts["shapes"] == 1
    assert counts["budget"] == 1
    assert counts["seeds"] == 1
    # Once to check the name and options before the supernet trains, once seeded by the worker's
    # seed that only joining the study decides.
    assert counts["sampler"] == 2


def test_layout_names_what_the_stages_wrote(counted_run):
    _, out, summary, _ = counted_run
    layout = RunLayout(out)
    for path in (layout.config_echo, layout.summary, layout.pretrain_weights, layout.supernet, layout.supernet_log,
                 layout.supernet_state, layout.study_db, layout.best_subnet, layout.trials_csv, layout.rerank_plot,
                 layout.curves, layout.retrain_log, layout.retrain_result, layout.export_manifest,
                 layout.retrain_state):
        assert path.is_file(), path
    assert summary["export"] == str(layout.export)
    assert summary["artefacts"]["best subnet"] == str(layout.best_subnet)


def test_context_dims_and_frozen_count_match_a_real_backbone(counted_run):
    config, out, _, _ = counted_run
    run = load_run_config(config)
    ctx = RunContext(run, out)
    for classes in (2, 3, 10):
        real = create_backbone(run.model.backbone, classes, kwargs=run.model.kwargs)
        assert ctx.dims_for(classes) == BackboneDims.from_model(real)
        head = sum(p.numel() for p in real.get_classifier().parameters())
        assert ctx.frozen == sum(p.numel() for p in real.parameters()) - head
    # the percentage budget refers to that count
    assert ctx.budget("1%") == round(ctx.frozen / 100)


def test_context_is_reused_and_moved_with_its_config_share(counted_run, tmp_path):
    config, out, _, _ = counted_run
    ctx = RunContext(load_run_config(config), out)
    assert RunContext.of(ctx) is ctx and RunContext.of(ctx, out) is ctx
    assert ctx.frozen > 0  # builds the shapes (and the space) the moved context then shares
    other = RunContext.of(ctx, tmp_path)
    assert other.out == tmp_path and other.layout.best_subnet == tmp_path / "best_subnet.yaml"
    assert other.space is ctx.space and other.shapes is ctx.shapes
    with pytest.raises(TypeError, match="needs its run folder"):
        RunContext.of(ctx.run)


def test_budget_is_parsed_once_per_value_and_a_bad_one_names_where(counted_run):
    config, out, _, _ = counted_run
    ctx = RunContext(load_run_config(config), out)
    assert ctx.budget("1.5k") == 1500 and ctx.budget(1500) == 1500
    with pytest.raises(UniTuneError, match=r"^x: search.budget"):
        ctx.budget("lots", "x: search.budget")
    with pytest.raises(UniTuneError, match=r"^y: supernet.budget"):  # not cached: each caller's name
        ctx.budget("lots", "y: supernet.budget")
    assert torch.device(ctx.device).type == "cpu"


def test_the_frozen_count_leaves_out_every_classifier_head_a_distilled_deit_included():
    """A distilled DeiT has two heads (timm's get_classifier gives a tuple): both are left out."""
    import timm

    from unitune.engine.context import frozen_params

    tiny = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)
    for name in ("vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"):
        vit = timm.create_model(name, pretrained=False, num_classes=7, **tiny)
        heads = [m for m in (vit.head, getattr(vit, "head_dist", None)) if m is not None]
        by_hand = sum(p.numel() for p in vit.parameters()) - sum(p.numel() for h in heads for p in h.parameters())
        assert frozen_params(vit) == by_hand
        assert len(heads) == (2 if "distilled" in name else 1)


def test_compare_builds_the_space_and_the_shapes_once_per_plan_not_per_cell(tmp_path, monkeypatch):
    """`unitune compare --quick`'s plan and its cells up to their retraining (stubbed: what the
    cells train is tests/test_compare.py's) share one context per task: the tasks' one space, one
    shapes-only backbone, one trainval index per task, and every single-method row's size the
    largest uniform one within the budget, as a real backbone with the task's head counts it."""
    from pathlib import Path

    import unitune.commands.compare.run  # noqa: F401 (imported before the counters go in)
    import unitune.data
    import unitune.retrain.train
    from unitune.commands.compare import plan_compare, run_cell
    from unitune.supernet import Subnet, count_params

    config = Path(__file__).resolve().parents[1] / "configs" / "minivtab.yaml"
    tasks, methods, seeds = ("count", "terrain"), ("linear", "lora", "adapter", "vpt", "ssf"), (0, 1)
    counts: collections.Counter = collections.Counter()
    contexts = []

    def retrain(ctx, path, out, **kwargs):  # the cell's context, as retrain would get it
        contexts.append(ctx)
        return {"test_accuracy": 0.5, "test_images": 1, "params": {"trainable_params": 0, "trainable_params_with_head": 1}}

    with pytest.MonkeyPatch.context() as mp:
        from_dict = SearchSpace.from_dict.__func__

        def counted_from_dict(cls, data, source="space"):
            counts["space"] += 1
            return from_dict(cls, data, source)

        mp.setattr(SearchSpace, "from_dict", classmethod(counted_from_dict))
        _count_calls(mp, counts, unitune.engine.backbone.create_backbone, "shapes", lambda a, k: k.get("meta", False))
        _count_calls(mp, counts, unitune.data.build_dataset, "trainval", lambda a, k: a[1] == "trainval")
        mp.setattr(unitune.retrain.train, "retrain", retrain)
        plan = plan_compare(config, tmp_path / "run", tasks=tasks, seeds=seeds, methods=methods, quick=True)
        rows = [run_cell(plan, *cell) for cell in plan.cells]
        # with a search row, the plan checks the search on a context moved from the task's: what
        # that check builds serves the cells too
        searched = plan_compare(config, tmp_path / "searched", tasks=tasks[:1], seeds=(0,), methods=("lora", "search"),
                                quick=True)
        run_cell(searched, tasks[0], "lora", 0)
    # Before (63f5bb1): the plan built the space 3 times and the shapes twice, and its 20 cells the
    # space 16 times more, the shapes 36 times and the trainval split (for its class count) 36 times.
    assert len(rows) == len(plan.cells) == 20
    # load_run_config checks the space built; every context keeps that one (one per plan)
    assert counts["space"] == 2
    assert counts["shapes"] == 2  # the tasks share one model: one shapes-only backbone per plan
    assert counts["trainval"] == len(tasks) + 1  # the plan's index check, which also gives the class count
    assert contexts[-1].shapes is searched.context(tasks[0]).shapes
    contexts.pop()
    assert all(ctx.shapes is plan.context("count").shapes and ctx.space is plan.context("count").space
               for ctx in contexts)
    assert [ctx.out for ctx in contexts] == [plan.cell_dir(*cell) for cell in plan.cells]
    assert [ctx.run.retrain.seed for ctx in contexts] == [s for _ in tasks for _ in methods for s in seeds]

    # The sizes against a second computation: a real backbone with the task's head, the space built anew.
    run = plan.task_runs["count"]
    space = SearchSpace.from_dict(run.space)
    for task in tasks:
        classes = unitune.data.build_dataset(plan.task_runs[task].data, "trainval", None).num_classes
        real = create_backbone(run.model.backbone, classes, kwargs=run.model.kwargs)
        dims = BackboneDims.from_model(real)
        frozen = sum(p.numel() for p in real.parameters()) - sum(p.numel() for p in real.get_classifier().parameters())
        budget = unitune.supernet.budget.parse_budget(run.search.budget, frozen)
        for method in methods[1:]:
            companions = space.choices("ssf_global") if method == "ssf" else [None]
            options = [Subnet.uniform(dims.depth, **{method: size}, **({} if g is None else {"ssf_global": g}))
                       for size in space.choices(method) if size for g in companions]
            best = max((o for o in options if count_params(o, dims, space).total <= budget),
                       key=lambda o: count_params(o, dims, space).total)
            for seed in seeds:
                saved = Subnet.load(plan.cell_dir(task, method, seed) / "subnet.yaml")
                assert saved.to_dict() == best.to_dict(), (task, method, seed)
