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
