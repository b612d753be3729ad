"""What a framework's code can run, and what a run's choices within it need, as layout rules.

Each framework profile (``frameworks/*.yaml``) says which ZeRO stages, pipeline schedules and splits, tensor
and context parallel schemes, sequence parallelism, recompute modes and expert axes its code has; a run's
software choices add their own conditions (the MoE all-to-all overlap with another micro-batch). The search
and ``check_layout`` apply these beside the mesh rules of :mod:`parplan.layouts.rules`.
"""
from __future__ import annotations

import numpy as np

from . import split as split_mod
from .layout import CP_MODES, RECOMPUTE, TP_MODES
from .rule import Rule, is_moe as _moe


def software_rules(software) -> tuple[Rule, ...]:
    """What a framework's code can run (``frameworks/*.yaml``: ZeRO stages, with pipelines too; its
    tensor, pipeline and context parallelism; sequence parallelism; recompute modes), and what the run's
    choices need. ``software``: a :class:`parplan.specs.framework.Software` (a framework with the run's
    choices) or a bare ``Framework`` (its defaults)."""
    if software is None:
        return ()
    fw = getattr(software, "framework", software)
    overlap = getattr(software, "moe_overlap", fw.moe.overlap)
    deepep = getattr(software, "moe_dispatcher", "alltoall") == "deepep"
    states = software.optimizer_states if software is not fw else "fp32"  # a bare profile: its default
    tp_overlap = getattr(software, "tp_overlap", fw.parallelism.tp_overlap.default)
    fp8_params = bool(getattr(software, "fp8_params", False))
    offload, ao = getattr(software, "offload_layers", None) or 0, fw.activation_offload
    offload_codes = [RECOMPUTE.index(r) for r in ao.recompute] if ao is not None else []
    layers = ao.layers if ao is not None else "any"
    dp, pipe, par = fw.data_parallel, fw.pipeline, fw.parallelism
    n = fw.name
    modes = [TP_MODES.index(m) for m in par.tp_modes]
    codes = [RECOMPUTE.index(r) for r in fw.recompute]
    moe = fw.moe

    def stages(z):
        return ", ".join(map(str, z))
    return (
        Rule(f"{n} runs these ZeRO stages", ('zero',),
             lambda m, a: ~np.isin(a.zero, dp.zero),
             lambda m, a: f"{n} runs ZeRO stages {stages(dp.zero)}, not zero={a.zero}"),
        Rule(f"{n} pipelines with these ZeRO stages", ('zero', 'pp'),
             lambda m, a: (a.pp > 1) & ~np.isin(a.zero, pipe.zero),
             lambda m, a: f"{n} combines pipeline parallelism only with ZeRO stages {stages(pipe.zero)}, "
                          f"not zero={a.zero}"),
        Rule(f"{n} has tensor parallelism", ('tp', 'mode'),
             lambda m, a: (a.tp > 1) & ~np.isin(a.mode, modes),
             lambda m, a: (f"{n} has no tensor parallelism (tp must be 1)" if not modes else
                           f"{n} runs tensor parallelism {', '.join(par.tp_modes)}, not {TP_MODES[int(a.mode)]}")),
        Rule(f"{n} has pipeline parallelism", ('pp',),
             lambda m, a: (a.pp > 1) & (not pipe.schedules),
             lambda m, a: f"{n} has no pipeline parallelism (pp must be 1)"),
        Rule(f"{n} splits the layers evenly", ('pp', 'vpp', 'first', 'last'),
             lambda m, a: (a.pp > 1) & (a.first == 0) & (a.last == 0)
             & ~split_mod.default_valid(m.layers, a.pp, a.vpp, pipe.split),
             lambda m, a: split_mod.say_even(n, pipe.split, m, a)),
        Rule(f"{n} can split the layers so", ('pp', 'vpp', 'first', 'last'),
             lambda m, a: (a.pp > 1) & ((a.first > 0) | (a.last > 0)) & ~split_mod.candidates_expressible(m, a, pipe.split),
             lambda m, a: split_mod.say_split(n, pipe.split, m, a)),
        Rule(f"{n} interleaved chunks hold a layer", ('pp', 'vpp', 'first', 'last'),
             lambda m, a: (a.pp > 2) & (a.vpp > 1) & (split_mod.middle_least(m, a, pipe.split) < a.vpp),
             lambda m, a: f"vpp={a.vpp} leaves a chunk of a middle stage without a layer "
                          f"({split_mod.middle_least(m, a, pipe.split)} layers per middle stage)"),
        Rule(f"{n} has the zb-h1 schedule", ('zb',),
             lambda m, a: a.zb & ("zb-h1" not in pipe.schedules),
             lambda m, a: f"{n} runs the pipeline schedules {', '.join(pipe.schedules) or 'none'}, not zb-h1"),
        Rule(f"{n} has the dualpipev schedule", ('dualpipe',),
             lambda m, a: a.dualpipe & ("dualpipev" not in pipe.schedules),
             lambda m, a: f"{n} runs the pipeline schedules {', '.join(pipe.schedules) or 'none'}, not dualpipev"),
        Rule(f"{n} has the interleaved schedule", ('interleaved',),
             lambda m, a: a.interleaved & ("interleaved" not in pipe.schedules),
             lambda m, a: f"{n} runs the pipeline schedules {', '.join(pipe.schedules) or 'none'}, not interleaved"),
        Rule(f"{n} has the 1F1B or GPipe schedule", ('pp', 'interleaved', 'zb', 'gpipe', 'dualpipe'),
             lambda m, a: (a.pp > 1) & ~a.interleaved & ~a.zb & ~a.dualpipe
             & np.where(a.gpipe, "gpipe" not in pipe.schedules, "1f1b" not in pipe.schedules),
             lambda m, a: f"{n} runs the pipeline schedules {', '.join(pipe.schedules) or 'none'}, "
                          f"not {'gpipe' if a.gpipe else '1f1b'}"),
        Rule(f"{n} has context parallelism", ('cp', 'cp_ring'),
             lambda m, a: (a.cp > 1) & ~np.isin(np.where(a.cp_ring, 0, 1), [CP_MODES.index(c) for c in par.cp_modes]),
             lambda m, a: (f"{n} has no context parallelism (cp must be 1)" if not par.cp_modes else
                           f"{n} runs context parallelism {', '.join(par.cp_modes)}, not "
                           f"{'ring' if a.cp_ring else 'allgather'}")),
        Rule(f"{n} sequence parallelism", ('sp', 'tp', 'mode'),
             lambda m, a: (a.sp & (par.sequence_parallel == "never"))
             | ((a.tp > 1) & (a.mode == 0) & ~a.sp & (par.sequence_parallel == "always")),
             lambda m, a: (f"{n} has no sequence parallelism" if par.sequence_parallel == "never" else
                           f"{n} always runs tensor parallelism with sequence parallelism (--sp)")),
        # Megatron-LM arguments.py: 'Tensor parallel communication/GEMM overlap can happen only when sequence
        # parallelism is enabled'; what a collective matmul overlaps are the sequence-parallel collectives.
        Rule("TP collective matmul under sequence parallelism", ('sp', 'tp'),
             lambda m, a: (tp_overlap != "none") & (a.tp > 1) & ~a.sp,
             lambda m, a: f"--tp-overlap {tp_overlap} overlaps the sequence-parallel collectives: it needs --sp"),
        Rule(f"{n} has expert parallelism", ('ep',),
             lambda m, a: (a.ep > 1) & (not moe.expert_parallel),
             lambda m, a: f"{n} has no expert parallelism (ep must be 1)"),
        Rule(f"{n} expert tensor parallel sizes", ('etp', 'tp'),
             lambda m, a: (a.etp > 1) & ((moe.expert_tensor_parallel == "one") |
                                          ((moe.expert_tensor_parallel == "one-or-tp") & (a.etp != a.tp))),
             lambda m, a: (f"{n} splits no expert by tensor parallelism (etp must be 1)"
                           if moe.expert_tensor_parallel == "one" else
                           f"{n} runs expert tensor parallel 1 or tp={a.tp}, not etp={a.etp}")),
        Rule(f"{n} shards activations by their hidden size", ('sp', 'tp'),
             lambda m, a: a.sp & (par.activation_shard == "hidden") & (m.hidden % a.tp != 0),
             lambda m, a: f"{n}'s tensor parallelism shards the activations' hidden size {m.hidden}, which "
                          f"tp={a.tp} does not divide"),
        # Megatron-Core's transformer_config.py checks for --overlap-moe-expert-parallel-comm.
        Rule("MoE all-to-alls overlapped with another micro-batch", ('ep', 'rc', 'pp', 'interleaved'),
             lambda m, a: (overlap == "micro-batch") & _moe(m) & (
                 (a.ep < 2) | (a.rc == RECOMPUTE.index("full")) | ((a.pp > 1) & ~a.interleaved)),
             lambda m, a: "the MoE all-to-alls overlap another micro-batch only with " + (
                 "ep > 1" if a.ep < 2 else "recompute other than full" if a.rc == RECOMPUTE.index("full")
                 else "the interleaved schedule (--vpp 2 or more) under a pipeline")),
        # Megatron-Core's flex dispatcher: 'DeepEP dispatcher requires TPxEP > 1' and 'Flex token dispatcher with
        # deepep backend does not support moe_pad_expert_input_to_capacity' (NVIDIA/Megatron-LM @d98e8a64
        # megatron/core/transformer/moe/token_dispatcher.py, transformer_config.py).
        Rule("DeepEP dispatches over more than one rank", ('ep', 'etp'),
             lambda m, a: deepep & _moe(m) & (a.ep * a.etp < 2),
             lambda m, a: "--moe-dispatcher deepep dispatches over ep x etp ranks: it needs ep x etp > 1"),
        Rule("DeepEP does not pad experts to a capacity", ('ep',),
             lambda m, a: np.full(np.shape(a.ep), deepep and _moe(m) and m.capacity_factor is not None),
             lambda m, a: f"--moe-dispatcher deepep does not pad experts to capacity, and {m.name} sets "
                          f"capacity_factor {m.capacity_factor:g}: drop it, or use the alltoall dispatcher"),
        Rule(f"{n} trains multi-token prediction", ('pp',),
             lambda m, a: np.full(np.shape(a.pp), bool(m.mtp_layers and not fw.mtp)),  # every candidate alike
             lambda m, a: f"{n} trains no multi-token-prediction module, and {m.name} has {m.mtp_layers}; give the "
                          f"model with mtp_layers: 0, or a framework that trains them"),
        # NeMo's distributed_fused_adam and Megatron-Core's precision-aware optimizer are distributed optimizers
        # (NVIDIA/Megatron-LM @d98e8a64 megatron/core/optimizer/__init__.py: '--use-precision-aware-optimizer only
        # supported with distributed optimizer').
        Rule(f"{n} keeps narrow optimizer state in its distributed optimizer", ('zero',),
             lambda m, a: (states != "fp32") & (a.zero < 1),
             lambda m, a: f"--optimizer-states {states} runs in {n}'s distributed optimizer: zero must be 1 or more, "
                          f"not {a.zero}"),
        # Megatron-LM @d98e8a64 megatron/training/arguments.py: '--fp8-param-gather only supported with distributed
        # optimizer, torch fsdp2, megatron fsdp, or inference mode'.
        Rule("FP8 primary weights are gathered by a sharded optimizer", ('zero',),
             lambda m, a: fp8_params & (a.zero < 1),
             lambda m, a: f"--fp8-params gathers the FP8 weights from the distributed optimizer's or FSDP's shards: "
                          f"zero must be 1 or more, not {a.zero}"),
        Rule(f"{n} offloads activations under these recompute modes", ('rc',),
             lambda m, a: (offload > 0) & ~np.isin(a.rc, offload_codes),
             lambda m, a: f"{n} offloads activations under recompute {', '.join(ao.recompute if ao else ())}, not "
                          f"{RECOMPUTE[int(a.rc)]}: change --recompute, or drop --offload-layers"),
        Rule(f"{n} offloads activations beside a pipeline", ('pp',),
             lambda m, a: (offload > 0) & (not (ao is None or ao.pipeline)) & (a.pp > 1),
             lambda m, a: f"{n} offloads activations only without pipeline parallelism: pp must be 1, not {a.pp}"),
        Rule(f"{n} offloads these counts of layers", ('pp',),
             lambda m, a: (offload > 0) & ((layers == "below-all") & (offload >= m.layers)
                                           | (layers == "all") & (offload < np.ceil(m.layers / a.pp))),
             lambda m, a: (f"{n} offloads fewer layers than all: --offload-layers must be below {m.name}'s "
                           f"{m.layers}, not {offload}" if layers == "below-all" else
                           f"{n} offloads every layer of a rank or none: --offload-layers must be at least "
                           f"{int(np.ceil(m.layers / a.pp))}, the layers of a rank, not {offload}")),
        Rule(f"{n} recompute modes", ('rc',),
             lambda m, a: ~np.isin(a.rc, codes),
             lambda m, a: f"{n} offers recompute {', '.join(fw.recompute)}, not {RECOMPUTE[int(a.rc)]}"),
    )
