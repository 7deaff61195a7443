"""Backups, restore and drills on the complete phase-1 plan, and the seed's experiment 3 with a
way back."""

from __future__ import annotations

import json

import pytest



pytestmark = pytest.mark.integration


def backups_dir(repo_copy):
    return repo_copy.root / "backups"


def recorded(repo_copy) -> list[dict]:
    lock = json.loads(repo_copy.plan.with_suffix(".lock").read_text())
    return lock["steps"]["snapshot"]["observed"]["backups"]


def verify_tables(repo_copy) -> list[dict]:
    code, out = repo_copy.run("verify", "--json")
    assert code == 0, out
    return next(s for s in json.loads(out)["steps"] if s["type"] == "verify")["details"]["tables"]


def test_experiment_3_with_a_way_back(repo_copy, docker_client):
    code, out = repo_copy.run("apply")
    assert code == 0, out
    before = verify_tables(repo_copy)
    code, out = repo_copy.run("backup")
    assert code == 0 and "wrote autodeploy-phase1-" in out, out
    # the seed's experiment 3: the container and the volume removed by hand
    docker_client.api.remove_container(repo_copy.container, force=True)
    volume = repo_copy.container.removesuffix("-pg") + "-data"
    docker_client.api.remove_volume(volume)
    code, out = repo_copy.run("plan")
    assert f"DATA LOSS: volume {volume} held this database at the last apply and no longer exists" in out, out
    code, out = repo_copy.run("apply", "--only", "postgres")
    assert code == 0 and "created volume" in out, out
    assert repo_copy.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)], "an empty database"
    code, out = repo_copy.run("restore", "--from", "latest", "--yes")
    assert code == 0, out
    assert "restored autodeploy-phase1-" in out and "deployment_logs: 10000 rows" in out
    assert verify_tables(repo_copy) == before, "the checksums recorded before the loss"
    code, out = repo_copy.run("apply")
    assert code == 0 and "changed=0 failed=0" in out, out


def test_a_corrupted_backup_is_refused_and_a_drill_leaves_nothing(repo_copy, docker_client):
    assert repo_copy.run("apply")[0] == 0
    record = recorded(repo_copy)[-1]
    path = repo_copy.root / record["path"]
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    path.write_bytes(bytes(flipped))
    code, out = repo_copy.run("restore", "--from", "latest", "--yes")
    assert code == 1 and f"backup {path} is corrupted" in out and "refusing to restore it" in out, out
    code, out = repo_copy.run("backup", "--drill")
    assert code == 1 and "is corrupted" in out, out
    path.write_bytes(good)
    code, out = repo_copy.run("restore", "--from", str(repo_copy.root / "plans" / "phase1.yaml"), "--yes")
    assert code == 1 and "is not a backup that this plan recorded" in out, out
    code, out = repo_copy.run("backup", "--drill")
    assert code == 0, out
    assert "sha256 as recorded" in out and "every table's row count match what was recorded" in out
    assert "deployment_logs: 10000 rows" in out
    flt = {"label": "orchestrate.drill"}
    assert not docker_client.containers.list(all=True, filters=flt)
    assert not docker_client.volumes.list(filters=flt)


def test_retention_keeps_exactly_n_and_never_deletes_what_it_did_not_create(repo_copy):
    repo_copy.plan.write_text(repo_copy.plan.read_text().replace("backup: {keep: 7, when: changed}",
                                                                 "backup: {keep: 2, when: always}"))
    backups_dir(repo_copy).mkdir()
    foreign = [backups_dir(repo_copy) / "autodeploy-phase1-20200101T000000Z.dump", backups_dir(repo_copy) / "notes.txt"]
    for f in foreign:
        f.write_text("not orchestrate's")
    for _ in range(4):
        code, out = repo_copy.run("apply")
        assert code == 0, out
    names = [b["name"] for b in recorded(repo_copy)]
    assert len(names) == 2
    on_disk = sorted(p.name for p in backups_dir(repo_copy).iterdir())
    assert on_disk == sorted(names + [f.name for f in foreign])
    assert all(f.read_text() == "not orchestrate's" for f in foreign)


def test_destroy_volumes_takes_a_backup_first(repo_copy, docker_client):
    assert repo_copy.run("apply")[0] == 0
    count = len(recorded(repo_copy))
    code, out = repo_copy.run("destroy", "--volumes", "--yes")
    assert code == 0 and "before removing the volumes" in out and "removed volume" in out, out
    assert len(recorded(repo_copy)) == count + 1
    assert (repo_copy.root / recorded(repo_copy)[-1]["path"]).is_file()


def test_backup_is_ok_when_nothing_changed(repo_copy):
    assert repo_copy.run("apply")[0] == 0
    count = len(recorded(repo_copy))
    code, out = repo_copy.run("apply")
    assert code == 0 and "ok:      snapshot (backup)" in out, out
    assert len(recorded(repo_copy)) == count



def test_content_fingerprints_make_restore_and_drills_check_content(repo_copy):
    repo_copy.plan.write_text(repo_copy.plan.read_text().replace("backup: {keep: 7, when: changed}",
                                                                 "backup: {keep: 7, when: changed, fingerprints: true}"))
    assert repo_copy.run("apply")[0] == 0
    record = recorded(repo_copy)[-1]
    assert set(record["fingerprints"]) == {"alembic_version", "tenants", "deployments", "deployment_logs"}
    code, out = repo_copy.run("backup", "--drill")
    assert code == 0 and "every table's rows and content match what was recorded" in out, out
    code, out = repo_copy.run("restore", "--from", "latest", "--yes", "--no-backup")
    assert code == 0 and "row counts and content match" in out, out
