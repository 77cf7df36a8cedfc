#!/usr/bin/env bash
# The GPU check of issue 13 on a lent GPU machine (see benchmarks/gpu_check.py for what it runs).
#
# 1. Here, once, where pip reaches the registry: the packages the GPU image lacks, as wheels in .whl/
#    (ignored by git; about 8 MB):
#        bash benchmarks/gpu_check.sh --fetch-wheels
# 2. On the GPU machine (the device tool's `run`, carry [".whl"], timeout_s 540):
#        bash benchmarks/gpu_check.sh $OUT/gpu_check
#    -> $OUT/gpu_check/results.json, results.md, gpu_check.log. Run folders go to /tmp (they
#    would not come back from $OUT anyway). Extra arguments go to gpu_check.py.
#
# The GPU image has torch, timm, peft, safetensors, scikit-learn, matplotlib, pandas, PyYAML and
# tqdm, but not Optuna and its database packages; nothing can be downloaded there, and unitune
# is not installed there either: a tree of links makes it importable without a build.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WHEELS="optuna==5.0.0 optuna-dashboard==0.21.0 bottle==0.13.4 alembic==1.20.1 SQLAlchemy==2.1.9 Mako==1.4.3 colorlog==6.12.0 cmaes==0.13.1 timm==1.0.31"

if [ "${1:-}" = "--fetch-wheels" ]; then
  # The GPU image's Python is 3.12 on x86-64 (KINDS.md); --no-deps: the rest is on the image.
  exec $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS
fi
if [ $# -lt 1 ]; then
  echo "usage: bash benchmarks/gpu_check.sh OUT [gpu_check.py args] | --fetch-wheels" >&2
  exit 2
fi
OUT=$1; shift
mkdir -p "$OUT"

. "$(dirname "$0")/gpu_env.sh"

run() {
  gpu_env
  export PYTHONUNBUFFERED=1 PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
  $PY benchmarks/gpu_check.py --out "$OUT" --workdir "${GPU_CHECK_WORKDIR:-/tmp/unitune-gpu-check}" "$@"
}

# The whole run's output, set-up included, also in the log.
run "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
