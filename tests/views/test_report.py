"""Reports, sweeps, plots and the DataFrame API: files, figures, tables and one-line errors."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers import REPO
from parplan.errors import ParplanError
from parplan.plan.planner import make_plan
from parplan.specs.cluster import load_cluster
from parplan.specs.model_loader import load_model

ROOT = REPO
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODEL, HW = "gpt3-1.3b", "a100x16"   # small: every search here takes well under a second


def assert_png(path: Path, min_bytes: int = 15_000):
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) >= min_bytes, (path, len(data))


def run_module(*args, env=None):
    proc = subprocess.run([sys.executable, "-m", "parplan.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(result, match, code=1):
    rc, out, err = result
    assert rc == code, (rc, out, err)
    assert "Traceback" not in err + out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert match in lines[0], lines[0]


# --------------------------------------------------------------------------- --vary parsing

def test_vary_ranges_double_and_lists_keep_order():
    from parplan.plan.sweep import parse_values, parse_vary

    assert parse_values("64..4096") == [64, 128, 256, 512, 1024, 2048, 4096]
    assert parse_values("96..1000") == [96, 192, 384, 768]
    assert parse_values("2048,512,1024,512") == [2048, 512, 1024]
    assert parse_values("8..32,48") == [8, 16, 32, 48]
    assert parse_values("7..7") == [7]
    grid = parse_vary(["devices=64..256", "global_batch=512,1024", "seq=2048"])
    assert grid == {"devices": [64, 128, 256], "global-batch": [512, 1024], "seq": [2048]}


@pytest.mark.parametrize("spec, match", [
    ("devices64", "expected KEY=VALUES"),
    ("=64", "expected KEY=VALUES"),
    ("nodes=8", "unknown key 'nodes'"),
    ("devices=4096..64", "empty range"),
    ("devices=", "no values"),
    ("devices=8,,16", "empty item"),
    ("devices=x..16", "'x' is not a positive whole number"),
    ("devices=0,8", "'0' is not a positive whole number"),
    ("global-batch=1.5", "not a positive whole number"),
])
def test_vary_errors(spec, match):
    from parplan.plan.sweep import parse_vary

    with pytest.raises(ParplanError, match=re.escape(match)):
        parse_vary([spec])


def test_vary_key_twice_and_too_many_points():
    from parplan.plan.sweep import parse_vary

    with pytest.raises(ParplanError, match="given twice"):
        parse_vary(["devices=8", "devices=16"])
    with pytest.raises(ParplanError, match="combinations"):
        parse_vary(["devices=1..1000000", "global-batch=" + ",".join(str(i) for i in range(1, 200))])


# --------------------------------------------------------------------------- light imports

def test_planner_imports_no_matplotlib():
    code = ("import sys, parplan, parplan.cli, parplan.cli.report_cmd, parplan.frames, parplan.plan.sweep, parplan.views.report\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
            "assert 'pandas' not in sys.modules, 'pandas imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- DataFrames

@pytest.fixture(scope="module")
def plans():
    from parplan.views import frames

    return frames.plan_frame(MODEL, HW, global_batch=64)


@pytest.fixture(scope="module")
def top(plans):
    from parplan.views import frames

    return frames.plan_estimates(plans, MODEL, HW, top=3)


def test_plan_frame_ranks_fitting_plans_first(plans):
    fitting = plans[plans["rank"].notna()]
    assert len(fitting) == int(plans["fits"].sum()) > 0
    assert list(fitting["rank"]) == list(range(1, len(fitting) + 1))
    assert fitting["fits"].all() and not plans.loc[plans["rank"].isna(), "fits"].any()
    assert fitting["step_time_s"].is_monotonic_increasing
    for col in ("layout", "placement", "bottleneck", "memory_gib", "step_time_s", "tokens_per_s", "mfu",
                "memory_bytes", "compute_s", "dp_comm_s"):
        assert col in plans.columns
    assert plans.attrs["space"].global_batch == 64 and plans.attrs["devices"] == 16
    assert plans.attrs["hbm_bytes"] > 0 and plans.attrs["evaluated"] >= len(plans)


def test_estimate_and_explain_frames(top):
    from parplan.views import frames
    from parplan.layouts.strategies import breakdown_keys

    df = frames.estimate_frame(top)
    assert len(df) == 3
    row = df.iloc[0]
    assert row["step_time_s"] == pytest.approx(sum(row[f"{k}_s"] for k in breakdown_keys()))
    parts = frames.memory_part_columns(df)
    assert {"memory_weights_bytes", "memory_activations_bytes"} <= set(parts)
    assert row["memory_bytes"] == pytest.approx(sum(row[c] for c in parts))
    assert row["global_batch"] == 64 and row["fits"]
    assert len(frames.estimate_frame(top[0])) == 1

    t = frames.explain_frames(top[0])
    assert set(t) == {"summary", "breakdown", "memory", "ops", "collectives"}
    assert t["breakdown"]["share"].sum() == pytest.approx(1.0)
    assert t["ops"]["share_of_layer"].sum() == pytest.approx(1.0)
    assert {"qkv_proj", "mlp_down"} <= set(t["ops"]["op"])
    assert (t["ops"].loc[t["ops"]["fwd_flops"] > 0, "forward_flops_per_s"] > 0).all()
    assert "exposed_s" in t["collectives"].columns


def test_frames_reject_bad_input():
    from parplan.views import frames

    with pytest.raises(ParplanError, match="global batch"):
        frames.plan_frame(MODEL, HW, global_batch=0)
    with pytest.raises(ParplanError, match="unknown hardware"):
        frames.plan_frame(MODEL, "a10x16")


# --------------------------------------------------------------------------- figures

def test_plot_functions_return_figures(plans, top, tmp_path):
    from matplotlib.figure import Figure

    from parplan import plots

    figs = {
        "roofline": plots.roofline(top[0]),
        "step": plots.step_breakdown(top),
        "step_from_frame": plots.step_breakdown(plans.head(4)),
        "memory": plots.memory_breakdown(top),
        "candidates": plots.plan_scatter(plans),
    }
    for name, fig in figs.items():
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert ax.get_xlabel() and (ax.get_title() or fig.get_suptitle())
        plots.save(fig, tmp_path / f"{name}.png")
        assert_png(tmp_path / f"{name}.png")
    assert not list(tmp_path.glob(".*"))  # no temp files left behind
    rf = figs["roofline"].axes[0]
    assert rf.get_xscale() == "log" and rf.get_yscale() == "log"
    assert "FLOP" in rf.get_xlabel() and "FLOP/s" in rf.get_ylabel()


def test_scaling_frames_and_plot(tmp_path):
    from parplan import plots
    from parplan.plan import sweep
    from parplan.views.frames import as_cluster, as_model

    model, cluster = as_model(MODEL), as_cluster("a100x32")
    dev = sweep.device_scaling(model, cluster)
    assert list(dev["devices"]) == [8, 16, 32]
    assert (dev["status"] == "ok").all() and "fsdp_mfu" in dev.columns
    batch = sweep.batch_scaling(model, cluster, global_batch=64)
    gbs = list(batch["global_batch"])
    assert gbs == sorted(gbs) and 64 in gbs
    cw = batch.attrs["cw_tokens_per_device"]
    assert cw == cluster.hardware.ratios()["flops_per_inter_node_byte"]
    assert batch["tokens_per_device"].min() <= cw / 2 and batch["tokens_per_device"].max() >= cw * 2
    for name, frame in (("dev", dev), ("batch", batch)):
        fig = plots.scaling(frame)
        plots.save(fig, tmp_path / f"{name}.png")
        assert_png(tmp_path / f"{name}.png")
    # the C/W threshold is drawn on the batch curve, which brackets it
    assert any("C/W" in t.get_text() for t in plots.scaling(batch).axes[0].get_legend().get_texts())


# --------------------------------------------------------------------------- parplan report

@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    from parplan.cli.report_cmd import report

    out = tmp_path_factory.mktemp("report") / "gpt3-small"
    result = CliRunner().invoke(report, ["--model", MODEL, "--hw", HW, "--global-batch", "64", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'report.md'}" in result.output
    return out


def test_report_writes_markdown_and_pngs(report_dir):
    md = (report_dir / "report.md").read_text()
    pngs = sorted(p.name for p in report_dir.glob("*.png"))
    assert pngs == sorted(["roofline.png", "step_breakdown.png", "memory.png", "candidates.png",
                           "scaling_devices.png", "scaling_batch.png"])
    referenced = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", md)
    assert sorted(referenced) == pngs          # every PNG, relative, once
    for name in pngs:
        assert_png(report_dir / name)
    for csv in ("plans.csv", "scaling_devices.csv", "scaling_batch.csv"):
        assert (report_dir / csv).stat().st_size > 100
    assert not [p for p in report_dir.iterdir() if p.name.startswith(".")]  # atomic writes leave no temp files
    for heading in ("## Best plan", "## Roofline", "## Step time", "## Memory per device", "## All candidate plans",
                    "## Scaling with the number of devices", "## Scaling with the global batch"):
        assert heading in md
    assert "parplan report --model gpt3-1.3b --hw a100x16 --global-batch 64" in md
    assert "C/W" in md and "12480" in md


def test_report_default_dir_and_no_scaling(tmp_path, monkeypatch):
    from parplan.cli.report_cmd import report

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(report, ["--model", MODEL, "--hw", "a100x8", "--no-scaling", "--top", "2"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "reports" / "gpt3-1.3b-a100-80gbx8"
    md = (out / "report.md").read_text()
    assert "scaling" not in " ".join(re.findall(r"\]\(([^)]+)\)", md))
    assert len(list(out.glob("*.png"))) == 4


def test_report_searches_a_range_of_batches_and_names_the_one_it_took(tmp_path, run_cli):
    out = tmp_path / "range"
    code, text, err = run_cli("report", "--model", MODEL, "--hw", "a100x8", "--global-batch", "16..64",
                              "--no-scaling", "-o", str(out))
    assert code == 0, err
    md = (out / "report.md").read_text()
    assert md.startswith(f"# {MODEL} on 8 x a100-80gb: the training plan")
    chosen = int(re.search(r"global batch (\d+) sequences", md).group(1))
    assert chosen in (16, 32, 64) and "the best of 16, 32, 64, searched" in md
    plans = make_plan(load_model(MODEL), load_cluster("a100x8"), global_batch="16..64", top=1)
    assert chosen == int(plans.top.iloc[0]["global_batch"])  # the batch plan ranks first over the same range


def test_report_overwrites_atomically(tmp_path):
    from parplan.views.files import write_text

    target = tmp_path / "x.md"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["x.md"]
    with pytest.raises(ParplanError, match="cannot write"):
        write_text(tmp_path / "missing" / "x.md", "three")


# --------------------------------------------------------------------------- parplan sweep

def test_sweep_grid_table_csv_and_plot(tmp_path):
    import pandas as pd

    from parplan.cli.report_cmd import sweep

    out = tmp_path / "sw"
    result = CliRunner().invoke(sweep, ["--model", MODEL, "--hw", "a100", "--vary", "devices=8..32",
                                        "--vary", "global-batch=32,64", "-o", str(out)])
    assert result.exit_code == 0, result.output
    body = [ln for ln in result.output.splitlines() if re.match(r"\s+\d+\s+\d+", ln)]
    assert len(body) == 6
    df = pd.read_csv(out / "sweep.csv")
    assert list(zip(df["devices"], df["global_batch"])) == [(8, 32), (8, 64), (16, 32), (16, 64), (32, 32),
                                                             (32, 64)]
    assert (df["status"] == "ok").all() and (df["mfu"] > 0).all()
    assert_png(out / "sweep.png")


def test_sweep_cluster_with_count_and_infeasible_points(tmp_path):
    import pandas as pd

    from parplan.cli.report_cmd import sweep

    out = tmp_path / "sw"
    result = CliRunner().invoke(sweep, ["--model", "gpt3-13b", "--hw", "a100x16", "--vary", "devices=1,16",
                                        "--format", "csv", "-o", str(out)])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out / "sweep.csv")
    assert list(df["status"]) == ["no layout fits", "ok"]
    assert result.output.startswith("devices,global_batch")
    assert_png(out / "sweep.png")


# --------------------------------------------------------------------------- one-line errors

@pytest.mark.parametrize("args, match", [
    (["sweep", "--model", MODEL, "--hw", HW, "--vary", "devices8..64"], "expected KEY=VALUES"),
    (["sweep", "--model", MODEL, "--hw", HW, "--vary", "gpus=8..64"], "unknown key 'gpus'"),
    (["sweep", "--model", MODEL, "--hw", HW, "--vary", "devices=64..8"], "empty range"),
    (["sweep", "--model", MODEL, "--hw", "a100", "--vary", "global-batch=8"], "gives no device count"),
    (["sweep", "--model", MODEL, "--hw", "a10x8", "--vary", "global-batch=8"], "did you mean"),
    (["report", "--model", MODEL, "--hw", HW, "--global-batch", "0"], "positive whole number"),
    (["report", "--model", "gpt3", "--hw", "a100x8", "--no-scaling", "-o", "{tmp}/r"], "does not fit"),
])
def test_bad_input_is_one_line(args, match, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert_one_line_error(run_module(*args), match)
    assert not (tmp_path / "r").exists()   # nothing written when the plan fails


def test_unwritable_output_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_one_line_error(run_module("sweep", "--model", MODEL, "--hw", HW, "--vary", "global-batch=16",
                                     "-o", str(blocker / "sub")), "cannot create output directory")
    assert_one_line_error(run_module("report", "--model", MODEL, "--hw", HW, "-o", str(blocker / "sub")),
                          "cannot create output directory")


def test_registered_in_main_cli(run_cli):
    from parplan.cli.commands import cli

    if "report" not in cli.commands:
        pytest.skip("report/sweep not registered in parplan.cli yet")
    rc, out, _ = run_cli("sweep", "--help")
    assert rc == 0 and "--vary" in out
    assert_one_line_error(run_cli("sweep", "--model", MODEL, "--hw", HW, "--vary", "devices=8..x"),
                          "not a positive whole number")


# --------------------------------------------------------------------------- the example

def test_notebook_tour_runs(tmp_path):
    env = dict(os.environ, PARPLAN_TOUR_MODEL=MODEL, PARPLAN_TOUR_HW=HW, MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "notebook_tour.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("roofline.png", "step_breakdown.png", "memory.png", "candidates.png", "scaling_devices.png",
                 "scaling_batch.png", "sweep.png", "report/report.md"):
        assert (tmp_path / name).is_file(), name
    assert_png(tmp_path / "roofline.png")
    assert "layouts evaluated" in proc.stdout
