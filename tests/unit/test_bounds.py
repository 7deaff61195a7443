"""Faults as one sentence: a Docker daemon that does not answer in time, and an image that exists
nowhere (judged by the pull, not by its tag)."""

from __future__ import annotations

import pytest
import requests.exceptions

from orchestrator import docker_engine
from orchestrator.docker_engine import Engine
from orchestrator.errors import DockerError
from orchestrator.steps.db_container import DbContainerSpec, Observed, config_hash, desired_config, diff_db_container
from tests.unit.test_db_container_diff import BASE, LABELS, RECORDED, VOLUME, container_for, image


def _raise(exc):
    raise exc


@pytest.mark.parametrize("exc", [requests.exceptions.ReadTimeout("Read timed out. (read timeout=120)"),
                                 requests.exceptions.ConnectionError("UnixHTTPConnectionPool: Read timed out."),
                                 TimeoutError("timed out")])
def test_a_docker_call_without_an_answer_is_one_sentence_with_the_bound(exc):
    with pytest.raises(DockerError) as caught:
        Engine(read_only=True)._call("inspect container db", lambda: _raise(exc))
    assert caught.value.message == (f"the Docker daemon did not answer within {docker_engine.TIMEOUT}s while "
                                    f"trying to inspect container db")


def test_a_docker_stream_that_stops_answering_midway():
    def chunks():
        yield b"part"
        raise TimeoutError("timed out")
    stream = Engine(read_only=True)._stream("run a command in db", chunks())
    assert next(stream) == b"part"
    with pytest.raises(DockerError, match="did not answer within .* while trying to run a command in db"):
        next(stream)


def _diff(plan: dict, have_image: bool):
    spec = DbContainerSpec(**{**BASE, **plan})
    want = desired_config(spec, LABELS, image())
    obs = Observed(image=image() if have_image else None, container=container_for(DbContainerSpec(**BASE)),
                   volume=dict(VOLUME), data_pg_version="15", system_id="42")
    return diff_db_container(want, config_hash(want), obs, recorded=RECORDED, spec=spec, password=spec.password,
                             major="99")


def test_an_absent_image_is_left_to_the_pull_not_judged_by_its_tag():
    d = _diff({"image": "nowhere/absent:99"}, have_image=False)
    assert not d.problems, d.problems
    assert "image nowhere/absent:99 is not on this Docker engine: apply will pull it" in d.notes
    assert any("as its tag suggests" in n for n in d.notes)


def test_a_present_image_of_another_major_version_is_a_problem():
    d = _diff({"image": "pg:99"}, have_image=True)
    assert any("holds a PostgreSQL 15 data directory but image pg:99 runs PostgreSQL 99" in p for p in d.problems)
