"""The package's layering: verbs at the top, subpackages by concern beneath them, each importing only the ones
below it; no module-level import cycle; ``__init__`` files define nothing; every module imports on its own."""

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "inheritune"
# lowest first: a module may import its own subpackage and those listed before it, never a verb
LAYERS = ("utils", "assets", "data", "models", "analysis", "training")
VERBS = ("cli", "analyze", "inherit", "train", "evaluate", "run")


def dotted(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {dotted(p): p for p in sorted(PACKAGE.rglob("*.py")) if p.stem != "__main__"}


def absolute_module(node: ast.ImportFrom, importer: str | None) -> str:
    """The dotted module a from-import names, relative ones (``from ..train import x``) resolved against the
    importing module's package."""
    if not node.level:
        return node.module or ""
    if importer is None:
        raise ValueError("a relative import needs the importing module's name")
    package = importer.split(".") if MODULES.get(importer, Path()).name == "__init__.py" else importer.split(".")[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(node: ast.AST, importer: str | None = None) -> set[str]:
    """The package modules (or packages) an import statement of module ``importer`` names."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "inheritune"}
    if not isinstance(node, ast.ImportFrom):
        return set()
    module = absolute_module(node, importer)
    if not module.startswith("inheritune"):
        return set()
    found = set()
    for alias in node.names:
        child = f"{module}.{alias.name}"
        found.add(child if child in MODULES else module)
    return found


def module_imports(name: str) -> set[str]:
    """Package modules imported at module level (top-level statements only) by ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    return set().union(*(imported_modules(node, name) for node in tree.body)) - {"inheritune", name}


def layer_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "inheritune"


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


def test_the_tree_is_verbs_over_subpackages():
    top = {n.split(".")[1] for n in MODULES if n.count(".") == 1}
    assert top == set(VERBS) | set(LAYERS), sorted(top)
    for verb in VERBS:
        assert MODULES[f"inheritune.{verb}"].name == f"{verb}.py"
    for layer in LAYERS:
        assert MODULES[f"inheritune.{layer}"].name == "__init__.py"


def test_subpackages_import_only_layers_below_them_and_never_a_verb():
    for name in MODULES:
        layer = layer_of(name)
        if layer not in LAYERS:
            continue
        allowed = set(LAYERS[:LAYERS.index(layer) + 1])
        for target in module_imports(name):
            assert layer_of(target) in allowed, f"{name} imports {target} (a {layer} module may import only " \
                                                f"{', '.join(sorted(allowed))})"


def test_the_layer_check_sees_a_violation(tmp_path):
    tree = ast.parse("from inheritune.train import train\nfrom inheritune.utils.errors import UserError\n")
    found = set().union(*(imported_modules(node) for node in tree.body))
    assert found == {"inheritune.train", "inheritune.utils.errors"}
    assert layer_of("inheritune.train") not in LAYERS


def test_the_layer_check_sees_relative_imports():
    """``from ..train import train`` in a training module is the verb ``train``; ``from . import metrics`` in an
    analysis module is that module; both count like the absolute spellings."""
    tree = ast.parse("from ..train import train\nfrom . import metrics\nfrom .report import x\n")
    found = set().union(*(imported_modules(node, "inheritune.analysis.selection") for node in tree.body))
    assert found == {"inheritune.train", "inheritune.analysis.metrics", "inheritune.analysis.report"}
    assert layer_of("inheritune.train") not in LAYERS
    init = ast.parse("from . import errors\n").body[0]
    assert imported_modules(init, "inheritune.utils") == {"inheritune.utils.errors"}


def test_no_module_level_import_cycle():
    graph = {name: module_imports(name) for name in MODULES}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_init_files_hand_names_on_and_define_nothing():
    for name, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path} needs a docstring saying what lives there and what it may import"
        for node in tree.body[1:]:
            version = isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__version__"]
            assert isinstance(node, (ast.Import, ast.ImportFrom)) or (name == "inheritune" and version), \
                f"{path}:{node.lineno} defines something"


def test_no_package_import_hides_in_a_function():
    """Package imports sit at the top of each module; only heavy optional packages may be imported late."""
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        late = [node.lineno for node in ast.walk(tree) if imported_modules(node, name) and id(node) not in top]
        assert not late, f"{name} imports package modules inside functions at lines {late}"


IMPORT_EACH = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "inheritune" or m.startswith("inheritune.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=-2))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def import_each(names, path=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(path)} if path else None
    return subprocess.run([sys.executable, "-c", IMPORT_EACH, *names], capture_output=True, text=True, env=env)


def test_every_module_imports_alone():
    """Each module imports with none of the package loaded before it, so none leans on an import that another
    module happened to do first, and no import cycle breaks it from any starting point. One interpreter: the
    package's modules are dropped from sys.modules before each import (torch and transformers stay loaded; one
    fresh interpreter per module paid their import each time, 100 s in all)."""
    result = import_each(MODULES)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_the_import_check_sees_a_module_that_leans_on_another_modules_import(tmp_path):
    package = tmp_path / "inheritune"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import inheritune\ninheritune.shared = 1\n")
    (package / "b.py").write_text("import inheritune\nX = inheritune.shared\n")
    (package / "c.py").write_text("import inheritune.a\nimport inheritune.b\n")  # b imports after a here
    assert import_each(["inheritune.c"], tmp_path).returncode == 0
    failed = import_each(["inheritune.c", "inheritune.b"], tmp_path)
    assert failed.returncode == 1 and failed.stdout.startswith("inheritune.b: ")
