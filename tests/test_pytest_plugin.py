"""The pytest plugin (``diaglog_events``), run inside pytester sessions."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from docs import run_by

APP = textwrap.dedent(
    """
    import threading

    import pytest
    from flask import Flask

    from flask_diaglog import DiagLog, stage


    @pytest.fixture
    def app(tmp_path):
        app = Flask("plugin_app")
        app.config.update(TESTING=True, DIAGLOG_LOG_DIR=str(tmp_path / "logs"))
        diaglog = DiagLog(app)

        @app.get("/work/<job_id>")
        def work(job_id):
            with stage("parse"):
                app.logger.info("parsing %s", job_id)
            with stage("store"):
                app.logger.warning("disk at %d%%", 91)
            return {"job_id": job_id}

        @app.post("/bg/<job_id>")
        def bg(job_id):
            def later():
                with stage("crunch"):
                    app.logger.info("crunched")
            diaglog.spawn(later)
            return {"job_id": job_id}, 202

        return app
    """
)


def test_plugin_is_registered_through_the_entry_point(pytester: pytest.Pytester) -> None:
    """The pytest11 entry point loads flask_diaglog.pytest_plugin as plugin "diaglog"."""
    pytester.makepyfile(
        """
        def test_registered(request):
            plugin = request.config.pluginmanager.get_plugin("diaglog")
            assert plugin.__name__ == "flask_diaglog.pytest_plugin"
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    """-p no:diaglog removes the fixture."""
    pytester.makepyfile("def test_x(diaglog_events): pass")
    result = pytester.runpytest("-p", "no:diaglog")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'diaglog_events' not found*"])


def test_fixture_works_with_pytest_flask_client(pytester: pytest.Pytester) -> None:
    """diaglog_events captures pytest-flask client requests; helpers filter by kind/job/request."""
    pytester.makeconftest(APP)
    pytester.makepyfile(
        """
        def test_work(client, diaglog_events):
            resp = client.get("/work/j1", headers={"X-Request-ID": "r-1"})
            client.get("/work/j2")
            assert resp.status_code == 200
            assert diaglog_events.request_ids[0] == "r-1"
            assert diaglog_events.job_ids == ["j1", "j2"]
            one = diaglog_events.for_request("r-1")
            assert one.kinds == ["request_start", "log", "stage", "log", "stage", "request_end"]
            assert one.stage_names() == ["parse", "store"]
            assert set(one.stages()) == {"parse", "store"}
            assert one.logged("parsing j1") and not one.logged("parsing j2")
            assert one.messages("WARNING") == ["disk at 91%"]
            assert diaglog_events.for_job("j2").one("request_end").fields["status"] == 200
            assert len(diaglog_events.of("request_start", "request_end")) == 4
            assert diaglog_events.filter("log", level="WARNING", job_id="j2")[0].msg == (
                "disk at 91%"
            )
            assert one.dicts()[0]["event"] == "request_start"

        def test_fresh_capture_per_test(client, diaglog_events):
            assert len(diaglog_events) == 0
            client.get("/work/j3")
            assert diaglog_events.job_ids == ["j3"]
            diaglog_events.clear()
            assert diaglog_events.kinds == []

        def test_waits_for_background_work(client, diaglog_events):
            assert client.post("/bg/j9").status_code == 202
            end = diaglog_events.wait_for("job_end", job_id="j9", timeout=10)
            assert end.fields["ok"] is True
            assert diaglog_events.for_job("j9").stage_names() == ["crunch"]
        """
    )
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=3)


def test_failure_report_shows_the_captured_events(pytester: pytest.Pytester) -> None:
    """A failing test using the fixture gets a "diaglog events" report section; others don't."""
    pytester.makeconftest(APP)
    pytester.makepyfile(
        """
        def test_fails(client, diaglog_events):
            client.get("/work/jx", headers={"X-Request-ID": "r-fail"})
            assert diaglog_events.logged("never logged")

        def test_also_fails_without_fixture(client):
            client.get("/work/jy")
            assert False
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*- Captured diaglog events call -*",
            "* | INFO | flask_diaglog.request | req=r-fail job=- | request_start GET /work/jx*",
            "* | WARNING | plugin_app | req=r-fail job=jx | disk at 91%*",
        ]
    )
    assert result.stdout.str().count("Captured diaglog events") == 1


def test_wait_for_and_one_explain_what_was_captured(pytester: pytest.Pytester) -> None:
    """wait_for times out (bounded) and one() fails with the captured events listed."""
    pytester.makeconftest(APP)
    pytester.makepyfile(
        """
        import pytest

        def test_helpers_fail_loudly(client, diaglog_events):
            client.get("/work/jz")
            with pytest.raises(AssertionError, match="request_start GET /work/jz"):
                diaglog_events.wait_for("job_end", job_id="jz", timeout=0.05)
            with pytest.raises(AssertionError, match="found 2"):
                diaglog_events.one("stage")
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


DOC_EXAMPLE = run_by(
    "test_pytest_plugin.py::test_the_documented_example_passes",
    "testing.md",
    "## The `diaglog_events` fixture",
)


def doc_files() -> dict[str, str]:
    """The ``# <file>.py`` code blocks of the docs' testing page."""
    return {block.filename or "": block.code for block in DOC_EXAMPLE}


def test_the_documented_example_passes(pytester: pytest.Pytester) -> None:
    """The docs' complete testing example (app, conftest, test) passes as written."""
    files = doc_files()
    assert set(files) == {"myapp.py", "conftest.py", "test_generate.py"}
    for name, text in files.items():
        pytester.path.joinpath(name).write_text(text)
    pytester.syspathinsert()
    pytester.runpytest().assert_outcomes(passed=1)


def test_importing_the_plugin_is_cheap_and_has_no_side_effects() -> None:
    """Loading the plugin imports no helpers or Socket.IO, connects nothing, touches no logger."""
    code = textwrap.dedent(
        """
        import logging, sys
        before = {n: list(l.handlers) for n, l in logging.Logger.manager.loggerDict.items()
                  if isinstance(l, logging.Logger)}
        root = list(logging.getLogger().handlers)
        import flask_diaglog.pytest_plugin
        from flask_diaglog.signals import SIGNALS
        assert "flask_diaglog.testing" not in sys.modules
        assert not any(m.split(".")[0] in ("flask_socketio", "socketio", "engineio")
                       for m in sys.modules)
        assert not any(s.receivers for s in SIGNALS.values())
        assert logging.getLogger().handlers == root
        for n, l in logging.Logger.manager.loggerDict.items():
            if isinstance(l, logging.Logger):
                assert l.handlers == before.get(n, []), n
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
