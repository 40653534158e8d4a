#!/usr/bin/env bash
# The built wheel works without the checkout: builds it, installs it in a
# fresh virtualenv outside the checkout (dependencies from the package index
# or pip's cache), and from a directory outside the checkout checks that
# `mmvaeplus_jax` is the installed one, prepares the offline `mini` data with
# the wheel's TFDS builders, trains the smoke config a few steps with
# `mmvaeplus-train` and evaluates it with `mmvaeplus-eval` (bound only).
# Exits non-zero on the first failure; removes its temp directory.
# Usage: bash .ci/wheel_check.sh   (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/mmvaeplus_wheel_check.XXXXXX")
step() { echo "wheel_check [$(date +%T)]: $*"; }
trap 'step "removing $TMP"; rm -rf "$TMP"; step "removed"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 JAX_PLATFORMS=cpu

# Build from a clean copy (the files of a clone plus new ones git does not
# ignore): setuptools builds in the source tree and packs whatever is in
# build/lib, so a stale build/ in a checkout would reach the wheel.
step "building the wheel (pip wheel --no-deps) from a clean copy of $PWD"
mkdir "$TMP/src"
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do
    if [[ -e $f ]]; then printf '%s\0' "$f"; fi  # not files deleted here
  done | tar --null -T - -cf - | tar -xf - -C "$TMP/src"
"$PYTHON" -m pip wheel --quiet --no-deps -w "$TMP/dist" "$TMP/src"
WHEEL=$(echo "$TMP"/dist/mmvaeplus_jax-*.whl)
step "built $(basename "$WHEEL")"

step "installing it in a fresh virtualenv ($TMP/venv)"
"$PYTHON" -m venv "$TMP/venv"
# --no-compile: byte-compiling every installed module costs more than
# compiling the few that run.
"$TMP/venv/bin/python" -m pip install --quiet --no-compile "$WHEEL"
export PATH="$TMP/venv/bin:$PATH"
mkdir "$TMP/work"
cd "$TMP/work"  # the checkout is not on sys.path from here

step "mmvaeplus_jax and its builders resolve to the venv's site-packages"
CONFIGS=$(python - <<'EOF'
import os, pathlib, sys, sysconfig
import mmvaeplus_jax
import mmvaeplus_jax.configs
from mmvaeplus_jax.input import builders
site = pathlib.Path(sysconfig.get_paths()['purelib']).resolve()
for what, path in [('mmvaeplus_jax', mmvaeplus_jax.__file__),
                   ('configs', mmvaeplus_jax.configs.__file__),
                   ('builders.DATASETS_DIR', builders.DATASETS_DIR),
                   *[(f'builder {name}', builders.builder_path(name))
                     for name in builders.BUILDER_FILES]]:
  path = pathlib.Path(path).resolve()
  assert path.is_relative_to(site), f'{what}: {path} is not under {site}'
  print(f'wheel_check:   {what}: {path}', file=sys.stderr)
print(os.path.dirname(mmvaeplus_jax.configs.__file__))
EOF
)
for script in mmvaeplus-train mmvaeplus-eval; do
  [[ $(command -v "$script") == "$TMP/venv/bin/$script" ]] ||
    { step "FAILED: $script is not the venv's"; exit 1; }
done

step "mmvaeplus-train (smoke config, 2 modalities, 2 steps; mini data" \
  "prepared in $TMP/tfds)"
mmvaeplus-train --config="$CONFIGS/polymnist.py:smoke" \
  --workdir="$TMP/run" --config.data.data_dir="$TMP/tfds" \
  --config.model.num_modalities=2 --config.train.num_steps=2
step "mmvaeplus-eval (bound)"
mmvaeplus-eval --workdir="$TMP/run" --config.evals.evaluators=bound

for f in "$TMP/tfds/polymnist/mini" "$TMP/run/config.json" \
    "$TMP/run/metrics.json" "$TMP/run/eval/2/metrics.json"; do
  [[ -e $f ]] || { step "FAILED: $f missing"; exit 1; }
  step "found ${f#"$TMP"/}"
done
python - "$TMP/run/eval/2/metrics.json" <<'EOF'
import json, math, sys
bound = json.load(open(sys.argv[1]))['eval/bound']
assert math.isfinite(bound), bound
print(f'wheel_check:   eval/bound = {bound:.1f} (finite)')
EOF
step "OK"
