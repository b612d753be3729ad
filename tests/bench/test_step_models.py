"""The cut-down models of ``scripts/step_models/`` (whole one-GPU steps with a validated run's layers) keep
every layer shape of the model they are cut from; only the layer count differs."""
from pathlib import Path

import pytest
import yaml

from parplan.specs.model_loader import load_model
from parplan.validate.published import record_model_data
from parplan.specs.model import model_from_dict

ROOT = Path(__file__).resolve().parents[2]
SHAPE = ("hidden", "heads", "kv_heads", "head_dim", "ffn_hidden", "activation", "norm", "position", "bias",
         "tied_embeddings", "vocab", "seq_len")


def _record(rid: str) -> dict:
    runs = yaml.safe_load((ROOT / "validation" / "modern-runs.yaml").read_text())
    runs = runs["runs"] if isinstance(runs, dict) else runs
    return next(r for r in runs if r["id"] == rid)


@pytest.mark.parametrize("name, parent, layers", [
    ("llama2-7b-8l", "llama2-7b", 8),
    ("llama3-8b-6l", "llama3.1-8b", 6),
    ("llama2-13b-6l", "llama2-13b", 6),
    ("mpt-7b-8l", "record:llmfoundry-mpt7b-h100_80gb-8gpu-seq2048", 8),
])
def test_cut_models_keep_their_parents_layer_shapes(name, parent, layers):
    cut = load_model(str(ROOT / "scripts" / "step_models" / f"{name}.yaml"))
    if parent.startswith("record:"):
        full = model_from_dict(record_model_data(_record(parent.split(":", 1)[1])), "record")
    else:
        full = load_model(parent)
    assert cut.layers == layers < full.layers
    assert {k: getattr(cut, k) for k in SHAPE} == {k: getattr(full, k) for k in SHAPE}
    assert cut.layer_params() == full.layer_params()
