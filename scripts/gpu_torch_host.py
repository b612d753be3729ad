"""Host time of a plain-PyTorch training layer, eager and compiled: the ``host`` of frameworks/pytorch.yaml.

Each block runs forward and backward at 128 tokens, where its kernels are too short for the GPU to set the
pace, so the wall time is the host's (``scripts/gpu_megatron_host.py`` says how each column is timed):

* ``layer``: ``parplan.bench.layer.DecoderLayer`` (pre-norm attention and SwiGLU MLP, fused QKV), eager
  and under ``torch.compile``;
* ``mlp``: its MLP alone (what an MoE block replaces);
* ``moe-grouped``: ``scripts/gpu_moe.MoeLayer`` (router, top-k, sort permute, the host's read of the tokens
  per expert, ``torch._grouped_mm`` experts, weighted unpermute), at 4-64 local experts: one launch for all;
* ``moe-loop``: the same with one GEMM per expert (``launch="loop"``), at 4-64 local experts.

The same blocks at 4096 tokens show the GPU taking over. bf16 weights and activations.

    PYTHONPATH=. python3 scripts/gpu_torch_host.py OUT_DIR
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import torch

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_moe  # noqa: E402
from gpu_common import host_and_wall, launch_counts  # noqa: E402
from parplan.bench.layer import DecoderLayer  # noqa: E402
from parplan.specs.model_loader import load_model  # noqa: E402

MODEL = "qwen3-30b-a3b"         # hidden 2048, 32 heads of 128, 4 KV heads, experts of width 768, top-8
DENSE_FFN = 6144
EXPERTS = (4, 16, 32, 64)
TOKENS = (128, 4096)


class Mlp(torch.nn.Module):
    def __init__(self, layer: DecoderLayer):
        super().__init__()
        self.up, self.down = layer.up, layer.down

    def forward(self, x):
        gate, up = self.up(x).chunk(2, dim=-1)
        return self.down(torch.nn.functional.silu(gate) * up)


def blocks(spec, dense_spec):
    dev, dt = torch.device("cuda"), torch.bfloat16
    yield "layer-eager", 0, lambda: DecoderLayer(dense_spec).to(dev, dt), True
    yield "layer-compiled", 0, lambda: torch.compile(DecoderLayer(dense_spec).to(dev, dt)), True
    yield "mlp", 0, lambda: Mlp(DecoderLayer(dense_spec).to(dev, dt)), False
    for e in EXPERTS:
        k = min(spec.top_k, e)
        yield "moe-grouped", e, lambda e=e, k=k: gpu_moe.MoeLayer(spec.hidden, spec.expert_ffn, e, k, 0, dev, dt,
                                                                        launch="grouped"), False
        yield "moe-loop", e, lambda e=e, k=k: gpu_moe.MoeLayer(spec.hidden, spec.expert_ffn, e, k, 0, dev, dt,
                                                                     launch="loop"), False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--reps", type=int, default=20)
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    spec = load_model(MODEL)
    dense_spec = replace(spec, ffn_hidden=DENSE_FFN, experts=0, top_k=0, expert_ffn=0)
    path = os.path.join(a.out, "torch_host.csv")
    rows = []
    for name, experts, make, batched in blocks(spec, dense_spec):
        for tokens in TOKENS:
            try:
                block = make()
                shape = (1, tokens, spec.hidden) if batched else (tokens, spec.hidden)
                x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                grad = torch.randn_like(x)
                times = host_and_wall(lambda: block(x), grad, a.reps)
                kernels, syncs = launch_counts(lambda: torch.autograd.backward(block(x), grad))
                row = dict(block=name, tokens=tokens, local_experts=experts, **times, kernels=kernels, syncs=syncs,
                           reps=a.reps)
                print(row, flush=True)
                rows.append(row)
            except Exception as exc:  # keep the rows already measured; say what failed
                print(f"FAILED {name} {experts} {tokens}: {type(exc).__name__}: {exc}", flush=True)
            torch.cuda.empty_cache()
            gpu_moe.write(path, rows)
    with open(os.path.join(a.out, "device.txt"), "w") as fh:
        fh.write(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}\n")


if __name__ == "__main__":
    main()
