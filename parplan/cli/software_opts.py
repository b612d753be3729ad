"""The software options every training command shares: the framework and the choices made within it."""
from __future__ import annotations

import click

from ..specs.framework import (DEFAULT_FRAMEWORK, FP8_RECIPES, MOE_DISPATCHERS, MOE_OVERLAPS, OPTIMIZER_STATES,
                               Software, resolve_software)
from ..specs.framework_loader import framework_names, load_framework, serving_names
from ..specs.serving_stack import DEFAULT_SERVING
from ..specs.tp_overlap import TP_OVERLAPS

SOFTWARE_DEFAULTS = {"framework": None, "compiled": None, "fp8_recipe": None, "flash_attention": None,
                     "fused_kernels": None, "moe_overlap": None, "optimizer_states": None, "moe_dispatcher": None,
                     "tp_overlap": None, "fp8_params": None, "offload_layers": None}


def software_options(fn):
    """``--framework``, ``--compile/--no-compile``, ``--fp8-recipe`` and the kernel overrides."""
    opts = [
        click.option("--framework", default=None,
                     help=f"Software that runs it: {', '.join(framework_names())}, or a framework YAML "
                          f"(default: {DEFAULT_FRAMEWORK['gpu']} on GPUs, {DEFAULT_FRAMEWORK['tpu']} on TPUs); with "
                          f"--mode inference the serving stack: {', '.join(serving_names())} (default: "
                          f"{DEFAULT_SERVING['gpu']} on GPUs, {DEFAULT_SERVING['tpu']} on TPUs)."),
        click.option("--compile/--no-compile", "compiled", default=None,
                     help="torch.compile (frameworks that offer it; default: the framework's)."),
        click.option("--fp8-recipe", type=click.Choice(FP8_RECIPES), default=None,
                     help="FP8 scaling with --dtype fp8 (default: the framework's)."),
        click.option("--fp8-params/--no-fp8-params", "fp8_params", default=None,
                     help="With --dtype fp8: keep the weights in FP8 (with their transposes) instead of 16 bits and "
                          "gather them in FP8 (Megatron-Core --fp8-param-gather, Transformer Engine's FP8 primary "
                          "weights; needs the distributed optimizer or FSDP), where the framework offers it."),
        click.option("--offload-layers", type=click.IntRange(min=1), default=None,
                     help="Keep the saved activations of N layers of each pipeline rank in host memory between "
                          "their forward and backward (Megatron-Core --cpu-offloading-num-layers; MaxText's custom "
                          "remat policy offloading decoder_layer_input under full remat, or the projections under "
                          "minimal), where the framework offers it; the copies run over the hardware's host_link "
                          "beside the compute."),
        click.option("--flash-attention/--no-flash-attention", default=None,
                     help="Fused attention on or off (default: the framework's)."),
        click.option("--fused-kernels/--no-fused-kernels", default=None,
                     help="Every element-wise op fused, or every one eager (default: as the framework runs them; "
                          "training and inference)."),
        click.option("--tp-overlap", type=click.Choice(TP_OVERLAPS), default=None,
                     help="Sequence-parallel TP: collective-matmul runs each all-gather and reduce-scatter in tp "
                          "steps under the GEMM it feeds or follows (Megatron-Core --tp-comm-overlap, Transformer "
                          "Engine's userbuffers; torchtitan's async TP; XLA's windowed einsum), where the "
                          "framework offers it; none runs them before and after (default: the framework's)."),
        click.option("--moe-overlap", type=click.Choice(MOE_OVERLAPS), default=None,
                     help="MoE training: what the token all-to-alls run under: nothing, the shared experts, or "
                          "another micro-batch's compute (Megatron-Core --overlap-moe-expert-parallel-comm; default: "
                          "the framework's)."),
        click.option("--moe-dispatcher", type=click.Choice(MOE_DISPATCHERS), default=None,
                     help="MoE training: alltoall (every token copy all-to-all'd, then sorted by local expert) or "
                          "deepep (each token sent once per rank and node holding its experts: Megatron-Core "
                          "--moe-token-dispatcher-type flex --moe-enable-deepep), where the framework offers it "
                          "(default: the framework's)."),
        click.option("--optimizer-states", type=click.Choice(OPTIMIZER_STATES), default=None,
                     help="Precision of Adam's master copy, momentum and variance: fp32 (4 bytes each), bf16 (2 "
                          "each; NeMo's distributed_fused_adam dtype: bf16) or bf16-moments (fp32 master, bf16 "
                          "moments; Megatron-Core --use-precision-aware-optimizer), where the framework offers it "
                          "(default: the framework's)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def pop_software(kw: dict) -> dict:
    """Take the software options out of a command's keyword arguments."""
    return {k: kw.pop(k, None) for k in SOFTWARE_DEFAULTS}


def software_from(options: dict, cluster, dtype: str) -> Software:
    """The run's Software: the named framework (or the device's default) with the given choices."""
    name = options.get("framework") or DEFAULT_FRAMEWORK.get(cluster.hardware.kind, DEFAULT_FRAMEWORK["gpu"])
    return resolve_software(load_framework(name), dtype=dtype, compiled=options.get("compiled"),
                            fp8_recipe=options.get("fp8_recipe"), flash_attention=options.get("flash_attention"),
                            fused_kernels=options.get("fused_kernels"), device_kind=cluster.hardware.kind,
                            moe_overlap=options.get("moe_overlap"), optimizer_states=options.get("optimizer_states"),
                            moe_dispatcher=options.get("moe_dispatcher"), tp_overlap=options.get("tp_overlap"),
                            fp8_params=options.get("fp8_params"), offload_layers=options.get("offload_layers"))
