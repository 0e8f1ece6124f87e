"""The output guard: the checker on its own, its settings, and what each API shows on a fake engine."""

from __future__ import annotations

import dataclasses
import json
import logging
import random

import pytest

from llm_api import create_app
from llm_api.config import ConfigError, Settings
from llm_api.services.output_guard import CONTENT_FILTER, REPETITION, OutputGuard, read_word_list
from tests.fakes import FakeEngine, wait_until
from tests.http import post_json
from tests.metrics import scrape, value
from tests.sse import lesson_text, openai_chunks, parse_sse

COLOURS = "Red\nOrange\nYellow\nGreen\nBlue\nIndigo\nViolet\n"
PROSE = (
    "The capital of France is Paris. It is known for the Eiffel Tower, the Louvre and its cafes. "
    "Paris has been the capital of France for most of the last thousand years, and it is the largest "
    "city of the country. The city is divided by the Seine, and the river is crossed by many bridges. "
    "Many people visit the city every year, and many of them visit the museums of the city. "
)


def run(check, deltas: list[str]) -> tuple[str, list[str]]:
    """Feed ``deltas`` and finish; returns the released text and what each call released."""
    released = [check.feed(d) for d in deltas]
    if check.stop is None:
        released.append(check.finish())
    return "".join(released), released


def splits(text: str, seed: int, pieces: int = 12) -> list[str]:
    cuts = sorted(random.Random(seed).sample(range(1, len(text)), pieces - 1))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


# ---- the content filter ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(25))
def test_a_match_split_across_deltas_is_never_sent(seed):
    text = "The capital of France is Paris, and Paris is lovely."
    check = OutputGuard("Paris", holdback=8).check()
    released = []
    for delta in splits(text, seed):
        released.append(check.feed(delta))
        assert "P" not in "".join(released)  # not even the first letter of the match leaves early
    assert check.stop is not None and check.stop.reason == CONTENT_FILTER
    assert "".join(released) == "The capital of France is "
    assert check.stop.sent == len("The capital of France is ")
    assert check.feed(" more text") == "" and check.finish() == ""


@pytest.mark.parametrize("split_at", range(1, 6))
def test_the_match_is_caught_whatever_token_boundary_cuts_it(split_at):
    word = "Paris"
    check = OutputGuard("Paris", holdback=5).check()
    out, _ = run(check, ["It is ", word[:split_at], word[split_at:], " indeed."])
    assert out == "It is " and check.stop.reason == CONTENT_FILTER


def test_text_is_held_back_and_flushed_at_a_normal_end():
    check = OutputGuard("forbidden", holdback=10).check()
    deltas = splits(PROSE, 1, pieces=40)
    received = ""
    sent = ""
    for delta in deltas:
        received += delta
        sent += check.feed(delta)
        assert received.startswith(sent)
        assert len(received) - len(sent) <= 10  # never more held back than the hold-back
    tail = check.finish()
    assert len(tail) == 10 and sent + tail == PROSE and check.stop is None


def test_without_a_filter_nothing_is_held_back():
    check = OutputGuard().check()
    assert [check.feed(d) for d in ["Hello", " wor", "ld"]] == ["Hello", " wor", "ld"]
    assert check.finish() == ""


def test_a_match_at_the_very_end_is_cut_when_the_answer_ends():
    check = OutputGuard("Paris", holdback=64).check()
    assert check.feed("The capital is Paris") == ""
    assert check.finish() == "The capital is "
    assert check.stop.reason == CONTENT_FILTER and check.stop.matched == "Paris"


def test_word_boundaries_and_anchors_look_at_the_text_that_follows():
    check = OutputGuard(r"\bcat\b", holdback=8).check()
    out, _ = run(check, ["The cat", "alog is ", "long."])  # "cat" then "alog": no match after all
    assert out == "The catalog is long." and check.stop is None
    check = OutputGuard(r"end$", holdback=8).check()
    out, _ = run(check, ["the end", " is near"])  # `$` only matches at the end of the whole answer
    assert out == "the end is near" and check.stop is None
    check = OutputGuard(r"end$", holdback=8).check()
    out, _ = run(check, ["the ", "end"])
    assert out == "the " and check.stop is not None


def test_the_filter_is_case_sensitive_unless_the_expression_says_otherwise():
    assert run(OutputGuard("paris", holdback=8).check(), ["Paris."])[0] == "Paris."
    assert run(OutputGuard("(?i)paris", holdback=8).check(), ["Paris."])[0] == ""


def test_a_longer_match_than_the_hold_back_still_stops_the_rest():
    check = OutputGuard(r"secret \w+ code", holdback=4).check()
    out, _ = run(check, ["a secret", " launch", " code", " follows"])
    assert check.stop.reason == CONTENT_FILTER
    assert out.startswith("a ") and "code" not in out  # part of the match left early; the rest never did


def words_file(tmp_path, text: str) -> list[tuple[int, str]]:
    path = tmp_path / "words.txt"
    path.write_text(text, encoding="utf-8")
    return read_word_list(str(path))


def test_word_list_matches_whole_words_ignoring_case(tmp_path):
    words = words_file(tmp_path, "# banned words\n\ncat\n  bad   word  \nC++\n")
    assert words == [(3, "cat"), (4, "bad word"), (5, "C++")]
    guard = OutputGuard(words=words, holdback=4)

    def filtered(text: str) -> str:
        return run(guard.check(), splits(text, 3, pieces=min(6, len(text))))[0]

    for clean in ["concatenate the scat", "cats and catalogs", "a bad wording", "C+ and C#", "bad_word"]:
        assert filtered(clean) == clean
    assert filtered("My CAT sleeps.") == "My "
    assert filtered("That Cat.") == "That "
    assert filtered("a BAD\n  Word here") == "a "  # any whitespace between the words of a phrase
    assert filtered("use c++ daily") == "use "
    check = guard.check()
    run(check, ["It is a bad ", "word"])
    assert check.stop.rule == "LLM_API_OUTPUT_FILTER_WORDS:4" and check.stop.matched == "bad word"


def test_word_list_holds_back_at_least_its_longest_entry(tmp_path):
    guard = OutputGuard(words=words_file(tmp_path, "a rather long forbidden phrase\n"), holdback=2)
    assert guard.holdback == len("a rather long forbidden phrase")
    out, _ = run(guard.check(), list("then a rather long forbidden phrase appears"))
    assert out == "then "


def test_regex_and_word_list_together_stop_at_the_earliest_match(tmp_path):
    guard = OutputGuard("Berlin", words=words_file(tmp_path, "paris\n"), holdback=16)
    check = guard.check()
    assert run(check, ["From Paris", " to Berlin", " by train."])[0] == "From "
    assert check.stop.rule == "LLM_API_OUTPUT_FILTER_WORDS:1"
    check = guard.check()
    assert run(check, ["From Berlin", " to Paris", " by train."])[0] == "From "
    assert check.stop.rule == "LLM_API_OUTPUT_FILTER"


def test_a_long_word_list_on_a_long_answer(tmp_path):
    rng = random.Random(7)
    entries = {"".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(5, 12))) for _ in range(3000)}
    guard = OutputGuard(words=words_file(tmp_path, "\n".join(sorted(entries))), holdback=64)
    check = guard.check(repetition=False)
    text = PROSE * 40  # about 15,000 characters, in 4,000 deltas
    out, _ = run(check, splits(text, 5, pieces=4000))
    assert out == text


# ---- the repetition stop -----------------------------------------------------------------------------


def test_repetition_stops_a_looping_text():
    check = OutputGuard(ngram=10, max_repeats=4).check()
    out, _ = run(check, splits("Singing" + " la" * 300, 9, pieces=100))
    assert check.stop is not None and check.stop.reason == REPETITION
    # the 10-gram "la ... la" occurs a fifth time with the 14th "la": the text ends right after it
    assert out == "Singing" + " la" * 14
    assert check.stop.rule == "repetition:10x4" and check.stop.matched == " ".join(["la"] * 10)


def test_repetition_catches_a_long_loop_after_max_repeats():
    stanza = "In the heart of the earth, where shadows play,\nI love you, my love, my love.\n\n"
    check = OutputGuard(ngram=10, max_repeats=4).check()
    out, _ = run(check, [w + " " for w in (stanza * 12).split(" ")])
    assert check.stop.reason == REPETITION
    assert 4 * len(stanza) < len(out) < 5 * len(stanza) + 1


@pytest.mark.parametrize("text", [
    COLOURS * 3,  # the same short list three times over
    "".join(f"{n}. Yes\n" for n in range(1, 101)),  # a numbered list of the same word
    PROSE * 4,  # the same paragraph four times: at the limit, not over it
    "\n".join(["Verse"] + ["We will, we will rock you, we will, we will rock you, sing it loud tonight"] * 4),
    "- Red: warm\n- Orange: warm\n- Yellow: warm\n- Green: cool\n- Blue: cool\n- Indigo: cool\n- Violet: cool\n",
])
def test_repetition_leaves_normal_answers_alone(text):
    check = OutputGuard().check()  # the defaults
    out, _ = run(check, splits(text, 2, pieces=30))
    assert out == text and check.stop is None


def test_repetition_can_be_turned_off():
    loop = [" la"] * 200
    assert OutputGuard(max_repeats=0).check().active is False
    check = OutputGuard(max_repeats=0).check()
    assert run(check, loop)[0] == "".join(loop) and check.stop is None
    check = OutputGuard().check(repetition=False)  # requests with ignore_eos
    assert run(check, loop)[0] == "".join(loop) and check.stop is None


def test_repetition_counts_words_of_scripts_without_spaces_one_character_each():
    check = OutputGuard(ngram=10, max_repeats=4).check()
    run(check, ["我爱你"] * 40)
    assert check.stop is not None and check.stop.reason == REPETITION


def test_the_filter_still_applies_to_the_text_kept_at_a_repetition_stop():
    check = OutputGuard("Paris", holdback=64, ngram=3, max_repeats=1).check()
    out, _ = run(check, ["go go go to Pa", "ris go go go"])
    assert check.stop.reason == CONTENT_FILTER and out == "go go go to "


# ---- settings ----------------------------------------------------------------------------------------


def test_a_word_list_that_cannot_be_read_is_refused(tmp_path):
    folder = tmp_path / "words"
    folder.mkdir()
    binary = tmp_path / "words.bin"
    binary.write_bytes(b"\xff\xfe\x00bad")
    for path, expected in [(folder, "must be an existing file"), (binary, "must be a readable UTF-8 text file")]:
        with pytest.raises(ConfigError, match=expected):
            Settings.from_env({"LLM_API_OUTPUT_FILTER_WORDS": str(path)})


def test_guard_settings_and_defaults(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("paris\n")
    settings = Settings.from_env({"LLM_API_OUTPUT_FILTER": r"\bParis\b", "LLM_API_OUTPUT_FILTER_WORDS": str(words),
                                  "LLM_API_OUTPUT_FILTER_HOLDBACK": "32", "LLM_API_REPETITION_NGRAM": "6",
                                  "LLM_API_REPETITION_MAX": "0"})
    assert (settings.output_filter, settings.output_filter_words) == (r"\bParis\b", str(words))
    assert (settings.output_filter_holdback, settings.repetition_ngram, settings.repetition_max) == (32, 6, 0)
    defaults = Settings.from_env({})
    assert (defaults.output_filter, defaults.output_filter_words) == ("", "")
    assert (defaults.output_filter_holdback, defaults.repetition_ngram, defaults.repetition_max) == (64, 10, 4)


# ---- over HTTP, on the fake engine -------------------------------------------------------------------

ANSWER = "The capital of France is Paris and it is lovely."
LOOP = "Singing" + " la" * 60


def guarded_app(settings, reply: str, **overrides):
    engine = FakeEngine(reply=reply, context_length=256)
    app = create_app(dataclasses.replace(settings, **overrides), engine=engine)
    app.config["TESTING"] = True
    return app, app.test_client(), engine


def stored_answer(client) -> dict:
    return client.get("/chat/get/messages").get_json()["messages"][-1]


def lesson_events(response) -> tuple[str, dict]:
    """The text and the finish event's data of a finished lesson stream."""
    events = parse_sse(response.get_data(as_text=True))
    assert events[-1]["event"] == "finish"
    return lesson_text(events), json.loads(events[-1]["data"])


def test_lesson_answer_stops_before_the_match(settings):
    _, client, engine = guarded_app(settings, ANSWER, output_filter="Paris")
    body = post_json(client, "/chat/new/message", {"prompt": "capital?"}).get_json()
    assert body["response"] == "The capital of France is "
    assert body["finish_reason"] == "content_filter"
    assert body["history"][-1] == {"role": "assistant", "content": "The capital of France is "}
    assert engine.handles[-1].cancelled and engine.handles[-1].cancel_reason == "content_filter"
    stored = stored_answer(client)
    assert (stored["response"], stored["finish_reason"]) == ("The capital of France is ", "content_filter")


@pytest.mark.parametrize("mode", ["delta", "cumulative"])
def test_lesson_stream_stops_before_the_match(settings, mode):
    _, client, engine = guarded_app(settings, ANSWER, output_filter="Paris", output_filter_holdback=6)
    response = post_json(client, "/chat/new/message", {"prompt": "capital?", "stream": True, "stream_mode": mode})
    events = parse_sse(response.get_data(as_text=True))
    texts = [json.loads(e["data"])["text"] for e in events if e["data"] and e["event"] is None]
    streamed = "".join(texts) if mode == "delta" else texts[-1]
    assert streamed == "The capital of France is " and len(texts) > 1  # still streamed, a few characters late
    assert "Paris" not in response.get_data(as_text=True)
    finish = json.loads(events[-1]["data"])
    assert events[-1]["event"] == "finish" and finish["finish_reason"] == "content_filter"
    assert engine.handles[-1].cancelled
    stored = stored_answer(client)
    assert (stored["response"], stored["finish_reason"]) == ("The capital of France is ", "content_filter")


def test_the_generation_is_cancelled_at_the_match(settings):
    _, client, engine = guarded_app(settings, ANSWER + " More words follow here, many of them.",
                                    output_filter="Paris")
    engine.delay = 0.01  # the fake honours the cancel, as the real engine does
    text, finish = lesson_events(post_json(client, "/chat/new/message", {"prompt": "capital?", "stream": True}))
    assert text == "The capital of France is " and finish["finish_reason"] == "content_filter"
    handle = engine.handles[-1]
    assert handle.cancel_seen_at_token is not None and handle.cancel_seen_at_token <= 8  # of 15 pieces
    assert finish["usage"]["completion_tokens"] == handle.cancel_seen_at_token


def test_openai_chat_and_text_completions_report_content_filter(settings):
    _, client, engine = guarded_app(settings, ANSWER, output_filter="Paris")
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "capital?"}]}
    body = post_json(client, "/v1/chat/completions", chat).get_json()
    assert body["choices"][0]["message"]["content"] == "The capital of France is "
    assert body["choices"][0]["finish_reason"] == "content_filter"
    stream = post_json(client, "/v1/chat/completions", {**chat, "stream": True})
    chunks = openai_chunks(parse_sse(stream.get_data(as_text=True)))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "The capital of France is "
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "content_filter"}
    assert engine.handles[-1].cancelled
    text = {"model": "fake-model", "prompt": "The capital of France is", "max_tokens": 40}
    body = post_json(client, "/v1/completions", text).get_json()
    assert body["choices"][0]["text"] == "The capital of France is "
    assert body["choices"][0]["finish_reason"] == "content_filter"
    stored = stored_answer(client)
    assert (stored["response"], stored["finish_reason"]) == ("The capital of France is ", "content_filter")


def test_word_list_over_http(settings, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("# places\nparis\n")
    _, client, _ = guarded_app(settings, ANSWER, output_filter_words=str(words))
    body = post_json(client, "/chat/new/message", {"prompt": "capital?"}).get_json()
    assert (body["response"], body["finish_reason"]) == ("The capital of France is ", "content_filter")


def test_an_answer_without_a_match_is_whole(settings):
    _, client, _ = guarded_app(settings, ANSWER, output_filter="Berlin", output_filter_holdback=10)
    text, finish = lesson_events(post_json(client, "/chat/new/message", {"prompt": "capital?", "stream": True}))
    assert text == ANSWER and finish["finish_reason"] == "stop"
    assert stored_answer(client)["response"] == ANSWER


def test_a_looping_answer_ends_with_repetition(settings):
    _, client, engine = guarded_app(settings, LOOP)
    expected = "Singing" + " la" * 14
    text, finish = lesson_events(post_json(client, "/chat/new/message", {"prompt": "sing", "stream": True}))
    assert (text, finish["finish_reason"]) == (expected, "repetition")
    assert engine.handles[-1].cancelled and engine.handles[-1].cancel_reason == "repetition"
    stored = stored_answer(client)
    assert (stored["response"], stored["finish_reason"]) == (expected, "repetition")
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "sing"}]}
    body = post_json(client, "/v1/chat/completions", chat).get_json()
    assert body["choices"][0]["message"]["content"] == expected
    assert body["choices"][0]["finish_reason"] == "repetition"


def test_ignore_eos_requests_are_not_stopped_for_repetition(settings):
    _, client, _ = guarded_app(settings, LOOP)
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "sing"}], "ignore_eos": True}
    body = post_json(client, "/v1/chat/completions", chat).get_json()
    assert body["choices"][0]["message"]["content"] == LOOP and body["choices"][0]["finish_reason"] == "stop"


def test_default_settings_leave_the_fake_answers_alone(client, fake_engine):
    body = post_json(client, "/chat/new/message", {"prompt": "hi"}).get_json()
    assert (body["response"], body["finish_reason"]) == (fake_engine.reply, "stop")
    assert not fake_engine.handles[-1].cancelled


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("log_prompts", [False, True])
def test_a_stop_is_logged_once_and_counted(settings, log_prompts):
    _, client, _ = guarded_app(settings, ANSWER, output_filter="Paris", log_prompts=log_prompts)
    logger, collect = logging.getLogger("llm_api.guard"), Collect()
    logger.addHandler(collect)
    try:
        body = post_json(client, "/chat/new/message", {"prompt": "capital?"}).get_json()
    finally:
        logger.removeHandler(collect)
    assert len(collect.lines) == 1 and "\n" not in collect.lines[0]
    line = collect.lines[0]
    for field in (f"message_id={body['message_id']}", "reason=content_filter", "rule=LLM_API_OUTPUT_FILTER",
                  f"sent={len('The capital of France is ')}"):
        assert field in line
    assert ("Paris" in line) is log_prompts
    samples = scrape(client)
    assert value(samples, "llm_api_output_guard_stops_total", reason="content_filter") == 1
    assert value(samples, "llm_api_output_guard_stops_total", reason="repetition") == 0
    assert value(samples, "llm_api_answers_total", finish_reason="content_filter") == 1


def test_repetition_is_counted(settings):
    _, client, _ = guarded_app(settings, LOOP)
    post_json(client, "/chat/new/message", {"prompt": "sing"})
    assert wait_until(lambda: value(scrape(client), "llm_api_output_guard_stops_total", reason="repetition") == 1)
