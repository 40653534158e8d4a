#!/usr/bin/env bash
# Issue 11, item 2: our full-width step with XLA's convolutions, with oneDNN's
# (model.conv_impl='onednn', float32) and with oneDNN's on bf16 operands
# ('onednn_bf16'), and the official PyTorch step, case by case in that order
# on the same machine, in one run. Run it on a quiet machine (nothing else
# on the cores).
#
#   pip install -e ".[onednn]"          # plus a C++ compiler (g++)
#   OFFICIAL_DIR=<checkout of srl-ethz/mmvaeplus> TORCH_PYTHON=<python with torch> \
#     bash bench/onednn_side_by_side.sh [out_dir]
#
# Without OFFICIAL_DIR / TORCH_PYTHON the PyTorch rows are skipped. Rows are
# appended to out_dir/cpu_step_onednn_<date>.jsonl and
# out_dir/official_pytorch_step_<date>.jsonl (default out_dir: bench/cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir=${1:-bench/cpu}
day=$(date -u +%F)
mkdir -p "$out_dir"
ours="$out_dir/cpu_step_onednn_$day.jsonl"
theirs="$out_dir/official_pytorch_step_$day.jsonl"
python -c "from mmvaeplus_jax import onednn; onednn.register()"  # build first
# case, timed steps, PyTorch arguments
while read -r case steps torch_args; do
  for impl in xla onednn onednn_bf16; do
    python bench/step.py --cases="$case" --steps="$steps" --warmup=1 \
      --conv_impl="$impl" --out="$ours" --note="onednn side by side"
  done
  if [[ -n "${OFFICIAL_DIR:-}" && -n "${TORCH_PYTHON:-}" ]]; then
    # shellcheck disable=SC2086
    "$TORCH_PYTHON" bench/official_pytorch_step.py \
      --official_dir="$OFFICIAL_DIR" --threads=2 $torch_args --warmup=1 \
      --steps="$steps" --out="$theirs"
  fi
done <<'EOF'
k1_b16 5 --K=1 --B=16 --obj=elbo
k1_b64 3 --K=1 --B=64 --obj=elbo
official2024 3 --K=1 --B=128 --obj=elbo
dreg_k10_b4 5 --K=10 --B=4 --obj=dreg
dreg_k10_b16 3 --K=10 --B=16 --obj=dreg
EOF
