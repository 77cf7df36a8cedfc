"""The cheapest benchmark scripts run end to end with tiny settings and report sane figures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


def test_weight_sharing_runs_and_counts_the_subnets(capsys):
    import bench_weight_sharing
    from common import build_vit, space_for
    from unitune.supernet import BackboneDims, Subnet, count_params

    results = bench_weight_sharing.main(["--quick", "--repeats", "2", "--batch", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert set(results) == {"largest", "random in budget"}
    vit, _, _ = build_vit("tiny")
    dims, space = BackboneDims.from_model(vit), space_for("tiny")
    assert results["largest"]["params"] == count_params(Subnet.largest(space, dims.depth), dims, space).total
    # the random subnet was repaired into half the largest count
    assert 0 < results["random in budget"]["params"] <= results["largest"]["params"] // 2
    for r in results.values():
        assert r["supernet_ms"] > 0 and r["static_ms"] > 0 and r["ratio"] > 0
    assert "supernet / static step, largest subnet =" in out


def test_trial_runs_on_a_random_tiny_supernet(tmp_path, capsys):
    import bench_trial

    results = bench_trial.main(["--backbone", "tiny", "--images", "20", "--subnets", "1", "--repeats", "1",
                                "--trials", "3", "--studies", "1", "--workdir", str(tmp_path), "--device", "cpu"])
    out = capsys.readouterr().out
    ev, opt = results["evaluation"], results["optuna"]
    assert set(ev["ms_per_subnet"]) == {"trial", "plain forward", "static evaluate"}
    assert all(v > 0 for v in ev["ms_per_subnet"].values())
    assert set(opt) == {"in-memory", "journal", "sqlite"}
    assert all(r["eval_ms"] > 0 and r["overhead_ms"] > 0 for r in opt.values())
    assert "20 val images" in out


# ---- benchmarks/gpu_check.py (issue 13): the GPU script's every section, dry-run on the CPU ----

GPU_CHECK_SECTIONS = {"env", "train", "inference", "search", "retrain_vit", "demo", "retrain_demo"}


def _gpu_check(out, work, *extra):
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--tiny", "--threads", "1",
                           "--out", str(out), "--workdir", str(work), *extra],
                          capture_output=True, text=True, env=env, timeout=600)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_gpu_check_dry_run_writes_every_section(tmp_path):
    import json

    from common import build_vit, space_for
    from unitune.supernet import BackboneDims, SearchSpace, Subnet, count_params

    out = tmp_path / "out"
    proc = _gpu_check(out, tmp_path / "work")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    sections = report["sections"]
    assert set(sections) == GPU_CHECK_SECTIONS
    assert {n: r["status"] for n, r in sections.items()} == {n: "ok" for n in GPU_CHECK_SECTIONS}
    assert all(_positive(r["seconds"]) for r in sections.values())
    assert report["meta"]["mode"] == "CPU/tiny dry run: not GPU figures"

    env = sections["env"]["figures"]
    assert env["device_auto"] == "cpu" and env["gloo_one_rank_all_reduce"] is True
    assert env["peft"] is not None or "peft" in env["peft_skip_reason"]

    # Training: every variant timed, trainable counts as the parameter formulas give them.
    train = sections["train"]["figures"]
    variants = train["variants"]
    assert set(variants) == {"supernet (largest subnet)", "supernet + unitune's per-step checks",
                             "supernet + three syncs a step (before StepChecks)", "materialised (largest subnet)", "unitune LoRA r=8 qkv", "HF PEFT LoRA r=8 qkv",
                             "full fine-tuning"}
    vit, _, _ = build_vit("tiny", num_classes=100)
    dims, space = BackboneDims.from_model(vit), space_for("tiny")
    largest = count_params(Subnet.largest(space, dims.depth), dims, space).with_head
    lora = count_params(Subnet.uniform(dims.depth, lora=8), dims, SearchSpace(lora=(0, 8))).with_head
    assert lora == 4 * 64 * 8 * 4 + (64 * 100 + 100)  # 4·d·r per block, plus the head
    assert variants["supernet (largest subnet)"]["trainable"] == largest
    assert variants["materialised (largest subnet)"]["trainable"] == largest
    assert variants["unitune LoRA r=8 qkv"]["trainable"] == lora
    assert variants["full fine-tuning"]["trainable"] == sum(p.numel() for p in vit.parameters())
    peft_row = variants["HF PEFT LoRA r=8 qkv"]
    if "skipped" in peft_row:  # peft is optional: then the reason is recorded, and no ratio
        assert "peft" in peft_row["skipped"] and train["unitune_lora_over_peft_img_s"] is None
    else:  # the same LoRA: the same trainable count, the same logits from the same weights
        assert peft_row["trainable"] == lora and peft_row["max_logit_diff_vs_unitune_fp32"] < 1e-4
        assert _positive(train["unitune_lora_over_peft_img_s"])
    for name, v in variants.items():
        if "skipped" not in v:
            assert _positive(v["step_ms"]) and _positive(v["images_per_s"]), name
            assert abs(v["images_per_s"] - train["batch"] * 1000 / v["step_ms"]) < 1e-6 * v["images_per_s"]
            assert v["peak_mib"] is None  # GPU memory only; the CPU has no allocator statistics
    assert variants["materialised (largest subnet)"]["materialize_kept_device"] is True
    assert train["timed_steps_per_variant"] == 4
    assert _positive(train["supernet_over_static"]) and _positive(train["supernet_checks_over_supernet"])
    assert _positive(train["supernet_per_step_syncs_over_supernet"])

    inference = sections["inference"]["figures"]
    assert inference["export_from_device_model"] == "ok" and inference["plain_timm"] is True
    assert inference["same_modules_and_shapes_as_backbone"] is True
    assert inference["max_logit_diff_export_vs_unmerged_fp32"] < 1e-4
    for mode in ("fp32", "bf16"):
        assert _positive(inference[mode]["merged_over_backbone"]) and _positive(inference[mode]["backbone_ms"])

    search = sections["search"]["figures"]
    assert search["trials"] == 4 and search["val_images"] == 20
    assert _positive(search["trials_per_s"]) and 0 <= search["best_val_accuracy"] <= 1
    assert abs(search["trials_per_s"] - search["trials"] / search["trials_span_s"]) < 1e-9

    for name in ("retrain_vit", "retrain_demo"):
        r = sections[name]["figures"]
        assert r["init"] == "supernet" and r["export_matches_retrain"] is True, name
        assert 0 <= r["test_accuracy"] <= 1 and r["test_images"] > 0
    demo = sections["demo"]["figures"]
    assert demo["search_trials"] == 2 and set(demo["stage_seconds"]) >= {"pretrain", "supernet", "search", "retrain"}
    assert _positive(demo["supernet_last_epoch_images_per_s"])
    # the demo's own retrain and the --init supernet retrain train the same searched subnet
    assert sections["retrain_demo"]["figures"]["trainable_params"] == demo["trainable_params"]

    targets = report["targets"]
    assert targets["supernet step / static step (<= 1.10)"]["value"] == train["supernet_over_static"]
    merged_fp32 = targets["merged export / timm backbone, fp32 (<= 1.02)"]["value"]
    assert merged_fp32 == inference["fp32"]["merged_over_backbone"]

    md = (out / "results.md").read_text()
    assert "CPU/tiny dry run" in md and "they say nothing about the GPU" in md
    for name in GPU_CHECK_SECTIONS:
        assert f"| {name} | ok |" in md
    assert "| HF PEFT LoRA r=8 qkv |" in md and "| supernet_over_static |" in md


def test_gpu_check_records_a_failed_section_and_goes_on(tmp_path):
    """Each section in its own process (the GPU default): a section that fails is recorded with
    its message, the next one still runs, and the exit status says something failed."""
    import json

    out = tmp_path / "out"
    proc = _gpu_check(out, tmp_path / "empty", "--isolate", "--sections", "retrain_demo,inference")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    failed, ok = report["sections"]["retrain_demo"], report["sections"]["inference"]
    assert failed["status"] == "error"
    assert failed["error"].startswith("FileNotFoundError: needs the earlier section's run: missing")
    assert str(tmp_path / "empty" / "demo" / "best_subnet.yaml") in failed["error"]
    assert ok["status"] == "ok" and ok["figures"]["plain_timm"] is True
    assert report["meta"]["isolated_sections"] is True
    assert not list(out.glob(".section-*"))  # the children's hand-over files are gone
    md = (out / "results.md").read_text()
    assert "| retrain_demo | error |" in md and "needs the earlier section's run" in md
    assert "[gpu_check] retrain_demo: error" in proc.stdout


# ---- benchmarks/bench_sampler_val.py (issue 15): the samplers compared on a fresh val set ----

def _sampler_val_folder(root: Path, task: str, sizes=(16, 8, 16)) -> Path:
    """A finished-compare-shaped folder: the task's config, a search pick and a LoRA row."""
    import yaml

    from unitune.supernet import Subnet

    folder = root / "tasks" / task
    cfg = {"name": f"tiny-{task}", "device": "cpu",
           "model": {"backbone": "vit_tiny_patch16_224", "pretrained": False,
                     "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4}},
           "data": {"source": "minivtab", "task": task, "image_size": 32, "batch_size": 8, "num_workers": 0,
                    "split_sizes": list(sizes)},
           "space": {"lora": [0, 1, 2], "ssf": [0, 1]},
           "retrain": {"epochs": 1, "lr": 0.003, "warmup_epochs": 0}}
    (folder / "search").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    Subnet.from_dict({"subnet": {"lora": [1, 0, 2, 0], "ssf": [0, 1, 0, 0], "ssf_global": 0}}).save(
        folder / "search" / "best_subnet.yaml")
    (folder / "lora" / "seed0").mkdir(parents=True)
    Subnet.uniform(4, lora=2).save(folder / "lora" / "seed0" / "subnet.yaml")
    return root


def test_sampler_val_never_builds_test_and_scores_only_fresh_val(tmp_path, capsys, monkeypatch):
    import json

    import bench_sampler_val as bsv
    from unitune.data.minivtab import MiniVtabDataset

    runs = _sampler_val_folder(tmp_path / "uniform", "count")
    built, loaded = [], []
    real_init, real_load = MiniVtabDataset.__init__, MiniVtabDataset.load

    def init(self, task, split, *args, **kwargs):
        built.append(split)
        real_init(self, task, split, *args, **kwargs)

    def load(self, index):
        loaded.append(self.items[index])
        return real_load(self, index)

    # the guard wraps the spy: a test split would be recorded, then refused
    monkeypatch.setattr(MiniVtabDataset, "__init__", init)
    monkeypatch.setattr(MiniVtabDataset, "load", load)
    assert bsv.main(["--runs", f"uniform={runs}", "--singles", "lora", "--seeds", "0", "--fresh", "8",
                     "--workdir", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    assert "test" not in built and "trainval" not in built
    assert {s for s, _ in loaded} == {"train", "val"}
    # the val items read are the fresh ones only (k = 8..15), each once per cell (two cells)
    val = sorted(k for s, k in loaded if s == "val")
    assert val == sorted(list(range(8, 16)) * 2)
    assert sorted({k for s, k in loaded if s == "train"}) == list(range(16))
    for row in ("uniform", "lora"):
        cell = json.loads((tmp_path / "work" / "cells" / "count" / f"{row}-seed0.json").read_text())
        assert cell["fresh_val_images"] == 8 and 0.0 <= cell["fresh_val_accuracy"] <= 1.0
        assert round(8 * cell["fresh_val_accuracy"], 6).is_integer()
    assert "| count | 8 | 0 | 8 | 8 |" in out


def test_sampler_val_guard_refuses_the_test_split():
    import bench_sampler_val as bsv
    from unitune.data import DataConfig, build_dataset

    cfg = DataConfig.from_dict({"source": "minivtab", "task": "count", "split_sizes": [4, 4, 4]})
    with bsv.forbid_splits():
        assert len(build_dataset(cfg, "val")) == 4
        for split in ("test", "trainval"):
            with pytest.raises(RuntimeError, match=f"the '{split}' split of 'count' is off limits"):
                build_dataset(cfg, split)
    assert len(build_dataset(cfg, "test")) == 4  # and only inside the guard


def test_sampler_val_drops_digit_scans_and_terrain_tiles_the_search_saw(monkeypatch):
    import numpy as np

    import bench_sampler_val as bsv
    import unitune.data.minivtab as mv
    from unitune.data import DataConfig, build_dataset
    from unitune.data.minivtab import _digit_index, _digit_pools

    class Run:
        def __init__(self, task):
            self.data = DataConfig.from_dict({"source": "minivtab", "task": task})

    # digits: the val pool (359 scans) cycles; items 200.. reuse the first 200's scans from 359 on
    keep, info = bsv.fresh_items(Run("digits"), 400)
    pool = len(_digit_pools()[2]["val"])
    seen = {_digit_index("val", k) for k in range(200)}
    assert info["reused"] + info["kept"] == 400 and info["kept"] == len(keep)
    assert not {_digit_index("val", k) for k in keep} & seen
    assert info["distinct_sources"] == pool - 200  # every scan the first 200 did not use, no other
    assert keep[:pool - 200] == list(range(200, pool))

    # terrain: the origin the script computes is the one the renderer draws
    dem, tiles = mv._dem()
    drawn = []

    class Spy(np.ndarray):
        def __getitem__(self, i):
            if self.ndim == 2 and isinstance(i, (int, np.integer)):
                drawn.append(tuple(int(v) for v in np.asarray(self).__getitem__(i)))
            return super().__getitem__(i)

    spied = {s: [c.view(Spy) for c in cs] for s, cs in tiles.items()}
    monkeypatch.setattr(mv, "_dem", lambda: (dem, spied))
    ds = build_dataset(DataConfig.from_dict({"source": "minivtab", "task": "terrain", "split_sizes": [1, 6, 1]}), "val")
    for k in range(6):
        drawn.clear()
        ds.load(k)
        assert drawn[0] == bsv._terrain_origin(ds.seed, k, k % 4)
    monkeypatch.undo()
    keep, info = bsv.fresh_items(Run("terrain"), 400)
    origins = {bsv._terrain_origin(0, k, k % 4) for k in range(200)}
    assert all(bsv._terrain_origin(0, k, k % 4) not in origins for k in keep)
    assert info["reused"] == 400 - len(keep) > 0 and 0 < info["area_overlap"] <= 1

# ---- benchmarks/bench_pruning.py --suite (issue 15): pruning and the routes on a compare run ----


def _tiny_suite(root: Path, task: str) -> Path:
    """A `unitune compare` run folder as bench_pruning reads it: one task's config (tiny ViT,
    minivtab at tiny split sizes) and a supernet file with random non-zero PEFT weights in its
    search stage, with that stage's record."""
    import json

    import torch

    from tiny import TINY
    from unitune.engine.config import load_run_config
    from unitune.data import build_dataset, resolve_data_config
    from unitune.io import write_json_atomic, write_yaml_atomic
    from unitune.supernet.store import save_supernet
    from unitune.engine.context import SUPERNET_FILE
    from unitune.engine.supernet_train import build_model

    folder = root / "tasks" / task
    cfg = {"name": f"tiny-{task}", "device": "cpu",
           "model": {"backbone": "vit_tiny_patch16_224", "kwargs": TINY},
           "data": {"source": "minivtab", "task": task, "image_size": 32, "batch_size": 8, "num_workers": 0,
                    "split_sizes": [16, 12, 4]},
           "space": {"lora": [0, 1, 4], "adapter": [0, 1], "vpt": [0, 1], "ssf": [0, 1], "ssf_global": [0, 1]},
           "supernet": {"epochs": 3},  # not trained here: the route counts its images
           "retrain": {"epochs": 2, "lr": 0.003, "warmup_epochs": 0},
           "search": {"budget": "2k", "trials": 6, "sampler": "tpe"}}
    write_yaml_atomic(folder / "config.yaml", cfg)
    run = load_run_config(folder / "config.yaml")
    torch.manual_seed(0)
    classes = build_dataset(run.data, "train", None).num_classes
    model = build_model(run, classes, torch.device("cpu"))
    with torch.no_grad():
        for _, p in model.peft_named_parameters():
            p.add_(torch.randn_like(p) * 0.02)
    meta = {"backbone": "vit_tiny_patch16_224", "model": run.section("model"), "num_classes": classes,
            "data_config": json.loads(json.dumps(resolve_data_config(model.vit))), "data": run.section("data"),
            "supernet": {}, "epochs_trained": 0}
    save_supernet(folder / "search" / SUPERNET_FILE, model, meta)
    write_json_atomic(folder / "search" / "search_result.json", {"supernet_seconds": 12.5, "trials": 6})
    write_json_atomic(root / "compare.json", {"tasks": [task]})
    return root


def test_pruning_suite_mode_measures_a_task_and_leaves_the_suite_alone(tmp_path, capsys, monkeypatch):
    import bench_pruning
    from unitune.data.minivtab import MiniVtabDataset

    suite = _tiny_suite(tmp_path / "suite", "count")
    before = {p: p.stat().st_mtime_ns for p in suite.rglob("*")}
    splits: set[str] = set()
    real_load = MiniVtabDataset.load

    def load(self, index):  # every image the benchmark renders, by split
        splits.add(self.items[index][0])
        return real_load(self, index)

    monkeypatch.setattr(MiniVtabDataset, "load", load)
    bench_pruning.main(["--suite", str(suite), "--scratch", str(tmp_path / "scratch"), "--seeds", "0",
                        "--trials", "6", "--standalone-trials", "4", "--epochs", "2", "--top-k", "1",
                        "--device", "cpu", "--threads", "1"])
    out = capsys.readouterr().out

    assert splits == {"train", "val"}  # never the test split
    assert {p: p.stat().st_mtime_ns for p in suite.rglob("*")} == before  # nothing written into the suite
    assert (tmp_path / "scratch" / "count" / "supernet.safetensors").is_file()
    assert "supernet training 12.5 s" in out and "val set 12 images" in out
    assert "train 16 / val 12 images" in out
    # one summary row per table for the task, from the runs above it
    rows = [line for line in out.splitlines() if line.startswith("| count |")]
    assert len(rows) == 2, out
    part1, part2 = (line.split(" | ") for line in rows)
    assert part1[3] in {"0/1", "1/1"} and part1[6] in {"0/1", "1/1"}  # sha, hyperband: reached none's best
    # the supernet route: supernet training (3 epochs x 16) + (top-1 and the single methods) x 2 epochs x 16
    n_candidates = int(out.split("stand-alone check of ")[1].split(" ")[0])
    assert n_candidates >= 2  # the top trial and at least one single method
    assert part2[4].split(" / ")[0] == str(3 * 16 + n_candidates * 2 * 16)
    assert "(+ 12)" in part2[5]
    sa_train = int(part2[8].split(" / ")[0])
    assert sa_train % 16 == 0 and 4 * 16 <= sa_train <= 4 * 2 * 16  # each trial: one or two epochs
    assert -1 <= float(part2[11].rstrip(" |")) <= 1


def test_compare_cells_table_reports_finished_cells_by_hand(tmp_path, capsys, monkeypatch):
    """A partial run's table: mean and sample std over the seeds that finished, n said, no spread for one seed."""
    import json

    import compare_cells_table

    (tmp_path / "compare.json").write_text(json.dumps({"tasks": ["a", "b"], "methods": ["linear", "lora"],
                                                       "seeds": [0, 1, 2]}))
    cells = [("a", "lora", 0, 0.80, 10.0), ("a", "lora", 1, 0.90, 20.0), ("a", "linear", 0, 0.5, 4.0),
             ("b", "linear", 2, 0.25, 6.0)]
    for task, method, seed, acc, cpu in cells:
        (tmp_path / "cells" / task).mkdir(parents=True, exist_ok=True)
        (tmp_path / "cells" / task / f"{method}-seed{seed}.json").write_text(json.dumps(
            {"task": task, "method": method, "seed": seed, "test_accuracy": acc, "cpu_seconds": cpu, "params": 7}))
    monkeypatch.setattr(sys, "argv", ["compare_cells_table.py", str(tmp_path)])
    compare_cells_table.main()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{tmp_path}: 4 of 12 cells finished; 40 CPU-s in cells"
    # std of (80, 90) = 7.07; linear before lora (the run's method order)
    assert out[3:] == ["| a | linear | 7 | 50.0 (n=1) | 4 |", "| a | lora | 7 | 85.0 ± 7.1 (n=2) | 15 |",
                       "| b | linear | 7 | 25.0 (n=1) | 6 |"]
