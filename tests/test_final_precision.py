"""The test split is scored in the precision the export is evaluated in (issue 13).

On CUDA, training runs under bf16 autocast (``amp``). Retrain used to score the test set under
it too, while ``evaluate_export`` scores the merged export in fp32; ``unitune run`` requires the
two accuracies to be equal, so one prediction flipped by bf16 rounding aborted the run at its
very end. CPU bf16 autocast stands in for CUDA's here (unitune's own autocast is CUDA-only).
"""

from __future__ import annotations

import contextlib
import json

import torch

import unitune.engine.supernet_train as supernet_train
import unitune.engine.train as train
from unitune.engine.config import load_run_config
from unitune.commands.pipeline import run_all
from unitune.retrain.evaluate import evaluate_export

from test_pipeline import write_config


def cpu_bf16_autocast(device, enabled):
    """unitune.engine.train.autocast with the CPU standing in for CUDA."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def test_run_with_bf16_training_scores_the_test_set_like_the_export(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "autocast", cpu_bf16_autocast)
    monkeypatch.setattr(supernet_train, "autocast", cpu_bf16_autocast)
    # All ten digits and a learning rate too small to move the random-init head: many classes
    # with close logits, so bf16 rounding flips predictions (before the fix the run aborted:
    # "the export scores 0.0944 on test, but retrain recorded 0.0972").
    config = write_config(tmp_path, data={"source": "digits", "batch_size": 64, "num_workers": 0},
                          search={"budget": "1.5k", "trials": 2, "sampler": "tpe"},
                          supernet={"epochs": 1, "lr": 1e-5}, retrain={"epochs": 1, "lr": 1e-5})
    run = load_run_config(config)
    cfg = json.loads(json.dumps(run.raw))
    del cfg["pretrain"]
    config.write_text(json.dumps(cfg))
    run = load_run_config(config)
    assert run.retrain.amp and run.supernet.amp
    summary = run_all(run, tmp_path / "out", progress=False)  # raised UniTuneError before the fix
    again = evaluate_export(tmp_path / "out" / "export", out=tmp_path / "eval")
    assert again["accuracy"] == summary["test_accuracy"]
    result = json.loads((tmp_path / "out" / "retrain_result.json").read_text())
    assert result["test_precision"] == "float32"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["precision"] == "float32"


def test_fp32_evaluation_turns_tf32_off_and_restores_it():
    """cuDNN allows TF32 convolutions by default: an fp32 score on CUDA would round the patch
    embedding differently in the retrained model (conv, then global SSF) and in the export (SSF
    folded into the conv). The flags are plain settings, readable without a GPU."""
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return torch.zeros(x.shape[0], 2)

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        batches = [(torch.zeros(3, 1), torch.tensor([0, 1, 0]))]
        result = train.evaluate(Probe(), batches, torch.device("cpu"), 2)
        assert seen == [(False, False)] and result["accuracy"] == 2 / 3
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
