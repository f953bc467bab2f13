"""The API's OpenAPI schema validates and documents every endpoint; its docs are served from the packages' own
static files."""

import re

import yaml
from django.core.management import call_command
from openapi_spec_validator import validate

from studios.api import urls as api_urls


def test_the_schema_validates_without_warnings(tmp_path):
    path = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(path))
    validate(yaml.safe_load(path.read_text()))


def test_the_schema_lists_every_endpoint(client, db):
    response = client.get("/api/v1/schema/", headers={"Accept": "application/vnd.oai.openapi+json"})
    assert response.status_code == 200
    schema = response.json()
    documented = {(path, method.upper()) for path, operations in schema["paths"].items() for method in operations}
    served = set()
    for pattern in api_urls.urlpatterns:
        if pattern.name in ("api_schema", "api_docs"):
            continue
        path = "/api/v1/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern.pattern))
        view = pattern.callback.view_class
        served |= {(path, method.upper()) for method in ("get", "post", "patch", "delete") if hasattr(view, method)}
    assert served == documented
    assert schema["components"]["securitySchemes"]["accessToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A personal access token (stu_…), made on your Access tokens page.",
    }


def test_the_docs_load_nothing_from_another_site(client, db):
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js").status_code == 200
