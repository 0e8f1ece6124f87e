"""The sampling knobs in the one vectorised pass, without a model: each against its reference (Hugging Face's
logits processors, OpenAI's penalty formula), their batch invariance, and the raw log-probabilities."""

from __future__ import annotations

import pytest
import torch
from transformers import MinPLogitsWarper, RepetitionPenaltyLogitsProcessor, TopKLogitsWarper

from llm_api.generation.features import SAMPLING_FEATURES, requested_features
from llm_api.generation.types import SamplingParams
from llm_api.local_model.sampling import LOGPROB_FLOOR, Sampler, choose_tokens, min_p_filter, top_k_filter

VOCAB = 50


def logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def params(**knobs) -> SamplingParams:
    return SamplingParams(max_tokens=8, **knobs)


def test_repetition_penalty_is_hugging_faces_on_prompt_and_output_tokens():
    prompt = [3, 7, 7, 11]
    sampler = Sampler(params(temperature=0, repetition_penalty=1.7), prompt)
    scores = logits(1)
    reference = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([prompt]), scores.clone())
    expected = int(reference.argmax())
    assert choose_tokens(scores.clone(), [sampler]) == [expected]
    generated = [*prompt, expected]  # the chosen token now counts too
    reference = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([generated]), scores.clone())
    assert choose_tokens(scores.clone(), [sampler]) == [int(reference.argmax())]


def test_presence_and_frequency_penalties_follow_openais_formula():
    scores = torch.zeros(1, VOCAB)
    scores[0, 5], scores[0, 9] = 2.0, 1.5  # 5 wins until penalised, then 9
    sampler = Sampler(params(temperature=0, frequency_penalty=0.4, presence_penalty=0.3))
    chosen = [choose_tokens(scores.clone(), [sampler])[0] for _ in range(4)]
    # 5: 2.0 → 2.0-0.4-0.3=1.3 (<1.5): 9; 9: 1.5-0.7=0.8: then 5 (1.3) → 5: 2.0-0.8-0.3=0.9 vs 9 at 0.8: 5
    assert chosen == [5, 9, 5, 5]
    negative = Sampler(params(temperature=0, presence_penalty=-2.0))  # negative values encourage repeats
    assert [choose_tokens(scores.clone(), [negative])[0] for _ in range(3)] == [5, 5, 5]


def test_logit_bias_bans_and_forces_tokens():
    scores = logits(1)
    best = int(scores.argmax())
    banned = Sampler(params(temperature=0, logit_bias=((best, -100.0),)))
    assert choose_tokens(scores.clone(), [banned])[0] != best
    forced = Sampler(params(temperature=1.0, seed=3, logit_bias=((17, 100.0),)))
    assert all(choose_tokens(scores.clone(), [forced])[0] == 17 for _ in range(5))


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_cut_matches_hugging_faces(k):
    scores = logits(2, seed=k)
    ours = top_k_filter(scores.clone(), [k, 0])
    reference = TopKLogitsWarper(k)(torch.zeros(1, 1, dtype=torch.long), scores[:1].clone())
    assert torch.equal(torch.isinf(ours[0]), torch.isinf(reference[0]))
    assert not torch.isinf(ours[1]).any()  # top_k 0: no cut


@pytest.mark.parametrize("min_p", [0.05, 0.2, 0.6])
def test_min_p_cut_matches_hugging_faces(min_p):
    scores = logits(1, seed=int(min_p * 100))
    ours = min_p_filter(torch.softmax(scores, -1), torch.tensor([min_p]))
    reference = MinPLogitsWarper(min_p)(torch.zeros(1, 1, dtype=torch.long), scores.clone())
    assert torch.equal(ours[0] == 0, torch.isinf(reference[0]))
    assert torch.allclose(ours.sum(), torch.tensor(1.0))


def test_top_k_1_and_a_tiny_min_p_are_greedy_whatever_the_seed():
    scores = logits(1, seed=5)
    for seed in range(5):
        assert choose_tokens(scores.clone(), [Sampler(params(temperature=1.5, seed=seed, top_k=1))]) == [
            int(scores.argmax())]


def test_logprobs_are_the_raw_model_distribution_before_any_adjustment():
    scores = logits(1, seed=9)
    raw = torch.log_softmax(scores[0], -1)
    sampler = Sampler(params(temperature=0.7, seed=1, top_k=4, repetition_penalty=1.5, logit_bias=((0, 3.0),),
                             logprobs=True, top_logprobs=5), [1, 2, 3])
    token = choose_tokens(scores.clone(), [sampler])[0]
    assert isinstance(token, int)
    assert sampler.chosen is not None and sampler.chosen.logprob == pytest.approx(float(raw[token]), abs=1e-6)
    top_ids = [i for i, _ in sampler.chosen.top]
    assert top_ids == raw.topk(5).indices.tolist()
    assert [lp for _, lp in sampler.chosen.top] == pytest.approx(raw.topk(5).values.tolist(), abs=1e-6)
    none_asked = Sampler(params(temperature=0))
    choose_tokens(scores.clone(), [none_asked])
    assert none_asked.chosen is None


def test_impossible_tokens_report_a_finite_floor():
    scores = logits(1)
    scores[0, 10:] = float("-inf")
    sampler = Sampler(params(temperature=0, logprobs=True, top_logprobs=20))
    choose_tokens(scores, [sampler])
    assert sampler.chosen is not None and [lp for _, lp in sampler.chosen.top][-1] == LOGPROB_FLOOR


def test_every_knob_is_batch_invariant_over_several_steps():
    """A row's tokens and log-probabilities are the same alone and next to rows with other knobs."""
    specs = [
        params(temperature=0),
        params(temperature=0, repetition_penalty=1.3, logprobs=True, top_logprobs=3),
        params(temperature=0.8, seed=1, top_k=5, presence_penalty=0.8),
        params(temperature=1.2, seed=2, min_p=0.1, frequency_penalty=1.0, logprobs=True),
        params(temperature=0.9, seed=3, top_p=0.8, logit_bias=((4, 50.0), (8, -100.0))),
        params(temperature=0.9, seed=4),
    ]
    prompts = [[1, 2], [3, 4, 5], [6], [7, 8], [9], [10, 11]]
    together = [Sampler(p, prompt) for p, prompt in zip(specs, prompts, strict=True)]
    alone = [Sampler(p, prompt) for p, prompt in zip(specs, prompts, strict=True)]
    for step in range(6):
        scores = logits(len(specs), seed=100 + step)
        batched = choose_tokens(scores.clone(), together)
        single = [choose_tokens(scores[i:i + 1].clone(), [alone[i]])[0] for i in range(len(specs))]
        assert batched == single
        assert [s.chosen for s in together] == [s.chosen for s in alone]


def test_neutral_knobs_cost_nothing_extra_and_change_nothing():
    """The default path: no penalty state is kept, and the choice is exactly the plain argmax / draw."""
    scores = logits(3, seed=1)
    samplers = [Sampler(params(temperature=0)), Sampler(params(temperature=0.5, seed=8)),
                Sampler(params(temperature=0, top_k=0, min_p=0.0, repetition_penalty=1.0))]
    tokens = choose_tokens(scores.clone(), samplers)
    assert tokens[0] == int(scores[0].argmax()) and tokens[2] == int(scores[2].argmax())
    assert all(not s.adjusts_logits and not s.truncates for s in samplers)
    assert all(s._counts is None and s._seen is None for s in samplers)


def test_requested_features_name_each_non_neutral_field():
    assert requested_features(params()) == []
    knobs = params(logprobs=True, top_logprobs=2, logit_bias=((1, 1.0),), presence_penalty=0.1,
                   frequency_penalty=0.1, repetition_penalty=1.1, top_k=3, min_p=0.1)
    assert set(requested_features(knobs)) == SAMPLING_FEATURES


# ---- an upstream engine: the fields forwarded, and log-probabilities read back -------------------------------
def test_an_upstream_receives_each_used_field_unchanged_in_its_endpoints_shape():
    from llm_api.routing.upstream import sampling_fields

    assert sampling_fields(params(), chat=True) == {}
    knobs = params(top_k=5, min_p=0.1, presence_penalty=0.5, frequency_penalty=-1.0, repetition_penalty=1.1,
                   logit_bias=((3, -100.0), (12, 2.5)), logprobs=True, top_logprobs=4)
    assert sampling_fields(knobs, chat=True) == {
        "top_k": 5, "min_p": 0.1, "presence_penalty": 0.5, "frequency_penalty": -1.0, "repetition_penalty": 1.1,
        "logit_bias": {"3": -100.0, "12": 2.5}, "logprobs": True, "top_logprobs": 4}
    assert sampling_fields(knobs, chat=False)["logprobs"] == 4  # /completions: the number of alternatives


def test_an_upstreams_logprobs_read_back_as_the_entries_we_send():
    from llm_api.generation.types import TokenLogprob
    from llm_api.openai_format import chat_logprobs, text_logprobs
    from llm_api.routing.upstream import read_logprobs

    entries = (TokenLogprob("Hé", -0.5, tuple("Hé".encode()), (TokenLogprob("Hé", -0.5, tuple("Hé".encode())),
                                                                 TokenLogprob("Hi", -1.5, (72, 105)))),
               TokenLogprob("\ufffd", -0.25, (0xE4,), ()))
    assert read_logprobs(chat_logprobs(entries), chat=True) == entries
    plain = read_logprobs(text_logprobs(entries[:1]), chat=False)  # the legacy shape has no bytes
    assert [(e.token, e.logprob, [t.token for t in e.top]) for e in plain] == [("Hé", -0.5, ["Hé", "Hi"])]
    assert read_logprobs({"content": [{"token": 1}]}, chat=True) == ()  # malformed: none
    assert read_logprobs(None, chat=True) == ()


def test_a_flat_rows_wide_nucleus_costs_and_changes_nothing_for_its_neighbours(monkeypatch):
    """A row whose nucleus is wider than the candidates looked at first is drawn from its whole nucleus,
    sorting its own vocabulary only, and the rows beside it (here with ties in theirs) choose as alone."""
    vocab = 4096
    flat = torch.zeros(1, vocab)  # uniform: the nucleus at top_p 0.9 is 3,687 tokens
    peaked = torch.randn(3, vocab, generator=torch.Generator().manual_seed(5))
    peaked[:, 100:140] = 9.0  # forty tied tokens hold 98% of the mass
    samplers = [lambda seed=seed: Sampler(params(temperature=1.0, top_p=0.9, seed=seed)) for seed in range(4)]
    alone = [[choose_tokens(peaked[i:i + 1], [samplers[i + 1]()])[0] for i in range(3)]]
    flat_alone = Sampler(params(temperature=1.0, top_p=0.9, seed=0))
    flat_tokens = {choose_tokens(flat, [flat_alone])[0] for _ in range(200)}
    batch = [samplers[0](), *(samplers[i + 1]() for i in range(3))]
    sorted_rows: list[int] = []
    sort = torch.sort
    monkeypatch.setattr(torch, "sort", lambda rows, **kw: sorted_rows.append(rows.shape[0]) or sort(rows, **kw))
    together = choose_tokens(torch.cat([flat, peaked]), batch)
    assert sorted_rows == [1]
    assert together[1:] == alone[0]
    assert max(flat_tokens) > 256 and len(flat_tokens) > 150  # not only the first candidates
