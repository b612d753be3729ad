"""Multi-token prediction (DeepSeek-V3): its FLOPs, where its work and memory land, and its launch flags."""
from dataclasses import replace

import pytest

from parplan.cost.flops import model_flops_per_step
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.plan.emitters import emit, read_config
from parplan.plan.emitters.megatron_layout import layout_string
from parplan.specs.cluster import load_cluster
from parplan.specs.model_loader import load_model
from parplan.step.train import estimate


def test_an_mtp_module_adds_a_layer_its_projection_and_the_head_to_the_flops():
    m = load_model("llama3-8b")
    b, s, h, v = 4, 2048, m.hidden, m.vocab
    t = b * s
    layer = model_flops_per_step(replace(m, layers=m.layers + 1), s, b) - model_flops_per_step(m, s, b)
    # forward + backward (3x) of the 2h -> h projection (2 t 2h h) and of the head's logits (2 t h V)
    own = 3 * (2 * t * 2 * h * h + 2 * t * h * v)
    assert model_flops_per_step(replace(m, mtp_layers=1), s, b) - model_flops_per_step(m, s, b) == \
        pytest.approx(layer + own, rel=1e-12)


def test_the_modules_run_and_live_on_the_last_pipeline_rank():
    m = load_model("llama3-8b")
    cluster = load_cluster("h100-sxmx8")
    lay = Layout(tp=1, pp=2, dp=4, micro_batch=1, global_batch=32, zero=0, seq_len=4096)
    base, mtp = (estimate(x, cluster, lay) for x in (m, replace(m, mtp_layers=1)))
    first, last = "first", "last"
    assert mtp.pipeline_ranks[first]["memory_bytes"] == pytest.approx(base.pipeline_ranks[first]["memory_bytes"])
    grown = mtp.pipeline_ranks[last]["memory_bytes"] - base.pipeline_ranks[last]["memory_bytes"]
    # at least the module's 16-bit weights and gradients and its 12 bytes of optimizer state (no ZeRO)
    assert grown > replace(m, mtp_layers=1).mtp_params() * (2 + 2 + 12)
    assert mtp.step_time_s > base.step_time_s


def test_without_a_pipeline_the_one_rank_holds_the_modules_their_states_and_logits():
    m = load_model("llama3-8b")
    lay = Layout(tp=1, pp=1, dp=8, micro_batch=1, global_batch=8, zero=0, seq_len=2048)
    base, two = (estimate(x, load_cluster("h100-sxmx8"), lay).memory_bytes for x in (m, replace(m, mtp_layers=2)))
    p = replace(m, mtp_layers=2).mtp_params()
    assert two["weights"] - base["weights"] == pytest.approx(2 * p)        # bf16 weights
    assert two["optimizer"] - base["optimizer"] == pytest.approx(12 * p)   # fp32 master, momentum, variance
    assert two["mtp_logits"] == pytest.approx(2 * two["logits"])
    assert two["mtp_activations"] > 0 and "mtp_activations" not in base


def test_megatron_flags_train_the_modules_and_the_layout_places_them_before_the_loss(tmp_path):
    assert layout_string([2, 2], 2, mtp_layers=1) == "Et|t|t|tmL"
    m = load_model("deepseek-v3")
    lay = Layout(tp=2, pp=8, dp=64, micro_batch=1, global_batch=8192, zero=1, sp=True, seq_len=4096,
                 first_stage_layers=7, last_stage_layers=6, axes=(("ep", 64), ("etp", 1)))
    text = emit("megatron", lay, m)
    assert "--mtp-num-layers 1" in text
    path = tmp_path / "run.sh"
    path.write_text(text.replace("--mtp-num-layers 1", "--mtp-num-layers 2"))
    with pytest.raises(ParplanError, match="--mtp-num-layers = 2 in the config contradicts 1"):
        read_config(str(path), 1024, m)


def test_estimate_says_what_the_modules_cost():
    m = load_model("llama3-8b")
    lay = Layout(tp=1, pp=2, dp=4, micro_batch=1, global_batch=32, zero=0, seq_len=4096)
    base = estimate(m, load_cluster("h100-sxmx8"), lay)
    est = estimate(replace(m, mtp_layers=1), load_cluster("h100-sxmx8"), lay)
    said = [n for n in est.notes if n.startswith("multi-token prediction: 1 module")]
    assert len(said) == 1 and not any("multi-token" in n for n in base.notes)
    ms = float(said[0].split(", ")[1].split(" ms")[0])
    # at least the head's logits GEMM again, forward and backward: 3 x 2 x tokens x h x V at the bf16 peak
    assert ms / 1e3 > 3 * 2 * 4096 * m.hidden * m.vocab / load_cluster("h100-sxmx8").hardware.peak("bf16")


def test_the_modules_parameters_join_the_optimizer_step_and_the_gradient_traffic():
    m = load_model("llama3-8b")
    lay = Layout(tp=1, pp=1, dp=8, micro_batch=1, global_batch=8, zero=3, seq_len=2048)
    base, mtp = (estimate(x, load_cluster("h100-sxmx8"), lay) for x in (m, replace(m, mtp_layers=1)))
    grown = (m.total_params() + replace(m, mtp_layers=1).mtp_params()) / m.total_params()
    # the optimizer streams every local parameter once: its time grows with them (less its fixed launch)
    assert mtp.breakdown_s["optimizer"] / base.breakdown_s["optimizer"] == pytest.approx(grown, rel=0.02)
    reduce_scatter = [[c for c in e.collectives if c.collective.name == "fsdp_grad_reduce_scatter"][0]
                      for e in (base, mtp)]
    assert reduce_scatter[1].link_s > reduce_scatter[0].link_s


def test_frameworks_without_mtp_refuse_an_mtp_model_in_one_line(tmp_path):
    """A framework profile says whether it trains MTP modules (``mtp``): estimate, the search and --emit refuse
    an MTP model on one that does not, and take it on one that does."""
    from parplan.specs.framework import resolve_software
    from parplan.specs.framework_loader import load_framework

    m = load_model("deepseek-v3")
    lay = Layout(tp=8, pp=1, dp=128, micro_batch=1, global_batch=1024, zero=1, seq_len=4096,
                 axes=(("ep", 64), ("etp", 1)))
    dense = replace(load_model("llama3-8b"), mtp_layers=1)
    fsdp = Layout(tp=1, pp=1, dp=8, micro_batch=1, global_batch=8, zero=3, seq_len=4096)
    assert "data_parallel_shard_degree = 8" in emit("torchtitan", fsdp, load_model("llama3-8b"))  # without MTP: fine
    with pytest.raises(ParplanError, match="torchtitan trains no multi-token-prediction module, and llama3.1-8b "
                                           "has 1; give the model with mtp_layers: 0"):
        emit("torchtitan", fsdp, dense)
    cluster = load_cluster("h100-sxmx8")
    for name, trains in (("torchtitan", False), ("deepspeed", False), ("megatron-core", True), ("jax", True)):
        software = resolve_software(load_framework(name), device_kind="gpu")
        if trains:
            assert estimate(dense, cluster, fsdp if name == "jax" else replace(fsdp, zero=1),
                            software=software).step_time_s > 0
        else:
            with pytest.raises(ParplanError, match=f"{name} trains no multi-token-prediction module"):
                estimate(dense, cluster, fsdp, software=software)
    megatron = emit("megatron", lay, m)
    path = tmp_path / "run.sh"
    path.write_text(megatron.replace(" --mtp-num-layers 1", ""))
    with pytest.raises(ParplanError, match="sets no --mtp-num-layers"):
        read_config(str(path), 1024, m)


def test_the_modules_embedding_copy_sums_its_gradient_with_the_first_stage():
    """Under a pipeline the MTP stage holds a copy of an untied embedding table, whose gradient Megatron-Core
    all-reduces with the first stage's once per step (finalize_model_grads.py), as it does for tied tables:
    a table of ceil(V / tp) x h gradients between two ranks."""
    m = load_model("llama3-8b")
    assert not m.tied_embeddings
    lay = Layout(tp=2, pp=2, dp=2, micro_batch=1, global_batch=8, zero=1, seq_len=4096)

    def reduce(model, layout):
        est = estimate(model, load_cluster("h100-sxmx8"), layout)
        return next(c for c in est.collectives if c.collective.name == "pp_embedding_grad_allreduce")

    assert float(reduce(m, lay).calls_per_step) == 0
    copy = reduce(replace(m, mtp_layers=1), lay)
    assert float(copy.calls_per_step) == 1
    # the vocabulary's tp share of rows x h, in the 16-bit gradients megatron-core reduces (grad_sync_dtype bf16)
    assert float(copy.collective.size_bytes) == -(-m.vocab // 2) * m.hidden * 2
    assert float(reduce(replace(m, mtp_layers=1), replace(lay, pp=1, dp=4)).calls_per_step) == 0
