"""What several test modules share: the repository root, a captured nccl-tests log, bench rows of a
known machine, and running the bench commands in-process."""
from __future__ import annotations

from pathlib import Path


from parplan.cost.roofline import k_efficiency, wave_utilization

from parplan.cli.bench_cmd import main
from parplan.calibrate.rows import Row, with_rates
from parplan.bench.items import sizes
from parplan.cost.collectives import bus_factor
from parplan.specs.hardware import load_hardware

REPO = Path(__file__).resolve().parents[1]


# A realistic nccl-tests capture: an 8-GPU all_gather_perf on one node, then a 16-GPU
# all_reduce_perf over two nodes, with launcher and NCCL noise around the tables.
NCCL_TESTS_LOG = """\
NCCL INFO Bootstrap : Using eth0:10.0.0.11<0>
# nccl-tests version 2.13.9 nccl-headers=21903 nccl-library=21903
# Collective test starting: all_gather_perf
# nThread 1 nGpus 1 minBytes 1024 maxBytes 1073741824 step: 2(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0
#
# Using devices
#  Rank  0 Group  0 Pid  40211 on  dgx-a01 device  0 [0x18] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid  40212 on  dgx-a01 device  1 [0x2a] NVIDIA H100 80GB HBM3
#  Rank  2 Group  0 Pid  40213 on  dgx-a01 device  2 [0x3a] NVIDIA H100 80GB HBM3
#  Rank  3 Group  0 Pid  40214 on  dgx-a01 device  3 [0x5d] NVIDIA H100 80GB HBM3
#  Rank  4 Group  0 Pid  40215 on  dgx-a01 device  4 [0x9a] NVIDIA H100 80GB HBM3
#  Rank  5 Group  0 Pid  40216 on  dgx-a01 device  5 [0xab] NVIDIA H100 80GB HBM3
#  Rank  6 Group  0 Pid  40217 on  dgx-a01 device  6 [0xba] NVIDIA H100 80GB HBM3
#  Rank  7 Group  0 Pid  40218 on  dgx-a01 device  7 [0xdb] NVIDIA H100 80GB HBM3
#
#                                                              out-of-place                       in-place
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)
        1024            32     float    none      -1    11.88    0.09    0.08      0    12.02    0.09    0.07      0
        2048            64     float    none      -1    11.94    0.17    0.15      0    12.05    0.17    0.15      0
        4096           128     float    none      -1    12.07    0.34    0.30      0    11.80    0.35    0.30      0
        8192           256     float    none      -1    11.79    0.70    0.61      0    12.18    0.67    0.59      0
       16384           512     float    none      -1    11.92    1.37    1.20      0    11.91    1.38    1.20      0
       32768          1024     float    none      -1    12.32    2.66    2.33      0    12.07    2.72    2.38      0
       65536          2048     float    none      -1    12.32    5.32    4.65      0    12.15    5.39    4.72      0
      131072          4096     float    none      -1    12.39   10.58    9.26      0    12.15   10.79    9.44      0
      262144          8192     float    none      -1    12.71   20.63   18.05      0    12.82   20.44   17.89      0
      524288         16384     float    none      -1    13.29   39.46   34.53      0    13.40   39.12   34.23      0
     1048576         32768     float    none      -1    14.65   71.58   62.64      0    14.29   73.35   64.18      0
     2097152         65536     float    none      -1    17.27  121.41  106.23      0    17.16  122.21  106.94      0
     4194304        131072     float    none      -1    22.02  190.49  166.68      0    21.78  192.59  168.52      0
     8388608        262144     float    none      -1    32.86  255.26  223.36      0    32.35  259.28  226.87      0
    16777216        524288     float    none      -1    53.24  315.12  275.73      0    53.58  313.14  274.00      0
    33554432       1048576     float    none      -1    94.36  355.61  311.16      0    95.13  352.72  308.63      0
    67108864       2097152     float    none      -1   174.38  384.85  336.74      0   177.22  378.68  331.34      0
   134217728       4194304     float    none      -1   337.47  397.71  348.00      0   344.12  390.04  341.28      0
   268435456       8388608     float    none      -1   674.52  397.97  348.22      0   653.75  410.61  359.28      0
   536870912      16777216     float    none      -1  1297.72  413.70  361.99      0  1301.99  412.35  360.80      0
  1073741824      33554432     float    none      -1  2670.60  402.06  351.80      0  2615.09  410.59  359.27      0
# Out of bounds values : 0 OK
# Avg bus bandwidth    : 112.406
#
# Collective test concluded: all_gather_perf
#
[dgx-a01:40200] 15 more processes have sent help message help-mpi-btl-openib.txt / no active ports found
# nccl-tests version 2.13.9 nccl-headers=21903 nccl-library=21903
# Collective test starting: all_reduce_perf
# nThread 1 nGpus 1 minBytes 8 maxBytes 134217728 step: 4(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0
#
# Using devices
#  Rank  0 Group  0 Pid  40211 on  dgx-a01 device  0 [0x18] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid  40212 on  dgx-a01 device  1 [0x2a] NVIDIA H100 80GB HBM3
#  Rank  2 Group  0 Pid  40213 on  dgx-a01 device  2 [0x3a] NVIDIA H100 80GB HBM3
#  Rank  3 Group  0 Pid  40214 on  dgx-a01 device  3 [0x5d] NVIDIA H100 80GB HBM3
#  Rank  4 Group  0 Pid  40215 on  dgx-a01 device  4 [0x9a] NVIDIA H100 80GB HBM3
#  Rank  5 Group  0 Pid  40216 on  dgx-a01 device  5 [0xab] NVIDIA H100 80GB HBM3
#  Rank  6 Group  0 Pid  40217 on  dgx-a01 device  6 [0xba] NVIDIA H100 80GB HBM3
#  Rank  7 Group  0 Pid  40218 on  dgx-a01 device  7 [0xdb] NVIDIA H100 80GB HBM3
#  Rank  8 Group  0 Pid  51877 on  dgx-a02 device  0 [0x18] NVIDIA H100 80GB HBM3
#  Rank  9 Group  0 Pid  51878 on  dgx-a02 device  1 [0x2a] NVIDIA H100 80GB HBM3
#  Rank 10 Group  0 Pid  51879 on  dgx-a02 device  2 [0x3a] NVIDIA H100 80GB HBM3
#  Rank 11 Group  0 Pid  51880 on  dgx-a02 device  3 [0x5d] NVIDIA H100 80GB HBM3
#  Rank 12 Group  0 Pid  51881 on  dgx-a02 device  4 [0x9a] NVIDIA H100 80GB HBM3
#  Rank 13 Group  0 Pid  51882 on  dgx-a02 device  5 [0xab] NVIDIA H100 80GB HBM3
#  Rank 14 Group  0 Pid  51883 on  dgx-a02 device  6 [0xba] NVIDIA H100 80GB HBM3
#  Rank 15 Group  0 Pid  51884 on  dgx-a02 device  7 [0xdb] NVIDIA H100 80GB HBM3
#
#                                                              out-of-place                       in-place
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)
           8             2     float     sum      -1    25.13    0.00    0.00      0    24.80    0.00    0.00      0
          32             8     float     sum      -1    25.01    0.00    0.00      0    24.89    0.00    0.00      0
         128            32     float     sum      -1    24.85    0.01    0.01      0    25.09    0.01    0.01      0
         512           128     float     sum      -1    25.09    0.02    0.04      0    25.41    0.02    0.04      0
        2048           512     float     sum      -1    25.20    0.08    0.15      0    25.45    0.08    0.15      0
        8192          2048     float     sum      -1    25.44    0.32    0.60      0    25.58    0.32    0.60      0
       32768          8192     float     sum      -1    25.51    1.28    2.41      0    25.00    1.31    2.46      0
      131072         32768     float     sum      -1    26.75    4.90    9.19      0    26.86    4.88    9.15      0
      524288        131072     float     sum      -1    30.95   16.94   31.76      0    30.55   17.16   32.18      0
     2097152        524288     float     sum      -1    47.25   44.39   83.23      0    46.30   45.29   84.92      0
     8388608       2097152     float     sum      -1   113.87   73.67  138.13      0   112.71   74.43  139.55      0
    33554432       8388608     float     sum      -1   371.30   90.37  169.44      0   367.99   91.18  170.97      0
   134217728      33554432     float     sum      -1  1443.25   93.00  174.37      0  1450.98   92.50  173.44      0
# Out of bounds values : 0 OK
# Avg bus bandwidth    : 46.93
#
# Collective test concluded: all_reduce_perf
"""


def run_main(argv, capsys) -> tuple[int, str, str]:
    """``python -m parplan.bench ARGV`` in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(argv, capsys) -> str:
    """The command failed with exactly one line, 'Error: ...', and nothing else."""
    code, out, err = run_main(argv, capsys)
    assert code != 0, out + err
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), out + err
    return lines[0]


def synthetic_rows() -> list[Row]:
    """Rows generated from a known machine: alpha-beta collectives, a matmul curve, a copy rate."""
    rows = []
    truth = {("all_reduce", "intra", 8): (15e-6, 360e9), ("all_gather", "intra", 8): (10e-6, 370e9),
             ("all_reduce", "inter", 16): (30e-6, 90e9), ("reduce_scatter", "intra", 4): (8e-6, 300e9)}
    for i, ((op, group, n), (alpha, bw)) in enumerate(truth.items()):
        for j, size in enumerate(sizes(8, 2**30, 2)):
            noise = 1 + 0.01 * ((i + j) % 3 - 1)
            t = (alpha + size * bus_factor(op, n) / bw) * noise
            rows.append(with_rates(Row("collective", op, "bf16", size_bytes=size, group="world", group_size=n,
                                       group_class=group, world_size=n, local_world_size=min(n, 8),
                                       nodes=2 if group == "inter" else 1, time_s=t, host="node7",
                                       timestamp="2025-03-04T05:06:07+00:00")))
    overhead, peak = 4e-6, 312e12
    a100 = load_hardware("a100")
    # Square GEMMs at 0.85 of the shape model, layer-shaped ones at 0.78: calibration must fit the latter.
    for (m, k, n), typical in [((s, s, s), 0.85) for s in (256, 512, 1024, 2048, 4096, 8192, 16384)] + \
            [(shape, 0.78) for shape in ((2048, 12288, 4608), (8192, 4096, 28672), (8192, 14336, 4096),
                                         (4096, 8192, 7168))]:
        flops = 2.0 * m * k * n
        eff = typical * float(wave_utilization(a100, m, n) * k_efficiency(k))
        rows.append(Row("matmul", "matmul", "bf16", m=m, k=k, n=n, flops=flops,
                        time_s=flops / (peak * eff) + overhead, host="node7"))
    for size in sizes(8, 2**30, 4):
        rows.append(Row("copy", "copy", "uint8", size_bytes=size, bytes_moved=2 * size,
                        time_s=overhead + 2 * size / (2.039e12 * 0.88), host="node7"))
    return rows


def software(framework: str = "megatron-core", **choices):
    """A run's Software: a shipped framework with the given choices (``flash_attention=False``, ...)."""
    from parplan.specs.framework import resolve_software
    from parplan.specs.framework_loader import load_framework

    return resolve_software(load_framework(framework), **choices)
