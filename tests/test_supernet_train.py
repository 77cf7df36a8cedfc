"""Supernet training end to end (issue 3's must-shows): exact resume after SIGKILL, a checkpoint
without the frozen backbone, torchrun = single process, non-finite losses, bad input through
the CLI, and learning on real data.

Everything runs on the CPU with one intra-op thread (in this process and in the subprocesses),
so that runs in different processes are bit for bit comparable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from unitune.engine.backbone import create_backbone
from unitune.commands.cli import main as cli_main
from unitune.engine.config import load_run_config
from unitune.errors import UniTuneError
from unitune.supernet import BackboneDims, SearchSpace, Subnet, count_params
from unitune.supernet.sampler import SubnetSampler
from unitune.engine.context import SUPERNET_CKPT, SUPERNET_FILE, SUPERNET_LOG
from unitune.engine.supernet_train import build_model
from unitune.engine.train import check_finite, load_checkpoint, save_checkpoint, seed_everything

from tiny import tiny_vit

HERE = Path(__file__).parent
ROOT = HERE.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

TINY_KWARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
# 4 classes x 16 = 64 training images, batch 8: 8 steps per epoch, 3 epochs. No per-block SSF:
# the key part of the qkv SSF shift has an exactly zero true gradient (softmax ignores a shift
# shared by all keys), so Adam turns float rounding noise there into full-size steps and two
# mathematically equal runs (1 vs 2 processes) drift apart in exactly those entries.
TINY = {
    "name": "tiny",
    "device": "cpu",
    "model": {"backbone": "vit_tiny_patch16_224", "kwargs": TINY_KWARGS},
    "data": {"source": "synthetic", "num_classes": 4, "samples_per_class": 16, "image_size": 32,
             "batch_size": 8, "num_workers": 0},
    "space": {"ssf": [0]},
    "supernet": {"epochs": 3, "lr": 0.01, "seed": 3},
}
STEPS, EPOCHS = 8, 3


def write_config(path: Path, **sections) -> Path:
    """The tiny config with whole sections replaced."""
    path.write_text(yaml.safe_dump({**TINY, **sections}))
    return path


def unitune(*args: str) -> int:
    """``unitune supernet --quiet ARGS`` in this process: the CLI's own code path, exit code and messages."""
    return cli_main(["supernet", "--quiet", *args])


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def log_lines(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / SUPERNET_LOG).read_text().splitlines() if ln.strip()]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("unitune: error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted single-process run of the tiny config."""
    tmp = tmp_path_factory.mktemp("reference")
    assert unitune("--config", str(write_config(tmp / "tiny.yaml")), "--out", str(tmp / "out")) == 0
    return tmp / "out"


# ---- 1. SIGKILL mid-epoch, then --resume ---------------------------------------------------------


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path, reference):
    cfg, out = write_config(tmp_path / "tiny.yaml"), tmp_path / "out"
    ckpt = out / SUPERNET_CKPT / "state.pt"
    # checkpoint_every does not change what is trained (a resume may even change it); every 3
    # steps, so the kill usually also throws away steps done after the last checkpoint.
    args = ["--config", str(cfg), "--out", str(out), "supernet.checkpoint_every=3"]
    proc = subprocess.Popen([sys.executable, "-m", "unitune", "supernet", "--quiet", *args], env=ENV, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at = None
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ckpt.exists():
                state = torch.load(ckpt, weights_only=True)  # state.pt is replaced atomically
                if state["epoch"] >= 1 and state["step"] > 0:  # the second epoch is under way
                    proc.send_signal(signal.SIGKILL)
                    killed_at = (state["epoch"], state["step"])
                    break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait()
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    assert killed_at is not None, f"the run ended (rc {proc.returncode}) before a mid-epoch checkpoint: {stderr}"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / SUPERNET_FILE).exists()
    _, state = load_checkpoint(out / SUPERNET_CKPT)
    assert 1 <= state["epoch"] < EPOCHS and 0 < state["step"] < STEPS  # mid-epoch
    assert [r["epoch"] for r in log_lines(out)] in ([0], [0, 1])

    assert unitune("--resume", *args) == 0

    got, want = tensors(out / SUPERNET_FILE), tensors(reference / SUPERNET_FILE)
    assert got.keys() == want.keys() and len(got) > 10
    for name in want:
        assert torch.equal(got[name], want[name]), name
    # One line per epoch, no duplicates, and the resumed epoch logs the loss over all its steps.
    lines, ref_lines = log_lines(out), log_lines(reference)
    assert [r["epoch"] for r in lines] == list(range(EPOCHS))
    for a, b in zip(lines, ref_lines):
        for key in ("step", "loss", "lr", "val_acc_largest", "val_acc_smallest"):
            assert a[key] == b[key], (a["epoch"], key)


def test_checkpoint_survives_a_crash_between_weights_and_state(tmp_path, monkeypatch):
    """A process killed after the new weights are published but before their state: the old
    pair must still load (it used to be a 'does not match' error that lost the whole run)."""
    folder = tmp_path / "ckpt"
    first = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(4)}
    save_checkpoint(folder, first, {"step": 1})
    real_save = torch.save

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for the kill: nothing after this point runs

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, {"a": first["a"] + 1, "b": first["b"] * 2}, {"step": 2})
    monkeypatch.setattr(torch, "save", real_save)
    weights, state = load_checkpoint(folder)
    assert state["step"] == 1 and torch.equal(weights["a"], first["a"]) and torch.equal(weights["b"], first["b"])

    save_checkpoint(folder, {"a": first["a"] * 3, "b": first["b"]}, {"step": 3})  # the next save heals it
    weights, state = load_checkpoint(folder)
    assert state["step"] == 3 and torch.equal(weights["a"], first["a"] * 3)
    assert sorted(p.name for p in folder.iterdir()) == ["state.pt", "weights.safetensors"]


# ---- 2. a ViT-B/16 checkpoint holds only what is trained ----------------------------------------


def test_vit_b16_checkpoint_holds_no_backbone_tensor(tmp_path):
    # The real ViT-B/16 (random init: offline). img_size 32 keeps the step cheap; it changes only
    # the frozen position embedding (5 instead of 197 tokens), not one trained tensor.
    kwargs = {"img_size": 32}
    cfg = write_config(
        tmp_path / "vitb.yaml",
        model={"backbone": "vit_base_patch16_224", "kwargs": kwargs},
        data={"source": "synthetic", "num_classes": 2, "samples_per_class": 1, "image_size": 32,
              "batch_size": 2, "num_workers": 0},
        space={},  # the NOAH space: LoRA, Adapter, VPT sizes {0, 1, 5, 10}, SSF on/off
        # sandwich trains the largest subnet, so every trainable tensor has optimiser state
        supernet={"epochs": 1, "lr": 1e-3, "sampler": "sandwich"},
    )
    out = tmp_path / "out"
    assert unitune("--config", str(cfg), "--out", str(out)) == 0

    vit = create_backbone("vit_base_patch16_224", num_classes=2, kwargs=kwargs, meta=True)
    frozen = {k for k in vit.state_dict() if not k.startswith("head.")}
    backbone_params = sum(p.numel() for n, p in vit.named_parameters() if not n.startswith("head."))
    assert backbone_params > 85_000_000  # ~343 MB in float32
    space = SearchSpace()
    n = count_params(Subnet.largest(space, 12), BackboneDims.from_model(vit), space).with_head  # analytic
    assert 800_000 < n < 900_000

    folder = out / SUPERNET_CKPT
    assert sorted(p.name for p in folder.iterdir()) == ["state.pt", "weights.safetensors"]
    weights = tensors(folder / "weights.safetensors")
    assert not frozen & weights.keys()
    assert all(k.startswith(("blocks.", "ssf_global.", "head.")) and (k.startswith("head.") or any(
        f".{m}" in k for m in ("lora", "adapter", "vpt", "ssf"))) for k in weights)
    assert sum(t.numel() for t in weights.values()) == n
    assert tensors(out / SUPERNET_FILE).keys() == weights.keys()

    # state.pt: AdamW's two moments per trainable tensor (2n floats), RNG states, progress; no more.
    state = torch.load(folder / "state.pt", weights_only=True)
    moments = [t for s in state["optimizer"]["state"].values() for k, t in s.items() if k != "step"]
    assert sum(t.numel() for t in moments) == 2 * n

    def numel(x) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel()
        if isinstance(x, dict):
            return sum(numel(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(numel(v) for v in x)
        return 0

    assert numel(state) - 2 * n < 20_000  # the RNG states (~6k) and step counters

    size_w, size_s = (folder / "weights.safetensors").stat().st_size, (folder / "state.pt").stat().st_size
    assert 4 * n <= size_w <= 4 * n + 64 * 1024  # + the safetensors header (names, shapes)
    assert 8 * n <= size_s <= 8 * n + 256 * 1024  # + RNG states, pickled structure
    assert size_w + size_s < 15 * 2**20 < 4 * backbone_params / 20  # ~10 MB, not 340 MB


# ---- 3. torchrun with 2 processes = one process with the same global batch ----------------------


def test_torchrun_two_processes_match_single_process(tmp_path, reference):
    cfg = write_config(tmp_path / "tiny.yaml")
    watch = tmp_path / "runs"
    watch.mkdir()
    out = watch / "out"
    record = tmp_path / "record"
    env = {**ENV, "UNITUNE_TEST_RECORD": str(record), "UNITUNE_TEST_WATCH": str(watch)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "supernet_cli.py"), "supernet", "--config", str(cfg), "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads(Path(f"{record}.{r}.json").read_text()) for r in (0, 1)]
    # Both ranks trained the same subnets, and they are the ones the seeded sampler draws.
    assert ranks[0]["subnets"] == ranks[1]["subnets"]
    run = load_run_config(cfg)
    seed_everything(run.supernet.seed)
    model = build_model(run, 4, torch.device("cpu"))
    sampler = SubnetSampler(model.space, BackboneDims.from_model(model), "uniform", seed=run.supernet.seed)
    expected = [s.to_dict()["subnet"] for _ in range(EPOCHS * STEPS) for s in sampler()]
    assert ranks[0]["subnets"] == expected and len(set(map(json.dumps, expected))) > 10
    # Only rank 0 wrote anything.
    assert ranks[1]["writes"] == []
    published = {Path(w[2]).name for w in ranks[0]["writes"] if w[0] == "os.rename"}
    assert {SUPERNET_FILE, "weights.safetensors", "state.pt"} <= published

    got, want = tensors(out / SUPERNET_FILE), tensors(reference / SUPERNET_FILE)
    init = {k: v for k, v in model.trainable_state_dict().items()}
    assert got.keys() == want.keys() == init.keys()
    moved = max((want[k] - init[k]).abs().max().item() for k in want)
    diff = max((got[k] - want[k]).abs().max().item() for k in want)
    assert moved > 0.05  # training moved the weights far more than the tolerance
    assert diff <= 1e-5, diff
    for a, b in zip(log_lines(out), log_lines(reference), strict=True):
        assert a["epoch"] == b["epoch"] and a["step"] == b["step"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)  # averaged over both ranks' shares
        assert a["val_acc_largest"] == pytest.approx(b["val_acc_largest"], abs=1 / 64)


# ---- 4. non-finite training stops cleanly ------------------------------------------------------


def test_non_finite_training_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """lr=1e30: the first update is finite but absurd, the second step's loss is not finite."""
    import unitune.engine.supernet_train as trainer

    saved = []

    def spy(folder, weights, state):
        save_checkpoint(folder, weights, state)
        saved.append(({k: v.clone() for k, v in weights.items()}, state["epoch"], state["step"]))

    monkeypatch.setattr(trainer, "save_checkpoint", spy)
    cfg, out = write_config(tmp_path / "tiny.yaml"), tmp_path / "out"
    rc = unitune("--config", str(cfg), "--out", str(out), "supernet.lr=1e30", "supernet.checkpoint_every=1")
    assert rc == 2
    line = one_error_line(capsys)
    assert "epoch 1 step 2:" in line and "finite" in line and "learning rate" in line
    assert len(saved) == 1
    assert not (out / SUPERNET_FILE).exists()
    assert not (out / SUPERNET_LOG).exists() or log_lines(out) == []
    weights, state = load_checkpoint(out / SUPERNET_CKPT)
    last, epoch, step = saved[-1]
    assert (state["epoch"], state["step"]) == (epoch, step) == (0, 1)
    assert weights.keys() == last.keys()
    assert all(torch.equal(weights[k], last[k]) and bool(weights[k].isfinite().all()) for k in last)


def test_non_finite_weights_fail_before_any_checkpoint():
    """A finite loss does not make a finite update (an overflowing backward pass or step): the
    weights are checked after every update, before a checkpoint could store them."""
    good, bad = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.tensor([1.0, float("nan")]))
    check_finite([("a", good)], "here")
    with pytest.raises(UniTuneError, match=r"^supernet epoch 2 step 5: the update made blocks\.0\.vpt\.prompts non-finite"):
        check_finite([("a", good), ("blocks.0.vpt.prompts", bad)], "supernet epoch 2 step 5")


# ---- 5. bad input through the CLI --------------------------------------------------------------


def test_unknown_config_key_in_a_real_process(tmp_path):
    cfg = write_config(tmp_path / "bad.yaml", supernet={"epochs": 1, "learning_rate": 0.1})
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "unitune", "supernet", "--config", str(cfg), "--out", str(out)],
                          env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(cfg) in err[0] and "supernet.learning_rate" in err[0] and "unknown key" in err[0]
    assert not out.exists()


def _wrong_width_weights(tmp_path: Path) -> Path:
    path = tmp_path / "wide.safetensors"
    wide = tiny_vit(num_classes=4, **{**TINY_KWARGS, "embed_dim": 48})
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("case", ["missing-data-folder", "unknown-key", "wrong-architecture", "bad-image-size"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    if case == "missing-data-folder":
        missing = tmp_path / "no-such-folder"
        cfg = write_config(tmp_path / "c.yaml", data={"source": "imagefolder", "root": str(missing), "batch_size": 8})
        fragments = [str(missing), "not found"]
    elif case == "unknown-key":
        cfg = write_config(tmp_path / "c.yaml", model={"backbone": "vit_tiny_patch16_224", "kwargs": TINY_KWARGS,
                                                       "pretrainde": True})
        fragments = [str(tmp_path / "c.yaml"), "model.pretrainde", "unknown key"]
    elif case == "wrong-architecture":
        weights = _wrong_width_weights(tmp_path)
        cfg = write_config(tmp_path / "c.yaml", model={"backbone": "vit_tiny_patch16_224", "kwargs": TINY_KWARGS,
                                                       "weights": str(weights)})
        fragments = ["model.weights", str(weights), "does not fit", "cls_token has shape (1, 1, 48), expected"]
    else:  # 30 px with 8 px patches: timm builds it and silently drops 6 pixel rows and columns
        cfg = write_config(tmp_path / "c.yaml", model={"backbone": "vit_tiny_patch16_224",
                                                       "kwargs": {**TINY_KWARGS, "img_size": 30}})
        fragments = ["model.kwargs.img_size", "30", "multiple of its patch size 8"]
    out = tmp_path / "out"
    assert unitune("--config", str(cfg), "--out", str(out)) == 2
    line = one_error_line(capsys)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert not out.exists()


def test_image_size_error_comes_from_the_backbone_factory():
    with pytest.raises(UniTuneError, match=r"img_size: 4 .*patch size 8"):
        create_backbone("vit_tiny_patch16_224", 4, kwargs={**TINY_KWARGS, "img_size": 4})
    vit = create_backbone("vit_tiny_patch16_224", 4, kwargs={**TINY_KWARGS, "img_size": 24}, meta=True)
    assert tuple(vit.patch_embed.grid_size) == (3, 3)  # a multiple of the patch size is fine


def test_resume_with_changed_config_is_refused_and_changes_nothing(tmp_path, capsys, reference):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = snapshot(out)
    cfg = write_config(tmp_path / "tiny.yaml")
    assert unitune("--config", str(cfg), "--out", str(out), "--resume", "supernet.lr=0.02") == 2
    line = one_error_line(capsys)
    assert str(out / SUPERNET_CKPT) in line and "supernet.lr: 0.01 -> 0.02" in line
    assert snapshot(out) == before
    # Settings that do not change the result may differ (another machine, another interval).
    assert unitune("--config", str(cfg), "--out", str(out), "--resume", "data.num_workers=1",
                   "supernet.checkpoint_every=5") == 0
    after = tensors(out / SUPERNET_FILE)
    assert all(torch.equal(after[k], v) for k, v in tensors(reference / SUPERNET_FILE).items())
    # Without --resume an existing checkpoint is never overwritten.
    assert unitune("--config", str(cfg), "--out", str(out)) == 2
    assert "--resume" in one_error_line(capsys)


# ---- 6. it learns ------------------------------------------------------------------------------


def test_digits_largest_and_smallest_subnets_beat_chance(tmp_path):
    """Real images (scikit-learn's 8x8 digits, 10 classes, 359 val images) on a random-init tiny
    ViT: only PEFT modules and the head learn, on frozen random features. The sandwich sampler
    trains both ends of the space every step; 3 short epochs lift both above chance (0.10).

    (lr 0.02 and a final loss < 2.2 held only while the guard wrongly reverted every entry
    outside the step's last subnet, which left most of each update undone; with the whole
    sandwich update applied, 0.01 is the better step on this toy: loss 2.32 -> 2.27 -> 2.22.)"""
    cfg = write_config(
        tmp_path / "digits.yaml",
        model={"backbone": "vit_tiny_patch16_224",
               "kwargs": {**TINY_KWARGS, "global_pool": "avg", "class_token": False}},
        data={"source": "digits", "batch_size": 32, "eval_batch_size": 128, "num_workers": 0},
        space={},
        supernet={"epochs": 3, "lr": 0.01, "sampler": "sandwich"},
    )
    out = tmp_path / "out"
    assert unitune("--config", str(cfg), "--out", str(out)) == 0
    lines = log_lines(out)
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    losses = [r["loss"] for r in lines]
    assert losses[0] > losses[1] > losses[2] and losses[2] < 2.25  # ln(10) = 2.303 at chance
    # 0.15 is 3 standard deviations of a chance accuracy on 359 images above 0.10
    assert lines[-1]["val_acc_largest"] > 0.15 and lines[-1]["val_acc_smallest"] > 0.15, lines[-1]


def test_exponent_floats_load_as_numbers(tmp_path):
    """``lr: 1e-3`` (every recipe's spelling) is a string to PyYAML's YAML 1.1 loader."""
    cfg = write_config(tmp_path / "c.yaml", supernet={"epochs": 1, "lr": "PLACEHOLDER"})
    cfg.write_text(cfg.read_text().replace("PLACEHOLDER", "1e-3"))
    assert load_run_config(cfg).supernet.lr == 1e-3
    assert load_run_config(cfg, ["supernet.lr=2e-4", "supernet.min_lr=1E-7"]).supernet.min_lr == 1e-7


# ---- 7. a multi-subnet (sandwich) step updates the union of its subnets, nothing else ----------


def _sandwich_step_setup(sampler_space: SearchSpace, seed: int = 0):
    """A tiny supernet (the default space: sizes up to 10) after one full-size AdamW step, so every
    entry has non-zero weights and moments, and a sandwich sampler over ``sampler_space``."""
    from tiny import TINY

    from unitune.engine.config import TrainConfig
    from unitune.supernet import PeftViT
    from unitune.supernet.guard import InactiveGuard
    from unitune.engine.train import build_optimizer

    torch.manual_seed(seed)
    space = SearchSpace(lora_targets=("qkv", "proj", "fc1", "fc2"))
    model = PeftViT(tiny_vit(num_classes=5, seed=seed), space)
    with torch.no_grad():  # B, up and SSF start at zero / identity: give every entry a value
        g = torch.Generator().manual_seed(seed)
        for _, p in model.peft_named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    optimizer = build_optimizer(model.trainable_named_parameters(), TrainConfig(lr=1e-2, weight_decay=0.05))
    InactiveGuard(model, optimizer)
    images = torch.randn(4, 3, TINY["img_size"], TINY["img_size"], generator=torch.Generator().manual_seed(seed))
    labels = torch.tensor([0, 1, 2, 3])
    model.train()
    model.set_subnet(Subnet.largest(space, TINY["depth"]))
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    sampler = SubnetSampler(sampler_space, BackboneDims.from_model(model), "sandwich", seed=seed, num_random=2)
    return model, optimizer, sampler, images, labels


def test_sandwich_step_moves_every_entry_with_a_gradient_and_nothing_outside_its_subnets():
    """The supernet loop's step: the sandwich's subnets each add their gradient, then one update.
    The sampler's space is narrower than the model's allocation (LoRA ranks up to 4 of 10, SSF
    never), so some entries belong to none of the step's subnets; the last subnet set (a random
    one) covers only part of what the largest one used."""
    from unitune.supernet.guard import active_masks

    narrow = SearchSpace(lora=(0, 2, 4), adapter=(0, 3, 6), vpt=(0, 2), ssf=(0,), ssf_global=(0,),
                         lora_targets=("qkv", "proj", "fc1", "fc2"))
    model, optimizer, sampler, images, labels = _sandwich_step_setup(narrow)
    optimizer.zero_grad(set_to_none=True)
    subnets = sampler()
    assert len(subnets) == 4 and subnets[0] == Subnet.largest(narrow, 4)
    union: dict[str, torch.Tensor] = {}
    for subnet in subnets:  # the loop of unitune/engine/supernet_train.py
        model.set_subnet(subnet)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        for name, mask in active_masks(model).items():  # a second computation: OR of every subnet's mask
            union[name] = union[name] | mask if name in union else mask
    last = active_masks(model)
    params = dict(model.peft_named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}
    state = {n: {k: v.clone() for k, v in optimizer.state[p].items() if k != "step"} for n, p in params.items()}
    optimizer.step()

    with_grad = sum(int((g != 0).sum()) for g in grads.values())
    beyond_last = sum(int(((g != 0) & ~last[n]).sum()) for n, g in grads.items())
    outside = sum(int((~m).sum()) for m in union.values())
    assert beyond_last > 1000 and outside > 1000, (beyond_last, outside)  # the test can tell a bad guard
    for name, p in params.items():
        g, m = grads[name], union[name]
        assert not g[~m].any(), name  # gradients only where some subnet reached
        stuck = (g != 0) & (p.detach() == before[name])
        assert not stuck.any(), f"{name}: {int(stuck.sum())} entries with a gradient did not move"
        assert torch.equal(p.detach()[~m], before[name][~m]), f"{name} moved outside the step's subnets"
        for key, value in state[name].items():
            assert torch.equal(optimizer.state[p][key][~m], value[~m]), f"{name}: {key} changed outside"
    assert with_grad > beyond_last


def test_guard_without_a_recorded_forward_pass_protects_what_the_active_subnet_does_not_use():
    """A step whose gradients came from elsewhere (no forward pass of the model) falls back to the
    active subnet, as a plain single-subnet step always did."""
    from unitune.supernet.guard import active_masks

    model, optimizer, _, images, labels = _sandwich_step_setup(SearchSpace())
    small = Subnet.uniform(4, lora=1, adapter=1, vpt=1, ssf=0)
    model.set_subnet(small)
    with torch.no_grad():
        model(images)  # no autograd: not a training pass, not recorded
    mask = active_masks(model)
    params = dict(model.peft_named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    for p in params.values():
        p.grad = torch.ones_like(p)
    optimizer.step()
    for name, p in params.items():
        assert torch.equal(p.detach()[~mask[name]], before[name][~mask[name]]), name
        assert not (p.detach()[mask[name]] == before[name][mask[name]]).any(), name
