"""The house's floors, checked from the source: the import graph of the project's own modules (lazy
imports inside functions included) has no circle, no IO adapter imports a use-case stage, and the
pure domain imports neither adapters, flows nor an orchestration or tracking library."""
import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("tasks", "flows", "expectations")
STAGES = "tasks.stages"  # the use cases: above the IO adapters, below the Prefect tasks
HEAVY = {"prefect", "mlflow", "boto3", "great_expectations"}  # orchestration, tracking, storage, validation


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module this file imports, at any depth of the file; `from a import b` counts `a.b`
    too when `b` is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


GRAPH = {module_name(p): imports_of(p) for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def project_edges(module: str) -> set[str]:
    return {d for d in GRAPH[module] if d in GRAPH and d != module}


def find_cycle() -> list[str] | None:
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> list[str] | None:
        state[module] = "open"
        for dep in sorted(project_edges(module)):
            if state.get(dep) == "open":
                return trail[trail.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, [*trail, dep])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(GRAPH):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_the_graph_sees_lazy_imports():
    assert "tasks.stages.evaluate" in project_edges("tasks.stages.promote")
    assert "tasks.adapters.inference" in project_edges("tasks.stages.evaluate"), "imported inside a function"


def test_no_import_circle():
    assert find_cycle() is None, " -> ".join(find_cycle() or [])


def test_no_io_adapter_imports_a_stage():
    adapters = [m for m in GRAPH if m.startswith("tasks.adapters")]
    offenders = {m: sorted(d for d in project_edges(m) if d.startswith(STAGES)) for m in adapters}
    assert not {m: found for m, found in offenders.items() if found}
    assert any(d.startswith(STAGES) for d in project_edges("tasks.eval_tasks")), "the check sees stage imports"


def test_pure_domain_imports_no_adapter_flow_or_heavy_library():
    for module in (m for m in GRAPH if m.startswith("tasks.domain")):
        bad = {d for d in GRAPH[module] if d.startswith(("tasks.adapters", "flows")) or d.split(".")[0] in HEAVY}
        assert not bad, f"{module} imports {sorted(bad)}"
