"""ChatGLM3 served natively (GlmForCausalLM, no remote code), checked against the reference implementation.

tests/data/chatglm3_reference.json holds the reference's outputs on the tiny checkpoint that
tests/chatglm3_tiny.py builds; its "provenance" entry says how they were produced.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import gevent
import pytest
import torch

from llm_api.generation.types import Finished, SamplingParams, TextDelta
from llm_api.local_model import chatglm3
from llm_api.local_model.engine import EngineOptions, LocalEngine
from llm_api.local_model.errors import ModelLoadError
from llm_api.local_model.loader import ModelSpec, load_model
from llm_api.local_model.prompts import ChatGLM3Format
from tests.chatglm3_tiny import build_tiny_chatglm3

REFERENCE = json.loads((Path(__file__).parent / "data" / "chatglm3_reference.json").read_text())
TOLERANCE = 1e-5


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return build_tiny_chatglm3(tmp_path_factory.mktemp("chatglm3") / "chatglm3-tiny")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chatglm3-cache")


@pytest.fixture(scope="session")
def native(tiny_folder, tiny_cache):
    return load_model(ModelSpec(str(tiny_folder), "cpu", "float32", cache_dir=str(tiny_cache)))


def messages_of(conversation: dict) -> list[dict]:
    return [*conversation["history"], {"role": "user", "content": conversation["query"]}]


def test_prompt_ids_match_the_reference_build_chat_input(native):
    fmt = native.prompt_format
    assert isinstance(fmt, ChatGLM3Format)
    for conversation in REFERENCE["conversations"]:
        assert fmt.build(messages_of(conversation)) == conversation["input_ids"], conversation["query"]


def test_decode_matches_the_reference(native):
    for sample in REFERENCE["decode"]:
        assert native.tokenizer.decode(sample["ids"]) == sample["sp_decode"]


@torch.inference_mode()
def test_logits_match_the_reference_including_a_cached_step(native):
    from transformers import DynamicCache

    worst = 0.0
    for case in REFERENCE["logits"]:
        ids = torch.tensor([case["input_ids"]])
        logits = native.model(input_ids=ids).logits[0]
        worst = max(worst, float((logits[-3:] - torch.tensor(case["last3"])).abs().max()))
        cache = DynamicCache(config=native.model.config)
        native.model(input_ids=ids[:, :-1], cache=cache, use_cache=True)
        step = native.model(input_ids=ids[:, -1:], cache=cache, use_cache=True,
                            position_ids=torch.tensor([[ids.shape[1] - 1]])).logits[0, -1]
        worst = max(worst, float((step - torch.tensor(case["cached_step_last"])).abs().max()))
    print(f"max |native - reference| = {worst:.2e}")
    assert worst < TOLERANCE


@torch.inference_mode()
def test_a_wrong_rope_theta_is_caught_by_the_parity_check(tmp_path):
    """Negative control: the same weights with rope_ratio 50 must NOT match the reference."""
    folder = build_tiny_chatglm3(tmp_path / "chatglm3-rope50", rope_ratio=50)
    model = load_model(ModelSpec(str(folder), "cpu", "float32", cache_dir=str(tmp_path / "cache")))
    assert model.model.config.rope_parameters["rope_theta"] == 500000.0
    case = REFERENCE["logits"][2]
    logits = model.model(input_ids=torch.tensor([case["input_ids"]])).logits[0, -3:]
    assert float((logits - torch.tensor(case["last3"])).abs().max()) > 1e-2


def test_greedy_generation_in_the_batched_engine_matches_the_reference(tiny_folder, tiny_cache):
    engine = LocalEngine(ModelSpec(str(tiny_folder), "cpu", "float32", cache_dir=str(tiny_cache)), EngineOptions())
    engine.start()
    assert engine.wait_ready(120), engine.load_error
    try:
        assert engine.batched
        expected = REFERENCE["greedy"]

        def generate(delay: float) -> tuple[int, ...]:
            gevent.sleep(delay)
            handle = engine.submit("g", expected["input_ids"], SamplingParams(max_tokens=24, temperature=0))
            while not isinstance(event := handle.next_event(30), Finished):
                assert event is None or isinstance(event, TextDelta)
            return event.token_ids

        assert generate(0) == tuple(expected["generated"])
        jobs = [gevent.spawn(generate, i * 0.05) for i in range(4)]  # the same, inside a batch
        gevent.joinall(jobs, raise_error=True)
        assert all(job.value == tuple(expected["generated"]) for job in jobs)
    finally:
        engine.stop()


def test_conversion_is_cached_and_keyed_by_the_source_files(tiny_folder, tmp_path):
    copy = shutil.copytree(tiny_folder, tmp_path / "chatglm3-copy")
    first = chatglm3.converted_folder(copy, tmp_path / "cache")
    marker_time = (first / "llm_api_converted.json").stat().st_mtime_ns
    assert chatglm3.converted_folder(copy, tmp_path / "cache") == first
    assert (first / "llm_api_converted.json").stat().st_mtime_ns == marker_time  # reused, not rebuilt
    assert sorted(p.name for p in first.glob("*.safetensors")) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    shard = next(copy.glob("pytorch_model-00001*.bin"))
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert chatglm3.converted_folder(copy, tmp_path / "cache") == first  # touched, same bytes: still shared
    second_copy = shutil.copytree(tiny_folder, tmp_path / "elsewhere" / "chatglm3-copy")
    assert chatglm3.converted_folder(second_copy, tmp_path / "cache") == first  # another install, same bytes
    part = torch.load(shard, weights_only=True)
    name = next(iter(part))
    part[name] = part[name] + 1.0
    torch.save(part, shard)
    assert chatglm3.converted_folder(copy, tmp_path / "cache") != first  # a changed checkpoint converts again


@torch.inference_mode()
def test_safetensors_checkpoints_convert_the_same(tiny_folder, native, tmp_path):
    from safetensors.torch import save_file

    copy = tmp_path / "chatglm3-st"
    copy.mkdir()
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(tiny_folder / name, copy / name)
    for index, shard in enumerate(sorted(tiny_folder.glob("pytorch_model-*.bin")), start=1):
        save_file(torch.load(shard, weights_only=True), str(copy / f"model-{index:05d}-of-00002.safetensors"))
    model = load_model(ModelSpec(str(copy), "cpu", "float32", cache_dir=str(tmp_path / "cache")))
    ids = torch.tensor([REFERENCE["logits"][0]["input_ids"]])
    assert torch.equal(model.model(input_ids=ids).logits, native.model(input_ids=ids).logits)


@pytest.mark.parametrize("change, named", [({"rmsnorm": False}, "rmsnorm=False"),
                                           ({"add_bias_linear": True}, "add_bias_linear=True"),
                                           ({"num_layers": None}, "num_layers missing")])
def test_an_unrecognised_checkpoint_names_what_is_wrong(tiny_folder, tmp_path, change, named):
    copy = shutil.copytree(tiny_folder, tmp_path / "odd")
    config = json.loads((copy / "config.json").read_text())
    for key, value in change.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as raised:
        chatglm3.check_recognised(copy)
    assert named in str(raised.value) and "LLM_API_TRUST_REMOTE_CODE=1" in str(raised.value)


def test_config_mapping(native):
    config = native.model.config
    assert (config.num_key_value_heads, config.head_dim, config.num_hidden_layers) == (2, 16, 2)
    assert config.rope_parameters["partial_rotary_factor"] == 0.5
    assert config.rope_parameters["rope_theta"] == 10000.0
    assert native.context_length == 256
    assert native.prompt_format.stop_token_ids == frozenset({2, native.tokenizer.special_ids["<|user|>"],
                                                             native.tokenizer.special_ids["<|observation|>"]})
    assert native.vocab_limit == native.tokenizer.n_words < config.vocab_size  # padding rows never sampled
