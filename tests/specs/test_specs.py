"""Spec files: every profile and model loads, carries its sources, and counts its parameters right."""
import pytest

from tests.helpers import REPO
from parplan.specs.hardware import hardware_names, load_hardware
from parplan.errors import ParplanError
from parplan.specs.cluster import load_cluster
from parplan.specs.model_loader import load_model, model_names

REQUIRED_PROFILES = ["v100-32gb", "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "b200", "mi300x",
                     "tpu-v3", "tpu-v4", "tpu-v5e", "tpu-v5p"]
SOURCED_FIELDS = ["compute_units", "peak_flops", "hbm_bytes", "hbm_bandwidth", "devices_per_node",
                  "intra_node.bandwidth", "intra_node.latency_s", "intra_node.efficiency", "inter_node.bandwidth",
                  "inter_node.latency_s", "inter_node.efficiency", "efficiency.matmul", "efficiency.hbm",
                  "kernel_overhead_s", "collective_overhead_s"]


def test_required_profiles_and_aliases_exist():
    names = hardware_names()
    for name in REQUIRED_PROFILES:
        assert name in names
    assert load_hardware("a100").name == "a100-80gb"
    assert load_hardware("h100").name == "h100-sxm"


@pytest.mark.parametrize("name", REQUIRED_PROFILES)
def test_every_value_names_its_source(name):
    hw = load_hardware(name)
    missing = [f for f in SOURCED_FIELDS if not hw.sources.get(f)]
    assert not missing, f"{name} lacks sources for {missing}"
    if hw.kind == "tpu":
        assert hw.torus is not None and hw.sources.get("ici.link_bandwidth")


def test_no_sparsity_figures():
    """Dense bf16 peaks: H100 SXM is 989 TFLOP/s dense (1979 is the sparse figure)."""
    assert load_hardware("h100").peak("bf16") == pytest.approx(989.4e12, rel=0.01)
    assert load_hardware("a100").peak("bf16") == pytest.approx(312e12)
    assert load_hardware("mi300x").peak("bf16") == pytest.approx(1307.4e12, rel=0.01)


def test_v100_has_no_bf16_rate():
    from parplan.errors import ParplanError

    with pytest.raises(ParplanError, match="no dense bf16"):
        load_hardware("v100").peak("bf16")


# Published parameter counts (exact where the source prints them).
PUBLISHED = {
    "gpt3-175b": 174.6e9,       # Narayanan et al. 2021 Table 2 ("174.6B"); Brown et al. 2020 "175B"
    "gpt3-125m": 125e6,         # Brown et al. 2020 Table 2.1
    "gpt3-6.7b": 6.7e9,
    "llama2-7b": 6.738e9,       # Touvron et al. 2023; HF model card 6,738,415,616
    "llama2-13b": 13.016e9,     # HF model card 13,015,864,320
    "llama3.1-8b": 8.03e9,      # Llama 3.1 model card (8.03B)
    "llama3.1-70b": 70.6e9,     # model card (70.6B)
    "llama3.1-405b": 405e9,     # Llama 3 report: 405B
    "bloom-176b": 176.247e9,    # BigScience model card: 176,247,271,424
    "opt-175b": 175e9,          # Zhang et al. 2022
    "mt-nlg-530b": 530e9,       # Smith et al. 2022
    "palm-540b": 540.35e9,      # Chowdhery et al. 2022 Table 1 (540.35B)
    "megatron-1t": 1008.0e9,    # Narayanan et al. 2021 Table 1 (1008.0B)
    "megatron-145.6b": 145.6e9,
    "mistral-7b": 7.24e9,       # Mistral 7B model card (7.24B)
}


@pytest.mark.parametrize("name,published", sorted(PUBLISHED.items()))
def test_parameter_counts_within_one_percent(name, published):
    assert load_model(name).total_params() == pytest.approx(published, rel=0.01)


def test_gpt3_count_by_hand():
    """12 L h^2 + 13 L h + V h + s h + 2h for GPT-3 175B (learned positions, tied embeddings)."""
    m = load_model("gpt3")
    L, h, V, s = 96, 12288, 50257, 2048
    assert m.total_params() == 12 * L * h * h + 13 * L * h + V * h + s * h + 2 * h


def test_every_model_loads_with_a_source():
    for name in model_names():
        m = load_model(name)
        assert m.source, name
        assert m.heads % m.kv_heads == 0


def test_cluster_parsing():
    c = load_cluster("a100x512")
    assert (c.devices, c.devices_per_node, c.nodes) == (512, 8, 64)
    assert load_cluster("mi300xx8").hardware.name == "mi300x"
    assert load_cluster("mi300xx8").devices == 8
    # a profile whose name ends in x takes its count after that x too, and prints as a person reads it
    assert (load_cluster("mi300x64").hardware.name, load_cluster("mi300x64").devices) == ("mi300x", 64)
    assert load_cluster("h100-sxmx64").label == "64 x h100-sxm"
    with pytest.raises(ParplanError, match="unknown hardware 'a1008'"):
        load_cluster("a1008")  # digits without an x are no count
    assert load_cluster("h100").devices == 1


def test_cluster_file(tmp_path):
    f = tmp_path / "cluster.yaml"
    f.write_text("hardware: a100-80gb\ndevices: 384\ndevices_per_node: 8\ninter_node_bandwidth: 6.25e+9\n")
    c = load_cluster(str(f))
    assert c.devices == 384 and c.nodes == 48
    assert c.inter_node.bandwidth == 6.25e9
    assert c.intra_node.bandwidth == load_hardware("a100").intra_node.bandwidth


def test_hf_config(tmp_path):
    import json

    cfg = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
           "max_position_embeddings": 131072, "hidden_act": "silu", "rms_norm_eps": 1e-5,
           "tie_word_embeddings": False}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    m = load_model(str(p))
    assert m.activation == "swiglu" and m.kv_heads == 8 and m.norm == "rmsnorm"
    assert m.total_params() == pytest.approx(load_model("llama3.1-8b").total_params(), rel=1e-6)


def test_specs_found_from_installed_package():
    """The loader finds the specs through the package (works after a non-editable install too)."""
    from parplan.specs.registry import spec_dir

    for kind in ("hardware", "models", "validation"):
        assert any(spec_dir(kind).glob("*.yaml")), kind


def test_every_subpackage_ships_in_the_wheel():
    """pyproject lists packages explicitly (for the spec folders): every parplan subpackage must be in it."""
    import tomllib

    root = REPO
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "parplan").rglob("__init__.py")}
    assert found <= listed, f"missing from pyproject packages: {sorted(found - listed)}"


def test_spec_dir_prefers_the_installed_copy(tmp_path, monkeypatch):
    """After `pip install .` the specs sit in parplan/data/<kind>/; the loader must look there first."""
    import parplan.specs.registry as specs

    (tmp_path / "data" / "models").mkdir(parents=True)
    (tmp_path / "data" / "models" / "x.yaml").write_text("name: x\n")
    monkeypatch.setattr(specs, "_PACKAGE", tmp_path)
    assert specs.spec_dir("models") == tmp_path / "data" / "models"
    assert specs.spec_dir("hardware") == specs._REPO_ROOT / "hardware"
