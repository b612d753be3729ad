"""Property: every command, given any model, cluster, layout and flags, either answers or exits with one
line ``Error: ...``, never a traceback.

Hypothesis draws shipped and home-made models (YAML specs and Hugging Face configs), clusters (``NAMExCOUNT``
and cluster files), layouts and flags for ``plan``, ``estimate`` and ``explain``, training and serving; a third
of the command lines then get one thing wrong (a bad value, an unknown name, a misspelt key, a broken file).
It runs the real command line in this process. The examples are few and fixed (derandomized) so the module
takes seconds; set ``PARPLAN_FUZZ_EXAMPLES`` to draw more.
"""
from __future__ import annotations

import contextlib
import io
import json
import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from parplan.cli.commands import main

EXAMPLES = int(os.environ.get("PARPLAN_FUZZ_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def run(argv: list[str]) -> tuple[int, str, str]:
    """The command line in this process: (exit status, stdout, stderr). Any exception other than the exit
    the command line makes is a traceback a user would see, and fails the test."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def answers_or_one_line_error(argv: list[str]) -> tuple[int, str]:
    code, out, err = run(argv)
    assert "Traceback" not in out + err, (argv, err)
    if code == 0:
        assert out.strip(), argv
    else:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), (argv, code, err)
    return code, out


SHIPPED_MODELS = ["gpt3-125m", "gpt3-350m", "llama3.2-1b", "qwen2.5-0.5b", "gpt2-large", "mistral-7b",
                  "llama3.1-8b", "gpt3-13b", "gpt3", "llama3.1-70b", "mixtral-8x7b"]
GPUS = ["a100", "a100-40gb", "h100", "h100-pcie", "h200", "b200", "mi300x", "v100"]
TPUS = ["tpu-v4", "tpu-v5e"]
FRAMEWORKS = ["megatron-core", "megatron-lm", "torchtitan", "deepspeed", "llm-foundry", "pytorch", "colossalai",
              "megatron-deepspeed"]
EMIT = ["megatron", "torchtitan", "deepspeed", "llm-foundry", "vllm", "sglang"]
DEVICES = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128]


def maybe(draw, name: str, values, p_none: float = 0.5) -> list[str]:
    """``[name, value]`` about half the time."""
    if draw(st.floats(0, 1)) < p_none:
        return []
    value = draw(values)
    return [name] if value is True else [name, str(value)]


def divisors(n: int, at_most: int = 1 << 30) -> list[int]:
    return [d for d in range(1, min(n, at_most) + 1) if n % d == 0]


@st.composite
def model_file(draw, tmp):
    """A plausible model written to a file: a YAML spec or a Hugging Face config.json."""
    heads = draw(st.sampled_from([4, 8, 12, 16, 32]))
    head_dim = draw(st.sampled_from([64, 128]))
    layers = draw(st.integers(1, 40))
    kv = draw(st.sampled_from([1, 2, heads]))
    inner = draw(st.sampled_from([2, 3, 4])) * heads * head_dim
    vocab = draw(st.sampled_from([32000, 50257, 128256]))
    name = f"m{draw(st.integers(0, 10 ** 9))}"
    if draw(st.booleans()):
        cfg = {"model_type": draw(st.sampled_from(["llama", "gpt2", "opt", "bloom", "qwen2"])),
               "hidden_size": heads * head_dim, "num_attention_heads": heads, "num_hidden_layers": layers,
               "num_key_value_heads": kv, "intermediate_size": inner, "vocab_size": vocab,
               "max_position_embeddings": draw(st.sampled_from([1024, 2048, 4096, 131072]))}
        path = tmp / name / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cfg))
        return str(path), cfg
    spec = {"name": name, "layers": layers, "hidden": heads * head_dim, "heads": heads, "kv_heads": kv,
            "ffn_hidden": inner, "vocab": vocab, "seq_len": draw(st.sampled_from([512, 2048, 4096, 8192])),
            "activation": draw(st.sampled_from(["gelu", "swiglu", "relu"]))}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path), spec


@st.composite
def cluster_file(draw, tmp, hw: str, devices: int):
    data = {"hardware": hw, "devices": devices}
    if draw(st.booleans()):
        data["inter_node_bandwidth"] = draw(st.sampled_from([1.25e10, 2.5e10, 5.0e10]))
    if draw(st.booleans()):
        data["price_per_device_hour"] = draw(st.sampled_from([1.0, 2.5]))
    path = tmp / f"c{draw(st.integers(0, 10 ** 9))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path), data


# One thing wrong with an otherwise sane command line: a bad value for a flag, an unknown name, a broken file.
def _bad_flag(draw, argv, tmp, files):
    name, value = draw(st.sampled_from([
        ("--tp", "0"), ("--tp", "7"), ("--pp", "-2"), ("--cp", "1000"), ("--micro-batch", "x"), ("--seq", "0"),
        ("--seq", "1000000000"), ("--global-batch", "512..64"), ("--global-batch", "0"), ("--zero", "5"),
        ("--vpp", "0"), ("--vpp", "5"), ("--shard-group", "3"), ("--mesh", "tp=x"), ("--mesh", "tp=2,tp=2"),
        ("--mesh", "ep=2"), ("--framework", "megatorn"), ("--dtype", "int4"), ("--headroom", "0.95"), ("--headroom", "nan"),
        ("--tokens", "-5"), ("--tokens", "nan"), ("--price-per-device-hour", "-1"), ("--schedule", "zb"),
        ("--input-len", "0"), ("--batch", "0"), ("--kv-dtype", "int3"), ("--top", "0")]))
    return argv + [name, value]


def _bad_names(draw, argv, tmp, files):
    i = argv.index(draw(st.sampled_from(["--model", "--hw"])))
    argv = list(argv)
    argv[i + 1] = draw(st.sampled_from(["gtp3", "", "h10x8", "mi300x64", "a100x0", "a100x13", "nope.yaml",
                                        "a100x99999999"]))
    return argv


def _broken_file(draw, argv, tmp, files):
    kind = draw(st.sampled_from(sorted(files)))
    path, data = files[kind]
    if path.endswith(".json"):
        broken = dict(data)
        broken[draw(st.sampled_from(["num_local_experts", "num_attention_heads", "hidden_size"]))] = \
            draw(st.sampled_from([8, 0, -1, "x", None]))
        text = json.dumps(broken) if draw(st.integers(0, 4)) else "{not json"
    else:
        broken = dict(data)
        key = draw(st.sampled_from(sorted(broken)))
        if draw(st.booleans()):
            broken[key + "x"] = broken.pop(key)  # a misspelt key
        else:
            broken[key] = draw(st.sampled_from([0, -1, "lots", None, [1], 1.5]))
        text = yaml.safe_dump(broken) if draw(st.integers(0, 4)) else "key: [unclosed"
    with open(path, "w") as f:
        f.write(text)
    return argv


MUTATIONS = (_bad_flag, _bad_names, _broken_file)


@st.composite
def command_line(draw, tmp):
    """A command with a sane model, cluster and flags, and (a third of the time) one thing wrong."""
    command = draw(st.sampled_from(["plan", "plan", "estimate", "explain"]))
    files = {}
    if draw(st.integers(0, 3)) == 0:
        files["model"] = draw(model_file(tmp))
        model = files["model"][0]
    else:
        model = draw(st.sampled_from(SHIPPED_MODELS))
    hw = draw(st.sampled_from(GPUS + TPUS if draw(st.integers(0, 5)) else TPUS))
    devices = draw(st.sampled_from([d for d in DEVICES if d <= 4 or d % 8 == 0 or hw in GPUS and d <= 8]))
    if draw(st.integers(0, 3)) == 0:
        files["cluster"] = draw(cluster_file(tmp, hw, devices))
        cluster = files["cluster"][0]
    else:
        cluster = f"{hw}x{devices}"
    argv = [command, "--model", model, "--hw", cluster]
    serving = draw(st.integers(0, 3)) == 0
    tp_choices = st.sampled_from(divisors(devices, 8))
    if serving:
        argv += ["--mode", "inference", "--input-len", str(draw(st.sampled_from([128, 1024, 2048, 8000]))),
                 "--output-len", str(draw(st.sampled_from([16, 128, 512])))]
        argv += maybe(draw, "--batch", st.sampled_from([1, 8, 64]))
        argv += maybe(draw, "--kv-dtype", st.sampled_from(["bf16", "fp8"]))
        argv += maybe(draw, "--tp", tp_choices)
        if command == "plan":
            argv += maybe(draw, "--ttft-ms", st.sampled_from([50, 500, 5000]))
            argv += maybe(draw, "--tpot-ms", st.sampled_from([10, 50, 200]))
            argv += maybe(draw, "--emit", st.sampled_from(["vllm", "sglang"]))
            argv += maybe(draw, "--format", st.sampled_from(["table", "json", "csv"]))
        else:
            argv += maybe(draw, "--format", st.sampled_from(["table", "json"]))
    else:
        argv += maybe(draw, "--tp", tp_choices)
        argv += maybe(draw, "--pp", st.sampled_from(divisors(devices, 16)))
        argv += maybe(draw, "--cp", st.sampled_from(divisors(devices, 4)), p_none=0.8)
        argv += maybe(draw, "--micro-batch", st.sampled_from([1, 2, 4]))
        argv += maybe(draw, "--global-batch", st.sampled_from(["64", "256", "1024"] + (
            ["128,512", "256..1024"] if command == "plan" else [])))
        argv += maybe(draw, "--seq", st.sampled_from([512, 2048, 8192, 32768]), p_none=0.7)
        argv += maybe(draw, "--zero", st.integers(0, 3))
        argv += maybe(draw, "--recompute", st.sampled_from(["none", "selective", "full"]))
        argv += maybe(draw, "--dtype", st.sampled_from(["bf16", "fp16", "fp8"]), p_none=0.7)
        argv += maybe(draw, "--sp", st.just(True), p_none=0.7)
        argv += maybe(draw, "--vpp", st.sampled_from([2, 3]), p_none=0.8)
        argv += maybe(draw, "--schedule", st.sampled_from(["1f1b", "interleaved", "gpipe"]), p_none=0.8)
        argv += maybe(draw, "--tp-mode", st.sampled_from(["1d", "2d", "3d"]), p_none=0.9)
        argv += maybe(draw, "--cp-mode", st.sampled_from(["ring", "allgather"]), p_none=0.8)
        argv += maybe(draw, "--framework", st.sampled_from(FRAMEWORKS), p_none=0.6)
        argv += maybe(draw, "--tokens", st.sampled_from(["1e9", "1e12"]), p_none=0.8)
        argv += maybe(draw, "--price-per-device-hour", st.sampled_from(["2.5"]), p_none=0.8)
        if command == "plan":
            argv += maybe(draw, "--objective", st.sampled_from(["throughput", "memory", "cost"]), p_none=0.7)
            argv += maybe(draw, "--top", st.sampled_from([1, 3]), p_none=0.3)
            argv += maybe(draw, "--emit", st.sampled_from(EMIT[:4]), p_none=0.7)
            argv += maybe(draw, "--format", st.sampled_from(["table", "json", "csv"]), p_none=0.6)
            argv += maybe(draw, "--explain", st.just(True), p_none=0.9)
        else:
            argv += maybe(draw, "--format", st.sampled_from(["table", "json"]), p_none=0.6)
    if draw(st.integers(0, 2)) == 0:
        mutations = [m for m in MUTATIONS if m is not _broken_file or files]
        argv = draw(st.sampled_from(mutations))(draw, argv, tmp, files)
    return argv


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("any-input")


@SETTINGS
@given(data=st.data())
def test_every_command_answers_or_says_why_in_one_line(tmp, data):
    answers_or_one_line_error(data.draw(command_line(tmp)))


@pytest.mark.parametrize("command", ["estimate", "plan"])
def test_headroom_refuses_nan_which_every_range_check_would_let_through(command):
    code, out, err = run([command, "--model", "gpt3-350m", "--hw", "a100x8", "--headroom", "nan"])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--headroom" in err and "not a number" in err
