"""What a bench run measures: its configuration, the rank groups, and the ordered list of items.

Every rank builds the same plan from the same configuration, so the ranks agree on the
order of collectives without talking. Sizes follow nccl-tests: ``size_bytes`` is the whole
buffer (the all-gather output, the reduce-scatter input), rounded down to a whole number of
elements per rank.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from ..calibrate.rows import STEP_MODE, step_mode, step_sharded
from ..cost.collectives import OPS
from ..errors import ParplanError
from ..units import GIB, format_bytes

SUITES = ("collectives", "matmul", "copy", "layer", "step")
DEFAULT_SUITES = ("collectives", "matmul", "copy")
DEFAULT_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "send_recv")
DTYPES = ("fp32", "bf16", "fp16")
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
LAYOUTS = ("contiguous", "strided")
CONCURRENCY = ("all", "one")
MAX_BYTES = 64 * GIB
CPU_MAX_BYTES = 64 * 1024 * 1024  # the default largest buffer on a CPU (gloo): 1 GiB there takes over 10 minutes
MAX_ITERS = 100_000
MAX_DIM = 1 << 20
THIN_M = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_STEP_MODES = {True: ("eager", "compiled", "compiled-fp8-tensorwise"), False: ("eager",)}

_OP_ALIASES = {
    "allreduce": "all_reduce", "allgather": "all_gather", "reducescatter": "reduce_scatter",
    "alltoall": "all_to_all", "all2all": "all_to_all", "bcast": "broadcast",
    "sendrecv": "send_recv", "p2p": "send_recv",
}


# --------------------------------------------------------------------------- parsing helpers


def _split(text: str | Sequence[str] | None) -> list[str]:
    if text is None:
        return []
    items = [text] if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        out.extend(p.strip() for p in str(item).split(",") if p.strip())
    return out


def _choose(names: list[str], allowed: Sequence[str], what: str, key=str.lower) -> list[str]:
    """The named choices, normalised by ``key``, in order and without repeats; an unknown one is an error."""
    out: list[str] = []
    for name in names:
        k = key(name)
        if k not in allowed:
            raise ParplanError(f"unknown {what} '{name}'; choose from {', '.join(allowed)}")
        if k not in out:
            out.append(k)
    return out


def _op_key(name: str) -> str:
    key = name.lower().replace("-", "_")
    return _OP_ALIASES.get(key.replace("_", ""), key)


def parse_ops(text: str | Sequence[str] | None) -> tuple[str, ...]:
    names = _split(text)
    if not names or names == ["all"]:
        return DEFAULT_OPS
    return tuple(_choose(names, OPS, "collective", _op_key))


def parse_suites(text: str | Sequence[str] | None, with_model: bool) -> tuple[str, ...]:
    names = _split(text)
    if not names:
        return DEFAULT_SUITES + (("layer",) if with_model else ())
    if names == ["all"]:
        return SUITES if with_model else DEFAULT_SUITES
    out = _choose(names, SUITES, "suite (or all)")
    for suite in ("layer", "step"):
        if suite in out and not with_model:
            raise ParplanError(f"the {suite} suite needs --model NAME (a model name or YAML file)")
    return tuple(s for s in SUITES if s in out)


def parse_groups(text: str | Sequence[str] | None) -> tuple[int, ...]:
    """Group sizes to measure; ``()`` means automatic (the world and every power of two dividing it).

    ``world`` stands for the whole world and is written as 0.
    """
    names = _split(text)
    if not names or names == ["auto"]:
        return ()
    sizes: list[int] = []
    for name in names:
        if name.lower() == "world":
            value = 0
        else:
            try:
                value = int(name)
            except ValueError:
                raise ParplanError(f"--groups: expected group sizes such as 2,4,8 or 'world', got {name!r}") from None
            if value < 1 or value > MAX_DIM:
                raise ParplanError(f"--groups: group size must be between 1 and {MAX_DIM}, got {value}")
        if value not in sizes:
            sizes.append(value)
    return tuple(sizes)


def parse_layouts(text: str | None) -> tuple[str, ...]:
    key = (text or "both").lower()
    if key == "both":
        return LAYOUTS
    if key in LAYOUTS:
        return (key,)
    raise ParplanError(f"--layout must be contiguous, strided or both; got {text!r}")


def parse_concurrency(text: str | None) -> tuple[str, ...]:
    """Sub-groups at once: ``all`` (every group of a partition), ``one`` (the first alone) or ``both``."""
    key = (text or "all").lower()
    if key == "both":
        return CONCURRENCY
    if key in CONCURRENCY:
        return (key,)
    raise ParplanError(f"--concurrency must be all, one or both; got {text!r}")


def parse_dtypes(text: str | Sequence[str] | None, what: str) -> tuple[str, ...]:
    names = _split(text)
    if not names or names == ["auto"]:
        return ()
    return tuple(_choose(names, DTYPES, f"{what} dtype"))


def parse_step_modes(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Whole-step variants: ``eager``, ``compiled``, either with ``-fp8-tensorwise`` or ``-fp8-rowwise``, and
    any of them with ``-fsdp`` (FSDP2 on one rank too).

    ``()`` means the device's default (eager, compiled and compiled FP8 per tensor on a GPU; eager on a CPU).
    """
    names = _split(text)
    if not names or names == ["auto"]:
        return ()
    out: list[str] = []
    for name in names:
        key = name.lower()
        if not STEP_MODE.match(key):
            raise ParplanError(f"--step-modes: unknown mode {name!r}; choose from eager, compiled, "
                               f"eager-fp8-tensorwise, compiled-fp8-tensorwise, compiled-fp8-rowwise, eager-fsdp, ...")
        if key not in out:
            out.append(key)
    return tuple(out)


def parse_shapes(text: str | Sequence[str] | None) -> tuple[tuple[int, int, int], ...]:
    """Matmul shapes ``MxKxN`` (an ``m x k`` times a ``k x n`` matrix), comma separated."""
    shapes: list[tuple[int, int, int]] = []
    for item in _split(text):
        parts = item.lower().split("x")
        try:
            m, k, n = (int(p) for p in parts)
        except ValueError:
            raise ParplanError(f"--shapes: expected MxKxN such as 4096x4096x4096, got {item!r}") from None
        if min(m, k, n) < 1 or max(m, k, n) > MAX_DIM:
            raise ParplanError(f"--shapes: dimensions must be between 1 and {MAX_DIM}, got {item!r}")
        shapes.append((m, k, n))
    return tuple(shapes)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class BenchConfig:
    """Everything one run measures; identical on every rank.

    Fields left empty (``()``, ``0`` or ``""``) take a device-dependent default once the worker
    knows whether it runs on a GPU (see :func:`resolve`).
    """

    suites: tuple[str, ...] = DEFAULT_SUITES
    ops: tuple[str, ...] = DEFAULT_OPS
    min_bytes: int = 8
    max_bytes: int = 0  # 0: CPU_MAX_BYTES on a CPU, GIB on a GPU (see resolve)
    factor: int = 2
    dtype: str = "fp32"
    groups: tuple[int, ...] = ()
    layouts: tuple[str, ...] = LAYOUTS
    concurrency: tuple[str, ...] = ("all",)
    iters: int = 20
    warmup: int = 5
    timeout_s: float = 300.0
    matmul_dtypes: tuple[str, ...] = ()
    shapes: tuple[tuple[int, int, int], ...] = ()
    matmul_min: int = 0
    matmul_max: int = 0
    models: tuple[str, ...] = ()
    micro_batch: int = 1
    seq: int = 0
    layer_dtype: str = ""
    step_modes: tuple[str, ...] = ()
    micro_batches: int = 1
    device: str = "auto"
    backend: str = "auto"
    out_dir: str = ""

    def __post_init__(self) -> None:
        if self.min_bytes < 1 or self.max_bytes > MAX_BYTES or self.max_bytes < 0:
            raise ParplanError("sizes must be between 1 B and 64 GiB")
        if self.max_bytes and self.max_bytes < self.min_bytes:
            raise ParplanError(f"--max-bytes ({format_bytes(self.max_bytes)}) is below "
                               f"--min-bytes ({format_bytes(self.min_bytes)})")
        if not 2 <= self.factor <= 1024:
            raise ParplanError(f"--factor must be an integer between 2 and 1024, got {self.factor}")
        if self.dtype not in DTYPES:
            raise ParplanError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not 1 <= self.iters <= MAX_ITERS:
            raise ParplanError(f"--iters must be between 1 and {MAX_ITERS}, got {self.iters}")
        if not 0 <= self.warmup <= MAX_ITERS:
            raise ParplanError(f"--warmup must be between 0 and {MAX_ITERS}, got {self.warmup}")
        if not 1.0 <= self.timeout_s <= 86400.0:
            raise ParplanError(f"--timeout must be between 1 and 86400 seconds, got {self.timeout_s:g}")
        if self.matmul_min < 0 or self.matmul_max < 0 or self.matmul_max > MAX_DIM:
            raise ParplanError(f"--matmul-min/--matmul-max must be between 1 and {MAX_DIM}")
        if self.matmul_min and self.matmul_max and self.matmul_max < self.matmul_min:
            raise ParplanError(f"--matmul-max ({self.matmul_max}) is below --matmul-min ({self.matmul_min})")
        if not 1 <= self.micro_batch <= 1_000_000:
            raise ParplanError(f"--micro-batch must be between 1 and 1000000, got {self.micro_batch}")
        if not 0 <= self.seq <= 10_000_000:
            raise ParplanError(f"--seq must be between 1 and 10000000, got {self.seq}")
        if not 1 <= self.micro_batches <= 10_000:
            raise ParplanError(f"--micro-batches must be between 1 and 10000, got {self.micro_batches}")
        if self.layer_dtype and self.layer_dtype not in DTYPES:
            raise ParplanError(f"--layer-dtype must be one of {', '.join(DTYPES)}, got {self.layer_dtype!r}")
        if self.device not in ("auto", "cuda", "cpu"):
            raise ParplanError(f"--device must be auto, cuda or cpu, got {self.device!r}")
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ParplanError(f"--backend must be auto, nccl or gloo, got {self.backend!r}")
        if self.backend == "nccl" and self.device == "cpu":
            raise ParplanError("the nccl backend needs GPUs; use --backend gloo with --device cpu")
        for suite in ("layer", "step"):
            if suite in self.suites and not self.models:
                raise ParplanError(f"the {suite} suite needs --model NAME (a model name or YAML file)")

    def to_argv(self) -> list[str]:
        """The worker command line (``python -m parplan.bench ...``) that rebuilds this configuration."""
        argv = [
            "--suite", ",".join(self.suites), "--ops", ",".join(self.ops),
            "--min-bytes", str(self.min_bytes), "--max-bytes", str(self.max_bytes or "auto"),
            "--factor", str(self.factor), "--dtype", self.dtype,
            "--groups", ",".join("world" if g == 0 else str(g) for g in self.groups) or "auto",
            "--layout", "both" if len(self.layouts) == 2 else self.layouts[0],
            "--concurrency", "both" if len(self.concurrency) == 2 else self.concurrency[0],
            "--iters", str(self.iters), "--warmup", str(self.warmup),
            "--timeout", repr(float(self.timeout_s)),
            "--matmul-dtypes", ",".join(self.matmul_dtypes) or "auto",
            "--micro-batch", str(self.micro_batch), "--micro-batches", str(self.micro_batches),
            "--step-modes", ",".join(self.step_modes) or "auto",
            "--device", self.device, "--backend", self.backend,
        ]
        if self.shapes:
            argv += ["--shapes", ",".join(f"{m}x{k}x{n}" for m, k, n in self.shapes)]
        if self.matmul_min:
            argv += ["--matmul-min", str(self.matmul_min)]
        if self.matmul_max:
            argv += ["--matmul-max", str(self.matmul_max)]
        for model in self.models:
            argv += ["--model", model]
        if self.seq:
            argv += ["--seq", str(self.seq)]
        if self.layer_dtype:
            argv += ["--layer-dtype", self.layer_dtype]
        if self.out_dir:
            argv += ["-o", self.out_dir]
        return argv


def resolve(config: BenchConfig, on_gpu: bool) -> BenchConfig:
    """Fill the device-dependent defaults: the largest buffer, matmul dtypes and sizes, the layer dtype.

    A CPU sweep stops at :data:`CPU_MAX_BYTES` so that the default run ends in about a minute on two
    cores. A default bound never contradicts the other one given explicitly.
    """
    lo, hi = (256, 16384) if on_gpu else (64, 512)
    matmul_min = config.matmul_min or min(lo, config.matmul_max or lo)
    matmul_max = config.matmul_max or max(hi, matmul_min)
    return replace(
        config,
        max_bytes=config.max_bytes or max(GIB if on_gpu else CPU_MAX_BYTES, config.min_bytes),
        matmul_dtypes=config.matmul_dtypes or (("bf16", "fp16", "fp32") if on_gpu else ("fp32",)),
        matmul_min=matmul_min,
        matmul_max=matmul_max,
        layer_dtype=config.layer_dtype or ("bf16" if on_gpu else "fp32"),
        step_modes=config.step_modes or DEFAULT_STEP_MODES[on_gpu],
    )


def check_bench_model(spec) -> None:
    """Refuse a model spec the bench's PyTorch model cannot run as the spec says (one line, the reason)."""
    if spec.mla:
        raise ParplanError(f"{spec.name}: the bench has no multi-head latent attention layer, and would time "
                           "it as standard attention; pick a model without kv_lora_rank")


# --------------------------------------------------------------------------- groups


# --------------------------------------------------------------------------- the plan


__all__ = ["BenchConfig", "check_bench_model", "parse_concurrency", "parse_dtypes", "parse_groups", "parse_layouts",
           "parse_ops", "parse_shapes", "parse_step_modes", "parse_suites", "resolve", "step_mode", "step_sharded"]
