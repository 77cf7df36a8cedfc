"""Weights from a local file: read without unpickling, unwrapped explicitly, loaded completely or refused.

Every path that puts a file's tensors into a backbone goes through :func:`load_backbone_weights`
(``model.weights``, the pretrain stage's ``backbone.safetensors``, ``retrain --backbone``, and the
plain timm-named safetensors files ``unitune fetch-weights`` writes); the PEFT weights of the
supernet, the checkpoints and ``from_pretrained`` are checked tensor by tensor with
:func:`check_tensor`. timm's own loader drops the head and then loads with ``strict=False``, so a
file whose keys all miss (another architecture, a Lightning checkpoint's ``model.`` prefix) used
to leave a randomly initialised backbone without a word. Here every backbone tensor must come
from the file, or it is a one-line error naming the file, how many loaded and the first missing
and unexpected keys.
"""

from __future__ import annotations

import logging
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import UniTuneError

_logger = logging.getLogger("unitune.weights")

# A checkpoint that nests its state dict under one of these entries (Lightning: ``state_dict``;
# DeiT / MAE / many research repos: ``model``; DDP wrappers saved whole: ``module``).
WRAPPER_KEYS = ("state_dict", "model", "module")
# Key prefixes stripped only when EVERY key has one: a Lightning module's ``self.model``, a DDP
# ``module.``, a detection/segmentation ``backbone.``. No timm ViT key starts with any of them.
WRAPPER_PREFIXES = ("model.", "module.", "backbone.")
# Read with torch.load(weights_only=True): tensors and plain containers only, never other objects.
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# The classifier(s) a backbone's fresh head replaces: not counted, not loaded.
HEAD_PREFIXES = ("head.", "head_dist.")


def read_state_dict(path: str | Path, label: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of a weights file and what was unwrapped to reach them (for the log line).

    safetensors, or a ``torch.save``'d state dict (``.pth``/``.pt``/``.bin``/``.ckpt``) read with
    ``weights_only=True``; nothing is unpickled. ``label`` starts every error (``model.weights:
    FILE``)."""
    from .checks import check_input_file, check_safetensors_file

    path = Path(path)
    check_input_file(path, "weights file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        raise UniTuneError(f"{label}: {path}: a .npz (JAX) file is not read; give a safetensors file of the "
                           f"timm model's state dict (e.g. `unitune fetch-weights`)")
    if suffix in TORCH_SUFFIXES:
        try:
            with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": a second stderr line
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            if type(e).__name__ == "UnpicklingError":  # pickle's, raised by the weights-only unpickler
                # torch's own lines around the reason tell how to unpickle anyway: left out
                boiler = ("Weights only load failed", "Please file an issue", "Check the documentation")
                reason = next((ln for ln in lines if not ln.startswith(boiler)), "objects other than tensors")
                raise UniTuneError(f"{label}: {path}: refused, unitune never unpickles and torch.load(weights_only=True) "
                                   f"cannot read it ({reason}); save the state dict with safetensors") from None
            # not a torch file at all (truncated, another format)
            reason = lines[0] if lines else type(e).__name__
            raise UniTuneError(f"{label}: {path}: not a torch.save'd state dict ({reason})") from None
    else:
        import safetensors.torch

        check_safetensors_file(path, f"{label} file")
        obj = safetensors.torch.load_file(str(path), device="cpu")
    return unwrap_state_dict(obj, f"{label}: {path}")


def unwrap_state_dict(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``obj``'s tensors by name, through the known wrappers (each one named in the notes)."""
    notes = []
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            bad = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
            raise UniTuneError(f"{source}: entry {str(bad)!r} is a {type(obj[bad]).__name__}, not a tensor, and the "
                               f"file has no {'/'.join(repr(k) for k in WRAPPER_KEYS)} entry holding the state dict")
        notes.append(f"the {key!r} entry")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise UniTuneError(f"{source}: holds a {type(obj).__name__}, expected a state dict (names to tensors)")
    state = {str(k): v for k, v in obj.items()}
    stripped = True
    while state and stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                notes.append(f"the key prefix {prefix!r}")
                stripped = True
    return state, notes


def check_tensor(key: str, value: torch.Tensor, expected: torch.Tensor, source: str) -> None:
    """One tensor of a file against the parameter it is loaded into: shape, kind, finite values."""
    if tuple(value.shape) != tuple(expected.shape):
        raise UniTuneError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(expected.shape)}")
    if expected.is_floating_point() and not value.is_floating_point():
        raise UniTuneError(f"{source}: {key} is a {value.dtype} tensor, expected a floating-point one "
                           f"({expected.dtype})")
    if value.is_floating_point() and not value.is_meta and not bool(torch.isfinite(value).all()):
        # (a meta tensor, built for shapes only, has no values to check)
        raise UniTuneError(f"{source}: {key} holds NaN or infinite values")


def _first(keys: list[str]) -> str:
    return repr(keys[0]) if keys else "none"


def checkpoint_filter(model: torch.nn.Module, name: str):
    """timm's own conversion for ``model``'s family, as ``timm.create_model(pretrained=True)``
    applies it: position embeddings resampled to another ``img_size``, patch embeddings to another
    patch size, DINOv2 / OpenCLIP / big_vision naming converted, DeiT III layer scales renamed."""
    from timm.models import vision_transformer as vt
    from timm.models._registry import model_entrypoint

    module = model_entrypoint(name).__module__
    if module.endswith(".deit"):
        return partial(vt.checkpoint_filter_fn, adapt_layer_scale=True)
    if "dinov2" in name:  # DINOv2's own code and HF interpolate the position grid without antialias;
        # timm's default (antialias on) moves ViT-S/14's features at 224 px by up to 1.3 from them
        return partial(vt.checkpoint_filter_fn, interpolation="bicubic", antialias=False)
    if "flexi" in name:
        return partial(vt.checkpoint_filter_fn, interpolation="bilinear", antialias=False)
    return vt.checkpoint_filter_fn


def load_backbone_weights(model: torch.nn.Module, path: str | Path, name: str, label: str = "model.weights") -> int:
    """Load every backbone tensor of ``model`` (the classifier head aside) from ``path``; return
    how many loaded. Anything short of all of them, an extra tensor, another shape, a non-float
    tensor or a NaN is a one-line :class:`UniTuneError`."""
    state, notes = read_state_dict(path, label)
    source = f"{label}: {path} does not fit backbone {name!r}"
    try:
        state = checkpoint_filter(model, name)(state, model)
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError, AssertionError, AttributeError) as e:
        reason = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise UniTuneError(f"{source}: timm's checkpoint conversion failed ({type(e).__name__}: {reason})") from None
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(HEAD_PREFIXES)}
    head = {k: tuple(v.shape) for k, v in state.items() if k.startswith(HEAD_PREFIXES)}
    state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    unwrapped = f", after unwrapping {' and '.join(notes)}" if notes else ""
    if missing:
        raise UniTuneError(f"{source}: {len(own) - len(missing)} of {len(own)} backbone tensors load (first missing "
                           f"{missing[0]!r}, first unexpected {_first(unexpected)}{unwrapped})")
    if unexpected:  # e.g. a deeper model's weights: every tensor here loads, and blocks are left over
        raise UniTuneError(f"{source}: the file holds {len(unexpected)} tensors the backbone lacks (first "
                           f"{unexpected[0]!r}{unwrapped})")
    for key, expected in own.items():
        check_tensor(key, state[key], expected, source)
    model.load_state_dict(state, strict=False)  # strict on everything but the head, checked above
    if head and label == "model.weights":  # a user's file (the pretrain stage's own head is no news)
        note_head_replaced(path, label, head, model)
    if notes:
        _logger.warning(f"{label}: {path}: unwrapped {' and '.join(notes)}; {len(own)} of {len(own)} backbone "
                        f"tensors loaded")
    return len(own)


_NOTED: set[str] = set()


def note_head_replaced(path: str | Path, label: str, head: dict[str, tuple], model: torch.nn.Module) -> None:
    """One line on stderr, once per file and process, when the file's classifier head is not
    loaded: a researcher who gives a fine-tuned checkpoint should hear that its head is dropped
    for a new one (the run builds the backbone several times, so once, not at every build)."""
    if str(path) in _NOTED:
        return
    _NOTED.add(str(path))
    classes = getattr(getattr(model, "head", None), "out_features", None)
    theirs = next((shape for key, shape in head.items() if key.endswith("weight")), None)
    was = f" ({theirs[0]} classes)" if theirs else ""
    now = f"a new {classes}-class head" if classes else "a new head"
    print(f"unitune: note: {label}: {path}: its classifier head{was} is not loaded; the model has {now}",
          file=sys.stderr, flush=True)
