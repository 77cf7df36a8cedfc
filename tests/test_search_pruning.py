"""Cheaper fitness with Optuna's pruning, and the standalone fitness (issue 15): pruned trials
stop early, are never evaluated again and never the best; the standalone fitness trains on train,
scores on val, never builds the test split and needs no supernet."""

from __future__ import annotations

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from search_util import synthetic_accuracy, tiny_dims
from unitune.engine.config import load_run_config
from unitune.errors import UniTuneError
from unitune.search import run_search
from unitune.search.dedup import duplicate_of, held_keys, params_key
from unitune.supernet.encoding import SubnetEncoding
from unitune.search.fitness import StandaloneFitness, growing_parts
from unitune.search.pruning import check_fitness_pruner
from unitune.supernet import SearchSpace, Subnet

BUDGET = 6000


class StagedFitness:
    """Four fidelities per subnet: the synthetic accuracy, with a per-subnet offset that shrinks
    to 0 at step 4. Subnets with an even LoRA total start far too low ("late bloomers"): their
    final value is the highest of all, but successive halving sees only their first steps."""

    n_stages = 4

    def __init__(self):
        self.steps: dict[Subnet, list[int]] = {}

    def final(self, subnet: Subnet) -> float:
        return synthetic_accuracy(subnet) + (1.0 if self.bloomer(subnet) else 0.0)

    @staticmethod
    def bloomer(subnet: Subnet) -> bool:
        return sum(subnet.lora) % 2 == 0 and sum(subnet.lora) > 0

    def staged(self, subnet):
        for step in range(1, 5):
            self.steps.setdefault(subnet, []).append(step)
            yield step, self.final(subnet) - (2.0 * (4 - step) if self.bloomer(subnet) else 0.0)

    def __call__(self, subnet):
        *_, (_, value) = self.staged(subnet)
        return value


@pytest.mark.parametrize("pruner", ["sha", "hyperband"])
def test_pruned_trials_stop_early_are_never_best_and_never_evaluated_twice(pruner):
    fitness = StagedFitness()
    result = run_search(fitness, SearchSpace(), tiny_dims(), BUDGET, 30, sampler="random", seed=0,
                        pruner=pruner, progress=False)
    trials = result.study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned, "the pruner stopped no trial"
    for t in pruned:  # stopped before the last fidelity, at the step it records
        assert t.user_attrs["pruned_at_step"] == max(t.intermediate_values) < 4
        assert "val_accuracy" not in t.user_attrs
    # n_trials counts finished trials: COMPLETE and PRUNED together
    assert len(pruned) + len(complete) == 30 and result.n_complete == len(complete)
    # no subnet evaluated twice, pruned ones included
    assert all(steps == list(range(1, len(steps) + 1)) for steps in fitness.steps.values())
    assert len(fitness.steps) == len(pruned) + len(complete)
    # the best is a COMPLETE trial, even where a pruned trial would have ended higher
    assert result.best_trial.state == TrialState.COMPLETE
    assert result.best_trial.values[0] == max(t.values[0] for t in complete)
    # the single-method seeds report but are never pruned
    seeds = [t for t in trials if t.user_attrs.get("source") == "single-method"]
    assert seeds and all(t.state == TrialState.COMPLETE and len(t.intermediate_values) == 4 for t in seeds)


def test_without_a_pruner_every_fidelity_is_reported_and_nothing_pruned():
    fitness = StagedFitness()
    result = run_search(fitness, SearchSpace(), tiny_dims(), BUDGET, 8, sampler="random", seed=1, progress=False)
    trials = result.study.get_trials(deepcopy=False)
    assert all(t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [1, 2, 3, 4] for t in trials)
    assert all(t.values[0] == pytest.approx(fitness.final(fitness_subnet(t))) for t in trials)


def fitness_subnet(trial):
    return SubnetEncoding(SearchSpace(), 4, tiny_dims()).decode(trial.params)


def test_a_pruned_trial_holds_its_subnet():
    """A PRUNED trial's subnet is not proposed again nor evaluated again by another trial."""
    encoding = SubnetEncoding(SearchSpace(), 4, tiny_dims())
    study = optuna.create_study()
    params = encoding.encode(Subnet.uniform(4, lora=1))
    dist = encoding.distributions
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dist, state=TrialState.PRUNED,
                                              intermediate_values={1: 0.1}))
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dist, state=TrialState.RUNNING))
    assert params_key(params, encoding.names) in held_keys(study, encoding.names)
    assert duplicate_of(study, 1, encoding.names) == 0


def test_growing_parts_partition_the_val_images_in_a_shuffled_order():
    batches = [(torch.arange(i, i + 4).float()[:, None], torch.arange(i, i + 4)) for i in range(0, 12, 4)]
    parts = growing_parts(batches, 4, batch_size=2)
    labels = [torch.cat([y for _, y in part]).tolist() for part in parts]
    assert [len(p) for p in labels] == [3, 3, 3, 3]
    assert sorted(sum(labels, [])) == list(range(12)) and sum(labels, []) != list(range(12))
    for part in parts:
        for x, y in part:
            assert len(y) <= 2 and torch.equal(x[:, 0].long(), y)  # images stay with their labels


@pytest.mark.parametrize("fitness, pruner, objectives, expected", [
    ("supernet", "auto", "acc", "none"), ("standalone", "auto", "acc", "hyperband"),
    ("standalone", "auto", "acc,params", "none"), ("supernet", "sha", "acc", "sha"),
])
def test_auto_pruner(fitness, pruner, objectives, expected):
    assert check_fitness_pruner(fitness, pruner, objectives, "search") == expected


@pytest.mark.parametrize("fitness, pruner, objectives, fragment", [
    ("supernet", "asha", "acc", "search.pruner: expected one of ['auto', 'none', 'sha', 'hyperband'], got 'asha'"),
    ("inherited", "none", "acc", "search.fitness: expected one of ['supernet', 'standalone'], got 'inherited'"),
    ("supernet", "sha", "acc,params", "search.pruner: 'sha' needs the single objective 'acc'"),
])
def test_bad_fitness_or_pruner_is_a_one_line_error(fitness, pruner, objectives, fragment):
    with pytest.raises(UniTuneError) as e:
        check_fitness_pruner(fitness, pruner, objectives, "search")
    assert fragment in str(e.value) and "\n" not in str(e.value)


TINY_RUN = {
    "name": "tiny", "device": "cpu",
    "model": {"backbone": "vit_tiny_patch16_224",
              "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}},
    "data": {"source": "digits", "classes": [5, 6, 7], "batch_size": 64, "num_workers": 0},
    "space": {"lora": [0, 1, 4], "adapter": [0, 2, 4], "vpt": [0, 2], "ssf": [0, 1], "ssf_global": [0, 1]},
    "search": {"budget": "1.5k", "trials": 3, "fitness": "standalone", "standalone_epochs": 2, "pruner": "sha"},
    "retrain": {"epochs": 5, "lr": 0.005},
}


@pytest.fixture
def guarded_splits(monkeypatch):
    import unitune.data
    import unitune.retrain.evaluate  # noqa: F401  imported first: they bind build_dataset by name, and
    import unitune.retrain.train  # noqa: F401  must not keep the guarded one after this test

    real = unitune.data.build_dataset
    splits = []

    def guarded(data_cfg, split, *args, **kwargs):
        splits.append(split)
        if split not in ("train", "val"):
            raise AssertionError(f"the standalone fitness read the {split!r} split")
        return real(data_cfg, split, *args, **kwargs)

    monkeypatch.setattr(unitune.data, "build_dataset", guarded)
    return splits


def test_standalone_fitness_reports_each_epoch_on_val_and_never_reads_test(tmp_path, guarded_splits):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(TINY_RUN))
    run = load_run_config(path)
    fitness = StandaloneFitness(run, tmp_path, epochs=2)
    steps = list(fitness.staged(Subnet.uniform(2, lora=4)))
    assert [s for s, _ in steps] == [1, 2] and all(0.0 <= a <= 1.0 for _, a in steps)
    assert set(guarded_splits) == {"train", "val"}
    n_train = len(__import__("unitune.data", fromlist=["x"]).build_dataset(run.data, "train", None))
    assert fitness.last_cost["train_images"] == 2 * n_train
    # the last fidelity is what re-ranking measures for the same subnet and epochs
    from unitune.search.rerank import standalone_val_accuracy

    assert steps[-1][1] == standalone_val_accuracy(run, tmp_path, Subnet.uniform(2, lora=4), 2)


def test_standalone_search_needs_no_supernet_and_never_reads_test(tmp_path, guarded_splits):
    from unitune.search.stage import search_stage

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(TINY_RUN))
    run = load_run_config(path)
    result, written = search_stage(run, tmp_path / "out", progress=False)
    trials = result.study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3 and result.best_trial.state == TrialState.COMPLETE
    assert all(t.user_attrs["train_images"] > 0 for t in finished)
    assert result.study.user_attrs["pruner"] == "sha" and "supernet" not in result.study.user_attrs
    assert not (tmp_path / "out" / "supernet.safetensors").exists()
    assert (tmp_path / "out" / "best_subnet.yaml").is_file()
    assert "test" not in guarded_splits


def test_unitune_run_with_the_standalone_fitness_trains_no_supernet(tmp_path):
    from unitune.commands.pipeline import run_all

    cfg = {**TINY_RUN, "pretrain": {"data": {"source": "digits", "classes": [0, 1, 2], "batch_size": 64,
                                             "num_workers": 0}, "epochs": 1, "lr": 0.003},
           "search": {**TINY_RUN["search"], "standalone_epochs": 1, "pruner": "auto",
                      "rerank": {"top_k": 2, "epochs": 1}},
           "retrain": {"epochs": 1, "lr": 0.005}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary = run_all(load_run_config(path), tmp_path / "out", progress=False)
    assert "supernet" in summary["skipped"] and summary["seconds"]["supernet"] is None
    assert not (tmp_path / "out" / "supernet.safetensors").exists() and not (tmp_path / "out" / "supernet_ckpt").exists()
    assert summary["search_trials"] == 3 and 0 <= summary["test_accuracy"] <= 1


def test_a_low_rerank_tau_recommends_the_standalone_fitness(tmp_path, caplog):
    from unitune.search.rerank import rerank

    study = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 10, sampler="random", seed=0,
                       study_attrs={"backbone": "vit_tiny_patch16_224"}, progress=False).study
    record = rerank(None, tmp_path, study, top_k=3, epochs=1,
                    train=lambda run, out, subnet, epochs, progress: -synthetic_accuracy(subnet))
    assert record["kendall"]["tau"] == pytest.approx(-1.0)
    assert "search.fitness: standalone" in caplog.text
