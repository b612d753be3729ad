#!/usr/bin/env bash
# Collectives and sharded layers across every GPU of one host, against parplan's predictions:
#   1. parplan bench: every collective over all the GPUs, 8 B .. 4 GiB (fp32, as nccl-tests)
#   2. calibrate a profile from those rows plus a one-GPU pass of the same GPU model
#      (matmul, copy and layer rows, e.g. reports/bench/h200-2026-11-23) given as ONE_GPU_DIRS
#   3. parplan compare: the base profile and the calibrated one against the collectives
#   4. a real tensor-parallel and a real FSDP layer, and the layer on each GPU alone
#      (scripts/multi_gpu_layers.py, with per-kernel times) under torchrun, for each of LAYERS,
#      predicted with the base profile and with the calibrated one
#
# Usage, from the repository root, on a machine whose python3 has PyTorch with CUDA:
#   OUT=/path/to/results BASE=h200 ONE_GPU_DIRS="reports/bench/h200-2026-11-23/matmul ..." \
#     bash scripts/multi_gpu_pass.sh
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0); nothing is installed or fetched.
set -uo pipefail

OUT=${OUT:?set OUT to the output directory}
BASE=${BASE:?set BASE to the profile of these GPUs, e.g. h200}
PY=${PYTHON:-python3}
# MODEL:MICRO_BATCH cases for the layers, at 2048 tokens: GPT-3 13B as printed (5140 wide, rows
# not 16-byte multiples) beside 16-byte-aligned GELU and SwiGLU layers
LAYERS=${LAYERS:-"gpt3-13b:1 gpt3-6.7b:1 gpt3-6.7b:4 llama2-13b:1"}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
  NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT"
NGPU=$(nvidia-smi -L | grep -c '^GPU')
FAILED=()
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nvidia-smi topo -m
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
} > "$OUT/environment.txt" 2>&1

# run NAME LIMIT_S CMD...: CMD with a time limit, output to $OUT/NAME.log
run() {
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 4 "$OUT/$name.log"
  echo "== $name: exit $rc" | tee -a "$OUT/summary.txt"
  (( rc == 0 )) || FAILED+=("$name")
}

COLL="$OUT/collectives-${NGPU}gpu"
run collectives 300 "$PY" -m parplan.bench bench --nproc "$NGPU" --suite collectives --min-bytes 8 --max-bytes 4G \
  --iters 10 --warmup 3 --timeout 90 -o "$COLL"
# shellcheck disable=SC2086
run calibrate 60 "$PY" -m parplan.bench calibrate "$COLL" ${ONE_GPU_DIRS:-} --hw "$BASE" -o "$OUT/calibrated.yaml"
run compare-base 60 "$PY" -m parplan.bench compare "$COLL" --hw "$BASE" -o "$OUT/compare-base"
[[ -s $OUT/calibrated.yaml ]] && \
  run compare-calibrated 60 "$PY" -m parplan.bench compare "$COLL" --hw "$OUT/calibrated.yaml" -o "$OUT/compare-calibrated"
HW=(--hw "$BASE")
[[ -s $OUT/calibrated.yaml ]] && HW+=(--hw "$OUT/calibrated.yaml")
for case in $LAYERS; do
  model=${case%:*} mb=${case#*:}
  run "layers-$model-mb$mb" 150 torchrun --nproc-per-node "$NGPU" scripts/multi_gpu_layers.py --model "$model" \
    --micro-batch "$mb" --seq 2048 --profile "${HW[@]}" --out "$OUT/layers-$model-mb$mb"
done

if (( ${#FAILED[@]} )); then
  echo "== failed: ${FAILED[*]}" | tee -a "$OUT/summary.txt"
  exit 1
fi
