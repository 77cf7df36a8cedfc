# Make unitune importable on the GPU machine (sourced by gpu_check.sh and gpu_tune_suite.sh).
#
# The GPU image has torch, timm, peft, safetensors, scikit-learn, matplotlib, pandas, PyYAML and
# tqdm, but not Optuna and its database packages; nothing can be downloaded there, and unitune
# is not installed there either: the carried wheels (.whl/, `bash benchmarks/gpu_check.sh
# --fetch-wheels` here) go to a target folder, and a tree of links makes unitune importable
# without a build. Exits 3 when that fails.
gpu_env() {
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/unitune-site \
      .whl/*.whl || exit 3
    export PYTHONPATH=/tmp/unitune-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # `python -c` puts the working directory first on sys.path, where the repo's own unitune/ (which
  # lacks supernet/, search/, retrain/) would shadow the link tree below; PYTHONSAFEPATH keeps it off.
  export PYTHONSAFEPATH=1
  if ! $PY -c "import unitune.supernet, unitune.search, unitune.retrain" 2>/dev/null; then
    # The package layout of pyproject.toml (supernet/ is unitune.supernet, ...), as links.
    SRC=/tmp/unitune-src
    rm -rf "$SRC" && mkdir -p "$SRC/unitune"
    cp -r unitune/. "$SRC/unitune/"
    for sub in supernet search retrain; do ln -s "$PWD/$sub" "$SRC/unitune/$sub"; done
    export PYTHONPATH=$SRC${PYTHONPATH:+:$PYTHONPATH}
  fi
  $PY -c "import torch, timm, optuna, unitune.search; print('python', __import__('sys').version.split()[0], \
  'torch', torch.__version__, 'timm', timm.__version__, 'optuna', optuna.__version__, 'cuda', torch.cuda.is_available())" \
    || exit 3

}
