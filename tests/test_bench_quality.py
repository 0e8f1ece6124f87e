"""The quality guard's measuring stick: the bundled text is long enough and every token is scored once."""

from __future__ import annotations

import math

import pytest
import torch

from bench.quality import text_ids, token_nlls
from llm_api.local_model.loader import ModelSpec, load_model
from tests.servers import CACHE_DIR

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def loaded():
    return load_model(ModelSpec("embedded", "cpu", "float32", cache_dir=str(CACHE_DIR)))


def test_the_bundled_text_has_at_least_20000_tokens(loaded):
    assert len(text_ids(loaded)) >= 20_000


def test_one_window_gives_the_models_own_loss(loaded):
    ids = text_ids(loaded)[:200]
    with torch.inference_mode():
        loss = loaded.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    nlls = token_nlls(loaded, ids, window=256)
    assert len(nlls) == len(ids) - 1
    assert math.isclose(float(nlls.mean()), float(loss), rel_tol=1e-4)


def test_sliding_windows_score_every_token_once_with_the_context_they_promise(loaded):
    ids = text_ids(loaded)[:300]
    nlls = token_nlls(loaded, ids, window=64)
    assert len(nlls) == len(ids) - 1
    whole_first_window = token_nlls(loaded, ids[:64], window=64)
    assert torch.allclose(nlls[:63], whole_first_window, atol=1e-4)
    # Tokens 64..95 are scored by the window starting at 32: the same numbers as that window alone.
    second_window = token_nlls(loaded, ids[32:96], window=64)
    assert torch.allclose(nlls[63:95], second_window[-32:], atol=1e-4)


def test_the_llama_cpp_backend_is_scored_on_the_same_tokens_and_stays_close(loaded):
    llama = load_model(ModelSpec("embedded", cache_dir=str(CACHE_DIR), backend="llama_cpp"), slots=1)
    try:
        ids = text_ids(loaded)[:300]
        assert text_ids(llama)[:300] == ids  # the same tokenizer: the same text, the same tokens
        q4, f32 = token_nlls(llama, ids, window=128), token_nlls(loaded, ids, window=128)
        assert len(q4) == len(f32) == len(ids) - 1
        assert abs(float(q4.mean()) / float(f32.mean()) - 1) < 0.25  # 4-bit weights: close, not equal
    finally:
        llama.model.close()
