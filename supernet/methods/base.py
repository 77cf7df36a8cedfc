"""What a PEFT method declares to the registry: the :class:`Method` contract.

How to add a method — one new file plus one registration line:

1. Write ``supernet/methods/<name>.py`` holding the layer class (a
   :class:`~unitune.supernet.methods.layers.PeftLayer`: it holds its largest size and ``size`` picks a
   prefix of its parameters; size 0 takes it out of the computation) and a :class:`Method`
   subclass that sets

   - ``name`` (the space / subnet-file key and the Optuna parameter prefix ``<name>.03``),
     ``label`` (for messages), ``site`` (``"block"``: one size per transformer block;
     ``"model"``: one size for the whole model), ``on_off`` (sizes are 0/1, else free
     non-negative integers), ``default_choices`` (``(0,)``: off unless a space names it);
   - ``options``: its space options, each an :class:`Option` with its default and its check;
   - ``params(size, block, dims, space)``: its exact parameter count from the backbone's dims
     (``tests/test_methods_matrix.py`` checks it against ``numel`` of the built layers);
   - ``inject(vit, space, block, size, dd)``: wrap modules of block ``block`` (or of the
     model) and return ``[(suffix, layer), ...]``; layers are named
     ``blocks.<i>.<name>[.<suffix>]`` (or ``<name>[.<suffix>]``);
   - if its update folds into the weights: ``foldable = True`` and ``fold(vit, block,
     suffix, layer)`` (see :mod:`.fold`); a method that does not fold stays as modules in the
     merged model;
   - ``family``: the optimiser family its parameters train in (``"prompt"``, ``"scale_shift"``,
     ``"low_rank"``, ``"adapter"``, or a new name): one learning-rate multiplier per family
     (``retrain.lr_mult``), because method families want different rates;
   - optionally ``check_backbone`` (refuse, before training, a backbone the merge could not
     fold into), ``no_weight_decay`` (parameter names AdamW must not decay), ``inject_rank``
     (wrapping order inside a block: smaller wraps first, i.e. sits innermost),
     ``fold_rank`` (folding order: smaller folds first) and ``build_shared`` (below).

   The layer class keeps three rules the rest of the code relies on:

   - **Trainable tensors are its own parameters, frozen ones are buffers.** A layer's PEFT
     parameters *are* ``named_parameters(recurse=False)``
     (:meth:`~unitune.supernet.methods.layers.PeftLayer.peft_named_parameters`): the analytic counts are
     checked against their ``numel``, the optimiser, the weight-decay groups, the inactive-entry
     guard, ``take_slices`` (materialise, merge) and every checkpoint and PEFT save take exactly
     those. A frozen tensor held as a parameter (even with ``requires_grad=False``) would be
     counted, saved and sliced as if trained; as a buffer it is none of these.
   - **The wrapped backbone module is its first child** (assigned first in ``__init__``, before
     any other submodule). :func:`~unitune.supernet.methods.layers.unwrap` finds it as
     ``next(iter(module.children()))``, and everything that looks through wrappers uses that:
     ``get_path`` (every method's ``inject``, the backbone check, :class:`BackboneDims`),
     ``PeftViT.backbone`` (the copy materialise and merge fold into, whose wrappers are replaced
     by what ``unwrap`` returns) and the API's record of the frozen backbone tensors. Another
     submodule registered first would be taken for the backbone op. (Canonical layer names and the
     guard do not depend on nesting: they go through ``PeftViT.named_layers``.)
   - **Sizes are prefixes**: a layer of size k uses the leading block of each parameter along the
     dimension ``_size_dims`` names (or the whole parameter); the supernet shares weights that way.

   State shared by many layers of one model (VeRA's frozen random matrices, one pair per shape)
   comes from the model-level hook ``build_shared(vit, space, sizes, dd)``: called once per
   model, before any layer is injected, it returns an ``nn.Module`` holding that state as
   buffers (or ``None``: nothing shared, the default). The model keeps it once, as
   ``model.shared[<name>]`` (so ``.to()`` moves it once and the layers keep sharing it), and
   hands it to every ``inject`` of the method as ``inject(..., shared=module)``. A layer refers to
   it without registering it as a submodule (it is neither the wrapped module nor its state).

2. Append ``register_method(<Name>Method())`` in ``supernet/methods/__init__.py``. Registration
   order is the order of Optuna parameters, files and tables, so a new method goes last and
   existing studies keep resuming.

Everything else comes from the registry: the space key and its checks, the subnet-file key,
the Optuna parameters, the one cost table behind the repair, the samplers and the budget,
``unitune inspect``, materialisation, merge, export, the weight-decay groups, and the test
matrix in ``tests/test_methods_matrix.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from unitune.errors import UniTuneError

if TYPE_CHECKING:  # the registry sits below the model: only type names are needed here
    from timm.models.vision_transformer import VisionTransformer

    from ..space import SearchSpace
    from ..subnet import Subnet
    from .dims import BackboneDims, BlockDims
    from .layers import PeftLayer

SITES = ("block", "model")
# Optimiser families that are not a method's: the classifier head, and the backbone's own weights
# (full fine-tuning).
HEAD_FAMILY, BACKBONE_FAMILY = "head", "backbone"
# A cap on every size: a rank, bottleneck or prompt count above it cannot fit any ViT's width or
# memory, and 1e12 would otherwise reach torch.empty.
MAX_SIZE = 4096


@dataclass(frozen=True)
class Option:
    """A space option of a method (``lora_scale: 1.0``): its default, and a check that returns
    the normalised value or raises a one-line :class:`UniTuneError` naming ``where``."""

    name: str
    default: Any
    check: Callable[[Any, str], Any]
    dump: Callable[[Any], Any] = lambda value: value  # how the space file writes it


def finite_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UniTuneError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def one_of(*choices: str) -> Callable[[Any, str], str]:
    def check(value: Any, where: str) -> str:
        if value not in choices:
            raise UniTuneError(f"{where}: expected one of {list(choices)}, got {value!r}")
        return value

    return check


def subset_of(*choices: str) -> Callable[[Any, str], tuple[str, ...]]:
    """A non-empty list of distinct names from ``choices``."""

    def check(value: Any, where: str) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
            raise UniTuneError(f"{where}: expected a list from {list(choices)}, got {value!r}")
        for v in value:
            if v not in choices:
                raise UniTuneError(f"{where}: unknown target {v!r}, expected one of {list(choices)}")
        if len(set(value)) != len(value):
            raise UniTuneError(f"{where}: duplicate target in {list(value)}")
        return tuple(value)

    return check


class Method:
    """One PEFT method (see the module docstring for how to add one)."""

    name: str = ""
    label: str = ""  # how messages name it ("SSF")
    size_word: str = "size"  # what a size is called in labels ("lora r=8")
    title: str = ""  # a heading for tables and plots; the name when empty

    @property
    def heading(self) -> str:
        return self.title or self.name
    site: str = "block"
    on_off: bool = False
    default_choices: tuple[int, ...] = (0,)
    options: tuple[Option, ...] = ()
    # The key its parameters are reported under in per-method totals (the global SSF counts as SSF).
    report_as: str | None = None
    # Written in every subnet and space file, even when off: the file format of the five original
    # methods. A method registered later is written only when it is on (old readers never see it).
    always_written: bool = False
    foldable: bool = False
    # Which learning-rate multiplier its parameters take (TrainConfig.lr_mult): the literature's
    # tuned rates differ by family (BitFit and VPT pick ~10x LoRA's and the adapters'). Empty: a
    # family of its own, named as the method (register_method fills it in).
    family: str = ""
    inject_rank: int = 50
    fold_rank: int = 50
    no_weight_decay: tuple[str, ...] = ()

    @property
    def report_key(self) -> str:
        return self.report_as or self.name

    # ---- sizes -----------------------------------------------------------------------------

    def check_choices(self, sizes: Any, where: str) -> tuple[int, ...]:
        """The space's ordered choices for this method, or a one-line error."""
        if not isinstance(sizes, (list, tuple)) or not sizes:
            raise UniTuneError(f"{where}: expected a non-empty list of sizes, got {sizes!r}")
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise UniTuneError(f"{where}: sizes must be non-negative integers, got {s!r}")
            if s > MAX_SIZE:
                raise UniTuneError(f"{where}: size {s} is above {MAX_SIZE} (wider than a ViT; a typo?)")
        if list(sizes) != sorted(set(sizes)):
            raise UniTuneError(f"{where}: sizes must be strictly increasing, got {list(sizes)}")
        if self.on_off and not set(sizes) <= {0, 1}:
            raise UniTuneError(f"{where}: {self.label} is off (0) or on (1), got {list(sizes)}")
        return tuple(sizes)

    # ---- what a method implements ----------------------------------------------------------

    def params(self, size: int, block: BlockDims | None, dims: BackboneDims, space: SearchSpace) -> int:
        """Exact trainable parameters of this method at ``size`` (> 0) in ``block`` (``None``
        for a model-level method) of a backbone with ``dims``."""
        raise NotImplementedError

    def count(self, size: int, block: BlockDims | None, dims: BackboneDims, space: SearchSpace) -> int:
        """As :meth:`params`, 0 for size 0 (the layer is absent)."""
        return self.params(size, block, dims, space) if size else 0

    def inject(self, vit: VisionTransformer, space: SearchSpace, block: int | None, size: int,
               dd: dict) -> list[tuple[str, PeftLayer]]:
        """Wrap modules of block ``block`` (``None``: the model) with layers of largest size
        ``size`` (> 0) on device/dtype ``dd``; return ``[(name suffix, layer), ...]``."""
        raise NotImplementedError

    def build_shared(self, vit: VisionTransformer, space: SearchSpace, sizes: Subnet, dd: dict) -> nn.Module | None:
        """The model-level hook: state shared by this method's layers across the whole model,
        built once per model before any ``inject`` (``sizes``: the model's allocated sizes; ``dd``:
        device/dtype). Return an ``nn.Module`` holding it as buffers, which the model keeps once
        and passes to each ``inject`` as ``shared=``; or ``None`` (the default: nothing shared)."""
        return None

    def fold(self, vit: VisionTransformer, block: int | None, suffix: str, layer: PeftLayer) -> list[str]:
        """Fold ``layer`` (at its active size) into the plain timm ``vit``; return the names of
        parameters the fold had to create (a missing bias)."""
        raise UniTuneError(f"merge: {self.name} does not fold into the backbone's weights")

    def check_backbone(self, vit: VisionTransformer, name: str, sizes: tuple[int, ...] | int) -> None:
        """Raise a one-line error if ``vit`` cannot take this method at ``sizes`` (checked
        before any training); by default every timm ViT can."""

    def __repr__(self) -> str:
        return f"<method {self.name} ({self.site})>"


def foldable_op(op: nn.Module) -> bool:
    """What an affine update on an op's output channels folds into (see :func:`.fold.fold_scale_shift`)."""
    if isinstance(op, nn.LayerNorm):
        return len(op.normalized_shape) == 1
    return isinstance(op, (nn.Linear, nn.Conv2d))
