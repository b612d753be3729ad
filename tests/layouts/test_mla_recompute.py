"""--recompute mla-up-proj (Megatron-Core --recompute-modules mla_up_proj): latent attention's q, k and v are
discarded after the attention's forward and rebuilt from the kept latents before its backward."""
import pytest

import parplan
from parplan.cost import moe as moe_mod, ops as ops_mod
from parplan.cost.memory import layer_activation_bytes
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.specs.model_loader import model_from_dict

# 8 heads of 64 + 32 dims for q and k (nope + rope), 64 for v; latents of 256 (query) and 128 (key-value)
TOY = {"name": "toy-mla", "layers": 8, "hidden": 1024, "heads": 8, "kv_heads": 8, "head_dim": 96, "ffn_hidden": 2048,
       "activation": "swiglu", "vocab": 32000, "seq_len": 2048, "norm": "rmsnorm", "position": "rope",
       "bias": False, "tied_embeddings": False, "experts": 8, "top_k": 2, "q_lora_rank": 256, "kv_lora_rank": 128,
       "qk_rope_dim": 32, "v_head_dim": 64}


def _dims(m, tokens=2048):
    return ops_mod.LocalDims(batch=1, seq=tokens, seq_kv=tokens, hidden=m.hidden, heads=m.heads, kv_heads=m.kv_heads,
                             head_dim=m.head_dim, ffn=m.ffn_hidden, vocab=m.vocab, norm_shard=1,
                             moe=moe_mod.MoeParallel(1, 1, 1), moe_share=1.0)


def test_mla_up_proj_drops_q_k_and_v_and_keeps_the_latents():
    """q and k are 8 x 96 elements per token, v 8 x 64, 2 bytes each: 2048 x 8 x (2 x 96 + 64) x 2 bytes fewer.
    Every mode keeps each latent's norm input and normalized output: a query latent twice as wide keeps
    2048 x 2 x 256 x 2 bytes more."""
    m = model_from_dict(TOY, "toy")
    none, up = (float(layer_activation_bytes(m, _dims(m), "bf16", True, False, r)) for r in ("none", "mla-up-proj"))
    assert none - up == pytest.approx(2048 * 8 * (2 * 96 + 64) * 2)
    wide = model_from_dict(dict(TOY, q_lora_rank=512), "toy")
    for r in ("none", "mla-up-proj"):
        grown = float(layer_activation_bytes(wide, _dims(wide), "bf16", True, False, r))
        assert grown - float(layer_activation_bytes(m, _dims(m), "bf16", True, False, r)) == pytest.approx(
            2048 * 2 * 256 * 2)


def test_mla_up_proj_runs_the_up_projections_and_the_rotary_embedding_again():
    m = model_from_dict(TOY, "toy")
    cl = parplan.load_cluster("h100x8")
    base = dict(dp=8, micro_batch=1, global_batch=16, seq_len=2048, axes=(("ep", 8), ("etp", 1)))
    plain, rec = (parplan.estimate(m, cl, Layout(recompute=r, **base)) for r in ("none", "mla-up-proj"))
    again = sum(float(t[0]) for o, t in zip(rec.ops, rec.op_times) if o.name in ("q_up", "kv_up", "rope"))
    assert again > 0
    assert float(rec.breakdown_s["recompute"]) == pytest.approx(again * m.layers * rec.layout.micro_batches)
    assert float(rec.memory_bytes["activations"]) < float(plain.memory_bytes["activations"])
    # Hardware FLOPs: the up projections' forward once more, 2 x 2048 x (256 x 8 x 96 + 128 x 8 x (64 + 64)) per
    # layer and sequence.
    from parplan.cost.flops import recompute_flops_per_step
    up = 2 * 2048 * (256 * 8 * 96 + 128 * 8 * (64 + 64))
    assert float(recompute_flops_per_step(m, 2048, 16, "mla-up-proj")) == pytest.approx(16 * m.layers * up)


def test_mla_up_proj_needs_latent_attention():
    cl = parplan.load_cluster("h100x8")
    with pytest.raises(ParplanError, match="recompute mla-up-proj rebuilds latent attention"):
        parplan.estimate(parplan.load_model("llama3.1-8b"), cl, Layout(dp=8, global_batch=16, recompute="mla-up-proj"))


def test_latent_attention_keeps_v_and_the_output_projection_input_at_the_value_width():
    """v and the output projection's input are heads x v_head_dim wide, not the q/k width: widening v from 64 to
    96 dims keeps 2048 x 8 x 32 more elements twice (v, and the projection's input), 2 bytes each."""
    m, wide = model_from_dict(TOY, "toy"), model_from_dict(dict(TOY, v_head_dim=96), "toy")
    grown = (float(layer_activation_bytes(x, _dims(x), "bf16", True, False, "none")) for x in (wide, m))
    assert next(grown) - next(grown) == pytest.approx(2 * 2048 * 8 * 32 * 2)
