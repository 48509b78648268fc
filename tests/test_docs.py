"""The documentation (README.md and docs/*.md) runs as written and describes what exists.

How every Python example is run:

* **A dedicated test** runs the examples that need more than the example itself (a server, a
  browser, a pytest session). It takes them with ``docs.run_by(...)`` at module level, which
  registers them in ``docs.RUN_BY``; this module imports every test module that calls ``run_by``,
  so the registrations are known before collection ends.
* **The page runs** (``test_page_examples_run``) run every other Python block of a page in order,
  in one namespace, in a fresh Python process whose working directory is a temporary directory
  with ``DIAGLOG_LOG_DIR`` pointed into it. A block that continues an earlier one (it uses its
  ``app``) simply follows it; the first block of a page runs in a fresh namespace, as written.
  Blocks that start with ``# name.py`` are also written to that directory as files, so later
  blocks can import them. Warnings are errors, as in the test suite.
* **Complete programs** later on a page (no name they use at module level comes from an earlier
  block) also run on their own (``test_complete_example_runs_on_its_own``).
* A block that truly cannot run here (a real Celery or Redis deployment) carries
  ``<!-- docs-test: skip (reason) -->`` on the line before it.

``test_every_python_block_is_run_by_a_test`` then checks that each Python block is covered by
exactly one of these, and that every dedicated registration names a test that exists.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from servers import free_port

import docs
from docs import Block, run_by
from flask_diaglog.logread import parse_line
from flask_diaglog.trail import parse_message

TESTS = Path(__file__).resolve().parent

#: The README's quick start and the quick start page's, run by the dedicated test below.
QUICK_START = {
    "README.md": run_by(
        "test_docs.py::test_quick_start_runs_as_written", "README.md", "## Quick start"
    ),
    "quickstart.md": run_by(
        "test_docs.py::test_quick_start_runs_as_written", "quickstart.md", "## A first app"
    ),
}

#: Fence languages a page may use (MyST directives such as ``{eval-rst}`` aside).
LANGUAGES = {"python", "console", "bash", "text", "json", "js", "html"}

#: Few blocks may be skipped, each with a reason in its mark.
MAX_SKIPPED = 3


def _load_dedicated_tests() -> None:
    """Import every test module that registers blocks with ``run_by``, so ``RUN_BY`` is full."""
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name != Path(__file__).name and "run_by(" in path.read_text():
            importlib.import_module(path.stem)


_load_dedicated_tests()

PYTHON = docs.blocks(lang="python")


def _plan() -> dict[str, list[Block]]:
    """The Python blocks each page run executes: all but the skipped and the dedicated ones."""
    plan: dict[str, list[Block]] = {}
    for block in PYTHON:
        if block.skip is None and block.id not in docs.RUN_BY:
            plan.setdefault(block.page, []).append(block)
    return plan


PLAN = _plan()

_BUILTINS = set(dir(builtins))


def free_names(code: str) -> set[str]:
    """Names the code reads at module level (decorators, defaults, class bodies, statements; not
    function bodies) that it neither binds nor gets from the builtins."""
    bound: set[str] = set()
    used: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            if not isinstance(node, ast.Lambda):
                bound.add(node.name)
                for decorator in node.decorator_list:
                    visit(decorator)
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                if default is not None:
                    visit(default)
            return
        if isinstance(node, ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(code))
    return used - bound - _BUILTINS


def _later_complete_blocks() -> list[Block]:
    """Complete programs that are not the first block of their page run (that one runs as
    written already: a page run starts in a fresh namespace)."""
    return [b for blocks in PLAN.values() for b in blocks[1:] if not free_names(b.code)]


RUNNER = textwrap.dedent(
    """
    import json, sys

    namespace = {"__name__": "__main__"}
    for block in json.load(sys.stdin):
        # padded so that tracebacks give the line numbers of the Markdown page
        code = compile("\\n" * block["line"] + block["code"], block["path"], "exec")
        exec(code, namespace)
        print("ran", block["line"], flush=True)
    """
)


def _env() -> dict[str, str]:
    """The environment of an example's process: no DIAGLOG_ or TESTING variable of ours, and
    this checkout first on the path (not the one the virtualenv was installed from, when the
    tests run from another worktree)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIAGLOG_") and k != "TESTING"}
    env["PYTHONPATH"] = os.pathsep.join([str(docs.ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    return env


def run_blocks(blocks: list[Block], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``blocks`` in order in one namespace, in a fresh process working in ``tmp_path``."""
    for block in docs.blocks(blocks[0].page, lang="python"):
        if block.filename:
            (tmp_path / block.filename).write_text(block.code)
    env = _env()
    env["DIAGLOG_LOG_DIR"] = str(tmp_path / "logs")
    payload = [{"line": b.line, "code": b.code, "path": b.path} for b in blocks]
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", RUNNER],
        input=json.dumps(payload),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _assert_ran(proc: subprocess.CompletedProcess[str], blocks: list[Block]) -> None:
    ran = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("ran ")]
    assert proc.returncode == 0, (
        f"{blocks[0].path}: the block at line "
        f"{next((b.line for b in blocks if b.line not in ran), '?')} failed:\n{proc.stderr}"
    )
    assert ran == [b.line for b in blocks], proc.stdout


@pytest.mark.parametrize("page", sorted(PLAN))
def test_page_examples_run(page: str, tmp_path: Path) -> None:
    """Every Python block of the page (not skipped, not run by a dedicated test) runs, in order,
    in one namespace."""
    _assert_ran(run_blocks(PLAN[page], tmp_path), PLAN[page])


@pytest.mark.parametrize("block", _later_complete_blocks(), ids=lambda b: b.id)
def test_complete_example_runs_on_its_own(block: Block, tmp_path: Path) -> None:
    """A complete program later on a page also runs without the blocks before it."""
    _assert_ran(run_blocks([block], tmp_path), [block])


def test_every_python_block_is_run_by_a_test() -> None:
    """Each Python block of README.md and docs/*.md is skipped with a reason, run by a dedicated
    test, or run by its page's run: exactly one of these."""
    planned = {b.id for blocks in PLAN.values() for b in blocks}
    problems = []
    for block in PYTHON:
        ways = [
            *(["skipped"] if block.skip is not None else []),
            *([docs.RUN_BY[block.id]] if block.id in docs.RUN_BY else []),
            *(["test_page_examples_run"] if block.id in planned else []),
        ]
        if len(ways) != 1:
            problems.append(f"{block.path}:{block.line} is run by {ways or 'no test'}")
    assert not problems, "\n".join(problems)
    # the page runs cover exactly the planned pages
    assert set(PLAN) == {b.page for b in PYTHON if b.id in planned}

    everything = {b.id: b for b in docs.blocks()}
    for block_id, test in docs.RUN_BY.items():
        assert block_id in everything, f"{test} registered {block_id}, which is no code block"
        assert everything[block_id].skip is None, f"{block_id} is run by {test} but marked skip"
        module, _, name = test.partition("::")
        assert (TESTS / module).is_file(), f"{block_id}: no test module {module}"
        assert callable(getattr(importlib.import_module(Path(module).stem), name, None)), (
            f"{block_id} is registered as run by {test}, which does not exist"
        )

    skipped = [b for b in docs.blocks() if b.skip is not None]
    assert all(b.lang == "python" for b in skipped), "only Python blocks are ever skipped"
    assert len(skipped) <= MAX_SKIPPED, [f"{b.id}: {b.skip}" for b in skipped]


def test_every_code_block_says_its_language() -> None:
    """Fences name a known language, and nothing fenced as text or a shell is Python code."""
    problems = []
    for block in docs.blocks():
        if block.is_directive:
            continue
        if block.lang not in LANGUAGES:
            problems.append(f"{block.path}:{block.line}: language {block.lang!r}")
        elif block.lang != "python":
            try:
                tree = ast.parse(block.code)
            except SyntaxError:
                continue
            statements = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)
            if any(isinstance(node, statements) for node in ast.walk(tree)):
                problems.append(f"{block.path}:{block.line}: Python fenced as {block.lang!r}")
    assert not problems, "\n".join(problems)


_SHOWN_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")


def test_every_plain_line_the_docs_show_is_one_diaglog_writes() -> None:
    """A plain line shown in a text or console block has the layout the renderer writes (and
    the readers parse), and a diaglog message in it parses as its kind."""
    problems = []
    for block in docs.blocks():
        if block.lang not in ("text", "console"):
            continue
        for n, line in enumerate(block.code.splitlines()):
            if not _SHOWN_LINE.match(line):
                continue
            rec = parse_line(line.rstrip(), "requests")
            if rec is None:
                problems.append(f"{block.path}:{block.line + n + 1}: not the plain layout")
                continue
            kind = rec.event
            if kind != "log" and not parse_message(kind, rec.data["msg"]):
                problems.append(
                    f"{block.path}:{block.line + n + 1}: a {kind} message that won't parse"
                )
    assert not problems, "\n".join(problems)


# -- the quick start -------------------------------------------------------------------------
# -- the quick start -------------------------------------------------------------------------


def _wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.communicate()[1]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {timeout}s")


@pytest.mark.parametrize("page", sorted(QUICK_START))
def test_quick_start_runs_as_written(page: str, tmp_path: Path) -> None:
    """The quick start, saved as the file it names and served by the command it shows, answers
    202 with the headers shown and writes the trail shown."""
    (block,) = QUICK_START[page]
    title = "## Quick start" if page == "README.md" else "## A first app"
    section = docs.docs_section(page, title)
    assert "Save this as `quickstart.py`" in section
    commands = [
        line.removeprefix("$ ")
        for b in docs.section_blocks(page, title, "console")
        for line in b.code.splitlines()
        if line.startswith("$ flask ")
    ]
    assert commands == ["flask --app quickstart run"]
    (tmp_path / "quickstart.py").write_text(block.code)
    port = free_port()
    argv = [str(Path(sys.executable).with_name("flask")), *commands[0].split()[1:]]
    env = _env()
    proc = subprocess.Popen(
        [*argv, "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_port(port, proc)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/jobs/j1/generate", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, headers, body = resp.status, resp.headers, json.loads(resp.read())
        assert status == 202 and body == {"job_id": "j1"}
        assert re.fullmatch(r"[0-9a-f]{18}", headers["X-Request-ID"])
        timing = headers["Server-Timing"]
        assert re.fullmatch(r"validate;dur=\d+\.\d\d, total;dur=\d+\.\d\d", timing)
        log = tmp_path / "logs" / "requests.log"
        deadline = time.monotonic() + 10
        while "request_end" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)  # the server writes the end line when it closes the body
        lines = log.read_text().splitlines()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    rid = headers["X-Request-ID"]
    assert [line.split(" | ")[-1].split(" ")[0] for line in lines] == [
        "request_start", "stage", "request_end",
    ]  # fmt: skip
    assert f"req={rid} job=- " in lines[0]  # written as the request arrives, before the match
    assert all(f"req={rid} job=j1" in line for line in lines[1:])
    assert (tmp_path / "logs" / "jobs.log").exists()


def test_readme_and_quick_start_page_show_the_same_app() -> None:
    assert QUICK_START["README.md"][0].code == QUICK_START["quickstart.md"][0].code


# -- the README is the front door ------------------------------------------------------------


def test_readme_is_the_front_door() -> None:
    """Short; install, quick start, the two set-up commands, and a link to every page."""
    text = docs.page_path("README.md").read_text()
    assert len(text.splitlines()) <= 200
    for needle in (
        "pip install flask-diaglog",
        "flask-diaglog[socketio]",
        "flask-diaglog[redis]",
        "make demo",
        "make test",
    ):
        assert needle in text, needle
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", text))
    assert linked == set(docs.pages()) - {"README.md", "changes.md"}


def _slug(heading: str) -> str:
    """The anchor of a heading, as MyST (``myst_heading_anchors``) and GitHub make it."""
    title = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", title).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    fenced = False
    out = set()
    for line in page.read_text().splitlines():
        if re.match(r" {0,3}(```|~~~)", line):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            out.add(_slug(line))
    return out


def test_relative_links_resolve() -> None:
    """Every relative link of README.md and docs/*.md names a file that exists, and a heading
    of it when it has an anchor (Sphinx checks the docs pages too; the README it does not)."""
    problems = []
    for page in docs.pages():
        path = docs.page_path(page)
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                problems.append(f"{page}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                problems.append(f"{page}: {target}: no such heading")
    assert not problems, "\n".join(problems)


# -- the docs describe what exists -----------------------------------------------------------


def test_api_reference_documents_every_public_name() -> None:
    """Each name of ``flask_diaglog.__all__``, ``flask_diaglog.signals.__all__`` and
    ``flask_diaglog.testing.__all__`` has an autodoc directive on the API page."""
    import flask_diaglog
    from flask_diaglog import signals, testing

    text = docs.page_path("api.md").read_text()
    directive = r"^\.\. auto(?:class|function|data):: flask_diaglog\.(\w+)$"
    documented = set(re.findall(directive, text, re.M))
    modules = set(re.findall(r"^\.\. automodule:: ([\w.]+)$", text, re.M))
    assert documented == set(flask_diaglog.__all__) - {"signals"}
    assert modules == {"flask_diaglog.signals", "flask_diaglog.testing"}
    for module in (signals, testing):
        directive = rf"^\.\. auto(?:class|function|data):: {re.escape(module.__name__)}\.(\w+)$"
        assert set(re.findall(directive, text, re.M)) == set(module.__all__), module.__name__


def test_signal_table_lists_every_signal() -> None:
    """The signals table on the live events page names each signal by its current name."""
    from flask_diaglog import signals

    names = {name for name in signals.__all__ if getattr(signals, name) in signals.SIGNALS.values()}
    section = docs.docs_section("live.md", "## Signals")
    table = re.findall(r"^\| `(\w+)` \| `(\w+)` \|", section, re.M)
    assert {name for name, _ in table} == names
    assert {kind: getattr(signals, name) for name, kind in table} == signals.SIGNALS


def _same_default(shown: str, default: object) -> bool:
    """Whether a default as a table shows it (``30``, ``memory``, ``False``) is ``default``."""
    if isinstance(default, bool | str):
        return str(default) == shown
    if isinstance(default, int | float):
        try:
            return float(shown) == default
        except ValueError:
            return False
    return False


def test_documented_keys_exist_with_their_defaults() -> None:
    """Every ``DIAGLOG_*`` key the docs name is a real key, and the tables that repeat a default
    (the job guard's, the watchdog's) give the one the code declares."""
    from flask_diaglog.config import KEYS

    defaults = {key.name: key.default for key in KEYS}
    problems = []
    for page in docs.pages():
        text = docs.page_path(page).read_text()
        for name in sorted(set(re.findall(r"\bDIAGLOG_[A-Z_]*[A-Z]\b", text))):
            if name not in defaults:
                problems.append(f"{page}: {name} is not a configuration key")
        for name, shown in re.findall(r"^\| `(DIAGLOG_\w+)` \| `([^`]*)` \|", text, re.M):
            default = defaults.get(name)
            if not _same_default(shown, default):
                problems.append(f"{page}: {name} default {shown!r}, the code says {default!r}")
    assert not problems, "\n".join(problems)


def test_dotted_names_in_the_prose_exist() -> None:
    """Every ``flask_diaglog.<name>...`` the prose of the docs names (outside code blocks, which
    also show logger names) can be imported or looked up."""
    problems = []
    for page in docs.pages():
        text = re.sub(r"```.*?```", "", docs.page_path(page).read_text(), flags=re.S)
        for dotted in sorted(set(re.findall(r"`(flask_diaglog(?:\.\w+)+)", text))):
            parts = dotted.split(".")
            for cut in range(len(parts), 0, -1):
                try:
                    obj: object = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                for attr in parts[cut:]:
                    obj = getattr(obj, attr, None)
                break
            if obj is None:
                problems.append(f"{page}: {dotted}")
    assert not problems, "\n".join(problems)


def test_config_error_example_is_the_real_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The configuration page quotes the message an invalid value really gets."""
    from flask import Flask

    from flask_diaglog import ConfigError, DiagLog

    text = docs.page_path("configuration.md").read_text()
    quoted = re.search(r"`(DIAGLOG_MAX_BYTES='ten'[^`]*)`", text, re.S)
    assert quoted is not None
    monkeypatch.setenv("DIAGLOG_MAX_BYTES", "ten")
    monkeypatch.setenv("DIAGLOG_LOG_DIR", str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        DiagLog(Flask(__name__))
    assert str(caught.value) == " ".join(quoted.group(1).split())


def test_hang_report_stack_matches_the_example() -> None:
    """The unfolded stack on the hangs page points at the lines of the example it shows."""
    (example,) = [b for b in docs.blocks("hangs.md", lang="python") if b.filename == "reports.py"]
    source = example.code.splitlines()
    section = docs.docs_section("hangs.md", "## Reading a hang report")
    frames = re.findall(r'File "[^"]*/reports\.py", line (\d+), in \w+\n {4}(.*)', section)
    assert len(frames) == 3
    for number, shown in frames:
        assert source[int(number) - 1].strip() == shown.strip()


# -- the reader itself -----------------------------------------------------------------------


def test_reader_finds_blocks_headings_and_skip_marks() -> None:
    text = textwrap.dedent(
        """\
        # Page

        ```python
        # not a heading
        x = 1
        ```

        ## Part

        <!-- docs-test: skip (needs a real Redis) -->

        ```python
        import redis
        ```

        - item

          ```console
          $ make demo
          ```
        """
    )
    first, second, third = docs.parse(text, "page.md")
    assert (first.line, first.lang, first.headings, first.skip) == (3, "python", ("# Page",), None)
    assert first.code == "# not a heading\nx = 1\n"
    assert second.skip == "needs a real Redis" and second.headings == ("# Page", "## Part")
    assert (third.lang, third.code) == ("console", "$ make demo\n")


@pytest.mark.parametrize(
    "text",
    [
        "<!-- docs-test: skip -->\n```python\nx\n```\n",
        "<!-- docs-test: run -->\n```python\nx\n```\n",
        "<!-- docs-test: skip (why) -->\ntext\n```python\nx\n```\n",
        "```python\nx\n",
    ],
)
def test_reader_rejects_bad_marks_and_open_fences(text: str) -> None:
    with pytest.raises(ValueError):
        docs.parse(text, "page.md")


def test_section_reader_stops_at_the_next_heading_of_its_level() -> None:
    section = docs.docs_section("live.md", "## A Python client")
    assert "```python" in section and "## A JavaScript client" not in section
    with pytest.raises(LookupError):
        docs.docs_section("live.md", "## No such heading")
    with pytest.raises(LookupError):
        docs.page_path("nope.md")


def test_every_test_the_docs_name_exists() -> None:
    """``tests/test_x.py::test_name`` (and ``::test_other`` after it) in the docs name real tests:
    the threat model's proofs cannot go stale."""
    import ast

    missing = []
    for page in docs.pages():
        text = docs.page_path(page).read_text()
        for m in re.finditer(r"tests/(test_\w+\.py)((?:::\w+)?)((?:`?,? `::\w+)*)", text):
            path = docs.ROOT / "tests" / m[1]
            if not path.exists():
                missing.append(f"{page}: tests/{m[1]}")
                continue
            names = re.findall(r"::(\w+)", m[2] + m[3])
            defined = {
                n.name
                for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.FunctionDef)
            }
            missing += [f"{page}: tests/{m[1]}::{n}" for n in names if n not in defined]
    assert not missing
