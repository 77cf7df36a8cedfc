"""Weights load completely or are refused (issue 20): ``unitune/weights.py`` behind every path.

- a plain timm state dict (what ``unitune fetch-weights`` writes) loads every backbone tensor: the
  features equal the source model's exactly;
- known wrappers (a Lightning checkpoint's ``state_dict`` entry and ``model.`` prefix, DDP's
  ``module.``) are unwrapped, said so in one log line, and load the same tensors;
- timm's position-embedding resize for another ``img_size`` still applies (checked against timm's
  ``resample_abs_pos_embed`` called directly);
- ``pretrained: true`` without a reachable hub is one line, and the hub client is never asked to
  download (nothing is tried for a minute);
- ``from_pretrained`` refuses NaN weights, an int64 tensor and a base model without a backbone
  tensor the save had (a qkv bias), each in one line naming the key, leaving the ViT as it was.

The CLI cases (an unrelated tensor, a ResNet to ``retrain --backbone``, shapes, pickles, the hub
off) are rows of ``tests/test_bad_input.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import yaml
from timm.layers import resample_abs_pos_embed

import unitune
from unitune.engine import backbone as backbone_module
from unitune.supernet.api import backbone_tensors
from unitune.engine.backbone import create_backbone, reachable
from unitune.commands.cli import main
from unitune.errors import UniTuneError
from unitune.weights import load_backbone_weights

from tiny import TINY, tiny_vit

NAME = "vit_tiny_patch16_224"
BACKBONE_TENSORS = 54  # TINY (depth 4), the head aside: 12 per block + cls_token, pos_embed, patch_embed (2), norm (2)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's: tiny models run faster on one thread


def source_model(**extra) -> torch.nn.Module:
    torch.manual_seed(1)
    return timm.create_model(NAME, pretrained=False, num_classes=10, **{**TINY, **extra}).eval()


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def images(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(7))


def assert_backbone_equals(model: torch.nn.Module, source: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    backbone = [k for k in own if not k.startswith("head.")]
    assert len(backbone) == BACKBONE_TENSORS
    for k in backbone:
        assert torch.equal(own[k], source[k]), k


# ---- what loads ---------------------------------------------------------------------------------


def test_a_plain_timm_state_dict_loads_every_tensor_and_gives_the_source_features(tmp_path):
    src = source_model()
    state = state_of(src)
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(state, str(path))
    model = create_backbone(NAME, 5, weights=str(path), kwargs=TINY).eval()
    assert_backbone_equals(model, state)
    with torch.no_grad():
        assert torch.equal(model.forward_features(images()), src.forward_features(images()))
    assert model.head.out_features == 5  # the head is replaced, not loaded
    # the count the loader reports: every backbone tensor, the head aside
    fresh = timm.create_model(NAME, pretrained=False, num_classes=5, **TINY)
    assert load_backbone_weights(fresh, path, NAME) == BACKBONE_TENSORS


@pytest.mark.parametrize("wrap, suffix, note", [
    (lambda s: {f"model.{k}": v for k, v in s.items()}, ".safetensors", "the key prefix 'model.'"),
    (lambda s: {"state_dict": {f"model.{k}": v for k, v in s.items()}, "epoch": 3, "global_step": 10}, ".ckpt",
     "the 'state_dict' entry and the key prefix 'model.'"),
    (lambda s: {"model": {f"module.{k}": v for k, v in s.items()}}, ".pth", "the 'model' entry and the key prefix 'module.'"),
], ids=["lightning-prefix", "lightning-checkpoint", "ddp-in-model-entry"])
def test_known_wrappers_are_unwrapped_said_so_and_load_the_same_tensors(tmp_path, caplog, wrap, suffix, note):
    src = source_model()
    state = state_of(src)
    path = tmp_path / f"w{suffix}"
    wrapped = wrap(state)
    if suffix == ".safetensors":
        safetensors.torch.save_file(wrapped, str(path))
    else:
        torch.save(wrapped, path)
    with caplog.at_level(logging.WARNING, logger="unitune.weights"):
        model = create_backbone(NAME, 5, weights=str(path), kwargs=TINY).eval()
    assert_backbone_equals(model, state)
    with torch.no_grad():
        assert torch.equal(model.forward_features(images()), src.forward_features(images()))
    notes = [r.getMessage() for r in caplog.records if r.name == "unitune.weights"]
    assert notes == [f"model.weights: {path}: unwrapped {note}; {BACKBONE_TENSORS} of {BACKBONE_TENSORS} backbone "
                     f"tensors loaded"]


def test_a_prefix_only_some_keys_have_is_not_stripped(tmp_path):
    """Unwrapping is all or nothing: one key without ``model.`` leaves the file as it is (refused)."""
    state = {f"model.{k}": v for k, v in state_of(source_model()).items()}
    state["extra"] = torch.zeros(2)
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(state, str(path))
    with pytest.raises(UniTuneError, match=rf"^model\.weights: {re.escape(str(path))} does not fit backbone "
                                           rf"'{NAME}': 0 of {BACKBONE_TENSORS} backbone tensors load \(first missing "
                                           r"'cls_token', first unexpected 'extra'\)$"):
        create_backbone(NAME, 5, weights=str(path), kwargs=TINY)


def test_another_img_size_resizes_the_position_embedding_as_timm_does(tmp_path):
    src = source_model()
    state = state_of(src)
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(state, str(path))
    model = create_backbone(NAME, 5, weights=str(path), kwargs={**TINY, "img_size": 48})
    expected = resample_abs_pos_embed(state["pos_embed"], new_size=(6, 6), old_size=(4, 4), num_prefix_tokens=1,
                                      interpolation="bicubic", antialias=True)
    assert model.pos_embed.shape == (1, 37, 64) and torch.equal(model.pos_embed.detach(), expected)
    assert torch.equal(model.blocks[3].mlp.fc2.weight, state["blocks.3.mlp.fc2.weight"])


# ---- the hub ------------------------------------------------------------------------------------


def no_download(*args, **kwargs):
    raise AssertionError("the hub was asked for the weights")


def test_pretrained_with_the_hub_unreachable_is_one_line_without_asking_it(monkeypatch):
    from huggingface_hub import constants

    asked = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(backbone_module, "reachable", lambda host, port, timeout=5.0: asked.append((host, port)))
    monkeypatch.setattr(socket, "create_connection", no_download)  # the hub client connects through it
    before = constants.HF_HUB_OFFLINE
    with pytest.raises(UniTuneError) as err:
        create_backbone("vit_small_patch14_dinov2", 5, pretrained=True, kwargs={"img_size": 56})
    host = constants.ENDPOINT.split("://")[1].split("/")[0].split(":")[0]
    assert asked == [(host, 443)]
    assert str(err.value) == (
        f"backbone 'vit_small_patch14_dinov2': pretrained weights need the model hub, which is not reachable "
        f"({host}:443) and its cache lacks them; give a local file with model.weights (`unitune fetch-weights ... "
        f"--out w.safetensors` writes one where the hub is reachable)")
    assert constants.HF_HUB_OFFLINE == before  # the cache-only switch is put back


def test_reachable_is_a_tcp_connect():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert reachable("127.0.0.1", server.getsockname()[1], timeout=2.0)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: the connection is refused
        assert not reachable("127.0.0.1", closed.getsockname()[1], timeout=2.0)
    assert not reachable("name.invalid", 443, timeout=2.0)  # .invalid never resolves (RFC 6761)


def test_pretrained_with_hf_hub_offline_in_a_real_process(tmp_path):
    """HF_HUB_OFFLINE set before the process starts: exit 2, one line, nothing written."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": "t", "device": "cpu",
        "model": {"backbone": NAME, "pretrained": True, "kwargs": TINY},
        "data": {"source": "synthetic", "num_classes": 3, "samples_per_class": 4, "image_size": 32,
                 "batch_size": 4, "num_workers": 0},
        "supernet": {"epochs": 1}}))
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "unitune", "supernet", "--config", str(config), "--out",
                           str(tmp_path / "out"), "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"unitune: error: backbone '{NAME}': pretrained weights need the model hub, which is "
                           f"switched off (HF_HUB_OFFLINE) and its cache lacks them; give a local file with "
                           f"model.weights (`unitune fetch-weights ... --out w.safetensors` writes one where the hub "
                           f"is reachable)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


# ---- from_pretrained ----------------------------------------------------------------------------


def saved(tmp_path: Path, variant: str = "cls") -> Path:
    model = unitune.get_peft_model(tiny_vit(variant), subnet={"lora": 4, "bitfit": 1})
    return model.save_pretrained(tmp_path / "peft")


def rewrite(folder: Path, key: str, value) -> Path:
    """Change one saved tensor and the sha256 the config records (as a tool that rewrote both)."""
    weights, config_path = folder / "peft_weights.safetensors", folder / "peft_config.json"
    state = safetensors.torch.load_file(str(weights))
    state[key] = value(state[key])
    weights.write_bytes(safetensors.torch.save(state))
    config = json.loads(config_path.read_text())
    config["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    config_path.write_text(json.dumps(config))
    return weights


def refused(vit, folder: Path, message: str) -> None:
    from unitune.supernet.methods.layers import PeftLayer

    flags = [p.requires_grad for p in vit.parameters()]
    head = vit.head.weight.detach().clone()
    with pytest.raises(UniTuneError) as err:
        unitune.from_pretrained(vit, folder)
    assert str(err.value) == message
    assert not any(isinstance(m, PeftLayer) for m in vit.modules())  # left as it came
    assert [p.requires_grad for p in vit.parameters()] == flags and torch.equal(vit.head.weight, head)


def _nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[1] = float("nan")
    return t


def test_from_pretrained_refuses_nan_weights(tmp_path):
    weights = rewrite(saved(tmp_path), "blocks.2.lora.qkv.lora_B", _nan)
    refused(tiny_vit(), weights.parent, f"{weights}: blocks.2.lora.qkv.lora_B holds NaN or infinite values")


def test_from_pretrained_refuses_an_int64_tensor(tmp_path):
    weights = rewrite(saved(tmp_path), "head.bias", lambda t: torch.arange(t.numel()))
    refused(tiny_vit(), weights.parent,
            f"{weights}: head.bias is a torch.int64 tensor, expected a floating-point one (torch.float32)")


def test_from_pretrained_refuses_a_base_model_without_the_qkv_bias_the_save_had(tmp_path):
    folder = saved(tmp_path)
    refused(tiny_vit("no_qkv_bias"), folder,
            f"{folder / 'peft_config.json'}: the base model lacks 'blocks.0.attn.qkv.bias' (4 of the "
            f"{BACKBONE_TENSORS} backbone tensors the save was trained on); create it with the same timm keywords "
            f"(e.g. qkv_bias)")
    # and the other way round: a save on a qkv_bias=False backbone does not fit one with the bias
    other = saved(tmp_path / "b", "no_qkv_bias")
    refused(tiny_vit(), other, f"{other / 'peft_config.json'}: the base model has 'blocks.0.attn.qkv.bias' (4 "
                               f"backbone tensors the save was not trained with); create it with the same timm keywords")
    assert isinstance(unitune.from_pretrained(tiny_vit("no_qkv_bias"), other), unitune.PeftModel)


def test_the_recorded_backbone_tensors_are_the_plain_vits_whatever_wraps_it():
    vit = tiny_vit("reg_layerscale")
    plain = {k: list(v.shape) for k, v in vit.state_dict().items() if not k.startswith("head.")}
    assert backbone_tensors(vit) == plain
    every = {"lora": 2, "adapter": 2, "vpt": 2, "ssf": 1, "ssf_global": 1, "bitfit": 1, "dora": 2, "adapter_plus": 2}
    model = unitune.get_peft_model(vit, subnet=every)
    assert backbone_tensors(model.vit) == plain


def test_a_files_classifier_head_is_replaced_with_one_note_per_file(tmp_path, capsys):
    """A fine-tuned checkpoint's head (10 classes) is not loaded: the model gets a fresh 5-class
    head and stderr says so once, however often the run builds the backbone; a file without a head
    says nothing."""
    from unitune import weights

    weights._NOTED.clear()
    src = source_model()  # 10 classes
    path = tmp_path / "finetuned.safetensors"
    safetensors.torch.save_file(state_of(src), str(path))
    for _ in range(3):
        model = create_backbone(NAME, 5, weights=str(path), kwargs=TINY)
        assert model.head.out_features == 5
    err = capsys.readouterr().err.splitlines()
    assert err == [f"unitune: note: model.weights: {path}: its classifier head (10 classes) is not loaded; "
                   f"the model has a new 5-class head"]
    headless = tmp_path / "backbone.safetensors"
    safetensors.torch.save_file({k: v for k, v in state_of(src).items() if not k.startswith("head.")}, str(headless))
    create_backbone(NAME, 5, weights=str(headless), kwargs=TINY)
    assert capsys.readouterr().err == ""
