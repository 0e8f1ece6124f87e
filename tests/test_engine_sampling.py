"""The sampling knobs on the embedded model, in-process: log-probabilities that agree with the text, ``n``
answers sharing one prefill, the vocabulary check of ``logit_bias``, and the generate path choosing exactly
as the batched loop does."""

from __future__ import annotations

import gevent
import pytest

from llm_api.generation.features import InvalidParameterError, UnsupportedFeatureError
from llm_api.generation.structured import ResponseFormat, StructuredOutput, ToolFunction
from llm_api.generation.types import SamplingParams, TextDelta
from llm_api.local_model.engine import EngineOptions, LocalEngine
from llm_api.local_model.loader import ModelSpec
from tests.servers import CACHE_DIR

pytestmark = pytest.mark.model

PROMPT = [{"role": "user", "content": "Name three colours and say why you like them."}]
KNOBS = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=7, top_k=20, min_p=0.02,
                       repetition_penalty=1.2, presence_penalty=0.4, frequency_penalty=0.2, logit_bias=((28, -3.0),),
                       logprobs=True, top_logprobs=3)


def generate(engine, params: SamplingParams, request_id: str = "t"):
    """(text, logprob entries, Finished) of one request."""
    handle = engine.submit(request_id, engine.encode_chat(PROMPT), params)
    text, entries = "", []
    while True:
        event = handle.next_event(60)
        assert event is not None
        if isinstance(event, TextDelta):
            text += event.text
            entries.extend(event.logprobs)
        else:
            handle.close()
            return text, entries, event


def test_greedy_logprobs_name_the_chosen_token_first_and_rebuild_the_text(real_engine):
    text, entries, finished = generate(real_engine, SamplingParams(max_tokens=30, temperature=0, logprobs=True,
                                                                   top_logprobs=2))
    generated = [t for t in finished.token_ids if t not in real_engine.stop_token_ids()]
    assert len(entries) == len(generated) > 5
    assert bytes(b for e in entries for b in e.bytes).decode() == text
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top) == 2
        assert (entry.top[0].token, entry.top[0].logprob) == (entry.token, entry.logprob)  # greedy: the argmax
        assert entry.top[1].logprob <= entry.top[0].logprob


def test_n_answers_share_one_prefill_and_match_their_seeds_alone(real_engine):
    before = real_engine.shared_prefills
    handles = [real_engine.submit(f"n{i}", real_engine.encode_chat(PROMPT), SamplingParams(
        max_tokens=16, temperature=0.9, seed=100 + i, top_k=30)) for i in range(4)]
    together = []
    for handle in handles:
        text = ""
        while not isinstance(event := handle.next_event(60), type(None)) and isinstance(event, TextDelta):
            text += event.text
        handle.close()
        together.append(text)
    assert real_engine.shared_prefills - before >= 2  # the prompt ran once (twice at worst) for four answers
    alone = [generate(real_engine, SamplingParams(max_tokens=16, temperature=0.9, seed=100 + i, top_k=30))[0]
             for i in range(4)]
    assert together == alone
    assert len(set(together)) > 1  # their own seeds: not four copies of one answer


def test_a_logit_bias_outside_the_vocabulary_is_refused_naming_the_field(real_engine):
    with pytest.raises(InvalidParameterError) as refused:
        real_engine.submit("t", [1, 2], SamplingParams(max_tokens=2, logit_bias=((10**8, 1.0),)))
    assert refused.value.field == "logit_bias"


@pytest.fixture(scope="module")
def sequential_engine():
    engine = LocalEngine(ModelSpec("embedded", cache_dir=str(CACHE_DIR)), EngineOptions(batching=False))
    engine.start()
    assert engine.wait_ready(300), engine.load_error
    yield engine
    engine.stop()


def test_the_generate_path_chooses_exactly_as_the_batched_loop(real_engine, sequential_engine):
    assert not sequential_engine.batched
    jobs = [gevent.spawn(generate, engine, KNOBS) for engine in (real_engine, sequential_engine)]
    gevent.joinall(jobs, raise_error=True)
    (batched_text, batched_entries, batched), (text, entries, finished) = [job.value for job in jobs]
    assert finished.token_ids == batched.token_ids and text == batched_text
    def tops(entries):
        return [(e.token, [t.token for t in e.top]) for e in entries]

    assert tops(entries) == tops(batched_entries)  # the numbers differ in the last digits (other kernels)
    assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in batched_entries], abs=1e-3)


@pytest.mark.parametrize("structured, field", [
    (StructuredOutput(response_format=ResponseFormat("json_object")), "response_format"),
    (StructuredOutput(tools=(ToolFunction("weather"),), tool_choice="required"), "tool_choice"),
])
def test_the_generate_path_declares_no_grammar_step(real_engine, sequential_engine, structured, field):
    """A model on its own generate code has no step to apply a grammar at: it does not declare the answer's
    shape, so a chain routes such requests elsewhere, and alone it refuses them naming the field."""
    assert {"response_format", "tool_choice"} <= real_engine.features
    assert field not in sequential_engine.features and "logprobs" in sequential_engine.features
    with pytest.raises(UnsupportedFeatureError) as refused:
        sequential_engine.submit("t", [1, 2], SamplingParams(max_tokens=2, structured=structured))
    assert refused.value.field == field
    auto = StructuredOutput(tools=(ToolFunction("weather"),))  # calls allowed, not forced: no grammar needed
    text, _, finished = generate(sequential_engine, SamplingParams(max_tokens=4, temperature=0, structured=auto))
    assert finished.usage.completion_tokens == 4 or finished.finish_reason == "stop"
