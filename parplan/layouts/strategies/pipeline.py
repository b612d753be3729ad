"""Pipeline parallelism: layers split into stages, micro-batches, a bubble, point-to-point sends.

Narayanan et al. 2021 (arXiv 2104.04473, Sec. 2.2): with p stages and m
micro-batches the 1F1B schedule idles for a bubble of (p-1)/m of the ideal time;
interleaving v model chunks per device shrinks it to (p-1)/(v m) at v times the
point-to-point messages. Each stage boundary sends one (b, s, h) activation
forward and its gradient backward per micro-batch. How is the framework's
(``pipeline.send``): ``scatter-gather`` (Megatron-LM, the paper's Sec. 4.1) and
``partitioned`` (DeepSpeed's pipeline engine, ``pipe_partitioned``) send 1/t of it
from each TP rank and the receivers all-gather it over NVLink; ``full`` (Megatron-Core,
torch.distributed.pipelining) sends the whole tensor from every TP rank. Under sequence
parallelism the activation is already split t ways and goes as it is.

The embedding sits on the first rank and the head (final norm, logits, loss) on the last; the
layers split over the ranks as the framework splits them (:mod:`parplan.layouts.split`), the first
and last rank possibly holding fewer. Each kind of rank (first, the busiest middle one, last) is
timed with what it holds; the slowest paces the ``m`` micro-batches and the others fill and drain
the pipeline. With per-rank micro-batch times ``t_i`` the step takes ``(m - 1) max t + sum t``: the
makespan of ``m`` identical jobs through a flow shop (the slowest rank works back to back once the
first job reaches it; the jobs before and after it pass the faster ranks once). With equal ranks it
is Narayanan's ``(m + p - 1) t``, bubble ``(p - 1)/m``; interleaving divides the bubble by ``v``
(their eq. 2). ZB-H1 (Qi et al. 2023, arXiv 2401.10241, Sec. 2.1 and Table 2) splits the backward
into the input gradient B and the weight gradient W and defers W into the drain: its bubble is
``(p - 1)(T_F + T_B - T_W)`` where 1F1B's is ``(p - 1)(T_F + T_B + T_W)``, with 1F1B's memory and sends.
DualPipeV (deepseek-ai/DualPipe README, "Pipeline Bubbles and Memory Usage Comparison"; DeepSeek-V3,
arXiv 2412.19437, Table 2; torch.distributed.pipelining ScheduleDualPipeV) runs ``2p`` stages on ``p`` ranks
in a V, rank ``r`` holding stages ``r`` and ``2p - 1 - r``, so the first rank holds the embedding and the
head; its bubble is ``(p - 1)(F&B + B - 3W)`` over chunks of half a rank's layers (``F&B``: a forward and
a backward chunk run together, their sum here unless the run overlaps their communication), and each
rank holds ``2p + 1`` chunks of activations.
Each rank's memory is its own parameters plus the activations of the micro-batches it holds in
flight (:func:`parplan.cost.memory.inflight_microbatches`); the peak is the largest.
"""
from __future__ import annotations

import numpy as np

from ...cost.memory import inflight_microbatches
from .. import split as split_mod
from .base import Busiest, Collective, Context, StageMemory, Stages, Strategy


def stage_layers(model, pp):
    """Layers on the busiest stage when every stage takes the rounded-up share (serving's split)."""
    return np.ceil(model.layers / np.asarray(pp, float))


def stage_params(model, pp):
    """Parameters of the busiest stage of that split: its layers plus the embedding (first) or the head (last)."""
    layers = stage_layers(model, pp)
    return np.maximum(*_end_params(model, pp, layers, layers))


def _end_params(model, pp, first_layers, last_layers):
    """Parameters of the first rank (its layers and the embedding) and of the last (its layers and the
    head). With tied embeddings the last rank keeps its own copy of the table for the logits; without a
    pipeline both are the one rank holding everything."""
    pp = np.asarray(pp)
    layer_p = model.layer_params()
    first = first_layers * layer_p + model.embedding_params()
    last = last_layers * layer_p + model.output_params() + \
        np.where(pp > 1, model.vocab * model.hidden if model.tied_embeddings else 0, model.embedding_params())
    single = model.layers * layer_p + model.embedding_params() + model.output_params()
    return np.where(pp > 1, first, single), np.where(pp > 1, last, single)


def _rank_params(model, layout, first_layers, last_layers):
    """The first and last rank's parameters; in DualPipeV's V the first holds the head as well (no tied copy)."""
    p_first, p_last = _end_params(model, layout.pp, first_layers, last_layers)
    if layout.schedule != "dualpipev":
        return p_first, p_last
    layer_p = model.layer_params()
    return first_layers * layer_p + model.embedding_params() + model.output_params(), last_layers * layer_p


def pipeline_time(slowest_s, sum_s, micro_batches, vpp=1, bubble_scale=1.0):
    """(seconds of ``m`` micro-batches through the ranks, the bubble in them), from the slowest rank's
    micro-batch time and the sum of every rank's: the flow-shop makespan ``(m - 1) max t + sum t`` is
    ``m max t`` plus a bubble ``sum t - max t``; interleaving over ``v`` chunks divides the bubble by ``v``
    and ``bubble_scale`` scales it (ZB-H1: :func:`zb_h1_scale`)."""
    slowest_s, sum_s = np.asarray(slowest_s, float), np.asarray(sum_s, float)
    bubble = (sum_s - slowest_s) / np.asarray(vpp, float) * bubble_scale
    return np.asarray(micro_batches, float) * slowest_s + bubble, bubble


def zb_h1_scale(f_s, b_s, w_s):
    """ZB-H1's bubble over 1F1B's: (T_F + T_B - T_W) / (T_F + T_B + T_W) (Qi et al. 2023, Table 2), where
    ``b_s`` is the input-gradient pass and ``w_s`` the weight-gradient pass. 1/3 with T_F = T_B = T_W."""
    f_s, b_s, w_s = (np.asarray(x, float) for x in (f_s, b_s, w_s))
    total = f_s + b_s + w_s
    return (f_s + b_s - w_s) / np.where(total > 0, total, 1.0)


def dualpipe_scale(f_s, b_s, w_s):
    """DualPipeV's bubble over the one :func:`pipeline_time` gives two chunks per rank, ``(p - 1)(F + B)``:
    ``(F&B + B - 3W) / (F + B)`` with ``F&B = F + B`` (``b_s``: the whole backward, ``w_s`` its weight
    gradients). 2/3 with F = 1, B = 2, W = 1."""
    f_s, b_s, w_s = (np.asarray(x, float) for x in (f_s, b_s, w_s))
    total = f_s + b_s
    return (total + b_s - 3.0 * w_s) / np.where(total > 0, total, 1.0)


def layout_ends(model, layout):
    """Layers on the first and last rank: the layout's (the estimate fills in the framework's split,
    :func:`parplan.layouts.split.with_ends`), or, where it gives none, every rank's rounded-up share
    (serving's split)."""
    pp = np.asarray(layout.pp)
    first = getattr(layout, "first_stage_layers", None)
    last = getattr(layout, "last_stage_layers", None)
    share = stage_layers(model, pp).astype(np.int64)
    first = share if first is None else np.where(np.asarray(first) > 0, first, share)
    last = share if last is None else np.where(np.asarray(last) > 0, last, share)
    return np.where(pp > 1, first, model.layers), np.where(pp > 1, last, model.layers)


def rank_layers(model, layout):
    """(first, busiest middle, last, all middle) ranks' layers; the middle ones are 0 where a pipeline has
    none (p <= 2), and every rank takes the rounded-up share where the layout gives no split."""
    pp = np.asarray(layout.pp)
    if getattr(layout, "schedule", None) == "dualpipev":  # the V pairs stage r with stage 2p - 1 - r
        return split_mod.v_rank_layers(model.layers, pp)
    first, last = layout_ends(model, layout)
    given = getattr(layout, "first_stage_layers", None) is not None
    share = stage_layers(model, pp)
    middle, _ = split_mod.middle_layers(model.layers, pp, first, last)
    middle = np.where(pp > 2, middle if given else share, 0)
    total = np.where(pp > 2, model.layers - first - last if given else (pp - 2) * share, 0)
    return first, middle, last, total


class PipelineParallel(Strategy, Stages):
    axis = "pp"
    splits_stages = True
    finish_order = 1  # the tied-embedding all-reduce follows the data-parallel gradient sync

    @classmethod
    def breakdown_labels(cls):
        return {"pp_comm": "PP comm", "bubble": "bubble"}

    def collectives(self, ctx: Context):
        lay, d, model = ctx.layout, ctx.dims, ctx.model
        p, v, t = np.asarray(lay.pp), np.asarray(lay.vpp), np.asarray(lay.tp)
        stride = ctx.stride("pp")
        # The (b, s, h) activation as this device holds it: whole under 1D TP, a 1/P block under 2D/3D.
        act = d.batch * d.seq * model.hidden / d.hidden_shard * ctx.bpe
        # Without a training framework (serving): each TP rank sends its stage's whole output, as vLLM does.
        send = ctx.software.framework.pipeline.send if ctx.software is not None else "full"
        split = send in ("scatter-gather", "partitioned")
        sp = np.asarray(lay.sp)
        if lay.tp_mode == "1d":
            msg = act / np.where(sp, d.norm_shard, t if split else 1)
            gather = np.where(sp | (t == 1) | (not split), 0, 1)  # the receiver rebuilds the whole tensor
        else:
            msg, gather = act, 0
        sends = np.where(p > 1, v, 0)
        # The table is on the first and the last stage with tied embeddings, and with multi-token prediction,
        # whose modules take the embedding on the last stage (Megatron-Core core_v0.12.0+ finalize_model_grads.py:
        # _get_shared_word_embedding_weight, share_embeddings_and_output_weights or mtp_num_layers); DualPipeV's V
        # keeps both ends on one rank.
        copied = model.tied_embeddings or model.mtp_layers > 0
        tied = 1 if copied and lay.schedule != "dualpipev" else 0
        table = np.ceil(model.vocab / t) * model.hidden * ctx.grad_bytes
        tp_stride = ctx.stride("tp")
        return [
            Collective("pp_send_activation", "send_recv", "pp", 2, stride, msg, sends, "microbatch", "forward", "none"),
            Collective("pp_send_gradient", "send_recv", "pp", 2, stride, msg, sends, "microbatch", "backward", "none"),
            Collective("pp_recv_allgather_activation", "all_gather", "pp", t, tp_stride, act, sends * gather,
                       "microbatch", "forward", "none"),
            Collective("pp_recv_allgather_gradient", "all_gather", "pp", t, tp_stride, act, sends * gather,
                       "microbatch", "backward", "none"),
            # The two copies of the table (tied embeddings, or MTP's) sum their gradients.
            Collective("pp_embedding_grad_allreduce", "all_reduce", "pp", 2, stride * np.maximum(p - 1, 1),
                       table, np.where(p > 1, tied, 0), "step", "step", "none"),
        ]

    # ---- the schedule

    def stage_layers(self, model, layout):
        first, middle, last, _ = rank_layers(model, layout)
        return np.maximum(np.maximum(first, last), middle)

    def stage_params(self, model, layout):
        first, middle, last, _ = rank_layers(model, layout)
        p_first, p_last = _rank_params(model, layout, first, last)
        return np.maximum(np.maximum(p_first, p_last), middle * model.layer_params())

    def memory_stages(self, model, layout, micro_batches):
        pp, vpp = np.asarray(layout.pp), np.asarray(layout.vpp)
        first, middle, last, _ = rank_layers(model, layout)
        p_first, p_last = _rank_params(model, layout, first, last)

        def held(rank):
            return inflight_microbatches(pp, vpp, micro_batches, layout.schedule, rank)
        v_shape = layout.schedule == "dualpipev"  # the V brings the head back to the first rank
        return [StageMemory(first, p_first, held(0), (pp == 1) | v_shape),
                StageMemory(middle, middle * model.layer_params(), np.where(pp > 2, held(1), 0.0), False),
                StageMemory(last, p_last, held(np.maximum(pp - 1, 0)), not v_shape)]

    def compose(self, model, layout, t):
        pp, vpp = np.asarray(layout.pp), np.asarray(layout.vpp)
        first, middle, last, middles = rank_layers(model, layout)
        single = pp == 1
        ends_on_first = single | (layout.schedule == "dualpipev")  # one rank, or a V: both ends on the first
        per_layer = t.layer_s + t.layer_rec_s + t.layer_comm_s
        ends_first = np.where(ends_on_first, t.emb_f + t.emb_b + t.head_f + t.head_b, t.emb_f + t.emb_b)
        ends_last = np.where(ends_on_first, 0.0, t.head_f + t.head_b)
        # The embedding's collectives run on the first rank and the head's on the last (both on a single one).
        comm_first = t.first_comm_s + np.where(ends_on_first, t.last_comm_s, 0.0)
        comm_last = np.where(ends_on_first, 0.0, t.last_comm_s)
        t_first = first * per_layer + ends_first + t.mb_comm_s + comm_first
        t_last = np.where(single, 0.0, last * per_layer + ends_last + t.mb_comm_s + comm_last)
        t_middle = np.where(pp > 2, middle * per_layer + t.mb_comm_s, 0.0)
        slowest = np.maximum(np.maximum(t_first, t_last), t_middle)
        # Every rank's time: each layer once, the embedding and the head once, each rank's own collectives.
        every = (np.where(single, model.layers, first + last + middles) * per_layer + ends_first + ends_last
                 + np.where(single, 1, pp) * t.mb_comm_s + comm_first + comm_last)
        scale = 1.0
        if layout.schedule == "zb-h1":  # the weight gradients (W) move into the drain; recompute stays in B
            scale = zb_h1_scale(0.0, per_layer - t.layer_wgrad_s, t.layer_wgrad_s)
        elif layout.schedule == "dualpipev":
            scale = dualpipe_scale(t.layer_fwd_s, per_layer - t.layer_fwd_s, t.layer_wgrad_s)
        # Uneven chunks (a layout string): the largest chunk of any rank paces the interleaving, so it divides
        # the bubble by L / c, the L layers of the rank holding most over that chunk's c (v where chunks are equal).
        v = np.maximum(vpp, 1)
        chunk = np.maximum(np.maximum(np.ceil(first / v), np.ceil(last / v)), np.where(pp > 2, np.ceil(middle / v), 0))
        held_most = np.maximum(np.maximum(first, last), np.where(pp > 2, middle, 0))
        v_eff = np.maximum(held_most, 1) / np.maximum(chunk, 1)
        total, bubble = pipeline_time(slowest, every, t.micro_batches, np.where(single, 1, v_eff), scale)
        which = np.where(slowest == t_first, 0, np.where(slowest == t_last, 2, 1))
        layers = np.select([which == 0, which == 2], [first, last], middle)
        ends = np.select([which == 0, which == 2], [ends_first, ends_last], 0.0)
        head_on = np.where(ends_on_first, which == 0, which == 2)
        busy = Busiest(layers, layers * t.layer_s + ends, layers * t.layer_rec_s, np.where(which == 0, 1.0, 0.0),
                       np.where(head_on, 1.0, 0.0))
        return total, busy, {"bubble": bubble}
