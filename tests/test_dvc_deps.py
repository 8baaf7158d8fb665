"""dvc.yaml's code deps of each stage are exactly the project modules `tasks.<stage>` imports
(transitively, lazy imports inside functions included), so a change to any code a stage
runs reruns that stage, and nothing else does."""

import ast
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


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_equal_the_import_closure(stage):
    declared = {d for d in STAGES[stage].get("deps", []) if str(d).endswith(".py")}
    needed = closure(f"tasks.{stage}")
    assert not needed - declared, f"{stage}: dvc.yaml lacks code deps {sorted(needed - declared)}"
    assert not declared - needed, (
        f"{stage}: dvc.yaml lists code it never imports {sorted(declared - needed)}"
    )


def test_closure_follows_lazy_and_relative_imports(tmp_path):
    # The rule above would pass vacuously if closure() found nothing: pin what it finds.
    deps = closure("tasks.phase2")
    assert {"tasks/phase2.py", "tasks/cli.py", "cvfp/phase2.py", "cvfp/params.py"} <= deps
    assert not any(d.startswith("flows/") for d in deps)
