"""What the GPU check scripts share: CUDA-event timing and the profile that matches a GPU."""
from __future__ import annotations

import csv
import os
import statistics

import torch


def timed(fn, reps: int = 20, warmup: int = 3, batch: int = 1, before=None, sleep_cycles: int = 0) -> float:
    """Median over ``reps`` of the mean seconds of ``batch`` back-to-back calls of ``fn``.

    With ``batch`` > 1 the GPU stays busy and at its working clocks, as in training; a sync
    after every call would let it idle between kernels. ``before`` runs ahead of each repeat
    (a barrier); ``sleep_cycles`` queues a GPU sleep ahead of each repeat's calls, so that the
    CPU launches them all before the GPU reaches them and the events time the GPU alone.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if before is not None:
            torch.cuda.synchronize()
            before()
        if sleep_cycles:
            torch.cuda._sleep(sleep_cycles)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(batch):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / batch)
    return statistics.median(times)


def queued_median(fn, reps: int, batch: int, stream) -> float:
    """Median over ``reps`` of the mean seconds of ``batch`` calls of ``fn``, all queued on ``stream`` before
    one sync: the timing of a kernel beside work already queued on another stream, which a sync per repeat
    would let drain."""
    events = []
    with torch.cuda.stream(stream):
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(batch):
                fn()
            b.record()
            events.append((a, b))
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) / 1e3 / batch for a, b in events)


def host_and_wall(forward, grad, reps: int = 20, warmup: int = 3) -> dict[str, float]:
    """Medians of a forward and of its backward (``grad`` fed to its output), each timed twice: to the
    call's return (the host's issue time, any sync inside included) and to a closing synchronize (wall)."""
    import time
    for _ in range(warmup):
        torch.autograd.backward(forward(), grad)
    torch.cuda.synchronize()
    times = {k: [] for k in ("fwd_wall_s", "bwd_wall_s", "fwd_issue_s", "bwd_issue_s")}
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = forward()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        torch.autograd.backward(out, grad)
        t3 = time.perf_counter()
        torch.cuda.synchronize()
        t4 = time.perf_counter()
        for k, v in zip(times, (t2 - t0, t4 - t2, t1 - t0, t3 - t2)):
            times[k].append(v)
    return {k: statistics.median(v) for k, v in times.items()}


def launch_counts(step) -> tuple[int, int]:
    """(kernel launches, host syncs) the host issues in one call of ``step`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    torch.cuda.synchronize()
    kernels = syncs = 0
    for e in prof.key_averages():
        if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"):
            kernels += e.count
        elif e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"):
            syncs += e.count
    return kernels, syncs


def profile_for(gpu_name: str) -> str:
    """The shipped parplan profile of a GPU, from its CUDA device name."""
    name = gpu_name.upper()
    if "H200" in name:
        return "h200"
    if "H100" in name and "PCIE" in name:
        return "h100-pcie"
    return "h100-sxm"


def gpu_profile(hw_arg: str | None = None):
    """The profile named by ``--hw`` (a name or a YAML file), else the shipped one of this GPU; says which."""
    from parplan.specs.hardware import load_hardware

    gpu = torch.cuda.get_device_name()
    hw = load_hardware(hw_arg or profile_for(gpu))
    print(f"{gpu}: predicting with profile {hw.name}", flush=True)
    return hw


class Table:
    """Rows appended to a CSV as they are measured, so a run that dies keeps what it finished."""

    def __init__(self, path: str, fields: list[str]):
        self.path, self.fields = path, fields
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(fields)

    def add(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.fields])
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def init_distributed(device_arg: str):
    """(rank, world, device, cuda) of this torchrun worker: NCCL on its LOCAL_RANK GPU, gloo on CPUs."""
    import torch.distributed as dist

    cuda = device_arg == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device, cuda
