"""The text and files of ``parplan sweep``: the terminal table, the CSV columns, ``sweep.csv`` and ``sweep.png``."""
from __future__ import annotations

from ..cost.memory import DEFAULT_HEADROOM
from ..specs.model import ModelSpec
from ..units import GIB
from .files import prepare_dir, slug, write_text


TABLE_COLUMNS = (("devices", "devices", "{:>8d}"), ("global_batch", "global batch", "{:>12d}"),
                 ("seq_len", "seq", "{:>6d}"), ("tokens_per_device", "tokens/dev", "{:>10.0f}"))


def format_sweep(df) -> str:
    """The terminal table of ``parplan sweep``."""
    head = "".join(f"{title:>{len(fmt.format(1))}}  " for _, title, fmt in TABLE_COLUMNS)
    lines = [f"{df.attrs.get('model', '')} on {df.attrs.get('hardware', '')}: the best plan of each combination "
             f"({df.attrs.get('dtype', 'bf16')}, {100 * df.attrs.get('headroom', DEFAULT_HEADROOM):.0f}% HBM headroom)",
             *([f"global batch: {df.attrs['batch_note']}"] if df.attrs.get("batch_note") else []),
             "",
             head + f"{'layout':<50}{'step s':>9}{'tokens/s':>11}{'MFU':>7}{'mem GiB':>9}  bottleneck"]
    for _, r in df.iterrows():
        cells = "".join(fmt.format(int(r[c]) if "d}" in fmt else float(r[c])) + "  " for c, _, fmt in TABLE_COLUMNS)
        if r["status"] == "ok":
            lines.append(cells + f"{r['layout']:<50}{r['step_time_s']:9.3f}{r['tokens_per_s']:11.4g}"
                                 f"{100 * r['mfu']:6.1f}%{r['memory_bytes'] / GIB:9.1f}  {r['bottleneck']}")
        else:
            lines.append(cells + str(r["status"]))
    return "\n".join(lines)


def sweep_columns(df) -> list[str]:
    """The CSV columns: the grid, the status, then the best plan."""
    first = ["devices", "global_batch", "seq_len", "tokens_per_device", "status", "candidates", "fitting", "layout",
             "bottleneck"]
    return [c for c in first if c in df.columns] + [c for c in df.columns if c not in first]


def default_sweep_dir(model: ModelSpec, hw_spec: str) -> str:
    return f"reports/sweep-{slug(model.name)}-{slug(hw_spec)}"


def write_sweep(df, out_dir) -> dict[str, str]:
    """``sweep.csv`` and ``sweep.png`` into ``out_dir`` (created; written atomically)."""
    from . import plots, scaling_plots

    out = prepare_dir(out_dir)
    csv_path = out / "sweep.csv"
    write_text(csv_path, df[sweep_columns(df)].to_csv(index=False))
    png_path = out / "sweep.png"
    plots.save(scaling_plots.sweep(df, list(df.attrs.get("vary", []))), png_path)
    return {"csv": str(csv_path), "plot": str(png_path)}
