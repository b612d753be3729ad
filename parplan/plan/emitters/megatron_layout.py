"""Megatron-Core's ``--pipeline-model-parallel-layout``: the layers of every virtual pipeline stage as a string.

Megatron-Core 0.13+ (``megatron/core/transformer/pipeline_parallel_layer_layout.py``) reads one stage per
``|``-separated field, in virtual-stage order (chunk-major: stage ``c pp + r`` is rank ``r``'s chunk
``c``), each field a run of ``E`` (the embedding), ``t`` (a transformer layer), ``m`` (an MTP layer) and
``L`` (the loss), with ``(...)*N`` repeating a group: DeepSeek-V3's recipe gives ``Et|(tt|)*30mL``. It
lets each chunk hold any number of layers, which the first/last-stage counts cannot say under
interleaving (their chunks must be equal).
"""
from __future__ import annotations

import re

from ...errors import ParplanError

_REPEAT = re.compile(r"\(([^()]*)\)\*(\d+)")
MAX_CHARS = 1_000_000  # a layout of a million stages and layers is no real model's


def chunk_layers(layers: int, chunks: int, first: bool) -> list[int]:
    """A rank's layers over its chunks as evenly as they go; the first rank's extra layers on its later
    chunks (its first chunk holds the embedding), any other rank's on its earlier ones."""
    base, extra = divmod(layers, chunks)
    return [base + (c >= chunks - extra if first else c < extra) for c in range(chunks)]


def layout_string(rank_layers: list[int], vpp: int, mtp_layers: int = 0) -> str:
    """The layout string of ranks holding ``rank_layers`` transformer layers each, in ``vpp`` chunks; the
    multi-token-prediction modules, if any, before the loss."""
    pp = len(rank_layers)
    per = [chunk_layers(n, vpp, r == 0) for r, n in enumerate(rank_layers)]
    stages = []
    for c in range(vpp):
        for r in range(pp):
            field = "t" * per[r][c]
            if c == 0 and r == 0:
                field = "E" + field
            if c == vpp - 1 and r == pp - 1:
                field += "m" * mtp_layers + "L"
            stages.append(field)
    return "|".join(stages)


def parse_layout(text: str, pp: int) -> tuple[list[int], int]:
    """(transformer layers per rank, chunks per rank) of a layout string over ``pp`` ranks."""
    s = str(text).replace(" ", "")

    def repeat(mt):
        if len(mt.group(1)) * int(mt.group(2)) + len(s) > MAX_CHARS:
            raise ParplanError(f"--pipeline-model-parallel-layout {text!r} spells out more than {MAX_CHARS} stages "
                               f"and layers")
        return mt.group(1) * int(mt.group(2))
    for _ in range(100):  # expand the innermost repeats until none is left
        s, n = _REPEAT.subn(repeat, s)
        if not n:
            break
    if not re.fullmatch(r"[EtmL|]*", s):
        raise ParplanError(f"--pipeline-model-parallel-layout {text!r}: only E, t, m, L, | and (...)*N are read")
    stages = s.split("|")
    if len(stages) % pp:
        raise ParplanError(f"--pipeline-model-parallel-layout {text!r} has {len(stages)} stages, not a multiple "
                           f"of the pipeline size {pp}")
    vpp = len(stages) // pp
    ranks = [sum(stages[c * pp + r].count("t") for c in range(vpp)) for r in range(pp)]
    return ranks, vpp
