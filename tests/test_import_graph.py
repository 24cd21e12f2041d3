"""The project's modules import each other without cycles, and the core imports none of the other packages.

Read from the source with `ast`, imports inside functions included: a lazy import that closes a cycle still
makes two modules that cannot be read, tested or moved one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {  # import name -> folder
    "modeling_multiverse": ROOT / "modeling_multiverse",
    "runtime": ROOT / "runtime",
    "evaluation": ROOT / "evaluation",
    "trl_recipes": ROOT / "trl_recipes",
    "curator": ROOT / "curator",
    "cards": ROOT / "cards",
    "multiverse": ROOT / "multiverse",
    "benchmarks": ROOT / "benchmarks",
    "multiverse_attention": ROOT / "hub_kernels" / "multiverse_attention" / "torch-ext" / "multiverse_attention",
}


def project_modules(packages: dict[str, Path] = PACKAGES) -> dict[str, Path]:
    """`{dotted module name: file}` of every Python file in the packages (`pkg` for `pkg/__init__.py`)."""
    modules = {}
    for name, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name the file imports, anywhere in it; relative imports resolved, `from X import y` as `X.y`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # resolved to `base` when `y` is a name
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """`{module: project modules it imports}`: each import resolved to the deepest project module it names."""

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in modules:
                return ".".join(parts[:end])
        return None

    graph = {}
    for module, path in modules.items():
        targets = {resolve(name) for name in imported_names(module, path)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as `[a, b, ..., a]`, or [] when the graph is acyclic (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_project_modules_import_each_other_without_cycles():
    graph = import_graph(project_modules())
    assert len(graph) > 60 and "trl_recipes.grpo" in graph["trl_recipes.cli"]
    assert find_cycle(graph) == []


def test_the_core_imports_no_other_project_package():
    graph = import_graph(project_modules())
    outside = {
        module: sorted(t for t in targets if not t.startswith("modeling_multiverse"))
        for module, targets in graph.items()
        if module.startswith("modeling_multiverse")
    }
    assert {module: targets for module, targets in outside.items() if targets} == {}


def test_the_cycle_finder_sees_lazy_and_relative_imports(tmp_path):
    """A two-module cycle closed by an import inside a function, written relatively, is found."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import helper\n")
    (package / "b.py").write_text("def helper():\n    from . import a\n    return a\n")
    (package / "c.py").write_text("import pkg.a\nfrom pkg import b\n")
    graph = import_graph(project_modules({"pkg": package}))
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a", "pkg.b"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    (package / "b.py").write_text("def helper():\n    return 1\n")
    assert find_cycle(import_graph(project_modules({"pkg": package}))) == []


@pytest.mark.parametrize("module", ["trl_recipes.grpo", "trl_recipes.rollout", "trl_recipes.rewards"])
def test_the_grpo_modules_do_not_import_the_sft_recipe(module):
    """Both recipes share model loading through `trl_recipes.loading`, not through each other."""
    graph = import_graph(project_modules())
    assert "trl_recipes.train" not in graph[module]
