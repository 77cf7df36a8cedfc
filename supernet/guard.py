"""Keep an optimizer step from touching weights outside the active subnet.

Autograd gives unused slices of a partly active parameter a zero gradient, not ``None``, so
AdamW's weight decay (and any momentum left from earlier steps) would still move them: the
weights a *different* subnet relies on would drift while this one trains. The guard snapshots
the inactive entries before ``optimizer.step()`` and puts them back after it.
"""

from __future__ import annotations

import torch

from .model import PeftViT


def active_masks(model: PeftViT) -> dict[str, torch.Tensor]:
    """Per canonical PEFT parameter name, a boolean mask of the entries the active subnet uses."""
    masks = {}
    for lname, layer in model.named_layers.items():
        for pname, p in layer.peft_named_parameters():
            mask = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
            mask[tuple(slice(0, s) for s in layer.active_shape(pname))] = True
            masks[f"{lname}.{pname}"] = mask
    return masks


class InactiveGuard:
    """Register on an optimizer: ``InactiveGuard(model, optimizer)``; ``remove()`` undoes it."""

    def __init__(self, model: PeftViT, optimizer: torch.optim.Optimizer):
        self.model = model
        self._saved: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []
        self._handles = [
            optimizer.register_step_pre_hook(self._before),
            optimizer.register_step_post_hook(self._after),
        ]

    def _before(self, optimizer, args, kwargs) -> None:
        params = dict(self.model.peft_named_parameters())
        self._saved = [
            (params[name], mask, params[name].detach().clone())
            for name, mask in active_masks(self.model).items()
            if not bool(mask.all())
        ]

    @torch.no_grad()
    def _after(self, optimizer, args, kwargs) -> None:
        for p, mask, saved in self._saved:
            p.copy_(torch.where(mask, p, saved))
        self._saved = []

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
