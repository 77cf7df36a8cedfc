"""The one way to wrap a timm ViT with PEFT layers and to build its optimizer.

``unitune.get_peft_model`` / ``unitune.make_optimizer`` (the Python API) and the supernet and
retrain stages all come here: the API adds HF PEFT's methods on top (:class:`unitune.supernet.api.PeftModel`,
passed as ``model_class``), the stages take the plain :class:`PeftViT`. These live in the model
package, not in the API, because the API sits above the stages (it merges through
``unitune.retrain``): a stage importing the API would make data flow both ways.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from timm.models.vision_transformer import VisionTransformer

from unitune.errors import UniTuneError
from unitune.schema import check_fields, num

from .guard import InactiveGuard
from .methods import METHODS, families
from .methods.layers import PeftLayer
from .model import PeftViT, check_vit
from .space import SearchSpace
from .subnet import Subnet


def wrap_vit(
    vit: VisionTransformer,
    space: SearchSpace | Mapping[str, Any] | None = None,
    subnet: Subnet | Mapping[str, Any] | str | os.PathLike | None = None,
    model_class: type[PeftViT] = PeftViT,
) -> PeftViT:
    """Wrap ``vit`` in place: the supernet over ``space``, or the fixed ``subnet`` (see
    :func:`unitune.supernet.api.get_peft_model` for the forms both take). ``model_class`` is what is built:
    :class:`PeftViT` or a subclass of it."""
    check_plain(vit, "get_peft_model")
    depth = len(vit.blocks)
    if space is None and subnet is None:
        raise UniTuneError("get_peft_model: give space= (a supernet over it) or subnet= (a fixed subnet), "
                           "e.g. subnet={'lora': 8}")
    if subnet is None:
        return model_class(vit, _as_space(space, None))
    sizes = _as_subnet(subnet, depth).check(depth, source="get_peft_model: subnet")
    space = _as_space(space, sizes)
    sizes.check(depth, space, source="get_peft_model: subnet")
    return model_class(vit, space, sizes=sizes)


def _size_values(subnet: Subnet, key: str) -> set[int]:
    sizes = subnet.sizes(key)
    return set(sizes) if isinstance(sizes, (tuple, list)) else {sizes}


def _as_space(space: SearchSpace | Mapping[str, Any] | None, subnet: Subnet | None) -> SearchSpace:
    """A :class:`SearchSpace` from an object or a dict; the size lists a dict leaves out are
    ``[0]`` (or, for a fixed subnet, ``[0]`` plus the subnet's sizes)."""
    if isinstance(space, SearchSpace):
        return space
    if space is not None and not isinstance(space, Mapping):
        raise UniTuneError(f"get_peft_model: space must be a SearchSpace or a dict like {{'lora': [0, 8]}}, "
                           f"got {type(space).__name__}")
    data = dict(space or {})
    for key in METHODS:  # every registered method, the ones off by default (bitfit, dora, ...) too
        if key not in data:
            data[key] = sorted({0} | (_size_values(subnet, key) if subnet is not None else set()))
    return SearchSpace.from_dict(data, source="get_peft_model: space")


def _as_subnet(subnet: Subnet | Mapping[str, Any] | str | os.PathLike, depth: int) -> Subnet:
    # One integer for a per-block method means that size in every block (Subnet.from_dict).
    return Subnet.coerce(subnet, depth, "get_peft_model")


@dataclass(frozen=True)
class _Rates:
    """make_optimizer's arguments, checked with the run config's own limits (``TrainConfig.lr`` and
    ``.weight_decay`` in unitune.engine.config, which this library sits below)."""

    lr: float = num(1e-3, gt=0)
    weight_decay: float = num(1e-4, ge=0)


def check_lr_mult(value: Any, where: str) -> dict[str, float]:
    """A learning-rate multiplier per optimiser family (:func:`unitune.supernet.methods.families`:
    ``head``, ``backbone`` and the registered methods' families), each a finite number > 0; the
    families it leaves out train at 1x."""
    if not isinstance(value, Mapping):
        raise UniTuneError(f"{where}: expected a mapping of family to multiplier, e.g. {{prompt: 10}}, got {value!r}")
    known = families()
    out = {}
    for family, mult in value.items():
        if family not in known:
            raise UniTuneError(f"{where}: unknown family {family!r}, expected some of {list(known)}")
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not math.isfinite(mult) or mult <= 0:
            raise UniTuneError(f"{where}.{family}: expected a finite number > 0, got {mult!r}")
        out[family] = float(mult)
    return out


def adamw(named_params: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float,
          no_weight_decay: Iterable[str] = (), lr_mult: Mapping[str, float] | None = None,
          family_of: Callable[[str], str] | None = None) -> torch.optim.AdamW:
    """AdamW; no weight decay on 1-d parameters (biases, norms, SSF's scale and shift: as timm
    does) nor on the names in ``no_weight_decay`` (a model's declared exceptions, e.g.
    ``PeftViT.no_weight_decay()``: VPT's prompts). The stages' ``build_optimizer`` comes here too.

    With ``lr_mult`` (family -> multiplier, :func:`check_lr_mult`) and ``family_of`` (parameter
    name -> family, e.g. :meth:`PeftViT.param_family`), each family gets its own pair of groups at
    ``lr * multiplier``, the group's ``family`` and ``lr_mult`` keys naming it. timm's scheduler
    takes each group's own rate as its peak, so the ratios hold at the peak and through the cosine
    decay, except near its ends: the warm-up starts, and the decay ends, at the same absolute rate
    (``min_lr``) for every group (exact ratios throughout with ``min_lr: 0``). Without
    multipliers (or all 1) the two groups are the same as before they existed, so older optimizer
    checkpoints still load."""
    skip = set(no_weight_decay)
    split = bool(lr_mult) and any(m != 1.0 for m in lr_mult.values())
    if split and family_of is None:
        raise ValueError("adamw: lr_mult needs family_of, the family of each parameter name")
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, p in named_params:
        family = family_of(name) if split else ""
        decays = not (p.ndim <= 1 or name in skip)
        group = groups.get((family, decays))
        if group is None:
            group = groups[(family, decays)] = {"params": [], "weight_decay": weight_decay if decays else 0.0}
            if split:
                group.update(family=family, lr=lr * lr_mult.get(family, 1.0), lr_mult=lr_mult.get(family, 1.0))
        group["params"].append(p)
    # families in first-seen order, decay before no-decay: the layout without multipliers is unchanged
    seen = dict.fromkeys(family for family, _ in groups)
    return torch.optim.AdamW([groups[(f, d)] for f in seen for d in (True, False) if (f, d) in groups], lr=lr)


def make_optimizer(model: PeftViT, lr: float = 1e-3, weight_decay: float = 1e-4,
                   lr_mult: Mapping[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW over the model's PEFT parameters and head (the stages' grouping: no weight decay on
    1-d parameters and prompts; ``lr_mult``, one learning-rate multiplier per family, e.g.
    ``{"prompt": 10, "head": 2}``: :func:`check_lr_mult`), with the inactive-slice guard attached.

    Without the guard, AdamW's weight decay and momentum move the slices of a supernet's layers
    that the active subnet does not use (they get a zero gradient, not none), so the weights
    other subnets share drift. With it, ``step()`` leaves those slices and their moments as they
    were. ``optimizer.inactive_guard.remove()`` detaches it. For a fixed subnet it costs nothing.
    """
    check_model(model, "make_optimizer")
    check_fields(_Rates(lr=lr, weight_decay=weight_decay), "make_optimizer")  # lr > 0, weight_decay >= 0
    lr_mult = check_lr_mult(lr_mult or {}, "make_optimizer: lr_mult")
    optimizer = adamw(model.trainable_named_parameters(), lr, weight_decay, model.no_weight_decay(), lr_mult,
                      model.param_family)
    optimizer.inactive_guard = InactiveGuard(model, optimizer)
    return optimizer


def check_plain(vit: Any, where: str) -> None:
    """A timm ViT without PEFT layers: wrapping one twice would stack a second set of layers on
    the first, which would stay in the computation, frozen and invisible to the new model."""
    check_vit(vit)
    if any(isinstance(m, PeftLayer) for m in vit.modules()):
        raise UniTuneError(f"{where}: this ViT already holds PEFT layers (it is wrapped by a PeftViT); pass a fresh "
                           f"timm model, or change the existing one with set_subnet / materialize")


def check_model(model: Any, where: str) -> None:
    if not isinstance(model, PeftViT):
        raise UniTuneError(f"{where}: expected a PeftViT (from unitune.get_peft_model), got {type(model).__name__}")
