"""``python -m parplan.bench [options]``: one bench rank, as torchrun starts it.

``python -m parplan.bench bench|calibrate|compare ...`` runs that command instead.
"""
from ..cli.bench_cmd import main

if __name__ == "__main__":
    main()
