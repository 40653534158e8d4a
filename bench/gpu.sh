#!/usr/bin/env bash
# GPU benchmark in one short run: the step table, the K sweep and one timed
# epoch of the 2024 recipe, in under 8 minutes on one NVIDIA H100 / H200.
#
#   bash bench/gpu.sh                  # on the GPU machine, from the repo root
#   BENCH_SMOKE=1 bash bench/gpu.sh    # tiny models: checks the script on CPU
#
# Writes (to $OUT when set, else bench/out/): gpu_step.jsonl (bench/step.py
# rows), gpu_epoch.jsonl (bench/epoch.py row), gpu_scaling.png (bench/plot.py),
# gpu_tables.md (all rows as markdown, for bench/RESULTS.md) and gpu_log.txt
# (everything printed). Stages run in priority order against
# a total budget (BENCH_BUDGET_S, default 450 s after the start): a stage that
# would start too late is skipped and says so, and each step case is stopped
# at the budget (bench/step.py --deadline), so the script ends in time even
# when compilation is slower than expected.
#
#   1. step table, float32: official2024 (full width, K=1, B=128),
#      dreg_k10_b16, dreg_k10_b128 (full width, K=10, DReG)
#   2. one epoch of the 2024 recipe: 60,000 examples / 128 = 469 steps, the
#      training loop's hot path (bench/epoch.py: prefetching pipeline, global
#      batches, donated step, lagged metric reads) on synthetic uint8 data:
#      the device machine has no dataset (../shared does not travel)
#   3. K sweep, full width, B=32 (K = 1, 2, 5, 10, 20; DReG)
#   4. bf16 compute: official2024+bf16, dreg_k10_b128+bf16
#   5. official2024+vmap (modalities as one vmapped call: the default is off
#      because XLA:CPU ran it 17x slower; this measures it on the GPU)
#   6. dreg_k10_b128+remat (memory vs time; XLA:CPU's memory analysis puts
#      the plain step at 67 GB, near an H100's 80)
#   7. eval throughput (bench/eval_throughput.py: images/s of the Inception
#      feature pass, random weights unless the official file is there, and of
#      coherence with the full-width model); printed to gpu_log.txt
#   8. the scaling plot and markdown tables
#
# Packages. The machine's image has JAX (0.11.2 seen), flax, optax, chex,
# absl, numpy and matplotlib, but not ml_collections, which the configs need.
# Carry it as a wheel (pure Python): once, here, in the repo root,
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl ml_collections==1.1.0
#
# (add flax==0.12.8 optax==0.2.8 to the same command to pin the versions
# this project is tested with, if the machine's own ones fail the preflight),
# then run with `.whl` carried:
#
#   device run: command "bash bench/gpu.sh", carry [".whl"], timeout_s 540
#
# Wheels found in .whl/ are installed into /tmp/site (no network, no deps).
# The project itself is used from the working tree (PYTHONPATH), not
# installed. Peak TFLOP/s for the fraction-of-peak column: NVIDIA's dense
# spec figures for H100/H200 SXM, TF32 494.7 (for float32 rows: JAX's default
# precision lets XLA run float32 convolutions in TF32 on these GPUs) and
# BF16 989.4.

set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET_S=${BENCH_BUDGET_S:-450}
DEADLINE=$((START + BUDGET_S))
PY=${PYTHON:-python3}
DEST=${OUT:-bench/out}
mkdir -p "$DEST"
LOG="$DEST/gpu_log.txt"
STEP_JSONL="$DEST/gpu_step.jsonl"
EPOCH_JSONL="$DEST/gpu_epoch.jsonl"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1

say() { echo "[gpu.sh $(( $(date +%s) - START ))s] $*"; }
left() { echo $(( DEADLINE - $(date +%s) )); }

source bench/device_env.sh  # carried wheels, PYTHONPATH, GPU memory

say "preflight"
PRE=$(mktemp)
"$PY" - "$PRE" <<'EOF' || { say "preflight failed: see the header for carrying wheels"; exit 1; }
import importlib, sys, jax
for name in ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'ml_collections',
             'absl', 'matplotlib'):
  m = importlib.import_module(name)
  print(f'  {name} {getattr(m, "__version__", "?")}')
print('  devices:', jax.devices())
import mmvaeplus_jax.training.step, mmvaeplus_jax.configs.polymnist  # noqa
import dataclasses, flax.linen as nn, optax
assert hasattr(optax, 'tree') and hasattr(optax.tree, 'norm'), \
    'optax too old (needs optax.tree.norm): carry optax==0.2.8'
if 'promote_dtype' not in {f.name for f in dataclasses.fields(nn.Conv)}:
  print('  WARNING: flax without Conv.promote_dtype: bf16 cases will fail;'
        ' carry flax==0.12.8')
with open(sys.argv[1], 'w') as f:
  print(jax.default_backend(), jax.device_count(), jax.devices()[0].device_kind,
        sep='|', file=f)
EOF
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
IFS='|' read -r PLATFORM NDEV KIND < "$PRE"; rm -f "$PRE"
# The step driver skips its own JAX probe with these.
PROBE=(--platform="$PLATFORM" --device_count="$NDEV" --device_kind="$KIND")
# A compilation cache private to this run: every timed step program is unique
# in the run, so its compile time is real, while the init program (the same
# for all full-width M=5 cases) compiles once, and the epoch's step loads the
# official2024 table case's program.
CACHE=$(mktemp -d)
trap 'rm -rf "$CACHE"' EXIT
PEAK_F32=""; PEAK_BF16=""
case "$KIND" in
  *H100*|*H200*) PEAK_F32="--peak_tflops=494.7"; PEAK_BF16="--peak_tflops=989.4" ;;
esac

if [ "${BENCH_SMOKE:-0}" = "1" ]; then
  say "BENCH_SMOKE=1: tiny models"
  TABLE=(--cases=smoke --steps=3 --warmup=1)
  BF16=(--cases=smoke --steps=3 --warmup=1 --compute_dtype=bfloat16)
  SWEEP=(--sweep=K --sweep_values=1,2 --sweep_width=0.0625 --sweep_batch=8 --steps=3 --warmup=1)
  VMAP=(--cases=smoke --steps=3 --warmup=1 --vmap_modalities)
  REMAT=(--sweep=K --sweep_values=2 --sweep_width=0.0625 --sweep_batch=8 --steps=3 --warmup=1 --remat)
  EPOCH=(--width=0.0625 --batch_size=16 --num_examples=64)
  EVAL=(--inception_batch=2 --inception_batches=1 --config=smoke --coherence_batch=8 --coherence_batches=1)
else
  TABLE=(--cases=official2024,dreg_k10_b16,dreg_k10_b128 --steps=20 --warmup=2 $PEAK_F32)
  BF16=(--cases=official2024,dreg_k10_b128 --steps=20 --warmup=2 --compute_dtype=bfloat16 $PEAK_BF16)
  SWEEP=(--sweep=K --sweep_width=1.0 --sweep_batch=32 --steps=20 --warmup=2 $PEAK_F32)
  VMAP=(--cases=official2024 --steps=20 --warmup=2 --vmap_modalities $PEAK_F32)
  REMAT=(--cases=dreg_k10_b128 --steps=10 --warmup=2 --remat $PEAK_F32)
  EPOCH=()
  EVAL=(--inception_batch=250 --inception_batches=4 --config=official2024 --coherence_batch=256 --coherence_batches=5)
fi

stage() {  # stage NAME MIN_SECONDS_LEFT command...
  local name=$1 need=$2; shift 2
  if [ "$(left)" -lt "$need" ]; then
    say "SKIPPED $name: $(left) s of the budget left, needs about $need"
    return
  fi
  say "$name"
  "$@" || say "$name exited with status $?"
}

stage "1/8 step table (float32)" 60 \
  "$PY" bench/step.py "${PROBE[@]}" "${TABLE[@]}" --out "$STEP_JSONL" --deadline "$DEADLINE" --compilation_cache "$CACHE" --note gpu.sh
stage "2/8 one epoch, 2024 recipe" 60 \
  timeout "$(( $(left) > 0 ? $(left) : 1 ))" "$PY" bench/epoch.py ${EPOCH[@]+"${EPOCH[@]}"} --out "$EPOCH_JSONL" --compilation_cache "$CACHE" --note gpu.sh
stage "3/8 K sweep" 60 \
  "$PY" bench/step.py "${PROBE[@]}" "${SWEEP[@]}" --out "$STEP_JSONL" --deadline "$DEADLINE" --compilation_cache "$CACHE" --note gpu.sh
stage "4/8 step table (bf16)" 60 \
  "$PY" bench/step.py "${PROBE[@]}" "${BF16[@]}" --out "$STEP_JSONL" --deadline "$DEADLINE" --compilation_cache "$CACHE" --note gpu.sh
stage "5/8 vmap_modalities" 45 \
  "$PY" bench/step.py "${PROBE[@]}" "${VMAP[@]}" --out "$STEP_JSONL" --deadline "$DEADLINE" --compilation_cache "$CACHE" --note gpu.sh
stage "6/8 remat" 45 \
  "$PY" bench/step.py "${PROBE[@]}" "${REMAT[@]}" --out "$STEP_JSONL" --deadline "$DEADLINE" --compilation_cache "$CACHE" --note gpu.sh
stage "7/8 eval throughput (Inception, coherence)" 60 \
  timeout "$(( $(left) > 0 ? $(left) : 1 ))" "$PY" bench/eval_throughput.py "${EVAL[@]}"
if [ -s "$STEP_JSONL" ]; then
  say "8/8 plot and markdown tables"
  "$PY" bench/plot.py "$STEP_JSONL" --out "$DEST/gpu_scaling.png" || say "plot failed"
  "$PY" bench/plot.py "$STEP_JSONL" $( [ -s "$EPOCH_JSONL" ] && echo "$EPOCH_JSONL" ) \
    --markdown > "$DEST/gpu_tables.md" && cat "$DEST/gpu_tables.md"
fi
say "done in $(( $(date +%s) - START )) s; files in $DEST"
