"""The test suite's own structure (issue 25 item 6): what test modules share lives in
tests/helpers/ (or is a conftest.py fixture); no test module imports another test module or
conftest.py, and conftest.py uses no private pytest API."""

import ast
import re
from pathlib import Path

from helpers import ROOT

TESTS = ROOT / "tests"


def imported_modules(path) -> set[str]:
    """The top-level names of every module `path` imports (at any depth in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):  # a relative import: tests/ is no package
            names.add("." * node.level + (node.module or ""))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None))
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def test_no_test_module_imports_another_or_conftest():
    sources = sorted(TESTS.glob("*.py")) + sorted((TESTS / "helpers").glob("*.py"))
    assert len(sources) > 20 and TESTS / "conftest.py" in sources
    bad = {
        str(p.relative_to(TESTS)): sorted(
            m for m in imported_modules(p) if m.startswith(("test_", "conftest", "."))
        )
        for p in sources
    }
    bad = {k: v for k, v in bad.items() if v}
    assert bad == {}, f"move what they share to tests/helpers/: {bad}"


def test_the_check_sees_each_kind_of_import(tmp_path):
    src = tmp_path / "test_x.py"
    src.write_text(
        "import os\nfrom test_a import f\ndef t():\n    import test_b\n    from conftest import R\n"
        "    __import__('test_c')\n    from . import d\n"
    )
    assert imported_modules(src) == {"os", "test_a", "test_b", "conftest", "test_c", "."}


def test_no_private_pytest_api():
    for p in [*TESTS.glob("*.py"), *(TESTS / "helpers").glob("*.py")]:
        if p.name == Path(__file__).name:  # its pattern names what it forbids
            continue
        text = p.read_text()
        assert not re.search(r"\.config\._\w|_pytest\b|_ispytest", text), p.name
