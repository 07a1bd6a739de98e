"""Lint and types run with the tests: ``ruff check labkit tests`` and ``mypy labkit`` must be clean (their
settings are pyproject.toml's ``[tool.ruff]`` and ``[tool.mypy]``), and errno values are named, never numbers.

mypy keeps its cache in ``.mypy_cache`` (it ignores itself for git): about 25 s on a fresh checkout, a few
seconds after that.
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m <tool> ...`` with this venv's interpreter, in the checkout (so pyproject.toml applies)."""
    r = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and f"No module named {argv[0]}" in r.stderr:
        pytest.fail(f"{argv[0]} is not installed in {sys.prefix}: pip install -e '.[test]'")
    return r


def test_ruff() -> None:
    r = _run("ruff", "check", "--output-format", "concise", "labkit", "tests")
    assert r.returncode == 0, f"ruff check labkit tests:\n{r.stdout}{r.stderr}"


@pytest.mark.slow
def test_mypy() -> None:
    r = _run("mypy", "labkit")
    assert r.returncode == 0, f"mypy labkit:\n{r.stdout}{r.stderr}"


# ---- errno by name ------------------------------------------------------------------------------------------
_OSERRORS = {"OSError", "IOError", "EnvironmentError", "FuseOSError", "PermissionError", "FileNotFoundError"}


def _int(node: ast.AST) -> bool:
    """An int literal (``2``, ``-2``) or a tuple/list/set of them."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_int(e) for e in node.elts)
    return isinstance(node, ast.Constant) and type(node.value) is int


def _is_errno(node: ast.AST) -> bool:
    """``x.errno``, ``errno_``-like names, ``ctypes.get_errno()``."""
    if isinstance(node, ast.Attribute):
        return node.attr == "errno"
    if isinstance(node, ast.Name):
        return "errno" in node.id.lower()
    if isinstance(node, ast.Call):
        f = node.func
        return (f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")) == "get_errno"
    return False


def numeric_errnos(source: str) -> list[tuple[int, str]]:
    """(line, what) of every errno given as a number: raised (``OSError(2, ...)``) or compared
    (``e.errno == 2``, ``e.errno in (2, 17)``).

    >>> numeric_errnos("if e.errno != 6: raise OSError(28, 'full')")
    [(1, 'OSError(28, ...)'), (1, 'e.errno != 6')]
    >>> numeric_errnos("if e.errno != errno.ENXIO: raise OSError(errno.ENOSPC, 'full')")
    []
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and node.args and _int(node.args[0]):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in _OSERRORS:
                found.append((node.lineno, f"{name}({ast.unparse(node.args[0])}, ...)"))
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_errno(s) for s in sides) and any(_int(s) for s in sides):
                found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_errno_by_name() -> None:
    bad = [f"{p.relative_to(ROOT)}:{line}: {what}"
           for top in ("labkit", "tests") for p in sorted((ROOT / top).rglob("*.py"))
           for line, what in numeric_errnos(p.read_text())]
    assert not bad, "errno given as a number (write errno.ENOENT, not 2):\n" + "\n".join(bad)
