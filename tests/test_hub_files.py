"""What ships to the Hub imports only what a Hub user has: the standard library, torch, transformers
(huggingface_hub) and the files beside it. Checked on the source, so a package installed here (trl, peft,
kernels, this repository) cannot hide an import that would fail on the user's machine."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from tiny import tiny_model

HUB_PACKAGES = {"torch", "transformers", "huggingface_hub"}
OPTIONAL = (ImportError, ModuleNotFoundError)


def guarded_by_import_error(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a `try:` body whose handler catches ImportError: an optional dependency with a fallback."""
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Try) and child in parent.body:
            for handler in parent.handlers:
                caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                if any(isinstance(c, ast.Name) and c.id in {e.__name__ for e in OPTIONAL} for c in caught):
                    return True
        child, parent = parent, parents.get(parent)
    return False


def foreign_imports(source: str) -> list[str]:
    """`line: module` for every import that is not stdlib, a Hub package, relative, or optional."""
    tree = ast.parse(source)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in HUB_PACKAGES or top == "__future__":
                continue
            if not guarded_by_import_error(node, parents):
                found.append(f"{node.lineno}: {module}")
    return found


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    model, tokenizer = tiny_model()
    folder = tmp_path_factory.mktemp("hub") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_every_python_file_saved_with_a_model_imports_only_hub_packages(saved_model):
    shipped = sorted(saved_model.glob("*.py")) + sorted((saved_model / "custom_generate").glob("*.py"))
    names = {str(p.relative_to(saved_model)) for p in shipped}
    assert {"modeling_multiverse.py", "attention.py", "structure.py", "custom_generate/generate.py"} <= names
    problems = {str(p.relative_to(saved_model)): foreign_imports(p.read_text()) for p in shipped}
    assert {name: bad for name, bad in problems.items() if bad} == {}


def test_custom_generate_requires_only_torch_and_transformers(saved_model):
    assert (saved_model / "custom_generate" / "requirements.txt").read_text().split() == ["torch", "transformers"]


def test_relative_imports_resolve_to_files_that_ship(saved_model):
    """A relative import of a module that was not copied would fail on the Hub: every one has its file."""
    for folder in (saved_model, saved_model / "custom_generate"):
        for path in folder.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                    assert (folder / f"{node.module}.py").exists(), f"{path.name} imports .{node.module}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import os\nfrom torch import nn\nfrom .attention import mask_for\n", []),
        ("import trl\n", ["1: trl"]),
        ("from peft.tuners import lora\n", ["1: peft.tuners"]),
        ("def f():\n    import modeling_multiverse\n", ["2: modeling_multiverse"]),
        ("try:\n    import kernels\nexcept ImportError:\n    kernels = None\n", []),
        ("try:\n    import kernels\nexcept ValueError:\n    pass\n", ["2: kernels"]),
    ],
)
def test_the_import_check_catches_what_a_hub_user_lacks(source, expected):
    assert foreign_imports(source) == expected


# The specification ships with every model: the "SPEC.md §n" comments of the remote code resolve on the Hub

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_SPEC = ROOT / "modeling_multiverse" / "SPEC.md"


def test_the_spec_is_one_file_found_from_the_package_and_from_docs():
    text = PACKAGE_SPEC.read_text()
    assert "`SPEC.md §n`; that means section n of this page" in text
    headings = [line.split(".")[0] for line in text.splitlines() if line.startswith("## ")]
    assert headings == [f"## {n}" for n in range(1, 9)]  # the numbering the code's citations use
    assert (ROOT / "docs" / "spec.md").resolve() == PACKAGE_SPEC.resolve()
    import tomllib

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "SPEC.md" in package_data["modeling_multiverse"]  # so an installed wheel has it too


def test_every_spec_citation_in_the_code_names_a_section_of_the_page():
    import re

    sections = {int(line[3]) for line in PACKAGE_SPEC.read_text().splitlines() if re.match(r"## \d", line)}
    cited = {}
    for path in ROOT.glob("**/*.py"):
        if ".git" in path.parts or "site-packages" in path.parts:
            continue
        for number in re.findall(r"SPEC\.md §(\d+)", path.read_text()):
            cited.setdefault(int(number), path.relative_to(ROOT))
        assert not re.search(r"\bSPEC \d", path.read_text()), f"{path}: cite the page as SPEC.md §n"
    assert len(cited) >= 6 and set(cited) <= sections, {n: str(p) for n, p in cited.items() if n not in sections}


def test_save_pretrained_ships_the_spec(saved_model):
    assert (saved_model / "SPEC.md").read_text() == PACKAGE_SPEC.read_text()


def test_a_converted_folder_carries_the_spec_its_card_links_it_and_a_resave_keeps_it(tmp_path):
    from huggingface_hub import ModelCard
    from test_convert import save_base
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from multiverse.convert import convert

    save_base(tmp_path / "base", "llama")
    out = convert(str(tmp_path / "base"), tmp_path / "mv")
    assert (out / "SPEC.md").read_text() == PACKAGE_SPEC.read_text()
    assert "[SPEC.md](SPEC.md)" in ModelCard.load(out / "README.md").text
    # the folder's own remote code (it runs from a cache that holds only the .py files), saved again: the spec
    # comes from the folder it was loaded from
    remote = get_class_from_dynamic_module("modeling_multiverse.MultiverseForCausalLM", str(out))
    assert "transformers_modules" in remote.__module__
    remote.from_pretrained(out).save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "SPEC.md").read_text() == PACKAGE_SPEC.read_text()
