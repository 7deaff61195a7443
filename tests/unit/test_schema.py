"""The plan JSON Schema: generated from the models, committed, and used by editors."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT, run_cli

SCHEMA = ROOT / "schema" / "plan.schema.json"


def test_committed_schema_is_current():
    code, out = run_cli("schema")
    assert code == 0
    assert json.loads(out) == json.loads(SCHEMA.read_text()), \
        "schema/plan.schema.json is stale: run `orchestrate schema > schema/plan.schema.json`"


@pytest.mark.parametrize("plan", sorted((ROOT / "plans").glob("*.yaml")), ids=lambda p: p.name)
def test_example_plans_validate_against_the_schema_and_reference_it(plan: Path):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(yaml.safe_load(plan.read_text()), schema)
    assert "yaml-language-server: $schema=../schema/plan.schema.json" in plan.read_text()


def test_schema_rejects_what_the_loader_rejects():
    schema = json.loads(SCHEMA.read_text())
    plan = yaml.safe_load((ROOT / "plans" / "phase1.yaml").read_text())
    plan["steps"][0]["db-container"]["volum"] = "x"
    with pytest.raises(jsonschema.ValidationError, match="'volum' was unexpected"):
        jsonschema.validate(plan, schema)
