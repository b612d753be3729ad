"""The per-rank measurement loop, run under ``torchrun`` (``python -m parplan.bench``).

Every rank joins the process group (NCCL on GPUs, gloo on CPUs), builds the same plan and
walks it; after each item the per-iteration times are reduced to the slowest rank (MAX) and
the wrong-element counts summed, and rank 0 appends the row to the results. Without torchrun's
environment the worker runs alone as a world of one.
"""
from __future__ import annotations

import datetime as _dt
import importlib.util
import os
import platform
import socket
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist

from ..cost.collectives import algbw, busbw
from ..cost.flops import layer_forward_flops
from ..errors import ParplanError
from ..specs.model_loader import load_model
from ..specs.model import with_seq_len
from . import layer as layer_mod
from .moe import expert_launch
from .measure import TORCH_DTYPES, collective_case, copy_case, matmul_case, synchronize, time_iterations
from .writer import ResultWriter, default_out_dir, finish, write_meta
from ..calibrate.rows import Row, timing_fields
from .state import EXIT_ERROR, EXIT_FAULT, STATE_DIR_ENV, Watchdog
from .config import BenchConfig, check_bench_model, resolve, step_mode, step_sharded
from .items import Fault, Item, build_plan

PROGRESS_ENV = "PARPLAN_BENCH_PROGRESS"
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")


class Progress:
    """Progress on stderr (rank 0): a tqdm bar with the time left on a terminal; for the launcher
    (which draws the bar) a line per item; in a log a line every 5 %."""

    def __init__(self, total: int, stream=None):
        self.total = max(1, total)
        self.stream = stream or sys.stderr
        self.every = os.environ.get(PROGRESS_ENV) == "every"  # the launcher redraws each line
        self.tty = self.stream.isatty() and not self.every
        self._last_pct = -1
        self._last_time = 0.0
        self._bar = None
        if self.tty:
            from ..views.progress import progress

            self._bar = progress("bench", self.total, unit="item", stream=self.stream)
            self._update = self._bar.__enter__()

    def update(self, done: int, label: str) -> None:
        pct = 100 * done // self.total
        now = time.monotonic()
        if self._bar is not None:
            self._update(done, note=label[:40])
            if done >= self.total:
                self.close()
            return
        elif (self.every or pct // 5 != self._last_pct // 5 or done >= self.total
              or now - self._last_time > 10):
            self.stream.write(f"[bench] {done}/{self.total} ({pct}%) {label}\n")
            self._last_pct, self._last_time = pct, now
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


class Context:
    """The process group and devices of this rank."""

    def __init__(self, config: BenchConfig):
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        if want_cuda and not torch.cuda.is_available():
            raise ParplanError("--device cuda, but no CUDA GPU is visible to PyTorch")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if want_cuda and local_world > torch.cuda.device_count():
            raise ParplanError(f"{local_world} ranks on this host but only {torch.cuda.device_count()} GPU(s) "
                               f"visible; use fewer processes or --device cpu")
        self.device = torch.device("cuda", self.local_rank % torch.cuda.device_count()) if want_cuda \
            else torch.device("cpu")
        if want_cuda:
            torch.cuda.set_device(self.device)
        self.backend = config.backend if config.backend != "auto" else ("nccl" if want_cuda else "gloo")
        if self.backend == "nccl" and not want_cuda:
            raise ParplanError("the nccl backend needs CUDA GPUs; use --backend gloo")
        if self.backend == "nccl" and not dist.is_nccl_available():
            raise ParplanError("this PyTorch build has no NCCL; use --backend gloo")
        self.comm_device = self.device if self.backend == "nccl" else torch.device("cpu")
        timeout = _dt.timedelta(seconds=config.timeout_s + 30)
        if {"RANK", "WORLD_SIZE", "MASTER_ADDR"} <= os.environ.keys():
            dist.init_process_group(self.backend, timeout=timeout)
        else:
            dist.init_process_group(self.backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        hosts: list = [None] * self.world
        dist.all_gather_object(hosts, socket.gethostname())
        self.hosts = [str(h) for h in hosts]
        self.host = self.hosts[0]
        self.local_world = self.hosts.count(self.hosts[0])
        self.nodes = len(set(self.hosts))
        self.device_name = torch.cuda.get_device_name(self.device) if want_cuda else \
            (platform.processor() or platform.machine() or "cpu")

    def barrier(self) -> None:
        flag = torch.ones(1, device=self.comm_device)
        dist.all_reduce(flag)
        synchronize(self.comm_device)

    def reduce_times(self, times: list[float], wrong: int) -> tuple[list[float], int]:
        """Per iteration the slowest rank's time; the wrong elements summed over ranks."""
        t = torch.tensor(times, dtype=torch.float64, device=self.comm_device)
        w = torch.tensor([wrong], dtype=torch.int64, device=self.comm_device)
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            dist.all_reduce(w, op=dist.ReduceOp.SUM)
        return t.cpu().tolist(), int(w.item())


class Runner:
    def __init__(self, config: BenchConfig, ctx: Context):
        self.config = config
        self.ctx = ctx
        self.groups: dict[str, object] = {}

    def create_groups(self, plan: tuple[Item, ...]) -> None:
        """Every group of every layout, created by every rank in the same order; a layout with the same
        members as another (``contig4-alone``, ``contig4``) shares its groups."""
        handles: dict[tuple[int, ...], object] = {}
        for item in plan:
            layout = item.layout
            if layout is None or layout.name in self.groups:
                continue
            mine = None
            for members in layout.members:
                if members not in handles:
                    handles[members] = dist.group.WORLD if len(members) == self.ctx.world \
                        else dist.new_group(list(members))
                if self.ctx.rank in members:
                    mine = handles[members]
            self.groups[layout.name] = mine

    def base(self, item: Item, device: torch.device) -> dict:
        ctx = self.ctx
        return dict(kind=item.kind, op=item.op, dtype=item.dtype, world_size=ctx.world,
                    local_world_size=ctx.local_world, nodes=ctx.nodes, backend=ctx.backend,
                    device=device.type, device_name=ctx.device_name, host=ctx.host,
                    iters=self.config.iters, warmup=self.config.warmup,
                    timestamp=_dt.datetime.now().astimezone().isoformat(timespec="seconds"))

    def measure(self, item: Item, shift: int = 0) -> list[Row]:
        """Rows for one item; ``shift`` perturbs this rank's collective input (a deliberate corruption)."""
        cfg, ctx = self.config, self.ctx
        if item.kind == "collective":
            group = self.groups[item.layout.name]
            if item.layout.runs(ctx.rank):
                case = collective_case(item, ctx.rank, group, ctx.comm_device, shift)
                case.reset()
                before = (lambda: dist.barrier(group=group)) if ctx.comm_device.type == "cpu" else ctx.barrier
                times = time_iterations(case.run, cfg.iters, cfg.warmup, ctx.comm_device, before)
                case.reset()
                case.run()
                synchronize(ctx.comm_device)
                times, wrong = ctx.reduce_times(times, case.check())
            else:  # a rank outside the one group that runs alone: it joins only the world's barrier
                if ctx.comm_device.type != "cpu":
                    ctx.barrier()
                times, wrong = ctx.reduce_times([0.0] * cfg.iters, 0)
            timing = timing_fields(times)
            layout = item.layout
            return [Row(**self.base(item, ctx.comm_device), size_bytes=item.size_bytes, count=item.count,
                        group=layout.name, group_size=layout.size, group_stride=layout.stride,
                        group_count=layout.active, group_nodes=layout.nodes, group_class=layout.group_class,
                        **timing, algbw_bytes_per_s=algbw(item.size_bytes, timing["time_s"]),
                        busbw_bytes_per_s=busbw(item.op, layout.size, item.size_bytes, timing["time_s"]),
                        wrong=wrong, correct=wrong == 0)]
        if item.kind in ("matmul", "copy"):
            case = matmul_case(item, ctx.device) if item.kind == "matmul" else copy_case(item, ctx.device)
            case.reset()
            times = time_iterations(case.run, cfg.iters, cfg.warmup, ctx.device)
            case.reset()
            case.run()
            synchronize(ctx.device)
            times, wrong = ctx.reduce_times(times, case.check())
            timing = timing_fields(times)
            fields = dict(self.base(item, ctx.device), **timing, wrong=wrong, correct=wrong == 0)
            if item.kind == "matmul":
                m, k, n = item.shape
                flops = 2.0 * m * k * n
                return [Row(**fields, m=m, k=k, n=n, flops=flops, flops_per_s=flops / timing["time_s"],
                            shape=f"{m}x{k}x{n}")]
            moved = 2 * item.size_bytes
            return [Row(**fields, size_bytes=item.size_bytes, count=item.count, bytes_moved=moved,
                        bandwidth_bytes_per_s=moved / timing["time_s"])]
        if item.kind == "step":
            return self.measure_step(item)
        return self.measure_layer(item)

    def measure_step(self, item: Item) -> list[Row]:
        """One whole training step of a model (``bench/step.py``): FSDP2 over the ranks when there are several
        (or on one, in a ``-fsdp`` mode).

        A mode this machine cannot run (FP8 without torchao or without a GPU) or a step that runs out
        of memory is skipped with a one-line note on rank 0; the run goes on.
        """
        from .step import time_step

        cfg, ctx = self.config, self.ctx
        compiled, fp8 = step_mode(item.op)
        spec = load_model(item.model)
        seq = cfg.seq or spec.seq_len
        skip = ""
        if fp8 and ctx.device.type != "cuda":
            skip = "FP8 steps need a GPU"
        elif fp8 and importlib.util.find_spec("torchao") is None:
            skip = "FP8 steps need torchao (pip install torchao)"
        result = None
        if not skip:
            try:
                result = time_step(spec, seq, cfg.micro_batch, ctx.device, micro_batches=cfg.micro_batches,
                                   compile=compiled, fp8=fp8, iters=cfg.iters, warmup=cfg.warmup,
                                   sharded=step_sharded(item.op, ctx.world),
                                   barrier=ctx.barrier if ctx.world > 1 else None)
            except torch.cuda.OutOfMemoryError:
                skip = "out of memory"
            finally:
                if ctx.device.type == "cuda":
                    torch.cuda.empty_cache()
        if skip:
            if ctx.rank == 0:
                sys.stdout.write(f"[bench] skipped {item.label}: {skip}\n")
                sys.stdout.flush()
            return []
        times, wrong = ctx.reduce_times(list(result.step_times_s), 0)
        timing = timing_fields(times)
        shape = f"b={cfg.micro_batch} s={seq} m={cfg.micro_batches} layers={spec.layers} h={spec.hidden}"
        return [Row(**self.base(item, ctx.device), model=item.model, shape=shape, **timing,
                    forward_s=result.forward_s, backward_s=result.backward_s, optimizer_s=result.optimizer_s,
                    peak_memory_bytes=result.peak_memory_bytes, params=result.params, attention=result.attention,
                    wrong=wrong, correct=wrong == 0)]

    def measure_layer(self, item: Item) -> list[Row]:
        cfg, ctx = self.config, self.ctx
        spec = load_model(item.model)
        seq = cfg.seq or spec.seq_len
        spec = with_seq_len(spec, seq)
        fwd, bwd, bad = layer_mod.time_layer(spec, cfg.micro_batch, seq, TORCH_DTYPES[item.dtype],
                                             ctx.device, cfg.iters, cfg.warmup)
        flops = layer_forward_flops(spec, cfg.micro_batch, seq)
        shape = layer_mod.shape_text(spec, cfg.micro_batch, seq, item.dtype,
                                     expert_launch(ctx.device, TORCH_DTYPES[item.dtype]))
        from .step import sdpa_kernel   # the attention kernel SDPA chose, which compare prices the layer with

        attention = sdpa_kernel(spec, seq, cfg.micro_batch, ctx.device, TORCH_DTYPES[item.dtype])
        rows = []
        for op, times, work in (("forward", fwd, flops), ("backward", bwd, 2 * flops)):
            times, wrong = ctx.reduce_times(times, bad)
            timing = timing_fields(times)
            rows.append(Row(**dict(self.base(item, ctx.device), op=op), model=spec.name, shape=shape,
                            flops=work, flops_per_s=work / timing["time_s"], **timing, attention=attention,
                            wrong=wrong, correct=wrong == 0))
        return rows


def _inject(fault: Fault | None, rank: int, index: int, watchdog: Watchdog) -> int:
    """Act out a deliberate failure (exit or hang); returns the value shift for ``corrupt``."""
    if fault is None or fault.rank != rank or fault.item != index:
        return 0
    if fault.mode == "exit":
        sys.stderr.flush()
        os._exit(EXIT_FAULT)
    if fault.mode == "hang":
        watchdog.idle()  # hung outside any collective: the peers' watchdogs must notice
        while True:
            time.sleep(3600)
    return 1


def run_worker(config: BenchConfig) -> int:
    """Measure every item of the plan on this rank; rank 0 writes the rows. Returns the exit code."""
    rank = int(os.environ.get("RANK", "0"))
    state_dir = os.environ.get(STATE_DIR_ENV) or None
    if state_dir:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
    watchdog = Watchdog(rank, config.timeout_s, Path(state_dir) if state_dir else None)
    watchdog.begin("start-up (joining the process group)")
    writer = None
    out_dir = None
    meta: dict = {}
    rows: list[Row] = []
    progress = None
    try:
        fault = Fault.from_env()
        ctx = Context(config)
        rank = ctx.rank
        watchdog.rank = rank
        config = resolve(config, ctx.device.type == "cuda")
        for name in config.models:
            check_bench_model(load_model(name))
        plan = build_plan(config, ctx.world, ctx.hosts)
        watchdog.begin("creating the process groups")
        runner = Runner(config, ctx)
        runner.create_groups(plan)
        if rank == 0:
            out_dir = Path(config.out_dir) if config.out_dir else default_out_dir(ctx.host)
            writer = ResultWriter(out_dir)
            meta = dict(status="running", host=ctx.host, hosts=sorted(set(ctx.hosts)), world_size=ctx.world,
                        local_world_size=ctx.local_world, backend=ctx.backend, device=ctx.device.type,
                        device_name=ctx.device_name, torch=torch.__version__, cuda=torch.version.cuda,
                        allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32),
                        nccl_env={k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")},
                        started=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                        config=asdict(replace(config, out_dir=str(out_dir))), items=len(plan))
            write_meta(out_dir, meta)
            sys.stdout.write(f"[bench] {len(plan)} measurements on {ctx.world} rank(s), {ctx.backend} on "
                             f"{ctx.device_name}; writing {out_dir}\n")
            sys.stdout.flush()
        progress = Progress(len(plan)) if rank == 0 else None
        for index, item in enumerate(plan):
            watchdog.begin(item.description)
            new = runner.measure(item, shift=_inject(fault, rank, index, watchdog))
            if writer is not None:
                for row in new:
                    writer.write(row)
                rows.extend(new)
            watchdog.idle()
            if progress is not None:
                progress.update(index + 1, item.label)
        watchdog.begin("finishing")
        if rank == 0 and out_dir is not None:
            _finish(out_dir, rows, meta)
        watchdog.done()
        dist.destroy_process_group()
        return 0
    except ParplanError as exc:
        message = f"rank {rank}: {exc}"
    except KeyboardInterrupt:
        message = f"rank {rank}: interrupted during {watchdog.label}"
    except Exception as exc:  # a collective that failed: a dead peer, a timeout, out of memory
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        message = f"rank {rank}: {watchdog.label} failed: {first}"
    watchdog.fail(message)
    if progress is not None:
        progress.close()
    if writer is not None:
        writer.close()
        for note in finish(out_dir, rows, meta, "failed", message):  # plots of the rows it finished
            sys.stdout.write(f"[bench] {note}\n")
    sys.stdout.flush()
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    os._exit(EXIT_ERROR)


def _finish(out_dir: Path, rows: list[Row], meta: dict) -> None:
    for note in finish(out_dir, rows, meta):
        sys.stdout.write(f"[bench] {note}\n")
    sys.stdout.flush()
