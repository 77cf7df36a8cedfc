"""The Python API: what a researcher in a notebook uses, named after HF PEFT's.

    import timm, unitune
    vit = timm.create_model("vit_base_patch16_224.augreg_in21k", pretrained=True, num_classes=100)
    model = unitune.get_peft_model(vit, subnet={"lora": 8, "ssf": 1})   # or space={"lora": [0, 4, 8]}
    model = unitune.get_peft_model(vit, [unitune.LoraConfig(r=8), unitune.SSFConfig()])  # the same, as configs
    model.print_trainable_parameters()
    optimizer = unitune.make_optimizer(model, lr=1e-3)                   # inactive-slice guard attached
    ...                                                                  # any training loop
    model.save_pretrained("peft")                                        # PEFT weights + head only
    model = unitune.from_pretrained(timm.create_model(..., num_classes=100), "peft")
    merged = model.merge_and_unload()                                    # a plain timm VisionTransformer

This module is the top of the PEFT library (``unitune.supernet``): it imports the model, the
merge and the config objects, and nothing else in the library imports it. Wrapping and the optimizer live
in :mod:`unitune.supernet.wrap`, because the command-line stages use them too
(``get_peft_model`` is ``wrap_vit`` building a :class:`PeftModel`; ``make_optimizer`` is
re-exported). The rest only assembles the pieces the stages use (``PeftViT``, ``SearchSpace``,
``Subnet``, ``count_params``, ``merge``); nothing here is a second implementation of any of them.

The ``save_pretrained`` folder holds ``peft_weights.safetensors`` (every PEFT parameter at its
allocated size, and the classifier head, under :meth:`PeftViT.trainable_named_parameters`'
names) and ``peft_config.json``::

    format: "unitune-peft", format_version: 1
    backbone: timm architecture name or null (what ``vit.pretrained_cfg`` says, for people)
    num_classes: the head's classes
    space: SearchSpace.to_dict();  allocated: the allocated sizes;  subnet: the active subnet
        (both in the subnet file format, ``Subnet.to_dict``)
    params: {peft, head, active_peft}: counts, for people
    weights: {file, sha256, bytes}
    backbone_tensors: {name: shape} of the frozen backbone (the head aside): from_pretrained refuses
        a base model that lacks one of them or has others (a save without it is not checked)
    backbone_sha256: backbone_fingerprint(vit), the sha256 of those tensors' bytes: from_pretrained
        refuses other weights of the same shapes unless allow_other_backbone=True (a save without
        it loads unchecked, with a note)

The weights are written first and the config last, each atomically; the config names the
weights' sha256, so a folder whose two files come from different saves is refused on loading.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import safetensors.torch
import torch
from timm.models.vision_transformer import VisionTransformer

from unitune.errors import UniTuneError, UniTuneWarning
from unitune.io import atomic_path, read_json, write_json_atomic
from unitune.schema import Key, check_record, digest, equals, json_key, version
from unitune.supernet import BackboneDims, PeftViT, SearchSpace, Subnet, count_params
from unitune.supernet.fingerprint import backbone_fingerprint, backbone_items
from unitune.supernet.methods import METHODS
from unitune.supernet.methods.dora import recompute_dora_magnitude
from unitune.supernet.methods.vit import classifier_heads
from unitune.supernet.model import _strip
from unitune.supernet.peft_config import (AdapterConfig, AdapterPlusConfig, BitFitConfig, DoraConfig, LoraConfig,
                                          MethodConfig, SSFConfig, SSFGlobalConfig, UnituneConfig, VPTConfig,
                                          as_unitune_config, config_class, method_configs, subnet_from_dict)
from unitune.supernet.wrap import check_model, check_plain, make_optimizer, wrap_vit

__all__ = ["PeftModel", "get_peft_model", "make_optimizer", "nb_trainable_parameters", "trainable_parameters_line",
           "save_pretrained", "read_pretrained_config", "from_pretrained", "merge_and_unload", "backbone_fingerprint",
           "recompute_dora_magnitude", "MethodConfig", "LoraConfig", "DoraConfig", "AdapterConfig", "AdapterPlusConfig",
           "VPTConfig", "SSFConfig", "SSFGlobalConfig", "BitFitConfig", "UnituneConfig", "config_class",
           "method_configs"]

PRETRAINED_FORMAT = "unitune-peft"
PRETRAINED_VERSION = 1
CONFIG_FILE = "peft_config.json"
WEIGHTS_FILE = "peft_weights.safetensors"

# Keys of peft_config.json, their JSON types (backbone may be null) and constraints.
CONFIG_KEYS: dict[str, Key] = {
    "format": json_key(str, equals(PRETRAINED_FORMAT)),
    "format_version": json_key(int, version(PRETRAINED_VERSION)),
    "backbone": json_key((str, type(None))),
    "num_classes": json_key(int),
    "space": json_key(dict),
    "allocated": json_key(dict),
    "subnet": json_key(dict),
    "weights": json_key(dict, digest("sha256")),
}


# ---- the model ---------------------------------------------------------------------------------


class PeftModel(PeftViT):
    """A :class:`PeftViT` with HF PEFT's methods, what :func:`get_peft_model` and
    :func:`from_pretrained` return. The methods live here, above the model module, because
    they need the merge and the saved-folder format, which build on the model. The module-level functions of the same names take any ``PeftViT``
    (one built by the command-line stages too)."""

    def get_nb_trainable_parameters(self, head: bool = True) -> tuple[int, int]:
        """``(trainable, all)``: every allocated PEFT parameter (plus the head unless
        ``head=False``), and every parameter of the model, frozen backbone included."""
        return nb_trainable_parameters(self, head=head)

    def print_trainable_parameters(self) -> None:
        """Print HF PEFT's line: trainable params (PEFT and head apart), all params, trainable %."""
        print(trainable_parameters_line(self))

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the PEFT weights and head (safetensors) and the config that rebuilds them (JSON)."""
        return save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, vit: VisionTransformer, folder: str | os.PathLike, is_trainable: bool = False,
                        allow_other_backbone: bool = False) -> "PeftModel":
        """Wrap ``vit`` (in place) as :meth:`save_pretrained` recorded and load the saved weights
        (see :func:`from_pretrained`)."""
        return from_pretrained(vit, folder, is_trainable=is_trainable, allow_other_backbone=allow_other_backbone)

    def get_base_model(self) -> VisionTransformer:
        """The timm model underneath, as HF PEFT's ``get_base_model``: the very ViT that was
        wrapped (in place), PEFT layers still in it. ``backbone()`` gives a plain copy without them."""
        return self.vit

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator["PeftModel"]:
        """Inside the ``with`` block every PEFT layer is off (size 0: the frozen backbone's own
        computation, bit for bit); the active subnet comes back on leaving it, also on an error.
        The classifier head is the model's own (trained with the PEFT layers) and stays in use."""
        active = self.subnet
        try:
            self.set_subnet(Subnet.uniform(len(self.vit.blocks)))  # every size 0: `subnet` and the counts say so
            yield self
        finally:
            self.set_subnet(active)

    def recompute_dora_magnitude(self) -> int:
        """Recompute every DoRA layer's magnitude from the backbone weight it now wraps (after
        loading onto other backbone weights); returns the number of layers. See
        :func:`unitune.supernet.methods.dora.recompute_dora_magnitude`."""
        return recompute_dora_magnitude(self)

    def merge_and_unload(self) -> VisionTransformer:
        """The active subnet folded into a plain timm ``VisionTransformer`` (this model untouched)."""
        return merge_and_unload(self)


# ---- wrapping ----------------------------------------------------------------------------------


def get_peft_model(
    vit: VisionTransformer,
    config: MethodConfig | Sequence[MethodConfig] | UnituneConfig | Subnet | SearchSpace | Mapping[str, Any]
    | str | os.PathLike | None = None,
    space: SearchSpace | Mapping[str, Any] | None = None,
    subnet: Subnet | Mapping[str, Any] | str | os.PathLike | None = None,
) -> "PeftModel":
    """Wrap a timm ViT (in place, as HF PEFT's ``get_peft_model`` does) with PEFT layers.

    - ``config``, as PEFT users pass it: a method config (``LoraConfig(r=8)``), a list of them or
      a :class:`UnituneConfig` (a fixed subnet; methods left out are off); a :class:`Subnet` or a
      subnet file's path (the subnet); a :class:`SearchSpace` (the supernet over it); or a dict,
      which is always a **fixed subnet**: each method one size for every block (``{"lora": 8}``)
      or a list with one size per block (exactly as many as the ViT has blocks), plus any option
      (``lora_targets``). A dict is never read as a space: ``{"lora": [0, 8]}`` on a 4-block ViT
      is a one-line error pointing to ``space=``.
    - ``space`` alone: the weight-sharing supernet over it (every layer at the space's largest
      size, the largest subnet active). A dict names the size lists of the methods it uses, e.g.
      ``{"lora": [0, 4, 8], "ssf": [0, 1]}``, plus any option (``lora_targets``, ``lora_scale``,
      ``adapter_style``, ...); **a method it leaves out is off** (``[0]``), unlike a config file's
      ``space:`` section, where it gets the default choices.
    - ``subnet``: a fixed model with exactly these sizes. A dict gives one size per method for
      every block (``{"lora": 8, "ssf": 1}``) or a list per block (``{"lora": [8, 8, 0, 0]}``);
      ``ssf_global`` is 0 or 1. A :class:`Subnet`, a subnet file's path or its dict
      (``{"subnet": {...}}``) work too. With ``space`` as well, the sizes must be in it and its
      options (``lora_targets``, scales, adapter style) shape the layers. A dict, Subnet or file
      given as ``config`` takes ``space`` the same way.

    Only the PEFT parameters and the classifier head are trainable; the backbone is frozen.
    """
    if config is not None:
        space, subnet = _from_config(vit, config, space, subnet)
    return wrap_vit(vit, space, subnet, model_class=PeftModel)


def _from_config(vit: Any, config: Any, space: Any, subnet: Any) -> tuple[Any, Any]:
    """``(space, subnet)`` for :func:`wrap_vit` from ``get_peft_model``'s ``config`` argument."""
    if subnet is not None:
        raise UniTuneError("get_peft_model: give config or subnet=, not both (both are the subnet)")
    method_objects = isinstance(config, (MethodConfig, UnituneConfig, list, tuple))
    if isinstance(config, SearchSpace):
        if space is not None:
            raise UniTuneError("get_peft_model: config is a SearchSpace; give it or space=, not both")
        return config, None
    if isinstance(config, (Subnet, str, os.PathLike)):
        return space, config
    check_plain(vit, "get_peft_model")  # the block count below needs a ViT
    depth = len(vit.blocks)
    if method_objects:
        if space is not None:
            raise UniTuneError("get_peft_model: method configs carry their own options; give space= only with a "
                               "dict, Subnet or SearchSpace config")
        unitune_config = as_unitune_config(config)
        return unitune_config.to_space(depth), unitune_config.to_subnet(depth)
    if isinstance(config, Mapping):
        if "subnet" in config:  # the subnet file's own layout
            return space, config
        sizes, options = subnet_from_dict(config, depth)
        if options:
            if space is not None:
                raise UniTuneError(f"get_peft_model: options {list(options)} in the config dict and space= as well; "
                                   f"give the options in space=")
            space = options  # the size lists are filled in from the subnet (wrap_vit)
        return space, sizes
    raise UniTuneError(f"get_peft_model: config must be a method config (LoraConfig, SSFConfig, ...), a list of them, "
                       f"a UnituneConfig, a Subnet, a SearchSpace or a dict like {{'lora': 8}}, "
                       f"got {type(config).__name__}")


# ---- counting ----------------------------------------------------------------------------------


def _head_params(model: PeftViT) -> int:
    peft = {id(p) for _, p in model.peft_named_parameters()}
    return sum(p.numel() for _, p in model.trainable_named_parameters() if id(p) not in peft)


def nb_trainable_parameters(model: PeftViT, head: bool = True) -> tuple[int, int]:
    """``(trainable, all)``: every allocated PEFT parameter (plus the head unless ``head=False``),
    and every parameter of the model, frozen backbone included (HF PEFT's
    ``get_nb_trainable_parameters``)."""
    check_model(model, "get_nb_trainable_parameters")
    peft = sum(p.numel() for _, p in model.peft_named_parameters())
    total = sum(p.numel() for p in model.parameters())
    return peft + (_head_params(model) if head else 0), total


def trainable_parameters_line(model: PeftViT) -> str:
    """HF PEFT's ``print_trainable_parameters`` line, with the head apart (the budget excludes it)
    and, for a supernet, what its active subnet uses."""
    with_head, total = nb_trainable_parameters(model)
    peft, _ = nb_trainable_parameters(model, head=False)
    line = (f"trainable params: {with_head:,} (PEFT {peft:,} + head {with_head - peft:,}) || all params: {total:,}"
            f" || trainable%: {100 * with_head / total:.4f} (without head: {100 * peft / total:.4f})")
    if model.subnet != model.capacity:
        active = count_params(model.subnet, BackboneDims.from_model(model), model.space).total
        line += f" || active subnet: {active:,} PEFT params"
    return line


# ---- optimizer ---------------------------------------------------------------------------------

# make_optimizer (imported above) lives in unitune.supernet.wrap, beside the wrapping: the supernet
# and retrain stages build their optimizers with it too, and they sit below this module.


# ---- save / load -------------------------------------------------------------------------------


def _backbone_arch(vit: VisionTransformer) -> str | None:
    arch = (getattr(vit, "pretrained_cfg", None) or {}).get("architecture")
    return arch if isinstance(arch, str) else None


def save_pretrained(model: PeftViT, folder: str | os.PathLike) -> Path:
    """Write ``model``'s PEFT weights and head and the config that rebuilds them to ``folder``
    (see the module doc); return the folder. The frozen backbone is not written."""
    check_model(model, "save_pretrained")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UniTuneError(f"{folder}: exists and is not a folder; save_pretrained writes a folder")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.trainable_state_dict().items()}
    data = safetensors.torch.save(state, metadata={"format": "pt"})
    peft, _ = nb_trainable_parameters(model, head=False)
    config = {
        "format": PRETRAINED_FORMAT,
        "format_version": PRETRAINED_VERSION,
        "backbone": _backbone_arch(model.vit),
        "num_classes": int(model.vit.num_classes),
        "space": model.space.to_dict(),
        "allocated": model.capacity.to_dict(),
        "subnet": model.subnet.to_dict(),
        "params": {
            "peft": peft,
            "head": _head_params(model),
            "active_peft": count_params(model.subnet, BackboneDims.from_model(model), model.space).total,
        },
        "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
        "backbone_tensors": backbone_tensors(model.vit),
        "backbone_sha256": backbone_fingerprint(model.vit),
    }
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        tmp.write_bytes(data)
    write_json_atomic(folder / CONFIG_FILE, config)  # last: it names the weights it goes with
    return folder


def read_pretrained_config(folder: str | os.PathLike) -> tuple[dict[str, Any], SearchSpace, Subnet, Subnet]:
    """The validated ``peft_config.json`` of ``folder``: the dict, space, allocated sizes, active subnet."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UniTuneError(f"{folder}: folder not found; expected what save_pretrained writes "
                           f"({CONFIG_FILE} and {WEIGHTS_FILE})")
    path = folder / CONFIG_FILE
    config = check_record(read_json(path), CONFIG_KEYS, str(path))
    space = SearchSpace.from_dict(config["space"], source=f"{path}: space")
    allocated = Subnet.from_dict(config["allocated"], source=f"{path}: allocated")
    active = Subnet.from_dict(config["subnet"], source=f"{path}: subnet")
    return config, space, allocated, active


def from_pretrained(vit: VisionTransformer, folder: str | os.PathLike, is_trainable: bool = False,
                    allow_other_backbone: bool = False) -> "PeftModel":
    """Wrap ``vit`` (in place) with the layers ``folder``'s config records, load the saved PEFT
    weights and head, and set the saved active subnet. ``vit`` must be the backbone they were
    trained on, created with the same ``num_classes``. Nothing is unpickled (JSON and
    safetensors); on any error ``vit`` is left as it was.

    As HF PEFT's: the model comes back with every parameter frozen (an inference model);
    ``is_trainable=True`` leaves the PEFT parameters and the head trainable, to go on training.
    Either way it is in eval mode (a training loop calls ``model.train()``). The save's backbone fingerprint (:func:`backbone_fingerprint`) must match
    ``vit``'s: other weights of the same shapes are refused in one line naming both, unless
    ``allow_other_backbone=True`` (then call ``model.recompute_dora_magnitude()`` if the save
    holds DoRA: its magnitude belongs to the save's backbone). A save from before the
    fingerprint loads unchecked, with a note (once per folder)."""
    folder = Path(folder)
    config, space, allocated, active = read_pretrained_config(folder)
    path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    check_plain(vit, "from_pretrained")
    depth = len(vit.blocks)
    allocated.check(depth, space, source=f"{path}: allocated")
    active.check(depth, source=f"{path}: subnet")
    if vit.num_classes != config["num_classes"]:
        raise UniTuneError(f"{path}: saved with a {config['num_classes']}-class head, but the base model has "
                           f"{vit.num_classes} classes; create it with num_classes={config['num_classes']}")
    data = _read_weights(weights, config["weights"]["sha256"])
    try:
        state = safetensors.torch.load(data)
    except Exception as e:  # reachable only when weights and config were both rewritten
        raise UniTuneError(f"{weights}: not a valid safetensors file ({e})") from None
    flags = [(p, p.requires_grad) for p in vit.parameters()]
    heads = [(p, p.detach().clone()) for head in classifier_heads(vit).values() for p in head.parameters()]
    try:
        model = PeftModel(vit, space, sizes=allocated)
        model.set_subnet(active)
        model.load_trainable_state_dict(state, source=str(weights))
        if "backbone_tensors" in config:
            check_backbone_tensors(vit, config["backbone_tensors"], str(path))
        _check_fingerprint(vit, config, path, allow_other_backbone, model)
    except BaseException:
        # Leave the caller's model as it came: no PEFT wrapper, its own requires_grad flags and
        # head weights (the load may have copied the head before a later tensor did not fit).
        _strip(vit)
        with torch.no_grad():
            for p, value in heads:
                p.copy_(value)
        for p, flag in flags:
            p.requires_grad_(flag)
        raise
    if not is_trainable:
        model.requires_grad_(False)
    return model.eval()


_NOTED: set[str] = set()  # folders already noted as saved without a fingerprint (once per process)


def _check_fingerprint(vit: VisionTransformer, config: dict[str, Any], path: Path, allow_other: bool,
                       model: PeftViT) -> None:
    saved = config.get("backbone_sha256")
    if saved is None:
        if str(path) not in _NOTED:
            _NOTED.add(str(path))
            warnings.warn(f"{path}: saved without a backbone fingerprint (before backbone_sha256 was recorded); "
                          f"the base model's weights are not checked", UniTuneWarning, stacklevel=4)
        return
    if not isinstance(saved, str):
        raise UniTuneError(f"{path}: 'backbone_sha256' must be a sha256 hex string, got {saved!r}")
    own = backbone_fingerprint(vit)
    if own == saved:
        return
    if not allow_other:
        raise UniTuneError(f"{path}: the PEFT weights were trained on backbone weights {saved[:12]}..., but the base "
                           f"model's are {own[:12]}... (sha256 of the frozen backbone tensors); load onto the same "
                           f"pretrained weights, or pass allow_other_backbone=True")
    if any(m == "dora" for m, _, _ in model.layer_sites.values()):
        warnings.warn(f"{path}: loaded onto other backbone weights ({own[:12]}..., saved on {saved[:12]}...); DoRA's "
                      f"magnitude belongs to the saved backbone: call model.recompute_dora_magnitude()",
                      UniTuneWarning, stacklevel=4)


def backbone_tensors(vit: VisionTransformer) -> dict[str, list[int]]:
    """The frozen backbone's tensors (parameters and persistent buffers) by their plain timm
    names, the classifier heads aside, looking through any PEFT wrapper: what the PEFT weights
    were trained on top of (a qkv bias BitFit shifts, for one)."""
    return {name: list(t.shape) for name, t in backbone_items(vit).items()}


def check_backbone_tensors(vit: VisionTransformer, saved: Any, source: str) -> None:
    """``vit`` has exactly the backbone tensors ``saved`` records (names and shapes)."""
    if not isinstance(saved, dict) or not all(
            isinstance(v, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v)
            for v in saved.values()):
        raise UniTuneError(f"{source}: 'backbone_tensors' must map tensor names to shapes (lists of sizes)")
    own = backbone_tensors(vit)
    lacks = [k for k in saved if k not in own]
    if lacks:
        raise UniTuneError(f"{source}: the base model lacks {lacks[0]!r} ({len(lacks)} of the {len(saved)} backbone "
                           f"tensors the save was trained on); create it with the same timm keywords (e.g. qkv_bias)")
    extra = [k for k in own if k not in saved]
    if extra:
        raise UniTuneError(f"{source}: the base model has {extra[0]!r} ({len(extra)} backbone tensors the save was "
                           f"not trained with); create it with the same timm keywords")
    for k, shape in saved.items():
        if own[k] != shape:
            raise UniTuneError(f"{source}: the base model's {k} has shape {tuple(own[k])}, the save's backbone had "
                               f"{tuple(shape)}")


def _read_weights(path: Path, sha256: str) -> bytes:
    from unitune.checks import check_input_file

    data = check_input_file(path, "safetensors file").read_bytes()  # hash and parse the same bytes
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise UniTuneError(f"{path}: sha256 {got[:12]}... does not match {CONFIG_FILE}'s {sha256[:12]}... "
                           f"(the file was modified, or the folder holds parts of two saves)")
    return data


# ---- merge -------------------------------------------------------------------------------------


def merge_and_unload(model: PeftViT) -> VisionTransformer:
    """The active subnet with LoRA and SSF folded into the weights, as a plain timm
    ``VisionTransformer`` (eval mode, frozen; ``model`` itself is untouched).

    A method that does not fold (Adapter, VPT) is a one-line error naming it and its blocks:
    ``unitune.supernet.merge.merge(model).model`` keeps such layers as the smallest modules that run
    them. When folding had to create biases timm builds only on request (SSF or BitFit on a
    ``qkv_bias=False`` model), a warning names the method and the ``timm.create_model`` keywords that rebuild
    the merged structure (also in ``merge(model).model_kwargs``).
    """
    from unitune.supernet.merge import merge

    check_model(model, "merge_and_unload")
    merged = merge(model)
    if not isinstance(merged.model, VisionTransformer):
        kept = []
        for m in (m for m, method in METHODS.items() if method.site == "block"):
            blocks = [str(i) for i, s in enumerate(merged.unmerged.sizes(m)) if s]
            if blocks:
                kept.append(f"{m} (block{'s' if len(blocks) > 1 else ''} {', '.join(blocks)})")
        raise UniTuneError(f"merge_and_unload: the active subnet's {' and '.join(kept)} "
                           f"{'does' if len(kept) == 1 else 'do'} not fold into the weights; "
                           f"unitune.supernet.merge.merge(model).model keeps them as modules")
    if merged.model_kwargs or merged.added_params:
        what = f"timm.create_model(..., {', '.join(f'{k}={v!r}' for k, v in merged.model_kwargs.items())})" \
            if merged.model_kwargs else "no timm keyword"
        extra = f"; parameters timm does not build: {list(merged.added_params)}" if merged.added_params else ""
        # Name the method(s) whose fold made them: SSF's shift, BitFit's bias on a bias-free linear, ...
        labels = list(dict.fromkeys(METHODS[m].label or m for m in merged.created_by)) or ["the subnet"]
        warnings.warn(f"merge_and_unload: folding {' and '.join(labels)} created biases; the merged structure is "
                      f"{what}{extra}",
                      UniTuneWarning, stacklevel=3)
    return merged.model
