"""GET / (the chat page) and GET /assets/<name>: its own files and the vendored marked and DOMPurify, served by
the app itself with a Content-Security-Policy that lets only those files run, open to anyone."""

from __future__ import annotations

import re

import pytest

from blueprints.page import PAGE_ASSETS
from tests.http import new_key

TYPES = {"chat.js": "text/javascript", "chat.css": "text/css", "marked.umd.js": "text/javascript",
         "purify.min.js": "text/javascript"}


def test_the_page_loads_its_assets_by_relative_url_and_runs_no_inline_script(client):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls == ["data:,", "assets/chat.css", "assets/marked.umd.js", "assets/purify.min.js", "assets/chat.js",
                    "#prompt"]  # the last: the skip link
    assert "<script>" not in html and not re.search(r"\son[a-z]+=", html)  # the policy forbids inline code
    assert not re.search(r"https?://", html)  # nothing from another host: no CDN
    for control in ("prompt", "send", "stop", "api_key", "max_tokens", "temperature", "new_chat", "conversations"):
        assert f'id="{control}"' in html


def test_the_page_is_sent_with_a_policy_that_only_lets_its_own_files_run(client):
    headers = client.get("/").headers
    policy = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"  # no 'unsafe-inline'
    assert policy["img-src"] == "'self' data:" and policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'none'"
    assert headers["Cache-Control"] == "no-cache" and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("asset", sorted(TYPES))
def test_each_asset_answers_with_its_type(client, asset):
    response = client.get(f"/assets/{asset}")
    assert response.status_code == 200 and response.mimetype == TYPES[asset]
    assert response.headers["Cache-Control"] == "no-cache" and response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.content_length > 0 and response.headers.get("ETag")
    again = client.get(f"/assets/{asset}", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304  # revalidated, not sent again


def test_the_assets_are_the_vendored_files_and_the_page_script(client):
    assert client.get("/assets/marked.umd.js").get_data(as_text=True).startswith("/**\n * marked v18.3.0")
    assert "DOMPurify 3.5.0" in client.get("/assets/purify.min.js").get_data(as_text=True).splitlines()[0]
    script = client.get("/assets/chat.js").get_data(as_text=True)
    assert 'new EventSource("chat/stream?" + params)' in script and "DOMPurify.sanitize(" in script
    assert not re.search(r"https?://", script)  # relative URLs only: the page works behind a path prefix
    assert set(PAGE_ASSETS) == set(TYPES)


def test_nothing_else_is_served_under_assets(client):
    for path in ("/assets/README.md", "/assets/LICENSE.marked", "/assets/..%2Fpage.py", "/assets/index.html",
                 "/assets/marked.umd.js.map", "/assets/swagger-ui-bundle.js"):
        response = client.get(path)
        assert response.status_code == 404 and response.is_json, path


def test_the_page_and_its_files_stay_open_once_keys_exist(app, client):
    new_key(app)
    assert client.get("/").status_code == 200
    for asset in TYPES:
        assert client.get(f"/assets/{asset}").status_code == 200
    assert client.get("/conversations").status_code == 401
