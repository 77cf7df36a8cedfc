"""The study stores each parameter as its size (the dashboard's plots read ranks, widths and
tokens), the samplers still model ordered indices, and a study made before the sizes (indices,
``IntDistribution``) is still read, and refused in one line for a further search."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState
from search_util import decode_independently, synthetic_accuracy, tiny_dims

from unitune.errors import UniTuneError
from unitune.search import export_subnets, run_search
from unitune.supernet.encoding import SubnetEncoding
from unitune.search.sampler import make_sampler
from unitune.supernet import SearchSpace, Subnet, count_params

BUDGET = 3000


class Spy(optuna.samplers.RandomSampler):
    """A random base sampler that records what it is shown of the study."""

    def __init__(self):
        super().__init__(seed=0)
        self.seen_distributions: list = []
        self.seen_params: list = []

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if name in t.params:
                self.seen_distributions.append(t.distributions[name])
                self.seen_params.append((name, t.params[name]))
        self.seen_distributions.append(distribution)
        return super().sample_independent(study, trial, name, distribution)


def test_stored_params_are_sizes_and_the_base_sampler_sees_indices():
    space, dims = SearchSpace(), tiny_dims()
    enc = SubnetEncoding(space, 4, dims)
    spy = Spy()
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spy, enc, BUDGET, seed=0))
    study.optimize(lambda t: synthetic_accuracy(enc.decode(
        {n: t.suggest_categorical(n, d.choices) for n, d in enc.distributions.items()})), n_trials=6)
    for t in study.trials:
        assert t.distributions == enc.distributions  # what the dashboard plots: the sizes
        assert all(t.params[n] in space.choices(n.split(".")[0]) for n in enc.names)
        assert count_params(decode_independently(t.params, space, 4), dims, space).total <= BUDGET
    # the base sampler was shown the same trials as indices into the sizes
    assert spy.seen_distributions and all(isinstance(d, IntDistribution) and d.low == 0
                                          for d in spy.seen_distributions)
    stored = {(n, enc.to_indices(t.params)[n]) for t in study.trials[:5] for n in enc.names}
    assert set(spy.seen_params) <= stored and len(set(spy.seen_params)) > len(enc.names)


def test_cmaes_samples_jointly_through_the_index_view():
    """CMA-ES hands categorical parameters to its random independent sampler; through the index
    view it runs its own optimizer (it records its generation on the trials it samples)."""
    result = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 12, sampler="cmaes", seed=0,
                        progress=False)
    sampled = [t for t in result.study.trials if "cma:generation" in t.system_attrs]
    assert len(sampled) >= 6
    assert all(isinstance(d, CategoricalDistribution) for t in result.study.trials for d in t.distributions.values())


@pytest.mark.parametrize("sampler", ["gp", "evolution"])
def test_gp_and_evolution_store_sizes(sampler):
    options = {"gp": dict(n_startup_trials=3),
               "evolution": dict(population_size=3, n_parents=2, n_mutation=1, n_crossover=1)}[sampler]
    space = SearchSpace()
    result = run_search(synthetic_accuracy, space, tiny_dims(), BUDGET, 8, sampler=sampler, seed=0,
                        sampler_options=options, progress=False)
    complete = result.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 8
    for t in complete:
        subnet = decode_independently(t.params, space, 4)
        assert t.user_attrs["sizes_lora"] == " ".join(map(str, subnet.lora))
        assert t.user_attrs["n_params"] == count_params(subnet, tiny_dims(), space).total <= BUDGET


# ---- a study made before the sizes: indices with IntDistribution ---------------------------------


def old_format_study(path) -> tuple[optuna.Study, list[Subnet]]:
    """A study as unitune stored it before the sizes: the same user attributes, each parameter
    the index into its choices with ``IntDistribution(0, n - 1)``."""
    space, dims = SearchSpace(), tiny_dims()
    enc = SubnetEncoding(space, 4, dims)
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name="unitune", direction="maximize")
    for key, value in {"budget": BUDGET, "depth": 4, "space": space.to_dict(), "objectives": ["acc"],
                       "backbone": "vit_tiny_patch16_224", "seed": 0}.items():
        study.set_user_attr(key, value)
    subnets = [Subnet((10, 0, 1, 5), (0,) * 4, (5, 0, 0, 1), (1, 0, 0, 1), ssf_global=1),
               Subnet((1, 1, 0, 0), (5, 0, 0, 0), (0,) * 4, (0, 1, 0, 0), ssf_global=0)]
    for subnet in subnets:
        sizes = enc.encode(subnet)
        indices = enc.to_indices(sizes)
        count = count_params(subnet, dims, space)
        study.add_trial(optuna.trial.create_trial(
            params=indices, distributions={n: IntDistribution(0, len(d.choices) - 1) for n, d in enc.distributions.items()},
            value=synthetic_accuracy(subnet), user_attrs={"n_params": count.total, "n_params_with_head": count.with_head}))
    return study, subnets


def test_an_old_study_of_indices_is_read_in_sizes(tmp_path):
    study, subnets = old_format_study(tmp_path / "study.db")
    best = max(range(2), key=lambda i: synthetic_accuracy(subnets[i]))
    out = export_subnets(tmp_path / "study.db", out=tmp_path / "best.yaml")
    assert Subnet.load(out) == subnets[best]
    top = export_subnets(tmp_path / "study.db", out=tmp_path / "top.yaml", top_k=2)
    from unitune.search.export import load_subnets

    assert [s for s, _ in load_subnets(top)] == \
        [subnets[best], subnets[1 - best]]


def test_an_old_study_of_indices_refuses_a_further_search_in_one_line(tmp_path):
    db = tmp_path / "study.db"
    old_format_study(db)
    before = db.read_bytes()
    with pytest.raises(UniTuneError) as e:
        run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 4, storage=db, seed=0, progress=False,
                   study_attrs={"backbone": "vit_tiny_patch16_224"})
    message = str(e.value)
    assert "\n" not in message
    assert "study 'unitune' stores choice indices (made by an older unitune)" in message
    assert "search under a new study name (--study) or in a new run folder" in message
    # nothing was added to the old study
    trials = optuna.load_study(study_name="unitune", storage=f"sqlite:///{db}").trials
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    assert before  # the file existed and was read
