"""The house's floors, checked from the source: the import graph of the project's own modules (lazy
imports inside functions included) has no circle, every folder imports only the floors below it
(LAYERS), the pure domain imports no orchestration or tracking library, no stage reads a config
file by name, and no two modules share a name."""
import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("tasks", "flows", "expectations")
STAGES = "tasks.stages"  # the use cases: above the IO adapters, below the Prefect tasks
HEAVY = {"prefect", "mlflow", "boto3", "great_expectations"}  # orchestration, tracking, storage, validation

# Each folder, bottom to top, with the folders it may import. docs/layout.md's table says the same.
ADAPTERS = {"tasks.adapters.ops", "tasks.adapters.data", "tasks.adapters.model", "tasks.adapters.tracking"}
LAYERS = {
    "tasks.domain": set(),
    "expectations": {"tasks.domain"},
    "tasks.adapters.ops": {"tasks.domain"},
    "tasks.adapters.data": {"tasks.domain", "expectations", "tasks.adapters.ops"},
    "tasks.adapters.model": {"tasks.domain", "tasks.adapters.ops", "tasks.adapters.data"},
    "tasks.adapters.tracking": {"tasks.domain", "tasks.adapters.ops", "tasks.adapters.data", "tasks.adapters.model"},
    "tasks.stages": {"tasks.domain", "expectations", *ADAPTERS},
    "tasks": {"tasks.domain", *ADAPTERS, "tasks.stages"},  # the Prefect tasks: tasks/*_tasks.py
    "flows": {"tasks.domain", *ADAPTERS, "tasks.stages", "tasks"},
    "flows.cli": {"tasks.domain", *ADAPTERS, "tasks.stages", "tasks", "flows"},
}


def layer_of(module: str) -> str:
    return max((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), key=len)


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
    assert "tasks.adapters.model.measurement" in project_edges("tasks.stages.evaluate"), "imported inside a function"


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


def test_every_folder_imports_only_the_floors_below_it():
    offenders = []
    for module in GRAPH:
        own = layer_of(module)
        offenders += [f"{module} -> {dep}" for dep in project_edges(module) if layer_of(dep) not in {own, *LAYERS[own]}]
    assert not offenders, offenders


def test_adapters_are_grouped_by_the_system_they_talk_to():
    loose = [m for m in GRAPH if m.startswith("tasks.adapters.") and m.count(".") < 3 and
             m.removeprefix("tasks.adapters.") not in ("ops", "data", "model", "tracking")]
    assert not loose, loose


def test_no_stage_reads_a_config_file_by_name():
    readers = {"tasks.adapters.ops.config_files"}
    for module in (m for m in GRAPH if m.startswith(STAGES)):
        assert not {d for d in GRAPH[module] if d.startswith(tuple(readers))}, f"{module} loads config files"


def test_no_two_modules_share_a_name():
    names: dict[str, list[str]] = {}
    for module in GRAPH:
        leaf = module.rsplit(".", 1)[-1]
        if leaf not in ("__main__",) and not (REPO / Path(*module.split("."))).is_dir():
            names.setdefault(leaf, []).append(module)
    assert not {leaf: found for leaf, found in names.items() if len(found) > 1}
