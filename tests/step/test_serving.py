"""The inference model against hand-derivable cases, the PCIe/NVLink all-reduce effect and published serving runs."""
import json
from dataclasses import replace

import numpy as np
import pytest

from tests.helpers import REPO
from parplan.errors import ParplanError
from parplan.specs.dtypes import BYTES_PER_ELEMENT
from parplan.specs.cluster import load_cluster, make_cluster
from parplan.step.serve_layout import ServeLayout
from parplan.step.serve import estimate_inference
from parplan.step.serve_sweeps import comm_crossover_batch, decode_breakdown
from parplan.views.serve_text import inference_dict
from parplan.step.serve_memory import (kv_bytes_per_token, kv_cache_bytes, max_batch, memory_per_device,
    tp_allreduce_bytes_per_layer, weight_bytes)
from parplan.cli.serve_cmd import estimate_inference_command, explain_inference_command, plan_inference_command
from parplan.validate.serving import format_serving_validation, load_serving_runs, validate_serving
from parplan.plan.serve_search import pareto_front, search_inference
from parplan.views.serve_plots import pareto_plot
from parplan.specs.model_loader import load_model

ROOT = REPO


@pytest.fixture(scope="module")
def llama70():
    return load_model("llama3-70b")


# --------------------------------------------------------------------------- KV cache and memory


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8"])
def test_kv_cache_bytes_is_2_layers_kvheads_headdim_bytes_tokens_over_tp(llama70, tp, kv_dtype):
    tokens = 37 * 2304  # 37 sequences of 2048 + 256 tokens
    expected = 2 * 80 * 8 * 128 * BYTES_PER_ELEMENT[kv_dtype] * tokens / tp
    assert kv_cache_bytes(llama70, tp, 1, 37, 2304, kv_dtype) == pytest.approx(expected)
    est = estimate_inference(llama70, load_cluster(f"h100x{tp}"),
                             ServeLayout(tp=tp, batch=37, input_len=2048, output_len=256, kv_dtype=kv_dtype))
    assert float(est.kv_cache_bytes) == pytest.approx(expected)
    assert inference_dict(est)["kv_cache_bytes"] == pytest.approx(expected)


def test_kv_heads_replicate_when_tp_exceeds_them(llama70):
    """Llama 3 70B has 8 KV heads: at tp=16 each device keeps one KV head, not half of one."""
    assert kv_bytes_per_token(llama70, 16) == 2 * 80 * 1 * 128 * 2
    assert kv_bytes_per_token(llama70, 8) == kv_bytes_per_token(llama70, 16)


def test_kv_cache_per_stage_under_pipeline(llama70):
    assert kv_bytes_per_token(llama70, 1, 4) == pytest.approx(kv_bytes_per_token(llama70, 1, 1) / 4)


def test_weights_per_device_are_params_times_bytes_over_tp(llama70):
    assert weight_bytes(llama70, 8, 1, "bf16") == pytest.approx(llama70.total_params() * 2 / 8)
    assert weight_bytes(llama70, 8, 1, "fp8") == pytest.approx(llama70.total_params() / 8)


def test_max_batch_is_largest_that_fits_and_monotone_in_hbm(llama70):
    hw = load_cluster("h100").hardware
    sizes = [8.0e10, 1.0e11, 1.41e11, 1.92e11, 2.88e11]
    batches = [max_batch(llama70, replace(hw, hbm_bytes=s), 2, 1, 2048, 256) for s in sizes]
    assert batches == sorted(batches) and batches[-1] > batches[0] > 0
    # The largest batch fits; one more does not.
    usable = hw.hbm_bytes * 0.9
    b = max_batch(llama70, hw, 4, 1, 2048, 256)
    assert memory_per_device(llama70, 4, 1, b, 2048, 256)["total"] <= usable
    assert memory_per_device(llama70, 4, 1, b + 1, 2048, 256)["total"] > usable
    # An fp8 KV cache holds about twice the sequences.
    b8 = max_batch(llama70, hw, 4, 1, 2048, 256, kv_dtype="fp8")
    assert 1.8 * b < b8 < 2.1 * b
    # Too small a device holds nothing.
    assert max_batch(llama70, replace(hw, hbm_bytes=1e10), 1, 1, 2048, 256) == 0


# --------------------------------------------------------------------------- decode and prefill rooflines


def test_decode_at_batch_1_on_one_gpu_reads_the_weights_once(llama70):
    """A 70B model at batch 1 on one device: TPOT ~ weight bytes / HBM bandwidth (memory-bound GEMMs)."""
    cl = load_cluster("h200")
    hw = cl.hardware
    est = estimate_inference(llama70, cl, ServeLayout(tp=1, batch=1, input_len=128, output_len=128))
    weights = llama70.total_params() * 2
    floor = weights / hw.hbm_bandwidth
    tpot = float(est.tpot_s)
    # The serving stack's host work (vLLM's scheduler, 0.5 ms a step) comes on top of the weight read.
    assert floor < tpot - float(est.decode_breakdown_s["host"]) < 1.25 * floor
    # The GEMMs are the weight read at the achievable bandwidth (minus the input embedding, only gathered).
    read = (weights - llama70.embedding_params() * 2) / (hw.hbm_bandwidth * hw.hbm_efficiency)
    assert float(est.decode_breakdown_s["matmul"]) == pytest.approx(read, rel=0.06)
    assert not est.fits  # 141 GB of weights on a 141 GB device with 10% headroom


def test_decode_gemms_barely_grow_with_batch_while_allreduce_bytes_grow_linearly(llama70):
    df = decode_breakdown(llama70, load_cluster("h100x8"), 8, [1, 64], 2048, 256)
    assert df["matmul_s"].iloc[1] < 1.05 * df["matmul_s"].iloc[0]  # 64x the rows, under 5% more time
    assert df["allreduce_bytes_per_layer"].iloc[1] == 64 * df["allreduce_bytes_per_layer"].iloc[0]


def test_tp_allreduce_bytes_per_layer_is_2_batch_hidden_bytes(llama70):
    for batch in (1, 7, 256):
        assert tp_allreduce_bytes_per_layer(llama70, batch, "bf16") == 2 * batch * 8192 * 2
        est = estimate_inference(llama70, load_cluster("h100x8"),
                                 ServeLayout(tp=8, batch=batch, input_len=512, output_len=64))
        assert float(est.tp_allreduce_bytes_per_layer) == 2 * batch * 8192 * 2
    # fp8 weights keep 16-bit activations on the wire.
    assert tp_allreduce_bytes_per_layer(llama70, 3, "fp8") == 2 * 3 * 8192 * 2


def test_allreduce_time_is_affine_in_batch(llama70):
    df = decode_breakdown(llama70, load_cluster("h100-pciex8"), 8, [1, 257, 513], 2048, 256)
    t = df["allreduce_s"].to_numpy()
    assert (t[2] - t[0]) / (t[1] - t[0]) == pytest.approx(2.0, rel=1e-6)


def test_prefill_is_compute_bound(llama70):
    cl = load_cluster("h100x8")
    est = estimate_inference(llama70, cl, ServeLayout(tp=8, batch=1, input_len=4096, output_len=16))
    flops_per_device = 2 * llama70.non_embedding_params() * 4096 / 8
    floor = flops_per_device / cl.hardware.peak("bf16")
    assert floor < float(est.prefill_breakdown_s["matmul"]) < 2.5 * floor
    assert float(est.ttft_s) == pytest.approx(sum(inference_dict(est)["prefill_breakdown_s"].values()))


def test_decode_breakdown_sums_to_tpot(llama70):
    for pp, batch in ((1, 64), (4, 64), (4, 2)):
        est = estimate_inference(llama70, load_cluster("h100x8"),
                                 ServeLayout(tp=8 // pp if pp < 8 else 1, pp=pp, batch=batch, input_len=1024,
                                             output_len=128))
        d = inference_dict(est)
        assert sum(d["decode_breakdown_s"].values()) == pytest.approx(d["tpot_s"])


# --------------------------------------------------------------------------- the all-reduce crossover


def test_allreduce_overtakes_gemms_sooner_over_pcie_than_nvlink(llama70):
    sxm = comm_crossover_batch(llama70, load_cluster("h100-sxmx8"), 8, 2048, 256)
    pcie = comm_crossover_batch(llama70, load_cluster("h100-pciex8"), 8, 2048, 256)
    print(f"\ncrossover batch (TP all-reduce >= GEMMs), llama3-70b tp=8: h100-pcie {pcie}, h100-sxm "
          f"{sxm if sxm is not None else 'never up to 4096'}")
    assert pcie is not None
    assert sxm is None or pcie < sxm
    # The all-reduce time grows several times faster with the batch over PCIe than over NVLink.
    growth = {}
    for name in ("h100-sxmx8", "h100-pciex8"):
        t = decode_breakdown(llama70, load_cluster(name), 8, [1, 256])["allreduce_s"].to_numpy()
        growth[name] = t[1] - t[0]
    assert growth["h100-pciex8"] > 4 * growth["h100-sxmx8"]


def test_pcie_only_node_from_a_cluster_file(llama70, tmp_path):
    """A cluster file for a PCIe Gen4 server: the crossover comes sooner still."""
    f = tmp_path / "pcie-gen4.yaml"
    f.write_text("hardware: h100-pcie\ndevices: 8\ndevices_per_node: 8\nintra_node_bandwidth: 3.15e+10\n"
                 "name: h100-pcie-gen4-node\n")
    cl = load_cluster(str(f))
    gen4 = comm_crossover_batch(llama70, cl, 8, 2048, 256)
    gen5 = comm_crossover_batch(llama70, load_cluster("h100-pciex8"), 8, 2048, 256)
    assert gen4 is not None and gen4 < gen5


def test_pipeline_latency_sums_stages_and_micro_batches_fill_them(llama70):
    cl = load_cluster("h100x8")
    base = ServeLayout(tp=4, pp=2, replicas=1, batch=1, input_len=1024, output_len=128)
    one = estimate_inference(llama70, cl, base)
    flat = estimate_inference(llama70, load_cluster("h100x4"), replace(base, pp=1))
    # One sequence: a token passes both stages in turn, so TPOT is close to the unsplit model's.
    assert float(one.tpot_s) == pytest.approx(float(flat.tpot_s), rel=0.1)
    # Two sequences: two micro-batches keep both stages busy, so nearly twice the tokens per second.
    two = estimate_inference(llama70, cl, replace(base, batch=2))
    assert float(two.tpot_s) < 1.1 * float(one.tpot_s)
    assert 1.8 < float(two.tokens_per_s) / float(one.tokens_per_s) <= 2.0


def test_replicas_multiply_throughput_and_nothing_else(llama70):
    lay = ServeLayout(tp=4, pp=1, replicas=1, batch=32, input_len=1024, output_len=256)
    one = estimate_inference(llama70, load_cluster("h100x4"), lay)
    two = estimate_inference(llama70, load_cluster("h100x8"), replace(lay, replicas=2))
    assert float(two.tokens_per_s) == pytest.approx(2 * float(one.tokens_per_s))
    assert float(two.tpot_s) == pytest.approx(float(one.tpot_s))
    assert float(two.tokens_per_s_per_device) == pytest.approx(float(one.tokens_per_s_per_device))


def test_continuous_batching_throughput_grows_with_batch(llama70):
    cl = load_cluster("h100x8")
    est = estimate_inference(llama70, cl, ServeLayout(tp=8, batch=np.array([1, 8, 64, 256]), input_len=2048,
                                                      output_len=256), check=False)
    tps = np.asarray(est.tokens_per_s)
    tpot = np.asarray(est.tpot_s)
    assert np.all(np.diff(tps) > 0) and np.all(np.diff(tpot) > 0)
    decode_rate = np.array([1, 8, 64, 256]) / tpot  # tokens/s while decoding, prefills aside
    assert decode_rate[-1] > 100 * decode_rate[0]
    # With 2048-token prompts and 256-token answers the prefills take most of the time at large batch.
    assert 10 * tps[0] < tps[-1] < decode_rate[-1] / 2


# --------------------------------------------------------------------------- search, Pareto front, JSON


def test_estimate_json_names(llama70):
    d = json.loads(estimate_inference_command("llama3-70b", "h100x8", 8, 1, None, 64, 2048, 256, None, "bf16",
                                              "json"))
    for key in ("ttft_s", "tpot_s", "tokens_per_s", "kv_cache_bytes", "memory_bytes", "fits"):
        assert key in d
    assert d["memory_bytes"]["total"] == pytest.approx(sum(v for k, v in d["memory_bytes"].items() if k != "total"))
    assert d["fits"] is True and d["replicas"] == 1 and d["batch"] == 64
    text = estimate_inference_command("llama3-70b", "h100x8", 8, 1, None, 64, 2048, 256, None, "bf16", "table")
    assert "TTFT" in text and "TPOT" in text


def test_plan_json_is_best_first_with_layout_names():
    plans = json.loads(plan_inference_command("llama3-70b", "h100x8", 2048, 256, None, 1000, 40, None, "bf16",
                                              top=5, fmt="json"))
    assert 1 <= len(plans) <= 5
    for p in plans:
        for key in ("ttft_s", "tpot_s", "tokens_per_s", "kv_cache_bytes", "memory_bytes", "fits", "tp", "pp",
                    "replicas", "batch"):
            assert key in p
        assert p["fits"] and p["tpot_s"] <= 0.040 + 1e-12 and p["ttft_s"] <= 1.0
        assert p["tp"] * p["pp"] * p["replicas"] == 8
        assert "total" in p["memory_bytes"]
    tps = [p["tokens_per_s"] for p in plans]
    assert tps == sorted(tps, reverse=True)


def test_plan_with_fixed_batch_and_table_output():
    text = plan_inference_command("llama3-70b", "h100x8", 2048, 256, 16, None, None, None, "bf16", top=3)
    assert "Pareto front" in text and "batch" in text
    csv = plan_inference_command("llama3-70b", "h100x8", 2048, 256, 16, None, None, None, "bf16", top=3, fmt="csv")
    assert csv.splitlines()[0].startswith("tp,pp,replicas,batch,ttft_s,tpot_s")


def test_pareto_front_is_not_dominated_and_plots(llama70, tmp_path):
    df = search_inference(llama70, load_cluster("h100x8"), input_len=2048, output_len=256, tpot_ms=30)
    front = pareto_front(df)
    fit = df[df["fits"]]
    for _, r in front.iterrows():
        better = fit[(fit["tokens_per_s_per_device"] > r["tokens_per_s_per_device"]) &
                     (fit["tokens_per_s_per_user"] > r["tokens_per_s_per_user"])]
        assert better.empty
    assert np.all(np.diff(front["tokens_per_s_per_user"].to_numpy()) <= 0)
    assert np.all(np.diff(front["tokens_per_s_per_device"].to_numpy()) > 0)
    path = pareto_plot(df, tmp_path / "pareto.png")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tpot_target_is_met_exactly_at_the_largest_batch(llama70):
    df = search_inference(llama70, load_cluster("h100x8"), input_len=2048, output_len=256, tpot_ms=25,
                          fixed={"tp": 8, "pp": 1})
    ok = df[df["meets_targets"] & df["fits"]]
    b = int(ok["batch"].max())
    lay = ServeLayout(tp=8, batch=b, input_len=2048, output_len=256)
    cl = load_cluster("h100x8")
    assert float(estimate_inference(llama70, cl, lay).tpot_s) <= 0.025
    assert float(estimate_inference(llama70, cl, replace(lay, batch=b + 1)).tpot_s) > 0.025


def test_explain_inference_lists_ops_and_batch_table():
    text = explain_inference_command("llama3-70b", "h100-pciex8", 8, 1, None, 32, 2048, 256, None, "bf16")
    assert "decode_attention" in text and "all-reduce" in text
    d = json.loads(explain_inference_command("llama3-70b", "h100x8", 8, 1, None, 32, 2048, 256, None, "bf16",
                                             "json", batches=[1, 2, 4]))
    assert [r["batch"] for r in d["decode_vs_batch"]] == [1, 2, 4]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, message", [
    (dict(tp=3), "tp=3 does not divide the 64 attention heads"),
    (dict(tp=16), "tp*pp = 16 does not divide the 8 devices"),
    (dict(replicas=2), "does not match the 8 devices"),
    (dict(tp=5), "tp=5 does not divide the 64 attention heads"),
    (dict(batch=0), "batch must be a positive whole number"),
    (dict(input_len=0), "input-len must be a positive whole number"),
    (dict(output_len=-5), "output-len must be a positive whole number"),
    (dict(output_len=None), "--output-len is required"),
    (dict(tp=8, pp=2), "does not divide the 8 devices"),
])
def test_bad_estimate_input_is_one_line(args, message):
    kw = dict(tp=8, pp=1, replicas=None, batch=1, input_len=2048, output_len=256, kv_dtype=None, dtype="bf16")
    kw.update(args)
    with pytest.raises(ParplanError) as exc:
        estimate_inference_command("llama3-70b", "h100x8", fmt="json", **kw)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_nothing_fits_names_the_fewest_devices():
    with pytest.raises(ParplanError) as exc:
        plan_inference_command("llama3.1-405b", "h100x4", 2048, 256, None, None, None, None, "bf16")
    msg = str(exc.value)
    assert "does not fit" in msg and "fewest h100-sxm devices" in msg and "\n" not in msg
    need = int(msg.rsplit(" ", 1)[-1])
    assert need > 4
    # ... and with that many devices it does fit.
    plan_inference_command("llama3.1-405b", make_cluster(load_cluster("h100").hardware, need), 2048, 256, None,
                           None, None, None, "bf16", top=1)


def test_unmet_targets_say_what_is_reachable():
    with pytest.raises(ParplanError) as exc:
        plan_inference_command("llama3-70b", "h100x8", 2048, 256, None, 1, 1, None, "bf16")
    assert "lowest TTFT" in str(exc.value) and "lowest TPOT" in str(exc.value)
    with pytest.raises(ParplanError):
        plan_inference_command("llama3-70b", "h100x8", 2048, 256, None, -1, None, None, "bf16")


# --------------------------------------------------------------------------- published serving measurements


def test_published_serving_rows():
    """Predict the shipped serving records (validation/serving-runs.yaml); print the errors; every published
    engine record fits and lands within 50% (the yardstick's figures are `parplan validate`'s)."""
    published = [r for r in load_serving_runs() if r.get("scope") == "serving"]
    results = validate_serving(published)
    print("\n" + format_serving_validation(results))
    assert len(results["rows"]) >= 6 and not results["skipped"]
    for r in results["rows"]:
        assert np.isfinite(r["error"])
        assert abs(r["error"]) < 0.5, r
        assert r["fits"], r


# --------------------------------------------------------------------------- the command line (once wired into cli.py)


def _wired() -> bool:
    from parplan.cli import commands as cli

    return any(p.name == "mode" for p in cli.estimate.params) and any(p.name == "mode" for p in cli.plan.params)


needs_cli = pytest.mark.skipif(not _wired(), reason="--mode inference is not wired into parplan.cli")


@needs_cli
def test_cli_plan_and_estimate_inference_json(run_cli, tmp_path):
    code, out, err = run_cli("plan", "--mode", "inference", "--model", "llama3-70b", "--hw", "h100x8",
                             "--input-len", "2048", "--output-len", "256", "--tpot-ms", "30", "--top", "3",
                             "--format", "json")
    assert code == 0, err
    plans = json.loads(out)
    assert plans and all({"ttft_s", "tpot_s", "tokens_per_s", "kv_cache_bytes", "memory_bytes", "fits", "tp", "pp",
                          "replicas", "batch"} <= set(p) for p in plans)
    code, out, err = run_cli("estimate", "--mode", "inference", "--model", "llama3-70b", "--hw", "h100x8", "--tp", "8",
                             "--batch", "16", "--input-len", "2048", "--output-len", "256", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["memory_bytes"]["total"] > 0
    png = tmp_path / "front.png"
    code, out, err = run_cli("plan", "--mode", "inference", "--model", "llama3-70b", "--hw", "h100-pciex8",
                             "--input-len", "1024", "--output-len", "128", "--plot", str(png), "--top", "2")
    assert code == 0, err
    assert png.is_file() and "Pareto front" in out


@needs_cli
@pytest.mark.parametrize("args, message", [
    (["--tp", "3"], "tp=3 does not divide"),
    (["--tp", "8", "--batch", "0"], "batch must be a positive whole number"),
    (["--tp", "8", "--zero", "1"], "--zero does not apply with --mode inference"),
])
def test_cli_inference_errors_are_one_line(run_cli, args, message):
    code, out, err = run_cli("estimate", "--mode", "inference", "--model", "llama3-70b", "--hw", "h100x8",
                             "--input-len", "2048", "--output-len", "256", *args)
    assert code == 1 and message in err and err.count("\n") == 1


@needs_cli
def test_cli_framework_for_inference(run_cli):
    base = ("estimate", "--mode", "inference", "--model", "llama3-8b", "--hw", "h100", "--batch", "4",
            "--input-len", "1024", "--output-len", "128", "--format", "json")
    code, out, err = run_cli(*base)
    assert code == 0, err
    assert json.loads(out)["framework"] == "vllm"
    code, out, err = run_cli(*base, "--framework", "pytorch", "--cuda-graphs", "--no-fused-kernels")
    assert code == 0, err
    d = json.loads(out)
    assert d["framework"] == "pytorch" and d["cuda_graphs"] is True
    code, out, err = run_cli("estimate", "--mode", "inference", "--model", "llama3-8b", "--hw", "h100",
                             "--input-len", "1024", "--output-len", "128")
    assert code == 0, err
    assert "software          vllm" in out and "the default on gpus" in out


@needs_cli
@pytest.mark.parametrize("args, message", [
    (["--mode", "inference", "--framework", "vlm"], "unknown framework 'vlm' (did you mean 'vllm'?); choose from jax, "
                                                    "pytorch, sglang, tensorrt-llm, vllm"),
    (["--mode", "inference", "--framework", "megatron-core"], "has no serving section"),
    (["--mode", "inference", "--compile"], "--compile does not apply with --mode inference"),
    (["--mode", "inference", "--framework", "vllm", "--no-cuda-graphs", "--fp8-recipe", "rowwise"],
     "--fp8-recipe does not apply with --mode inference"),
    (["--framework", "vllm", "--tp", "1"], "is a serving stack (use it with --mode inference)"),
    (["--cuda-graphs"], "--cuda-graphs does not apply with --mode train"),
])
def test_cli_serving_framework_errors_are_one_line(run_cli, args, message):
    code, out, err = run_cli("estimate", "--model", "llama3-8b", "--hw", "h100", "--input-len", "1024",
                             "--output-len", "128", *args) if "inference" in args else \
        run_cli("estimate", "--model", "llama3-8b", "--hw", "h100", *args)
    assert code == 1 and message in err and err.count("\n") == 1, err


@needs_cli
def test_cli_emit_implies_its_serving_stack(run_cli):
    base = ("plan", "--mode", "inference", "--model", "llama3-8b", "--hw", "h100x2", "--input-len", "1024",
            "--output-len", "128", "--batch", "8")
    code, out, err = run_cli(*base, "--emit", "sglang", "--framework", "vllm")
    assert code == 1 and "--emit sglang runs the plan on sglang, not on --framework vllm" in err
    code, out, err = run_cli(*base, "--emit", "sglang", "--framework", "sgl")
    assert code == 0 and "--max-running-requests 8" in out, err
    code, out, err = run_cli(*base, "--framework", "sglang", "--format", "json", "--top", "1")
    assert code == 0 and json.loads(out)[0]["framework"] == "sglang", err
