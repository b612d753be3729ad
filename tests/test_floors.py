"""The package's floors: each imports only the floors beneath it, and no module imports itself back.

Data flows one way (docs/architecture.md): errors/units -> specs -> cost -> layouts -> step ->
plan | calibrate -> validate -> views -> bench -> cli. A module may import any floor below its
own, and its own package; the package facade (``parplan``, ``parplan.frames``,
``parplan.plots``) and ``__main__`` entry points sit above everything.
"""
import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "parplan"
FLOORS = {"errors": 0, "units": 0, "version": 0, "specs": 1, "data": 1, "cost": 2, "layouts": 3, "step": 4,
          "plan": 5, "calibrate": 5, "validate": 6, "views": 7, "bench": 8, "cli": 9}
FACADES = {"parplan", "parplan.frames", "parplan.plots"}
MAX_LINES = 400


def _name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every parplan module and the parplan modules it imports anywhere in its body (lazy imports too)."""
    modules = {_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _floor(module: str):
    return FLOORS[module.split(".")[1]] if "." in module else None


def test_every_module_sits_on_a_floor():
    assert {m.split(".")[1] for m in import_graph() if "." in m} <= set(FLOORS) | {"frames", "plots", "__main__"}


def test_each_floor_imports_only_the_floors_beneath_it():
    wrong = []
    for module, deps in import_graph().items():
        if module in FACADES or module.endswith("__main__"):
            continue
        for dep in deps:
            mine, theirs = _floor(module), _floor(dep)
            same_floor_elsewhere = theirs == mine and mine > 0 and module.split(".")[1] != dep.split(".")[1]
            if dep in FACADES or theirs > mine or same_floor_elsewhere:
                wrong.append(f"{module} -> {dep}")
    assert not wrong, wrong


def test_no_import_cycles():
    graph, state, cycles = import_graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_no_module_is_long():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_the_checker_sees_every_kind_of_import():
    """The graph reads relative, absolute and lazy imports alike (a floor test that saw nothing would pass)."""
    graph = import_graph()
    assert "parplan.cost.ops" in graph["parplan.step.train"]           # relative, at the top
    assert "parplan.views.plots" in graph["parplan.views.report"]       # relative, inside a function
    assert "parplan.plan.planner" in graph["parplan.cli.commands"]      # lazy, two floors up
