import pytest

from orchestrator.templating import Scope, TemplateError, render_string

CTX = {"vars": Scope("vars", {"port": 5432, "name": "db", "items": "a-var", "opts": {"a": 1}}),
       "secrets": Scope("secrets", {"pw": "s3cret"}),
       "steps": Scope("steps", {"pg": Scope("steps.pg", {"url": "postgresql://x"})}, later=["schema"])}


@pytest.mark.parametrize("text,value", [
    ("plain", "plain"),
    ("{{ vars.port }}", 5432),                        # one expression keeps its native type
    ("127.0.0.1:{{ vars.port }}:5432", "127.0.0.1:5432:5432"),
    ("{{ vars.opts }}", {"a": 1}),
    ("{{ vars.items }}", "a-var"),                    # a variable, not dict.items
    ("{{ steps.pg.url }}", "postgresql://x"),
    ("{{ vars.name | upper }}", "DB"),
    ("{{ 'p/w:@?#% ' | urlpart }}", "p%2Fw%3A%40%3F%23%25%20"),   # a password as a URL part, / included
])
def test_render(text, value):
    assert render_string(text, CTX) == value


@pytest.mark.parametrize("text,message", [
    ("{{ vars.prot }}", "vars.prot is not defined (vars has: items, name, opts, port)"),
    ("{{ steps.schema.revision }}", "step 'schema' runs later"),
    ("{{ steps.nope.url }}", "steps.nope is not defined (steps has: pg)"),
    ("{{ nope }}", "'nope' is not defined"),
    ("{{ vars.port", "template syntax error"),
    ("{{ vars.port.__class__ }}", "not allowed in the sandbox"),
    ("{{ 1 / 0 }}", "template error: ZeroDivisionError"),
])
def test_render_errors(text, message):
    with pytest.raises(TemplateError) as err:
        render_string(text, CTX)
    assert message in err.value.message
