"""Writing a calibrated hardware profile where ``--hw PATH`` will find it."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..calibrate.fit import Calibration
from ..calibrate.profile import calibrated_profile
from ..calibrate.rows import Row
from ..errors import ParplanError
from ..specs.hardware import Hardware
from .files import write_text


def write_profile(rows: Sequence[Row], out_path, base_name: str | None) -> tuple[Calibration, Hardware]:
    """Calibrate, write ``out_path`` atomically, and return the profile as ``--hw out_path`` loads it."""
    out_path = Path(out_path)
    if out_path.suffix.lower() not in (".yaml", ".yml"):
        raise ParplanError(f"-o must name a .yaml file, got {out_path}")
    if out_path.parent and not out_path.parent.is_dir():
        raise ParplanError(f"directory does not exist: {out_path.parent}")
    cal, text, hw = calibrated_profile(rows, out_path.stem, base_name, load_as=str(out_path))
    write_text(out_path, text, sync=True)
    return cal, hw
