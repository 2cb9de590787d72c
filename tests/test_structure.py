"""The code's layers, read from its imports: ddpm_core has no import cycle, and the Space's tabs stand side by side.

Every import statement counts, at module level or inside a function, except those under ``if TYPE_CHECKING:``
(annotations only: they never run).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``path`` imports (``from pkg import module`` names the module itself)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    todo = list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if _type_checking_only(node):
            continue
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            targets = [module, *(f"{module}.{a.name}" for a in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a name inside a module stands for the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(*packages: str) -> dict[str, set[str]]:
    files = [p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))]
    known = {_module_name(p) for p in files}
    return {_module_name(p): _imported(p, known) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walk_sees_a_cycle_and_function_level_imports(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    graph = import_graph("ddpm_core")
    assert "ddpm_core.samplers.ddpm" in graph["ddpm_core.samplers"]  # `from .ddpm import DDPM` in a package
    assert "ddpm_core.likelihood" in graph["ddpm_core.train"] or "ddpm_core.likelihood" in graph["ddpm_core.diffusion"]


def test_ddpm_core_has_no_import_cycle():
    cycle = find_cycle(import_graph("ddpm_core"))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_ddpm_core_does_not_import_the_space():
    graph = import_graph("ddpm_core", "ui")
    hits = {m: sorted(d for d in deps if d.startswith("ui")) for m, deps in graph.items() if m.startswith("ddpm_core")}
    assert not {m: d for m, d in hits.items() if d}


def test_no_tab_imports_another_tab():
    graph = import_graph("ui")
    tabs = {m for m in graph if m.startswith("ui.tabs.")}
    hits = {m: sorted(graph[m] & tabs) for m in tabs if graph[m] & tabs}
    assert not hits, hits


#: The evaluation harness: the CLI, tests and benches import it; the Space reads curves through ddpm_core.quality.
HARNESS = {"ddpm_core.evaluate", "ddpm_core.curve", "ddpm_core.card", "ddpm_core.scoring", "ddpm_core.classifier"}


def test_the_space_does_not_import_the_evaluation_harness():
    """Nothing the Space imports, directly or through other modules, is part of the evaluation harness."""
    graph = import_graph("ddpm_core", "ui")
    seen, todo = set(), [m for m in graph if m.startswith("ui")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph.get(m, ())
    assert "ddpm_core.quality" in seen and not seen & HARNESS, sorted(seen & HARNESS)
