#!/usr/bin/env bash
# Every CPU benchmark of bench/RESULTS.md in one go, then the scaling plot.
#
#   bash bench/run_cpu.sh                     # 2-core CPU: 34 min while
#                                             # shared (load 1.5-5), less quiet
#   RUN_CPU_OPTIONS=1 bash bench/run_cpu.sh   # + remat and bf16 rows (~4 min)
#   RUN_CPU_FULL=1 bash bench/run_cpu.sh      # + one timed dreg_k10_b128 step
#                                             #   (about 30 minutes more)
#
# Writes bench/cpu/cpu_step.jsonl (bench/step.py rows), cpu_epoch.jsonl
# (bench/epoch.py row), cpu_log.txt (everything printed), tables.md (all
# rows as markdown, to paste into bench/RESULTS.md) and scaling_cpu.png;
# prints the table rows as they come and the total time. It starts these
# files afresh (BENCH_APPEND=1 appends instead). Run it on a quiet machine:
# the numbers are wall-clock times. XLA:CPU runs this model at about
# 7-15 GFLOP/s here, so the step counts are chosen to fit:
#
#   1. cpu_default (width 1/4, B=32, the 2024 recipe): 3 warm-up + 20 steps
#   2. full width, one timed step each, no warm-up (a full-width step is
#      2.5 TFLOP, several minutes here; the first call after lower+compile
#      does not recompile): official2024, dreg_k10_b16; dreg_k10_b128
#      (19.7 TFLOP/step): compile only (FLOPs, XLA memory) unless
#      RUN_CPU_FULL=1
#   3. sweeps at width 1/8: K = 1, 2, 5, 10, 20 at B=8; M = 2..5 and fake
#      devices 1, 2, 4, 8 at B=32; batch 8..128: 1 warm-up + 3 steps each
#   4. 20 steps of the training loop's hot path at the cpu_default size
#      (bench/epoch.py: input pipeline + step), to compare with row 1
#   (RUN_CPU_OPTIONS=1: remat at K = 10, 20 and bf16 at K = 10, width 1/8,
#    B=8, to compare with the K sweep)
#   5. the plot and the markdown tables
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
PY=${PYTHON:-python}
DEST=${BENCH_OUT:-bench/cpu}
mkdir -p "$DEST"
JSONL="$DEST/cpu_step.jsonl"
EPOCH_JSONL="$DEST/cpu_epoch.jsonl"
if [ "${BENCH_APPEND:-0}" != "1" ]; then
  rm -f "$JSONL" "$EPOCH_JSONL" "$DEST/cpu_log.txt" "$DEST/tables.md"
fi
exec > >(tee -a "$DEST/cpu_log.txt") 2>&1
unset XLA_FLAGS  # one CPU device unless a sweep sets fake devices
export JAX_PLATFORMS=cpu
say() { echo "[run_cpu.sh $(( $(date +%s) - START ))s] $*"; }
# A compilation cache private to this run: each timed step program is unique
# in the run (its compile time is real); init programs shared by cases load.
CACHE=$(mktemp -d)
trap 'rm -rf "$CACHE"' EXIT
COMMON=(--platform=cpu --device_count=1 --device_kind=cpu --out "$JSONL"
        --compilation_cache "$CACHE"
        --note "run_cpu.sh $(date -u +%Y-%m-%dT%H:%MZ) $(uptime | sed 's/.*load/load/')")
say "load at start: $(cat /proc/loadavg)"

say "1/5 cpu_default"
"$PY" bench/step.py "${COMMON[@]}" --cases=cpu_default --steps=20 --warmup=3
say "2/5 full width"
"$PY" bench/step.py "${COMMON[@]}" --cases=official2024,dreg_k10_b16 \
  --steps=1 --warmup=0
if [ "${RUN_CPU_FULL:-0}" = "1" ]; then
  "$PY" bench/step.py "${COMMON[@]}" --cases=dreg_k10_b128 --steps=1 --warmup=0
else
  "$PY" bench/step.py "${COMMON[@]}" --cases=dreg_k10_b128 --compile_only
fi
say "3/5 sweeps (width 1/8)"
SW=(--sweep_width=0.125 --steps=3 --warmup=1)
"$PY" bench/step.py "${COMMON[@]}" "${SW[@]}" --sweep=K --sweep_batch=8
"$PY" bench/step.py "${COMMON[@]}" "${SW[@]}" --sweep=M,devices --sweep_batch=32
"$PY" bench/step.py "${COMMON[@]}" "${SW[@]}" --sweep=batch
if [ "${RUN_CPU_OPTIONS:-0}" = "1" ]; then
  say "options: remat and bf16 (width 1/8, B=8)"
  "$PY" bench/step.py "${COMMON[@]}" "${SW[@]}" --sweep=K --sweep_batch=8 \
    --sweep_values=10,20 --remat
  "$PY" bench/step.py "${COMMON[@]}" "${SW[@]}" --sweep=K --sweep_batch=8 \
    --sweep_values=10 --compute_dtype=bfloat16
fi
say "4/5 training-loop hot path at the cpu_default size"
"$PY" bench/epoch.py --width=0.25 --batch_size=32 --steps=20 \
  --compilation_cache "$CACHE" --out "$EPOCH_JSONL" --note "run_cpu.sh"
say "5/5 plot and tables"
"$PY" bench/plot.py "$JSONL" --out "$DEST/scaling_cpu.png"
"$PY" bench/plot.py "$JSONL" "$EPOCH_JSONL" --markdown > "$DEST/tables.md"
cat "$DEST/tables.md"
say "load at end: $(cat /proc/loadavg)"
say "total $(( $(date +%s) - START )) s"
