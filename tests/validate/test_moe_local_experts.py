"""scripts/moe_local_experts.py's per-GPU shape of an MoE record, against a hand count."""
import importlib.util
import pathlib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("moe_local_experts", ROOT / "scripts" / "moe_local_experts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_model_zoo_tp4_layout_by_hand():
    """Qwen3-235B (94 MoE layers, 128 experts, top-8) at tp 4 with sequence parallelism, pp 8, dp 8, ep 8,
    micro-batch 1 of 4096 tokens, global batch 2048: 16 local experts; 2048 / 8 = 256 micro-batches of
    94 / 8 layers each; 4096 / 4 = 1024 tokens a micro-batch, 8 copies each over 128 / 8 experts a rank."""
    runs = yaml.safe_load((ROOT / "validation" / "moe-runs.yaml").read_text())
    rec = next(r for r in (runs["runs"] if isinstance(runs, dict) else runs)
               if r["id"] == "zoo-h100-qwen3-235b-tp4-ep8-pp8-256gpu")
    got = _script().shape(rec)
    assert got["local"] == 16
    assert got["lm"] == 256 * 94 / 8
    assert got["tokens"] == 1024
    assert got["rows"] == 1024 * 8 / 16
