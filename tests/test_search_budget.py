"""Budget parsing and bounds, the subnet <-> Optuna params encoding, and the repair."""

from __future__ import annotations

import random
import warnings

import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution

from search_util import decode_independently, n_params, tiny_dims
from unitune.errors import UniTuneError, UniTuneWarning
from unitune.supernet.budget import budget_bounds, check_budget, parse_budget
from unitune.supernet.encoding import SubnetEncoding
from unitune.supernet.repair import repair_params, repair_subnet
from unitune.supernet import SearchSpace, Subnet, count_params

D = 64  # tiny ViT width; MLP 256, 4 blocks
LORA_R = 4 * D  # LoRA rank 1 on the fused qkv: r * (d + 3d)
SSF_BLOCK = 2 * (D + 3 * D + D + D + 4 * D + D)


@pytest.mark.parametrize(
    "text, expected",
    [("400000", 400_000), ("0.4M", 400_000), ("400k", 400_000), ("400K", 400_000), ("4e5", 400_000),
     (" 1.5m ", 1_500_000), (400000, 400_000), (2.6e3, 2600)],
)
def test_parse_budget_forms(text, expected):
    assert parse_budget(text) == expected


def test_parse_budget_percentage_of_backbone():
    assert parse_budget("0.5%", backbone_params=85_800_000) == 429_000
    assert parse_budget("100%", backbone_params=1234) == 1234


@pytest.mark.parametrize(
    "text, kwargs, fragment",
    [("abc", {}, "expected a parameter count"), ("-5", {}, "expected a parameter count"), ("0", {}, "positive"),
     ("0.5%", {}, "percentage of the backbone"), ("150%", {"backbone_params": 10**6}, "(0, 100]"),
     (True, {}, "expected a parameter count")],
)
def test_parse_budget_errors(text, kwargs, fragment):
    with pytest.raises(UniTuneError, match="budget") as e:
        parse_budget(text, **kwargs)
    assert fragment in str(e.value)


def test_budget_bounds_match_formulas():
    dims = tiny_dims()
    low, high = budget_bounds(SearchSpace(), dims)
    assert low == 1 * D  # the cheapest non-zero choice: one VPT token in one block
    adapter10 = 2 * D * 10 + 10 + D
    assert high == 4 * (10 * LORA_R + adapter10 + 10 * D + SSF_BLOCK) + 4 * D
    assert high == count_params(Subnet.largest(SearchSpace(), 4), dims).total
    # A method whose only choice is non-zero is in every subnet: the minimum includes it.
    forced = SearchSpace(lora=(8,), vpt=(0, 5))
    assert budget_bounds(forced, dims)[0] == 4 * 8 * LORA_R


def test_check_budget_below_minimum_names_it():
    with pytest.raises(UniTuneError, match=r"budget: 63 parameters is below the smallest non-empty subnet .*\(64 parameters\)"):
        check_budget(63, SearchSpace(), tiny_dims())
    with pytest.raises(UniTuneError, match="8192 parameters"):
        check_budget(8000, SearchSpace(lora=(8,)), tiny_dims())


def test_check_budget_above_maximum_warns_and_passes():
    high = budget_bounds(SearchSpace(), tiny_dims())[1]
    with pytest.warns(UniTuneWarning, match=f"largest subnet of this space \\({high} parameters\\)"):
        assert check_budget(high + 1000, SearchSpace(), tiny_dims()) == high + 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_budget(high - 1, SearchSpace(), tiny_dims()) == high - 1


# ---- encoding -----------------------------------------------------------------------------------


def test_encoding_names_distributions_and_round_trip():
    space = SearchSpace(adapter=(0,), ssf_global=(1,))  # single choices are not searched
    enc = SubnetEncoding(space, 4, tiny_dims())
    assert enc.names == ("lora.00", "lora.01", "lora.02", "lora.03", "vpt.00", "vpt.01", "vpt.02", "vpt.03",
                         "ssf.00", "ssf.01", "ssf.02", "ssf.03")
    # what Optuna stores and the dashboard plots: the sizes themselves
    assert enc.distributions["lora.02"] == CategoricalDistribution((0, 1, 5, 10))
    assert enc.distributions["ssf.00"] == CategoricalDistribution((0, 1))
    # what the samplers model: ordered indices into those sizes
    assert enc.index_distributions["lora.02"] == IntDistribution(0, 3)
    assert enc.index_distributions["ssf.00"] == IntDistribution(0, 1)
    subnet = Subnet((10, 0, 1, 5), (0, 0, 0, 0), (5, 5, 0, 1), (1, 0, 0, 1), ssf_global=1)
    params = enc.encode(subnet)
    assert params == {"lora.00": 10, "lora.01": 0, "lora.02": 1, "lora.03": 5, "vpt.00": 5, "vpt.01": 5,
                      "vpt.02": 0, "vpt.03": 1, "ssf.00": 1, "ssf.01": 0, "ssf.02": 0, "ssf.03": 1}
    assert enc.decode(params) == subnet == decode_independently(params, space, 4)
    assert enc.n_params(params) == count_params(subnet, tiny_dims(), space).total
    indices = enc.to_indices(params)
    assert indices["lora.00"] == 3 and indices["lora.02"] == 1 and indices["vpt.03"] == 1 and indices["ssf.03"] == 1
    assert enc.from_indices(indices) == params
    assert enc.n_params_at(indices) == enc.n_params(params)


def test_encoding_width_grows_with_depth():
    from unitune.supernet.encoding import param_name

    assert param_name("lora", 3, 12) == "lora.03"
    assert param_name("vpt", 7, 120) == "vpt.007"
    assert param_name("ssf_global", None, 12) == "ssf_global"


def test_encoding_rejects_bad_input():
    enc = SubnetEncoding(SearchSpace(), 4, tiny_dims())
    with pytest.raises(UniTuneError, match=r"lora\[1\] = 3 is not in the search space \[0, 1, 5, 10\]"):
        enc.encode(Subnet((1, 3, 0, 0), (0,) * 4, (0,) * 4, (0,) * 4))
    with pytest.raises(UniTuneError, match="but the backbone has 4 blocks"):
        enc.encode(Subnet.uniform(12, lora=1))
    params = enc.encode(Subnet.uniform(4, lora=1))
    with pytest.raises(UniTuneError, match=r"lora.00 = 7 is not one of its sizes \[0, 1, 5, 10\]"):
        enc.decode({**params, "lora.00": 7})
    with pytest.raises(UniTuneError, match="unknown parameter"):
        enc.decode({**params, "lora.09": 0})


# ---- repair -------------------------------------------------------------------------------------


def test_repair_worked_example_scales_every_block_alike():
    space = SearchSpace(adapter=(0,), vpt=(0,), ssf=(0,), ssf_global=(0,))
    enc = SubnetEncoding(space, 4, tiny_dims())
    subnet = Subnet.uniform(4, lora=10)
    assert n_params(subnet, space) == 40 * LORA_R
    # Budget half the proposal: alpha = 0.5, every block's target is exactly rank 5, whatever the seed.
    for seed in range(5):
        assert repair_subnet(enc, subnet, 20 * LORA_R, seed=seed) == Subnet.uniform(4, lora=5)


def test_repair_gives_every_block_the_same_chance():
    """SSF on in all 4 blocks, budget for exactly 2: every seed keeps 2 blocks, and each block is
    kept about half the time (the former rule always cut blocks 0 and 1: ties to the first index)."""
    space = SearchSpace(lora=(0,), adapter=(0,), vpt=(0,), ssf_global=(0,))
    enc = SubnetEncoding(space, 4, tiny_dims())
    proposal = enc.encode(Subnet.uniform(4, ssf=1))
    assert enc.n_params(proposal) == 4 * SSF_BLOCK
    kept = [0] * 4
    n = 400
    for seed in range(n):
        repaired, steps = repair_params(enc, proposal, 2 * SSF_BLOCK, seed=seed)
        assert steps == 2 and enc.n_params(repaired) == 2 * SSF_BLOCK
        for b in range(4):
            kept[b] += repaired[f"ssf.{b:02d}"]  # the SSF size is 0 or 1
    # Binomial(400, 0.5) per block: sd 10, so +-60 is six standard deviations.
    assert all(abs(k - n / 2) <= 60 for k in kept), kept


def test_repair_bias_on_vit_b_stays_within_bounds():
    """Uniform random proposals on ViT-B/16 dimensions at 0.3M (as benchmarks/bench_repair_bias.py):
    for every method, the share of repaired subnets holding it varies across the 12 blocks by at most
    0.12, and the share of proposed parameters kept differs across methods by at most 0.15.
    The former rule: SSF in block 0 in 7% of subnets against 39% in block 11, and LoRA kept 93% of its
    parameters where SSF kept 42%."""
    import numpy as np

    from unitune.engine.backbone import create_backbone
    from unitune.supernet import BackboneDims
    from unitune.supernet.space import METHODS

    dims = BackboneDims.from_model(create_backbone("vit_base_patch16_224", 2, meta=True))
    space = SearchSpace()
    enc = SubnetEncoding(space, 12, dims)
    rng = random.Random(1)
    n, budget = 600, 300_000
    held = {m: np.zeros(12) for m in METHODS}
    added = {m: [0, 0] for m in METHODS}  # parameters above the smallest choice: proposed, repaired
    for i in range(n):
        proposal = {name: rng.choice(d.choices) for name, d in enc.distributions.items()}
        repaired, _ = repair_params(enc, proposal, budget, seed=i)
        subnet, before = decode_independently(repaired, space, 12), decode_independently(proposal, space, 12)
        assert count_params(subnet, dims, space).total <= budget
        for m in METHODS:
            held[m] += np.asarray(subnet.sizes(m)) > 0
            for k, s in enumerate((before, subnet)):
                only = Subnet(**{x: (s.sizes(x) if x == m else (0,) * 12) for x in METHODS})
                added[m][k] += count_params(only, dims, space).total
    spread = {m: float((held[m] / n).max() - (held[m] / n).min()) for m in METHODS}
    assert max(spread.values()) <= 0.12, spread
    kept = {m: added[m][1] / added[m][0] for m in METHODS}
    assert max(kept.values()) - min(kept.values()) <= 0.15, kept


def test_repair_random_configs_fit_only_shrink_and_are_deterministic():
    space = SearchSpace()
    dims = tiny_dims()
    enc = SubnetEncoding(space, 4, dims)
    low, high = budget_bounds(space, dims)
    rng = random.Random(0)
    changed = 0
    for _ in range(300):
        params = {name: rng.choice(d.choices) for name, d in enc.distributions.items()}
        budget = rng.randint(low, high)
        repaired, steps = repair_params(enc, params, budget)
        subnet = enc.decode(repaired)
        subnet.check(4, space)
        assert count_params(subnet, dims, space).total <= budget
        assert all(repaired[n] <= params[n] for n in enc.names)
        assert repair_params(enc, params, budget) == (repaired, steps)  # seeded: deterministic
        if enc.n_params(params) <= budget:
            assert repaired == params and steps == 0
        else:
            changed += 1
            before, after = enc.to_indices(params), enc.to_indices(repaired)
            assert steps == sum(before[n] - after[n] for n in enc.names) > 0
    assert changed > 100  # the sample exercised the repair, not just feasible inputs


def test_repair_reaches_the_smallest_budget_and_fails_below_the_smallest_subnet():
    space, dims = SearchSpace(), tiny_dims()
    enc = SubnetEncoding(space, 4, dims)
    low, _ = budget_bounds(space, dims)
    repaired = repair_subnet(enc, Subnet.largest(space, 4), low)
    assert n_params(repaired) <= low
    with pytest.raises(UniTuneError, match="below the smallest subnet"):
        repair_subnet(SubnetEncoding(SearchSpace(lora=(8,)), 4, dims), Subnet.uniform(4, lora=8), 100)


def test_budget_supernet_sampler_draws_what_the_search_evaluates():
    """supernet.sampler: budget trains the subnets the search evaluates: a uniform proposal
    repaired by the search's own repair (issue 15); the former sampler filled slots in a random
    order instead, a different distribution."""
    from unitune.supernet.sampler import SubnetSampler

    space, dims = SearchSpace(), tiny_dims()
    enc = SubnetEncoding(space, 4, dims)
    sampler = SubnetSampler(space, dims, "budget", seed=3, budget=BUDGET_SMALL)
    reference = SubnetSampler(space, dims, "uniform", seed=3)
    for _ in range(50):
        proposal = reference.uniform()
        expected = repair_subnet(enc, proposal, BUDGET_SMALL, seed=reference.rng.getrandbits(63))
        (drawn,) = sampler()
        assert drawn == expected and n_params(drawn) <= BUDGET_SMALL


BUDGET_SMALL = 6000


def test_subnet_sampler_base_repairs_redraws_while_held_and_records_its_attrs():
    import optuna

    from unitune.search.subnet_sampler import SubnetSamplerBase
    from unitune.supernet.repair import repair_indices

    space = SearchSpace(lora=(0,), adapter=(0,), vpt=(0,), ssf_global=(0,))
    enc = SubnetEncoding(space, 4, tiny_dims())
    all_on = {name: 1 for name in enc.names}
    budget = 2 * SSF_BLOCK

    class AllOn(SubnetSamplerBase):
        def relative_space(self):
            return enc.distributions

        def sample_subnet(self, study, trial, search_space):
            asked = []
            indices, steps, attempt = self.repair_until_new(
                lambda a: asked.append(a) or all_on, 5, lambda ix: len(asked) < 3, seed=lambda a: (9, a))
            return enc.from_indices(indices), {"test:steps": steps, "test:attempt": attempt, "test:asked": asked}

        def sample_independent(self, study, trial, name, distribution):
            raise AssertionError(f"{name} is in the relative space")

    sampler = AllOn(enc, budget)
    everything_held = sampler.repair_until_new(lambda a: all_on, 4, lambda ix: True, seed=lambda a: (9, a))
    assert everything_held == (*repair_indices(enc, all_on, budget, seed=(9, 3)), 3)  # the last attempt is kept
    nothing_held = sampler.repair_until_new(lambda a: all_on, 4, lambda ix: False, seed=lambda a: (9, a))
    assert nothing_held == (*repair_indices(enc, all_on, budget, seed=(9, 0)), 0)
    assert nothing_held[1] == 2 and enc.n_params_at(nothing_held[0]) == budget  # two SSF blocks cut

    study = optuna.create_study(sampler=sampler)
    trial = study.ask()
    assert sampler.infer_relative_search_space(study, study.trials[0]) == enc.distributions
    params = {name: trial.suggest_categorical(name, d.choices) for name, d in enc.distributions.items()}
    indices, steps = repair_indices(enc, all_on, budget, seed=(9, 2))  # attempts 0 and 1 were "held"
    assert params == enc.from_indices(indices)
    attrs = study.trials[0].system_attrs
    assert (attrs["test:steps"], attrs["test:attempt"], attrs["test:asked"]) == (steps, 2, [0, 1, 2])
    assert sampler.sample_relative(study, study.trials[0], {}) == {}  # nothing searched: nothing drawn
