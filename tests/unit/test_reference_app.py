"""The reference application's backend (examples/autodeploy/app) with Flask's test client: SQLite
for the endpoints, a closed port for a database that does not answer. Its image, on PostgreSQL,
is tests/integration/test_reference_app_image.py."""

from __future__ import annotations

import pytest

from examples.autodeploy.app import create_app
from examples.autodeploy.models import Base, Deployment, Tenant, make_session
from tests.conftest import free_port


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine, sessions = make_session(url)
    Base.metadata.create_all(engine)
    with sessions() as session:
        session.add_all([Tenant(name="Globex", slug="globex"), Tenant(name="Acme", slug="acme")])
        session.commit()
    yield url, sessions
    engine.dispose()


@pytest.fixture
def client(db):
    return create_app(db[0]).test_client()


def test_health_answers_when_the_database_does(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok"}


def test_tenants_are_a_json_list_by_id(client):
    response = client.get("/tenants")
    assert response.status_code == 200
    tenants = response.get_json()
    assert [(t["id"], t["slug"]) for t in tenants] == [(1, "globex"), (2, "acme")]
    assert tenants[0]["plan_tier"] == "free" and tenants[0]["contact_email"] is None
    assert isinstance(tenants[0]["created_at"], str) and tenants[0]["created_at"][:2] == "20"


def test_post_deployments_creates_the_row(client, db):
    response = client.post("/deployments", json={"tenant_id": 2, "name": "api", "replicas": 3,
                                                 "settings": {"region": "eu"}, "is_production": True})
    assert response.status_code == 201
    row = response.get_json()
    assert row["id"] == 1 and row["tenant_id"] == 2 and row["name"] == "api" and row["replicas"] == 3
    assert row["status"] == "pending" and row["settings"] == {"region": "eu"} and row["is_production"] is True
    with db[1]() as session:
        stored = session.get(Deployment, row["id"])
        assert (stored.tenant_id, stored.name, stored.replicas, stored.auto_deploy) == (2, "api", 3, False)


@pytest.mark.parametrize("body, message", [
    ([1, 2], "the body must be a JSON object"),
    ({"tenant_id": 1, "name": "api", "colour": "red"}, "unknown field(s): colour"),
    ({"name": "api"}, "tenant_id must be an integer"),
    ({"tenant_id": True, "name": "api"}, "tenant_id must be an integer"),
    ({"tenant_id": 1, "name": " "}, "name must be a text of 1 to 200 characters"),
    ({"tenant_id": 1, "name": "x" * 201}, "name must be a text of 1 to 200 characters"),
    ({"tenant_id": 1, "name": "api", "replicas": "2"}, "replicas must be an integer"),
    ({"tenant_id": 1, "name": "api", "settings": []}, "settings must be an object"),
    ({"tenant_id": 1, "name": "api", "auto_deploy": 1}, "auto_deploy must be true or false"),
    ({"tenant_id": 1, "name": "api", "replicas": 0}, "replicas must be at least 1"),
])
def test_post_deployments_refuses_bad_bodies(client, db, body, message):
    response = client.post("/deployments", json=body)
    assert response.status_code == 400
    assert response.get_json() == {"error": message}
    with db[1]() as session:
        assert session.query(Deployment).count() == 0


def test_post_deployments_for_an_unknown_tenant_is_404(client):
    response = client.post("/deployments", json={"tenant_id": 99, "name": "api"})
    assert response.status_code == 404
    assert response.get_json() == {"error": "no tenant with id 99"}


def test_a_database_that_does_not_answer_is_503_without_the_password():
    app = create_app(f"postgresql+psycopg://dbadmin:Pw-Unit-Secret@127.0.0.1:{free_port()}/appdb")
    client = app.test_client()
    for path in ("/health", "/tenants"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert "Pw-Unit-Secret" not in response.get_data(as_text=True)
    health = client.get("/health").get_json()
    assert health["status"] == "unavailable" and "refused" in health["database"]
