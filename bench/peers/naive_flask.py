"""The naive Flask design, as a measuring stick (not part of the service): a ``threading.Thread`` per
request running ``model.generate`` with ``TextIteratorStreamer``, under gunicorn's gevent worker
(where that thread is really a greenlet).

Run: LLM_API_BENCH_MODEL_DIR=... gunicorn -k gevent -b 127.0.0.1:PORT bench.peers.naive_flask:app
"""

from __future__ import annotations

import threading

from flask import Flask, Response, request
from transformers import TextIteratorStreamer

from bench.peers.common import chunk, generate_kwargs, model, tokenizer

app = Flask(__name__)


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@app.post("/v1/chat/completions")
def chat() -> Response:
    body = request.get_json(force=True)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    threading.Thread(target=model.generate, kwargs=generate_kwargs(body, streamer), daemon=True).start()

    def events():
        for text in streamer:
            if text:
                yield chunk(text)
        yield "data: [DONE]\n\n"

    return Response(events(), mimetype="text/event-stream")
