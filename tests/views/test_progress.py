"""Progress bars: drawn on a terminal only, fed by the planner's ``progress(done, total)`` callbacks."""
import io

from parplan.views.progress import is_terminal, part, progress

MODEL, HW = "gpt3-1.3b", "a100x16"


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_is_quiet_off_a_terminal_and_drawn_on_one():
    pipe, tty = io.StringIO(), Terminal()
    bars = []
    for stream in (pipe, tty):
        with progress("work", 4, unit="run", stream=stream) as update:
            for i in range(4):
                update(i + 1, note=f"item {i}")
            bars.append((update.bar, update.bar.disable))
    assert pipe.getvalue() == "" and bars[0][1]
    assert not bars[1][1] and "work:" in tty.getvalue() and "0/4" in tty.getvalue()
    assert bars[1][0].n == 4 and bars[1][0].postfix == "item 3"
    assert not is_terminal(pipe) and is_terminal(tty) and not is_terminal(object())


def test_bar_sets_the_count_and_takes_a_new_total():
    tty = Terminal()
    with progress("work", stream=tty) as update:
        update(3, 10)
        update(7, 10)
        assert (update.bar.n, update.bar.total) == (7, 10)


def test_part_maps_a_step_onto_its_share_of_the_whole():
    seen = []
    cb = part(lambda done, total: seen.append((done, total)), 2.0, 4.0, 10.0)
    cb(1, 2)
    cb(2, 2)
    assert seen == [(4.0, 10.0), (6.0, 10.0)]
    assert part(None, 0, 1, 1) is None


def _recorder():
    calls = []
    return calls, lambda done, total: calls.append((done, total))


def test_search_reports_each_estimate():
    from parplan.plan.candidates import SearchSpace
    from parplan.plan.search import search
    from parplan.specs.cluster import load_cluster
    from parplan.specs.model_loader import load_model

    calls, cb = _recorder()
    search(load_model(MODEL), load_cluster(HW), SearchSpace(global_batch=64, seq_len=2048), progress=cb)
    assert calls and calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == list(range(1, len(calls) + 1))


def test_sweep_reports_each_point():
    from parplan.plan.sweep import run_sweep
    from parplan.specs.model_loader import load_model

    calls, cb = _recorder()
    df = run_sweep(load_model(MODEL), "a100", {"devices": [8, 16, 32]}, progress=cb)
    assert calls == [(1, 3), (2, 3), (3, 3)] and len(df) == 3


def test_report_progress_rises_to_its_total(tmp_path):
    from parplan.views.report import build_report

    calls, cb = _recorder()
    build_report(MODEL, HW, out_dir=tmp_path / "rep", progress=cb)
    done = [d for d, _ in calls]
    assert done == sorted(done) and len({t for _, t in calls}) <= 2
    assert calls[-1][0] == calls[-1][1] > 2   # the search, then two searches per scaling point


def test_commands_print_no_bar_into_a_pipe(run_cli, tmp_path):
    rc, out, err = run_cli("sweep", "--model", MODEL, "--hw", "a100", "--vary", "devices=8,16",
                           "-o", str(tmp_path / "sw"))
    assert rc == 0, err
    assert err == "" and "sweep:" not in out
