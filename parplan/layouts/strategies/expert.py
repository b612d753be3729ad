"""Expert parallelism (``ep``) and expert tensor parallelism (``etp``) for mixture-of-experts layers.

Both axes are *folded* over the tp x cp x dp ranks of a pipeline stage rather than multiplying the
device count: Megatron-Core's MoE parallel folding (Liu et al. 2025, arXiv 2504.14960) lays the
expert layers over the same devices as attention in the order etp (innermost), ep, then the
expert-data-parallel rest ``edp = tp cp dp / (ep etp)``, while attention keeps its own tp, cp and
dp. Each device then holds ``experts / ep`` routed experts, each ``expert_ffn / etp`` wide.

Per MoE layer and micro-batch (GShard, arXiv 2006.16668, Sec. 3.2; Megatron-Core's
``MoEAlltoAllTokenDispatcher``): a **dispatch** all-to-all sends each routed token copy to the
device holding its expert and a **combine** all-to-all brings the results back, forward, and the
same two backward (full recompute repeats the forward's). Each device's buffer is the
``b s k / tp`` token copies it routes, ``hidden`` elements each: bytes per token = top-k x hidden x
dtype. With etp > 1 the expert-tensor-parallel group all-gathers its members' rows after the
dispatch and reduce-scatters the experts' output before the combine (backward: the reverse).

Model states: the routed experts' weights and gradients are divided by ``ep x etp`` (not by tp);
under ZeRO their optimizer state (and sharded gradients and weights) over the whole stage as the
dense parameters' are (the expert-data-parallel group shards what ep x etp leaves). Their gradients
are reduced over the expert-data-parallel group, ``ep x etp`` ranks apart. Each device keeps the
dispatch buffers: the rows it receives and the experts' output before the combine.

Under DeepEP (the run's ``moe_dispatcher``), dispatch and combine run over the whole ``ep x etp`` group,
each token sent once per rank (and node) holding one of its experts (or their etp shards), with no
expert-tensor-parallel gather: the ``dispatch`` op of :mod:`parplan.cost.collectives`.

What can hide the all-to-alls (the run's ``moe_overlap``): ``shared-experts`` (Megatron-Core
``--moe-shared-expert-overlap``) runs the dispatch under the shared experts' GEMMs
(``hidden_by = "shared_experts"``); ``micro-batch`` (``--overlap-moe-expert-parallel-comm``) merges
one micro-batch's forward with another's backward, so every all-to-all runs under the other
micro-batch's compute of the same layers (``hidden_by = "micro_batch"``, :mod:`parplan.step.moe_step`);
``none`` leaves them on the critical path.
"""
from __future__ import annotations

import numpy as np

from ...cost import moe as moe_mod
from .base import Collective, Context, Strategy
from .data import DataParallel, zero_collectives


def _deepep(ctx: Context) -> bool:
    return ctx.software is not None and ctx.software.moe_dispatcher == "deepep"


def _sizes(layout):
    return (np.asarray(layout.size("ep")), np.asarray(layout.size("etp")), np.asarray(layout.tp))


class ExpertParallel(Strategy):
    axis = "ep"
    folded_over = ("tp", "cp", "dp")

    def local_dims(self, dims, model, layout):
        if model.is_moe:
            ep, etp, tp = _sizes(layout)
            dims["moe"] = moe_mod.MoeParallel(tp=tp, ep=ep, etp=etp)
        return dims

    def collectives(self, ctx: Context):
        model, d = ctx.model, ctx.dims
        if not model.is_moe:
            return []
        ep, etp, tp = _sizes(ctx.layout)
        share = moe_mod.share(model, d)
        buf = moe_mod.dispatch_tokens(model, d) * model.top_k * model.hidden * ctx.bpe
        op, group, stride, fanout = "all_to_all", ep, etp * ctx.stride("tp"), None
        if _deepep(ctx):  # over the whole ep x etp group, each token to every etp shard of its experts
            op, group, stride, fanout = "dispatch", ep * etp, ctx.stride("tp"), (model.top_k, model.experts, etp)
        again = ctx.again()
        mode = ctx.software.moe_overlap if ctx.software is not None else "none"
        shared = mode == "shared-experts" and model.shared_experts > 0
        calls = np.where(moe_mod.exchanges(model, d, deepep=_deepep(ctx))[0], share, 0.0)
        out = []
        for phase, count in (("forward", calls), ("backward", calls), ("recompute", calls * again)):
            if mode == "micro-batch":
                dispatch = combine = "micro_batch"
            else:  # the shared experts run beside the forward's dispatch and the backward's combine
                dispatch = "shared_experts" if shared and phase != "backward" else "none"
                combine = "shared_experts" if shared and phase == "backward" else "none"
            out += [Collective(f"ep_dispatch_{phase}", op, "ep", group, stride, buf, count, "layer", phase,
                               dispatch, fanout=fanout),
                    Collective(f"ep_combine_{phase}", op, "ep", group, stride, buf, count, "layer", phase,
                               combine, fanout=fanout)]
        return out + self._expert_grads(ctx, ep, etp, tp)

    def _expert_grads(self, ctx: Context, ep, etp, tp):
        """The experts' gradient reduction (and ZeRO gathers) over the expert-data-parallel group."""
        lay = ctx.layout
        edp = np.maximum(np.asarray(lay.dp) * np.asarray(lay.cp) * tp // (ep * etp), 1)
        dense_shard = edp if lay.shard_group is None else np.asarray(lay.shard_group) * np.asarray(lay.cp)
        shard = np.gcd(edp.astype(np.int64), np.asarray(dense_shard).astype(np.int64)) \
            if lay.shard_group is not None else edp
        params = ctx.expert_params / (ep * etp)
        return zero_collectives(ctx, params, edp, ep * etp * ctx.stride("tp"), shard, axis="dp", prefix="expert_")

    def state_divisors(self, ctx: Context):
        """Multipliers of the dense divisors for the expert states: ``ep etp / tp`` where ZeRO leaves a
        state unsharded (weights replicated over the expert-data-parallel group), 1 where it shards it
        over the stage (both shard over all tp cp dp ranks)."""
        if not ctx.model.is_moe:
            return {}
        ep, etp, tp = _sizes(ctx.layout)
        dense = DataParallel().state_divisors(ctx)
        unsharded = ep * etp / tp
        return {f"expert_{k}": np.where(np.asarray(v) > 1, 1.0, unsharded) for k, v in dense.items()}

    def memory_bytes(self, ctx: Context):
        model, d = ctx.model, ctx.dims
        if not model.is_moe:
            return {}
        rows = moe_mod.routed_rows(model, d) * moe_mod.imbalance(model, d)[0]
        # The rows received (and gathered over etp) and the experts' output before the combine.
        return {"moe_dispatch": 2.0 * rows * model.hidden * ctx.bpe}


class ExpertTensorParallel(Strategy):
    axis = "etp"
    folded_over = ("tp", "cp", "dp")

    def collectives(self, ctx: Context):
        model, d = ctx.model, ctx.dims
        if not model.is_moe:
            return []
        ep, etp, tp = _sizes(ctx.layout)
        share = moe_mod.share(model, d)
        buf = moe_mod.routed_rows(model, d) * model.hidden * ctx.bpe
        stride = ctx.stride("tp")
        again = ctx.again()
        calls = np.where(moe_mod.exchanges(model, d, deepep=_deepep(ctx))[1], share, 0.0)
        out = []
        for phase, count in (("forward", calls), ("backward", calls), ("recompute", calls * again)):
            out += [Collective(f"etp_allgather_{phase}", "all_gather", "etp", etp, stride, buf, count, "layer",
                               phase, "none"),
                    Collective(f"etp_reduce_scatter_{phase}", "reduce_scatter", "etp", etp, stride, buf, count,
                               "layer", phase, "none")]
        return out

