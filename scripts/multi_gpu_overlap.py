"""FSDP's collectives beside a layer's compute, across the GPUs of one host, against parplan's overlap model.

Run under torchrun, one process per GPU (gloo on CPUs for a small check):

    torchrun --nproc-per-node 8 scripts/multi_gpu_overlap.py --model llama3.1-8b --tokens 512,2048,8192 --out DIR
    torchrun --nproc-per-node 2 scripts/multi_gpu_overlap.py --device cpu --tiny --out DIR

For each token count, on every rank at once, as FSDP over all ranks runs a layer:

* forward: the layer's forward (training mode, one device's full layer) beside the all-gather of one
  layer's bf16 weights (the next layer's prefetch);
* backward: the layer's backward beside the all-gather of one layer's weights and the reduce-scatter
  of one layer's gradients (the sizes parplan gives those calls, ``scripts/multi_gpu_predict.py``).

Each is timed three ways (CUDA events, the calls queued behind a GPU sleep so the host's launches
do not set the pace): the compute alone (W), the collectives alone (L), and both started together,
the collectives on NCCL's stream as FSDP2 issues them (T, and W', when the compute ended). Then
exposed = T - W, hidden = L - exposed, and the compute's stretch W'/W - 1. parplan predicts
exposed = max(L - W, L s / (1 + s)) with s the profile's measured slowdown of that op mix beside the
SMs an NVLink collective holds (``parplan.cost.contention``), and the compute beside it
W + min(L s / (1 + s), W s). Rank 0 writes ``overlap.csv``: one row per phase, token count and
``--hw`` profile, with parplan's prediction from its own W and L, and from the measured ones
(which tests the overlap formula alone).
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parplan.specs.model import model_from_dict, with_seq_len  # noqa: E402
from parplan.specs.model_loader import load_model  # noqa: E402
from multi_gpu_layers import TINY, _all_gather, _reduce_scatter, layer_forward, layer_weights  # noqa: E402
from gpu_common import init_distributed  # noqa: E402
from multi_gpu_predict import fsdp_traffic, overlap_exposed_s  # noqa: E402

# A GPU sleep queued ahead of each timed repeat, long enough (about 4 ms at 2 GHz) for the host to
# launch the compute and the collectives before the GPU reaches them.
QUEUE_CYCLES = 8_000_000


class Clock:
    """Marks on the compute stream: CUDA events on a GPU, wall-clock on a CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, a, b) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return a.elapsed_time(b) / 1e3
        return b - a


def measure(compute, collectives, clock: Clock, reps: int, warmup: int) -> dict:
    """Median W (compute alone), L (collectives alone), T (both, from their common start to the last end)
    and W' (the compute's end in that run), each repeat starting together on every rank."""

    def once(with_compute: bool, with_comm: bool):
        dist.barrier()
        if clock.cuda:
            torch.cuda.synchronize()
            torch.cuda._sleep(QUEUE_CYCLES)
        start = clock.mark()
        works = collectives() if with_comm else []
        if with_compute:
            compute()
        compute_end = clock.mark()
        for w in works:
            w.wait()
        end = clock.mark()
        return clock.seconds(start, compute_end), clock.seconds(start, end)

    out = {}
    for key, flags in (("compute", (True, False)), ("comm", (False, True)), ("both", (True, True))):
        for _ in range(warmup):
            once(*flags)
        runs = [once(*flags) for _ in range(reps)]
        out[key] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
    return dict(compute_s=out["compute"][0], comm_s=out["comm"][1], both_s=out["both"][1],
                compute_overlapped_s=out["both"][0])


def implied_slowdown(w: float, w2: float, link: float, both: float) -> float:
    """The slowdown s the measured times imply under parplan's model: where the compute ended well before
    the collectives (W' < T), it ran slowed all along, W' = W (1 + s); where it ended last, it was slowed
    while they ran, W' = W + L s / (1 + s)."""
    stretch = max(0.0, w2 - w)
    if both - w2 > 0.02 * both or stretch >= link:
        return w2 / w - 1
    return stretch / (link - stretch)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama3.1-8b")
    ap.add_argument("--tiny", action="store_true", help="a 64-wide toy layer (CPU checks)")
    ap.add_argument("--tokens", default="512,1024,2048,4096,8192", help="tokens of the layer's micro-batch")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--hw", action="append", default=None, help="profile or cluster file to predict with; repeatable")
    ap.add_argument("--framework", default=None, help="parplan framework profile to predict with [the planner's]")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()

    rank, world, device, cuda = init_distributed(args.device)
    dtype = torch.bfloat16 if cuda else torch.float32
    dname = "bf16" if cuda else "fp32"
    base = model_from_dict(TINY, "tiny") if args.tiny else load_model(args.model)
    if args.hw:
        profiles = args.hw
    else:
        from gpu_common import profile_for
        profiles = [profile_for(torch.cuda.get_device_name())] if cuda else ["h100-sxm"]
    clock = Clock(cuda)
    wts = {k: v.requires_grad_(True) for k, v in layer_weights(base, dtype, device).items()}
    rows = []
    for tokens in (int(t) for t in args.tokens.split(",")):
        model = with_seq_len(base, tokens)
        predicted = {hw: fsdp_traffic(hw, model, world, tokens, dname, args.framework) for hw in profiles}
        sizes = predicted[profiles[0]]
        # The calls' buffers, in the weights' bf16 (the sizes parplan charges): the all-gather's output and
        # the reduce-scatter's input are one layer's worth, each rank's shard 1/world of it.
        ag_out = torch.empty(int(sizes["allgather_bytes"]) // 2 // world * world, dtype=torch.bfloat16, device=device)
        ag_in = torch.ones(ag_out.numel() // world, dtype=torch.bfloat16, device=device)
        rs_in = torch.ones(int(sizes["reduce_scatter_bytes"]) // 2 // world * world, dtype=torch.bfloat16,
                           device=device)
        rs_out = torch.empty(rs_in.numel() // world, dtype=torch.bfloat16, device=device)
        if not cuda:  # gloo reduces no bf16
            ag_out, ag_in, rs_in, rs_out = (t.float() for t in (ag_out, ag_in, rs_in, rs_out))
        g = torch.Generator(device="cpu").manual_seed(tokens)
        x = torch.randn(1, tokens, base.hidden, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
        dy = torch.randn(1, tokens, base.hidden, generator=g).to(device=device, dtype=dtype)
        y = layer_forward(x, wts, model, model.heads, model.kv_heads)
        inputs = [x, *wts.values()]

        def forward():
            layer_forward(x, wts, model, model.heads, model.kv_heads)

        def backward():
            torch.autograd.grad(y, inputs, dy, retain_graph=True)

        def gather():
            return [_all_gather(ag_out, ag_in, async_op=True)]

        def gather_and_reduce():
            return [_all_gather(ag_out, ag_in, async_op=True), _reduce_scatter(rs_out, rs_in, async_op=True)]

        for phase, compute, comm in (("forward", forward, gather), ("backward", backward, gather_and_reduce)):
            m = measure(compute, comm, clock, args.reps, args.warmup)
            w, link, both, w2 = m["compute_s"], m["comm_s"], m["both_s"], m["compute_overlapped_s"]
            exposed = both - w
            side = "fwd" if phase == "forward" else "bwd"
            for hw in profiles:
                p = predicted[hw]
                s = p[f"slowdown_{side}"]
                pw, pl = p[f"window_{side}_s"], p[f"link_{side}_s"]
                rows.append(dict(
                    phase=phase, tokens=tokens, ranks=world, model=base.name, dtype=dname,
                    allgather_bytes=int(ag_out.numel() * ag_out.element_size()),
                    reduce_scatter_bytes=int(rs_in.numel() * rs_in.element_size()) if side == "bwd" else 0,
                    measured_compute_s=w, measured_comm_s=link, measured_both_s=both,
                    measured_compute_overlapped_s=w2, measured_exposed_s=exposed,
                    measured_hidden_s=max(0.0, link - exposed), measured_compute_stretch=w2 / w - 1,
                    measured_implied_slowdown=implied_slowdown(w, w2, link, both),
                    profile=os.path.basename(hw), predicted_compute_s=pw, predicted_comm_s=pl,
                    predicted_slowdown=s, predicted_exposed_s=overlap_exposed_s(pl, pw, s),
                    predicted_compute_overlapped_s=pw + min(pl * s / (1 + s), pw * s),
                    model_exposed_on_measured_s=overlap_exposed_s(link, w, s)))
            if rank == 0:
                print(f"{phase:<8} {tokens:>6} tokens: W {w * 1e3:7.3f} ms  L {link * 1e3:7.3f} ms  "
                      f"T {both * 1e3:7.3f} ms  exposed {exposed * 1e3:7.3f} ms  compute +{100 * (w2 / w - 1):.1f}%",
                      flush=True)
        del y, ag_out, ag_in, rs_in, rs_out
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "overlap.csv")
        with open(path + ".part", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        os.replace(path + ".part", path)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # gloo's background threads can abort the interpreter's teardown
