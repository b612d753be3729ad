"""--emit maxtext: MaxText's own config keys for a TPU plan, and the plan read back from a MaxText config."""
import yaml
import pytest

from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.layouts.torus_map import parse_map
from parplan.plan.emitters import emit, problem, read_config
from parplan.plan.emitters.maxtext import maxtext_keys, mesh
from parplan.specs.cluster import load_cluster
from parplan.specs.model_loader import load_model

MODEL = load_model("llama3.1-70b")


def palm_like(cl):
    """FSDP 64 within each slice, data parallel across two, tensor parallel 4."""
    sizes = {"tp": 4, "cp": 1, "dp": 128, "pp": 1}
    return Layout(tp=4, dp=128, zero=3, shard_group=64, micro_batch=4, global_batch=1024, sp=True, seq_len=8192,
                  recompute="full", torus_map=parse_map("tp=x:4,dp=y+z+dcn", sizes, cl))


def test_every_emitted_key_is_in_maxtexts_base_yml():
    """The keys of src/maxtext/configs/base.yml at AI-Hypercomputer/maxtext e591f30 (maxtext_keys.txt)."""
    keys = maxtext_keys()
    assert {"ici_fsdp_parallelism", "ici_tensor_parallelism", "dcn_data_parallelism", "per_device_batch_size",
            "remat_policy", "shard_optimizer_over_data", "num_pipeline_repeats"} <= keys
    cl = load_cluster("tpu-v5px2x256")
    cfg = yaml.safe_load(emit("maxtext", palm_like(cl), MODEL))
    assert set(cfg) <= keys
    assert (cfg["ici_fsdp_parallelism"], cfg["dcn_data_parallelism"], cfg["ici_tensor_parallelism"]) == (64, 2, 4)
    assert (cfg["per_device_batch_size"], cfg["gradient_accumulation_steps"], cfg["remat_policy"]) == (1, 2, "full")
    assert cfg["base_num_kv_heads"] == 8 and cfg["mlp_activations"] == ["silu", "linear"]


def test_mesh_of_maxtext_layouts():
    """Pure FSDP over DCN (dcn_fsdp), ZeRO-1 data parallelism (shard_optimizer_over_data) and a pipeline
    across slices."""
    cl = load_cluster("tpu-v6ex2x256")
    sizes = {"tp": 1, "cp": 1, "dp": 512, "pp": 1}
    fsdp = Layout(dp=512, zero=3, global_batch=512, torus_map=parse_map("dp=x+y+dcn", sizes, cl))
    got = mesh(fsdp)
    assert (got["ici_fsdp_parallelism"], got["dcn_fsdp_parallelism"], got["dcn_data_parallelism"]) == (256, 2, 1)
    zero1 = emit("maxtext", Layout(dp=512, zero=1, global_batch=512, seq_len=8192), MODEL)
    assert "shard_optimizer_over_data: true" in zero1 and "ici_data_parallelism: 512" in zero1
    sizes = {"tp": 1, "cp": 1, "dp": 256, "pp": 2}
    piped = Layout(dp=256, pp=2, vpp=2, global_batch=1024, zero=1, schedule="interleaved", seq_len=8192,
                   torus_map=parse_map("dp=x+y,pp=dcn", sizes, cl))
    cfg = yaml.safe_load(emit("maxtext", piped, MODEL))
    assert (cfg["dcn_pipeline_parallelism"], cfg["num_pipeline_repeats"], cfg["num_pipeline_microbatches"]) == (2, 2, 4)


def test_read_back_is_the_same_layout(tmp_path):
    cl = load_cluster("tpu-v5px2x256")
    lay = palm_like(cl)
    path = tmp_path / "run.yml"
    path.write_text(emit("maxtext", lay, MODEL))
    got = read_config(str(path), cl.devices, MODEL)
    assert got.target == "maxtext" and got.framework == "jax"
    want = dict(tp=4, pp=1, cp=1, dp=128, zero=3, shard_group=64, micro_batch=4, global_batch=1024, seq_len=8192,
                recompute="full", dtype="bf16")
    assert dict(got.layout) == want


@pytest.mark.parametrize("cfg, words", [
    ({"ici_fsdp_parallelism": 8, "ici_tensr_parallelism": 2}, ["unknown key 'ici_tensr_parallelism'",
                                                              "ici_tensor_parallelism"]),
    ({"ici_fsdp_parallelism": 4, "ici_expert_parallelism": 2}, ["ici_expert_parallelism = 2", "data, fsdp"]),
    ({"ici_fsdp_parallelism": 4, "ici_tensor_parallelism": 4}, ["multiply to 16 chips, not the cluster's 8"]),
    ({"ici_fsdp_parallelism": -1, "remat_policy": "save_qkv_proj"}, ["remat_policy 'save_qkv_proj' is not modelled"]),
    ({"ici_fsdp_parallelism": -1, "base_emb_dim": 1024}, ["base_emb_dim = 1024", "8192"]),
])
def test_bad_maxtext_configs_are_one_line(tmp_path, cfg, words):
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ParplanError) as exc:
        read_config(str(path), 8, MODEL)
    msg = str(exc.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_what_maxtext_cannot_run():
    assert "ZeRO stages 0, 1, 3" in problem("maxtext", Layout(dp=8, zero=2, seq_len=8192), MODEL)
    assert "tensor parallelism 1d" in problem("maxtext", Layout(tp=4, tp_mode="2d", dp=2, seq_len=8192, micro_batch=2), MODEL)
