# %% [markdown]
# # A tour of parplan from a notebook
#
# Search the layouts of a model on a cluster, look at the best plans as pandas
# DataFrames, draw the figures of `parplan report`, and sweep the cluster size.
# Each `# %%` block is a cell (VS Code, Jupytext and PyCharm run them one by one);
# `python examples/notebook_tour.py [OUT_DIR]` runs them all and writes the
# figures to OUT_DIR (default: `reports/notebook-tour/`).
#
# Settings come from the environment so that the tests can run a small case:
# `PARPLAN_TOUR_MODEL` (default `gpt3-13b`), `PARPLAN_TOUR_HW` (default `a100x64`),
# `PARPLAN_TOUR_OUT` (the output directory, when no argument is given).

# %%
import os
import sys
from pathlib import Path

import pandas as pd

from parplan import frames, plots
from parplan.plan import sweep
from parplan.views.report import build_report
from parplan.views.sweep_text import format_sweep

MODEL = os.environ.get("PARPLAN_TOUR_MODEL", "gpt3-13b")
HW = os.environ.get("PARPLAN_TOUR_HW", "a100x64")
OUT = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PARPLAN_TOUR_OUT", "reports/notebook-tour"))
OUT.mkdir(parents=True, exist_ok=True)
pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 20)


def show(obj):
    """Display a DataFrame as a notebook would, or print it from a script."""
    try:
        from IPython.display import display

        if "ipykernel" in sys.modules:
            display(obj)
            return
    except ImportError:
        pass
    print(obj.to_string() if hasattr(obj, "to_string") else obj, end="\n\n")


model, cluster = frames.as_model(MODEL), frames.as_cluster(HW)
print(f"{model.name} on {cluster.name}: {cluster.nodes} nodes of {cluster.devices_per_node}")

# %% [markdown]
# ## Every candidate layout, ranked
#
# `plan_frame` runs the same search as `parplan plan`. Plans that fit come first,
# ranked by step time; `frame.attrs` carries the search space and the HBM size.

# %%
plans = frames.plan_frame(model, cluster)
print(f"{plans.attrs['evaluated']} layouts evaluated, {int(plans['fits'].sum())} fit; "
      f"global batch {plans.attrs['global_batch']} x {plans.attrs['seq_len']} tokens")
show(plans.head(5)[["rank", "layout", "placement", "step_time_s", "tokens_per_s", "mfu", "memory_gib",
                    "bottleneck"]])

# %% [markdown]
# Questions become one-liners: the fastest plan without pipeline parallelism, or
# the fastest plan per tensor-parallel size.

# %%
no_pipeline = plans[(plans["pp"] == 1) & plans["fits"]]
show(no_pipeline.head(3)[["layout", "step_time_s", "mfu", "memory_gib"]])
per_tp = plans[plans["fits"]].groupby("tp", as_index=False).first()
show(per_tp[["tp", "layout", "step_time_s", "mfu", "memory_gib"]])

# %% [markdown]
# ## The top plans in detail
#
# `plan_estimates` re-evaluates the top rows with every per-op and per-collective
# detail; `estimate_frame` gives one row per plan, `explain_frames` the tables of
# `parplan explain`.

# %%
best = frames.plan_estimates(plans, model, cluster, top=3)
summary = frames.estimate_frame(best)
show(summary[["layout", "step_time_s", "mfu", "hfu", "memory_bytes", "compute_s", "tp_comm_s", "dp_comm_s",
              "bubble_s"]])

tables = frames.explain_frames(best[0])
show(tables["breakdown"])
show(tables["memory"])
show(tables["ops"][["op", "kind", "intensity_flops_per_byte", "bound", "forward_s", "backward_s",
                    "share_of_layer"]])
show(tables["collectives"].sort_values("exposed_s", ascending=False).head(5))

# %% [markdown]
# ## Figures
#
# Each function returns a matplotlib Figure (in Jupyter, put it last in a cell to
# see it); `plots.save` writes a PNG.

# %%
figures = {
    "roofline.png": plots.roofline(best[0]),
    "step_breakdown.png": plots.step_breakdown(best),
    "memory.png": plots.memory_breakdown(best),
    "candidates.png": plots.plan_scatter(plans),
}
for name, fig in figures.items():
    print("wrote", plots.save(fig, OUT / name))

# %% [markdown]
# ## Scaling
#
# The best plan at each power-of-two device count up to the cluster (global batch
# by the default rule), and at global batches around the chosen one. The dotted
# line marks C/W: the tokens per device at which FSDP's all-gathers can hide
# behind compute.

# %%
by_devices = sweep.device_scaling(model, cluster)
show(by_devices[["devices", "global_batch", "tokens_per_device", "status", "layout", "mfu", "fsdp_mfu"]])
print("wrote", plots.save(plots.scaling(by_devices), OUT / "scaling_devices.png"))

by_batch = sweep.batch_scaling(model, cluster)
show(by_batch[["global_batch", "tokens_per_device", "layout", "mfu", "dp_comm_s", "bubble_s"]])
print("wrote", plots.save(plots.scaling(by_batch), OUT / "scaling_batch.png"))

# %% [markdown]
# ## A sweep
#
# `parplan sweep --vary devices=A..B --vary global-batch=X,Y` from Python: the
# best plan for every combination.

# %%
n = cluster.devices
grid = sweep.parse_vary([f"devices={max(8, n // 4)}..{n}", f"global-batch={n},{2 * n}"])
table = sweep.run_sweep(model, cluster.hardware.name, grid)
print(format_sweep(table), end="\n\n")
print("wrote", plots.save(plots.sweep(table), OUT / "sweep.png"))

# %% [markdown]
# ## The whole report in one call
#
# What `parplan report` writes: Markdown with every figure, plus CSVs.

# %%
report = build_report(model, cluster, out_dir=OUT / "report", top=3)
print("wrote", report.markdown)
