"""The embedded embedding model (all-MiniLM-L6-v2 from its PyPI package) on its engine thread: the same vectors as
sentence-transformers' own ``encode``, paraphrases closer than unrelated sentences, token arrays equal to their
text, requests embedded together, and the event loop free while it works."""

from __future__ import annotations

import json
from pathlib import Path

import gevent
import numpy as np
import pytest

from llm_api.local_model.embedder import EmbedderOptions, LocalEmbeddingEngine
from llm_api.local_model.embedding_spec import EmbeddingSpec, embedded_embedding_folder

pytestmark = pytest.mark.model

PAIRS = json.loads((Path(__file__).parent / "data" / "sentence_pairs.json").read_text())
SENTENCES = [
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "  Leading and trailing spaces, and punctuation!?  ",
    "Ünïcödé, emoji 😀 and 中文 characters.",
    "A longer passage about the company's travel policy: book flights at least two weeks ahead, prefer "
    "economy class for trips under six hours, and keep every receipt for the expense report." * 2,
]


@pytest.fixture(scope="module")
def embedder():
    engine = LocalEmbeddingEngine(EmbeddingSpec("all-MiniLM-L6-v2", "embedded", "cpu"), EmbedderOptions(batch_size=4))
    engine.start()
    assert engine.wait_ready(300), engine.load_error
    yield engine
    engine.stop()


def embed(engine, texts):
    return engine.submit("t", engine.tokenize(texts)).result(120).rows


def test_vectors_match_sentence_transformers_own_encode(embedder):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(embedded_embedding_folder()), device="cpu").encode(SENTENCES)
    # each request alone, and all in one request (sorted by length and padded into passes of 4)
    ours = np.stack([embed(embedder, [text])[0] for text in SENTENCES])
    together = embed(embedder, SENTENCES)
    for vectors in (ours, together):
        cosine = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
        assert cosine.min() >= 0.9999, cosine
    assert embedder.dimensions == 384 and embedder.context_length == 256


def test_paraphrases_score_higher_than_unrelated_pairs(embedder):
    def cosine(pair):
        a, b = embed(embedder, pair)
        return float(a @ b)

    paraphrases = [cosine(pair) for pair in PAIRS["paraphrases"]]
    unrelated = [cosine(pair) for pair in PAIRS["unrelated"]]
    assert min(paraphrases) > max(unrelated), (paraphrases, unrelated)


def test_a_token_array_gives_the_vector_of_its_text(embedder):
    text = "Token arrays are ids of the model's own vocabulary."
    ids = embedder._loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    from_ids = embedder.submit("t", embedder.from_token_ids([ids])).result(60).rows[0]
    assert float(from_ids @ embed(embedder, [text])[0]) >= 0.9999


def test_waiting_requests_are_embedded_together_and_the_loop_stays_free(embedder):
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.005)) for _ in range(100_000)])
    passes = embedder.stats["passes"]
    handles = [embedder.submit(str(i), embedder.tokenize([f"request {i} of eight"])) for i in range(8)]
    results = [handle.result(120) for handle in handles]  # no greenlet switch between the submits
    ticker.kill()
    assert [r.rows.shape for r in results] == [(1, 384)] * 8
    assert embedder.stats["passes"] - passes < 8  # one input each, passes of 4: requests shared passes
    assert len(ticks) >= 2  # the greenlets ran while the engine thread embedded


def test_inputs_come_back_in_their_order(embedder):
    texts = ["a much longer sentence than the others, by far the longest", "short", "medium length one"]
    together = embed(embedder, texts)
    for index, text in enumerate(texts):
        assert float(together[index] @ embed(embedder, [text])[0]) >= 0.9999


def test_a_plain_hugging_face_folder_is_served_too(embedder, tmp_path):
    """A folder without sentence-transformers' files (no modules.json): mean pooling over the transformer,
    as sentence-transformers does by default; without the normalisation step, so compare directions."""
    import shutil

    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(embedded_embedding_folder() / name, tmp_path / name)
    plain = LocalEmbeddingEngine(EmbeddingSpec("plain", str(tmp_path), "cpu"))
    plain.start()
    try:
        assert plain.wait_ready(300), plain.load_error
        ours, theirs = embed(plain, SENTENCES[:3]), embed(embedder, SENTENCES[:3])
        cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1)
        assert cosine.min() >= 0.9999, cosine
    finally:
        plain.stop()
