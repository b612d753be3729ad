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

The embedding sits on the first stage and the head (final norm, logits, loss) on the
last; the busiest stage is whichever of the two does more, and it holds the
activations of ``inflight_microbatches`` micro-batches at its peak (Korthikanti 2022).
"""
from __future__ import annotations

import numpy as np

from ...cost.memory import inflight_microbatches
from .base import Collective, Context, Stages, Strategy


def stage_layers(model, pp):
    """Layers on the busiest stage (uneven splits give some stages one more)."""
    return np.ceil(model.layers / np.asarray(pp, float))


def stage_params(model, pp):
    """Parameters of the busiest stage: its layers plus the embedding (first) or the head (last).

    With tied embeddings the last stage keeps its own copy of the table for the logits.
    """
    pp = np.asarray(pp)
    layers = stage_layers(model, pp)
    layer_p = model.layer_params()
    first = layers * layer_p + model.embedding_params()
    last = layers * layer_p + model.output_params() + \
        np.where(pp > 1, model.vocab * model.hidden if model.tied_embeddings else 0, model.embedding_params())
    last = np.where(pp > 1, last, first + model.output_params())
    return np.maximum(first, last)


def bubble_fraction(pp, vpp, micro_batches):
    """Idle fraction of the ideal time: (p-1)/(v m) (Narayanan 2021, eqs. 1-2)."""
    pp, vpp, m = (np.asarray(x, float) for x in (pp, vpp, micro_batches))
    return (pp - 1) / (vpp * m)


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
        tied = 1 if model.tied_embeddings else 0
        table = np.ceil(model.vocab / t) * model.hidden * ctx.grad_bytes
        tp_stride = ctx.stride("tp")
        return [
            Collective("pp_send_activation", "send_recv", "pp", 2, stride, msg, sends, "microbatch", "forward", "none"),
            Collective("pp_send_gradient", "send_recv", "pp", 2, stride, msg, sends, "microbatch", "backward", "none"),
            Collective("pp_recv_allgather_activation", "all_gather", "pp", t, tp_stride, act, sends * gather,
                       "microbatch", "forward", "none"),
            Collective("pp_recv_allgather_gradient", "all_gather", "pp", t, tp_stride, act, sends * gather,
                       "microbatch", "backward", "none"),
            # Tied input/output embeddings live on the first and last stage: their gradients are summed.
            Collective("pp_embedding_grad_allreduce", "all_reduce", "pp", 2, stride * np.maximum(p - 1, 1),
                       table, np.where(p > 1, tied, 0), "step", "step", "none"),
        ]

    # ---- the schedule

    def stage_layers(self, model, layout):
        return stage_layers(model, layout.pp)

    def stage_params(self, model, layout):
        return stage_params(model, layout.pp)

    def ends_share(self, layout):
        # The embedding's collectives run on the first stage and the head's on the last.
        return 1.0 / np.where(np.asarray(layout.pp) == 1, 1, 2)

    def inflight(self, layout, micro_batches):
        return inflight_microbatches(layout.pp, layout.vpp, micro_batches, layout.schedule)

    def compose(self, model, layout, t):
        pp, vpp, m = np.asarray(layout.pp), np.asarray(layout.vpp), t.micro_batches
        single = pp == 1
        first = t.compute_mb + t.emb_f + t.emb_b
        last = t.compute_mb + t.head_f + t.head_b
        busiest = np.where(single, t.compute_mb + t.emb_f + t.emb_b + t.head_f + t.head_b, np.maximum(first, last))
        t_mb_max = busiest + t.recompute_mb + t.comm_mb
        # The bubble idles for the average stage's micro-batch time.
        t_mb_avg = np.where(single, t_mb_max,
                            (t.compute_mb * model.layers / (t.stage_layers * pp))
                            + (t.emb_f + t.emb_b + t.head_f + t.head_b) / pp + t.recompute_mb + t.comm_mb)
        bubble = bubble_fraction(pp, vpp, m) * m * t_mb_avg
        return m * t_mb_max + bubble, busiest, {"bubble": bubble}
