"""Host time of a Megatron-Core transformer layer: how long the CPU takes to issue one forward and backward.

A layer whose kernels finish faster than the host can launch them runs at the host's pace, not the GPU's.
This builds one Megatron-Core ``TransformerLayer`` from its own modules (``get_gpt_layer_local_spec``:
Megatron's column/row-parallel linears, its core attention, its MoE router, alltoall dispatcher and
``SequentialMLP`` experts; no Transformer Engine, which adds its own host work per module) and times, per
layer shape and token count:

* ``fwd_wall_s``, ``bwd_wall_s``: the forward, then the backward, each between two
  ``torch.cuda.synchronize()`` (medians);
* ``fwd_issue_s``, ``bwd_issue_s``: the host's time until the call returns, the closing sync left out (it
  includes any wait at a sync point inside the layer: an MoE layer's dropless dispatcher reads the tokens
  per expert);
* ``kernels``, ``syncs``: the kernel launches and device-to-host waits the host issued in one forward and
  backward (``torch.profiler``).

At 128 tokens the GPU has almost nothing to do, so the wall times there are the host's time for the layer; the
same layer at 4096 tokens shows how host and GPU time combine. MoE shapes vary the local experts (4-64),
since ``SequentialMLP`` (and Transformer Engine's ``GroupedLinear`` on Hopper) launch work per expert.

    PYTHONPATH=.:/tmp/site python3 scripts/gpu_megatron_host.py OUT_DIR [--te]    # a GPU with megatron-core
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_common import host_and_wall, launch_counts  # noqa: E402
from gpu_moe import write  # noqa: E402

# name: (hidden, heads, kv_heads, head_dim, ffn, experts, top_k, expert_ffn)
SHAPES = {
    "dense-llama3-8b": (4096, 32, 8, 128, 14336, None, None, None),
    "dense-qwen3-30b-attn": (2048, 32, 4, 128, 6144, None, None, None),
    "moe-qwen3-30b-4exp": (2048, 32, 4, 128, 6144, 4, 4, 768),
    "moe-qwen3-30b-16exp": (2048, 32, 4, 128, 6144, 16, 8, 768),
    "moe-qwen3-30b-32exp": (2048, 32, 4, 128, 6144, 32, 8, 768),
    "moe-qwen3-30b-64exp": (2048, 32, 4, 128, 6144, 64, 8, 768),
}
TOKENS = (128, 4096)


def init_megatron():
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl", init_method="tcp://127.0.0.1:29561", world_size=1, rank=0)
    parallel_state.initialize_model_parallel(1, 1, expert_model_parallel_size=1)
    model_parallel_cuda_manual_seed(1234)


def build_layer(shape, qk_norm, te=False):
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.spec_utils import build_module
    from megatron.core.transformer.transformer_config import TransformerConfig
    hidden, heads, kv, dh, ffn, experts, k, eff = shape
    moe = {} if experts is None else dict(
        num_moe_experts=experts, moe_router_topk=k, moe_ffn_hidden_size=eff, moe_token_dispatcher_type="alltoall",
        moe_router_load_balancing_type="aux_loss", moe_aux_loss_coeff=1e-3,
        moe_router_dtype="fp32", moe_grouped_gemm=te)
    cfg = TransformerConfig(num_layers=1, hidden_size=hidden, num_attention_heads=heads, num_query_groups=kv,
                            kv_channels=dh, ffn_hidden_size=ffn, gated_linear_unit=True,
                            activation_func=torch.nn.functional.silu, normalization="RMSNorm",
                            add_bias_linear=False, qk_layernorm=qk_norm, bf16=True,
                            params_dtype=torch.bfloat16, hidden_dropout=0.0, attention_dropout=0.0, **moe)
    if te:  # Transformer Engine's modules, experts in its GroupedLinear (needs transformer_engine installed)
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec
        spec = get_gpt_layer_with_transformer_engine_spec(num_experts=experts, moe_grouped_gemm=True,
                                                          qk_layernorm=qk_norm)
    else:
        spec = get_gpt_layer_local_spec(num_experts=experts, moe_grouped_gemm=False,
                                        qk_layernorm=qk_norm, normalization="RMSNorm")
    layer = build_module(spec, config=cfg, layer_number=1).cuda()
    rope = RotaryEmbedding(kv_channels=dh, rotary_percent=1.0, rotary_base=1000000)
    return layer, rope, hidden


def measure(name, shape, tokens, reps, te=False):
    layer, rope, hidden = build_layer(shape, qk_norm="qwen3" in name, te=te)
    x = torch.randn(tokens, 1, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    emb = rope(tokens)
    grad = torch.randn_like(x)

    def forward():
        out = layer(x, attention_mask=None, rotary_pos_emb=emb)
        return out[0] if isinstance(out, tuple) else out

    times = host_and_wall(forward, grad, reps)
    kernels, syncs = launch_counts(lambda: torch.autograd.backward(forward(), grad))
    row = dict(shape=name, tokens=tokens, local_experts=shape[5] or 0, top_k=shape[6] or 0, **times,
               kernels=kernels, syncs=syncs, reps=reps)
    print(row, flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--te", action="store_true", help="Transformer Engine's modules (TE installed) instead of Megatron's")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    import megatron.core
    init_megatron()
    path = os.path.join(a.out, "megatron_host.csv")
    rows = []
    for name in a.shapes.split(","):
        for tokens in TOKENS:
            try:
                rows.append(dict(measure(name, SHAPES[name], tokens, a.reps, a.te), modules="te" if a.te else "local"))
            except Exception as exc:  # keep the rows already measured; say what failed
                print(f"FAILED {name} {tokens}: {type(exc).__name__}: {exc}", flush=True)
            torch.cuda.empty_cache()
            write(path, rows)
    with open(os.path.join(a.out, "device.txt"), "w") as fh:
        fh.write(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
                 f"megatron-core {megatron.core.__version__}\n")


if __name__ == "__main__":
    main()
