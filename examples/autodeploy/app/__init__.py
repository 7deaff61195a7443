"""The autodeploy platform's HTTP backend (phase 2 of the seed runbook: the backend in Docker).

A Flask application over the models of ``examples/autodeploy/models.py``; ``DATABASE_URL`` picks
the database. In a container it is served by gunicorn on port 8000 (see the Dockerfile)::

    gunicorn --bind 0.0.0.0:8000 'examples.autodeploy.app:create_app()'

- ``GET /health``: 200 ``{"status": "ok", "database": "ok"}`` only when the database answers,
  otherwise 503 ``{"status": "unavailable", ...}`` (what the image's HEALTHCHECK asks).
- ``GET /tenants``: the tenants, as a JSON list ordered by id.
- ``POST /deployments``: creates a deployment, e.g. ``{"tenant_id": 1, "name": "api"}`` (optional
  ``replicas``, ``auto_deploy``, ``is_production``, ``settings``); 201 with the new row.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import Flask, jsonify, request
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from examples.autodeploy.models import DATABASE_URL, Deployment, Tenant, make_session

log = logging.getLogger(__name__)

# the optional fields of POST /deployments: the JSON type each must have, in words
OPTIONAL = {"replicas": (int, "an integer"), "auto_deploy": (bool, "true or false"),
            "is_production": (bool, "true or false"), "settings": (dict, "an object")}


def as_json(row) -> dict[str, Any]:
    """A model instance as a JSON object: its columns, timestamps in ISO 8601."""
    values = {column.key: getattr(row, column.key) for column in row.__table__.columns}
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in values.items()}


def error(status: int, message: str):
    return jsonify(error=message), status


def reason(exc: DBAPIError) -> str:
    """The driver's first line (no SQL, no parameters, no URL: never a password)."""
    return (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]


def deployment_problem(body: Any) -> str | None:
    """What is wrong with a POST /deployments body, or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    unknown = sorted(set(body) - {"tenant_id", "name", *OPTIONAL})
    if unknown:
        return f"unknown field(s): {', '.join(unknown)}"
    if type(body.get("tenant_id")) is not int:
        return "tenant_id must be an integer"
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        return "name must be a text of 1 to 200 characters"
    for key, (kind, words) in OPTIONAL.items():
        if key in body and type(body[key]) is not kind:
            return f"{key} must be {words}"
    if body.get("replicas", 1) < 1:
        return "replicas must be at least 1"
    return None


def create_app(url: str | None = None) -> Flask:
    """The application for the database at ``url`` (default: ``DATABASE_URL``)."""
    engine, sessions = make_session(url or DATABASE_URL)
    app = Flask(__name__)

    @app.errorhandler(DBAPIError)
    def database_error(exc: DBAPIError):
        log.warning("database error: %s", reason(exc))
        return error(503, f"the database cannot answer: {reason(exc)}")

    @app.get("/health")
    def health():
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError as exc:
            log.warning("health: the database does not answer: %s", reason(exc))
            return jsonify(status="unavailable", database=reason(exc)), 503
        return jsonify(status="ok", database="ok")

    @app.get("/tenants")
    def tenants():
        with sessions() as session:
            return jsonify([as_json(t) for t in session.scalars(select(Tenant).order_by(Tenant.id))])

    @app.post("/deployments")
    def create_deployment():
        body = request.get_json(silent=True)
        problem = deployment_problem(body)
        if problem:
            return error(400, problem)
        with sessions() as session:
            if session.get(Tenant, body["tenant_id"]) is None:
                return error(404, f"no tenant with id {body['tenant_id']}")
            deployment = Deployment(**body)
            session.add(deployment)
            session.commit()
            return jsonify(as_json(deployment)), 201

    return app
