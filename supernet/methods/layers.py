"""What every PEFT layer shares: a marker base class and prefix slicing."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn


class PeftLayer(nn.Module):
    """Base of the Adapter / LoRA / VPT / SSF layers.

    A layer's own parameters (``recurse=False``) are its PEFT parameters; the module it wraps,
    if any, is frozen backbone. Each layer holds its maximum size; ``size`` picks the active
    prefix (weight entanglement), and size 0 takes the layer out of the computation.
    """

    max_size: int
    # Per parameter, the dimension that scales with the size; other dimensions are used whole.
    _size_dims: dict[str, int] = {}

    def __init__(self, max_size: int):
        super().__init__()
        if max_size < 1:
            raise ValueError(f"{type(self).__name__}: max_size must be >= 1, got {max_size}")
        self.max_size = max_size
        self.size = max_size

    def set_size(self, size: int) -> None:
        if not 0 <= size <= self.max_size:
            raise ValueError(f"{type(self).__name__}: size {size} outside [0, {self.max_size}]")
        self.size = size

    def peft_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.named_parameters(recurse=False)

    def active_shape(self, name: str, size: int | None = None) -> torch.Size:
        """Shape of the leading block of parameter ``name`` that a layer of ``size`` uses."""
        size = self.size if size is None else size
        p = getattr(self, name)
        dim = self._size_dims.get(name)
        if size == 0:
            return torch.Size([0] * p.dim())
        if dim is None:
            return p.shape
        shape = list(p.shape)
        shape[dim] = size
        return torch.Size(shape)

    def extra_repr(self) -> str:
        return f"size={self.size}/{self.max_size}"


def prefix_slice(src: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The leading block of ``src`` with ``shape``: how a materialised layer inherits supernet weights."""
    if len(src.shape) != len(shape) or any(s > t for s, t in zip(shape, src.shape)):
        raise ValueError(f"cannot slice {tuple(shape)} out of {tuple(src.shape)}")
    return src[tuple(slice(0, s) for s in shape)]


# ---- paths inside a block (PEFT wrappers nest, so lookups look through them) -----------------


def unwrap(module: nn.Module) -> nn.Module:
    """The backbone module under any PEFT wrappers."""
    while isinstance(module, PeftLayer):
        module = next(iter(module.children()))
    return module


def get_path(root: nn.Module, path: str) -> nn.Module | None:
    """The module at ``path``, looking through PEFT wrappers on the way (not at the end)."""
    module = root
    for part in path.split("."):
        module = getattr(unwrap(module), part, None)
        if module is None:
            return None
    return module


def set_path(root: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_path(root, parent) if parent else root, name, value)


def out_dim(module: nn.Module, fallback: int) -> int:
    """The width of ``module``'s output (a linear's, a norm's or a conv's), else ``fallback``."""
    for attr in ("out_features", "normalized_shape", "out_channels"):
        value = getattr(module, attr, None)
        if value is not None:
            return int(value[-1]) if isinstance(value, (tuple, list)) else int(value)
    return fallback


def backbone_dd(vit: nn.Module) -> dict:
    """Device and dtype of the backbone: new layers live where it lives, in its dtype, so a model
    built on (or moved to) a GPU before injection, or a deep copy of one, stays there whole."""
    ref = next((p for p in vit.parameters() if p.is_floating_point()), None)
    return dict(device=ref.device, dtype=ref.dtype) if ref is not None else {}
