"""Faults (issue 7): a process killed with SIGKILL at the worst moment costs nothing finished, and
running the same command again completes.

Where each stage's kill is tested:

- supernet training: ``test_supernet_train.py::test_sigkill_mid_epoch_then_resume_equals_uninterrupted``
  (killed mid-epoch, ``--resume`` ends with weights equal to an uninterrupted run's) and
  ``::test_checkpoint_survives_a_crash_between_weights_and_state``;
- a search trial: ``test_search_workers.py::test_sigkill_mid_trial_then_restart_loses_and_duplicates_nothing``
  and, through ``unitune run``, ``test_pipeline.py::test_killed_run_resumes_without_redoing_the_supernet``;
- retrain and export: here. The processes run ``tests/fault_cli.py``, which is ``python -m unitune``
  plus hooks that kill the process at a chosen point (inside ``save_export``) or slow each training
  step down (so a kill from outside lands mid-training however loaded the machine is).

Also here: what killed writers leave (``.NAME.<host>-<pid>.<random>.tmp``) is removed by the next
write of the same file, and atomically written files get ordinary permissions.

Every process runs on the CPU with one thread, so runs in different processes agree bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from unitune.io import atomic_path, stale_temps, write_text_atomic

HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

EPOCHS = 3
CONFIG = {
    "name": "faults",
    "device": "cpu",
    "model": {"backbone": "vit_tiny_patch16_224",
              "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}},
    # 3 x 24 = 72 training images, batch 8: 9 steps an epoch.
    "data": {"source": "synthetic", "num_classes": 3, "samples_per_class": 24, "image_size": 16,
             "batch_size": 8, "num_workers": 0},
    "space": {"lora": [0, 2], "adapter": [0, 2], "vpt": [0, 2], "ssf": [0, 1], "ssf_global": [0, 1]},
    "retrain": {"epochs": EPOCHS, "lr": 0.01, "seed": 5},
}
SUBNET = {"subnet": {"lora": [2, 0], "adapter": [0, 2], "vpt": [2, 0], "ssf": [1, 1], "ssf_global": 1}}


def setup_run(folder: Path) -> list[str]:
    """A config, a subnet file and the retrain command line for ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (folder / "subnet.yaml").write_text(yaml.safe_dump(SUBNET))
    return ["retrain", "--config", str(folder / "config.yaml"), "--subnet", str(folder / "subnet.yaml"),
            "--out", str(folder / "out"), "--quiet"]


def start(argv: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "fault_cli.py"), *argv], env={**ENV, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, code: int = 0) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, (proc.returncode, err)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(folder.iterdir())}


def export_identity(export: Path) -> tuple[str, dict]:
    """The weights' hash and the manifest, less the paths of the run that wrote it."""
    manifest = json.loads((export / "unitune.json").read_text())
    for key in ("config_file", "subnet_file"):
        manifest["provenance"].pop(key)
    return sha(export / "model.safetensors"), manifest


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "retrain_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted retrain (its run folder)."""
    folder = tmp_path_factory.mktemp("reference")
    finish(start(setup_run(folder)))
    return folder / "out"


def test_sigkill_mid_retrain_then_resume_equals_uninterrupted(tmp_path, reference):
    argv = setup_run(tmp_path)
    out = tmp_path / "out"
    state = out / "retrain_ckpt" / "state.pt"
    proc = start(argv, UNITUNE_TEST_STEP_DELAY="0.1")  # >= 0.9 s an epoch: room to land the kill mid-training
    deadline = time.time() + 240
    try:
        while not state.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(state, map_location="cpu", weights_only=True)
    assert 1 <= saved["epoch"] < EPOCHS  # killed mid-training, after a finished epoch
    assert not (out / "export").exists() and not (out / "retrain_result.json").exists()
    done_epochs = log(out)
    assert [r["epoch"] for r in done_epochs] == list(range(saved["epoch"]))

    # The same command again, continuing the checkpoint.
    finish(start([*argv, "--resume"]))
    ref_weights, weights = load_file(reference / "export" / "model.safetensors"), load_file(out / "export" / "model.safetensors")
    assert ref_weights.keys() == weights.keys()
    assert all(torch.equal(ref_weights[k], weights[k]) for k in ref_weights)  # bit for bit
    assert export_identity(out / "export") == export_identity(reference / "export")
    # No finished epoch was lost or redone: the log is the uninterrupted run's, line for line.
    assert log(out) == log(reference)
    assert log(out)[: len(done_epochs)] == done_epochs
    result, ref_result = (json.loads((d / "retrain_result.json").read_text()) for d in (out, reference))
    assert result["test_accuracy"] == ref_result["test_accuracy"] and result["params"] == ref_result["params"]
    assert leftovers(out) == []


def resume_folder(tmp_path: Path, reference: Path, name: str, with_export: bool) -> tuple[list[str], Path]:
    """A run folder whose retrain finished training (the reference's last checkpoint), with or
    without the export the reference wrote."""
    argv = setup_run(tmp_path / name)
    out = tmp_path / name / "out"
    out.mkdir()
    shutil.copytree(reference / "retrain_ckpt", out / "retrain_ckpt")
    shutil.copy2(reference / "retrain_log.jsonl", out / "retrain_log.jsonl")
    if with_export:
        shutil.copytree(reference / "export", out / "export")
    return [*argv, "--resume"], out


def test_sigkill_during_export_never_leaves_a_half_export(tmp_path, reference):
    """Killed while the export folder is written: the previous export stays as it was, or (killed
    between moving the old one aside and the new one in) no export exists; never a half one.
    Running the command again completes the export and clears what the killed writer left."""
    cases = {  # name: (previous export?, where the process dies)
        "fresh": (False, "export-weights"),
        "replace": (True, "export-weights"),
        "swap": (True, "export-swap"),
    }
    runs = {name: resume_folder(tmp_path, reference, name, previous) for name, (previous, _) in cases.items()}
    before = {name: tree(out / "export") for name, (_, out) in runs.items() if cases[name][0]}
    killed = {name: start(argv, UNITUNE_TEST_DIE_AT=cases[name][1]) for name, (argv, _) in runs.items()}
    for proc in killed.values():
        finish(proc, code=-signal.SIGKILL)

    fresh, replace, swap = (runs[n][1] for n in ("fresh", "replace", "swap"))
    assert not (fresh / "export").exists()  # nothing published ...
    assert [n for n in leftovers(fresh) if n.endswith(".tmp")]  # ... though a half export was on disk
    assert tree(replace / "export") == before["replace"]  # the previous export, untouched
    assert not (swap / "export").exists()  # between the two renames: no export at all
    assert [n for n in leftovers(swap) if n.endswith(".old")]

    again = [start(argv) for argv, _ in runs.values()]
    for proc in again:
        finish(proc)
    expected = export_identity(reference / "export")
    for name, (_, out) in runs.items():
        assert sorted(p.name for p in (out / "export").iterdir()) == ["model.safetensors", "unitune.json"]
        assert export_identity(out / "export") == expected, name
        assert leftovers(out) == [], (name, leftovers(out))
        assert (out / "retrain_result.json").is_file()


# ---- what killed writers leave -------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "best_subnet.yaml"
    host = socket.gethostname()
    dead = tmp_path / f".best_subnet.yaml.{host}-{dead_pid()}.abcd1234.tmp"
    alive = tmp_path / f".best_subnet.yaml.{host}-{os.getpid()}.efgh5678.tmp"  # a writer still at work
    elsewhere = tmp_path / f".best_subnet.yaml.other-host-{dead_pid()}.ijkl9012.tmp"  # cannot be judged here
    other_file = tmp_path / f".plot.png.{host}-{dead_pid()}.mnop3456.tmp"  # another target's
    for p in (dead, alive, elsewhere, other_file):
        p.write_text("half")
    assert stale_temps(target) == [dead]
    write_text_atomic(target, "subnet: {}\n")
    assert target.read_text() == "subnet: {}\n"
    assert not dead.exists() and alive.exists() and elsewhere.exists() and other_file.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [target.name, alive.name, elsewhere.name, other_file.name])


def test_atomic_files_get_ordinary_permissions(tmp_path):
    """mkstemp makes its file private (0600); a published result must be readable like any file."""
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "result.json") as tmp:
            assert tmp.name.startswith(f".result.json.{socket.gethostname()}-{os.getpid()}.")
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o644
