"""--offload-layers N: N layers' saved activations wait in host memory between their forward and backward, their
copies over the hardware's host link beside the neighbouring layers' compute (parplan.step.offload)."""
from dataclasses import replace

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import parplan
from parplan.cli import cli
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.plan.emitters import maxtext, megatron
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import framework_from_dict, load_framework
from parplan.specs.hardware import load_hardware
from parplan.specs.model_loader import model_from_dict
from parplan.step import offload

TOY = {"name": "toy", "layers": 16, "hidden": 4096, "heads": 32, "kv_heads": 8, "ffn_hidden": 14336,
       "activation": "swiglu", "vocab": 32000, "seq_len": 8192, "norm": "rmsnorm", "position": "rope", "bias": False}


def _pair(n, framework="megatron-core", hw="h100x8", **kw):
    m = model_from_dict(TOY, "toy")
    cl = parplan.load_cluster(hw)
    lay = Layout(**{"dp": 8, "zero": 1, "micro_batch": 1, "global_batch": 16, **kw})
    fw = load_framework(framework)
    plain = parplan.estimate(m, cl, lay, software=resolve_software(fw))
    off = parplan.estimate(m, cl, lay, software=resolve_software(fw, offload_layers=n))
    return m, cl, plain, off


def test_offloaded_layers_leave_the_device_for_the_host():
    """One stage, one micro-batch in flight: 16 layers of A each on the device; offloading 6 keeps the other 10,
    plus the one whose copy is under way, and puts 6 A in host memory."""
    _, _, plain, off = _pair(6)
    per_layer = float(plain.memory_bytes["activations"]) / 16
    assert float(off.memory_bytes["activations"]) == pytest.approx((10 + 1) * per_layer)
    assert float(off.host_memory_bytes) == pytest.approx(6 * per_layer)
    assert float(plain.host_memory_bytes) == 0.0


def test_a_copy_longer_than_the_compute_beside_it_is_exposed():
    """No recompute: a layer saves ~1 GiB at 8192 tokens, 20 ms at 55 GB/s, longer than a layer's forward and
    backward on an H100; each offloaded layer exposes (copy - forward) + (copy - backward) per micro-batch."""
    _, cl, plain, off = _pair(6)
    per_layer = float(plain.memory_bytes["activations"]) / 16
    link = cl.hardware.host_link
    copy = link.latency_s + per_layer / (link.bandwidth * link.efficiency)
    fwd, bwd = float(off.layer_forward_s), float(off.layer_backward_s)
    assert copy > max(fwd, bwd)
    exposed = (copy - fwd) + (copy - bwd)
    micro_batches = 2
    assert float(off.breakdown_s["offload"]) == pytest.approx(micro_batches * 6 * exposed)
    assert float(off.step_time_s - plain.step_time_s) == pytest.approx(micro_batches * 6 * exposed)
    assert float(plain.breakdown_s["offload"]) == 0.0


def test_a_layer_input_hides_under_the_full_recompute_beside_it():
    """Full recompute on a TPU v6e: a layer keeps only its input (64 MiB at 8192 x 4096 bf16, ~1.2 ms over PCIe
    Gen5), far under a layer's compute: no exposed time, and the host holds every layer's input."""
    _, _, plain, off = _pair(16, framework="jax", hw="tpu-v6ex8", recompute="full", zero=3)
    assert float(off.breakdown_s["offload"]) == 0.0
    assert float(off.step_time_s) == pytest.approx(float(plain.step_time_s))
    assert float(off.host_memory_bytes) == pytest.approx(16 * 8192 * 4096 * 2, rel=1e-6)
    assert float(off.memory_bytes["activations"]) < float(plain.memory_bytes["activations"])


def test_the_host_memory_is_checked_where_the_profile_states_it():
    m, cl, _, off = _pair(16, framework="jax", hw="tpu-v6ex8", recompute="full", zero=3)
    assert bool(off.fits)
    small = replace(cl, hardware=replace(cl.hardware, host_memory_bytes=float(off.host_memory_bytes) / 2))
    lay = Layout(dp=8, zero=3, micro_batch=1, global_batch=16, recompute="full")
    again = parplan.estimate(m, small, lay, software=resolve_software(load_framework("jax"), offload_layers=16))
    assert not bool(again.fits)


def test_helpers_by_hand():
    assert np.allclose(offload.offloaded_layers(40, np.array([32.0, 64.0])), [32.0, 40.0])
    assert float(offload.offloaded_layers(None, 32)) == 0.0
    assert float(offload.exposed_s(5.0, 3.0, 7.0)) == 2.0
    assert float(offload.device_bytes(10, 4.0, 2.0, 3)) == pytest.approx((10 - 4) * 2 * 3 + 2)
    assert float(offload.device_bytes(10, 0.0, 2.0, 3)) == 60.0
    assert float(offload.host_bytes(4.0, 2.0, 3)) == 24.0
    with pytest.raises(ParplanError, match="states no host link"):
        offload.copy_s(load_hardware("a100-80gb"), 1e9)


@pytest.mark.parametrize("framework, hw, layout, n, said", [
    ("torchtitan", "h100x8", {}, 4, "keeps every activation on the device"),
    ("megatron-core", "h100x8", {"pp": 2, "dp": 4}, 4, "only without pipeline parallelism"),
    ("megatron-core", "h100x8", {"recompute": "full"}, 4, "under recompute none, not full"),
    ("megatron-core", "h100x8", {}, 16, "below toy's 16"),
    ("jax", "tpu-v6ex8", {"recompute": "full", "zero": 3}, 8, "at least 16"),
    ("megatron-core", "a100x8", {}, 4, "states no host link"),
])
def test_what_a_framework_cannot_offload_is_a_one_line_error(framework, hw, layout, n, said):
    m = model_from_dict(TOY, "toy")
    lay = Layout(**{"dp": 8, "zero": 1, "micro_batch": 1, "global_batch": 16, **layout})
    with pytest.raises(ParplanError, match=said):
        parplan.estimate(m, parplan.load_cluster(hw), lay,
                         software=resolve_software(load_framework(framework), offload_layers=n))


def test_bad_offload_values_and_profiles():
    fw = load_framework("megatron-core")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ParplanError, match="whole number of layers"):
            resolve_software(fw, offload_layers=bad)
    data = yaml.safe_load(open(fw.path))
    for bad, said in (({"recompute": []}, "must list"), ({"recompute": ["none"], "layers": "some"}, "layers"),
                      ({"recompute": ["none"], "speed": 1}, "unknown")):
        with pytest.raises(ParplanError, match=said):
            framework_from_dict(dict(data, activation_offload=bad), "fw")


def test_cli_offloads_and_says_what_the_host_holds():
    base = ["estimate", "--model", "llama3-8b", "--hw", "h100x8", "--dp", "8", "--zero", "1"]
    r = CliRunner().invoke(cli, base + ["--offload-layers", "8"])
    assert r.exit_code == 0, r.output
    assert "in host memory" in r.output and "offload " in r.output
    r = CliRunner().invoke(cli, base + ["--offload-layers", "8", "--format", "json"])
    d = yaml.safe_load(r.output)
    assert d["host_memory_bytes"] > 0 and d["software"]["offload_layers"] == 8 and d["breakdown_s"]["offload"] > 0
    r = CliRunner().invoke(cli, base + ["--offload-layers", "0"])
    assert r.exit_code != 0


def test_maxtext_writes_and_reads_its_custom_remat_policy():
    m = parplan.load_model("llama3-8b")
    lay = Layout(dp=8, zero=3, micro_batch=1, global_batch=8, recompute="full")
    sw = resolve_software(load_framework("jax"), offload_layers=32)
    cfg = maxtext.config(lay, m, sw)
    assert cfg["remat_policy"] == "custom" and cfg["decoder_layer_input"] == "offload" and cfg["mlpwo"] == "remat"
    back = maxtext.read(cfg, 8, m)
    assert back.offload_layers == 32 and back.layout["recompute"] == "full"
    dots = maxtext.config(replace(lay, recompute="save-dots"), m, sw)
    assert dots["query_proj"] == "offload" and dots["decoder_layer_input"] == "remat"
    assert maxtext.read(dots, 8, m).layout["recompute"] == "save-dots"
    with pytest.raises(ParplanError, match="remat_policy custom"):
        maxtext.read(dict(cfg, context="offload"), 8, m)
    assert "offload" not in str(maxtext.config(lay, m, resolve_software(load_framework("jax"))))


def test_megatron_flags_of_core_v014_cannot_offload():
    m = parplan.load_model("llama3-8b")
    sw = resolve_software(load_framework("megatron-core"), offload_layers=8)
    said = megatron.problem(Layout(dp=8, zero=1, micro_batch=1, global_batch=8), m, sw)
    assert said is not None and "no flag for activation offload" in said


def test_the_plan_search_offloads_every_candidate_and_names_host_memory_when_it_binds():
    """plan --offload-layers runs the arrays of candidates; with too little host memory for the fastest
    candidate, the plan takes a slower one and the binding constraint names the host's memory, not HBM."""
    from parplan.plan.planner import make_plan

    m = model_from_dict(TOY, "toy")
    cl = parplan.load_cluster("tpu-v6ex16")
    sw = resolve_software(load_framework("jax"), offload_layers=16)
    fixed = {"recompute": "full", "zero": 3}
    roomy = make_plan(m, cl, global_batch=32, fixed=fixed, software=sw, top=3, with_intervals=False)
    assert all(float(e.host_memory_bytes) > 0 for e in roomy.estimates)
    fastest = roomy.ranked.iloc[0]
    cheaper = roomy.ranked[roomy.ranked["host_memory_bytes"] < fastest["host_memory_bytes"]]
    assert not cheaper.empty  # fewer micro-batch rows in flight: less on the host
    cap = (float(fastest["host_memory_bytes"]) + float(cheaper["host_memory_bytes"].max())) / 2
    tight = replace(cl, hardware=replace(cl.hardware, host_memory_bytes=cap))
    best = make_plan(m, tight, global_batch=32, fixed=fixed, software=sw, top=3, with_intervals=False, explain=True)
    assert float(best.estimates[0].host_memory_bytes) <= cap
    assert float(best.estimates[0].step_time_s) > float(roomy.estimates[0].step_time_s)
    assert best.binding_constraint.startswith("host memory") and "more than the host's" in best.binding_constraint


def test_a_pipeline_keeps_its_micro_batches_in_flight_on_the_host():
    """GPipe on 2 stages holds every micro-batch's activations until the backward: the host holds the offloaded
    layers' activations of each micro-batch in flight, the device one layer's beside the rest."""
    m = model_from_dict(TOY, "toy")
    cl = parplan.load_cluster("tpu-v6ex8")
    lay = Layout(dp=4, pp=2, zero=0, micro_batch=1, global_batch=16, recompute="full", schedule="gpipe")
    jax = load_framework("jax")
    plain = parplan.estimate(m, cl, lay, software=resolve_software(jax))
    off = parplan.estimate(m, cl, lay, software=resolve_software(jax, offload_layers=8))
    inputs = 8192 * 4096 * 2  # one layer's input, bf16
    in_flight = 4  # micro-batches per pipeline per step, all held under GPipe
    assert float(off.host_memory_bytes) == pytest.approx(8 * inputs * in_flight, rel=1e-6)
    assert float(plain.memory_bytes["activations"] - off.memory_bytes["activations"]) == pytest.approx(
        8 * inputs * in_flight - inputs, rel=1e-6)


def test_non_numbers_are_refused_in_one_line():
    with pytest.raises(ParplanError, match="whole number of layers"):
        resolve_software(load_framework("jax"), offload_layers="abc")


def test_a_nemo_config_that_offloads_reads_back_its_layers():
    m = parplan.load_model("llama3-8b")
    base = {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "micro_batch_size": 1,
            "global_batch_size": 8, "num_layers": 32, "hidden_size": 4096}
    on = megatron.read("", 8, m, yaml_data={"model": {**base, "cpu_offloading": True, "cpu_offloading_num_layers": 8}})
    assert on.offload_layers == 8
    off = megatron.read("", 8, m, yaml_data={"model": {**base, "cpu_offloading": False, "cpu_offloading_num_layers": 8}})
    assert off.offload_layers is None
    flags = megatron.read("--tensor-model-parallel-size 1 --micro-batch-size 1 --global-batch-size 8 "
                          "--cpu-offloading-num-layers 4", 8, m)
    assert flags.offload_layers == 4


def test_nvlink_c2c_hides_the_copies_pcie_exposes():
    """The same 1.06 GiB a layer: 20 ms over an H100's PCIe Gen5 x16 (55 GB/s), longer than the layer's 7 ms
    forward and 14 ms backward; 2.7 ms over a GH200's NVLink-C2C (450 GB/s a direction), hidden under both."""
    h100, gh200 = _pair(6)[3], _pair(6, hw="gh200x8")[3]
    assert float(h100.breakdown_s["offload"]) > 0.1 and float(gh200.breakdown_s["offload"]) == 0.0
    assert float(gh200.host_memory_bytes) == pytest.approx(float(h100.host_memory_bytes))
