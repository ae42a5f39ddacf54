"""The package's layering: no module-level import cycle, and every module imports on its own."""

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "inheritune"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__main__")


def module_imports(name: str) -> set[str]:
    """Package modules imported at module level (top-level statements only) by ``name``."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names if alias.name in MODULES)
    return found - {"__init__"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_level_import_cycle():
    graph = {name: module_imports(name) for name in MODULES}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_package_import_hides_in_a_function():
    """Relative imports sit at the top of each module; only heavy optional packages may be imported late."""
    for name in MODULES:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        top = set(map(id, tree.body))
        late = [node.lineno for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level == 1 and id(node) not in top]
        assert not late, f"{name}.py imports package modules inside functions at lines {late}"


def test_every_module_imports_alone_in_a_fresh_interpreter():
    def load(name):
        return name, subprocess.run([sys.executable, "-c", f"import inheritune.{name}"], capture_output=True,
                                    text=True)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for name, result in pool.map(load, MODULES):
            assert result.returncode == 0, f"inheritune.{name}: {result.stderr[-500:]}"
