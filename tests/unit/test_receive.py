"""python -m orchestrator.receive: the copy-data Job's two ends of the upload, in a pod."""
from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import threading
import time

import pytest

from orchestrator import receive


def test_put_writes_exactly_the_size_then_checks_the_digest(tmp_path):
    data = b"SQLite format 3\0" + bytes(range(256)) * 5000
    dest = tmp_path / "source.db"
    said = receive.put(str(dest), len(data), hashlib.sha256(data).hexdigest(), io.BytesIO(data + b"trailing"))
    assert dest.read_bytes() == data and "received" in said
    assert not (tmp_path / "source.db.part").exists()


@pytest.mark.parametrize("given, why", [(b"short", "5 of 6 bytes"), (b"damagE", "sha256")])
def test_put_refuses_a_short_or_damaged_upload_and_leaves_nothing(tmp_path, given, why):
    dest = tmp_path / "source.db"
    with pytest.raises(ValueError, match=why):
        receive.put(str(dest), 6, hashlib.sha256(b"damage").hexdigest(), io.BytesIO(given))
    assert list(tmp_path.iterdir()) == []


def test_wait_returns_once_the_file_is_there_and_gives_up_after_its_timeout(tmp_path):
    dest = tmp_path / "source.db"
    threading.Timer(0.3, dest.write_bytes, (b"x",)).start()
    assert receive.wait(str(dest), timeout=5, poll=0.05)
    started = time.monotonic()
    assert not receive.wait(str(tmp_path / "never"), timeout=0.2, poll=0.05)
    assert time.monotonic() - started < 2


def test_the_commands_as_the_job_runs_them(tmp_path):
    data = b"rows" * 1000
    dest = tmp_path / "source.db"
    put = subprocess.run([sys.executable, "-m", "orchestrator.receive", "put", str(dest), "--size", str(len(data)),
                          "--sha256", hashlib.sha256(data).hexdigest()], input=data, capture_output=True)
    assert put.returncode == 0 and dest.read_bytes() == data
    bad = subprocess.run([sys.executable, "-m", "orchestrator.receive", "put", str(dest) + "2", "--size", "9",
                          "--sha256", "0" * 64], input=b"123456789", capture_output=True, text=False)
    assert bad.returncode == 1 and b"incomplete or damaged" in bad.stderr
    waited = subprocess.run([sys.executable, "-m", "orchestrator.receive", "wait", str(tmp_path / "none"),
                             "--timeout", "0.1"], capture_output=True, text=True)
    assert waited.returncode == 1 and "no upload" in waited.stderr and "Traceback" not in waited.stderr
