"""The package's rooms import one way, without loops; only the command-line modules print;
importing the package changes no global state it does not own."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "quadra_ad"

#: Entry points and orchestration: the only rooms allowed to import the tasks.
TOP = {"cli", "run", "compare_cli", "upload_cli", "predict_cli", "entry_points", "tasks", "testing", "__main__"}
#: Command-line modules: the only ones allowed to print.
PRINTERS = {"quadra_ad.cli", "quadra_ad.compare_cli", "quadra_ad.upload_cli", "quadra_ad.predict_cli", "quadra_ad.entry_points"}
#: Rooms that a given room must never import (beyond TOP, which no lower room imports).
FORBIDDEN = {
    "deploy": {"export", "callbacks", "datamodules", "models", "reports", "tracking", "metrics"},
    "export": {"callbacks", "datamodules", "models", "reports", "tracking"},
    "reports": {"callbacks", "export", "deploy", "models", "tracking"},
    "callbacks": {"export", "deploy", "tracking"},
    "thresholds": {"metrics", "reports", "callbacks", "export", "deploy", "models", "datamodules", "tracking"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every quadra_ad module ``path`` imports, at any depth (function bodies, TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "quadra_ad" or name.startswith("quadra_ad.")}


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # "from quadra_ad.x import y" names module x.y when y is a module, else module x.
        graph[name] = {target for target in _imports(path) if target in modules and target != name}
    return graph


def _room(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_lower_rooms_never_import_the_tasks_or_the_entry_points():
    offending = [
        f"{module} imports {target}"
        for module, targets in _import_graph().items() if _room(module) not in TOP
        for target in targets if _room(target) in TOP
    ]
    assert offending == []


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_room_imports_only_rooms_below_it(room):
    offending = [
        f"{module} imports {target}"
        for module, targets in _import_graph().items() if _room(module) == room
        for target in targets if _room(target) in FORBIDDEN[room]
    ]
    assert offending == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_loop_between_modules():
    assert _cycle(_import_graph()) is None


def test_no_import_loop_between_rooms():
    rooms: dict[str, set[str]] = {}
    for module, targets in _import_graph().items():
        rooms.setdefault(_room(module), set()).update(_room(t) for t in targets if _room(t) != _room(module))
    assert _cycle(rooms) is None


def test_product_code_does_not_use_the_test_scaffolding():
    offending = [
        f"{module} imports {target}"
        for module, targets in _import_graph().items() if _room(module) != "testing"
        for target in targets if _room(target) == "testing"
    ]
    assert offending == []


def test_only_the_command_line_modules_print():
    printing = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(_module_name(path))
    assert set(printing) <= PRINTERS, sorted(set(printing) - PRINTERS)


def test_the_graph_checked_here_sees_the_known_imports():
    # Guards the checks above against a graph that silently came out empty.
    graph = _import_graph()
    assert "quadra_ad.deploy.model_card" in graph["quadra_ad.export.writers"] or \
        "quadra_ad.deploy.runners" in graph["quadra_ad.export.writers"]
    assert "quadra_ad.callbacks.score_collector" in graph["quadra_ad.tasks.anomaly_training"]
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_importing_the_reports_leaves_matplotlib_backend_and_pyplot_alone():
    probe = (
        "import matplotlib, sys\n"
        "backend = lambda: dict.__getitem__(matplotlib.rcParams, 'backend')  # read without resolving it\n"
        "before = backend()\n"
        "import quadra_ad.reports.report, quadra_ad.reports.plots\n"
        "print('pyplot' if 'matplotlib.pyplot' in sys.modules else 'no-pyplot', before == backend())\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["no-pyplot", "True"]
