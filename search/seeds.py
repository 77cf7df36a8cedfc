"""Seeds of a study: each worker's sampler seed, and the single-method subnets every new study starts with.

**Worker seeds.** Several ``unitune search`` workers on one study used to start from the same
``search.seed`` and propose the same start-up subnets. Now a study records its seed (user
attribute ``seed``: the first worker's ``search.seed``, or one drawn from the OS and recorded
when none is given), every worker that joins takes the next worker number (``worker_index``,
counted in study user attributes ``worker.000``, ``worker.001``, ...) and seeds its sampler
with :func:`worker_seed` of (its ``search.seed``, or the study's when it has none, and its
number). The seed and number are recorded on the study and on every trial (``sampler_seed``,
``worker_index``), so a run can be replayed and the workers differ. A worker that restarts
after a crash joins as a new number, so it does not replay its own first proposals either.

**Single methods always in the race.** A search that never proposes a single-method subnet
cannot show that its per-layer mix beats one (and TPE rarely proposes one). Every new study is
seeded with each method of the space alone at the largest uniform size that fits the budget
(LoRA-only, Adapter-only, VPT-only, SSF-only; the other methods at their smallest choice), as
enqueued trials with the user attributes ``source: single-method`` and ``single_method``
(e.g. ``lora r=5``), visible in optuna-dashboard.
"""

from __future__ import annotations


import numpy as np

from unitune.supernet import Subnet
from unitune.supernet.methods import METHODS

from unitune.supernet.encoding import SubnetEncoding

SINGLE_SOURCE = "single-method"


def worker_seed(seed: int, index: int) -> int:
    """The sampler seed of worker ``index`` of a study seeded ``seed`` (numpy's SeedSequence:
    independent streams for different indices)."""
    return int(np.random.SeedSequence(int(seed), spawn_key=(int(index),)).generate_state(1)[0])


def draw_seed() -> int:
    """A study seed from the OS, for a study started without one (it is recorded)."""
    return int(np.random.SeedSequence().generate_state(1)[0])


def single_method_subnets(encoding: SubnetEncoding, budget: int) -> list[tuple[str, dict[str, int]]]:
    """(label, params) of each method alone at the largest uniform size within ``budget``.

    A method the space does not search (one choice) or whose smallest non-zero uniform size
    does not fit is left out. SSF-only also switches on the global SSF if that still fits.
    """
    space, depth = encoding.space, encoding.depth
    base = Subnet.smallest(space, depth)
    out = []
    for method in METHODS.values():
        choices = space.choices(method.name)
        if method.site != "block" or len(choices) < 2:
            continue
        # model-level methods reported with this one (the global SSF with SSF) join it if they fit
        companions = [g.name for g in METHODS.values()
                      if g.site == "model" and g.report_key == method.name and len(space.choices(g.name)) > 1]
        for size in sorted(choices[1:], reverse=True):
            subnet = base.replace(**{method.name: (size,) * depth})
            params = encoding.encode(subnet)
            if encoding.n_params(params) > budget:
                continue
            if companions:
                on = encoding.encode(subnet.replace(**{g: space.max_size(g) for g in companions}))
                if encoding.n_params(on) <= budget:
                    params = on
            out.append((f"{method.name} {method.size_word}={size}", params))
            break
    return out
