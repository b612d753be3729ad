import os
import subprocess
import sys

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def run_cli():
    """Run the real ``parplan`` entry point in a subprocess; returns (exit code, stdout, stderr)."""
    def run(*args: str):
        proc = subprocess.run([sys.executable, "-m", "parplan.cli", *args], capture_output=True, text=True,
                              timeout=120)
        return proc.returncode, proc.stdout, proc.stderr
    return run
