#!/usr/bin/env bash
# Issue 23's decision run on the CPU: `unitune compare` with every row tuned alike (compare.tune)
# and the search's soup, on the tiny suite (configs/minivtab.yaml) or any suite config.
#
# DECISION RULE (written before the run, 2026-12-04; the same as benchmarks/gpu_tune_suite.sh's
# for the DINOv2 suite): with compare.tune {trials 8, epochs 3, finalists 3, splits 3,
# structures 3, soup 3}, seeds 0,1,2, every cell's test split read once after its last epoch:
#  - the target is met when "search minus the per-task best single method" (paired over the
#    task x seed pairs; the best single method per task chosen on test, in the baselines' favour;
#    table.md computes it) is >= 2 standard errors above 0; likewise for the soup;
#  - otherwise RESULTS.md says by how much it falls short and what each part contributes, read
#    from the same run: the learning rates (tuned rows vs the untuned suite, same tasks and
#    seeds), the selection rule (each row's study best vs its selection pick, on val) and the
#    soup (soup minus search, paired).
#
# The DINOv2 suite on the CPU (2026-12-04, session 9, no GPU lent; written before its run): the
# same rule on configs/minivtab-dinov2.yaml, one task at a time (count, then orientation, distance,
# textures, terrain), each task's 8 rows x 3 seeds complete before the next starts; a session runs
# what fits and the next resumes from the records (compare skips finished stages and cells). Until
# all 5 tasks are in, RESULTS.md reports the decision figure on the tasks done, as partial, with n.
# The soup's members from commit 17d73d8 on: the pick's recipe at x0.5/x2 its learning rate fill
# the members its study did not complete.
# Done so far: count with successive halving (commit 17d73d8; RESULTS, records in
# benchmarks/logs/tune-suite-dinov2-halving). From commit 7db5701 the tuner prunes by the median and
# a comparison's fingerprint carries the pruning rule, so the suite starts again in a fresh folder
# (runs/tune-suite-dinov2, count first; its records go to benchmarks/logs/tune-suite-dinov2, in the
# run's own layout, which gpu_tune_suite.sh resumes from).
# Median pruning against successive halving (2026-12-04, written before its run): on count, the
# three rows whose successive-halving study (the run above, commit 17d73d8) completed one trial in
# eight (LoRA, Adapter, full) are tuned again with median pruning (commit 7db5701), same seeds and
# cells; reported per row: complete trials, the pick, tuning CPU-s, and test accuracy median minus
# halving, paired by seed (mean +- se; n = 3 per row, 9 pooled). A measurement, no target:
#   bash benchmarks/tune_suite.sh configs/minivtab-dinov2.yaml runs/tune-suite-dinov2-median --tasks count \
#        --methods lora,adapter,full      # a second --methods: argparse keeps the last
# (Ran with --methods lora,adapter: full fine-tuning's row was dropped for the session's time, before
# its study started; lora's and adapter's studies were interrupted twice and resumed: see RESULTS.)
# The search row started from the single rows' trials (2026-12-04, session 10, written before its
# run): compare.tune.warm_start (default true from this commit) imports every single-method row's
# finished trials into the search row's study, which then runs its own 8. On count, in the fresh
# folder runs/tune-suite-dinov2 (median pruning, warm start), rows lora, adapter, vpt, ssf, search
# (linear, full and soup left out for the session's time: full and linear are not imported, the soup
# measured 0.00), seeds 0-2. LoRA's and Adapter's studies are copied from runs/tune-suite-dinov2-median
# (the same question: their study does not depend on warm_start) and the search stage from
# runs/tune-suite-dinov2-halving (the same searched structures); every cell is retrained here.
# Reported: search minus the per-task best single method (paired by seed, mean +- se, n = 3), search
# (warm) minus search (the halving run's, not warm), what the search row picked and its CPU-s with
# the imported share. A measurement on one task, no target (the rule above is the suite's):
#   bash benchmarks/tune_suite.sh configs/minivtab-dinov2.yaml runs/tune-suite-dinov2 --tasks count \
#        --methods lora,adapter,vpt,ssf,search
# (Ran at commit 2234546: the search row picked Adapter at lr 4.4e-3; its 8 own trials never drew a
# searched structure and its 3 finalists left out LoRA's pick. Records: benchmarks/logs/
# tune-suite-dinov2-warm-v1. Written before the second run: from commit e1d0213 the own trials go
# to the searched structures in turn and the finalists include every imported scored one; the
# search row's study and cells are run again in the same folder, the rest kept, and reported the
# same way. Beside it: the search row with warm_start=false in runs/tune-suite-dinov2-cold (same
# structures and single studies, median pruning) and the full and linear rows in the warm folder.)
# The suite goes on (2026-12-04, session 11): orientation, then distance, textures, terrain, in
# runs/tune-suite-dinov2 beside count, every row (soup included), by the rule above. Orientation
# started at 22:10 from commit eb4c90d (warm start v2), before any other change of the session.
# During it, from commit ff9b80c, the search row's first own trial on each searched structure trains
# each family at the rate its single row picked (search/tune.py: started_recipe); measured on count
# in a copy of the run (runs/tune-suite-dinov2-start: the search row's study and cells again, the
# rest copied; then its soup row), reported as before (search minus the best single method, the
# pick, the mixes' val and selection scores). Orientation was stopped at 23:03, its linear, LoRA
# and Adapter studies finished and VPT's and SSF's in their selection, none of its cells trained,
# and resumed from commit 3a72728 (the same single-row code; the command above again), so that
# every later stage of it, the search row's included, follows the started rule; count's search row
# ran with it (same pick as v2). The selection-off ablation on orientation follows, then distance.
#
# Session 12 (2026-12-05): distance (resumed), textures, terrain from commit 3a72728, the same rule.
# Beside it, a measurement written before its run (no target): is the 2.3-point loss on orientation
# the selection's fidelity? benchmarks/bench_select_fidelity.py re-scores each single PEFT row's pick
# on the selection's own splits for the retrain's 4 epochs instead of the study's 3 (checked first:
# at 3 epochs it reproduces SSF's stored scores exactly, 0.83 / 0.77 / 0.765). Reported per task
# (orientation, count, then each finished one): each row's 3- and 4-epoch selection means and which
# row each would choose among the single rows, beside the rows' test accuracy (printed, never used).
# If the 4-epoch choice matches the test winner where the 3-epoch one does not, and nowhere the reverse,
# the next step is compare.tune.select_epochs (the selection at the retrain's length).
# (Orientation, measured: at 4 epochs LoRA 0.900 +- 0.017, SSF 0.883 +- 0.023: the gap narrows from 4.5 to
# 1.7 points and the choice stays LoRA; see RESULTS.)
# The tiny suite under the same rule (written before its run, 2026-12-05): after distance, the 3 tasks
# of its first run (digits, terrain, count) in runs/tune-suite-tiny-v2 from commit 3a72728 (median
# pruning, warm start, started mixes), its pretrain/ and each task's search stage (not its tune or
# cells) copied from runs/tune-suite-tiny so that both runs share the backbone and the searched
# structures; the decision rule above; reported beside the first run (successive halving, no warm
# start). Then textures and terrain on DINOv2.
#   bash benchmarks/tune_suite.sh configs/minivtab.yaml runs/tune-suite-tiny-v2 --tasks digits,terrain,count
# (Ran 02:17-03:37: search +4.83 +- 2.22, soup +6.27 +- 2.18 against the per-task best single method, n = 9;
# records benchmarks/logs/tune-suite-tiny-v2, RESULTS. Distance finished 02:17; textures started 03:37.)
# Session 13 (2026-12-05, a fresh machine: runs/ was not kept, so textures started again from nothing):
# textures 04:11-05:54 from commit d5fc09f (the suite's code: what changed since 3a72728 moves code and
# changes no trial), then terrain from 05:54, stopped at 06:46 (search stage, linear, LoRA, Adapter, VPT and SSF
# studies done, full's part-way, the linear and LoRA cells trained). Terrain's records so far
# (its finished studies and, for the unfinished ones, their study.db) are in benchmarks/logs/tune-suite-dinov2
# beside the four finished tasks; to resume, copy them into the run folder first:
#   cp -r benchmarks/logs/tune-suite-dinov2 runs/tune-suite-dinov2   # (gpu_tune_suite.sh does this itself)
#   bash benchmarks/tune_suite.sh configs/minivtab-dinov2.yaml runs/tune-suite-dinov2 --tasks terrain
# Session 14 (2026-12-05): terrain resumed 07:10 in the same run folder (kept on this machine), finished 07:42;
# the suite is complete (120 of 120 cells): search - per-task best single method -1.23 +- 0.36, soup -1.76 +- 0.59
# (n = 15): the target is not met (RESULTS, "the suite complete").
#
#   bash benchmarks/tune_suite.sh CONFIG OUT [--tasks a,b,c] [more compare arguments]
#   e.g. bash benchmarks/tune_suite.sh configs/minivtab.yaml runs/tune-suite-tiny --tasks digits,terrain,count
#        bash benchmarks/tune_suite.sh configs/minivtab-dinov2.yaml runs/tune-suite-dinov2 --tasks count
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=$1; OUT=$2; shift 2
export OMP_NUM_THREADS=1
exec unitune compare --config "$CONFIG" --out "$OUT" --jobs "${JOBS:-2}" --seeds 0,1,2 \
  --methods linear,lora,adapter,vpt,ssf,full,search,soup \
  compare.tune.trials=8 compare.tune.epochs=3 compare.tune.finalists=3 compare.tune.splits=3 \
  compare.tune.structures=3 compare.tune.soup=3 compare.tune.warm_start=true "$@"
