"""GET /docs: the interactive API docs (vendored Swagger UI), served by the app itself, open to anyone."""

from __future__ import annotations

import re

import pytest

from blueprints.page import DOCS_ASSETS
from tests.http import new_key

TYPES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "docs.js": "text/javascript"}


def page_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_the_page_loads_the_vendored_assets_by_relative_url(client):
    response = client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert page_urls(html) == ["docs/swagger-ui.css", "docs/swagger-ui-bundle.js", "docs/docs.js"]
    assert "<script>" not in html  # no inline script: a CSP with script-src 'self' would allow the page
    assert not re.search(r"https?://", html)  # nothing from another host: no CDN


@pytest.mark.parametrize("asset", sorted(TYPES))
def test_each_asset_answers_with_its_type(client, asset):
    relative = f"docs/{asset}"  # as the page names it, resolved against /docs
    response = client.get("/" + relative)
    assert response.status_code == 200 and response.mimetype == TYPES[asset]
    assert response.headers["Cache-Control"] == "no-cache" and response.content_length > 0


def test_the_assets_are_the_vendored_files(client):
    bundle = client.get("/docs/swagger-ui-bundle.js").get_data(as_text=True)
    assert "SwaggerUIBundle" in bundle and len(bundle) > 1_000_000
    assert ".swagger-ui" in client.get("/docs/swagger-ui.css").get_data(as_text=True)
    script = client.get("/docs/docs.js").get_data(as_text=True)
    assert 'new URL("openapi.json", root)' in script and not re.search(r"https?://", script)
    assert set(DOCS_ASSETS) == set(TYPES)


def test_nothing_else_is_served_under_docs(client):
    for path in ("/docs/README.md", "/docs/LICENSE", "/docs/..%2Fpage.py", "/docs/swagger-ui.css.map"):
        response = client.get(path)
        assert response.status_code == 404 and response.is_json, path


def test_docs_with_a_slash_redirects_relatively(client):
    response = client.get("/docs/")
    assert response.status_code == 302 and response.headers["Location"] == "../docs"


def test_the_docs_stay_open_once_keys_exist(app, client):
    new_key(app)
    assert client.get("/docs").status_code == 200
    assert client.get("/docs/swagger-ui-bundle.js").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/v1/models").status_code == 401


def test_the_description_names_no_server_of_its_own(client):
    assert "servers" not in client.get("/openapi.json").get_json()  # docs.js names the server that served the page
