"""Framework profiles: every shipped one loads, bad files are refused in one line, overrides resolve."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from parplan.errors import ParplanError
from parplan.specs.framework import ELEMENTWISE_OPS, default_framework, resolve_software
from parplan.specs.framework_loader import framework_names, load_framework

SHIPPED = ("megatron-lm", "megatron-core", "megatron-deepspeed", "deepspeed", "torchtitan", "llm-foundry",
           "pytorch", "jax")


def test_every_named_stack_ships_and_loads():
    assert set(SHIPPED) <= set(framework_names())
    for name in framework_names():
        fw = load_framework(name)
        assert set(fw.kernels.elementwise) == set(ELEMENTWISE_OPS)
        assert fw.sources, f"{name} cites no sources"


def test_aliases_and_defaults():
    assert load_framework("nemo").name == "megatron-core"
    assert load_framework("titan").name == "torchtitan"
    assert default_framework("gpu") == "megatron-core" and default_framework("tpu") == "jax"


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(ParplanError, match="did you mean 'torchtitan'"):
        load_framework("torchtitn")


def _write(tmp_path, data, name="fw.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _profile(**changes):
    data = yaml.safe_load(open(load_framework("torchtitan").path))
    data.update(changes)
    return data


def test_unknown_key_is_refused(tmp_path):
    with pytest.raises(ParplanError, match="unknown key 'kernals'.*did you mean 'kernels'"):
        load_framework(_write(tmp_path, _profile(kernals={})))


def test_bad_choice_names_the_choices(tmp_path):
    data = _profile()
    data["kernels"]["loss"] = "magic"
    with pytest.raises(ParplanError, match="must be one of vocab-parallel, eager-fp32, fused"):
        load_framework(_write(tmp_path, data))
    data = _profile()
    data["fp8"]["recipes"] = ["tensorwise", "fp4"]
    with pytest.raises(ParplanError, match="'recipes' takes"):
        load_framework(_write(tmp_path, data))
    data = _profile()
    data["fp8"]["recipe_casts"] = {"delayed": "fused"}    # a recipe torchtitan does not offer
    with pytest.raises(ParplanError, match="fp8.recipe_casts: unknown key 'delayed'"):
        load_framework(_write(tmp_path, data))
    data["fp8"]["recipe_casts"] = {"tensorwise": "amax"}
    with pytest.raises(ParplanError, match="must be one of fused, amax-fused, separate"):
        load_framework(_write(tmp_path, data))


def test_malformed_yaml_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nkernels: [unclosed\n")
    with pytest.raises(ParplanError, match="malformed YAML"):
        load_framework(str(path))
    path.write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(ParplanError):
        load_framework(str(path))


def test_grad_reduce_per_zero_stage():
    ds = load_framework("deepspeed")
    assert ds.data_parallel.grad_reduce[1] == "after-backward"
    assert ds.data_parallel.grad_reduce[3] == "overlapped"
    assert set(load_framework("megatron-core").data_parallel.grad_reduce.values()) == {"overlapped"}


def test_resolve_compile_fp8_and_overrides():
    titan = load_framework("torchtitan")
    eager = resolve_software(titan)
    assert not eager.compiled and eager.elementwise["norm"] == "eager" and eager.loss == "eager-fp32"
    compiled = resolve_software(titan, compiled=True)
    assert compiled.elementwise["norm"] == "fused" and compiled.loss == "fused"
    fp8 = resolve_software(titan, dtype="fp8")
    assert fp8.fp8_recipe == "tensorwise" and any("default" in n for n in fp8.notes)
    assert resolve_software(titan, dtype="fp8", fp8_recipe="rowwise").fp8_recipe == "rowwise"
    # Dynamic (tensorwise) scaling needs the amax before the cast: two passes even compiled; Transformer
    # Engine's delayed scaling casts in the producing kernel.
    assert resolve_software(titan, dtype="fp8", compiled=True).fp8_casts == "separate"
    assert resolve_software(load_framework("megatron-core"), dtype="fp8").fp8_casts == "fused"
    # Megatron-Core's tensorwise recipe is TE's current scaling: the norm writes 16 bits and its amax, a pass casts.
    assert resolve_software(load_framework("megatron-core"), dtype="fp8", fp8_recipe="tensorwise").fp8_casts == \
        "amax-fused"
    unfused = resolve_software(load_framework("megatron-core"), fused_kernels=False)
    assert set(unfused.elementwise.values()) == {"eager"}
    assert resolve_software(load_framework("megatron-lm")).attention_kernels == ()
    assert resolve_software(load_framework("megatron-lm"), flash_attention=True).attention_kernels == ("flash2",)


@pytest.mark.parametrize("kwargs, message", [
    (dict(framework="megatron-core", compiled=True), "no compile mode"),
    (dict(framework="torchtitan", dtype="fp8", fp8_recipe="delayed"), "offers the FP8 recipes tensorwise, rowwise"),
    (dict(framework="torchtitan", fp8_recipe="rowwise"), "needs --dtype fp8"),
    (dict(framework="megatron-lm", dtype="fp8"), "no FP8 training recipe"),
    (dict(framework="megatron-deepspeed", flash_attention=True), "no fused attention kernel"),
    (dict(framework="llm-foundry", device_kind="tpu"), "runs on gpu, not on tpus"),
])
def test_impossible_choices_are_one_line_errors(kwargs, message):
    fw = load_framework(kwargs.pop("framework"))
    with pytest.raises(ParplanError, match=message):
        resolve_software(fw, **kwargs)


def test_vocabulary_padding_rules():
    # Megatron pads GPT-2's 50257 to a multiple of 128 x tp; torchtitan keeps the tokenizer's size.
    mcore, titan = load_framework("megatron-core"), load_framework("torchtitan")
    assert float(mcore.padded_vocab(50257, 1)) == 50304
    assert float(mcore.padded_vocab(50257, 8)) == 51200
    assert float(titan.padded_vocab(50257, 8)) == 50257
    assert np.allclose(mcore.padded_vocab(50257, np.array([1, 2])), [50304, 50432])


def test_gradients_and_projections_take_their_choices(tmp_path):
    data = _profile()
    data["gradients"] = "sometimes"
    with pytest.raises(ParplanError, match="must be one of persistent, freed"):
        load_framework(_write(tmp_path, data))
    data = _profile()
    data["kernels"]["projections"] = "merged"
    with pytest.raises(ParplanError, match="must be one of fused, separate"):
        load_framework(_write(tmp_path, data))
    assert load_framework("torchtitan").gradients == "freed" and load_framework("megatron-core").gradients == \
        "persistent"
    assert load_framework("pytorch").kernels.projections == "separate"
