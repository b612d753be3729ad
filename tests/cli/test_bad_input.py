"""Bad input: one line 'Error: ...', a non-zero exit (2 for usage), never a traceback."""
import pytest


def assert_one_line_error(result, code=1, match=None):
    rc, out, err = result
    assert rc == code, (rc, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    if match:
        assert match in lines[0], lines[0]


BASE = ["estimate", "--model", "gpt3", "--hw", "a100x64", "--tp", "8", "--pp", "8"]


def test_unknown_model_suggests_nearest(run_cli):
    assert_one_line_error(run_cli("estimate", "--model", "gtp3", "--hw", "a100x8"), match="did you mean 'gpt3'")


def test_unknown_hardware_suggests_nearest(run_cli):
    assert_one_line_error(run_cli("estimate", "--model", "gpt3", "--hw", "h10x8"), match="did you mean")


def test_tp_not_dividing_heads(run_cli):
    assert_one_line_error(run_cli("estimate", "--model", "gpt3", "--hw", "a100x40", "--tp", "5"),
                          match="does not divide the 96 attention heads")


def test_mesh_not_matching_device_count(run_cli):
    assert_one_line_error(run_cli(*BASE, "--dp", "2"), match="does not match the 64 devices")


def test_global_batch_not_divisible(run_cli):
    assert_one_line_error(run_cli("estimate", "--model", "gpt3", "--hw", "a100x16", "--tp", "8",
                                  "--global-batch", "3"), match="not divisible into micro-batches")


def test_usage_errors_exit_2(run_cli):
    assert_one_line_error(run_cli(*BASE, "--micro-batch", "abc"), code=2, match="--micro-batch")
    assert_one_line_error(run_cli("estimate", "--hw", "a100x8"), code=2, match="--model")
    assert_one_line_error(run_cli("frobnicate"), code=2)


@pytest.mark.parametrize("value", ["0", "-4"])
def test_non_positive_numbers(run_cli, value):
    assert_one_line_error(run_cli(*BASE, "--micro-batch", value), match="positive")


def test_absurd_device_count(run_cli):
    assert_one_line_error(run_cli("estimate", "--model", "gpt3", "--hw", "a100x99999999999"), match="between 1 and")


PROFILE = """name: custom
peak_flops: {bf16: 1.0e+15}
hbm_bytes: 8.0e+10
hbm_bandwidth: 3.0e+12
devices_per_node: 8
compute_units: 132
intra_node: {bandwidth: 4.5e+11, latency_s: 2.0e-6}
inter_node: {bandwidth: 5.0e+10, latency_s: 4.0e-6}
efficiency: {matmul: 0.8, hbm: 0.9}
kernel_overhead_s: 4.0e-6
collective_overhead_s: 8.0e-6
"""


@pytest.mark.parametrize("text,match", [
    ("name: [unclosed\n", "malformed YAML"),
    ("!!python/object/apply:os.system ['echo pwned']\n", "malformed YAML"),
    (PROFILE.replace("hbm_bytes: 8.0e+10", "hbm_bytes: -1.0"), "must be positive"),
    (PROFILE.replace("hbm_bytes: 8.0e+10", "hbm_bytes: 0"), "must be positive"),
    (PROFILE.replace("hbm_bytes: 8.0e+10", "hbm_bytes: lots"), "must be a number"),
    (PROFILE.replace("hbm_bytes: 8.0e+10", "hbm_bytes: 1e12"), "YAML 1.1 reads 1e12 as a string"),
    (PROFILE.replace("hbm_bytes: 8.0e+10\n", ""), "missing field 'hbm_bytes'"),
    (PROFILE.replace("hbm_bytes: 8.0e+10", "hbm_bytes: .nan"), "finite"),
    (PROFILE.replace("devices_per_node: 8", "devices_per_node: 1.0e+12"), "absurdly large"),
    ("- just\n- a list\n", "expected a mapping"),
    (PROFILE.replace("hbm: 0.9}", "hbm: 0.9, matmul_misaligned: {3: 0.5}}"), "must be an alignment in bytes"),
    (PROFILE.replace("hbm: 0.9}", "hbm: 0.9, matmul_misaligned: {8: 1.5}}"), "absurdly large"),
    (PROFILE.replace("hbm: 0.9}", "hbm: 0.9, matmul_misaligned: [0.4]}"), "expected a mapping"),
])
def test_bad_profile_files(tmp_path, run_cli, text, match):
    f = tmp_path / "hw.yaml"
    f.write_text(text)
    assert_one_line_error(run_cli("estimate", "--model", "gpt3-125m", "--hw", str(f)), match=match)


def test_good_custom_profile_runs(tmp_path, run_cli):
    f = tmp_path / "hw.yaml"
    f.write_text(PROFILE)
    rc, out, err = run_cli("estimate", "--model", "gpt3-125m", "--hw", str(f), "--global-batch", "1")
    assert rc == 0, err


@pytest.mark.parametrize("text,match", [
    ("name: m\nlayers: 2\nhidden: 64\nheads: 3\nffn_hidden: 256\nactivation: gelu\nvocab: 10\nseq_len: 8\n",
     "not divisible by heads"),
    ("name: m\nlayers: 2\nhidden: 64\nheads: 4\nffn_hidden: 256\nactivation: tanh\nvocab: 10\nseq_len: 8\n",
     "must be one of"),
    ("name: m\nlayers: two\nhidden: 64\nheads: 4\nffn_hidden: 256\nactivation: gelu\nvocab: 10\nseq_len: 8\n",
     "must be a number"),
    ("name: m\nlayers: 2\nhidden: 64\nheads: 4\nkv_heads: 3\nffn_hidden: 256\nactivation: gelu\nvocab: 10\n"
     "seq_len: 8\n", "multiple of kv_heads"),
])
def test_bad_model_files(tmp_path, run_cli, text, match):
    f = tmp_path / "m.yaml"
    f.write_text(text)
    assert_one_line_error(run_cli("estimate", "--model", str(f), "--hw", "a100x1"), match=match)


def test_missing_file(run_cli):
    assert_one_line_error(run_cli("estimate", "--model", "nope.yaml", "--hw", "a100x1"), match="not found")


def test_malformed_hf_config(tmp_path, run_cli):
    f = tmp_path / "config.json"
    f.write_text("{not json")
    assert_one_line_error(run_cli("estimate", "--model", str(f), "--hw", "a100x1"), match="malformed JSON")


def test_bad_mesh(run_cli):
    assert_one_line_error(run_cli("estimate", "--model", "gpt3", "--hw", "a100x64", "--mesh", "tp=8,xp=8"),
                          match="unknown axis 'xp'")


@pytest.mark.parametrize("args,match", [
    (("--first-stage-layers", "60", "--last-stage-layers", "60"), "leave a stage of pp=8 without a transformer layer"),
    (("--first-stage-layers", "0"), "first-stage-layers must be a positive whole number"),
    (("--first-stage-layers", "10", "--last-stage-layers", "11"), "middle stages even"),
    (("--schedule", "zb-h1"), "not zb-h1"),
])
def test_bad_pipeline_splits(run_cli, args, match):
    assert_one_line_error(run_cli(*BASE, *args), match=match)


def test_a_split_the_layers_cannot_take_says_what_would_work(run_cli):
    assert_one_line_error(run_cli("estimate", "--model", "llama3.1-405b", "--hw", "h100x2048", "--tp", "8", "--pp",
                                  "16"), match="e.g. --first-stage-layers 7 --last-stage-layers 7")
    assert_one_line_error(run_cli("plan", "--model", "gpt3", "--hw", "a100x64", "--pp", "1", "--first-stage-layers",
                                  "4"), match="need pp > 1")
    assert_one_line_error(run_cli(*BASE, "--mode", "inference", "--first-stage-layers", "4"),
                          match="--first-stage-layers does not apply with --mode inference")
