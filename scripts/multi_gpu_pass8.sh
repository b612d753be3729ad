#!/usr/bin/env bash
# Issue 19's pass on one host of N GPUs (2, 4 or 8), in one go, within about 9 minutes on 8 GPUs:
#   compute       one GPU: bf16 matmuls, HBM copies, a llama3.1-8b layer (for calibration)
#   coll-calib    parplan bench collectives over groups of 2, 4 and N, contiguous and strided, every
#                 group of a partition at once; 8 B - 4 GiB in steps of 4x (the calibration run)
#   calibrate     a profile from coll-calib + compute, against the NVLS-off cluster file
#   coll-eval     a second run, 8 B - 4 GiB in steps of 2x, each partition also with one group alone
#   compare-*     coll-eval predicted by the shipped profile as is, by it with in_switch_reduction: false,
#                 and by the calibrated profile
#   layers-*      TP 2/4/N with and without sequence parallel, FSDP over N, FSDP N/2 x TP 2, one device
#   overlap       FSDP's all-gather / reduce-scatter beside a layer's forward / backward
#   context       ring attention over 2/4/N GPUs at 32k-128k tokens
#   step          a whole FSDP2 training step of a Llama-shaped model over N GPUs, eager and compiled
#   compare-step-*  the steps predicted (torchtitan profile) with the three profiles
#   tables        tables.md: every table against the issue's targets (scripts/multi_gpu_tables.py)
# then packs OUT_DIR into one tar.gz.
#
# usage: scripts/multi_gpu_pass8.sh [--dry-run] [--nproc N] [--only STEP,STEP] OUT_DIR [PACK_DIR]
#   e.g. bash scripts/multi_gpu_pass8.sh /tmp/multi-gpu-pass PACK_DIR
#   (PACK_DIR gets three files: multi-gpu-pass.tar.gz with everything, tables.md and summary.txt.)
#   --dry-run: the same steps on this machine's CPU, gloo and tiny sizes (N defaults to 4), in minutes.
#   --only: run just these steps (the others are skipped, not failed).
# Every step has a time limit, and the whole pass stops measuring after PASS_BUDGET_S seconds
# (default 515: 9 minutes less the tables and packing); a step that fails is reported and the
# others still run. NVLink multicast stays off everywhere (NCCL_NVLS_ENABLE=0,
# TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1). Installs nothing, reaches no network.
set -uo pipefail

DRY=0 NPROC="" ONLY=""
while (( $# )); do
  case $1 in
    --dry-run|--cpu) DRY=1; shift ;;
    --nproc) NPROC=$2; shift 2 ;;
    --only) ONLY=",$2,"; shift 2 ;;
    -h|--help) sed -n 2,27p "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
OUT=${1:?usage: scripts/multi_gpu_pass8.sh [--dry-run] [--nproc N] [--only STEPS] OUT_DIR [PACK_DIR]}
PACK=${2:-}
PY=${PYTHON:-python3}
BUDGET_S=${PASS_BUDGET_S:-515}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 \
  TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/summary.txt"
START_S=$(date +%s)
FAILED=()

remaining() { echo $(( BUDGET_S - ($(date +%s) - START_S) )); }

# step NAME LIMIT_S CMD...: CMD with a time limit (clipped to the budget left), output to $OUT/NAME.log
step() {
  local name=$1 limit=$2
  shift 2
  if [[ -n $ONLY && $ONLY != *",$name,"* ]]; then
    return 0
  fi
  local left
  left=$(remaining)
  if (( left < 10 )); then
    echo "== $name: skipped (time budget spent)" | tee -a "$OUT/summary.txt"
    FAILED+=("$name")
    return 1
  fi
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 3 "$OUT/$name.log"
  echo "== $name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$OUT/summary.txt"
  (( rc == 0 )) || FAILED+=("$name")
  return $rc
}

BENCH=("$PY" -m parplan.bench)

if (( DRY )); then
  N=${NPROC:-4}
  BASE=h100-sxm
  DEV=(--device cpu --backend gloo)
  printf '%s\n' "name: tiny-llama" "layers: 2" "hidden: 64" "heads: 4" "kv_heads: 2" "ffn_hidden: 96" \
    "activation: swiglu" "norm: rmsnorm" "position: rope" "bias: false" "vocab: 1000" "seq_len: 32" > "$OUT/tiny-llama.yaml"
  COMPUTE=(--suite matmul,copy,layer --matmul-dtypes fp32 --matmul-min 16 --matmul-max 64 --max-bytes 4K
           --model "$OUT/tiny-llama.yaml" --seq 16 --iters 2 --warmup 1 --timeout 60)
  COLL=(--max-bytes 4K --iters 2 --warmup 1 --timeout 60)
  LAYER_CASES=("tiny")
  SCRIPT_DEV=cpu
  SCRIPT=(--device cpu --reps 2 --warmup 1)
  OVERLAP=(--tiny --tokens 32,64)
  CONTEXT=(--tiny)
  STEP=(--model "$OUT/tiny-llama.yaml" --seq 16 --micro-batch 2 --step-modes eager --iters 2 --warmup 1 --timeout 120)
  { echo "dry run: $N gloo ranks on the CPU"; uname -a
    "$PY" -c "import torch; print('torch', torch.__version__)"; } > "$OUT/environment.txt" 2>&1
else
  N=${NPROC:-$(nvidia-smi -L 2> /dev/null | grep -c '^GPU')}
  GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -n1)
  case $GPU in *H200*) BASE=h200 ;; *H100*PCIe*) BASE=h100-pcie ;; *) BASE=h100-sxm ;; esac
  DEV=(--device cuda)
  COMPUTE=(--suite matmul,copy,layer --matmul-dtypes bf16 --max-bytes 1G --model llama3.1-8b --seq 4096
           --iters 20 --warmup 5 --timeout 60)
  COLL=(--max-bytes 4G --iters 10 --warmup 3 --timeout 60)
  # MODEL:MICRO_BATCH:SEQ[:profile]; a Llama 3 8B and a 70B layer, the first with per-kernel times
  LAYER_CASES=(${PASS_LAYERS:-"llama3.1-8b:1:4096:profile" "llama3.1-70b:1:4096"})
  SCRIPT_DEV=cuda
  SCRIPT=(--device cuda --reps 8 --warmup 2)
  OVERLAP=(--model llama3.1-8b --tokens 512,1024,2048,4096,8192)
  CONTEXT=(--model llama3.1-8b --seq 32768,65536,131072)
  STEP_MODEL=${PASS_STEP_MODEL:-$( (( N >= 8 )) && echo llama3.1-8b || echo llama3.2-3b)}
  STEP=(--model "$STEP_MODEL" --seq 4096 --micro-batch 1 --step-modes eager,compiled --iters 5 --warmup 3
        --timeout 150)
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    nvidia-smi topo -m
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
    env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_)' | sort
  } > "$OUT/environment.txt" 2>&1
fi
cat "$OUT/environment.txt"
(( N >= 2 )) || { echo "need at least 2 GPUs (found $N)" >&2; exit 2; }
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc-per-node "$N")
GROUPS_ARG=world
for g in 2 4; do (( g < N && N % g == 0 )) && GROUPS_ARG+=",$g"; done

# The shipped profile as is, with NVLink SHARP off as these machines run, and as calibrated here.
CLUSTER="$OUT/cluster-nvls-off.yaml"
printf 'hardware: %s\ndevices: %s\nin_switch_reduction: false   # NCCL_NVLS_ENABLE=0\n' "$BASE" "$N" > "$CLUSTER"
CAL="$OUT/calibrated.yaml"
printf '%s\n' "shipped $BASE" "nvls-off cluster-nvls-off.yaml" "calibrated calibrated.yaml" > "$OUT/profiles.txt"
HW=(--hw "$BASE" --hw "$CLUSTER")

step compute 90 "${BENCH[@]}" bench --nproc 1 "${COMPUTE[@]}" "${DEV[@]}" -o "$OUT/compute"
step coll-calib 120 "${BENCH[@]}" bench --nproc "$N" --suite collectives --groups "$GROUPS_ARG" --layout both --factor 4 \
  --min-bytes 8 "${COLL[@]}" "${DEV[@]}" -o "$OUT/collectives-calib"
CAL_RUNS=()
for d in collectives-calib compute; do [[ -s $OUT/$d/results.csv ]] && CAL_RUNS+=("$OUT/$d"); done
(( ${#CAL_RUNS[@]} )) && step calibrate 60 "${BENCH[@]}" calibrate "${CAL_RUNS[@]}" --hw "$CLUSTER" -o "$CAL"
[[ -s $CAL ]] && HW+=(--hw "$CAL")
step coll-eval 180 "${BENCH[@]}" bench --nproc "$N" --suite collectives --groups "$GROUPS_ARG" --layout both \
  --concurrency both --factor 2 --min-bytes 8 "${COLL[@]}" "${DEV[@]}" -o "$OUT/collectives-eval"
if [[ -s $OUT/collectives-eval/results.csv ]]; then
  step compare-shipped 60 "${BENCH[@]}" compare "$OUT/collectives-eval" --hw "$BASE" -o "$OUT/compare-shipped"
  step compare-nvls-off 60 "${BENCH[@]}" compare "$OUT/collectives-eval" --hw "$CLUSTER" -o "$OUT/compare-nvls-off"
  [[ -s $CAL ]] && step compare-calibrated 60 "${BENCH[@]}" compare "$OUT/collectives-eval" --hw "$CAL" \
    -o "$OUT/compare-calibrated"
fi
for case in "${LAYER_CASES[@]}"; do
  if [[ $case == tiny ]]; then
    step layers-tiny 120 "${TORCHRUN[@]}" scripts/multi_gpu_layers.py --tiny "${SCRIPT[@]}" "${HW[@]}" --out "$OUT/layers-tiny"
    continue
  fi
  IFS=: read -r model mb seq prof <<< "$case"
  step "layers-$model" 100 "${TORCHRUN[@]}" scripts/multi_gpu_layers.py --model "$model" --micro-batch "$mb" --seq "$seq" \
    ${prof:+--profile} "${SCRIPT[@]}" "${HW[@]}" --out "$OUT/layers-$model"
done
step overlap 90 "${TORCHRUN[@]}" scripts/multi_gpu_overlap.py "${OVERLAP[@]}" "${SCRIPT[@]}" "${HW[@]}" --out "$OUT/overlap"
step context 120 "${TORCHRUN[@]}" scripts/multi_gpu_context.py "${CONTEXT[@]}" --device "$SCRIPT_DEV" --reps 3 --warmup 1 \
  "${HW[@]}" --out "$OUT/context"
step step 180 "${BENCH[@]}" bench --nproc "$N" --suite step "${STEP[@]}" "${DEV[@]}" -o "$OUT/step"
if [[ -s $OUT/step/results.csv ]]; then
  step compare-step-shipped 30 "${BENCH[@]}" compare "$OUT/step" --hw "$BASE" -o "$OUT/compare-step-shipped"
  step compare-step-nvls-off 30 "${BENCH[@]}" compare "$OUT/step" --hw "$CLUSTER" -o "$OUT/compare-step-nvls-off"
  [[ -s $CAL ]] && step compare-step-calibrated 30 "${BENCH[@]}" compare "$OUT/step" --hw "$CAL" \
    -o "$OUT/compare-step-calibrated"
fi

# Tables and the pack run whatever happened above, outside the measuring budget.
BUDGET_S=$(( BUDGET_S + 60 ))
step tables 45 "$PY" scripts/multi_gpu_tables.py "$OUT"
echo "== done in $(( $(date +%s) - START_S ))s; results under $OUT" | tee -a "$OUT/summary.txt"
(( ${#FAILED[@]} )) && echo "== failed: ${FAILED[*]}" | tee -a "$OUT/summary.txt"
if [[ -n $PACK ]] && [[ -z $ONLY || $ONLY == *",pack,"* ]]; then
  mkdir -p "$PACK"
  tar czf "$PACK/multi-gpu-pass.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")"
  cp "$OUT/summary.txt" "$PACK/"
  [[ -s $OUT/tables.md ]] && cp "$OUT/tables.md" "$PACK/"
  echo "packed $PACK/multi-gpu-pass.tar.gz ($(du -h "$PACK/multi-gpu-pass.tar.gz" | cut -f1))"
fi
(( ${#FAILED[@]} == 0 ))
