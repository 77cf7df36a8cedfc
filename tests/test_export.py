"""The export folder: reload gives the same model and logits, plain timm loads it, bad folders fail clearly."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import struct

import pytest
import safetensors.torch
import timm
import torch

from unitune.engine.context import EXPORT_MANIFEST
from unitune.errors import UniTuneError
from unitune.retrain import export as export_mod
from unitune.retrain.export import (
    FORMAT_VERSION, WEIGHTS_FILE, build_manifest, export_model, load_export, load_model,
    save_export,
)
from unitune.supernet.merge import merge
from unitune.supernet import PeftViT, Subnet

from retrain_cases import (  # noqa: F401  (one_thread is a fixture)
    BACKBONE, MERGEABLE, MIXES, NUM_CLASSES, VARIANTS, images, one_thread, supernet, tiny_kwargs,
)

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["cat", "dog", "eel", "fox", "gnu"]


def export(tmp_path, variant="plain", mix="all", name="export", **extra):
    model = supernet(variant, mix, **extra)
    manifest = export_model(
        tmp_path / name, model, BACKBONE, model_kwargs=tiny_kwargs(variant, **extra), class_names=CLASSES,
        provenance={"test_accuracy": 0.5, "init": "supernet"},
    )
    return model, manifest, tmp_path / name


@pytest.mark.parametrize("variant,mix", [(v, m) for v in VARIANTS for m in MIXES])
def test_export_reload_same_model_and_logits(tmp_path, variant, mix):
    model, written, folder = export(tmp_path, variant, mix)
    merged = merge(model)
    loaded, manifest = load_export(folder)
    x = images()
    with torch.no_grad():
        want, got = merged.model(x), loaded(x)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        torch.testing.assert_close(got, model(x), atol=1e-5, rtol=0)
    # The same structure the merge produced, in eval mode, frozen.
    assert type(loaded) is type(merged.model) and repr(loaded) == repr(merged.model)
    assert loaded.state_dict().keys() == merged.model.state_dict().keys()
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())

    assert manifest == written
    assert manifest["format_version"] == FORMAT_VERSION and manifest["backbone"] == BACKBONE
    assert manifest["num_classes"] == NUM_CLASSES and manifest["class_names"] == CLASSES
    assert Subnet.from_dict(manifest["subnet"]) == MIXES[mix][0]
    assert manifest["unmerged"] == {"adapter": list(merged.unmerged.adapter), "vpt": list(merged.unmerged.vpt)}
    assert manifest["plain_timm"] is (mix in MERGEABLE)
    assert manifest["data_config"]["input_size"] == [3, 32, 32]
    assert manifest["provenance"] == {"test_accuracy": 0.5, "init": "supernet"}
    assert manifest["params"]["model"] == sum(p.numel() for p in loaded.parameters())
    data = (folder / WEIGHTS_FILE).read_bytes()
    assert manifest["weights"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in folder.iterdir()) == sorted([EXPORT_MANIFEST, WEIGHTS_FILE])

    # The weights file is plain safetensors, readable without unitune.
    state = safetensors.torch.load_file(folder / WEIGHTS_FILE)
    assert state.keys() == merged.model.state_dict().keys()
    timm_model = timm.create_model(BACKBONE, pretrained=False, num_classes=NUM_CLASSES, **manifest["model_kwargs"])
    if mix in MERGEABLE:
        timm_model.load_state_dict(state, strict=True)
        with torch.no_grad():
            torch.testing.assert_close(timm_model.eval()(x), want, atol=0, rtol=0)
    else:
        with pytest.raises(RuntimeError, match="Unexpected key"):
            timm_model.load_state_dict(state, strict=True)


def test_manifest_counts_and_overrides(tmp_path):
    model, manifest, _ = export(tmp_path, "no_qkv_bias", "all")
    assert manifest["merge_overrides"] == {"qkv_bias": True}
    assert manifest["model_kwargs"] == dict(tiny_kwargs("no_qkv_bias"), qkv_bias=True)
    # d = 64, depth 4; LoRA on all four linears (in+out: qkv 64+192, proj 128, fc1 64+256, fc2 256+64) = 1024·r.
    trained = manifest["params"]["trained"]["per_method"]
    assert trained["lora"] == 1024 * sum(MIXES["all"][0].lora)
    assert trained["adapter"] == sum(2 * 64 * k + k + 64 for k in (2, 0, 4, 2) if k)
    assert trained["vpt"] == 64 * (3 + 1 + 0 + 1)
    assert trained["ssf"] == 2 * 11 * 64 * 3 + 4 * 64
    assert manifest["params"]["unmerged_peft"] == trained["adapter"] + trained["vpt"]


def test_added_params_are_rebuilt_on_load(tmp_path):
    # pre_norm=True: the patch-embed conv has no bias and no timm keyword gives it one.
    model, manifest, folder = export(tmp_path, "plain", "lora_ssf", pre_norm=True)
    assert manifest["added_params"] == ["patch_embed.proj.bias"] and manifest["plain_timm"] is False
    loaded = load_model(folder)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    _, _, folder = export(tmp_path, "reg_layerscale", "all")

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    for mod, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(mod, name, refuse)
    loaded, _ = load_export(folder)
    assert isinstance(loaded, PeftViT)
    # A safetensors file: 8-byte little-endian header length, then a JSON header.
    data = (folder / WEIGHTS_FILE).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    assert header["__metadata__"] == {"format": "pt"}


def test_reexport_replaces_and_leaves_nothing_behind(tmp_path):
    export(tmp_path, "plain", "all")
    model, manifest, folder = export(tmp_path, "plain", "lora")
    loaded, reloaded = load_export(folder)
    assert reloaded == manifest and type(loaded) is not PeftViT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_reexport_over_a_link_replaces_the_link_not_its_target(tmp_path):
    """``export -> export_v1``: the new export replaces the link (the rename swap moves the link
    aside), the old export it pointed to is untouched, and no ``.export.*.old`` link is left."""
    _, first, target = export(tmp_path, "plain", "all", name="export_v1")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    (tmp_path / "export").symlink_to(target, target_is_directory=True)
    _, manifest, folder = export(tmp_path, "plain", "lora")
    assert not folder.is_symlink() and load_export(folder)[1] == manifest
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before and load_export(target)[1] == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "export_v1"]


def test_failed_export_keeps_the_old_one(tmp_path, monkeypatch):
    _, old_manifest, folder = export(tmp_path, "plain", "vpt")
    old_bytes = (folder / WEIGHTS_FILE).read_bytes()

    def half_written(state, path, metadata=None):
        open(path, "wb").write(b"\0" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(OSError, match="disk full"):
        export(tmp_path, "plain", "lora")
    assert (folder / WEIGHTS_FILE).read_bytes() == old_bytes
    assert load_export(folder)[1] == old_manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_refuses_to_replace_a_folder_that_is_not_an_export(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "notes.txt").write_text("mine")
    with pytest.raises(UniTuneError, match="exists and is not a unitune export"):
        export(tmp_path, "plain", "lora")
    assert (tmp_path / "export" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


# ---- bad exports --------------------------------------------------------------------------------


@pytest.fixture
def good(tmp_path):
    return export(tmp_path, "plain", "adapter_seq")[2]


def edit_manifest(folder, change):
    path = folder / EXPORT_MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_missing_folder_and_files(tmp_path, good):
    with pytest.raises(UniTuneError, match="nowhere: export folder not found"):
        load_export(tmp_path / "nowhere")
    (good / WEIGHTS_FILE).rename(tmp_path / "w")
    with pytest.raises(UniTuneError, match=r"model\.safetensors: file missing"):
        load_export(good)
    (good / EXPORT_MANIFEST).unlink()
    with pytest.raises(UniTuneError, match=r"unitune\.json: file missing"):
        load_model(good)


def adapter_size_outside_space(manifest):
    manifest["subnet"]["subnet"]["adapter"][0] = 3
    manifest["unmerged"]["adapter"][0] = 3


@pytest.mark.parametrize(
    "change,fragment",
    [
        (lambda m: m.pop("backbone"), "missing key 'backbone'"),
        (lambda m: m.pop("weights"), "missing key 'weights'"),
        (lambda m: m.update(format_version=2), "format_version 2 is not supported"),
        (lambda m: m.update(format="other"), "'format' is 'other', expected 'unitune-export'"),
        (lambda m: m.update(num_classes="5"), "'num_classes' has the wrong type"),
        (lambda m: m["weights"].update(sha256="abc"), "64-character hex digest"),
        (lambda m: m.update(class_names=["a"]), "1 class_names for num_classes = 5"),
        (lambda m: m["unmerged"].update(adapter=[4, 0, 4, 2]), "does not match the subnet"),
        (lambda m: m["subnet"]["subnet"].update(lora=[1, 2]), "methods list different numbers of blocks"),
        (lambda m: m.update(backbone="vit_nonexistent"), "cannot build backbone 'vit_nonexistent'"),
        (lambda m: m.update(num_classes=7, class_names=None), "head.weight has shape (5, 64), the manifest's model expects (7, 64)"),
        (lambda m: m["model_kwargs"].update(depth=3), "unitune.json: subnet: lists have 4 entries, but the backbone has 3 blocks"),
        (lambda m: m["model_kwargs"].update(reg_tokens=1), "does not fit the model the manifest describes (missing ['vit.reg_token']"),
        (lambda m: m["model_kwargs"].update(mlp_ratio=2.0), "vit.blocks.0.mlp.mlp.fc1.weight has shape (256, 64), the manifest's model expects (128, 64)"),
        (adapter_size_outside_space, "subnet: adapter[0] = 3 is not in the search space [0, 2, 4]"),
        (lambda m: m.update(added_params=["blocks.0.norm1.bias"]), "cannot add 'blocks.0.norm1.bias'"),
    ],
)
def test_tampered_manifest(good, change, fragment):
    edit_manifest(good, change)
    with pytest.raises(UniTuneError, match=re.escape(fragment)):
        load_export(good)


def test_invalid_json(good):
    (good / EXPORT_MANIFEST).write_text('{"format_version": 1,')
    with pytest.raises(UniTuneError, match=r"unitune\.json: invalid JSON"):
        load_export(good)
    (good / EXPORT_MANIFEST).write_text("[1, 2]")
    with pytest.raises(UniTuneError, match="expected a JSON object, got list"):
        load_export(good)


def test_tampered_and_truncated_weights(good):
    path = good / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(UniTuneError, match="does not match the manifest's .* \\(file modified or truncated\\)"):
        load_export(good)
    path.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(UniTuneError, match="sha256 .* does not match"):
        load_export(good)


def test_weights_that_do_not_fit(good):
    # Both files rewritten consistently (checksum fine) but with the wrong tensors.
    state = safetensors.torch.load_file(good / WEIGHTS_FILE)
    state.pop("vit.blocks.0.mlp.down_bias")
    safetensors.torch.save_file(state, good / WEIGHTS_FILE)
    digest = hashlib.sha256((good / WEIGHTS_FILE).read_bytes()).hexdigest()
    edit_manifest(good, lambda m: m["weights"].update(sha256=digest))
    with pytest.raises(UniTuneError, match=r"does not fit .*missing \['vit\.blocks\.0\.mlp\.down_bias'\]"):
        load_export(good)
    (good / WEIGHTS_FILE).write_bytes(b"not safetensors")
    digest = hashlib.sha256(b"not safetensors").hexdigest()
    edit_manifest(good, lambda m: m["weights"].update(sha256=digest))
    with pytest.raises(UniTuneError, match="not a valid safetensors file"):
        load_export(good)


def test_bad_export_arguments(tmp_path):
    model = supernet("plain", "lora")
    merged = merge(model)
    with pytest.raises(UniTuneError, match="class_names: 2 names for a head with 5 classes"):
        build_manifest(merged, BACKBONE, class_names=["a", "b"])
    with pytest.raises(UniTuneError, match="'num_classes' is set by the export itself"):
        build_manifest(merged, BACKBONE, model_kwargs={"num_classes": 5})
    manifest = build_manifest(merged, BACKBONE, model_kwargs=tiny_kwargs("plain"), provenance={"when": object()})
    with pytest.raises(UniTuneError, match="'provenance' cannot be written as JSON"):
        save_export(tmp_path / "e", merged.model, manifest)
    manifest.pop("provenance")
    with pytest.raises(UniTuneError, match=r"missing key\(s\) \['provenance'\]"):
        save_export(tmp_path / "e", merged.model, manifest)
    # A manifest that describes another model (here: adapters kept) is refused before writing.
    other = build_manifest(merge(supernet("plain", "adapter_seq")), BACKBONE, model_kwargs=tiny_kwargs("plain"))
    with pytest.raises(UniTuneError, match=r"model: does not fit the model the manifest describes \(missing \['vit\."):
        save_export(tmp_path / "e", merged.model, other)
    assert list(tmp_path.iterdir()) == []



def test_a_tensor_missing_from_the_file_is_built_for_real(tmp_path, monkeypatch):
    # Loading builds on the meta device; a non-persistent buffer (not in the file) must not stay there.
    model, _, folder = export(tmp_path, "plain", "vpt")
    build = export_mod.build_model

    def with_buffer(*args, **kwargs):
        module = build(*args, **kwargs)
        module.register_buffer("scratch", torch.ones(2), persistent=False)
        return module

    monkeypatch.setattr(export_mod, "build_model", with_buffer)
    loaded = load_model(folder)
    assert not loaded.scratch.is_meta and torch.equal(loaded.scratch, torch.ones(2))
    assert not any(p.is_meta for p in loaded.parameters())
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
