"""A subnet as Optuna parameters: one per (method, block), whose value is the size itself.

Parameter names are ``lora.03``, ``adapter.03``, ``vpt.03``, ``ssf.03`` (block 3) and
``ssf_global`` (a model-level method: its name), in the registry's order; each is a
``CategoricalDistribution`` whose choices are the sizes (``lora.03 = 4`` is rank 4), so the
stock optuna-dashboard's importance, slice and contour plots read in ranks, widths and tokens.
The distribution is static across trials (Optuna forbids dynamic choices within a study). A
method whose space has a single choice is not searched: it takes that choice in every block and
has no parameter.

The samplers see the same parameters as ordinal indices into the choices
(:attr:`SubnetEncoding.index_distributions`, ``IntDistribution(0, len(choices) - 1)``: a larger
index is a larger module), so TPE, CMA-ES and GP keep modelling an ordered variable; the
translation lives in :mod:`.sampler` (``IndexView``), and :mod:`.repair` works on indices.

Studies made before the sizes (unitune up to this change) stored the indices, each with an
``IntDistribution``: :meth:`SubnetEncoding.stored_sizes` reads both forms by the stored
distribution, so those studies still export, plot and show in ``inspect``; a search does not
continue them (:func:`check_stored_format`, one line saying so).

The encoding also holds the cost table (:func:`~unitune.supernet.params.cost_table`: parameters
of every choice at every position), from which the repair and the budget figures are computed quickly; the analytic
:func:`count_params` stays the reference and the tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial

from unitune.errors import UniTuneError
from unitune.supernet import BackboneDims, SearchSpace, Subnet, cost_table
from unitune.supernet.methods import METHODS
from unitune.supernet.params import positions


@dataclass(frozen=True)
class Position:
    """One searched (or fixed) choice: ``method`` in ``block`` (None for a model-level method)."""

    name: str
    method: str
    block: int | None
    choices: tuple[int, ...]


def param_name(method: str, block: int | None, depth: int) -> str:
    if block is None:
        return method  # a model-level method: one parameter, its name (``ssf_global``)
    width = max(2, len(str(depth - 1)))
    return f"{method}.{block:0{width}d}"


class SubnetEncoding:
    """Maps :class:`Subnet` <-> ``{name: size}`` for a space on a backbone of ``depth`` blocks.

    ``dims`` is optional: without it (e.g. when exporting from a storage) the encoding decodes
    and encodes but cannot count parameters.
    """

    def __init__(self, space: SearchSpace, depth: int, dims: BackboneDims | None = None):
        if dims is not None and dims.depth != depth:
            raise ValueError(f"depth {depth} does not match the backbone's {dims.depth} blocks")
        self.space = space
        self.depth = depth
        self.dims = dims
        # Registry order: lora.00 .. lora.NN, adapter.*, vpt.*, ssf.*, ssf_global, then methods
        # registered later (a method the space does not hold has one choice and no parameter).
        self.all_positions: tuple[Position, ...] = tuple(
            Position(param_name(m.name, i, depth), m.name, i, space.choices(m.name)) for m, i in positions(depth)
        )
        # Only positions with a real choice are Optuna parameters.
        self.positions: tuple[Position, ...] = tuple(p for p in self.all_positions if len(p.choices) > 1)
        self.names: tuple[str, ...] = tuple(p.name for p in self.positions)
        # What Optuna stores (the sizes) and what the samplers model (indices into the sizes).
        self.distributions: dict[str, CategoricalDistribution] = {
            p.name: CategoricalDistribution(p.choices) for p in self.positions
        }
        self.index_distributions: dict[str, IntDistribution] = {
            p.name: IntDistribution(0, len(p.choices) - 1) for p in self.positions
        }
        self._by_name = {p.name: p for p in self.all_positions}
        # cost[name][index]: parameters that choice adds (head excluded).
        self.cost: dict[str, tuple[int, ...]] | None = None
        if dims is not None:
            table = cost_table(space, dims)
            self.cost = {p.name: table[p.method, p.block] for p in self.all_positions}

    # ---- Subnet <-> params ---------------------------------------------------------------------

    def decode(self, params: Mapping[str, int], source: str = "params") -> Subnet:
        """The subnet of a params dict; unsearched positions take their single choice."""
        unknown = set(params) - set(self.names)
        if unknown:
            raise UniTuneError(f"{source}: unknown parameter(s) {sorted(unknown)}, expected names like {self.names[:2]}")
        sizes: dict[str, list[int] | int] = {m: [0] * self.depth if method.site == "block" else 0
                                             for m, method in METHODS.items()}
        for p in self.all_positions:
            if len(p.choices) == 1:
                size = p.choices[0]
            elif p.name in params:
                size = params[p.name]
            else:
                raise UniTuneError(f"{source}: parameter {p.name!r} is missing")
            if isinstance(size, bool) or not isinstance(size, int) or size not in p.choices:
                raise UniTuneError(f"{source}: {p.name} = {size!r} is not one of its sizes {list(p.choices)}")
            if p.block is None:
                sizes[p.method] = size
            else:
                sizes[p.method][p.block] = size
        return Subnet(**{m: tuple(v) if isinstance(v, list) else v for m, v in sizes.items()})

    def encode(self, subnet: Subnet, source: str = "subnet") -> dict[str, int]:
        """The params dict (sizes) of a subnet; raises unless it fits the depth and space."""
        subnet.check(self.depth, self.space, source=source)
        return {p.name: self._size(subnet, p) for p in self.positions}

    @staticmethod
    def _size(subnet: Subnet, p: Position) -> int:
        return subnet.block_size(p.method, p.block)

    # ---- sizes <-> indices (what the samplers and the repair work in) ---------------------------

    def to_indices(self, params: Mapping[str, int]) -> dict[str, int]:
        """``{name: index into its choices}`` of a params dict in sizes (searched names only)."""
        return {p.name: p.choices.index(int(params[p.name])) for p in self.positions}

    def from_indices(self, indices: Mapping[str, int]) -> dict[str, int]:
        """The params dict in sizes of ``{name: index}``."""
        return {p.name: p.choices[int(indices[p.name])] for p in self.positions}

    def stored_sizes(self, trial: FrozenTrial) -> dict[str, int]:
        """A stored trial's params in sizes, whichever form the study stored: sizes (a
        ``CategoricalDistribution``) or, in a study made before them, indices (an
        ``IntDistribution``)."""
        out = {}
        for name, value in trial.params.items():
            p = self._by_name.get(name)
            if p is not None and is_index_distribution(trial.distributions.get(name)):
                out[name] = p.choices[int(value)] if 0 <= int(value) < len(p.choices) else value
            else:
                out[name] = value
        return out

    def decode_trial(self, trial: FrozenTrial) -> Subnet:
        """The subnet a stored trial holds (either stored form, see :meth:`stored_sizes`)."""
        return self.decode(self.stored_sizes(trial), source=f"trial {trial.number}")

    # ---- parameter counts ----------------------------------------------------------------------

    def n_params(self, params: Mapping[str, int]) -> int:
        """Trainable PEFT parameters (head excluded) of the subnet ``params`` (sizes) encodes."""
        return self.n_params_at(self.to_indices(params))

    def n_params_at(self, indices: Mapping[str, int]) -> int:
        """:meth:`n_params` of a subnet given as indices (fixed positions take their one choice)."""
        if self.cost is None:
            raise ValueError("this encoding has no backbone dimensions to count parameters with")
        return sum(self.cost[p.name][indices[p.name] if len(p.choices) > 1 else 0] for p in self.all_positions)

    def to_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "names": list(self.names)}


def is_index_distribution(distribution: BaseDistribution | None) -> bool:
    """Whether a stored parameter is an index (the form before sizes), not a size."""
    return isinstance(distribution, IntDistribution)


def check_stored_format(study: Any, url: str) -> None:
    """Refuse, in one line, to continue a search in a study that stores indices (made before the
    sizes): Optuna refuses to store one parameter under two distributions, and mixing the forms
    would make the dashboard's plots mean two things."""
    for t in study.get_trials(deepcopy=False):
        if any(is_index_distribution(d) for d in t.distributions.values()):
            raise UniTuneError(
                f"storage {url}: study {study.study_name!r} stores choice indices (made by an older unitune), "
                "not sizes; export-subnet, inspect and plots still read it, but a search cannot continue it: "
                "search under a new study name (--study) or in a new run folder"
            )


def sizes_summary(subnet: Subnet) -> dict[str, str]:
    """Compact per-block sizes for people reading the dashboard: ``{'sizes_lora': '10 5 0 1', ...,
    'sizes_ssf_global': '1'}``: the original methods always, a later one when it is on."""
    out = {}
    for m in subnet.shown_methods():
        sizes = subnet.sizes(m)
        out[f"sizes_{m}"] = " ".join(map(str, sizes)) if isinstance(sizes, tuple) else str(sizes)
    return out
