"""Unit tests of the small pure pieces: settings, detokenizer, stop matching, SSE framing, prompts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llm_api import model_spec
from llm_api.config import EMBEDDED_MODEL, ConfigError, Settings
from llm_api.generation.types import SamplingParams
from llm_api.local_model.decode import IncrementalDetokenizer
from llm_api.local_model.prompts import CHATGLM3_SPECIAL_TOKENS, ChatGLM3Format
from llm_api.local_model.sampling import Sampler, _top_p_filter, choose_tokens, sample_rows
from llm_api.local_model.stops import StopMatcher
from llm_api.streaming import sse_event
from tests.isolation import home_env
from tests.servers import ROOT

# ---- settings ---------------------------------------------------------------------------------------


def test_settings_defaults():
    settings = Settings.from_env({})
    assert settings.model == EMBEDDED_MODEL
    assert (settings.device, settings.dtype, settings.trust_remote_code) == ("auto", "auto", False)
    assert settings.cors_origins == ()
    assert settings.bind == "127.0.0.1:8000"


def test_settings_parse_every_kind():
    settings = Settings.from_env({
        "LLM_API_DEVICE": "CPU", "LLM_API_DTYPE": "bfloat16", "LLM_API_TRUST_REMOTE_CODE": "yes",
        "LLM_API_MAX_QUEUE": "7", "LLM_API_CORS_ORIGINS": "https://a.example, http://b.example:8080",
        "LLM_API_LOG_PROMPTS": "1", "LLM_API_HEARTBEAT_SECONDS": "2.5", "LLM_API_MODEL": "embedded",
    })
    assert (settings.device, settings.dtype, settings.trust_remote_code) == ("cpu", "bfloat16", True)
    assert settings.max_queue == 7 and settings.log_prompts and settings.heartbeat_seconds == 2.5
    assert settings.cors_origins == ("https://a.example", "http://b.example:8080")
    assert settings.model == EMBEDDED_MODEL


@pytest.mark.parametrize("name, value, expected", [
    ("LLM_API_DEVICE", "gpu", "LLM_API_DEVICE must be one of auto, cpu, cuda"),
    ("LLM_API_DTYPE", "fp8", "LLM_API_DTYPE must be one of auto, float32, bfloat16, float16"),
    ("LLM_API_BACKEND", "vllm", "LLM_API_BACKEND must be one of torch, llama_cpp"),
    ("LLM_API_QUANTIZATION", "int3", "LLM_API_QUANTIZATION must be one of none, q8_0"),
    ("LLM_API_MAX_QUEUE", "0", "LLM_API_MAX_QUEUE must be an integer >= 1"),
    ("LLM_API_MAX_QUEUE", "many", "LLM_API_MAX_QUEUE must be an integer"),
    ("LLM_API_TRUST_REMOTE_CODE", "maybe", "LLM_API_TRUST_REMOTE_CODE must be a boolean"),
    ("LLM_API_CORS_ORIGINS", "example.com", "LLM_API_CORS_ORIGINS must be a comma-separated list"),
    ("LLM_API_CORS_ORIGINS", "https://*.example.com", "LLM_API_CORS_ORIGINS must be a comma-separated list"),
    ("LLM_API_CORS_ORIGINS", "https://a.example/path", "LLM_API_CORS_ORIGINS must be a comma-separated list"),
    ("LLM_API_REDIS_URL", "localhost:6379", "LLM_API_REDIS_URL must be redis://HOST:PORT/DB"),
    ("LLM_API_REQUEST_TIMEOUT", "-1", "LLM_API_REQUEST_TIMEOUT must be a number >= 0"),
    ("LLM_API_STREAM_TOKEN_SECONDS", "0", "LLM_API_STREAM_TOKEN_SECONDS must be an integer >= 1"),
    ("LLM_API_MODEL", "/no/such/folder", "LLM_API_MODEL must be `embedded` or an existing local model folder"),
    ("LLM_API_BIND", "8000", "LLM_API_BIND must be HOST:PORT"),
    ("LLM_API_OUTPUT_FILTER", "(Paris", "LLM_API_OUTPUT_FILTER must be a Python regular expression: missing )"),
    ("LLM_API_OUTPUT_FILTER", "x*", "LLM_API_OUTPUT_FILTER must not match empty text"),
    ("LLM_API_OUTPUT_FILTER_WORDS", "/no/such/words.txt", "LLM_API_OUTPUT_FILTER_WORDS must be an existing file"),
    ("LLM_API_OUTPUT_FILTER_HOLDBACK", "-1", "LLM_API_OUTPUT_FILTER_HOLDBACK must be an integer >= 0"),
    ("LLM_API_REPETITION_NGRAM", "0", "LLM_API_REPETITION_NGRAM must be an integer >= 1"),
    ("LLM_API_REPETITION_MAX", "-2", "LLM_API_REPETITION_MAX must be an integer >= 0"),
    ("LLM_API_MAX_QUEUE_WAIT", "-5", "LLM_API_MAX_QUEUE_WAIT must be a number >= 0"),
    ("LLM_API_MAX_QUEUE_WAIT", "30s", "LLM_API_MAX_QUEUE_WAIT must be a number"),
    ("LLM_API_MAX_QUEUE_WAIT", "nan", "LLM_API_MAX_QUEUE_WAIT must be a finite number"),
    ("LLM_API_MAX_QUEUE_WAIT", "inf", "LLM_API_MAX_QUEUE_WAIT must be a finite number"),
    ("LLM_API_ENGINE_NICE", "-1", "LLM_API_ENGINE_NICE must be an integer >= 0 and <= 19"),
    ("LLM_API_ENGINE_NICE", "20", "LLM_API_ENGINE_NICE must be an integer >= 0 and <= 19"),
    ("LLM_API_ENGINE_NICE", "low", "LLM_API_ENGINE_NICE must be an integer"),
    ("LLM_API_DECODE_GRAPHS", "on", "LLM_API_DECODE_GRAPHS must be one of auto, eager, off"),
])
def test_invalid_settings_name_the_variable(name, value, expected):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    assert str(raised.value).startswith(expected)
    assert "\n" not in str(raised.value)


def test_each_quantization_is_for_its_own_backend():
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"LLM_API_QUANTIZATION": "q8_0"})
    assert str(raised.value) == ("LLM_API_QUANTIZATION=q8_0 is for LLM_API_BACKEND=llama_cpp (this one, torch, "
                                 "takes none or int8)")
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"LLM_API_QUANTIZATION": "int8", "LLM_API_BACKEND": "llama_cpp"})
    assert str(raised.value) == ("LLM_API_QUANTIZATION=int8 is for LLM_API_BACKEND=torch (this one, llama_cpp, "
                                 "takes none or q8_0)")
    assert model_spec(Settings.from_env({"LLM_API_QUANTIZATION": "INT8"})).quantization == "int8"
    settings = Settings.from_env({"LLM_API_QUANTIZATION": " Q8_0", "LLM_API_BACKEND": "llama_cpp"})
    assert settings.quantization == "q8_0"
    assert model_spec(settings).quantization == "q8_0"
    assert model_spec(Settings.from_env({})).quantization == "none"


def test_gunicorn_refuses_to_start_with_one_clear_line():
    env = {"PATH": "", **home_env(), "LLM_API_DTYPE": "half"}
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "llm_api: invalid configuration: LLM_API_DTYPE must be one of auto, float32, bfloat16, float16 "
        "(got 'half')")


# ---- incremental detokenizer ------------------------------------------------------------------------


class ByteTokenizer:
    """Each id is one byte: decoding a cut multibyte character gives U+FFFD, as byte-level BPE does."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize("text", ["héllo wörld", "你好，世界", "emoji 👍🏽 and 🇫🇷 flags", "tab\tnew\nline  spaces"])
def test_detokenizer_never_emits_half_a_character(text):
    tokenizer = ByteTokenizer()
    detok = IncrementalDetokenizer(tokenizer.decode)
    deltas = [detok.push(i) for i in tokenizer.encode(text)] + [detok.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert len([d for d in deltas if d]) == len(text)  # one delta per completed character


def test_detokenizer_flush_emits_a_truncated_character_as_replacement():
    tokenizer = ByteTokenizer()
    detok = IncrementalDetokenizer(tokenizer.decode)
    cut = tokenizer.encode("ok 👍")[:-2]
    assert "".join(detok.push(i) for i in cut) == "ok "
    assert detok.flush() == "\ufffd"


class SpacePieceTokenizer:
    """SentencePiece-like: pieces carry a leading "▁" that is dropped at the start of a decode."""

    pieces = ["▁Hello", "▁world", "\n", "▁", "▁▁▁return", "▁1"]

    def decode(self, ids) -> str:
        return "".join(self.pieces[i] for i in ids).replace("▁", " ").removeprefix(" ")


def test_detokenizer_keeps_spaces_that_per_token_decoding_loses():
    tokenizer = SpacePieceTokenizer()
    ids = [0, 1, 2, 4, 5, 2, 3, 1]
    detok = IncrementalDetokenizer(tokenizer.decode)
    text = "".join(detok.push(i) for i in ids) + detok.flush()
    assert text == tokenizer.decode(ids)
    assert "\n   return 1\n  world" in text


# ---- stop sequences ---------------------------------------------------------------------------------


def test_stop_sequence_split_across_pieces_is_never_emitted():
    matcher = StopMatcher(("END",))
    out = [matcher.feed(piece) for piece in ["Hello E", "N", "x E", "ND more"]]
    assert "".join(out) == "Hello ENx "
    assert matcher.stopped


def test_no_stop_flushes_held_text():
    matcher = StopMatcher(("###",))
    assert matcher.feed("a #") == "a "
    assert matcher.feed("#") == ""
    assert matcher.flush() == "##"
    assert not matcher.stopped


# ---- sampling ---------------------------------------------------------------------------------------


def test_top_p_keeps_the_smallest_set_reaching_p():
    import torch

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert torch.allclose(_top_p_filter(probs.clone(), 0.7), torch.tensor([0.5, 0.3, 0, 0]) / 0.8)
    assert torch.allclose(_top_p_filter(probs.clone(), 0.5), torch.tensor([1.0, 0, 0, 0]))


@pytest.mark.parametrize("top_p", [1e-300, 3.8566773194809596e-256, 1e-45, 0.0])
def test_a_vanishing_top_p_keeps_the_most_likely_token(top_p):
    """top_p must be > 0, but a tiny one underflows to 0 in float32: the nucleus still holds the top token
    (found by schemathesis as a 500 before)."""
    import torch

    logits = torch.randn(3, 50_000, generator=torch.Generator().manual_seed(1))
    probs = torch.softmax(logits, dim=-1)
    tokens = sample_rows(probs, torch.full((3,), top_p), torch.tensor([0.0, 0.5, 0.999999]))
    assert tokens.tolist() == probs.argmax(dim=-1).tolist()
    sampler = Sampler(SamplingParams(max_tokens=1, temperature=0.7, top_p=top_p if top_p > 0 else 1e-300, seed=3))
    assert choose_tokens(logits[:1], [sampler]) == [int(logits[0].argmax())]


def test_seeded_sampler_repeats_and_greedy_is_argmax():
    import torch

    logits = torch.randn(100, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(max_tokens=5, temperature=1.0, seed=123)
    first = [Sampler(params).choose(logits) for _ in range(3)]
    run_a, run_b = Sampler(params), Sampler(params)
    assert [run_a.choose(logits) for _ in range(20)] == [run_b.choose(logits) for _ in range(20)]
    assert len(set(first)) == 1
    assert Sampler(SamplingParams(max_tokens=1, temperature=0)).choose(logits) == int(logits.argmax())


def test_one_pass_sampling_gives_each_row_what_it_would_get_alone():
    import torch

    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(2)) * 4
    params = [SamplingParams(max_tokens=5, temperature=0), SamplingParams(max_tokens=5, temperature=0.7, seed=1),
              SamplingParams(max_tokens=5, temperature=1.3, top_p=0.5, seed=2),
              SamplingParams(max_tokens=5, temperature=0),
              SamplingParams(max_tokens=5, temperature=0.9, top_p=0.05, seed=3),
              SamplingParams(max_tokens=5, temperature=1.0, top_p=0.999, seed=4)]
    batched = [Sampler(p) for p in params]
    alone = [Sampler(p) for p in params]
    for _ in range(10):
        together = choose_tokens(logits, batched)
        assert together == [choose_tokens(logits[i:i + 1], [alone[i]])[0] for i in range(len(params))]
        assert together[0] == int(logits[0].argmax()) and together[3] == int(logits[3].argmax())
        assert together[4] == int(logits[4].argmax())  # a nucleus this small holds only the top token


def test_sampling_follows_the_distribution_and_its_nucleus():
    import torch

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]])
    generator = torch.Generator().manual_seed(5)
    counts = torch.zeros(2, 4)
    for _ in range(4000):
        draws = torch.rand(2, generator=generator, dtype=torch.float64)
        tokens = sample_rows(probs, torch.tensor([1.0, 0.7]), draws)
        counts[0, tokens[0]] += 1
        counts[1, tokens[1]] += 1
    shares = counts / 4000
    assert torch.allclose(shares[0], probs[0], atol=0.03)
    assert torch.allclose(shares[1], torch.tensor([0.625, 0.375, 0, 0]), atol=0.03)
    assert sample_rows(probs[:1], torch.tensor([1.0]), torch.tensor([1 - 2**-53], dtype=torch.float64)).item() == 3


def test_the_nucleus_found_among_the_likely_tokens_draws_what_the_top_candidates_draw():
    """On a CPU a row's nucleus is first looked for among its tokens of probability at least 1e-3, row by row;
    where it lies there, every draw picks the token the top-256 candidates pick, and a row whose nucleus
    reaches below them is left to the candidates."""
    import torch

    from llm_api.local_model.sampling import _nucleus_among_candidates, _nucleus_among_likely

    logits = torch.randn(3, 8192, generator=torch.Generator().manual_seed(7))
    logits[:, :40] += torch.linspace(10, 5, 40)  # peaked: forty likely tokens hold 98% of the mass
    draws = torch.linspace(0, 1 - 1e-9, 400, dtype=torch.float64)
    for row in range(3):
        for top_p in (0.5, 0.9, 0.95):
            probs = torch.softmax(logits[row] / 0.7, dim=-1).expand(len(draws), -1).contiguous()
            masses = torch.full((len(draws),), top_p)
            likely = _nucleus_among_likely(probs, masses, draws)
            assert bool((likely >= 0).all()) and (top_p < 0.9 or len(set(likely.tolist())) > 3)
            assert likely.tolist() == _nucleus_among_candidates(probs, masses, draws).tolist()
    flat = torch.full((1, 8192), 1 / 8192)
    assert _nucleus_among_likely(flat, torch.tensor([0.5]), torch.tensor([0.5], dtype=torch.float64)).tolist() == [-1]


def test_a_nucleus_drawn_from_the_logits_is_the_one_the_softmax_over_the_vocabulary_draws():
    """On a CPU a row without top-k or min-p draws from its logits in NumPy, sorting only its likely tokens: it
    picks what the softmax and top-256 path picks, at every temperature and top_p tried, and leaves to that
    path (-1) the rows it cannot decide (a flat row's wide nucleus, a row that is not finite)."""
    import math

    import torch

    from llm_api.local_model.row_draws import nucleus_from_logits
    from llm_api.local_model.sampling import _nucleus_among_candidates

    logits = torch.randn(3, 49152, generator=torch.Generator().manual_seed(3)) * 2
    logits[:, :40] += torch.linspace(22, 10, 40)
    draws = torch.linspace(0, 1 - 1e-9, 300, dtype=torch.float64)
    decided, varied = 0, set()
    for row in logits:
        for temperature in (0.2, 0.7, 1.3):
            for top_p in (0.5, 0.9, 0.95):
                ours = [nucleus_from_logits(row.numpy(), temperature, top_p, draw) for draw in draws.tolist()]
                probs = torch.softmax(row / temperature, dim=-1).expand(len(draws), -1).contiguous()
                exact = _nucleus_among_candidates(probs, torch.full((len(draws),), top_p), draws).tolist()
                assert all(token in (-1, expected) for token, expected in zip(ours, exact, strict=True))
                decided += min(ours) >= 0  # whether a nucleus is decided does not depend on the draw
                varied |= set(ours) if temperature > 1 else set()
    assert decided >= 0.8 * 3 * 3 * 3 and len(varied - {-1}) > 3
    flat = torch.zeros(49152)
    assert nucleus_from_logits(flat.numpy(), 1.0, 0.9, 0.5) == -1
    broken = logits[0].clone()
    broken[7] = math.nan
    assert nucleus_from_logits(broken.numpy(), 1.0, 0.9, 0.5) == -1


def test_a_cut_row_drawn_from_its_logits_gets_the_token_the_vectorised_path_draws():
    """On a CPU a row with top_k or min_p draws from its logits in NumPy, exponentiating only the tokens the
    top-k cut keeps: for every cut, temperature, top_p and draw tried it picks the token the vectorised path
    (top-k mask, softmax over the vocabulary, min-p cut, nucleus or whole-distribution draw) picks, ties at
    the cut and forbidden tokens included; a row that is not finite is left to that path (-1)."""
    import math

    import torch

    from llm_api.local_model.row_draws import truncated_from_logits
    from llm_api.local_model.sampling import min_p_filter, sample_rows, top_k_filter

    def vectorised(row: torch.Tensor, temperature: float, top_k: int, min_p: float, top_p: float,
                   draws: torch.Tensor) -> list[int]:
        rows = (row / temperature).expand(len(draws), -1).contiguous()
        probs = torch.softmax(top_k_filter(rows, [top_k] * len(draws)), dim=-1)
        if min_p > 0:
            probs = min_p_filter(probs, torch.full((len(draws),), min_p))
        return sample_rows(probs, torch.full((len(draws),), top_p), draws).tolist()

    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 49152, generator=generator) * 2
    logits[:, :40] += torch.linspace(22, 10, 40)
    logits[1, 100:110] = logits[1, 30]  # ten ties with the 31st most likely token, at a top_k of 31 and 35
    logits[2, 200:5000] = -math.inf  # tokens a grammar or a logit bias forbids
    draws = torch.linspace(0, 1 - 1e-9, 60, dtype=torch.float64)
    chosen: set[int] = set()
    for index, row in enumerate(logits):
        for temperature in (0.3, 1.0, 2.5):
            for top_k, min_p in ((1, 0.0), (31, 0.0), (35, 0.0), (40, 0.05), (5000, 0.0), (0, 0.05), (0, 0.3)):
                if index == 1 and top_k == 5000:
                    continue  # a nucleus that wide takes torch's top-256 path, whose order of tied tokens is its own
                for top_p in (0.6, 0.95, 1.0):
                    ours = [truncated_from_logits(row.numpy(), temperature, top_k, min_p, top_p, draw)
                            for draw in draws.tolist()]
                    assert ours == vectorised(row, temperature, top_k, min_p, top_p, draws), (top_k, min_p, top_p)
                    chosen |= set(ours)
                    assert index != 2 or not set(ours) & set(range(200, 5000))
    assert len(chosen) > 40
    flat = torch.zeros(49152)  # every token ties: a top-k cut keeps them all
    assert truncated_from_logits(flat.numpy(), 1.0, 40, 0.0, 1.0, 0.999) == vectorised(
        flat, 1.0, 40, 0.0, 1.0, torch.tensor([0.999], dtype=torch.float64))[0] > 40000
    broken = logits[0].clone()
    broken[7] = math.nan
    assert truncated_from_logits(broken.numpy(), 1.0, 40, 0.05, 0.9, 0.5) == -1


def test_a_row_that_cannot_be_sampled_fails_alone():
    import torch

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(3))
    logits[1] = float("nan")
    params = SamplingParams(max_tokens=5, temperature=0.8, seed=9)
    tokens = choose_tokens(logits, [Sampler(params), Sampler(params), Sampler(params)])
    assert isinstance(tokens[1], ValueError)
    assert isinstance(tokens[0], int) and isinstance(tokens[2], int)


# ---- SSE framing ------------------------------------------------------------------------------------


def test_sse_event_fields_and_one_line_json():
    frame = sse_event({"text": "a\nb"}, event="finish", event_id="m:3", retry_ms=2000)
    assert frame == 'event: finish\nid: m:3\nretry: 2000\ndata: {"text":"a\\nb"}\n\n'


def test_sse_event_multiline_string_data_uses_several_data_lines():
    assert sse_event("[DONE]") == "data: [DONE]\n\n"
    assert sse_event("a\nb") == "data: a\ndata: b\n\n"


# ---- ChatGLM3 prompt layout -------------------------------------------------------------------------

SPECIAL = {name: 64789 + i for i, name in enumerate(CHATGLM3_SPECIAL_TOKENS)}


def fake_sp_encode(text: str) -> list[int]:
    """Stands in for SentencePiece: a dummy-prefix piece (29871) then one id per character."""
    return [29871] + [1000 + ord(c) % 5000 for c in text]


def test_chatglm3_prompt_follows_the_documented_token_layout():
    fmt = ChatGLM3Format(fake_sp_encode, SPECIAL, eos_token_id=2)
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "Hi 👋"}, {"role": "user", "content": "Weather?"}]
    expected = [64790, 64792]  # [gMASK] sop
    for message in messages:
        expected += [SPECIAL[f"<|{message['role']}|>"]] + fake_sp_encode("\n") + fake_sp_encode(message["content"])
    expected += [64796]  # <|assistant|>
    assert fmt.build(messages) == expected


def test_chatglm3_ids_and_stop_tokens():
    assert SPECIAL["[gMASK]"] == 64790 and SPECIAL["sop"] == 64792
    assert SPECIAL["<|system|>"] == 64794 and SPECIAL["<|assistant|>"] == 64796
    fmt = ChatGLM3Format(fake_sp_encode, SPECIAL, eos_token_id=2)
    assert fmt.stop_token_ids == frozenset({2, 64795, 64797})  # eos, <|user|>, <|observation|>
    metadata = fmt.build([{"role": "user", "content": "x", "metadata": "tool"}])
    assert metadata[3:3 + len(fake_sp_encode("tool\n"))] == fake_sp_encode("tool\n")


# ---- prompts from stored history ----------------------------------------------------------------------

def test_prompt_history_pairs_turns_and_leaves_out_unanswered_and_failed_ones():
    from datetime import UTC, datetime

    from llm_api.services.history import prompt_history
    from llm_api.storage import Message

    now = datetime.now(UTC)

    def row(message_id, role, content, **fields):
        return Message(message_id, "c", role, content, now, **fields)

    stored = [
        row("s", "system", "rules"),
        row("u1", "user", "answered"), row("u2", "user", "failed"), row("u3", "user", "never answered"),
        row("u4", "user", "cut short"),
        row("a2", "assistant", "", reply_to="u2", finish_reason="error"),
        row("a1", "assistant", "yes", reply_to="u1", finish_reason="stop"),  # answers may land out of order
        row("a4", "assistant", "part", reply_to="u4", finish_reason="cancelled"),
    ]
    assert prompt_history(stored) == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "answered"}, {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "cut short"}, {"role": "assistant", "content": "part"},
    ]


def test_fit_to_context_keeps_system_and_newest_turn():
    from llm_api.services.history import fit_to_context

    messages = [{"role": "system", "content": "s"}]
    for n in range(5):
        messages += [{"role": "user", "content": f"u{n}"}, {"role": "assistant", "content": f"a{n}"}]
    messages.append({"role": "user", "content": "new"})
    fitted, dropped = fit_to_context(messages, lambda m: len(m) <= 4)
    assert (dropped, [m["content"] for m in fitted]) == (4, ["s", "u4", "a4", "new"])
    alone, dropped = fit_to_context(messages, lambda m: False)  # nothing fits: the newest turn alone, to reject
    assert (dropped, [m["content"] for m in alone]) == (5, ["s", "new"])
    assert fit_to_context(messages, lambda m: True) == (messages, 0)
