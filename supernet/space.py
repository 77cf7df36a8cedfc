"""The search space: ordered size choices per method, and the options that shape the modules.

A space is read from the ``space:`` section of a YAML config::

    space:
      lora: [0, 1, 5, 10]        # LoRA rank per block
      adapter: [0, 1, 5, 10]     # Adapter bottleneck width per block
      vpt: [0, 1, 5, 10]         # VPT-deep prompt tokens per block
      ssf: [0, 1]                # SSF off / on per block
      ssf_global: [0, 1]         # SSF after patch-embed and the final norm, off / on
      lora_targets: [qkv]        # linears of each block that get LoRA: qkv, proj, fc1, fc2
      lora_scale: 1.0            # s in qkv(x) + s·B(Ax)
      adapter_style: sequential  # after the MLP (NOAH) or parallel to it (AdaptFormer)
      adapter_scale: 1.0

The size lists are ordered, so a search can encode a choice as an index into them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from unitune.errors import UniTuneError

METHODS = ("lora", "adapter", "vpt", "ssf")
SIZE_KEYS = METHODS + ("ssf_global",)
LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")
ADAPTER_STYLES = ("sequential", "parallel")
# A cap on every size: a rank, bottleneck or prompt count above it cannot fit any ViT's width or
# memory, and 1e12 would otherwise reach torch.empty.
MAX_SIZE = 4096


@dataclass(frozen=True)
class SearchSpace:
    lora: tuple[int, ...] = (0, 1, 5, 10)
    adapter: tuple[int, ...] = (0, 1, 5, 10)
    vpt: tuple[int, ...] = (0, 1, 5, 10)
    ssf: tuple[int, ...] = (0, 1)
    ssf_global: tuple[int, ...] = (0, 1)
    lora_targets: tuple[str, ...] = ("qkv",)
    lora_scale: float = 1.0
    adapter_style: str = "sequential"
    adapter_scale: float = 1.0
    # Where the space came from, for error messages ("configs/demo.yaml: space.lora").
    source: str = field(default="space", compare=False, repr=False)

    def __post_init__(self):
        for key in SIZE_KEYS:
            sizes = getattr(self, key)
            where = f"{self.source}.{key}"
            if not isinstance(sizes, (list, tuple)) or not sizes:
                raise UniTuneError(f"{where}: expected a non-empty list of sizes, got {sizes!r}")
            for s in sizes:
                if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                    raise UniTuneError(f"{where}: sizes must be non-negative integers, got {s!r}")
                if s > MAX_SIZE:
                    raise UniTuneError(f"{where}: size {s} is above {MAX_SIZE} (wider than a ViT; a typo?)")
            if list(sizes) != sorted(set(sizes)):
                raise UniTuneError(f"{where}: sizes must be strictly increasing, got {list(sizes)}")
            if key in ("ssf", "ssf_global") and not set(sizes) <= {0, 1}:
                raise UniTuneError(f"{where}: SSF is off (0) or on (1), got {list(sizes)}")
            object.__setattr__(self, key, tuple(sizes))
        targets = self.lora_targets
        if isinstance(targets, str) or not isinstance(targets, (list, tuple)) or not targets:
            raise UniTuneError(f"{self.source}.lora_targets: expected a list from {list(LORA_TARGETS)}, got {targets!r}")
        for t in targets:
            if t not in LORA_TARGETS:
                raise UniTuneError(f"{self.source}.lora_targets: unknown target {t!r}, expected one of {list(LORA_TARGETS)}")
        if len(set(targets)) != len(targets):
            raise UniTuneError(f"{self.source}.lora_targets: duplicate target in {list(targets)}")
        object.__setattr__(self, "lora_targets", tuple(targets))
        if self.adapter_style not in ADAPTER_STYLES:
            raise UniTuneError(
                f"{self.source}.adapter_style: expected one of {list(ADAPTER_STYLES)}, got {self.adapter_style!r}"
            )
        for key in ("lora_scale", "adapter_scale"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UniTuneError(f"{self.source}.{key}: expected a finite number, got {value!r}")
            object.__setattr__(self, key, float(value))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "space") -> "SearchSpace":
        data = dict(data or {})
        known = {f.name for f in fields(cls)} - {"source"}
        for key in data:
            if key not in known:
                raise UniTuneError(f"{source}.{key}: unknown key, expected one of {sorted(known)}")
        return cls(**data, source=source)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: list(getattr(self, k)) for k in SIZE_KEYS}
        out["lora_targets"] = list(self.lora_targets)
        out.update(lora_scale=self.lora_scale, adapter_style=self.adapter_style, adapter_scale=self.adapter_scale)
        return out

    def choices(self, key: str) -> tuple[int, ...]:
        return getattr(self, key)

    def max_size(self, key: str) -> int:
        return max(getattr(self, key))

    def min_size(self, key: str) -> int:
        return min(getattr(self, key))
