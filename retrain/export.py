"""The export folder: ``model.safetensors`` plus the ``unitune.json`` manifest that rebuilds it.

An export is what people deploy. The manifest says how to rebuild the module the weights fit —
``timm.create_model(backbone, pretrained=False, num_classes=K, **model_kwargs)``, plus the
parameters a merge had to add that no timm keyword builds, plus, when Adapters or VPT stay,
a :class:`PeftViT` with exactly the unmerged sizes — so :func:`load_export` reconstructs the very
structure :func:`~unitune.supernet.merge.merge` produced and loads the weights strictly.

``unitune.json`` (format version 1)::

    format: "unitune-export", format_version: 1
    backbone: timm model name;  model_kwargs: timm create keywords incl. the merge's overrides
    merge_overrides: e.g. {"qkv_bias": true};  added_params: parameters timm does not build
    num_classes, class_names (or null);  plain_timm: true when timm alone loads the weights
    subnet: Subnet.to_dict();  space: SearchSpace.to_dict();  unmerged: {adapter: [...], vpt: [...]} (methods that do not fold)
    params: {trained: count_params(...), unmerged_peft, model};  data_config: timm data config
    provenance: free-form (config, supernet file, study, test accuracy, ...)
    weights: {file: "model.safetensors", sha256, bytes}

The folder is written into a temporary sibling and renamed into place once complete, so an
existing export is replaced only by a finished one. Loading checks the weights' sha256 against
the manifest before parsing them and never unpickles anything (safetensors only).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import safetensors.torch
import timm
import torch
from torch import nn

from unitune.data.transforms import check_data_config
from unitune.engine.context import EXPORT_MANIFEST  # the manifest's file name, named with the run folder's
from unitune.errors import UniTuneError
from unitune.io import read_json, remove_stale_temps, stale_temps, temp_prefix
from unitune.schema import Key, check_record, digest, equals, json_key, version
from unitune.supernet import BackboneDims, PeftViT, SearchSpace, Subnet, check_vit, count_params
from unitune.supernet.methods import METHODS

from unitune.supernet.merge import MergedModel, add_params, merge, unmerged_subnet

FORMAT = "unitune-export"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"

# Top-level manifest keys, their JSON types (null only for class_names) and constraints.
MANIFEST_KEYS: dict[str, Key] = {
    "format": json_key(str, equals(FORMAT)),
    "format_version": json_key(int, version(FORMAT_VERSION)),
    "backbone": json_key(str),
    "model_kwargs": json_key(dict),
    "num_classes": json_key(int),
    "class_names": json_key((list, type(None))),
    "subnet": json_key(dict),
    "space": json_key(dict),
    "unmerged": json_key(dict),
    "added_params": json_key(list),
    "data_config": json_key(dict),
    "provenance": json_key(dict),
    "weights": json_key(dict, digest("sha256")),
}


# ---- writing -----------------------------------------------------------------------------------


def build_manifest(
    merged: MergedModel,
    backbone: str,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest for ``merged``: ``model_kwargs`` are the user's ``timm.create_model`` keywords
    (without ``num_classes`` / ``pretrained``); the merge's overrides are added on top.
    ``data_config`` defaults to timm's config resolved from the model."""
    kwargs = dict(model_kwargs or {})
    for key in ("num_classes", "pretrained"):
        if key in kwargs:
            raise UniTuneError(f"model_kwargs: {key!r} is set by the export itself; remove it")
    kwargs.update(merged.model_kwargs)
    vit = merged.vit
    num_classes = int(vit.num_classes)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise UniTuneError(f"class_names: {len(class_names)} names for a head with {num_classes} classes")
    if data_config is None:
        data_config = model_data_config(vit)
    dims = BackboneDims.from_model(vit)
    trained = count_params(merged.subnet, dims, merged.space).to_dict()
    trained.pop("per_block")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": backbone,
        "model_kwargs": kwargs,
        "merge_overrides": dict(merged.model_kwargs),
        "num_classes": num_classes,
        "class_names": class_names,
        "plain_timm": merged.is_plain_timm,
        "subnet": merged.subnet.to_dict(),
        "space": merged.space.to_dict(),
        "unmerged": unmerged_record(merged.unmerged),
        "added_params": list(merged.added_params),
        "params": {
            "trained": trained,
            "unmerged_peft": count_params(merged.unmerged, dims, merged.space).total,
            "model": sum(p.numel() for p in merged.model.parameters()),
        },
        "data_config": dict(data_config),
        "provenance": dict(provenance or {}),
    }


def unmerged_record(unmerged: Subnet) -> dict[str, Any]:
    """The manifest's ``unmerged`` entry: the sizes of every method that does not fold (``adapter``
    and ``vpt`` always, as format version 1 has them; a later non-folding method when it is on)."""
    out: dict[str, Any] = {}
    for name in unmerged.shown_methods():
        if not METHODS[name].foldable:
            sizes = unmerged.sizes(name)
            out[name] = list(sizes) if isinstance(sizes, tuple) else sizes
    return out


def model_data_config(vit: nn.Module) -> dict[str, Any]:
    """timm's data config for ``vit``, with the input size the model was built for: timm resolves
    it from the pretrained config, which keeps 224 for a model created with another ``img_size``."""
    config = dict(timm.data.resolve_model_data_config(vit))
    img_size = getattr(getattr(vit, "patch_embed", None), "img_size", None)
    if img_size is not None:
        config["input_size"] = (vit.patch_embed.proj.in_channels, *img_size)
    return config


def _json_roundtrip(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-clean deep copy (tuples become lists); names the first key that cannot be written."""
    for key, value in manifest.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise UniTuneError(f"manifest: {key!r} cannot be written as JSON ({e})") from None
    return json.loads(json.dumps(manifest))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``folder``; on success it replaces ``folder`` in one rename.

    ``folder`` may be absent, empty or an earlier export; anything else is refused rather than
    deleted. On any exception the temporary folder is removed and ``folder`` is left as it was.
    """
    folder = Path(folder)
    _recover_killed_swap(folder)
    if folder.exists() and not (
        folder.is_dir() and ((folder / EXPORT_MANIFEST).is_file() or not any(folder.iterdir()))
    ):
        raise UniTuneError(f"{folder}: exists and is not a unitune export; refusing to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(folder), suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an export is meant to be shared
        for f in tmp.iterdir():
            _fsync(f)
        if folder.exists():
            # Directories cannot be swapped in one step portably: move the old one aside, move the
            # new one in, and put the old one back if that fails (or, after a kill between the two
            # renames, at the next write: see _recover_killed_swap).
            old = folder.parent / f"{temp_prefix(folder)}{uuid.uuid4().hex[:8]}.old"
            os.replace(folder, old)
            try:
                os.replace(tmp, folder)
            except BaseException:
                os.replace(old, folder)
                raise
            _remove(old)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _recover_killed_swap(folder: Path) -> None:
    """Undo what a writer killed inside :func:`atomic_folder` left: a previous export moved aside
    (``.NAME.<host>-<pid>.<random>.old``) but no new one moved in is put back; one whose
    replacement did arrive is removed."""
    for old in sorted(stale_temps(folder, suffix=".old"), key=lambda p: p.stat().st_mtime):
        if not folder.exists() and (old / EXPORT_MANIFEST).is_file():
            os.replace(old, folder)
        else:
            _remove(old)


def _remove(path: Path) -> None:
    """Remove what was moved aside: a folder, or a link (``export -> export_v1``), only the link
    itself; rmtree refuses links, and ignoring that left ``.export.*.old`` behind."""
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def save_export(folder: str | os.PathLike, model: nn.Module, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``model``'s state dict and ``manifest`` (plus format version and the weights' sha256)
    to ``folder`` atomically; return the manifest as written."""
    missing = [k for k in MANIFEST_KEYS if k not in manifest and k not in ("format", "format_version", "weights")]
    if missing:
        raise UniTuneError(f"manifest: missing key(s) {missing}; build it with build_manifest()")
    manifest = _json_roundtrip({"format": FORMAT, "format_version": FORMAT_VERSION, **manifest})
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # Refuse to write an export that would not load: build what the manifest describes (on the
    # meta device, so it costs nothing) and check the weights fit it.
    with torch.device("meta"):
        described = build_model(manifest, source="manifest")
    _check_fits(described.state_dict(), state, source="model")
    with atomic_folder(folder) as tmp:
        weights = tmp / WEIGHTS_FILE
        safetensors.torch.save_file(state, weights, metadata={"format": "pt"})
        manifest["weights"] = {
            "file": WEIGHTS_FILE,
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "bytes": weights.stat().st_size,
        }
        (tmp / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def export_model(
    folder: str | os.PathLike,
    model: PeftViT,
    backbone: str,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge ``model``'s active subnet and export it; return the manifest as written."""
    merged = merge(model)
    manifest = build_manifest(
        merged, backbone, model_kwargs=model_kwargs, class_names=class_names, data_config=data_config,
        provenance=provenance,
    )
    return save_export(folder, merged.model, manifest)


# ---- reading -----------------------------------------------------------------------------------


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The validated manifest of the export in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UniTuneError(f"{folder}: export folder not found")
    path = folder / EXPORT_MANIFEST
    if not path.is_file():
        raise UniTuneError(f"{path}: file missing; an export folder holds {EXPORT_MANIFEST} and {WEIGHTS_FILE}")
    _refuse_escaping_link(folder, path)
    manifest = check_record(read_json(path), MANIFEST_KEYS, str(path))
    names = manifest["class_names"]
    if names is not None and len(names) != manifest["num_classes"]:
        raise UniTuneError(f"{path}: {len(names)} class_names for num_classes = {manifest['num_classes']}")
    check_data_config(manifest["data_config"], f"{path}: data_config")
    return manifest


def _refuse_escaping_link(folder: Path, path: Path) -> None:
    """An export is one self-contained folder: a file that is a symlink to somewhere outside it
    (``model.safetensors -> /etc/...`` or another user's file) is refused, not followed."""
    real, root = path.resolve(), folder.resolve()
    if real != root and root not in real.parents:
        raise UniTuneError(f"{path}: a symlink to {real}, outside the export folder; an export's files must "
                           f"lie in its folder")


def _parse_structure(manifest: Mapping[str, Any], path: Path) -> tuple[Subnet, SearchSpace, Subnet]:
    subnet = Subnet.from_dict(manifest["subnet"], source=f"{path}: subnet")
    space = SearchSpace.from_dict(manifest["space"], source=f"{path}: space")
    unmerged = unmerged_subnet(subnet)
    recorded = manifest["unmerged"]
    if recorded != unmerged_record(unmerged):
        raise UniTuneError(f"{path}: 'unmerged' {recorded} does not match the subnet's sizes of the methods that do "
                           f"not fold ({unmerged_record(unmerged)})")
    return subnet, space, unmerged


def build_model(manifest: Mapping[str, Any], source: str | os.PathLike = EXPORT_MANIFEST) -> nn.Module:
    """The module (random weights) an export's weights fit: timm backbone, added parameters, and
    a :class:`PeftViT` shell when Adapters or VPT stay unmerged."""
    path = Path(source)
    subnet, space, unmerged = _parse_structure(manifest, path)
    name, kwargs = manifest["backbone"], manifest["model_kwargs"]
    try:
        vit = timm.create_model(name, pretrained=False, num_classes=manifest["num_classes"], **kwargs)
    except Exception as e:  # an unknown name or keyword in a file the user may have edited
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UniTuneError(f"{path}: cannot build backbone {name!r} with model_kwargs {kwargs}: {reason}") from None
    check_vit(vit, name=f"{path}: backbone {name!r}")
    _check_input_size(vit, manifest["data_config"], path)
    subnet.check(len(vit.blocks), space, source=f"{path}: subnet")
    add_params(vit, manifest["added_params"])
    model: nn.Module = vit if unmerged.is_empty() else PeftViT(vit, space, sizes=unmerged)
    return model.requires_grad_(False)


def _check_input_size(vit: nn.Module, data_config: Mapping[str, Any], path: Path) -> None:
    """The manifest's ``data_config.input_size`` must be what the model takes: a fixed-size patch
    embedding asserts it inside the first forward (an AssertionError from timm, or a conv error
    for other channels), after the images were read."""
    embed = getattr(vit, "patch_embed", None)
    img_size, proj = getattr(embed, "img_size", None), getattr(embed, "proj", None)
    if img_size is None or not hasattr(proj, "in_channels") or getattr(embed, "dynamic_img_size", False):
        return
    want = (proj.in_channels, *img_size)
    got = tuple(data_config.get("input_size") or ())
    strict = getattr(embed, "strict_img_size", True)
    if got[:1] != want[:1] or (strict and got != want):
        raise UniTuneError(f"{path}: data_config.input_size {list(got)} does not match the model, which takes "
                           f"{list(want)} (channels, height, width); the manifest was edited or mixed with "
                           f"another export's")


def _check_fits(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Raise a one-line error unless ``state`` has exactly the keys and shapes of ``own``."""
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise UniTuneError(
            f"{source}: does not fit the model the manifest describes "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for key, tensor in own.items():
        if tensor.shape != state[key].shape:
            raise UniTuneError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, the manifest's model expects {tuple(tensor.shape)}"
            )


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    _check_fits(model.state_dict(), state, source)
    # assign=True: the loaded tensors become the parameters (no copy into a random init).
    model.load_state_dict(state, strict=True, assign=True)


def load_export(folder: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the exported model (eval mode, frozen) and return it with its manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise UniTuneError(f"{weights}: file missing; an export folder holds {EXPORT_MANIFEST} and {WEIGHTS_FILE}")
    _refuse_escaping_link(folder, weights)
    data = weights.read_bytes()  # hash and parse the same bytes: nothing can change in between
    want, got = manifest["weights"]["sha256"], hashlib.sha256(data).hexdigest()
    if got != want:
        raise UniTuneError(
            f"{weights}: sha256 {got[:12]}... does not match the manifest's {want[:12]}... (file modified or truncated)"
        )
    try:
        # Tensors parsed from a bytes buffer view it at arbitrary offsets; assigned as parameters,
        # misaligned storage slows every matmul (measured 1.085x on ViT-B/16, CPU). Own copies are
        # allocated aligned.
        state = {k: v.clone() for k, v in safetensors.torch.load(data).items()}
    except Exception as e:  # only reachable when weights and manifest were both rewritten
        raise UniTuneError(f"{weights}: not a valid safetensors file ({e})") from None
    # Build on the meta device: every parameter comes from the file, so timm's random
    # initialisation (seconds for a ViT-B) is skipped. A module with a tensor that is not in the
    # state dict (a non-persistent buffer) would be left on meta; such a model is built for real.
    with torch.device("meta"):
        model = build_model(manifest, folder / EXPORT_MANIFEST)
    _load_strict(model, state, weights)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = build_model(manifest, folder / EXPORT_MANIFEST)
        _load_strict(model, state, weights)
    return model.eval(), manifest


def load_model(folder: str | os.PathLike) -> nn.Module:
    """The ready-to-run ``nn.Module`` of an export folder."""
    return load_export(folder)[0]
