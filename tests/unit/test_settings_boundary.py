"""Only app/settings.py reads the process environment, and nothing writes it.

Everything else is handed a mapping (app.settings' docstring says who reads what), so a setting
has one parser and one message, and tests configure a process without touching os.environ.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("app", "workers", "otel")
READER = Path("app/settings.py")
# Not settings: the environment handed on to a child process as it is.
PASSES_ON = {
    Path("app/localpg.py"): "pg_ctl and initdb get the environment with LC_ALL=C",
}
READS = {"environ", "environb", "getenv", "getenvb"}
WRITES = {"putenv", "unsetenv"}
MUTATORS = {"update", "pop", "popitem", "setdefault", "clear", "__setitem__", "__delitem__"}


def _uses(tree: ast.AST) -> tuple[list[int], list[int]]:
    """Lines reading and lines writing the environment through `os` (or names imported
    from it)."""
    reads: list[int] = []
    writes: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            names = {alias.name for alias in node.names}
            reads += [node.lineno] if names & READS else []
            writes += [node.lineno] if names & WRITES else []
        if not (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            continue
        if node.attr in WRITES:
            writes.append(node.lineno)
        elif node.attr in READS:
            reads.append(node.lineno)
    for node in ast.walk(tree):
        target = None
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            target = next((t for t in targets if isinstance(t, ast.Subscript)), None)
            target = target.value if target is not None else None
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in MUTATORS
        ):
            target = node.func.value
        if _is_os_environ(target):
            writes.append(node.lineno)
    return reads, writes


def _is_os_environ(node: ast.AST | None) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr in ("environ", "environb")
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = {}
    for path in _modules():
        reads, _ = _uses(ast.parse(path.read_text(), str(path)))
        relative = path.relative_to(ROOT)
        if reads and relative != READER and relative not in PASSES_ON:
            readers[str(relative)] = reads
    assert readers == {}, "read os.environ through app.settings (or a mapping you are given)"


def test_nothing_writes_the_environment() -> None:
    writers = {}
    for path in _modules():
        _, writes = _uses(ast.parse(path.read_text(), str(path)))
        if writes:
            writers[str(path.relative_to(ROOT))] = writes
    assert writers == {}, "pass values explicitly; os.environ is the process's, not a channel"


def test_the_check_sees_what_it_looks_for() -> None:
    """The AST walk finds each form, so an empty result above means something."""
    reads, writes = _uses(
        ast.parse(
            "import os\nfrom os import getenv\n"
            "a = os.environ.get('X')\nb = os.getenv('Y')\n"
            "os.environ['Z'] = '1'\nos.environ.update(W='2')\nos.putenv('V', '3')\n"
            "del os.environ['Z']\n"
        )
    )
    assert set(reads) == {2, 3, 4, 5, 6, 8}
    assert set(writes) == {5, 6, 7, 8}
