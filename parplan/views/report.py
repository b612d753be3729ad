"""``parplan report``: a self-contained Markdown report of the plan with its figures.

The report directory (default ``reports/<model>-<cluster>/``) holds ``report.md``, the PNGs it references by
relative path, and CSVs of the top plans and the scaling curves. Every file is written atomically (a temporary
file in the same directory, then ``os.replace``), so a reader never sees half a report file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ParplanError
from .files import check_writable, prepare_dir, slug, write_text
from ..step.train import Estimate
from ..layouts.strategies import breakdown_keys
from ..cost.memory import DEFAULT_HEADROOM
from ..specs.cluster import Cluster
from ..specs.model import ModelSpec
from ..units import GIB
from .op_table import op_table
from .records import MFU_DEFINITION, collective_rows, estimate_dict
from ..plan.candidates import default_batch_note
from ..plan.interval import estimate_interval
from ..plan.search import describe_row, fewest_devices, why

SIGNIFICANT_SHARE = 0.05  # a step-time component worth pointing out
FIGURES_WORK = 0.3  # the estimates and figures of the top plans, in units of one plan search


def default_report_dir(model: ModelSpec, cluster: Cluster) -> Path:
    return Path("reports") / f"{slug(model.name)}-{slug(cluster.name)}"


# --------------------------------------------------------------------------- Markdown helpers


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align`` one of l/r per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "| " + " | ".join(sep) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines)


def _pct(x: float) -> str:
    x = 100 * float(x)
    return f"{x:.2g}%" if 0 < abs(x) < 0.1 else f"{x:.1f}%"


def _s(x: float) -> str:
    return f"{x:.3g} s" if x >= 0.01 else f"{x * 1e3:.3g} ms"


def _gib(x: float) -> str:
    return f"{x / GIB:.1f} GiB"


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    directory: Path
    markdown: Path
    files: list[Path] = field(default_factory=list)
    best: Estimate | None = None
    plans: Any = None            # the plan frame (every candidate, ranked)
    device_scaling: Any = None   # DataFrames of the scaling curves (None when skipped)
    batch_scaling: Any = None


def build_report(model: ModelSpec | str, cluster: Cluster | str, *, global_batch: int | Sequence[int] | None = None,
                 out_dir=None, top: int = 5, dtype: str = "bf16", headroom: float = DEFAULT_HEADROOM,
                 objective: str = "throughput", seq: int | None = None, scaling: bool = True,
                 command: str | None = None, progress=None, software=None) -> Report:
    """Search the plans of ``model`` on ``cluster`` and write the report; returns what was written.

    ``global_batch``: one, or several to search (the report is of the one whose best plan ranks first); ``software``:
    a framework name or Software (default: the device's). ``progress(done, total)`` follows the whole run in units
    of one plan search (two per scaling point: the best plan and the best FSDP plan), so a bar can tell the rest.
    """
    from . import plots, scaling_plots
    from .frames import as_cluster, as_model, best_batch_frame, plan_estimates
    from .progress import part
    from ..plan.sweep import Options, batch_scaling, batch_grid, device_counts, device_scaling

    m, cl = as_model(model, seq), as_cluster(cluster)
    if top < 1:
        raise ParplanError(f"--top must be at least 1, got {top}")
    out = check_writable(out_dir if out_dir is not None else default_report_dir(m, cl))
    n_devices = len(device_counts(cl)) if scaling else 0
    total = 1.0 + FIGURES_WORK + 2 * n_devices
    batches = list(global_batch) if isinstance(global_batch, (list, tuple)) else [global_batch]
    plans = best_batch_frame(m, cl, batches, dtype=dtype, headroom=headroom, objective=objective,
                             software=software, progress=part(progress, 0.0, 1.0, total))
    space = plans.attrs["space"]
    if len(batches) > 1:  # the batch of the best plan, searched among those given
        global_batch = space.global_batch
    if scaling:
        cw = cl.hardware.ratios(dtype)["flops_per_inter_node_byte"]
        total += 2 * len(batch_grid(cl, m.seq_len, space.global_batch, cw))
    fitting = plans[plans["rank"].notna()]
    if fitting.empty:
        need = fewest_devices(m, cl, space)
        more = f"; the fewest {cl.hardware.name} devices on which some layout fits: {need}" if need else ""
        raise ParplanError(f"{m.name} does not fit on {cl.name} at any layout (global batch {space.global_batch}, "
                           f"{100 * headroom:.0f}% HBM headroom){more}")
    ests = plan_estimates(fitting, m, cl, top=top, space=space)
    prepare_dir(out)
    rep = Report(directory=out, markdown=out / "report.md", best=ests[0], plans=plans)
    options = Options(dtype=dtype, headroom=headroom, objective=objective, software=space.software)

    def figure(name: str, fig) -> str:
        rep.files.append(plots.save(fig, out / name))
        return name

    pngs = {
        "roofline": figure("roofline.png", plots.roofline(ests[0])),
        "step": figure("step_breakdown.png", plots.step_breakdown(ests)),
        "memory": figure("memory.png", plots.memory_breakdown(ests)),
        "candidates": figure("candidates.png", plots.plan_scatter(plans)),
    }
    if progress is not None:
        progress(1.0 + FIGURES_WORK, total)
    if scaling:
        done = 1.0 + FIGURES_WORK
        rep.device_scaling = device_scaling(m, cl, global_batch=global_batch, options=options,
                                            progress=part(progress, done, 2 * n_devices, total))
        rep.batch_scaling = batch_scaling(m, cl, global_batch=space.global_batch, options=options,
                                          progress=part(progress, done + 2 * n_devices,
                                                        total - done - 2 * n_devices, total))
        pngs["devices"] = figure("scaling_devices.png", scaling_plots.scaling(rep.device_scaling, x="devices"))
        pngs["batch"] = figure("scaling_batch.png", scaling_plots.scaling(rep.batch_scaling, x="global_batch"))
        rep.files.append(write_text(out / "scaling_devices.csv", rep.device_scaling.to_csv(index=False)))
        rep.files.append(write_text(out / "scaling_batch.csv", rep.batch_scaling.to_csv(index=False)))
    cols = ["rank", "layout", "placement", "tp", "pp", "dp", "cp", "zero", "micro_batch", "recompute", "sp", "vpp",
            "order", "step_time_s", "tokens_per_s", "mfu", "hfu", "memory_bytes", "fits", "bottleneck"] + \
        [f"{k}_s" for k in breakdown_keys()]
    rep.files.append(write_text(out / "plans.csv", fitting.head(max(top, 20))[cols].to_csv(index=False)))
    text = render_markdown(m, cl, plans, ests, pngs, rep.device_scaling, rep.batch_scaling, command=command,
                           global_batch_given=global_batch is not None, searched=batches if len(batches) > 1 else None)
    rep.files.append(write_text(rep.markdown, text))
    return rep


# --------------------------------------------------------------------------- the text


def _summary(est: Estimate, row, runner_up) -> list[str]:
    d, span = estimate_dict(est), estimate_interval(est)
    hbm = d["hbm_bytes"]
    lines = [md_table(["", "best plan"], [
        ["layout", f"`{describe_row(row)}`"],
        ["placement (mesh order, innermost first)", f"`{','.join(est.layout.order)}`"],
        ["micro-batches per step", est.layout.micro_batches],
        ["step time", f"{d['step_time_s']:.3f} s (likely {span.low_s:.3g}-{span.high_s:.3g} s)"],
        ["throughput", f"{d['tokens_per_s']:.4g} tokens/s ({d['tokens_per_s_per_device']:.4g} per device)"],
        ["MFU / HFU", f"{_pct(d['mfu'])} / {_pct(d['hfu'])}"],
        ["model TFLOP/s per device", f"{d['tflops_per_device']:.1f}"],
        ["memory per device", f"{_gib(d['memory_bytes']['total'])} of {_gib(hbm)} "
                              f"({_gib(hbm * (1 - est.headroom))} usable)"],
        ["bottleneck", row["bottleneck"]],
    ], align="lr")]
    tail = ["", why(row, runner_up) + "."] if runner_up is not None else []
    return lines + ["", f"The step time's {span.describe()}."] + tail


def _top_table(ests: list[Estimate], rows) -> str:
    body = []
    for i, (e, (_, r)) in enumerate(zip(ests, rows.iterrows()), 1):
        body.append([i, f"`{describe_row(r)}`", r["placement"], f"{float(e.step_time_s):.3f}",
                     f"{float(e.tokens_per_s):.4g}", _pct(float(e.mfu)), f"{float(e.memory_bytes['total']) / GIB:.1f}",
                     r["bottleneck"]])
    return md_table(["#", "layout", "placement", "step s", "tokens/s", "MFU", "memory GiB", "bottleneck"], body,
                    align="rllrrrrl")


def _roofline_text(est: Estimate) -> list[str]:
    hw, dtype = est.cluster.hardware, est.layout.dtype
    peak, bw = hw.peak(dtype), hw.hbm_bandwidth
    ops = op_table(est)
    total = sum(o["forward_s"] + o["backward_s"] for o in ops) or 1.0
    mem_share = sum(o["forward_s"] + o["backward_s"] for o in ops if o["bound"] == "memory") / total
    heaviest = max(ops, key=lambda o: o["forward_s"] + o["backward_s"])
    rows = []
    for o in ops:
        rate = o["fwd_flops"] / o["forward_s"] if o["forward_s"] > 0 and o["fwd_flops"] > 0 else 0.0
        rows.append([o["op"], o["kind"].replace("_", " "), f"{o['fwd_flops'] / 1e9:.1f}", f"{o['fwd_bytes'] / 1e6:.1f}",
                     f"{o['intensity_flops_per_byte']:.0f}", o["bound"],
                     f"{rate / 1e12:.0f}" if rate else "-",
                     f"{o['forward_s'] * 1e3:.3f}", f"{o['backward_s'] * 1e3:.3f}",
                     _pct((o["forward_s"] + o["backward_s"]) / total)])
    return [
        f"The {hw.name} reaches {peak / 1e12:.0f} TFLOP/s ({dtype}, dense) and {bw / 1e12:.2f} TB/s of HBM "
        f"bandwidth, so the ridge of its roofline lies at {peak / bw:.0f} FLOP per byte: a kernel with fewer "
        f"FLOPs per byte of HBM traffic is memory-bound. On the best plan the heaviest op of a layer is "
        f"`{heaviest['op']}`; memory-bound ops take {_pct(mem_share)} of the layer's time. Element-wise ops "
        f"(norms, activations, residuals) carry no modelled FLOPs, so they appear only in the right panel.",
        "",
        md_table(["op", "kind", "fwd GFLOP", "fwd MB", "FLOP/B", "bound", "fwd TFLOP/s", "fwd ms", "bwd ms",
                  "share"], rows, align="llrrrlrrrr"),
    ]


def _breakdown_text(est: Estimate) -> list[str]:
    d = estimate_dict(est)
    step = d["step_time_s"]
    parts = sorted(((k, v) for k, v in d["breakdown_s"].items() if v > 0), key=lambda kv: -kv[1])
    notable = [f"{k.replace('_', ' ')} {_pct(v / step)}" for k, v in parts if k != "compute" and v / step >= 0.01]
    text = (f"Compute is {_pct(d['breakdown_s']['compute'] / step)} of the best plan's step"
            + (f"; beyond it: {', '.join(notable)}." if notable else "; nothing else takes as much as 1%."))
    rows = [[k, _s(d["breakdown_s"][k]), _pct(d["breakdown_s"][k] / step)] for k in breakdown_keys()]
    return [text, "", md_table(["component", "time per step", "share"], rows)]


def _memory_text(est: Estimate) -> list[str]:
    d = estimate_dict(est)
    hbm = d["hbm_bytes"]
    mem = {k: v for k, v in d["memory_bytes"].items() if k != "total"}
    big = max(mem, key=mem.get)
    rows = [[k.replace("_", " "), _gib(v), _pct(v / hbm)] for k, v in mem.items()]
    rows.append(["**total**", f"**{_gib(d['memory_bytes']['total'])}**", f"**{_pct(d['memory_bytes']['total'] / hbm)}**"])
    return [f"The best plan needs {_gib(d['memory_bytes']['total'])} per device of the "
            f"{_gib(hbm * (1 - est.headroom))} usable ({100 * est.headroom:.0f}% of the {_gib(hbm)} HBM kept free); "
            f"the largest part is {big.replace('_', ' ')}.", "",
            md_table(["part", "per device", "share of HBM"], rows)]


def _candidates_text(plans) -> list[str]:
    fitting = plans[plans["rank"].notna()]
    best = fitting.iloc[0]
    lean = fitting.sort_values(["memory_bytes", "step_time_s"], kind="stable").iloc[0]
    n = plans.attrs.get("evaluated", len(plans))
    return [f"The search evaluated {n} layouts ({len(plans)} distinct results); {len(fitting)} fit in memory. "
            f"The leanest plan that fits (`{describe_row(lean)}`, {_gib(lean['memory_bytes'])}) reaches "
            f"{_pct(lean['tokens_per_s'] / best['tokens_per_s'])} of the best plan's throughput."]


def _first(frame, mask, col: str):
    hits = frame[mask]
    return None if hits.empty else hits.iloc[0][col]


def _scaling_text(df, x: str, cw: float, seq: int) -> list[str]:
    ok = df[df["status"] == "ok"]
    lines = []
    if ok.empty:
        return ["No layout fits at any point of this curve."]
    label = "devices" if x == "devices" else "global batch"
    lo, hi = ok.iloc[0], ok.iloc[-1]
    lines.append(f"MFU of the best plan goes from {_pct(lo['mfu'])} at {label} {int(lo[x])} to "
                 f"{_pct(hi['mfu'])} at {int(hi[x])}"
                 + (f"; no layout fits below {int(lo[x])}" if (df["status"] != "ok").iloc[0] else "") + ".")
    below = df[df["tokens_per_device"] < cw]
    if x == "devices":
        where = (f"from {int(below.iloc[0]['devices'])} devices on" if not below.empty
                 else "nowhere in this range")
    else:
        where = (f"up to a global batch of {int(below.iloc[-1]['global_batch'])}" if not below.empty
                 else "nowhere in this range")
    lines.append(f"The device's FLOP per byte of network bandwidth, C/W = {cw:.0f}, is the rule-of-thumb per-device "
                 f"batch (in tokens) above which FSDP hides its weight all-gathers behind compute; per-device tokens "
                 f"are below it {where}. The dashed lines show what the model predicts for the best FSDP plan, "
                 f"with the collectives' actual placement and bandwidth.")
    if "fsdp_mfu" in df:
        f = df[df["fsdp_mfu"].notna()] if "fsdp_mfu" in df else df.iloc[0:0]
        if not f.empty:
            share = f["fsdp_dp_comm_s"] / f["fsdp_step_time_s"]
            exposed = f[share >= SIGNIFICANT_SHARE]
            if exposed.empty:
                lines.append("The best FSDP plan keeps its exposed data-parallel communication under "
                             f"{_pct(SIGNIFICANT_SHARE)} of the step at every point where it fits.")
            else:
                worst = exposed.loc[(exposed["fsdp_dp_comm_s"] / exposed["fsdp_step_time_s"]).idxmax()]
                last = f.iloc[-1]
                lines.append(
                    f"The best FSDP plan (ZeRO-3, no pipeline) exposes at least {_pct(SIGNIFICANT_SHARE)} of its "
                    f"step as data-parallel communication at {len(exposed)} of {len(f)} points; the most, "
                    f"{_pct(worst['fsdp_dp_comm_s'] / worst['fsdp_step_time_s'])}, at {label} {int(worst[x])} "
                    f"({worst['tokens_per_device']:.0f} tokens per device), against "
                    f"{_pct(last['fsdp_dp_comm_s'] / last['fsdp_step_time_s'])} at {label} {int(last[x])}.")
    bubble = ok["bubble_s"] / ok["step_time_s"]
    if bubble.max() >= 0.01:
        r = ok.loc[bubble.idxmax()]
        lines.append(f"The pipeline bubble peaks at {_pct(bubble.max())} of the step at {label} {int(r[x])} "
                     f"(`{r['layout']}`, {int(r['global_batch']) // (int(r['dp']) * int(r['micro_batch']))} "
                     f"micro-batches per step).")
    else:
        lines.append("The best plans keep the pipeline bubble under 1% of the step throughout.")
    rows = []
    for _, r in df.iterrows():
        if r["status"] == "ok":
            rows.append([int(r["devices"]), int(r["global_batch"]), f"{r['tokens_per_device']:.0f}",
                         f"`{r['layout']}`", f"{r['step_time_s']:.3f}", _pct(r["mfu"]),
                         _pct(r["dp_comm_s"] / r["step_time_s"]), _pct(r["bubble_s"] / r["step_time_s"]),
                         _pct(r["fsdp_mfu"]) if "fsdp_mfu" in r and r["fsdp_mfu"] == r["fsdp_mfu"] else "-"])
        else:
            rows.append([int(r["devices"]), int(r["global_batch"]), f"{r['tokens_per_device']:.0f}",
                         str(r["status"]), "-", "-", "-", "-", "-"])
    lines += ["", md_table(["devices", "global batch", "tokens/device", "best plan", "step s", "MFU",
                            "DP comm", "bubble", "FSDP MFU"], rows, align="rrrlrrrrr")]
    return lines


def _collectives_text(est: Estimate) -> list[str]:
    rows = sorted(collective_rows(est), key=lambda c: -c["exposed_s"])
    if not rows:
        return ["The best plan runs no collectives."]
    body = [[c["name"], c["op"], c["axis"], c["group"], f"{c['bytes'] / 1e6:.2f}", f"{c['calls_per_step']:.0f}",
             _s(c["link_s"]), _s(c["exposed_s"]), c["overlaps_with"]] for c in rows]
    return [md_table(["collective", "op", "axis", "group", "MB per call", "calls per step", "on the link",
                      "exposed", "overlaps with"], body, align="lllrrrrrl")]


def render_markdown(model: ModelSpec, cluster: Cluster, plans, ests: list[Estimate], pngs: dict[str, str],
                    devices_df=None, batch_df=None, *, global_batch_given: bool = False,
                    command: str | None = None, searched: Sequence[int] | None = None) -> str:
    from ..version import __version__

    best = ests[0]
    space = plans.attrs["space"]
    hw = cluster.hardware
    fitting = plans[plans["rank"].notna()]
    gb, seq = space.global_batch, space.seq_len
    batch_note = (f"the best of {', '.join(map(str, searched))}, searched" if searched else "given"
                  if global_batch_given else default_batch_note(gb, seq))
    cw = hw.ratios(space.dtype)["flops_per_inter_node_byte"]
    out = [
        f"# {model.name} on {cluster.label}: the training plan",
        "",
        f"{cluster.devices} × {hw.name} in {cluster.nodes} nodes of {cluster.devices_per_node} "
        f"({cluster.intra_node.name or 'scale-up link'} inside a node, {cluster.inter_node.name or 'network'} "
        f"across); global batch {gb} sequences × {seq} tokens ({gb * seq / 1e6:.2f}M tokens; {batch_note}); "
        f"{space.dtype}; {100 * space.headroom:.0f}% of HBM kept free; objective: {plans.attrs.get('objective')}.",
        "",
        f"Produced by `{command}` (parplan {__version__}). Every number is a prediction of the analytical model, "
        "not a measurement.",
        "",
        "## Best plan",
        "",
        *_summary(best, fitting.iloc[0], fitting.iloc[1] if len(fitting) > 1 else None),
        "",
        f"## Top {len(ests)} plans",
        "",
        _top_table(ests, fitting.head(len(ests))),
        "",
        "## Roofline",
        "",
        f"![Roofline of the {hw.name} with the ops of one layer of the best plan]({pngs['roofline']})",
        "",
        *_roofline_text(best),
        "",
        "## Step time",
        "",
        f"![Step time breakdown of the top plans]({pngs['step']})",
        "",
        "Each bar is one optimizer step on the busiest device along the critical path: compute, recompute, the "
        "communication that compute does not hide (tensor, context, pipeline and data parallel), the pipeline "
        "bubble and the optimizer step.",
        "",
        *_breakdown_text(best),
        "",
        "## Memory per device",
        "",
        f"![Memory per device of the top plans]({pngs['memory']})",
        "",
        *_memory_text(best),
        "",
        "## All candidate plans",
        "",
        f"![Throughput against memory of every candidate plan]({pngs['candidates']})",
        "",
        *_candidates_text(plans),
    ]
    if devices_df is not None:
        out += ["", "## Scaling with the number of devices", "",
                f"![Best plan against the number of devices]({pngs['devices']})", "",
                "The best plan at each power-of-two device count up to the cluster, on the same nodes and network; "
                "the global batch follows the default rule at each size"
                + (" (the given batch, rounded up to a multiple of the devices)." if global_batch_given else "."),
                "", *_scaling_text(devices_df, "devices", cw, seq)]
    if batch_df is not None:
        out += ["", "## Scaling with the global batch", "",
                f"![Best plan against the global batch]({pngs['batch']})", "",
                f"The best plan on all {cluster.devices} devices at global batches around the chosen {gb}.",
                "", *_scaling_text(batch_df, "global_batch", cw, seq)]
    out += ["", "## Collectives of the best plan", "", *_collectives_text(best), "",
            "## Definitions", "",
            f"* MFU: {MFU_DEFINITION}.",
            "* HFU adds the recomputed forward FLOPs.",
            "* Memory is per device on the busiest pipeline stage; `fits` means the total stays within HBM less "
            "the headroom.",
            f"* C/W: the {space.dtype} peak FLOP/s over the network bandwidth per device "
            f"({hw.peak(space.dtype) / 1e12:.0f} TFLOP/s over {cluster.hardware.inter_node.bandwidth / 1e9:.1f} GB/s "
            f"= {cw:.0f} FLOP per byte).",
            ""]
    return "\n".join(out)
