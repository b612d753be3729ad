"""Pipeline parallelism: layers split into stages, micro-batches, a bubble, point-to-point sends.

Narayanan et al. 2021 (arXiv 2104.04473, Sec. 2.2): with p stages and m
micro-batches the 1F1B schedule idles for a bubble of (p-1)/m of the ideal time;
interleaving v model chunks per device shrinks it to (p-1)/(v m) at v times the
point-to-point messages. Each stage boundary sends one (b, s, h) activation
forward and its gradient backward per micro-batch; with tensor parallelism each
TP rank sends 1/t of it and the receivers all-gather over NVLink (the paper's
scatter/gather optimisation, Megatron-LM ``--scatter-gather-tensors-in-pipeline``).
DeepSpeed's pipeline engine sends each stage's whole output from every TP rank
(``deepspeed/runtime/pipe/engine.py``, ``_exec_send_activations``):
``Layout.pp_scatter_gather = False``.
"""
from __future__ import annotations

import numpy as np

from .base import Collective, Context, Strategy


class PipelineParallel(Strategy):
    axis = "pp"

    def collectives(self, ctx: Context):
        lay, d, model = ctx.layout, ctx.dims, ctx.model
        p, v, t = np.asarray(lay.pp), np.asarray(lay.vpp), np.asarray(lay.tp)
        stride = ctx.stride("pp")
        # The (b, s, h) activation as this device holds it: whole under 1D TP, a 1/P block under 2D/3D.
        act = d.batch * d.seq * model.hidden / d.hidden_shard * ctx.bpe
        if lay.tp_mode == "1d":
            # Scatter/gather: each TP rank sends its 1/t slice (already sharded under sequence parallel);
            # without it (DeepSpeed's pipeline engine) every TP rank sends the whole activation.
            msg = act / np.where(np.asarray(lay.sp), d.norm_shard, np.where(lay.pp_scatter_gather, t, 1))
        else:
            msg = act
        sends = np.where(p > 1, v, 0)
        tied = 1 if model.tied_embeddings else 0
        table = np.ceil(model.vocab / t) * model.hidden * ctx.bpe
        return [
            Collective("pp_send_activation", "send_recv", "pp", 2, stride, msg, sends, "microbatch", "forward", "none"),
            Collective("pp_send_gradient", "send_recv", "pp", 2, stride, msg, sends, "microbatch", "backward", "none"),
            # Tied input/output embeddings live on the first and last stage: their gradients are summed.
            Collective("pp_embedding_grad_allreduce", "all_reduce", "pp", 2, stride * np.maximum(p - 1, 1),
                       table, np.where(p > 1, tied, 0), "step", "step", "none"),
        ]


def bubble_fraction(pp, vpp, micro_batches):
    """Idle fraction of the ideal time: (p-1)/(v m) (Narayanan 2021, eqs. 1-2)."""
    pp, vpp, m = (np.asarray(x, float) for x in (pp, vpp, micro_batches))
    return (pp - 1) / (vpp * m)
