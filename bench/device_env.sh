# Sourced by bench/gpu.sh and studies/gpu_study.sh (from the repo root, with
# PY and a `say` function set): installs the wheels carried in .whl/ (no
# network on the device machine) into /tmp/site, puts them and the working
# tree on PYTHONPATH (the project is used from the tree, not installed),
# unbuffers Python and lets JAX take almost all GPU memory (it preallocates
# 75 % by default). Smoke runs (BENCH_SMOKE=1, STUDY_SMOKE=1: a CPU machine
# with the project installed) use the installed packages.
if [ "${BENCH_SMOKE:-0}" != 1 ] && [ "${STUDY_SMOKE:-0}" != 1 ] \
    && compgen -G ".whl/*.whl" > /dev/null; then
  say "installing carried wheels: $(ls .whl | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || { say "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
