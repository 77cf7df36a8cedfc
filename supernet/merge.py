"""Fold LoRA and SSF into the backbone's weights; keep Adapters and VPT as the smallest modules.

Both LoRA and SSF are linear in the output of the op they follow, so they fold exactly:

- LoRA on a linear: ``W ← W + s·B[:, :r] A[:r]``.
- SSF after a linear or the patch-embed conv: ``W ← γ ⊙_rows W``, ``b ← γ ⊙ b + β``.
- SSF after a LayerNorm: ``w ← γ ⊙ w``, ``b ← γ ⊙ b + β``.

SSF on a linear that also carries LoRA wraps the LoRA layer (LoRA inside), so LoRA folds first.
Where a shift needs a bias the op does not have, one is created. For the biases timm can build
from a ``create_model`` keyword (``qkv_bias``, ``proj_bias`` which covers attn.proj, mlp.fc1 and
mlp.fc2) the bias is added, zero, to every such linear of every block, and the keyword is
recorded: the merged model then has exactly the structure ``timm.create_model(name, **kwargs)``
builds, so a LoRA/SSF-only subnet exports as a plain timm state dict that loads strictly.
Anything no keyword can rebuild (a LayerNorm without affine parameters, a conv without bias) is
recorded by parameter name in :attr:`MergedModel.added_params` for the loader to recreate.

Adapters and VPT are not mergeable; they stay as a :class:`PeftViT` with exactly the chosen
sizes and nothing else.

Which methods fold, and how, each method declares in the registry (``Method.foldable``,
``Method.fold``, ``Method.fold_rank``; the primitives are in ``unitune.supernet.methods.fold``):
this module runs the folds in order, turns created biases into timm keywords and keeps what
does not fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from unitune.errors import UniTuneError
from unitune.supernet import PeftViT, SearchSpace, Subnet
from unitune.supernet.methods import METHODS
from unitune.supernet.methods.fold import new_param as _new_param

# timm create_model keyword -> the block linears whose bias it switches on.
BIAS_KWARGS = {"qkv_bias": ("attn.qkv",), "proj_bias": ("attn.proj", "mlp.fc1", "mlp.fc2")}


@dataclass
class MergedModel:
    """The result of :func:`merge`.

    ``model`` is a plain timm ``VisionTransformer`` when only LoRA and SSF were active, else a
    :class:`PeftViT` holding only the Adapter / VPT layers of ``unmerged``. ``model_kwargs`` are
    the ``timm.create_model`` overrides its structure needs (e.g. ``{"qkv_bias": True}``);
    ``added_params`` the parameters (names inside the timm model) that no keyword rebuilds.
    """

    model: nn.Module
    subnet: Subnet
    space: SearchSpace
    unmerged: Subnet
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    added_params: tuple[str, ...] = ()
    created_by: tuple[str, ...] = ()  # the methods whose folds created parameters (for messages)

    @property
    def vit(self) -> VisionTransformer:
        return self.model.vit if isinstance(self.model, PeftViT) else self.model

    @property
    def is_plain_timm(self) -> bool:
        """True when ``timm.create_model(name, **kwargs, **model_kwargs)`` loads the state dict strictly."""
        return isinstance(self.model, VisionTransformer) and not self.added_params


def unmerged_subnet(subnet: Subnet) -> Subnet:
    """What stays as modules after a merge: the sizes of methods that do not fold (Adapter, VPT);
    every foldable method (LoRA, SSF) off."""
    return Subnet(**{m: subnet.sizes(m) for m, method in METHODS.items() if not method.foldable},
                  **{m: (0,) * subnet.depth if method.site == "block" else 0
                     for m, method in METHODS.items() if method.foldable})


def _match_timm_bias_kwargs(vit: VisionTransformer, created: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Turn created block biases into timm keywords: give every linear of the group a (zero) bias."""
    kwargs: dict[str, Any] = {}
    remaining = list(created)
    for key, paths in BIAS_KWARGS.items():
        targets = [f"blocks.{i}.{p}.bias" for i in range(len(vit.blocks)) for p in paths]
        if not any(t in created for t in targets):
            continue
        for t in targets:
            linear = vit.get_submodule(t.rpartition(".")[0])
            if linear.bias is None:
                linear.bias = _new_param(linear.weight, (linear.out_features,), 0.0)
        kwargs[key] = True
        remaining = [c for c in remaining if c not in targets]
    return kwargs, remaining


@torch.no_grad()
def merge(model: PeftViT) -> MergedModel:
    """A new model for ``model``'s active subnet with LoRA and SSF folded in (``model`` is untouched).

    The result is in eval mode with every parameter frozen: it is an inference artefact.
    """
    if not isinstance(model, PeftViT):
        raise UniTuneError(f"merge: expected a PeftViT, got {type(model).__name__}")
    subnet = model.subnet
    vit = model.backbone()  # a deep copy without any PEFT wrapper
    created: list[str] = []
    creators: list[str] = []
    # Each foldable method folds its active layers, in fold_rank order: LoRA before SSF, since an
    # SSF on the same linear scales the LoRA-updated weight.
    for method in sorted((m for m in METHODS.values() if m.foldable), key=lambda m: m.fold_rank):
        for name, layer in model.named_layers.items():
            m, block, suffix = model.layer_sites[name]
            if m == method.name and layer.size:
                made = method.fold(vit, block, suffix, layer)
                created += made
                if made and method.name not in creators:
                    creators.append(method.name)
    kwargs, added = _match_timm_bias_kwargs(vit, created)

    unmerged = unmerged_subnet(subnet)
    out: nn.Module = vit
    if not unmerged.is_empty():
        # The same construction the export loader uses, so both give the identical structure.
        out = PeftViT(vit, model.space, sizes=unmerged)
        out.take_slices(dict(model.peft_named_parameters()))
    out.requires_grad_(False)
    return MergedModel(out.eval(), subnet, model.space, unmerged, kwargs, tuple(added), tuple(creators))


def add_params(vit: nn.Module, names: list[str] | tuple[str, ...]) -> None:
    """Recreate the parameters a merge added beyond what timm builds (values come from the weights file)."""
    for name in names:
        path, _, pname = name.rpartition(".")
        try:
            op = vit.get_submodule(path)
        except AttributeError:
            raise UniTuneError(f"added_params: {name!r} names no module of this backbone") from None
        if isinstance(op, (nn.Linear, nn.Conv2d)) and pname == "bias" and op.bias is None:
            op.bias = _new_param(op.weight, (op.weight.shape[0],), 0.0)
        elif isinstance(op, nn.LayerNorm) and pname in ("weight", "bias") and getattr(op, pname) is None:
            like = next(iter(op.parameters()), None)
            if like is None:  # a norm without parameters: where (and in what dtype) the backbone is
                like = next(p for p in vit.parameters() if p.is_floating_point())
            setattr(op, pname, _new_param(like, op.normalized_shape, 1.0 if pname == "weight" else 0.0))
            op.elementwise_affine = True
        else:
            raise UniTuneError(f"added_params: cannot add {name!r} to a {type(op).__name__} (already present or unsupported)")
