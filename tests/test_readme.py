"""The README's commands run, and the options it lists exist on the commands it names.

Every fenced ``bash`` command of README.md runs in README order in one scratch directory (a file one command
writes, the next reads), in this process. ``[...]`` marks an optional group and ``a|b`` a choice: each command
runs as written with the groups left out and the first of each choice, and every other group and choice is
parsed by the command's own option parser (the option exists and takes that value). What cannot run on a CPU
in CI is skipped or shortened below, each with its reason.
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess

import click
import pytest
import yaml

from parplan.cli.commands import cli, main
from tests.helpers import NCCL_TESTS_LOG, REPO

README = (REPO / "README.md").read_text()

SKIP = {  # the first word of a command: why it does not run here
    "pip": "installs the package, which CI has already done",
    "python": "`python -m pytest` is this suite",
    "torchrun": "needs several machines and a rendezvous endpoint",
    "srun": "needs a SLURM allocation",
    "bash": "scripts/multi_gpu_pass8.sh needs a host of GPUs (about 9 minutes)",
}
SHELL = ("printf",)  # plain shell commands the README uses to write a file
# What runs shortened on a CPU in CI, and why: (pattern, replacement, reason), applied in order.
SHORTEN = (
    (r"^(parplan bench .*)$", r"\1 --ops all_reduce,all_gather --max-bytes 64K --iters 2 --warmup 1 --matmul-max 128",
     "no GPU in CI: gloo ranks on the CPU, small sizes, few iterations"),
    (r"--nproc 8 --backend nccl", "--nproc 2 --backend gloo", "two CPU ranks stand in for a node's GPUs"),
    (r"--nproc 8 ", "--nproc 4 ", "four CPU ranks: enough for sub-groups of 2 and 4"),
    (r"^parplan report ", "parplan report --no-scaling ",
     "the scaling curves re-search the plan at every device count and batch (test_report runs them)"),
)
VALIDATE_RUNS = 3  # `parplan validate` runs on the first records: tests/validate predicts every shipped one


def fenced_commands(text: str) -> list[str]:
    """The commands of every ```bash block: continuation lines joined, comments and ``&&`` split off."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = "" if line.lstrip().startswith("#") else re.sub(r"\s+#\s.*$", "", line)
            out += [part.strip() for part in line.split(" && ") if part.strip()]
    return list(dict.fromkeys(out))


def _groups(text: str) -> tuple[str, list[str]]:
    """``text`` without its top-level ``[...]`` groups, and the groups' contents."""
    base, groups, depth, start = [], [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            if depth == 0:
                start = i + 1
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                groups.append(text[start:i])
        elif depth == 0:
            base.append(ch)
    assert depth == 0, f"unbalanced [ ] in: {text}"
    return re.sub(r"\s+", " ", "".join(base)).strip(), groups


def _choices(command: str) -> tuple[str, list[str]]:
    """The command with the first of each ``a|b`` choice, and one command per other choice."""
    tokens = command.split(" ")
    first = [t.split("|")[0] if "|" in t and not t.startswith(("'", '"')) else t for t in tokens]
    others = []
    for i, t in enumerate(tokens):
        if "|" in t and not t.startswith(("'", '"')):
            others += [" ".join(first[:i] + [alt] + first[i + 1:]) for alt in t.split("|")[1:]]
    return " ".join(first), others


def expand(command: str) -> tuple[str, list[str]]:
    """(what runs: no optional group, first choices; what is parsed: each group's alternatives and choices)."""
    base, groups = _groups(command)
    runs, parsed = _choices(base)
    for group in groups:
        alternatives = [a.strip() for a in re.split(r" \| ", group)]
        flag = alternatives[0].split(" ")[0]
        for alt in alternatives:
            alt = alt if alt.startswith("-") else f"{flag} {alt}"  # [--global-batch 1536 | 512,1024]
            inner_runs, inner = expand(alt)
            parsed += [f"{runs} {v}" for v in [inner_runs] + inner]
    return runs, parsed


COMMANDS = fenced_commands(README)


def test_the_readme_grammar_is_read_as_meant():
    runs, parsed = expand("parplan plan --x a|b [--g 1 | 2] [--t 3 [--p 4]]")
    assert runs == "parplan plan --x a"
    assert sorted(parsed) == sorted(["parplan plan --x b", "parplan plan --x a --g 1", "parplan plan --x a --g 2",
                                     "parplan plan --x a --t 3", "parplan plan --x a --t 3 --p 4"])
    assert "parplan plan --model gpt3 --hw a100x512" in COMMANDS and len(COMMANDS) > 15


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """The scratch directory the README's commands share, with the files a reader brings: an nccl-tests log.
    Session-scoped: under xdist a worker interleaves other modules' tests, which would end a module fixture
    (and the files earlier commands wrote) between two README commands."""
    path = tmp_path_factory.mktemp("readme")
    (path / "nccl-tests-allreduce.log").write_text(NCCL_TESTS_LOG)
    runs = yaml.safe_load((REPO / "validation" / "published-runs.yaml").read_text())[:VALIDATE_RUNS]
    (path / "validation").mkdir()
    (path / "validation" / "published-runs.yaml").write_text(yaml.safe_dump(runs))
    return path


def _parplan(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.mark.xdist_group("readme")  # one worker, in the README's order: a command may read what one before wrote
@pytest.mark.parametrize("command", COMMANDS, ids=[c[:70] for c in COMMANDS])
def test_every_readme_command_runs(command, workdir, monkeypatch):
    program = command.split(" ")[0]
    if program in SKIP:
        pytest.skip(SKIP[program])
    runs, _ = expand(command)
    for pattern, replacement, _reason in SHORTEN:
        runs = re.sub(pattern, replacement, runs)
    if runs == "parplan validate":  # the shipped files' first records, copied to ./validation
        runs = "parplan validate validation/published-runs.yaml"
    monkeypatch.chdir(workdir)
    if program in SHELL:
        subprocess.run(["bash", "-c", runs], check=True, cwd=workdir)
        return
    assert program == "parplan", f"README command of an unknown program: {command}"
    tokens = shlex.split(runs)
    target = None
    if ">" in tokens:
        tokens, target = tokens[:tokens.index(">")], tokens[tokens.index(">") + 1]
    if tokens[1] == "bench":
        pytest.importorskip("torch", reason="parplan bench measures with PyTorch (the bench extra)")
    elif "reports/bench/my-node" in tokens and not (workdir / "reports" / "bench" / "my-node").is_dir():
        pytest.skip("reads the results of the README's bench run, which did not run")
    elif "my-512.yaml" in tokens and not (workdir / "my-cluster.yaml").exists():
        pytest.skip("plans on the profile the README's calibrate writes from its bench run, which did not run")
    code, out, err = _parplan(tokens[1:])
    assert code == 0, f"{runs}\n{err}"
    assert out.strip(), runs
    if target:
        (workdir / target).write_text(out)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("parplan ")],
                         ids=[c[:70] for c in COMMANDS if c.startswith("parplan ")])
def test_every_option_the_readme_shows_exists_and_takes_its_value(command):
    runs, parsed = expand(command)
    for variant in [runs] + parsed:
        tokens = shlex.split(variant.split(" > ")[0])
        sub = cli.commands[tokens[1]]
        try:
            sub.make_context(tokens[1], tokens[2:], resilient_parsing=False)
        except click.ClickException as exc:
            pytest.fail(f"{variant}: {exc.format_message()}")


def test_the_shorthands_the_readme_lists_exist_on_plan_estimate_and_explain():
    sentence = re.search(r"the shorthands `([^`]+)`", README.replace("\n", " ")).group(1)
    flags = sentence.split()
    assert "--vpp" in flags and "--cp-mode" in flags
    for name in ("plan", "estimate", "explain"):
        options = {o for p in cli.commands[name].params for o in p.opts + p.secondary_opts}
        assert set(flags + ["--mesh"]) <= options, (name, set(flags) - options)
