"""Properties of the sampling knobs: whatever JSON a client puts in them, the answer is a 200 or a 400/422 naming
the field, never a 500; and whatever valid values a batch mixes, every row gets a token of the vocabulary, a
finite log-probability, and the same choice as alone."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_api.generation.types import SamplingParams
from llm_api.local_model.sampling import Sampler, choose_tokens
from tests.fakes import CHAT
from tests.http import post_json

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                        | st.text(max_size=5),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                    max_size=3), max_leaves=8)
# Values near and at the edges of each range, and anything at all.
KNOB_VALUES = {
    "n": st.integers(-2, 10), "logprobs": st.booleans(), "top_logprobs": st.integers(-1, 22),
    "presence_penalty": st.floats(-2.5, 2.5), "frequency_penalty": st.floats(-2.5, 2.5),
    "repetition_penalty": st.floats(-0.5, 2.5), "top_k": st.integers(-3, 10**6), "min_p": st.floats(-0.5, 1.5),
    "logit_bias": st.dictionaries(st.one_of(st.integers(-5, 10**10).map(str), st.text(max_size=3)),
                                  st.one_of(st.floats(-150, 150), st.text(max_size=2)), max_size=5),
}
KNOBS = st.dictionaries(st.sampled_from(sorted(KNOB_VALUES)), ANY_JSON, max_size=3) | st.fixed_dictionaries(
    {}, optional=KNOB_VALUES)


@FAST
@given(knobs=KNOBS, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_any_knob_values_are_answered_or_refused_naming_a_field(client, knobs, path):
    base = CHAT if "chat" in path else {"model": CHAT["model"], "prompt": "Once upon", "max_tokens": 3}
    response = post_json(client, path, {**base, **knobs})
    assert response.status_code in (200, 400, 422), response.get_data(as_text=True)
    if response.status_code != 200:
        error = response.get_json()["error"]
        assert error["param"] in knobs or error["code"] == "context_length_exceeded", error


VOCAB = 40
ROW = st.builds(
    lambda temperature, top_p, top_k, min_p, presence, frequency, repetition, bias, top_logprobs, seed: SamplingParams(
        max_tokens=4, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, presence_penalty=presence,
        frequency_penalty=frequency, repetition_penalty=repetition, logit_bias=tuple(sorted(bias.items())),
        logprobs=top_logprobs is not None, top_logprobs=top_logprobs or 0, seed=seed),
    st.sampled_from([0.0, 0.3, 1.0, 2.0]), st.sampled_from([1e-6, 0.5, 1.0]), st.integers(0, VOCAB + 5),
    st.sampled_from([0.0, 0.1, 1.0]), st.floats(-2, 2), st.floats(-2, 2), st.floats(0.1, 2),
    st.dictionaries(st.integers(0, VOCAB + 3), st.floats(-100, 100), max_size=3),
    st.none() | st.integers(0, 20), st.integers(-(2**63), 2**63 - 1))


@FAST
@given(rows=st.lists(ROW, min_size=1, max_size=6), seed=st.integers(0, 1000))
def test_any_valid_mix_of_knobs_gives_each_row_a_token_alone_or_together(rows, seed):
    together = [Sampler(p, [1, 2, 3]) for p in rows]
    alone = [Sampler(p, [1, 2, 3]) for p in rows]
    for step in range(3):
        logits = torch.randn(len(rows), VOCAB, generator=torch.Generator().manual_seed(seed + step)) * 4
        batched = choose_tokens(logits.clone(), together)
        assert batched == [choose_tokens(logits[i:i + 1].clone(), [alone[i]])[0] for i in range(len(rows))]
        for token, sampler in zip(batched, together, strict=True):
            assert isinstance(token, int) and 0 <= token < VOCAB
            if sampler.params.logprobs:
                assert sampler.chosen is not None and math.isfinite(sampler.chosen.logprob)
                assert sampler.chosen.logprob <= 0 and len(sampler.chosen.top) == sampler.params.top_logprobs
