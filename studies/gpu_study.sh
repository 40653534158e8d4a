#!/usr/bin/env bash
# The PolyMNIST study at full width on one GPU, in under 10 minutes of wall
# time (issue 14, item 4): MMVAE+ and MMVAE with the official 2024 recipe,
# each trained for STUDY_TRAIN_S seconds (compilation included), evaluated
# like the CPU study (coherence, FD_clf, latent classification, diversity,
# test bound, figures) with the study's kept classifiers
# (studies/classifiers/rebuilt_wide_seed0 and _seed1, trained on the same
# `rebuilt` data; their weights are built here first when missing), rows in
# the study's format (records/<cell>/seed0.json, results.md).
#
#   bash studies/gpu_study.sh                  # on the GPU machine
#   STUDY_SMOKE=1 bash studies/gpu_study.sh    # a tiny model on `mini`: checks
#                                              # the script on a CPU
#
# Budget (defaults; STUDY_TRAIN_S, STUDY_MODELS, STUDY_EVAL_N override):
# about 1 min to build `rebuilt` from MNIST and the backgrounds, 180 s of
# training per model, 1-2 min of evaluation per model, and, first, the two
# classifier sets when their weights are not built (14 epochs x 5
# modalities each; not yet timed on a GPU: lower STUDY_TRAIN_S if the
# 10-minute window is at risk).
#
# Data. The device machine has no ../shared. Copy what `rebuilt` is built
# from (14 MB) into an ignored folder of the checkout, once, here:
#
#   echo /.device_data/ >> .git/info/exclude
#   mkdir -p .device_data && cp -r ../shared/data/mnist \
#     ../shared/data/polymnist_backgrounds .device_data/
#
# Packages. The machine's image has JAX, flax, optax, orbax, chex, numpy,
# scipy, pandas, scikit-learn, matplotlib, pillow and tqdm, but not
# tensorflow-datasets (and its array_record, dm-tree, immutabledict,
# promise, simple-parsing, tensorflow-metadata, termcolor, toml,
# googleapis-common-protos), ml_collections or tensorboardX. Carry them as
# wheels, once, here (promise has no wheel on PyPI: build it):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     ml_collections==1.1.0 tensorflow-datasets==4.9.10 array_record==0.8.6 \
#     dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9 \
#     docstring-parser==0.17.0 tensorflow-metadata==1.21.0 termcolor==3.3.0 \
#     toml==0.10.2 googleapis-common-protos==1.76.0 tensorboardX==2.6.4 \
#     importlib_resources==6.5.2
#   python3 -m pip wheel --no-deps -w .whl promise==2.3
#
# then, with the device tool:
#
#   run: command "bash studies/gpu_study.sh", carry [".whl", ".device_data"],
#        timeout_s 600
#
# Files back (to $OUT when set, else runs/gpu_study_out/): gpu_study_log.txt,
# results.md, records/<cell>/seed0.json, each cell's conditional grid
# (grid_<cell>.png) and scatter.png (coherence vs FD_clf).
# The run directories stay on the machine (checkpoints are large).

set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
PY=${PYTHON:-python3}
DEST=${OUT:-runs/gpu_study_out}
mkdir -p "$DEST"
LOG="$DEST/gpu_study_log.txt"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
say() { echo "[gpu_study.sh $(( $(date +%s) - START ))s] $*"; }

source bench/device_env.sh  # carried wheels, PYTHONPATH, GPU memory

say "preflight"
"$PY" - <<'EOF' || { say "preflight failed: see this script's header for the wheels to carry"; exit 1; }
import importlib
for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'numpy',
             'ml_collections', 'tensorflow_datasets', 'array_record',
             'tensorboardX', 'PIL', 'scipy', 'sklearn', 'matplotlib'):
  m = importlib.import_module(name)
  print(f'  {name} {getattr(m, "__version__", "?")}')
import jax
print('  devices:', jax.devices())
import mmvaeplus_jax.tools.study, mmvaeplus_jax.training.loop  # noqa
import mmvaeplus_jax.evaluation.runner  # noqa
EOF
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ "${STUDY_SMOKE:-0}" = "1" ]; then
  ARG="smoke"
  SETS=(--set "data.data_dir=${STUDY_TFDS:-/tmp/tfds_gpu_study_smoke}")
else
  DATA=${STUDY_DATA:-}
  for d in .device_data ../shared/data; do
    if [ -z "$DATA" ] && [ -d "$d/mnist" ] && [ -d "$d/polymnist_backgrounds" ]; then DATA=$d; fi
  done
  if [ -z "$DATA" ]; then
    say "no data: copy ../shared/data/{mnist,polymnist_backgrounds} into .device_data/ and carry it (see the header)"
    exit 1
  fi
  ARG="2024,train_s=${STUDY_TRAIN_S:-180},models=${STUDY_MODELS:-mmvaeplus+mmvae},eval_n=${STUDY_EVAL_N:-10000}"
  SETS=(--set "data.manual_dir=$DATA" --set "data.data_dir=${STUDY_TFDS:-/tmp/tfds_gpu_study}")
fi
if [ "${STUDY_SMOKE:-0}" != "1" ]; then
  # The study's classifiers: their weights are built at run time
  # (studies/classifiers/*/PROVENANCE.md), here on the GPU if missing.
  for seed in 0 1; do
    CLF=studies/classifiers/rebuilt_wide_seed$seed
    if [ ! -d "$CLF/m4" ]; then
      say "building the classifier set $CLF (seed $seed)"
      "$PY" -m mmvaeplus_jax.tools.classifiers --dataset rebuilt \
        --data_dir "${STUDY_TFDS:-/tmp/tfds_gpu_study}" --manual_dir "$DATA" \
        --out "$CLF" --seed "$seed" || { say "classifier training failed"; exit 1; }
    fi
  done
fi
ROOT=${STUDY_ROOT:-/tmp/gpu_study_runs}
say "study polymnist_gpu.py:$ARG -> $ROOT"
"$PY" -m mmvaeplus_jax.tools.study --study="studies/polymnist_gpu.py:$ARG" \
  --root="$ROOT" "${SETS[@]}" --records="$DEST/records"
STATUS=$?
cp "$ROOT/results.md" "$DEST/" 2>/dev/null
# The figures (at most 8 files come back from the device: the log,
# results.md, one record per cell, these).
"$PY" -m mmvaeplus_jax.tools.study --study="studies/polymnist_gpu.py:$ARG" \
  --root="$ROOT" "${SETS[@]}" --report="$ROOT/report" > /dev/null \
  && cp "$ROOT"/report/grid_*.png "$ROOT"/report/scatter.png "$DEST/"
say "done in $(( $(date +%s) - START )) s (status $STATUS); files in $DEST"
exit $STATUS
