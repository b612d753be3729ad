"""How the transformer layers split over the pipeline stages, as each framework does it.

A pipeline of ``p`` ranks has three kinds of rank: the first (it also holds the embedding), the
last (the final norm, the logits and the loss) and the ``p - 2`` in between. A layout names the
layers of the first and last rank (``first_stage_layers``, ``last_stage_layers``) or leaves them to
the framework's default split (``frameworks/*.yaml``, ``pipeline.split``); the middle ranks share
the rest, the busiest holding the rounded-up share.

The framework's defaults, from its source:

* ``even``: Megatron-LM / Megatron-Core split ``L / p`` layers per rank and assert that it divides
  (core_v0.14.0 ``transformer_block.py: get_num_layers_to_build``);
* ``front``: DeepSpeed's ``PipelineModule`` with ``partition_method='type:transformer'`` (Megatron-
  DeepSpeed's default) balances the layer counts and fills the stages from the first, so the busiest
  holds ``ceil(L / p)`` and the last what is left (``deepspeed/runtime/utils.py: partition_balanced``);
* ``spread``: torchtitan gives each of the ``p v`` virtual stages ``(L + 2 w) // (p v)`` layers and one
  more to the first ``(L + 2 w) % (p v)``, the embedding and the head counting as ``w`` layers each
  (v0.2.2 ``pipeline_parallel.py: generate_llm_fqn_per_model_part``, ``*_stage_less_layers = 1``);
* ``middle``: ColossalAI gives the remainder to the virtual stages in the middle
  (``colossalai/pipeline/stage_manager.py: PipelineStageManager.distribute_layers``).

Rank ``r`` holds the virtual stages ``r, r + p, ...`` (Megatron's and torchtitan's looped order).
Every function takes numpy arrays (one entry per candidate) or scalars.
"""
from __future__ import annotations

import numpy as np


def _ints(*xs):
    return tuple(np.asarray(x, np.int64) for x in xs)


def _multiples(lo, hi, offset, p, v):
    """How many k in [0, v) have lo <= k p + offset < hi."""
    first = np.maximum(-((offset - lo) // p), 0)           # ceil((lo - offset) / p), at least 0
    last = np.minimum((hi - 1 - offset) // p, v - 1)         # floor((hi - 1 - offset) / p), at most v - 1
    return np.maximum(last - first + 1, 0)


def spread_ends(layers, pp, vpp, first_weight, last_weight):
    """torchtitan's split: ``L + a + b`` effective layers (the embedding counting ``a``, the head ``b``) over
    ``p v`` virtual stages, the first ``(L + a + b) % (p v)`` one more; rank 0 holds stages ``0, p, ...`` and
    rank ``p - 1`` stages ``p - 1, 2p - 1, ...``. Returns (first, last) rank's transformer layers."""
    L, p, v = _ints(layers, pp, vpp)
    stages = p * v
    total = L + first_weight + last_weight
    q, r = total // stages, total % stages
    return v * q + -(-r // p) - first_weight, v * q + r // p - last_weight


def default_ends(layers, pp, vpp, split):
    """(first, last): the layers of the first and last rank under the framework's default split
    (``split``: a :class:`parplan.specs.framework.PipelineSplit`); 0 where there is no pipeline.

    ``even`` rounds down where ``L / p`` is not whole; the layout rules refuse that split."""
    L, p, v = _ints(layers, pp, vpp)
    p1 = np.maximum(p, 1)
    if split.default == "front":
        n = -(-L // p1)
        first, last = n, np.maximum(L - (p1 - 1) * n, 0)
    elif split.default == "spread":
        first, last = spread_ends(L, p1, v, split.ends_weight, split.ends_weight)
    elif split.default == "middle":
        stages = p1 * v
        q, r = L // stages, L % stages
        start = stages // 2 - r // 2
        first = v * q + _multiples(start, start + r, 0, p1, v)
        last = v * q + _multiples(start, start + r, p1 - 1, p1, v)
    else:
        first = last = L // p1
    none = p <= 1
    return np.where(none, 0, first), np.where(none, 0, last)


def resolve_ends(layers, pp, vpp, first, last, split):
    """The first and last rank's layers with the unset ones (0) filled in: both unset, the framework's
    default; one set, the other end takes a middle rank's share of the rest (rounded up for the first,
    down for the last, as the extra layers sit at the front)."""
    L, p, F, Z = _ints(layers, pp, first, last)
    dF, dZ = default_ends(L, p, vpp, split)
    rest = np.maximum(p - 1, 1)
    F2 = np.where(F > 0, F, np.where(Z > 0, -(-(L - Z) // rest), dF))
    Z2 = np.where(Z > 0, Z, np.where(F > 0, (L - F) // rest, dZ))
    none = p <= 1
    return np.where(none, 0, F2), np.where(none, 0, Z2)


def middle_layers(layers, pp, first, last):
    """(busiest, least) layers of a middle rank (0 where a pipeline has no middle: p <= 2)."""
    L, p, F, Z = _ints(layers, pp, first, last)
    k = np.maximum(p - 2, 1)
    rest = L - F - Z
    mid = p > 2
    return np.where(mid, -(-rest // k), 0), np.where(mid, rest // k, 0)


def stage_layers(layers, pp, first, last):
    """Layers on the rank that holds the most (every layer where there is no pipeline)."""
    L, p, F, Z = _ints(layers, pp, first, last)
    busiest, _ = middle_layers(L, p, F, Z)
    return np.where(p <= 1, L, np.maximum(np.maximum(F, Z), busiest))


def _as_layers(L, p, v, F, Z, chunks_equal):
    """The ends hold one layer less where the embedding (or the head) counts as one: some e, l in {0, 1}
    with (L + e + l) = p n, F = n - e, Z = n - l (Megatron-Core --account-for-embedding/loss-in-pipeline-split,
    DeepSpeed 'type:transformer|embedding'); interleaved, n splits into v equal chunks."""
    ok = np.zeros(np.broadcast(L, p, v, F, Z).shape, bool)
    p1 = np.maximum(p, 1)
    for e in (0, 1):
        for l_ in (0, 1):
            total = L + e + l_
            n = total // p1
            hit = (total % p1 == 0) & (F == n - e) & (Z == n - l_)
            if chunks_equal:
                hit &= n % v == 0
            ok |= hit
    return ok


def expressible(layers, pp, vpp, first, last, split):
    """Whether the framework can run the split with these first and last ranks (set explicitly)."""
    L, p, v, F, Z = _ints(layers, pp, vpp, first, last)
    k = np.maximum(p - 2, 1)
    rest = L - F - Z
    even_middle = (p <= 2) | (rest % k == 0)
    equal = split.chunks == "equal"
    ok = np.zeros(np.broadcast(L, p, v, F, Z).shape, bool)
    dF, dZ = default_ends(L, p, v, split)
    ok |= (F == dF) & (Z == dZ) & default_valid(L, p, v, split)
    if "counts" in split.ends:
        counts = (F >= 1) & (Z >= 1)
        if split.default == "even":
            counts &= even_middle
        if equal:
            counts &= (F % v == 0) & (Z % v == 0) & ((p <= 2) | ((rest // k) % v == 0))
        ok |= counts
    if "as-layers" in split.ends:
        ok |= _as_layers(L, p, v, F, Z, equal) & even_middle
    if "layout" in split.ends:  # a layout string: any layers per chunk, each chunk of the ends with one
        ok |= (F >= v) & (Z >= v) & even_middle
    return ok


def default_valid(layers, pp, vpp, split):
    """Whether the framework's default split runs: Megatron's ``even`` needs ``p`` (and, interleaved with
    equal chunks, ``p v``) to divide the layers."""
    L, p, v = _ints(layers, pp, vpp)
    if split.default != "even":
        return np.ones(np.broadcast(L, p, v).shape, bool)
    p1 = np.maximum(p, 1)
    ok = L % p1 == 0
    if split.chunks == "equal":
        ok &= L % (p1 * v) == 0
    return ok


def end_choices(layers: int, pp: int) -> list[tuple[int, int]]:
    """Splits worth searching beside the default: the ends lighter than the middle by what the middle's
    rounded-up share leaves them (the middle at ceil(L/p) and one more), and one layer less on each end
    (the embedding and head counted as layers). The layout rules keep those the framework can run."""
    L, p = int(layers), int(pp)
    if p < 2:
        return []
    out = []
    if p == 2:
        out.append((L // 2 + 1, L - L // 2 - 1))
    else:
        top = -(-L // p)
        for n in (top, top + 1):
            r = L - (p - 2) * n
            f = -(-r // 2)
            if 1 <= r - f <= f <= n:
                out.append((f, r - f))
        if (L + 2) % p == 0:
            out.append(((L + 2) // p - 1, (L + 2) // p - 1))
    return [c for c in dict.fromkeys(out) if c[0] >= 1 and c[1] >= 1]


def suggest_ends(layers: int, pp: int, vpp: int, split) -> tuple[int, int] | None:
    """A split of the ends the framework can run, the busiest rank holding as few layers as possible
    (then the ends as even as they go, the first the heavier)."""
    L, p, v = int(layers), int(pp), int(vpp)
    if p < 2 or L < 2:
        return None
    f, z = (a.ravel() for a in np.meshgrid(np.arange(1, L), np.arange(1, L), indexing="ij"))
    ok = expressible(L, p, v, f, z, split)
    ok &= (f + z == L) if p == 2 else (middle_layers(L, p, f, z)[1] >= v)
    if not ok.any():
        return None
    f, z = f[ok], z[ok]
    order = np.lexsort((-f, -np.minimum(f, z), stage_layers(L, p, f, z)))
    return int(f[order[0]]), int(z[order[0]])


def with_ends(layout, layers: int, split):
    """The layout with its first and last rank's layers as the framework runs them (arrays allowed): the
    given ones, the rest from the framework's split; 0 without a pipeline."""
    from dataclasses import replace

    given = [0 if x is None else x for x in (layout.first_stage_layers, layout.last_stage_layers)]
    first, last = resolve_ends(layers, layout.pp, layout.vpp, *given, split)
    if np.ndim(first) == 0:
        first, last = int(first), int(last)
    return replace(layout, first_stage_layers=first, last_stage_layers=last)


# ---- the layout rules' view: candidate fields ``a`` (parplan.layouts.rules.fields), sentences that say what works


def _candidate_ends(m, a, split):
    """The first and last stage layers of candidate fields ``a`` (0: the split's own)."""
    return resolve_ends(m.layers, a.pp, a.vpp, a.first, a.last, split)


def candidates_expressible(m, a, split):
    """Whether each candidate's split is one ``split`` can express (the layout rules ask it)."""
    first, last = _candidate_ends(m, a, split)
    return expressible(m.layers, a.pp, a.vpp, first, last, split)


def middle_least(m, a, split):
    """The fewest layers a middle stage of each candidate holds."""
    return middle_layers(m.layers, a.pp, *_candidate_ends(m, a, split))[1]


def _suggestion(split, m, a) -> str:
    """A split that would work, as the flags that give it."""
    ends = suggest_ends(m.layers, a.pp, a.vpp, split) if split.ends else None
    return f"; e.g. --first-stage-layers {ends[0]} --last-stage-layers {ends[1]}" if ends else ""


def say_even(n, split, m, a):
    """Why framework ``n`` cannot run a non-divisible split without the ends set."""
    need = f"pp={a.pp}" if m.layers % a.pp else f"pp*vpp = {a.pp * a.vpp} (vpp={a.vpp} equal chunks)"
    ends = _suggestion(split, m, a)
    how = f"; give the first and last stage's layers instead{ends[1:].replace(' e.g.', ', e.g.')}" if ends else ""
    return f"{n} needs {need} to divide the {m.layers} layers of {m.name}{how}"


def say_split(n, split, m, a):
    """Why framework ``n`` cannot run a candidate's first/last split."""
    first, last = (int(x) for x in _candidate_ends(m, a, split))
    ways = {"counts": "any first/last counts" + (" with the middle stages even" if split.default == "even" else ""),
            "as-layers": "the ends one layer short (the embedding and head counted as layers)",
            "layout": "any layers per chunk with a layer in each chunk of the ends and the middle stages even"}
    can = " or ".join(ways[e] for e in split.ends) or "only its own split"
    chunks = f", each rank's layers in {a.vpp} equal chunks" if a.vpp > 1 and split.chunks == "equal" else ""
    return (f"{n} cannot split the {m.layers} layers of {m.name} as first {first}, last {last} over pp={a.pp} "
            f"(it runs {can}{chunks}){_suggestion(split, m, a)}")


def _v_ranks(layers: int, pp: int) -> tuple[int, int, int, int]:
    base, extra = divmod(layers + 2, 2 * pp)
    sizes = [base + (s < extra) for s in range(2 * pp)]
    sizes[0] -= 1   # the embedding, weighted as one layer
    sizes[-1] -= 1  # the final norm and output, as one layer
    ranks = [sizes[r] + sizes[2 * pp - 1 - r] for r in range(pp)]
    middle = ranks[1:-1] or [0]
    return ranks[0], max(middle), ranks[-1], sum(ranks[1:-1])


def v_rank_layers(layers: int, pp):
    """(first, busiest middle, last, all middle) ranks' layers under DualPipeV's V: torchtitan's default split
    of ``2p`` stages, the embedding and the head weighted as one layer each (v0.2.2
    ``torchtitan/distributed/pipeline_parallel.py``: generate_llm_fqn_per_model_part), rank ``r`` holding
    stages ``r`` and ``2p - 1 - r``. Llama 3 8B over 4 ranks: 7, 9, 8, 8."""
    out = np.vectorize(lambda p: _v_ranks(layers, int(p)) if p > 1 else (layers, 0, layers, 0),
                       otypes=[int] * 4)(np.asarray(pp))
    return tuple(o[()] if np.ndim(o) == 0 else o for o in out)

