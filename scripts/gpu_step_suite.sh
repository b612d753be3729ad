#!/usr/bin/env bash
# Whole-model training steps on one GPU through `parplan bench --suite step`: eager, torch.compile'd,
# and compiled with torchao FP8 linears (per-tensor scales), for the models below at the sequence and
# micro-batch each line gives; plus the element-wise kernels of scripts/gpu_stack_kernels.py. Set c runs
# the layer shapes of validated 7B-13B runs (scripts/step_models/: the models cut to the layers that fit
# 80 GB beside fp32 AdamW) at the tokens a GPU of those runs holds.
#
# Set moe times one MoE layer of five MoE models (every expert on the GPU) at two token counts, and whole
# steps of Qwen3-30B-A3B and Mixtral 8x7B cut to the layers that fit.
#
# usage: scripts/gpu_step_suite.sh OUT_DIR [SET ...]     (SET: kernels, a, b, c, d, moe; default: kernels a b)
# torchao travels as a wheel in .whl/ (the device has no registry); without it the FP8 modes are
# skipped with a note. Rows: OUT_DIR/<set>/<name>/results.csv; logs beside them (pass $OUT itself as
# OUT_DIR on the device machine: it returns files at most three folders deep).
set -uo pipefail
out=${1:?usage: scripts/gpu_step_suite.sh OUT_DIR [SET ...]}; shift
sets=${*:-kernels a b}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv > "$out/device.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$out/device.txt" 2>&1
python3 -c "import torchao; print('torchao', torchao.__version__)" >> "$out/device.txt" 2>&1

step() {  # step SET NAME MODEL SEQ MICRO_BATCH [MICRO_BATCHES]   (modes: $MODES, default eager, compiled, FP8)
  python3 -m parplan.bench --suite step --model "$3" --seq "$4" --micro-batch "$5" --micro-batches "${6:-1}" \
    --step-modes "${MODES:-auto}" --iters 5 --warmup 3 --timeout 400 -o "$out/$1/$2" 2>&1 | tee "$out/$1/$2.log"
}
for set in $sets; do
  mkdir -p "$out/$set"
  case $set in
    kernels) python3 scripts/gpu_stack_kernels.py "$out/kernels" --parts=elementwise 2>&1 | tee "$out/kernels.log" ;;
    a) step a gpt2-large-s1024 gpt2-large 1024 8          # unpadded 50257 vocabulary, LayerNorm, GELU, biases
       step a qwen2.5-0.5b-s4096 qwen2.5-0.5b 4096 4 2    # 152k vocabulary, head size 64, two micro-batches
       step a llama3.2-1b-s8192 llama3.2-1b 8192 2 ;;
    b) step b llama3.2-1b-s16384 llama3.2-1b 16384 1     # long sequence: attention-bound
       step b llama3.2-3b-s4096 llama3.2-3b 4096 2
       step b mistral-7b-s2048 mistral-7b 2048 1 ;;      # 7B under fp32 AdamW: most of the 141 GB
    c) m=scripts/step_models                               # 7B-13B layers at validated runs' tokens per GPU
       step c llama2-7b-8l-s4096 $m/llama2-7b-8l.yaml 4096 1 4   # NeMo 24.07 Llama 2 7B: mb 1, accumulated
       step c mpt-7b-8l-s2048 $m/mpt-7b-8l.yaml 2048 6           # llm-foundry MPT-7B on 8 H100: mb 6
       step c llama3-8b-6l-s8192 $m/llama3-8b-6l.yaml 8192 1 2   # torchtitan / NeMo Llama 3 8B: mb 1
       step c llama2-13b-6l-s4096 $m/llama2-13b-6l.yaml 4096 2 ;; # torchtitan Llama 2 13B: mb 2
    d) m=scripts/step_models; given=${MODES-}   # set c's steps under FSDP2 on one rank: its copies and hooks
       MODES=eager-fsdp,compiled-fsdp,compiled-fp8-tensorwise-fsdp   # with no network (a group of one)
       step d llama2-7b-8l-s4096 $m/llama2-7b-8l.yaml 4096 1 4
       step d mpt-7b-8l-s2048 $m/mpt-7b-8l.yaml 2048 6
       step d llama3-8b-6l-s8192 $m/llama3-8b-6l.yaml 8192 1 2
       step d llama2-13b-6l-s4096 $m/llama2-13b-6l.yaml 4096 2
       MODES=$given ;;                          # the sets after it run the modes they were given
    moe) m=scripts/step_models; given=${MODES-}
       for model in qwen3-30b-a3b qwen3-235b-a22b mixtral-8x7b gpt-oss-120b llama4-scout; do
         for mb in 1 4; do   # 4096 and 16384 tokens
           python3 -m parplan.bench --suite layer --model $model --seq 4096 --micro-batch $mb --iters 10 \
             --warmup 3 --timeout 300 -o "$out/moe/layer-$model-mb$mb" 2>&1 | tee "$out/moe/layer-$model-mb$mb.log"
         done
       done
       MODES=eager,compiled
       step moe qwen3-30b-a3b-4l-s4096 $m/qwen3-30b-a3b-4l.yaml 4096 1 2
       step moe mixtral-8x7b-2l-s4096 $m/mixtral-8x7b-2l.yaml 4096 1 2
       MODES=$given ;;
    *) echo "unknown set $set" >&2 ;;
  esac
done
