"""What the "point" methods share: a per-channel update after each of a block's six output points.

SSF (scale and shift) and BitFit (a bias delta) both wrap the same six ops of a block
(``norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2``), act on their output channels, are on
or off per block, and fold into the op they follow (a Linear, Conv2d or LayerNorm over the last
dimension). :class:`PointLayer` holds the wrapping and the on/off, :class:`PointMethod` the sites,
the injection and the backbone check; each method keeps its own parameters, forward and fold.
"""

from __future__ import annotations

import torch
from torch import nn

from unitune.errors import UniTuneError

from .layers import PeftLayer, get_path, out_dim, set_path, unwrap
from .base import Method, foldable_op

# Where the point methods go in each block: after these modules (paths relative to the block).
SSF_POINTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def wrap_points(vit, block: int, make) -> list[tuple[str, PeftLayer]]:
    """Wrap each of block ``block``'s points in ``make(module, output width)``."""
    b, out = vit.blocks[block], []
    for path in SSF_POINTS:
        module = get_path(b, path)
        layer = make(module, out_dim(unwrap(module), vit.embed_dim))
        set_path(b, path, layer)
        out.append((path, layer))
    return out


def unfoldable_point(vit, sizes) -> tuple[int, str, nn.Module] | None:
    """The first point of a block where ``sizes`` is on that no merge can fold into (an RmsNorm:
    no bias to take a shift): ``(block, path, op)``, or None."""
    for i, on in enumerate(sizes):
        if on:
            block = unwrap(vit.blocks[i])
            for path in SSF_POINTS:
                op = unwrap(get_path(block, path))
                if not foldable_op(op):
                    return i, path, op
    return None


class PointLayer(PeftLayer):
    """Wraps a module whose output's last dimension is ``dim``; ``size`` is 0 (off) or 1 (on).
    A subclass creates its per-channel parameters and implements :meth:`update`."""

    def __init__(self, module: nn.Module):
        super().__init__(1)
        self.module = module  # the first child: what ``unwrap`` looks through

    def update(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.module(x, *args, **kwargs)
        if self.size == 0:
            return y
        return self.update(y)


class PointMethod(Method):
    """A method with one :class:`PointLayer` after each of a block's six points, on or off per
    block. A subclass sets ``layer_class``, ``fold_hint`` (what it folds into, for the backbone
    check's message), ``params`` and ``fold``."""

    on_off = True
    foldable = True
    layer_class: type[PointLayer] = PointLayer
    fold_hint: str = ""

    def inject(self, vit, space, block, size, dd):
        return wrap_points(vit, block, lambda module, width: self.layer_class(module, width, **dd))

    def check_backbone(self, vit, name, sizes):
        found = unfoldable_point(vit, sizes)
        if found:
            i, path, op = found
            raise UniTuneError(f"{name}: {self.label} after block {i}'s {path} (a {type(op).__name__}) could not be "
                               f"merged into the backbone ({self.fold_hint}); {self.label} must stay off on this "
                               f"backbone (space.{self.name}: [0])")
