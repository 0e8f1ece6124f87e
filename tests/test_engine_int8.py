"""``LLM_API_QUANTIZATION=int8`` on the torch backend, on a tiny random Llama (the embedded model's
architecture at two layers): torchao's 8-bit linear layers, the decode step compiled before the engine is
ready, no compiling while it serves, batch invariance, and the compiled code reused by the next process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import gevent
import pytest

from llm_api.generation.types import Finished, SamplingParams, TextDelta
from llm_api.local_model.compiled import INDUCTOR_FOLDER
from llm_api.local_model.engine import EngineOptions, LocalEngine
from llm_api.local_model.spec import ModelSpec
from tests.llama_tiny import build_tiny_llama
from tests.servers import CACHE_DIR, ROOT
from tests.workers import taking_turns

pytestmark = pytest.mark.model

PROMPTS = ["Hello there.", "Name three colours.", "What is two and two?", "Tell me a story about a fox.",
           "Where is Paris?", "Count to five.", "Say something kind.", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def tiny_folder():
    return build_tiny_llama(CACHE_DIR / "llama-tiny-2x64", CACHE_DIR)


@dataclass
class Int8Start:
    """The module's int8 engine, and what was true when it started."""

    engine: LocalEngine
    filled_before: bool  # another process had compiled into the cache: this engine must compile nothing
    counters_before: dict[str, int]  # this process's inductor counters (earlier tests may have added some)


@pytest.fixture(scope="module")
def int8_start(tiny_folder, int8_compile_cache) -> Iterator[Int8Start]:
    """Started on the run's int8 cache: cold when this file runs first or alone, else on the code that another
    process (the gunicorn test, in the full suite) compiled into it."""
    from torch._dynamo.utils import counters

    with taking_turns(int8_compile_cache):
        filled_before = (int8_compile_cache / INDUCTOR_FOLDER).is_dir()
        counters_before = dict(counters["inductor"])
        engine = LocalEngine(ModelSpec(str(tiny_folder), cache_dir=str(int8_compile_cache), quantization="int8"),
                             EngineOptions(max_batch=8))
        engine.start()
        assert engine.wait_ready(900), engine.load_error
    yield Int8Start(engine, filled_before, counters_before)
    engine.stop()


@pytest.fixture(scope="module")
def int8_engine(int8_start):
    return int8_start.engine


def answer(engine, prompt: str, tokens: int, delay: float = 0.0) -> list[int]:
    gevent.sleep(delay)
    handle = engine.submit("t", engine.encode_chat([{"role": "user", "content": prompt}]),
                           SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True))
    while True:
        event = handle.next_event(120)
        assert event is not None
        if isinstance(event, Finished):
            return list(event.token_ids)
        assert isinstance(event, TextDelta)


def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_the_linear_layers_are_8_bit_and_the_decode_step_is_compiled_before_ready(int8_engine):
    model = int8_engine._loaded()
    assert model.decode_step is not None
    assert type(model.model.model.layers[0].mlp.down_proj.weight).__name__ == "Int8Tensor"
    assert graphs() >= 2  # one row, and several
    assert int8_engine.stats["requests"] == 0  # the compiling requests are not counted


def test_serving_compiles_nothing_more_and_a_batch_answers_as_alone(int8_engine):
    compiled = graphs()
    alone = [answer(int8_engine, prompt, 12 + i) for i, prompt in enumerate(PROMPTS)]
    jobs = [gevent.spawn(answer, int8_engine, prompt, 12 + i, 0.02 * i) for i, prompt in enumerate(PROMPTS)]
    gevent.joinall(jobs, raise_error=True)
    assert [job.value for job in jobs] == alone  # staggered joins and leaves, one to eight rows
    long = [gevent.spawn(answer, int8_engine, prompt, 150) for prompt in PROMPTS[:2]]  # past the KV buffers' room
    gevent.joinall(long, raise_error=True)
    assert long[0].value == answer(int8_engine, PROMPTS[0], 150)
    assert graphs() == compiled


def test_the_next_process_reuses_the_compiled_code(int8_start, tiny_folder, int8_compile_cache):
    """A process started on a cache folder that another filled finds inductor's generated code there: nothing to
    compile. When the gunicorn test compiled first (in the full suite, most often), that process is this one;
    else this file starts a second process to see it."""
    from torch._dynamo.utils import counters

    mine = {name: count - int8_start.counters_before.get(name, 0) for name, count in counters["inductor"].items()}
    assert mine.get("fxgraph_cache_miss", 0) + mine.get("fxgraph_cache_hit", 0) > 0  # the fixture went through it
    if int8_start.filled_before:
        second = mine
    else:
        with taking_turns(int8_compile_cache):
            second = _start_an_engine_in_a_new_process(tiny_folder, int8_compile_cache)
    assert second.get("fxgraph_cache_hit", 0) > 0 and second.get("fxgraph_cache_miss", 0) == 0, second
    assert (int8_compile_cache / INDUCTOR_FOLDER).is_dir()


def _start_an_engine_in_a_new_process(tiny_folder, compile_cache) -> dict[str, int]:
    """The int8 engine started and stopped in a new Python process; its inductor counters."""
    script = f"""
import json
from torch._dynamo.utils import counters
from llm_api.local_model.engine import EngineOptions, LocalEngine
from llm_api.local_model.spec import ModelSpec
engine = LocalEngine(ModelSpec({str(tiny_folder)!r}, cache_dir={str(compile_cache)!r}, quantization="int8"),
                     EngineOptions(max_batch=8))
engine.start()
assert engine.wait_ready(900), engine.load_error
engine.stop()
print(json.dumps(dict(counters["inductor"])))
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_model_on_its_own_generate_code_cannot_take_int8(tiny_folder, tmp_path):
    engine = LocalEngine(ModelSpec(str(tiny_folder), cache_dir=str(tmp_path), quantization="int8"),
                         EngineOptions(batching=False))
    engine.start()
    assert not engine.wait_ready(120)
    assert "compiles the batched loop's decode step" in (engine.load_error or "")
    engine.stop()
