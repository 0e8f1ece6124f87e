"""The bundled page in real headless Chromium: EventSource streaming and Stop, against the real server."""

from __future__ import annotations

import json
import os
import time

import pytest
import requests

from tests.browser import chromium_driver, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def browser():
    driver = chromium_driver()
    yield driver
    driver.quit()


def ask(browser, url: str, prompt: str, max_tokens: int, temperature: float) -> None:
    browser.get(url + "/")
    for field, value in (("prompt", prompt), ("max_tokens", str(max_tokens)), ("temperature", str(temperature))):
        element = browser.find_element("id", field)
        element.clear()
        element.send_keys(value)
    browser.find_element("id", "send").click()


def answer_state(browser) -> tuple[str, str, str]:
    return tuple(browser.execute_script(
        "const a = document.getElementById('answer'); return [a.dataset.state, a.textContent, a.dataset.messageId];"))


def test_page_renders_the_same_answer_as_the_api(browser, live_server, tmp_path):
    question = "What is the capital of France?"
    expected = requests.post(f"{live_server.url}/chat/new/message", timeout=120, data=json.dumps(
        {"prompt": question, "max_tokens": 40, "temperature": 0})).json()["response"]
    ask(browser, live_server.url, question, 40, 0)
    state, text, message_id = wait_for(lambda: answer_state(browser)[0] == "done" and answer_state(browser))
    assert text == expected and "Paris" in text
    assert "tokens/s" in browser.find_element("id", "stats").text
    stored = requests.get(f"{live_server.url}/chat/get/messages?limit=5").json()["messages"]
    assert any(m["message_id"] == message_id and m["finish_reason"] == "stop" for m in stored)
    browser.save_screenshot(str(tmp_path / "chat-page.png"))
    if os.environ.get("LLM_API_DOCS_SCREENSHOT"):  # refreshes the picture in the docs
        browser.save_screenshot(os.environ["LLM_API_DOCS_SCREENSHOT"])


def test_stop_closes_the_stream_and_cancels_generation(browser, live_server):
    ask(browser, live_server.url, "Write a very long story about a dragon and a knight.", 300, 0)
    wait_for(lambda: len(answer_state(browser)[1]) > 40)
    browser.find_element("id", "stop").click()
    _, shown, message_id = answer_state(browser)
    assert message_id

    def cancelled_record():
        for message in requests.get(f"{live_server.url}/chat/get/messages?limit=20").json()["messages"]:
            if message["message_id"] == message_id:
                return message
        return None

    record = wait_for(cancelled_record, timeout=20)
    assert record["finish_reason"] == "cancelled"
    stop_calls = [line for line in live_server.log().splitlines() if f"path=/chat/stream/{message_id} " in line]
    assert stop_calls and "method=DELETE" in stop_calls[0] and "status=204" in stop_calls[0]  # Stop told the server
    assert record["usage"]["completion_tokens"] < 300
    assert record["response"].startswith(shown)
    time.sleep(4)  # longer than the retry hint: a closed EventSource must not reconnect and start again
    newest = requests.get(f"{live_server.url}/chat/get/messages?limit=1").json()["messages"][-1]
    assert newest["message_id"] == message_id
