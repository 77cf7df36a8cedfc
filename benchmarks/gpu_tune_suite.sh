#!/usr/bin/env bash
# Issue 23's must-show on the DINOv2 suite, on a lent GPU: every row tuned alike (compare.tune),
# the tuned search with and without its soup against each equally tuned single method.
#
# DECISION RULE (written before the run, 2026-12-04): on configs/minivtab-dinov2.yaml (5 tasks,
# seeds 0,1,2, 56 px, 4 retrain epochs) with compare.tune {trials 8, epochs 3, finalists 3,
# splits 3, structures 3, soup 3}, every cell's test split read once after its last epoch:
#  - the target is met when "search minus the per-task best single method" (paired over the 15
#    task x seed pairs; the best single method per task chosen on test, in the baselines' favour;
#    compare's table.md computes it) is >= 2 standard errors above 0; likewise for the soup;
#  - otherwise RESULTS.md reports by how much it falls short and what each part contributes,
#    read from the same run: the learning rates (tuned rows here vs the untuned suite of
#    issue 21, same tasks and seeds), the selection rule (each row's study best vs its selection
#    pick, on val) and the soup (soup minus search, paired).
#
#   here, once:   bash benchmarks/gpu_check.sh --fetch-wheels          # .whl/: Optuna etc., ~12 MB
#                 python benchmarks/gpu_weights.py pack weights/dinov2_vits14.safetensors \
#                        .gpu/dinov2_vits14.fp16.safetensors           # 42 MiB: fits the 64 MiB carry
#   device tool:  run  bash benchmarks/gpu_tune_suite.sh $OUT   carry [".whl", ".gpu"]   timeout_s 590
#
# SMOKE=1 runs a smoke test first (--quick, 1 task, 2-trial studies, --jobs 4; QUICK_ONLY=1 stops
# after it: the CPU dry run, DEVICE=cpu); by default the suite alone runs (a broken path fails it
# in its first minute: compare stops at the first failing stage), the suite with --jobs $JOBS worker processes sharing the
# GPU (its steps are small: 56 px, batch 32), stopped at $SUITE_S seconds. Every ~45 s and at the
# end, the run's records (cells, tune_info/tune_result, studies, search results, table.md,
# results.csv) go to $OUT/records.tar.gz, so a run stopped at its limit still returns its
# finished cells; a rerun elsewhere resumes from them (`unitune compare` skips finished cells).
# The suite starts from the records the CPU runs committed (RESUME, benchmarks/logs/tune-suite-dinov2,
# median pruning and warm start: count's, orientation's and distance's 24 cells each, every row and the soup, the
# search rows with the started mixes of commit 3a72728; the tasks done there, by the same rule, are
# not run again;
# the count run with successive halving, benchmarks/logs/tune-suite-dinov2-halving, is not resumed); to share their fingerprint the
# suite passes no `device=` override on the GPU (the config's `device: auto` picks cuda).
# The suite is complete on the CPU (2026-12-05, session 14: 120 of 120 cells, all five tasks; RESULTS,
# "the suite complete"): with the default RESUME this script now finds every cell done and only rebuilds the
# table; RESUME=none runs the whole suite again from nothing, a second measurement (cuda's numerics, not the
# CPU's), to be reported beside the first, never merged with it.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-12}
SUITE_S=${SUITE_S:-530}
if [ $# -lt 1 ]; then
  echo "usage: bash benchmarks/gpu_tune_suite.sh OUT" >&2
  exit 2
fi
OUT=$1
RUN=${RUN:-/tmp/unitune-tune-suite}
RESUME=${RESUME:-benchmarks/logs/tune-suite-dinov2}
mkdir -p "$OUT"
. "$(dirname "$0")/gpu_env.sh"

TUNE="compare.tune.trials=8 compare.tune.epochs=3 compare.tune.finalists=3 compare.tune.splits=3
      compare.tune.structures=3 compare.tune.soup=3 compare.tune.warm_start=true"
QUICK_TUNE="compare.tune.trials=2 compare.tune.epochs=1 compare.tune.finalists=2 compare.tune.splits=2
            compare.tune.structures=2 compare.tune.soup=2"
ROWS=linear,lora,adapter,vpt,ssf,full,search,soup

pack() {  # the run's small records, atomically (a partial tar never replaces a whole one)
  [ -d "$RUN" ] || return 0
  (cd "$RUN" && find . -type f \( -name '*.json' -o -name '*.yaml' -o -name '*.md' -o -name '*.csv' -o -name '*.db' \
     -o -name '*.png' \) -size -4M -print0 | tar czf "$OUT/records.tar.gz.part" --null -T -) \
    && mv "$OUT/records.tar.gz.part" "$OUT/records.tar.gz"
}

main() {
  gpu_env
  export PYTHONUNBUFFERED=1 PYTHONWARNINGS=${PYTHONWARNINGS:-ignore} OMP_NUM_THREADS=1
  if [ ! -f weights/dinov2_vits14.safetensors ]; then
    $PY benchmarks/gpu_weights.py unpack .gpu/dinov2_vits14.fp16.safetensors weights/dinov2_vits14.safetensors || exit 3
  fi
  $PY -c "import torch; print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  if [ "${SMOKE:-0}" = 1 ]; then
    start=$(date +%s)
    timeout 150 $PY -m unitune compare --config configs/minivtab-dinov2.yaml --quick --out /tmp/unitune-tune-quick \
      --jobs 4 --methods linear,lora,full,search,soup --tasks count --quiet device=$DEVICE $QUICK_TUNE || exit 4
    echo "smoke run ok in $(( $(date +%s) - start )) s"
    [ "${QUICK_ONLY:-0}" = 1 ] && exit 0
  fi
  device=(); [ "$DEVICE" = cuda ] || device=("device=$DEVICE")  # cuda: the config's auto, the CPU records' fingerprint
  if [ -d "$RESUME" ] && [ ! -e "$RUN" ] && [ ${#device[@]} -eq 0 ]; then  # device=cpu: another fingerprint
    cp -r "$RESUME" "$RUN" && echo "resumed from $RESUME: $(ls "$RUN"/cells/*/*.json 2>/dev/null | wc -l) cells done"
  fi
  (while sleep 45; do pack; done) &
  shipper=$!
  start=$(date +%s)
  timeout "$SUITE_S" $PY -m unitune compare --config configs/minivtab-dinov2.yaml --out "$RUN" --jobs "$JOBS" \
    --methods $ROWS --quiet ${device[@]+"${device[@]}"} $TUNE
  rc=$?
  echo "suite: exit $rc after $(( $(date +%s) - start )) s"
  kill $shipper 2>/dev/null
  pack
  cp "$RUN/table.md" "$RUN/results.csv" "$OUT/" 2>/dev/null
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null
  return $rc
}

main 2>&1 | tee "$OUT/tune_suite.log"
exit "${PIPESTATUS[0]}"
