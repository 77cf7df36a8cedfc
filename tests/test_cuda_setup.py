"""Device and process setup on the CUDA path (issue 13), checked without a GPU.

``torch.cuda`` and ``torch.distributed`` are replaced by recorders (monkeypatch), so what
unitune *asks* of CUDA is checked: which device, in which order, which RNG state.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.distributed as dist

from unitune.data import DataConfig, build_dataset, build_loader
from unitune.errors import UniTuneError
from unitune.engine.train import init_distributed, pick_device, rng_state, set_rng_state


def fake_cuda(monkeypatch, count: int = 2, calls: list | None = None) -> list:
    """CUDA "available" with ``count`` devices; every call that would touch a GPU is recorded."""
    calls = [] if calls is None else calls
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": calls.append("get_rng_state")
                        or torch.arange(8, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": calls.append(("set_rng_state", s)))

    def every_gpu(*a, **k):
        raise AssertionError("touches every GPU")
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_gpu)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", every_gpu)
    return calls


# ---- pick_device ------------------------------------------------------------------------------


def test_pick_device_refuses_a_missing_gpu_index(monkeypatch):
    fake_cuda(monkeypatch, count=2)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device("cuda") == torch.device("cuda")
    with pytest.raises(UniTuneError) as info:
        pick_device("cuda:2")
    assert str(info.value) == "device 'cuda:2': this machine has 2 CUDA devices (cuda:0 to cuda:1)"
    fake_cuda(monkeypatch, count=1)
    with pytest.raises(UniTuneError, match=r"^device 'cuda:5': this machine has 1 CUDA device \(cuda:0 to cuda:0\)$"):
        pick_device("cuda:5")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_pick_device_without_cuda(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UniTuneError) as info:
        pick_device(name)
    assert str(info.value) == f"device {name!r}: CUDA is not available on this machine"
    assert pick_device("auto") == torch.device("cpu")


# ---- init_distributed -------------------------------------------------------------------------


def fake_torchrun(monkeypatch, calls: list, rank: int = 1, world: int = 2) -> None:
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend, kw)))
    monkeypatch.setattr(dist, "get_rank", lambda: rank)
    monkeypatch.setattr(dist, "get_world_size", lambda: world)


def test_init_distributed_puts_each_rank_on_its_gpu_before_nccl(monkeypatch):
    calls = fake_cuda(monkeypatch)
    fake_torchrun(monkeypatch, calls, rank=1)
    world = init_distributed(torch.device("cuda"))
    assert (world.rank, world.world_size, world.local_rank) == (1, 2, 1)
    assert calls == [("set_device", 1), ("init", "nccl", {"device_id": torch.device("cuda", 1)})]


def test_init_distributed_on_cpu_leaves_cuda_alone(monkeypatch):
    calls = fake_cuda(monkeypatch)  # a GPU present, but the run is on the CPU
    fake_torchrun(monkeypatch, calls, rank=0)
    init_distributed(torch.device("cpu"))
    assert calls == [("init", "gloo", {})]


# ---- loaders ----------------------------------------------------------------------------------


def test_pinned_memory_only_for_a_cuda_run(monkeypatch):
    fake_cuda(monkeypatch)  # CUDA exists on the machine; the run's device decides
    c = DataConfig.from_dict({"source": "synthetic", "num_workers": 0, "num_classes": 2, "samples_per_class": 2,
                              "image_size": 8}, source="cfg.yaml: data")
    ds = build_dataset(c, "val")
    assert build_loader(ds, c, train=False, seed=0, device=torch.device("cpu")).pin_memory is False
    assert build_loader(ds, c, train=False, seed=0, device="cpu").pin_memory is False
    assert build_loader(ds, c, train=False, seed=0).pin_memory is False
    assert build_loader(ds, c, train=False, seed=0, device=torch.device("cuda", 0)).pin_memory is True


# ---- RNG state --------------------------------------------------------------------------------


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_state_keeps_the_current_gpu_only(monkeypatch, tmp_path):
    calls = fake_cuda(monkeypatch)
    state = rng_state()
    assert torch.equal(state["cuda"], torch.arange(8, dtype=torch.uint8)) and calls == ["get_rng_state"]
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    expected = draws()
    set_rng_state(loaded)
    assert draws() == expected  # Python, NumPy and torch CPU streams come back
    assert calls[-1][0] == "set_rng_state" and torch.equal(calls[-1][1], state["cuda"])
    # An older checkpoint held one state per GPU: the current device's is restored.
    per_gpu = [torch.zeros(8, dtype=torch.uint8), torch.full((8,), 7, dtype=torch.uint8)]
    set_rng_state({**loaded, "cuda": per_gpu})
    assert torch.equal(calls[-1][1], per_gpu[1])  # current_device() is 1 here


def test_rng_state_on_a_cpu_run_opens_no_cuda_context(monkeypatch):
    calls = fake_cuda(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert "cuda" not in rng_state() and calls == []
