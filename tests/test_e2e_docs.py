"""/docs in real headless Chromium against the real server: Swagger UI renders every operation of
/openapi.json from the app's own files, and "Try it out" on GET /healthz gets the server's answer;
behind a path prefix too."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
import requests
from werkzeug.exceptions import NotFound

from tests.browser import chromium_driver, wait_for

pytestmark = pytest.mark.e2e

SERVED = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def browser():
    driver = chromium_driver()
    yield driver
    driver.quit()


def rendered_operations(browser) -> set[tuple[str, str]]:
    return {tuple(pair) for pair in browser.execute_script(
        "return [...document.querySelectorAll('.opblock')].map(b => ["
        "b.querySelector('.opblock-summary-path, .opblock-summary-path__deprecated').dataset.path,"
        "b.querySelector('.opblock-summary-method').textContent.toLowerCase()]);")}


def test_the_docs_render_every_operation_and_try_it_out_reaches_the_server(browser, live_server):
    spec = requests.get(f"{live_server.url}/openapi.json", timeout=30).json()
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops if method in SERVED}
    browser.get(f"{live_server.url}/docs")
    wait_for(lambda: len(rendered_operations(browser)) >= len(described), timeout=60)
    assert rendered_operations(browser) == described
    assert browser.execute_script("return document.querySelector('.swagger-ui .info .title').textContent") \
        .startswith(spec["info"]["title"])

    healthz = browser.find_element("id", "operations-probes-get_healthz")
    healthz.find_element("css selector", ".opblock-summary-control").click()
    execute = wait_for(lambda: healthz.find_elements("css selector", ".execute"), timeout=20)[0]
    try_out = healthz.find_element("css selector", ".try-out__btn")
    assert try_out.text == "Cancel"  # tryItOutEnabled: the operation opens ready to execute
    execute.click()
    live = wait_for(lambda: healthz.find_elements("css selector", ".live-responses-table"), timeout=30)[0]
    answer = wait_for(lambda: live.find_elements("css selector", "tbody tr.response"), timeout=30)[0]
    assert answer.find_element("css selector", ".response-col_status").text.strip() == "200"
    body = answer.find_element("css selector", ".response-col_description .highlight-code pre").text
    assert json.loads(body) == {"status": "ok"}
    request_url = healthz.find_element("css selector", ".request-url pre").text
    assert request_url == f"{live_server.url}/healthz"  # the same server, not another host
    # The server saw it: the page's own request, logged with its path.
    assert wait_for(lambda: "path=/healthz " in live_server.log() and "path=/docs/docs.js " in live_server.log())


@pytest.fixture
def prefixed_server(app) -> Iterator[str]:
    """The app (on the fake engine) mounted under /api/llm, as behind a proxy that strips a path prefix."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, DispatcherMiddleware(NotFound(), {"/api/llm": app}), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/api/llm"
    server.shutdown()
    thread.join()


def test_the_docs_work_behind_a_path_prefix(browser, prefixed_server):
    assert requests.get(f"{prefixed_server}/docs/", allow_redirects=True, timeout=10).url == f"{prefixed_server}/docs"
    browser.get(f"{prefixed_server}/docs")
    wait_for(lambda: rendered_operations(browser), timeout=60)
    healthz = browser.find_element("id", "operations-probes-get_healthz")
    healthz.find_element("css selector", ".opblock-summary-control").click()
    wait_for(lambda: healthz.find_elements("css selector", ".execute"), timeout=20)[0].click()
    answer = wait_for(lambda: healthz.find_elements("css selector", ".live-responses-table tbody tr.response"),
                      timeout=30)[0]
    assert answer.find_element("css selector", ".response-col_status").text.strip() == "200"
    assert healthz.find_element("css selector", ".request-url pre").text == f"{prefixed_server}/healthz"
