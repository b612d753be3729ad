"""A framework's ``host`` times (parplan.cost.host) from a host-time run of scripts/gpu_torch_host.py or
scripts/gpu_megatron_host.py.

Each row's issue time is the host's: until the call returns, a closing sync left out. At the run's smallest
token count the GPU's share of it (the wait at an MoE forward's read of the tokens per expert) is small, and
the backward has no read at all, so its issue time stays the host's even where its kernels run longer
(the plain-PyTorch loop's backward zero-fills the whole expert weight gradient once per expert):

* ``layer_s``: the dense layer (``layer-eager``, or ``layer-compiled`` with ``--compiled``, whose MoE terms
  stay the eager blocks'; for Megatron ``dense-qwen3-30b-attn``, the MoE rows' attention with a dense MLP);
* ``moe_s``: the MoE rows at no local experts (Theil-Sen intercept over 4-64 experts; the 4-expert rows route
  top-4, the rest top-8) less the dense MLP they replace (plain PyTorch: the ``mlp`` row; Megatron: the
  dense layer's);
* ``expert_s``: the MoE rows' cost per local expert (Theil-Sen slope) where experts launch one by one
  (``moe-loop``; Megatron's ``SequentialMLP``).

Each is (forward, backward) seconds, printed as the YAML the framework profile takes.

    python3 scripts/host_times.py reports/host/h100-2026-12-06/torch_host.csv [--compiled]
    python3 scripts/host_times.py reports/host/h100-2026-12-06/megatron_host.csv
"""
from __future__ import annotations

import argparse
import statistics

import pandas as pd

DIRECTIONS = ("fwd_issue_s", "bwd_issue_s")


def theil_sen(x, y) -> tuple[float, float]:
    """(intercept, slope): the median of the pairwise slopes, and the median intercept at that slope."""
    pairs = [(y[j] - y[i]) / (x[j] - x[i]) for i in range(len(x)) for j in range(i + 1, len(x)) if x[j] != x[i]]
    slope = statistics.median(pairs)
    return statistics.median(b - slope * a for a, b in zip(x, y)), slope


def host_times(rows: pd.DataFrame, compiled: bool = False) -> dict[str, tuple[float, float]]:
    """``{layer_s, moe_s, expert_s}`` from one run's rows (module docstring)."""
    small = rows[rows.tokens == rows.tokens.min()]
    megatron = "shape" in small.columns
    key = "shape" if megatron else "block"

    def pick(name):
        r = small[small[key] == name]
        if r.empty:
            raise SystemExit(f"no '{name}' row at {small.tokens.min()} tokens")
        return r

    if megatron:
        layer = pick("dense-qwen3-30b-attn")
        grouped = loop = small[small[key].str.startswith("moe-")]
        mlp = None
    else:
        layer = pick("layer-compiled" if compiled else "layer-eager")
        grouped, loop, mlp = pick("moe-grouped"), pick("moe-loop"), pick("mlp")
    out = {"layer_s": [], "moe_s": [], "expert_s": []}
    for d in DIRECTIONS:
        base = float(layer[d].iloc[0])
        at_zero, _ = theil_sen(list(grouped.local_experts), list(grouped[d]))
        _, per_expert = theil_sen(list(loop.local_experts), list(loop[d]))
        replaced = base if megatron else float(mlp[d].iloc[0])
        out["layer_s"].append(base)
        out["moe_s"].append(max(at_zero - replaced, 0.0))
        out["expert_s"].append(max(per_expert, 0.0))
    return {k: tuple(v) for k, v in out.items()}


def yaml_text(times) -> str:
    pair = lambda v: "[" + ", ".join(f"{x:.2e}" for x in v) + "]"  # noqa: E731
    return "{" + ", ".join(f"{k}: {pair(v)}" for k, v in times.items()) + "}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv")
    p.add_argument("--compiled", action="store_true", help="the compiled layer's times (plain PyTorch runs)")
    a = p.parse_args(argv)
    print(yaml_text(host_times(pd.read_csv(a.csv), a.compiled)))


if __name__ == "__main__":
    main()
