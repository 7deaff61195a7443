"""The background runner both copy-data (its preflight) and verify (the server's digest) use."""

from __future__ import annotations

import threading

import pytest

from orchestrator.background import Background


def test_returns_the_value_and_reports_done():
    go = threading.Event()
    job = Background(lambda: go.wait(5) and 42, "t")
    assert not job.done()
    go.set()
    assert job.result() == 42 and job.done()


def test_raises_what_the_function_raised_in_the_caller():
    def boom():
        raise ValueError("no")
    job = Background(boom, "t")
    with pytest.raises(ValueError, match="no"):
        job.result()


def test_is_a_daemon_thread_that_an_interrupted_command_does_not_wait_for():
    go = threading.Event()
    Background(go.wait, "orchestrate-test-daemon")
    thread = next(t for t in threading.enumerate() if t.name == "orchestrate-test-daemon")
    assert thread.daemon
    go.set()
