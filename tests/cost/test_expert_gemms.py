"""Expert GEMMs at the profile's measured share of the roofline, per launch (one grouped kernel, or one GEMM per
expert over CUDA streams as Transformer Engine's GroupedLinear runs them) and per dtype."""
from dataclasses import replace
from types import MappingProxyType

import pytest

from parplan.cost import ops as ops_mod
from parplan.cost.kernels import KernelEnv, op_times
from parplan.errors import ParplanError
from parplan.specs.framework_loader import _shipped_data, framework_from_dict, load_framework
from parplan.specs.hardware import load_hardware
from parplan.specs.kernel_tables import grouped_from_dict

FLAT = (1.0, 1.0e6)  # one fraction at every tokens-per-expert


def _hw(**curves):
    return replace(load_hardware("h100-sxm"),
                   grouped_gemm=(FLAT, MappingProxyType({k: (v, v) for k, v in curves.items()})))


def _fwd(hw, launch, fp8):
    op = replace(ops_mod._gemm("expert_gate_up", 512, 4096, 3072, 2, batch=16, kind=ops_mod.BATCHED, fp8=fp8),
                 grouped=launch)
    return float(op_times(hw, op, "bf16", env=KernelEnv(fp8_scaling="tensorwise"))[0])


def test_each_launch_and_dtype_runs_at_its_own_curve():
    """Flat curves by hand: a grouped kernel at 0.5 of the roofline takes twice its time, the streams at 0.25
    four times; FP8 takes its own curve (0.2) where the profile has one, else the 16-bit one of that launch."""
    hw = _hw(fraction=0.5, streams=0.25, streams_fp8=0.2)
    for fp8 in (False, True):
        roofline = _fwd(hw, "", fp8)
        assert _fwd(hw, ops_mod.GROUPED, fp8) == pytest.approx(roofline / 0.5)
        assert _fwd(hw, ops_mod.STREAMS, fp8) == pytest.approx(roofline / (0.2 if fp8 else 0.25))
    only_grouped = _hw(fraction=0.5)   # a profile that measured one grouped kernel only
    assert _fwd(only_grouped, ops_mod.STREAMS, True) == pytest.approx(_fwd(only_grouped, "", True) / 0.5)


def test_the_shipped_h100_curves_say_fp8_buys_less_on_small_expert_gemms():
    """At 256 tokens per expert an FP8 grouped GEMM runs at a smaller share of its roofline than bf16 does at
    its own (measured 1.33-1.61x over bf16, not the roofline's 1.8x); Megatron-Core's streams are slower than
    one grouped kernel there and as fast from 4096 tokens per expert."""
    tokens, curves = load_hardware("h100-sxm").grouped_gemm
    i, j = tokens.index(256.0), tokens.index(4096.0)
    assert curves["fraction_fp8"][i] < curves["fraction"][i] and curves["streams"][i] < curves["fraction"][i]
    assert curves["streams"][j] >= curves["fraction"][j]
    assert load_framework("megatron-core").moe.expert_gemms == ops_mod.STREAMS
    assert load_framework("torchtitan").moe.expert_gemms == ops_mod.GROUPED
    assert load_framework("deepspeed").moe.expert_gemms == ops_mod.LOOP


@pytest.mark.parametrize("data,match", [
    ({"tokens_per_expert": [16, 32], "streams": [0.5, 0.6]}, "fraction \\(required\\)"),
    ({"tokens_per_expert": [16, 32], "fraction": [0.5, 0.6], "streams": [0.5]}, "as many fractions"),
    ({"tokens_per_expert": [16, 32], "fraction": [0.5, 1.2]}, "in \\(0, 1\\]"),
    ({"tokens_per_expert": [32, 16], "fraction": [0.5, 0.6]}, "increasing"),
    ({"tokens_per_expert": [16, 32], "fraction": [0.5, 0.6], "loops": [0.5, 0.6]}, "loops"),
])
def test_bad_expert_gemm_curves_are_one_line_errors(data, match):
    with pytest.raises(ParplanError, match=match):
        grouped_from_dict(data, "x: grouped_gemm")


def test_a_framework_names_its_expert_launch_or_the_older_flag():
    data = _shipped_data()["megatron-core"]

    def moe(**kw):
        return framework_from_dict(dict(data, moe={k: v for k, v in dict(data["moe"], **kw).items() if v is not None}),
                                   "x").moe.expert_gemms
    assert moe(expert_gemms=None, grouped_gemm=True) == "grouped"
    assert moe(expert_gemms=None, grouped_gemm=False) == "loop"
    with pytest.raises(ParplanError, match="expert_gemms or grouped_gemm, not both"):
        moe(grouped_gemm=True)
    with pytest.raises(ParplanError, match="expert_gemms"):
        moe(expert_gemms="cutlass")
    with pytest.raises(ParplanError, match="'sync_s' must be 0 or more seconds"):
        moe(sync_s=-0.5)


@pytest.mark.parametrize("ep,capacity,launch,reads", [
    (8, None, "grouped", 1),    # the all-to-all's splits
    (1, None, "grouped", 0),    # one grouped kernel takes its offsets on the device
    (1, None, "streams", 1),    # a GEMM per expert: the host slices the rows
    (8, 1.0, "streams", 0),     # capacity padding fixes the counts in advance
])
def test_the_host_reads_the_tokens_per_expert_where_it_must(ep, capacity, launch, reads):
    from parplan.cost import moe as moe_mod
    from parplan.specs.model_loader import model_from_dict
    m = model_from_dict({"name": "toy", "layers": 4, "hidden": 1024, "heads": 8, "kv_heads": 8, "ffn_hidden": 2048,
                         "activation": "swiglu", "vocab": 32000, "seq_len": 2048, "norm": "rmsnorm",
                         "position": "rope", "bias": False, "tied_embeddings": False, "experts": 8, "top_k": 2,
                         "capacity_factor": capacity}, "toy")
    d = ops_mod.LocalDims(batch=1, seq=2048, seq_kv=2048, hidden=1024, heads=8, kv_heads=8, head_dim=128, ffn=2048,
                          vocab=32000, norm_shard=1, moe=moe_mod.MoeParallel(1, ep, 1), moe_share=1.0)
    assert float(moe_mod.host_syncs(m, d, launch)) == reads


def test_each_host_read_idles_the_gpu_once_per_moe_layer_forward():
    """Megatron-Core, dropless, ep 8: every layer's forward is longer than its kernels by the profile's sync_s
    (170 us), its backward not at all; the same run with capacity padding reads nothing."""
    import parplan
    from parplan.layouts.layout import Layout
    from parplan.specs.model_loader import model_from_dict
    spec = {"name": "toy", "layers": 4, "hidden": 1024, "heads": 8, "kv_heads": 8, "ffn_hidden": 2048,
            "activation": "swiglu", "vocab": 32000, "seq_len": 2048, "norm": "rmsnorm", "position": "rope",
            "bias": False, "tied_embeddings": False, "experts": 8, "top_k": 2}
    cl = parplan.load_cluster("h100x8")
    lay = Layout(dp=8, micro_batch=1, global_batch=16, seq_len=2048, axes=(("ep", 8), ("etp", 1)))
    assert load_framework("megatron-core").moe.sync_s == pytest.approx(1.7e-4)
    for cf, reads in ((None, 1), (1.0, 0)):
        est = parplan.estimate(model_from_dict(dict(spec, capacity_factor=cf), "toy"), cl, lay)
        kernels_fwd = sum(float(t[0]) for t in est.op_times)
        assert float(est.layer_forward_s) == pytest.approx(kernels_fwd + reads * 1.7e-4)
        assert float(est.layer_backward_s) == pytest.approx(sum(float(t[1]) for t in est.op_times))


def test_the_shipped_curves_are_what_the_curve_script_makes_of_the_stored_measurements():
    """hardware/h100-sxm.yaml's grouped_gemm curves are scripts/grouped_gemm_curve.py's output for the two stored
    H100 runs, to the two decimals the profile keeps."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "scripts/grouped_gemm_curve.py",
                          "reports/moe/h100-2026-12-06b/moe_gemm_fp8.csv", "reports/moe/h100-2026-12-06/moe_gemm.csv"],
                         cwd=root, capture_output=True, text=True, check=True).stdout
    printed = {line.split(":")[0].strip(): [float(x) for x in line.split("[")[1].rstrip("]").split(",")]
               for line in out.splitlines() if line.startswith("  ") and "[" in line}
    tokens, curves = load_hardware("h100-sxm").grouped_gemm
    assert printed.pop("tokens_per_expert") == list(tokens)
    assert printed.keys() == curves.keys()
    for name, values in printed.items():
        assert list(curves[name]) == pytest.approx(values, abs=1e-9), name
