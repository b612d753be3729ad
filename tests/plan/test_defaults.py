"""Defaults that decide an answer are one documented rule, and every output says which was used."""
import json

import pytest

from parplan.errors import ParplanError
from parplan.plan.candidates import DEFAULT_BATCH_TOKENS, default_global_batch
from parplan.specs.cluster import load_cluster
from parplan.specs.model_loader import load_model


@pytest.mark.parametrize("hw", ["h100x64", "h100x16384", "h100x1000000"])
def test_the_default_batch_is_a_token_budget_not_a_function_of_the_cluster(hw):
    model = load_model("llama3.1-405b")
    assert default_global_batch(model, load_cluster(hw), 8192) * 8192 == DEFAULT_BATCH_TOKENS
    assert default_global_batch(model, load_cluster(hw), 8192, multiple=96) % 96 == 0


def test_estimate_and_plan_default_to_the_same_batch(run_cli):
    code, out, err = run_cli("plan", "--model", "gpt3", "--hw", "a100x64", "--tp", "8", "--pp", "8",
                             "--format", "json", "--top", "1")
    assert code == 0, err
    planned = json.loads(out)[0]
    code, out, err = run_cli("estimate", "--model", "gpt3", "--hw", "a100x64", "--tp", "8", "--pp", "8",
                             "--micro-batch", str(planned["micro_batch"]), "--format", "json")
    assert code == 0, err
    est = json.loads(out)
    assert est["layout"]["global_batch"] == planned["global_batch"] == DEFAULT_BATCH_TOKENS // 2048
    assert est["global_batch_note"].startswith("default: 2048 x 2048")
    code, out, err = run_cli("estimate", "--model", "gpt3", "--hw", "a100x64", "--tp", "8", "--pp", "8")
    assert "global batch: default:" in out and "(2048 micro-batches)" in out


def test_a_hf_config_trains_at_its_pre_training_length_and_says_so(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "rms_norm_eps": 1e-5,
           "max_position_embeddings": 131072, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = load_model(str(tmp_path / "config.json"))
    assert (m.seq_len, m.max_seq_len) == (8192, 131072) and "llama3.1-8b" in m.seq_note
    cfg.update(hidden_size=2304, num_hidden_layers=18, intermediate_size=8192)  # no shipped spec has this shape
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(cfg))
    m = load_model(str(other / "config.json"))
    assert m.seq_len == 4096 and "default" in m.seq_note
    gpt2 = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}
    (other / "gpt2.json").write_text(json.dumps(gpt2))
    m = load_model(str(other / "gpt2.json"))
    assert m.seq_len == 1024 and m.context_limit == 1024 and m.seq_note == ""


def test_a_hf_config_without_a_window_takes_the_stated_default_or_says_what_is_missing(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 4, "num_attention_heads": 16,
           "intermediate_size": 8192, "vocab_size": 32000}
    (tmp_path / "llama.json").write_text(json.dumps(cfg))
    m = load_model(str(tmp_path / "llama.json"))
    assert (m.seq_len, m.max_seq_len) == (4096, None) and "gives no max_position_embeddings" in m.seq_note
    (tmp_path / "gpt2.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 768, "n_layer": 12,
                                                     "n_head": 12, "vocab_size": 50257}))
    with pytest.raises(ParplanError, match="no max_position_embeddings .or n_positions"):
        load_model(str(tmp_path / "gpt2.json"))


def test_serving_beyond_the_context_window_is_refused_and_beyond_training_length_is_noted(run_cli):
    code, out, err = run_cli("estimate", "--mode", "inference", "--model", "llama3.1-8b", "--hw", "h100x1",
                             "--input-len", "131000", "--output-len", "100")
    assert code == 1 and "holds at most 131072 tokens of context" in err
    code, out, err = run_cli("estimate", "--mode", "inference", "--model", "mistral-7b", "--hw", "h100x1",
                             "--input-len", "16000", "--output-len", "100", "--format", "json")
    assert code == 0 and "exceed the 8192 mistral-7b trains at" in json.loads(out)["notes"][0]
    with pytest.raises(ParplanError, match="learned position table"):
        from parplan.specs.cluster import load_cluster as lc
        from parplan.step.serve import estimate_inference
        from parplan.step.serve_layout import ServeLayout
        estimate_inference(load_model("gpt3-1.3b"), lc("h100x1"), ServeLayout(input_len=2048, output_len=1))


def test_plan_json_and_sweep_say_which_batch_they_used(run_cli, tmp_path):
    code, out, err = run_cli("plan", "--model", "gpt3-125m", "--hw", "a100x8", "--top", "1", "--format", "json")
    assert code == 0 and json.loads(out)[0]["global_batch_note"].startswith("default: 2048 x 2048")
    code, out, err = run_cli("sweep", "--model", "gpt3-125m", "--hw", "a100", "--vary", "devices=8..16",
                             "-o", str(tmp_path / "sweep"))
    assert code == 0 and "global batch: the default budget of 4.2M tokens per step at every point" in out
