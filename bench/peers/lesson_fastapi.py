"""The lesson's design, written from its description as a measuring stick (not part of the service):
FastAPI + uvicorn, ``model.generate`` on a new thread per request, ``TextIteratorStreamer``, SSE.

Run: LLM_API_BENCH_MODEL_DIR=... uvicorn bench.peers.lesson_fastapi:app --port PORT
"""

from __future__ import annotations

import threading

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from transformers import TextIteratorStreamer

from bench.peers.common import chunk, generate_kwargs, model, tokenizer

app = FastAPI()


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@app.post("/v1/chat/completions")
async def chat(request: Request) -> StreamingResponse:
    body = await request.json()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    threading.Thread(target=model.generate, kwargs=generate_kwargs(body, streamer), daemon=True).start()

    def events():  # a sync iterator: Starlette runs it in its thread pool
        for text in streamer:
            if text:
                yield chunk(text)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
