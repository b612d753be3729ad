"""The candidate space of the plan search: every mesh shape and knob, as parallel numpy arrays.

Candidates are every factorization of the device count into tp x cp x pp x dp (2D and
3D tensor parallel where tp is a square or a cube), each with every micro-batch,
recompute mode, ZeRO stage, sequence parallel, interleaving degree and HSDP choice. The
one set of layout rules (:mod:`parplan.layouts.rules`) removes what cannot run; the
search space itself leaves out only what would repeat another candidate or what the
user ruled out (tensor parallel across nodes, fixed axes and knobs).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from ..cost.memory import DEFAULT_HEADROOM, largest_chunk_layers
from ..errors import ParplanError
from ..layouts import rules
from ..layouts.layout import RECOMPUTE, TP_MODES
from ..layouts.split import end_choices, resolve_ends
from ..specs.cluster import Cluster
from ..specs.framework import Software
from ..specs.model import ModelSpec
from ..step.software import default_software
from . import torus_maps

CP_SCHEMES = ("allgather", "ring")   # candidate codes 0, 1
MICRO_BATCHES = (1, 2, 4, 8, 16, 32)
VPPS = (1, 2, 3, 4, 6, 8)
# The default global batch: a fixed budget of 2^22 (~4.2M) tokens per step, whatever the cluster. GPT-3 175B
# trained at 3.2M tokens (Brown et al. 2020, Table 2.1), Llama 3 405B began at 4M (Dubey et al. 2024, Sec. 3.4.1),
# PaLM 540B at 1M rising to 4M (Chowdhery et al. 2022, Sec. 5). A cluster with more devices than the budget has
# sequences must split the model to use them, as those runs did; --global-batch sets another batch.
DEFAULT_BATCH_TOKENS = 2 ** 22


@dataclass(frozen=True)
class SearchSpace:
    global_batch: int
    seq_len: int
    dtype: str = "bf16"
    max_micro_batch: int = 16
    allow_cross_node_tp: bool = False
    fixed: dict | None = None          # axis or knob -> value, e.g. {"tp": 8}
    software: Software | None = None   # the framework and its choices (None: the device's default framework)
    headroom: float = DEFAULT_HEADROOM
    schedule: str | None = None        # gpipe, zb-h1 or dualpipev, or None: 1F1B, interleaved where vpp > 1
    placements: tuple | None = None    # mesh orders to try (None: data parallel or the pipeline outermost)


TORUS_ORDER = ("tp", "cp", "dp", "pp")  # on a TPU the torus map, not the order, places the axes


def space_order(space: SearchSpace, cluster: Cluster) -> tuple:
    """The mesh orders the search tries: the given ones, else data parallel or the pipeline outermost on
    GPUs; one order on a TPU, whose torus maps (tried in full) place the axes."""
    if space.placements:
        return tuple(space.placements)
    return (TORUS_ORDER,) if cluster.is_torus else (("tp", "cp", "dp", "pp"), ("tp", "cp", "pp", "dp"))


def space_software(space: SearchSpace, cluster: Cluster) -> Software:
    """The software the search assumes: the space's, or the device's default framework."""
    if space.software is not None:
        return space.software
    return default_software(cluster, space.dtype)


def default_global_batch(model: ModelSpec, cluster: Cluster, seq_len: int, multiple: int = 1) -> int:
    """The sequences of ``DEFAULT_BATCH_TOKENS`` tokens (at least one), rounded up to a multiple of ``multiple``
    (the sequences one round of micro-batches takes, when the layout is fixed)."""
    sequences = max(DEFAULT_BATCH_TOKENS // seq_len, 1)
    return int(-(-sequences // multiple) * multiple)


def default_batch_note(batch: int, seq_len: int) -> str:
    """Why a default batch is what it is, for every output that uses it."""
    return (f"default: {batch} x {seq_len} = {batch * seq_len / 1e6:.2f}M tokens, the fixed budget of "
            f"{DEFAULT_BATCH_TOKENS / 1e6:.1f}M tokens per step (--global-batch sets another)")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _tp_modes(tp: int) -> list[int]:
    """1D always; 2D / 3D (codes 1, 2) where tp is a square / cube above 1 (at 1 they are 1D)."""
    return [0] + [code for code, power in ((1, 2), (2, 3)) if tp > 1 and round(tp ** (1 / power)) ** power == tp]


def _keep(arrays: dict, mask) -> dict:
    return {k: v[mask] for k, v in arrays.items()}


def candidates(model: ModelSpec, cluster: Cluster, space: SearchSpace) -> dict[str, np.ndarray]:
    """All layouts that pass the layout rules, as parallel arrays."""
    n, gb, seq = cluster.devices, space.global_batch, space.seq_len
    fixed = space.fixed or {}
    if space.dtype == "fp8" and space.software is not None:
        cluster.hardware.check_fp8_recipe(space.software.fp8_recipe, space.software.framework.fp8.recipes)
    if not model.is_moe and (fixed.get("ep", 1) > 1 or fixed.get("etp", 1) > 1):
        axis = "ep" if fixed.get("ep", 1) > 1 else "etp"
        raise ParplanError(f"{axis}={fixed[axis]} shards experts, but {model.name} is a dense model (no "
                           f"mixture-of-experts layers)")
    tp_max = n if space.allow_cross_node_tp else cluster.fast_domain
    if fixed.get("tp", 1) > tp_max:
        raise ParplanError(f"tp={fixed['tp']} spans more than the {tp_max} devices of one NVLink node or domain; "
                           f"pass --allow-cross-node-tp to search tensor parallel across nodes")
    rows = [(tp, cp, pp, n // (tp * cp * pp), mode, cp_mode)
            for tp in _divisors(n) if tp <= tp_max for mode in _tp_modes(tp)
            for cp in _divisors(n // tp) for cp_mode in ((0, 1) if cp > 1 else (0,))
            for pp in _divisors(n // (tp * cp))]
    base = np.array(rows)
    axes = {"tp": base[:, 0], "cp": base[:, 1], "pp": base[:, 2], "dp": base[:, 3], "tp_mode": base[:, 4],
            "cp_mode": base[:, 5]}
    for k in ("tp", "cp", "pp", "dp"):
        if k in fixed:
            axes = _keep(axes, axes[k] == fixed[k])
    if "tp_mode" in fixed:
        axes = _keep(axes, axes["tp_mode"] == TP_MODES.index(fixed["tp_mode"]))
    if "cp_mode" in fixed:  # a context-parallel scheme for the layouts that split the sequence
        axes = _keep(axes, (axes["cp"] == 1) | (axes["cp_mode"] == CP_SCHEMES.index(fixed["cp_mode"])))
    given = [k for k in ("tp", "cp", "pp", "dp") if k in fixed]
    product = int(np.prod([fixed[k] for k in given])) if given else 1
    if len(given) == 4 and product != n or n % product:
        verb = "does not match" if len(given) == 4 else "does not divide"
        raise ParplanError(f"{'*'.join(given)} = {product} {verb} the {n} devices: "
                           f"tp*cp*pp*dp must equal the device count")
    if len(axes["tp"]) == 0:
        raise ParplanError(f"no layout of {n} devices has {', '.join(f'{k}={v}' for k, v in fixed.items())}")
    # The rules on the mesh shape alone first, so the knobs multiply only shapes that can run.
    shape = SimpleNamespace(tp=axes["tp"], mode=axes["tp_mode"], cp=axes["cp"], pp=axes["pp"], dp=axes["dp"],
                            seq=np.asarray(seq), batch=np.asarray(gb))
    shape_ok = rules.valid(model, shape)
    if not shape_ok.any():
        raise ParplanError(_nothing_passes(model, n, gb, fixed, shape))
    axes = _keep(axes, shape_ok)
    if model.is_moe:
        axes = _expert_axes(model, cluster, axes, fixed)
        if len(axes["tp"]) == 0:
            raise ParplanError(f"no layout of {n} devices has {', '.join(f'{k}={v}' for k, v in fixed.items())} "
                               f"with expert axes that divide its ranks")
    if fixed.get("ici") and not cluster.is_torus:
        raise ParplanError("--ici lays mesh axes over a TPU torus; this cluster has none")
    if cluster.is_torus:  # each shape once per way to lay it over the slices' torus axes
        order = space_order(space, cluster)[0]
        axes = torus_maps.expand(axes, cluster, order, fixed.get("ici"))
        axes = torus_maps.prune(axes, model, cluster, space, space_software(space, cluster), order, CP_SCHEMES)

    mbs = [fixed["micro_batch"]] if "micro_batch" in fixed else [b for b in MICRO_BATCHES if b <= space.max_micro_batch]
    vpps = [fixed["vpp"]] if "vpp" in fixed else list(VPPS)
    if space.schedule in ("gpipe", "zb-h1"):
        vpps = [v for v in vpps if v == 1]
    elif space.schedule == "dualpipev":  # two stages per rank, in a V
        vpps = [v for v in vpps if v == 2]
    # Knobs: micro-batch, recompute, ZeRO stage, sequence parallel, virtual stages, HSDP (shard in one node).
    knob = np.array(list(itertools.product(mbs, range(len(RECOMPUTE)), (0, 1, 2, 3), (0, 1), vpps, (0, 1))))
    ia, ik = np.meshgrid(np.arange(len(axes["tp"])), np.arange(len(knob)), indexing="ij")
    ia, ik = ia.ravel(), ik.ravel()
    c = {a: v[ia] for a, v in axes.items()}
    c.update(micro_batch=knob[ik, 0], recompute=knob[ik, 1], zero=knob[ik, 2], sp=knob[ik, 3].astype(bool),
             vpp=knob[ik, 4], hsdp=knob[ik, 5].astype(bool))
    # HSDP shards over the data-parallel ranks of one node and replicates across nodes (a TPU slice:
    # shards within the slice, replicates across slices over DCN, MaxText's ici_fsdp x dcn_data).
    node_group = np.maximum(cluster.devices_per_node // (c["tp"] * c["cp"]), 1) if not cluster.is_torus \
        else c["dp"] // c[torus_maps.dcn_column("dp")]
    if "shard_group" in fixed:  # HSDP with the given shard group only
        c = _keep(c, c["hsdp"])
        node_group = np.full(len(c["tp"]), fixed["shard_group"])
    c["shard_group"] = np.where(c["hsdp"], node_group, c["dp"])
    for k in ("micro_batch", "zero", "vpp", "sp"):
        if k in fixed:
            c = _keep(c, c[k] == fixed[k])
    if "recompute" in fixed:
        c = _keep(c, c["recompute"] == RECOMPUTE.index(fixed["recompute"]))
    # The search space leaves out candidates that repeat another one ...
    space_ok = ~(c["sp"] & (c["tp"] == 1))                  # sequence parallel at tp=1: plain tp=1
    space_ok &= ~((c["zero"] > 0) & (c["dp"] * c["cp"] == 1))  # ZeRO with nothing to shard over: zero=0
    space_ok &= ~c["hsdp"] | ((c["shard_group"] > 1) & (c["shard_group"] < c["dp"]))  # HSDP of 1 or all of dp
    c = _keep(c, space_ok)
    # The framework decides which ZeRO stages, recompute modes, schedules and parallelisms it runs.
    software = space_software(space, cluster)
    framework = software.framework
    c = _pipeline_knobs(c, model, gb, fixed, framework)
    c = _block_recompute(c, fixed, model.layers)
    knobs = rules.fields(tp=c["tp"], cp=c["cp"], pp=c["pp"], dp=c["dp"], micro_batch=c["micro_batch"], vpp=c["vpp"],
                         sp=c["sp"], tp_mode=c["tp_mode"], zero=c["zero"], shard_group=c["shard_group"],
                         hsdp=c["hsdp"], global_batch=gb, seq=seq,
                         interleaved=(c["vpp"] > 1) & (space.schedule != "dualpipev"),
                         recompute=c["recompute"], cp_ring=c["cp_mode"] == CP_SCHEMES.index("ring"),
                         ep=c.get("ep", 1), etp=c.get("etp", 1), sp_hidden=rules.shards_hidden(framework),
                         first=c["first_stage_layers"], last=c["last_stage_layers"], zb=space.schedule == "zb-h1",
                         dualpipe=space.schedule == "dualpipev",
                         gpipe=space.schedule == "gpipe")
    ok = rules.valid(model, knobs, software)
    if not ok.any():
        raise ParplanError(_nothing_passes(model, n, gb, fixed, knobs, software))
    if "first_stage_layers" not in fixed and "last_stage_layers" not in fixed:
        # An offered split equal to the framework's own, where its own runs, is the same plan as leaving it unset.
        own = resolve_ends(model.layers, c["pp"], c["vpp"], 0, 0, framework.pipeline.split)
        unset = rules.valid(model, SimpleNamespace(**{**vars(knobs), "first": 0 * knobs.first,
                                                       "last": 0 * knobs.last}), software)
        offered = (c["first_stage_layers"] > 0) | (c["last_stage_layers"] > 0)
        ok &= ~(offered & unset & (c["first_stage_layers"] == own[0]) & (c["last_stage_layers"] == own[1]))
    out = _keep(c, ok)
    del out["hsdp"]
    return out


def _expert_axes(model: ModelSpec, cluster: Cluster, axes: dict, fixed: dict) -> dict:
    """Each mesh shape with every expert split an MoE model allows: etp 1 or tp (the two layouts torchtitan
    runs and Megatron-Core's default), ep any divisor of the experts that divides the stage's tp x cp x dp
    ranks left by etp (the expert axes are folded over them, :mod:`parplan.layouts.strategies.expert`)."""
    rows = []
    for i in range(len(axes["tp"])):
        tp = int(axes["tp"][i])
        ranks = tp * int(axes["cp"][i]) * int(axes["dp"][i])
        for etp in sorted({1, tp}):
            if model.expert_width % etp or ranks % etp or ("etp" in fixed and fixed["etp"] != etp):
                continue
            for ep in _divisors(model.experts):
                if (ranks // etp) % ep == 0 and ("ep" not in fixed or fixed["ep"] == ep):
                    rows.append((i, ep, etp))
    idx = np.array([r[0] for r in rows], dtype=int)
    out = {k: v[idx] for k, v in axes.items()}
    out["ep"] = np.array([r[1] for r in rows], dtype=int)
    out["etp"] = np.array([r[2] for r in rows], dtype=int)
    return out


def _block_recompute(c: dict, fixed: dict, model_layers: int) -> dict:
    """``recompute_layers`` for every row: the fixed block (only full recomputes keep it), else 0, every layer
    of a recompute (the search tries blocks beside the full recomputes that fit: :mod:`parplan.plan.search`)."""
    if fixed.get("recompute_layers") is None:
        return {**c, "recompute_layers": np.zeros(len(c["recompute"]), np.int64)}
    block = fixed["recompute_layers"]  # the layouts whose chunks hold the block (check_recompute_layers' limit)
    chunk = largest_chunk_layers(model_layers, c["pp"] * c["vpp"])
    keep = (c["recompute"] == RECOMPUTE.index("full")) & (block <= chunk)
    return {**_keep(c, keep), "recompute_layers": np.full(int(keep.sum()), block)}


def _pipeline_knobs(c: dict, model: ModelSpec, gb: int, fixed: dict, framework) -> dict:
    """The pipeline's own knobs: the first and last stage's layers (0: the framework's split; beside it the
    splits :func:`parplan.layouts.split.end_choices` offers, or the fixed ones), and the micro-batch a
    framework documents under a pipeline where none is fixed (torchtitan's 1, MaxText's one per stage)."""
    pp = c["pp"]
    if "first_stage_layers" in fixed or "last_stage_layers" in fixed:  # on every row: the rules judge them
        given = (fixed.get("first_stage_layers", 0), fixed.get("last_stage_layers", 0))
        ends = {p: [given] for p in set(pp.tolist())}
    else:
        ends = {p: [(0, 0)] + end_choices(model.layers, p) for p in set(pp.tolist())}
    rows = [(i, f, z) for i, p in enumerate(pp.tolist()) for f, z in ends[p]]
    index = np.array([r[0] for r in rows], np.int64)
    c = {k: v[index] for k, v in c.items()}
    c["first_stage_layers"] = np.array([r[1] for r in rows], np.int64)
    c["last_stage_layers"] = np.array([r[2] for r in rows], np.int64)
    pipe = framework.pipeline
    if "micro_batch" not in fixed and (pipe.micro_batch or pipe.micro_batches):
        piped = c["pp"] > 1
        if pipe.micro_batch:
            c = _keep(c, ~piped | (c["micro_batch"] == pipe.micro_batch))
        else:  # one micro-batch per stage: the micro-batch is what a pipeline's share of the batch gives each
            share = gb // np.maximum(c["dp"] * c["pp"], 1)
            c = _keep(c, ~piped | ((c["micro_batch"] == c["micro_batch"].min()) & (share >= 1)))
            c["micro_batch"] = np.where(c["pp"] > 1, np.maximum(gb // np.maximum(c["dp"] * c["pp"], 1), 1),
                                        c["micro_batch"])
    return c


def _nothing_passes(model: ModelSpec, n: int, gb: int, fixed: dict, a, framework=None) -> str:
    """Why no candidate runs: the rule that rejects the most of them, in its words for the first one."""
    broken = [(rule, mask) for rule, mask in rules.violations(model, a, framework) if mask.any()]
    given = ", ".join(f"{k}={v}" for k, v in fixed.items())
    head = (f"no layout of {model.name} on {n} devices with global batch {gb}" + (f" and {given}" if given else "")
            + " passes the layout rules")
    if not broken:
        return head
    rule, mask = max(broken, key=lambda rm: int(rm[1].sum()))
    i = int(np.flatnonzero(np.broadcast_to(mask, mask.shape))[0])
    one = SimpleNamespace(**{k: np.broadcast_to(v, mask.shape).flat[i].item() for k, v in vars(a).items()})
    return f"{head}; {rule.say(model, one)}"
