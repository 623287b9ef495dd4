"""The package's rooms import one way, without loops; only the command-line modules print;
importing the package changes no global state it does not own."""

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "quadra_ad"

#: Entry points and orchestration: the only rooms allowed to import the tasks.
TOP = {"cli", "run", "tasks", "testing", "__main__"}
#: Command-line modules: the only ones allowed to print.
PRINTERS = {"quadra_ad.cli.train", "quadra_ad.cli.compare", "quadra_ad.cli.upload", "quadra_ad.cli.predict", "quadra_ad.cli.entry_points"}
#: The rooms from the bottom up: a room imports only rooms on lower lines (none beside or above it),
#: so the data flows one way: CLI → config → task → steps → export/report/tracking.
LAYERS = (
    {"errors", "versions", "quadra_ad"},
    {"files", "runtime", "evaluation"},
    {"deploy"},
    {"config"},
    {"datamodules", "models", "export"},
    {"checks", "reports"},
    {"callbacks", "tracking"},
    {"tasks"},
    {"run"},
    {"testing", "cli"},
    {"__main__"},
)
#: The evaluation modules the torch-free deploy room may read (numpy only).
DEPLOY_READS_FROM_EVALUATION = {"quadra_ad.evaluation", "quadra_ad.evaluation.thresholds", "quadra_ad.evaluation.scored_set"}
#: At most this many modules at the package root: everything else lives in a room that says its concern.
MAX_ROOT_MODULES = 8


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


def _level(room: str) -> int:
    return next(index for index, rooms in enumerate(LAYERS) if room in rooms)


def test_every_room_has_a_place_in_the_layers():
    rooms = {_room(module) for module in _import_graph()}
    assert sorted(room for room in rooms if not any(room in layer for layer in LAYERS)) == []


def test_rooms_import_only_rooms_below_them():
    offending = [
        f"{module} imports {target}"
        for module, targets in _import_graph().items()
        for target in targets
        if _room(target) != _room(module) and _level(_room(target)) >= _level(_room(module))
    ]
    assert offending == []


def test_the_deploy_room_reads_only_the_numpy_part_of_evaluation():
    offending = [
        f"{module} imports {target}"
        for module, targets in _import_graph().items() if _room(module) == "deploy"
        for target in targets if _room(target) == "evaluation" and target not in DEPLOY_READS_FROM_EVALUATION
    ]
    assert offending == []


def test_the_package_root_holds_few_modules():
    modules = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(modules) <= MAX_ROOT_MODULES, modules


#: How a process ends is runtime's business: elsewhere nothing sets a signal handler, leaves the
#: process with os._exit, swaps the unraisable hook, or catches the exceptions that stop a run.
STOPPING = {"KeyboardInterrupt", "SystemExit", "Terminated", "OutputClosed"}


def _caught(handler: ast.ExceptHandler) -> set[str]:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type] if handler.type else []
    return {node.id if isinstance(node, ast.Name) else node.attr for node in names
            if isinstance(node, (ast.Name, ast.Attribute))}


def _reraises(handler: ast.ExceptHandler) -> bool:
    return bool(handler.body) and isinstance(handler.body[-1], ast.Raise) and handler.body[-1].exc is None


def _run_ending_code(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        where = f"{_module_name(path)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            if (owner, node.func.attr) in (("signal", "signal"), ("os", "_exit")):
                found.append(f"{where} calls {owner}.{node.func.attr}")
            if (owner, node.func.attr) == ("sys", "exit") and node.args and isinstance(node.args[0], ast.Constant) \
                    and node.args[0].value not in (0, None):
                found.append(f"{where} exits with a bare code {node.args[0].value!r}")
        elif isinstance(node, ast.Assign) and any(isinstance(target, ast.Attribute) and target.attr == "unraisablehook"
                                                  for target in node.targets):
            found.append(f"{where} sets sys.unraisablehook")
        elif isinstance(node, ast.ExceptHandler):
            caught = _caught(node)
            if caught & STOPPING or ("BaseException" in caught and not _reraises(node)):
                found.append(f"{where} catches {', '.join(sorted(caught))}")
    return found


def test_how_a_run_ends_is_decided_in_the_runtime_room_only():
    offending = [line for path in sorted(PACKAGE.rglob("*.py")) if _room(_module_name(path)) != "runtime"
                 for line in _run_ending_code(path)]
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
    assert _level("cli") > _level("tasks") > _level("export") > _level("deploy")
    bad = ast.parse("try:\n    pass\nexcept (KeyboardInterrupt, ValueError):\n    pass\n").body[0].handlers[0]
    assert _caught(bad) == {"KeyboardInterrupt", "ValueError"} and not _reraises(bad)
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


#: An error's first line cut out by hand (``str(error).strip().splitlines()[0]``): errors.first_line does it.
INLINE_FIRST_LINE = re.compile(r"str\(\s*(?:error|exc|err|failure|exception|cause)\s*\)[^\n]*\.splitlines\(\)(?:\[0\]| or \[)")


def test_an_errors_first_line_is_cut_by_one_helper():
    offending = [f"{_module_name(path)}:{number}" for path in sorted(PACKAGE.rglob("*.py")) if path.name != "errors.py"
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if INLINE_FIRST_LINE.search(line)]
    assert offending == []
    assert INLINE_FIRST_LINE.search('first = str(error).strip().splitlines()[0] if str(error).strip() else ""')
    assert INLINE_FIRST_LINE.search("first = (str(error).strip().splitlines() or [type(error).__name__])[0]")
