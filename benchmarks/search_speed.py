"""Search speed: candidates evaluated per second, and wall time of whole `parplan plan` commands (medians).

    python benchmarks/search_speed.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from parplan.specs.cluster import load_cluster
from parplan.specs.model_loader import load_model
from parplan.plan.candidates import SearchSpace, default_global_batch
from parplan.plan.search import search

COMMANDS = [["--model", "gpt3", "--hw", "a100x512"], ["--model", "megatron-1t", "--hw", "h100x16384"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    for model_name, hw in (("gpt3", "a100x512"), ("megatron-1t", "h100x16384")):
        m, cl = load_model(model_name), load_cluster(hw)
        space = SearchSpace(global_batch=default_global_batch(m, cl, m.seq_len), seq_len=m.seq_len)
        rates = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            _, n = search(m, cl, space)
            rates.append(n / (time.perf_counter() - t))
        print(f"search {model_name} on {hw}: {n} candidates, median {statistics.median(rates):,.0f} candidates/s")
    for cmd in COMMANDS:
        walls = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "parplan.cli", "plan", *cmd], check=True, capture_output=True)
            walls.append(time.perf_counter() - t)
        print(f"parplan plan {' '.join(cmd)}: median wall {statistics.median(walls):.2f} s (interpreter start included)")


if __name__ == "__main__":
    main()
