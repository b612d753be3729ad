"""Serving flags for vLLM and SGLang from a serving plan (``plan --mode inference --emit vllm|sglang``).

Flag names: vLLM ``vllm/engine/arg_utils.py`` (EngineArgs.add_cli_args) at vllm-project/vllm 99d7eb5d:
``--tensor-parallel-size``, ``--pipeline-parallel-size``, ``--data-parallel-size``, ``--max-num-seqs``,
``--max-model-len``, ``--kv-cache-dtype`` auto | fp8. SGLang ``python/sglang/srt/server_args.py``
(ServerArgs.add_cli_args) at sgl-project/sglang 469c63e5: ``--tensor-parallel-size`` (alias ``--tp-size``),
``--pipeline-parallel-size``, ``--data-parallel-size``, ``--max-running-requests``, ``--context-length``,
``--kv-cache-dtype`` auto | fp8_e4m3. Expert parallelism of an MoE model: vLLM ``--enable-expert-parallel``
(the experts over the tensor-parallel ranks, and over the data-parallel ones too when there are several),
SGLang ``--expert-parallel-size`` (alias ``--ep-size``).
"""
from __future__ import annotations

import shlex

from ...errors import ParplanError
from ...specs.framework_loader import load_serving
from ...step.serve_layout import ServeLayout
from ...specs.model import ModelSpec

TARGETS = ("vllm", "sglang")
PROFILES = {"vllm": "vllm", "sglang": "sglang"}  # the serving stack (frameworks/*.yaml) each target implies
KV = {"vllm": {"fp8": "fp8"}, "sglang": {"fp8": "fp8_e4m3"}}


def framework_for(target: str, framework: str | None) -> str:
    """The stack ``--emit target`` implies; a different ``--framework`` is refused in one line."""
    if target not in TARGETS:
        raise ParplanError(f"--emit {target} writes a training launch; with --mode inference use "
                           f"{' or '.join(TARGETS)}")
    if framework is not None and load_serving(framework).name != PROFILES[target]:
        raise ParplanError(f"--emit {target} runs the plan on {PROFILES[target]}, not on --framework {framework}")
    return PROFILES[target]


def problem(target: str, layout: ServeLayout, model: ModelSpec) -> str | None:
    kv = layout.kv
    if kv not in ("bf16", "fp16", "fp8"):
        return f"{target} keeps the KV cache in the model dtype or fp8, not {kv}"
    if layout.ep > 1 and layout.replicas > 1:
        return (f"{target}'s expert parallelism spans its data-parallel replicas too; the plan keeps ep={layout.ep} "
                f"inside each of {layout.replicas} replicas: launch one instance per replica")
    if layout.ep > 1 and layout.ep != layout.tp:
        return f"{target} lays the experts over all {layout.tp} tensor-parallel ranks, not ep={layout.ep}"
    return None


def args(target: str, layout: ServeLayout, model: ModelSpec) -> list[str]:
    context = layout.input_len + layout.output_len
    out = ["--tensor-parallel-size", str(layout.tp), "--pipeline-parallel-size", str(layout.pp)]
    if layout.replicas > 1:
        out += ["--data-parallel-size", str(layout.replicas)]
    if target == "vllm":
        out += ["--max-num-seqs", str(layout.batch), "--max-model-len", str(context)]
    else:
        out += ["--max-running-requests", str(layout.batch), "--context-length", str(context)]
    out += ["--kv-cache-dtype", KV[target].get(layout.kv, "auto")]
    if layout.ep > 1:
        out += ["--enable-expert-parallel"] if target == "vllm" else ["--expert-parallel-size", str(layout.ep)]
    return out


def text(target: str, layout: ServeLayout, model: ModelSpec) -> str:
    command = "vllm serve MODEL" if target == "vllm" else "python -m sglang.launch_server --model-path MODEL"
    return command + " " + " ".join(shlex.quote(a) for a in args(target, layout, model))
