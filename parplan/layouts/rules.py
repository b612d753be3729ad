"""The one set of layout rules: which layouts can run at all, for one layout or a whole candidate array.

``check_layout`` (``estimate``, ``validate``), the plan search and the serving splits all
ask these rules, so the search can never rank a layout that ``estimate`` then refuses.
Each rule is a mask of violations over numpy arrays (one entry per candidate) and the
sentence that explains it for one layout; a scalar check raises the first rule it breaks.
What the search chooses *not to enumerate* (duplicates, tensor parallel across nodes) is
the search space's business (:mod:`parplan.plan.candidates`), not a rule.
"""
from __future__ import annotations

import numbers

from dataclasses import replace
from types import SimpleNamespace
import numpy as np

from ..cost.memory import largest_chunk_layers
from ..errors import ParplanError
from ..specs.dtypes import DTYPES
from ..specs.cluster import Cluster
from ..specs.model import ModelSpec
from .layout import CP_MODES, RECOMPUTE, SCHEDULES, TP_MODES, Layout
from .rule import Rule, is_moe as _moe
from .software_rules import software_rules
from .strategies import BUILTIN, axis as strategy_axis, is_folded
from .torus_map import check_map, enumerate_maps, no_map_reason

MAX_AXIS = 10_000_000
_KIND = {1: ("2d", "square", 2), 2: ("3d", "cube", 3)}  # tp_mode code -> (name, word, power)


def _q(a):
    """The mesh side of 2D / 3D tensor parallel (1 for 1D)."""
    power = np.where(a.mode == 1, 2, np.where(a.mode == 2, 3, 1))
    return np.rint(np.asarray(a.tp, float) ** (1.0 / power)).astype(np.int64)


def _nd_dim(model, a):
    q = int(_q(a))
    return next((name, dim) for dim, name in ((model.hidden, "hidden size"), (model.ffn_hidden, "MLP width"),
                                              (model.heads, "heads")) if dim % q)


def _say_batch(a):
    mb = getattr(a, "mb", 1)
    return (f"global batch {a.batch} is not divisible into micro-batches of {mb} on dp={a.dp} "
            f"({mb * a.dp} sequences per round)")


def _say_empty(m, a):
    free = m.layers - (a.pp - 2) - (a.first == 0) - (a.last == 0)
    return (f"first {a.first or '-'} and last {a.last or '-'} stage layers leave a stage of pp={a.pp} without a "
            f"transformer layer ({m.layers} layers of {m.name}); the ends may hold at most {free} together")


def _micro_batches(a):
    return a.batch // np.maximum(a.mb * a.dp, 1)


RULES: tuple[Rule, ...] = (
    Rule("tp divides heads", ('tp', 'mode'),
         lambda m, a: (a.mode == 0) & (m.heads % a.tp != 0),
         lambda m, a: f"tp={a.tp} does not divide the {m.heads} attention heads of {m.name}"),
    Rule("tp and KV heads divide each other", ('tp', 'mode'),
         lambda m, a: (a.mode == 0) & (m.kv_heads % a.tp != 0) & (a.tp % m.kv_heads != 0),
         lambda m, a: f"tp={a.tp} and the {m.kv_heads} KV heads of {m.name} do not divide each other"),
    Rule("tp divides the MLP", ('tp', 'mode'),
         lambda m, a: (a.mode == 0) & (m.ffn_hidden % a.tp != 0),
         lambda m, a: f"tp={a.tp} does not divide the MLP width {m.ffn_hidden} of {m.name}"),
    Rule("2D/3D tp is a square/cube", ('tp', 'mode'),
         lambda m, a: (a.mode > 0) & (_q(a) ** np.where(a.mode == 1, 2, 3) != a.tp),
         lambda m, a: f"tp-mode {_KIND[int(a.mode)][0]} needs tp to be a {_KIND[int(a.mode)][1]} number, "
                      f"got {a.tp}"),
    Rule("2D/3D q divides the shapes", ('tp', 'mode'),
         lambda m, a: (a.mode > 0) & ((m.hidden % _q(a) != 0) | (m.ffn_hidden % _q(a) != 0) | (m.heads % _q(a) != 0)),
         lambda m, a: f"tp-mode {_KIND[int(a.mode)][0]} with q={int(_q(a))} does not divide the "
                      f"{_nd_dim(m, a)[0]} {_nd_dim(m, a)[1]}"),
    Rule("2D/3D rows divide the micro-batch", ('tp', 'mode', 'mb'),
         lambda m, a: (a.mode > 0) & (a.mb % np.where(a.mode == 1, _q(a), _q(a) ** 2) != 0),
         lambda m, a: (lambda rows: f"tp-mode {_KIND[int(a.mode)][0]} splits the micro-batch {rows} ways; "
                                    f"micro-batch {a.mb} is not divisible by {rows}")(
             int(_q(a)) ** (1 if a.mode == 1 else 2))),
    Rule("sequence parallel is 1D", ('sp', 'mode'),
         lambda m, a: a.sp & (a.mode > 0),
         lambda m, a: "sequence parallel (--sp) applies to 1D tensor parallel only"),
    Rule("cp balances the sequence", ('cp', 'seq'),
         lambda m, a: (a.seq % a.cp != 0) | ((a.cp > 1) & (a.seq % (2 * a.cp) != 0)),
         lambda m, a: f"cp={a.cp} needs the sequence length {a.seq} divisible by 2*cp "
                      f"(causal load balancing splits it into 2*cp chunks)"),
    Rule("sequence parallel splits the tokens", ('sp', 'seq', 'mb', 'tp', 'sp_hidden'),
         lambda m, a: a.sp & ~a.sp_hidden & (a.seq * a.mb % a.tp != 0),
         lambda m, a: f"sequence parallel needs micro-batch*seq divisible by tp={a.tp}"),
    Rule("pp at most the layers", ('pp',),
         lambda m, a: a.pp > m.layers,
         lambda m, a: f"pp={a.pp} exceeds the {m.layers} layers of {m.name}"),
    Rule("interleaving needs a pipeline", ('vpp', 'pp'),
         lambda m, a: (a.vpp > 1) & (a.pp == 1),
         lambda m, a: "virtual pipeline stages (vpp > 1) need pp > 1"),
    Rule("stage layers need a pipeline", ('pp', 'first', 'last'),
         lambda m, a: (a.pp == 1) & ((a.first > 0) | (a.last > 0)),
         lambda m, a: "first/last stage layers (--first-stage-layers, --last-stage-layers) need pp > 1"),
    Rule("two stages hold every layer", ('pp', 'first', 'last'),
         lambda m, a: (a.pp == 2) & (a.first > 0) & (a.last > 0) & (a.first + a.last != m.layers),
         lambda m, a: f"with pp=2 the first and last stage hold all {m.layers} layers of {m.name}, but "
                      f"{a.first} + {a.last} = {a.first + a.last}; e.g. --first-stage-layers "
                      f"{m.layers - m.layers // 2} --last-stage-layers {m.layers // 2}"),
    Rule("every stage holds a layer", ('pp', 'first', 'last'),
         lambda m, a: (a.pp > 2) & (m.layers - a.first - a.last - (a.pp - 2) - (a.first == 0) - (a.last == 0) < 0),
         lambda m, a: _say_empty(m, a)),
    Rule("ZB-H1 runs one stage per rank", ('zb', 'vpp'),
         lambda m, a: a.zb & (a.vpp > 1),
         lambda m, a: "the zb-h1 schedule (Qi et al. 2023) runs one stage per rank: use --vpp 1"),
    Rule("DualPipeV runs two stages per rank", ('dualpipe', 'vpp', 'pp'),
         lambda m, a: a.dualpipe & ((a.vpp != 2) | (a.pp < 2)),
         lambda m, a: "the dualpipev schedule (DeepSeek's DualPipe cut in half) runs two stages per rank in a V "
                      "over pp >= 2 ranks: use --vpp 2" + ("" if a.pp >= 2 else " and --pp 2 or more")),
    Rule("DualPipeV splits the layers its own way", ('dualpipe', 'first', 'last'),
         lambda m, a: a.dualpipe & ((a.first > 0) | (a.last > 0)),
         lambda m, a: "the dualpipev schedule is modelled with torchtitan's own split over its V (the first rank "
                      "holds the first and last stage); drop --first-stage-layers and --last-stage-layers"),
    Rule("DualPipeV takes a micro-batch per stage", ('dualpipe', 'batch', 'mb', 'dp', 'pp'),
         lambda m, a: a.dualpipe & (_micro_batches(a) < 2 * a.pp),
         lambda m, a: f"the dualpipev schedule needs at least as many micro-batches as its 2*pp = {2 * a.pp} "
                      f"stages; {_micro_batches(a)} per step (torch.distributed.pipelining ScheduleDualPipeV)"),
    Rule("the interleaved schedule needs vpp", ('interleaved', 'vpp'),
         lambda m, a: a.interleaved & (a.vpp == 1),
         lambda m, a: "the interleaved schedule needs vpp > 1"),
    Rule("dp divides the batch", ('batch', 'dp'),
         lambda m, a: a.batch % a.dp != 0,
         lambda m, a: _say_batch(a)),
    Rule("micro-batches divide the batch", ('batch', 'dp', 'mb'),
         lambda m, a: a.batch % (a.mb * a.dp) != 0,
         lambda m, a: _say_batch(a)),
    Rule("HSDP needs ZeRO", ('hsdp', 'zero'),
         lambda m, a: a.hsdp & (a.zero == 0),
         lambda m, a: "a ZeRO shard group (HSDP) needs zero >= 1"),
    Rule("the shard group divides dp", ('hsdp', 'shard', 'dp'),
         lambda m, a: a.hsdp & ((a.shard < 1) | (a.dp % np.maximum(a.shard, 1) != 0)),
         lambda m, a: f"shard group {a.shard} must divide dp={a.dp}"),
    Rule("interleaving takes whole rounds of micro-batches", ('interleaved', 'batch', 'mb', 'dp', 'pp'),
         lambda m, a: a.interleaved & (_micro_batches(a) % a.pp != 0),
         lambda m, a: f"the interleaved schedule needs the {_micro_batches(a)} micro-batches per step to be a "
                      f"multiple of pp={a.pp}"),
    # Mixture of experts (parplan.layouts.strategies.expert)
    Rule("expert parallelism needs experts", ('ep', 'etp'),
         lambda m, a: ((a.ep > 1) | (a.etp > 1)) & (not _moe(m)),
         lambda m, a: f"{'ep' if a.ep > 1 else 'etp'}={a.ep if a.ep > 1 else a.etp} shards experts, but {m.name} "
                      f"is a dense model (no mixture-of-experts layers)"),
    Rule("ep divides the experts", ('ep',),
         lambda m, a: _moe(m) & (m.experts % np.maximum(a.ep, 1) != 0),
         lambda m, a: f"ep={a.ep} does not divide the {m.experts} routed experts of {m.name}"),
    Rule("etp divides the expert width", ('etp',),
         lambda m, a: _moe(m) & (m.expert_width % np.maximum(a.etp, 1) != 0),
         lambda m, a: f"etp={a.etp} does not divide the expert width {m.expert_width} of {m.name}"),
    Rule("ep x etp divides the stage's ranks", ('ep', 'etp', 'tp', 'cp', 'dp'),
         lambda m, a: (a.tp * a.cp * a.dp) % (a.ep * a.etp) != 0,
         lambda m, a: f"ep*etp = {a.ep * a.etp} must divide tp*cp*dp = {a.tp * a.cp * a.dp}: the expert axes are "
                      f"folded over those ranks"),
    Rule("norm-act recompute of MoE layers", ('rc',),
         lambda m, a: (a.rc == RECOMPUTE.index("norm-act")) & (not _moe(m)),
         lambda m, a: f"recompute norm-act rebuilds an MoE layer's pre-MLP norm and expert activation; {m.name} is "
                      f"dense (Megatron-Core fuses its norms into the linears, which --recompute-modules layernorm "
                      f"leaves alone)"),
    Rule("mla-up-proj recompute of latent attention", ('rc',),
         lambda m, a: (a.rc == RECOMPUTE.index("mla-up-proj")) & (not m.mla),
         lambda m, a: f"recompute mla-up-proj rebuilds latent attention's q, k and v from its latents; {m.name} has "
                      f"no latent attention (q_lora_rank / kv_lora_rank)"),
    Rule("save-dots recompute of dense models", ('rc',),
         lambda m, a: (a.rc == RECOMPUTE.index("save-dots")) & _moe(m),
         lambda m, a: f"recompute save-dots (MaxText's remat_policy minimal) is modelled for dense layers; {m.name}'s "
                      f"expert matmuls are batched over experts, which that policy does not save"),
    Rule("MoE layers with 1D tensor parallel", ('tp', 'mode'),
         lambda m, a: _moe(m) & (a.mode > 0),
         lambda m, a: f"tp-mode {TP_MODES[int(a.mode)]} is not modelled for the mixture-of-experts layers of "
                      f"{m.name}; use 1d"),
)


def fields(*, tp, cp, pp, dp, micro_batch, vpp, sp, tp_mode, zero, shard_group, hsdp, global_batch, seq,
           interleaved, recompute=0, cp_ring=False, ep=1, etp=1, sp_hidden=False, first=0, last=0,
           zb=False, gpipe=False, dualpipe=False) -> SimpleNamespace:
    """The candidate fields the rules read, as arrays (``tp_mode`` as codes 0/1/2 of ``TP_MODES``,
    ``recompute`` as codes of ``RECOMPUTE``; ``ep``, ``etp``: the expert axes; ``sp_hidden``: the
    framework's sequence parallelism shards the hidden size, not the tokens; ``first``/``last``: the
    first and last pipeline stage's layers, 0 for the framework's own split; ``zb``: the zb-h1 schedule;
    ``gpipe``: the GPipe schedule; ``dualpipe``: DualPipeV; a pipeline none of these runs 1F1B)."""
    return SimpleNamespace(tp=np.asarray(tp), cp=np.asarray(cp), pp=np.asarray(pp), dp=np.asarray(dp),
                           mb=np.asarray(micro_batch), vpp=np.asarray(vpp), sp=np.asarray(sp, bool),
                           mode=np.asarray(tp_mode), zero=np.asarray(zero), shard=np.asarray(shard_group),
                           hsdp=np.asarray(hsdp, bool), batch=np.asarray(global_batch), seq=np.asarray(seq),
                           interleaved=np.asarray(interleaved, bool), rc=np.asarray(recompute),
                           cp_ring=np.asarray(cp_ring, bool), ep=np.asarray(ep), etp=np.asarray(etp),
                           sp_hidden=np.asarray(sp_hidden, bool), first=np.asarray(first), last=np.asarray(last),
                           zb=np.asarray(zb, bool), gpipe=np.asarray(gpipe, bool),
                           dualpipe=np.asarray(dualpipe, bool))


def shards_hidden(framework) -> bool:
    """Whether the framework's (or a Software's) sequence parallelism shards the activations' hidden size
    (MaxText)."""
    fw = getattr(framework, "framework", framework)
    return fw is not None and fw.parallelism.activation_shard == "hidden"


def violations(model: ModelSpec, a, framework=None) -> list[tuple[Rule, np.ndarray]]:
    """Each rule that ``a``'s fields let it judge, with the mask of candidates that break it.

    ``a``: a namespace of candidate fields (:func:`fields` makes all of them); a rule whose
    fields ``a`` lacks is left out (the search judges the mesh shapes before the knobs).
    ``framework``: its :func:`software_rules` apply too.
    """
    have = set(vars(a))
    return [(rule, np.asarray(rule.broken(model, a), bool)) for rule in RULES + software_rules(framework)
            if have.issuperset(rule.reads)]


def valid(model: ModelSpec, a, framework=None) -> np.ndarray:
    """The mask of candidates that break none of the rules ``a``'s fields let it judge."""
    ok = np.ones(np.broadcast(*vars(a).values()).shape, bool)
    for _, broken in violations(model, a, framework):
        ok &= ~broken
    return ok


def first_violation(model: ModelSpec, a, framework=None) -> str | None:
    """The sentence of the first rule one candidate breaks, or None."""
    for rule, broken in violations(model, a, framework):
        if bool(broken):
            return rule.say(model, SimpleNamespace(**{k: v.item() for k, v in vars(a).items()}))
    return None


def tp_1d_problem(model: ModelSpec, tp: int) -> str | None:
    """Why Megatron 1D tensor parallel of size ``tp`` cannot shard ``model`` (None: it can)."""
    return first_violation(model, fields(tp=tp, cp=1, pp=1, dp=1, micro_batch=1, vpp=1, sp=False, tp_mode=0, zero=0,
                                         shard_group=1, hsdp=False, global_batch=1, seq=2, interleaved=False))


def check_tp_1d(model: ModelSpec, tp: int) -> None:
    """Megatron 1D TP shards the heads, the KV heads (or replicates them) and the MLP width."""
    problem = tp_1d_problem(model, tp)
    if problem:
        raise ParplanError(problem)


def check_layout(layout: Layout, model: ModelSpec, cluster: Cluster, framework=None) -> Layout:
    """Refuse an impossible layout with one clear sentence; return it with defaults filled in.

    ``framework`` (a :class:`parplan.specs.framework.Framework`): also refuse what its code cannot run.
    """
    for name in ("tp", "pp", "dp", "cp", "micro_batch", "vpp", "first_stage_layers", "last_stage_layers"):
        v = getattr(layout, name)
        if v is None and name.endswith("_layers"):
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ParplanError(f"{name.replace('_', '-')} must be a positive whole number, got {v!r}")
        if v > MAX_AXIS:
            raise ParplanError(f"{name.replace('_', '-')} = {v} is absurdly large")
    for name, choices in (("recompute", RECOMPUTE), ("schedule", SCHEDULES), ("tp_mode", TP_MODES),
                          ("cp_mode", CP_MODES), ("dtype", DTYPES)):
        if getattr(layout, name) not in choices:
            raise ParplanError(f"{name.replace('_', '-')} must be one of {', '.join(choices)}, "
                               f"got '{getattr(layout, name)}'")
    cluster.hardware.peak(layout.dtype)
    if layout.zero not in (0, 1, 2, 3):
        raise ParplanError(f"zero stage must be 0, 1, 2 or 3, got {layout.zero!r}")
    layout = with_expert_axes(layout, model)
    _check_plugin_axes(layout)
    if layout.devices != cluster.devices:
        names = ["tp", "cp", "pp", "dp"] + [a for a, _ in layout.axes if not is_folded(a)]
        raise ParplanError(f"{'*'.join(names)} = {'*'.join(str(layout.size(a)) for a in names)} = {layout.devices} "
                           f"does not match the {cluster.devices} devices of {cluster.name}")
    if layout.sp and layout.tp == 1:
        layout = replace(layout, sp=False)
    fw = getattr(framework, "framework", framework)  # a Software: its framework, judged with its choices
    if layout.dtype == "fp8" and fw is not None:
        cluster.hardware.check_fp8_recipe(getattr(framework, "fp8_recipe", None), fw.fp8.recipes)
    if fw is not None and fw.parallelism.sequence_parallel == "always" and layout.tp > 1 and layout.tp_mode == "1d":
        layout = replace(layout, sp=True)  # its tensor parallelism always shards the sequence
    if layout.vpp > 1 and layout.schedule == "1f1b":
        layout = replace(layout, schedule="interleaved")
    batch = layout.batch
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ParplanError(f"global batch must be a positive whole number, got {batch!r}")
    seq = layout.seq_len or model.seq_len
    problem = first_violation(model, fields(
        tp=layout.tp, cp=layout.cp, pp=layout.pp, dp=layout.dp, micro_batch=layout.micro_batch, vpp=layout.vpp,
        sp=layout.sp, tp_mode=TP_MODES.index(layout.tp_mode), zero=layout.zero,
        shard_group=1 if layout.shard_group is None else layout.shard_group, hsdp=layout.shard_group is not None,
        global_batch=batch, seq=seq, interleaved=layout.schedule == "interleaved",
        recompute=RECOMPUTE.index(layout.recompute), cp_ring=layout.cp_mode == "ring", ep=layout.size("ep"),
        etp=layout.size("etp"), sp_hidden=shards_hidden(framework), first=layout.first_stage_layers or 0,
        last=layout.last_stage_layers or 0, zb=layout.schedule == "zb-h1", gpipe=layout.schedule == "gpipe",
        dualpipe=layout.schedule == "dualpipev"),
        framework)
    if problem:
        raise ParplanError(problem)
    check_recompute_layers(layout.recompute_layers, layout.recompute, fw, model.layers, layout.pp * layout.vpp)
    if cluster.is_torus:  # the mesh must lie over the slices' torus axes (parplan.layouts.torus_map)
        if layout.torus_map is not None:
            check_map(layout.torus_map, layout.sizes(), cluster)
        elif not enumerate_maps(layout.sizes(), cluster):
            raise ParplanError(no_map_reason(layout.sizes(), cluster))
    return replace(layout, seq_len=seq, global_batch=batch)


def with_expert_axes(layout: Layout, model: ModelSpec) -> Layout:
    """An MoE model's layout always names its expert axes (ep=1, etp=1 where not given), so the expert axis
    shards and reduces its experts."""
    if not getattr(model, "is_moe", False):
        return layout
    names = [a for a, _ in layout.axes]
    extra = tuple((a, 1) for a in ("ep", "etp") if a not in names)
    return replace(layout, axes=layout.axes + extra) if extra else layout


def _check_plugin_axes(layout: Layout) -> None:
    for name, size in layout.axes:
        strategy_axis(name)
        if name in BUILTIN:
            raise ParplanError(f"axis '{name}' is a Layout field; give it as {name}=, not in axes")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ParplanError(f"axis {name} must be a positive whole number, got {size!r}")
        over = strategy_axis(name).folded_over
        if over:
            ranks = 1
            for a in over:
                ranks *= layout.size(a)
            if ranks % size:
                raise ParplanError(f"{name}={size} is folded over {'x'.join(over)} = {ranks} ranks and must "
                                   f"divide them")
    mesh = BUILTIN + tuple(a for a, _ in layout.axes if not is_folded(a))
    if sorted(layout.order) != sorted(mesh):
        raise ParplanError(f"mesh order must list each of {', '.join(mesh)} once, got {layout.order}")


def check_recompute_layers(layers, recompute: str, framework, model_layers: int, chunks: int | None = None) -> None:
    """A block recompute (``--recompute-layers N``) needs full recompute, a framework that runs it (Megatron's
    ``--recompute-method block``) and, where the chunks are known (``pp * vpp`` of them), no more layers than
    the largest chunk holds."""
    if layers is None:
        return
    if not isinstance(layers, numbers.Integral) or isinstance(layers, bool) or layers < 1:
        raise ParplanError(f"recompute-layers must be a positive whole number, got {layers!r}")
    if recompute != "full":
        raise ParplanError(f"--recompute-layers {layers} recomputes a block of each chunk's layers whole: it needs "
                           f"--recompute full, not {recompute}")
    if framework is not None and not framework.recompute_layers:
        raise ParplanError(f"{framework.name} has no block recompute (--recompute-layers): its profile says "
                           f"recompute_layers: false; recompute every layer, or pick a framework that has it")
    chunk = int(largest_chunk_layers(model_layers, chunks or 1))
    if layers > chunk:
        raise ParplanError(f"--recompute-layers {layers} exceeds the {chunk} layers of a pipeline chunk "
                           f"({model_layers} layers over {chunks or 1}): give at most {chunk}, or leave it out to "
                           f"recompute every layer")
