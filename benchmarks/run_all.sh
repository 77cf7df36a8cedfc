#!/usr/bin/env bash
# Every figure of benchmarks/RESULTS.md, one after the other (never two at once: they would
# disturb each other's timings). Logs land in benchmarks/logs/. Usage:
#   bash benchmarks/run_all.sh [DEMO_RUN_DIR]     # DEMO_RUN_DIR: a finished `unitune run --config configs/demo.yaml`
# Without DEMO_RUN_DIR the scripts pretrain / train / search the demo once into $TMPDIR/unitune-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${1:-}
RUNARG=${RUN:+--run $RUN}
mkdir -p benchmarks/logs
bench() {  # name, args...
  local name=$1; shift
  { echo "\$ python benchmarks/$*"; date -u; echo "uptime before: $(uptime)";
    /usr/bin/time -f "wall %e s" $PY benchmarks/"$@"; echo "uptime after: $(uptime)"; } 2>&1 | tee benchmarks/logs/$name.txt
}
bench weight_sharing_tiny bench_weight_sharing.py --threads 1
bench weight_sharing_vitb bench_weight_sharing.py --backbone vit_base_patch16_224 --threads 1
bench trial_demo bench_trial.py --threads 1 $RUNARG
bench trial_vitb bench_trial.py --backbone vit_base_patch16_224 --threads 1
bench memory_tiny bench_memory.py --threads 1
bench memory_vitb bench_memory.py --backbone vit_base_patch16_224 --threads 1
bench samplers bench_samplers.py --threads 1 $RUNARG
bench pruning bench_pruning.py --threads 1 --seeds 0,1,2,3,4 --extra 2 --route-seeds 0,1,2 $RUNARG
bench transfer bench_transfer.py --threads 1 --epochs 20 $RUNARG
bench transfer_e40 bench_transfer.py --threads 1 $RUNARG
bench inference_tiny bench_inference.py --tiny --threads 1
bench inference_vitb bench_inference.py --threads 1
