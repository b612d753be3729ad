"""The figures say what they show: merged identical bars with their text inside the axes, the KV-cache
dtype in the Pareto title, split markers above the front with a fixed batch, CPU matmul rates in GFLOP/s.
Checked on the matplotlib objects, not on pixels."""
import pytest

MODEL, HW = "gpt3-1.3b", "a100x16"


def _plan_rows(n=3):
    base = dict(tp=1, pp=1, dp=8, cp=1, zero=1, sp=False, vpp=1, micro_batch=1, recompute="none", mfu=0.5,
                order="tp,cp,dp,pp", compute_s=1.0, tp_comm_s=0.2)
    rows = [dict(base, micro_batch=1 + i) for i in range(n)]   # identical breakdowns, different plans
    rows.append(dict(base, micro_batch=9, compute_s=30.0))       # the longest bar, its text near the edge
    return rows


def _inside(inner, outer, slack=1.0):
    return (inner.x0 >= outer.x0 - slack and inner.x1 <= outer.x1 + slack
            and inner.y0 >= outer.y0 - slack and inner.y1 <= outer.y1 + slack)


def test_identical_breakdowns_share_one_bar_and_the_title_says_so():
    from parplan.views.plots import step_breakdown

    fig = step_breakdown(_plan_rows(3))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 2 and labels[0].count("\n") == 2
    assert labels[0].splitlines()[1].startswith("#2") and labels[1].startswith("#4")
    assert "#1 and #2 and #3: identical breakdowns" in ax.get_title()


def test_step_breakdown_text_fits_inside_the_axes_and_labels_inside_the_figure():
    from parplan.views.plots import step_breakdown

    fig = step_breakdown(_plan_rows(1))
    fig.draw_without_rendering()
    ax = fig.axes[0]
    box = ax.get_window_extent()
    notes = [t for t in ax.texts if "MFU" in t.get_text()]
    assert len(notes) == 2
    for t in notes:
        assert _inside(t.get_window_extent(), box), t.get_text()
    for t in ax.get_yticklabels():
        assert _inside(t.get_window_extent(), fig.bbox), t.get_text()


def test_distinct_breakdowns_keep_their_own_bars():
    from parplan.views.plot_fit import merge_identical

    rows = _plan_rows(1) + [dict(_plan_rows(1)[0], tp_comm_s=0.3)]
    kept, labels, numbers = merge_identical(rows, ["a", "b", "c"])
    assert numbers == [[1], [2], [3]] and labels == ["a", "b", "c"]


@pytest.fixture(scope="module")
def serve_frames():
    from parplan.plan.serve_search import plans
    from parplan.specs.cluster import load_cluster
    from parplan.specs.model_loader import load_model

    model, cluster = load_model("llama3.1-8b"), load_cluster("h100x8")
    free, _ = plans(model, cluster, input_len=512, output_len=64, kv_dtype="fp8")
    fixed, _ = plans(model, cluster, input_len=512, output_len=64, batch=16)
    return free, fixed


def _pareto_axes(df, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from parplan.views import serve_plots

    figs = []
    monkeypatch.setattr(plt, "close", lambda fig: figs.append(fig))
    serve_plots.pareto_plot(df, tmp_path / "p.png")
    return figs[0].axes[0]


def test_pareto_title_names_the_kv_cache_dtype(serve_frames, tmp_path, monkeypatch):
    free, fixed = serve_frames
    assert "KV cache fp8" in _pareto_axes(free, tmp_path, monkeypatch).get_title()
    assert "KV cache bf16" in _pareto_axes(fixed, tmp_path, monkeypatch).get_title()


def test_serving_names_the_cluster_as_a_person_reads_it(serve_frames, tmp_path, monkeypatch):
    from parplan.plan.serve_search import rank_plans
    from parplan.views.serve_text import format_plans

    free, fixed = serve_frames
    title = _pareto_axes(fixed, tmp_path, monkeypatch).get_title()
    labels = [ln.get_label() for ln in _pareto_axes(fixed, tmp_path, monkeypatch).get_lines()]
    assert "on 8 x h100-sxm:" in title and "h100-sxmx8" not in title
    assert "tp=8 pp=1 (x1 replica)" in labels and "tp=1 pp=1 (x8 replicas)" in labels
    head = format_plans(free, rank_plans(free)).splitlines()[0]
    assert "serving on 8 x h100-sxm:" in head and "(no latency targets: --ttft-ms, --tpot-ms)" in head


def test_fixed_batch_draws_splits_above_the_front(serve_frames, tmp_path, monkeypatch):
    _, fixed = serve_frames
    ax = _pareto_axes(fixed, tmp_path, monkeypatch)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    front = lines.pop("Pareto front")
    splits = [ln for label, ln in lines.items() if label.startswith("tp=")]
    assert splits and all(ln.get_marker() == "o" and ln.get_markersize() >= 6 for ln in splits)
    assert all(ln.get_zorder() > front.get_zorder() for ln in splits)
    assert front.get_linestyle() == "--"
    assert "batch 16" in ax.get_title()


def _matmul_row(rate):
    from parplan.calibrate.rows import Row

    return Row(kind="matmul", op="matmul", dtype="fp32", m=64, k=64, n=64, flops=2 * 64 ** 3, flops_per_s=rate,
               time_s=2 * 64 ** 3 / rate, device_name="cpu")


@pytest.mark.parametrize("rate, unit, shown", [(6e10, "GFLOP/s", 60.0), (3e14, "TFLOP/s", 300.0)])
def test_matmul_rate_unit_follows_the_rate(tmp_path, monkeypatch, rate, unit, shown):
    from parplan.views import bench_plots

    plt = bench_plots._pyplot()
    figs = []
    monkeypatch.setattr(plt, "close", lambda fig: figs.append(fig))
    assert bench_plots.plot_matmul([_matmul_row(rate)], tmp_path / "m.png")
    ax = figs[0].axes[0]
    assert unit in ax.get_ylabel()
    assert ax.collections[0].get_offsets()[0][1] == pytest.approx(shown)
    figs[0].canvas.draw()
    assert not any("10^" in t.get_text() or "times" in t.get_text() for t in ax.get_yticklabels())
