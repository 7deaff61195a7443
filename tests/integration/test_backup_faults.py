"""A read-only or full backups folder: one clear sentence naming the folder and the cause, no
partial file, exit 1, no traceback; the backup the apply owed stays owed, and the next apply
(after the folder is fixed) takes it."""

from __future__ import annotations

import contextlib
import subprocess

import pytest

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def read_only(folder):
    """``folder`` read-only, its content still there (as root, file modes would not stop us)."""
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextlib.contextmanager
def full(folder):
    """A 64 kB file system over ``folder``: a dump of the phase-1 database (0.3 MB) does not fit."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error:")]


def assert_one_sentence(code: int, out: str, folder, cause: str) -> None:
    assert code == 1, out
    assert "Traceback" not in out, out
    assert error_lines(out) == [f"error: cannot write a backup into {folder}: {cause}"], out


@pytest.mark.parametrize("fault, cause", [(read_only, "read-only file system"), (full, "no space left on device")])
def test_a_broken_backups_folder_fails_in_one_sentence_and_the_next_apply_repairs(repo_copy, fault, cause):
    code, out = repo_copy.run("apply")
    assert code == 0, out
    folder = repo_copy.root / "backups"
    (repo_copy.root / ".env").unlink()          # the apply changes something: it owes a backup
    with fault(folder):
        code, out = repo_copy.run("apply")
        assert_one_sentence(code, out, folder, cause)
        assert "changed: files" in out and "failed:  snapshot (backup)" in out, out
        assert hidden(folder) == [], "the partial file is removed"
        code, out = repo_copy.run("backup")
        assert_one_sentence(code, out, folder, cause)
        assert hidden(folder) == []
    code, out = repo_copy.run("apply")
    assert code == 0, out
    assert "changed: snapshot (backup): wrote autodeploy-phase1-" in out, "the owed backup is taken: " + out
    assert "owed since an earlier apply in which files changed" in out, out
    assert hidden(folder) == []
    code, out = repo_copy.run("apply")
    assert code == 0 and "changed=0 failed=0" in out, "taken, no longer owed: " + out
    code, out = repo_copy.run("backup")
    assert code == 0 and "wrote autodeploy-phase1-" in out, out
