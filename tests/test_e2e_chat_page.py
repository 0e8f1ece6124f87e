"""The chat page at / in real headless Chromium, against real gunicorn servers: the embedded model with API keys
(so the page streams with stream tokens), behind a relay that can cut connections; and a scripted engine whose
answer holds HTML and script, for the sanitizer. One browser and one server of each kind for the module.

Set LLM_API_DOCS_SCREENSHOTS=docs/images to refresh the pictures in the docs (desktop and phone width)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.keys import Keys

from tests.browser import chromium_driver, despite_rerenders, wait_for
from tests.cutting_proxy import CuttingProxy
from tests.servers import LiveServer, start_server, stop_server

pytestmark = pytest.mark.e2e

LONG = "Write a very long story about a dragon and a knight."
HOSTILE = """Rendered **bold**, a [link](javascript:window.pwned='link') and code:

```html
<b>not bold</b>
```

<img src=x onerror="window.pwned='img'"> <script>window.pwned='script'</script> \
<svg><animate onbegin="window.pwned='svg'" attributeName="x" dur="1s"></animate></svg> \
<iframe src="javascript:window.pwned='iframe'"></iframe> <a href="javascript:window.pwned='a'">a link</a> the end."""
SECOND = "Answer of the second model."  # the scripted server's second chat model, id `second`


def _keys(database_url: str) -> dict[str, str]:
    from llm_api.auth.keys import issue_key
    from llm_api.storage import SqlKeyStore
    from llm_api.storage.database import create_db_engine, upgrade

    engine = create_db_engine(database_url, pool_size=1)
    try:
        upgrade(engine)
        store = SqlKeyStore(engine)
        return {"page": issue_key(store, "page")[1], "tight": issue_key(store, "tight", rpm=1)[1]}
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def model_server(tmp_path_factory) -> Iterator[tuple[LiveServer, CuttingProxy, dict[str, str]]]:
    """The embedded model with keys, reached through a relay; a dropped EventSource reconnects after 3 s, well
    within the 10 s the server keeps generating for it."""
    folder = tmp_path_factory.mktemp("chat-page")
    database_url = f"sqlite:///{folder / 'page.sqlite3'}"
    keys = _keys(database_url)
    server = start_server(folder, {"LLM_API_DATABASE_URL": database_url, "LLM_API_DISCONNECT_GRACE_SECONDS": "10",
                                   "LLM_API_GRACEFUL_TIMEOUT": "15"})  # a stop never waits long for an answer
    proxy = CuttingProxy(int(server.url.rsplit(":", 1)[1]))
    yield server, proxy, keys
    proxy.close()
    stop_server(server)


@pytest.fixture(scope="module")
def scripted_server(tmp_path_factory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("scripted"), {"LLM_API_TEST_REPLY": HOSTILE,
                                                                "LLM_API_DEGRADED_ANSWER": "Busy now, sorry.",
                                                                "LLM_API_TEST_SECOND_REPLY": SECOND},
                          app="tests.scripted_wsgi:app")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def browser():
    driver = chromium_driver()
    yield driver
    driver.quit()


def js(browser, script: str, *args):
    return browser.execute_script(script, *args)


def open_page(browser, url: str, key: str | None = None, path: str = "/") -> None:
    browser.get(url + path)
    field = browser.find_element("id", "api_key")
    if key is not None and field.get_attribute("value") != key:
        field.clear()
        field.send_keys(key, Keys.TAB)  # a change: the list is read again with this key
    wait_for(lambda: js(browser, "return document.readyState === 'complete'"))


def settings(browser, max_tokens: int, temperature: float) -> None:
    for field, value in (("max_tokens", max_tokens), ("temperature", temperature)):
        element = browser.find_element("id", field)
        element.clear()
        element.send_keys(str(value))


def answer(browser) -> dict:
    """The newest answer on the page: its state, text, message id and the line under it."""
    return js(browser, """const a = document.getElementById('answer'); if (!a) return {};
        const article = a.closest('article');
        return {state: a.dataset.state, text: a.textContent, html: a.innerHTML, messageId: a.dataset.messageId,
                resumes: a.dataset.resumes || '0', meta: article.querySelector('.meta').textContent,
                note: article.querySelector('.note').textContent};""")


def ask(browser, prompt: str, timeout: float = 300) -> dict:
    browser.find_element("id", "prompt").send_keys(prompt)
    browser.find_element("id", "send").click()
    return wait_for(lambda: answer(browser).get("state") not in (None, "streaming") and answer(browser), timeout)


def words(text: str) -> list[str]:
    """The words of a text: what rendered Markdown keeps of the raw answer (paragraph breaks become one)."""
    return text.split()


def shown_messages(browser) -> list[tuple[str, str]]:
    return [tuple(m) for m in js(browser, "return [...document.querySelectorAll('#messages article')].map("
                                          "a => [a.classList[1], a.querySelector('.body').textContent]);")]


def listed(browser) -> list[str]:
    return js(browser, "return [...document.querySelectorAll('#conversations li')].map(li => li.dataset.id);")


def api(server: LiveServer, key: str, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, server.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=120,
                            **kwargs)


def current_conversation(browser) -> str:
    return wait_for(lambda: re.fullmatch(r"#([0-9a-f]{32})", js(browser, "return location.hash")))[1]


def test_an_answer_streams_in_as_the_api_gives_it_with_its_numbers(browser, model_server):
    server, proxy, keys = model_server
    question = "What is the capital of France?"
    expected = api(server, keys["page"], "POST", "/chat/new/message",
                   json={"prompt": question, "max_tokens": 40, "temperature": 0}).json()["response"]
    open_page(browser, proxy.url, keys["page"])
    settings(browser, 40, 0)
    shown = ask(browser, question)
    assert shown["state"] == "done" and shown["text"].strip() == expected and "Paris" in expected
    assert re.search(r"^\d+ tokens · [\d.]+ tokens/s · stop \(finished\) · engine main$", shown["meta"]), shown
    conversation_id = current_conversation(browser)  # the address names the conversation the answer started
    stored = api(server, keys["page"], "GET", f"/conversations/{conversation_id}").json()
    assert [(m["role"], m["content"]) for m in stored["messages"]] == [("user", question), ("assistant", expected)]
    assert stored["messages"][1]["message_id"] == shown["messageId"]
    wait_for(lambda: listed(browser)[:1] == [conversation_id])
    assert browser.find_element("id", "conversation_title").text == question
    assert keys["page"] not in server.log()  # the key never reaches a URL: the stream used a stream token

    folder = os.environ.get("LLM_API_DOCS_SCREENSHOTS")
    if folder:  # refreshes the pictures in the docs: one more turn, with Markdown in it
        settings(browser, 100, 0)
        ask(browser, "Write a Python function that adds two numbers, with a short explanation.", timeout=600)
        browser.execute_script("document.getElementById('messages').scrollTop = 1e6")
        time.sleep(0.5)
        browser.save_screenshot(str(Path(folder) / "chat-desktop.png"))
        browser.set_window_size(390, 844)
        try:
            time.sleep(0.5)
            browser.save_screenshot(str(Path(folder) / "chat-phone.png"))
        finally:
            browser.set_window_size(1000, 800)


def test_keyboard_reload_continue_rename_and_delete(browser, model_server):
    server, proxy, keys = model_server
    open_page(browser, proxy.url, keys["page"])
    browser.find_element("id", "new_chat").click()
    settings(browser, 12, 0)
    prompt = browser.find_element("id", "prompt")
    prompt.send_keys("What is the capital", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "of France?")
    assert prompt.get_attribute("value") == "What is the capital\nof France?"  # Shift+Enter: a new line, not sent
    assert answer(browser) == {}
    prompt.send_keys(Keys.ENTER)  # Enter sends
    first = wait_for(lambda: answer(browser).get("state") == "done" and answer(browser), 300)
    assert prompt.get_attribute("value") == ""
    conversation_id = current_conversation(browser)

    browser.refresh()  # the address keeps the conversation: it is read back from the server
    wait_for(lambda: len(shown_messages(browser)) == 2)
    assert shown_messages(browser) == [("user", "What is the capital\nof France?"), ("assistant", first["text"])]
    wait_for(lambda: conversation_id in listed(browser))
    browser.find_element("id", "prompt").send_keys("And of Germany?", Keys.ENTER)
    wait_for(lambda: answer(browser).get("state") == "done", 300)
    stored = api(server, keys["page"], "GET", f"/conversations/{conversation_id}").json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[2]["content"] == "And of Germany?" and current_conversation(browser) == conversation_id
    assert [c["id"] for c in api(server, keys["page"], "GET", "/conversations").json()["conversations"]].count(
        conversation_id) == 1

    item = f"#conversations li[data-id='{conversation_id}']"

    def rename() -> None:  # the list reloads once the answer is done, maybe under the first click
        browser.find_element("css selector", f"{item} .rename").click()
        title = browser.find_element("css selector", f"{item} input")
        title.send_keys(Keys.CONTROL, "a")
        title.send_keys("Capitals of Europe", Keys.ENTER)

    despite_rerenders(rename)
    wait_for(lambda: browser.find_element("id", "conversation_title").text == "Capitals of Europe")
    assert api(server, keys["page"], "GET", f"/conversations/{conversation_id}").json()["title"] == \
        "Capitals of Europe"

    despite_rerenders(lambda: browser.find_element("css selector", f"{item} .delete").click())
    alert = wait_for(lambda: _alert(browser))
    assert "Capitals of Europe" in alert.text
    alert.accept()
    wait_for(lambda: conversation_id not in listed(browser))
    assert api(server, keys["page"], "GET", f"/conversations/{conversation_id}").status_code == 404
    assert browser.find_element("id", "conversation_title").text == "New conversation"
    assert shown_messages(browser) == [] and js(browser, "return location.hash") == ""


def _alert(browser):
    try:
        return browser.switch_to.alert
    except NoAlertPresentException:  # not yet
        return None


def test_stop_cancels_the_generation_on_the_server(browser, model_server):
    server, proxy, keys = model_server
    open_page(browser, proxy.url, keys["page"])
    browser.find_element("id", "new_chat").click()
    settings(browser, 300, 0)
    browser.find_element("id", "prompt").send_keys(LONG, Keys.ENTER)
    wait_for(lambda: len(answer(browser).get("text", "")) > 40)
    browser.find_element("id", "stop").click()
    stopped = wait_for(lambda: answer(browser).get("state") == "stopped" and answer(browser), 60)
    assert "cancelled (stopped)" in stopped["meta"]
    conversation_id = current_conversation(browser)  # the cancelled finish still names the new conversation
    record = api(server, keys["page"], "GET", f"/conversations/{conversation_id}").json()["messages"][-1]
    assert record["finish_reason"] == "cancelled" and record["usage"]["completion_tokens"] < 300
    assert words(record["content"]) == words(stopped["text"])
    delete = [line for line in server.log().splitlines() if f"path=/chat/stream/{stopped['messageId']} " in line]
    assert delete and "method=DELETE" in delete[0] and "status=204" in delete[0]  # Stop told the server
    time.sleep(4)  # longer than the retry hint: a closed EventSource must not reconnect and start again
    assert len(api(server, keys["page"], "GET", f"/conversations/{conversation_id}").json()["messages"]) == 2


def test_a_cut_connection_resumes_visibly_without_a_second_generation(browser, model_server):
    server, proxy, keys = model_server
    open_page(browser, proxy.url, keys["page"])
    browser.find_element("id", "new_chat").click()
    settings(browser, 96, 0)  # long enough (about 5 s at the embedded model's 20 tokens/s) to cut it midway
    browser.find_element("id", "prompt").send_keys(LONG, Keys.ENTER)
    wait_for(lambda: len(answer(browser).get("text", "")) > 20)
    assert proxy.cut() >= 1
    wait_for(lambda: "reconnecting" in answer(browser)["note"], 10)  # shown while the browser waits to reconnect
    done = wait_for(lambda: answer(browser).get("state") not in (None, "streaming") and answer(browser), 600)
    assert done["state"] == "done" and done["resumes"] == "1", done
    assert "resumed after event" in done["note"] and "resumed 1× after a dropped connection" in done["meta"]
    conversation_id = current_conversation(browser)
    messages = api(server, keys["page"], "GET", f"/conversations/{conversation_id}").json()["messages"]
    assert len(messages) == 2 and messages[1]["finish_reason"] in ("stop", "length")  # one answer, not cancelled
    assert words(messages[1]["content"]) == words(done["text"])  # nothing lost or repeated across the cut
    reconnects = [line for line in server.log().splitlines() if "path=/chat/stream " in line]
    assert len(reconnects) >= 2  # the first connection and the reconnect (with Last-Event-ID) to the same answer


def test_a_rate_limited_key_is_told_how_long_to_wait(browser, model_server):
    server, proxy, keys = model_server
    open_page(browser, proxy.url, keys["tight"])  # 1 request per minute
    browser.find_element("id", "new_chat").click()
    settings(browser, 4, 0)
    assert ask(browser, "Say hi.")["state"] == "done"
    refused = ask(browser, "Say hi again.")
    assert refused["state"] == "error"
    error = wait_for(lambda: browser.find_element("id", "error").text)
    assert re.fullmatch(r"Rate limit reached: 1 requests per minute for this key\. Try again in \d+ s\.", error), error
    assert browser.find_element("id", "prompt").get_attribute("value") == "Say hi again."  # back in the box
    open_page(browser, proxy.url, keys["page"])  # leave the browser with the unlimited key


def test_html_and_script_in_an_answer_are_shown_inert(browser, scripted_server):
    open_page(browser, scripted_server.url)
    shown = ask(browser, "Show me some HTML.")
    assert shown["state"] == "done"
    for when in ("streamed", "read back"):
        time.sleep(1)  # time for an image error or an animation to fire, if anything had survived
        assert js(browser, "return window.pwned === undefined"), when
        active = js(browser, """const m = document.getElementById('messages');
            return [...m.querySelectorAll('script, iframe, svg, animate, [onerror], [onbegin], a[href^="javascript"]')]
                .map(e => e.outerHTML);""")
        assert active == [], when
        body = js(browser, "return [...document.querySelectorAll('#messages .assistant .body')].pop().innerHTML")
        assert "<strong>bold</strong>" in body and "&lt;b&gt;not bold&lt;/b&gt;" in body  # Markdown, code as text
        assert '<img src="x">' in body and "the end." in body
        browser.refresh()  # the stored answer goes through the same renderer
        wait_for(lambda: len(shown_messages(browser)) == 2)


def test_a_degraded_answer_is_marked_in_words(browser, scripted_server):
    open_page(browser, scripted_server.url)
    browser.find_element("id", "new_chat").click()
    shown = ask(browser, "UNREACHABLE engine, please answer.")  # the scripted engine fails; the static answer
    assert shown["state"] == "done" and shown["text"].strip() == "Busy now, sorry."
    assert shown["note"] == "Degraded answer: the primary engine could not answer, so “static” did."
    assert shown["meta"].endswith("engine static")


def test_the_model_picker_sends_the_chosen_chat_model(browser, scripted_server):
    open_page(browser, scripted_server.url)
    wait_for(lambda: js(browser, "return !document.getElementById('model_picker').hidden"))
    options = js(browser, "return [...document.getElementById('model').options].map(o => o.value)")
    assert options == ["fake-model", "second"]  # the chat models of /v1/models, the default first
    picker = browser.find_element("id", "model")
    try:
        js(browser, "const s = document.getElementById('model'); s.value = 'second';"
                    "s.dispatchEvent(new Event('change'));")
        browser.find_element("id", "new_chat").click()
        chosen = ask(browser, "Which model are you?")
        assert chosen["state"] == "done" and chosen["text"].strip() == SECOND
    finally:  # the choice is remembered in the browser: leave the default for the other tests
        js(browser, "arguments[0].value = 'fake-model'; arguments[0].dispatchEvent(new Event('change'));", picker)
    default = ask(browser, "And now?")  # the same conversation, with the default model chosen again
    assert default["state"] == "done" and "the end." in default["text"]
