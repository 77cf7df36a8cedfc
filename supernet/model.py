"""Inject the PEFT layers into a timm ``VisionTransformer`` and choose the active subnet.

:class:`PeftViT` wraps modules of the timm model in place (it never copies timm's model code),
so fused attention, prefix tokens, LayerScale and every pooling mode keep working. The same
class serves the weight-sharing supernet (every layer at the space's largest size) and a
materialised subnet (every layer at exactly its chosen size, size-0 layers absent).
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from unitune.errors import UniTuneError
from unitune.weights import check_tensor

from .methods import METHODS
from .methods.base import BACKBONE_FAMILY, HEAD_FAMILY
from .methods.layers import PeftLayer, backbone_dd, prefix_slice
from .methods.layers import unwrap
from .methods.vit import backbone_name, check_methods, check_vit, classifier_heads
from .space import SearchSpace
from .subnet import Subnet


def _strip(module: nn.Module) -> None:
    """Replace every PEFT wrapper below ``module`` by the backbone module it wraps."""
    for name, child in list(module.named_children()):
        inner = unwrap(child)
        if inner is not child:
            setattr(module, name, inner)
        _strip(inner)


class PeftViT(nn.Module):
    """A timm ViT with the registered methods' layers (LoRA, Adapter, VPT, SSF, ...) of given
    maximum sizes in every block.

    ``sizes`` gives each layer's allocated size; ``None`` means the space's largest everywhere
    (the supernet). Only PEFT parameters and the classifier head are trainable.
    """

    def __init__(self, vit: VisionTransformer, space: SearchSpace, sizes: Subnet | None = None):
        super().__init__()
        check_vit(vit)
        depth = len(vit.blocks)
        sizes = (sizes or Subnet.largest(space, depth)).check(depth)
        check_methods(vit, backbone_name(vit), sizes)  # e.g. SSF only where the merge can fold it
        self.vit = vit
        self.space = space
        self.capacity = sizes
        # Per position (method, block; block None for a model-level method) the layers a subnet
        # size is set on; and every layer under a canonical name ("blocks.3.lora.qkv",
        # "ssf_global.norm") that does not depend on how wrappers happen to nest, so supernet,
        # materialised model and checkpoints agree. ``layer_sites`` names each layer's position.
        self.groups: dict[tuple[str, int | None], list[PeftLayer]] = {}
        self.named_layers: dict[str, PeftLayer] = {}
        self.layer_sites: dict[str, tuple[str, int | None, str]] = {}
        # Per method, what its model-level hook built (Method.build_shared): kept once here, so
        # .to() moves it once and the layers that refer to it keep sharing it.
        self.shared = nn.ModuleDict()
        for p in vit.parameters():
            p.requires_grad_(False)
        self._inject(sizes)
        for head in classifier_heads(vit).values():
            for p in head.parameters():
                p.requires_grad_(True)
        self._subnet = sizes
        self.set_subnet(sizes)

    # ---- construction ------------------------------------------------------------------------

    def _inject(self, sizes: Subnet) -> None:
        """Each registered method wraps its modules: per block, in ``inject_rank`` order (DoRA,
        LoRA and VeRA on a linear's weight, innermost; SSF and BitFit around them, the adapter around the MLP, VPT around the block),
        then the model-level methods. Before any of it, each method's model-level hook
        (``Method.build_shared``) builds what its layers share across the model."""
        vit, space = self.vit, self.space
        dd = backbone_dd(vit)
        by_rank = sorted(METHODS.values(), key=lambda m: m.inject_rank)
        # The model-level hook first, on the plain backbone (no wrapper is in place yet).
        for method in by_rank:
            shared = method.build_shared(vit, space, sizes, dd)
            if shared is not None:
                self.shared[method.name] = shared
        sites = [(m, i) for i in range(len(vit.blocks)) for m in by_rank if m.site == "block"]
        sites += [(m, None) for m in by_rank if m.site == "model"]
        for method, i in sites:
            group = self.groups.setdefault((method.name, i), [])
            size = sizes.block_size(method.name, i)
            if not size:
                continue
            prefix = method.name if i is None else f"blocks.{i}.{method.name}"
            extra = {"shared": self.shared[method.name]} if method.name in self.shared else {}
            for suffix, layer in method.inject(vit, space, i, size, dd, **extra):
                name = f"{prefix}.{suffix}" if suffix else prefix
                group.append(layer)
                self.named_layers[name] = layer
                self.layer_sites[name] = (method.name, i, suffix)

    # ---- the active subnet -------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def subnet(self) -> Subnet:
        return self._subnet

    def set_subnet(self, subnet: Subnet | dict) -> None:
        """Make ``subnet`` the active one; every size must fit the allocated layers. It takes what
        ``get_peft_model(subnet=...)`` takes: a Subnet, a subnet file, or a dict like ``{"lora": 8}``."""
        subnet = Subnet.coerce(subnet, self.depth, "set_subnet").check(self.depth)
        for (m, i), layers in self.groups.items():
            size, cap = subnet.block_size(m, i), self.capacity.block_size(m, i)
            if size > cap:
                where = m if i is None else f"{m}[{i}]"
                raise UniTuneError(f"subnet: {where} = {size} exceeds this model's allocated size {cap}")
        for (m, i), layers in self.groups.items():
            for layer in layers:
                layer.set_size(subnet.block_size(m, i))
        self._subnet = subnet

    # ---- parameters --------------------------------------------------------------------------

    @property
    def head(self) -> nn.Module:
        return self.vit.head

    def train(self, mode: bool = True) -> "PeftViT":
        """As ``nn.Module.train``, but a frozen BatchNorm stays in eval mode: in train mode it would
        renormalise with batch statistics and overwrite its frozen running statistics."""
        super().train(mode)
        for m in self.vit.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        return self

    def peft_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """PEFT parameters under canonical names, e.g. ``blocks.3.lora.qkv.lora_A``."""
        for name, layer in self.named_layers.items():
            for pname, p in layer.peft_named_parameters():
                yield f"{name}.{pname}", p

    def trainable_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Everything training changes: PEFT parameters and the classifier head (``head.*``;
        a distilled DeiT's second head is ``head_dist.*``)."""
        yield from self.peft_named_parameters()
        for hname, head in classifier_heads(self.vit).items():
            for pname, p in head.named_parameters():
                yield f"{hname}.{pname}", p

    def param_family(self, name: str) -> str:
        """The optimiser family (:attr:`Method.family`, or ``head``) of a name as
        :meth:`trainable_named_parameters` gives it; other names are the backbone's."""
        layer = name.rpartition(".")[0]
        if layer in self.layer_sites:
            return METHODS[self.layer_sites[layer][0]].family
        if name.partition(".")[0] in classifier_heads(self.vit):
            return HEAD_FAMILY
        return BACKBONE_FAMILY

    def no_weight_decay(self) -> set[str]:
        """Names (as :meth:`trainable_named_parameters` gives them) that AdamW must not decay
        beyond timm's 1-d rule: what each method declares (VPT's prompts)."""
        return {f"{name}.{pname}" for name, (m, _, _) in self.layer_sites.items()
                for pname in METHODS[m].no_weight_decay}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.trainable_named_parameters()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load what :meth:`trainable_state_dict` saved; names and shapes must match exactly, and
        every value be a finite float (:func:`unitune.weights.check_tensor`)."""
        own = dict(self.trainable_named_parameters())
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        if missing or unexpected:
            raise UniTuneError(
                f"{source}: does not fit this model (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
            )
        for name, p in own.items():  # every tensor checked before any is copied
            check_tensor(name, state[name], p, source)
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(state[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)

    # ---- materialisation ---------------------------------------------------------------------

    def backbone(self) -> VisionTransformer:
        """A deep copy of the plain timm model, every PEFT wrapper removed."""
        vit = copy.deepcopy(self.vit)
        _strip(vit)
        return vit

    def materialize(self, subnet: Subnet | None = None) -> "PeftViT":
        """A model with exactly ``subnet``'s sizes (default: the active one) and the sliced weights."""
        subnet = self.subnet if subnet is None else Subnet.coerce(subnet, self.depth, "materialize")
        # Validate against the capacity with set_subnet itself (one rule, whatever the methods), then
        # put the active subnet back: materialising must not change the source model. set_subnet
        # can fail after setting some layers, so the restore runs in either case.
        active = self.subnet
        try:
            self.set_subnet(subnet)
        finally:
            self.set_subnet(active)
        vit = self.backbone()
        for p in vit.parameters():
            p.requires_grad_(False)
        model = type(self)(vit, self.space, sizes=subnet)  # a PeftModel stays one
        model.take_slices(dict(self.peft_named_parameters()))
        return model.train(self.training)

    @torch.no_grad()
    def take_slices(self, source: dict[str, torch.Tensor]) -> None:
        """Make each PEFT parameter the leading block of its namesake in ``source`` (a larger
        model's), as a new parameter on that tensor's device and in its dtype: what a
        materialised or merged layer inherits is the very weight it replaces."""
        for lname, layer in self.named_layers.items():
            for pname, p in list(layer.peft_named_parameters()):
                value = prefix_slice(source[f"{lname}.{pname}"].detach(), p.shape).clone()
                setattr(layer, pname, nn.Parameter(value, requires_grad=p.requires_grad))
