"""The guards under a real gunicorn server on the embedded model: keys made with the real CLI, the
official openai client with a key, rate limits, and CORS from a page on a second origin in Chromium."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from tests.browser import chromium_driver, wait_for
from tests.servers import ROOT, LiveServer, free_port, gunicorn_command, refusal, start_server, stop_server

MODEL = "SmolLM2-135M-Instruct"  # the embedded chat model's name: what `model` must say

pytestmark = pytest.mark.e2e

PAGE = """<!doctype html><meta charset="utf-8"><title>second origin</title><pre id="out"></pre><script>
const api = new URLSearchParams(location.search).get("api");
const key = new URLSearchParams(location.search).get("key");
const out = document.getElementById("out");
const report = (name, value) => { out.dataset[name] = typeof value === "string" ? value : JSON.stringify(value); };
fetch(api + "/v1/chat/completions", {method: "POST", headers: {"Authorization": "Bearer " + key,
  "Content-Type": "application/json"}, body: JSON.stringify({model: "SmolLM2-135M-Instruct", max_tokens: 8,
  temperature: 0, messages: [{role: "user", content: "Say hello."}]})})
  .then(r => r.json().then(body => report("completion", {status: r.status, body,
    remaining: r.headers.get("x-ratelimit-remaining-requests")})))
  .catch(e => report("completion", "failed: " + e));
fetch(api + "/auth/stream-token", {method: "POST", headers: {"Authorization": "Bearer " + key}})
  .then(r => r.json()).then(({token}) => {
    const source = new EventSource(api + "/chat/stream?" + new URLSearchParams({prompt: "Say hi.", max_tokens: "8",
                                                                               token}));
    let text = "";
    source.onmessage = (event) => { text += JSON.parse(event.data).text; };
    source.addEventListener("finish", () => { source.close(); report("stream", text || "(empty)"); });
    source.onerror = () => { source.close(); report("stream", "failed"); };
  }).catch(e => report("stream", "failed: " + e));
</script>"""


def flask_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


class PageServer:
    """A static page on its own port: a second origin."""

    def __init__(self, folder: Path) -> None:
        (folder / "index.html").write_text(PAGE)
        handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder))  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[tuple[LiveServer, dict[str, str], PageServer, PageServer]]:
    folder = tmp_path_factory.mktemp("guarded")
    (folder / "allowed").mkdir()
    (folder / "other").mkdir()
    allowed, other = PageServer(folder / "allowed"), PageServer(folder / "other")
    env = {"LLM_API_DATA_DIR": str(folder / "data"), "LLM_API_REQUIRE_KEYS": "1",
           "LLM_API_CORS_ORIGINS": allowed.origin}
    keys = {}
    for name, extra in (("web", ["--rpm", "100"]), ("tight", ["--rpm", "1"]), ("ops", ["--scope", "admin"])):
        created = flask_cli(env, "keys", "create", "--name", name, *extra)
        assert created.returncode == 0, created.stderr
        keys[name] = created.stdout.strip()
    server = start_server(folder, env)
    yield server, keys, allowed, other
    stop_server(server)


def test_required_keys_refuse_to_start_without_one(tmp_path):
    result = subprocess.run(
        gunicorn_command(free_port()), cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "LLM_API_DATA_DIR": str(tmp_path), "LLM_API_REQUIRE_KEYS": "1"})
    assert result.returncode == 2
    assert refusal(result) == (
        "llm_api: LLM_API_REQUIRE_KEYS is on but no active API key exists: create one with "
        "`flask --app wsgi keys create --name NAME`")


def test_the_openai_client_works_with_a_key_and_is_refused_without(guarded):
    server, keys, _, _ = guarded
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=keys["web"], max_retries=0, timeout=120)
    completion = client.chat.completions.create(model=MODEL, max_tokens=8, temperature=0,
                                                messages=[{"role": "user", "content": "Say hello."}])
    assert completion.choices[0].message.content
    anonymous = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()


def test_a_rate_limited_key_gets_429_with_retry_after_through_the_openai_client(guarded):
    server, keys, _, _ = guarded
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=keys["tight"], max_retries=0, timeout=120)
    client.chat.completions.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_admin_scope_and_key_scoping_on_the_real_server(guarded):
    server, keys, _, _ = guarded
    answer = requests.post(f"{server.url}/chat/new/message", json={"prompt": "Hi", "max_tokens": 4},
                           headers={"Authorization": f"Bearer {keys['web']}"}, timeout=120).json()
    mine = requests.get(f"{server.url}/conversations", headers={"Authorization": f"Bearer {keys['web']}"},
                        timeout=10).json()["conversations"]
    assert answer["conversation_id"] in [c["id"] for c in mine]
    assert requests.get(f"{server.url}/admin/conversations", timeout=10,
                        headers={"Authorization": f"Bearer {keys['web']}"}).status_code == 403
    everything = requests.get(f"{server.url}/admin/conversations", timeout=10,
                              headers={"Authorization": f"Bearer {keys['ops']}"}).json()["conversations"]
    assert answer["conversation_id"] in [c["id"] for c in everything]


def test_preflights_pass_for_the_allowed_origin_only(guarded):
    server, _, allowed, other = guarded
    for origin, passes in ((allowed.origin, True), (other.origin, False)):
        response = requests.options(f"{server.url}/v1/chat/completions", timeout=10, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert (response.headers.get("Access-Control-Allow-Origin") == origin) is passes


def test_a_page_on_a_second_origin_calls_the_api_from_chromium(guarded):
    server, keys, allowed, other = guarded
    browser = chromium_driver()
    try:
        results = {}
        for page in (allowed, other):
            browser.get(f"{page.origin}/index.html?api={server.url}&key={keys['web']}")
            results[page.origin] = wait_for(lambda: browser.execute_script(
                "const d = document.getElementById('out').dataset; return d.completion && d.stream && "
                "[d.completion, d.stream];"))
    finally:
        browser.quit()
    completion, stream = results[allowed.origin]
    completion = json.loads(completion)
    assert completion["status"] == 200 and completion["body"]["choices"][0]["message"]["content"]
    assert completion["remaining"] is not None  # an exposed header the page can read
    assert stream not in ("failed", "(empty)") and not stream.startswith("failed")
    blocked_completion, blocked_stream = results[other.origin]
    assert blocked_completion.startswith("failed") and blocked_stream.startswith("failed")


def test_the_bundled_page_streams_with_a_key_through_a_stream_token(guarded):
    server, keys, _, _ = guarded
    browser = chromium_driver()
    try:
        browser.get(server.url + "/")
        browser.find_element("id", "prompt").send_keys("Say hello.")
        max_tokens = browser.find_element("id", "max_tokens")
        max_tokens.clear()
        max_tokens.send_keys("8")
        browser.find_element("id", "api_key").send_keys("llmk_wrong")
        browser.find_element("id", "send").click()
        wait_for(lambda: browser.execute_script("return document.getElementById('answer').dataset.state") == "error")
        assert "not valid" in browser.find_element("id", "error").text

        key_field = browser.find_element("id", "api_key")
        key_field.clear()
        key_field.send_keys(keys["web"])
        browser.find_element("id", "send").click()
        state, text = wait_for(lambda: browser.execute_script(
            "const a = document.getElementById('answer'); return a.dataset.state === 'done' && "
            "[a.dataset.state, a.textContent];"))
        assert text
    finally:
        browser.quit()
    assert keys["web"] not in server.log()  # the key never reaches a URL or a log line
