"""--fp8-params (Megatron-Core --fp8-param-gather): the weights held in FP8 with their transposes, no 16-bit copy,
and gathered by the distributed optimizer or FSDP in FP8."""
import pytest
from click.testing import CliRunner

import parplan
from parplan.cli import cli
from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.specs.framework import resolve_software
from parplan.specs.framework_loader import load_framework


def _estimate(fp8_params, zero=1, framework="megatron-core"):
    sw = resolve_software(load_framework(framework), dtype="fp8", fp8_recipe="tensorwise", fp8_params=fp8_params)
    lay = Layout(dp=8, zero=zero, micro_batch=1, global_batch=8, seq_len=4096, dtype="fp8")
    return parplan.estimate(parplan.load_model("llama3.1-8b"), parplan.load_cluster("h100x8"), lay, software=sw)


def _linear_share():
    """Llama 3.1 8B: 32 layers of 218.1M parameters among 8.03B; the embedding and the head (2 x 525.3M) stay 16-bit."""
    m = parplan.load_model("llama3.1-8b")
    return m.layers * m.layer_params() / m.total_params()


def test_fp8_weights_hold_one_byte_and_their_transposes_another():
    """The layers' linears: a 16-bit weight (2 bytes) and Transformer Engine's cached FP8 copy with its transpose
    (2 bytes) become an FP8 weight (1 byte) with its transpose (1 byte); the embedding and head stay 16-bit, and
    are not in the cache; gradients and optimizer state do not move."""
    plain, fp8 = _estimate(False), _estimate(True)
    share = _linear_share()
    assert 0.85 < share < 0.9
    assert float(fp8.memory_bytes["weights"]) == pytest.approx(float(plain.memory_bytes["weights"]) * (2 - share) / 2)
    cache = float(plain.memory_bytes["fp8_weight_cache"])
    assert float(fp8.memory_bytes["fp8_weight_cache"]) == pytest.approx(cache / 2)
    assert float(plain.memory_bytes["fp8_weight_cache"]) == pytest.approx(
        float(plain.memory_bytes["weights"]) * share, rel=1e-3)  # 2 bytes of each linear weight, as its 16-bit copy
    for part in ("gradients", "optimizer", "activations"):
        assert float(fp8.memory_bytes[part]) == pytest.approx(float(plain.memory_bytes[part]))
    assert "with fp8 weights" in fp8.software.describe()


def test_the_optimizer_gathers_fp8_weights():
    """1 byte for the linears' share of the parameters, 2 for the rest."""
    def gather(est):
        return next(c for c in est.collectives if c.collective.name == "zero_param_allgather").collective.size_bytes
    share = _linear_share()
    assert float(gather(_estimate(True))) == pytest.approx(float(gather(_estimate(False))) * (2 - share) / 2)


def test_fp8_weights_are_not_cast_only_their_transposes_rebuilt():
    """Held in FP8, a weight is written by the optimizer in FP8, and each step only rebuilds its transpose: 1
    byte read and 1 written, where casting a 16-bit weight with its amax pass and transpose moves 6 (Megatron-
    Core's tensorwise casts: amax-fused); activations and output gradients cast as before. Llama 3.1 8B's layer
    on 8 ranks of one sequence each: one micro-batch, so the weights' once-per-step pass is in it."""
    from parplan.cost.ops import linear_operands

    plain, fp8 = _estimate(False), _estimate(True)
    cast = {e: next(o for o in est.ops if o.name == "fp8_casts") for e, est in (("plain", plain), ("fp8", fp8))}
    _, _, weights = linear_operands(plain.ops)
    assert float(cast["plain"].bwd_bytes) == pytest.approx(float(cast["fp8"].bwd_bytes))
    saved = float(cast["plain"].fwd_bytes) - float(cast["fp8"].fwd_bytes)
    assert saved == pytest.approx((6 - 2) * weights, rel=1e-9)


@pytest.mark.parametrize("kw, message", [
    (dict(dtype="bf16", fp8_params=True), "--fp8-params needs --dtype fp8"),
    (dict(dtype="fp8", fp8_params=True, framework="torchtitan"), "keeps its weights in 16 bits"),
])
def test_bad_fp8_params_are_refused(kw, message):
    kw = dict(kw)
    with pytest.raises(ParplanError, match=message):
        resolve_software(load_framework(kw.pop("framework", "megatron-core")), **kw)


def test_fp8_params_need_a_sharded_optimizer():
    with pytest.raises(ParplanError, match="zero must be 1 or more"):
        _estimate(True, zero=0)


def test_megatron_flags_carry_fp8_param_gather_both_ways(tmp_path):
    run = CliRunner().invoke
    common = ["--model", "llama3.1-8b", "--hw", "h100x8", "--global-batch", "64", "--seq", "4096", "--dtype", "fp8"]
    out = run(cli, ["plan", *common, "--dp", "8", "--zero", "1", "--fp8-params", "--top", "1", "--emit", "megatron"])
    assert out.exit_code == 0, out.output
    assert "--fp8-param-gather" in out.output
    cfg = tmp_path / "run.sh"
    cfg.write_text(out.output)
    back = run(cli, ["estimate", "--model", "llama3.1-8b", "--hw", "h100x8", "--from-config", str(cfg)])
    assert back.exit_code == 0, back.output
    assert "with fp8 weights" in back.output
