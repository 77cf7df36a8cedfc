"""Keep an optimizer step from touching weights that no subnet of the step used.

Autograd gives unused slices of a partly active parameter a zero gradient, not ``None``, so
AdamW's weight decay (and any momentum left from earlier steps) would still move them: the
weights a *different* subnet relies on would drift while this one trains. And AdamW decays its
moments (``exp_avg``, ``exp_avg_sq``) wherever the gradient is zero, so an idle entry would come
back to a different optimiser state than it left. The guard snapshots the idle entries of the
weights and of their optimiser state before ``optimizer.step()`` and puts them back after it.

A step may train several subnets (the sandwich sampler sums the gradients of the largest, the
smallest and random ones): what it used is the *union* of their entries. Every PEFT parameter's
active block is a prefix along one dimension (or the whole tensor, or nothing), so that union is
the block of the largest size any of them gave the layer: the guard tracks, per layer, the largest
size seen in a forward pass with autograd on since the last step. A single-subnet step costs what
it did before: one size per layer.

Per step the guard decides on the host, from shapes alone, what each tensor leaves idle: nothing
(most tensors, for the large subnets: they cost nothing), everything (size 0), or the slice after
the used prefix along the one dimension that sizes it. Only that slice of the weight and of its
moments is copied and put back: no mask is built and nothing waits for the device (the guard used
to build a mask per tensor every step and read ``bool(mask.all())``, a synchronisation each).
"""

from __future__ import annotations

import torch

from .model import PeftViT
from .subnet import Subnet


def _layer_sizes(model: PeftViT, subnet: Subnet | None = None) -> dict[int, int]:
    """Per PEFT layer (by ``id``), its size under ``subnet`` (default: the active sizes)."""
    if subnet is None:
        return {id(layer): layer.size for layer in model.named_layers.values()}
    return {id(layer): subnet.block_size(m, i) for (m, i), layers in model.groups.items() for layer in layers}


def active_masks(model: PeftViT, sizes: dict[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Per canonical PEFT parameter name, a boolean mask of the entries in use.

    ``sizes`` (per layer ``id``, see :func:`_layer_sizes`) defaults to the active subnet's.
    """
    masks = {}
    for lname, layer in model.named_layers.items():
        size = layer.size if sizes is None else sizes.get(id(layer), 0)
        for pname, p in layer.peft_named_parameters():
            mask = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
            mask[tuple(slice(0, s) for s in layer.active_shape(pname, size))] = True
            masks[f"{lname}.{pname}"] = mask
    return masks


def idle_regions(model: PeftViT, sizes: dict[int, int] | None = None):
    """``(parameter, index)`` for every PEFT parameter that ``sizes`` (default: the active sizes)
    leaves partly or wholly idle; ``parameter[index]`` is a view of exactly its idle entries."""
    for layer in model.named_layers.values():
        size = layer.size if sizes is None else sizes.get(id(layer), 0)
        for pname, p in layer.peft_named_parameters():
            block = tuple(layer.active_shape(pname, size))
            short = [i for i, (s, d) in enumerate(zip(block, p.shape)) if s < d]
            if not short:
                continue  # wholly used
            if 0 in block:
                yield p, (...,)  # wholly idle
                continue
            # A layer's size sets one dimension of each parameter (PeftLayer.active_shape), so the
            # idle entries of a used prefix are the slice after it along that dimension.
            if len(short) != 1:
                raise ValueError(f"{pname}: used block {block} of {tuple(p.shape)} is cut along several dimensions")
            i = short[0]
            yield p, (slice(None),) * i + (slice(block[i], None),)


class InactiveGuard:
    """Register on an optimizer: ``InactiveGuard(model, optimizer)``; ``remove()`` undoes it.

    Protects the entries that no forward pass since the last step used (a step without any
    recorded forward pass protects what the active subnet does not use).
    """

    def __init__(self, model: PeftViT, optimizer: torch.optim.Optimizer):
        self.model = model
        self.optimizer = optimizer
        self._used: dict[int, int] | None = None  # per layer id, the largest size of this step
        self._saved: list[tuple[torch.nn.Parameter, tuple, torch.Tensor, dict[str, torch.Tensor] | None]] = []
        self._handles = [
            model.register_forward_pre_hook(self._record),
            optimizer.register_step_pre_hook(self._before),
            optimizer.register_step_post_hook(self._after),
        ]

    def _record(self, module, args) -> None:
        # Only passes that can produce gradients count: evaluation runs under no_grad.
        if not torch.is_grad_enabled():
            return
        now = _layer_sizes(self.model)
        if self._used is None:
            self._used = now
        else:
            used = self._used
            for key, size in now.items():
                if size > used[key]:
                    used[key] = size

    def used_masks(self) -> dict[str, torch.Tensor]:
        """The masks of the entries this step has used so far."""
        return active_masks(self.model, self._used)

    def _before(self, optimizer, args, kwargs) -> None:
        self._saved = []
        for p, idle in idle_regions(self.model, self._used):
            state = optimizer.state.get(p)
            # The moments AdamW keeps per entry (any tensor shaped like the parameter); None: not
            # created yet, so the idle entries must come out of the step at their initial zero.
            moments = None if not state else {k: v.detach()[idle].clone() for k, v in state.items()
                                              if torch.is_tensor(v) and v.shape == p.shape}
            self._saved.append((p, idle, p.detach()[idle].clone(), moments))

    @torch.no_grad()
    def _after(self, optimizer, args, kwargs) -> None:
        for p, idle, saved, moments in self._saved:
            p[idle] = saved
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if not (torch.is_tensor(value) and value.shape == p.shape):
                    continue
                if moments is not None and key in moments:
                    value[idle] = moments[key]
                else:
                    value[idle] = 0
        self._saved = []
        self._used = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
