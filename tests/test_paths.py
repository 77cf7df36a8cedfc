"""Issue 20: nothing written outside the output folder, refusals before work, unreadable inputs.

The single-command cases are rows of tests/test_bad_input.py; here are those the table cannot
hold: ``unitune compare`` (its own checks and folder layout), and files or folders the user may
not read (a permission, which root does not have: as root the command runs with the effective
user id of ``nobody``, the way a user without the permission runs it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from test_bad_input import CONFIG, snapshot
from unitune.commands.cli import main

REPO = Path(__file__).resolve().parents[1]
MINIVTAB = REPO / "configs" / "minivtab.yaml"
NOBODY = 65534


def one_line_error(capsys, code: int) -> str:
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("unitune: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ---- unitune compare ------------------------------------------------------------------------------


def compare(*args: str) -> int:
    return main(["compare", "--config", str(MINIVTAB), "--quick", "--quiet", "--seeds", "0", *args])


def test_compare_task_that_is_a_path_is_refused_before_writing(tmp_path, capsys, monkeypatch):
    """``--tasks ../../x/task`` made cells in ``OUT/cells/../../x/task``: outside ``--out``."""
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    err = one_line_error(capsys, compare("--out", str(tmp_path / "run"), "--tasks", "../../x/count",
                                         "--methods", "linear"))
    assert "data (task '../../x/count').task: expected a plain name" in err, err
    assert snapshot(tmp_path) == before and not (tmp_path.parent / "x").exists()


def test_compare_name_that_is_a_path_is_refused_before_writing(tmp_path, capsys, monkeypatch):
    """Without ``--out`` the folder is ``runs/<name>``; ``name: ../../x`` put it beside ``runs/``'s parent."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(MINIVTAB.read_text().replace("name: minivtab", "name: ../../x"))
    before = snapshot(tmp_path)
    err = one_line_error(capsys, main(["compare", "--config", str(config), "--quick", "--quiet", "--tasks", "count",
                                       "--methods", "linear", "--seeds", "0"]))
    assert f"{config}: name: expected a plain name" in err and "'../../x'" in err, err
    assert snapshot(tmp_path) == before and not (tmp_path.parent / "x").exists()


def test_compare_link_out_of_its_folder_is_refused(tmp_path, capsys):
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "tasks").mkdir(parents=True)
    (out / "tasks" / "count").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(tmp_path)
    err = one_line_error(capsys, compare("--out", str(out), "--tasks", "count", "--methods", "linear"))
    assert f"{out}/tasks/count: leads to {elsewhere}, outside the output folder {out}" in err, err
    assert snapshot(tmp_path) == before


def test_compare_rmsnorm_vit_with_ssf_is_refused_before_the_pretraining(tmp_path, capsys):
    """minivtab pretrains its backbone first: the SSF rows' misfit was found only after it."""
    out = tmp_path / "run"
    err = one_line_error(capsys, compare("--out", str(out), "--tasks", "count", "--methods", "lora,ssf",
                                         "model.kwargs.norm_layer=rmsnorm"))
    assert "SSF after block 0's norm1 (a RmsNorm) could not be merged" in err, err
    assert not out.exists()


def test_compare_damaged_cell_checkpoint_is_named_before_any_cell_runs(tmp_path, capsys):
    """With ``--jobs 2`` the other cells ran (and wrote) beside the one that failed."""
    out = tmp_path / "run"
    ckpt = out / "tasks" / "count" / "lora" / "seed0" / "retrain_ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(b"not a checkpoint")
    before = snapshot(tmp_path)
    err = one_line_error(capsys, compare("--out", str(out), "--tasks", "count", "--methods", "linear,lora",
                                         "--jobs", "2"))
    assert f"{ckpt}/state.pt: damaged checkpoint" in err, err
    assert snapshot(tmp_path) == before


# ---- files and folders the user may not read ------------------------------------------------------


@contextlib.contextmanager
def as_user_without(path: Path):
    """``path`` made unreadable (mode 000) for the command: run as ``nobody`` when we are root
    (root reads anything). The folder holding it must be traversable by that user."""
    mode = path.stat().st_mode
    os.chmod(path, 0)
    if os.geteuid() == 0:
        # The command imports its stage modules lazily; the interpreter's own library may be in a
        # folder only root reads, so they are imported now.
        import unitune.commands.pipeline  # noqa: F401
        import unitune.engine.supernet_train  # noqa: F401

        os.setegid(NOBODY)
        os.seteuid(NOBODY)
    try:
        yield
    finally:
        if os.geteuid() != os.getuid():
            os.seteuid(0)
            os.setegid(0)
        os.chmod(path, mode)


@pytest.fixture
def shared_dir():
    """A folder outside pytest's (root-only) tmp folder that another user can traverse."""
    folder = Path(tempfile.mkdtemp(prefix="unitune-perm-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def imagefolder_config(root: Path) -> Path:
    for split in ("train", "val", "test"):
        for i, cls in enumerate("ab"):
            folder = root / "folder" / split / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (16, 16), (10 + 100 * i, 0, 0)).save(folder / "0.png")
    for p in [root / "folder", *(root / "folder").rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "data": {"source": "imagefolder", "root": str(root / "folder"),
                                                         "batch_size": 2, "num_workers": 0}}))
    os.chmod(config, 0o644)
    return config


@pytest.mark.parametrize("unreadable, message", [
    ("config.yaml", "{root}/config.yaml: cannot read (permission denied)"),
    ("folder", "data.root: '{root}/folder': cannot list folder (Permission denied)"),
    ("folder/train", "{root}/folder/train: cannot list folder (Permission denied)"),
    ("folder/val", "{root}/folder/val: cannot list folder (Permission denied)"),
])
def test_unreadable_config_or_data_folder_is_one_line(shared_dir, capsys, unreadable, message):
    config = imagefolder_config(shared_dir)
    out = shared_dir / "out"
    before = snapshot(shared_dir)
    with as_user_without(shared_dir / unreadable):
        code = main(["supernet", "--config", str(config), "--out", str(out), "--quiet"])
    err = one_line_error(capsys, code)
    assert message.format(root=shared_dir) in err, err
    assert snapshot(shared_dir) == before
