"""The plan search obeys the brief's rules and reacts to the cluster in the expected direction."""
import pytest
import json

from parplan.hardware import load_cluster
from parplan.model import load_model
from parplan.search import SearchSpace, default_global_batch, rank, search


def test_gpt3_a100x512_plan_keeps_tp_inside_a_node(run_cli):
    rc, out, err = run_cli("plan", "--model", "gpt3", "--hw", "a100x512", "--format", "json", "--top", "5")
    assert rc == 0, err
    plans = json.loads(out)
    assert len(plans) == 5
    assert all(p["tp"] <= 8 and p["fits"] for p in plans)
    times = [p["step_time_s"] for p in plans]
    assert times == sorted(times)
    assert plans[0]["tp"] * plans[0]["pp"] * plans[0]["dp"] * plans[0]["cp"] == 512


def test_plan_table_names_default_batch_and_reason(run_cli):
    rc, out, err = run_cli("plan", "--model", "gpt3", "--hw", "a100x512", "--top", "3")
    assert rc == 0, err
    assert "default:" in out and "faster than #2" in out


def test_less_hbm_changes_the_plan_towards_less_memory():
    """Halving HBM: the best plan on 40 GB A100s fits 40 GB and differs from the 80 GB winner, which would not fit."""
    m = load_model("gpt3-13b")

    def ranked(hw):
        cl = load_cluster(hw)
        space = SearchSpace(global_batch=default_global_batch(m, cl, m.seq_len), seq_len=m.seq_len)
        df, _ = search(m, cl, space)
        return rank(df)
    big, small = ranked("a100-80gbx64").iloc[0], ranked("a100-40gbx64").iloc[0]
    assert small["memory_bytes"] <= 40e9 * 0.9
    assert big["memory_bytes"] > 40e9 * 0.9
    assert small["step_time_s"] >= big["step_time_s"]


def test_infeasible_model_says_so_and_names_the_fewest_devices(run_cli):
    rc, out, err = run_cli("plan", "--model", "llama3.1-405b", "--hw", "a100x8")
    assert rc == 1
    assert "does not fit" in err and "fewest" in err
    need = int(err.strip().rsplit(" ", 1)[-1])
    assert need > 8 and need % 8 == 0


def test_fixed_axis_is_respected(run_cli):
    rc, out, err = run_cli("plan", "--model", "gpt3", "--hw", "a100x512", "--tp", "8", "--format", "json", "--top", "3")
    assert rc == 0, err
    assert all(p["tp"] == 8 for p in json.loads(out))


def test_search_rows_equal_scalar_estimates():
    """The batched evaluation gives every candidate exactly what estimate() gives it alone."""
    import numpy as np

    from parplan.estimate import estimate
    from parplan.search import layout_of

    m, cl = load_model("gpt3"), load_cluster("a100x512")
    space = SearchSpace(global_batch=2048, seq_len=2048)
    df, _ = search(m, cl, space)
    rng = np.random.default_rng(0)
    picks = [df[df["zero"] == z].iloc[int(rng.integers(0, (df["zero"] == z).sum()))] for z in (0, 1, 2, 3)]
    picks += [rank(df).iloc[0], rank(df).iloc[1]]
    for row in picks:
        est = estimate(m, cl, layout_of(row, space))
        assert float(est.step_time_s) == pytest.approx(row["step_time_s"], rel=1e-9), row.to_dict()
        assert float(est.memory_bytes["total"]) == pytest.approx(row["memory_bytes"], rel=1e-9)
