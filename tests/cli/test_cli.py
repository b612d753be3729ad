"""The CLI end to end: estimate's JSON names, list, show, explain."""
import json


def test_estimate_json_has_the_stable_names(run_cli):
    rc, out, err = run_cli("estimate", "--model", "gpt3", "--hw", "a100x1024", "--tp", "8", "--pp", "8", "--dp",
                           "16", "--micro-batch", "1", "--global-batch", "1536", "--recompute", "full",
                           "--format", "json")
    assert rc == 0, err
    d = json.loads(out)
    for key in ("step_time_s", "tokens_per_s", "mfu", "tflops_per_device", "memory_bytes", "fits", "breakdown_s"):
        assert key in d
    assert d["memory_bytes"]["total"] == sum(v for k, v in d["memory_bytes"].items() if k != "total")
    assert abs(sum(d["breakdown_s"].values()) - d["step_time_s"]) < 1e-9 * d["step_time_s"]
    assert d["tokens_per_s"] == 1536 * 2048 / d["step_time_s"]
    assert 0 < d["mfu"] < d["hfu"] < 1
    assert isinstance(d["fits"], bool) and d["fits"]


def test_estimate_table(run_cli):
    rc, out, _ = run_cli("estimate", "--model", "llama3.1-8b", "--hw", "h100x8", "--global-batch", "8")
    assert rc == 0
    for word in ("step time", "tokens/s", "MFU", "memory per device", "compute"):
        assert word in out


def test_mesh_flag_sets_axes_and_order(run_cli):
    rc, out, err = run_cli("estimate", "--model", "gpt3", "--hw", "a100x64", "--mesh", "tp=8,dp=2,pp=4",
                           "--global-batch", "16", "--format", "json")
    assert rc == 0, err
    lay = json.loads(out)["layout"]
    assert (lay["tp"], lay["dp"], lay["pp"], lay["cp"]) == (8, 2, 4, 1)
    assert lay["order"][:3] == ["tp", "dp", "pp"]


def test_list_and_show(run_cli):
    rc, out, _ = run_cli("list", "hardware")
    assert rc == 0 and "a100-80gb" in out and "tpu-v5p" in out
    rc, out, _ = run_cli("list", "models")
    assert rc == 0 and "gpt3-175b" in out and "llama3.1-405b" in out
    rc, out, _ = run_cli("show", "h100")
    assert rc == 0 and "FLOP per intra-node byte" in out and "sources:" in out
    rc, out, _ = run_cli("show", "gpt3")
    assert rc == 0 and "174.604 B" in out


def test_explain_json_has_layer_times(run_cli):
    rc, out, err = run_cli("explain", "--model", "gpt3-1.3b", "--hw", "h100x1", "--global-batch", "1",
                           "--format", "json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["layer"]["forward_s"] > 0 and d["layer"]["backward_s"] > d["layer"]["forward_s"]
    names = [o["op"] for o in d["ops"]]
    assert "qkv_proj" in names and "mlp_down" in names
    assert abs(sum(o["forward_s"] for o in d["ops"]) - d["layer"]["forward_s"]) < 1e-12


def test_no_fused_kernels_adds_the_eager_passes(run_cli):
    args = ("explain", "--model", "gpt2-2.5b", "--hw", "v100x2", "--tp", "2", "--micro-batch", "8",
            "--dtype", "fp16", "--no-flash-attention", "--format", "json")
    rc, out, err = run_cli(*args)
    assert rc == 0, err
    fused = json.loads(out)
    rc, out, err = run_cli(*args, "--no-fused-kernels")
    assert rc == 0, err
    eager = json.loads(out)
    assert set(eager["software"]["elementwise"].values()) == {"eager"}
    assert set(fused["software"]["elementwise"].values()) == {"fused"}
    names = {o["op"] for o in eager["ops"]} - {o["op"] for o in fused["ops"]}
    assert {"scale_mask", "qkv_bias_transpose", "context_transpose"} <= names
    assert eager["layer"]["forward_s"] > fused["layer"]["forward_s"]


def test_explain_names_the_gemms_slowed_by_misaligned_rows(run_cli):
    """GPT-3 13B's printed width 5140 (8-byte rows in bf16) on H200: explain says which GEMMs run at the
    measured misaligned fraction and why; a 16-byte-aligned model gets no such note."""
    rc, out, err = run_cli("explain", "--model", "gpt3-13b", "--hw", "h200x8", "--tp", "8", "--global-batch", "8")
    assert rc == 0, err
    note = next(line for line in out.splitlines() if "aligned GEMM rate" in line)
    assert "qkv_proj" in note and "mlp_down" in note and "37%" in note and "5140" in note
    rc, out, err = run_cli("explain", "--model", "gpt3-6.7b", "--hw", "h200x8", "--tp", "8", "--global-batch", "8")
    assert rc == 0 and "aligned GEMM rate" not in out
