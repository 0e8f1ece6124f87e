"""Retrieval with LangChain against the real server (gunicorn gevent, the embedded chat and embedding models):
``OpenAIEmbeddings`` embeds 20 bundled passages into an ``InMemoryVectorStore``, a question retrieves its
passage, and ``ChatOpenAI`` answers with that passage in the prompt. The official ``openai`` client's
embeddings (base64 on the wire) agree with LangChain's (floats)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import requests

from tests.servers import LiveServer, start_server, stop_server

pytestmark = pytest.mark.e2e

CHAT_MODEL = "SmolLM2-135M-Instruct"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
PASSAGES = json.loads((Path(__file__).parent / "data" / "passages.json").read_text())
QUESTIONS = [  # (question, the index of the passage that answers it)
    ("How many weeks of parental leave do parents get?", 5),
    ("When is lunch served in the cafeteria?", 6),
    ("What do I do when I forgot my password?", 4),
    ("Which VPN do I need to reach the internal wiki?", 13),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    """The default configuration: the embedded chat model and the embedded embedding model."""
    live = start_server(tmp_path_factory.mktemp("embeddings"),
                        {"LLM_API_EMBEDDING_MODELS": f"{EMBEDDING_MODEL}=embedded"})
    yield live
    stop_server(live)


def test_langchain_retrieves_the_right_passage_and_answers_with_it(server):
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    # check_embedding_ctx_length=False: send the texts themselves. LangChain's default sends tiktoken ids
    # (an OpenAI vocabulary, downloaded at first use), which mean nothing to another model.
    embeddings = OpenAIEmbeddings(model=EMBEDDING_MODEL, base_url=f"{server.url}/v1", api_key="not-needed",
                                  check_embedding_ctx_length=False, max_retries=0)
    store = InMemoryVectorStore.from_texts(PASSAGES, embeddings, metadatas=[{"index": i} for i in range(len(PASSAGES))])
    for question, expected in QUESTIONS:
        found = store.similarity_search(question, k=1)
        assert found[0].metadata["index"] == expected, (question, found[0].page_content)

    question, expected = QUESTIONS[0]
    passage = store.similarity_search(question, k=1)[0].page_content
    chat = ChatOpenAI(model=CHAT_MODEL, base_url=f"{server.url}/v1", api_key="not-needed", temperature=0,
                      max_tokens=40, max_retries=0)
    answer = chat.invoke([("system", f"Answer the question using this passage only.\nPassage: {passage}"),
                          ("user", question)])
    assert answer.content.strip()
    assert answer.response_metadata["model_name"] == CHAT_MODEL
    # the passage went into the prompt: its tokens are counted there
    assert answer.usage_metadata["input_tokens"] > len(passage.split())


def test_the_openai_client_gets_the_same_vectors_and_the_model_list(server):
    from langchain_openai import OpenAIEmbeddings

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=120)
    texts = PASSAGES[:3]
    response = client.embeddings.create(model=EMBEDDING_MODEL, input=texts)  # base64 on the wire, decoded
    via_openai = np.array([d.embedding for d in response.data])
    via_langchain = np.array(OpenAIEmbeddings(model=EMBEDDING_MODEL, base_url=f"{server.url}/v1",
                                              api_key="not-needed", check_embedding_ctx_length=False)
                             .embed_documents(texts))
    assert via_openai.shape == (3, 384) and np.allclose(via_openai, via_langchain, atol=1e-6)
    assert response.usage.prompt_tokens == response.usage.total_tokens > 0
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {CHAT_MODEL, EMBEDDING_MODEL}
    assert models[EMBEDDING_MODEL].model_extra["kind"] == "embedding"
    assert models[EMBEDDING_MODEL].model_extra["dimensions"] == 384
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=EMBEDDING_MODEL, messages=[{"role": "user", "content": "hi"}])
    ready = requests.get(f"{server.url}/readyz", timeout=10).json()
    assert ready["embedding_models"][EMBEDDING_MODEL]["ready"] is True
