#!/usr/bin/env bash
# One GPU measurement pass with parplan bench, then calibrate and compare:
#   1. matmul rate: bf16, fp16, fp32; square 256..16384 and thin m = 1..64 (k = n = 8192)
#   2. HBM copy bandwidth, 8 B .. 1 GiB
#   3. one transformer layer forward + backward: gpt3-1.3b (b=4, s=2048) and llama3.1-8b (b=1, s=4096)
#   4. collectives on this one GPU (a sanity run of the NCCL path), and on every GPU if there are several
#   5. calibrate a profile from 1-4 and compare it, and the base profile, with the measurements
#
# Usage, from the repository root, on a machine whose python3 has PyTorch with CUDA:
#   OUT=/path/to/results bash scripts/gpu_bench.sh
# Installs nothing and reaches no network. Every step has a time limit and the whole pass
# stops within BENCH_BUDGET_S seconds (default 470). A step that fails is reported and the
# others still run; the exit code is non-zero if any step failed.
#
# PARPLAN_BENCH_DEVICE=cpu runs a tiny version of the same pass on the CPU with gloo (used by
# the test suite to check this script).
set -uo pipefail

OUT=${OUT:?set OUT to the output directory}
PY=${PYTHON:-python3}
DEVICE=${PARPLAN_BENCH_DEVICE:-cuda}
BUDGET_S=${BENCH_BUDGET_S:-470}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
START_S=$(date +%s)
FAILED=()

remaining() { echo $(( BUDGET_S - ($(date +%s) - START_S) )); }

# step NAME LIMIT_S ARGS...: python -m parplan.bench ARGS with a time limit, output to $OUT/NAME.log
step() {
  local name=$1 limit=$2
  shift 2
  local left
  left=$(remaining)
  if (( left < 15 )); then
    echo "== $name: skipped (time budget spent)" | tee -a "$OUT/summary.txt"
    FAILED+=("$name")
    return
  fi
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit}s): python -m parplan.bench $*"
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$PY" -m parplan.bench "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 3 "$OUT/$name.log"
  echo "== $name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$OUT/summary.txt"
  (( rc == 0 )) || FAILED+=("$name")
}

# model NAME FALLBACK_YAML: the shipped model if parplan knows it, else the given shapes as a file
model() {
  if "$PY" -c "from parplan.model import load_model; load_model('$1')" > /dev/null 2>&1; then
    echo "$1"
  else
    printf '%s\n' "$2" > "$OUT/$1.yaml"
    echo "$OUT/$1.yaml"
  fi
}

GPT3_FALLBACK='name: gpt3-1.3b
layers: 24
hidden: 2048
heads: 16
ffn_hidden: 8192
activation: gelu
vocab: 50257
seq_len: 2048'
LLAMA_FALLBACK='name: llama3.1-8b
layers: 32
hidden: 4096
heads: 32
kv_heads: 8
ffn_hidden: 14336
activation: swiglu
norm: rmsnorm
position: rope
bias: false
tied_embeddings: false
vocab: 128256
seq_len: 8192'

if [[ $DEVICE == cpu ]]; then
  COMMON=(--device cpu --backend gloo --iters 2 --warmup 1 --timeout 60)
  MATMUL=(--suite matmul --matmul-dtypes fp32 --matmul-min 16 --matmul-max 64)
  COPY=(--suite copy --min-bytes 8 --max-bytes 4K)
  GPT3=(--model gpt3-125m --micro-batch 1 --seq 16)
  LLAMA=(--model "$(model llama-tiny "$(printf '%s\n' "$LLAMA_FALLBACK" | sed 's/^name: .*/name: llama-tiny/;s/^hidden: .*/hidden: 256/;s/^heads: .*/heads: 8/;s/^kv_heads: .*/kv_heads: 2/;s/^ffn_hidden: .*/ffn_hidden: 688/')")" --micro-batch 1 --seq 16)
  COLL=(--suite collectives --min-bytes 8 --max-bytes 4K)
  NGPU=1
  BASE=a100
else
  COMMON=(--device cuda --iters 20 --warmup 5 --timeout 120)
  MATMUL=(--suite matmul --matmul-dtypes bf16,fp16,fp32 --matmul-min 256 --matmul-max 16384)
  COPY=(--suite copy --min-bytes 8 --max-bytes 1G)
  GPT3=(--model "$(model gpt3-1.3b "$GPT3_FALLBACK")" --micro-batch 4 --seq 2048)
  LLAMA=(--model "$(model llama3.1-8b "$LLAMA_FALLBACK")" --micro-batch 1 --seq 4096)
  COLL=(--suite collectives --min-bytes 8 --max-bytes 1G)
  NGPU=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
  BASE=""
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version() if torch.cuda.is_available() else None)" 2>&1
  } > "$OUT/environment.txt"
  cat "$OUT/environment.txt"
fi

step matmul 180 "${MATMUL[@]}" "${COMMON[@]}" -o "$OUT/matmul"
step copy 60 "${COPY[@]}" "${COMMON[@]}" -o "$OUT/copy"
step layer-gpt3 75 --suite layer "${GPT3[@]}" "${COMMON[@]}" -o "$OUT/layer-gpt3"
step layer-llama 75 --suite layer "${LLAMA[@]}" "${COMMON[@]}" -o "$OUT/layer-llama"
step collectives-1gpu 90 "${COLL[@]}" "${COMMON[@]}" -o "$OUT/collectives-1gpu"
if (( NGPU > 1 )); then
  step "collectives-${NGPU}gpu" 150 bench --nproc "$NGPU" --suite collectives --min-bytes 8 --max-bytes 256M \
    --iters 10 --warmup 3 --timeout 60 -o "$OUT/collectives-${NGPU}gpu"
fi

RESULTS=()
DIRS=(matmul copy layer-gpt3 layer-llama collectives-1gpu)
(( NGPU > 1 )) && DIRS+=("collectives-${NGPU}gpu")
for dir in "${DIRS[@]}"; do
  [[ -s $OUT/$dir/results.csv ]] && RESULTS+=("$OUT/$dir")
done
if (( ${#RESULTS[@]} )); then
  step calibrate 60 calibrate "${RESULTS[@]}" -o "$OUT/calibrated.yaml" ${BASE:+--hw "$BASE"}
  if [[ -s $OUT/calibrated.yaml ]]; then
    step compare-calibrated 60 compare "${RESULTS[@]}" --hw "$OUT/calibrated.yaml" -o "$OUT/compare-calibrated"
  fi
  BASE_NAME=${BASE:-$("$PY" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['description'].split()[0])" \
    "$OUT/calibrated.yaml" 2> /dev/null)}
  if [[ -n $BASE_NAME ]]; then
    step compare-base 60 compare "${RESULTS[@]}" --hw "$BASE_NAME" -o "$OUT/compare-base"
  fi
fi

echo "== done in $(( $(date +%s) - START_S ))s; results under $OUT" | tee -a "$OUT/summary.txt"
if (( ${#FAILED[@]} )); then
  echo "== failed steps: ${FAILED[*]}" | tee -a "$OUT/summary.txt"
  exit 1
fi
