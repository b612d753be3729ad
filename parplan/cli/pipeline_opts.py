"""The pipeline split's options, shared by estimate, explain and plan."""
from __future__ import annotations

import click


def split_options(fn=None, *, plan: bool = False):
    """``--first-stage-layers`` and ``--last-stage-layers``: the transformer layers of the first and last
    pipeline stage (Megatron-Core's --decoder-first/last-pipeline-num-layers); by default the framework's split."""
    verb = "Fix the" if plan else "The"
    opts = [
        click.option("--first-stage-layers", type=int, default=None,
                     help=f"{verb} transformer layers of the first pipeline stage (default: the framework's split)."),
        click.option("--last-stage-layers", type=int, default=None,
                     help=f"{verb} transformer layers of the last pipeline stage (default: the framework's split)."),
    ]

    def apply(f):
        for opt in reversed(opts):
            f = opt(f)
        return f
    return apply(fn) if fn is not None else apply
