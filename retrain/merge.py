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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from unitune.errors import UniTuneError
from unitune.supernet import PeftViT, SearchSpace, Subnet
from unitune.supernet.lora import LoRALinear
from unitune.supernet.model import LORA_PATHS
from unitune.supernet.ssf import SSF

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

    @property
    def vit(self) -> VisionTransformer:
        return self.model.vit if isinstance(self.model, PeftViT) else self.model

    @property
    def is_plain_timm(self) -> bool:
        """True when ``timm.create_model(name, **kwargs, **model_kwargs)`` loads the state dict strictly."""
        return isinstance(self.model, VisionTransformer) and not self.added_params


def unmerged_subnet(subnet: Subnet) -> Subnet:
    """What stays as modules after a merge: the Adapter and VPT sizes; LoRA and SSF off."""
    zeros = (0,) * subnet.depth
    return Subnet(lora=zeros, adapter=subnet.adapter, vpt=subnet.vpt, ssf=zeros, ssf_global=0)


# ---- folding primitives (in float64, written back in the parameter's dtype) --------------------


def _new_param(like: torch.Tensor, shape: torch.Size | tuple[int, ...], value: float) -> nn.Parameter:
    return nn.Parameter(torch.full(shape, value, dtype=like.dtype, device=like.device), requires_grad=False)


def _assign(param: torch.Tensor, value: torch.Tensor) -> None:
    param.copy_(value.to(param.dtype))


def fold_lora(linear: nn.Linear, lora: LoRALinear) -> None:
    """``W ← W + s·B A`` at the layer's active rank."""
    _assign(linear.weight, linear.weight.double() + lora.delta_weight().double())


def fold_scale_shift(op: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> list[str]:
    """Fold ``y ← scale ⊙ y + shift`` (on the output channels) into ``op``; return created parameter names."""
    ssf_param = scale
    scale, shift = scale.detach().double(), shift.detach().double()
    created = []
    if isinstance(op, (nn.Linear, nn.Conv2d)):
        w = op.weight
        _assign(w, w.double() * scale.view(-1, *([1] * (w.dim() - 1))))
        if op.bias is None:
            op.bias = _new_param(w, (w.shape[0],), 0.0)
            created.append("bias")
        _assign(op.bias, op.bias.double() * scale + shift)
    elif isinstance(op, nn.LayerNorm):
        if len(op.normalized_shape) != 1:
            raise UniTuneError(f"merge: cannot fold SSF into a LayerNorm over {tuple(op.normalized_shape)}")
        # A norm without parameters: the new ones take the SSF's device and dtype (the backbone's).
        like = next(iter(op.parameters()), ssf_param)
        if op.weight is None:
            op.weight = _new_param(like, op.normalized_shape, 1.0)
            created.append("weight")
        if op.bias is None:
            op.bias = _new_param(like, op.normalized_shape, 0.0)
            created.append("bias")
        op.elementwise_affine = True
        _assign(op.weight, op.weight.double() * scale)
        _assign(op.bias, op.bias.double() * scale + shift)
    else:
        raise UniTuneError(f"merge: cannot fold SSF into a {type(op).__name__}; expected Linear, Conv2d or LayerNorm")
    return created


# ---- merge -------------------------------------------------------------------------------------


def _fold_target(vit: VisionTransformer, name: str) -> str:
    """The path in the plain timm model that the PEFT layer called ``name`` folds into."""
    parts = name.split(".")
    if parts[0] == "blocks":
        i, method, rest = parts[1], parts[2], ".".join(parts[3:])
        return f"blocks.{i}.{LORA_PATHS[rest] if method == 'lora' else rest}"
    # Global SSF: after patch-embed it wraps patch_embed.norm, at the end the final norm.
    where = parts[1]
    if where == "patch_embed":
        return "patch_embed.norm" if not isinstance(vit.patch_embed.norm, nn.Identity) else "patch_embed.proj"
    if isinstance(vit.get_submodule(where), nn.Identity):
        # Neither norm nor fc_norm exists: the op after the pooled features is the head, and
        # head(γ⊙x + β) = (W diag γ) x + (W β + b) folds there instead (exact in eval mode).
        return "head"
    return where


def _fold_head(head: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> list[str]:
    if not isinstance(head, nn.Linear):
        raise UniTuneError("merge: the final global SSF has no norm to fold into and the head is not an nn.Linear")
    scale, shift = scale.detach().double(), shift.detach().double()
    created = []
    w = head.weight.double()
    if head.bias is None:
        head.bias = _new_param(head.weight, (head.out_features,), 0.0)
        created.append("bias")
    _assign(head.bias, head.bias.double() + w @ shift)
    _assign(head.weight, w * scale)
    return created


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
    # LoRA first: SSF on the same linear scales the LoRA-updated weight.
    for kind in (LoRALinear, SSF):
        for name, layer in model.named_layers.items():
            if not isinstance(layer, kind) or layer.size == 0:
                continue
            path = _fold_target(vit, name)
            op = vit.get_submodule(path)
            if kind is LoRALinear:
                fold_lora(op, layer)
            elif path == "head":
                created += [f"head.{p}" for p in _fold_head(op, layer.ssf_scale, layer.ssf_shift)]
            else:
                created += [f"{path}.{p}" for p in fold_scale_shift(op, layer.ssf_scale, layer.ssf_shift)]
    kwargs, added = _match_timm_bias_kwargs(vit, created)

    unmerged = unmerged_subnet(subnet)
    out: nn.Module = vit
    if not unmerged.is_empty():
        # The same construction the export loader uses, so both give the identical structure.
        out = PeftViT(vit, model.space, sizes=unmerged)
        out.take_slices(dict(model.peft_named_parameters()))
    out.requires_grad_(False)
    return MergedModel(out.eval(), subnet, model.space, unmerged, kwargs, tuple(added))


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
