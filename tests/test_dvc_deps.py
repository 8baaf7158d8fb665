"""dvc.yaml's code deps of each stage are exactly the project code `tasks.<stage>` imports
(transitively, lazy imports inside functions included), by package: a module of
cvfp/<package>/ counts as the directory `cvfp/<package>`, a top-level file (cvfp/params.py,
tasks/*.py) as itself. So a change to any code a stage runs reruns that stage, a change
to a package it imports nothing from does not, and the package holding the warnings'
wording and the number formats stays out of every training stage."""

import ast
import graphlib
from pathlib import Path

import pytest
import yaml

from helpers import ROOT

PACKAGES = ("cvfp", "tasks", "flows")


def _module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return None


def _imports(path: Path) -> set[str]:
    """Project module names imported anywhere in `path` (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}  # `from cvfp import model`
    return {n for n in names if n.split(".")[0] in PACKAGES and _module_file(n)}


def closure(module: str) -> set[str]:
    """Files (relative to the repo) of `module` and every project module it imports."""
    seen, todo = set(), [module]
    while todo:
        path = _module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += sorted(_imports(path))
    # Docstring-only package __init__ files run no code a stage depends on.
    return {
        p.relative_to(ROOT).as_posix()
        for p in seen
        if not (
            p.name == "__init__.py" and not _imports(p) and len(ast.parse(p.read_text()).body) <= 1
        )
    }


def dep_of(path: str) -> str:
    """A module of a cvfp package counts as the package's directory, others as files."""
    parts = path.split("/")
    return "/".join(parts[:2]) if parts[0] == "cvfp" and len(parts) > 2 else path


def code_deps(module: str) -> set[str]:
    return {dep_of(p) for p in closure(module)}


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_equal_the_import_closure(stage):
    declared = {str(d) for d in STAGES[stage].get("deps", []) if str(d).split("/")[0] in PACKAGES}
    needed = code_deps(f"tasks.{stage}")
    assert not needed - declared, f"{stage}: dvc.yaml lacks code deps {sorted(needed - declared)}"
    assert not declared - needed, (
        f"{stage}: dvc.yaml lists code it never imports {sorted(declared - needed)}"
    )


def test_closure_follows_lazy_and_relative_imports(tmp_path):
    # The rule above would pass vacuously if closure() found nothing: pin what it finds.
    deps = closure("tasks.phase2")
    assert {"tasks/phase2.py", "tasks/cli.py", "cvfp/phase2/trainer.py", "cvfp/params.py"} <= deps
    assert not any(d.startswith("flows/") for d in deps)
    assert {"cvfp/phase2", "cvfp/params.py"} <= code_deps("tasks.phase2")


@pytest.mark.parametrize("stage", ["phase1", "materialize", "phase2"])
def test_wording_and_formats_stay_out_of_training(stage):
    # Rewording a warning or changing a number format reruns only the report (issue 25).
    for path in ["cvfp/analysis/report/rule_words.py", "cvfp/analysis/formats.py"]:
        assert (ROOT / path).exists() and dep_of(path) not in STAGES[stage]["deps"]


def test_cvfp_packages_hold_a_docstring_and_import_no_cycle():
    graph = {}
    for path in sorted((ROOT / "cvfp").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if path.name == "__init__.py":
            body = ast.parse(path.read_text()).body
            assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{rel}: a docstring only"
        graph[rel.as_posix()] = {
            _module_file(m).relative_to(ROOT).as_posix()
            for m in _imports(path)
            if m.startswith("cvfp.")
        }
    assert len(graph) > 40
    graphlib.TopologicalSorter(graph).prepare()  # CycleError names the cycle
