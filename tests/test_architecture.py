"""The package's shape: no import circles, features that never reach back into the extension,
modules of one responsibility and a bounded size, each with a docstring that says what it owns."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "flask_diaglog"
#: Optional features: they get the recorder, the settings or the registry, never the app state.
FEATURES = ("jobs", "watchdog", "live", "dashboard")
#: The one module allowed past the size limit (the writer's protocol belongs together).
LONG_OK = {"flask_diaglog.files.writer"}
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports when it runs (``if TYPE_CHECKING:`` blocks excluded,
    imports inside functions included)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    root = base[: len(base) - (child.level - 1)]
                    target = ".".join(root + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    out.add(sub if sub in known else target)
            elif isinstance(child, ast.Import):
                out.update(a.name for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in out if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_no_import_circles() -> None:
    """No module of the package imports, directly or through others, a module that imports it
    (the package ``__init__``, which only re-exports, is left out: every submodule's import runs
    it first)."""
    graph = {k: v - {"flask_diaglog"} for k, v in _graph().items() if k != "flask_diaglog"}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a made-up graph with a circle is caught."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("feature", FEATURES)
def test_features_never_import_the_extension(feature: str) -> None:
    """An optional feature gets what it needs handed to it: it never imports extension.py."""
    graph = _graph()
    names = [
        n
        for n in graph
        if n == f"flask_diaglog.{feature}" or n.startswith(f"flask_diaglog.{feature}.")
    ]
    assert names
    for name in names:
        assert "flask_diaglog.extension" not in graph[name], name


def test_modules_are_small_and_say_what_they_own() -> None:
    """Every module has a docstring, and none is over 500 lines except the file writer."""
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{name} has no module docstring"
        lines = len(path.read_text().splitlines())
        if name not in LONG_OK:
            assert lines <= MAX_LINES, f"{name} has {lines} lines"


def test_per_app_state_is_typed(tmp_path: Path) -> None:
    """app.extensions["diaglog"] is the typed AppState, with no dict keyed by strings."""
    from flask import Flask

    from flask_diaglog import DiagLog
    from flask_diaglog.extension import AppState

    app = Flask(__name__)
    app.config["DIAGLOG_LOG_DIR"] = str(tmp_path)
    DiagLog(app)
    state = app.extensions["diaglog"]
    assert type(state) is AppState
    assert not any(isinstance(v, dict) for v in vars(state).values())


def _fresh(script: str) -> str:
    """What ``script`` prints, run in a fresh interpreter from the repository."""
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    ).stdout


def test_no_module_import_replaces_a_public_name() -> None:
    """Importing any module of the package, in any order, leaves every public name of the
    package as it was: a module named like a public name and first imported later (a
    ``flask_diaglog/stats.py``) would replace that name (the ``stats()`` function) on the
    package. Checked in a fresh interpreter."""
    script = """
import importlib, pkgutil, sys
import flask_diaglog as pkg
before = {name: getattr(pkg, name) for name in pkg.__all__}
for mod in pkgutil.walk_packages(pkg.__path__, "flask_diaglog."):
    importlib.import_module(mod.name)
print(sorted(n for n in pkg.__all__ if getattr(pkg, n) is not before[n]))
"""
    out = _fresh(script)
    assert out.strip() == "[]"


def test_importing_the_package_has_no_process_wide_effect() -> None:
    """Importing every module of the package starts no thread and registers no fork or exit
    hook: those come with the first app, registry or stack listing that needs them. Checked in
    a fresh interpreter, counting only calls made from the package's own code."""
    script = """
import atexit, importlib, os, pkgutil, sys, threading
calls = []
def _from_package(what):
    def record(*args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("flask_diaglog"):
            calls.append(f"{what} from {caller}")
        return real[what](*args, **kwargs)
    return record
real = {"register_at_fork": os.register_at_fork, "atexit": atexit.register}
os.register_at_fork = _from_package("register_at_fork")
atexit.register = _from_package("atexit")
import flask_diaglog as pkg
for mod in pkgutil.walk_packages(pkg.__path__, "flask_diaglog."):
    importlib.import_module(mod.name)
print(calls, [t.name for t in threading.enumerate() if t is not threading.main_thread()])
"""
    out = _fresh(script)
    assert out.strip() == "[] []"
