"""``unitune tune`` (search/tune.py): the learning rate, weight decay and per-family multipliers
tuned stand-alone on train and judged on val, the pick written as a subnet file whose
``meta.recipe`` retrain applies.

Checked against the study itself (read back from its storage, a second reading of what the
stage chose), never against a seeded sampler's trajectory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
import yaml

from tiny import dashboard_note, tiny_minivtab_config

import unitune.data as data_module
import unitune.retrain.train as retrain_train
from unitune.commands.cli import main
from unitune.engine.config import load_run_config
from unitune.errors import UniTuneError
from unitune.search.trial import short_recipe, trial_epochs
from unitune.search.tune import FULL, Selection, TuneRanges, families_of, load_candidates, tune, tune_line
from unitune.engine.context import RunContext
from unitune.supernet import Subnet


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture
def folder(tmp_path) -> Path:
    """configs/minivtab.yaml's tiny ViT (random init) on 48 train / 16 val images, and two
    candidate subnets: LoRA + VPT (two families) and LoRA alone."""
    tiny_minivtab_config(tmp_path)
    Subnet.uniform(4, lora=4, vpt=4).save(tmp_path / "mix.yaml")
    Subnet.uniform(4, lora=4).save(tmp_path / "lora.yaml")
    return tmp_path


def run_tune(folder: Path, trials: int = 4, epochs: int = 2, **kwargs):
    run = load_run_config(folder / "config.yaml")
    ctx = RunContext.of(run, folder / "run")
    candidates = load_candidates([str(folder / "mix.yaml"), str(folder / "lora.yaml")], ctx)
    return tune(ctx, candidates, folder / "run", trials=trials, epochs=epochs, **kwargs)


def test_the_pick_is_the_studys_best_trial_and_its_recipe_is_in_the_subnet_file(folder, monkeypatch):
    splits = []
    real = data_module.build_dataset

    def counting(cfg, split, *args, **kwargs):
        splits.append(split)
        return real(cfg, split, *args, **kwargs)

    monkeypatch.setattr(data_module, "build_dataset", counting)
    result = run_tune(folder, trials=5, selection=Selection(splits=0))  # the study's best, as it stands
    assert result["selection"] is None
    assert "test" not in splits and "trainval" not in splits and {"train", "val"} <= set(splits)  # never test

    study = optuna.load_study(study_name=result["study"], storage=f"sqlite:///{folder / 'run/tune/study.db'}")
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 5
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number))
    assert result["trial"] == best.number and result["val_accuracy"] == best.value
    structure = best.params.get("structure", best.user_attrs["structure"])
    want = {"lr": best.params["lr"], "weight_decay": best.params["weight_decay"]}
    mults = {k.split(".", 1)[1]: v for k, v in best.params.items() if k.startswith("lr_mult.")}
    if mults:
        want["lr_mult"] = mults
    assert result["recipe"] == want
    # multipliers exactly where the structure mixes families
    assert bool(mults) == (Path(structure).name == "mix.yaml")
    for t in study.trials:  # LoRA's family's rate is lr; VPT's (the mix's second family) is relative to it
        named = {k for k in t.params if k.startswith("lr_mult.")}
        assert named == ({"lr_mult.prompt"} if Path(t.params["structure"]).name == "mix.yaml" else set())
        assert 1e-4 <= t.params["lr"] <= 1e-1 and 1e-6 <= t.params["weight_decay"] <= 1e-1

    saved = yaml.safe_load(Path(result["subnet_file"]).read_text())
    assert saved["meta"]["recipe"] == want
    assert Subnet.from_dict(saved) == Subnet.load(structure)
    record = json.loads((folder / "run/tune/tune_result.json").read_text())
    assert record["recipe"] == want and len(record["trials"]) == 5


def test_the_pick_is_the_finalist_with_the_best_mean_over_repeated_splits_and_never_reads_test(folder, monkeypatch):
    loads: dict[str, set] = {}
    real = data_module.build_dataset

    def recording(cfg, split, *args, **kwargs):  # which images of which split are read
        dataset = real(cfg, split, *args, **kwargs)
        original = dataset.load

        def load(index):
            loads.setdefault(split, set()).add(index)
            return original(index)

        dataset.load = load
        return dataset

    monkeypatch.setattr(data_module, "build_dataset", recording)
    result = run_tune(folder, trials=5, selection=Selection(finalists=2, splits=2))
    assert set(loads) == {"train", "val"}  # the selection pools train and val; test is never built or read

    study = optuna.load_study(study_name=result["study"], storage=f"sqlite:///{folder / 'run/tune/study.db'}")
    complete = sorted([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE],
                      key=lambda t: (-t.value, t.number))
    stored = study.user_attrs["selection_scores:2-splits:seed0"]  # a second reading: what the study kept
    finalists = [t.number for t in complete[:2]]
    assert sorted(int(k) for k in stored) == sorted(finalists)
    for t in complete[:2]:
        row = stored[str(t.number)]
        assert len(row["scores"]) == 2 and all(0 <= a <= 1 for a in row["scores"])
        assert row["mean"] == pytest.approx(sum(row["scores"]) / 2)
        assert row["se"] == pytest.approx(abs(row["scores"][0] - row["scores"][1]) / 2)  # std(ddof=1)/sqrt(2)
        assert row["study_val_accuracy"] == t.value
    means = [(stored[str(n)]["mean"], -i) for i, n in enumerate(finalists)]
    assert result["trial"] == finalists[max(range(2), key=lambda i: means[i])]
    picked = next(t for t in complete if t.number == result["trial"])
    assert result["recipe"] == picked.user_attrs["recipe"]
    saved = yaml.safe_load(Path(result["subnet_file"]).read_text())["meta"]
    assert saved["recipe"] == result["recipe"] and saved["tune"]["selection"]["mean"] == stored[str(result["trial"])]["mean"]
    assert "mean val accuracy" in tune_line(result) and "over 2 random train/val splits of train+val" in tune_line(result)
    # the cost: every trial's and every selection score's CPU-s, as the study holds them
    assert result["cpu_seconds"] == pytest.approx(sum(t.user_attrs["cpu_seconds"] for t in study.trials)
                                                  + sum(r["cpu_seconds"] for r in stored.values()))
    assert all(t.user_attrs["cpu_seconds"] > 0 for t in study.trials)
    # what optuna-dashboard shows: each trial's structure and recipe, the study's pick and finalists
    for t in study.trials:
        note = dashboard_note(study, t)
        assert f"### {t.user_attrs['structure']}: " in note and f"- **lr** {t.user_attrs['recipe']['lr']:.4g}" in note
    note = dashboard_note(study)
    assert f"- **the pick**: trial {result['trial']}" in note and "the best mean val accuracy of the 2 finalists" in note
    for n in finalists:
        assert f"| {n} | " in note

    # a rerun re-uses the stored scores: no training at all
    monkeypatch.setattr(data_module, "build_dataset", real)
    import unitune.search.rerank as rerank
    monkeypatch.setattr(rerank, "standalone_epochs", lambda *a, **k: pytest.fail("trained again"))
    again = run_tune(folder, trials=5, selection=Selection(finalists=2, splits=2))
    assert again["trial"] == result["trial"] and again["selection"] == result["selection"]
    # another rule on the same study: the trials are re-used (the study's own best, with splits 0)
    plain = run_tune(folder, trials=5, selection=Selection(splits=0))
    assert plain["study"] == result["study"] and plain["trial"] == complete[0].number and plain["selection"] is None


def test_a_selection_score_is_a_trial_trained_on_that_split(folder):
    """A second computation of each stored selection score: the finalist's structure and recipe
    trained stand-alone (:func:`.rerank.standalone_epochs`, the recipe applied here by hand) on the
    same repeated split gives the stored accuracy, as :func:`trial_epochs` (what
    benchmarks/bench_select_fidelity.py re-scores picks with) does; on the data's own split, the
    trial's value."""
    import dataclasses

    from unitune.data import build_dataset, repeated_splits
    from unitune.engine.config import apply_recipe
    from unitune.search.rerank import standalone_epochs

    result = run_tune(folder, trials=4, selection=Selection(finalists=2, splits=2))
    run = load_run_config(folder / "config.yaml")
    assert run.retrain.epochs == 2  # the tune's epochs: its trials' recipe is the retrain's, warm-up and all
    ctx = RunContext.of(run, folder / "run")
    by_label = dict(load_candidates([str(folder / "mix.yaml"), str(folder / "lora.yaml")], ctx))
    train, val = build_dataset(run.data, "train", None), build_dataset(run.data, "val", None)
    splits = repeated_splits([*train.targets, *val.targets], len(val), 2, seed=0)
    for number, row in result["selection"].items():
        trial = next(t for t in result["trials"] if t["number"] == int(number))
        label, recipe = row["structure"], trial["recipe"]
        by_hand = dataclasses.replace(run, retrain=apply_recipe(run.retrain, recipe, label))  # 2 epochs: the study's
        for k, split in enumerate(splits):
            curve = [a for _, a in standalone_epochs(by_hand, folder / "by-hand", by_label[label], 2, split=split)]
            again = [a for _, a in trial_epochs(ctx, by_label[label], recipe, 2, source=label, split=split)]
            assert curve[-1] == row["scores"][k] and again == curve
        own = [a for _, a in trial_epochs(ctx, by_label[label], recipe, 2, source=label)]
        assert own[-1] == trial["value"] == row["study_val_accuracy"]
    with pytest.raises(UniTuneError, match="mix.yaml"):  # a bad recipe is named before any training
        trial_epochs(ctx, by_label[str(folder / "mix.yaml")], {"lr": -1.0}, 2, source=str(folder / "mix.yaml"))


def test_repeated_splits_partition_train_and_val_pooled_with_vals_size():
    from unitune.data import repeated_splits

    targets = [i % 4 for i in range(40)]
    splits = repeated_splits(targets, 12, 3, seed=0)
    assert len(splits) == 3 and len({tuple(v) for _, v in splits}) == 3  # three different draws
    for train, val in splits:
        assert len(val) == 12 and sorted(train + val) == list(range(40))
        assert sorted(targets[i] for i in val) == sorted([0, 1, 2, 3] * 3)  # stratified: 3 of each class
    assert splits == repeated_splits(targets, 12, 3, seed=0)  # a pure function of the seed
    with pytest.raises(ValueError, match="n_val 40 of 40"):
        repeated_splits(targets, 40, 2, seed=0)


def test_fold_splits_judge_every_item_once():
    from unitune.data import fold_splits

    targets = [i % 4 for i in range(40)]
    folds = fold_splits(targets, 5, seed=0)
    assert len(folds) == 5
    assert sorted(i for _, val in folds for i in val) == list(range(40))  # the vals cover every item once
    for train, val in folds:
        assert len(val) == 8 and sorted(train + val) == list(range(40))
        assert sorted(targets[i] for i in val) == sorted([0, 1, 2, 3] * 2)  # stratified: 2 of each class
    assert folds == fold_splits(targets, 5, seed=0) and folds != fold_splits(targets, 5, seed=1)
    small = [0] * 50 + [1] * 50 + [2] * 4  # a class smaller than the folds leaves the others stratified
    for _, val in fold_splits(small, 5, seed=0):
        assert [sum(small[i] == c for i in val) for c in (0, 1)] == [10, 10]
    assert sorted(i for _, val in fold_splits(small, 5, seed=0) for i in val) == list(range(104))
    few = fold_splits([0, 1, 2, 3, 4], 3, seed=0)  # no class fills 3 folds: plain k folds
    assert sorted(i for _, val in few for i in val) == list(range(5))
    with pytest.raises(ValueError, match="12 folds of 11 items"):
        fold_splits([0] * 9 + [1] * 2, 12, seed=0)


def test_the_kfold_rule_scores_each_finalist_on_the_folds_of_train_and_val(folder, monkeypatch):
    """A second computation of each k-fold score (the finalist trained on that fold), stored under
    the rule's own key so that the random splits' scores are never mixed in."""
    from unitune.data import build_dataset, fold_splits
    from unitune.search.selection import selection_key

    with pytest.raises(UniTuneError, match=r"tune: splits: 65 folds \(kfold\) of 64 train\+val images; expected at most"):
        run_tune(folder, trials=4, selection=Selection(finalists=2, splits=65, kfold=True))
    assert not (folder / "run/tune/study.db").exists()  # refused before the study started
    rule = Selection(finalists=2, splits=2, kfold=True)
    assert selection_key(rule, 0) == "selection_scores:2-folds:seed0" != selection_key(Selection(splits=2), 0)
    result = run_tune(folder, trials=4, selection=rule)
    run = load_run_config(folder / "config.yaml")
    ctx = RunContext.of(run, folder / "run")
    by_label = dict(load_candidates([str(folder / "mix.yaml"), str(folder / "lora.yaml")], ctx))
    train, val = build_dataset(run.data, "train", None), build_dataset(run.data, "val", None)
    folds = fold_splits([*train.targets, *val.targets], 2, seed=0)
    assert [len(v) for _, v in folds] == [32, 32]  # 48 train + 16 val in two halves, not val's 16
    study = optuna.load_study(study_name=result["study"], storage=f"sqlite:///{folder / 'run/tune/study.db'}")
    assert study.user_attrs["selection_scores:2-folds:seed0"] == result["selection"]
    assert {k for k in study.user_attrs if k.startswith("selection_scores")} == {"selection_scores:2-folds:seed0"}
    for number, row in result["selection"].items():
        trial = next(t for t in result["trials"] if t["number"] == int(number))
        for k, split in enumerate(folds):
            again = [a for _, a in trial_epochs(ctx, by_label[row["structure"]], trial["recipe"], 2,
                                                source=row["structure"], split=split)]
            assert again[-1] == row["scores"][k]
    assert result["selection_rule"] == "2 folds of train+val, each image in val once"
    assert "over 2 folds of train+val, each image in val once (its study val" in tune_line(result)
    assert "the 2 finalists over 2 folds of train+val" in dashboard_note(study)
    # the random splits' rule on the same study trains its finalists anew, on its own splits and key
    import unitune.search.rerank as rerank

    trained, real = [], rerank.standalone_epochs

    def recording(*args, split=None, **kwargs):
        trained.append(split)
        return real(*args, split=split, **kwargs)

    monkeypatch.setattr(rerank, "standalone_epochs", recording)
    random = run_tune(folder, trials=4, selection=Selection(finalists=2, splits=2))
    assert random["selection"].keys() == result["selection"].keys()  # the same finalists, judged again:
    assert [len(s[1]) for s in trained] == [16] * 4  # 2 finalists x 2 splits of val's size, no fold of 32
    study = optuna.load_study(study_name=result["study"], storage=f"sqlite:///{folder / 'run/tune/study.db'}")
    assert {k for k in study.user_attrs if k.startswith("selection_scores")} == \
        {"selection_scores:2-folds:seed0", "selection_scores:2-splits:seed0"}
    assert study.user_attrs["selection_scores:2-folds:seed0"] == result["selection"]  # untouched


def test_the_warm_up_is_cut_with_the_epochs():
    cfg = load_run_config(Path(__file__).parent.parent / "configs/minivtab-dinov2.yaml").retrain  # 4 epochs, warm-up 1
    assert (cfg.epochs, cfg.warmup_epochs) == (4, 1)
    assert [short_recipe(cfg, e).warmup_epochs for e in (1, 2, 3, 4, 8)] == [0, 0, 1, 1, 2]
    assert all(short_recipe(cfg, e).epochs == e for e in (1, 3))


def test_selection_settings_are_checked():
    for bad, message in ((Selection(finalists=0), "finalists: expected an integer >= 1, got 0"),
                         (Selection(splits=1), "splits: 1 split has no spread"),
                         (Selection(splits=True), "splits: expected an integer >= 0, got True"),
                         (Selection(splits=0, kfold=True), "kfold with splits 0 .the selection off.: expected splits >= 2"),
                         (Selection(kfold="yes"), "kfold: expected true or false, got 'yes'")):
        with pytest.raises(UniTuneError, match=message):
            bad.check()


def test_a_second_run_resumes_the_study_and_retrain_applies_the_pick(folder):
    first = run_tune(folder, trials=3)
    again = run_tune(folder, trials=3)  # the study already holds 3 finished trials: none more
    assert again["trial"] == first["trial"] and again["recipe"] == first["recipe"] and len(again["trials"]) == 3
    result = retrain_train.retrain(load_run_config(folder / "config.yaml"), first["subnet_file"],
                                   folder / "retrain", progress=False, curves=False)
    assert result["recipe"] == first["recipe"] and math.isfinite(result["test_accuracy"])


def test_families_of_a_subnet_come_from_the_registry():
    assert families_of(Subnet.uniform(2, lora=1, vpt=1, ssf=1)) == ["low_rank", "prompt", "scale_shift"]
    assert families_of(Subnet.uniform(2, lora=1, dora=1)) == ["low_rank"]


def test_bad_input_is_one_line_before_any_training(folder, capsys):
    config = str(folder / "config.yaml")
    out = str(folder / "run")
    cases = [
        (["--lr", "3"], "--lr '3': expected LOW:HIGH, e.g. 1e-4:1e-1"),
        (["--lr-mult", "10:0.1"], "tune: lr_mult range 10.0:0.1: expected 0 < low < high, both finite"),
        (["--trials", "0"], "tune: trials: expected an integer >= 1, got 0"),
        (["--kfold", "--splits", "0"], "tune: kfold with splits 0 (the selection off): expected splits >= 2"),
        (["--subnet", str(folder / "mix.yaml"), "--subnet", str(folder / "mix.yaml")], "tune: a candidate is given twice"),
        ([], "best_subnet.yaml: file not found"),
    ]
    for extra, message in cases:
        code = main(["tune", "--config", config, "--out", out, "--quiet", *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (extra, err)
    (folder / "odd.yaml").write_text(yaml.safe_dump(Subnet.uniform(4, lora=3).to_dict()))
    with pytest.raises(UniTuneError, match=r"odd\.yaml: lora\[0\] = 3 is not in the search space"):
        run_tune_files(folder, ["odd.yaml"])
    assert not (folder / "run" / "tune" / "study.db").exists()


def run_tune_files(folder: Path, names: list[str]):
    ctx = RunContext.of(load_run_config(folder / "config.yaml"), folder / "run")
    return tune(ctx, load_candidates([str(folder / n) for n in names], ctx), folder / "run", trials=1, epochs=1)


def test_ranges_are_checked():
    with pytest.raises(UniTuneError, match=r"^tune: lr range 0\.0:1\.0: expected 0 < low < high"):
        TuneRanges(lr=(0.0, 1.0)).check()


def test_full_fine_tuning_is_tuned_with_a_head_multiplier_and_its_recipe_given_as_overrides(folder, capsys):
    ctx = RunContext.of(load_run_config(folder / "config.yaml"), folder / "full")
    (folder / "full/tune").mkdir(parents=True)
    Subnet.uniform(4, lora=4).save(folder / "full/tune/tuned_subnet.yaml")  # an earlier pick's file
    result = tune(ctx, [(FULL, None)], folder / "full", trials=2, epochs=1)
    assert result["subnet_file"] is None and not (folder / "full/tune/tuned_subnet.yaml").exists()
    study = optuna.load_study(study_name=result["study"], storage=f"sqlite:///{folder / 'full/tune/study.db'}")
    for t in study.trials:  # full fine-tuning's own ranges
        assert set(t.params) == {"full_lr", "weight_decay", "lr_mult.head"}
        assert 1e-6 <= t.params["full_lr"] <= 1e-3 and 1 <= t.params["lr_mult.head"] <= 1000
    assert set(result["recipe"]) == {"lr", "weight_decay", "lr_mult"} and set(result["recipe"]["lr_mult"]) == {"head"}
    line = tune_line(result)
    overrides = line.split("as config overrides: ", 1)[1].split()
    run = load_run_config(folder / "config.yaml", overrides)  # the printed overrides read back as the recipe
    assert (run.retrain.lr, run.retrain.weight_decay, run.retrain.lr_mult) == (
        result["recipe"]["lr"], result["recipe"]["weight_decay"], result["recipe"]["lr_mult"])
    assert families_of(None) == ["backbone", "head"]


def test_a_diverging_trial_fails_and_the_study_goes_on(folder, monkeypatch):
    from unitune.errors import DivergedError
    import unitune.search.rerank as rerank

    real = rerank.standalone_epochs
    calls = []

    def diverge_first(*args, **kwargs):  # the first trial's training blows up after its first epoch
        calls.append(1)
        for step, value in real(*args, **kwargs):
            if len(calls) == 1:
                raise DivergedError("stand-alone epoch 2/2: the loss is nan (not finite); lower the learning rate")
            yield step, value

    monkeypatch.setattr(rerank, "standalone_epochs", diverge_first)
    result = run_tune(folder, trials=3)
    states = [t["state"] for t in result["trials"]]
    assert states[0] == "FAIL" and "the loss is nan" in result["trials"][0]["fail_reason"]
    assert len(states) == 4 and states.count("COMPLETE") + states.count("PRUNED") == 3 and result["trial"] != 0


def test_the_first_trials_complete_and_a_later_one_stops_only_below_the_complete_trials_median(folder, monkeypatch):
    import statistics

    import unitune.search.rerank as rerank
    from unitune.search.tune import COMPLETE_FIRST

    # each trial's val accuracy fixed by its order (the sampler's points do not matter), rising
    # with the epochs; no two tie with a median
    level = [0.9, 0.5, 0.7, 0.6, 0.8, 0.4, 0.73, 0.3, 0.65, 0.85]
    calls = []

    def fake(ctx, out, subnet, epochs, progress=False, **kwargs):
        calls.append(1)
        for step in range(1, epochs + 1):
            yield step, level[len(calls) - 1] * step / epochs

    monkeypatch.setattr(rerank, "standalone_epochs", fake)
    epochs = 4
    first = short_recipe(load_run_config(folder / "config.yaml").retrain, epochs).warmup_epochs + 1
    assert first == 3  # the tiny config's 1 of 2 warm-up epochs is 2 of 4: the first epoch a trial can stop at is 3
    result = run_tune(folder, trials=len(level), epochs=epochs, selection=Selection(splits=0))
    study = optuna.load_study(study_name=result["study"], storage=f"sqlite:///{folder / 'run/tune/study.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    states = [t.state.name[0] for t in trials]
    # the first three complete whatever their scores (successive halving would stop trial 1: not the
    # best at its rung); then below the median of the complete trials' stops, at epoch 3 (trial 6:
    # 0.73 < the median 0.75 of 0.5, 0.7, 0.8, 0.9; the 40th percentile, 0.72, would keep it)
    assert COMPLETE_FIRST == 3 and "".join(states) == "CCCPCPPPPC"
    for t in trials[COMPLETE_FIRST:]:  # a second computation of the rule, from what the study stored
        before = [u for u in trials[:t.number] if u.state.name == "COMPLETE"]
        below = [s for s in range(first, epochs) if s in t.intermediate_values and max(
            v for k, v in t.intermediate_values.items() if k <= s) < statistics.median(
            u.intermediate_values[s] for u in before)]
        if t.state.name == "PRUNED":  # stopped at the first epoch it fell below, never in the warm-up
            assert below and max(t.intermediate_values) == below[0] == first, t.number
        else:
            assert not below, t.number
    assert result["trial"] == 0 and result["val_accuracy"] == pytest.approx(0.9)


def test_a_resumed_study_draws_new_points(folder, monkeypatch):
    import unitune.search.rerank as rerank

    calls = []

    def fake(ctx, out, subnet, epochs, progress=False, **kwargs):  # no training: the points are the question
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is stopped in its third trial
        for step in range(1, epochs + 1):
            yield step, 0.5

    monkeypatch.setattr(rerank, "standalone_epochs", fake)
    with pytest.raises(KeyboardInterrupt):
        run_tune(folder, trials=8, epochs=1, selection=Selection(splits=0))  # 4 random start-up trials
    again = run_tune(folder, trials=8, epochs=1, selection=Selection(splits=0))  # resumed: 6 more
    done = [t for t in again["trials"] if t["state"] == "COMPLETE"]
    assert len(done) == 8 and len(again["trials"]) == 9
    points = [json.dumps(t["recipe"], sort_keys=True) + t["structure"] for t in done]
    assert len(set(points)) == 8, points  # re-seeded from the seed alone, trials 3 and 4 repeated 0 and 1


def test_a_study_started_from_single_candidates_studies_imports_their_trials_and_runs_its_own(folder, monkeypatch):
    """``prior``: the finished trials of a study of one candidate alone start the study of several
    (values, epochs' accuracies, params, costs and selection scores as stored, nothing trained
    again); ``trials`` counts the study's own, which go to the candidates no prior study tuned;
    the pick is made among the own finalists and every imported scored one; a rerun imports
    nothing twice."""
    import unitune.search.rerank as rerank
    from unitune.search.storage import IMPORTED_ATTR
    from unitune.search.tune import Prior

    calls = []

    def fake(ctx, out, subnet, epochs, progress=False, cost=None, split=None, **kwargs):
        mix = subnet.is_on("vpt")
        calls.append(("split " if split is not None else "") + ("mix" if mix else "lora"))
        cost["train_images"] = 10
        # LoRA alone: every score differs (0.61, 0.62, ...), on the repeated splits too; the mix
        # scores 0.9 on the study's split and 0.1 on the others: a winner's curse the selection sees
        level = (0.1 if split is not None else 0.9) if mix else 0.6 + 0.01 * len(calls)
        for step in range(1, epochs + 1):
            yield step, level * step / epochs

    monkeypatch.setattr(rerank, "standalone_epochs", fake)
    run = load_run_config(folder / "config.yaml")
    selection = Selection(finalists=2, splits=2)
    alone_ctx = RunContext.of(run, folder / "alone")
    (lora,) = load_candidates([str(folder / "lora.yaml")], alone_ctx)
    alone = tune(alone_ctx, [lora], folder / "alone", trials=4, epochs=2, selection=selection)
    assert calls.count("split lora") == 4  # its two finalists on two splits each
    source = optuna.load_study(study_name=alone["study"], storage=f"sqlite:///{alone['storage']}")

    calls.clear()
    ctx = RunContext.of(run, folder / "run")
    candidates = load_candidates([str(folder / "mix.yaml"), str(folder / "lora.yaml")], ctx)
    mix_label = candidates[0][0]
    assert candidates[1][0] == lora[0]
    prior = [Prior(lora[0], alone["storage"], alone["study"])]
    result = tune(ctx, candidates, folder / "run", trials=3, epochs=2, selection=selection, prior=prior)
    study = optuna.load_study(study_name=result["study"], storage=f"sqlite:///{result['storage']}")
    imported = [t for t in study.trials if IMPORTED_ATTR in t.user_attrs]
    own = [t for t in study.trials if IMPORTED_ATTR not in t.user_attrs]
    assert len(imported) == len(source.trials) == 4 and len(own) == 3
    # nothing imported trained again; the own trials all on the structure no prior study tuned
    assert calls == ["mix"] * 3 + ["split mix"] * 4 and {t.params["structure"] for t in own} == {mix_label}
    for t, s in zip(imported, sorted(source.trials, key=lambda t: t.number)):
        assert t.user_attrs[IMPORTED_ATTR] == f"{alone['study']}#{s.number}"
        assert (t.state, t.value, t.intermediate_values) == (s.state, s.value, s.intermediate_values)
        assert t.params == {**s.params, "structure": lora[0]} and t.user_attrs["recipe"] == s.user_attrs["recipe"]
    # the finalists: the own best two (scored here) and LoRA's two (their scores imported); the
    # pick is LoRA alone's pick, at its recipe
    scored = {int(n) for n in alone["selection"]}
    mapped = {t.number for t in imported if int(t.user_attrs[IMPORTED_ATTR].rsplit("#", 1)[1]) in scored}
    own_best = sorted(own, key=lambda t: (-t.value, t.number))[:2]
    assert set(map(int, result["selection"])) == mapped | {t.number for t in own_best}
    picked = next(t for t in imported if t.number == result["trial"])
    assert picked.user_attrs[IMPORTED_ATTR] == f"{alone['study']}#{alone['trial']}"
    assert result["structure"] == lora[0] and result["recipe"] == alone["recipe"]
    assert result["selection"][str(picked.number)]["scores"] == alone["selection"][str(alone["trial"])]["scores"]
    cpu = sum(t.user_attrs["cpu_seconds"] for t in imported)
    assert result["imported"] == {"trials": 4, "cpu_seconds": pytest.approx(cpu, abs=0.01)}
    assert result["cpu_seconds"] >= cpu + sum(t.user_attrs["cpu_seconds"] for t in own)  # their cost counted here
    assert result["study"] != tune_study_name_without_prior(ctx, candidates)

    calls.clear()
    again = tune(ctx, candidates, folder / "run", trials=3, epochs=2, selection=selection, prior=prior)
    assert calls == [] and len(again["trials"]) == 7 and again["trial"] == result["trial"]


def tune_study_name_without_prior(ctx, candidates) -> str:
    from unitune.search.tune import study_name

    return study_name(ctx, candidates, 2, TuneRanges())


def test_a_prior_study_must_be_of_a_candidate(folder):
    from unitune.search.tune import Prior

    with pytest.raises(ValueError, match=r"tune: prior study 'x' is of 'nope', not a candidate"):
        run_tune(folder, prior=[Prior("nope", folder / "no.db", "x")])


def test_a_mix_of_families_first_trains_at_each_familys_rate_the_single_studies_picked(folder, monkeypatch):
    """Started from LoRA's and VPT's studies alone, the first own trial on LoRA + VPT takes LoRA's
    pick's rate as ``lr``, VPT's pick's rate as the prompt family's multiplier of it, and the
    geometric mean of their weight decays (the picks read back from the single studies' results:
    LoRA's made by its selection, not its study best); a start an interrupt lost is given again."""
    import unitune.search.rerank as rerank
    from unitune.search.tune import Prior

    interrupt = []

    def fake(ctx, out, subnet, epochs, progress=False, cost=None, split=None, **kwargs):
        if interrupt and subnet.is_on("vpt") and subnet.is_on("lora"):
            interrupt.clear()
            raise KeyboardInterrupt  # the run is stopped in the mix's first (started) trial
        cost["train_images"] = 10
        # LoRA alone scores best at its highest rate on the study's split and the other way round on
        # the repeated splits: its pick (of 2 finalists) is its second best trial. VPT alone (no
        # selection) picks its study best, at its lowest rate.
        lora_alone = subnet.is_on("lora") and not subnet.is_on("vpt")
        x = math.log10(ctx.run.retrain.lr)
        level = 0.5 + 0.02 * (x if lora_alone else -x) * (-1 if lora_alone and split is not None else 1)
        for step in range(1, epochs + 1):
            yield step, level

    monkeypatch.setattr(rerank, "standalone_epochs", fake)
    Subnet.uniform(4, vpt=4).save(folder / "vpt.yaml")
    run = load_run_config(folder / "config.yaml")
    selection = Selection(finalists=2, splits=2)
    alone = {}
    for name, rule in (("lora", selection), ("vpt", Selection(splits=0))):
        ctx = RunContext.of(run, folder / name)
        (candidate,) = load_candidates([str(folder / f"{name}.yaml")], ctx)
        alone[name] = (candidate[0], tune(ctx, [candidate], folder / name, trials=4, epochs=1, selection=rule))
    lora_study_best = max((t for t in alone["lora"][1]["trials"] if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    assert alone["lora"][1]["trial"] != lora_study_best["number"]  # the selection's pick is another trial
    ctx = RunContext.of(run, folder / "run")
    candidates = load_candidates([str(folder / "mix.yaml"), str(folder / "lora.yaml"), str(folder / "vpt.yaml")], ctx)
    prior = [Prior(label, r["storage"], r["study"]) for label, r in alone.values()]
    wide = TuneRanges(lr_mult=(1e-4, 1e4))  # no multiplier clipped: every rate as picked
    interrupt.append(1)
    with pytest.raises(KeyboardInterrupt):
        tune(ctx, candidates, folder / "run", trials=2, epochs=1, ranges=wide, selection=selection, prior=prior)
    result = tune(ctx, candidates, folder / "run", trials=2, epochs=1, ranges=wide, selection=selection, prior=prior)

    own = [t for t in result["trials"] if "imported_from" not in t and t["state"] == "COMPLETE"]
    assert [t["structure"] for t in own] == [candidates[0][0]] * 2
    started = [t for t in own if "started_from" in t]
    assert len(started) == 1  # the lost start given again, once
    lora, vpt = alone["lora"][1]["recipe"], alone["vpt"][1]["recipe"]
    assert lora["lr"] != vpt["lr"]  # the multiplier is not 1 by accident
    first = started[0]["recipe"]
    assert (first["lr"], first["weight_decay"]) == pytest.approx(
        (lora["lr"], math.sqrt(lora["weight_decay"] * vpt["weight_decay"])))
    assert first["lr_mult"] == {"prompt": pytest.approx(vpt["lr"] / lora["lr"])}
    picks = [f"{r['study']}#{r['trial']}" for _, r in alone.values()]  # where they came from, on the dashboard
    assert started[0]["started_from"] == picks
    study = optuna.load_study(study_name=result["study"], storage=f"sqlite:///{result['storage']}")
    fixed = {t.number: t.system_attrs.get("fixed_params", {}) for t in study.trials if "imported_from" not in t.user_attrs}
    assert set(fixed[started[0]["number"]]) == {"structure", "lr", "weight_decay", "lr_mult.prompt"}
    other = next(t for t in own if t is not started[0])
    assert set(fixed[other["number"]]) == {"structure"}  # the other trial on it is the sampler's


def test_prior_picks_read_the_scores_of_a_single_rows_finalists_only():
    """A score stored for a trial outside the finalists (an earlier rule's, with more of them)
    does not make the pick: the pick is what the single row's own tune made of its finalists."""
    from unitune.search.selection import selection_key
    from unitune.search.storage import IMPORTED_ATTR
    from unitune.search.tune import Prior, prior_picks

    study = optuna.create_study(direction="maximize")
    for n, (value, lr) in enumerate([(0.9, 1e-2), (0.8, 1e-3), (0.7, 1e-4)]):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}, user_attrs={
            "structure": "lora", IMPORTED_ATTR: f"alone#{n}", "recipe": {"lr": lr, "weight_decay": 1e-4}}))
    two = Selection(finalists=2, splits=2)
    study.set_user_attr(selection_key(two, 0), {str(n): {"trial": n, "mean": m} for n, m in enumerate([0.5, 0.6, 0.99])})
    prior, by_label = [Prior("lora", "alone.db", "alone")], {"lora": Subnet.uniform(4, lora=4)}
    assert prior_picks(study, prior, by_label, two, 0)["low_rank"].number == 1  # the better of its 2 finalists
    assert prior_picks(study, prior, by_label, Selection(finalists=3, splits=2), 0)["low_rank"].number == 2
    assert prior_picks(study, prior, by_label, Selection(splits=0), 0)["low_rank"].number == 0  # off: study best


def test_a_started_recipe_keeps_to_the_ranges_and_leaves_families_without_a_pick_to_the_sampler():
    from unitune.search.tune import started_recipe

    def trial(lr, wd):
        return optuna.trial.create_trial(value=0.5, params={}, distributions={},
                                         user_attrs={"recipe": {"lr": lr, "weight_decay": wd}})

    mix = Subnet.uniform(4, lora=4, adapter=4, vpt=4)
    ranges = TuneRanges(lr_mult=(0.1, 10.0))
    picks = {"low_rank": trial(1e-3, 1e-4), "adapter": trial(4e-3, 1e-4), "prompt": trial(5e-1, 1e-1)}
    assert started_recipe(mix, picks, ranges) == pytest.approx(  # prompt's 500x clipped to the range
        {"lr": 1e-3, "weight_decay": 1e-3, "lr_mult.adapter": 4.0, "lr_mult.prompt": 10.0})
    del picks["adapter"]
    assert started_recipe(mix, picks, ranges) == pytest.approx(  # no adapter pick: its multiplier drawn
        {"lr": 1e-3, "weight_decay": math.sqrt(1e-4 * 1e-1), "lr_mult.prompt": 10.0})
    assert started_recipe(mix, {"prompt": picks["prompt"]}, ranges) == {}  # the first family sets lr: no pick, no start
    assert started_recipe(Subnet.uniform(4), picks, ranges) == {}  # no method on: no family
