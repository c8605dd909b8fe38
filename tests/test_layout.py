"""The code's layout (docs/architecture.md, "Code layout"): no import cycles, a Django-free core.

Read from the source with ``ast``, nothing is imported: the import graph of our
own packages must have no cycle — neither at module level, nor once
function-level imports count too, so that no lazy import hides one — and the
engine and the scheduling core of ``dispatch/`` import no Django.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() and p.name != "tests")
# Plain Python: unit-tested without Django, run by any process.
DJANGO_FREE = ["engine", "dispatch.ordering", "dispatch.scheduler"]
DJANGO_ROOTS = {"django", "rest_framework", "channels", "django_rq", "rq", "daphne"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                modules[module_name(path)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def imports_of(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported dotted name, at function level?) for every import in ``path``.

    Imports under ``if TYPE_CHECKING:`` are left out: they never run.
    ``from a import b`` yields ``a.b`` (a module or a name in ``a``).
    """
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit(sub, in_function)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolve against this module's package
                    package = module.split(".")
                    if not path.name == "__init__.py":
                        package = package[:-1]
                    package = package[: len(package) - (child.level - 1)]
                    base = ".".join(package + ([base] if base else []))
                found.extend((f"{base}.{alias.name}", in_function) for alias in child.names)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an import of ``name`` loads (its longest known prefix)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(include_function_level: bool) -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        graph[module]
        for name, in_function in imports_of(path, module):
            if in_function and not include_function_level:
                continue
            target = resolve(name, modules)
            if target is not None and target != module:
                graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = walk(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = walk(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_the_layout() -> None:
    """Guard the guard: the parser finds the edges the layout is made of."""
    graph = import_graph(include_function_level=False)
    assert "dispatch.registry" in graph["training_app.actions"]
    assert "workers.executor" in graph["dispatch.registry"]
    assert "training_app.actions" in graph["training_app.handlers"]
    assert "workers.runtime" in graph["workers.rq_worker"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_at_module_level() -> None:
    cycle = find_cycle(import_graph(include_function_level=False))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_function_level_import_hides_a_cycle() -> None:
    """A lazy import is for a heavy or optional library or Django's app loading, never to dodge a cycle."""
    cycle = find_cycle(import_graph(include_function_level=True))
    assert cycle is None, (
        "import cycle through a function-level import: " + " -> ".join(cycle or [])
        + " (fix the layout instead of importing inside a function)"
    )


def test_engine_and_scheduling_core_import_no_django() -> None:
    modules = project_modules()
    graph = import_graph(include_function_level=True)
    roots = [m for m in modules if any(m == d or m.startswith(d + ".") for d in DJANGO_FREE)]
    assert "engine.runtime" in roots and "dispatch.scheduler" in roots
    offenders = []
    seen: set[str] = set()
    todo = list(roots)
    while todo:  # everything these modules import, transitively
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name, _ in imports_of(modules[module], module):
            if name.split(".")[0] in DJANGO_ROOTS:
                offenders.append(f"{module} imports {name}")
        todo.extend(graph[module])
    project_deps = sorted(m for m in seen if not any(m == d or m.startswith(d + ".") for d in DJANGO_FREE))
    assert not project_deps, f"the Django-free core imports other project modules: {project_deps}"
    assert not offenders, offenders
