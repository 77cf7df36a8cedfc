"""The README's main command, as shipped: `configs/demo.yaml` end to end, offline.

Its numbers must mean something: the backbone was trained on digits 0-4 only, the target task is
digits 5-9 (chance 0.2). After supernet training the largest and the smallest subnet (here the
smallest is a linear probe) both beat chance clearly on val, and the retrained searched subnet
does on test; `unitune evaluate` reproduces the recorded test accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

from unitune.commands.cli import main
from unitune.engine.config import load_run_config
from unitune.commands.pipeline import run_all

DEMO = Path(__file__).parent.parent / "configs" / "demo.yaml"
CHANCE = 1 / 5


def test_demo_end_to_end(tmp_path, capsys):
    run = load_run_config(DEMO)
    summary = run_all(run, tmp_path, progress=False)

    source = [json.loads(line) for line in (tmp_path / "pretrain" / "log.jsonl").read_text().splitlines()]
    assert source[-1]["val_acc"] > 0.8  # the source task was learned

    log = [json.loads(line) for line in (tmp_path / "supernet_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(run.supernet.epochs))
    last = log[-1]
    # The smallest subnet of the demo's space is a linear probe on the source-task features.
    assert last["val_acc_largest"] > 2.5 * CHANCE and last["val_acc_smallest"] > 1.5 * CHANCE
    assert last["loss"] < log[0]["loss"]

    assert summary["trainable_params"] <= summary["budget"]
    assert summary["search_best_val_accuracy"] > 2.5 * CHANCE
    assert summary["test_accuracy"] > 2.5 * CHANCE

    # "best" told one way; a low tau is explained for this run (the pick was the re-rank's)
    from unitune.commands.pipeline import format_summary
    from unitune.search.rerank import LOW_TAU

    text = format_summary(summary)
    assert f"pick                   trial {summary['search_best_trial']} (" in text
    assert f"(trial {summary['search_best_val_trial']}, the dashboard's star)" in text
    if summary["search_reranked"] and (summary["rerank_tau"] is None or summary["rerank_tau"] < LOW_TAU):
        assert f"so it did not decide the pick: trial {summary['search_best_trial']} was taken by its stand-alone val" \
            in text
    assert summary["artefacts"]["trial table"] == str(tmp_path / "trials.csv")

    assert main(["evaluate", str(tmp_path / "export"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == summary["test_accuracy"]
