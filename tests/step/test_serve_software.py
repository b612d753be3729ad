"""What a serving stack changes, against hand-derivable cases: a memory-bound decode step, host launches
and CUDA graphs, FlashAttention's split heuristic, the scheduler, the sampler and KV blocks."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from parplan.cost import ops as ops_mod
from parplan.errors import ParplanError
from parplan.specs.cluster import load_cluster
from parplan.specs.framework_loader import load_serving
from parplan.specs.model import model_from_dict
from parplan.specs.serving_stack import resolve_serving
from parplan.step.serve import estimate_inference
from parplan.step.serve_layout import ServeLayout
from parplan.step.serve_memory import kv_bytes_per_token, memory_per_device
from parplan.step.serve_software import fa_num_splits, serving_software

LLAMA8_SHAPES = dict(hidden=4096, heads=32, kv_heads=8, head_dim=128, ffn_hidden=14336, activation="swiglu",
                     norm="rmsnorm", position="none", bias=False, tied_embeddings=False, vocab=128256, seq_len=8192,
                     max_seq_len=131072)


def _model(layers=2, **shapes):
    return model_from_dict({"name": "toy", "layers": layers, **(LLAMA8_SHAPES | shapes)}, "test model")


def _stack(name="vllm", **fields):
    """A shipped stack with some fields changed; ``decode`` changes its decode attention."""
    stack = load_serving(name)
    decode = fields.pop("decode", {})
    return replace(stack, decode_attention=replace(stack.decode_attention, **decode), **fields)


def _estimate(model, stack, batch=1, cuda_graphs=None, hw="h100", input_len=1000, output_len=2):
    sw = resolve_serving(stack, cuda_graphs=cuda_graphs)
    return estimate_inference(model, load_cluster(hw), ServeLayout(tp=1, batch=batch, input_len=input_len,
                                                                   output_len=output_len), software=sw)


def test_decode_step_is_weights_and_kv_read_plus_the_stacks_overhead():
    """Batch 1, one device: each GEMM reads its weights once, the attention its KV cache at the stack's paged
    rate, each element-wise op its bytes; every kernel pays the launch overhead; a graph pays one launch."""
    model = _model(layers=2)
    stack = _stack(decode={"split": "none", "paged_bandwidth": 0.5}, sampling_passes=0.0, step_overhead_s=0.0,
                   graph_launch_s=7e-6)
    est = _estimate(model, stack, cuda_graphs=True)
    hw = load_cluster("h100").hardware
    bw, ko = hw.hbm_bandwidth * hw.hbm_efficiency, hw.kernel_overhead_s
    gemms = [(4096, 6144), (4096, 4096), (4096, 2 * 14336), (14336, 4096)]  # qkv, out, gate/up, down (k, n)
    gemm_s = sum((k * n + k + n) * 2 / bw + ko for k, n in gemms)             # m = 1: weights, input, output
    context = 1000 + 2 / 2
    kv = context * 2 * 8 * 128 * 2 + 2 * 32 * 128 * 2                       # K and V cache, the query and output
    attention_s = kv / (bw * 0.5) + ko
    memory_ops = [o for o, _ in est.decode_ops if o.kind == ops_mod.MEMORY]
    ew_s = sum(o.fwd_bytes / (hw.hbm_bandwidth * (hw.hbm_efficiency if o.streaming else hw.elementwise_efficiency))
               + ko * o.kernels[0] for o in memory_ops)
    assert [o.name for o in memory_ops] == ["input_norm", "kv_cache_write", "attn_residual", "post_attn_norm",
                                            "swiglu", "mlp_residual"]
    layer = gemm_s + attention_s + ew_s
    assert float(est.decode_layers_s) == pytest.approx(2 * layer + 7e-6, rel=1e-9)
    weights = 2 * sum(k * n for k, n in gemms)
    reads = 2 * (weights / bw + kv / (bw * 0.5))
    launches = 2 * ko * sum(float(o.kernels[0]) for o, _ in est.decode_ops)
    assert 0.98 < (reads + launches) / (float(est.decode_layers_s) - 7e-6) < 1.0  # the reads and the launches
    # The scheduler's per-step time adds to TPOT in full when the engine does not overlap it ...
    busy = _estimate(model, replace(stack, step_overhead_s=3e-4), cuda_graphs=True)
    assert float(busy.tpot_s) - float(est.tpot_s) == pytest.approx(3e-4, rel=1e-9)
    assert float(busy.decode_breakdown_s["host"]) - float(est.decode_breakdown_s["host"]) == pytest.approx(3e-4)
    # ... and only beyond the step's GPU time when it does (SGLang's and TensorRT-LLM's overlap schedulers).
    hidden = _estimate(model, replace(stack, step_overhead_s=3e-4, step_overhead_overlapped=True), cuda_graphs=True)
    assert float(hidden.tpot_s) == pytest.approx(max(float(est.tpot_s), 3e-4), rel=1e-9)


def test_cuda_graphs_remove_the_per_kernel_launch_cost():
    """A small model at batch 1 is host-bound without a graph: every kernel waits for its launch."""
    model = _model(layers=3, hidden=512, heads=4, kv_heads=2, ffn_hidden=1024, vocab=1024)
    stack = _stack(launch_s=20e-6, graph_launch_s=9e-6, decode={"split": "none"})
    eager = _estimate(model, stack, cuda_graphs=False)
    graph = _estimate(model, stack, cuda_graphs=True)
    kernels = sum(float(o.kernels[0]) for o, _ in eager.decode_ops)
    gpu_layer = sum(float(t) for _, t in graph.decode_ops)
    assert kernels * 20e-6 > gpu_layer  # host-bound
    assert float(eager.decode_layers_s) == pytest.approx(3 * kernels * 20e-6 + 20e-6, rel=1e-9)
    assert float(graph.decode_layers_s) == pytest.approx(3 * gpu_layer + 9e-6, rel=1e-9)
    assert float(eager.decode_breakdown_s["host"]) > float(graph.decode_breakdown_s["host"])
    # With no launch cost the two differ only by the first launch.
    free = replace(stack, launch_s=0.0)
    assert float(_estimate(model, free, cuda_graphs=False).decode_layers_s) == \
        pytest.approx(float(graph.decode_layers_s) - 9e-6, rel=1e-9)
    # A batch above the largest captured one runs eagerly.
    capped = replace(stack, cuda_graphs=replace(stack.cuda_graphs, max_batch=4))
    assert float(_estimate(model, capped, batch=8, cuda_graphs=True).decode_layers_s) == \
        pytest.approx(float(_estimate(model, stack, batch=8, cuda_graphs=False).decode_layers_s), rel=1e-12)


def test_a_gpu_bound_step_hides_its_launches():
    model = _model(layers=2)
    stack = _stack(launch_s=5e-6, graph_launch_s=5e-6)
    eager = _estimate(model, stack, batch=64, cuda_graphs=False)
    graph = _estimate(model, stack, batch=64, cuda_graphs=True)
    assert float(eager.decode_layers_s) == pytest.approx(float(graph.decode_layers_s), rel=1e-12)


def test_flash_attention_split_heuristic_by_hand():
    # flash_api.cpp's own example: 48 blocks of work on 108 SMs: 2 splits (efficiency 0.89) beat 3 (0.67).
    assert fa_num_splits(48, 108, 64) == 2
    # Work that fills 80% of the slots is not split.
    assert fa_num_splits(0.8 * 264, 264, 64) == 1
    # One sequence, 8 KV heads (one 64-row block each) on an H100 (2 x 132 slots), 2049 keys in 17 blocks of
    # 128: the best efficiency is at 17 splits (136/264); 15 and 16 give the same keys per split as 14.
    assert fa_num_splits(8, 264, 17) == 17
    # Vectorized over batches.
    assert list(fa_num_splits(np.array([8, 48, 512]), 264, 17)) == [17, 5, 1]


def test_a_split_decode_pays_its_combine_launch_and_partials():
    model = _model(layers=1)
    split = _estimate(model, _stack(decode={"split": "fill", "split_kernels": 2}), cuda_graphs=True)
    whole = _estimate(model, _stack(decode={"split": "none"}), cuda_graphs=True)
    att = {e: next(t for o, t in est.decode_ops if o.name == "decode_attention") for e, est in
           (("split", split), ("whole", whole))}
    op = next(o for o, _ in split.decode_ops if o.name == "decode_attention")
    assert float(op.kernels[0]) == 2
    hw = load_cluster("h100").hardware
    assert float(att["split"]) > float(att["whole"]) + hw.kernel_overhead_s * 0.99


def test_stacks_differ_where_their_profiles_say():
    model = _model(layers=4)
    lay = ServeLayout(tp=1, batch=32, input_len=4096, output_len=256)
    cl = load_cluster("h100")
    est = {n: estimate_inference(model, cl, lay, software=serving_software(n, "gpu"))
           for n in ("vllm", "sglang", "tensorrt-llm", "pytorch")}
    # SGLang's page-size-1 reads reach 90% of the dense rate: its decode attention is the slowest of the paged ones.
    assert float(est["sglang"].decode_breakdown_s["attention"]) > float(est["vllm"].decode_breakdown_s["attention"])
    # Plain PyTorch runs eager element-wise kernels and no graphs: the slowest layers.
    assert float(est["pytorch"].decode_layers_s) == max(float(e.decode_layers_s) for e in est.values())
    # vLLM's scheduler is not overlapped; SGLang's and TensorRT-LLM's are.
    assert float(est["vllm"].decode_breakdown_s["host"]) >= load_serving("vllm").step_overhead_s
    assert est["vllm"].software.name == "vllm" and est["vllm"].max_batch > 0


def test_sampling_passes_over_the_logits():
    model = _model(layers=1)
    none = _estimate(model, _stack(sampling_passes=0.0), batch=16, cuda_graphs=True)
    six = _estimate(model, _stack(sampling_passes=6.0), batch=16, cuda_graphs=True)
    hw = load_cluster("h100").hardware
    expected = 6 * 16 * 128256 * 4 / (hw.hbm_bandwidth * hw.elementwise_efficiency) + 6 * hw.kernel_overhead_s
    assert float(six.decode_breakdown_s["sampling"]) == pytest.approx(expected, rel=1e-9)
    assert float(six.tpot_s) - float(none.tpot_s) == pytest.approx(expected, rel=1e-9)


def test_kv_cache_takes_whole_blocks():
    model = _model(layers=2)
    per_token = kv_bytes_per_token(model)
    for block, tokens in ((1, 2050), (16, 2064), (64, 2112)):
        mem = memory_per_device(model, 1, 1, 3, 2048, 2, kv_block_tokens=block)
        assert float(mem["kv_cache"]) == pytest.approx(3 * tokens * per_token)
    est = _estimate(model, _stack(kv_block_tokens=64), batch=3, input_len=2048, output_len=2)
    assert float(est.kv_cache_bytes) == pytest.approx(3 * 2112 * per_token)


def test_default_stack_is_stated_and_unknown_one_is_one_line():
    from parplan.cli.serve_cmd import estimate_inference_command

    import json

    d = json.loads(estimate_inference_command("llama3-8b", "h100", 1, 1, None, 8, 1024, 128, None, "bf16", "json"))
    assert d["framework"] == "vllm" and "framework vllm (the default on gpus)" in d["notes"]
    assert d["cuda_graphs"] is True
    d = json.loads(estimate_inference_command("llama3-8b", "h100", 1, 1, None, 8, 1024, 128, None, "bf16", "json",
                                              framework="pytorch"))
    assert d["framework"] == "pytorch" and d["cuda_graphs"] is False
    with pytest.raises(ParplanError) as exc:
        estimate_inference_command("llama3-8b", "h100", 1, 1, None, 8, 1024, 128, None, "bf16", framework="vlm")
    assert "unknown framework 'vlm' (did you mean 'vllm'?); choose from jax, pytorch, sglang, tensorrt-llm, vllm" \
        in str(exc.value)
    with pytest.raises(ParplanError, match="has no serving section"):
        estimate_inference_command("llama3-8b", "h100", 1, 1, None, 8, 1024, 128, None, "bf16",
                                   framework="torchtitan")
