"""ZeRO-3's gathered weights: FSDP keeps two wrapped layers, DeepSpeed at most stage3_max_live_parameters
(but never less than the largest weight it gathers whole)."""
import pytest

import parplan
from parplan.layouts.layout import Layout
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import load_framework

GIB = 2**30


def _gathered(model_name, framework, tp=1):
    model = parplan.load_model(model_name)
    sw = resolve_software(load_framework(framework), dtype="bf16")
    lay = Layout(tp=tp, dp=8, zero=3, global_batch=8, recompute="full")
    return model, parplan.estimate(model, parplan.load_cluster("a100x8" if tp == 1 else "a100x16"), lay,
                                   software=sw).memory_bytes["gathered_weights"]


def test_fsdp_holds_two_layers_gathered():
    model, got = _gathered("gpt3", "torchtitan")
    assert float(got) == pytest.approx(2 * model.layer_params() * 2)


def test_deepspeed_holds_its_live_parameter_cap_or_the_largest_weight():
    model, got = _gathered("gpt3", "deepspeed")  # 12288 x 49152 = 604M < the 1e9 cap < 2 layers (3.6B)
    assert float(got) == pytest.approx(1e9 * 2)
    model, got = _gathered("megatron-1t", "deepspeed")  # 25600 x 102400 = 2.6B > 1e9: the largest weight
    assert float(got) == pytest.approx(model.hidden * model.ffn_hidden * 2)
