"""Serving stacks: every shipped one loads with a source per value, bad files and names are refused in one line."""
from __future__ import annotations

import pytest
import yaml

from tests.helpers import REPO
from parplan.errors import ParplanError
from parplan.specs.framework import ELEMENTWISE_OPS
from parplan.specs.framework_loader import (framework_names, load_framework, load_serving, profile_kinds,
    serving_names)
from parplan.specs.serving_stack import SERVING_KEYS, default_serving, resolve_serving

STACKS = ("pytorch", "vllm", "sglang", "tensorrt-llm", "jax")


@pytest.mark.parametrize("name", STACKS)
def test_every_serving_stack_ships_and_loads_with_its_sources(name):
    assert set(STACKS) <= set(serving_names())
    stack = load_serving(name)
    assert stack.name == name
    assert set(stack.elementwise) == set(ELEMENTWISE_OPS)
    assert stack.kv_block_tokens >= 1 and 0 < stack.decode_attention.paged_bandwidth <= 1
    for key in SERVING_KEYS:
        if key != "engine":
            assert f"serving.{key}" in stack.sources, f"{name}: serving.{key} has no source"


def test_the_measured_layer_stack_loads_as_a_profile_file():
    stack = load_serving(str(REPO / "validation" / "stacks" / "gpu-inference-check.yaml"))
    assert stack.sampling_passes == 0 and stack.step_overhead_s == 0
    assert stack.elementwise["activation"] == "eager" and stack.elementwise["norm"] == "fused"


def test_stacks_say_what_differs():
    vllm, sglang, trt, torch = (load_serving(n) for n in ("vllm", "sglang", "tensorrt-llm", "pytorch"))
    assert vllm.kv_block_tokens == 16 and sglang.kv_block_tokens == 1
    assert vllm.cuda_graphs.default and not torch.cuda_graphs.default and torch.cuda_graphs.available
    assert sglang.step_overhead_overlapped and trt.step_overhead_overlapped and not vllm.step_overhead_overlapped
    assert sglang.decode_attention.paged_bandwidth == 0.9
    assert torch.elementwise["norm"] == "eager" and vllm.elementwise["norm"] == "fused"


def test_defaults_and_kinds():
    assert default_serving("gpu") == "vllm" and default_serving("tpu") == "jax"
    assert profile_kinds("vllm") == (False, True)
    assert profile_kinds("pytorch") == (True, True)
    assert profile_kinds("megatron-core") == (True, False)
    assert "vllm" not in framework_names() and "megatron-core" not in serving_names()


@pytest.mark.parametrize("call, name, message", [
    (load_framework, "vllm", "is a serving stack (use it with --mode inference); training frameworks: colossalai"),
    (load_serving, "megatron-core", "has no serving section; serving stacks: jax, pytorch, sglang"),
    (load_serving, "vlm", "unknown framework 'vlm' (did you mean 'vllm'?); choose from jax, pytorch, sglang, "
                          "tensorrt-llm, vllm"),
])
def test_wrong_kind_or_unknown_name_is_one_line(call, name, message):
    with pytest.raises(ParplanError) as exc:
        call(name)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def _write(tmp_path, change):
    data = yaml.safe_load(open(load_serving("vllm").path))
    change(data)
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["serving"]["decode_attention"].update(split="sometimes"), "must be one of heuristic, fill, none"),
    (lambda d: d["serving"].update(prefill_attention=["flash5"]), "got 'flash5'"),
    (lambda d: d["serving"].update(kv_blok_tokens=16), "kv_blok_tokens"),
    (lambda d: d["serving"]["cuda_graphs"].update(available=False), "default is true but available is false"),
    (lambda d: d["sources"].pop("serving.launch_s"), "serving.launch_s has no source"),
    (lambda d: d["serving"].update(launch_s="fast"), "must be a number"),
    (lambda d: d["serving"]["decode_attention"].update(paged_bandwidth=1.5), "absurdly large"),
])
def test_malformed_stack_is_refused_in_one_line(tmp_path, change, message):
    with pytest.raises(ParplanError) as exc:
        load_serving(_write(tmp_path, change))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_choices_resolve_and_note_the_defaults():
    stack = load_serving("pytorch")
    sw = resolve_serving(stack)
    assert not sw.cuda_graphs and any("CUDA graphs off" in n for n in sw.notes)
    assert resolve_serving(stack, cuda_graphs=True).cuda_graphs
    assert set(resolve_serving(stack, fused_kernels=True).elementwise.values()) == {"fused"}
    with pytest.raises(ParplanError, match="serves on gpu, not on tpus"):
        resolve_serving(load_serving("vllm"), device_kind="tpu")
    no_graphs = _no_graphs(stack)
    with pytest.raises(ParplanError, match="does not capture CUDA graphs; drop --cuda-graphs"):
        resolve_serving(no_graphs, cuda_graphs=True)


def _no_graphs(stack):
    from dataclasses import replace

    return replace(stack, cuda_graphs=replace(stack.cuda_graphs, available=False, default=False))
