"""Histories and max_tokens in any combination: the answer is 200 or a 400 naming the context, never a 500.

The fake engine's context is small (64 tokens, one token per word), so hypothesis easily builds histories
that fit, that fit only after the oldest turns are dropped, and that cannot fit at all."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_api import create_app
from llm_api.config import Settings
from tests.fakes import FakeEngine

WORDS = st.lists(st.sampled_from(["a", "bb", "ccc", "dddd", "é", "北京", "🙂"]), min_size=1, max_size=40).map(" ".join)
TURN = st.tuples(WORDS, WORDS)
MAX_TOKENS = st.none() | st.integers(min_value=1, max_value=80) | st.integers(min_value=10**6, max_value=10**15)


@pytest.fixture(scope="module")
def small_context_client(tmp_path_factory):
    folder = tmp_path_factory.mktemp("history-properties")
    settings_ = Settings.from_env({}, database_url=f"sqlite:///{folder / 'llm_api.sqlite3'}", heartbeat_seconds=0.05)
    app = create_app(settings_, engine=FakeEngine(context_length=64))
    app.config["TESTING"] = True
    return app.test_client()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=st.lists(TURN, max_size=8), prompt=WORDS, max_tokens=MAX_TOKENS, stream=st.booleans())
def test_any_history_and_max_tokens_gets_an_answer_or_a_context_error(small_context_client, history, prompt,
                                                                      max_tokens, stream):
    turns = [{"role": role, "content": text}
             for user, assistant in history for role, text in (("user", user), ("assistant", assistant))]
    body = {"prompt": prompt, "history": turns, "max_tokens": max_tokens, "stream": stream}
    response = small_context_client.post("/chat/new/message", json=body)
    assert response.status_code in (200, 400), response.get_data(as_text=True)
    if response.status_code == 400:
        error = response.get_json()["error"]
        assert error["code"] == "context_length_exceeded", error
        return
    if stream:
        assert b"event: finish" in response.get_data()
    else:
        answer = response.get_json()
        assert answer["dropped_turns"] <= len(history)
        assert answer["history"][-2] == {"role": "user", "content": prompt}  # the new turn is never dropped
