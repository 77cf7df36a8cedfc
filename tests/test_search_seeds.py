"""Seeds of a study (issues 14 and 15): each worker's own sampler seed, the single-method subnets
in every new study, and no subnet evaluated twice."""

from __future__ import annotations

import json

import numpy as np
import optuna
from optuna.trial import TrialState

from search_util import decode_independently, n_params, synthetic_accuracy, tiny_dims
from unitune.search import run_search
from unitune.supernet.encoding import SubnetEncoding
from unitune.search.objective import SubnetObjective
from unitune.search.seeds import single_method_subnets, worker_seed
from unitune.supernet import SearchSpace, Subnet, count_params

BUDGET = 6000


def key(params) -> str:
    return json.dumps(dict(params), sort_keys=True)


# ---- worker seeds ------------------------------------------------------------------------------


def test_worker_seed_is_numpy_seed_sequence_and_differs_per_worker():
    expected = [int(np.random.SeedSequence(0, spawn_key=(i,)).generate_state(1)[0]) for i in range(4)]
    assert [worker_seed(0, i) for i in range(4)] == expected
    assert len(set(expected)) == 4


def test_each_joining_worker_takes_the_next_number_and_its_own_seed(tmp_path):
    db = tmp_path / "study.db"
    runs = [run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, n, storage=db, sampler="random",
                       seed=0, progress=False) for n in (5, 8, 11)]
    study = runs[-1].study
    assert study.user_attrs["seed"] == 0
    workers = {k: v for k, v in study.user_attrs.items() if k.startswith("worker.")}
    assert sorted(workers) == ["worker.000", "worker.001", "worker.002"]
    assert [workers[f"worker.{i:03d}"]["seed"] for i in range(3)] == [worker_seed(0, i) for i in range(3)]
    sampled = [t for t in study.trials if t.user_attrs.get("source") is None]
    assert {(t.user_attrs["worker_index"], t.user_attrs["sampler_seed"]) for t in sampled} == {
        (i, worker_seed(0, i)) for i in range(3)}
    assert len({key(t.params) for t in study.trials}) == 11


def test_a_study_without_a_seed_records_the_one_it_drew_and_replays_from_it(tmp_path):
    first = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 8, storage=tmp_path / "a.db",
                       sampler="tpe", sampler_options=dict(n_startup_trials=3), progress=False)
    drawn = first.study.user_attrs["seed"]
    assert isinstance(drawn, int)
    again = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 8, storage=tmp_path / "b.db",
                       sampler="tpe", seed=drawn, sampler_options=dict(n_startup_trials=3), progress=False)
    assert [t.params for t in again.study.trials] == [t.params for t in first.study.trials]


# ---- single-method seeds -----------------------------------------------------------------------


def test_single_method_subnets_are_the_largest_uniform_size_within_budget():
    space, dims = SearchSpace(), tiny_dims()
    enc = SubnetEncoding(space, 4, dims)
    found = {label: enc.decode(params) for label, params in single_method_subnets(enc, BUDGET)}
    # tiny ViT, d=64: LoRA r on qkv 256·r per block, Adapter dim k 129·k + 64 ... computed by count_params
    expected = {}
    for method in ("lora", "adapter", "vpt", "ssf"):
        fits = [s for s in space.choices(method)[1:]
                if n_params(Subnet.uniform(4, **{method: s})) <= BUDGET]
        assert fits, method
        size = max(fits)
        subnet = Subnet.uniform(4, **{method: size})
        if method == "ssf" and n_params(Subnet.uniform(4, ssf=1, ssf_global=1)) <= BUDGET:
            subnet = Subnet.uniform(4, ssf=1, ssf_global=1)
        expected[method] = subnet
        # the next size up does not fit: it is the largest
        larger = [s for s in space.choices(method) if s > size]
        assert all(n_params(Subnet.uniform(4, **{method: s})) > BUDGET for s in larger)
    assert sorted(found.values(), key=str) == sorted(expected.values(), key=str)
    assert {label.split()[0] for label in found} == {"lora", "adapter", "vpt", "ssf"}


def test_every_new_study_starts_with_the_single_methods_within_budget(tmp_path):
    space, dims = SearchSpace(), tiny_dims()
    for sampler in ("tpe", "random", "nsga2"):
        result = run_search(synthetic_accuracy, space, dims, BUDGET, 6, storage=tmp_path / f"{sampler}.db",
                            sampler=sampler, seed=0, progress=False)
        trials = sorted(result.study.trials, key=lambda t: t.number)
        singles = [t for t in trials if t.user_attrs.get("source") == "single-method"]
        assert [t.number for t in singles] == [0, 1, 2, 3]
        assert all(t.state == TrialState.COMPLETE for t in singles)
        for t in singles:
            subnet = decode_independently(t.params, space, 4)
            method = t.user_attrs["single_method"].split()[0]
            others = [m for m in ("lora", "adapter", "vpt", "ssf") if m != method]
            assert all(s == 0 for m in others for s in subnet.sizes(m))
            assert len(set(subnet.sizes(method))) == 1 and subnet.sizes(method)[0] > 0
            assert t.user_attrs["n_params"] == count_params(subnet, dims, space).total <= BUDGET
    # Joining the study does not enqueue them again.
    again = run_search(synthetic_accuracy, space, dims, BUDGET, 8, storage=tmp_path / "tpe.db", sampler="tpe",
                       seed=0, progress=False)
    assert sum(t.user_attrs.get("source") == "single-method" for t in again.study.trials) == 4


def test_single_methods_come_after_user_seeds_and_within_n_trials():
    seed = Subnet((1, 1, 1, 1), (0,) * 4, (0,) * 4, (0,) * 4)
    result = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 3, sampler="random", seed=0,
                        seed_subnets=[seed], progress=False)
    trials = sorted(result.study.trials, key=lambda t: t.number)
    assert [t.user_attrs.get("source") for t in trials] == ["seed", "single-method", "single-method"]
    assert not [t for t in trials if t.state == TrialState.WAITING]


# ---- no subnet evaluated twice -----------------------------------------------------------------


class Stubborn(optuna.samplers.BaseSampler):
    """A base sampler that proposes the same subnet on every call (as a converged sampler does)."""

    def __init__(self, params):
        self.params = params

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        return self.params[name]


def test_a_sampler_that_repeats_itself_never_gets_a_subnet_evaluated_twice():
    enc = SubnetEncoding(SearchSpace(), 4, tiny_dims())
    fixed = {name: 0 for name in enc.names} | {"vpt.02": 1}  # within budget: the repair keeps it
    evaluated = []

    def evaluate(subnet):
        evaluated.append(subnet)
        return synthetic_accuracy(subnet)

    result = run_search(evaluate, SearchSpace(), tiny_dims(), BUDGET, 12, sampler=Stubborn(fixed), seed=0,
                        progress=False)
    complete = result.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 12 == len(evaluated)
    assert len({key(t.params) for t in complete}) == 12 == len(set(evaluated))
    # The sampler was asked again, and said how often, on the trials it proposed.
    resampled = [t.system_attrs["unitune:resampled"] for t in complete if "unitune:resampled" in t.system_attrs]
    assert resampled[0] == 0 and all(r > 0 for r in resampled[1:])


def test_a_sampled_trial_steps_back_for_a_stored_subnet_and_is_not_evaluated():
    """The check after storing: a sampled trial whose subnet another trial holds (as when two
    workers sample it at the same moment, each before the other stored it) fails as a duplicate,
    unevaluated; an enqueued trial (a seed, a retry) steps back only for a COMPLETE one."""
    enc = SubnetEncoding(SearchSpace(), 4, tiny_dims())
    params = {name: 0 for name in enc.names} | {"lora.00": 1}
    study = optuna.create_study(direction="maximize", sampler=Stubborn(params))  # no pre-check here
    evaluated = []
    objective = SubnetObjective(lambda s: evaluated.append(s) or 0.9, enc, BUDGET, ("acc",), n_trials=10)
    running = study.ask()  # another worker's trial, stored and being evaluated
    for name, d in enc.distributions.items():
        running.suggest_categorical(name, d.choices)

    mine = study.ask()
    assert np.isnan(objective(mine)) and not evaluated
    frozen = study.get_trials()[mine.number]
    assert frozen.params == params
    assert frozen.user_attrs["fail_reason"] == f"duplicate: trial {running.number} holds the same subnet; not evaluated"
    study.tell(mine, state=TrialState.FAIL)

    study.enqueue_trial(params, user_attrs={"source": "seed"})
    seed = study.ask()  # the RUNNING sampled trial does not stop an enqueued one
    assert objective(seed) == 0.9 and len(evaluated) == 1
    study.tell(seed, 0.9)
    study.enqueue_trial(params)
    late = study.ask()  # but a COMPLETE trial does
    assert np.isnan(objective(late)) and len(evaluated) == 1
    assert study.get_trials()[late.number].user_attrs["fail_reason"].startswith(f"duplicate: trial {seed.number}")
